"""Is a traced grid really spatial? Check where each grid axis was born.

A merge of tensor dims into the token dim is a grid in index space; it is the *image/video*
grid only if every axis comes from a convolution's spatial output dims, from a dim of an
image/video input (rank >= 4, not the batch dim), or from a piece of one of those (a
reshape/permute patchify as in Cosmos). Anything else (e.g. a 1-D token sequence reshaped
into rows) is not proof of locality, and the call stays dense unless the policy gives a layout.
"""

from __future__ import annotations

from torch.fx import Node

from .ops import op_name
from .symbolic import hint, shape_of

__all__ = ["axis_problem"]

_CONVS = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
          "conv_transpose2d", "conv_transpose3d"}
_RESHAPE = {"view", "reshape", "unflatten", "_unsafe_view"}


def axis_problem(tracer, axis, env, depth: int = 0) -> str | None:
    """None if the axis provably indexes an image/video dim, else a short reason."""
    if axis.origin is None:
        return None  # given by the policy, not inferred
    node, dim = axis.origin
    name = op_name(node)
    if name in _CONVS:
        return None if dim >= 2 else f"axis of size {axis.size} is a conv's batch/channel dim"
    if node.op == "placeholder":
        rank = len(shape_of(node) or ())
        if rank >= 4 and dim >= 1:
            return None
        return f"axis of size {axis.size} is dim {dim} of a rank-{rank} graph input (not an image/video)"
    if name in _RESHAPE and depth < 8 and isinstance(node.args[0], Node):
        src = _piece_source(node, dim, env)
        if src is not None:
            sub = tracer.trace(node.args[0], src)
            if len(sub) == 1 and len(sub[0].axes) == 1:
                return axis_problem(tracer, sub[0].axes[0], env, depth + 1)
    return f"axis of size {axis.size} comes from '{name or node.op}', not a conv or image/video input"


def _piece_source(node, j, env):
    """The input dim of a reshape that output dim ``j`` is a piece of (example sizes)."""
    ins, outs = shape_of(node.args[0]), shape_of(node)
    if ins is None or outs is None:
        return None
    ins, outs = [hint(s, env) for s in ins], [hint(s, env) for s in outs]
    if None in ins or None in outs:
        return None
    lo = 1
    for s in outs[:j]:
        lo *= s
    hi = lo * outs[j]
    acc = 1
    for i, s in enumerate(ins):
        if s > 1 and lo % acc == 0 and (acc * s) % hi == 0 and acc <= lo and hi <= acc * s:
            return i
        acc *= s
    return None
