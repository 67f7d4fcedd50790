"""Training graphs: GNA forwards are saved for the backward, never recomputed.

Activation checkpointing tags the ops of a checkpointed region for recomputation in the
backward. A recomputed GNA forward reads the dense mode (``dense_attention()``) when the
backward runs, which may be outside the block the forward ran in, or on autograd's CUDA thread:
its output, LSE and mode flag would then belong to another attention than the one the loss
saw. Saving the forward's outputs keeps forward and backward one computation (at the memory
cost of one attention output and LSE per call); the ops around it are still recomputed.
"""

from __future__ import annotations

import operator

from torch.fx import Graph

from .hoist_permutations import TILED
from .rewrite import GNA_LSE_OP, GNA_OP

__all__ = ["save_gna_forwards"]

_FORWARDS = (GNA_OP, GNA_LSE_OP, TILED[GNA_OP], TILED[GNA_LSE_OP])  # natural and tiled order


def save_gna_forwards(graph: Graph) -> int:
    """Tag every GNA forward (and its getitems) of a checkpointed region MUST_SAVE; returns
    how many forwards were tagged."""
    from torch.utils.checkpoint import CheckpointPolicy
    count = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _FORWARDS or "recompute" not in node.meta:
            continue
        for n in (node, *(u for u in node.users if u.target is operator.getitem)):
            n.meta["recompute"] = CheckpointPolicy.MUST_SAVE
        count += 1
    return count
