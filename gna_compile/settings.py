"""Every ``GNA_*`` environment switch, read here and nowhere else.

The switches are for experiments and debugging; code that wants a behaviour passes it
explicitly (``backend=``, ``config=``, ``tma=``). They are read at call time, so a test can
set one with monkeypatch, and :func:`snapshot` is part of the autotuner's cache key: a launch
config tuned under one setting is never reused under another.

| switch | values | effect |
| --- | --- | --- |
| GNA_COMPILE_BACKEND | a backend name | replaces ``backend="auto"`` (e.g. ``reference``) |
| GNA_TRITON_AUTOTUNE | 1 (default), 0 | 0: the first candidate launch config, untimed |
| GNA_TRITON_CONFIGS | ``"8,3,0,0,1;4,2"`` | Triton launch configs to try (see hopper/configs.py) |
| GNA_TRITON_TMA | 1 (default), 0 | 0: K/V by pointer loads in tiled order |
| GNA_GLUON | unset, 1, 0 | 1: the Gluon kernel for every call it takes; 0: never |
| GNA_TRITON_ON_CPU | 0 (default), 1 | 1: the Triton backend runs on CPU tensors (needs TRITON_INTERPRET=1) |
"""

from __future__ import annotations

import os

__all__ = ["forced_backend", "autotune", "triton_configs", "tma", "gluon_mode", "triton_on_cpu",
           "interpret", "snapshot"]


def _get(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _flag(name: str, default: str, allowed=("0", "1")) -> str:
    v = _get(name, default)
    if v not in allowed:
        raise ValueError(f"{name}={v!r}: expected one of {', '.join(repr(a) for a in allowed)}")
    return v


def forced_backend() -> str | None:
    """The backend that replaces ``"auto"``, or None."""
    return _get("GNA_COMPILE_BACKEND") or None


def autotune() -> bool:
    return _flag("GNA_TRITON_AUTOTUNE", "1") == "1"


def triton_configs() -> str | None:
    """The raw GNA_TRITON_CONFIGS string (hopper/configs.py parses it), or None."""
    return _get("GNA_TRITON_CONFIGS") or None


def tma() -> bool:
    return _flag("GNA_TRITON_TMA", "1") == "1"


def gluon_mode() -> str:
    """"auto" (unset: the autotuner may pick the Gluon kernel), "forced" (1) or "off" (0)."""
    return {"": "auto", "1": "forced", "0": "off"}[_flag("GNA_GLUON", "", ("", "0", "1"))]


def triton_on_cpu() -> bool:
    return _flag("GNA_TRITON_ON_CPU", "0") == "1"


def interpret() -> bool:
    """Triton's own switch (TRITON_INTERPRET=1: kernels run on the CPU interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def snapshot() -> tuple:
    """The parsed values of the switches a launch depends on, for cache keys (unset and set
    to the default give the same key)."""
    return (autotune(), triton_configs(), tma(), gluon_mode(), interpret())
