"""Permutation hoisting on real model graphs: tiny diffusers FLUX/HunyuanVideo/Cosmos and the
built-in video DiT. Permutes only at region boundaries (counted, and shown as a golden
listing), outputs equal to the same compile without hoisting."""

from __future__ import annotations

import pytest
import torch
from expecttest import TestCase

import gna_compile
from gna_compile import GNA, Policy
from gna_compile.models import TinyVideoDiT

import tiny_diffusers

pytest.importorskip("diffusers")


def flux():
    m, kw = tiny_diffusers.flux(grid=(8, 16), layers=2, single_layers=2)
    return m, kw, Policy(default=GNA((4, 8), (4, 8)), layout=(8, 16))


def hunyuan():
    m, kw = tiny_diffusers.hunyuan(grid=(2, 8, 8), layers=2, single_layers=2)
    return m, kw, Policy(default=GNA((2, 4, 4), (2, 4, 4)))


def cosmos():
    m, kw = tiny_diffusers.cosmos(grid=(2, 8, 8), layers=2, learnable_pos=True)
    return m, kw, Policy(default=GNA((2, 4, 4), (2, 4, 4)))


def video_dit():
    m = TinyVideoDiT(in_channels=4, dim=32, heads=2, depth=3, patch=(1, 2, 2), text_dim=16)
    kw = dict(video=torch.randn(1, 4, 4, 16, 16), text=torch.randn(1, 6, 16),
              text_mask=torch.tensor([[True] * 4 + [False] * 2]))
    return m, kw, Policy(default=GNA((2, 4, 4), (2, 4, 4)))


def _compile(build, hoist):
    torch.manual_seed(0)
    m, kw, policy = build()
    m.eval()
    torch._dynamo.reset()
    be = gna_compile.backend(policy, inner="eager", hoist_permutations=hoist)
    with torch.no_grad():
        out = torch.compile(m, backend=be)(**kw)
    out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
    return out, be


# model -> (GNA calls, permutes allowed after hoisting: entries + exits, independent of depth:
# the hidden states in and out, and the RoPE tables (FLUX: cos and sin, computed from position
# id inputs; the video DiT: three per-axis position vectors))
CASES = {"flux": (flux, 4, 4), "hunyuan": (hunyuan, 4, 4), "cosmos": (cosmos, 2, 4),
         "video_dit": (video_dit, 3, 5)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hoisting_matches_unhoisted_and_permutes_at_boundaries(name):
    build, calls, permutes = CASES[name]
    plain, be_plain = _compile(build, hoist=False)
    hoisted, be = _compile(build, hoist=True)
    assert len(be_plain.rewritten) == calls
    res = be.hoist_results
    assert sum(r.calls for r in res) == calls, [str(r) for r in res]
    assert sum(r.permutes for r in res) <= permutes, [str(r) for r in res]
    torch.testing.assert_close(hoisted, plain, rtol=1e-5, atol=1e-5)


def _boundary_listing(gm) -> str:
    """The permutation-related nodes of a graph, with what they read: the golden view."""
    names = {"permute_tokens", "unpermute_tokens", "gna_attention_tiled", "gna_attention"}
    lines = []
    for n in gm.graph.nodes:
        op = getattr(n.target, "_opname", None)
        if n.op == "call_function" and op in names:
            src = n.args[0]
            extra = f" tile={n.args[2]} pre={n.args[3]} suf={n.args[4]} dim={n.args[5]}" if "permute" in op else ""
            lines.append(f"{op}({src.name}){extra}")
    return "\n".join(lines)


class GoldenHoist(TestCase):
    def test_video_dit_boundaries(self):
        torch.manual_seed(0)
        m, kw, policy = video_dit()
        graphs = []
        be = gna_compile.backend(policy, inner=lambda gm, ex: graphs.append(gm) or gm.forward,
                                 hoist_permutations=True)
        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(m.eval(), backend=be, fullgraph=True)(**kw)
        self.assertExpectedInline(_boundary_listing(graphs[0]), """\
permute_tokens(view) tile=[2, 8, 8] pre=0 suf=0 dim=2
permute_tokens(cat) tile=[2, 8, 8] pre=0 suf=0 dim=0
permute_tokens(cat_1) tile=[2, 8, 8] pre=0 suf=0 dim=0
gna_attention_tiled(cat_5)
gna_attention_tiled(cat_10)
gna_attention_tiled(cat_15)
unpermute_tokens(view_70) tile=[2, 8, 8] pre=0 suf=0 dim=1""")
