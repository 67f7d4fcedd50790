"""FX passes of the ``gna`` backend, one job per module.

``find_sdpa`` finds attention calls, ``layout`` infers the token grid (sympy sizes),
``keymask`` interprets boolean key masks, ``decide`` asks the policy/simulator, ``analyze``
ties them into one :class:`CallRecord` per call, and ``rewrite`` swaps the chosen calls for the
GNA custom op.
"""

from __future__ import annotations

from .analyze import analyze
from .record import CallRecord
from .rewrite import rewrite

__all__ = ["analyze", "rewrite", "run_passes", "CallRecord"]


def run_passes(gm, policy, do_rewrite: bool = True) -> list[CallRecord]:
    """Analyze ``gm`` under ``policy`` and (optionally) rewrite it in place; returns the records."""
    records = analyze(gm, policy)
    if do_rewrite:
        rewrite(gm, records)
    return records
