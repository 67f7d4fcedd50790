"""Small models shared by the backend tests (not collected by pytest: no test_ prefix)."""

import re

import torch
import torch.nn.functional as F
from torch import nn


def heads(x, h):
    B, N, C = x.shape
    return x.view(B, N, h, C // h).transpose(1, 2)


class ViT(nn.Module):
    """Conv2d patchify, class token first, one self-attention."""

    def __init__(self, dim=16, h=2):
        super().__init__()
        self.h = h
        self.patch = nn.Conv2d(3, dim, 2, 2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, img):
        t = self.patch(img).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        q, k, v = (heads(z, self.h) for z in self.qkv(t).chunk(3, dim=-1))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class VideoBlock(nn.Module):
    """Conv3d patchify, text tokens after the video tokens, boolean text padding mask."""

    def __init__(self, dim=16, h=2):
        super().__init__()
        self.h = h
        self.patch = nn.Conv3d(4, dim, (1, 2, 2), (1, 2, 2))
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, video, text, text_mask):
        x = self.patch(video).flatten(2).transpose(1, 2)
        x = torch.cat([x, text], dim=1)
        keep = torch.ones(x.shape[0], x.shape[1] - text.shape[1], dtype=torch.bool)
        mask = torch.cat([keep, text_mask], dim=1)[:, None, None, :]
        q, k, v = (heads(z, self.h) for z in self.qkv(x).chunk(3, dim=-1))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class FluxLike(nn.Module):
    """Latents arrive already packed to [B, N, C] (no grid in the graph); text goes first."""

    def __init__(self, dim=16, h=2):
        super().__init__()
        self.h = h
        self.img_in, self.txt_in = nn.Linear(8, dim), nn.Linear(12, dim)
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, packed, text):
        x = torch.cat([self.txt_in(text), self.img_in(packed)], dim=1)
        q, k, v = (heads(z, self.h) for z in self.qkv(x).chunk(3, dim=-1))
        return torch._C._nn.scaled_dot_product_attention(q, k, v)


class BiasViT(ViT):
    """Like ViT but with an additive float bias: must stay dense."""

    def forward(self, img, bias):
        t = self.patch(img).flatten(2).transpose(1, 2)
        q, k, v = (heads(z, self.h) for z in self.qkv(t).chunk(3, dim=-1))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def graph_code(gm) -> str:
    """The attention calls of a rewritten ATen graph and what their size arguments are
    computed from, one line each (the golden view; the rest of the graph is decomposition
    detail that changes between torch versions)."""
    keep = ("gna_compile", "scaled_dot_product")
    wanted, lines = set(), []
    nodes = list(gm.graph.nodes)
    for n in nodes:
        if n.op == "call_function" and any(k in str(n.target) for k in keep):
            wanted.add(n)
    for n in reversed(nodes):  # the size arithmetic feeding them
        if n in wanted:
            for a in n.all_input_nodes:
                if not isinstance(a.meta.get("val"), torch.Tensor) and a.op != "placeholder":
                    wanted.add(a)
    for n in nodes:
        if n in wanted:
            shown = n.args[:-1] + ("<site>",) if "sdpa_site" in str(n.target) else n.args  # ids are global
            args = ", ".join([_fmt(a) for a in shown] + [f"{k}={_fmt(v)}" for k, v in n.kwargs.items()])
            target = getattr(n.target, "__name__", str(n.target))
            lines.append(f"{n.name} = {target}({args})")
    return "\n".join(lines)


def _fmt(a):
    if a == "<site>":
        return a
    if isinstance(a, torch.fx.Node):
        return a.name
    if isinstance(a, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in a) + "]"
    if isinstance(a, float):
        return f"{a:.6g}"
    return repr(a)


class reference_sdpa:
    """Patch ``F.scaled_dot_product_attention`` for eager runs: calls for which ``plan(q, k)``
    returns GNA kwargs (shape, window, ..., extra_prefix/suffix) run the reference GNA op with
    the call's own key mask; all others run the original SDPA. ``plan`` is written by the test
    from what it knows about the model, independently of the compiler's layout inference."""

    def __init__(self, plan):
        self.plan, self.calls = plan, 0

    def __enter__(self):
        import gna_compile
        self.orig = F.scaled_dot_product_attention

        def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
            q, k, v = query, key, value
            kw = self.plan(q, k)
            if kw is None:
                return self.orig(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                 scale=scale, enable_gqa=enable_gqa)
            self.calls += 1
            return gna_compile.gna_attention(q, k, v, scale=scale, key_mask=attn_mask,
                                             backend="reference", **kw)

        torch.nn.functional.scaled_dot_product_attention = sdpa
        return self

    def __exit__(self, *exc):
        torch.nn.functional.scaled_dot_product_attention = self.orig
