"""Analyze every attention site of a functionalized ATen graph: one :class:`CallRecord` each.

Supported arguments? (heads, batch, scale, key mask) A proven token layout? (:mod:`layout`)
Which config? (:mod:`decide`) Every refusal carries a readable reason: anything not proven
stays dense. Sizes that the decision depends on (the grid, the extra-token counts) are fixed
with guards, never the batch; a dim the user marked dynamic is never fixed (refused instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy
from torch.fx import Graph

from .decide import decide
from .keymask import key_mask_problem, keys_unmasked
from .layout import TokenLayout, format_layout, token_layout
from .ops import args_of
from .provenance import Provenance, dim_size
from .record import CallRecord
from .sites import SITE_OP
from .symbolic import guard_at_least, guard_equal, hint, marked_dynamic, same, shape_of

__all__ = ["Context", "analyze"]


@dataclass
class Context:
    """What the analysis needs besides the graph."""

    policy: object
    sites: dict                                   # site id -> Site
    input_kinds: dict = field(default_factory=dict)  # ATen placeholder -> "input" | "leaf"
    dynamic_sources: set = field(default_factory=set)  # "L['x'].size()[2]" marked dynamic
    actions: dict = field(default_factory=dict)   # site id -> (action, source) or a reason str


def _show(shape, env):
    out = []
    for s in shape:
        h = hint(s, env)
        out.append(h if s.is_Integer or h is None else f"{s}={h}")
    return tuple(out)


def analyze(graph: Graph, ctx: Context, shape_env) -> list[CallRecord]:
    prov = Provenance(graph, ctx.input_kinds)
    records = []
    for node in graph.nodes:
        if node.op == "call_function" and node.target is SITE_OP:
            site = ctx.sites.get(node.args[-1])
            rec = CallRecord(site.module if site else "<unknown>", site=node.args[-1],
                             where=site.where if site else "")
            rec.plan["node"] = node
            _analyze(rec, node, prov, ctx, shape_env)
            records.append(rec)
    return records


def _analyze(rec: CallRecord, node, prov: Provenance, ctx: Context, env) -> None:
    a = args_of(node)
    q, k, v, mask = a["q"], a["k"], a["v"], a["attn_mask"]
    qs, ks, vs = shape_of(q), shape_of(k), shape_of(v)
    rec.q_shape, rec.k_shape, rec.v_shape = (_show(s, env) if s else None for s in (qs, ks, vs))
    if qs is None or ks is None or vs is None or not (len(qs) == len(ks) == len(vs) == 4):
        rec.reason = "q/k/v are not 4-D [B, H, N, D] tensors"
        return
    if a["is_causal"]:
        rec.reason = "is_causal=True (causal over the flat sequence is not a spatial mask)"
        return
    if not (same(qs[0], ks[0]) and same(ks[0], vs[0])):
        rec.reason = f"q batch {qs[0]} and k/v batch {ks[0]}/{vs[0]} differ (SDPA broadcasting)"
        return
    if not same(ks[1], vs[1]):
        rec.reason = f"k has {ks[1]} heads but v has {vs[1]}"
        return
    gqa = a["enable_gqa"]
    if not same(qs[1], ks[1]):
        hq, hk = hint(qs[1], env), hint(ks[1], env)
        ok = hq is not None and hk is not None and hk > 0 and hq % hk == 0 and (gqa or hk == 1) \
            and qs[1].is_Integer and ks[1].is_Integer
        if not ok:
            rec.reason = f"q has {qs[1]} heads but k has {ks[1]}" + ("" if gqa else " without enable_gqa")
            return
    if a["scale"] is None:
        if not qs[3].is_Integer:
            rec.reason = "symbolic head dim: cannot fix the default scale"
            return
        scale = float(int(qs[3])) ** -0.5
    else:
        scale = float(a["scale"])
    if mask is not None:
        problem = key_mask_problem(mask, qs, ks)
        if problem:
            rec.reason = problem
            return
    lay = token_layout(prov, q, k, ctx.policy, env)
    if isinstance(lay, str):
        rec.layout, rec.reason = "-", lay
        return
    rec.layout = format_layout(lay.segments, lay.grid_index, lay.policy_grid)
    rec.source = lay.grid.source if lay.grid is not None else "policy layout"
    got = ctx.actions.get(rec.site, (ctx.policy.action_for(rec.module)))
    if isinstance(got, str):  # e.g. a graph shared by modules whose rules differ
        rec.reason = got
        return
    action, source = got
    sizes = _fixed_sizes(rec, lay, action, env, ctx, prov)
    if sizes is None:
        return
    grid, axes_exprs, prefix, suffix = sizes
    rec.grid, rec.extra_prefix, rec.extra_suffix = grid, prefix, suffix
    spatial_mask = True
    if mask is not None:
        lo = lay.prefix
        hi = sympy.expand(lo + dim_size(lay.segments[lay.grid_index][0]))
        spatial_mask = not keys_unmasked(prov, mask, lo, hi)
        rec.key_mask = "keys" if spatial_mask else "keys (extra tokens only)"
    decide(rec, action, source, ctx.policy, grid, prefix, suffix)
    if rec.rewritten:
        for e, w, d in zip(axes_exprs, rec.window, rec.dilation):
            if not guard_at_least(e, w * d, env):
                rec.decision, rec.reason = "dense", f"grid size {e} is smaller than window*dilation {w * d}"
                return
    rec.plan.update(axes=axes_exprs, prefix=lay.prefix, suffix=lay.suffix, scale=scale,
                    spatial=spatial_mask, mask=mask)


def _fixed_sizes(rec, lay: TokenLayout, action, env, ctx, prov):
    """(grid ints, grid size exprs, prefix int, suffix int) with the guards the decision needs,
    or None with ``rec.reason`` set. 'auto' and a policy grid fix every size; an explicit rule
    fixes only the extra-token counts' hints for the decision (the op reads sizes at run time)."""
    if lay.policy_grid is not None:
        seg = lay.segments[lay.grid_index][0]
        n = dim_size(seg)
        if guard_equal(n, env, ctx.dynamic_sources) is None:
            rec.reason = _dynamic_reason(n, env, ctx, "Policy(layout=...) gives a fixed grid")
            return None
        exprs = tuple(sympy.Integer(s) for s in lay.policy_grid)
    else:
        exprs = lay.grid.sizes
    fix_all = action == "auto" or lay.policy_grid is not None
    grid, extras = [], []
    for e in (*exprs, lay.prefix, lay.suffix):
        v = guard_equal(e, env, ctx.dynamic_sources) if fix_all else hint(e, env)
        if v is None:
            if fix_all:
                rec.reason = _dynamic_reason(e, env, ctx, "'auto' picks the window for a fixed grid")
            else:
                rec.reason = f"symbolic size {e} has no example value"
            return None
        (grid if len(grid) < len(exprs) else extras).append(v)
    if fix_all:
        exprs = tuple(sympy.Integer(g) for g in grid)
    return tuple(grid), exprs, extras[0], extras[1]


def _dynamic_reason(expr, env, ctx, why) -> str:
    srcs = marked_dynamic(expr, env, ctx.dynamic_sources)
    if srcs:
        return (f"gna: {why}, but size {expr} depends on {', '.join(srcs)}, marked dynamic "
                f"(torch._dynamo.mark_dynamic): mark only the batch dim dynamic, or give a "
                f"GNA(window=...) rule for this call")
    return f"gna: size {expr} has no example value to fix"
