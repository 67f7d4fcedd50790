"""CLI: ``python -m gna_compile.sim`` (console script ``gna-sim``).

Examples::

    python -m gna_compile.sim --shape 30 48 80 --window 18 24 24 --stride 16 8 8 --q-tile 2 8 8 --kv-tile 2 8 8
    python -m gna_compile.sim --shape 16 44 80 --search --sparsity 0.9
"""

from __future__ import annotations

import argparse
import json
import sys

from .core import simulate
from .report import LEGEND, format_header, format_table
from .ranking import search

__all__ = ["main"]


def _bool(v: str) -> bool:
    low = v.lower()
    if low in ("1", "true", "yes", "y"):
        return True
    if low in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"invalid causal flag {v!r} (use 0/1)")


def _one(v):
    v = tuple(v)
    return v[0] if len(v) == 1 else v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gna_compile.sim",
        description="NATTENSim: tile-level cost model of Generalized Neighborhood Attention. "
                    "Per-dim options take one value (all dims) or one per dim.")
    p.add_argument("--shape", type=int, nargs="+", required=True, help="token grid, e.g. 30 48 80")
    p.add_argument("--window", type=int, nargs="+", help="window per dim (required unless --search --sparsity)")
    p.add_argument("--stride", type=int, nargs="+", help="stride per dim (default 1; with --search: only this)")
    p.add_argument("--dilation", type=int, nargs="+", default=[1])
    p.add_argument("--causal", type=_bool, nargs="*", help="causal: bare flag = all dims, or 0/1 per dim")
    p.add_argument("--q-tile", type=int, nargs="+", help="Q tile box (default: balanced 128-token box)")
    p.add_argument("--kv-tile", type=int, nargs="+", help="KV tile box (default: the Q tile)")
    p.add_argument("--extra-prefix", type=int, default=0, help="non-spatial tokens before the grid")
    p.add_argument("--extra-suffix", type=int, default=0, help="non-spatial tokens after the grid")
    p.add_argument("--mask-penalty", type=float, help="cost of a partial tile vs a full one")
    p.add_argument("--search", action="store_true", help="rank windows/strides/tiles by simulated speedup")
    p.add_argument("--sparsity", type=float, help="with --search and no --window: target fraction masked")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 64], help="--search tile token counts")
    p.add_argument("--top", type=int, default=10, help="--search: rows to print (default 10)")
    p.add_argument("--require-block-sparse", action="store_true", help="--search: only configs with no partial tile")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def main(argv=None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)
    causal = False if a.causal is None else (True if not a.causal else _one(a.causal))
    common = dict(dilation=_one(a.dilation), causal=causal, extra_prefix=a.extra_prefix,
                  extra_suffix=a.extra_suffix, mask_penalty=a.mask_penalty)
    shape = tuple(a.shape)
    try:
        if a.search:
            from .tiles import candidate_tiles
            if a.q_tile is not None:
                tiles = [(_one(a.q_tile), _one(a.kv_tile if a.kv_tile is not None else a.q_tile))]
            else:
                if a.kv_tile is not None:
                    raise ValueError("--kv-tile needs --q-tile")
                tiles = candidate_tiles(shape, a.sizes)
            results = search(shape, window=None if a.window is None else _one(a.window),
                             sparsity=a.sparsity, strides=None if a.stride is None else [_one(a.stride)],
                             tiles=tiles, top=a.top, require_block_sparse=a.require_block_sparse, **common)
        else:
            if a.window is None:
                raise ValueError("--window is required (or use --search --sparsity S)")
            if a.sparsity is not None:
                raise ValueError("--sparsity only applies with --search")
            results = [simulate(shape, _one(a.window), 1 if a.stride is None else _one(a.stride),
                                q_tile=None if a.q_tile is None else _one(a.q_tile),
                                kv_tile=None if a.kv_tile is None else _one(a.kv_tile), **common)]
    except ValueError as e:
        parser.error(str(e))  # exits 2 with the usage line
    if a.json:
        data = [r.to_dict() for r in results]
        print(json.dumps(data if a.search else data[0], indent=2))
        return 0
    if not results:
        print("no configuration matches (try without --require-block-sparse or another --sparsity)")
        return 0
    print(format_header(results[0]))
    if a.search:
        target = f"window {'x'.join(map(str, a.window))}" if a.window else f"target sparsity {a.sparsity:g}"
        print(f"search: {target}, best {len(results)} by simulated tile speedup"
              f"{' (with extra tokens)' if a.extra_prefix or a.extra_suffix else ''}")
    print(format_table(results, rank=a.search))
    print(LEGEND)
    return 0


if __name__ == "__main__":
    sys.exit(main())
