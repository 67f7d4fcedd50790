"""Launch of the Gluon forward kernel (gluon_fwd.py): which calls it takes, the 2-D TMA
views of q/k/v/out, the per-dim KV-tile ranges it walks, and the launches.

Scope (``unsupported_reason`` says why a problem is out of it): the perfectly block-sparse
case only. That means:
- tiled token order and no key mask;
- no dilation or causal dims, and a grid the Q tile divides;
- KV tile = Q tile of 128 tokens, every visited KV tile full;
- extra tokens only in whole 128-token tiles (FLUX's 512 text tokens);
- head dim 64 or 128, bf16/fp16;
- q/k/v/out either contiguous ``[B, H, N, D]`` or views with the heads in the columns of a
  ``[B, N, ., H*D]`` buffer, as a model's projections make them. Both are one 2-D TMA
  descriptor.
Everything else stays on the Triton kernel. Extra-token queries attend to every key; grid
queries attend to their window box and then to every extra key (DESIGN.md §1). Variants
(configs.GluonConfig): 2 or 3 K/V stages, and a frozen row max (Q tiles whose row sums leave
[2^-60, 2^64) are redone exactly by a second launch).
"""
from __future__ import annotations

import functools
import math

import torch

from ... import settings
from ...sim.core import full_tile_ranges
from . import constants as C
from .gluon_fwd import HAVE_GLUON

if HAVE_GLUON:
    from .gluon_fwd import TensorDescriptor, _gna_fwd_gluon, gl
    from .gluon_ws_fwd import _gna_fwd_ws

# The warp-specialised kernel: 4 warps per consumer warpgroup (the default partition is the
# first), 1 producer warp, 12 warps in all. 168 registers x 384 threads fill the register
# file; the partitions then move them to 240 per consumer thread and 32 per producer thread.
WS_LAUNCH = dict(num_warps=4, maxnreg=168)
WS_MAX_STAGES = {128: 2, 64: 3}  # Q x2 + O + stages x K/V within 227 KB

__all__ = ["HAVE_GLUON", "mode", "enabled", "unsupported_reason", "launch_args", "gna_forward_gluon"]


def mode() -> str:
    """GNA_GLUON: "0" never uses this kernel, "1" uses it (configs.GLUON_FORCED) for every
    call it takes, unset lets the autotuner choose between it and the Triton kernel."""
    return settings.gluon_mode() if HAVE_GLUON else "off"


def enabled() -> bool:
    return mode() != "off"


def unsupported_reason(q, k, v, spec, q_tile, kv_tile, extra_prefix, extra_suffix, key_mask, natural, out=None):
    """None when the Gluon kernel handles this call, else why not (a sentence). ``out``, if
    given, must have a layout it can write too."""
    if not HAVE_GLUON:
        return "this Triton has no Gluon"
    if q.is_cuda and torch.cuda.get_device_capability(q.device)[0] != 9:
        return "needs a Hopper GPU (wgmma, sm_90)"
    if natural:
        return "needs tiled token order"
    if extra_prefix % C.GLUON_BLOCK or extra_suffix % C.GLUON_BLOCK:
        return f"extra tokens must come in whole tiles of {C.GLUON_BLOCK}"
    if key_mask is not None:
        return "key masks are not handled"
    if any(d > 1 for d in spec.dilation) or any(spec.causal):
        return "dilation and causal dims are not handled"
    if tuple(q_tile) != tuple(kv_tile) or math.prod(q_tile) != C.GLUON_BLOCK:
        return f"needs KV tile = Q tile of {C.GLUON_BLOCK} tokens"
    if any(n % t for n, t in zip(spec.shape, q_tile)):
        return "the Q tile must divide the grid (no padding)"
    if not _all_full(spec, tuple(q_tile)):
        return "some visited KV tiles are partial (not perfectly block-sparse)"
    D = q.shape[-1]
    if D not in C.GLUON_HEAD_DIMS or k.shape[-1] != D or v.shape[-1] != D:
        return f"head dim must be one of {C.GLUON_HEAD_DIMS}"
    if q.dtype not in (torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return "needs bf16 or fp16"
    for name, x in (("q", q), ("k", k), ("v", v), ("out", out)):
        if x is None:
            continue
        if x.dtype != q.dtype:
            return f"{name} must have q's dtype"
        if _layout(x) is None:
            return (f"{name} is neither contiguous [B, H, N, D] nor heads-in-columns of a [B, N, ., H*D] "
                    f"buffer (strides {tuple(x.stride())})")
    return None


def _layout(x):
    """How ``x`` ([B, Hx, N, D], last dim contiguous) maps onto a 2-D ``[rows, cols]`` TMA view:
    ``(rows, cols, pitch, row_b, row_h, col_h)``, so that token n of head h in batch b is row
    ``b*row_b + h*row_h + n``, columns from ``h*col_h``. None if neither layout fits."""
    B, Hx, N, D = x.shape
    sb, sh, sn, sd = x.stride()
    if sd != 1 or x.data_ptr() % 16:
        return None
    if x.is_contiguous():  # heads in rows
        rows, cols, pitch, rb, rh, ch = B * Hx * N, D, D, Hx * N, N, 0
    elif sh == D and sn >= Hx * D and (B == 1 or sb == N * sn) and (sn * x.element_size()) % 16 == 0:
        rows, cols, pitch, rb, rh, ch = B * N, Hx * D, sn, N, 0, D  # heads in columns
    else:
        return None
    return (rows, cols, pitch, rb, rh, ch) if rows < 2 ** 31 else None


@functools.lru_cache(maxsize=256)
def _all_full(spec, q_tile) -> bool:
    from ..tile_choice import tile_stats
    vis, full, _, _ = tile_stats(spec, q_tile, q_tile)
    return vis == full


def launch_args(q, k, v, spec, q_tile, out, lse, scale=None, extra_prefix=0, extra_suffix=0, ws=False,
                persistent=False):
    """``(grid, args, meta)`` of one launch (also used to compile offline). The caller has
    checked ``unsupported_reason`` (and that ``out`` has a supported layout). ``ws``: for the
    warp-specialised kernel (gluon_ws_fwd.py): Q and O move in 64-row halves, one per consumer
    warpgroup, FLAGS has an entry per half, and the programs walk the (Q tile, head, batch)
    items; ``persistent``: one program per SM (else one per item)."""
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    shape3, win3, str3, tq3 = (C.pad3(t, 1) for t in (spec.shape, spec.window, spec.stride, q_tile))
    nt = [n // t for n, t in zip(shape3, tq3)]
    P, S, NG = extra_prefix, extra_suffix, spec.num_tokens
    if N != P + NG + S or lse.shape != (B, H, N) or not lse.is_contiguous():
        raise ValueError(f"tokens {N} != {P} + {NG} + {S}, or lse is not a contiguous [B, H, N]")
    gdt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    descs, coords = [], []
    for name, x in (("q", q), ("k", k), ("v", v), ("out", out)):
        lay = _layout(x)
        if lay is None:
            raise ValueError(f"{name}: layout with strides {tuple(x.stride())} not supported")
        rows, cols, pitch, rb, rh, ch = lay
        block = [C.GLUON_BLOCK // 2 if ws and name in ("q", "out") else C.GLUON_BLOCK, D]
        smem = gl.NVMMASharedLayout.get_default_for(block, gdt)
        descs.append(TensorDescriptor(x, [rows, cols], [pitch, 1], block, smem))
        coords += [rb, rh, ch]
    scale = D ** -0.5 if scale is None else scale
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    nxq = (P + S) // C.GLUON_BLOCK
    grid = (nxq + math.prod(nt), H, B)
    # STALE: Q tiles (ws: halves) to redo
    flags = torch.empty(math.prod(grid) * (2 if ws else 1), dtype=torch.int32, device=q.device)
    ranges = ranges_table(shape3, win3, str3, tq3, q.device)
    args = (*descs, lse, flags, N, H // Hkv, *nt, P, NG, P // C.GLUON_BLOCK, nxq, nxq, *coords,
            ranges, max(nt), scale * C.LOG2E)
    meta = dict(T0=tq3[0], T1=tq3[1], T2=tq3[2])
    if ws:
        n_items = math.prod(grid)
        args += (grid[0], H, n_items)
        grid = (min(n_items, _sm_count(q.device)) if persistent else n_items,)
    return grid, args, meta


@functools.lru_cache(maxsize=16)
def _sm_count(device) -> int:
    if device.type != "cuda":
        return 132  # offline compiles (tools/sm90_compile.py): an H100/H200
    return torch.cuda.get_device_properties(device).multi_processor_count


def ranges_table(shape3, win3, str3, tq3, device):
    """int32 ``[3, max tiles, 2]``: per dim and Q tile, the full KV-tile range (the kernel's
    box). Cached per device and problem: the first call for a problem copies it to the device,
    so run that call once before capturing a CUDA graph."""
    return _ranges_table(tuple(shape3), tuple(win3), tuple(str3), tuple(tq3), str(device))


@functools.lru_cache(maxsize=64)
def _ranges_table(shape3, win3, str3, tq3, device):
    nt = max(-(-n // t) for n, t in zip(shape3, tq3))
    table = torch.zeros(3, nt, 2, dtype=torch.int32)
    for i, (n, w, s, t) in enumerate(zip(shape3, win3, str3, tq3)):
        r = full_tile_ranges(n, w, s, False, t, t)
        table[i, :len(r)] = torch.tensor(r, dtype=torch.int32)
    return table.to(device)


def gna_forward_gluon(q, k, v, spec, q_tile, scale=None, out=None, lse=None, num_warps=8, overlap=True,
                      extra_prefix=0, extra_suffix=0, stages=2, stale=False, redo=True, ws=False, pingpong=True,
                      persistent=False):
    """Launch on tiled-order tensors ``[B, H, N, D]`` (``permute_tokens`` layout, extra tokens
    around the grid); returns ``(out, lse)`` in that layout. ``stages``: K/V buffers (2 or 3);
    ``stale``: frozen row max, then the redo launch (``redo=False`` only shows, in a test,
    what the frozen pass alone gives); ``overlap=False``: the debugging baseline (see kernel).
    ``ws``: the warp-specialised kernel (gluon_ws_fwd.py; ``num_warps`` and ``overlap`` do not
    apply), ``pingpong``: its consumer warpgroups take turns to issue their matmuls,
    ``persistent``: one program per SM walking the items (the next item's loads overlap the
    current one's end)."""
    if stages not in (2, 3):
        raise ValueError(f"stages must be 2 or 3, got {stages}")
    B, H, N, D = q.shape
    if ws and stages > WS_MAX_STAGES[D]:
        raise ValueError(f"stages={stages}: the warp-specialised kernel takes at most {WS_MAX_STAGES[D]} with "
                         f"head dim {D} (shared memory)")
    out = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device) if out is None else out
    lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device) if lse is None else lse
    grid, args, meta = launch_args(q, k, v, spec, q_tile, out, lse, scale, extra_prefix, extra_suffix, ws=ws,
                                   persistent=persistent)
    for second in (False, True) if stale and redo else (False,):
        if ws:
            _gna_fwd_ws[grid](*args, **meta, **WS_LAUNCH, NS=stages, STALE=bool(stale), REDO=second,
                              PINGPONG=bool(pingpong), enable_fp_fusion=True)
        else:
            _gna_fwd_gluon[grid](*args, **meta, num_warps=num_warps, NS=stages, STALE=bool(stale), REDO=second,
                                 OVERLAP=overlap, enable_fp_fusion=True)
    return out, lse
