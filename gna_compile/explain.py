"""``explain(model, *args, policy=...)``: what the ``gna`` backend does, call by call.

Compiles the model with a backend that analyzes without rewriting, runs it once on the given
inputs while recording every attention call (:mod:`gna_compile.calls`), and returns a
:class:`Report`: one row per call site and module instance, with the model's own module
name, how many calls it made, the q/k shapes, the proven token layout and extra tokens (or
why none), the decision, window/stride/tiles, simulated speedup and the reason. Calls Dynamo
did not capture are rows too ("ran outside a captured graph"), with the graph-break reasons.
"""

from __future__ import annotations

import copy
import sys
from typing import Optional

import torch

from . import calls as _calls
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


_COLUMNS = ("module", "calls", "q", "k", "layout", "pre/suf", "key mask", "decision", "window",
            "stride", "q/kv tile", "sim speedup", "reason")


def _row(r: CallRecord) -> tuple:
    tiles = f"{_t(r.q_tile)}/{_t(r.kv_tile)}" if r.q_tile else "-"
    sp = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
    extra = f"{r.extra_prefix}/{r.extra_suffix}" if r.grid else "-"
    n = getattr(r, "calls", 1)
    return (r.module, str(n), _t(r.q_shape), _t(r.k_shape), r.layout, extra, r.key_mask, r.decision,
            _t(r.window), _t(r.stride), tiles, sp, r.reason)


def format_table(records) -> str:
    rows = [_COLUMNS] + [_row(r) for r in records]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for j, row in enumerate(rows):
        lines.append(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if j == 0:
            lines.append("-+-".join("-" * w for w in widths))
    total = sum(getattr(r, "calls", 1) for r in records)
    done = sum(getattr(r, "calls", 1) for r in records if r.rewritten)
    lines.append(f"{done} of {total} attention calls rewritten to GNA")
    return "\n".join(lines)


class Report(list):
    """One :class:`CallRecord` per call site and module (``.calls``: how many calls it made);
    ``report.calls`` lists every call in execution order. Prints as a table."""

    calls: list

    @property
    def rewritten(self) -> list:
        return [r for r in self if r.rewritten]

    def __str__(self) -> str:
        return format_table(self)


def _rows(events) -> Report:
    rows: dict = {}
    for c in events:
        key = (c.module, c.record.site if c.record is not None else None, c.captured)
        row = rows.get(key)
        if row is None:
            if c.record is not None:
                row = copy.copy(c.record)
                row.plan = {}
                row.module = c.module
            else:
                row = CallRecord(c.module, q_shape=c.q_shape, reason=c.reason)
            row.calls = 0
            rows[key] = row
        row.calls += 1
    report = Report(rows.values())
    report.calls = list(events)
    return report


def explain(model, *args, policy: Optional[Policy] = None, verbose: bool = True,
            **kwargs) -> Report:
    """Analyze every attention call of ``model(*args, **kwargs)`` under ``policy``."""
    policy = Policy() if policy is None else policy
    recorder = GNABackend(policy, inner="eager", rewrite=False, hoist_permutations=False)
    torch._dynamo.reset()
    with torch.no_grad(), _calls.recording() as events:
        torch.compile(model, backend=recorder)(*args, **kwargs)
    report = _rows(events)
    policy.warn_unmatched([r.module for r in report])
    if verbose:
        print(report)
    return report


class _CallableModule(type(sys)):
    """``gna_compile.explain`` is both this module and the function (see backend.py)."""

    def __call__(self, *args, **kwargs):
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
