"""Tile shapes for the Triton GNA kernel: which (Q tile, KV tile) pair to run a problem with.

The kernel takes Q tiles of 64 or 128 tokens (16/32 for tiny grids) and KV tiles that are
contiguous sub-boxes of them (one permutation serves both). NATTENSim (gna_compile.sim)
ranks the pairs by tile visits, partial (masked) visits weighted by the measured penalty;
``_local_choose`` is the same count without the simulator. Pure Python: no Triton needed.
"""

from __future__ import annotations

import math

from ..mask import key_range

def kv_tiles_for(q_tile, block_n: int):
    """KV tile of ``block_n`` tokens that is a contiguous sub-box of ``q_tile`` (its first
    non-trivial dim split), or None. With it one permutation serves both Q and KV tiles."""
    q_tile = tuple(q_tile)
    bm = math.prod(q_tile)
    if block_n == bm:
        return q_tile
    if bm % block_n:
        return None
    ratio = bm // block_n
    j = next(i for i, t in enumerate(q_tile) if t > 1)
    if q_tile[j] % ratio:
        return None
    return q_tile[:j] + (q_tile[j] // ratio,) + q_tile[j + 1:]


def _contiguous_sub(q_tile, kv_tile) -> bool:
    """A sub-box is contiguous in a row-major box iff it is 1 before some dim j and equal after."""
    k = len(q_tile)
    for j in range(k):
        if all(kv_tile[i] == 1 for i in range(j)) and all(kv_tile[i] == q_tile[i] for i in range(j + 1, k)):
            return q_tile[j] % kv_tile[j] == 0
    return False


def _dim_stats(n, w, s, d, c, tq, tk):
    """(sum over Q-tile coords of visited KV tiles, of full KV tiles) in one dim."""
    vis = full = 0
    for a in range(0, n, tq):
        b = min(a + tq - 1, n - 1)
        qs = range(a, b + 1)
        rng = [key_range(x, n, w, s, d, c) for x in qs]
        lo, hi = min(r[0] for r in rng), max(r[1] for r in rng)
        vis += hi // tk - lo // tk + 1
        if d == 1:
            ilo, ihi = key_range(b, n, w, s, d, c)[0], key_range(a, n, w, s, d, c)[1]
            f = (ihi + 1) // tk - 1 - (-(-ilo // tk)) + 1
            full += max(f, 0)
    return vis, full


# Cost of a masked (partial) tile visit in full visits: one measured value, kept in the simulator.
from ..sim.penalty import MASK_PENALTY as PARTIAL_PENALTY

SMALL_M_PENALTY = 1.15  # BM=64 tiles use the tensor cores less well on Hopper


def tile_stats(spec, q_tile, kv_tile):
    """Totals over all Q tiles: (visited KV tiles, full KV tiles, Q tiles, dense tile visits)."""
    vis = full = 1
    nq = 1
    for (n, w, s, d, c), tq, tk in zip(spec.dims(), q_tile, kv_tile):
        v, f = _dim_stats(n, w, s, d, c, tq, tk)
        vis *= v
        full *= f
        nq *= -(-n // tq)
    n_kv = math.prod(-(-n // tk) for n, tk in zip(spec.shape, kv_tile))
    return vis, full, nq, nq * n_kv


def _candidate_q_tiles(shape, block_m):
    k = len(shape)
    exps = range(0, int(math.log2(block_m)) + 1)
    out = []

    def rec(prefix, left):
        i = len(prefix)
        if i == k - 1:
            t = left
            if t <= 2 * shape[i] or t == 1:
                out.append(tuple(prefix + [t]))
            return
        for e in exps:
            t = 2 ** e
            if left % t == 0 and (t <= 2 * shape[i] or t == 1):
                rec(prefix + [t], left // t)
    rec([], block_m)
    return out


def _sim_choose(spec, extra_prefix, extra_suffix, sizes=(128, 64)):
    """Tile choice by NATTENSim (gna_compile.sim) over the tile pairs this kernel supports."""
    from ..sim import candidate_tiles, simulate
    best = None
    for qt, kt in candidate_tiles(spec.shape, sizes=sizes):
        bm, bn = math.prod(qt), math.prod(kt)
        if bm not in sizes or bn not in sizes or not _contiguous_sub(qt, kt):
            continue
        r = simulate(spec.shape, spec.window, spec.stride, spec.dilation, spec.causal, qt, kt,
                     extra_prefix, extra_suffix, mask_penalty=PARTIAL_PENALTY)
        speed = r.tile_speedup_with_extras / (SMALL_M_PENALTY * 128 / bm if bm < 128 else 1.0)
        key = (-round(speed, 9), -bm, -bn)
        if best is None or key < best[0]:
            best = (key, qt, kt, r)
    if best is None:
        raise ValueError("no supported tiling")
    return best[1], best[2], best[3]


_TILE_CACHE: dict = {}


def choose_tiles(spec, extra_prefix: int = 0, extra_suffix: int = 0):
    """(q_tile, kv_tile) for a problem, picked by the simulator (local fallback: the same
    count with this module's own per-dim stats), cached per problem."""
    key = (tuple(spec.dims()), extra_prefix, extra_suffix)
    if key in _TILE_CACHE:
        return _TILE_CACHE[key]
    # 64/128-token tiles (the fast ones); 16/32 only for grids too small for those.
    for sizes in ((128, 64), (32, 16)):
        try:
            qt, kt, _ = _sim_choose(spec, extra_prefix, extra_suffix, sizes)
            break
        except ImportError:  # simulator missing: same count, local code
            try:
                qt, kt, _ = _local_choose(spec, extra_prefix + extra_suffix, sizes)
                break
            except ValueError:
                continue
        except ValueError:
            continue
    else:
        raise ValueError(f"grid {spec.shape} is too small for the kernel's tiles (16..128 tokens)")
    _TILE_CACHE[key] = (qt, kt)
    return qt, kt


def _local_choose(spec, extra_tokens: int = 0, sizes=(128, 64)):
    best = None
    for bm in sizes:
        for qt in _candidate_q_tiles(spec.shape, bm):
            for bn in sizes:
                if bn > bm:
                    continue
                kt = kv_tiles_for(qt, bn)
                if kt is None:
                    continue
                vis, full, nq, _ = tile_stats(spec, qt, kt)
                pad_q = nq * bm
                cost = (full + (vis - full) * PARTIAL_PENALTY) * bm * bn / 128 ** 2
                cost += pad_q * extra_tokens / 128 ** 2
                if bm < 128:
                    cost *= SMALL_M_PENALTY * 128 / bm
                key = (cost, -bm, -bn)
                if best is None or key < best[0]:
                    best = (key, qt, kt, cost)
    if best is None:
        raise ValueError(f"grid {spec.shape} is too small for the kernel's tiles (16..128 tokens)")
    return best[1], best[2], best[3]


def predicted_speedup(spec, q_tile, kv_tile, extra_prefix=0, extra_suffix=0):
    """Dense tile visits / GNA tile visits (partial tiles weighted), extras included."""
    E = extra_prefix + extra_suffix
    N = spec.num_tokens + E
    dense = (N / 128) ** 2
    vis, full, nq, _ = tile_stats(spec, q_tile, kv_tile)
    bm, bn = math.prod(q_tile), math.prod(kv_tile)
    gna = (full + (vis - full) * PARTIAL_PENALTY) * bm * bn / 128 ** 2
    gna += nq * bm * E / 128 ** 2 + E * N / 128 ** 2
    return dense / gna
