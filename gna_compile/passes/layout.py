"""Token-layout inference: where did the sequence dim of q/k come from?

``LayoutTracer.trace(node, dim)`` follows one dim of a tensor backwards through ops that keep
token identity (elementwise, linear, norms, RoPE, dropout), ops that move it (view/reshape/
flatten/unflatten/permute/transpose/squeeze), and ops that split or join token ranges (cat,
split/chunk, slicing). It returns a *layout*: the dim as a sequence of segments, each either a
row-major grid (found where a reshape/flatten merged several dims into the token dim, e.g.
``conv3d(...).flatten(2)``) or opaque tokens. Sizes are sympy expressions, so ``dynamic=True``
graphs are handled; any op not understood ends the trace as opaque tokens, never as a guess.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import sympy
import torch
from torch.fx import Node

from .ops import arg, norm_dim, op_name
from .symbolic import example_value, prod, same, shape_of, to_expr

__all__ = ["Axis", "Segment", "LayoutTracer", "same_layout", "format_layout"]


@dataclass(frozen=True)
class Axis:
    size: sympy.Expr
    origin: Optional[tuple]  # (node, dim) whose size is this axis at run time


@dataclass(frozen=True)
class Segment:
    axes: tuple
    grid: bool  # True: row-major multi-dim grid; False: opaque tokens (one axis)

    @property
    def size(self) -> sympy.Expr:
        return prod(a.size for a in self.axes)


Layout = tuple  # tuple[Segment, ...]

_ELEMENTWISE = {
    "add", "sub", "mul", "truediv", "div", "neg", "pow", "rsqrt", "sqrt", "exp", "log", "sin", "cos",
    "tanh", "sigmoid", "silu", "gelu", "relu", "erf", "abs", "square", "clamp", "dropout", "float",
    "half", "bfloat16", "double", "to", "type", "type_as", "contiguous", "clone", "detach", "rsub",
    "masked_fill", "where", "softmax", "sign", "reciprocal", "add_", "mul_", "lerp", "addcmul",
    "minimum", "maximum", "floordiv", "mod", "fill_", "zero_", "_to_copy",
}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "unsqueeze", "squeeze", "view_as",
            "reshape_as", "_unsafe_view", "_reshape_alias"}
_REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "norm", "logsumexp", "prod", "all", "any"}
_NORMS = {"layer_norm", "rms_norm"}
_SPLITS = {"split", "chunk", "tensor_split", "split_with_sizes", "unbind"}


def same_layout(a, b) -> bool:
    if a is None or b is None or len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.grid != y.grid or len(x.axes) != len(y.axes):
            return False
        if not all(same(p.size, q.size) for p, q in zip(x.axes, y.axes)):
            return False
    return True


def _has_grid(layout) -> bool:
    return any(s.grid for s in layout)


def format_layout(layout) -> str:
    parts = []
    for s in layout:
        sizes = "x".join(str(a.size) for a in s.axes)
        parts.append(f"grid({sizes})" if s.grid else f"tokens({s.size})")
    return " + ".join(parts)


def _le(a, b) -> bool:
    """Provably ``a <= b`` (for every value of the size symbols)."""
    d = sympy.expand(sympy.sympify(b) - sympy.sympify(a))
    return bool(d.is_nonnegative) or (d.is_Integer and int(d) >= 0)


def _slice_layout(layout, start, stop):
    """Tokens ``[start, stop)`` of a layout; None if the cut splits a grid or is undecidable."""
    out, pos = [], sympy.Integer(0)
    for seg in layout:
        end = sympy.expand(pos + seg.size)
        if _le(end, start) or _le(stop, pos):
            pass  # segment outside the slice
        elif _le(start, pos) and _le(end, stop):
            out.append(seg)
        elif seg.grid:
            return None
        else:
            lo = pos if _le(start, pos) else start if _le(pos, start) else None
            hi = end if _le(end, stop) else stop if _le(stop, end) else None
            if lo is None or hi is None:
                return None
            out.append(Segment((Axis(sympy.expand(hi - lo), None),), False))
        pos = end
    return tuple(out)


def reshape_map(in_shape, out_shape, j):
    """Map output dim ``j`` of a reshape to input dims: ``[i]`` (same dim), ``[i..k]`` (merge),
    or None (the output dim is a piece of an input dim)."""
    target, prefix = out_shape[j], prod(out_shape[:j])
    pre, i = sympy.Integer(1), 0
    while not same(pre, prefix):
        if i >= len(in_shape):
            return None
        pre, i = sympy.expand(pre * in_shape[i]), i + 1
    while i < len(in_shape) and same(in_shape[i], 1) and not same(target, 1):
        i += 1
    acc = sympy.Integer(1)
    for k in range(i, len(in_shape)):
        acc = sympy.expand(acc * in_shape[k])
        if same(acc, target):
            return list(range(i, k + 1))
    return None


class LayoutTracer:
    """Memoized backward trace of token dims through one FX graph."""

    def __init__(self):
        self._cache: dict = {}

    def trace(self, node: Node, dim: int):
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20000))
        try:
            return self._trace(node, dim)
        finally:
            sys.setrecursionlimit(limit)

    # -- helpers ---------------------------------------------------------------------------
    def _trace(self, node, dim):
        key = (node, dim)
        if key not in self._cache:
            self._cache[key] = None  # cycle guard (FX graphs are DAGs; this is belt and braces)
            self._cache[key] = self._compute(node, dim)
        out = self._cache[key]
        return out if out is not None else self._leaf(node, dim)

    @staticmethod
    def _leaf(node, dim):
        shape = shape_of(node)
        size = shape[dim] if shape is not None and dim < len(shape) else sympy.Symbol("?")
        return (Segment((Axis(size, (node, dim)),), False),)

    def _first(self, cands):
        """Layouts of several inputs that share the token dim: the first with a grid wins;
        two different grids are a conflict (opaque)."""
        best = None
        for n, d in cands:
            lay = self._trace(n, d)
            if best is None:
                best = lay
            elif _has_grid(lay):
                if not _has_grid(best):
                    best = lay
                elif not same_layout(best, lay):
                    return None
        return best

    def _broadcast(self, node, dim, inputs):
        out_shape = shape_of(node)
        cands = []
        for x in inputs:
            s = shape_of(x)
            if s is None:
                continue
            d = dim - (len(out_shape) - len(s))
            if d >= 0 and same(s[d], out_shape[dim]):
                cands.append((x, d))
        return self._first(cands) if cands else None

    # -- the op table ----------------------------------------------------------------------
    def _compute(self, node, dim):
        name = op_name(node)
        out_shape = shape_of(node)
        if name is None or out_shape is None or same(out_shape[dim], 1):
            return None
        rank = len(out_shape)
        x = node.args[0] if node.args else None
        if name in _ELEMENTWISE:
            tensors = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, Node)]
            return self._broadcast(node, dim, tensors)
        if name in ("expand", "expand_as", "broadcast_to"):
            return self._broadcast(node, dim, [x])
        if name in ("linear", "_C._nn.linear"):
            return self._trace(x, dim) if dim < rank - 1 else None
        if name in ("matmul", "bmm"):
            a, b = node.args[0], node.args[1]
            if dim == rank - 2:
                return self._trace(a, len(shape_of(a)) - 2)
            return self._broadcast(node, dim, [a, b]) if dim < rank - 2 else None
        if name in _NORMS:
            ns = arg(node, 1, "normalized_shape")
            return self._trace(x, dim) if dim < rank - len(ns) else None
        if name in ("sdpa", "gna_attention"):
            q = arg(node, 0, "query")
            return self._trace(q, dim) if dim < 3 else None
        if name in _RESHAPE:
            return self._reshape(x, dim, out_shape)
        if name in ("permute", "transpose", "swapaxes", "t"):
            return self._trace(x, self._perm_src(node, name, dim, rank))
        if name in _REDUCE:
            return self._reduce(node, x, dim)
        if name in ("cat", "concat", "concatenate"):
            return self._cat(node, dim)
        if name == "stack":
            d = norm_dim(arg(node, 1, "dim", 0), rank)
            if dim == d:
                return None
            return self._first([(t, dim if dim < d else dim - 1) for t in node.args[0]])
        if name == "getitem":
            return self._getitem(node, dim)
        if name in ("repeat_interleave", "repeat"):
            return self._repeat(node, name, x, dim)
        return None

    def _repeat(self, node, name, x, dim):
        """Repeating along another dim (GQA head expansion) keeps the token dim."""
        in_shape, out_shape = shape_of(x), shape_of(node)
        if in_shape is None:
            return None
        if name == "repeat_interleave":
            d = arg(node, 2, "dim")
            if d is None or norm_dim(d, len(out_shape)) == dim:
                return None
            return self._trace(x, dim)
        d = dim - (len(out_shape) - len(in_shape))
        return self._trace(x, d) if d >= 0 and same(in_shape[d], out_shape[dim]) else None

    def _perm_src(self, node, name, dim, rank):
        if name == "permute":
            dims = node.args[1:] if len(node.args) > 2 or isinstance(node.args[1], int) else node.args[1]
            if "dims" in node.kwargs:
                dims = node.kwargs["dims"]
            return norm_dim(dims[dim], rank)
        if name == "t":
            a, b = 0, 1
        else:
            a, b = norm_dim(arg(node, 1, "dim0"), rank), norm_dim(arg(node, 2, "dim1"), rank)
        return b if dim == a else a if dim == b else dim

    def _reshape(self, x, dim, out_shape):
        in_shape = shape_of(x)
        if in_shape is None:
            return None
        src = reshape_map(in_shape, out_shape, dim)
        if src is None:
            return None
        src = [i for i in src if not same(in_shape[i], 1)]
        if len(src) == 1:
            return self._trace(x, src[0])
        axes = []
        for i in src:
            sub = self._trace(x, i)
            if len(sub) != 1:  # e.g. text + image tokens merged with another dim: not a grid
                return None
            axes.extend(sub[0].axes)
        return (Segment(tuple(axes), True),)

    def _reduce(self, node, x, dim):
        in_shape = shape_of(x)
        dims = arg(node, 1, "dim")
        if dims is None:
            return None
        dims = sorted(norm_dim(d, len(in_shape)) for d in ((dims,) if isinstance(dims, int) else dims))
        if arg(node, 2, "keepdim", False):
            return None if dim in dims else self._trace(x, dim)
        kept = [i for i in range(len(in_shape)) if i not in dims]
        return self._trace(x, kept[dim])

    def _cat(self, node, dim):
        tensors = arg(node, 0, "tensors")
        rank = len(shape_of(node))
        d = norm_dim(arg(node, 1, "dim", 0), rank)
        tensors = [t for t in tensors if isinstance(t, Node) and shape_of(t) is not None
                   and len(shape_of(t)) == rank]
        if d != dim:
            return self._first([(t, dim) for t in tensors])
        out = []
        for t in tensors:
            if not same(shape_of(t)[dim], 0):
                out.extend(self._trace(t, dim))
        return tuple(out)

    def _getitem(self, node, dim):
        base, idx = node.args
        val = example_value(base)
        if isinstance(val, (tuple, list)):
            return self._split_item(base, idx, dim)
        return self._index(base, idx, dim)

    def _split_item(self, base, idx, dim):
        name = op_name(base)
        if name not in _SPLITS or not isinstance(idx, int):
            return None
        x = base.args[0]
        rank = len(shape_of(x))
        d = norm_dim(arg(base, 2 if name != "unbind" else 1, "dim", 0), rank)
        if name == "unbind":
            return self._trace(x, dim if dim < d else dim + 1)
        if dim != d:
            return self._trace(x, dim)
        outs = example_value(base)
        start = sum((to_expr(outs[i].shape[d]) for i in range(idx)), sympy.Integer(0))
        stop = sympy.expand(start + to_expr(outs[idx].shape[d]))
        return _slice_layout(self._trace(x, d), start, stop)

    def _index(self, base, idx, dim):
        in_shape = shape_of(base)
        if in_shape is None:
            return None
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, (Node, list, torch.Tensor)) for i in idx):
            return None
        n_used = sum(1 for i in idx if i is not None and i is not Ellipsis)
        items = []
        for i in idx:
            if i is Ellipsis:
                items.extend([slice(None)] * (len(in_shape) - n_used))
            else:
                items.append(i)
        items.extend([slice(None)] * (len(in_shape) - sum(1 for i in items if i is not None)))
        in_d = out_d = 0
        for i in items:
            if i is None:
                if out_d == dim:
                    return None
                out_d += 1
            elif isinstance(i, int):
                in_d += 1
            elif isinstance(i, slice):
                if out_d == dim:
                    return self._slice(base, in_d, i, in_shape[in_d])
                in_d, out_d = in_d + 1, out_d + 1
            else:
                return None
        return None

    def _slice(self, base, d, sl, n):
        if sl.step not in (None, 1):
            return None

        def bound(v, default):
            if v is None:
                return default
            if isinstance(v, Node):
                v = example_value(v)
                if not isinstance(v, (int, torch.SymInt)):
                    return None
            e = to_expr(v)
            if e.is_negative:  # python semantics: from the end
                e = sympy.expand(n + e)
            if e.is_Integer and n.is_Integer:
                e = sympy.Integer(min(max(int(e), 0), int(n)))
            return e

        start, stop = bound(sl.start, sympy.Integer(0)), bound(sl.stop, n)
        if start is None or stop is None:
            return None
        layout = self._trace(base, d)
        if same(start, 0) and same(stop, n):
            return layout
        return _slice_layout(layout, start, stop)
