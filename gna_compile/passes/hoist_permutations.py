"""Permutation hoisting: permute tokens once where they enter a token-wise region, not per call.

After the rewrite every GNA call permutes q, k, v into tiled order and o back (4 copies per
call). Between two attentions of a DiT every op treats tokens independently, so the tiled order
can be kept for the whole region: this pass grows a region from the GNA calls through ops that
are token-wise (rules in :mod:`token_dim`), puts ``gna_compile::permute_tokens`` on each tensor
that enters it carrying tokens (patch embedding output, RoPE tables, per-token side inputs:
once each, however many blocks use them) and ``unpermute_tokens`` where tokens leave (before
unpatchify, a token-mixing op, the graph output), and turns the GNA calls into
``gna_attention_tiled``. Extra (text) tokens stay in natural order inside the same tensors.

Conservative by construction: static shapes, layout tiles that need no padding, no in-place op
touching the region, one tile per region; otherwise nothing changes and the reason is returned.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule, Node

from .ops import is_gna_op, op_name
from .symbolic import example_value
from .token_dim import EXTRAS, NEUTRAL, SPLITS, TokenDim, backward, forward, is_mutation, sizes

__all__ = ["hoist_permutations", "HoistResult"]

_OPS = torch.ops.gna_compile
# Consumers that read only metadata (sizes, dtype) of a region tensor: no reorder needed.
# ``key_mask_2d`` (from the rewrite) reads the batch size of q.
_META_OPS = {"size", "dim", "numel", "getattr", "stride", "key_mask_2d"}
_GNA_KW = ("q", "k", "v", "shape", "window", "stride", "dilation", "causal", "extra_prefix",
           "extra_suffix", "scale", "key_mask", "key_mask_spatial", "backend")


@dataclass
class HoistResult:
    regions: int = 0
    calls: int = 0                  # GNA calls now running on tiled tokens
    permutes: int = 0               # permute/unpermute ops left in the graph
    permutes_without: int = 0       # what per-call permutation would have cost (4 per call)
    skipped: list = field(default_factory=list)  # (call name, reason)

    def __str__(self):
        s = (f"hoisted {self.calls} GNA call(s) in {self.regions} region(s): {self.permutes} "
             f"token permutation(s) instead of {self.permutes_without}")
        return s + "".join(f"\n  not hoisted: {n}: {r}" for n, r in self.skipped)


def _gna_args(node: Node) -> dict:
    return dict(zip(_GNA_KW, node.args)) | dict(node.kwargs)


def _layout_tile(node: Node):
    meta = node.meta.get("gna") or {}
    a = _gna_args(node)
    shape = a["shape"]
    tile = meta.get("q_tile")
    if not all(isinstance(n, int) for n in shape):
        return None, "dynamic grid size"
    if tile is None:
        return None, "no tile chosen for this call"
    if any(n % t for n, t in zip(shape, tile)):
        return None, f"tile {tuple(tile)} pads grid {tuple(shape)} (hoisting needs whole tiles)"
    return (tuple(shape), tuple(tile)), None


class _Region:
    """Grows the set of nodes that can compute on tiled tokens, starting from GNA calls."""

    def __init__(self, seeds: list[Node]):
        self.td: dict[Node, object] = {}
        self.entries: dict[tuple[Node, Node], TokenDim] = {}   # (producer, consumer) -> td
        self.exits: set[tuple[Node, Node]] = set()              # (region node, consumer)
        self.error = None
        queue = deque()
        for n in seeds:
            a = _gna_args(n)
            self.td[n] = TokenDim(2, a["extra_prefix"], a["extra_suffix"])
            queue.append(n)
        while queue and self.error is None:
            self._visit(queue.popleft(), queue)

    def _assign(self, node, td, queue):
        if node in self.td:
            if self.td[node] != td:
                self.error = f"conflicting token layouts at {node.name}"
            return
        self.td[node] = td
        queue.append(node)

    def _inputs(self, node):
        """(input node, what it must carry) for the tensor inputs of a region node."""
        td = self.td[node]
        if is_gna_op(node):
            a = _gna_args(node)
            return [(a[x], td) for x in ("q", "k", "v")]
        if isinstance(td, tuple) or op_name(node) in SPLITS:
            return [(node.args[0], None)]  # reached forward from its input only
        return [(a, backward(node, td, a)) for a in node.all_input_nodes]

    def _visit(self, node, queue):
        td = self.td[node]
        if not isinstance(td, tuple):
            for a, want in self._inputs(node):
                if want is None or want is NEUTRAL or want is EXTRAS:
                    continue
                if a.op == "call_function" or a.op == "call_method":
                    if not is_mutation(a) and not any(is_mutation(u) for u in a.users) and \
                            _producer_ok(a, want):
                        self._assign(a, want, queue)
                        continue
                self.entries.setdefault((a, node), want)
        for u in node.users:
            if u.op == "output" or u in self.td or op_name(u) in _META_OPS:
                continue
            if is_mutation(u):
                self.error = f"in-place op {u.name} touches the region"
                return
            if isinstance(td, tuple):  # users of a split: getitem(tuple, i)
                piece = td[u.args[1]] if op_name(u) == "getitem" and isinstance(u.args[1], int) else None
            elif is_gna_op(u):
                piece = None
            else:
                try:
                    piece = forward(u, node, td)
                except Exception:  # arguments the rules do not understand: a boundary
                    piece = None
            if isinstance(piece, (TokenDim, tuple)):
                self._assign(u, piece, queue)
            elif piece is not EXTRAS:
                self.exits.add((node, u))


def _producer_ok(node: Node, td: TokenDim) -> bool:
    """Can ``node`` itself compute in tiled order (is it token-wise with this output layout)?"""
    try:
        return all(backward(node, td, a) is not None for a in node.all_input_nodes) and \
            any(isinstance(backward(node, td, a), TokenDim) for a in node.all_input_nodes)
    except Exception:
        return False


def _check(region: _Region):
    """Every region node's inputs agree with its layout; returns an error or None."""
    if region.error:
        return region.error
    for node, td in region.td.items():
        if isinstance(td, tuple) or is_gna_op(node) or op_name(node) in SPLITS:
            continue
        if op_name(node) == "getitem" and not isinstance(example_value(node.args[0]), torch.Tensor):
            continue
        for a in node.all_input_nodes:
            want = backward(node, td, a)
            if want is None:
                return f"{node.name}: cannot tell how input {a.name} is laid out"
            if a in region.td:
                if want != region.td[a] and not (want is NEUTRAL and op_name(node) == "sdpa"):
                    return f"{node.name}: input {a.name} has another token layout"
                if want is NEUTRAL:
                    region.exits.add((a, node))
            elif isinstance(want, TokenDim):
                region.entries.setdefault((a, node), want)
    for (a, node) in list(region.entries):
        if a in region.td:
            del region.entries[(a, node)]
    region.exits = {(n, u) for n, u in region.exits if u not in region.td}
    _shrink(region)
    for a, _ in region.entries:  # a copy taken at an entry must not miss a later in-place write
        if any(is_mutation(u) for u in a.users):
            return f"{a.name} is modified in place after it enters the region"
    return None


def _numel(node) -> int:
    return math.prod(sizes(node) or (0,))


def _shrink(region: _Region) -> None:
    """Leave out region nodes fed only by entries when that saves permutes: e.g. a RoPE table
    concatenated from three per-axis pieces is permuted once after the cat, not three times."""
    changed = True
    while changed:
        changed = False
        for node, td in list(region.td.items()):
            if isinstance(td, tuple) or is_gna_op(node) or op_name(node) in SPLITS:
                continue
            fed = [a for (a, n) in region.entries if n is node]
            if not fed or any(a in region.td for a in node.all_input_nodes):
                continue
            users = [u for u in node.users if u in region.td]
            if len(fed) == 1 and not (len(users) == 1 and _numel(node) <= _numel(fed[0])):
                continue  # moving one entry down one op only pays when it lets entries merge
            if any((node, u) in region.exits for u in node.users):
                continue
            new_entries = {(node, u): backward(u, region.td[u], node) for u in users}
            if not all(isinstance(t, TokenDim) for t in new_entries.values()):
                continue  # a user that does not see the token dim here: keep the node
            del region.td[node]
            for a in fed:
                del region.entries[(a, node)]
            region.entries.update(new_entries)
            changed = True


def _emit_permute(graph, x: Node, td: TokenDim, key, inverse: bool) -> Node:
    shape, tile = key
    rank = len(sizes(x))
    op = _OPS.unpermute_tokens.default if inverse else _OPS.permute_tokens.default
    if rank == 1:  # the op wants tokens at dim -2
        y = graph.call_function(torch.unsqueeze, (x, -1))
        y = graph.call_function(op, (y, list(shape), list(tile), td.pre, td.suf))
        return graph.call_function(torch.squeeze, (y, -1))
    moved = td.dim != rank - 2
    y = graph.call_function(torch.movedim, (x, td.dim, -2)) if moved else x
    y = graph.call_function(op, (y, list(shape), list(tile), td.pre, td.suf))
    return graph.call_function(torch.movedim, (y, -2, td.dim)) if moved else y


def _rewrite(gm: GraphModule, region: _Region, key) -> int:
    """Insert the boundary permutes, switch the calls to the tiled op; returns permutes made."""
    graph = gm.graph
    made = {}
    for (a, node), td in region.entries.items():
        k = ("P", a, td)
        if k not in made:
            with graph.inserting_before(a.next):
                made[k] = _emit_permute(graph, a, td, key, inverse=False)
        node.replace_input_with(a, made[k])
    for (n, u) in region.exits:
        k = ("U", n)
        if k not in made:
            with graph.inserting_before(n.next):
                made[k] = _emit_permute(graph, n, region.td[n], key, inverse=True)
        u.replace_input_with(n, made[k])
    for n in list(region.td):
        if n.op != "call_function" or not is_gna_op(n):
            continue
        a = _gna_args(n)
        with graph.inserting_before(n):
            new = graph.call_function(_OPS.gna_attention_tiled.default, tuple(
                a[x] for x in _GNA_KW[:-1]) + (list(key[1]), a["backend"]))
        new.meta.update(n.meta)
        n.replace_all_uses_with(new)
        graph.erase_node(n)
    for node in graph.nodes:  # graph outputs leave the region too
        if node.op == "output":
            for a in list(node.all_input_nodes):
                if a in region.td and not isinstance(region.td[a], tuple):
                    with graph.inserting_before(a.next):
                        u = _emit_permute(graph, a, region.td[a], key, inverse=True)
                    node.replace_input_with(a, u)
                    made[("U", a, "out")] = u
    return len(made)


def hoist_permutations(gm: GraphModule) -> HoistResult:
    """Run the pass in place on a Dynamo graph that holds ``gna_attention`` calls."""
    res = HoistResult()
    groups: dict = {}
    for node in gm.graph.nodes:
        if is_gna_op(node):
            key, why = _layout_tile(node)
            if key is None:
                res.skipped.append((node.name, why))
            else:
                groups.setdefault(key, []).append(node)
    claimed: set = set()
    for key, seeds in groups.items():
        region = _Region(seeds)
        err = _check(region)
        if err is None and claimed & set(region.td):
            err = "region overlaps a region of another tile"
        if err is None:  # compare elements moved: boundary tensors vs q, k, v, o of every call
            moved = sum(_numel(a) for a in {a for a, _ in region.entries}) + \
                sum(_numel(n) for n in {n for n, _ in region.exits})
            per_call = sum(_numel(x) for s in seeds for x in (*s.args[:3], s))
            if moved >= per_call:
                err = f"no gain: {moved} elements permuted at the boundaries vs {per_call} per call"
        if err is not None:
            res.skipped += [(s.name, err) for s in seeds]
            continue
        claimed |= set(region.td)
        made = _rewrite(gm, region, key)
        res.regions += 1
        res.calls += len(seeds)
        res.permutes += made
        res.permutes_without += 4 * len(seeds)
    if res.regions:
        gm.graph.lint()
        gm.recompile()
    return res
