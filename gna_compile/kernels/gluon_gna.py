"""GNA forward for Hopper in Gluon: the unmasked box walk with the softmax of KV tile t
running while the tensor cores do the PV matmul of tile t-1.

Why: the Triton kernel (triton_gna.py) is softmax-bound. Triton 3.6's pipeliner waits for
S = QK^T and then runs the softmax with the tensor cores idle (benchmarks/NOTES.md, runs 6
and 7). Gluon (`triton.experimental.gluon`) exposes the wgmma waits, so this loop issues
S_t and PV_{t-1} together, waits for S_t only (`warpgroup_mma_wait(1)`), and runs the
softmax of S_t during PV_{t-1} (FlashAttention-3's intra-warpgroup pipelining). The SASS
read offline shows this order (tests/test_gluon_gna.py).

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
queries attend to their window box and then to every extra key (DESIGN.md §1).

Variants (autotuned per problem beside the Triton kernel's configs, ``CONFIGS``): 2 or 3 K/V
stages, and a frozen row max as in triton_gna (no max, no rescale after the first KV tile; Q
tiles whose row sums leave [2^-60, 2^64) are redone exactly by a second launch). Checked on an
H200 against the reference (tests/test_gluon_gna.py, tools/gpu/gluon_debug.py). Measured
(benchmarks/NOTES.md, run 9): the frozen-max variants are 0-8% faster than the Triton kernel
on the block-sparse cases, so the overlap buys less than its SASS promised.
"""
from __future__ import annotations

import functools
import math
import os

import torch

try:  # Gluon ships with Triton >= 3.5; without it this backend is simply unavailable.
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    # Triton 3.6 names the TMA copies async_copy_global_to_shared / _shared_to_global; later
    # versions call them async_load / async_store (and make the old names raise).
    _tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
    _tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
    _cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier  # renamed after 3.6
    HAVE_GLUON = True
except ImportError:  # pragma: no cover - depends on the installed Triton
    HAVE_GLUON = False

BLOCK = 128


# Autotune candidates ("gluon", K/V stages, frozen row max), tried beside the Triton kernel's
# launch configs for every call this kernel takes (triton_gna.gna_forward keeps the fastest per
# problem). FORCED is what GNA_GLUON=1 runs without tuning. H200 autotune trials (NOTES.md,
# run 9) on the four block-sparse cases: 2 stages + frozen max fastest on all four, 3 stages +
# frozen max 1-13% behind, the exact loops (2 or 3 stages) 5-14% behind: those are not tried.
CONFIGS = (("gluon", 2, 1), ("gluon", 3, 1))
FORCED = ("gluon", 2, 1)


def mode() -> str:
    """GNA_GLUON: "0" never uses this kernel, "1" uses it (FORCED) for every call it takes,
    unset lets the autotuner choose between it and the Triton kernel."""
    if not HAVE_GLUON:
        return "off"
    return {"0": "off", "1": "forced"}.get(os.environ.get("GNA_GLUON", ""), "auto")


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
    if extra_prefix % BLOCK or extra_suffix % BLOCK:
        return f"extra tokens must come in whole tiles of {BLOCK}"
    if key_mask is not None:
        return "key masks are not handled"
    if any(d > 1 for d in spec.dilation) or any(spec.causal):
        return "dilation and causal dims are not handled"
    if tuple(q_tile) != tuple(kv_tile) or math.prod(q_tile) != BLOCK:
        return f"needs KV tile = Q tile of {BLOCK} tokens"
    if any(n % t for n, t in zip(spec.shape, q_tile)):
        return "the Q tile must divide the grid (no padding)"
    if not _all_full(spec, tuple(q_tile)):
        return "some visited KV tiles are partial (not perfectly block-sparse)"
    D = q.shape[-1]
    if D not in (64, 128) or k.shape[-1] != D or v.shape[-1] != D:
        return "head dim must be 64 or 128"
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
    from .tile_choice import tile_stats
    vis, full, _, _ = tile_stats(spec, q_tile, q_tile)
    return vis == full


if HAVE_GLUON:
    @gluon.jit
    def _full_range(qt, n, w, s, T: gl.constexpr):
        """KV tiles [f_lo, f_hi] every query of Q tile ``qt`` sees in one dim (non-causal,
        no dilation; gna_compile.mask.key_range): the window of its last query's start to
        its first query's end."""
        wl = w // 2
        wr = w // 2 + w % 2 - 1
        a = qt * T
        b = a + T - 1
        lead_a = gl.minimum((a // s) * s + s // 2, n - 1)
        lead_b = gl.minimum((b // s) * s + s // 2, n - 1)
        hi_a = gl.maximum(gl.minimum(lead_a, n - 1 - wr), wl) + wr
        lo_b = gl.maximum(gl.minimum(lead_b, n - 1 - wr), wl) - wl
        return (lo_b + T - 1) // T, (hi_a + 1) // T - 1

    @gluon.jit
    def _next(c0, c1, c2, lo1, lo2, hi1, hi2):
        """Next tile of a row-major walk over the box (inclusive upper bounds)."""
        c2 += 1
        w2 = c2 > hi2
        c2 = gl.where(w2, lo2, c2)
        c1 = gl.where(w2, c1 + 1, c1)
        w1 = c1 > hi1
        c1 = gl.where(w1, lo1, c1)
        c0 = gl.where(w1, c0 + 1, c0)
        return c0, c1, c2

    @gluon.jit
    def _token(c0, c1, c2, t, n_box, NT1, NT2, P, NG, NPRE, BM: gl.constexpr):
        """First token of the t-th KV tile of the walk: box tile (c0, c1, c2) while t < n_box
        (grid tokens start after the P prefix tokens), then the extra tiles, prefix first."""
        j = t - n_box
        extra = gl.where(j < NPRE, j * BM, P + NG + (j - NPRE) * BM)
        return gl.where(t < n_box, P + ((c0 * NT1 + c1) * NT2 + c2) * BM, extra)

    @gluon.jit
    def _load(desc, row, col, bar, dst, pred):
        mbarrier.expect(bar, desc.block_type.nbytes, pred=pred)
        _tma_load(desc, [row, col], bar, dst, pred=pred)

    @gluon.jit
    def _walk(q_s, k_s, v_s, bq, bk, bv, k_desc, v_desc, k_base, v_base, k_col, v_col,
              lo0, lo1, lo2, hi1, hi2, n_box, n_kv, NT1, NT2, P, NG, NPRE, qk_scale,
              s_l: gl.constexpr, o_l: gl.constexpr, p_l: gl.constexpr,
              NS: gl.constexpr, OVERLAP: gl.constexpr, STALE: gl.constexpr):
        """The KV walk of one Q tile: (o, m, l), o not yet divided by l. KV tile t sits in
        stage t % NS. STALE: the row max m is that of the first tile, frozen (no max, no
        rescale of o); P may exceed 1, which the caller checks."""
        BM: gl.constexpr = k_desc.block_type.shape[0]
        D: gl.constexpr = k_desc.block_type.shape[1]
        dt: gl.constexpr = k_desc.dtype
        row_o: gl.constexpr = gl.SliceLayout(1, o_l)

        # Prologue: K/V of tiles 0 .. NS-1.
        c0, c1, c2 = lo0, lo1, lo2
        for i in gl.static_range(NS):
            tok = _token(c0, c1, c2, i, n_box, NT1, NT2, P, NG, NPRE, BM)
            _load(k_desc, k_base + tok, k_col, bk.index(i), k_s.index(i), i < n_kv)
            _load(v_desc, v_base + tok, v_col, bv.index(i), v_s.index(i), i < n_kv)
            c0, c1, c2 = _next(c0, c1, c2, lo1, lo2, hi1, hi2)
        # Cursors of the next loads (tile NS): K is reloaded after S, V after PV.
        k0, k1, k2 = c0, c1, c2
        v0, v1, v2 = c0, c1, c2

        mbarrier.wait(bq, 0)
        mbarrier.wait(bk.index(0), 0)
        s = warpgroup_mma(q_s, k_s.index(0).permute((1, 0)), gl.zeros([BM, BM], gl.float32, s_l),
                          use_acc=False)
        m = gl.max(s, 1) * qk_scale
        p = gl.exp2(s * qk_scale - gl.expand_dims(m, 1))
        l = gl.sum(p, 1)
        p_op = gl.convert_layout(p.to(dt), p_l)
        o = gl.zeros([BM, D], gl.float32, o_l)
        _cta_barrier()  # every warpgroup is done with K stage 0
        tok = _token(k0, k1, k2, NS, n_box, NT1, NT2, P, NG, NPRE, BM)
        _load(k_desc, k_base + tok, k_col, bk.index(0), k_s.index(0), NS < n_kv)
        k0, k1, k2 = _next(k0, k1, k2, lo1, lo2, hi1, hi2)

        for t in range(1, n_kv):
            st = t % NS
            sp = (t - 1) % NS
            mbarrier.wait(bk.index(st), (t // NS) % 2)
            s = warpgroup_mma(q_s, k_s.index(st).permute((1, 0)), s, use_acc=False, is_async=OVERLAP)
            mbarrier.wait(bv.index(sp), ((t - 1) // NS) % 2)
            o = warpgroup_mma(p_op, v_s.index(sp), o, is_async=OVERLAP)
            if OVERLAP:
                s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
            _cta_barrier()  # every warpgroup is done with K stage st: load K of tile t + NS
            tok = _token(k0, k1, k2, t + NS, n_box, NT1, NT2, P, NG, NPRE, BM)
            _load(k_desc, k_base + tok, k_col, bk.index(st), k_s.index(st), t + NS < n_kv)
            k0, k1, k2 = _next(k0, k1, k2, lo1, lo2, hi1, hi2)
            # Softmax of tile t while PV of tile t-1 runs.
            if STALE:
                p = gl.exp2(s * qk_scale - gl.expand_dims(m, 1))
                l = l + gl.sum(p, 1)
            else:
                m_new = gl.maximum(m, gl.max(s, 1) * qk_scale)
                p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
                alpha = gl.exp2(m - m_new)
                l = l * alpha + gl.sum(p, 1)
                m = m_new
            p_next = gl.convert_layout(p.to(dt), p_l)
            # The PV in flight reads p_op from registers: it stays alive until this wait; p_next
            # is a dependency too, so that the softmax is computed before the wait, not sunk
            # past it by the compiler.
            if OVERLAP:
                o, p_op, p_next = warpgroup_mma_wait(num_outstanding=0, deps=(o, p_op, p_next))
            p_op = p_next
            _cta_barrier()  # every warpgroup is done with V stage sp: load V of tile t - 1 + NS
            tok = _token(v0, v1, v2, t - 1 + NS, n_box, NT1, NT2, P, NG, NPRE, BM)
            _load(v_desc, v_base + tok, v_col, bv.index(sp), v_s.index(sp), t - 1 + NS < n_kv)
            v0, v1, v2 = _next(v0, v1, v2, lo1, lo2, hi1, hi2)
            if not STALE:
                o = o * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)

        last = (n_kv - 1) % NS
        mbarrier.wait(bv.index(last), ((n_kv - 1) // NS) % 2)
        o = warpgroup_mma(p_op, v_s.index(last), o)
        return o, m, l

    @gluon.jit
    def _tile(q_desc, k_desc, v_desc, o_desc, LSE, FLAGS, flag_i, q_row, q_col, o_row, o_col, lse_off,
              k_base, v_base, k_col, v_col, lo0, lo1, lo2, hi1, hi2, n_box, n_kv, NT1, NT2, P, NG, NPRE,
              qk_scale, s_l: gl.constexpr, o_l: gl.constexpr, p_l: gl.constexpr,
              NS: gl.constexpr, STALE: gl.constexpr, OVERLAP: gl.constexpr):
        """One Q tile: load Q, walk its KV tiles, write O and the LSE (and, STALE, whether the
        frozen row max failed, to FLAGS[flag_i])."""
        BM: gl.constexpr = q_desc.block_type.shape[0]
        D: gl.constexpr = q_desc.block_type.shape[1]
        dt: gl.constexpr = q_desc.dtype
        row_s: gl.constexpr = gl.SliceLayout(1, s_l)
        row_o: gl.constexpr = gl.SliceLayout(1, o_l)

        q_s = gl.allocate_shared_memory(dt, [BM, D], q_desc.layout)
        k_s = gl.allocate_shared_memory(dt, [NS, BM, D], k_desc.layout)
        v_s = gl.allocate_shared_memory(dt, [NS, BM, D], v_desc.layout)
        bq = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        bk = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        bv = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        mbarrier.init(bq, count=1)
        for i in gl.static_range(NS):
            mbarrier.init(bk.index(i), count=1)
            mbarrier.init(bv.index(i), count=1)
        fence_async_shared()
        _cta_barrier()

        _load(q_desc, q_row, q_col, bq, q_s, True)
        o, m, l = _walk(q_s, k_s, v_s, bq, bk, bv, k_desc, v_desc, k_base, v_base, k_col, v_col,
                        lo0, lo1, lo2, hi1, hi2, n_box, n_kv, NT1, NT2, P, NG, NPRE, qk_scale,
                        s_l, o_l, p_l, NS, OVERLAP, STALE)
        if STALE:
            # Every row sum is >= 1 (the first tile's keys are all attended): one outside
            # [2^-60, 2^64), or NaN, means a later score far above the frozen max; the redo
            # launch then does this Q tile again, exactly.
            ok = (l < 18446744073709551616.0) & (l >= 8.673617379884035e-19)
            gl.store(FLAGS + flag_i, gl.max(gl.where(ok, 0, 1), 0))
        _cta_barrier()
        for i in gl.static_range(NS):
            mbarrier.invalidate(bk.index(i))
            mbarrier.invalidate(bv.index(i))
        mbarrier.invalidate(bq)

        o = o / gl.expand_dims(gl.convert_layout(l, row_o), 1)
        lse = (m + gl.log2(l)) * 0.6931471805599453
        offs = gl.arange(0, BM, layout=row_s)
        gl.store(LSE + lse_off + offs, lse)
        q_s.store(o.to(dt))  # Q is no longer read: its buffer stages O for the TMA store
        fence_async_shared()
        _tma_store(o_desc, [o_row, o_col], q_s)
        tma.store_wait(0)

    @gluon.jit
    def _gna_fwd_gluon(q_desc, k_desc, v_desc, o_desc, LSE, FLAGS, N, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV,
                       q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, o_rb, o_rh, o_ch,
                       n0, n1, n2, w0, w1, w2, s0, s1, s2, qk_scale,
                       T0: gl.constexpr, T1: gl.constexpr, T2: gl.constexpr, num_warps: gl.constexpr,
                       NS: gl.constexpr = 2, STALE: gl.constexpr = False, REDO: gl.constexpr = False,
                       OVERLAP: gl.constexpr = True):
        """One Q tile (program 0: the NXQ extra-token Q tiles first, then the grid's), head
        (1), batch (2). NS: K/V stages. STALE: frozen row max (as in triton_gna); a Q tile
        whose row sums leave [2^-60, 2^64) sets its FLAGS entry, and a second launch with
        REDO does exactly those tiles again with the exact online softmax (a redo inside this
        kernel makes ptxas wait for the PV matmul before the softmax). OVERLAP=False waits for
        each matmul right away (same loads, same order otherwise): a debugging baseline that
        separates a pipelining hazard from an indexing bug."""
        BM: gl.constexpr = q_desc.block_type.shape[0]
        D: gl.constexpr = q_desc.block_type.shape[1]
        s_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                      instr_shape=[16, BM, 16])
        o_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                      instr_shape=[16, D, 16])
        p_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)

        pid = gl.program_id(0)
        h = gl.program_id(1)
        b = gl.program_id(2)
        H = gl.num_programs(1)
        kvh = h // G
        flag_i = (b * H + h) * gl.num_programs(0) + pid

        # The KV box of this Q tile: all of it is full (unsupported_reason checked that).
        # Extra-token queries see the whole grid.
        qt = gl.maximum(pid - NXQ, 0)
        q2 = qt % NT2
        q1 = (qt // NT2) % NT1
        q0 = qt // (NT1 * NT2)
        lo0, hi0 = _full_range(q0, n0, w0, s0, T0)
        lo1, hi1 = _full_range(q1, n1, w1, s1, T1)
        lo2, hi2 = _full_range(q2, n2, w2, s2, T2)
        xq = pid < NXQ
        lo0 = gl.where(xq, 0, lo0)
        lo1 = gl.where(xq, 0, lo1)
        lo2 = gl.where(xq, 0, lo2)
        hi0 = gl.where(xq, NT0 - 1, hi0)
        hi1 = gl.where(xq, NT1 - 1, hi1)
        hi2 = gl.where(xq, NT2 - 1, hi2)
        n_box = (hi0 - lo0 + 1) * (hi1 - lo1 + 1) * (hi2 - lo2 + 1)
        n_kv = n_box + NXKV
        q_tok = gl.where(xq, gl.where(pid < NPRE, pid * BM, P + NG + (pid - NPRE) * BM), P + qt * BM)
        q_row = b * q_rb + h * q_rh + q_tok
        o_row = b * o_rb + h * o_rh + q_tok
        lse_off = (b * H + h) * N + q_tok
        k_base = b * k_rb + kvh * k_rh
        v_base = b * v_rb + kvh * v_rh
        if REDO:
            if gl.load(FLAGS + flag_i) != 0:
                _tile(q_desc, k_desc, v_desc, o_desc, LSE, FLAGS, flag_i, q_row, h * q_ch, o_row, h * o_ch,
                      lse_off, k_base, v_base, kvh * k_ch, kvh * v_ch, lo0, lo1, lo2, hi1, hi2, n_box, n_kv,
                      NT1, NT2, P, NG, NPRE, qk_scale, s_l, o_l, p_l, NS, False, OVERLAP)
        else:
            _tile(q_desc, k_desc, v_desc, o_desc, LSE, FLAGS, flag_i, q_row, h * q_ch, o_row, h * o_ch,
                  lse_off, k_base, v_base, kvh * k_ch, kvh * v_ch, lo0, lo1, lo2, hi1, hi2, n_box, n_kv,
                  NT1, NT2, P, NG, NPRE, qk_scale, s_l, o_l, p_l, NS, STALE, OVERLAP)


def launch_args(q, k, v, spec, q_tile, out, lse, scale=None, extra_prefix=0, extra_suffix=0):
    """``(grid, args, meta)`` of one launch (also used to compile offline). The caller has
    checked ``unsupported_reason`` (and that ``out`` has a supported layout)."""
    from .triton_gna import LOG2E, _pad3  # (triton_gna imports this module at load time)
    B, H, N, D = q.shape
    Hkv = k.shape[1]
    shape3, win3, str3, tq3 = (_pad3(t, 1) for t in (spec.shape, spec.window, spec.stride, q_tile))
    nt = [n // t for n, t in zip(shape3, tq3)]
    P, S, NG = extra_prefix, extra_suffix, spec.num_tokens
    if N != P + NG + S or lse.shape != (B, H, N) or not lse.is_contiguous():
        raise ValueError(f"tokens {N} != {P} + {NG} + {S}, or lse is not a contiguous [B, H, N]")
    gdt = gl.bfloat16 if q.dtype == torch.bfloat16 else gl.float16
    smem = gl.NVMMASharedLayout.get_default_for([BLOCK, D], gdt)
    descs, coords = [], []
    for x in (q, k, v, out):
        lay = _layout(x)
        if lay is None:
            raise ValueError(f"layout with strides {tuple(x.stride())} not supported")
        rows, cols, pitch, rb, rh, ch = lay
        descs.append(TensorDescriptor(x, [rows, cols], [pitch, 1], [BLOCK, D], smem))
        coords += [rb, rh, ch]
    scale = D ** -0.5 if scale is None else scale
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    nxq = (P + S) // BLOCK
    grid = (nxq + math.prod(nt), H, B)
    flags = torch.empty(math.prod(grid), dtype=torch.int32, device=q.device)  # STALE: Q tiles to redo
    args = (*descs, lse, flags, N, H // Hkv, *nt, P, NG, P // BLOCK, nxq, nxq, *coords,
            *shape3, *win3, *str3, scale * LOG2E)
    meta = dict(T0=tq3[0], T1=tq3[1], T2=tq3[2])
    return grid, args, meta


def gna_forward_gluon(q, k, v, spec, q_tile, scale=None, out=None, lse=None, num_warps=8, overlap=True,
                      extra_prefix=0, extra_suffix=0, stages=2, stale=False, redo=True):
    """Launch on tiled-order tensors ``[B, H, N, D]`` (``permute_tokens`` layout, extra tokens
    around the grid); returns ``(out, lse)`` in that layout. ``stages``: K/V buffers (2 or 3);
    ``stale``: frozen row max, then the redo launch (``redo=False`` only shows, in a test,
    what the frozen pass alone gives); ``overlap=False``: the debugging baseline (see kernel)."""
    if stages not in (2, 3):
        raise ValueError(f"stages must be 2 or 3, got {stages}")
    B, H, N, D = q.shape
    out = torch.empty(B, H, N, D, dtype=q.dtype, device=q.device) if out is None else out
    lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device) if lse is None else lse
    grid, args, meta = launch_args(q, k, v, spec, q_tile, out, lse, scale, extra_prefix, extra_suffix)
    for second in (False, True) if stale and redo else (False,):
        _gna_fwd_gluon[grid](*args, **meta, num_warps=num_warps, NS=stages, STALE=bool(stale), REDO=second,
                             OVERLAP=overlap, enable_fp_fusion=True)
    return out, lse
