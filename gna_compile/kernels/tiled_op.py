"""Custom ops over the *tiled* token layout, for graphs whose permutations were hoisted.

``gna_compile::permute_tokens`` / ``unpermute_tokens`` move a tensor's token dim between
natural and tiled order (DESIGN.md §2): ``dim`` holds the sequence as its innermost factor
(``[B, N, C]`` at dim 1, ``[B*N, C]`` at dim 0), and ``gna_compile::gna_attention_tiled`` is
GNA on inputs already in tiled order (``[prefix][padded tiled grid][suffix]``), returning
output in the same order. The permutation pass puts a permute where spatial tokens enter a
token-wise region and an unpermute where they leave, so blocks in between never permute.
Backends: Triton on CUDA where it supports the call; otherwise the reference composed with
the torch permutation (correct, not fast).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..config import make_spec
from .dispatch import (KeyMask, call_mode, dense_flag, dense_sdpa, fake_dense_flag, forced_backend, reference_backward,
                       run_gna_backward)
from .permute import padded_shape, permute_tokens, unpermute_tokens
from .reference import reference_attention

__all__ = ["permute_op", "unpermute_op", "gna_tiled_op", "gna_tiled_lse_op", "gna_tiled_backward_op",
           "tiled_length"]


def tiled_length(shape, tile, extra_prefix: int = 0, extra_suffix: int = 0) -> int:
    """Token count of the tiled layout (grid padded up to whole tiles)."""
    return extra_prefix + math.prod(padded_shape(shape, tile)) + extra_suffix


def _fast_permute():
    try:
        from . import triton_permute  # noqa: F401  (optional: needs triton + CUDA)
    except ImportError:
        return None
    return triton_permute


def _lengths(shape, tile, extra_prefix, extra_suffix, inverse):
    """(token count in, token count out) of a permutation."""
    natural = extra_prefix + math.prod(shape) + extra_suffix
    tiled = tiled_length(shape, tile, extra_prefix, extra_suffix)
    return (tiled, natural) if inverse else (natural, tiled)


def _permute_impl(x, shape, tile, extra_prefix, extra_suffix, dim, inverse):
    n_in, _ = _lengths(shape, tile, extra_prefix, extra_suffix, inverse)
    dim = dim % x.dim()
    if x.shape[dim] % n_in:
        raise ValueError(f"dim {dim} of size {x.shape[dim]} does not hold whole {n_in}-token sequences")
    # [..., outer*n, rest...] -> [lead, n, rest] with the tokens at dim -2
    lead = x.shape[:dim] + (x.shape[dim] // n_in,)
    rest = x.shape[dim + 1:]
    y = x.reshape(math.prod(lead), n_in, math.prod(rest))
    mod = _fast_permute() if y.is_cuda else None
    name = "unpermute_tokens_triton" if inverse else "permute_tokens_triton"
    if mod is not None and mod.supports(y):
        out = getattr(mod, name)(y, shape, tile, extra_prefix, extra_suffix)
    else:
        fn = unpermute_tokens if inverse else permute_tokens
        out = fn(y, shape, tile, extra_prefix, extra_suffix)
    out = out.reshape(*x.shape[:dim], -1, *rest).contiguous()
    # An identity layout (e.g. a tile spanning whole rows) comes back as a view of x; a custom
    # op must not return an alias of its input.
    same = out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    return out.clone() if same else out


def _permuted_shape(x, shape, tile, extra_prefix, extra_suffix, dim, inverse):
    n_in, n_out = _lengths(shape, tile, extra_prefix, extra_suffix, inverse)
    dim = dim % x.dim()
    return (*x.shape[:dim], x.shape[dim] // n_in * n_out, *x.shape[dim + 1:])


@torch.library.custom_op("gna_compile::permute_tokens", mutates_args=())
def permute_op(x: Tensor, shape: list[int], tile: list[int], extra_prefix: int,
               extra_suffix: int, dim: int = -2) -> Tensor:
    return _permute_impl(x, shape, tile, extra_prefix, extra_suffix, dim, inverse=False)


@permute_op.register_fake
def _(x, shape, tile, extra_prefix, extra_suffix, dim=-2):
    return x.new_empty(_permuted_shape(x, shape, tile, extra_prefix, extra_suffix, dim, False))


@torch.library.custom_op("gna_compile::unpermute_tokens", mutates_args=())
def unpermute_op(x: Tensor, shape: list[int], tile: list[int], extra_prefix: int,
                 extra_suffix: int, dim: int = -2) -> Tensor:
    return _permute_impl(x, shape, tile, extra_prefix, extra_suffix, dim, inverse=True)


@unpermute_op.register_fake
def _(x, shape, tile, extra_prefix, extra_suffix, dim=-2):
    return x.new_empty(_permuted_shape(x, shape, tile, extra_prefix, extra_suffix, dim, True))


def _perm_autograd(inverse):
    def setup(ctx, inputs, output):
        ctx.args = inputs[1:]

    def backward(ctx, g):
        other = permute_op if inverse else unpermute_op
        return (other(g.contiguous(), *ctx.args), None, None, None, None, None)
    return backward, setup


for _op, _inverse in ((permute_op, False), (unpermute_op, True)):
    _bwd, _setup = _perm_autograd(_inverse)
    _op.register_autograd(_bwd, setup_context=_setup)


def _fast_tiled(q, k, v, spec, tiles, extra_prefix, extra_suffix, scale, km):
    """``(out, lse)`` of the Triton kernel on tiled-order tensors, or None where it does not
    support the call."""
    try:
        from .triton_backend import unit_last_stride, why_not
        from .hopper import gna_attention_permuted
    except ImportError:
        return None
    if why_not(q, k, v, spec, extra_prefix, extra_suffix, scale, km, tiles) is not None:
        return None
    q, k, v = unit_last_stride(q, k, v)  # Inductor may hand a pass-made op any layout
    return gna_attention_permuted(q, k, v, spec, *tiles, extra_prefix, extra_suffix, scale, km)


def _fast_tiled_backward(grad_out, grad_lse, q, k, v, out, lse, spec, tiles, extra_prefix, extra_suffix,
                         scale, km):
    """``(dq, dk, dv)`` of the Triton backward on tiled-order tensors, or None where the Triton
    forward or backward does not take the call (the forward's condition first: the backward
    reads the LSE that forward wrote)."""
    try:
        from .triton_backend import unit_last_stride, why_not
        from .hopper import gna_attention_permuted, gna_backward_permuted, why_not_backward_permuted
    except ImportError:
        return None
    q, k, v = unit_last_stride(q, k, v)
    if why_not(q, k, v, spec, extra_prefix, extra_suffix, scale, km, tiles) is not None or \
            why_not_backward_permuted(q, k, v, spec, extra_prefix, extra_suffix, scale, km, tiles) is not None:
        return None
    if out is None or lse is None:
        out, lse = gna_attention_permuted(q, k, v, spec, *tiles, extra_prefix, extra_suffix, scale, km)
    return gna_backward_permuted(q, k, v, out.contiguous(), lse.contiguous(), grad_out.to(q.dtype).contiguous(),
                                 spec, *tiles, extra_prefix, extra_suffix, scale, km,
                                 grad_lse=None if grad_lse is None else grad_lse.float().contiguous())


def _rows(fn, x, args):
    """A token permutation of a ``[..., N]`` tensor (the LSE), through the ``[..., N, 1]`` one."""
    return fn(x[..., None], *args)[..., 0]


def _call(shape, window, stride, dilation, causal, extra_prefix, extra_suffix, key_mask, key_mask_spatial,
          q_tile, kv_tile, B, dense):
    """(spec, permutation args, tiles, KeyMask or None) of a tiled call; ``dense``: a dense spec."""
    from .op import key_mask_2d
    spec = make_spec(tuple(shape), tuple(window), tuple(stride), tuple(dilation), tuple(causal))
    if dense:
        spec = make_spec(spec.shape, spec.shape)
    args = (tuple(shape), tuple(q_tile), extra_prefix, extra_suffix)
    n_nat = extra_prefix + spec.num_tokens + extra_suffix
    km = None if key_mask is None else KeyMask(key_mask_2d(key_mask, B, n_nat), key_mask_spatial)
    return spec, args, (tuple(q_tile), tuple(kv_tile)), km


@torch.library.custom_op("gna_compile::gna_attention_tiled", mutates_args=())
def gna_tiled_op(q: Tensor, k: Tensor, v: Tensor, shape: list[int], window: list[int],
                 stride: list[int], dilation: list[int], causal: list[bool], extra_prefix: int,
                 extra_suffix: int, scale: float, key_mask: Optional[Tensor],
                 key_mask_spatial: bool, q_tile: list[int], kv_tile: list[int], backend: str) -> Tensor:
    """GNA on q/k/v in the tiled order of ``q_tile``; ``key_mask`` stays in natural order."""
    dense = call_mode()
    spec, args, tiles, km = _call(shape, window, stride, dilation, causal, extra_prefix, extra_suffix,
                                  key_mask, key_mask_spatial, q_tile, kv_tile, q.shape[0], dense)
    if q.numel() == 0:
        return q.new_empty(*q.shape[:-1], v.shape[-1])
    if q.is_cuda and forced_backend(backend) in ("auto", "triton") and not dense:
        got = _fast_tiled(q, k, v, spec, tiles, extra_prefix, extra_suffix, scale, km)
        if got is not None:  # None: the kernel does not support this call
            return got[0].contiguous()
    # Fallback: back to natural order, reference (or dense SDPA in hybrid mode), tiled again.
    qn, kn, vn = (unpermute_tokens(t, *args) for t in (q, k, v))
    if dense:
        out = dense_sdpa(qn, kn, vn, scale, None if km is None else KeyMask(km.mask, True))
    else:
        out, _ = reference_attention(qn, kn, vn, spec, extra_prefix, extra_suffix, scale,
                                     None if km is None else km.mask)
    return permute_tokens(out, *args).contiguous()


@gna_tiled_op.register_fake
def _(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix, scale,
      key_mask, key_mask_spatial, q_tile, kv_tile, backend):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


@torch.library.custom_op("gna_compile::gna_attention_tiled_lse", mutates_args=())
def gna_tiled_lse_op(q: Tensor, k: Tensor, v: Tensor, shape: list[int], window: list[int],
                     stride: list[int], dilation: list[int], causal: list[bool], extra_prefix: int,
                     extra_suffix: int, scale: float, key_mask: Optional[Tensor],
                     key_mask_spatial: bool, q_tile: list[int], kv_tile: list[int],
                     backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """``gna_attention_lse`` on q/k/v in the tiled order of ``q_tile``: out and the fp32 LSE
    ``[B, H, N_tiled]`` in that order, and the dense mode it ran in (for the backward);
    ``key_mask`` stays in natural order."""
    flag = dense_flag()
    if q.numel() == 0 or v.shape[-1] == 0:
        return q.new_empty(*q.shape[:-1], v.shape[-1]), q.new_empty(q.shape[:-1], dtype=torch.float32), flag
    spec, args, tiles, km = _call(shape, window, stride, dilation, causal, extra_prefix, extra_suffix,
                                  key_mask, key_mask_spatial, q_tile, kv_tile, q.shape[0], bool(flag))
    if q.is_cuda and forced_backend(backend) in ("auto", "triton"):
        got = _fast_tiled(q, k, v, spec, tiles, extra_prefix, extra_suffix, scale, km)
        if got is not None:
            return got[0].contiguous(), got[1].float().contiguous(), flag
    qn, kn, vn = (unpermute_tokens(t, *args) for t in (q, k, v))
    out, lse = reference_attention(qn, kn, vn, spec, extra_prefix, extra_suffix, scale,
                                   None if km is None else km.mask)
    return permute_tokens(out, *args).contiguous(), _rows(permute_tokens, lse, args).contiguous(), flag


@gna_tiled_lse_op.register_fake
def _(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix, scale,
      key_mask, key_mask_spatial, q_tile, kv_tile, backend):
    return (q.new_empty(*q.shape[:-1], v.shape[-1]), q.new_empty(q.shape[:-1], dtype=torch.float32),
            fake_dense_flag())


@torch.library.custom_op("gna_compile::gna_attention_tiled_backward", mutates_args=())
def gna_tiled_backward_op(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                          out: Optional[Tensor], lse: Optional[Tensor], shape: list[int], window: list[int],
                          stride: list[int], dilation: list[int], causal: list[bool], extra_prefix: int,
                          extra_suffix: int, scale: float, key_mask: Optional[Tensor],
                          key_mask_spatial: bool, q_tile: list[int], kv_tile: list[int], backend: str,
                          dense: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``gna_attention_backward`` with every token-indexed tensor (grad_out, grad_lse, q, k, v,
    out, lse and the returned dq, dk, dv) in the tiled order of ``q_tile``; ``key_mask`` stays
    in natural order. Padding rows of the gradients are zeros. ``dense``: the forward's mode."""
    if q.numel() == 0 or v.shape[-1] == 0:
        return tuple(torch.zeros_like(t) for t in (q, k, v))
    dense = bool(dense)
    spec, args, tiles, km = _call(shape, window, stride, dilation, causal, extra_prefix, extra_suffix,
                                  key_mask, key_mask_spatial, q_tile, kv_tile, q.shape[0], dense)
    grads = None
    if q.is_cuda and not dense and forced_backend(backend) in ("auto", "triton"):
        grads = _fast_tiled_backward(grad_out, grad_lse, q, k, v, out, lse, spec, tiles, extra_prefix,
                                     extra_suffix, scale, km)
    if grads is None:  # natural order, the natural op's backward, tiled again (padding: zeros)
        gn, qn, kn, vn = (unpermute_tokens(t, *args) for t in (grad_out, q, k, v))
        gl = None if grad_lse is None else _rows(unpermute_tokens, grad_lse, args)
        if dense:
            grads = reference_backward(gn, gl, qn, kn, vn, spec, extra_prefix, extra_suffix, scale, km)
        else:
            on = None if out is None else unpermute_tokens(out, *args)
            ln = None if lse is None else _rows(unpermute_tokens, lse, args)
            grads = run_gna_backward(gn, gl, qn, kn, vn, on, ln, spec, extra_prefix, extra_suffix, scale, km,
                                     backend, tiles)
        grads = [None if g is None else permute_tokens(g, *args) for g in grads]
    return tuple(torch.zeros_like(t) if g is None else g.to(t.dtype).contiguous() for g, t in zip(grads, (q, k, v)))


@gna_tiled_backward_op.register_fake
def _(grad_out, grad_lse, q, k, v, *args):
    return tuple(t.new_empty(t.shape) for t in (q, k, v))
