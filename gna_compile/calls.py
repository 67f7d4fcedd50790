"""Every attention call a model makes, in order: inside captured graphs or outside them.

``with gna_compile.calls.recording() as calls: model(...)`` lists one :class:`Call` per
scaled-dot-product attention the model executed, with the model's own module name: calls in
compiled graphs (rewritten to GNA, or dense with the analysis' reason), and calls that ran
eagerly because Dynamo did not capture them (skipped frames, graph breaks inside a loop,
recompile limits), with the graph-break reasons Dynamo reported. ``explain()`` is built on it.
Outside a recording the graph wrapper costs one check per graph call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from .passes.names import qualify, root_names, stack_modules
from .passes.record import CallRecord
from .passes.sites import SDPA as ORIGINAL_SDPA

__all__ = ["Call", "recording", "wrap_graph"]
_STATE = threading.local()


@dataclass
class Call:
    module: str
    record: Optional[CallRecord]          # the compiled site's record; None outside a graph
    captured: bool = True
    reason: str = ""                      # for calls outside a graph: why (graph breaks)
    q_shape: Optional[tuple] = None

    @property
    def rewritten(self) -> bool:
        return self.record is not None and self.record.rewritten


@dataclass
class _Recorder:
    calls: list = field(default_factory=list)
    breaks: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


def _active() -> Optional[_Recorder]:
    return getattr(_STATE, "recorder", None)


def wrap_graph(compiled, prep, aten):
    """The compiled graph, reporting its attention calls while a recording is active."""
    sites, index = prep.sites, prep.param_index
    unmarked = {r.site: r for r in prep.unmarked_records}

    def report(args):
        rec = _active()
        if rec is None:
            return
        modules = stack_modules()
        params = [(src, args[i]) for i, src in index if i < len(args)]
        by_site = {r.site: r for r in aten.records}
        for s in sites:
            name = qualify(s.path, modules, params)[0] if modules else s.module
            r = by_site.get(s.id) or unmarked.get(s.id)
            if r is None:  # functionalization removed it: its output is never used
                r = CallRecord(name, reason="output unused (removed from the graph)", site=s.id, where=s.where)
            rec.calls.append(Call(name, r, True, q_shape=r.q_shape))

    def run(*args):  # Dynamo calls a backend's result with the graph's inputs, unboxed
        report(args)
        return compiled(*args)
    return run


def _eager_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False):
    """F.scaled_dot_product_attention while recording: Dynamo traces straight through it (the
    captured graph holds the original op); an eager call is reported."""
    if not torch.compiler.is_compiling():
        rec = _active()
        if rec is not None:
            modules = stack_modules()
            name = root_names(modules[-1]).get(id(modules[0]), type(modules[0]).__name__) if modules else "<top>"
            rec.calls.append(Call(name or "<top>", None, False, q_shape=tuple(query.shape)))
    return ORIGINAL_SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                         is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


class _DynamoWarnings(logging.Handler):
    def __init__(self, rec):
        super().__init__(logging.WARNING)
        self.rec = rec

    def emit(self, record):
        msg = record.getMessage()
        if "recompile" in msg or "cache_size_limit" in msg or "skip" in msg.lower():
            self.rec.warnings.append(msg.splitlines()[0])


@contextlib.contextmanager
def recording():
    """Record every attention call made inside the block (yields the list of :class:`Call`)."""
    from torch._dynamo.utils import counters
    rec = _Recorder()
    prev = _active()
    _STATE.recorder = rec
    before = dict(counters["graph_break"])
    handler = _DynamoWarnings(rec)
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    saved = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)
    F.scaled_dot_product_attention = _eager_sdpa
    torch._C._nn.scaled_dot_product_attention = _eager_sdpa
    try:
        yield rec.calls
    finally:
        F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention = saved
        logger.removeHandler(handler)
        _STATE.recorder = prev
        breaks = [f"{k} (x{v - before.get(k, 0)})" for k, v in counters["graph_break"].items()
                  if v > before.get(k, 0)]
        why = "; ".join(breaks + rec.warnings) or "Dynamo did not capture this frame"
        for c in rec.calls:
            if not c.captured:
                c.reason = f"ran outside a captured graph: {why}"
