"""Training graphs: GNA forwards are saved for the backward, never recomputed.

Activation checkpointing tags the ops of a checkpointed region for recomputation in the
backward, and the partitioner recomputes untagged ops too when an activation memory budget
(``torch._functorch.config.activation_memory_budget`` < 1) asks it to. A recomputed GNA forward reads the dense mode (``dense_attention()``) when the
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
    """Tag every GNA forward (and its getitems) MUST_SAVE, inside checkpointed regions or not
    (the partitioner also recomputes on its own, under an activation memory budget); returns
    how many forwards were tagged."""
    from torch.utils.checkpoint import CheckpointPolicy
    count = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _FORWARDS:
            continue
        for n in (node, *(u for u in node.users if u.target is operator.getitem)):
            n.meta["recompute"] = CheckpointPolicy.MUST_SAVE
        count += 1
    return count
