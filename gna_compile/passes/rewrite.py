"""Replace analyzed attention sites with ``gna_compile::gna_attention`` in the ATen graph.

Grid sizes and extra-token counts that stay symbolic are computed at run time from the
graph's own size symbols (placeholders, ``aten.sym_size``), so one graph serves every size.
The decision (window, stride, tiles, key-mask proof) is written into the op's arguments, and
kept on the node as ``meta["gna"]`` for permutation hoisting and the report.
"""

from __future__ import annotations

import operator

import sympy
import torch
from torch.fx import Graph

from .record import CallRecord
from .symbolic import env_expr, find_shape_env, val, whole_sources

__all__ = ["rewrite", "rewrite_backward", "GNA_OP", "SymEmitter", "set_val"]

GNA_OP = torch.ops.gna_compile.gna_attention.default
GNA_LSE_OP = torch.ops.gna_compile.gna_attention_lse.default
GNA_BWD = torch.ops.gna_compile.gna_attention_backward.default
SITE_BWD = torch.ops.gna_compile.sdpa_site_backward.default
SITE_OP = torch.ops.gna_compile.sdpa_site.default


def set_val(node, fake_mode) -> None:
    """Record a new node's fake value (Inductor and later passes read ``meta["val"]``)."""
    def v(a):
        return val(a) if isinstance(a, torch.fx.Node) else a
    args = torch.fx.node.map_aggregate(node.args, v)
    kwargs = torch.fx.node.map_aggregate(node.kwargs, v)
    with fake_mode:
        node.meta["val"] = node.target(*args, **kwargs)


class SymEmitter:
    """Emits graph nodes computing a sympy size expression from the graph's size symbols."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.sources: dict = {}
        # whole symbol -> (size symbol, k): w = s // k (symbolic.learn_whole_quotients)
        self.whole = whole_sources(find_shape_env(graph))
        for n in graph.nodes:
            if n.op != "placeholder":
                continue
            v = val(n)
            if isinstance(v, torch.SymInt) and isinstance(env_expr(v), sympy.Symbol):
                self.sources.setdefault(env_expr(v), n)
        for n in graph.nodes:
            v = val(n)
            if n.op == "placeholder" and isinstance(v, torch.Tensor):
                for d, s in enumerate(v.shape):
                    e = env_expr(s)
                    if isinstance(e, sympy.Symbol) and e not in self.sources:
                        self.sources[e] = (n, d)

    def emit(self, expr):
        """An int, or a node computing ``expr`` (inserted at the current insertion point)."""
        expr = sympy.sympify(expr)
        if expr.is_Integer:
            return int(expr)
        if isinstance(expr, sympy.Symbol) and expr in self.whole:
            sym, k = self.whole[expr]
            return self._fold(operator.floordiv, [sym, sympy.Integer(k)])
        if isinstance(expr, sympy.Symbol):
            src = self.sources.get(expr)
            if src is None:
                raise ValueError(f"size symbol {expr} has no source in the graph")
            if isinstance(src, tuple):
                node, d = src
                out = self.graph.call_function(torch.ops.aten.sym_size.int, (node, d))
                out.meta["val"] = val(node).shape[d]
                return out
            return src
        if isinstance(expr, sympy.Add):
            return self._fold(operator.add, expr.args)
        if isinstance(expr, sympy.Mul):
            return self._fold(operator.mul, expr.args)
        if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) > 0:
            return self._fold(operator.mul, [expr.base] * int(expr.exp))
        if type(expr).__name__ == "FloorDiv":
            return self._fold(operator.floordiv, expr.args)
        raise ValueError(f"size {expr} cannot be computed at run time")

    def _fold(self, fn, parts):
        acc = None
        for p in parts:
            x = self.emit(p)
            if acc is None:
                acc = x
                continue
            node = self.graph.call_function(fn, (acc, x))
            a, b = (val(t) if isinstance(t, torch.fx.Node) else t for t in (acc, x))
            node.meta["val"] = fn(a, b)
            acc = node
        return acc


def rewrite(graph: Graph, records: list[CallRecord], fake_mode, with_lse: bool = False) -> int:
    """Rewrite every record with ``decision == "gna"``; returns how many were rewritten.
    ``with_lse`` (joint training graphs): the forward is the LSE op, so that its backward can
    read the saved out and LSE and the mode the forward ran in; users see its output through
    ``getitem 0``."""
    emitter, count = SymEmitter(graph), 0
    for rec in records:
        if not rec.rewritten:
            continue
        node, plan = rec.plan["node"], rec.plan
        q, k, v = node.args[:3]
        with graph.inserting_before(node):
            try:
                shape = [emitter.emit(e) for e in plan["axes"]]
                prefix, suffix = emitter.emit(plan["prefix"]), emitter.emit(plan["suffix"])
            except ValueError as e:
                rec.decision, rec.reason = "dense", str(e)
                continue
            args = (q, k, v, shape, list(rec.window), list(rec.stride), list(rec.dilation),
                    list(rec.causal), prefix, suffix, plan["scale"], plan["mask"],
                    bool(plan["spatial"]), list(rec.q_tile or ()), list(rec.kv_tile or ()), "auto")
            new = graph.call_function(GNA_LSE_OP if with_lse else GNA_OP, args)
            set_val(new, fake_mode)
            outs = [new]
            if with_lse:
                outs = [graph.call_function(operator.getitem, (new, i)) for i in (0, 1, 2)]
                for i, o in enumerate(outs):
                    o.meta["val"] = val(new)[i]
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack", "seq_nr", "original_aten"):
            if key in node.meta:
                for n in (new, *outs):
                    n.meta[key] = node.meta[key]
        new.meta["gna"] = dict(
            module=rec.module, site=rec.site, grid=rec.grid, extra_prefix=rec.extra_prefix,
            extra_suffix=rec.extra_suffix, q_tile=rec.q_tile, kv_tile=rec.kv_tile)
        plan["gna_args"] = args
        plan["gna_node"], plan["gna_outs"] = new, outs
        node.replace_all_uses_with(outs[0])
        graph.erase_node(node)
        count += 1
    return count


def rewrite_backward(graph: Graph, records: list[CallRecord], fake_mode) -> None:
    """In a joint (training) graph, the backward of a rewritten site is the GNA backward with
    the same decision (read from the forward node, after fill_tiles), fed the forward's saved
    out and LSE and its recorded dense mode (so the backward follows its forward, whatever
    mode is on when it runs); a site backward whose forward was not rewritten stays as it is.
    Backward and forward are paired by the site id both carry, never by their q, k, v (two
    calls may share them and differ in scale, window or mask)."""
    done = [r for r in records if r.rewritten and "gna_args" in r.plan]
    by_site = {r.site: r for r in done}
    if len(by_site) != len(done):
        raise RuntimeError("gna_compile: two rewritten attention calls share a site id; refusing to pair "
                           "their backwards by guess")
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not SITE_BWD:
            continue
        rec = by_site.get(node.args[8])
        if rec is None:
            continue
        fwd = rec.plan["gna_node"]
        if fwd.target is not GNA_LSE_OP:
            raise RuntimeError(f"gna_compile: the forward {fwd.name} of a training graph was rewritten "
                               f"without its LSE; refusing to compile a backward that would rerun it")
        g = fwd.args
        out, lse, dense = rec.plan["gna_outs"]
        with graph.inserting_before(node):
            new = graph.call_function(GNA_BWD, (node.args[0], None, *g[:3], out, lse, *g[3:], dense))
        set_val(new, fake_mode)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    dense = {n.args[7] for n in graph.nodes if n.op == "call_function" and n.target is SITE_OP}
    for node in graph.nodes:  # every backward left must belong to a forward left dense
        if node.op == "call_function" and node.target is SITE_BWD and node.args[8] not in dense:
            raise RuntimeError(f"gna_compile: the backward {node.name} of a rewritten attention call was not "
                               f"rewritten with it; refusing to compile wrong gradients")


def fill_tiles(graph: Graph) -> None:
    """GNA calls (and their backwards) written into the model without tiles get the tiling
    the op would choose at run time (``tile_choice.choose_tiles``), now, so hoisting and the op
    run the same one."""
    from ..config import make_spec
    from ..kernels.tile_choice import choose_tiles
    from .ops import args_of, changed_by_a_pass
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in (GNA_OP, GNA_LSE_OP, GNA_BWD):
            continue
        a = args_of(node)
        static = [a["shape"], a["window"], a["stride"], a["dilation"]]
        if a["q_tile"] or not all(isinstance(x, int) for xs in static for x in xs) or not all(
                isinstance(a[k], int) for k in ("extra_prefix", "extra_suffix")):
            continue
        try:
            spec = make_spec(tuple(a["shape"]), tuple(a["window"]), tuple(a["stride"]),
                             tuple(a["dilation"]), tuple(a["causal"]))
            q_tile, kv_tile = choose_tiles(spec, a["extra_prefix"], a["extra_suffix"])
        except ValueError:
            continue
        a.update(q_tile=list(q_tile), kv_tile=list(kv_tile))
        node.args, node.kwargs = tuple(a[x.name] for x in node.target._schema.arguments), {}
        changed_by_a_pass(node)
        meta = node.meta.setdefault("gna", {})
        meta.setdefault("module", node.name)
        meta.update(q_tile=tuple(q_tile), kv_tile=tuple(kv_tile))
