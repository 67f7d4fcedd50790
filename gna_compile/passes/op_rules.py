"""The per-op token rules: how each output dim of an ATen op relates to its inputs' dims.

One table serves both analyses. Layout inference (:mod:`provenance`) reads it backwards
("where did this dim come from"); permutation hoisting reads it forwards ("may tokens stay in
tiled order through this op"). For every output dim a rule gives one :class:`Src`:

- ``same``: the output index along this dim is the index along each listed input dim (the
  non-broadcast operands). ``equivariant`` says whether permuting that dim of every listed
  input permutes the output the same way (pointwise ops, reductions over other dims, matmul
  rows: yes; cumsum, a scatter along the dim, layer-norm's feature dims: no).
- ``reshape``: a view/reshape of input 0 (all dims at once, by the reshape algebra).
- ``cat`` / ``slice``: a concatenation of input dims / a sub-range of one.
- ``conv``: a spatial output dim of a convolution (a new image/video axis).
- ``bcast``: a dim expanded from size 1 (every index holds the same values).
- ``fresh``: anything else (an axis with no known relation to any input).

An op missing from the table has no rule: every output dim is fresh for the layout, and the
op is a region boundary for hoisting. Rules only state what the op's definition guarantees.

A second, separate table (:func:`order_free_reductions`) names the operand dims an op reduces
as one index, symmetrically: the weight gradients of a backward (``mm(x.t(), grad)``, a bias
gradient's ``sum`` over tokens). Permuting every dim of such a group by one permutation leaves
the outputs unchanged; hoisting may then feed the group tiled tokens, all in one layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch
from torch.fx import Node

from .ops import GETITEM, args_of, op_key
from .symbolic import nonneg, same, shape_of, to_expr, val

__all__ = ["Src", "rule", "order_free_reductions", "slice_write", "uniform", "norm_dim", "slice_bound"]


@dataclass(frozen=True)
class Src:
    kind: str                     # same | reshape | cat | slice | conv | bcast | fresh
    inputs: tuple = ()            # ((node, dim), ...); reshape: ((node, None),)
    start: object = None          # slice: sympy bounds in the input dim
    stop: object = None
    equivariant: bool = True      # same: may the dim be permuted through the op


FRESH = Src("fresh")
CONV = Src("conv")
BCAST = Src("bcast")

def norm_dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def _dims_list(d, rank):
    if d is None or (isinstance(d, (list, tuple)) and len(d) == 0):  # no dims: all of them
        return list(range(rank))
    if isinstance(d, int):
        d = [d]
    return sorted({norm_dim(int(x), rank) for x in d})


def _broadcast_same(node: Node, out_shape, operands, equivariant=True) -> list[Src]:
    """Pointwise with broadcasting: output dim j is operand dim j' (right-aligned) for every
    operand whose size there equals the output's (size-1 operands are broadcast)."""
    rank = len(out_shape)
    srcs = []
    for j in range(rank):
        ins = []
        for x in operands:
            s = shape_of(x)
            if s is None:
                continue
            d = j - (rank - len(s))
            if d >= 0 and not same(s[d], 1) and same(s[d], out_shape[j]):
                ins.append((x, d))
        srcs.append(Src("same", tuple(ins), equivariant=equivariant) if ins else BCAST)
    return srcs


def _tensor_operands(a: dict) -> list[Node]:
    out = []
    for v in a.values():
        if isinstance(v, Node) and isinstance(shape_of(v), tuple):
            out.append(v)
    return out


# -- rule builders ---------------------------------------------------------------------------

def _pointwise(node, a, outs):
    return [_broadcast_same(node, outs[0], _tensor_operands(a))]


def _identity(node, a, outs):
    x = next(iter(a.values()))
    return [[Src("same", ((x, j),)) for j in range(len(outs[0]))]]


def _reshape(node, a, outs):
    x = a.get("self", next(iter(a.values())))
    return [[Src("reshape", ((x, None),)) for _ in outs[0]]]


def _permute(node, a, outs):
    x, dims = a["self"], a["dims"]
    rank = len(outs[0])
    return [[Src("same", ((x, norm_dim(int(dims[j]), rank)),)) for j in range(rank)]]


def _transpose(node, a, outs):
    x = a["self"]
    rank = len(outs[0])
    d0, d1 = norm_dim(int(a["dim0"]), rank), norm_dim(int(a["dim1"]), rank)
    perm = list(range(rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return [[Src("same", ((x, perm[j]),)) for j in range(rank)]]


def _t(node, a, outs):
    x = a["self"]
    rank = len(outs[0])
    return [[Src("same", ((x, rank - 1 - j),)) for j in range(rank)]] if rank == 2 else _identity(node, a, outs)


def _expand(node, a, outs):
    x = a["self"]
    ins, out = shape_of(x), outs[0]
    lead = len(out) - len(ins)
    srcs = []
    for j in range(len(out)):
        d = j - lead
        if d < 0:
            srcs.append(BCAST)
        elif same(ins[d], 1) and not same(out[j], 1):
            srcs.append(BCAST)
        else:
            srcs.append(Src("same", ((x, d),)))
    return [srcs]


def _reduced_dim_list(node, a, rank, dim_key="dim"):
    d = a.get(dim_key)
    if op_key(node) in ("aten.any", "aten.all") and isinstance(d, (list, tuple)) and len(d) == 0:
        return []  # any/all over no dims: elementwise, nothing reduced
    return _dims_list(d, rank)


def _reduce(node, a, outs, dim_key="dim", keep_key="keepdim"):
    x = a["self"] if "self" in a else a["input"]
    rank = len(shape_of(x))
    dims = _reduced_dim_list(node, a, rank, dim_key)
    keep = bool(a.get(keep_key, False))
    srcs = []
    for d in range(rank):
        if d in dims:
            if keep:
                srcs.append(BCAST)
        else:
            srcs.append(Src("same", ((x, d),)))
    return [list(srcs) for _ in outs]


def _along(node, a, outs, equivariant: bool):
    """Ops that keep every dim and act along one (softmax: equivariant; cumsum: not)."""
    x = a["self"] if "self" in a else a["input"]
    rank = len(outs[0])
    d = norm_dim(int(a["dim"]), rank) if rank else 0
    return [[Src("same", ((x, j),), equivariant=(equivariant or j != d)) for j in range(rank)]]


def _mm(node, a, outs):
    x, y = a["self"], a["mat2"]
    return [[Src("same", ((x, 0),)), Src("same", ((y, 1),))]]


def _addmm(node, a, outs):
    x, y, bias = a["mat1"], a["mat2"], a["self"]
    srcs = _broadcast_same(node, outs[0], [bias])
    rows = (x, 0)
    cols = (y, 1)
    extra0 = srcs[0].inputs if srcs[0].kind == "same" else ()
    extra1 = srcs[1].inputs if srcs[1].kind == "same" else ()
    return [[Src("same", (rows,) + extra0), Src("same", (cols,) + extra1)]]


def _bmm(node, a, outs):
    x, y = a["self"], a["mat2"]
    return [[Src("same", ((x, 0), (y, 0))), Src("same", ((x, 1),)), Src("same", ((y, 2),))]]


def _baddbmm(node, a, outs):
    x, y, bias = a["batch1"], a["batch2"], a["self"]
    b = _broadcast_same(node, outs[0], [bias])
    ex = [s.inputs if s.kind == "same" else () for s in b]
    return [[Src("same", ((x, 0), (y, 0)) + ex[0]), Src("same", ((x, 1),) + ex[1]),
             Src("same", ((y, 2),) + ex[2])]]


def _convolution(node, a, outs):
    x = a["input"]
    rank = len(outs[0])
    return [[Src("same", ((x, 0),))] + [FRESH] + [CONV] * (rank - 2)]


def _layer_norm(node, a, outs):
    x = a["input"]
    rank = len(shape_of(x))
    k = len(a["normalized_shape"])
    first = [Src("same", ((x, j),), equivariant=j < rank - k) for j in range(rank)]
    stat = [Src("same", ((x, j),)) for j in range(rank - k)] + [BCAST] * k
    return [first, stat, stat]


def _cat(node, a, outs):
    tensors, rank = a["tensors"], len(outs[0])
    d = norm_dim(int(a.get("dim", 0)), rank)
    # torch.cat skips legacy empty 1-D operands; every other operand has the output's rank.
    parts = [t for t in tensors if rank == 1 or not _empty_1d(t)]
    if not all(isinstance(t, Node) and len(shape_of(t) or ()) == rank for t in parts):
        return None
    srcs = []
    for j in range(rank):
        if j == d:
            srcs.append(Src("cat", tuple((t, d) for t in parts if not same(shape_of(t)[d], 0))))
        else:
            srcs.append(Src("same", tuple((t, j) for t in parts)))
    return [srcs]


def _empty_1d(t) -> bool:
    s = shape_of(t)
    return s is not None and len(s) == 1 and same(s[0], 0)


def slice_bound(v, n, default):
    """A slice bound in [0, n] (Python semantics), or None when it cannot be proven."""
    if v is None:
        return default
    if isinstance(v, Node):
        v = val(v)
    if not isinstance(v, (int, torch.SymInt)):
        return None
    e = to_expr(v)
    if e.is_Integer:
        i = int(e)
        if i >= 2 ** 62:  # "to the end"
            return n
        if n.is_Integer:
            i = i + int(n) if i < 0 else i
            return sympy.Integer(min(max(i, 0), int(n)))
        if i < 0:
            e = sympy.expand(n + e)
    if nonneg(e) and nonneg(n - e):
        return e
    return None


def _slice(node, a, outs):
    x, rank = a["self"], len(outs[0])
    d = norm_dim(int(a["dim"]), rank)
    if int(a.get("step", 1)) != 1:
        return [[Src("same", ((x, j),)) if j != d else FRESH for j in range(rank)]]
    n = shape_of(x)[d]
    start, stop = slice_bound(a.get("start"), n, sympy.Integer(0)), slice_bound(a.get("end"), n, n)
    if start is None or stop is None:
        return [[Src("same", ((x, j),)) if j != d else FRESH for j in range(rank)]]
    return [[Src("slice", ((x, d),), start, stop) if j == d else Src("same", ((x, j),))
             for j in range(rank)]]


def _select(node, a, outs):
    x = a["self"]
    rank = len(shape_of(x))
    d = norm_dim(int(a["dim"]), rank)
    return [[Src("same", ((x, j),)) for j in range(rank) if j != d]]


def _split(node, a, outs):
    x = a["self"]
    rank = len(shape_of(x))
    d = norm_dim(int(a.get("dim", 0)), rank)
    result, start = [], sympy.Integer(0)
    for o in outs:
        n = o[d]
        stop = sympy.expand(start + n)
        result.append([Src("slice", ((x, d),), start, stop) if j == d else Src("same", ((x, j),))
                       for j in range(rank)])
        start = stop
    return result


def _unbind(node, a, outs):
    x = a["self"]
    rank = len(shape_of(x))
    d = norm_dim(int(a.get("dim", 0)), rank)
    return [[Src("same", ((x, j),)) for j in range(rank) if j != d] for _ in outs]


def _index_select(node, a, outs):
    x = a["self"]
    rank = len(outs[0])
    d = norm_dim(int(a["dim"]), rank)
    return [[Src("same", ((x, j),)) if j != d else FRESH for j in range(rank)]]


def _embedding(node, a, outs):
    idx = a["indices"]
    k = len(shape_of(idx))
    return [[Src("same", ((idx, j),)) for j in range(k)] + [FRESH]]


def _slice_scatter(node, a, outs):
    base, src, rank = a["self"], a["src"], len(outs[0])
    d = norm_dim(int(a.get("dim", 0)), rank)
    return [[Src("same", ((base, j),), equivariant=False) if j == d else Src("same", ((base, j), (src, j)))
             for j in range(rank)]]


def _select_scatter(node, a, outs):
    base, src, rank = a["self"], a["src"], len(outs[0])
    d = norm_dim(int(a["dim"]), rank)
    srcs = []
    for j in range(rank):
        if j == d:
            srcs.append(Src("same", ((base, j),), equivariant=False))
        else:
            srcs.append(Src("same", ((base, j), (src, j - (j > d)))))
    return [srcs]


def _copy(node, a, outs):
    """copy(self, src): every value comes from src (broadcast to self's shape); self gives
    the shape only, so its positions say nothing about the output's."""
    return [_broadcast_same(node, outs[0], [a["src"]])]


def _like(node, a, outs):
    return _identity(node, {"self": a["self"]}, outs)


def _reorder(node, a, outs, key="dims"):
    """flip / rev / roll: positions along the given dims move (fresh axes); others stay."""
    x, rank = a["self"] if "self" in a else a["a"], len(outs[0])
    dims = {norm_dim(int(d), rank) for d in (a[key] if isinstance(a[key], (list, tuple)) else [a[key]])}
    if not dims:  # roll without dims rolls the flattened tensor: every position moves
        dims = set(range(rank))
    return [[FRESH if j in dims else Src("same", ((x, j),)) for j in range(rank)]]


def _view_as_real(node, a, outs):
    x = a["self"]
    rank = len(shape_of(x))
    return [[Src("same", ((x, j),)) for j in range(rank)] + [FRESH]]


def _pad(node, a, outs):
    x, pad, rank = a["self"], list(a["pad"]), len(outs[0])
    padded = {rank - 1 - i // 2 for i, p in enumerate(pad) if not (isinstance(p, int) and p == 0)}
    return [[FRESH if j in padded else Src("same", ((x, j),)) for j in range(rank)]]


def _sdpa_site(node, a, outs):
    q, v = a["q"], a["v"]
    return [[Src("same", ((q, 0),)), Src("same", ((q, 1),)), Src("same", ((q, 2),)), Src("same", ((v, 3),))]]


def _gna(node, a, outs):
    q, v = a["q"], a["v"]
    return [[Src("same", ((q, 0),)), Src("same", ((q, 1),)), Src("same", ((q, 2),), equivariant=False),
             Src("same", ((v, 3),))]]


_REDUCTIONS = {
    "aten.sum": {}, "aten.mean": {}, "aten.amax": {}, "aten.amin": {}, "aten.prod": {},
    "aten.any": {}, "aten.all": {}, "aten.var": {}, "aten.std": {}, "aten.var_mean": {},
    "aten.std_mean": {}, "aten.logsumexp": {}, "aten.argmax": {}, "aten.argmin": {},
    "aten.max": {}, "aten.min": {}, "aten.linalg_vector_norm": {"dim_key": "dim"},
}

_TABLE = {
    "aten.view": _reshape, "aten._unsafe_view": _reshape, "aten.reshape": _reshape,
    "aten.unsqueeze": _reshape, "aten.squeeze": _reshape, "aten.flatten": _reshape,
    "aten.unflatten": _reshape, "aten.view_copy": _reshape,
    "aten.permute": _permute, "aten.transpose": _transpose, "aten.t": _t,
    "aten.expand": _expand,
    "aten.clone": _identity, "aten._to_copy": _identity, "aten.alias": _identity,
    "aten.lift_fresh_copy": _identity, "aten.detach": _identity, "aten.contiguous": _identity,
    "aten.real": _identity, "aten.imag": _identity, "aten._conj": _identity,
    "prims.convert_element_type": _identity,
    "aten.fill": _like, "aten.zeros_like": _like, "aten.ones_like": _like,
    "aten.full_like": _like, "aten.empty_like": _like,
    "aten.masked_fill": _pointwise, "aten.copy": _copy,
    "aten.mm": _mm, "aten.addmm": _addmm, "aten.bmm": _bmm, "aten.baddbmm": _baddbmm,
    "aten.convolution": _convolution,
    "aten.native_layer_norm": _layer_norm,
    "aten._softmax": lambda n, a, o: _along(n, a, o, equivariant=True),
    "aten._log_softmax": lambda n, a, o: _along(n, a, o, equivariant=True),
    "aten.cumsum": lambda n, a, o: _along(n, a, o, equivariant=False),
    "aten.cat": _cat, "aten.slice": _slice, "aten.select": _select,
    "aten.split": _split, "aten.split_with_sizes": _split, "aten.unbind": _unbind,
    "aten.index_select": _index_select, "aten.embedding": _embedding,
    "aten.slice_scatter": _slice_scatter, "aten.select_scatter": _select_scatter,
    "aten.view_as_real": _view_as_real, "aten.constant_pad_nd": _pad,
    "aten.flip": _reorder, "prims.rev": _reorder,
    "aten.roll": lambda n, a, o: _reorder(n, a, o, key="dims"),
    "gna_compile.sdpa_site": _sdpa_site, "gna_compile.gna_attention": _gna,
}


def _out_shapes(node):
    v = val(node)
    if isinstance(v, torch.Tensor):
        return [shape_of(node)]
    if isinstance(v, (tuple, list)):
        return [tuple(to_expr(s) for s in t.shape) if isinstance(t, torch.Tensor) else None for t in v]
    return None


def rule(node: Node):
    """Per output, per output dim, a :class:`Src`; None if the op has no rule (unknown op,
    arguments a rule does not cover)."""
    key = op_key(node)
    if key is None or key == GETITEM:
        return None
    outs = _out_shapes(node)
    if not outs or any(o is None for o in outs):
        return None
    try:
        a = args_of(node)
        if key in _REDUCTIONS:
            r = _reduce(node, a, outs, **_REDUCTIONS[key])
        else:
            fn = _TABLE.get(key)
            if fn is None:
                if not (torch.Tag.pointwise in node.target.tags and len(outs) == 1):
                    return None
                fn = _pointwise
            r = fn(node, a, outs)
        if r is None or len(r) != len(outs) or any(len(s) != len(o) for s, o in zip(r, outs)):
            return None  # the rule misreads the op: say nothing
        return r
    except (KeyError, TypeError, ValueError, IndexError):
        return None  # arguments this rule does not understand: no rule


# -- reductions that ignore the order of the reduced index ------------------------------------

# Symmetric functions of the values along the reduced dims (argmax/argmin, max/min with their
# indices, cumulative ops are not: their results name positions).
_SYMMETRIC = ("aten.sum", "aten.mean", "aten.amax", "aten.amin", "aten.prod", "aten.any", "aten.all",
              "aten.var", "aten.std", "aten.var_mean", "aten.std_mean", "aten.logsumexp",
              "aten.linalg_vector_norm")


def _reduced_dims(node, a):
    x = a["self"] if "self" in a else a["input"]
    return [((x, d),) for d in _reduced_dim_list(node, a, len(shape_of(x)))]


def _contracted(x_key, x_dim, y_key, y_dim):
    def groups(node, a):
        return [((a[x_key], x_dim), (a[y_key], y_dim))]
    return groups


_ORDER_FREE = {**{k: _reduced_dims for k in _SYMMETRIC},
               "aten.mm": _contracted("self", 1, "mat2", 0),     # sum_k a[i, k] b[k, j]
               "aten.bmm": _contracted("self", 2, "mat2", 1)}


def order_free_reductions(node: Node) -> list[tuple]:
    """The groups ``((input, dim), ...)`` of operand dims that ``node`` reduces as one index
    and symmetrically: permuting all dims of a group by one permutation (applied alike to
    each) leaves every output unchanged. Empty for every other op and for arguments this
    table does not understand. A group says nothing about operands or dims not listed in it."""
    fn = _ORDER_FREE.get(op_key(node))
    if fn is None:
        return []
    try:
        a = args_of(node)
        groups = fn(node, a)
    except (KeyError, TypeError, ValueError, IndexError):
        return []
    if not all(isinstance(x, Node) and isinstance(shape_of(x), tuple) for g in groups for x, _ in g):
        return []
    return groups


def slice_write(node: Node):
    """``(base, src, dim, start, stop)`` of a ``slice_scatter`` with step 1 and bounds proven
    to span exactly src's size along ``dim`` (the output is src on ``[start, stop)`` of
    ``dim`` and base everywhere else); None for every other node. ``dim`` is normalized."""
    if op_key(node) != "aten.slice_scatter":
        return None
    try:
        a = args_of(node)
        base, src = a["self"], a["src"]
        rank = len(shape_of(base))
        d = norm_dim(int(a.get("dim", 0)), rank)
        if int(a.get("step", 1)) != 1 or len(shape_of(src)) != rank:
            return None
        n = shape_of(base)[d]
        start = slice_bound(a.get("start"), n, sympy.Integer(0))
        stop = slice_bound(a.get("end"), n, n)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    if start is None or stop is None or not same(stop - start, shape_of(src)[d]):
        return None
    return base, src, d, start, stop


_FILLS = ("aten.full", "aten.zeros", "aten.ones", "aten.new_full", "aten.new_zeros", "aten.new_ones")


def uniform(node: Node) -> bool:
    """Whether every element of the node's output holds one value (a fill of a given shape:
    not ``empty``, whose elements are undefined, nor a ``*_like`` of another tensor)."""
    if op_key(node) not in _FILLS or not isinstance(val(node), torch.Tensor):
        return False
    fill = args_of(node).get("fill_value", 0)
    return not isinstance(fill, Node)
