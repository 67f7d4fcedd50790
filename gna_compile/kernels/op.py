"""The public GNA op: input checks, and the ``torch.library`` custom ops the compiler inserts.

``gna_compile::gna_attention`` (out) and ``gna_compile::gna_attention_lse`` (out, lse, and
the dense mode it ran in) have fake implementations, so ``torch.compile(fullgraph=True)``
traces each as one opaque node. Both have autograd through
``gna_compile::gna_attention_backward``: the backward kernel of the backend that ran the
forward where it takes the call, else the reference recomputed under autograd (the oracle).
The backward follows the forward's recorded mode, never the mode current when it runs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..config import make_spec
from .dispatch import (KeyMask, call_mode, dense_flag, dense_sdpa, fake_dense_flag, last_call_mode,
                       reference_backward, run_gna, run_gna_backward)

__all__ = ["gna_attention", "gna_attention_lse", "key_mask_2d"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def key_mask_2d(key_mask: Tensor, B: int, N: int) -> Tensor:
    """A bool key mask broadcastable to ``[B, 1, 1, N]`` (``[N]``, ``[B, N]``, ``[B, 1, 1, N]``,
    ...) as a contiguous ``[B, N]``."""
    m = key_mask
    while m.dim() > 2:
        if m.shape[1] != 1:
            raise ValueError(f"key_mask {tuple(key_mask.shape)} must broadcast to [B, 1, 1, N]: "
                             f"it has {m.shape[1]} entries along a head/query dim")
        m = m[:, 0]
    if m.dim() == 1:
        m = m[None]
    if m.shape[-1] != N or m.shape[0] not in (1, B):
        raise ValueError(f"key_mask {tuple(key_mask.shape)} must broadcast to [B, 1, 1, N] with "
                         f"B in (1, {B}) and N={N}")
    return m.expand(B, N).contiguous()


def _mask_arg(q, key_mask, key_mask_spatial):
    """Backends get the mask as ``KeyMask``: a bool [B, N] plus whether it may hide grid keys."""
    if key_mask is None:
        return None
    return KeyMask(key_mask_2d(key_mask, q.shape[0], q.shape[2]), key_mask_spatial)


def _spec(shape, window, stride, dilation, causal):
    return make_spec(tuple(shape), tuple(window), tuple(stride), tuple(dilation), tuple(causal))


def _tiles(q_tile, kv_tile):
    return (tuple(q_tile), tuple(kv_tile)) if q_tile else None


def _empty_result(q, v):
    """Zero-size problems (no batch, no heads): SDPA returns an empty tensor, so do we."""
    B, H, N, _ = q.shape
    return q.new_empty(B, H, N, v.shape[-1]), q.new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("gna_compile::gna_attention_lse", mutates_args=())
def _gna_lse_op(q: Tensor, k: Tensor, v: Tensor, shape: list[int], window: list[int],
                stride: list[int], dilation: list[int], causal: list[bool], extra_prefix: int,
                extra_suffix: int, scale: float, key_mask: Optional[Tensor],
                key_mask_spatial: bool, q_tile: list[int], kv_tile: list[int],
                backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(out, lse, dense): ``dense`` is the mode this call ran in (``dispatch.dense_flag``), a
    value the backward reads, so a compiled backward follows its own forward."""
    flag = dense_flag()
    if q.numel() == 0 or v.shape[-1] == 0:
        return (*_empty_result(q, v), flag)
    spec = _spec(shape, window, stride, dilation, causal)
    if bool(flag):
        spec = make_spec(spec.shape, spec.shape)
    out, lse = run_gna(q, k, v, spec, extra_prefix, extra_suffix, scale,
                       _mask_arg(q, key_mask, key_mask_spatial), backend, _tiles(q_tile, kv_tile))
    return out, lse, flag


@_gna_lse_op.register_fake
def _(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix, scale,
      key_mask, key_mask_spatial, q_tile, kv_tile, backend):
    return (*_empty_result(q, v), fake_dense_flag())


@torch.library.custom_op("gna_compile::gna_attention", mutates_args=())
def _gna_op(q: Tensor, k: Tensor, v: Tensor, shape: list[int], window: list[int],
            stride: list[int], dilation: list[int], causal: list[bool], extra_prefix: int,
            extra_suffix: int, scale: float, key_mask: Optional[Tensor], key_mask_spatial: bool,
            q_tile: list[int], kv_tile: list[int], backend: str) -> Tensor:
    dense = call_mode()
    if q.numel() == 0 or v.shape[-1] == 0:
        return _empty_result(q, v)[0]
    km = _mask_arg(q, key_mask, key_mask_spatial)
    if dense:
        return dense_sdpa(q, k, v, scale, None if km is None else KeyMask(km.mask, True)).contiguous()
    spec = _spec(shape, window, stride, dilation, causal)
    return run_gna(q, k, v, spec, extra_prefix, extra_suffix, scale, km, backend,
                   _tiles(q_tile, kv_tile))[0]


@_gna_op.register_fake
def _(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix, scale,
      key_mask, key_mask_spatial, q_tile, kv_tile, backend):
    B, H, N, _ = q.shape
    return q.new_empty(B, H, N, v.shape[-1])


@torch.library.custom_op("gna_compile::gna_attention_backward", mutates_args=())
def _gna_bwd_op(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                out: Optional[Tensor], lse: Optional[Tensor], shape: list[int], window: list[int],
                stride: list[int], dilation: list[int], causal: list[bool], extra_prefix: int,
                extra_suffix: int, scale: float, key_mask: Optional[Tensor], key_mask_spatial: bool,
                q_tile: list[int], kv_tile: list[int], backend: str,
                dense: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)``: the backward kernel of the backend that ran the forward where it takes
    the call (it reads the forward's ``out``/``lse``), else the reference recomputed under
    autograd (dispatch.run_gna_backward). ``dense``: the forward's recorded mode (a 0-dim
    bool tensor), which decides dense or GNA gradients whatever mode is on now. One opaque
    op, so AOTAutograd traces one node."""
    if q.numel() == 0 or v.shape[-1] == 0:
        return tuple(torch.zeros_like(t) for t in (q, k, v))
    km = _mask_arg(q, key_mask, key_mask_spatial)
    if bool(dense):
        spec = make_spec(tuple(shape), tuple(shape))
        grads = reference_backward(grad_out, grad_lse, q, k, v, spec, extra_prefix, extra_suffix, scale, km)
    else:
        grads = run_gna_backward(grad_out, grad_lse, q, k, v, out, lse,
                                 _spec(shape, window, stride, dilation, causal), extra_prefix,
                                 extra_suffix, scale, km, backend, _tiles(q_tile, kv_tile))
    return tuple(torch.zeros_like(t) if g is None else g.to(t.dtype).contiguous()
                 for g, t in zip(grads, (q, k, v)))


@_gna_bwd_op.register_fake
def _(grad_out, grad_lse, q, k, v, *args):
    return tuple(t.new_empty(t.shape) for t in (q, k, v))


def _tracing(t) -> bool:
    from torch._guards import detect_fake_mode
    return torch.compiler.is_compiling() or detect_fake_mode((t,)) is not None


def _save(ctx, inputs, out, lse, flag):
    q, k, v, *params = inputs
    ctx.save_for_backward(q, k, v, out, lse, flag)
    ctx.params = params
    # Eager: the mode as a Python value too. Activation checkpointing swaps the saved tensors
    # for recomputed ones, so a flag that then disagrees means the recompute ran in another mode.
    ctx.forward_dense = None if _tracing(q) else bool(flag)


def _save_out_op(ctx, inputs, output):
    """The out op has no mode output: eager, the mode is read now, as the forward ran; traced,
    a value read now would be baked into every later backward, so training graphs must use
    the LSE op (gna_attention() and the backend's rewrite do)."""
    if _tracing(inputs[0]):
        raise RuntimeError(
            "gna_compile::gna_attention has no traced backward (it cannot record the dense mode "
            "its forward ran in): call gna_compile.gna_attention(), or gna_compile::gna_attention_lse, "
            "in a compiled graph that needs gradients")
    _save(ctx, inputs, output, None, torch.tensor(last_call_mode()))  # the mode its body ran in


def _grads(ctx, grad_out, grad_lse):
    q, k, v, out, lse, flag = ctx.saved_tensors
    if ctx.forward_dense is not None and bool(flag) != ctx.forward_dense:
        raise RuntimeError(
            f"gna_compile: a GNA call ran with dense_attention()={ctx.forward_dense}, but activation "
            f"checkpointing recomputed it for the backward with dense_attention()={bool(flag)}, so its "
            f"saved activations belong to another attention: call .backward() in the mode the forward ran in")
    dq, dk, dv = _gna_bwd_op(grad_out, grad_lse, q, k, v, out, lse, *ctx.params, flag)
    return (dq, dk, dv, *([None] * 13))


# The out op saves its output only: a backward kernel then reruns the forward for the LSE. The
# public gna_attention() calls the LSE op when gradients are needed, so nothing reruns.
_gna_op.register_autograd(lambda ctx, g: _grads(ctx, g, None), setup_context=_save_out_op)
_gna_lse_op.register_autograd(lambda ctx, g, g_lse, _: _grads(ctx, g, g_lse),
                              setup_context=lambda ctx, inputs, output: _save(ctx, inputs, *output))


def _check_inputs(q, k, v, shape, extra_prefix, extra_suffix, key_mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, H, N, D], got "
                             f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}.dtype={t.dtype} is not supported: use one of {_DTYPES}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, H, N, D = q.shape
    if k.shape[:3] != v.shape[:3] or k.shape[0] != B or k.shape[2] != N:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [B={B}, Hkv, N={N}, *] "
                         f"to match q {tuple(q.shape)}")
    if k.shape[-1] != D:
        raise ValueError(f"k has head dim {k.shape[-1]} but q has {D}")
    if (k.shape[1] == 0) != (H == 0) or (H and H % k.shape[1]):
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
        if not isinstance(key_mask, Tensor) or key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask.dtype={getattr(key_mask, 'dtype', type(key_mask).__name__)} "
                             f"must be torch.bool (True = attend)")
        if key_mask.device != q.device:
            raise ValueError(f"key_mask is on {key_mask.device} but q is on {q.device}")
        key_mask = key_mask_2d(key_mask, B, N)
    return key_mask


def _check_tiles(tiles, spec):
    if tiles is None:
        return [], []
    if not (isinstance(tiles, (tuple, list)) and len(tiles) == 2):
        raise ValueError(f"tiles={tiles!r} must be None or (q_tile, kv_tile)")
    from ..sim.tiles import is_kv_subtile
    q_tile, kv_tile = (tuple(t) for t in tiles)
    for name, t in (("q_tile", q_tile), ("kv_tile", kv_tile)):
        if len(t) != spec.rank or not all(isinstance(x, int) and x >= 1 for x in t):
            raise ValueError(f"tiles: {name}={t} must have {spec.rank} extents >= 1")
    if not is_kv_subtile(q_tile, kv_tile):
        raise ValueError(f"tiles: kv_tile={kv_tile} must be a contiguous sub-box of q_tile={q_tile}")
    return list(q_tile), list(kv_tile)


def _prepare(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix,
             scale, key_mask, key_mask_spatial, backend, tiles):
    if not isinstance(backend, str):
        raise ValueError(f"backend={backend!r} must be a string such as 'auto' or 'reference'")
    spec = make_spec(shape, window, stride, dilation, causal)
    key_mask = _check_inputs(q, k, v, spec.shape, extra_prefix, extra_suffix, key_mask)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q_tile, kv_tile = _check_tiles(tiles, spec)
    return (q, k, v, list(spec.shape), list(spec.window), list(spec.stride), list(spec.dilation),
            list(spec.causal), extra_prefix, extra_suffix, scale, key_mask, bool(key_mask_spatial),
            q_tile, kv_tile, backend)


def gna_attention(q: Tensor, k: Tensor, v: Tensor, shape, window, stride=1, dilation=1,
                  causal=False, *, extra_prefix: int = 0, extra_suffix: int = 0,
                  scale: float | None = None, key_mask: Tensor | None = None,
                  key_mask_spatial: bool = True, backend: str = "auto", tiles=None) -> Tensor:
    """Generalized Neighborhood Attention over ``[B, H, N, D]`` tensors in natural token order.

    ``N = extra_prefix + prod(shape) + extra_suffix``. Spatial queries attend to their GNA
    neighborhood (DESIGN.md §1) plus every extra token; extra-token queries attend to all
    tokens. k/v may have fewer heads (GQA). ``key_mask`` (bool, broadcastable to ``[B, 1, 1,
    N]``, True = attend) removes keys for every query; a query left with no key returns zeros.
    ``key_mask_spatial=False`` promises the mask is True on every grid token, so fast backends
    apply it to the extra-token keys only (the reference applies it everywhere regardless).
    ``tiles=(q_tile, kv_tile)`` fixes the kernel tiling (default: ``kernels.tile_choice``).
    NaN/inf: a query whose attended keys/values (or itself) hold a NaN or inf returns what
    dense SDPA returns for it (NaN/inf); keys it does not attend never affect it.
    """
    args = _prepare(q, k, v, shape, window, stride, dilation, causal, extra_prefix, extra_suffix,
                    scale, key_mask, key_mask_spatial, backend, tiles)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _gna_lse_op(*args)[0]  # saves the LSE for the backward kernel
    return _gna_op(*args)


def gna_attention_lse(q: Tensor, k: Tensor, v: Tensor, shape, window, stride=1, dilation=1,
                      causal=False, *, extra_prefix: int = 0, extra_suffix: int = 0,
                      scale: float | None = None, key_mask: Tensor | None = None,
                      key_mask_spatial: bool = True, backend: str = "auto",
                      tiles=None) -> tuple[Tensor, Tensor]:
    """Like :func:`gna_attention` but also returns the fp32 log-sum-exp ``[B, H, N]`` (natural log;
    differentiable, as ``logsumexp`` of the scaled scores)."""
    out, lse, _ = _gna_lse_op(*_prepare(q, k, v, shape, window, stride, dilation, causal, extra_prefix,
                                        extra_suffix, scale, key_mask, key_mask_spatial, backend, tiles))
    return out, lse
