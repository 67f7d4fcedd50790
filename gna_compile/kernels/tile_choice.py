"""Tile shapes for the GNA kernels: the one place a (Q tile, KV tile) pair is decided.

The compile pass records this module's choice on every call it rewrites and passes it to the
op; the natural-order, tiled and hoisted paths and the benchmarks all run that choice, and
``explain()`` shows it. A direct ``gna_attention`` call without tiles asks the same function.

The Triton kernel takes Q tiles of 128 or 64 tokens (32/16 only for grids too small for
those), power-of-two boxes, and KV tiles that are contiguous sub-boxes of them (one
permutation serves both). NATTENSim ranks the pairs by tile visits, partial (masked) visits
weighted by the measured penalty, and a Q tile under 128 tokens by ``SMALL_M_PENALTY``.
Pure Python: no Triton needed.
"""

from __future__ import annotations

import functools
import math

from ..sim import candidate_tiles, is_kv_subtile
from ..sim.core import dim_stats
from ..sim.penalty import MASK_PENALTY as PARTIAL_PENALTY

__all__ = ["kernel_tiles", "tile_cost", "choose_tiles", "search_configs", "kv_tiles_for",
           "tile_stats", "SIZES", "SMALL_M_PENALTY", "PARTIAL_PENALTY"]

SIZES = ((128, 64), (32, 16))  # tile token counts: the fast ones, then the tiny-grid ones
SMALL_M_PENALTY = 1.15         # a Q tile under 128 tokens uses Hopper's tensor cores less well


@functools.lru_cache(maxsize=512)
def kernel_tiles(shape) -> tuple:
    """The (q_tile, kv_tile) pairs the kernel runs for a grid: 128/64-token tiles, or 32/16
    where the grid admits none of those. Empty if even those do not fit."""
    for sizes in SIZES:
        pairs = tuple((q, kv) for q, kv in candidate_tiles(tuple(shape), sizes=sizes)
                      if math.prod(q) in sizes and math.prod(kv) in sizes and is_kv_subtile(q, kv))
        if pairs:
            return pairs
    return ()


def tile_cost(q_tile, kv_tile) -> float:
    """Cost multiplier of a tile pair beyond its tile visits (small Q tiles run slower)."""
    bm = math.prod(q_tile)
    return SMALL_M_PENALTY * 128 / bm if bm < 128 else 1.0


def _tiles_or_raise(shape):
    pairs = kernel_tiles(tuple(shape))
    if not pairs:
        raise ValueError(f"grid {tuple(shape)} is too small for the kernel's tiles (16..128 tokens)")
    return pairs


@functools.lru_cache(maxsize=1024)
def _choose(dims, extra_prefix, extra_suffix):
    from ..sim import search
    shape, window, stride, dilation, causal = (tuple(x) for x in zip(*dims))
    best = search(shape, window=window, strides=[stride], dilation=dilation, causal=causal,
                  tiles=_tiles_or_raise(shape), extra_prefix=extra_prefix, extra_suffix=extra_suffix,
                  top=1, tile_cost=tile_cost)
    return best[0].q_tile, best[0].kv_tile


def choose_tiles(spec, extra_prefix: int = 0, extra_suffix: int = 0):
    """(q_tile, kv_tile) for a problem (``ValueError`` if the grid fits no kernel tile)."""
    return _choose(tuple(spec.dims()), int(extra_prefix), int(extra_suffix))


def search_configs(grid, sparsity, extra_prefix: int = 0, extra_suffix: int = 0,
                   require_block_sparse: bool = False, top: int = 1):
    """The simulator's ranked (window, stride, tiles) configs for a target sparsity, over the
    tiles this kernel runs and ranked with the same tile cost as :func:`choose_tiles`."""
    from ..sim import search
    return search(tuple(grid), sparsity=sparsity, tiles=_tiles_or_raise(grid), extra_prefix=extra_prefix,
                  extra_suffix=extra_suffix, top=top, require_block_sparse=require_block_sparse,
                  tile_cost=tile_cost)


def kv_tiles_for(q_tile, block_n: int):
    """KV tile of ``block_n`` tokens that is a contiguous sub-box of ``q_tile`` (its first
    non-trivial dim split), or None."""
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


def tile_stats(spec, q_tile, kv_tile):
    """Totals over all Q tiles, from the simulator's per-dim counts: (visited KV tiles, full
    KV tiles, Q tiles, dense tile visits)."""
    vis = full = nq = n_kv = 1
    for (n, w, s, d, c), tq, tk in zip(spec.dims(), q_tile, kv_tile):
        st = dim_stats(n, w, s, d, c, tq, tk)
        vis, full, nq, n_kv = vis * st.visited, full * st.full, nq * st.q_tiles, n_kv * st.kv_tiles
    return vis, full, nq, nq * n_kv
