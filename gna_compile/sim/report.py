"""Plain-text tables of simulator results (CLI, logs, ``explain()``)."""

from __future__ import annotations

from .core import SimResult

__all__ = ["format_table", "format_header"]


def _x(t) -> str:
    return "x".join(str(v) for v in t)


def format_header(r: SimResult) -> str:
    causal = "no" if not any(r.causal) else _x(int(c) for c in r.causal)
    extras = ""
    if r.extra_prefix or r.extra_suffix:
        extras = f", extra tokens {r.extra_prefix} before + {r.extra_suffix} after"
    return (f"grid {_x(r.shape)} ({r.num_tokens} tokens), dilation {_x(r.dilation)}, "
            f"causal {causal}{extras}, mask penalty {r.mask_penalty:g}")


def format_table(results, rank: bool = False) -> str:
    """Aligned table, one row per result; extra-token columns only when extras exist."""
    extras = any(r.extra_prefix or r.extra_suffix for r in results)
    cols = (["#"] if rank else []) + ["window", "stride", "q_tile", "kv_tile", "visited", "full",
                                      "partial", "dense", "sparsity", "FLOP x", "tile x"]
    if extras:
        cols += ["extra visits", "tile x (all)"]
    cols.append("block-sparse")
    rows = []
    for i, r in enumerate(results, 1):
        row = ([str(i)] if rank else []) + [
            _x(r.window), _x(r.stride), _x(r.q_tile), _x(r.kv_tile), str(r.visited_tiles),
            str(r.full_tiles), str(r.partial_tiles), str(r.dense_baseline_tiles),
            f"{r.sparsity:.4f}", f"{r.flop_speedup:.2f}", f"{r.tile_speedup:.2f}"]
        if extras:
            row += [str(r.extra_visits), f"{r.tile_speedup_with_extras:.2f}"]
        row.append("yes" if r.perfectly_block_sparse else "no")
        rows.append(row)
    widths = [max(len(c), *(len(row[j]) for row in rows)) if rows else len(c) for j, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


LEGEND = ("visited/full/partial: KV-tile visits summed over Q tiles (full = no mask needed); "
          "dense: visits of a dense kernel with the same tile sizes;\n"
          "FLOP x = N^2 / attended pairs; tile x = dense / (full + penalty * partial)")
