"""Hopper GNA backward kernels in Triton: the device code (launch: triton_bwd_launch.py).

Tiled (permuted) token order only; natural-order callers permute in and out (backward.py).
Three kernels:

- ``_gna_bwd_delta``: delta = rowsum(dO * O) in fp32 (the softmax-gradient correction term).
- ``_gna_bwd_dkdv``: one program per (KV tile, kv head, batch). Its queries are the Q tiles
  whose GNA box reaches this KV tile. Per dim that set is an interval of Q tiles (window ends
  are monotone in the query); it is read from small per-dim host tables (``QT`` [3, 2, T],
  T = the largest ceil(n / kv_tile) of a dim), built on the host from mask.key_range, not
  computed on the device. The program walks every query head of the GQA group and, last, all
  extra-token queries (they see every key), summing dK/dV in registers: no atomics, so the
  result is deterministic. Extra-token KV tiles are programs of their own (first), seen by
  every query.
- ``_gna_bwd_dq``: one program per (Q tile, head, batch) over the forward's KV box, then the
  extra-token KV tiles; extra-token Q tiles (first programs) see the whole grid.

Tile pairs in the forward's full sub-range (every query of the Q tile sees every key of the KV
tile, DESIGN.md §2) run without element masks; the other grid pairs are masked by the window
rule (_krange, the same as the forward's), pairs with extra tokens by the tails and the key
mask. Two loop structures, by the launch config's ``split`` (constexpr SPLIT): a per-pair
scalar branch inside one loop over the box (the default), or the forward's two flat loops, the
full pairs unmasked and then the box minus the full box (_piece_tile), every load at the top of
its loop body. dK/dV's full Q tiles per KV tile come from a second host table
(launch.full_box_tables), dQ's full KV tiles from _dim_ranges as in the forward. P is rebuilt from the forward's natural-log LSE
(converted to base 2); queries that saw no key (LSE = -inf) and padded query rows get P = 0.
Accumulation is fp32; batch and head offsets are int64.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import constants as C
from .triton_fwd import _dim_ranges, _krange, _odometer_step, _piece_next, _piece_tile, _tile_row

_LOG2E = tl.constexpr(C.LOG2E)
POS_INF = tl.constexpr(float("inf"))


@triton.jit
def _gna_bwd_delta(O, DO, DELTA, sob, soh, son, sdb, sdh, sdn, sxb, sxh, N,
                   BM: tl.constexpr, D: tl.constexpr):
    """delta[b, h, n] = sum_d dO * O (fp32), BM rows per program."""
    pid = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    rows = pid * BM + tl.arange(0, BM)
    ok = rows < N
    offs_d = tl.arange(0, D)
    o = tl.load(O + b * sob + h * soh + rows[:, None] * son + offs_d[None, :], mask=ok[:, None], other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdn + offs_d[None, :], mask=ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + b * sxb + h * sxh + rows, delta, mask=ok)


@triton.jit
def _tile_coords(c0, c1, c2, offs, T0: tl.constexpr, T1: tl.constexpr, T2: tl.constexpr):
    """Grid coordinates of the rows of tile (c0, c1, c2) (row-major inside the tile)."""
    return (c0 * T0 + offs // (T1 * T2), c1 * T1 + (offs // T2) % T1, c2 * T2 + offs % T2)


@triton.jit
def _window_mask(a0, a1, a2, k0, k1, k2, n0, n1, n2, w0, w1, w2, s0, s1, s2, d0, d1, d2,
                 C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, DIL: tl.constexpr):
    """[BM, BN] GNA mask of query coords a* against key coords k* (keys outside the grid and
    padded queries are handled by the callers)."""
    lo0, hi0 = _krange(tl.minimum(a0, n0 - 1), n0, w0, s0, d0, C0, DIL)
    lo1, hi1 = _krange(tl.minimum(a1, n1 - 1), n1, w1, s1, d1, C1, DIL)
    lo2, hi2 = _krange(tl.minimum(a2, n2 - 1), n2, w2, s2, d2, C2, DIL)
    m = (k0[None, :] >= lo0[:, None]) & (k0[None, :] <= hi0[:, None])
    m = m & (k1[None, :] >= lo1[:, None]) & (k1[None, :] <= hi1[:, None])
    m = m & (k2[None, :] >= lo2[:, None]) & (k2[None, :] <= hi2[:, None])
    if DIL:
        m = m & ((k0[None, :] % d0) == (a0 % d0)[:, None]) & ((k1[None, :] % d1) == (a1 % d1)[:, None]) \
            & ((k2[None, :] % d2) == (a2 % d2)[:, None])
    return m


@triton.jit
def _probs(q, k, lse2, qk_scale, mask, MASKED: tl.constexpr):
    """P = 2**(q k^T * scale - lse2) (lse2 = +inf on rows that must give P = 0)."""
    s = tl.dot(q, tl.trans(k)).to(tl.float32) * qk_scale - lse2[:, None]
    if MASKED:
        s = tl.where(mask, s, -POS_INF)
    return tl.exp2(s)


@triton.jit
def _load_q_side(q_base, do_base, l_base, x_base, rows, ok, sqn, sdn, offs_d):
    """Q, dO, base-2 LSE (+inf on invalid or key-less rows) and delta of BM query rows."""
    q = tl.load(q_base + rows[:, None] * sqn + offs_d[None, :], mask=ok[:, None], other=0.0)
    do = tl.load(do_base + rows[:, None] * sdn + offs_d[None, :], mask=ok[:, None], other=0.0)
    lse = tl.load(l_base + rows, mask=ok, other=POS_INF)
    lse2 = tl.where(lse == -POS_INF, POS_INF, lse * _LOG2E)
    delta = tl.load(x_base + rows, mask=ok, other=0.0)
    return q, do, lse2, delta


@triton.jit
def _dkdv_step(dk, dv, k, v, q, do, lse2, delta, qk_scale, mask, MASKED: tl.constexpr):
    """dV += P^T dO, dK += (P * (dO V^T - delta))^T Q (the softmax scale is applied at the end)."""
    p = _probs(q, k, lse2, qk_scale, mask, MASKED)
    dv = tl.dot(tl.trans(p).to(do.dtype), do, dv)
    dp = tl.dot(do, tl.trans(v)).to(tl.float32)
    ds = p * (dp - delta[:, None])
    dk = tl.dot(tl.trans(ds).to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def _dq_step(dq, q, do, lse2, delta, k_base, v_base, rows, kin, skn, svn, offs_d, qk_scale, mask,
             MASKED: tl.constexpr):
    """dQ += (P * (dO V^T - delta)) K for one KV tile (rows with kin false are not loaded)."""
    k = tl.load(k_base + rows[:, None] * skn + offs_d[None, :], mask=kin[:, None], other=0.0)
    v = tl.load(v_base + rows[:, None] * svn + offs_d[None, :], mask=kin[:, None], other=0.0)
    p = _probs(q, k, lse2, qk_scale, mask, MASKED)
    dp = tl.dot(do, tl.trans(v)).to(tl.float32)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq)


@triton.jit
def _split_counts(no_full, lo0, lo1, lo2, hi0, hi1, hi2, fl0, fl1, fl2, fh0, fh1, fh2):
    """The split loops' walk over a box [lo, hi] with full sub-box [fl, fh] (per dim; none
    where ``no_full``, as [lo, lo - 1]): the full box, its widths and the box's in dims 1 and
    2, and the step counts (full tiles, pieces A and B, all partial tiles)."""
    fl0 = tl.where(no_full, lo0, fl0)
    fl1 = tl.where(no_full, lo1, fl1)
    fl2 = tl.where(no_full, lo2, fl2)
    fh0 = tl.where(no_full, lo0 - 1, fh0)
    fh1 = tl.where(no_full, lo1 - 1, fh1)
    fh2 = tl.where(no_full, lo2 - 1, fh2)
    ef0 = fh0 - fl0 + 1
    ef1 = fh1 - fl1 + 1
    ef2 = fh2 - fl2 + 1
    ev0 = hi0 - lo0 + 1
    ev1 = hi1 - lo1 + 1
    ev2 = hi2 - lo2 + 1
    n_full = ef0 * ef1 * ef2
    nA = (ev0 - ef0) * ev1 * ev2
    nB = ef0 * (ev1 - ef1) * ev2
    return fl0, fl1, fl2, fh0, fh1, fh2, ef1, ef2, ev1, ev2, n_full, nA, nB, ev0 * ev1 * ev2 - n_full


@triton.jit
def _where3(cond, a0, a1, a2, b0, b1, b2):
    """(a if cond else b) for three coordinates: a walk's position advances after its last sub-step."""
    return tl.where(cond, a0, b0), tl.where(cond, a1, b1), tl.where(cond, a2, b2)


@triton.jit
def _gna_bwd_dkdv(Q, K, V, DO, LSE, DELTA, KM, QT, FT, DK, DV,
                  sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn, slb, slh,
                  sxb, sxh, skmb, sdkb, sdkh, sdkn, sdvb, sdvh, sdvn, sqt,
                  G, P, S, NG, NT1, NT2, NK1, NK2, n_extra_kv,
                  n0, n1, n2, w0, w1, w2, s0, s1, s2, d0, d1, d2, qk_scale, scale,
                  TQ0: tl.constexpr, TQ1: tl.constexpr, TQ2: tl.constexpr,
                  TK0: tl.constexpr, TK1: tl.constexpr, TK2: tl.constexpr,
                  BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, SUB_M: tl.constexpr,
                  C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, DIL: tl.constexpr,
                  KM_GRID: tl.constexpr, HAS_KM: tl.constexpr, HAS_EXTRA: tl.constexpr,
                  SPLIT: tl.constexpr):
    """dK, dV of one KV tile of one kv head: Q tiles of the inverse box, x the GQA group's
    heads, then the extra-token queries, ``SUB_M`` query rows per step (the [SUB_M, BN]
    scores stay small beside the [BN, D] accumulators). Extra-token KV tiles (pid <
    n_extra_kv) take every Q tile with the whole grid as box.

    SPLIT: as the forward, one flat unmasked loop over the Q tiles that see all of this KV
    tile (``FT``, full_box_tables), then one masked loop over the rest of the box, every load
    at the top of its loop body (what Triton's pipeliner can overlap). Else one loop over the
    box with a per-tile branch between the two paths, the loads inside the branch."""
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2)
    b64 = b.to(tl.int64)
    kvh64 = kvh.to(tl.int64)
    offs_d = tl.arange(0, D)
    offs_m = tl.arange(0, SUB_M)
    offs_n = tl.arange(0, BN)
    NQ0 = (n0 + TQ0 - 1) // TQ0
    # This KV tile: grid coordinates (or extra-token rows).
    kt = tl.maximum(pid - n_extra_kv, 0)
    kt2 = kt % NK2
    kt1 = (kt // NK2) % NK1
    kt0 = kt // (NK1 * NK2)
    k0, k1, k2 = _tile_coords(kt0, kt1, kt2, offs_n, TK0, TK1, TK2)
    kin = (k0 < n0) & (k1 < n1) & (k2 < n2)
    rows = _tile_row(kt0, kt1, kt2, n1, n2, NT1, NT2, P, TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, False) + offs_n
    # Inverse box from the host tables: Q tile range [q_lo, q_hi] per dim.
    ql0 = tl.load(QT + kt0)
    qh0 = tl.load(QT + sqt + kt0)
    ql1 = tl.load(QT + 2 * sqt + kt1)
    qh1 = tl.load(QT + 3 * sqt + kt1)
    ql2 = tl.load(QT + 4 * sqt + kt2)
    qh2 = tl.load(QT + 5 * sqt + kt2)
    is_x = pid < n_extra_kv
    if HAS_EXTRA:
        npre = (P + BN - 1) // BN
        is_pre = pid < npre
        xs = tl.where(is_pre, pid * BN, P + NG + (pid - npre) * BN)
        xe = tl.where(is_pre, P, P + NG + S)
        rows = tl.where(is_x, xs + offs_n, rows)
        kin = tl.where(is_x, xs + offs_n < xe, kin)
        ql0 = tl.where(is_x, 0, ql0)
        ql1 = tl.where(is_x, 0, ql1)
        ql2 = tl.where(is_x, 0, ql2)
        qh0 = tl.where(is_x, NQ0 - 1, qh0)
        qh1 = tl.where(is_x, NT1 - 1, qh1)
        qh2 = tl.where(is_x, NT2 - 1, qh2)
    if HAS_KM:
        km_ok = tl.load(KM + b64 * skmb + rows, mask=kin, other=0) != 0
        if KM_GRID:
            kin = kin & km_ok
        else:
            kin = kin & tl.where(is_x, km_ok, True)
    k_base = K + b64 * skb + kvh64 * skh
    v_base = V + b64 * svb + kvh64 * svh
    k = tl.load(k_base + rows[:, None] * skn + offs_d[None, :], mask=kin[:, None], other=0.0)
    v = tl.load(v_base + rows[:, None] * svn + offs_d[None, :], mask=kin[:, None], other=0.0)
    dk = tl.zeros([BN, D], dtype=tl.float32)
    dv = tl.zeros([BN, D], dtype=tl.float32)
    nq = (qh0 - ql0 + 1) * (qh1 - ql1 + 1) * (qh2 - ql2 + 1)
    if SPLIT:
        # Full Q-tile box [fq, gq] per dim; none ([ql, ql - 1]) for extra-token KV tiles and
        # with a key mask on grid keys (their keys may be masked).
        fq0 = tl.load(FT + kt0)
        gq0 = tl.load(FT + sqt + kt0)
        fq1 = tl.load(FT + 2 * sqt + kt1)
        gq1 = tl.load(FT + 3 * sqt + kt1)
        fq2 = tl.load(FT + 4 * sqt + kt2)
        gq2 = tl.load(FT + 5 * sqt + kt2)
        no_full = is_x
        if KM_GRID:
            no_full = pid >= 0
        fq0, fq1, fq2, gq0, gq1, gq2, ef1, ef2, ev1, ev2, n_full, nA, nB, n_part = _split_counts(
            no_full, ql0, ql1, ql2, qh0, qh1, qh2, fq0, fq1, fq2, gq0, gq1, gq2)
    for g in range(0, G):
        h64 = (kvh * G + g).to(tl.int64)
        q_base = Q + b64 * sqb + h64 * sqh
        do_base = DO + b64 * sdb + h64 * sdh
        l_base = LSE + b64 * slb + h64 * slh
        x_base = DELTA + b64 * sxb + h64 * sxh
        if SPLIT:
            c0 = fq0
            c1 = fq1
            c2 = fq2
            for t in range(0, n_full * (BM // SUB_M)):
                sub = t % (BM // SUB_M)
                a0, a1, a2 = _tile_coords(c0, c1, c2, sub * SUB_M + offs_m, TQ0, TQ1, TQ2)
                q_rows = P + ((c0 * NT1 + c1) * NT2 + c2) * BM + sub * SUB_M + offs_m
                q, do, lse2, delta = _load_q_side(q_base, do_base, l_base, x_base, q_rows,
                                                  (a0 < n0) & (a1 < n1) & (a2 < n2), sqn, sdn, offs_d)
                dk, dv = _dkdv_step(dk, dv, k, v, q, do, lse2, delta, qk_scale, None, False)
                u0, u1, u2 = _odometer_step(c0, c1, c2, fq1, fq2, gq1 + 1, gq2 + 1)
                c0, c1, c2 = _where3(sub == (BM // SUB_M) - 1, u0, u1, u2, c0, c1, c2)
            x0 = 0
            x1 = 0
            x2 = 0
            for t in range(0, n_part * (BM // SUB_M)):
                tt = t // (BM // SUB_M)
                sub = t % (BM // SUB_M)
                c0, c1, c2 = _piece_tile(tt, nA, nB, x0, x1, x2, ql0, ql1, ql2, fq0, fq1, fq2, gq0, gq1, gq2)
                a0, a1, a2 = _tile_coords(c0, c1, c2, sub * SUB_M + offs_m, TQ0, TQ1, TQ2)
                q_ok = (a0 < n0) & (a1 < n1) & (a2 < n2)
                q_rows = P + ((c0 * NT1 + c1) * NT2 + c2) * BM + sub * SUB_M + offs_m
                q, do, lse2, delta = _load_q_side(q_base, do_base, l_base, x_base, q_rows, q_ok,
                                                  sqn, sdn, offs_d)
                mask = _window_mask(a0, a1, a2, k0, k1, k2, n0, n1, n2, w0, w1, w2, s0, s1, s2,
                                    d0, d1, d2, C0, C1, C2, DIL)
                mask = (mask | is_x) & kin[None, :]
                dk, dv = _dkdv_step(dk, dv, k, v, q, do, lse2, delta, qk_scale, mask, True)
                y0, y1, y2 = _piece_next(tt, nA, nB, x0, x1, x2, ev1, ev2, ef1, ef2)
                x0, x1, x2 = _where3(sub == (BM // SUB_M) - 1, y0, y1, y2, x0, x1, x2)
        else:
            c0 = ql0
            c1 = ql1
            c2 = ql2
            for t in range(0, nq):
                _, _, fl0, fh0 = _dim_ranges(c0, n0, w0, s0, d0, TQ0, TK0, C0, DIL)
                _, _, fl1, fh1 = _dim_ranges(c1, n1, w1, s1, d1, TQ1, TK1, C1, DIL)
                _, _, fl2, fh2 = _dim_ranges(c2, n2, w2, s2, d2, TQ2, TK2, C2, DIL)
                full = ((kt0 >= fl0) & (kt0 <= fh0) & (kt1 >= fl1) & (kt1 <= fh1) & (kt2 >= fl2) & (kt2 <= fh2)
                        & (pid >= n_extra_kv))
                if KM_GRID:
                    full = pid < 0
                row0 = P + ((c0 * NT1 + c1) * NT2 + c2) * BM
                if full:
                    for sub in range(0, BM // SUB_M):
                        # Padding query rows of the tile read as absent (P = 0): their q and dO
                        # may hold anything in a caller's tiled tensors.
                        a0, a1, a2 = _tile_coords(c0, c1, c2, sub * SUB_M + offs_m, TQ0, TQ1, TQ2)
                        q_rows = row0 + sub * SUB_M + offs_m
                        q, do, lse2, delta = _load_q_side(q_base, do_base, l_base, x_base, q_rows,
                                                          (a0 < n0) & (a1 < n1) & (a2 < n2), sqn, sdn, offs_d)
                        dk, dv = _dkdv_step(dk, dv, k, v, q, do, lse2, delta, qk_scale, None, False)
                else:
                    for sub in range(0, BM // SUB_M):
                        a0, a1, a2 = _tile_coords(c0, c1, c2, sub * SUB_M + offs_m, TQ0, TQ1, TQ2)
                        q_ok = (a0 < n0) & (a1 < n1) & (a2 < n2)
                        q_rows = row0 + sub * SUB_M + offs_m
                        q, do, lse2, delta = _load_q_side(q_base, do_base, l_base, x_base, q_rows, q_ok,
                                                          sqn, sdn, offs_d)
                        mask = _window_mask(a0, a1, a2, k0, k1, k2, n0, n1, n2, w0, w1, w2, s0, s1, s2,
                                            d0, d1, d2, C0, C1, C2, DIL)
                        mask = (mask | is_x) & kin[None, :]
                        dk, dv = _dkdv_step(dk, dv, k, v, q, do, lse2, delta, qk_scale, mask, True)
                c0, c1, c2 = _odometer_step(c0, c1, c2, ql1, ql2, qh1 + 1, qh2 + 1)
        if HAS_EXTRA:
            # Extra-token queries see every key: prefix rows, then suffix rows.
            nxp = (P + SUB_M - 1) // SUB_M
            nx = nxp + (S + SUB_M - 1) // SUB_M
            for j in range(0, nx):
                is_pre = j < nxp
                qs = tl.where(is_pre, j * SUB_M, P + NG + (j - nxp) * SUB_M)
                qe = tl.where(is_pre, P, P + NG + S)
                q_rows = qs + offs_m
                q, do, lse2, delta = _load_q_side(q_base, do_base, l_base, x_base, q_rows, q_rows < qe,
                                                  sqn, sdn, offs_d)
                dk, dv = _dkdv_step(dk, dv, k, v, q, do, lse2, delta, qk_scale, kin[None, :], True)
    dk = dk * scale
    if HAS_EXTRA:
        st = tl.where(is_x, xs + offs_n < xe, True)  # an extra tile's tail is not ours
    else:
        st = offs_n >= 0
    tl.store(DK + b64 * sdkb + kvh64 * sdkh + rows[:, None] * sdkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=st[:, None])
    tl.store(DV + b64 * sdvb + kvh64 * sdvh + rows[:, None] * sdvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=st[:, None])


@triton.jit
def _gna_bwd_dq(Q, K, V, DO, LSE, DELTA, KM, DQ,
                sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn, slb, slh,
                sxb, sxh, skmb, sdqb, sdqh, sdqn,
                G, P, S, NG, NT1, NT2, n_extra_tiles,
                n0, n1, n2, w0, w1, w2, s0, s1, s2, d0, d1, d2, qk_scale, scale,
                TQ0: tl.constexpr, TQ1: tl.constexpr, TQ2: tl.constexpr,
                TK0: tl.constexpr, TK1: tl.constexpr, TK2: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, SUB_N: tl.constexpr,
                C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, DIL: tl.constexpr,
                KM_GRID: tl.constexpr, HAS_KM: tl.constexpr, HAS_EXTRA: tl.constexpr,
                SPLIT: tl.constexpr):
    """dQ of one Q tile of one head: the forward's KV box (full pairs unmasked), then the
    extra-token KV tiles, ``SUB_N`` keys per step. Extra-token Q tiles (pid <
    n_extra_tiles) take the whole grid. SPLIT: the forward's loops (full tiles, then the
    box minus them), as in _gna_bwd_dkdv; else one loop with a per-tile branch."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // G
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_d = tl.arange(0, D)
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, SUB_N)
    qt = tl.maximum(pid - n_extra_tiles, 0)
    qt2 = qt % NT2
    qt1 = (qt // NT2) % NT1
    qt0 = qt // (NT1 * NT2)
    cl0, ch0, fl0, fh0 = _dim_ranges(qt0, n0, w0, s0, d0, TQ0, TK0, C0, DIL)
    cl1, ch1, fl1, fh1 = _dim_ranges(qt1, n1, w1, s1, d1, TQ1, TK1, C1, DIL)
    cl2, ch2, fl2, fh2 = _dim_ranges(qt2, n2, w2, s2, d2, TQ2, TK2, C2, DIL)
    a0, a1, a2 = _tile_coords(qt0, qt1, qt2, offs_m, TQ0, TQ1, TQ2)
    q_ok = (a0 < n0) & (a1 < n1) & (a2 < n2)
    q_rows = P + qt * BM + offs_m
    is_x = pid < n_extra_tiles
    if HAS_EXTRA:
        npre = (P + BM - 1) // BM
        is_pre = pid < npre
        start = tl.where(is_pre, pid * BM, P + NG + (pid - npre) * BM)
        end = tl.where(is_pre, P, P + NG + S)
        q_rows = tl.where(is_x, start + offs_m, q_rows)
        q_ok = tl.where(is_x, start + offs_m < end, q_ok)
        cl0 = tl.where(is_x, 0, cl0)
        cl1 = tl.where(is_x, 0, cl1)
        cl2 = tl.where(is_x, 0, cl2)
        ch0 = tl.where(is_x, (n0 + TK0 - 1) // TK0 - 1, ch0)
        ch1 = tl.where(is_x, (n1 + TK1 - 1) // TK1 - 1, ch1)
        ch2 = tl.where(is_x, (n2 + TK2 - 1) // TK2 - 1, ch2)
    q_base = Q + b64 * sqb + h64 * sqh
    k_base = K + b64 * skb + kvh.to(tl.int64) * skh
    v_base = V + b64 * svb + kvh.to(tl.int64) * svh
    km_base = KM + b64 * skmb
    q, do, lse2, delta = _load_q_side(q_base, DO + b64 * sdb + h64 * sdh, LSE + b64 * slb + h64 * slh,
                                      DELTA + b64 * sxb + h64 * sxh, q_rows, q_ok, sqn, sdn, offs_d)
    dq = tl.zeros([BM, D], dtype=tl.float32)
    nk = (ch0 - cl0 + 1) * (ch1 - cl1 + 1) * (ch2 - cl2 + 1)
    if SPLIT:
        # The full sub-box; none ([cl, cl - 1]) for extra-token Q tiles (their box is the
        # whole grid, padding keys included) and with a key mask on grid keys.
        no_full = is_x
        if KM_GRID:
            no_full = pid >= 0
        fl0, fl1, fl2, fh0, fh1, fh2, ef1, ef2, ev1, ev2, n_full, nA, nB, n_part = _split_counts(
            no_full, cl0, cl1, cl2, ch0, ch1, ch2, fl0, fl1, fl2, fh0, fh1, fh2)
        c0 = fl0
        c1 = fl1
        c2 = fl2
        for t in range(0, n_full * (BN // SUB_N)):
            sub = t % (BN // SUB_N)
            row0 = _tile_row(c0, c1, c2, n1, n2, NT1, NT2, P, TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, False)
            rows = row0 + sub * SUB_N + offs_n
            dq = _dq_step(dq, q, do, lse2, delta, k_base, v_base, rows, offs_n >= 0, skn, svn, offs_d,
                          qk_scale, None, False)
            u0, u1, u2 = _odometer_step(c0, c1, c2, fl1, fl2, fh1 + 1, fh2 + 1)
            c0, c1, c2 = _where3(sub == (BN // SUB_N) - 1, u0, u1, u2, c0, c1, c2)
        x0 = 0
        x1 = 0
        x2 = 0
        for t in range(0, n_part * (BN // SUB_N)):
            tt = t // (BN // SUB_N)
            sub = t % (BN // SUB_N)
            c0, c1, c2 = _piece_tile(tt, nA, nB, x0, x1, x2, cl0, cl1, cl2, fl0, fl1, fl2, fh0, fh1, fh2)
            row0 = _tile_row(c0, c1, c2, n1, n2, NT1, NT2, P, TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, False)
            rows = row0 + sub * SUB_N + offs_n
            k0, k1, k2 = _tile_coords(c0, c1, c2, sub * SUB_N + offs_n, TK0, TK1, TK2)
            kin = (k0 < n0) & (k1 < n1) & (k2 < n2)
            if KM_GRID:
                kin = kin & (tl.load(km_base + rows, mask=kin, other=0) != 0)
            mask = _window_mask(a0, a1, a2, k0, k1, k2, n0, n1, n2, w0, w1, w2, s0, s1, s2,
                                d0, d1, d2, C0, C1, C2, DIL)
            mask = (mask | is_x) & kin[None, :]
            dq = _dq_step(dq, q, do, lse2, delta, k_base, v_base, rows, kin, skn, svn, offs_d,
                          qk_scale, mask, True)
            y0, y1, y2 = _piece_next(tt, nA, nB, x0, x1, x2, ev1, ev2, ef1, ef2)
            x0, x1, x2 = _where3(sub == (BN // SUB_N) - 1, y0, y1, y2, x0, x1, x2)
    else:
        c0 = cl0
        c1 = cl1
        c2 = cl2
        for t in range(0, nk):
            row0 = _tile_row(c0, c1, c2, n1, n2, NT1, NT2, P, TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, False)
            full = ((c0 >= fl0) & (c0 <= fh0) & (c1 >= fl1) & (c1 <= fh1) & (c2 >= fl2) & (c2 <= fh2)
                    & (pid >= n_extra_tiles))
            if KM_GRID:
                full = pid < 0
            if full:
                for sub in range(0, BN // SUB_N):
                    rows = row0 + sub * SUB_N + offs_n
                    dq = _dq_step(dq, q, do, lse2, delta, k_base, v_base, rows, offs_n >= 0, skn, svn, offs_d,
                                  qk_scale, None, False)
            else:
                for sub in range(0, BN // SUB_N):
                    rows = row0 + sub * SUB_N + offs_n
                    k0, k1, k2 = _tile_coords(c0, c1, c2, sub * SUB_N + offs_n, TK0, TK1, TK2)
                    kin = (k0 < n0) & (k1 < n1) & (k2 < n2)
                    if KM_GRID:
                        kin = kin & (tl.load(km_base + rows, mask=kin, other=0) != 0)
                    mask = _window_mask(a0, a1, a2, k0, k1, k2, n0, n1, n2, w0, w1, w2, s0, s1, s2,
                                        d0, d1, d2, C0, C1, C2, DIL)
                    mask = (mask | is_x) & kin[None, :]
                    dq = _dq_step(dq, q, do, lse2, delta, k_base, v_base, rows, kin, skn, svn, offs_d,
                                  qk_scale, mask, True)
            c0, c1, c2 = _odometer_step(c0, c1, c2, cl1, cl2, ch1 + 1, ch2 + 1)
    if HAS_EXTRA:
        nxp = (P + SUB_N - 1) // SUB_N
        nx = nxp + (S + SUB_N - 1) // SUB_N
        for j in range(0, nx):
            is_pre = j < nxp
            xs = tl.where(is_pre, j * SUB_N, P + NG + (j - nxp) * SUB_N)
            xe = tl.where(is_pre, P, P + NG + S)
            rows = xs + offs_n
            kin = rows < xe
            if HAS_KM:
                kin = kin & (tl.load(km_base + rows, mask=kin, other=0) != 0)
            dq = _dq_step(dq, q, do, lse2, delta, k_base, v_base, rows, kin, skn, svn, offs_d,
                          qk_scale, kin[None, :], True)
    tl.store(DQ + b64 * sdqb + h64 * sdqh + q_rows[:, None] * sdqn + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=tl.where(is_x, q_ok, True)[:, None])
