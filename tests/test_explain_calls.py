"""explain() accounts for every attention call the model makes, under the model's own module
names: captured or not, one graph per block or one graph for every block."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

import gna_compile
from gna_compile import GNA, Policy
from gna_compile.models import TinyVideoDiT

from backend_models import ViT, heads


class Attention(nn.Module):
    def __init__(self, dim=16, h=2):
        super().__init__()
        self.h, self.qkv = h, nn.Linear(dim, 3 * dim)

    def forward(self, x):
        q, k, v = (heads(z, self.h) for z in self.qkv(x).chunk(3, dim=-1))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class Blk(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()

    def forward(self, x):
        return x + self.attn(x)


class LoopBreak(nn.Module):
    """A data-dependent graph break inside the block loop (diffusers' Mochi has one): Dynamo
    skips the whole forward frame and compiles each block's frame, one graph for all."""

    def __init__(self, depth=3):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 2, 2)
        self.blocks = nn.ModuleList(Blk() for _ in range(depth))

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)
        for b in self.blocks:
            x = b(x)
            if torch.nonzero(x.sum(-1) > 1e9).numel():
                x = x * 0
        return x


def test_graph_break_in_block_loop_every_call_named_and_counted():
    report = gna_compile.explain(LoopBreak(), torch.randn(1, 3, 8, 8), policy=Policy(default=GNA(2)), verbose=False)
    assert [r.module for r in report] == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    assert len(report.calls) == 3 and all(getattr(r, "calls") == 1 for r in report)
    # the patch embedding ran outside the blocks' graph, so nothing proves their grid
    assert all(not r.rewritten and "layout not provable" in r.reason for r in report)
    assert "0 of 3 attention calls rewritten" in str(report)


class Eager(nn.Module):
    def __init__(self):
        super().__init__()
        self.vit, self.side = ViT(), Attention()

    @torch.compiler.disable
    def side_path(self, x):
        return self.side(x)

    def forward(self, img):
        out = self.vit(img)
        return out + self.side_path(out)


def test_calls_outside_a_graph_are_reported_with_the_reason():
    report = gna_compile.explain(Eager(), torch.randn(1, 3, 8, 8), policy=Policy(default=GNA(2)), verbose=False)
    by_name = {r.module: r for r in report}
    assert set(by_name) == {"vit", "side"}
    assert by_name["vit"].rewritten
    assert not by_name["side"].rewritten and by_name["side"].reason.startswith("ran outside a captured graph")
    assert "1 of 2 attention calls rewritten" in str(report)


class ListHeld(nn.Module):
    """The block is reached through a list argument (Dynamo names it L['mods'][0]...)."""

    def __init__(self):
        super().__init__()
        self.inner = TinyVideoDiT(depth=2)

    def forward(self, video, text):
        return run_held([self.inner], video, text)


def run_held(mods, video, text):
    return mods[0](video, text)


def test_names_are_the_models_own_named_modules():
    args = (torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 16))
    report = gna_compile.explain(ListHeld(), *args, policy=Policy(default=GNA(2)), verbose=False)
    names = {n for n, _ in ListHeld().named_modules()}
    assert [r.module for r in report] == ["inner.blocks.0.attn", "inner.blocks.1.attn"]
    assert all(r.module in names for r in report)


def test_names_through_forward_hooks_are_the_module_names():
    """Hooks that replace a module's forward by a partial or a closure over the module (as
    diffusers' hooks and context parallelism do) add hops to Dynamo's paths; names and rule
    matching still use the model's own module names."""
    import functools

    m = TinyVideoDiT(depth=2)
    for blk in m.blocks:
        orig = blk.forward
        blk.forward = functools.partial(lambda module, *a, _f=orig, **kw: _f(*a, **kw), blk)
    args = (torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 16))
    names = {n for n, _ in m.named_modules()}
    report = gna_compile.explain(m, *args, policy=Policy(rules={"blocks.1.*": "dense"}, default=GNA(2)),
                                 verbose=False)
    mods = [r.module for r in report]
    assert mods and all(n in names for n in mods), mods
    assert any(r.module.startswith("blocks.1.") and r.decision == "dense" for r in report), mods


def test_rules_match_model_names_and_a_typo_warns_once():
    m = TinyVideoDiT(depth=2)
    args = (torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 16))
    policy = Policy(rules={"blocks.1.attn": "dense", "blokcs.*": GNA(2)}, default=GNA(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = gna_compile.explain(m, *args, policy=policy, verbose=False)
        gna_compile.explain(m, *args, policy=policy, verbose=False)
    assert [r.rewritten for r in report] == [True, False] and "rule 'blocks.1.attn' says dense" in report[1].reason
    typo = [w for w in caught if "blokcs" in str(w.message)]
    assert len(typo) == 1, [str(w.message) for w in caught]  # warned once, however often it is compiled
    assert "matches no module of the model" in str(typo[0].message)


class Regional(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 2, 2)
        self.blocks = nn.ModuleList(Blk() for _ in range(3))

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)
        for b in self.blocks:
            x = b(x)
        return x


def test_regional_compile_one_graph_for_all_blocks_rules_that_disagree_stay_dense():
    torch._dynamo.reset()
    m = Regional().eval()
    # the blocks' graph gets its tokens as an input: a policy layout gives the grid
    policy = Policy(rules={"blocks.0.*": "dense"}, default=GNA(2), layout=(4, 4))
    be = gna_compile.backend(policy, inner="eager")
    for b in m.blocks:
        b.compile(backend=be)
    with torch.no_grad(), gna_compile.calls.recording() as calls:
        m(torch.randn(1, 3, 8, 8))
    assert [c.module for c in calls] == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    # fewer graphs than blocks (block 0's input may be a transposed view, the others' are
    # contiguous: then a second graph serves blocks 1 and 2); none can follow a rule that
    # differs between the blocks it may serve
    assert 1 <= len(be.graphs) <= 2
    assert all(not r.rewritten and "policy rules differ" in r.reason for r in be.records)
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA(2), layout=(4, 4)), inner="eager")
    for b in m.blocks:
        b.compile(backend=be)
    with torch.no_grad():
        m(torch.randn(1, 3, 8, 8))
    assert be.records and all(r.rewritten for r in be.records)  # rules agree: sparse


def test_explain_counts_repeated_calls():
    m = ViT()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, img):
            return self.m(img) + self.m(img)

    report = gna_compile.explain(Twice(), torch.randn(1, 3, 8, 8), policy=Policy(default=GNA(2)), verbose=False)
    assert len(report.calls) == 2 and sum(r.calls for r in report) == 2
    assert "2 of 2 attention calls rewritten" in str(report)
