"""Attention call sites: the one pass that runs on the Dynamo graph.

Each ``scaled_dot_product_attention`` call in a captured graph becomes a
``gna_compile::sdpa_site`` op that carries a site id and computes plain SDPA. It survives
functionalization and decomposition as one node, so the analyses that follow work on the
canonical ATen graph (no in-place writes, no ``getattr``, every argument by schema) and still
see the call whole. Calls the GNA op could never serve (dropout, ``is_causal``, a float bias,
run-time arguments, a mask that needs gradients) are left as they are, with the reason
recorded here; causal calls and float biases become sites too (dense, reason from the
analysis), so the token layout flows through them.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx import GraphModule, Node

__all__ = ["Site", "mark_sites", "SITE_OP", "module_path", "SDPA"]

# The builtin, captured at import: our own ops call it, so a patched
# F.scaled_dot_product_attention (gna_compile.calls.recording) never sees them.
SDPA = torch._C._nn.scaled_dot_product_attention
_SDPA = {F.scaled_dot_product_attention, SDPA, torch.ops.aten.scaled_dot_product_attention.default}
_IDS = itertools.count()


@torch.library.custom_op("gna_compile::sdpa_site", mutates_args=())
def _site_op(q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor], is_causal: bool,
             scale: Optional[float], enable_gqa: bool, site: int) -> Tensor:
    return SDPA(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                enable_gqa=enable_gqa).contiguous()


@_site_op.register_fake
def _(q, k, v, attn_mask, is_causal, scale, enable_gqa, site):
    return SDPA(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                enable_gqa=enable_gqa).contiguous()


@torch.library.custom_op("gna_compile::sdpa_site_backward", mutates_args=())
def _site_bwd(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, attn_mask: Optional[Tensor],
              is_causal: bool, scale: Optional[float], enable_gqa: bool, site: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients by recomputing SDPA under autograd (sites carry no dropout, so this is exact).
    ``site``: the forward's site id, so the rewrite pairs each backward with its own forward
    (two calls may share q, k, v and differ in scale or mask)."""
    with torch.enable_grad(), torch._C._SetExcludeDispatchKeyGuard(
            torch._C.DispatchKey.AutogradFunctionality, False), torch._C._SetExcludeDispatchKeyGuard(
            torch._C.DispatchKey.ADInplaceOrView, False):
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        out = SDPA(qq, kk, vv, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                   enable_gqa=enable_gqa)
        grads = torch.autograd.grad(out, (qq, kk, vv), grad.to(out.dtype))
    return tuple(g.contiguous() for g in grads)


@_site_bwd.register_fake
def _(grad, q, k, v, attn_mask, is_causal, scale, enable_gqa, site):
    return tuple(t.new_empty(t.shape) for t in (q, k, v))


def _setup(ctx, inputs, output):
    q, k, v, attn_mask, is_causal, scale, enable_gqa, site = inputs
    ctx.save_for_backward(q, k, v)
    ctx.rest = (attn_mask, is_causal, scale, enable_gqa, site)


def _backward(ctx, grad):
    q, k, v = ctx.saved_tensors
    dq, dk, dv = _site_bwd(grad, q, k, v, *ctx.rest)
    return dq, dk, dv, None, None, None, None, None


_site_op.register_autograd(_backward, setup_context=_setup)
SITE_OP = torch.ops.gna_compile.sdpa_site.default


@dataclass
class Site:
    """One attention call in a captured graph, as Dynamo saw it."""

    id: int
    path: str                 # nn_module_stack path relative to the frame ("L['self'].attn")
    where: str = ""           # file:line of the call
    reason: str = ""          # why it was not marked (stays plain SDPA), "" if marked
    module: str = ""          # the model's own module name (filled by passes.names)
    frame_root: object = field(default=None, repr=False)  # the module the path is relative to

    @property
    def marked(self) -> bool:
        return not self.reason


def module_path(node: Node) -> str:
    """The innermost nn_module_stack entry of a node (Dynamo's frame-relative path)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _where(node: Node) -> str:
    tb = node.meta.get("stack_trace") or ""
    found = [f for f in re.findall(r'File "([^"]+)", line (\d+)', tb) if "/gna_compile/" not in f[0]]
    if not found:
        return ""
    path, line = found[-1]
    return f"{path.rsplit('/', 1)[-1]}:{line}"


_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}


def _sdpa_args(node: Node) -> dict:
    a = dict(_DEFAULTS)
    a.update(zip(_ARGS, node.args))
    a.update(node.kwargs)
    return a


def _unsupported(a: dict) -> str:
    for name in ("query", "key", "value"):
        v = a.get(name)
        if not isinstance(v, Node) or not isinstance(v.meta.get("example_value"), torch.Tensor):
            return f"{name} is not a tensor in the graph"
    if not isinstance(a["dropout_p"], (int, float)) or isinstance(a["dropout_p"], bool):
        return "dropout_p is a run-time value"
    if a["dropout_p"] != 0:
        return f"dropout_p={a['dropout_p']} (the GNA op has no attention dropout)"
    if not isinstance(a["is_causal"], bool):
        return "is_causal is a run-time value"
    if a["scale"] is not None and (not isinstance(a["scale"], (int, float)) or isinstance(a["scale"], bool)):
        return "scale is a run-time value"
    if not isinstance(a["enable_gqa"], bool):
        return "enable_gqa is a run-time value"
    m = a["attn_mask"]
    if m is not None:
        mv = m.meta.get("example_value") if isinstance(m, Node) else None
        if not isinstance(mv, torch.Tensor):
            return f"attn_mask of type {type(m).__name__} is not a graph tensor"
        if mv.requires_grad:
            return f"attn_mask is a {mv.dtype} bias that needs gradients"
    return ""


def mark_sites(gm: GraphModule) -> list[Site]:
    """Replace every supported SDPA call in ``gm`` by the site op; one :class:`Site` per call
    (supported or not), in graph order."""
    sites, changed = [], False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _SDPA:
            continue
        a = _sdpa_args(node)
        site = Site(next(_IDS), module_path(node), _where(node), _unsupported(a))
        sites.append(site)
        if not site.marked:
            continue
        scale = None if a["scale"] is None else float(a["scale"])
        node.target = SITE_OP
        node.args = (a["query"], a["key"], a["value"], a["attn_mask"], a["is_causal"], scale,
                     a["enable_gqa"], site.id)
        node.kwargs = {}
        changed = True
    if changed:
        gm.recompile()
    for name, sub in gm.named_modules():  # bodies of higher-order ops (activation checkpoint, ...)
        if sub is gm or not isinstance(sub, GraphModule):
            continue
        for node in sub.graph.nodes:
            if node.op == "call_function" and node.target in _SDPA:
                sites.append(Site(next(_IDS), module_path(node), _where(node),
                                  f"inside the higher-order op body {name} (e.g. torch.utils.checkpoint), "
                                  f"which the analysis does not enter"))
    return sites
