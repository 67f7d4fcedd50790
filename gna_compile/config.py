"""GNA configuration and its validation against a token grid.

``GNA`` is what users write (ints or per-dim tuples); ``GNASpec`` is a GNA bound to a grid
shape, fully per-dim and validated. Every rule violation raises ``ValueError`` naming the
argument, the value and the rule: nothing is silently clamped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

__all__ = ["GNA", "GNASpec", "make_spec"]

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _per_dim(name: str, value, rank: int, kind=int) -> tuple:
    """Broadcast an int/bool to ``rank`` dims or check a per-dim sequence's length and types."""
    ok = (lambda x: isinstance(x, bool)) if kind is bool else _is_int
    if ok(value):
        return (value,) * rank
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(
                f"{name}={tuple(value)} has {len(value)} dims but the grid shape has {rank}: "
                f"give one {kind.__name__} or a tuple of {rank}")
        if not all(ok(v) for v in value):
            raise ValueError(f"{name}={tuple(value)} must contain only {kind.__name__}s")
        return tuple(value)
    raise ValueError(f"{name}={value!r} must be a {kind.__name__} or a tuple of {kind.__name__}s")


def _check_shape(shape) -> tuple[int, ...]:
    if _is_int(shape):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or not all(_is_int(n) for n in shape):
        raise ValueError(f"shape={shape!r} must be a tuple of ints (the token grid, e.g. (30, 48, 80))")
    if not 1 <= len(shape) <= 3:
        raise ValueError(f"shape={tuple(shape)} has {len(shape)} dims: GNA supports 1, 2 or 3")
    if any(n < 1 for n in shape):
        raise ValueError(f"shape={tuple(shape)}: every grid extent must be >= 1")
    return tuple(shape)


@dataclass(frozen=True)
class GNASpec:
    """A GNA bound to a grid: all fields per dim, validated (see :func:`make_spec`)."""

    shape: tuple[int, ...]
    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def num_tokens(self) -> int:
        return math.prod(self.shape)

    def dims(self):
        """Per-dim ``(n, w, s, d, causal)`` tuples, the arguments of :func:`gna_compile.mask.key_range`."""
        return list(zip(self.shape, self.window, self.stride, self.dilation, self.causal))

    @property
    def is_dense(self) -> bool:
        """True when the mask is all-ones (window covers the grid, no dilation/causal)."""
        return all(w == n and d == 1 and not c for n, w, _, d, c in self.dims())


def make_spec(shape, window: IntOrTuple, stride: IntOrTuple = 1, dilation: IntOrTuple = 1,
              causal: BoolOrTuple = False) -> GNASpec:
    """Validate GNA parameters against a grid shape and return the per-dim ``GNASpec``."""
    shape = _check_shape(shape)
    rank = len(shape)
    window = _per_dim("window", window, rank)
    stride = _per_dim("stride", stride, rank)
    dilation = _per_dim("dilation", dilation, rank)
    causal = _per_dim("causal", causal, rank, kind=bool)
    for i, (n, w, s, d) in enumerate(zip(shape, window, stride, dilation)):
        if d < 1:
            raise ValueError(f"dilation[{i}]={d} must be >= 1")
        if w < 2:
            raise ValueError(f"window[{i}]={w} must be >= 2")
        if d * w > n:
            raise ValueError(
                f"window[{i}]={w} with dilation[{i}]={d} needs dilation*window <= shape[{i}] "
                f"(= {n}), got {d * w}: window must be <= shape // dilation = {n // d}")
        if not 1 <= s <= w:
            raise ValueError(f"stride[{i}]={s} must satisfy 1 <= stride <= window (= {w})")
    return GNASpec(shape, window, stride, dilation, causal)


@dataclass(frozen=True)
class GNA:
    """User-facing GNA parameters: ints apply to every dim, tuples give one value per dim.

    ``GNA(window=(18, 24, 24), stride=(16, 8, 8))`` is HunyuanVideo's paper config;
    ``stride=1`` is neighborhood attention, ``stride=window`` blocked attention.
    """

    window: IntOrTuple
    stride: IntOrTuple = 1
    dilation: IntOrTuple = 1
    causal: BoolOrTuple = False

    def __post_init__(self):
        # Grid-independent checks, so a bad config fails where it is written.
        per = {}
        for name in ("window", "stride", "dilation"):
            value = getattr(self, name)
            vals = (value,) if _is_int(value) else value
            if not isinstance(vals, (tuple, list)) or not vals or not all(_is_int(v) for v in vals):
                raise ValueError(f"{name}={value!r} must be an int or a non-empty tuple of ints")
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
            per[name] = tuple(vals)
        c = self.causal
        cvals = (c,) if isinstance(c, bool) else c
        if not isinstance(cvals, (tuple, list)) or not cvals or not all(isinstance(x, bool) for x in cvals):
            raise ValueError(f"causal={c!r} must be a bool or a tuple of bools")
        if isinstance(c, list):
            object.__setattr__(self, "causal", tuple(c))
        per["causal"] = tuple(cvals)
        ranks = {n: len(v) for n, v in per.items() if len(v) > 1}
        if len(set(ranks.values())) > 1:
            raise ValueError("per-dim values disagree on the number of dims: "
                             + ", ".join(f"{n} has {k}" for n, k in ranks.items()))
        rank = max([1, *ranks.values()])
        w, st, d = (per[n] * rank if len(per[n]) == 1 else per[n] for n in ("window", "stride", "dilation"))
        for i in range(rank):
            if w[i] < 2:
                raise ValueError(f"window={self.window!r}: every window must be >= 2 (got {w[i]})")
            if not 1 <= st[i] <= w[i]:
                raise ValueError(f"stride={self.stride!r} with window={self.window!r}: every stride "
                                 f"must satisfy 1 <= stride <= window (got {st[i]} for window {w[i]})")
            if d[i] < 1:
                raise ValueError(f"dilation={self.dilation!r}: every dilation must be >= 1 (got {d[i]})")

    def bind(self, shape) -> GNASpec:
        """Validate against a grid shape (``ValueError`` on any broken rule)."""
        return make_spec(shape, self.window, self.stride, self.dilation, self.causal)
