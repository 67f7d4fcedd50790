"""Uniform access to the nodes of a functionalized ATen graph.

Every call node the analyses read is an ``OpOverload`` (``aten.view.default``, our custom
ops) or ``operator.getitem`` on a multi-output op. Arguments are read through the op's own
schema (:func:`args_of`), so a positional and a keyword spelling, and a defaulted argument,
are the same thing: the passes never guess what position an argument is in.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node

__all__ = ["op_key", "args_of", "is_op", "tensor_inputs", "changed_by_a_pass", "GETITEM"]

GETITEM = "getitem"


def op_key(node: Node) -> str | None:
    """``"aten.view"``, ``"gna_compile.sdpa_site"``, ``"getitem"``; None for non-call nodes
    and for Python callables that are not ops (those are unknown to every rule)."""
    if node.op != "call_function":
        return None
    t = node.target
    if t is operator.getitem:
        return GETITEM
    if isinstance(t, torch._ops.OpOverload):
        return f"{t.namespace}.{t._opname}"
    return None


def is_op(node, *keys: str) -> bool:
    return isinstance(node, Node) and op_key(node) in keys


def args_of(node: Node) -> dict:
    """The call's arguments by schema name, defaults filled in."""
    t = node.target
    if not isinstance(t, torch._ops.OpOverload):
        raise TypeError(f"{node.name} is not an op call")
    out = {}
    for i, a in enumerate(t._schema.arguments):
        if i < len(node.args):
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def tensor_inputs(node: Node) -> list[Node]:
    """Input nodes of a call (flattened through lists), in argument order, deduplicated."""
    return list(node.all_input_nodes)


def changed_by_a_pass(node: Node) -> None:
    """Mark a node whose arguments or target a pass changed: AOTAutograd records the values a
    node was traced with (``meta["eager_input_vals"]``), and Inductor constrains a custom op's
    arguments to them, zipping list arguments with the recorded ones, so a tile list filled in
    after tracing came out empty. Without the record Inductor treats the node as a pass's own."""
    node.meta.pop("eager_input_vals", None)
