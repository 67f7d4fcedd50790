"""GNA forward for Hopper in Gluon, warp-specialised: the device code (launch: gluon_launch.py).

Why: the non-specialised Gluon kernel (gluon_fwd.py) overlaps the softmax of KV tile t with
the PV matmul of tile t-1 inside a warpgroup, yet stays at ~540 effective TFLOP/s: both of its
warpgroups pass two CTA barriers per tile in lockstep (every K/V reload waits for both), so
they issue their matmuls together and then both wait. This kernel splits the CTA by job, as
FlashAttention-3 does:
- a producer warp streams Q once and then K/V through an ``NS``-stage ring with TMA; each stage
  has a ready mbarrier (TMA bytes landed) and an empty one (both consumers are done with it);
- two consumer warpgroups, each with 64 of the Q tile's 128 rows, walk the same KV tiles. Each
  keeps the intra-warpgroup overlap (S_t and PV_{t-1} issued together, softmax of S_t under
  PV_{t-1}). With ``PINGPONG`` they take turns to issue their matmuls (two mbarriers pass the
  turn), so one warpgroup's softmax runs under the other's matmuls;
- registers are moved to the consumers (``worker_num_regs``: the producer keeps few).
Same scope and token walk as gluon_fwd.py (its ``_token``/``_next`` are reused): the analytic
KV-tile box from the host range table, then the extra-token tiles; extra-token queries see
every key. ``STALE``: frozen row max per warpgroup half, with FLAGS entries 2*tile + half and
the exact ``REDO`` launch for flagged tiles.
"""
from __future__ import annotations

from . import constants as C
from .gluon_fwd import HAVE_GLUON

if HAVE_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)

    from .gluon_fwd import _cta_barrier, _next, _softmax_step, _tma_load, _tma_store, _token

    _LN2 = gl.constexpr(C.LN2)
    _SUM_MIN = gl.constexpr(C.ROW_SUM_MIN)
    _SUM_MAX = gl.constexpr(C.ROW_SUM_MAX)
    HALF = C.GLUON_BLOCK // 2  # Q rows per consumer warpgroup

    @gluon.jit
    def _fence_after(x, BAR: gl.constexpr):
        """``x`` unchanged, after a named barrier of this warpgroup that takes ``x`` as data.
        ptxas hoists a wgmma wait above ALU work freely (it did so for the softmax: 0 of 66
        exponentials in flight) but not above a barrier, and a barrier that reads the row sums
        cannot move above the exponentials that make them."""
        return gl.inline_asm_elementwise(_fence_asm(BAR), "=r,=r,r,r", [x], dtype=gl.float32, is_pure=False, pack=2)

    @gluon.constexpr_function
    def _fence_asm(bar):
        return ("{ .reg .pred p; setp.eq.f32 p, $2, $3; bar.red.or.pred p, %d, 128, p; "
                "mov.b32 $0, $2; mov.b32 $1, $3; }" % bar)

    @gluon.jit
    def _item(w, n_items_all, NQ, H, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV, q_rb, q_rh, k_rb, k_rh, v_rb, v_rh, o_rb, o_rh,
              N, RANGES, MAXNT, BM: gl.constexpr):
        """Work item w: its KV box, walk length and row offsets. The extra-token Q tiles (they
        walk the whole grid) of every head and batch come first, the longest first, so that a
        persistent launch does not end on them; then the grid's Q tiles, fastest, by head, by
        batch. Every partition decodes the items itself (scalars only)."""
        nx = NXQ * H * (n_items_all // (NQ * H))
        u = w - nx
        NGQ = NQ - NXQ
        xw = w < nx
        pid = gl.where(xw, w % gl.maximum(NXQ, 1), NXQ + u % NGQ)
        hb = gl.where(xw, w // gl.maximum(NXQ, 1), u // NGQ)
        h = hb % H
        b = hb // H
        qt = gl.maximum(pid - NXQ, 0)
        q2 = qt % NT2
        q1 = (qt // NT2) % NT1
        q0 = qt // (NT1 * NT2)
        xq = pid < NXQ
        lo0 = gl.where(xq, 0, gl.load(RANGES + q0 * 2))
        hi0 = gl.where(xq, NT0 - 1, gl.load(RANGES + q0 * 2 + 1))
        lo1 = gl.where(xq, 0, gl.load(RANGES + (MAXNT + q1) * 2))
        hi1 = gl.where(xq, NT1 - 1, gl.load(RANGES + (MAXNT + q1) * 2 + 1))
        lo2 = gl.where(xq, 0, gl.load(RANGES + (2 * MAXNT + q2) * 2))
        hi2 = gl.where(xq, NT2 - 1, gl.load(RANGES + (2 * MAXNT + q2) * 2 + 1))
        n_box = (hi0 - lo0 + 1) * (hi1 - lo1 + 1) * (hi2 - lo2 + 1)
        q_tok = gl.where(xq, gl.where(pid < NPRE, pid * BM, P + NG + (pid - NPRE) * BM), P + qt * BM)
        kvh = h // G
        return (lo0, lo1, lo2, hi1, hi2, n_box, n_box + NXKV, h, kvh, b * q_rb + h * q_rh + q_tok,
                b * k_rb + kvh * k_rh, b * v_rb + kvh * v_rh, b * o_rb + h * o_rh + q_tok, (b * H + h) * N + q_tok)

    @gluon.jit
    def _todo(FLAGS, w, REDO: gl.constexpr):
        """Whether this launch does item w: every item, or in the REDO launch the flagged ones."""
        if REDO:
            return (gl.load(FLAGS + 2 * w) + gl.load(FLAGS + 2 * w + 1)) != 0
        else:
            return True

    @gluon.jit
    def _producer(q_desc, k_desc, v_desc, q_s, k_s, v_s, bq, q_empty, k_ready, k_empty, v_ready, v_empty,
                  FLAGS, n_items, NQ, H, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV,
                  q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, o_rb, o_rh, N, RANGES, MAXNT,
                  REDO: gl.constexpr):
        """One warp. Per item: Q (two 64-row halves, one barrier, into Q buffer qi % 2 once the
        consumers are done with its previous item), then K_i and V_{i-1} per step i; both are
        freed in the same consumer iteration, so loading them together keeps NS-1 tiles of
        slack on each. The ring runs on across items: the next item's Q and first K/V tiles
        load while the consumers finish the current one."""
        NS: gl.constexpr = k_s.type.shape[0]
        BM: gl.constexpr = k_desc.block_type.shape[0]
        HM: gl.constexpr = q_desc.block_type.shape[0]
        it = 0  # position in the K/V ring
        qi = 0  # items done
        for w in range(gl.program_id(0), n_items, gl.num_programs(0)):
            if _todo(FLAGS, w, REDO):
                lo0, lo1, lo2, hi1, hi2, n_box, n_kv, h, kvh, q_row, k_base, v_base, _o, _l = _item(
                    w, n_items, NQ, H, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV, q_rb, q_rh, k_rb, k_rh, v_rb, v_rh,
                    o_rb, o_rh, N, RANGES, MAXNT, BM)
                qb = qi % 2
                mbarrier.wait(q_empty.index(qb), ((qi // 2) & 1) ^ 1)
                mbarrier.expect(bq.index(qb), 2 * q_desc.block_type.nbytes)
                _tma_load(q_desc, [q_row, h * q_ch], bq.index(qb), q_s.index(2 * qb))
                _tma_load(q_desc, [q_row + HM, h * q_ch], bq.index(qb), q_s.index(2 * qb + 1))
                c0, c1, c2 = lo0, lo1, lo2
                prev = 0
                for i in range(n_kv + 1):
                    r = it + i
                    st = r % NS
                    has_k = i < n_kv
                    tok = _token(c0, c1, c2, i, n_box, NT1, NT2, P, NG, NPRE, BM)
                    mbarrier.wait(k_empty.index(st), ((r // NS) & 1) ^ 1, pred=has_k)
                    mbarrier.expect(k_ready.index(st), k_desc.block_type.nbytes, pred=has_k)
                    _tma_load(k_desc, [k_base + tok, kvh * k_ch], k_ready.index(st), k_s.index(st), pred=has_k)
                    rp = r + NS - 1  # ring position of tile i-1, plus NS (i >= 1)
                    sp = rp % NS
                    has_v = i >= 1
                    mbarrier.wait(v_empty.index(sp), ((rp // NS - 1) & 1) ^ 1, pred=has_v)
                    mbarrier.expect(v_ready.index(sp), v_desc.block_type.nbytes, pred=has_v)
                    _tma_load(v_desc, [v_base + prev, kvh * v_ch], v_ready.index(sp), v_s.index(sp), pred=has_v)
                    prev = tok
                    c0, c1, c2 = _next(c0, c1, c2, lo1, lo2, hi1, hi2)
                it += n_kv
                qi += 1

    @gluon.jit
    def _consumer(WG: gl.constexpr, q_s, o_s, k_s, v_s, bq, q_empty, k_ready, k_empty, v_ready, v_empty, turn,
                  o_desc, LSE, FLAGS, n_items, NQ, H, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV,
                  q_rb, q_rh, k_rb, k_rh, v_rb, v_rh, o_rb, o_rh, o_ch, N, RANGES, MAXNT, qk_scale,
                  STALE: gl.constexpr, REDO: gl.constexpr, PINGPONG: gl.constexpr):
        """One warpgroup, rows WG*64 .. WG*64+63 of each item's Q tile: the KV walk, then O
        (through its own staging buffer, stored by TMA while the next item runs) and LSE."""
        NS: gl.constexpr = k_s.type.shape[0]
        BM: gl.constexpr = k_s.type.shape[1]
        D: gl.constexpr = k_s.type.shape[2]
        HM: gl.constexpr = q_s.type.shape[1]
        dt: gl.constexpr = k_s.dtype
        s_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                      instr_shape=[16, BM, 16])
        o_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                      instr_shape=[16, D, 16])
        p_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_l)
        row_o: gl.constexpr = gl.SliceLayout(1, o_l)
        mine = turn.index(WG)
        other = turn.index(1 - WG)
        o_mine = o_s.index(WG)
        it = 0  # position in the K/V ring (= turns taken)
        qi = 0
        for w in range(gl.program_id(0), n_items, gl.num_programs(0)):
            if _todo(FLAGS, w, REDO):
                _a, _b, _c, _d, _e, _f, n_kv, h, _k, _q, _kb, _vb, o_row, lse_off = _item(
                    w, n_items, NQ, H, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV, q_rb, q_rh, k_rb, k_rh, v_rb, v_rh,
                    o_rb, o_rh, N, RANGES, MAXNT, BM)
                qb = qi % 2
                q = q_s.index(2 * qb + WG)
                mbarrier.wait(bq.index(qb), (qi // 2) & 1)
                st = it % NS
                mbarrier.wait(k_ready.index(st), (it // NS) & 1)
                if PINGPONG:
                    mbarrier.wait(mine, it & 1)
                s = warpgroup_mma(q, k_s.index(st).permute((1, 0)), gl.zeros([HM, BM], gl.float32, s_l),
                                  use_acc=False)
                if PINGPONG:
                    mbarrier.arrive(other)
                mbarrier.arrive(k_empty.index(st))
                m = gl.max(s, 1) * qk_scale
                p = gl.exp2(s * qk_scale - gl.expand_dims(m, 1))
                l = gl.sum(p, 1)
                p_op = gl.convert_layout(p.to(dt), p_l)
                o = gl.zeros([HM, D], gl.float32, o_l)

                for t in range(1, n_kv):
                    r = it + t
                    st = r % NS
                    sp = (r - 1) % NS
                    mbarrier.wait(k_ready.index(st), (r // NS) & 1)
                    if PINGPONG:
                        mbarrier.wait(mine, r & 1)
                    s = warpgroup_mma(q, k_s.index(st).permute((1, 0)), s, use_acc=False, is_async=True)
                    mbarrier.wait(v_ready.index(sp), ((r - 1) // NS) & 1)
                    o = warpgroup_mma(p_op, v_s.index(sp), o, is_async=True)
                    if PINGPONG:
                        mbarrier.arrive(other)
                    s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))
                    mbarrier.arrive(k_empty.index(st))
                    # Softmax of tile t while PV of tile t-1 runs.
                    p, m, l, alpha = _softmax_step(s, m, l, qk_scale, STALE)
                    p_next = gl.convert_layout(p.to(dt), p_l)
                    # p_op is read by the PV in flight and p_next must be computed before the
                    # wait: both are dependencies, so the compiler neither frees the one nor sinks
                    # the other; the fence keeps ptxas from hoisting the wait above the softmax.
                    l = _fence_after(l, 8 + WG)
                    o, p_op, p_next = warpgroup_mma_wait(num_outstanding=0, deps=(o, p_op, p_next))
                    mbarrier.arrive(v_empty.index(sp))
                    p_op = p_next
                    if not STALE:
                        o = o * gl.expand_dims(gl.convert_layout(alpha, row_o), 1)

                # Every S matmul of this item is done: its Q buffer may take the item after next.
                mbarrier.arrive(q_empty.index(qb))
                last = (it + n_kv - 1) % NS
                mbarrier.wait(v_ready.index(last), ((it + n_kv - 1) // NS) & 1)
                o = warpgroup_mma(p_op, v_s.index(last), o)
                mbarrier.arrive(v_empty.index(last))

                if STALE:
                    # As in gluon_fwd: an honest row sum is >= 1; outside [2^-60, 2^64) or NaN
                    # means a later score far above the frozen max, and the REDO launch does the
                    # item again exactly.
                    ok = (l < _SUM_MAX) & (l >= _SUM_MIN)
                    gl.store(FLAGS + 2 * w + WG, gl.max(gl.where(ok, 0, 1), 0))
                o = o / gl.expand_dims(gl.convert_layout(l, row_o), 1)
                lse = (m + gl.log2(l)) * _LN2
                offs = gl.arange(0, HM, layout=row_s)
                gl.store(LSE + lse_off + WG * HM + offs, lse)
                tma.store_wait(0)  # the previous item's O has left the staging buffer: the
                _cta_barrier()     # issuing thread knows it, this warpgroup's barrier tells the rest
                o_mine.store(o.to(dt))
                fence_async_shared()
                _tma_store(o_desc, [o_row + WG * HM, h * o_ch], o_mine)
                it += n_kv
                qi += 1
        tma.store_wait(0)

    @gluon.jit
    def _gna_fwd_ws(q_desc, k_desc, v_desc, o_desc, LSE, FLAGS, N, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV,
                    q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, o_rb, o_rh, o_ch,
                    RANGES, MAXNT, qk_scale, NQ, H, n_items,
                    T0: gl.constexpr, T1: gl.constexpr, T2: gl.constexpr, num_warps: gl.constexpr,
                    NS: gl.constexpr = 2, STALE: gl.constexpr = False, REDO: gl.constexpr = False,
                    PINGPONG: gl.constexpr = True, PRODUCER_REGS: gl.constexpr = 32,
                    CONSUMER_REGS: gl.constexpr = 240):
        """Items: (Q tile, head, batch), NQ Q tiles (the NXQ extra-token tiles first) by H heads
        by batch, ``n_items`` in all; program p does items p, p + programs, ... (a grid of
        n_items programs is the non-persistent launch). num_warps = 4: the first consumer
        warpgroup is the default partition. q_desc/o_desc have 64-row blocks, k_desc/v_desc
        128-row ones. FLAGS: two entries per item."""
        BM: gl.constexpr = k_desc.block_type.shape[0]
        HM: gl.constexpr = q_desc.block_type.shape[0]
        D: gl.constexpr = k_desc.block_type.shape[1]
        dt: gl.constexpr = k_desc.dtype

        q_s = gl.allocate_shared_memory(dt, [4, HM, D], q_desc.layout)  # Q buffer b, half h: 2*b + h
        o_s = gl.allocate_shared_memory(dt, [2, HM, D], o_desc.layout)
        k_s = gl.allocate_shared_memory(dt, [NS, BM, D], k_desc.layout)
        v_s = gl.allocate_shared_memory(dt, [NS, BM, D], v_desc.layout)
        bq = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [NS, 1], mbarrier.MBarrierLayout())
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(2):
            mbarrier.init(bq.index(i), count=1)
            mbarrier.init(q_empty.index(i), count=2)  # both consumer warpgroups release
            mbarrier.init(turn.index(i), count=1)
        for i in gl.static_range(NS):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=2)
            mbarrier.init(v_empty.index(i), count=2)
        fence_async_shared()
        if PINGPONG:
            mbarrier.arrive(turn.index(0))  # the first warpgroup has the first turn

        gl.warp_specialize([
            (_consumer, (0, q_s, o_s, k_s, v_s, bq, q_empty, k_ready, k_empty, v_ready, v_empty, turn, o_desc, LSE,
                         FLAGS, n_items, NQ, H, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV, q_rb, q_rh, k_rb, k_rh,
                         v_rb, v_rh, o_rb, o_rh, o_ch, N, RANGES, MAXNT, qk_scale, STALE and not REDO, REDO,
                         PINGPONG)),
            (_consumer, (1, q_s, o_s, k_s, v_s, bq, q_empty, k_ready, k_empty, v_ready, v_empty, turn, o_desc, LSE,
                         FLAGS, n_items, NQ, H, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV, q_rb, q_rh, k_rb, k_rh,
                         v_rb, v_rh, o_rb, o_rh, o_ch, N, RANGES, MAXNT, qk_scale, STALE and not REDO, REDO,
                         PINGPONG)),
            (_producer, (q_desc, k_desc, v_desc, q_s, k_s, v_s, bq, q_empty, k_ready, k_empty, v_ready, v_empty,
                         FLAGS, n_items, NQ, H, G, NT0, NT1, NT2, P, NG, NPRE, NXQ, NXKV,
                         q_rb, q_rh, q_ch, k_rb, k_rh, k_ch, v_rb, v_rh, v_ch, o_rb, o_rh, N, RANGES, MAXNT, REDO)),
        ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])
