"""Halo plan for spatial (ring) sharding of GNA attention over P GPUs (issue 15; docs/ring_sharding.md).

Why: Ulysses (all-to-all to H/P heads per rank) cannot go beyond the head count. Past it, each
rank owns a slab of whole Q tiles of the token grid and fetches from the ranks around it the
K/V of the tokens its queries' windows reach (the halo). The GNA mask is a product over dims,
so the keys a box of queries needs are a box too: per dim, the union of
``gna_compile.mask.key_range`` over the box's queries. Everything below is exact counting on
those per-dim ranges (the pair counts are the simulator's ``dim_pairs`` restricted to a rank's
queries); times come from the stated throughput/bandwidth parameters. Model estimates, nothing
measured on more than one GPU.

    python tools/halo_plan.py --shape 30 48 80 --window 18 24 24 --stride 16 8 8 --heads 24 --extra 256
    python tools/halo_plan.py --shape 30 68 120 --sparsity 0.9 --heads 24 --extra 256 --detail T2xW4
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
from typing import NamedTuple

from gna_compile.config import make_spec
from gna_compile.kernels.tile_choice import choose_tiles, kernel_tiles, search_configs, tile_cost
from gna_compile.mask import key_range
from gna_compile.sim import search
from gna_compile.sim.core import dim_pairs

MiB = 2 ** 20


def _cdiv(a, b):
    return -(-a // b)


def _span(a, b):
    """Length of the intersection of two inclusive ranges."""
    return max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)


class Chunk(NamedTuple):
    """One dim of one rank's slab: owned token range, needed key range (exact and rounded out
    to whole KV tiles), and the attended pairs (all / with a local key) of its queries."""
    own: tuple
    need: tuple
    need_tiles: tuple
    pairs: int
    local: int


def dim_chunks(n, w, s, tq, tk, parts):
    """Split one dim into ``parts`` runs of whole Q tiles (cut at the tile boundary nearest an
    even token split, so a short edge tile does not unbalance), or None if too few tiles."""
    nq = _cdiv(n, tq)
    if parts > nq:
        return None
    cuts = [min(nq, round(j * n / (parts * tq))) for j in range(parts)] + [nq]
    if any(b <= a for a, b in zip(cuts, cuts[1:])):
        cuts = [j * nq // parts for j in range(parts + 1)]
    lo, hi = zip(*(key_range(q, n, w, s) for q in range(n)))
    out = []
    for a_t, b_t in zip(cuts, cuts[1:]):
        a, b = a_t * tq, min(b_t * tq, n) - 1
        need = (min(lo[a:b + 1]), max(hi[a:b + 1]))  # one interval: d = 1 ranges are monotone
        out.append(Chunk((a, b), need, (need[0] // tk * tk, min(_cdiv(need[1] + 1, tk) * tk, n) - 1),
                         sum(h - l + 1 for l, h in zip(lo[a:b + 1], hi[a:b + 1])),
                         sum(_span((l, h), (a, b)) for l, h in zip(lo[a:b + 1], hi[a:b + 1]))))
    assert sum(c.pairs for c in out) == dim_pairs(n, w, s, 1, False)  # the simulator's count
    return out


def evaluate(a, U, parts):
    """Per-layer estimate for Ulysses degree ``U`` x ring layout ``parts`` (slabs per dim);
    the worst rank's numbers (max time, max bytes, min compute/comm ratio)."""
    dims = [dim_chunks(n, w, s, tq, tk, p) for n, w, s, tq, tk, p in zip(a.shape, a.window, a.stride, a.q_tile, a.kv_tile, parts)]
    if any(d is None for d in dims):
        return None
    ranks, E, D, b = list(itertools.product(*dims)), a.extra, a.head_dim, a.bytes
    R, h = len(ranks), _cdiv(a.heads, U)  # heads per rank (uneven when U does not divide H)
    flop = 4 * D * h / (a.tflops * 1e12)  # seconds per attended pair
    kv_tok = 2 * h * D * b  # K+V bytes of one token
    node = lambda g: g * U // a.gpus_per_node  # noqa: E731  (group g's Ulysses member 0)
    rows = []
    for r, box in enumerate(ranks):
        q = math.prod(c.own[1] - c.own[0] + 1 for c in box)
        pairs = math.prod(c.pairs for c in box) + 2 * q * E  # + text keys, text queries x local keys
        local = math.prod(c.local for c in box) + 2 * q * E  # text K/V replicated: always local
        halo = tiles = peers = 0
        link = [0, 0]  # halo bytes in over NVLink, over the inter-node network
        for p, other in enumerate(ranks):
            if p != r:
                ov = math.prod(_span(c.need, o.own) for c, o in zip(box, other))
                halo += ov
                tiles += math.prod(_span(c.need_tiles, o.own) for c, o in zip(box, other))
                peers += ov > 0
                link[node(p) != node(r)] += ov * kv_tok
        t_halo = max(link[0] / (a.nvlink * 1e9), link[1] / (a.ib * 1e9))
        a2a_peer = 4 * (q + E) / U * a.heads * D * b / U  # Q,K,V in and O out, to each other member
        intra = min(U, a.gpus_per_node)
        a2a = a2a_peer * (U - 1)
        t_a2a = max(a2a_peer * (intra - 1) / (a.nvlink * 1e9), a2a_peer * (U - intra) / (a.ib * 1e9))
        red = 2 * (R - 1) / R * E * h * (D + 1) * 4  # text queries' partial O + LSE (fp32) all-reduce
        t_red = red / ((a.ib if R * U > a.gpus_per_node else a.nvlink) * 1e9)
        t_att, t_loc = pairs * flop, local * flop
        est = t_a2a + max(t_loc, t_halo) + (t_att - t_loc) + t_red
        rows.append(dict(q=q, halo=halo, tiles=tiles, peers=peers, halo_b=halo * kv_tok, a2a_b=a2a,
                         t_att=t_att, t_halo=t_halo, t_a2a=t_a2a, est=est, pairs=pairs,
                         ratio=t_att / t_halo if t_halo else math.inf, box=box))
    mx = lambda k: max(x[k] for x in rows)  # noqa: E731
    tiles = sum(x["tiles"] for x in rows) / max(1, sum(x["halo"] for x in rows))
    return dict(rows=rows, q=mx("q"), halo=(min(x["halo"] for x in rows), mx("halo")), tiles=tiles,
                peers=mx("peers"), halo_b=mx("halo_b"), a2a_b=mx("a2a_b"), t_att=mx("t_att"),
                t_halo=mx("t_halo"), t_a2a=mx("t_a2a"), est=mx("est"), ratio=min(x["ratio"] for x in rows),
                imbal=mx("pairs") / (sum(x["pairs"] for x in rows) / R), h=h)


def layouts(a, R, axes):
    """Every way to cut R slabs over the dims named in ``axes`` (each named dim cut >= 2 times)."""
    idx = [a.names.index(c) for c in axes]
    for f in itertools.product(*[[d for d in range(2, R + 1) if R % d == 0]] * len(idx)):
        if math.prod(f) == R:
            parts = [1] * len(a.shape)
            for i, k in zip(idx, f):
                parts[i] = k
            yield tuple(parts)


def name(a, parts):
    return "x".join(f"{c}{p}" for c, p in zip(a.names, parts) if p > 1) or "-"


def best(a, U, R, axes_list):
    cands = [(res["est"], parts, res) for axes in axes_list for parts in layouts(a, R, axes)
             if (res := evaluate(a, U, parts))] if R > 1 else [(0, (1,) * len(a.shape), evaluate(a, U, (1,) * len(a.shape)))]
    return min(cands, key=lambda c: c[0])[1:] if cands else (None, None)


def ms(t):
    return f"{t * 1e3:.2f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs="+", required=True, help="latent grid, e.g. 30 48 80")
    ap.add_argument("--window", type=int, nargs="+", help="GNA window (omit with --sparsity)")
    ap.add_argument("--stride", nargs="+", default=["1"], help="per-dim stride, or 'auto': the simulator's "
                    "best stride (and tiles) for --window")
    ap.add_argument("--sparsity", type=float, help="let the simulator pick window/stride/tiles (search_configs)")
    ap.add_argument("--q-tile", type=int, nargs="+")
    ap.add_argument("--kv-tile", type=int, nargs="+")
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--extra", type=int, default=0, help="text/extra tokens every query sees (replicated per rank)")
    ap.add_argument("--bytes", type=int, default=2, help="bytes per element (bf16)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16], help="P values")
    ap.add_argument("--axes", default="auto", help="comma list of dim sets to shard, e.g. T,W,TH (auto: all)")
    ap.add_argument("--tflops", type=float, default=550.0, help="effective attention TFLOP/s per GPU "
                    "(H200 measured 547 for block-sparse HunyuanVideo, benchmarks/results/kernels_h200_run10.log)")
    ap.add_argument("--nvlink", type=float, default=400.0, help="GB/s per GPU per direction inside a node")
    ap.add_argument("--ib", type=float, default=45.0, help="GB/s per GPU per direction between nodes (400 Gb/s NIC)")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--detail", help="print per-rank boxes for one ring layout, e.g. T4xW2 (U=1)")
    a = ap.parse_args(argv)
    a.shape = tuple(a.shape)
    a.names = "THW"[3 - len(a.shape):] if len(a.shape) <= 3 else "".join(map(str, range(len(a.shape))))
    if a.sparsity is not None:
        r = search_configs(a.shape, a.sparsity, extra_suffix=a.extra, top=1)[0]
        a.window, a.stride, q, kv = r.window, r.stride, r.q_tile, r.kv_tile
    elif a.stride == ["auto"]:
        r = search(a.shape, window=tuple(a.window), tiles=kernel_tiles(a.shape), extra_suffix=a.extra,
                   top=1, tile_cost=tile_cost)[0]  # what search_configs ranks, for one window
        a.window, a.stride, q, kv = r.window, r.stride, r.q_tile, r.kv_tile
    else:
        st = tuple(map(int, a.stride))
        spec = make_spec(a.shape, tuple(a.window), st if len(st) > 1 else st[0])
        a.window, a.stride = spec.window, spec.stride
        q, kv = choose_tiles(spec, extra_suffix=a.extra)
    a.q_tile, a.kv_tile = tuple(a.q_tile or q), tuple(a.kv_tile or kv)
    N, E = math.prod(a.shape), a.extra
    pairs1 = math.prod(dim_pairs(n, w, s, 1, False) for n, w, s in zip(a.shape, a.window, a.stride)) + 2 * N * E + E * E
    t1 = pairs1 * 4 * a.head_dim * a.heads / (a.tflops * 1e12)
    axes_list = ([c for k in range(1, len(a.names) + 1) for c in map("".join, itertools.combinations(a.names, k))]
                 if a.axes == "auto" else a.axes.split(","))
    x = "x".join
    print(f"**grid {x(map(str, a.shape))} (+{E} extra), window {x(map(str, a.window))}, stride "
          f"{x(map(str, a.stride))}, tiles {x(map(str, a.q_tile))}/{x(map(str, a.kv_tile))}, sparsity "
          f"{1 - (pairs1 - 2 * N * E - E * E) / N ** 2:.3f}; H={a.heads} D={a.head_dim}; {a.tflops:g} TFLOP/s, "
          f"NVLink {a.nvlink:g} GB/s, inter-node {a.ib:g} GB/s, {a.gpus_per_node} GPUs/node.** "
          f"One GPU: {ms(t1)} ms per attention layer.\n")
    print("Ring only (U=1), best cut per set of sharded dims:\n")
    print("| P | layout | tokens/rank | halo tokens min-max | whole KV tiles | peers | K+V halo MiB | attn ms | halo ms | attn/halo | imbalance | est. ms | eff. |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for P in a.ranks:
        for axes in axes_list:
            parts, r = best(a, 1, P, [axes])
            if r is None:
                print(f"| {P} | {axes}: fewer Q tiles than ranks | | | | | | | | | | | |")
                continue
            print(f"| {P} | {name(a, parts)} | {r['q']} | {r['halo'][0]}-{r['halo'][1]} | "
                  f"{r['tiles']:.2f}x | {r['peers']} | {r['halo_b'] / MiB:.1f} | {ms(r['t_att'])} | "
                  f"{ms(r['t_halo'])} | {r['ratio']:.2f} | {r['imbal']:.3f} | {ms(r['est'])} | {t1 / r['est'] / P:.0%} |")
    print("\nUlysses U x ring R (U*R = P), best ring cut for each U:\n")
    print("| P | U x R | layout | heads/rank | a2a MiB | halo MiB | attn ms | a2a ms | halo ms | est. ms | speedup | eff. |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for P in a.ranks:
        for U in [u for u in range(1, P + 1) if P % u == 0 and u <= a.heads]:
            parts, r = best(a, U, P // U, axes_list)
            if r is None:
                continue
            print(f"| {P} | {U} x {P // U} | {name(a, parts)} | {r['h']} | {r['a2a_b'] / MiB:.1f} | {r['halo_b'] / MiB:.1f} | "
                  f"{ms(r['t_att'])} | {ms(r['t_a2a'])} | {ms(r['t_halo'])} | {ms(r['est'])} | {t1 / r['est']:.1f}x | {t1 / r['est'] / P:.0%} |")
    if a.detail:
        cut = dict(re.findall(r"([A-Z0-9])(\d+)", a.detail))
        parts = tuple(int(cut.get(c, 1)) for c in a.names)
        r = evaluate(a, 1, parts)
        if r is None:
            raise SystemExit(f"--detail {a.detail}: more slabs than Q tiles along a dim")
        print(f"\nPer rank, layout {name(a, parts)} (token ranges inclusive; KV tile {x(map(str, a.kv_tile))}):\n")
        print("| rank | owns | needs keys | needs KV tiles | halo tokens | peers |")
        print("|---|---|---|---|---|---|")
        for i, row in enumerate(r["rows"]):
            f = lambda key: " ".join(f"{c}[{getattr(k, key)[0]}..{getattr(k, key)[1]}]"  # noqa: E731
                                     for c, k in zip(a.names, row["box"]))
            print(f"| {i} | {f('own')} | {f('need')} | "
                  + " ".join(f"{c}[{k.need_tiles[0] // t}..{k.need_tiles[1] // t}]" for c, k, t in zip(a.names, row["box"], a.kv_tile))
                  + f" | {row['halo']} | {row['peers']} |")


if __name__ == "__main__":
    main()
