"""Choose a GNA config for one call on a known grid: a policy rule, or the simulator ("auto").

Explicit ``GNA(...)`` rules are always applied (validated against the grid); ``"auto"``
picks windows for the policy's sparsity and strides/tiles with ``gna_compile.sim.search``,
preferring perfectly block-sparse configs, and keeps the call dense unless the predicted
speedup reaches ``min_speedup``.
"""

from __future__ import annotations

import functools

from ..config import GNA
from .record import CallRecord

__all__ = ["decide"]


def _fill(rec: CallRecord, res) -> None:
    rec.window, rec.stride, rec.dilation, rec.causal = res.window, res.stride, res.dilation, res.causal
    rec.q_tile, rec.kv_tile = res.q_tile, res.kv_tile
    rec.speedup = res.tile_speedup_with_extras
    rec.flop_speedup = res.flop_speedup_with_extras
    rec.block_sparse = res.perfectly_block_sparse


@functools.lru_cache(maxsize=256)
def _search(grid, **kw):
    """``sim.search`` memoized: a DiT asks the same question for each of its ~60 blocks."""
    from .. import sim
    return tuple(sim.search(grid, **kw))


def decide(rec: CallRecord, policy, grid: tuple, prefix: int, suffix: int) -> None:
    """Set ``rec.decision`` and the config fields for a call whose grid is known."""
    action, source = policy.action_for(rec.module)
    if action == "dense":
        rec.reason = f"{source} says dense"
        return
    if isinstance(action, GNA):
        try:
            spec = action.bind(grid)
        except ValueError as e:
            rec.reason = f"{source}: {action} does not fit grid {grid}: {e}"
            return
        rec.window, rec.stride, rec.dilation, rec.causal = spec.window, spec.stride, spec.dilation, spec.causal
        try:
            best = _search(grid, window=spec.window, strides=(spec.stride,), dilation=spec.dilation,
                           causal=spec.causal, extra_prefix=prefix, extra_suffix=suffix, top=1)
            _fill(rec, best[0])
        except ValueError:
            pass  # the simulator has no tile for it: still rewrite, no prediction
        rec.decision = "gna"
        rec.reason = f"{source}: {action}"
        return
    # "auto"
    try:
        kw = dict(sparsity=policy.sparsity, extra_prefix=prefix, extra_suffix=suffix, top=1)
        best = _search(grid, **kw)
        block = _search(grid, require_block_sparse=True, **kw)
    except ValueError as e:
        rec.reason = f"auto: simulator found no config for grid {grid}: {e}"
        return
    pick = block[0] if block and block[0].tile_speedup_with_extras >= policy.min_speedup else best[0]
    _fill(rec, pick)
    if rec.speedup < policy.min_speedup:
        rec.reason = (f"auto: best predicted speedup {rec.speedup:.2f}x < min_speedup "
                      f"{policy.min_speedup:g}")
        return
    rec.decision = "gna"
    rec.reason = (f"auto: sparsity {policy.sparsity:g}, "
                  f"{'perfectly block-sparse' if rec.block_sparse else 'best simulated'} config")
