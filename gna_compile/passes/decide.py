"""Choose a GNA config for one call on a known grid: a policy rule, or the simulator ("auto").

Explicit ``GNA(...)`` rules are applied as written (validated against the grid); ``"auto"``
picks windows for the policy's sparsity and strides/tiles with the simulator, preferring
perfectly block-sparse configs, and keeps the call dense unless the predicted speedup reaches
``min_speedup``. Tiles always come from :mod:`gna_compile.kernels.tile_choice`, the module the
kernels ask too: the tiling recorded here is the tiling that runs.
"""

from __future__ import annotations

from ..config import GNA
from ..kernels.tile_choice import choose_tiles, search_configs
from .record import CallRecord

__all__ = ["decide"]


def _fill(rec: CallRecord, res) -> None:
    rec.window, rec.stride, rec.dilation, rec.causal = res.window, res.stride, res.dilation, res.causal
    rec.q_tile, rec.kv_tile = tuple(res.q_tile), tuple(res.kv_tile)
    rec.speedup = res.tile_speedup_with_extras
    rec.flop_speedup = res.flop_speedup_with_extras
    rec.block_sparse = res.perfectly_block_sparse


def decide(rec: CallRecord, action, source: str, policy, grid: tuple, prefix: int, suffix: int) -> None:
    """Set ``rec.decision`` and the config fields for a call whose grid is known."""
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
            q_tile, kv_tile = choose_tiles(spec, prefix, suffix)
        except ValueError:
            pass  # no kernel tile fits this grid: the reference backend runs it, no prediction
        else:
            from ..sim import simulate
            _fill(rec, simulate(grid, spec.window, spec.stride, spec.dilation, spec.causal,
                                q_tile, kv_tile, prefix, suffix))
        rec.decision = "gna"
        rec.reason = f"{source}: {action}"
        return
    try:  # "auto"
        best = search_configs(grid, policy.sparsity, prefix, suffix)
        block = search_configs(grid, policy.sparsity, prefix, suffix, require_block_sparse=True)
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
