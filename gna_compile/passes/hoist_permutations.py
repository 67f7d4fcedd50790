"""Permutation hoisting: tokens stay in tiled order between GNA calls instead of being permuted
around every call.

After the rewrite every GNA call permutes q, k, v into tiled order and o back (4 copies per
call). Between two attentions of a DiT every op treats tokens independently, so the tiled
order can be kept for the whole region. This pass decides, for every tensor of the ATen
graph, whether it is computed in tiled order (a :class:`Place`: which dim holds the token
sequence, the extra tokens around the grid, and what is merged in front of it), using only
the op table of :mod:`op_rules`: an op joins the region when its rule maps the token dim of
its inputs to one output dim and it is equivariant there; everything else reads natural
order. Then ``permute_tokens`` is put on every edge that enters the region and
``unpermute_tokens`` on every edge that leaves it (graph outputs included), and the GNA
calls become ``gna_attention_tiled``.

Joint training graphs: the LSE forward and the backward op are GNA calls too (becoming
``gna_attention_tiled_lse`` / ``gna_attention_tiled_backward``), so the region reaches into
the backward through the saved activations; tangents enter it like any natural tensor. A
weight gradient contracts the tokens away (``mm(x.t(), grad)``, ``sum`` over tokens): such a
node (:data:`REDUCED`, from :func:`op_rules.order_free_reductions`) reads every operand of
the reduced index in one tiled order (one that is natural is permuted in, exactly like the
operand of a pointwise op), never one tiled and one natural; its output has no token dim, so
it is the same in both orders.

Sound by construction: an op without a rule, an op that mixes along the token dim, a write
into a token range, a dense attention whose keys are masked: all read natural order. Only
whole tiles (no padding) are hoisted, so no tensor changes shape.
"""

from __future__ import annotations

import math
from collections import ChainMap
from dataclasses import dataclass, field

import sympy
import torch
from torch.fx import GraphModule, Node

from .op_rules import order_free_reductions, rule, slice_write, uniform
from .ops import GETITEM, args_of, changed_by_a_pass, op_key
from .rewrite import GNA_BWD, GNA_LSE_OP, GNA_OP, set_val
from .sites import SITE_OP
from .symbolic import divides, hint, same, shape_of, static_int, val

__all__ = ["hoist_permutations", "HoistResult", "Place"]

_OPS = torch.ops.gna_compile
TILED_OP = _OPS.gna_attention_tiled.default
# each GNA op and its tiled-order twin (same arguments, every token-indexed tensor tiled)
TILED = {GNA_OP: TILED_OP, GNA_LSE_OP: _OPS.gna_attention_tiled_lse.default,
         GNA_BWD: _OPS.gna_attention_tiled_backward.default}
_BWD_TOKEN_ARGS = ("grad_out", "grad_lse", "q", "k", "v", "out", "lse")


@dataclass(frozen=True)
class Place:
    """Tokens in tiled order: the sequence ``[pre extras][grid][suf extras]`` (``length``
    tokens) is the innermost factor of ``dim``; ``outer`` is what is merged in front of it."""

    dim: int
    pre: int
    suf: int
    length: int
    outer: object = 1


class _Extras:
    """An output that holds extra tokens only (natural order in both layouts)."""

    def __repr__(self):
        return "EXTRAS"


EXTRAS = _Extras()


class _Reduced:
    """An output of an order-free reduction over the token dim (no token dim: the same in
    both orders) that reads its reduced operands tiled."""

    def __repr__(self):
        return "REDUCED"


REDUCED = _Reduced()


@dataclass
class HoistResult:
    regions: int = 0
    calls: int = 0                  # GNA calls (forwards) now running on tiled tokens
    backward_calls: int = 0         # GNA backwards now running on tiled tokens
    permutes: int = 0               # permute/unpermute ops left in the graph
    permutes_without: int = 0       # what per-call permutation would have cost (4 per call,
                                    # forward or backward: q, k, v, o / grad_out, dq, dk, dv)
    skipped: list = field(default_factory=list)  # (call name, reason)

    def __str__(self):
        bwd = f" and {self.backward_calls} backward(s)" if self.backward_calls else ""
        s = (f"hoisted {self.calls} GNA call(s){bwd} in {self.regions} region(s): {self.permutes} "
             f"token permutation(s) instead of {self.permutes_without}")
        return s + "".join(f"\n  not hoisted: {n}: {r}" for n, r in self.skipped)


# -- the token dim through one op, forwards and backwards --------------------------------------

def _outer(size, length):
    n = _int(size)
    if n is not None:
        return n // length if n % length == 0 else None
    return divides(length, size)


def _place_at(dim, size, p: Place):
    o = _outer(size, p.length)
    return None if o is None else Place(dim, p.pre, p.suf, p.length, o)


def _reshape_fwd(ins, outs, p: Place):
    """Where the token factor of a reshape input lands in the output (innermost in one dim)."""
    after = math.prod(ins[p.dim + 1:]) if p.dim + 1 < len(ins) else 1
    after = sympy.expand(sympy.sympify(after))
    acc = sympy.Integer(1)
    for j in reversed(range(len(outs))):
        if same(acc, after):
            o = _outer(outs[j], p.length)
            if o is not None:
                return Place(j, p.pre, p.suf, p.length, o)
            if not same(outs[j], 1):
                return None
            continue  # a size-1 dim after the tokens' (``[N, 1]`` from ``[N]``): look further in
        acc = sympy.expand(acc * outs[j])
    return None


def _reshape_inv(ins, outs, p: Place):
    return _reshape_fwd(outs, ins, p)


def _slice_bounds(src, n):
    s, e = _int(src.start) if src.start is not None else None, _int(src.stop) if src.stop is not None else None
    return None if s is None or e is None else (s, e)


_ENV = [None]  # the graph's ShapeEnv while the pass runs
_RULES: dict = {}  # op rules of the graph's nodes, memoized while the pass runs (before it edits)


def _rule(node):
    if node not in _RULES:
        _RULES[node] = rule(node)
    return _RULES[node]


def _int(e):
    return static_int(e, _ENV[0])


def _fwd(node, y, py: Place):
    """Output place(s) of ``node`` when input ``y`` carries ``py``; None: no single output dim
    carries y's tokens (the op mixes or drops them: node reads y in natural order)."""
    r = _rule(node)
    if r is None:
        return None
    w = slice_write(node)
    if w is not None and y in w[:2] and w[2] == py.dim:
        return _write_fwd(node, y, py, w)
    places = []
    for out_i, srcs in enumerate(r):
        oshape = shape_of(node, out_i if len(r) > 1 else None)
        found = []
        for j, s in enumerate(srcs):
            if s.kind == "same" and (y, py.dim) in s.inputs:
                if not s.equivariant:
                    return None
                found.append(_place_at(j, oshape[j], py))
            elif s.kind == "reshape" and s.inputs[0][0] is y:
                found.append(_reshape_fwd(shape_of(y), oshape, py))
                break
            elif s.kind == "cat" and (y, py.dim) in s.inputs:
                if not same(py.outer, 1):
                    return None
                sizes = [_int(shape_of(x)[d]) for x, d in s.inputs]
                total = _int(oshape[j])
                if total is None or None in sizes:
                    return None
                off = sum(sizes[:[x for x, _ in s.inputs].index(y)])
                found.append(Place(j, off + py.pre, total - off - py.length + py.suf, total, 1))
            elif s.kind == "slice" and s.inputs[0] == (y, py.dim):
                b = _slice_bounds(s, py.length)
                if b is None or not same(py.outer, 1):
                    return None
                start, stop = b
                g0, g1 = py.pre, py.length - py.suf
                if stop <= g0 or start >= g1:
                    found.append(EXTRAS)
                elif start <= g0 and stop >= g1:
                    found.append(Place(j, g0 - start, stop - g1, stop - start, 1))
                else:
                    return None
        found = [f for f in found if f is not None] if all(f is not None for f in found) else None
        if found is None or len(found) > 1:
            return None
        places.append(found[0] if found else None)
    if all(p is None for p in places):
        return REDUCED if _reduced_operand(node, y, py) else None
    return places[0] if len(places) == 1 else tuple(places)


def _reduced_operand(node, y, py: Place) -> bool:
    """Whether ``node`` reduces y's token dim away in an order-free group (op_rules)."""
    return any((y, py.dim) in g for g in order_free_reductions(node))


def _same_order(a: Place, b: Place) -> bool:
    """One token permutation on both (the dim may differ: a contraction pairs two dims)."""
    return (a.pre, a.suf, a.length) == (b.pre, b.suf, b.length) and same(a.outer, b.outer)


def _reduced_needs(node, place: dict) -> dict | None:
    """{operand: Place} an order-free reduction reads tiled, given the region's ``place``: a
    group with an operand tiled at its reduced dim is read tiled whole, every operand at its
    reduced dim in that one order (one outside the region is permuted in: one permutation on
    every dim of a group leaves the result as it is). None if an operand of such a group is
    tiled in another order or at another dim, or if no group holds a tiled operand."""
    need = {}
    for g in order_free_reductions(node):
        ref = next((place[x] for x, d in g if isinstance(place.get(x), Place) and place[x].dim == d), None)
        if ref is None:
            continue
        for x, d in g:
            q = _place_at(d, shape_of(x)[d], ref)
            if q is None or not same(q.outer, ref.outer) or need.get(x, q) != q:
                return None
            if place.get(x) not in (None, q):
                return None
            need[x] = q
    return need or None


def _write_fwd(node, y, py: Place, w):
    """``slice_scatter(base, src, d, start, stop)`` with y's tokens along d: src holding the
    whole grid gives the output that grid, its extras widened by the positions outside the
    slice; base whose grid lies outside the slice keeps its place. Else None."""
    base, src, d, start, stop = w
    start, stop, n = _int(start), _int(stop), _int(shape_of(node)[d])
    if None in (start, stop, n) or not same(py.outer, 1):
        return None
    if y is src:
        return Place(d, start + py.pre, n - stop + py.suf, n, 1)
    return py if stop <= py.pre or start >= n - py.suf else None


def _write_inv(node, p: Place, w) -> dict | None:
    """Inverse of :func:`_write_fwd`: the grid inside the slice: src carries it shifted and
    base is read natural; the grid outside the slice: base carries it and src (extras only)
    is read natural. Either way what the natural operand gives the output lies outside the
    grid, where both orders agree. None when the slice cuts the grid."""
    base, src, d, start, stop = w
    start, stop, n = _int(start), _int(stop), _int(shape_of(node)[d])
    if None in (start, stop, n) or not same(p.outer, 1):
        return None
    if p.pre >= start and p.suf >= n - stop:
        return {src: Place(d, p.pre - start, p.suf - (n - stop), stop - start, 1)}
    if stop <= p.pre or start >= n - p.suf:
        return {base: p}
    return None


def _inv(node, place):
    """What each input must carry when ``node`` computes ``place``: {input: Place}; inputs
    not listed must be in natural order. None if no input assignment gives that place."""
    r = _rule(node)
    if r is None:
        return None
    w = slice_write(node)
    if w is not None and isinstance(place, Place) and place.dim == w[2]:
        return _write_inv(node, place, w)
    places = place if isinstance(place, tuple) else (place,)
    if len(places) != len(r):
        return None
    need: dict = {}

    def want(x, p):
        if x in need and need[x] != p:
            return False
        need[x] = p
        return True

    for out_i, (srcs, p) in enumerate(zip(r, places)):
        if p is None or p is EXTRAS:
            continue
        s = srcs[p.dim]
        if s.kind == "same":
            if not s.equivariant:
                return None
            for x, d in s.inputs:
                q = _place_at(d, shape_of(x)[d], p)
                if q is None or not want(x, q):
                    return None
        elif s.kind == "reshape":
            x = s.inputs[0][0]
            q = _reshape_inv(shape_of(x), shape_of(node, out_i if len(r) > 1 else None), p)
            if q is None or not want(x, q):
                return None
        elif s.kind == "cat":
            if not same(p.outer, 1):
                return None
            off, hit = 0, False
            for x, d in s.inputs:
                n = _int(shape_of(x)[d])
                if n is None:
                    return None
                g0, g1 = p.pre, p.length - p.suf
                if off <= g0 and off + n >= g1:
                    if not want(x, Place(d, g0 - off, off + n - g1, n, 1)):
                        return None
                    hit = True
                elif not (off + n <= g0 or off >= g1):
                    return None  # the grid spans two pieces
                off += n
            if not hit:
                return None
        elif s.kind == "slice":
            (x, d), = s.inputs
            b = _slice_bounds(s, p.length)
            if b is None or not same(p.outer, 1):
                return None
            n = _int(shape_of(x)[d])
            if n is None or not want(x, Place(d, p.pre + b[0], p.suf + n - b[1], n, 1)):
                return None
        else:
            return None
    return need


# -- region growth ---------------------------------------------------------------------------

def _token_place(node) -> Place:
    """Where a GNA call holds its tokens: dim 2 of every ``[B, H, N, D]`` tensor and LSE."""
    a = args_of(node)
    n = a["extra_prefix"] + math.prod(a["shape"]) + a["extra_suffix"]
    return Place(2, int(a["extra_prefix"]), int(a["extra_suffix"]), n, 1)


def _seed_place(node):
    """A GNA call's output place(s): out; (out, lse, None: the 0-dim mode flag); (dq, dk, dv)."""
    p = _token_place(node)
    v = val(node)
    return tuple(p if x.dim() else None for x in v) if isinstance(v, (tuple, list)) else p


def _per_call(node) -> int:
    """Elements a call permutes on its own: q, k, v in and out back; a backward: grad_out in
    and dq, dk, dv back (it reuses the forward's tiled q, k, v, out, LSE)."""
    a = args_of(node)
    if node.target is GNA_BWD:
        return _numel(a["grad_out"]) + sum(_numel(a[x]) for x in ("q", "k", "v"))
    return sum(_numel(a[x]) for x in ("q", "k", "v")) + _numel(a["q"])


class _Region:
    def __init__(self, gm: GraphModule, seeds: list[Node], tiles, tiled_other):
        self.gm, self.seeds, self.tiles = gm, set(seeds), tiles
        self.place: dict = {}
        self.order = list(gm.graph.nodes)
        self.pos = {n: i for i, n in enumerate(self.order)}
        self.other = tiled_other  # GNA calls of other regions: their inputs stay natural
        for s in seeds:
            self.place[s] = _seed_place(s)

    def requires(self, node, place) -> dict | None:
        """{input: Place} that ``node`` at ``place`` reads in tiled order (others: natural)."""
        if node in self.seeds:
            a = args_of(node)
            p = _token_place(node)
            names = _BWD_TOKEN_ARGS if node.target is GNA_BWD else ("q", "k", "v")
            return {a[x]: p for x in names if isinstance(a[x], Node)}
        if place is REDUCED:
            return _reduced_needs(node, self.place)
        if uniform(node):
            return {}  # one value everywhere: the same tensor in either order
        if op_key(node) == GETITEM:  # follows its multi-output base
            base = node.args[0]
            return {base: self.place[base]} if base in self.place else {}
        if place is EXTRAS:  # extra tokens sliced from a tiled input sit where they always do
            return {y: self.place[y] for y in node.all_input_nodes if isinstance(self.place.get(y), Place)}
        if node.target is SITE_OP:
            return self._site_requires(node, place)
        return _inv(node, place)

    def _site_requires(self, node, place):
        """Dense attention: q's tokens map to the output's; k and v may stay tiled together
        (softmax ignores a joint key order) unless a mask depends on the key order."""
        a = args_of(node)
        mask = a["attn_mask"]
        if a["is_causal"]:
            return None  # causal masks read query and key positions in natural order
        if mask is not None and not same(shape_of(mask)[-2] if len(shape_of(mask)) >= 2 else 1, 1):
            return None  # a per-query mask reads query positions in natural order
        need = _inv(node, place)
        if need is None:
            return None
        keys_free = mask is None or same(shape_of(mask)[-1], 1)
        pk, pv = self.place.get(a["k"]), self.place.get(a["v"])
        if keys_free and isinstance(pk, Place) and pk == pv:
            need[a["k"]] = pk
            need[a["v"]] = pv
        return need

    def forward(self, node):
        """The place of ``node`` from its tiled inputs, or None."""
        if node.op != "call_function" or node in self.other:
            return None
        if op_key(node) == GETITEM:
            base, i = node.args
            bp = self.place.get(base)
            return bp[i] if isinstance(bp, tuple) and bp[i] is not None else None
        cands = set()
        for y in node.all_input_nodes:
            py = self.place.get(y)
            if isinstance(py, Place):
                got = _fwd(node, y, py)
                if got is not None:
                    cands.add(got)
        if len(cands) != 1:
            return None
        place = next(iter(cands))
        need = self.requires(node, place)
        if need is None:
            return None
        for y, p in need.items():  # tiled inputs must carry what the node needs
            if y in self.place and self.place[y] != p:
                return None
        if not self._users_accept(node, place):
            return None
        return place

    def _users_accept(self, node, place) -> bool:
        for u in node.users:
            if u in self.place and op_key(u) != GETITEM:
                need = self.requires(u, self.place[u]) or {}
                if node in need and need[node] != place:
                    return False
        return True

    def _demand(self, node):
        """(the one place the region's users of ``node`` read it in, {user outside the region:
        EXTRAS or REDUCED} for those that would then only slice extra tokens from it or reduce
        its tokens away), or (None, None)."""
        demands, outside = set(), []
        for u in node.users:
            if op_key(u) == GETITEM:
                return None, None
            if u not in self.place:
                outside.append(u)
                continue
            need = self.requires(u, self.place[u]) or {}
            if node not in need:
                return None, None
            demands.add(need[node])
        if len(demands) != 1:
            return None, None
        place = next(iter(demands))
        joins = {}
        for u in outside:  # e.g. o[:, :, n_video:]: the text tokens, in place in both orders
            got = _fwd(u, node, place) if isinstance(place, Place) else None
            if got is REDUCED:  # e.g. a bias gradient's sum over the tokens
                need = _reduced_needs(u, ChainMap({node: place}, self.place))
                if need is None or need.get(node) != place:
                    return None, None
            elif got is not EXTRAS:
                return None, None
            joins[u] = got
        return place, joins

    def backward(self, node) -> dict | None:
        """Pull a producer into the region when every user reads it tiled at one place
        (a multi-output op together with its getitems); returns the new places."""
        if node.op != "call_function" or node in self.other or op_key(node) in (None, GETITEM):
            return None
        if node.target in TILED or node.target in TILED.values() or node.target is SITE_OP or not node.users:
            return None
        new = {}
        if isinstance(val(node), (tuple, list)):  # multi-output: its getitems say per output
            outs = [None] * len(val(node))
            for g in node.users:
                if op_key(g) != GETITEM:
                    return None
                p, extras = self._demand(g)
                if not isinstance(p, Place) or outs[g.args[1]] not in (None, p):
                    return None
                outs[g.args[1]] = p
                new[g] = p
                new.update(extras)
            place = tuple(outs)
        else:
            place, extras = self._demand(node)
            if not isinstance(place, Place):
                return None
            new.update(extras)
        need = self.requires(node, place)
        if need is None or not (need or uniform(node)):
            return None
        for y, p in need.items():
            if y in self.place and self.place[y] != p:
                return None
        new[node] = place
        return new

    def grow(self):
        changed = True
        while changed:
            changed = False
            for n in self.order:
                if n not in self.place:
                    p = self.forward(n)
                    if p is not None:
                        self.place[n] = p
                        changed = True
            for n in reversed(self.order):
                if n not in self.place:
                    got = self.backward(n)
                    if got:
                        self.place.update(got)
                        changed = True
        self._shrink()
        self._settle_reductions()

    def _settle_reductions(self):
        """After the cut: a reduction some of whose operands went back to natural order reads
        them all natural (it must never mix the two orders); its output is the same."""
        for n in [n for n, p in self.place.items() if p is REDUCED]:
            if _reduced_needs(n, self.place) is None:
                del self.place[n]

    def _shrink(self):
        """Choose where tokens enter the region: a minimum vertex cut between the tensors
        from outside and the GNA calls' side of the region, each tensor costing its size
        plus a launch. Region nodes upstream of the cut (a RoPE table's per-axis pieces, the
        position ids they come from) go back to natural order; the cut tensors are permuted."""
        down, stack = set(), list(self.seeds)
        while stack:  # region nodes downstream of a GNA call
            n = stack.pop()
            if n in down:
                continue
            down.add(n)
            stack.extend(u for u in n.users if u in self.place)
        up = [n for n in self.place if n not in down]
        if not up:
            return
        INF = float("inf")
        cap: dict = {}

        def edge(a, b, c):
            cap.setdefault(a, {})
            cap.setdefault(b, {})
            cap[a][b] = cap[a].get(b, 0) + c
            cap[b].setdefault(a, 0)

        def cost(v):
            return INF if isinstance(val(v), (tuple, list)) else _numel(v) + (1 << 20)

        ext = set()
        for u in (*up, *down):
            for y in (self.requires(u, self.place[u]) or {}):
                dst = ("in", u) if u in up else "T"
                if y in self.place and y in up:
                    edge(("out", y), dst, INF)
                elif y not in self.place:
                    ext.add(y)
                    edge(("out", y), dst, INF)
        for v in (*up, *ext):
            edge(("in", v), ("out", v), cost(v))
        for x in ext:
            edge("S", ("in", x), INF)
        reach = _max_flow_source_side(cap, "S", "T")
        for v in up:
            if ("out", v) in reach or ("in", v) in reach:  # upstream of the cut, or cut: natural
                del self.place[v]

    def edges(self):
        """(entries {(input, place): [users]}, exits {input: [users]}) or an error string."""
        entries, exits = {}, {}
        for u in self.order:
            if u.op == "placeholder":
                continue
            pu = self.place.get(u)
            need = self.requires(u, pu) if pu is not None else {}
            if need is None:
                return None, None, f"{u.name}: no consistent token layout"
            for y in dict.fromkeys(u.all_input_nodes):
                if not isinstance(val(y), torch.Tensor):
                    continue
                py = self.place.get(y)
                py = py if isinstance(py, (Place, tuple)) else None
                want = need.get(y)
                if want == py:
                    continue
                if want is None:
                    if not isinstance(py, Place):
                        return None, None, f"{u.name} reads {y.name} (several outputs) in natural order"
                    exits.setdefault(y, []).append(u)
                elif py is None:
                    entries.setdefault((y, want), []).append(u)
                else:
                    return None, None, f"{u.name} reads {y.name} in another tiled layout"
        return entries, exits, None


def _max_flow_source_side(cap: dict, s, t) -> set:
    """Edmonds-Karp max flow on ``cap`` (modified in place); returns the vertices still
    reachable from ``s`` in the residual graph (the source side of a minimum cut)."""
    from collections import deque
    while True:
        parent, q = {s: None}, deque([s])
        while q and t not in parent:
            a = q.popleft()
            for b, c in cap.get(a, {}).items():
                if c > 0 and b not in parent:
                    parent[b] = a
                    q.append(b)
        if t not in parent:
            return set(parent)
        path, b = [], t
        while parent[b] is not None:
            path.append((parent[b], b))
            b = parent[b]
        f = min(cap[a][b] for a, b in path)
        if f == float("inf"):  # only infinite edges: nothing to cut (cannot happen with costs)
            return set(parent)
        for a, b in path:
            cap[a][b] -= f
            cap[b][a] += f


def _numel(node) -> int:
    s = shape_of(node)
    n = 1
    for x in s or ():
        h = hint(x)
        n *= h if h is not None else 1
    return n


def _emit(graph, x, place: Place, shape, tile, inverse: bool, fake_mode):
    op = _OPS.unpermute_tokens.default if inverse else _OPS.permute_tokens.default
    node = graph.call_function(op, (x, list(shape), list(tile), place.pre, place.suf, place.dim))
    set_val(node, fake_mode)
    return node


def _group_key(node):
    a = args_of(node)
    shape, q_tile = a["shape"], a["q_tile"]  # the permutation depends on the Q tile only
    if not q_tile:
        return None, "no kernel tile chosen for this call"
    if not all(isinstance(n, int) for n in shape) or not all(
            isinstance(a[k], int) for k in ("extra_prefix", "extra_suffix")):
        return None, "dynamic grid or extra-token count"
    if any(n % t for n, t in zip(shape, q_tile)):
        return None, f"tile {tuple(q_tile)} pads grid {tuple(shape)} (hoisting needs whole tiles)"
    return (tuple(shape), tuple(q_tile)), None


def hoist_permutations(gm: GraphModule, records=(), fake_mode=None) -> HoistResult:
    """Run the pass in place on an ATen graph holding ``gna_attention`` calls."""
    from .symbolic import find_shape_env
    _ENV[0] = find_shape_env(gm.graph)
    _RULES.clear()
    try:
        return _hoist(gm, records, fake_mode)
    finally:
        _RULES.clear()
        _ENV[0] = None


def _hoist(gm, records, fake_mode) -> HoistResult:
    res = HoistResult()
    groups: dict = {}
    names = {r.site: r for r in records}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in TILED:
            key, why = _group_key(node)
            label = (node.meta.get("gna") or {}).get("module", node.name)
            if key is None:
                res.skipped.append((label, why))
            else:
                groups.setdefault(key, []).append(node)
    all_gna = {n for ns in groups.values() for n in ns}
    for (shape, tile), seeds in groups.items():
        region = _Region(gm, seeds, tile, all_gna - set(seeds))
        region.grow()
        entries, exits, err = region.edges()
        if err is None:
            moved = sum(_numel(y) for y, _ in entries) + sum(_numel(y) for y in exits)
            per_call = sum(_per_call(s) for s in seeds)
            if moved >= per_call:
                err = f"no gain: {moved} elements permuted at the boundaries vs {per_call} per call"
        if err is not None:
            res.skipped += [((s.meta.get("gna") or {}).get("module", s.name), err) for s in seeds]
            continue
        graph = gm.graph
        made = 0
        for (y, place), users in entries.items():
            where = graph.inserting_after(y) if y.op != "placeholder" else \
                graph.inserting_before(min(users, key=region.pos.get))
            with where:
                p = _emit(graph, y, place, shape, tile, False, fake_mode)
            for u in users:
                u.replace_input_with(y, p)
            made += 1
        for y, users in exits.items():
            with graph.inserting_after(y):
                p = _emit(graph, y, region.place[y], shape, tile, True, fake_mode)
            for u in users:
                u.replace_input_with(y, p)
            made += 1
        _RULES.clear()  # the edges changed: later regions read the rules afresh
        for s in seeds:
            s.target = TILED[s.target]
            changed_by_a_pass(s)
            rec = names.get((s.meta.get("gna") or {}).get("site"))
            if rec is not None:
                rec.hoisted = True
        res.regions += 1
        res.calls += sum(s.target is not TILED[GNA_BWD] for s in seeds)
        res.backward_calls += sum(s.target is TILED[GNA_BWD] for s in seeds)
        res.permutes += made
        res.permutes_without += 4 * len(seeds)
    for r in records:
        if r.rewritten and r.hoisted is None:
            r.hoisted = False
    if res.regions:
        gm.graph.lint()
        gm.recompile()
    return res
