"""Provenance of tensor dims: which source axes, in which order, each dim is made of.

Every dim of every tensor in an ATen graph is a row-major product of *factors*:

- :class:`Piece` of an :class:`Atom`: an atom is an axis born at one output dim of one node
  (a convolution's spatial output dim, a graph input's dim, a dim no rule explains); a piece
  is a sub-axis of it, ``index = (atom_index // inner) % size`` (a whole atom: ``inner=1``,
  ``size=atom.size``). Reshapes split and merge pieces; adjacent pieces of one atom in order
  fuse back, so a view that splits an axis and a view that restores it cancel.
- :class:`Cat`: a concatenation of dims (text tokens + image tokens).

Two dims are the same axis only when their factors are the same atoms in the same order:
sizes never prove anything. Where the op table (:mod:`op_rules`) has no rule, or operands
disagree, the dim becomes a fresh atom of that node, which is spatial to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy
import torch
from torch.fx import Node

from .op_rules import rule
from .ops import GETITEM, op_key
from .symbolic import divides, nonneg, same, shape_of, val

__all__ = ["Atom", "Piece", "Cat", "Provenance", "factor_size", "dim_size", "format_dim",
           "SPATIAL_KINDS"]

# Atom kinds. conv: a convolution's spatial output dim; image: dim >= 2 of a rank-4/5 graph
# input (channels-first); resample: a spatial dim of an interpolation; input: another dim of
# a graph input; leaf: a dim of a parameter, buffer or constant; bcast: expanded from size 1;
# fresh: born at an op (no rule, or disagreeing operands).
SPATIAL_KINDS = ("conv", "image", "resample")
_PRIORITY = {"conv": 0, "image": 1, "resample": 2}
_RESAMPLE = {"aten.upsample_nearest1d", "aten.upsample_nearest2d", "aten.upsample_nearest3d",
             "aten._upsample_nearest_exact1d", "aten._upsample_nearest_exact2d",
             "aten._upsample_nearest_exact3d", "aten.upsample_bilinear2d", "aten.upsample_bicubic2d",
             "aten.upsample_trilinear3d", "aten.upsample_linear1d"}


@dataclass(frozen=True)
class Atom:
    node: Node
    out: int
    dim: int
    kind: str = field(compare=False)
    size: sympy.Expr = field(compare=False)
    data: bool = field(compare=False, default=True)  # depends on a (non-parameter) graph input

    def __repr__(self):
        return f"{self.node.name}[{self.dim}]"


@dataclass(frozen=True)
class Piece:
    atom: Atom
    size: sympy.Expr
    inner: sympy.Expr

    @property
    def whole(self) -> bool:
        return same(self.inner, 1) and same(self.size, self.atom.size)

    @property
    def outer(self) -> bool:
        """The outermost sub-axis of its atom (a coarser grid: patch coordinates)."""
        return same(self.size * self.inner, self.atom.size)


@dataclass(frozen=True)
class Cat:
    parts: tuple  # tuple of dims (each a tuple of factors), in order

    @property
    def lengths(self) -> tuple:
        return tuple(dim_size(p) for p in self.parts)


def factor_size(f) -> sympy.Expr:
    if isinstance(f, Piece):
        return f.size
    return sympy.expand(sum(f.lengths, sympy.Integer(0)))


def dim_size(d) -> sympy.Expr:
    out = sympy.Integer(1)
    for f in d:
        out = out * factor_size(f)
    return sympy.expand(out)


def atoms_of(d):
    """Every atom a dim's factors come from (through concatenations)."""
    for f in d:
        if isinstance(f, Piece):
            yield f.atom
        else:
            for p in f.parts:
                yield from atoms_of(p)


def format_dim(d) -> str:
    parts = []
    for f in d:
        if isinstance(f, Piece):
            s = f"{f.atom!r}" if f.whole else f"{f.atom!r}/{f.inner}" if f.outer else f"{f.atom!r}%{f.size}"
            parts.append(s)
        else:
            parts.append("cat(" + " | ".join(format_dim(p) for p in f.parts) + ")")
    return "x".join(parts) or "1"


def normalize(factors) -> tuple:
    """Drop size-1 factors, splice single-Cat parts, fuse adjacent pieces of one atom."""
    out = []
    for f in factors:
        if same(factor_size(f), 1):
            continue
        if isinstance(f, Cat):
            parts = []
            for p in f.parts:
                p = normalize(p)
                if same(dim_size(p), 0):
                    continue
                if len(p) == 1 and isinstance(p[0], Cat):
                    parts.extend(p[0].parts)
                else:
                    parts.append(p)
            if len(parts) == 1:
                out.extend(parts[0])
                continue
            f = Cat(tuple(parts))
        if out and isinstance(f, Piece) and isinstance(out[-1], Piece):
            prev = out[-1]
            if prev.atom == f.atom and same(prev.inner, f.size * f.inner):
                out[-1] = Piece(f.atom, sympy.expand(prev.size * f.size), f.inner)
                continue
        out.append(f)
    return tuple(out)


def regroup(factors, out_shape):
    """Reshape algebra: the input's factors (row-major over all its dims) regrouped into the
    output dims; a factor is split into outer/inner pieces where an output boundary cuts it.
    Returns one dim per output dim, None for dims that cannot be matched (a Cat cut in two,
    sizes that do not divide provably)."""
    queue = [f for f in factors if not same(factor_size(f), 1)]
    result, failed = [], False
    for S in out_shape:
        if failed:
            result.append(None)
            continue
        need, acc = sympy.sympify(S), []
        while not same(need, 1):
            if not queue:
                failed = True
                break
            f = queue[0]
            fs = factor_size(f)
            q = divides(fs, need)
            if q is not None:
                acc.append(f)
                queue.pop(0)
                need = q
                continue
            r = divides(need, fs)
            if r is not None and isinstance(f, Piece):
                acc.append(Piece(f.atom, need, sympy.expand(f.inner * r)))
                queue[0] = Piece(f.atom, r, f.inner)
                need = sympy.Integer(1)
                continue
            failed = True
            break
        result.append(None if failed else normalize(acc))
    return result


def _candidates_agree(cands):
    """The one dim several operands of a pointwise op agree on, or None (see Provenance)."""
    first = cands[0]
    if all(c == first for c in cands):
        return first
    # Different atoms, same grid: accept only spatial axes that play the same role in the
    # same positions (the same dim of their tensors, the same sizes and pieces: latents and a
    # padding mask resized to them; two convolutions of one image), no atom in two positions.
    n = len(first)
    if not all(len(c) == n for c in cands):
        return None
    seen: dict = {}
    for c in cands:
        for i, f in enumerate(c):
            g = first[i]
            if not (isinstance(f, Piece) and isinstance(g, Piece) and f.atom.kind in SPATIAL_KINDS
                    and (f.whole or f.outer)):
                return None
            if f.atom.dim != g.atom.dim or not same(f.size, g.size) or not same(f.inner, g.inner):
                return None
            if seen.setdefault(f.atom, i) != i:
                return None
    return min(cands, key=lambda c: min(_PRIORITY[f.atom.kind] for f in c))


class Provenance:
    """Memoized factorization of every dim of every tensor in one ATen graph.

    ``input_kinds`` maps placeholder nodes to "input" (data) or "leaf" (parameter/buffer).
    Nodes are factorized in graph (topological) order, so no recursion runs deep."""

    def __init__(self, graph, input_kinds: dict | None = None):
        self.input_kinds = input_kinds or {}
        self._dims: dict = {}
        self._data: dict = {}
        for n in graph.nodes:  # data dependence, forwards, through tensor values only (sizes are no data)
            if n.op == "placeholder":
                self._data[n] = self.input_kinds.get(n, "input") == "input" and _is_tensor(n)
            else:
                self._data[n] = any(self._data.get(x, False) for x in n.all_input_nodes if _is_tensor(x))
        self._order = list(graph.nodes)
        self._warm = False

    # -- public ------------------------------------------------------------------------------
    @property
    def nodes(self) -> list:
        """The graph's nodes in topological order."""
        return self._order

    def dims(self, node: Node, out: int | None = None):
        """All dims of a tensor output as factor tuples, or None if it is not a tensor."""
        if not self._warm:
            self._warm = True
            for n in self._order:
                self.dims(n)
        key = (node, out)
        if key not in self._dims:
            self._dims[key] = self._compute(node, out)
        return self._dims[key]

    def dim(self, node: Node, d: int, out: int | None = None):
        ds = self.dims(node, out)
        return None if ds is None or d >= len(ds) else ds[d]

    def data_dependent(self, node) -> bool:
        """Does the node's value depend on a (non-parameter) graph input?"""
        return isinstance(node, Node) and self._data.get(node, True)

    # -- internals ---------------------------------------------------------------------------
    def _new(self, node, out, j, size, kind):
        """The dim of a new atom born at ``node``'s output dim ``j``."""
        data = self.data_dependent(node)
        if node.op == "placeholder":
            kind = self.input_kinds.get(node, "input")
            if kind == "input" and len(shape_of(node, out) or ()) in (4, 5) and j >= 2:
                kind = "image"
        elif kind == "fresh" and not data:
            kind = "leaf"
        if same(size, 1):
            return ()
        return (Piece(Atom(node, out or 0, j, kind, size, data), size, sympy.Integer(1)),)

    def _compute(self, node, out):
        shape = shape_of(node, out)
        if shape is None:
            return None

        def new(j, kind="fresh"):
            return self._new(node, out, j, shape[j], kind)

        if op_key(node) == GETITEM:
            base, idx = node.args
            if isinstance(val(base), (tuple, list)) and isinstance(idx, int):
                return self.dims(base, idx)
            return [new(j) for j in range(len(shape))]
        if node.op != "call_function":
            return [new(j) for j in range(len(shape))]
        if op_key(node) in _RESAMPLE:
            x = node.args[0]
            return [self.dim(x, j) or () if j < 2 else new(j, "resample") for j in range(len(shape))]
        r = rule(node)
        if r is None or (out or 0) >= len(r) or len(r[out or 0]) != len(shape):
            return [new(j) for j in range(len(shape))]
        srcs = r[out or 0]
        if srcs and srcs[0].kind == "reshape":
            xin = self.dims(srcs[0].inputs[0][0])
            if xin is None:
                return [new(j) for j in range(len(shape))]
            groups = regroup([f for d in xin for f in d], shape)
            return [g if g is not None else new(j) for j, g in enumerate(groups)]
        out_dims = []
        for j, s in enumerate(srcs):
            d = self._from_src(s, shape)
            if d == "conv" and not _one_axis(self.dim(node.args[0], j)):
                d = "fresh"  # a conv over a flattened grid: its positions are no image axis
            out_dims.append(new(j, d) if isinstance(d, str) else d)
        return out_dims

    def _from_src(self, s, out_shape):
        """The dim a Src describes, or the kind of the new atom to make instead.

        Several operands of a pointwise op index the same positions; the output's index i is
        each operand's index i. Operands whose positions are spatial axes (a convolution's,
        a patchified input's) must agree axis by axis (:func:`_candidates_agree`): H-major
        against W-major is a conflict, and the output is then no grid. Operands of no spatial
        meaning beside them only modulate the values at those positions (a positional
        embedding, a RoPE table, a gate, a mirrored copy: the index stays the spatial
        operand's). Without a spatial operand, the operands that vary along every output dim
        must agree; tables broadcast over a dim (RoPE tables from position-id inputs, [1, N, 1,
        D] against [B, N, H, D]) and operands that depend on no data input are ignored."""
        if s.kind == "same":
            spatial, full, tables, leaves = [], [], [], []
            for x, d in s.inputs:
                dd = self.dim(x, d)
                if dd is None:
                    return "fresh"
                if not dd or all(isinstance(f, Piece) and f.atom.kind == "bcast" for f in dd):
                    continue  # a broadcast operand carries no positions
                if any(a.kind in SPATIAL_KINDS for a in atoms_of(dd)):
                    spatial.append(dd)
                elif not self.data_dependent(x):
                    leaves.append(dd)
                elif _broadcast_over(shape_of(x), out_shape):
                    tables.append(dd)
                else:
                    full.append(dd)
            pool = spatial or full or tables or leaves
            if not pool:
                return "bcast"
            agreed = _candidates_agree(pool)
            return "fresh" if agreed is None else agreed
        if s.kind == "cat":
            parts = [self.dim(x, d) for x, d in s.inputs]
            if any(p is None for p in parts):
                return "fresh"
            return normalize((Cat(tuple(parts)),))
        if s.kind == "slice":
            (x, d), = s.inputs
            dd = self.dim(x, d)
            got = None if dd is None else _slice_dim(dd, s.start, s.stop)
            return "fresh" if got is None else got
        return s.kind  # conv / bcast / fresh: a new atom of this node


def _one_axis(d) -> bool:
    """A dim that is one whole axis (or nothing): what a convolution slides over as a line of
    an image. A dim made of several axes (a flattened grid) or of a piece is not."""
    return d is not None and (len(d) == 0 or (len(d) == 1 and isinstance(d[0], Piece) and d[0].whole))


def _broadcast_over(shape, out_shape) -> bool:
    """Is an operand of this shape broadcast over some dim of the output (lower rank, or size
    1 where the output is larger)?"""
    if shape is None:
        return False
    if len(shape) < len(out_shape):
        return True
    lead = len(shape) - len(out_shape)
    return any(same(a, 1) and not same(b, 1) for a, b in zip(shape[lead:], out_shape))


def _is_tensor(node) -> bool:
    v = val(node)
    return isinstance(v, torch.Tensor) or (isinstance(v, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in v))


def _slice_dim(d, start, stop):
    """Positions [start, stop) of a dim: the dim itself, whole parts of a concatenation, or
    None (a cut through an axis: positions of unknown origin)."""
    n = dim_size(d)
    if same(start, 0) and same(stop, n):
        return d
    if len(d) != 1 or not isinstance(d[0], Cat):
        return None
    pos, picked = sympy.Integer(0), []
    for p in d[0].parts:
        end = sympy.expand(pos + dim_size(p))
        inside = _le(start, pos) and _le(end, stop)
        outside = _le(end, start) or _le(stop, pos)
        if inside:
            picked.append(p)
        elif not outside:
            return None
        pos = end
    if not picked:
        return ()
    return normalize((Cat(tuple(picked)),))


def _le(a, b) -> bool:
    return nonneg(sympy.sympify(b) - sympy.sympify(a))
