"""NATTENSim: exact tile counts (vs brute force), paper configs, search, CLI."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gna_compile.mask import attend_1d_t
from gna_compile.sim import candidate_tiles, simulate


# ---------------------------------------------------------------- brute force (independent)

def brute_force(shape, window, stride, dilation, causal, q_tile, kv_tile):
    """Count tile visits from the full mask on the padded grid (no simulator code)."""
    rank = len(shape)
    pad = [max(-(-n // tq) * tq, -(-n // tk) * tk) for n, tq, tk in zip(shape, q_tile, kv_tile)]
    # Per-dim [P, P] masks on the padded coords; padded queries/keys attend nothing.
    masks = []
    for i in range(rank):
        n, p = shape[i], pad[i]
        m = torch.zeros(p, p, dtype=torch.bool)
        c = torch.arange(n)
        m[:n, :n] = attend_1d_t(c, c, n, window[i], stride[i], dilation[i], causal[i])
        masks.append(m)
    full_mask = masks[0]
    for m in masks[1:]:  # product over dims, row-major flattening
        full_mask = (full_mask[:, None, :, None] & m[None, :, None, :]).reshape(
            full_mask.shape[0] * m.shape[0], -1)
    coords = torch.tensor(list(itertools.product(*[range(p) for p in pad])))  # [T, rank]
    in_grid = torch.ones(len(coords), dtype=torch.bool)
    for i in range(rank):
        in_grid &= coords[:, i] < shape[i]
    q_id = [coords[:, i] // q_tile[i] for i in range(rank)]
    k_id = [coords[:, i] // kv_tile[i] for i in range(rank)]
    q_tiles = [range(-(-n // t)) for n, t in zip(shape, q_tile)]
    kv_tiles = [range(-(-n // t)) for n, t in zip(shape, kv_tile)]
    visited = full = 0
    for qt in itertools.product(*q_tiles):
        qsel = in_grid.clone()
        for i in range(rank):
            qsel &= q_id[i] == qt[i]
        rows = full_mask[qsel]                        # [Qin, T]
        keys = coords[rows.any(0)]                    # attended keys of the tile
        lo, hi = keys.min(0).values, keys.max(0).values
        for kt in itertools.product(*kv_tiles):
            ksel = torch.ones(len(coords), dtype=torch.bool)
            for i in range(rank):
                ksel &= k_id[i] == kt[i]
            kc = coords[ksel]
            if all(((kc[:, i] >= lo[i]) & (kc[:, i] <= hi[i])).any() for i in range(rank)):
                visited += 1
                if bool(in_grid[ksel].all()) and bool(rows[:, ksel].all()):
                    full += 1
    dense = math.prod(len(r) for r in q_tiles) * math.prod(len(r) for r in kv_tiles)
    pairs = int(full_mask.sum())
    return visited, full, dense, pairs


@st.composite
def small_configs(draw):
    rank = draw(st.integers(1, 3))
    max_n = {1: 40, 2: 12, 3: 6}[rank]
    shape, window, stride, dilation, causal, q_tile, kv_tile = [], [], [], [], [], [], []
    for _ in range(rank):
        n = draw(st.integers(2, max_n))
        d = draw(st.sampled_from([1, 1, 1, 2, 3]))
        d = d if 2 * d <= n else 1
        w = draw(st.integers(2, n // d))
        s = draw(st.integers(1, w))
        shape.append(n); window.append(w); stride.append(s); dilation.append(d)
        causal.append(draw(st.booleans()))
        q_tile.append(draw(st.integers(1, min(n + 2, 9))))
        kv_tile.append(draw(st.integers(1, min(n + 2, 9))))
    return tuple(shape), tuple(window), tuple(stride), tuple(dilation), tuple(causal), tuple(q_tile), tuple(kv_tile)


@settings(max_examples=150, deadline=None)
@given(small_configs())
def test_simulate_equals_brute_force(cfg):
    shape, window, stride, dilation, causal, q_tile, kv_tile = cfg
    r = simulate(shape, window, stride, dilation, causal, q_tile=q_tile, kv_tile=kv_tile)
    visited, full, dense, pairs = brute_force(*cfg)
    assert (r.visited_tiles, r.full_tiles, r.dense_tiles, r.attended_pairs) == (visited, full, dense, pairs)
    assert r.partial_tiles == visited - full
    assert r.perfectly_block_sparse == (visited == full)
