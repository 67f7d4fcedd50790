"""The Hopper GNA forward: one entry point that routes a call to the Triton kernel or, for
perfectly block-sparse calls in tiled order, the Gluon kernel, with the launch config the
autotuner picked for the problem (or the one given)."""

from __future__ import annotations

import torch

from ... import settings
from . import autotune, gluon_launch, triton_launch
from .configs import (GLUON_CANDIDATES, GLUON_FORCED, INTERPRET_CONFIG, GluonConfig, TritonConfig,
                      triton_candidates)

__all__ = ["gna_forward", "gna_attention_permuted"]


def gna_forward(q, k, v, spec, q_tile, kv_tile, extra_prefix=0, extra_suffix=0, scale=None,
                key_mask=None, key_mask_grid=False, natural=True, out=None, lse=None,
                config=None, tma=None, grid_visible=None):
    """Launch the forward. ``natural``: tensors in natural token order, else tiled order with
    padding (``permute_tokens`` layout). ``key_mask``: int8/bool ``[B, N]`` in the same layout
    as the tensors; applied to extra keys, and to grid keys when ``key_mask_grid``.
    ``grid_visible``: optional ``[B]`` device tensor, true where a batch's mask hides no grid
    key: its full tiles then run unmasked (worked out here in natural order; in tiled order
    the caller passes it, else the masked path is kept). ``config``: a TritonConfig or
    GluonConfig (None: autotuned per problem). Returns ``(out, lse)`` in the same layout."""
    B, H, N, D = q.shape
    if config is not None and not isinstance(config, (TritonConfig, GluonConfig)):
        raise TypeError(f"config must be a TritonConfig or GluonConfig, got {config!r}")
    if out is None:
        out = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device)
    if lse is None:
        lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
    P, S = extra_prefix, extra_suffix
    # Whether the Gluon kernel may take this call: only asked when the config is not given.
    gluon_ok = (config is None and q.is_cuda and gluon_launch.enabled() and lse.is_contiguous()
                and gluon_launch.unsupported_reason(q, k, v, spec, q_tile, kv_tile, P, S, key_mask,
                                                    natural, out) is None)
    if gluon_ok and gluon_launch.mode() == "forced":
        config = GLUON_FORCED
    if isinstance(config, GluonConfig) and not gluon_ok:  # a GluonConfig the caller passed
        why = gluon_launch.unsupported_reason(q, k, v, spec, q_tile, kv_tile, P, S, key_mask, natural, out)
        if why is not None:
            raise ValueError(f"config={config}: the Gluon kernel does not take this call ({why})")
    grid, args, meta = triton_launch.launch_args(q, k, v, spec, q_tile, kv_tile, P, S, scale, key_mask,
                                                 key_mask_grid, natural, out, lse, tma, grid_visible)
    sixteen_bit = q.dtype in (torch.float16, torch.bfloat16)

    def launch(cfg):
        if isinstance(cfg, GluonConfig):
            gluon_launch.gna_forward_gluon(q, k, v, spec, q_tile, scale, out, lse, extra_prefix=P,
                                           extra_suffix=S, stages=cfg.stages, stale=cfg.stale, ws=cfg.ws,
                                           pingpong=cfg.pingpong, persistent=cfg.persistent)
        else:
            triton_launch.launch(cfg, grid, args, meta, sixteen_bit)

    if config is None and settings.interpret():
        config = INTERPRET_CONFIG
    elif config is None:
        problem = (tuple(spec.dims()), tuple(q_tile), tuple(kv_tile), P, S, B, H, k.shape[1], D, q.dtype,
                   bool(natural), meta["TMA"], meta["HAS_KM"], meta["KM_GRID"], gluon_ok)
        candidates = triton_candidates(meta["BM"]) + (GLUON_CANDIDATES if gluon_ok else ())
        config = autotune.choose(problem, q.device, launch, candidates)
    launch(config)
    return out, lse


def gna_attention_permuted(qp, kp, vp, spec, q_tile, kv_tile, extra_prefix=0, extra_suffix=0,
                           scale=None, key_mask=None):
    """GNA attention on tensors already in tiled order (``permute_tokens(x, shape, q_tile, ...)``).

    ``key_mask`` is a :class:`~gna_compile.kernels.dispatch.KeyMask` in natural order (or None).
    Returns ``(out, lse)`` in tiled order; padded rows hold finite values to be dropped.
    """
    from ..permute import permute_tokens
    km = None
    grid_mask = False
    visible = None
    if key_mask is not None:
        m = key_mask.mask.to(torch.float32)[:, :, None]
        km = permute_tokens(m, spec.shape, q_tile, extra_prefix, extra_suffix)[..., 0].to(torch.int8).contiguous()
        grid_mask = bool(key_mask.spatial)
        if grid_mask:
            grid = key_mask.mask[:, extra_prefix:extra_prefix + spec.num_tokens]
            visible = grid.to(device=qp.device).bool().all(dim=1)
    return gna_forward(qp, kp, vp, spec, q_tile, kv_tile, extra_prefix, extra_suffix, scale,
                       km, grid_mask, natural=False, grid_visible=visible)
