"""Config search (``search``): rank (window, stride, Q/KV tiles) by NATTENSim's simulated speedup.

Everything factorizes per dim, so the search works on cached per-dim stats
(:func:`~gna_compile.sim.core.dim_stats`) and builds a :class:`SimResult` only for configs
it returns. With ``strides="auto"`` it drops, per dim, strides that are dominated (more KV
visits and no more full visits than another stride): the cost
``full + p*partial = p*visited - (p-1)*full`` can only get worse with them.
"""

from __future__ import annotations

import bisect
import itertools
import math

from ..config import _check_shape, _per_dim, make_spec
from .core import _check_count, _check_penalty, _check_tile, build_result, dim_pairs, dim_stats
from .tiles import candidate_tiles

__all__ = ["search", "windows_for_sparsity"]

_MAX_WINDOW_COMBOS = 200_000


def _dim_density(n: int, w: int, d: int, c: bool) -> float:
    """Fraction of this dim's (query, key) pairs attended, at stride 1."""
    return w / n if not c else dim_pairs(n, w, 1, d, c) / (n * n)


def windows_for_sparsity(shape, sparsity: float, dilation=1, causal=False, tiles=(),
                         tolerance: float = 0.01, per_tile: int = 4, overall: int = 4):
    """Window tuples whose sparsity (at stride 1) is within ``tolerance`` of ``sparsity``.

    Returns the ``overall`` best by score plus, for each (q_tile, kv_tile), the ``per_tile``
    best whose extents are multiples of the KV tile (or the whole dim), so tile-aligned,
    block-sparse configs can be found. Score: relative density error plus a small
    preference for similar extents across dims. If nothing is within tolerance, the
    closest windows are used.
    """
    shape = _check_shape(shape)
    rank = len(shape)
    dil = _per_dim("dilation", dilation, rank)
    cau = _per_dim("causal", causal, rank, kind=bool)
    make_spec(shape, 2, 1, dil, cau)  # validates dilation against the grid
    target = 1.0 - sparsity
    per_dim = [list(range(2, n // d + 1)) for n, d in zip(shape, dil)]
    for i, ws in enumerate(per_dim):
        if not ws:
            raise ValueError(f"shape[{i}]={shape[i]} with dilation[{i}]={dil[i]} admits no window "
                             f"(window must be >= 2 and <= shape // dilation)")
    step = 1
    while math.prod(len(ws) for ws in per_dim) > _MAX_WINDOW_COMBOS:  # coarsen huge grids
        step *= 2
        per_dim = [[w for w in range(2, n // d + 1) if w % step == 0 or w == n // d]
                   for n, d in zip(shape, dil)]
    dens = [{w: _dim_density(n, w, d, c) for w in ws} for ws, n, d, c in zip(per_dim, shape, dil, cau)]

    def score(ws, rho):
        return (abs(rho / target - 1.0) + 0.05 * math.log(max(ws) / min(ws)),
                abs((1.0 - rho) - sparsity), ws)

    # Leading dims enumerated, last dim by bisection on its sorted densities.
    last = sorted((dd, w) for w, dd in dens[-1].items())
    last_d = [x[0] for x in last]
    lo_t, hi_t = target - tolerance - 1e-12, target + tolerance + 1e-12
    ok = []
    for lead in itertools.product(*per_dim[:-1]):
        r = math.prod(dd[w] for dd, w in zip(dens, lead))
        for dl, w in last[bisect.bisect_left(last_d, lo_t / r):bisect.bisect_right(last_d, hi_t / r)]:
            ws = lead + (w,)
            ok.append(score(ws, r * dl))
    if not ok:  # nothing within tolerance: the closest windows
        ok = [score(ws, math.prod(dd[w] for dd, w in zip(dens, ws))) for ws in itertools.product(*per_dim)]
        ok = sorted(ok, key=lambda x: x[1])[:overall + per_tile]
    ok.sort()
    chosen = {ws for _, _, ws in ok[:overall]}
    for kv in {tuple(kv) for _, kv in tiles}:
        found = 0
        for _, _, ws in ok:
            if all(w % t == 0 or w == n // d for w, t, n, d in zip(ws, kv, shape, dil)):
                chosen.add(ws)
                found += 1
                if found == per_tile:
                    break
    return sorted(chosen)


def _auto_strides(w: int, tq: int) -> list[int]:
    """1, w and the multiples of the Q-tile extent up to w. With a 1-wide Q tile every stride
    aligns (and, non-causal, none changes the counts), so powers of two stand in for all."""
    aligned = {1 << k for k in range(w.bit_length())} if tq == 1 else set(range(tq, w + 1, tq))
    return sorted({1, w} | {s for s in aligned if s <= w})


def _pareto(options, p: float):
    """Per-dim stride options not dominated in (visited: fewer, full: more if p >= 1 else fewer)."""
    sign = -1 if p >= 1 else 1
    options = sorted(options, key=lambda o: (o[1].visited, sign * o[1].full, o[0]))
    kept, best = [], None
    for s, stats in options:
        if best is None or sign * stats.full < sign * best:
            kept.append((s, stats))
            best = stats.full
    return kept


def search(shape, window=None, sparsity=None, strides=None, tiles=None, dilation=1, causal=False,
           extra_prefix: int = 0, extra_suffix: int = 0, top=None, require_block_sparse: bool = False,
           mask_penalty=None, sparsity_tolerance: float = 0.01, tile_cost=None):
    """Rank GNA configs for a grid by simulated tile speedup (best first).

    - ``window``: int/tuple, or None to pick windows for the target ``sparsity`` (fraction of
      spatial pairs masked, e.g. 0.9; see :func:`windows_for_sparsity`).
    - ``strides``: iterable of per-dim stride tuples (ints broadcast), or None/"auto": per dim
      1, the window (blocked) and every multiple of the Q-tile extent up to the window.
    - ``tiles``: iterable of (q_tile, kv_tile); default :func:`candidate_tiles`.
    Ranked by ``tile_speedup_with_extras`` (equal to ``tile_speedup`` without extra tokens);
    ties: perfectly block-sparse first, then larger Q tiles, larger KV tiles, smaller strides.
    ``top`` limits the list; ``require_block_sparse`` keeps only configs with no partial tile.
    ``tile_cost(q_tile, kv_tile)`` multiplies a tiling's cost in the ranking (a kernel's
    efficiency at that tile size); the reported speedups stay the tile counts' own.
    """
    shape = _check_shape(shape)
    rank = len(shape)
    p = _check_penalty(mask_penalty)
    _check_count("extra_prefix", extra_prefix)
    _check_count("extra_suffix", extra_suffix)
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 1):
        raise ValueError(f"top={top!r} must be None or an int >= 1")
    dil = _per_dim("dilation", dilation, rank)
    cau = _per_dim("causal", causal, rank, kind=bool)
    if tiles is None:
        tiles = candidate_tiles(shape)
    else:
        tiles = [(_check_tile("q_tile", q, rank), _check_tile("kv_tile", kv, rank)) for q, kv in tiles]
        if not tiles:
            raise ValueError("tiles=[] must list at least one (q_tile, kv_tile) pair")
    if window is not None:
        if sparsity is not None:
            raise ValueError("give window or sparsity, not both (sparsity picks the windows)")
        windows = [make_spec(shape, window, 1, dil, cau).window]
    elif sparsity is None:
        raise ValueError("search needs window=... or sparsity=... (e.g. sparsity=0.9)")
    else:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise ValueError(f"sparsity={sparsity!r} must be a number in [0, 1) (fraction of pairs masked)")
        windows = windows_for_sparsity(shape, sparsity, dil, cau, tiles, tolerance=sparsity_tolerance)
    auto = strides is None or (isinstance(strides, str) and strides == "auto")
    if not auto:
        if isinstance(strides, str):
            raise ValueError(f"strides={strides!r} must be 'auto' or an iterable of per-dim stride tuples")
        strides = [_per_dim("stride", s, rank) for s in strides]

    extras = extra_prefix + extra_suffix
    cands = []  # (sort key, window, stride tuple, q, kv, per-dim stats)
    for q, kv in tiles:
        weight = 1.0 if tile_cost is None else float(tile_cost(q, kv))
        tq_tok, tk_tok = math.prod(q), math.prod(kv)
        e_q, e_kv = -(-extras // tq_tok), -(-extras // tk_tok)
        total = math.prod(shape) + extras
        dense_x = -(-total // tq_tok) * -(-total // tk_tok)
        for win in windows:
            if auto:
                per_dim_opts = [
                    _pareto([(s, dim_stats(n, w, s, d, c, tq, tk)) for s in _auto_strides(w, tq)], p)
                    for n, w, d, c, tq, tk in zip(shape, win, dil, cau, q, kv)]
                combos = itertools.product(*per_dim_opts)
            else:
                combos = ([(s, dim_stats(n, w, s, d, c, tq, tk))
                           for s, n, w, d, c, tq, tk in zip(st, shape, win, dil, cau, q, kv)]
                          for st in strides if all(1 <= s <= w for s, w in zip(st, win)))
            for combo in combos:
                stats = tuple(x[1] for x in combo)
                visited = math.prod(x.visited for x in stats)
                full = math.prod(x.full for x in stats)
                if require_block_sparse and full != visited:
                    continue
                q_t, kv_t = math.prod(x.q_tiles for x in stats), math.prod(x.kv_tiles for x in stats)
                extra_visits = q_t * e_kv + e_q * (kv_t + e_kv)
                metric = dense_x / ((full + p * (visited - full) + extra_visits) * weight)
                stride = tuple(x[0] for x in combo)
                key = (-round(metric, 12), full != visited, -math.prod(q), -math.prod(kv),
                       stride, win, q, kv)
                cands.append((key, win, stride, q, kv, stats))
    if not cands and not require_block_sparse:
        raise ValueError(f"no valid configuration: every stride in strides={strides} exceeds "
                         f"the window(s) {windows} (rule: 1 <= stride <= window)")
    cands.sort(key=lambda x: x[0])
    if top is not None:
        cands = cands[:top]
    out = []
    for _, win, stride, q, kv, stats in cands:
        spec = make_spec(shape, win, stride, dil, cau)
        pairs = math.prod(dim_pairs(*dims) for dims in spec.dims())
        out.append(build_result(spec, q, kv, stats, pairs, extra_prefix, extra_suffix, p))
    return out
