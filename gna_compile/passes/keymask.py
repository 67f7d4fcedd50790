"""Boolean ``attn_mask``: is it a key padding mask, and is it provably True on the grid keys?

A boolean mask that broadcasts over heads and queries (``[B, 1, 1, N]``, ``[1, N]``, ...)
only removes keys, which the GNA op supports as ``key_mask``. ``keys_unmasked`` proves from
the functionalized graph that the mask is True on a range of key positions (the grid), e.g.
HunyuanVideo's ``ones(B, N).masked_fill(arange(N) >= L + text_lengths, False)``: with ``L``
the grid size and text lengths ``>= 0``, no grid key is masked, so the kernel only masks text
tiles. Writes into the mask are ops here too (``slice_scatter``, ``index_put``): each is
interpreted, or the proof fails. A failed proof costs speed only: the op masks every key.
"""

from __future__ import annotations

import sympy
import torch
from torch.fx import Node

from .op_rules import norm_dim, slice_bound
from .ops import args_of, op_key
from .provenance import Provenance
from .symbolic import same, shape_of, to_expr, val

__all__ = ["key_mask_problem", "keys_unmasked"]

_INF = sympy.oo


def key_mask_problem(mask, q_shape, k_shape) -> str | None:
    """None if ``mask`` (a bool graph tensor) is a key padding mask for this call, else why not."""
    v = val(mask)
    if not isinstance(v, torch.Tensor):
        return f"attn_mask of type {type(mask).__name__} is not a graph tensor"
    if v.dtype != torch.bool:
        return f"attn_mask is {v.dtype} (an additive bias), not a boolean key mask"
    shape = [to_expr(s) for s in v.shape]
    if not shape or not same(shape[-1], k_shape[2]):
        return f"attn_mask {tuple(v.shape)} does not end in the key count"
    full = [sympy.Integer(1)] * (4 - len(shape)) + shape[:-1]  # broadcast to [B, H, L]
    if len(full) != 3:
        return f"attn_mask {tuple(v.shape)} has more dims than [B, H, L, S]"
    if not (same(full[1], 1) and same(full[2], 1)):
        return f"attn_mask {tuple(v.shape)} depends on the head or query (not a key padding mask)"
    if not (same(full[0], 1) or same(full[0], q_shape[0])):
        return f"attn_mask {tuple(v.shape)} batch does not match q"
    return None


class _Prover:
    def __init__(self, prov: Provenance):
        self.prov = prov

    def dim_in(self, node, x, d):
        """The dim of ``x`` that is dim ``d`` of ``node`` (same source axes), or None."""
        want = self.prov.dim(node, d)
        for j, have in enumerate(self.prov.dims(x) or ()):
            if have == want:
                return j
        return None

    def operand_dim(self, node, operand, d):
        """The key dim of a broadcast operand (None when it is broadcast along keys)."""
        if d is None or not isinstance(operand, Node) or shape_of(operand) is None:
            return None
        s, out = shape_of(operand), shape_of(node)
        od = d - (len(out) - len(s))
        if od < 0 or same(s[od], 1):
            return None
        return od

    def all(self, node, d, lo, hi, value: bool) -> bool:
        """Is ``node`` equal to ``value`` at positions [lo, hi) of dim ``d`` (None: everywhere)?"""
        if not isinstance(node, Node):
            return isinstance(node, (bool, int)) and bool(node) == value
        key, shape = op_key(node), shape_of(node)
        if shape is None or key is None or key == "getitem":
            return False
        a = args_of(node)
        x = a.get("self", a.get("input"))
        if key == "aten.full":
            fill = a.get("fill_value")
            return isinstance(fill, (bool, int, float)) and bool(fill) == value
        if key in ("aten.scalar_tensor",):
            s = a.get("s")
            return isinstance(s, (bool, int, float)) and bool(s) == value
        if key in ("aten._to_copy", "aten.clone", "aten.alias", "prims.convert_element_type"):
            v = val(x)
            return isinstance(v, torch.Tensor) and v.dtype == torch.bool and self.all(x, d, lo, hi, value)
        if key in ("aten.view", "aten._unsafe_view", "aten.unsqueeze", "aten.squeeze", "aten.expand",
                   "aten.permute"):
            if d is None:
                return self.all(x, None, lo, hi, value)
            src = self.dim_in(node, x, d)
            return src is not None and self.all(x, src, lo, hi, value)
        if key == "aten.masked_fill":
            fill = a.get("value")
            if not isinstance(fill, (bool, int, float)):
                return False
            if bool(fill) == value:
                return self.all(x, d, lo, hi, value)
            cond = a["mask"]
            return self.all(x, d, lo, hi, value) and self.all(cond, self.operand_dim(node, cond, d), lo, hi, False)
        if key == "aten.where":
            c, t, f = a["condition"], a["self"], a["other"]
            # value everywhere on the range if both branches are, or the chosen one is
            bt = self.all(t, self.operand_dim(node, t, d), lo, hi, value)
            bf = self.all(f, self.operand_dim(node, f, d), lo, hi, value)
            if bt and bf:
                return True
            cd = self.operand_dim(node, c, d)
            return (bt and self.all(c, cd, lo, hi, True)) or (bf and self.all(c, cd, lo, hi, False))
        if key in ("aten.logical_not", "aten.bitwise_not"):
            return self.all(x, d, lo, hi, not value)
        if key in ("aten.bitwise_and", "aten.logical_and", "aten.bitwise_or", "aten.logical_or"):
            p, q = a["self"], a["other"]
            both = key in ("aten.bitwise_and", "aten.logical_and")
            rp = self.all(p, self.operand_dim(node, p, d), lo, hi, value)
            rq = self.all(q, self.operand_dim(node, q, d), lo, hi, value)
            return (rp and rq) if both == value else (rp or rq)
        if key in ("aten.ge", "aten.gt", "aten.le", "aten.lt"):
            p, q = a["self"], a["other"]
            bp = self.bounds(p, self.operand_dim(node, p, d), lo, hi)
            bq = self.bounds(q, self.operand_dim(node, q, d), lo, hi)
            if bp is None or bq is None:
                return False
            if key in ("aten.lt", "aten.le"):  # p < q  ==  q > p
                bp, bq = bq, bp
                key = {"aten.lt": "aten.gt", "aten.le": "aten.ge"}[key]
            strict = key == "aten.gt"
            if value:  # p >= q for all: min(p) >= max(q)
                return _true(bp[0] > bq[1]) if strict else _true(bp[0] >= bq[1])
            return _true(bp[1] <= bq[0]) if strict else _true(bp[1] < bq[0])
        if key == "aten.cat":
            tensors = a["tensors"]
            cd = norm_dim(int(a.get("dim", 0)), len(shape))
            if d is None or cd != d:
                return all(self.all(t, d, lo, hi, value) for t in tensors)
            pos = sympy.Integer(0)
            for t in tensors:
                n = shape_of(t)[d]
                s, e = sympy.Max(lo, pos) - pos, sympy.Min(hi, pos + n) - pos
                if not _true(e <= s) and not self.all(t, d, s, e, value):
                    return False
                pos = pos + n
            return True
        if key == "aten.slice":
            sd = norm_dim(int(a["dim"]), len(shape_of(x)))
            start = slice_bound(a.get("start"), shape_of(x)[sd], sympy.Integer(0))
            if int(a.get("step", 1)) != 1 or start is None:
                return False
            if d is None or sd != d:
                return self.all(x, d, lo, hi, value)
            return self.all(x, d, lo + start, hi + start, value)
        if key == "aten.slice_scatter":
            base, src = a["self"], a["src"]
            sd = norm_dim(int(a.get("dim", 0)), len(shape))
            n = shape[sd]
            start = slice_bound(a.get("start"), n, sympy.Integer(0))
            end = slice_bound(a.get("end"), n, n)
            if int(a.get("step", 1)) != 1 or start is None or end is None:
                return False
            if d is None or sd != d:
                return self.all(base, d, lo, hi, value) and self.all(src, d, lo, hi, value)
            # positions in [start, end) come from src (shifted), the others from base
            s, e = sympy.Max(lo, start), sympy.Min(hi, end)
            pieces = [(src, s - start, e - start), (base, lo, sympy.Min(hi, start)),
                      (base, sympy.Max(lo, end), hi)]
            return all(_true(b <= a_) or self.all(t, d, a_, b, value) for t, a_, b in pieces)
        return False  # index_put, scatter and every other op: not proven

    def bounds(self, node, d, lo, hi):
        """(min, max) of an integer tensor or number over positions [lo, hi); None if unknown."""
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            e = sympy.sympify(node)
            return (e, e)
        if not isinstance(node, Node):
            return None
        v = val(node)
        if isinstance(v, (int, torch.SymInt)):
            e = to_expr(v)
            return (e, e)
        key, shape = op_key(node), shape_of(node)
        if shape is None or key is None or key == "getitem":
            return None
        a = args_of(node)
        x = a.get("self", a.get("input"))
        if key in ("aten.arange", "prims.iota"):
            start = a.get("start", 0)
            if not isinstance(a.get("step", 1), int) or int(a.get("step", 1)) != 1:
                return None
            b = self.bounds(start, None, lo, hi)
            if b is None or not same(b[0], b[1]):
                return None
            return (b[0] + lo, b[0] + hi - 1) if d is not None else (b[0], b[0] + shape[0] - 1)
        if key in ("aten.view", "aten._unsafe_view", "aten.unsqueeze", "aten.squeeze", "aten.expand"):
            if d is None:
                return self.bounds(x, None, lo, hi)
            src = self.dim_in(node, x, d)
            return None if src is None else self.bounds(x, src, lo, hi)
        if key in ("aten._to_copy", "aten.clone", "aten.alias", "prims.convert_element_type"):
            v = val(x)
            if isinstance(v, torch.Tensor) and v.dtype == torch.bool:
                return (sympy.Integer(0), sympy.Integer(1))
            return self.bounds(x, d, lo, hi)
        if key in ("aten.add", "aten.sub"):
            p, q = a["self"], a["other"]
            bp = self.bounds(p, self.operand_dim(node, p, d), lo, hi)
            bq = self.bounds(q, self.operand_dim(node, q, d), lo, hi)
            if bp is None or bq is None or int(a.get("alpha", 1)) != 1:
                return None
            return (bp[0] + bq[0], bp[1] + bq[1]) if key == "aten.add" else (bp[0] - bq[1], bp[1] - bq[0])
        if key == "aten.sum":  # a sum of non-negative values (e.g. a bool mask) is >= 0
            xv = val(x)
            if isinstance(xv, torch.Tensor) and xv.dtype == torch.bool:
                return (sympy.Integer(0), _INF)
            bx = self.bounds(x, None, lo, hi)
            return (sympy.Integer(0), _INF) if bx is not None and _true(bx[0] >= 0) else None
        return None


def _true(expr) -> bool:
    """Provably true (an undecided symbolic comparison counts as not proven)."""
    return expr is True or expr is sympy.true


def keys_unmasked(prov: Provenance, mask: Node, lo, hi) -> bool:
    """True only if the graph proves ``mask[..., lo:hi]`` is True everywhere."""
    shape = shape_of(mask)
    return shape is not None and _Prover(prov).all(mask, len(shape) - 1, lo, hi, True)
