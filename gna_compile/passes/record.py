"""The per-call record the passes fill in: what ``explain()`` prints and the rewrite executes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["CallRecord"]


@dataclass
class CallRecord:
    module: str                    # the model's own module name (named_modules())
    q_shape: Optional[tuple] = None
    k_shape: Optional[tuple] = None
    v_shape: Optional[tuple] = None
    layout: str = "-"              # inferred token layout, or why not
    source: str = ""               # what proves the grid ("conv patch_embed", "policy layout")
    grid: Optional[tuple] = None   # spatial grid (example sizes)
    extra_prefix: Any = 0
    extra_suffix: Any = 0
    decision: str = "dense"        # "gna" or "dense"
    window: Optional[tuple] = None
    stride: Optional[tuple] = None
    dilation: Optional[tuple] = None
    causal: Optional[tuple] = None
    q_tile: Optional[tuple] = None
    kv_tile: Optional[tuple] = None
    speedup: Optional[float] = None        # simulated tile speedup (with extra tokens)
    flop_speedup: Optional[float] = None
    block_sparse: Optional[bool] = None
    key_mask: str = "-"                    # "-", "keys", "keys (extra tokens only)"
    reason: str = ""
    site: int = -1                         # the call site's id (passes.sites)
    where: str = ""                        # file:line of the call
    hoisted: Optional[bool] = None         # runs on tiled tokens (permutation hoisting)
    # For the rewrite only (not printed): FX nodes and size plans.
    plan: dict = field(default_factory=dict, repr=False)

    @property
    def rewritten(self) -> bool:
        return self.decision == "gna"
