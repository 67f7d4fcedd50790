"""Interpret an SDPA ``attn_mask`` as a key padding mask, and prove where it is all True.

A boolean mask that broadcasts over heads and queries (``[B, 1, 1, N]``, ``[1, N]``, ...)
only removes keys, which the GNA op supports as ``key_mask``. Anything else (float bias,
per-query masks) is left dense. ``keys_unmasked`` tries to prove from the graph that the mask
is True on a range of key positions (the spatial grid), e.g. HunyuanVideo's
``ones(B, N).masked_fill(arange(N) >= L + text_lengths, False)``: with ``L`` the grid size and
text lengths ``>= 0`` no grid key is ever masked, so the kernel need only mask text tiles.
"""

from __future__ import annotations

import sympy
import torch
from torch.fx import Node

from .layout import reshape_map
from .ops import arg, norm_dim, op_name
from .symbolic import example_value, same, shape_of, to_expr

__all__ = ["key_mask_problem", "keys_unmasked"]

_INF = sympy.oo


def key_mask_problem(mask, q_shape, k_shape) -> str | None:
    """None if ``mask`` is a key padding mask for this call, else why it is not."""
    val = example_value(mask) if isinstance(mask, Node) else mask
    if not isinstance(val, torch.Tensor):
        return f"attn_mask of type {type(mask).__name__} is not a graph tensor"
    if val.dtype != torch.bool:
        return f"attn_mask is {val.dtype} (an additive bias), not a boolean key mask"
    shape = [to_expr(s) for s in val.shape]
    if not shape or not same(shape[-1], k_shape[2]):
        return f"attn_mask {tuple(val.shape)} does not end in the key count"
    lead = shape[:-1]
    full = [sympy.Integer(1)] * (4 - len(shape)) + lead  # broadcast to [B, H, L]
    if not (same(full[1], 1) and same(full[2], 1)):
        return f"attn_mask {tuple(val.shape)} depends on the head or query (not a key padding mask)"
    if not (same(full[0], 1) or same(full[0], q_shape[0])):
        return f"attn_mask {tuple(val.shape)} batch does not match q"
    return None


def keys_unmasked(mask: Node, lo, hi) -> bool:
    """True only if the graph proves ``mask[..., lo:hi]`` is True everywhere."""
    shape = shape_of(mask)
    return shape is not None and _all(mask, len(shape) - 1, lo, hi, True)


def _key_src(node, x, d):
    """The dim of ``x`` that is key dim ``d`` of ``node`` (a reshape/unsqueeze/expand)."""
    src = reshape_map(shape_of(x), shape_of(node), d)
    return src[0] if src is not None and len(src) == 1 else None


def _all(node, d, lo, hi, value: bool) -> bool:
    """Is ``node`` (bool) equal to ``value`` at key positions [lo, hi) of dim ``d``?
    ``d`` None means: everywhere."""
    if not isinstance(node, Node):
        return isinstance(node, (bool, int)) and bool(node) == value
    name, shape = op_name(node), shape_of(node)
    if shape is None:
        return False
    x = node.args[0] if node.args else None
    if name == "getitem" and _is_view_index(node.args[1]):
        name = "view"
    if name in ("ones", "new_ones", "ones_like"):
        return value
    if name in ("zeros", "new_zeros", "zeros_like"):
        return not value
    if name in ("full", "new_full", "full_like"):
        fill = arg(node, 1 if name != "new_full" else 2, "fill_value")
        return isinstance(fill, (bool, int, float)) and bool(fill) == value
    if name in ("bool", "to", "contiguous", "clone"):
        v = example_value(x)
        return isinstance(v, torch.Tensor) and v.dtype == torch.bool and _all(x, d, lo, hi, value)
    if name in ("unsqueeze", "view", "reshape", "expand", "squeeze", "flatten"):
        if name == "view" and not isinstance(x, Node):
            return False
        if d is None:
            return _all(x, None, lo, hi, value)
        src = _key_src(node, x, d) if name != "expand" else d - (len(shape) - len(shape_of(x)))
        return src is not None and _all(x, src, lo, hi, value)
    if name == "masked_fill":
        fill = node.args[2] if len(node.args) > 2 else node.kwargs.get("value")
        if not isinstance(fill, (bool, int, float)):
            return False
        if bool(fill) == value:  # filled entries already have the value
            return _all(x, d, lo, hi, value)
        cond = node.args[1]
        return _all(x, d, lo, hi, value) and _all(cond, _bd(node, cond, d), lo, hi, False)
    if name in ("and_", "logical_and", "__and__", "or_", "logical_or", "__or__"):
        a, b = node.args[0], node.args[1]
        both = name in ("and_", "logical_and", "__and__")
        ra, rb = (_all(t, _bd(node, t, d), lo, hi, value) for t in (a, b))
        return (ra and rb) if both == value else (ra or rb)
    if name in ("ge", "gt", "le", "lt"):
        a, b = node.args[0], node.args[1]
        ba, bb = _bounds(a, _bd(node, a, d), lo, hi), _bounds(b, _bd(node, b, d), lo, hi)
        if ba is None or bb is None:
            return False
        if name in ("lt", "le"):  # a < b  ==  b > a
            (ba, bb), name = (bb, ba), {"lt": "gt", "le": "ge"}[name]
        strict = name == "gt"
        if value:  # a >= b for all: min(a) >= max(b)
            return _true(ba[0] > bb[1]) if strict else _true(ba[0] >= bb[1])
        return _true(ba[1] <= bb[0]) if strict else _true(ba[1] < bb[0])
    if name == "cat":
        tensors, cd = node.args[0], norm_dim(arg(node, 1, "dim", 0), len(shape))
        if d is None or cd != d:
            return all(_all(t, d, lo, hi, value) for t in tensors)
        pos = sympy.Integer(0)
        for t in tensors:
            n = shape_of(t)[d]
            a, b = sympy.Max(lo, pos) - pos, sympy.Min(hi, pos + n) - pos
            if not _true(b <= a) and not _all(t, d, a, b, value):
                return False
            pos = pos + n
        return True
    return False


def _is_view_index(idx) -> bool:
    """x[:, None, None, :]-style indexing: only full slices, None and Ellipsis (a reshape)."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    return all(i is None or i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in idx)


def _bd(node, operand, d):
    """The key dim of a broadcast operand (None when it is broadcast along keys)."""
    if d is None or not isinstance(operand, Node) or shape_of(operand) is None:
        return None
    s, out = shape_of(operand), shape_of(node)
    od = d - (len(out) - len(s))
    if od < 0 or same(s[od], 1):
        return None
    return od


def _true(expr) -> bool:
    """Provably true (an undecided symbolic comparison counts as not proven)."""
    return expr is True or expr is sympy.true


def _bounds(node, d, lo, hi):
    """(min, max) of an integer tensor or number over key positions [lo, hi); None if unknown."""
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return (sympy.sympify(node), sympy.sympify(node))
    if not isinstance(node, Node):
        return None
    v = example_value(node)
    if isinstance(v, (int, torch.SymInt)):
        e = to_expr(v)
        return (e, e)
    name, shape = op_name(node), shape_of(node)
    if shape is None:
        return None
    x = node.args[0] if node.args else None
    if name == "arange":
        args = [a for a in node.args]
        start, end = (0, args[0]) if len(args) == 1 else (args[0], args[1]) if len(args) >= 2 else \
            (node.kwargs.get("start", 0), node.kwargs.get("end"))
        if arg(node, 2, "step", 1) != 1 or end is None:
            return None
        start = _bounds(start, None, lo, hi)
        if start is None or not same(start[0], start[1]):
            return None
        s0 = start[0]
        return (s0 + lo, s0 + hi - 1) if d is not None else (s0, s0 + shape[0] - 1)
    if name in ("unsqueeze", "view", "reshape", "expand", "to", "int", "long", "float"):
        if d is None or name in ("to", "int", "long", "float"):
            return _bounds(x, d, lo, hi)
        src = _key_src(node, x, d) if name != "expand" else d - (len(shape) - len(shape_of(x)))
        return None if src is None else _bounds(x, src, lo, hi)
    if name in ("add", "sub"):
        a, b = node.args[0], node.args[1]
        ba, bb = _bounds(a, _bd(node, a, d), lo, hi), _bounds(b, _bd(node, b, d), lo, hi)
        if ba is None or bb is None:
            return None
        return (ba[0] + bb[0], ba[1] + bb[1]) if name == "add" else (ba[0] - bb[1], ba[1] - bb[0])
    if name == "sum":  # a sum of non-negative values (e.g. a bool mask) is >= 0
        xv = example_value(x)
        if isinstance(xv, torch.Tensor) and xv.dtype == torch.bool:
            return (sympy.Integer(0), _INF)
        bx = _bounds(x, None, lo, hi)
        return (sympy.Integer(0), _INF) if bx is not None and _true(bx[0] >= 0) else None
    return None
