"""Launch of the Triton backward kernels (triton_bwd.py): checks, the padded 3-D problem, the
inverse-box host tables, and the three launches (delta, dK/dV, dQ). Tiled order only."""

from __future__ import annotations

import functools
import math

import torch

from ...mask import key_range
from ...sim.tiles import is_kv_subtile
from . import constants as C
from .configs import TritonBwdConfig
from .triton_bwd import _gna_bwd_delta, _gna_bwd_dkdv, _gna_bwd_dq

__all__ = ["why_not", "inverse_box_tables", "full_box_tables", "launch"]


def why_not(q, k, v, spec, q_tile, kv_tile, extra_prefix, extra_suffix, scale, key_mask) -> str | None:
    """Why the backward kernels cannot take this call (tiled order), or None."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q, k, v must be [B, H, N, D]"
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    if D not in C.TRITON_HEAD_DIMS or k.shape[-1] != D or v.shape[-1] != D:
        return f"head dim {D} (k: {k.shape[-1]}, v: {v.shape[-1]}) not in {C.TRITON_HEAD_DIMS} or unequal"
    if v.shape[1] != Hkv or H % Hkv:
        return f"H={H} must be a multiple of the kv heads {Hkv} (k and v alike)"
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        return "q, k, v need a contiguous last dim"
    if len(q_tile) != spec.rank or len(kv_tile) != spec.rank:
        return f"q_tile={q_tile} / kv_tile={kv_tile} need {spec.rank} dims"
    if not is_kv_subtile(tuple(q_tile), tuple(kv_tile)):
        return f"kv_tile={kv_tile} must be a contiguous sub-box of q_tile={q_tile}"
    BM, BN = math.prod(q_tile), math.prod(kv_tile)
    if BM not in C.TRITON_TILE_TOKENS or BN not in C.TRITON_TILE_TOKENS:
        return f"tile sizes {BM}x{BN} not supported (powers of 2 in 16..128 tokens)"
    NG = math.prod(-(-n // t) * t for n, t in zip(spec.shape, q_tile))
    if N != extra_prefix + NG + extra_suffix:
        return f"token dim {N} != extra_prefix + padded grid + extra_suffix = {extra_prefix} + {NG} + {extra_suffix}"
    if k.shape[2] != N or v.shape[2] != N or k.shape[0] != B or v.shape[0] != B:
        return "q, k, v must have the same batch and token dims"
    if scale is not None and not scale > 0:
        return f"scale must be > 0, got {scale}"
    if key_mask is not None and tuple(key_mask.shape) != (B, N):
        return f"key_mask must be [B, N] = [{B}, {N}], got {tuple(key_mask.shape)}"
    return None


def inverse_box_tables(spec, q_tile, kv_tile, device) -> torch.Tensor:
    """int32 ``[3, 2, T]``: per (padded) dim and KV tile, the first and last Q tile whose box
    reaches it (last < first: none). Built from mask.key_range, exact min/max per Q tile.

    Cached per problem and device, read-only: a host-to-device copy on every backward call is
    a stream synchronisation (a blocking ``.to(device)``), which stalled training steps."""
    return _device_table("box", tuple(tuple(d) for d in spec.dims()), tuple(q_tile), tuple(kv_tile), str(device))


def full_box_tables(spec, q_tile, kv_tile, device) -> torch.Tensor:
    """int32 ``[3, 2, T]``, beside inverse_box_tables (and cached as it is): per (padded) dim
    and KV tile, the first and last Q tile of which every query sees every key of the KV tile
    (the dK/dV kernel's unmasked loop); none as ``[first, first - 1]`` with ``first`` the
    inverse box's, the convention the kernels' box-minus-full walk needs. Exact (brute force
    over key_range), and empty where the set is not an interval, where the KV tile reaches past
    the grid (padding keys) or with dilation: an unmasked pair must never hold a masked (query,
    key)."""
    return _device_table("full", tuple(tuple(d) for d in spec.dims()), tuple(q_tile), tuple(kv_tile), str(device))


@functools.lru_cache(maxsize=512)
def _device_table(kind: str, dims, q_tile, kv_tile, device: str) -> torch.Tensor:
    return {"box": _host_table, "full": _host_full_table}[kind](dims, q_tile, kv_tile).to(device)


def _padded(spec_dims, q_tile, kv_tile):
    """(dims, q tile, kv tile) padded to rank 3 with extent-1 dims in front, as the kernels see them."""
    dims = [(1, 1, 1, 1, False)] * (3 - len(spec_dims)) + list(spec_dims)
    return dims, C.pad3(q_tile, 1), C.pad3(kv_tile, 1)


def _host_table(spec_dims, q_tile, kv_tile) -> torch.Tensor:
    dims, tq3, tk3 = _padded(spec_dims, q_tile, kv_tile)
    nkv = [-(-d[0] // tq) * tq // tk for d, tq, tk in zip(dims, tq3, tk3)]
    T = max(nkv)
    tab = torch.zeros(3, 2, T, dtype=torch.int32)
    tab[:, 1] = -1
    for i, ((n, w, s, d, c), tq, tk) in enumerate(zip(dims, tq3, tk3)):
        first, last = [None] * nkv[i], [None] * nkv[i]
        for qt in range(-(-n // tq)):
            ranges = [key_range(x, n, w, s, d, c) for x in range(qt * tq, min(qt * tq + tq, n))]
            for kt in range(min(r[0] for r in ranges) // tk, max(r[1] for r in ranges) // tk + 1):
                first[kt] = qt if first[kt] is None else first[kt]
                last[kt] = qt
        for kt in range(nkv[i]):
            if first[kt] is not None:
                tab[i, 0, kt], tab[i, 1, kt] = first[kt], last[kt]
    return tab


def _host_full_table(spec_dims, q_tile, kv_tile) -> torch.Tensor:
    dims, tq3, tk3 = _padded(spec_dims, q_tile, kv_tile)
    box = _host_table(spec_dims, q_tile, kv_tile)
    tab = torch.zeros_like(box)
    tab[:, 0] = box[:, 0]
    tab[:, 1] = box[:, 0] - 1
    for i, ((n, w, s, d, c), tq, tk) in enumerate(zip(dims, tq3, tk3)):
        if d != 1:
            continue
        ranges = [key_range(x, n, w, s, d, c) for x in range(n)]
        for kt in range(-(-n // tq) * tq // tk):
            k_lo, k_hi = kt * tk, kt * tk + tk - 1
            if k_hi >= n:
                continue
            full = [qt for qt in range(-(-n // tq))
                    if all(ranges[x][0] <= k_lo and k_hi <= ranges[x][1] for x in range(qt * tq, min(qt * tq + tq, n)))]
            if full and full == list(range(full[0], full[-1] + 1)):
                tab[i, 0, kt], tab[i, 1, kt] = full[0], full[-1]
    return tab


def launch(q, k, v, out, lse, dout, spec, q_tile, kv_tile, P, S, scale, key_mask, key_mask_grid,
           config: TritonBwdConfig, grad_lse=None):
    """``(dq, dk, dv)`` in tiled order; dk/dv have k's and v's shapes. ``grad_lse`` (the LSE's
    gradient, or None) enters as ``delta - grad_lse``: d lse_i / d s_ij = P_ij."""
    why = why_not(q, k, v, spec, q_tile, kv_tile, P, S, scale, key_mask)
    if why is not None:
        raise ValueError(why)
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    if dout.shape != q.shape or out.shape != q.shape or lse.shape != (B, H, N):
        raise ValueError("out and dout must have q's shape, lse [B, H, N]")
    if grad_lse is not None and tuple(grad_lse.shape) != (B, H, N):
        raise ValueError(f"grad_lse must be [B, H, N] = [{B}, {H}, {N}], got {tuple(grad_lse.shape)}")
    for name, t in (("out", out), ("dout", dout)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} needs a contiguous last dim")
    lse = lse.to(torch.float32)
    if q.dtype == torch.float64:
        # fp64 runs in fp32 (the accumulation is fp32 anyway): an fp64 launch under the
        # interpreter stored dQ with the wrong element size (cause not found).
        grads = launch(*(t.float() for t in (q, k, v, out)), lse, dout.float(), spec, q_tile, kv_tile,
                       P, S, scale, key_mask, key_mask_grid, config, grad_lse)
        return tuple(g.double() for g in grads)
    scale = D ** -0.5 if scale is None else scale
    shape3, tq3, tk3 = C.pad3(spec.shape, 1), C.pad3(q_tile, 1), C.pad3(kv_tile, 1)
    win3, str3, dil3 = (C.pad3(x, 1) for x in (spec.window, spec.stride, spec.dilation))
    cau3 = C.pad3(spec.causal, False)
    nt = [-(-n // t) for n, t in zip(shape3, tq3)]
    nk = [p * tq // tk for p, tq, tk in zip(nt, tq3, tk3)]
    BM, BN = math.prod(q_tile), math.prod(kv_tile)
    NG = math.prod(nt) * BM
    if key_mask is not None:
        if key_mask.device != q.device:
            raise ValueError(f"key_mask is on {key_mask.device} but q is on {q.device}: the backward "
                             f"kernel reads both from one device")
        km = (key_mask.to(torch.int8) if key_mask.dtype == torch.bool else key_mask).contiguous()
    else:
        km = torch.empty(1, 1, dtype=torch.int8, device=q.device)
    # Zero-filled so that a row no program owns can never hold garbage.
    dq = torch.zeros_like(q)
    dk = torch.zeros_like(k)
    dv = torch.zeros_like(v)
    # Zeroed too: a padded row's delta must not be garbage where its P meets a zero dO.
    delta = torch.zeros(B, H, N, dtype=torch.float32, device=q.device)
    opts = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    _gna_bwd_delta[(triton_cdiv(N, 64), H, B)](
        out, dout, delta, out.stride(0), out.stride(1), out.stride(2), dout.stride(0), dout.stride(1),
        dout.stride(2), delta.stride(0), delta.stride(1), N, BM=64, D=D, **opts)
    if grad_lse is not None:
        delta -= grad_lse.to(device=q.device, dtype=torch.float32)
    sub_m, sub_n = config.steps(BM, BN)
    meta = dict(TQ0=tq3[0], TQ1=tq3[1], TQ2=tq3[2], TK0=tk3[0], TK1=tk3[1], TK2=tk3[2], BM=BM, BN=BN, D=D,
                C0=cau3[0], C1=cau3[1], C2=cau3[2], DIL=any(d > 1 for d in dil3),
                KM_GRID=bool(key_mask is not None and key_mask_grid), HAS_KM=key_mask is not None,
                HAS_EXTRA=(P + S) > 0)
    common = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
              v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
              lse.stride(0), lse.stride(1), delta.stride(0), delta.stride(1), km.stride(0))
    problem = (*shape3, *win3, *str3, *dil3, scale * C.LOG2E, scale)
    tab = inverse_box_tables(spec, q_tile, kv_tile, q.device)
    full_tab = full_box_tables(spec, q_tile, kv_tile, q.device) if config.split else tab
    meta["SPLIT"] = bool(config.split)
    n_extra_kv = -(-P // BN) + -(-S // BN)
    _gna_bwd_dkdv[(n_extra_kv + math.prod(nk), Hkv, B)](
        q, k, v, dout, lse, delta, km, tab, full_tab, dk, dv, *common,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), tab.stride(1),
        H // Hkv, P, S, NG, nt[1], nt[2], nk[1], nk[2], n_extra_kv, *problem, SUB_M=sub_m, **meta, **opts)
    n_extra_q = -(-P // BM) + -(-S // BM)
    _gna_bwd_dq[(n_extra_q + math.prod(nt), H, B)](
        q, k, v, dout, lse, delta, km, dq, *common, dq.stride(0), dq.stride(1), dq.stride(2),
        H // Hkv, P, S, NG, nt[1], nt[2], n_extra_q, *problem, SUB_N=sub_n, **meta, **opts)
    return dq, dk, dv


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
