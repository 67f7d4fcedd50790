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


def test_simulate_equals_brute_force_1d_sweep():
    """Deterministic sweep of one dim (every dim's count is a factor of the total), covering
    dilation with 1-wide tiles, where full visits exist only per key."""
    seen_dilated_full = 0
    for n in (5, 7, 9):
        for d in (1, 2, 3):
            for w in range(2, n // d + 1):
                for s in sorted({1, 2, w}):
                    for c in (False, True):
                        for tq in (1, 2, 3):
                            for tk in (1, 2):
                                cfg = ((n,), (w,), (s,), (d,), (c,), (tq,), (tk,))
                                r = simulate(n, w, s, d, c, q_tile=tq, kv_tile=tk)
                                got = (r.visited_tiles, r.full_tiles, r.dense_tiles, r.attended_pairs)
                                assert got == brute_force(*cfg), cfg
                                seen_dilated_full += d > 1 and r.full_tiles > 0
    assert seen_dilated_full > 0

def test_brute_force_counts_a_hand_example():
    # 1-D, n=6, w=2, s=1 (windows shift inward at borders): q0,q1 -> keys 0-1, q2 -> 1-2,
    # q3 -> 2-3, q4 -> 3-4, q5 -> 4-5. Tiles of 3: Q tile 0 sees keys 0-2 (KV tile 0 only),
    # Q tile 1 sees keys 2-5 (KV tiles 0 and 1); no KV tile is inside every window.
    assert brute_force((6,), (2,), (1,), (1,), (False,), (3,), (3,)) == (3, 0, 4, 12)
    r = simulate(6, 2, q_tile=3, kv_tile=3)
    assert (r.visited_tiles, r.full_tiles, r.dense_tiles, r.attended_pairs) == (3, 0, 4, 12)


# ---------------------------------------------------------------- paper configs

def test_paper_configs_block_sparse_with_exact_flop_speedups():
    flux = simulate((256, 256), 80, 16, q_tile=(16, 8), kv_tile=(16, 8))
    hunyuan = simulate((30, 48, 80), (18, 24, 24), (16, 8, 8), q_tile=(2, 8, 8), kv_tile=(2, 8, 8))
    assert flux.perfectly_block_sparse and flux.partial_tiles == 0 and flux.full_tiles > 0
    assert hunyuan.perfectly_block_sparse and hunyuan.partial_tiles == 0
    assert abs(flux.flop_speedup - float(Fraction(256 * 256, 80 * 80))) < 1e-9
    assert abs(hunyuan.flop_speedup - float(Fraction(30 * 48 * 80, 18 * 24 * 24))) < 1e-9
    assert round(flux.flop_speedup, 2) == 10.24 and round(hunyuan.flop_speedup, 2) == 11.11
    # Block-sparse and tiles dividing the grid: simulated speedup equals the FLOP speedup.
    assert abs(flux.tile_speedup - flux.flop_speedup) < 1e-9
    assert abs(hunyuan.tile_speedup - hunyuan.flop_speedup) < 1e-9
    for r in (simulate((256, 256), 80, 1, q_tile=(16, 8), kv_tile=(16, 8)),
              simulate((30, 48, 80), (18, 24, 24), 1, q_tile=(2, 8, 8), kv_tile=(2, 8, 8))):
        assert not r.perfectly_block_sparse and r.partial_tiles > 0
        assert r.tile_speedup < r.flop_speedup


def test_penalty_weights_partial_tiles():
    r1 = simulate((30, 48, 80), (18, 24, 24), 1, q_tile=(2, 8, 8), mask_penalty=1.0)
    r2 = simulate((30, 48, 80), (18, 24, 24), 1, q_tile=(2, 8, 8), mask_penalty=2.0)
    assert r1.tile_speedup == r1.dense_baseline_tiles / r1.visited_tiles
    assert r2.tile_speedup == r2.dense_baseline_tiles / (r2.full_tiles + 2 * r2.partial_tiles)


def test_simulate_is_fast_on_hunyuan_grid():
    import time
    from gna_compile.sim.core import dim_pairs, dim_stats
    dim_stats.cache_clear(); dim_pairs.cache_clear()
    t = time.perf_counter()
    simulate((30, 48, 80), (18, 24, 24), (16, 8, 8), q_tile=(2, 8, 8), kv_tile=(1, 8, 8))
    assert time.perf_counter() - t < 0.5  # analytic per dim: milliseconds in practice


def test_extra_tokens_counted_separately():
    # Unit penalty: this checks the counting of extra-token visits, not the weighting.
    r = simulate((8, 8), 4, 2, q_tile=(4, 4), kv_tile=(4, 4), extra_prefix=3, extra_suffix=5, mask_penalty=1.0)
    base = simulate((8, 8), 4, 2, q_tile=(4, 4), kv_tile=(4, 4), mask_penalty=1.0)
    # Spatial fields unchanged by extras.
    for f in ("visited_tiles", "full_tiles", "partial_tiles", "dense_tiles", "flop_speedup", "tile_speedup"):
        assert getattr(r, f) == getattr(base, f)
    # 8 extra tokens = one 16-token KV tile per Q tile (4 Q tiles), one dense extra Q-tile row
    # visiting 4 spatial + 1 extra KV tiles; dense kernel over 72 tokens: 5 x 5 tiles.
    assert (r.extra_kv_tiles, r.extra_q_tiles, r.extra_visits) == (1, 1, 4 + 5)
    assert r.dense_tiles_with_extras == 25
    assert r.tile_speedup_with_extras == 25 / (r.full_tiles + r.partial_tiles + 9)
    pairs = r.attended_pairs + 64 * 8 + 8 * 72
    assert abs(r.flop_speedup_with_extras - 72 * 72 / pairs) < 1e-12
    assert base.tile_speedup_with_extras == base.tile_speedup and base.extra_visits == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(8, 8), window=9), "window"),
    (dict(shape=(8, 8), window=4, stride=5), "stride"),
    (dict(shape=(8, 8), window=4, q_tile=(0, 4)), "q_tile"),
    (dict(shape=(8, 8), window=4, kv_tile=(4, 4, 4)), "kv_tile"),
    (dict(shape=(8, 8), window=4, extra_prefix=-1), "extra_prefix"),
    (dict(shape=(8, 8), window=4, extra_suffix=1.5), "extra_suffix"),
    (dict(shape=(8, 8), window=4, mask_penalty=0), "mask_penalty"),
    (dict(shape=(8, 8), window=4, mask_penalty=float("nan")), "mask_penalty"),
])
def test_simulate_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate(**kwargs)


def test_result_is_frozen_and_serializable():
    import dataclasses
    import json
    r = simulate((16, 16), 8, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.visited_tiles = 0
    d = json.loads(json.dumps(r.to_dict()))
    assert d["visited_tiles"] == r.visited_tiles and d["window"] == [8, 8]


# ---------------------------------------------------------------- tiles

def _pow2_boxes(shape, tokens):
    caps = [1 << (n - 1).bit_length() for n in shape]
    exts = [[1 << e for e in range(12) if (1 << e) <= c] for c in caps]
    return {b for b in itertools.product(*exts) if math.prod(b) == tokens}


@pytest.mark.parametrize("shape", [(256, 256), (30, 48, 80), (16, 44, 80), (5, 7), (1000,)])
def test_candidate_tiles_are_complete_and_contiguous(shape):
    from gna_compile.kernels.permute import padded_shape, permutation_index
    pairs = candidate_tiles(shape)
    assert len(set(pairs)) == len(pairs)
    qs = {q for q, _ in pairs}
    assert qs == _pow2_boxes(shape, 128) | _pow2_boxes(shape, 64)
    positions = {}
    for q, kv in pairs:
        assert math.prod(kv) in (64, 128) and math.prod(kv) <= math.prod(q)
        # One permutation (Q-tile order) must make every KV tile one contiguous run.
        pshape = padded_shape(shape, q)
        if q not in positions:
            order = permutation_index(pshape, q)      # natural index at each tiled position
            pos = torch.empty_like(order)
            pos[order] = torch.arange(len(order))
            positions[q] = pos
        pos = positions[q]
        coords = torch.stack(torch.meshgrid(*[torch.arange(p) for p in pshape], indexing="ij"), -1)
        coords = coords.reshape(-1, len(pshape))
        kid = torch.zeros(len(coords), dtype=torch.long)
        for i, (p, k) in enumerate(zip(pshape, kv)):
            kid = kid * (p // k) + coords[:, i] // k
        nk = int(kid.max()) + 1
        lo = torch.full((nk,), len(pos)).scatter_reduce(0, kid, pos, "amin")
        hi = torch.full((nk,), -1).scatter_reduce(0, kid, pos, "amax")
        count = torch.bincount(kid, minlength=nk)
        assert torch.equal(hi - lo + 1, count), (q, kv)
    if shape == (30, 48, 80):
        assert ((2, 8, 8), (2, 8, 8)) in pairs and ((2, 8, 8), (1, 8, 8)) in pairs
        assert ((2, 8, 8), (2, 4, 8)) not in pairs
    if shape == (256, 256):
        assert ((16, 8), (16, 8)) in pairs


def test_candidate_tiles_tiny_grid_and_errors():
    assert candidate_tiles((3, 3)) == [((4, 4), (4, 4))]
    with pytest.raises(ValueError, match="sizes"):
        candidate_tiles((8, 8), sizes=(96,))
    from gna_compile.sim import default_tile
    assert default_tile((30, 48, 80)) == (4, 4, 8)
    assert default_tile((5, 5)) == (8, 8)
    assert math.prod(default_tile((256, 256))) == 128


# ---------------------------------------------------------------- search

def test_search_finds_block_sparse_cosmos_config():
    from gna_compile.sim import search
    results = search((16, 44, 80), sparsity=0.9, require_block_sparse=True, top=5)
    assert results
    best = results[0]
    assert best.perfectly_block_sparse and abs(best.sparsity - 0.9) <= 0.01
    again = simulate(best.shape, best.window, best.stride, q_tile=best.q_tile, kv_tile=best.kv_tile)
    assert again == best
    from gna_compile.sim.tiles import is_kv_subtile
    assert is_kv_subtile(best.q_tile, best.kv_tile)


def test_search_equals_exhaustive_simulation_on_small_grid():
    from gna_compile.sim import search
    shape, window = (12, 20), (6, 8)
    tiles = [((4, 4), (4, 4)), ((2, 8), (2, 8)), ((2, 8), (1, 8)), ((4, 2), (2, 2))]
    for penalty in (1.0, 3.0, 0.5):
        ranked = search(shape, window=window, tiles=tiles, mask_penalty=penalty, extra_prefix=3)
        exhaustive = [simulate(shape, window, (s0, s1), q_tile=q, kv_tile=kv, mask_penalty=penalty, extra_prefix=3)
                      for q, kv in tiles for s0 in range(1, 7) for s1 in range(1, 9)]
        best = max(r.tile_speedup_with_extras for r in exhaustive)
        assert abs(ranked[0].tile_speedup_with_extras - best) < 1e-12
        assert all(a.tile_speedup_with_extras >= b.tile_speedup_with_extras - 1e-12
                   for a, b in zip(ranked, ranked[1:]))
        for r in ranked[:5]:
            assert r == simulate(shape, r.window, r.stride, q_tile=r.q_tile, kv_tile=r.kv_tile,
                                 mask_penalty=penalty, extra_prefix=3)


def test_search_paper_flux_window_is_block_sparse_at_stride_16():
    from gna_compile.sim import search
    ranked = search((256, 256), window=80, tiles=[((16, 8), (16, 8))], strides=[(1, 1), (16, 16), (8, 8)])
    assert ranked[0].stride == (16, 16) and ranked[0].perfectly_block_sparse
    assert not next(r for r in ranked if r.stride == (1, 1)).perfectly_block_sparse


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "window=... or sparsity"),
    (dict(window=8, sparsity=0.9), "not both"),
    (dict(sparsity=1.5), "sparsity"),
    (dict(window=8, strides="fast"), "strides"),
    (dict(window=8, strides=[(9, 9)]), "no valid configuration"),
    (dict(window=8, top=0), "top"),
    (dict(window=8, tiles=[]), "tiles"),
])
def test_search_validation(kwargs, match):
    from gna_compile.sim import search
    with pytest.raises(ValueError, match=match):
        search((16, 16), **kwargs)


# ---------------------------------------------------------------- CLI

HUNYUAN_ARGS = ["--shape", "30", "48", "80", "--window", "18", "24", "24", "--stride", "16", "8", "8",
                "--q-tile", "2", "8", "8", "--kv-tile", "2", "8", "8"]


def test_cli_table(capsys):
    from gna_compile.sim.__main__ import main
    assert main(HUNYUAN_ARGS) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[1:3]
    assert header.split()[:4] == ["window", "stride", "q_tile", "kv_tile"]
    assert row.split() == ["18x24x24", "16x8x8", "2x8x8", "2x8x8", "72900", "72900", "0", "810000",
                           "0.9100", "11.11", "11.11", "yes"]
    assert header.index("visited") == row.index("72900")  # aligned columns


def test_cli_json_and_search(capsys):
    import json
    from gna_compile.sim.__main__ import main
    assert main(HUNYUAN_ARGS + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    r = simulate((30, 48, 80), (18, 24, 24), (16, 8, 8), q_tile=(2, 8, 8), kv_tile=(2, 8, 8))
    assert d == json.loads(json.dumps(r.to_dict()))
    assert main(["--shape", "16", "44", "80", "--search", "--sparsity", "0.9", "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[0] == "#" and [l.split()[0] for l in lines[3:6]] == ["1", "2", "3"]
    assert main(["--shape", "16", "44", "80", "--search", "--sparsity", "0.9", "--top", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


@pytest.mark.parametrize("argv", [
    ["--shape", "30", "48", "80", "--window", "90", "24", "24"],     # window > grid
    ["--shape", "30", "48", "80"],                                    # no window
    ["--shape", "8", "8", "--window", "4", "--q-tile", "0", "4"],     # bad tile
    ["--shape", "8", "x"],                                            # not an int
    ["--shape", "8", "8", "--search"],                                # neither window nor sparsity
])
def test_cli_bad_args_exit_2(argv, capsys):
    from gna_compile.sim.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_cli_module_entry_point():
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "gna_compile.sim", "--shape", "8", "8", "--window", "20"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "window" in p.stderr and "Traceback" not in p.stderr
