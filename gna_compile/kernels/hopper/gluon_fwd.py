"""GNA forward for Hopper in Gluon: the device code (launch: gluon_launch.py). The unmasked
box walk with the softmax of KV tile t running while the tensor cores do the PV matmul of
tile t-1.

Why: the Triton kernel (triton_fwd.py) is softmax-bound. Triton 3.6's pipeliner waits for
S = QK^T and then runs the softmax with the tensor cores idle (benchmarks/NOTES.md, runs 6
and 7). Gluon (`triton.experimental.gluon`) exposes the wgmma waits, so this loop issues
S_t and PV_{t-1} together, waits for S_t only (`warpgroup_mma_wait(1)`), and runs the
softmax of S_t during PV_{t-1} (FlashAttention-3's intra-warpgroup pipelining). The SASS
read offline shows this order (tests/test_gluon.py). Scope: perfectly block-sparse calls
(gluon_launch.unsupported_reason).
"""
from __future__ import annotations

from . import constants as C

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

if HAVE_GLUON:
    _LN2 = gl.constexpr(C.LN2)
    _SUM_MIN = gl.constexpr(C.ROW_SUM_MIN)
    _SUM_MAX = gl.constexpr(C.ROW_SUM_MAX)

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
    def _softmax_step(s, m, l, qk_scale, STALE: gl.constexpr):
        """One KV tile's online softmax in base 2: ``(p, m, l, alpha)``, o to be rescaled by
        alpha. STALE: the row max stays frozen (alpha is not used then)."""
        if STALE:
            p = gl.exp2(s * qk_scale - gl.expand_dims(m, 1))
            return p, m, l + gl.sum(p, 1), m
        else:
            m_new = gl.maximum(m, gl.max(s, 1) * qk_scale)
            p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
            alpha = gl.exp2(m - m_new)
            return p, m_new, l * alpha + gl.sum(p, 1), alpha

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
            p, m, l, alpha = _softmax_step(s, m, l, qk_scale, STALE)
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
            ok = (l < _SUM_MAX) & (l >= _SUM_MIN)
            gl.store(FLAGS + flag_i, gl.max(gl.where(ok, 0, 1), 0))
        _cta_barrier()
        for i in gl.static_range(NS):
            mbarrier.invalidate(bk.index(i))
            mbarrier.invalidate(bv.index(i))
        mbarrier.invalidate(bq)

        o = o / gl.expand_dims(gl.convert_layout(l, row_o), 1)
        lse = (m + gl.log2(l)) * _LN2
        offs = gl.arange(0, BM, layout=row_s)
        gl.store(LSE + lse_off + offs, lse)
        q_s.store(o.to(dt))  # Q is no longer read: its buffer stages O for the TMA store
        fence_async_shared()
        _tma_store(o_desc, [o_row, o_col], q_s)
        tma.store_wait(0)

    @gluon.jit
    def _gna_fwd_gluon(q_desc, k_desc, v_desc, o_desc, LSE, FLAGS, N, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV,
                       q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, o_rb, o_rh, o_ch,
                       RANGES, MAXNT, qk_scale,
                       T0: gl.constexpr, T1: gl.constexpr, T2: gl.constexpr, num_warps: gl.constexpr,
                       NS: gl.constexpr = 2, STALE: gl.constexpr = False, REDO: gl.constexpr = False,
                       OVERLAP: gl.constexpr = True):
        """One Q tile (program 0: the NXQ extra-token Q tiles first, then the grid's), head
        (1), batch (2). NS: K/V stages. STALE: frozen row max (as in triton_fwd); a Q tile
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

        # The KV box of this Q tile: all of it is full (unsupported_reason checked that). Its
        # per-dim ranges come from the host (RANGES[dim, q tile] = lo, hi; sim.full_tile_ranges,
        # so the window rule has no Gluon spelling). Extra-token queries see the whole grid.
        qt = gl.maximum(pid - NXQ, 0)
        q2 = qt % NT2
        q1 = (qt // NT2) % NT1
        q0 = qt // (NT1 * NT2)
        lo0 = gl.load(RANGES + q0 * 2)
        hi0 = gl.load(RANGES + q0 * 2 + 1)
        lo1 = gl.load(RANGES + (MAXNT + q1) * 2)
        hi1 = gl.load(RANGES + (MAXNT + q1) * 2 + 1)
        lo2 = gl.load(RANGES + (2 * MAXNT + q2) * 2)
        hi2 = gl.load(RANGES + (2 * MAXNT + q2) * 2 + 1)
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
