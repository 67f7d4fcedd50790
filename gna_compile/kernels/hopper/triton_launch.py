"""Launch of the Triton forward kernel (triton_fwd.py): argument checks, the padded 3-D
problem, TMA descriptors, and one launch for a named config (configs.TritonConfig)."""

from __future__ import annotations

import math

import torch

from ... import settings
from ...sim.tiles import is_kv_subtile
from . import constants as C
from .configs import TritonConfig
from .triton_fwd import _gna_fwd

__all__ = ["launch_args", "launch", "LAST_KERNEL"]

LAST_KERNEL: list = [None]  # compiled handle of the last launch (registers, spills, smem)


def launch_args(q, k, v, spec, q_tile, kv_tile, extra_prefix, extra_suffix, scale, key_mask,
                key_mask_grid, natural, out, lse, tma=None, grid_visible=None):
    """Checked ``(grid, args, meta)`` of one launch (also used to compile offline)."""
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    if D not in C.TRITON_HEAD_DIMS or v.shape[-1] != D:
        raise ValueError(f"head dim {D} (v: {v.shape[-1]}) not supported: need q/k/v dims equal, in {C.TRITON_HEAD_DIMS}")
    if H % Hkv:
        raise ValueError(f"H={H} must be a multiple of the kv heads {Hkv}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("q, k, v need a contiguous last dim")
    rank = spec.rank
    shape3 = C.pad3(spec.shape, 1)
    win3 = C.pad3(spec.window, 1)
    str3 = C.pad3(spec.stride, 1)
    dil3 = C.pad3(spec.dilation, 1)
    cau3 = C.pad3(spec.causal, False)
    tq3, tk3 = C.pad3(q_tile, 1), C.pad3(kv_tile, 1)
    if len(q_tile) != rank or len(kv_tile) != rank:
        raise ValueError(f"q_tile={q_tile} / kv_tile={kv_tile} need {rank} dims")
    if not is_kv_subtile(tuple(q_tile), tuple(kv_tile)):
        raise ValueError(f"kv_tile={kv_tile} must be a contiguous sub-box of q_tile={q_tile}")
    BM, BN = math.prod(q_tile), math.prod(kv_tile)
    if BM not in C.TRITON_TILE_TOKENS or BN not in C.TRITON_TILE_TOKENS:
        raise ValueError(f"tile sizes {BM}x{BN} not supported (q/kv tiles of 16..128 tokens, powers of 2)")
    pshape = tuple(-(-n // t) * t for n, t in zip(shape3, tq3))
    nt = [p // t for p, t in zip(pshape, tq3)]
    n_grid = math.prod(shape3)
    NG = n_grid if natural else math.prod(pshape)
    P, S = extra_prefix, extra_suffix
    if N != P + NG + S:
        raise ValueError(f"token dim {N} != extra_prefix + grid + extra_suffix = {P} + {NG} + {S}")
    if k.shape[2] != N or v.shape[2] != N:
        raise ValueError("q, k, v must have the same number of tokens")
    scale = D ** -0.5 if scale is None else scale
    if not scale > 0:  # row maxima are taken before scaling
        raise ValueError(f"scale must be > 0 for the Triton kernel, got {scale}")
    if tma is None:
        tma = settings.tma()
    if key_mask is not None:
        km = key_mask.to(torch.int8) if key_mask.dtype == torch.bool else key_mask
        if km.shape != (B, N) or km.stride(-1) != 1:
            raise ValueError(f"key_mask must be a [B, N] = [{B}, {N}] tensor with contiguous tokens")
    else:
        km = torch.empty(1, 1, dtype=torch.int8, device=q.device)
    if key_mask is not None and key_mask_grid:
        if grid_visible is None and natural:
            grid_visible = (km[:, P:P + NG] != 0).all(dim=1)
        if grid_visible is None:  # tiled layout: padding keys are masked, so the caller knows
            grid_visible = torch.zeros(B, dtype=torch.int32, device=q.device)
        gv = grid_visible.to(device=q.device, dtype=torch.int32).contiguous()
        if gv.shape != (B,):
            raise ValueError(f"grid_visible must have shape [{B}], got {tuple(gv.shape)}")
    else:
        gv = km  # unused
    n_extra_tiles = -(-P // BM) + -(-S // BM)
    grid = (n_extra_tiles + math.prod(nt), H, B)
    meta = dict(TQ0=tq3[0], TQ1=tq3[1], TQ2=tq3[2], TK0=tk3[0], TK1=tk3[1], TK2=tk3[2],
                BM=BM, BN=BN, D=D, C0=cau3[0], C1=cau3[1], C2=cau3[2], DIL=any(d > 1 for d in dil3),
                NAT=bool(natural), KM_GRID=bool(key_mask is not None and key_mask_grid),
                HAS_KM=key_mask is not None, HAS_EXTRA_KV=(P + S) > 0, HAS_EXTRA_Q=(P + S) > 0)
    use_tma = ((not natural) and tma and k.is_contiguous() and v.is_contiguous()
               and k.data_ptr() % 16 == 0 and v.data_ptr() % 16 == 0  # TMA's base alignment
               and B * Hkv * N < 2 ** 31)  # TMA coordinates are int32
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor
        desc_k = TensorDescriptor(k, shape=[B * Hkv * N, D], strides=[D, 1], block_shape=[BN, D])
        desc_v = TensorDescriptor(v, shape=[B * Hkv * N, D], strides=[D, 1], block_shape=[BN, D])
    else:
        desc_k = desc_v = None
    meta["TMA"] = use_tma
    meta["RANK"] = rank
    meta["XFULL"] = (P + S) > 0 and key_mask is None
    args = (q, k, v, out, lse, km, gv, desc_k, desc_v, N,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            lse.stride(0), lse.stride(1), km.stride(0),
            H // Hkv, P, S, NG, nt[1], nt[2], n_extra_tiles,
            *shape3, *win3, *str3, *dil3, scale * C.LOG2E)
    return grid, args, meta



def launch(config: TritonConfig, grid, args, meta, sixteen_bit: bool):
    """One launch with ``config``; the cubic exp (fma_exp) only where P is 16-bit."""
    k = _gna_fwd[grid](*args, **meta, WS=config.warp_specialize,
                       FMA_EXP=config.fma_exp if sixteen_bit else 0, STALE=config.stale,
                       num_warps=config.num_warps, num_stages=config.num_stages, enable_fp_fusion=True)
    LAST_KERNEL[0] = k
