"""FX passes of the ``gna`` backend, one job per module.

On the Dynamo graph: ``sites`` turns attention calls into site ops and ``names`` gives them
the model's own module names (:func:`prepare_graph`). On the functionalized ATen graph
(:class:`AtenPass`): ``provenance`` + ``op_rules`` factor every dim into source axes,
``layout``/``spatial`` prove token grids, ``keymask`` reads key masks, ``decide`` picks the
config, ``analyze`` ties them into one :class:`CallRecord` per call, ``rewrite`` swaps the
chosen calls for the GNA op and ``hoist_permutations`` keeps tokens in tiled order between
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .analyze import Context, analyze
from .names import qualify, root_names, stack_modules
from .record import CallRecord
from .rewrite import GNA_LSE_OP, GNA_OP, fill_tiles, rewrite, rewrite_backward
from .sites import mark_sites

SITE_BWD = torch.ops.gna_compile.sdpa_site_backward.default
from .symbolic import find_shape_env, learn_whole_quotients, source_name, val

__all__ = ["prepare_graph", "Prepared", "AtenPass", "CallRecord"]


@dataclass
class Prepared:
    """What the Dynamo-level pass learned about one captured graph."""

    sites: list                                   # Site, in graph order
    unmarked_records: list                        # records of calls left as plain SDPA
    kinds: list                                   # per Dynamo placeholder: input | leaf | sym
    param_index: list                             # (placeholder index, source) of parameters
    dynamic_sources: set = field(default_factory=set)
    actions: dict = field(default_factory=dict)   # site id -> (action, source) | reason


def _placeholder_info(gm):
    kinds, params, dynamic = [], [], set()
    for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder"):
        ga = n.meta.get("grapharg")
        src = source_name(ga.source) if ga is not None and ga.source is not None else ""
        ex = getattr(ga, "example", None) if ga is not None else None
        v = n.meta.get("example_value")
        if isinstance(v, torch.SymInt) or not isinstance(v, torch.Tensor):
            kinds.append("sym")
        elif "._parameters[" in src or "._buffers[" in src or isinstance(ex, torch.nn.Parameter):
            kinds.append("leaf")
            params.append((i, src))
        else:
            kinds.append("input")
        for d in getattr(ex, "_dynamo_dynamic_indices", ()) or ():
            dynamic.add(f"{src}.size()[{d}]")
    return kinds, params, dynamic


def _actions(sites, modules, policy):
    """Policy action per marked site; a reason instead when one compiled graph will serve
    several modules (a block frame reused by every block) whose rules disagree."""
    out = {}
    root = modules[-1] if modules else None
    for s in sites:
        if not s.marked:
            continue
        action = policy.action_for(s.module)
        frame = s.frame_root
        if root is not None and frame is not None and frame is not root:
            from .names import relative_path
            rel = relative_path(s.path)[1]
            names = root_names(root)
            peers = sorted(names[id(m)] for m in root.modules() if type(m) is type(frame) and id(m) in names)
            acts = {n: policy.action_for(".".join(p for p in (n, rel) if p))[0] for n in peers}
            if len(set(map(repr, acts.values()))) > 1:
                out[s.id] = (f"one compiled graph of {type(frame).__name__} serves {len(peers)} modules "
                             f"({peers[0]} ... {peers[-1]}) whose policy rules differ: kept dense; "
                             f"compile the parent module, or give those modules one rule")
                continue
        out[s.id] = action
    return out


def prepare_graph(gm: torch.fx.GraphModule, policy) -> Prepared:
    """Mark the attention sites of a Dynamo graph and name them (runs in the backend call)."""
    sites = mark_sites(gm)
    kinds, params, dynamic = _placeholder_info(gm)
    modules = stack_modules()
    ph = [n for n in gm.graph.nodes if n.op == "placeholder"]
    tensors = [(src, (ph[i].meta.get("grapharg").example if ph[i].meta.get("grapharg") else None))
               for i, src in params]
    unmarked = []
    for s in sites:
        s.module, s.frame_root = qualify(s.path, modules, tensors)
        if not s.marked:
            unmarked.append(CallRecord(s.module, reason=s.reason, site=s.id, where=s.where))
    if modules and any(s.marked for s in sites):
        policy.warn_unmatched(root_names(modules[-1]).values(), "module of the model")
    prep = Prepared(sites, unmarked, kinds, params, dynamic)
    prep.actions = _actions(sites, modules, policy)
    for s in sites:
        s.frame_root = None  # do not keep the module alive through the compiled graph
    return prep


class AtenPass:
    """The analysis, rewrite and hoisting of one captured graph, on its ATen graph."""

    def __init__(self, backend, prep: Prepared):
        self.backend, self.prep = backend, prep
        self.records: list = []

    def _input_kinds(self, gm):
        ph = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(ph) != len(self.prep.kinds):  # unexpected lifting: every input counts as data
            return {n: "input" for n in ph}
        return {n: ("input" if k == "sym" else k) for n, k in zip(ph, self.prep.kinds)}

    def run(self, gm: torch.fx.GraphModule, training: bool = False):
        """Analyze, rewrite and hoist one ATen graph: an inference graph, or a joint forward +
        backward graph (training: the site backwards follow their forwards, and hoisting keeps
        the backward's tokens tiled too)."""
        graph = gm.graph
        be = self.backend
        if gm in be.graphs:
            return  # done already
        training = training or any(n.op == "call_function" and n.target is SITE_BWD for n in graph.nodes)
        ctx = Context(be.policy, {s.id: s for s in self.prep.sites}, self._input_kinds(gm),
                      self.prep.dynamic_sources, self.prep.actions)
        env = find_shape_env(graph)
        learn_whole_quotients(graph, env)
        records = analyze(graph, ctx, env)
        fake_mode = _fake_mode(graph)
        result = None
        if be.do_rewrite:
            rewrite(graph, records, fake_mode, with_lse=training)
            fill_tiles(graph)
            if training:
                rewrite_backward(graph, records, fake_mode)
            if be.hoist and any(n.op == "call_function" and n.target in (GNA_OP, GNA_LSE_OP) for n in graph.nodes):
                from .hoist_permutations import hoist_permutations
                result = hoist_permutations(gm, records, fake_mode)
        if training:
            from .save_gna_forwards import save_gna_forwards
            save_gna_forwards(graph)
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
        for r in records:
            r.plan.clear()  # drop node references
        self.records = records
        be._record(gm, records, result)


def _fake_mode(graph):
    from torch._guards import detect_fake_mode
    vals = [val(n) for n in graph.nodes if n.op == "placeholder"]
    return detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
