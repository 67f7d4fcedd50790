"""Policy: which attention calls the ``gna`` backend makes sparse, and how.

``Policy(rules={"transformer_blocks.*.attn": GNA(...) | "dense" | "auto"}, default="auto",
layout=None, sparsity=0.9, min_speedup=1.2)``. Rules are globs on the qualified name of the
module that made the call; the first match wins. ``"auto"`` picks the window for the target
sparsity and the stride/tiles with the simulator, and rewrites only if the predicted speedup is
at least ``min_speedup``. ``layout`` supplies the token grid when the graph cannot prove it
(e.g. FLUX packs latents before the model): a shape tuple, or a function from the spatial token
count to a shape (or None). Every mistake raises ``ValueError`` here, not at compile time.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Callable, Mapping, Optional, Union

from .config import GNA, _check_shape

__all__ = ["Policy"]

Action = Union[GNA, str]
_ACTIONS = ("auto", "dense")


def _check_action(where: str, action) -> Action:
    if isinstance(action, GNA):
        return action
    if isinstance(action, str) and action in _ACTIONS:
        return action
    raise ValueError(f"{where}={action!r} must be a GNA(...) config, 'auto' or 'dense'")


class Policy:
    """Per-call-site decisions for the ``gna`` backend (see module docstring)."""

    def __init__(self, rules: Optional[Mapping[str, Action]] = None, default: Action = "auto",
                 layout: Union[None, tuple, list, Callable] = None, sparsity: float = 0.9,
                 min_speedup: float = 1.2):
        rules = {} if rules is None else rules
        if not isinstance(rules, Mapping):
            raise ValueError(f"rules={rules!r} must be a dict of glob pattern -> GNA/'auto'/'dense'")
        self.rules = []
        for pattern, action in rules.items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"rule pattern {pattern!r} must be a non-empty string (a glob "
                                 f"on module names, e.g. 'transformer_blocks.*.attn')")
            self.rules.append((pattern, _check_action(f"rules[{pattern!r}]", action)))
        self.default = _check_action("default", default)
        if layout is not None and not callable(layout):
            layout = _check_shape(tuple(layout) if isinstance(layout, list) else layout)
        self.layout = layout
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
            raise ValueError(f"sparsity={sparsity!r} must be a number in (0, 1): the fraction of "
                             f"spatial (query, key) pairs to skip, e.g. 0.9")
        self.sparsity = float(sparsity)
        if isinstance(min_speedup, bool) or not isinstance(min_speedup, (int, float)) \
                or not math.isfinite(min_speedup) or min_speedup <= 0:
            raise ValueError(f"min_speedup={min_speedup!r} must be a finite number > 0")
        self.min_speedup = float(min_speedup)
        self._warned: set = set()

    def warn_unmatched(self, names, what: str = "attention call") -> None:
        """Warn once per rule that matches none of ``names`` (e.g. a typo like 'blokcs.*')."""
        names = sorted(set(names))
        for pattern, _ in self.rules:
            if pattern in self._warned or any(fnmatch.fnmatchcase(n, pattern) for n in names):
                continue
            self._warned.add(pattern)
            sample = ", ".join(names[:3]) or "none"
            warnings.warn(f"gna_compile: Policy rule {pattern!r} matches no {what} (names look like: "
                          f"{sample}{', ...' if len(names) > 3 else ''})", stacklevel=3)

    def action_for(self, module: str) -> tuple[Action, str]:
        """(action, which rule chose it) for a module's qualified name."""
        for pattern, action in self.rules:
            if fnmatch.fnmatchcase(module, pattern):
                return action, f"rule {pattern!r}"
        return self.default, "default"

    def grid_for(self, num_tokens: int) -> Optional[tuple]:
        """The policy's grid for a segment of ``num_tokens`` tokens, or None if it does not fit."""
        if self.layout is None:
            return None
        shape = self.layout(num_tokens) if callable(self.layout) else self.layout
        if shape is None:
            return None
        shape = _check_shape(tuple(shape) if isinstance(shape, list) else shape)
        return shape if math.prod(shape) == num_tokens else None

    def with_layout(self, layout) -> "Policy":
        """The same rules and settings with another ``layout`` (enable() gives each grid its own)."""
        return Policy(dict(self.rules), self.default, layout, self.sparsity, self.min_speedup)

    def __repr__(self) -> str:
        rules = ", ".join(f"{p!r}: {a!r}" for p, a in self.rules)
        return (f"Policy(rules={{{rules}}}, default={self.default!r}, layout={self.layout!r}, "
                f"sparsity={self.sparsity}, min_speedup={self.min_speedup})")
