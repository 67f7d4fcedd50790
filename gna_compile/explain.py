"""``explain(model, *args, policy=...)``: what the ``gna`` backend would do, call by call.

Captures the model with Dynamo using a backend that only analyzes (no rewrite, no Inductor),
runs it once on the given inputs, and returns a :class:`Report`: one record per attention call
site with module, q/k/v shapes, inferred layout and extra tokens (or why not), decision,
window/stride/tiles, simulated speedup and the reason. The report prints as a table.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch

from .backend import GNABackend
from .passes import CallRecord
from .policy import Policy

__all__ = ["explain", "Report", "format_table"]


def _t(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, tuple):
        return "x".join(str(v) for v in x)
    return str(x)


_COLUMNS = ("module", "q", "k", "layout", "pre/suf", "key mask", "decision", "window", "stride",
            "q/kv tile", "sim speedup", "reason")


def _row(r: CallRecord) -> tuple:
    tiles = f"{_t(r.q_tile)}/{_t(r.kv_tile)}" if r.q_tile else "-"
    sp = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
    extra = f"{r.extra_prefix}/{r.extra_suffix}" if r.grid else "-"
    return (r.module, _t(r.q_shape), _t(r.k_shape), r.layout, extra, r.key_mask, r.decision,
            _t(r.window), _t(r.stride), tiles, sp, r.reason)


def format_table(records) -> str:
    rows = [_COLUMNS] + [_row(r) for r in records]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for j, row in enumerate(rows):
        lines.append(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if j == 0:
            lines.append("-+-".join("-" * w for w in widths))
    n = sum(r.rewritten for r in records)
    lines.append(f"{n} of {len(records)} attention calls rewritten to GNA")
    return "\n".join(lines)


class Report(list):
    """A list of :class:`CallRecord` (one per attention call) that prints as a table."""

    @property
    def rewritten(self) -> list:
        return [r for r in self if r.rewritten]

    def __str__(self) -> str:
        return format_table(self)


def explain(model, *args, policy: Optional[Policy] = None, verbose: bool = True,
            **kwargs) -> Report:
    """Analyze every attention call of ``model(*args, **kwargs)`` under ``policy``."""
    recorder = GNABackend(policy, inner="eager", rewrite=False)
    with torch.no_grad():
        torch.compile(model, backend=recorder)(*args, **kwargs)
        if not recorder.graphs:
            # Dynamo captured nothing: the model's frames hit the recompile limit (e.g. many
            # explain() calls on one model). Start from a clean Dynamo cache once.
            torch._dynamo.reset()
            torch.compile(model, backend=recorder)(*args, **kwargs)
    report = Report(recorder.records)
    if verbose:
        print(report)
    return report


class _CallableModule(type(sys)):
    """``gna_compile.explain`` is both this module and the function (see backend.py)."""

    def __call__(self, *args, **kwargs):
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
