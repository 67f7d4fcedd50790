"""Symbolic sizes for the FX passes: every size becomes a sympy expression.

Dynamo graphs carry example values whose sizes are ints (static) or SymInts (``dynamic=True``);
comparing them as sympy expressions lets one pass handle both without guessing or guarding.
"""

from __future__ import annotations

import sympy
import torch
from torch.fx import Node

__all__ = ["example_value", "shape_of", "to_expr", "same", "prod", "hint", "find_shape_env", "is_tensor_node"]


def example_value(node):
    """The fake/example value Dynamo (``example_value``) or make_fx (``val``) recorded."""
    if not isinstance(node, Node):
        return None
    return node.meta.get("example_value", node.meta.get("val"))


def is_tensor_node(node) -> bool:
    return isinstance(example_value(node), torch.Tensor)


def to_expr(size) -> sympy.Expr:
    if isinstance(size, torch.SymInt):
        return sympy.sympify(size.node.expr)
    return sympy.Integer(int(size))


def shape_of(node) -> tuple[sympy.Expr, ...] | None:
    """Sizes of a tensor-valued node as sympy expressions, or None if it is not a tensor."""
    v = example_value(node)
    if not isinstance(v, torch.Tensor):
        return None
    return tuple(to_expr(s) for s in v.shape)


def same(a, b) -> bool:
    """True only when the two sizes are provably equal for every value of the symbols."""
    return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0


def prod(xs) -> sympy.Expr:
    out = sympy.Integer(1)
    for x in xs:
        out = out * x
    return sympy.expand(out)


def find_shape_env(graph):
    """The ShapeEnv behind a graph's SymInts (None for a static graph)."""
    for node in graph.nodes:
        v = example_value(node)
        vals = v if isinstance(v, (tuple, list)) else (v,)
        for t in vals:
            sizes = t.shape if isinstance(t, torch.Tensor) else (t,)
            for s in sizes:
                if isinstance(s, torch.SymInt):
                    return s.node.shape_env
    return None


def hint(expr, shape_env=None) -> int | None:
    """A concrete value for a size expression (the example's value), without adding guards."""
    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr)
    if shape_env is None:
        return None
    try:
        fn = getattr(shape_env, "optimization_hint", None) or shape_env.size_hint  # torch 2.11 has no optimization_hint
        return int(fn(expr))
    except Exception:  # an unbacked symbol has no hint
        return None
