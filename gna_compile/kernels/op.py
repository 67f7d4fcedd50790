"""The public GNA op: input checks, and the ``torch.library`` custom ops the compiler inserts.

``gna_compile::gna_attention`` (out) and ``gna_compile::gna_attention_lse`` (out, lse) have
fake implementations, so ``torch.compile(fullgraph=True)`` traces each as one opaque node.
Autograd (out op) recomputes the reference forward under autograd: correct for every backend,
not fast; training speed is not this package's goal.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..config import make_spec
from .dispatch import KeyMask, dense_mode, dense_sdpa, run_gna
from .reference import reference_attention

__all__ = ["gna_attention", "gna_attention_lse"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _mask_arg(key_mask, key_mask_spatial):
    """Backends get the mask as ``KeyMask``: the tensor plus whether it may hide spatial keys."""
    return None if key_mask is None else KeyMask(key_mask, key_mask_spatial)


def _spec(shape, window, stride, dilation, causal):
    return make_spec(tuple(shape), tuple(window), tuple(stride), tuple(dilation), tuple(causal))


@torch.library.custom_op("gna_compile::gna_attention_lse", mutates_args=())
def _gna_lse_op(q: Tensor, k: Tensor, v: Tensor, shape: list[int], window: list[int],
                stride: list[int], dilation: list[int], causal: list[bool], extra_prefix: int,
                extra_suffix: int, scale: float, key_mask: Optional[Tensor],
                key_mask_spatial: bool, backend: str) -> tuple[Tensor, Tensor]:
    spec = _spec(shape, window, stride, dilation, causal)
    if dense_mode():
        spec = make_spec(spec.shape, spec.shape)
    out, lse = run_gna(q, k, v, spec, extra_prefix, extra_suffix, scale,
                       _mask_arg(key_mask, key_mask_spatial), backend)
    return out, lse


@_gna_lse_op.register_fake
def _(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix, scale,
      key_mask, key_mask_spatial, backend):
    B, H, N, _ = q.shape
    return q.new_empty(B, H, N, v.shape[-1]), q.new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("gna_compile::gna_attention", mutates_args=())
def _gna_op(q: Tensor, k: Tensor, v: Tensor, shape: list[int], window: list[int],
            stride: list[int], dilation: list[int], causal: list[bool], extra_prefix: int,
            extra_suffix: int, scale: float, key_mask: Optional[Tensor], key_mask_spatial: bool,
            backend: str) -> Tensor:
    if dense_mode():
        return dense_sdpa(q, k, v, scale, _mask_arg(key_mask, True)).contiguous()
    spec = _spec(shape, window, stride, dilation, causal)
    return run_gna(q, k, v, spec, extra_prefix, extra_suffix, scale,
                   _mask_arg(key_mask, key_mask_spatial), backend)[0]


@_gna_op.register_fake
def _(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix, scale,
      key_mask, key_mask_spatial, backend):
    B, H, N, _ = q.shape
    return q.new_empty(B, H, N, v.shape[-1])


@torch.library.custom_op("gna_compile::gna_attention_backward", mutates_args=())
def _gna_bwd_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, shape: list[int],
                window: list[int], stride: list[int], dilation: list[int], causal: list[bool],
                extra_prefix: int, extra_suffix: int, scale: float, key_mask: Optional[Tensor],
                dense: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients by recomputing the reference forward under autograd (an opaque op, so that
    AOTAutograd traces the backward as one node too)."""
    spec = make_spec(tuple(shape), tuple(shape)) if dense else _spec(shape, window, stride, dilation, causal)
    # Custom-op impls run below the autograd dispatch keys; re-enable them for the recompute.
    with torch.enable_grad(), torch._C._SetExcludeDispatchKeyGuard(
            torch._C.DispatchKey.AutogradFunctionality, False), torch._C._SetExcludeDispatchKeyGuard(
            torch._C.DispatchKey.ADInplaceOrView, False):
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        out, _ = reference_attention(qq, kk, vv, spec, extra_prefix, extra_suffix, scale, key_mask)
        grads = torch.autograd.grad(out, (qq, kk, vv), grad_out.to(out.dtype))
    return tuple(g.contiguous() for g in grads)


@_gna_bwd_op.register_fake
def _(grad_out, q, k, v, *args):
    return tuple(t.new_empty(t.shape) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, *params = inputs
    ctx.save_for_backward(q, k, v)
    ctx.params = params
    ctx.dense = dense_mode()


def _backward(ctx, grad_out):
    q, k, v = ctx.saved_tensors
    *params, _key_mask_spatial, _backend = ctx.params
    dq, dk, dv = _gna_bwd_op(grad_out, q, k, v, *params, ctx.dense)
    return (dq, dk, dv, *([None] * 11))


_gna_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(q, k, v, shape, extra_prefix, extra_suffix, key_mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, H, N, D], got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}.dtype={t.dtype} is not supported: use one of {_DTYPES}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, N, D = q.shape
    if k.shape[:3] != v.shape[:3] or k.shape[0] != B or k.shape[2] != N:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [B={B}, Hkv, N={N}, *] "
                         f"to match q {tuple(q.shape)}")
    if k.shape[-1] != D:
        raise ValueError(f"k has head dim {k.shape[-1]} but q has {D}")
    if H % k.shape[1]:
        raise ValueError(f"q has {H} heads, which is not a multiple of the {k.shape[1]} kv heads (GQA)")
    for name, e in (("extra_prefix", extra_prefix), ("extra_suffix", extra_suffix)):
        if not isinstance(e, int) or e < 0:
            raise ValueError(f"{name}={e!r} must be an int >= 0")
    grid = 1
    for n in shape:
        grid *= n
    if extra_prefix + grid + extra_suffix != N:
        raise ValueError(f"q has N={N} tokens but extra_prefix + prod(shape) + extra_suffix = "
                         f"{extra_prefix} + {grid} + {extra_suffix} = {extra_prefix + grid + extra_suffix}"
                         f" (shape={tuple(shape)})")
    if key_mask is not None:
        if key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask.dtype={key_mask.dtype} must be torch.bool (True = attend)")
        if key_mask.dim() == 4 and key_mask.shape[1:3] == (1, 1):
            key_mask = key_mask[:, 0, 0, :]
        if key_mask.dim() != 2 or key_mask.shape[-1] != N or key_mask.shape[0] not in (1, B):
            raise ValueError(f"key_mask {tuple(key_mask.shape)} must be [B, N] or [B, 1, 1, N] "
                             f"with B in (1, {B}) and N={N}")
        key_mask = key_mask.expand(B, N).contiguous()
    return key_mask


def _prepare(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix,
             scale, key_mask, key_mask_spatial, backend):
    if not isinstance(backend, str):
        raise ValueError(f"backend={backend!r} must be a string such as 'auto' or 'reference'")
    spec = make_spec(shape, window, stride, dilation, causal)
    key_mask = _check_inputs(q, k, v, spec.shape, extra_prefix, extra_suffix, key_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return (q, k, v, list(spec.shape), list(spec.window), list(spec.stride), list(spec.dilation),
            list(spec.causal), extra_prefix, extra_suffix, scale, key_mask, bool(key_mask_spatial),
            backend)


def gna_attention(q: Tensor, k: Tensor, v: Tensor, shape, window, stride=1, dilation=1,
                  causal=False, *, extra_prefix: int = 0, extra_suffix: int = 0,
                  scale: float | None = None, key_mask: Tensor | None = None,
                  key_mask_spatial: bool = True, backend: str = "auto") -> Tensor:
    """Generalized Neighborhood Attention over ``[B, H, N, D]`` tensors in natural token order.

    ``N = extra_prefix + prod(shape) + extra_suffix``. Spatial queries attend to their GNA
    neighborhood (DESIGN.md §1) plus every extra token; extra-token queries attend to all
    tokens. k/v may have fewer heads (GQA). ``key_mask`` (bool ``[B, N]`` or ``[B, 1, 1, N]``,
    True = attend) removes keys for every query; a query left with no key returns zeros.
    ``key_mask_spatial=False`` promises the mask is True on every grid token, so fast backends
    apply it to the extra-token keys only (the reference applies it everywhere regardless).
    """
    return _gna_op(*_prepare(q, k, v, shape, window, stride, dilation, causal, extra_prefix,
                             extra_suffix, scale, key_mask, key_mask_spatial, backend))


def gna_attention_lse(q: Tensor, k: Tensor, v: Tensor, shape, window, stride=1, dilation=1,
                      causal=False, *, extra_prefix: int = 0, extra_suffix: int = 0,
                      scale: float | None = None, key_mask: Tensor | None = None,
                      key_mask_spatial: bool = True, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Like :func:`gna_attention` but also returns the fp32 log-sum-exp ``[B, H, N]`` (no autograd)."""
    return _gna_lse_op(*_prepare(q, k, v, shape, window, stride, dilation, causal, extra_prefix,
                                 extra_suffix, scale, key_mask, key_mask_spatial, backend))
