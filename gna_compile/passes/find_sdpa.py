"""Find the attention calls in a Dynamo FX graph and read their arguments.

Both spellings Dynamo records (``torch.nn.functional.scaled_dot_product_attention`` and
``torch._C._nn.scaled_dot_product_attention``) are matched; positional and keyword arguments
are normalized into one record, with the owning module's qualified name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch.fx import Graph, Node

from .ops import arg, is_sdpa

__all__ = ["SdpaCall", "find_sdpa", "module_name"]


@dataclass
class SdpaCall:
    node: Node
    q: Node
    k: Node
    v: Node
    attn_mask: Any
    dropout_p: Any
    is_causal: Any
    scale: Any
    enable_gqa: Any
    module: str


def module_name(node: Node) -> str:
    """Qualified name of the innermost module that made this call (``transformer_blocks.0.attn``)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = re.sub(r"^L\['[^']*'\]\.?", "", path)
    path = re.sub(r"(?:\.__dict__\['_modules'\]|\._modules)\['([^']*)'\]", r".\1", path)
    path = re.sub(r"^__dict__\['_modules'\]\['([^']*)'\]", r"\1", path)
    path = re.sub(r"\['([^']*)'\]|\[(\d+)\]", lambda m: "." + (m.group(1) or m.group(2)), path)
    return path.strip(".")


def find_sdpa(graph: Graph) -> list[SdpaCall]:
    calls = []
    for node in graph.nodes:
        if not is_sdpa(node):
            continue
        calls.append(SdpaCall(
            node=node, q=arg(node, 0, "query"), k=arg(node, 1, "key"), v=arg(node, 2, "value"),
            attn_mask=arg(node, 3, "attn_mask"), dropout_p=arg(node, 4, "dropout_p", 0.0),
            is_causal=arg(node, 5, "is_causal", False), scale=arg(node, 6, "scale"),
            enable_gqa=node.kwargs.get("enable_gqa", False), module=module_name(node)))
    return calls
