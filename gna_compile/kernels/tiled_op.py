"""Custom ops over the *tiled* token layout, for graphs whose permutations were hoisted.

``gna_compile::permute_tokens`` / ``unpermute_tokens`` move a tensor's token dim (dim -2)
between natural and tiled order (DESIGN.md §2), and ``gna_compile::gna_attention_tiled`` is
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
from .dispatch import KeyMask, dense_mode, dense_sdpa, forced_backend
from .permute import padded_shape, permute_tokens, unpermute_tokens
from .reference import reference_attention

__all__ = ["permute_op", "unpermute_op", "gna_tiled_op", "tiled_length"]


def tiled_length(shape, tile, extra_prefix: int = 0, extra_suffix: int = 0) -> int:
    """Token count of the tiled layout (grid padded up to whole tiles)."""
    return extra_prefix + math.prod(padded_shape(shape, tile)) + extra_suffix


def _fast_permute():
    try:
        from . import triton_permute  # noqa: F401  (optional: needs triton + CUDA)
    except ImportError:
        return None
    return triton_permute


def _permute_impl(x, shape, tile, extra_prefix, extra_suffix, inverse):
    mod = _fast_permute() if x.is_cuda else None
    name = "unpermute_tokens_triton" if inverse else "permute_tokens_triton"
    if mod is not None and mod.supports(x):
        return getattr(mod, name)(x, shape, tile, extra_prefix, extra_suffix)
    fn = unpermute_tokens if inverse else permute_tokens
    out = fn(x, shape, tile, extra_prefix, extra_suffix).contiguous()
    # An identity layout (e.g. a tile spanning whole rows) comes back as a view of x; a custom
    # op must not return an alias of its input.
    same = out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    return out.clone() if same else out


def _permuted_len_shape(x, shape, tile, extra_prefix, extra_suffix, inverse):
    n = (extra_prefix + math.prod(shape) + extra_suffix) if inverse else \
        tiled_length(shape, tile, extra_prefix, extra_suffix)
    return (*x.shape[:-2], n, x.shape[-1])


@torch.library.custom_op("gna_compile::permute_tokens", mutates_args=())
def permute_op(x: Tensor, shape: list[int], tile: list[int], extra_prefix: int,
               extra_suffix: int) -> Tensor:
    return _permute_impl(x, shape, tile, extra_prefix, extra_suffix, inverse=False)


@permute_op.register_fake
def _(x, shape, tile, extra_prefix, extra_suffix):
    return x.new_empty(_permuted_len_shape(x, shape, tile, extra_prefix, extra_suffix, False))


@torch.library.custom_op("gna_compile::unpermute_tokens", mutates_args=())
def unpermute_op(x: Tensor, shape: list[int], tile: list[int], extra_prefix: int,
                 extra_suffix: int) -> Tensor:
    return _permute_impl(x, shape, tile, extra_prefix, extra_suffix, inverse=True)


@unpermute_op.register_fake
def _(x, shape, tile, extra_prefix, extra_suffix):
    return x.new_empty(_permuted_len_shape(x, shape, tile, extra_prefix, extra_suffix, True))


def _perm_autograd(inverse):
    def setup(ctx, inputs, output):
        ctx.args = inputs[1:]

    def backward(ctx, g):
        other = permute_op if inverse else unpermute_op
        return (other(g.contiguous(), *ctx.args), None, None, None, None)
    return backward, setup


for _op, _inverse in ((permute_op, False), (unpermute_op, True)):
    _bwd, _setup = _perm_autograd(_inverse)
    _op.register_autograd(_bwd, setup_context=_setup)


def _fast_tiled(q, k, v, spec, tile, extra_prefix, extra_suffix, scale, km):
    """The Triton kernel on tiled-order tensors, or None where it does not support the call."""
    try:
        from .triton_backend import why_not
        from .triton_gna import gna_attention_permuted, kv_tiles_for
    except ImportError:
        return None
    if why_not(q, k, v, spec, extra_prefix, extra_suffix, scale, km) is not None:
        return None
    if math.prod(tile) not in (64, 128) or any(t & (t - 1) for t in tile):
        return None  # the kernel's Q tiles are 64/128-token power-of-two boxes
    kv_tile = kv_tiles_for(tile, 128) or kv_tiles_for(tile, 64)
    if kv_tile is None:
        return None
    return gna_attention_permuted(q, k, v, spec, tile, kv_tile, extra_prefix, extra_suffix, scale, km)[0]


@torch.library.custom_op("gna_compile::gna_attention_tiled", mutates_args=())
def gna_tiled_op(q: Tensor, k: Tensor, v: Tensor, shape: list[int], window: list[int],
                 stride: list[int], dilation: list[int], causal: list[bool], extra_prefix: int,
                 extra_suffix: int, scale: float, key_mask: Optional[Tensor],
                 key_mask_spatial: bool, tile: list[int], backend: str) -> Tensor:
    """GNA on tiled-order q/k/v (layout tile ``tile``); ``key_mask`` stays in natural order."""
    spec = make_spec(tuple(shape), tuple(window), tuple(stride), tuple(dilation), tuple(causal))
    km = None if key_mask is None else KeyMask(key_mask, key_mask_spatial)
    if q.is_cuda and forced_backend(backend) in ("auto", "triton") and not dense_mode():
        out = _fast_tiled(q, k, v, spec, tuple(tile), extra_prefix, extra_suffix, scale, km)
        if out is not None:  # None: the kernel does not support this call
            return out.contiguous()
    # Fallback: back to natural order, reference (or dense SDPA in hybrid mode), tiled again.
    args = (tuple(shape), tuple(tile), extra_prefix, extra_suffix)
    qn, kn, vn = (unpermute_tokens(t, *args) for t in (q, k, v))
    if dense_mode():
        out = dense_sdpa(qn, kn, vn, scale, km)
    else:
        out, _ = reference_attention(qn, kn, vn, spec, extra_prefix, extra_suffix, scale, key_mask)
    return permute_tokens(out, *args).contiguous()


@gna_tiled_op.register_fake
def _(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix, scale,
      key_mask, key_mask_spatial, tile, backend):
    return q.new_empty(*q.shape[:-1], v.shape[-1])
