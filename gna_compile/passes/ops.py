"""Uniform view of FX call nodes: one op name and argument access for both spellings.

Dynamo graphs mix ``call_function`` (``torch.cat``, ``operator.add``, ``torch._C._nn.linear``)
and ``call_method`` (``x.view(...)``); the passes match on the plain name only.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node

__all__ = ["op_name", "arg", "norm_dim", "is_sdpa", "is_gna_op", "GNA_OP"]

GNA_OP = torch.ops.gna_compile.gna_attention.default

_SDPA_TARGETS = {torch.nn.functional.scaled_dot_product_attention,
                 torch._C._nn.scaled_dot_product_attention}


def op_name(node: Node) -> str | None:
    """``'add'`` for ``operator.add``/``torch.add``/``x.add``; None for non-call nodes."""
    if node.op == "call_method":
        return node.target
    if node.op != "call_function":
        return None
    t = node.target
    if t in _SDPA_TARGETS:
        return "sdpa"
    if t is GNA_OP:
        return "gna_attention"
    if isinstance(t, torch._ops.OpOverload):
        return t._opname  # aten.view.default -> "view"
    name = getattr(t, "__name__", None)
    if t is operator.getitem:
        return "getitem"
    return name


def is_sdpa(node: Node) -> bool:
    return node.op == "call_function" and node.target in _SDPA_TARGETS


def is_gna_op(node: Node) -> bool:
    return node.op == "call_function" and node.target is GNA_OP


def arg(node: Node, i: int, name: str, default=None):
    """Positional-or-keyword argument ``i``/``name`` of a call node."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d
