"""Replace an analyzed SDPA node with ``torch.ops.gna_compile.gna_attention.default``.

Grid sizes and extra-token counts that are symbolic (``dynamic=True``) are read at run time
from the tensor dims they came from (``x.size(d)``), so one graph serves every size. The
chosen config is left on the new node as ``node.meta["gna"]`` for later passes (permutation
hoisting needs the grid, tiles and extra tokens).
"""

from __future__ import annotations

import operator

import sympy
import torch
from torch.fx import Graph, GraphModule

from .ops import GNA_OP
from .record import CallRecord
from .symbolic import example_value

__all__ = ["rewrite", "key_mask_2d"]


def key_mask_2d(mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A broadcastable boolean key mask ([B|1, 1, 1, N], [1, N], ...) as the op's [B, N]."""
    return mask.reshape(-1, mask.shape[-1]).expand(q.shape[0], mask.shape[-1])


class _Unsized(Exception):
    pass


def _emit_size(graph: Graph, size, origin):
    """An int, or a graph node computing a symbolic size from the dim it was read from."""
    size = sympy.sympify(size)
    if size.is_Integer:
        return int(size)
    if origin is None:
        raise _Unsized(f"symbolic size {size} has no source tensor dim")
    node, dim = origin
    out = graph.call_method("size", (node, dim))
    out.meta["example_value"] = example_value(node).shape[dim]
    return out


def _emit_count(graph: Graph, segments):
    """Total token count of opaque segments (an int, or a node summing run-time sizes)."""
    total = 0
    for seg in segments:
        for ax in seg.axes:
            n = _emit_size(graph, ax.size, ax.origin)
            if isinstance(total, int) and isinstance(n, int):
                total += n
            elif isinstance(total, int) and total == 0:
                total = n
            else:
                total = graph.call_function(operator.add, (total, n))
    return total


def rewrite(gm: GraphModule, records: list[CallRecord]) -> int:
    """Rewrite every record with ``decision == "gna"``; returns how many were rewritten."""
    graph, count = gm.graph, 0
    for rec in records:
        if not rec.rewritten:
            continue
        node, call, plan = rec.plan["node"], rec.plan["call"], rec.plan
        with graph.inserting_before(node):
            try:
                shape = [_emit_size(graph, a.size, a.origin) for a in plan["axes"]]
                prefix = _emit_count(graph, plan["pre"])
                suffix = _emit_count(graph, plan["suf"])
            except _Unsized as e:
                rec.decision, rec.reason = "dense", str(e)
                continue
            mask = None
            if call.attn_mask is not None:
                mask = graph.call_function(key_mask_2d, (call.attn_mask, call.q))
                try:
                    mask.meta["example_value"] = key_mask_2d(example_value(call.attn_mask),
                                                             example_value(call.q))
                except Exception:  # meta is only informative here
                    pass
            args = (call.q, call.k, call.v, shape, list(rec.window), list(rec.stride),
                    list(rec.dilation), list(rec.causal), prefix, suffix, plan["scale"], mask,
                    bool(plan["spatial"]), "auto")
            new = graph.call_function(GNA_OP, args)
        new.meta.update({k: v for k, v in node.meta.items() if k in (
            "example_value", "val", "nn_module_stack", "stack_trace", "source_fn_stack")})
        new.meta["gna"] = dict(
            module=rec.module, grid=rec.grid, window=rec.window, stride=rec.stride,
            dilation=rec.dilation, causal=rec.causal, extra_prefix=rec.extra_prefix,
            extra_suffix=rec.extra_suffix, q_tile=rec.q_tile, kv_tile=rec.kv_tile,
            key_mask_spatial=bool(plan["spatial"]) if mask is not None else None,
            grid_axes=[a.origin for a in plan["axes"]])
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    graph.lint()
    gm.recompile()
    return count
