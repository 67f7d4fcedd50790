"""Where the token dim goes through one FX node: the per-op rules of permutation hoisting.

A tensor in a hoisted region carries the token dim at index ``dim``, holding ``pre`` extra
tokens, the grid, and ``suf`` extra tokens, in that order (``TokenDim``). For each op that
treats tokens independently (elementwise, linear and norms over features, reductions over
other dims, views that keep the token dim whole, cat/split/slicing that keep the grid in one
piece, cross-attention from region queries to outside keys) ``forward`` maps an input's token
dim to the output's and ``backward`` maps the output's to each input's. Anything else returns
None: the op is a region boundary. Sizes are concrete ints (static graphs only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.fx import Node

from .ops import arg, norm_dim, op_name
from .symbolic import example_value

__all__ = ["TokenDim", "NEUTRAL", "EXTRAS", "forward", "backward", "is_mutation", "sizes"]


@dataclass(frozen=True)
class TokenDim:
    dim: int
    pre: int
    suf: int


class _Mark:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEUTRAL = _Mark("NEUTRAL")  # input carries no token dim (broadcast or unrelated)
EXTRAS = _Mark("EXTRAS")    # input/output holds extra tokens only: natural order, never permuted

ELEMENTWISE = {
    "add", "sub", "mul", "truediv", "div", "neg", "pow", "rsqrt", "sqrt", "exp", "log", "sin", "cos",
    "tanh", "sigmoid", "silu", "gelu", "relu", "erf", "abs", "square", "clamp", "dropout", "float",
    "half", "bfloat16", "double", "to", "type", "type_as", "contiguous", "clone", "detach", "rsub",
    "where", "masked_fill", "sign", "reciprocal", "lerp", "addcmul", "minimum", "maximum",
    "floordiv", "mod", "_to_copy", "sub", "log1p", "expm1", "softplus", "mish", "hardswish",
}
FEATURE = {"linear", "layer_norm", "rms_norm"}
REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "norm", "logsumexp"}
RESHAPE = {"view", "reshape", "flatten", "unflatten", "_unsafe_view"}
SPLITS = {"split", "chunk", "unbind", "split_with_sizes"}
DIM_WISE = {"flip", "roll", "cumsum", "log_softmax"}


def sizes(node) -> tuple[int, ...] | None:
    v = example_value(node)
    if not isinstance(v, torch.Tensor):
        return None
    try:
        return tuple(int(s) for s in v.shape)
    except (TypeError, ValueError):  # symbolic size
        return None


def is_mutation(node: Node) -> bool:
    name = op_name(node) or ""
    return (name.endswith("_") and not name.startswith("_")) or name in {"iadd", "imul", "isub", "itruediv", "setitem"}


def _length(node, td: TokenDim):
    s = sizes(node)
    return None if s is None or td.dim >= len(s) else s[td.dim]


def _aligned(out_rank: int, out_dim: int, in_rank: int) -> int:
    """Broadcasting aligns dims from the right."""
    return in_rank - (out_rank - out_dim)


# ---- forward: input token dim -> output token dim ------------------------------------------

def forward(node: Node, src: Node, td: TokenDim):
    """Token dim of ``node``'s output given that ``src`` (one of its inputs) carries ``td``.

    Returns a TokenDim, EXTRAS (the output holds extra tokens only), a tuple of those for
    split-like ops (one per output), or None (boundary)."""
    name = op_name(node)
    out, ins = sizes(node), sizes(src)
    if ins is None or is_mutation(node):
        return None
    if name in SPLITS:
        return _split_forward(node, ins, td)
    if out is None:
        return None
    L = ins[td.dim]
    if name in ELEMENTWISE:
        d = len(out) - (len(ins) - td.dim)
        return TokenDim(d, td.pre, td.suf) if d >= 0 and out[d] == L else None
    if name in FEATURE:
        if node.args[0] is not src:
            return None
        nd = 1 if name == "linear" else len(_as_tuple(arg(node, 1, "normalized_shape")))
        return td if td.dim < len(ins) - nd else None
    if name in DIM_WISE:  # act along given dims only: token-wise unless they include it
        dims = arg(node, 1, "dims") if name == "flip" else arg(node, 2 if name == "roll" else 1, "dim")
        if dims is None:
            return None
        dims = [norm_dim(int(d), len(ins)) for d in _as_tuple(dims)]
        return None if td.dim in dims else td
    if name in REDUCE or name == "softmax":
        dims = arg(node, 1, "dim")
        if dims is None:
            return None
        dims = [norm_dim(int(d), len(ins)) for d in _as_tuple(dims)]
        if td.dim in dims:
            return None
        if name == "softmax" or arg(node, 2, "keepdim", False):
            return td
        return TokenDim(td.dim - sum(d < td.dim for d in dims), td.pre, td.suf)
    if name in RESHAPE or name in ("unsqueeze", "squeeze"):
        return _reshape_map(ins, out, td)
    if name == "expand":
        d = td.dim + len(out) - len(ins)
        return TokenDim(d, td.pre, td.suf) if out[d] == L else None
    if name in ("transpose", "swapaxes"):
        a, b = (norm_dim(int(arg(node, i, n)), len(ins)) for i, n in ((1, "dim0"), (2, "dim1")))
        return TokenDim({a: b, b: a}.get(td.dim, td.dim), td.pre, td.suf)
    if name == "permute":
        dims = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (list, tuple)) \
            else (node.args[1:] or arg(node, 1, "dims"))
        dims = [norm_dim(int(d), len(ins)) for d in dims]
        return TokenDim(dims.index(td.dim), td.pre, td.suf)
    if name == "getitem":
        return _getitem_forward(node, ins, td)
    if name == "cat":
        return _cat_forward(node, src, td)
    if name == "stack":  # a new dim: token-wise, the token dim may shift by one
        dim = norm_dim(int(arg(node, 1, "dim", 0)), len(out))
        return TokenDim(td.dim + (dim <= td.dim), td.pre, td.suf)
    if name in ("outer", "ger"):  # RoPE angles: positions x frequencies
        pos = 0 if node.args[0] is src else 1
        return TokenDim(pos, td.pre, td.suf) if td.dim == 0 and len(ins) == 1 else None
    if name == "repeat_interleave":  # e.g. GQA heads: token-wise unless along the token dim
        dim = arg(node, 2, "dim")
        if node.args[0] is not src or dim is None or not isinstance(arg(node, 1, "repeats"), int):
            return None
        return None if norm_dim(int(dim), len(ins)) == td.dim else td
    if name == "sdpa":  # dense attention left in place: token-wise in its queries only
        q, k, v = arg(node, 0, "query"), arg(node, 1, "key"), arg(node, 2, "value")
        mask = arg(node, 3, "attn_mask")
        if src is not q or src is k or src is v or td.dim != len(ins) - 2:
            return None
        if mask is not None and (sizes(mask) is None or sizes(mask)[-2] != 1):
            return None
        return td
    return None


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list, torch.Size)) else (x,)


def _reshape_map(ins, out, td: TokenDim):
    """The token dim survives a reshape iff some output dim has its size and the same number
    of elements before it (so no merge or split touches it)."""
    before = math.prod(ins[:td.dim])
    for e, n in enumerate(out):
        if n == ins[td.dim] and math.prod(out[:e]) == before:
            return TokenDim(e, td.pre, td.suf)
    return None


def _slice_piece(start: int, stop: int, td: TokenDim, L: int):
    """What the range [start, stop) of a token dim of length L holds."""
    g0, g1 = td.pre, L - td.suf
    if stop <= g0 or start >= g1:
        return EXTRAS
    if start <= g0 and stop >= g1:
        return TokenDim(td.dim, g0 - start, stop - g1)
    return None  # cuts through the grid


def _split_forward(node, ins, td: TokenDim):
    name = op_name(node)
    dim = norm_dim(int(arg(node, 1 if name == "unbind" else 2, "dim", 0)), len(ins))
    outs = example_value(node)
    if not isinstance(outs, (tuple, list)):
        return None
    if name == "unbind":
        return None if dim == td.dim else tuple(
            TokenDim(td.dim - (dim < td.dim), td.pre, td.suf) for _ in outs)
    if dim != td.dim:
        return tuple(td for _ in outs)
    pieces, offset = [], 0
    for o in outs:
        n = int(o.shape[dim])
        pieces.append(_slice_piece(offset, offset + n, td, ins[dim]))
        offset += n
    return None if any(p is None for p in pieces) else tuple(pieces)


def _index_plan(idx, rank):
    """Basic indexing only: the index expanded to one entry per input dim (None entries add
    an output dim), or None for advanced indexing."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, (Node, list, torch.Tensor)) for i in idx) or list(idx).count(Ellipsis) > 1:
        return None
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded = []
    for i in idx:
        expanded.extend([slice(None)] * (rank - n_real) if i is Ellipsis else [i])
    expanded += [slice(None)] * (rank - sum(1 for i in expanded if i is not None))
    return expanded


def _dim_map(plan):
    """(input dim, output dim or None where an int index removes it, index) per input dim."""
    out_dim = in_dim = 0
    for i in plan:
        if i is None:
            out_dim += 1
            continue
        yield in_dim, (None if isinstance(i, int) else out_dim), i
        if not isinstance(i, int):
            out_dim += 1
        in_dim += 1


def _getitem_forward(node, ins, td: TokenDim):
    plan = _index_plan(node.args[1], len(ins))
    if plan is None:
        return None
    for in_dim, out_dim, i in _dim_map(plan):
        if in_dim != td.dim:
            continue
        if out_dim is None or not isinstance(i, slice):
            return None
        start, stop, step = i.indices(ins[in_dim])
        if step != 1:
            return None
        piece = _slice_piece(start, stop, td, ins[in_dim])
        return piece if not isinstance(piece, TokenDim) else TokenDim(out_dim, piece.pre, piece.suf)
    return None


def _cat_forward(node, src, td: TokenDim):
    out, ins = sizes(node), sizes(src)
    dim = norm_dim(int(arg(node, 1, "dim", 0)), len(out))
    if dim != td.dim:
        return td if len(ins) == len(out) else None
    offset = 0
    for t in node.args[0]:
        if t is src:
            return TokenDim(dim, offset + td.pre, out[dim] - offset - ins[dim] + td.suf)
        offset += sizes(t)[dim]
    return None


# ---- backward: output token dim -> what each input carries ---------------------------------

def backward(node: Node, td: TokenDim, inp: Node):
    """What input ``inp`` of ``node`` carries when the output has ``td``: a TokenDim, NEUTRAL
    (no token dim: broadcast or unrelated), EXTRAS (extra tokens only), or None (unknown)."""
    name = op_name(node)
    out, ins = sizes(node), sizes(inp)
    if out is None or is_mutation(node):
        return None
    if ins is None:
        return NEUTRAL if not isinstance(example_value(inp), (torch.Tensor, tuple, list)) else None
    L = out[td.dim]
    if name in ELEMENTWISE:
        d = len(ins) - (len(out) - td.dim)
        if d < 0 or ins[d] == 1:
            return NEUTRAL
        return TokenDim(d, td.pre, td.suf) if ins[d] == L else None
    if name in FEATURE or name == "sdpa":
        if inp is not arg(node, 0, "query" if name == "sdpa" else "input"):
            return NEUTRAL  # weights, bias, keys/values of a cross-attention
        return td if forward(node, inp, td) == td else None
    if name == "cat":
        return _cat_backward(node, td, inp)
    if name in ("outer", "ger"):
        pos = 0 if node.args[0] is inp else 1
        return TokenDim(0, td.pre, td.suf) if td.dim == pos else NEUTRAL
    if name == "stack":
        dim = norm_dim(int(arg(node, 1, "dim", 0)), len(out))
        return None if dim == td.dim else TokenDim(td.dim - (dim < td.dim), td.pre, td.suf)
    if name == "getitem":
        return _getitem_backward(node, td, inp, ins)
    if node.args and node.args[0] is inp and (name in RESHAPE or name in REDUCE or name in DIM_WISE or name in (
            "softmax", "unsqueeze", "squeeze", "expand", "transpose", "swapaxes", "permute",
            "repeat_interleave")):
        for d in range(len(ins)):  # the input dim whose image is td (pre/suf are unchanged)
            cand = TokenDim(d, td.pre, td.suf)
            if forward(node, inp, cand) == td:
                return cand
    return None


def _getitem_backward(node, td: TokenDim, inp, ins):
    if node.args[0] is not inp:
        return NEUTRAL
    plan = _index_plan(node.args[1], len(ins))
    if plan is None:
        return None
    for in_dim, out_dim, i in _dim_map(plan):
        if out_dim == td.dim and isinstance(i, slice):
            start, stop, step = i.indices(ins[in_dim])
            if step != 1:
                return None
            return TokenDim(in_dim, start + td.pre, ins[in_dim] - stop + td.suf)
    return None


def _cat_backward(node, td: TokenDim, inp):
    out = sizes(node)
    dim = norm_dim(int(arg(node, 1, "dim", 0)), len(out))
    if dim != td.dim:
        return td if sizes(inp)[td.dim] == out[td.dim] else None
    offset = 0
    for t in node.args[0]:
        n = sizes(t)[dim]
        if t is inp:
            piece = _slice_piece(offset, offset + n, td, out[dim])
            return piece if not isinstance(piece, TokenDim) else TokenDim(dim, piece.pre, piece.suf)
        offset += n
    return None
