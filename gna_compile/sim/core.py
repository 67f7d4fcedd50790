"""NATTENSim core: exact tile counts of a GNA config, analytic per dim.

The GNA mask is a product over dims and a tile is a box, so every count factorizes: the KV
tiles a Q tile visits are the product of per-dim tile intervals, and the grand totals are
products of per-dim sums over Q-tile coordinates. Per dim we only evaluate
:func:`gna_compile.mask.key_range` bounds at the first/last query of each Q tile (per residue
with dilation), because key ranges are monotone in the query coordinate within a residue class.
Cost: O(sum_i n_i) integer ops (one key range per coordinate, cached per dim config and
shared by all tilings), with per-dim results cached for searches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import NamedTuple

from ..config import _per_dim, make_spec
from ..mask import key_range
from . import penalty
from .tiles import default_tile

__all__ = ["SimResult", "DimStats", "simulate", "dim_stats", "dim_pairs"]


class DimStats(NamedTuple):
    """One dim's counts: Q tiles, KV tiles, and KV-tile visits / full visits summed over Q tiles."""

    q_tiles: int
    kv_tiles: int
    visited: int
    full: int


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@lru_cache(maxsize=1 << 12)
def _ranges(n: int, w: int, s: int, d: int, causal: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Key-range bounds (lo, hi) of every query of one dim, shared by all tilings."""
    lo, hi = zip(*(key_range(q, n, w, s, d, causal) for q in range(n)))
    return lo, hi


def full_tile_ranges(n: int, w: int, s: int, causal: bool, tq: int, tk: int) -> tuple[tuple[int, int], ...]:
    """Per Q tile of one dim (no dilation): the KV tiles ``[lo, hi]`` that every query of the
    tile sees completely (``hi < lo``: none). What dim_stats counts as full, as ranges: the
    Gluon kernel reads them instead of evaluating the window rule on the device."""
    lo, hi = _ranges(n, w, s, 1, causal)
    out = []
    for q0 in range(0, n, tq):
        q1 = min(q0 + tq, n) - 1
        out.append((_cdiv(lo[q1], tk), (hi[q0] + 1) // tk - 1))
    return tuple(out)


@lru_cache(maxsize=1 << 16)
def dim_stats(n: int, w: int, s: int, d: int, causal: bool, tq: int, tk: int) -> DimStats:
    """Per-dim tile counts (arguments already validated).

    A Q tile covers queries [q0, q1] (in-grid part only). It visits the KV tiles meeting
    [min lo, max hi] over its queries; a visit is full when the KV tile lies inside every
    query's window, has no padding, and (dilation) every key has each query's residue.
    """
    lo, hi = _ranges(n, w, s, d, causal)
    visited = full = 0
    for q0 in range(0, n, tq):
        q1 = min(q0 + tq, n) - 1
        if d == 1:
            lo_min, hi_max, lo_max, hi_min = lo[q0], hi[q1], lo[q1], hi[q0]
        else:
            # Monotone within a residue class: check the first and last query of each residue.
            last = range(q0, min(q0 + d, q1 + 1))
            lo_min = min(lo[q] for q in last)
            hi_max = max(hi[q + (q1 - q) // d * d] for q in last)
            lo_max, hi_min = lo[q0], hi[q0]  # only used when q0 == q1
        visited += hi_max // tk - lo_min // tk + 1
        if d == 1:
            # KV tiles [m*tk, m*tk+tk-1] inside [lo_max, hi_min] (hi_min <= n-1: no padding).
            full += max(0, (hi_min + 1) // tk - _cdiv(lo_max, tk))
        elif q0 == q1 and tk == 1:
            full += (hi_min - lo_max) // d + 1  # every attended key is a full 1-key tile
        # d > 1 otherwise: a Q tile of >= 2 queries or a KV tile of >= 2 keys mixes residues.
    return DimStats(_cdiv(n, tq), _cdiv(n, tk), visited, full)


@lru_cache(maxsize=1 << 14)
def dim_pairs(n: int, w: int, s: int, d: int, causal: bool) -> int:
    """Attended (query, key) pairs of one dim (n*w when non-causal)."""
    lo, hi = _ranges(n, w, s, d, causal)
    return sum((h - l) // d for l, h in zip(lo, hi)) + n


def _fmt(t) -> str:
    return "x".join(str(v) for v in t)


@dataclass(frozen=True)
class SimResult:
    """Simulated cost of one GNA config with one Q/KV tiling (DESIGN.md §3).

    Tile counts are over the padded grid's static tiling; ``kv_tiles`` counts KV tiles that
    hold at least one real key (tiles of pure padding are never visited). "Spatial" fields
    ignore extra tokens; the ``*_with_extras`` fields and ``extra_*`` add them (extra KV
    tiles are visited by every Q tile; extra-token query rows run dense; prefix and suffix
    count as one segment of ``extra_prefix + extra_suffix`` tokens).

    Speedups compare with a dense kernel of the same tile sizes on the *unpadded* sequence
    (``dense_baseline_tiles``), not with ``dense_tiles``: otherwise padding would inflate
    the speedup of tiles that fit the grid badly. Both agree when tiles divide the grid.
    """

    shape: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]
    q_tile: tuple[int, ...]
    kv_tile: tuple[int, ...]
    extra_prefix: int
    extra_suffix: int
    mask_penalty: float
    num_tokens: int            # spatial tokens, prod(shape)
    q_tiles: int               # Q tiles over the padded grid
    kv_tiles: int              # KV tiles with at least one real key
    visited_tiles: int         # KV-tile visits summed over Q tiles
    full_tiles: int            # visits that need no mask
    partial_tiles: int         # visits that need the fine-grained mask
    dense_tiles: int           # q_tiles * kv_tiles (the padded grid's tiling)
    dense_baseline_tiles: int  # dense kernel, same tile sizes, unpadded: ceil(N/Tq)*ceil(N/Tk)
    attended_pairs: int        # spatial (query, key) pairs the mask allows
    flop_speedup: float        # num_tokens**2 / attended_pairs
    sparsity: float            # fraction of spatial pairs masked
    tile_speedup: float        # dense_baseline_tiles / (full + mask_penalty * partial)
    perfectly_block_sparse: bool
    per_dim: tuple[DimStats, ...]
    extra_q_tiles: int         # Q tiles of extra-token rows (dense)
    extra_kv_tiles: int        # extra-token KV tiles each Q tile visits
    extra_visits: int          # all KV-tile visits caused by extra tokens
    dense_tiles_with_extras: int  # dense baseline over all prod(shape)+extras tokens
    flop_speedup_with_extras: float
    tile_speedup_with_extras: float

    @property
    def q_tile_tokens(self) -> int:
        return math.prod(self.q_tile)

    @property
    def kv_tile_tokens(self) -> int:
        return math.prod(self.kv_tile)

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists, per-dim stats become dicts)."""
        out = asdict(self)
        out["per_dim"] = [s._asdict() for s in self.per_dim]
        return out

    def describe(self) -> str:
        """One-line summary, e.g. for logs and ``explain()``."""
        return (f"shape {_fmt(self.shape)} window {_fmt(self.window)} stride {_fmt(self.stride)} "
                f"tiles {_fmt(self.q_tile)}/{_fmt(self.kv_tile)}: {self.visited_tiles} visits "
                f"({self.full_tiles} full, {self.partial_tiles} partial) of {self.dense_tiles}, "
                f"FLOP {self.flop_speedup:.2f}x, tiles {self.tile_speedup:.2f}x, "
                f"block-sparse {'yes' if self.perfectly_block_sparse else 'no'}")


def _check_tile(name: str, tile, rank: int) -> tuple[int, ...]:
    tile = _per_dim(name, tile, rank)
    if any(t < 1 for t in tile):
        raise ValueError(f"{name}={tile}: every tile extent must be >= 1")
    return tile


def _check_count(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{name}={v!r} must be an int >= 0")
    return v


def _check_penalty(p) -> float:
    if p is None:
        p = penalty.MASK_PENALTY
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
        raise ValueError(f"mask_penalty={p!r} must be a finite number > 0")
    return float(p)


def simulate(shape, window, stride=1, dilation=1, causal=False, q_tile=None, kv_tile=None,
             extra_prefix: int = 0, extra_suffix: int = 0, mask_penalty=None) -> SimResult:
    """Simulate one GNA config on one tiling (exact, analytic; see module doc).

    ``q_tile``/``kv_tile``: ints or per-dim tuples (any positive extents; a kernel needs the
    relation documented in :mod:`gna_compile.sim.tiles`). Default: :func:`default_tile`
    (a balanced power-of-two 128-token box) for Q, and KV equal to Q.
    ``mask_penalty`` defaults to :data:`gna_compile.sim.penalty.MASK_PENALTY`.
    """
    spec = make_spec(shape, window, stride, dilation, causal)
    rank = spec.rank
    q_tile = default_tile(spec.shape) if q_tile is None else _check_tile("q_tile", q_tile, rank)
    kv_tile = q_tile if kv_tile is None else _check_tile("kv_tile", kv_tile, rank)
    p = _check_penalty(mask_penalty)
    _check_count("extra_prefix", extra_prefix)
    _check_count("extra_suffix", extra_suffix)
    per_dim = tuple(dim_stats(n, w, s, d, c, tq, tk)
                    for (n, w, s, d, c), tq, tk in zip(spec.dims(), q_tile, kv_tile))
    pairs = math.prod(dim_pairs(n, w, s, d, c) for n, w, s, d, c in spec.dims())
    return build_result(spec, q_tile, kv_tile, per_dim, pairs, extra_prefix, extra_suffix, p)


def build_result(spec, q_tile, kv_tile, per_dim, pairs, extra_prefix, extra_suffix, p) -> SimResult:
    """Assemble a :class:`SimResult` from per-dim stats (shared by simulate and search)."""
    n_tok = spec.num_tokens
    q_tiles = math.prod(st.q_tiles for st in per_dim)
    kv_tiles = math.prod(st.kv_tiles for st in per_dim)
    visited = math.prod(st.visited for st in per_dim)
    full = math.prod(st.full for st in per_dim)
    partial = visited - full
    dense = q_tiles * kv_tiles
    cost = full + p * partial
    extras = extra_prefix + extra_suffix
    e_q = _cdiv(extras, math.prod(q_tile))
    e_kv = _cdiv(extras, math.prod(kv_tile))
    extra_visits = q_tiles * e_kv + e_q * (kv_tiles + e_kv)
    total = n_tok + extras
    tq_tok, tk_tok = math.prod(q_tile), math.prod(kv_tile)
    baseline = _cdiv(n_tok, tq_tok) * _cdiv(n_tok, tk_tok)
    dense_x = _cdiv(total, tq_tok) * _cdiv(total, tk_tok)
    pairs_x = pairs + n_tok * extras + extras * total
    return SimResult(
        shape=spec.shape, window=spec.window, stride=spec.stride, dilation=spec.dilation,
        causal=spec.causal, q_tile=tuple(q_tile), kv_tile=tuple(kv_tile),
        extra_prefix=extra_prefix, extra_suffix=extra_suffix, mask_penalty=p,
        num_tokens=n_tok, q_tiles=q_tiles, kv_tiles=kv_tiles, visited_tiles=visited,
        full_tiles=full, partial_tiles=partial, dense_tiles=dense, dense_baseline_tiles=baseline,
        attended_pairs=pairs,
        flop_speedup=n_tok * n_tok / pairs, sparsity=1.0 - pairs / (n_tok * n_tok),
        tile_speedup=baseline / cost, perfectly_block_sparse=partial == 0, per_dim=per_dim,
        extra_q_tiles=e_q, extra_kv_tiles=e_kv, extra_visits=extra_visits,
        dense_tiles_with_extras=dense_x, flop_speedup_with_extras=total * total / pairs_x,
        tile_speedup_with_extras=dense_x / (cost + extra_visits))
