"""The Hopper GNA backward: entry points over the Triton backward kernels (triton_bwd.py).

The kernels take tiled order only; natural-order tensors are permuted into tiled order here,
run, and the gradients permuted back (padding rows dropped). That costs the permutation
passes the forward's ``NAT`` path saves; a natural-order kernel is left for later.
"""

from __future__ import annotations

import torch

from ... import settings
from ..permute import permute_tokens, unpermute_tokens
from . import triton_bwd_launch
from . import autotune
from .configs import BWD_CANDIDATES, BWD_INTERPRET_CONFIG, TritonBwdConfig

__all__ = ["gna_backward", "gna_backward_permuted", "why_not_backward", "why_not_backward_permuted"]


def _tiled(x, spec, q_tile, P, S):
    return permute_tokens(x, spec.shape, q_tile, P, S)


def gna_backward(q, k, v, out, lse, dout, spec, q_tile, kv_tile, extra_prefix=0, extra_suffix=0,
                 scale=None, key_mask=None, key_mask_grid=False, natural=False, config=None,
                 grad_lse=None):
    """``(dq, dk, dv)`` of GNA attention, in the inputs' layout (dk/dv: the kv heads' shape).

    ``out``/``lse``: the forward's output and natural-log fp32 LSE ``[B, H, N]`` (as
    gna_forward returns them). ``natural``: tensors in natural token order (permuted here),
    else tiled order with padding. ``key_mask``: int8/bool ``[B, N]`` in the tensors' layout,
    applied to extra keys, and to grid keys when ``key_mask_grid``. ``grad_lse``: the LSE's
    gradient ``[B, H, N]`` (or None), in the same layout."""
    if config is None and settings.interpret():
        config = BWD_INTERPRET_CONFIG
    if config is not None and not isinstance(config, TritonBwdConfig):
        raise TypeError(f"config must be a TritonBwdConfig, got {config!r}")
    P, S = extra_prefix, extra_suffix
    if not natural:
        def launch(cfg):
            return triton_bwd_launch.launch(q, k, v, out, lse, dout, spec, q_tile, kv_tile, P, S, scale,
                                            key_mask, key_mask_grid, cfg, grad_lse)
        if config is None:  # every candidate computes the same grads; time them once per problem
            problem = ("bwd", tuple(spec.dims()), tuple(q_tile), tuple(kv_tile), P, S, tuple(q.shape),
                       k.shape[1], q.dtype, key_mask is not None, bool(key_mask_grid))
            config = autotune.choose(problem, q.device, launch, BWD_CANDIDATES)
        return launch(config)
    t = [_tiled(x, spec, q_tile, P, S) for x in (q, k, v, out, dout)]
    lse_t = _tiled(lse[..., None], spec, q_tile, P, S)[..., 0]
    glse_t = None if grad_lse is None else _tiled(grad_lse.float()[..., None], spec, q_tile, P, S)[..., 0]
    km = None
    if key_mask is not None:  # padding keys come out 0 (masked)
        km = _tiled(key_mask.to(torch.float32)[:, :, None], spec, q_tile, P, S)[..., 0].to(torch.int8)
    grads = gna_backward(*t[:4], lse_t, t[4], spec, q_tile, kv_tile, P, S, scale, km, key_mask_grid,
                         natural=False, config=config, grad_lse=glse_t)
    return tuple(unpermute_tokens(g, spec.shape, q_tile, P, S) for g in grads)


def gna_backward_permuted(qp, kp, vp, outp, lsep, doutp, spec, q_tile, kv_tile, extra_prefix=0,
                          extra_suffix=0, scale=None, key_mask=None, config=None, grad_lse=None):
    """Backward of forward.gna_attention_permuted: tensors (``grad_lse`` too) in tiled order,
    ``key_mask`` a :class:`~gna_compile.kernels.dispatch.KeyMask` in natural order (or None).
    Returns ``(dq, dk, dv)`` in tiled order; padding rows hold zeros."""
    km = None
    grid_mask = False
    if key_mask is not None:
        m = key_mask.mask.to(torch.float32)[:, :, None]
        km = _tiled(m, spec, q_tile, extra_prefix, extra_suffix)[..., 0].to(torch.int8).contiguous()
        grid_mask = bool(key_mask.spatial)
    return gna_backward(qp, kp, vp, outp, lsep, doutp, spec, q_tile, kv_tile, extra_prefix, extra_suffix,
                        scale, km, grid_mask, natural=False, config=config, grad_lse=grad_lse)


def why_not_backward_permuted(qp, kp, vp, spec, extra_prefix, extra_suffix, scale, key_mask, tiles) -> str | None:
    """Why gna_backward_permuted cannot take this call, or None: ``qp``/``kp``/``vp`` in tiled
    order, ``key_mask`` a KeyMask (or [B, N] tensor) in natural order, ``tiles`` = (q_tile, kv_tile)."""
    if tiles is None:
        return "no tile shapes given"
    mask = getattr(key_mask, "mask", key_mask)
    n_nat = extra_prefix + spec.num_tokens + extra_suffix
    if mask is not None and tuple(mask.shape) != (qp.shape[0], n_nat):
        return f"key_mask must be [B, N] = [{qp.shape[0]}, {n_nat}], got {tuple(mask.shape)}"
    return triton_bwd_launch.why_not(qp, kp, vp, spec, *tiles, extra_prefix, extra_suffix, scale, None)


def why_not_backward(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles) -> str | None:
    """Why the Triton backward cannot take this call, or None. ``q``/``k``/``v`` in natural
    order (the padded tiled layout is what the kernels see), ``tiles`` = ``(q_tile,
    kv_tile)``, ``key_mask`` a KeyMask, a [B, N] tensor or None."""
    if tiles is None:
        return "no tile shapes given"
    q_tile, kv_tile = tiles
    if any(x.dim() != 4 for x in (q, k, v)):
        return "q, k, v must be [B, H, N, D]"
    try:
        qt, kt, vt = (_tiled(x, spec, q_tile, extra_prefix, extra_suffix) for x in (q[:1, :1], k[:1, :1], v[:1, :1]))
    except ValueError as e:
        return str(e)
    mask = getattr(key_mask, "mask", key_mask)
    if mask is not None and tuple(mask.shape) != (q.shape[0], q.shape[2]):
        return f"key_mask must be [B, N] = [{q.shape[0]}, {q.shape[2]}], got {tuple(mask.shape)}"
    if q.shape[1] % max(k.shape[1], 1) or k.shape[1] != v.shape[1]:
        return f"H={q.shape[1]} must be a multiple of the kv heads {k.shape[1]} (k and v alike)"
    return triton_bwd_launch.why_not(qt, kt, vt, spec, q_tile, kv_tile, extra_prefix, extra_suffix,
                                     scale, None)
