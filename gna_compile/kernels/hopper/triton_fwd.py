"""Hopper GNA forward kernel in Triton: the device code (launch: triton_launch.py).

One program per (Q tile, head, batch). A Q tile is a box of the token grid (DESIGN.md §2);
per dim the kernel computes, with a few scalar integer ops, the range of KV tiles its queries'
windows can reach (the box) and the sub-range that every query of the tile sees completely
(the intersection of its windows). KV tiles in the product of the full sub-ranges run with no
mask at all; the rest of the box (at most three sub-boxes, each with one dim split in two
intervals) runs with element masks. No block-mask tensors, no index lists.

The kernel reads Q/K/V and writes O/LSE either in tiled (permuted) order, K/V through TMA
descriptors (a KV tile is one contiguous [BN, D] block), or straight in natural row-major
order (``NAT``) with pointer loads: a KV tile is then a few runs of whole D-rows, so gathering
costs about the same (measured within noise on the H100) and saves the permutation passes.
Extra (non-grid) tokens: grid queries also walk the extra keys (whole tiles unmasked, tails
masked); extra-token queries are programs of their own, scheduled first (they are the longest),
that run the same loops with the whole grid as their box. Softmax is online, fp32, base 2
(log2(e) folded into the scale); LSE is natural-log fp32. No warp specialisation by default.
``_krange`` is the device spelling of gna_compile.mask.key_range (the GNA window rule); the
tests check the two against each other. Measurements and tuning history: benchmarks/NOTES.md.
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import constants as C

NEG_INF = tl.constexpr(float("-inf"))
_LN2 = tl.constexpr(C.LN2)
_SUM_MIN = tl.constexpr(C.ROW_SUM_MIN)
_SUM_MAX = tl.constexpr(C.ROW_SUM_MAX)


@triton.jit
def _krange(q, n, w, s, d, CAUSAL: tl.constexpr, DIL: tl.constexpr):
    """gna_compile.mask.key_range with integer ops (scalars or tensors; all values >= 0)."""
    if DIL:
        r = q % d
        qd = q // d
        nd = n // d + (r < n % d).to(tl.int32)
    else:
        qd = q
        nd = n
    if CAUSAL:
        leader = tl.minimum((qd // s) * s + s - 1, nd - 1)
        lo = tl.maximum(leader - w + 1, 0)
        hi = qd
    else:
        wl = w // 2
        wr = w // 2 + w % 2 - 1
        leader = tl.minimum((qd // s) * s + s // 2, nd - 1)
        center = tl.maximum(tl.minimum(leader, nd - 1 - wr), wl)
        lo = center - wl
        hi = center + wr
    if DIL:
        lo = lo * d + r
        hi = hi * d + r
    return lo, hi


@triton.jit
def _dim_ranges(qt, n, w, s, d, TQ: tl.constexpr, TK: tl.constexpr, CAUSAL: tl.constexpr,
                DIL: tl.constexpr):
    """KV-tile range [c_lo, c_hi] a Q tile visits in one dim, and its full sub-range
    [f_lo, f_hi] (empty as f_lo = c_lo, f_hi = c_lo - 1)."""
    a = qt * TQ
    b = tl.minimum(a + TQ - 1, n - 1)
    lo_a, hi_a = _krange(a, n, w, s, d, CAUSAL, DIL)
    lo_b, hi_b = _krange(b, n, w, s, d, CAUSAL, DIL)
    if DIL:
        # Windows are monotone per residue class: scan the first / last d queries of the tile.
        box_lo = lo_a
        box_hi = hi_b
        for j in range(1, d):
            l1, h1 = _krange(tl.minimum(a + j, b), n, w, s, d, CAUSAL, DIL)
            l2, h2 = _krange(tl.maximum(b - j, a), n, w, s, d, CAUSAL, DIL)
            box_lo = tl.minimum(box_lo, l1)
            box_hi = tl.maximum(box_hi, h2)
    else:
        box_lo = lo_a
        box_hi = hi_b
    c_lo = box_lo // TK
    c_hi = box_hi // TK
    # Keys every query of the tile sees: [lo(b), hi(a)] (monotone windows, no dilation).
    f_lo = (lo_b + TK - 1) // TK
    f_hi = (hi_a + 1) // TK - 1
    empty = f_lo > f_hi
    if DIL:
        empty = empty | (d > 1)
    f_lo = tl.where(empty, c_lo, f_lo)
    f_hi = tl.where(empty, c_lo - 1, f_hi)
    return c_lo, c_hi, f_lo, f_hi


@triton.jit
def _tile_row(c0, c1, c2, n1, n2, NT1, NT2, P,
              TQ0: tl.constexpr, TQ1: tl.constexpr, TQ2: tl.constexpr,
              TK0: tl.constexpr, TK1: tl.constexpr, TK2: tl.constexpr,
              BM: tl.constexpr, NAT: tl.constexpr):
    """First row of KV tile (c0, c1, c2) in the token dim (natural or tiled layout)."""
    s0 = c0 * TK0
    s1 = c1 * TK1
    s2 = c2 * TK2
    if NAT:
        return P + (s0 * n1 + s1) * n2 + s2
    else:
        qt = ((s0 // TQ0) * NT1 + s1 // TQ1) * NT2 + s2 // TQ2
        return P + qt * BM + ((s0 % TQ0) * TQ1 + s1 % TQ1) * TQ2 + s2 % TQ2


@triton.jit
def _load_tile(base, rows, stride, offs_d, desc, row0, MASKED: tl.constexpr, TMA: tl.constexpr):
    """[BN, D] rows of K or V: a TMA block, or pointer loads (rows < 0 read as 0 if MASKED)."""
    if TMA:
        x = desc.load([row0, 0])
    elif MASKED:
        x = tl.load(base + rows[:, None] * stride + offs_d[None, :], mask=(rows >= 0)[:, None], other=0.0)
    else:
        x = tl.load(base + rows[:, None] * stride + offs_d[None, :])
    return x


@triton.jit
def _exp2_fma(x):
    """2**x for x <= 0 on the FMA pipe (no MUFU): round-to-nearest by the 1.5 * 2**23 trick,
    a cubic for 2**f on [-0.5, 0.5] (relative error 8e-5, far below bf16/fp16 rounding of P),
    and the integer part added to the exponent bits. x is clamped to [-126, 127] so the
    exponent never wraps (below: ~1e-38, i.e. 0 for the softmax; above: 2**127, which the
    frozen-max check of _gna_fwd catches)."""
    x = tl.minimum(tl.maximum(x, -126.0), 127.0)
    s = x + 12582912.0
    f = x - (s - 12582912.0)
    p = ((0.05508877 * f + 0.24260466) * f + 0.69327628) * f + 0.9999289
    bits = p.to(tl.int32, bitcast=True) + (s.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _exp2_split(x, BM: tl.constexpr, BN: tl.constexpr, QUARTER: tl.constexpr):
    """2**x with every other column (QUARTER: every other column of every other 8-row group)
    on the FMA pipe: the special-function unit (16 exp/clk/SM on Hopper) is the softmax's
    bottleneck; these splits follow the MMA accumulator layout (a thread holds column pairs
    of rows r and r + 8), so they move no data."""
    xa, xb = tl.split(tl.reshape(x, [BM, BN // 2, 2]))
    if QUARTER:
        xb = tl.permute(tl.reshape(xb, [BM // 16, 2, 8, BN // 2]), (0, 2, 3, 1))
        xb0, xb1 = tl.split(xb)
        pb = tl.join(tl.exp2(xb0), _exp2_fma(xb1))
        pb = tl.reshape(tl.permute(pb, (0, 3, 1, 2)), [BM, BN // 2])
    else:
        pb = _exp2_fma(xb)
    return tl.reshape(tl.join(tl.exp2(xa), pb), [BM, BN])


@triton.jit
def _exp2_any(x, FMA_EXP: tl.constexpr):
    """2**x on the MUFU (FMA_EXP=0) or partly on the FMA pipe (1: half, 2: a quarter)."""
    if FMA_EXP:
        p = _exp2_split(x, x.shape[0], x.shape[1], FMA_EXP == 2)
    else:
        p = tl.exp2(x)
    return p


@triton.jit
def _softmax(l_i, m_i, qk, qk_scale, mask, MASKED: tl.constexpr, FMA_EXP: tl.constexpr = 0):
    """Online softmax (base 2) of one tile of raw scores: (P, row rescale, new l, new m).
    FMA_EXP: 1 = half, 2 = a quarter of the exponentials of an unmasked tile by _exp2_fma
    (16-bit inputs only)."""
    if MASKED:
        # Scale after the max (scale > 0) so that scale-and-subtract is one FMA per score.
        qk = tl.where(mask, qk, NEG_INF)
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = tl.where(m_new == NEG_INF, 0.0, m_new)
        p = tl.exp2(qk * qk_scale - m_use[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        m_use = m_new
        p = _exp2_any(qk * qk_scale - m_use[:, None], FMA_EXP)
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    return p, alpha, l_i, m_new


@triton.jit
def _step(acc, l_i, m_i, q, kv_rows, k_base, v_base, skn, svn, offs_d, qk_scale, mask,
          MASKED: tl.constexpr, desc_k, desc_v, row0, TMA: tl.constexpr, FMA_EXP: tl.constexpr = 0,
          STALE: tl.constexpr = False):
    """One KV tile of online softmax in base 2. MASKED: ``mask`` [BM, BN] (or [1, BN]) hides
    scores, and rows < 0 in ``kv_rows`` are not loaded (keys outside the tensor/grid).
    STALE (unmasked only): the row max m_i is frozen: no max, no rescale of acc; P may
    exceed 1, which the caller checks."""
    k = _load_tile(k_base, kv_rows, skn, offs_d, desc_k, row0, MASKED, TMA)
    qk = tl.dot(q, tl.trans(k))
    if STALE:
        p = _exp2_any(qk * qk_scale - m_i[:, None], FMA_EXP)
        l_i = l_i + tl.sum(p, 1)
    else:
        p, alpha, l_i, m_i = _softmax(l_i, m_i, qk, qk_scale, mask, MASKED, FMA_EXP)
        acc = acc * alpha[:, None]
    v = _load_tile(v_base, kv_rows, svn, offs_d, desc_v, row0, MASKED, TMA)
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_i


@triton.jit
def _odometer_step(c0, c1, c2, lo1, lo2, end1, end2):
    """Next (c0, c1, c2) of a row-major walk over a box whose dims 1 and 2 run [lo, end): the
    loops walk tiles this way instead of dividing the loop index (a division costs a
    MUFU.RCP, the unit the softmax's exponentials already saturate)."""
    c2 += 1
    wrap2 = c2 >= end2
    c2 = tl.where(wrap2, lo2, c2)
    c1 = tl.where(wrap2, c1 + 1, c1)
    wrap1 = c1 >= end1
    c1 = tl.where(wrap1, lo1, c1)
    c0 = tl.where(wrap1, c0 + 1, c0)
    return c0, c1, c2


@triton.jit
def _piece_tile(t, nA, nB, x0, x1, x2, cl0, cl1, cl2, fl0, fl1, fl2, fh0, fh1, fh2):
    """Tile (c0, c1, c2) at position (x0, x1, x2) of step ``t`` in the walk over a box minus its
    full sub-box, the partial loops' decomposition (forward and backward): A (dim 0 outside F0), then B (F0 x
    dim 1 outside F1), then C (F0 x F1 x dim 2 outside F2); a split dim maps x to the low
    interval [c_lo, f_lo) and then the high one (f_hi, c_hi]. Needs, per dim, a full range
    of width >= 0 (f_hi >= f_lo - 1; the kernels and tables write an empty one as
    [c_lo, c_lo - 1]) lying inside the box when not empty: a width of -1 visits a tile twice."""
    inA = t < nA
    inB = (t >= nA) & (t < nA + nB)
    inAB = t < nA + nB
    r0 = tl.where(x0 < fl0 - cl0, cl0 + x0, fh0 + 1 + x0 - (fl0 - cl0))
    r1 = tl.where(x1 < fl1 - cl1, cl1 + x1, fh1 + 1 + x1 - (fl1 - cl1))
    r2 = tl.where(x2 < fl2 - cl2, cl2 + x2, fh2 + 1 + x2 - (fl2 - cl2))
    c0 = tl.where(inA, r0, fl0 + x0)
    c1 = tl.where(inA, cl1 + x1, tl.where(inB, r1, fl1 + x1))
    c2 = tl.where(inAB, cl2 + x2, r2)
    return c0, c1, c2


@triton.jit
def _piece_next(t, nA, nB, x0, x1, x2, ev1, ev2, ef1, ef2):
    """Position after step ``t`` of _piece_tile's walk (reset where a piece ends)."""
    inA = t < nA
    inB = (t >= nA) & (t < nA + nB)
    inAB = t < nA + nB
    E1 = tl.maximum(tl.where(inA, ev1, tl.where(inB, ev1 - ef1, ef1)), 1)
    E2 = tl.maximum(tl.where(inAB, ev2, ev2 - ef2), 1)
    x0, x1, x2 = _odometer_step(x0, x1, x2, 0, 0, E1, E2)
    piece_end = (t + 1 == nA) | (t + 1 == nA + nB)
    return tl.where(piece_end, 0, x0), tl.where(piece_end, 0, x1), tl.where(piece_end, 0, x2)


@triton.jit
def _full_loop(acc, l_i, m_i, q, n_full, n_gfull, n_xpf, fl0, fl1, fl2, fh1, fh2,
               n1, n2, NT1, NT2, P, NG, kv_local, offs_n, k_base, v_base, km_base, skn, svn, offs_d,
               qk_scale, desc_k, desc_v, head_row,
               TQ0: tl.constexpr, TQ1: tl.constexpr, TQ2: tl.constexpr,
               TK0: tl.constexpr, TK1: tl.constexpr, TK2: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, NAT: tl.constexpr, XFULL: tl.constexpr,
               KM_GRID: tl.constexpr, TMA: tl.constexpr, FMA_EXP: tl.constexpr, WS: tl.constexpr,
               STALE: tl.constexpr):
    """The full KV tiles of the box (no mask), then whole extra-token tiles (XFULL), the box
    walked with _odometer_step. STALE: m_i is frozen (see _step)."""
    c0 = fl0
    c1 = fl1
    c2 = fl2
    for t in tl.range(0, n_full, warp_specialize=WS):
        row0 = _tile_row(c0, c1, c2, n1, n2, NT1, NT2, P, TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, NAT)
        rows = row0 + kv_local
        if XFULL:
            # Then whole extra-token tiles: prefix, suffix.
            j = t - n_gfull
            is_x = j >= 0
            row0 = tl.where(is_x, tl.where(j < n_xpf, j * BN, P + NG + (j - n_xpf) * BN), row0)
            rows = tl.where(is_x, row0 + offs_n, rows)
        if KM_GRID:
            kmok = tl.load(km_base + rows) != 0
            rows = tl.where(kmok, rows, -1)
            acc, l_i, m_i = _step(acc, l_i, m_i, q, rows, k_base, v_base, skn, svn, offs_d, qk_scale,
                                  kmok[None, :], True, desc_k, desc_v, head_row + row0, TMA)
        else:
            acc, l_i, m_i = _step(acc, l_i, m_i, q, rows, k_base, v_base, skn, svn, offs_d, qk_scale,
                                  None, False, desc_k, desc_v, head_row + row0, TMA, FMA_EXP, STALE)
        c0, c1, c2 = _odometer_step(c0, c1, c2, fl1, fl2, fh1 + 1, fh2 + 1)
    return acc, l_i, m_i


@triton.jit
def _unmasked_full(acc, l_i, m_i, q, n_full, n_gfull, n_xpf, fl0, fl1, fl2, fh1, fh2,
                   n1, n2, NT1, NT2, P, NG, kv_local, offs_n, k_base, v_base, km_base, skn, svn, offs_d,
                   qk_scale, desc_k, desc_v, head_row,
                   TQ0: tl.constexpr, TQ1: tl.constexpr, TQ2: tl.constexpr,
                   TK0: tl.constexpr, TK1: tl.constexpr, TK2: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, NAT: tl.constexpr,
                   XFULL: tl.constexpr, TMA: tl.constexpr, FMA_EXP: tl.constexpr, WS: tl.constexpr,
                   STALE: tl.constexpr):
    """The full tiles with no key mask: the exact online softmax, or (STALE) a frozen row max.

    Frozen row max: m_i is the row max of the first full tile (one extra Q K^T), then the loop
    does no max and no rescale. A row whose sum reaches 2**64 (or NaN: a later score far above
    the frozen max) sends the Q tile through the exact loop again; below that, P and the sums
    are finite and as precise as with a running max. The first tile's keys are all attended,
    so the sum is >= 1; a sum under 2**-60 cannot happen and is treated as bad too (and so is
    n_full == 0, where the redo costs nothing)."""
    if STALE:
        if n_full > 0:
            row0 = _tile_row(fl0, fl1, fl2, n1, n2, NT1, NT2, P, TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, NAT)
            if XFULL:
                row0 = tl.where(n_gfull > 0, row0, tl.where(n_xpf > 0, 0, P + NG))
            k = _load_tile(k_base, row0 + kv_local, skn, offs_d, desc_k, head_row + row0, False, TMA)
            m_i = tl.max(tl.dot(q, tl.trans(k)), 1) * qk_scale
    acc, l_i, m_i = _full_loop(
        acc, l_i, m_i, q, n_full, n_gfull, n_xpf, fl0, fl1, fl2, fh1, fh2, n1, n2, NT1, NT2, P, NG,
        kv_local, offs_n, k_base, v_base, km_base, skn, svn, offs_d, qk_scale, desc_k, desc_v, head_row,
        TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, BN, NAT, XFULL, False, TMA, FMA_EXP, WS, STALE)
    if STALE:
        ok = (l_i < _SUM_MAX) & (l_i >= _SUM_MIN)
        bad = tl.max((~ok).to(tl.int32), 0)
        if bad > 0:
            acc, l_i, m_i = _full_loop(
                tl.zeros([BM, D], dtype=tl.float32), tl.zeros([BM], dtype=tl.float32),
                tl.full([BM], NEG_INF, dtype=tl.float32), q, n_full, n_gfull, n_xpf, fl0, fl1, fl2, fh1, fh2,
                n1, n2, NT1, NT2, P, NG, kv_local, offs_n, k_base, v_base, km_base, skn, svn, offs_d,
                qk_scale, desc_k, desc_v, head_row,
                TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, BN, NAT, XFULL, False, TMA, FMA_EXP, WS, False)
    return acc, l_i, m_i


@triton.jit
def _gna_fwd(Q, K, V, O, LSE, KM, GV, desc_k, desc_v, N_KV,
             sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, slb, slh, skmb,
             G, P, S, NG, NT1, NT2, n_extra_tiles,
             n0, n1, n2, w0, w1, w2, s0, s1, s2, d0, d1, d2, qk_scale,
             TQ0: tl.constexpr, TQ1: tl.constexpr, TQ2: tl.constexpr,
             TK0: tl.constexpr, TK1: tl.constexpr, TK2: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr,
             C0: tl.constexpr, C1: tl.constexpr, C2: tl.constexpr, DIL: tl.constexpr,
             NAT: tl.constexpr, KM_GRID: tl.constexpr, HAS_KM: tl.constexpr,
             HAS_EXTRA_KV: tl.constexpr, HAS_EXTRA_Q: tl.constexpr, WS: tl.constexpr,
             TMA: tl.constexpr, RANK: tl.constexpr, XFULL: tl.constexpr,
             FMA_EXP: tl.constexpr = 0, STALE: tl.constexpr = False):
    """Grid queries: the Q tile's GNA box; extra queries (first programs): the whole grid as
    the box with whole-grid windows. Then two loops: full KV tiles (no mask), and partial
    KV tiles followed by the extra-token KV tiles (masked)."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    kvh = h // G
    b64 = b.to(tl.int64)
    q_base = Q + b64 * sqb + h.to(tl.int64) * sqh
    k_base = K + b64 * skb + kvh.to(tl.int64) * skh
    v_base = V + b64 * svb + kvh.to(tl.int64) * svh
    o_base = O + b64 * sob + h.to(tl.int64) * soh
    l_base = LSE + b64 * slb + h.to(tl.int64) * slh
    km_base = KM + b64 * skmb
    # TMA (tiled layout, contiguous K/V): rows of this (batch, kv head) in the [B*Hkv*N, D] view.
    head_row = (b * (tl.num_programs(1) // G) + kvh) * N_KV
    offs_d = tl.arange(0, D)
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)

    qt = tl.maximum(pid - n_extra_tiles, 0)
    qt2 = qt % NT2
    qt1 = (qt // NT2) % NT1
    qt0 = qt // (NT1 * NT2)
    cl0, ch0, fl0, fh0 = _dim_ranges(qt0, n0, w0, s0, d0, TQ0, TK0, C0, DIL)
    cl1, ch1, fl1, fh1 = _dim_ranges(qt1, n1, w1, s1, d1, TQ1, TK1, C1, DIL)
    cl2, ch2, fl2, fh2 = _dim_ranges(qt2, n2, w2, s2, d2, TQ2, TK2, C2, DIL)
    # Query coordinates (clamped into the grid, so padded rows behave like a real query).
    a0 = qt0 * TQ0 + offs_m // (TQ1 * TQ2)
    a1 = qt1 * TQ1 + (offs_m // TQ2) % TQ1
    a2 = qt2 * TQ2 + offs_m % TQ2
    if NAT:
        q_ok = (a0 < n0) & (a1 < n1) & (a2 < n2)
    else:
        q_ok = offs_m >= 0
    a0 = tl.minimum(a0, n0 - 1)
    a1 = tl.minimum(a1, n1 - 1)
    a2 = tl.minimum(a2, n2 - 1)
    if NAT:
        q_rows = P + (a0 * n1 + a1) * n2 + a2
    else:
        q_rows = P + qt * BM + offs_m
    # Query-side window bounds per dim: key k is in iff 0 <= k - lo <= wd.
    lo0, hi0 = _krange(a0, n0, w0, s0, d0, C0, DIL)
    lo1, hi1 = _krange(a1, n1, w1, s1, d1, C1, DIL)
    lo2, hi2 = _krange(a2, n2, w2, s2, d2, C2, DIL)
    wd0 = hi0 - lo0
    wd1 = hi1 - lo1
    wd2 = hi2 - lo2
    if HAS_EXTRA_Q:
        # Extra-token queries: box = every KV tile, full = tiles without padding, no window.
        dense = pid < n_extra_tiles
        npre = (P + BM - 1) // BM
        is_pre = pid < npre
        start = tl.where(is_pre, pid * BM, P + NG + (pid - npre) * BM)
        end = tl.where(is_pre, P, P + NG + S)
        q_rows = tl.where(dense, start + offs_m, q_rows)
        q_ok = tl.where(dense, (start + offs_m) < end, q_ok)
        cl0 = tl.where(dense, 0, cl0)
        cl1 = tl.where(dense, 0, cl1)
        cl2 = tl.where(dense, 0, cl2)
        ch0 = tl.where(dense, (n0 + TK0 - 1) // TK0 - 1, ch0)
        ch1 = tl.where(dense, (n1 + TK1 - 1) // TK1 - 1, ch1)
        ch2 = tl.where(dense, (n2 + TK2 - 1) // TK2 - 1, ch2)
        fl0 = tl.where(dense, 0, fl0)
        fl1 = tl.where(dense, 0, fl1)
        fl2 = tl.where(dense, 0, fl2)
        dense_empty = (n0 < TK0) | (n1 < TK1) | (n2 < TK2)
        fh0 = tl.where(dense, tl.where(dense_empty, -1, n0 // TK0 - 1), fh0)
        fh1 = tl.where(dense, tl.where(dense_empty, -1, n1 // TK1 - 1), fh1)
        fh2 = tl.where(dense, tl.where(dense_empty, -1, n2 // TK2 - 1), fh2)
        lo0 = tl.where(dense, 0, lo0)
        lo1 = tl.where(dense, 0, lo1)
        lo2 = tl.where(dense, 0, lo2)
        wd0 = tl.where(dense, n0 - 1, wd0)
        wd1 = tl.where(dense, n1 - 1, wd1)
        wd2 = tl.where(dense, n2 - 1, wd2)
    else:
        dense = False
    q = tl.load(q_base + q_rows[:, None] * sqn + offs_d[None, :], mask=q_ok[:, None], other=0.0)

    # Per-element offsets of a KV tile's rows relative to its first row (loop invariant).
    e0 = offs_n // (TK1 * TK2)
    e1 = (offs_n // TK2) % TK1
    e2 = offs_n % TK2
    if NAT:
        kv_local = (e0 * n1 + e1) * n2 + e2
    else:
        kv_local = offs_n
    acc = tl.zeros([BM, D], dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    m_i = tl.full([BM], NEG_INF, dtype=tl.float32)

    # ---- full KV tiles: no mask of any kind.
    ef0 = fh0 - fl0 + 1
    ef1 = fh1 - fl1 + 1
    ef2 = fh2 - fl2 + 1
    n_gfull = ef0 * ef1 * ef2
    if XFULL:
        # Whole extra-token KV tiles need no mask either (no key mask, no tail).
        n_xpf = P // BN
        n_xfull = n_xpf + S // BN
    else:
        n_xpf = 0
        n_xfull = 0
    n_full = n_gfull + n_xfull
    # Full tiles. With a key mask on grid keys, a batch whose grid keys are all visible
    # (GV[b], computed on the device by the caller) still takes the unmasked loop. The two
    # loops run one after the other (one of them empty), so they share their shared-memory
    # stage buffers (in the two arms of an `if` they would not, and overflow it).
    if KM_GRID:
        visible = tl.load(GV + b) != 0
        n_open = tl.where(visible, n_full, 0)
        n_masked = n_full - n_open
    else:
        n_open = n_full
    acc, l_i, m_i = _unmasked_full(
        acc, l_i, m_i, q, n_open, n_gfull, n_xpf, fl0, fl1, fl2, fh1, fh2, n1, n2, NT1, NT2, P, NG,
        kv_local, offs_n, k_base, v_base, km_base, skn, svn, offs_d, qk_scale, desc_k, desc_v, head_row,
        TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, BN, D, NAT, XFULL, TMA, FMA_EXP, WS, STALE)
    if KM_GRID:
        acc, l_i, m_i = _full_loop(
            acc, l_i, m_i, q, n_masked, n_gfull, n_xpf, fl0, fl1, fl2, fh1, fh2, n1, n2, NT1, NT2, P, NG,
            kv_local, offs_n, k_base, v_base, km_base, skn, svn, offs_d, qk_scale, desc_k, desc_v, head_row,
            TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, BN, NAT, XFULL, True, TMA, FMA_EXP, WS, False)

    # ---- partial KV tiles, then extra-token KV tiles. Box minus full box = A (dim0 outside
    # F0) + B (F0 x dim1 outside F1) + C (F0 x F1 x dim2 outside F2); the split dim of a piece
    # maps its index x to the low interval [c_lo, f_lo) then the high one (f_hi, c_hi].
    ev0 = ch0 - cl0 + 1
    ev1 = ch1 - cl1 + 1
    ev2 = ch2 - cl2 + 1
    nA = (ev0 - ef0) * ev1 * ev2
    nB = ef0 * (ev1 - ef1) * ev2
    nC = ef0 * ef1 * (ev2 - ef2)
    n_part = nA + nB + nC
    if HAS_EXTRA_KV:
        # Masked extra tiles: all of them, or only the two tails when XFULL took the rest.
        if XFULL:
            pre_first = P // BN
            suf_first = S // BN
        else:
            pre_first = 0
            suf_first = 0
        n_xpre = (P + BN - 1) // BN - pre_first
        n_ext = n_xpre + (S + BN - 1) // BN - suf_first
    else:
        n_ext = 0
    # (x0, x1, x2): position inside the current piece, walked by _odometer_step over its
    # extents (E0 x E1 x E2) and reset where a piece ends.
    x0 = 0
    x1 = 0
    x2 = 0
    for t in range(0, n_part + n_ext):
        c0, c1, c2 = _piece_tile(t, nA, nB, x0, x1, x2, cl0, cl1, cl2, fl0, fl1, fl2, fh0, fh1, fh2)
        k0 = c0 * TK0 + e0
        k1 = c1 * TK1 + e1
        k2 = c2 * TK2 + e2
        # Dims added to reach 3 (extent 1) need no test: RANK compiles them out.
        kin = k2 < n2
        mask = (k2[None, :] - lo2[:, None]).to(tl.uint32) <= wd2[:, None].to(tl.uint32)
        if RANK >= 2:
            kin = kin & (k1 < n1)
            mask = mask & ((k1[None, :] - lo1[:, None]).to(tl.uint32) <= wd1[:, None].to(tl.uint32))
        if RANK >= 3:
            kin = kin & (k0 < n0)
            mask = mask & ((k0[None, :] - lo0[:, None]).to(tl.uint32) <= wd0[:, None].to(tl.uint32))
        if DIL:
            mask = mask & ((((k0[None, :] % d0) == (a0 % d0)[:, None])
                            & ((k1[None, :] % d1) == (a1 % d1)[:, None])
                            & ((k2[None, :] % d2) == (a2 % d2)[:, None])) | dense)
        row0 = _tile_row(c0, c1, c2, n1, n2, NT1, NT2, P, TQ0, TQ1, TQ2, TK0, TK1, TK2, BM, NAT)
        rows = row0 + kv_local
        if HAS_EXTRA_KV:
            # Extra keys: prefix tiles, then suffix tiles, tails masked.
            j = t - n_part
            is_ext = j >= 0
            is_pre = j < n_xpre
            xs = tl.where(is_pre, (pre_first + j) * BN, P + NG + (suf_first + j - n_xpre) * BN)
            xe = tl.where(is_pre, P, P + NG + S)
            xrows = xs + offs_n
            rows = tl.where(is_ext, xrows, rows)
            row0 = tl.where(is_ext, xs, row0)
            kin = tl.where(is_ext, xrows < xe, kin)
            if HAS_KM:
                if KM_GRID:
                    kin = kin & (tl.load(km_base + rows, mask=kin, other=0) != 0)
                    mask = mask & kin[None, :]
                else:
                    km_ok = tl.load(km_base + rows, mask=kin, other=1) != 0
                    kin = kin & tl.where(is_ext, km_ok, True)
            mask = tl.where(is_ext, kin[None, :], mask)
        elif KM_GRID:
            kin = kin & (tl.load(km_base + rows, mask=kin, other=0) != 0)
            mask = mask & kin[None, :]
        # Grid keys outside the grid (edges, padding) fail every window test already, so
        # ``kin`` only guards their loads (and carries the extra keys' tails and key mask).
        rows = tl.where(kin, rows, -1)
        acc, l_i, m_i = _step(acc, l_i, m_i, q, rows, k_base, v_base, skn, svn, offs_d, qk_scale,
                              mask, True, desc_k, desc_v, head_row + row0, TMA)
        x0, x1, x2 = _piece_next(t, nA, nB, x0, x1, x2, ev1, ev2, ef1, ef2)
    st_rows = q_rows
    st_ok = q_ok

    # ---- epilogue: normalise, natural-log LSE; rows that saw no key give 0 and -inf.
    seen = l_i > 0.0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(seen, (m_i + tl.log2(l_safe)) * _LN2, NEG_INF)
    tl.store(o_base + st_rows[:, None] * son + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=st_ok[:, None])
    tl.store(l_base + st_rows, lse, mask=st_ok)

