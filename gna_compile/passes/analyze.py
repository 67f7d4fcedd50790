"""Analyze every SDPA call of a graph: supported arguments? token layout? key mask? decision.

Produces one :class:`CallRecord` per call; only records with ``decision == "gna"`` are
rewritten. Each refusal carries a readable reason, because anything not proven stays dense.
"""

from __future__ import annotations

import sympy
from torch.fx import GraphModule

from .decide import decide
from .find_sdpa import SdpaCall, find_sdpa
from .keymask import key_mask_problem, keys_unmasked
from .layout import Axis, LayoutTracer, Segment, format_layout, same_layout
from .record import CallRecord
from .spatial import axis_problem
from .symbolic import example_value, find_shape_env, hint, same, shape_of

__all__ = ["analyze"]


def _show(shape, env) -> tuple:
    out = []
    for s in shape:
        h = hint(s, env)
        out.append(h if s.is_Integer or h is None else f"{s}={h}")
    return tuple(out)


def analyze(gm: GraphModule, policy) -> list[CallRecord]:
    tracer, env = LayoutTracer(), find_shape_env(gm.graph)
    return [_analyze_call(c, policy, tracer, env) for c in find_sdpa(gm.graph)]


def _analyze_call(c: SdpaCall, policy, tracer, env) -> CallRecord:
    qs, ks, vs = shape_of(c.q), shape_of(c.k), shape_of(c.v)
    rec = CallRecord(c.module or "<top>", *(_show(s, env) if s else None for s in (qs, ks, vs)))
    rec.plan["node"], rec.plan["call"] = c.node, c
    if qs is None or ks is None or vs is None or not (len(qs) == len(ks) == len(vs) == 4):
        rec.reason = "q/k/v are not 4-D [B, H, N, D] tensors"
        return rec
    if not (isinstance(c.dropout_p, (int, float)) and c.dropout_p == 0):
        rec.reason = f"dropout_p={c.dropout_p} (the GNA op has no attention dropout)"
        return rec
    if c.is_causal is not False:
        rec.reason = f"is_causal={c.is_causal} (causal over the flat sequence is not a spatial mask)"
        return rec
    if not same(qs[1], ks[1]) and not (c.enable_gqa is True):
        rec.reason = f"q has {qs[1]} heads but k has {ks[1]} without enable_gqa"
        return rec
    if c.scale is None:
        if not qs[3].is_Integer:
            rec.reason = "symbolic head dim: cannot fix the default scale"
            return rec
        scale = float(int(qs[3])) ** -0.5
    elif isinstance(c.scale, (int, float)):
        scale = float(c.scale)
    else:
        rec.reason = "scale is a run-time value"
        return rec
    if c.attn_mask is not None:
        problem = key_mask_problem(c.attn_mask, qs, ks)
        if problem:
            rec.reason = problem
            return rec

    lq, lk = tracer.trace(c.q, 2), tracer.trace(c.k, 2)
    if not same_layout(lq, lk):
        if not same(qs[2], ks[2]):
            rec.reason = "cross-attention: keys are not the query tokens"
        else:
            rec.reason = f"q and k token layouts differ: {format_layout(lq)} vs {format_layout(lk)}"
        rec.layout = f"q: {format_layout(lq)}"
        return rec
    rec.layout = format_layout(lq)
    layout = _resolve_grid(rec, _check_spatial(rec, lq, tracer, env), policy, env)
    if layout is None:
        return rec
    gi = next(i for i, s in enumerate(layout) if s.grid)
    if policy.action_for(rec.module)[0] == "auto":
        # The simulator's choice depends on the sizes: fix them (Dynamo guards on it, so
        # another size recompiles and is decided afresh).
        layout = _specialize(layout)
        if layout is None:
            rec.reason = "symbolic token count with no source dim to read it from"
            return rec
    axes = [a for a in layout[gi].axes if not same(a.size, 1)]
    grid = tuple(hint(a.size, env) for a in axes)
    if not 1 <= len(axes) <= 3 or any(g is None for g in grid):
        rec.reason = f"grid {format_layout(layout[gi:gi + 1])} has {len(axes)} dims (GNA supports 1-3)"
        return rec
    pre_segs, suf_segs = layout[:gi], layout[gi + 1:]
    pre_n = sum((s.size for s in pre_segs), sympy.Integer(0))
    suf_n = sum((s.size for s in suf_segs), sympy.Integer(0))
    prefix, suffix = hint(pre_n, env), hint(suf_n, env)
    rec.grid, rec.extra_prefix, rec.extra_suffix = grid, prefix, suffix

    spatial = True
    if c.attn_mask is not None:
        spatial = not keys_unmasked(c.attn_mask, pre_n, sympy.expand(pre_n + layout[gi].size))
        rec.key_mask = "keys" if spatial else "keys (extra tokens only)"

    decide(rec, policy, grid, prefix, suffix)
    if rec.rewritten and not _guard_window(axes, rec):
        rec.decision, rec.reason = "dense", "symbolic grid size with no source dim to guard on"
    rec.plan.update(axes=axes, pre=pre_segs, suf=suf_segs, scale=scale, spatial=spatial)
    return rec


def _symint(axis):
    if axis.origin is None:
        return None
    node, dim = axis.origin
    return example_value(node).shape[dim]


def _specialize(layout):
    """The layout with every symbolic size fixed to its example value (guarded), or None."""
    out = []
    for seg in layout:
        axes = []
        for a in seg.axes:
            if not a.size.is_Integer:
                v = _symint(a)
                if v is None:
                    return None
                a = Axis(sympy.Integer(int(v)), a.origin)  # int() installs the guard
            axes.append(a)
        out.append(Segment(tuple(axes), seg.grid))
    return tuple(out)


def _guard_window(axes, rec) -> bool:
    """A fixed window on a symbolic grid: guard ``size >= dilation * window`` per dim, so a
    smaller input recompiles (and is refused with a reason) instead of failing in the op."""
    for a, w, d in zip(axes, rec.window, rec.dilation):
        if a.size.is_Integer:
            continue
        v = _symint(a)
        if v is None:
            return False
        if not bool(v >= w * d):  # bool() installs the guard
            return False
    return True


def _check_spatial(rec, layout, tracer, env):
    """Grid segments whose axes are not provably image/video dims become opaque tokens."""
    out = []
    for seg in layout:
        problem = next((p for p in (axis_problem(tracer, a, env) for a in seg.axes) if p), None) \
            if seg.grid else None
        if problem:
            rec.plan["not_spatial"] = problem
            seg = Segment((Axis(seg.size, None),), False)
        out.append(seg)
    return tuple(out)


def _resolve_grid(rec, layout, policy, env):
    """Return a layout with exactly one grid segment (from the graph or the policy), or None."""
    grids = [s for s in layout if s.grid]
    if len(grids) > 1:
        rec.reason = f"{len(grids)} separate token grids in one sequence"
        return None
    if grids:
        return layout
    if policy.layout is None:
        why = rec.plan.get("not_spatial") or "no grid in the graph"
        rec.reason = f"layout not provable ({why}); give Policy(layout=...)"
        return None
    matches = []
    for i, seg in enumerate(layout):
        n = hint(seg.size, env)
        try:
            shape = policy.grid_for(n) if n is not None else None
        except ValueError as e:
            rec.reason = f"Policy(layout=...) returned a bad shape for {n} tokens: {e}"
            return None
        if shape is not None:
            matches.append((i, shape))
    if len(matches) != 1:
        sizes = [hint(s.size, env) for s in layout]
        rec.reason = (f"layout not provable; Policy(layout=...) matches {len(matches)} of the token "
                      f"segments {sizes} (needs exactly one)")
        return None
    i, shape = matches[0]
    if not layout[i].size.is_Integer:  # the policy's grid is fixed: so must this size be
        if _specialize(layout[i:i + 1]) is None:
            rec.reason = "symbolic token count with no source dim to read it from"
            return None
    grid = Segment(tuple(Axis(sympy.Integer(n), None) for n in shape), True)
    rec.layout += f" -> policy grid {tuple(shape)}"
    return layout[:i] + (grid,) + layout[i + 1:]
