"""Shapes of the attention call: broadcast batches and heads, GQA, head dims, 3-D / 5-D
calls, and dynamic shapes (dynamic=True, mark_dynamic, sizes read from input.shape)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gna_compile import GNA, Policy

from blocks import DIM, Patch2d, img
from harness import DENSE, Case, Truth

G = Truth(grid=(4, 4), rewrite=True)
G46 = Truth(grid=(4, 6), rewrite=True)


class Shaped(nn.Module):
    """Patch tokens t [B, 16, C] and the raw attention call ``call(self, t) -> output``."""

    def __init__(self, call):
        super().__init__()
        self.patch = Patch2d()
        self.q, self.k, self.v = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.call = call

    def forward(self, x):
        return self.call(self, self.patch(x))


def split(x, h):
    B, N, C = x.shape
    return x.view(B, N, h, C // h).transpose(1, 2)


def sdpa(q, k, v, **kw):
    return F.scaled_dot_product_attention(q, k, v, **kw)


def _case(name, call, truth, b=1, h=8, w=8, **kw):
    return Case(f"shapes_{name}", "shapes", lambda: Shaped(call), lambda g: (img(g, b=b, h=h, w=w),), [truth], **kw)


def heads_n(m, t, hq=2, hk=2, **kw):
    return sdpa(split(m.q(t), hq), split(m.k(t)[..., :DIM * hk // hq], hk), split(m.v(t)[..., :DIM * hk // hq], hk),
                **kw)


CASES = [
    # k/v of batch 1 (sample 0's tokens) broadcast against q of batch 2: sample 1's queries
    # attend to sample 0's keys: not their own tokens
    _case("kv_batch1_broadcast", lambda m, t: sdpa(split(m.q(t), 2), split(m.k(t[:1]), 2), split(m.v(t[:1]), 2)),
          DENSE, b=2),
    # learned keys (a parameter of batch 1): no grid at all
    _case("kv_learned", lambda m, t: sdpa(split(m.q(t), 2), split(m.k(m.patch.conv.weight.new_ones(1, 16, DIM)), 2),
                                          split(m.v(t[:1]), 2)), DENSE, b=2),
    # GQA: 4 query heads, 2 key/value heads
    _case("gqa", lambda m, t: heads_n(m, t, 4, 2, enable_gqa=True), G),
    _case("gqa_4_to_1", lambda m, t: heads_n(m, t, 4, 1, enable_gqa=True), G),
    # k/v with 1 head and no enable_gqa: SDPA broadcasts the head dim
    _case("kv_one_head_broadcast", lambda m, t: heads_n(m, t, 2, 1), G),
    # q with 1 head against k/v with 2: SDPA broadcasts the queries over the heads
    _case("q_one_head_broadcast", lambda m, t: sdpa(split(m.q(t)[..., :8], 1), split(m.k(t), 2), split(m.v(t), 2)),
          Truth(grid=(4, 4))),
    # head dims 4 and 16, 1 head, 8 heads
    _case("head_dim_4", lambda m, t: sdpa(split(m.q(t), 4), split(m.k(t), 4), split(m.v(t), 4)), G),
    _case("one_head", lambda m, t: sdpa(split(m.q(t), 1), split(m.k(t), 1), split(m.v(t), 1)), G),
    _case("eight_heads", lambda m, t: sdpa(split(m.q(t), 8), split(m.k(t), 8), split(m.v(t), 8)), G),
    # a value head dim smaller than the query's (4 vs 8): a true grid, the op may not serve it
    _case("value_head_dim_4", lambda m, t: sdpa(split(m.q(t), 2), split(m.k(t), 2), split(m.v(t)[..., :8], 2)),
          Truth(grid=(4, 4))),
    _case("batch_3", lambda m, t: sdpa(split(m.q(t), 2), split(m.k(t), 2), split(m.v(t), 2)), G, b=3),
    _case("explicit_scale", lambda m, t: sdpa(split(m.q(t), 2), split(m.k(t), 2), split(m.v(t), 2), scale=0.3), G),
    # timm-style fused qkv: reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
    _case("timm_qkv", lambda m, t: sdpa(*m.qkv(t).reshape(t.shape[0], 16, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)),
          G, b=2),
    # a wrong head split: [B, N, C].view(B, h, N, C/h) mixes tokens into the head dim
    _case("wrong_head_split", lambda m, t: sdpa(*(z.reshape(t.shape[0], 2, 16, 8) for z in (m.q(t), m.k(t), m.v(t)))),
          DENSE),
    # the head dim before the tokens through a permute of [B, C/d, d, N] (heads-first layout)
    _case("heads_from_channels_first", lambda m, t: sdpa(*(z.transpose(1, 2).reshape(t.shape[0], 2, 8, 16)
                                                           .transpose(2, 3) for z in (m.q(t), m.k(t), m.v(t)))), G),
    # fewer keys than queries (the first 8 tokens): cross-attention, dense
    _case("keys_first_half", lambda m, t: sdpa(split(m.q(t), 2), split(m.k(t[:, :8]), 2), split(m.v(t[:, :8]), 2)),
          DENSE),
    # 3-D [B*h, N, d] and 5-D [B, 1, h, N, d] calls: a true grid, the compiler may refuse
    _case("sdpa_3d", lambda m, t: sdpa(*(split(z, 2).flatten(0, 1) for z in (m.q(t), m.k(t), m.v(t)))),
          Truth(grid=(4, 4)), b=2),
    _case("sdpa_5d", lambda m, t: sdpa(*(split(z, 2)[:, None] for z in (m.q(t), m.k(t), m.v(t)))),
          Truth(grid=(4, 4)), b=2),
    # dynamic shapes: dynamic=True with a GNA rule (the op reads the sizes at run time)
    _case("dynamic_true", lambda m, t: sdpa(split(m.q(t), 2), split(m.k(t), 2), split(m.v(t), 2)), G46,
          h=8, w=12, compile={"dynamic": True}),
    _case("dynamic_true_b2", lambda m, t: sdpa(split(m.q(t), 2), split(m.k(t), 2), split(m.v(t), 2)), G46,
          b=2, h=8, w=12, compile={"dynamic": True}),
    # dynamic=True and "auto": auto picks a window for a fixed grid, so it may refuse (or fix
    # the grid with a guard)
    _case("dynamic_true_auto", lambda m, t: sdpa(split(m.q(t), 2), split(m.k(t), 2), split(m.v(t), 2)),
          Truth(grid=(8, 8)), h=16, w=16, compile={"dynamic": True}, policy=Policy(default="auto")),
]


class FromShape(nn.Module):
    """The patch grid read from input.shape and used to reshape by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, DIM, 2, 2)
        self.qkv = nn.Linear(DIM, 3 * DIM)

    def forward(self, x):
        B, _, Hh, Ww = x.shape
        h, w = Hh // 2, Ww // 2
        f = self.conv(x).reshape(B, DIM, h * w).permute(0, 2, 1)
        q, k, v = self.qkv(f).view(B, h * w, 3, 2, DIM // 2).permute(2, 0, 3, 1, 4)
        o = sdpa(q, k, v)
        return o.transpose(1, 2).reshape(B, h, w, DIM)


def _marked(dims, b=1, h=8, w=12):
    def inputs(g):
        x = img(g, b=b, h=h, w=w)
        for d in dims:
            torch._dynamo.mark_dynamic(x, d)
        return (x,)
    return inputs


CASES += [
    # grid sizes computed from input.shape, on a non-square image
    Case("shapes_sizes_from_shape", "shapes", FromShape, lambda g: (img(g, h=8, w=12),), [G46]),
    Case("shapes_sizes_from_shape_dynamic", "shapes", FromShape, lambda g: (img(g, b=2, h=8, w=12),), [G46],
         compile={"dynamic": True}),
    # mark_dynamic on the batch: fine for a GNA rule and for auto
    Case("shapes_mark_dynamic_batch", "shapes", FromShape, _marked([0], b=2), [G46]),
    Case("shapes_mark_dynamic_batch_auto", "shapes", FromShape, _marked([0], b=2, h=16, w=16),
         [Truth(grid=(8, 8))], policy=Policy(default="auto")),
    # mark_dynamic on H and W: a GNA rule still applies (sizes read at run time) ...
    Case("shapes_mark_dynamic_hw_rule", "shapes", FromShape, _marked([2, 3]), [G46], policy=Policy(default=GNA(2))),
    # ... auto must refuse (it cannot fix a size the user marked dynamic)
    Case("shapes_mark_dynamic_hw_auto", "shapes", FromShape, _marked([2, 3], h=16, w=16), [Truth(grid=(8, 8))],
         policy=Policy(default="auto")),
]
