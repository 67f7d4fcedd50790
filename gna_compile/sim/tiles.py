"""Tile shapes a kernel can use, and the layout constraint between Q and KV tiles.

A tile is a box of power-of-two extents (e.g. ``(2, 8, 8)`` = 128 tokens); no extent is
larger than ``next_pow2(n_i)`` (a bigger one would only add padding).

Constraint (one token permutation for both operands): tokens are permuted once, in Q-tile
order (DESIGN.md §2). A KV tile must then be a *contiguous* run of that order, which for a
row-major box means: the KV tile equals the Q tile, or it is the Q tile with its leading
(slowest) dims split -- ``(1, …, 1, k_j, q_{j+1}, …, q_r)`` with ``k_j`` dividing ``q_j``.
Example: Q ``(2, 8, 8)`` with KV ``(1, 8, 8)`` or ``(1, 4, 8)``; not KV ``(2, 4, 8)``.
"""

from __future__ import annotations

import itertools
import math

from ..config import _check_shape

__all__ = ["candidate_tiles", "default_tile", "next_pow2", "is_kv_subtile"]


def next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _is_pow2(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1 and x & (x - 1) == 0


def default_tile(shape, tokens: int = 128) -> tuple[int, ...]:
    """A balanced power-of-two box of ``tokens`` tokens (fewer if the grid is smaller).

    Extents double round-robin starting from the fastest dim, each capped at next_pow2(n_i):
    (30, 48, 80) -> (4, 4, 8); (256, 256) -> (8, 16).
    """
    shape = _check_shape(shape)
    if not _is_pow2(tokens):
        raise ValueError(f"tokens={tokens!r} must be a power of two")
    tile = [1] * len(shape)
    caps = [next_pow2(n) for n in shape]
    while math.prod(tile) < tokens:
        grew = False
        for i in reversed(range(len(shape))):
            if math.prod(tile) < tokens and tile[i] < caps[i]:
                tile[i] *= 2
                grew = True
        if not grew:
            break
    return tuple(tile)


def is_kv_subtile(q_tile, kv_tile) -> bool:
    """True if ``kv_tile`` is a contiguous run of the Q-tile order (see module doc)."""
    q_tile, kv_tile = tuple(q_tile), tuple(kv_tile)
    if len(q_tile) != len(kv_tile):
        return False
    for j in range(len(q_tile)):
        if (all(k == 1 for k in kv_tile[:j]) and kv_tile[j] >= 1 and q_tile[j] % kv_tile[j] == 0
                and kv_tile[j + 1:] == q_tile[j + 1:]):
            return True
    return False


def _boxes(caps, tokens):
    exps = [range(c.bit_length()) for c in caps]  # 2**e <= cap
    for es in itertools.product(*exps):
        if sum(es) == tokens.bit_length() - 1:
            yield tuple(1 << e for e in es)


def candidate_tiles(shape, sizes=(128, 64)) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """All (q_tile, kv_tile) box pairs with token counts in ``sizes`` (KV <= Q).

    Q tiles: power-of-two boxes of exactly ``size`` tokens, extents <= next_pow2(n_i).
    KV tiles: the Q tile or a leading-dim split of it (see module doc). If the grid is too
    small for every size, the single pair (caps, caps) covering the padded grid is returned.
    Sorted by Q tokens, KV tokens (largest first), then the extents.
    """
    shape = _check_shape(shape)
    sizes = tuple(sizes)
    if not sizes or not all(_is_pow2(t) for t in sizes):
        raise ValueError(f"sizes={sizes!r} must be a non-empty list of powers of two (tile token counts)")
    caps = [next_pow2(n) for n in shape]
    out = set()
    for tq in sizes:
        for q in _boxes(caps, tq):
            for tk in sizes:
                if tk > tq:
                    continue
                for j in range(len(q)):
                    rest = math.prod(q[j + 1:])
                    if tk % rest == 0 and q[j] % (tk // rest) == 0:
                        out.add((q, (1,) * j + (tk // rest,) + q[j + 1:]))
    if not out:
        caps = tuple(caps)
        return [(caps, caps)]
    return sorted(out, key=lambda p: (-math.prod(p[0]), -math.prod(p[1]), p[0], p[1]))
