"""The gna backend's behaviour: policies, refusals with reasons, numerics, dynamic shapes,
graph breaks, the hybrid (dense) schedule without recompiles, explain(), Inductor end to end."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gna_compile
from gna_compile import GNA, Policy
from gna_compile.models import TinyVideoDiT

from backend_models import FluxLike, VideoBlock, ViT, heads, reference_sdpa


def run(model, *args, policy, inner="eager", dynamic=False, fullgraph=True):
    torch._dynamo.reset()
    be = gna_compile.backend(policy, inner=inner)
    with torch.no_grad():
        out = torch.compile(model, backend=be, fullgraph=fullgraph, dynamic=dynamic)(*args)
    return be, out


# -- policy -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(rules={"blocks.*": "sparse"}), "must be a GNA"),
    (dict(rules={"": GNA(3)}), "non-empty string"),
    (dict(rules=[("a", GNA(3))]), "must be a dict"),
    (dict(default=3), "default=3"),
    (dict(sparsity=1.0), "sparsity=1.0"),
    (dict(sparsity=True), "sparsity=True"),
    (dict(min_speedup=0), "min_speedup=0"),
    (dict(layout=(0, 4)), "extent"),
    (dict(layout=(2, 2, 2, 2)), "4 dims"),
])
def test_policy_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Policy(**kwargs)


def test_policy_first_matching_rule_wins():
    p = Policy(rules={"blocks.0.*": "dense", "blocks.*.attn": GNA(3), "*": GNA(5)}, default="auto")
    assert p.action_for("blocks.0.attn") == ("dense", "rule 'blocks.0.*'")
    assert p.action_for("blocks.1.attn")[0] == GNA(3)
    assert p.action_for("head")[0] == GNA(5)
    assert Policy().action_for("x") == ("auto", "default")


def test_policy_layout_callable_must_match_count():
    p = Policy(layout=lambda n: (n // 8, 8) if n % 8 == 0 else None)
    assert p.grid_for(48) == (6, 8) and p.grid_for(5) is None
    assert Policy(layout=(4, 4)).grid_for(15) is None


# -- refusals stay dense with a reason ---------------------------------------------------------
class Attn(nn.Module):
    """A ViT attention with configurable SDPA arguments and optional cross-attention."""

    def __init__(self, **sdpa_kwargs):
        super().__init__()
        self.vit, self.kw = ViT(), sdpa_kwargs

    def forward(self, img, ctx=None):
        t = self.vit.patch(img).flatten(2).transpose(1, 2)
        q, k, v = (heads(z, 2) for z in self.vit.qkv(t).chunk(3, dim=-1))
        if ctx is not None:
            k, v = heads(ctx, 2), heads(ctx, 2)
        return F.scaled_dot_product_attention(q, k, v, **self.kw)


@pytest.mark.parametrize("kwargs, ctx, reason", [
    (dict(is_causal=True), False, "is_causal=True"),
    (dict(dropout_p=0.1), False, "dropout_p=0.1"),
    ({}, True, "cross-attention"),
])
def test_unsupported_calls_stay_dense(kwargs, ctx, reason):
    args = (torch.randn(1, 3, 8, 8),) + ((torch.randn(1, 7, 16),) if ctx else ())
    be, _ = run(Attn(**kwargs), *args, policy=Policy(default=GNA(2)))
    (rec,) = be.records
    assert rec.decision == "dense" and reason in rec.reason
    assert "gna_attention" not in be.graphs[0].code


def test_layout_not_provable_without_policy_layout():
    be, _ = run(FluxLike(), torch.randn(1, 48, 8), torch.randn(1, 5, 12), policy=Policy(default=GNA(4)))
    (rec,) = be.records
    assert rec.decision == "dense" and rec.reason.startswith("layout not provable")


def test_policy_dense_rule_and_min_speedup():
    be, _ = run(ViT(), torch.randn(1, 3, 16, 16), policy=Policy(rules={"*": "dense"}))
    assert be.records[0].decision == "dense" and "says dense" in be.records[0].reason
    be, _ = run(ViT(), torch.randn(1, 3, 64, 64), policy=Policy(min_speedup=1000.0))
    rec = be.records[0]
    assert rec.decision == "dense" and "< min_speedup" in rec.reason and rec.speedup is not None


def test_auto_picks_simulated_config():
    be, _ = run(ViT(), torch.randn(1, 3, 64, 64), policy=Policy(sparsity=0.9, min_speedup=1.2))
    rec = be.records[0]
    assert rec.decision == "gna", rec.reason
    assert rec.grid == (32, 32) and rec.extra_prefix == 1 and rec.speedup >= 1.2
    assert "gna_attention" in be.graphs[0].code


# -- numerics against the reference op ---------------------------------------------------------
def test_video_block_matches_reference():
    torch.manual_seed(0)
    m = VideoBlock().eval()
    video, text = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 3, 16)
    mask = torch.tensor([[True, False, False], [True, True, True]])
    be, out = run(m, video, text, mask, policy=Policy(default=GNA((2, 2, 2), (1, 2, 2))))
    assert be.records[0].key_mask == "keys (extra tokens only)"
    with reference_sdpa(lambda q, k: dict(shape=(3, 4, 4), window=(2, 2, 2), stride=(1, 2, 2),
                                          extra_suffix=3)) as ref, torch.no_grad():
        want = m(video, text, mask)
    assert ref.calls == 1
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    # and it is really sparse: the dense model differs
    assert (out - m(video, text, mask)).abs().max() > 1e-3


def test_key_mask_from_input_applies_to_all_keys():
    class M(VideoBlock):
        def forward(self, video, text, mask):  # mask [B, 1, 1, N] straight from the caller
            x = torch.cat([self.patch(video).flatten(2).transpose(1, 2), text], dim=1)
            q, k, v = (heads(z, self.h) for z in self.qkv(x).chunk(3, dim=-1))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    torch.manual_seed(0)
    m = M().eval()
    video, text = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 16)
    mask = torch.rand(1, 1, 1, 35) > 0.3
    be, out = run(m, video, text, mask, policy=Policy(default=GNA((2, 3, 3))))
    assert be.records[0].key_mask == "keys"
    with reference_sdpa(lambda q, k: dict(shape=(2, 4, 4), window=(2, 3, 3), extra_suffix=3)), torch.no_grad():
        want = m(video, text, mask)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_dynamic_shapes_one_graph_two_sizes(inner):
    torch.manual_seed(0)
    m = ViT().eval()
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA(4, 2)), inner=inner)
    f = torch.compile(m, backend=be, fullgraph=True, dynamic=True)
    for hw in ((16, 24), (20, 12)):
        img = torch.randn(2, 3, *hw)
        with torch.no_grad():
            out = f(img)
            with reference_sdpa(lambda q, k: dict(shape=(hw[0] // 2, hw[1] // 2), window=4, stride=2,
                                                  extra_prefix=1)):
                want = m(img)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert len(be.graphs) == 1


def test_graph_break_each_graph_rewritten():
    class TwoBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = ViT(), ViT()

        def forward(self, img):
            x = self.a(img)
            torch._dynamo.graph_break()
            return x + self.b(img)

    be, _ = run(TwoBlocks(), torch.randn(1, 3, 8, 8), policy=Policy(default=GNA(2)), fullgraph=False)
    assert len(be.graphs) >= 2 and [r.module for r in be.rewritten] == ["a", "b"]


def test_hybrid_schedule_does_not_recompile():
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    m = VideoBlock().eval()
    args = (torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 16), torch.tensor([[True, True, False]]))
    torch._dynamo.reset()
    counters.clear()
    be = gna_compile.backend(Policy(default=GNA(2)), inner="eager")
    f = torch.compile(m, backend=be, fullgraph=True)
    with torch.no_grad():
        sparse = f(*args)
        with gna_compile.dense_attention():
            dense = f(*args)
        sparse2 = f(*args)
        eager = m(*args)
    assert counters["stats"]["unique_graphs"] == 1 and len(be.graphs) == 1
    torch.testing.assert_close(dense, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse, sparse2)
    assert (sparse - eager).abs().max() > 1e-3


# -- registration, explain, Inductor ----------------------------------------------------------
def test_entry_point_registered():
    from torch._dynamo.backends.registry import list_backends, lookup_backend
    assert "gna" in list_backends()
    assert lookup_backend("gna") is gna_compile.backend.gna_backend
    assert callable(gna_compile.backend) and callable(gna_compile.explain)


def test_explain_report():
    torch.manual_seed(0)
    m = TinyVideoDiT(depth=2).eval()
    args = (torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 16), torch.tensor([[True, True, False]]))
    report = gna_compile.explain(m, *args, policy=Policy(default=GNA(2)), verbose=False)
    assert [r.module for r in report] == ["blocks.0.attn", "blocks.1.attn"]
    assert all(r.grid == (2, 4, 4) and r.extra_suffix == 3 and r.rewritten for r in report)
    table = str(report)
    assert "blocks.1.attn" in table and "grid(2x4x4) + tokens(3)" in table
    assert "2 of 2 attention calls rewritten" in table


def test_inductor_end_to_end_video_dit():
    torch.manual_seed(0)
    m = TinyVideoDiT(depth=2).eval()
    args = (torch.randn(2, 4, 2, 8, 8), torch.randn(2, 3, 16), torch.tensor([[True, True, False]] * 2))
    policy = Policy(rules={"blocks.*.attn": GNA((2, 3, 3), (1, 2, 2))})
    be, out = run(m, *args, policy=policy, inner="inductor")
    assert len(be.rewritten) == 2
    with reference_sdpa(lambda q, k: dict(shape=(2, 4, 4), window=(2, 3, 3), stride=(1, 2, 2),
                                          extra_suffix=3)) as ref, torch.no_grad():
        want = m(*args)
    assert ref.calls == 2
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


def test_dynamic_grid_smaller_than_window_recompiles_dense():
    torch.manual_seed(0)
    m = ViT().eval()
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA(4)), inner="eager")
    f = torch.compile(m, backend=be, dynamic=True)
    with torch.no_grad():
        f(torch.randn(1, 3, 16, 24))
        f(torch.randn(1, 3, 12, 20))   # grid 6x10: same graph (guard size >= 4 holds)
        assert len(be.graphs) == 1 and be.records[0].rewritten
        small = torch.randn(1, 3, 6, 16)  # grid 3x8: window 4 does not fit
        out = f(small)
    assert len(be.graphs) == 2
    last = be.records[-1]
    assert not last.rewritten and "does not fit grid" in last.reason
    torch.testing.assert_close(out, m(small), atol=1e-5, rtol=1e-5)


def test_dynamic_auto_specializes_grid():
    torch.manual_seed(0)
    m = ViT().eval()
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(min_speedup=1.0), inner="eager")
    f = torch.compile(m, backend=be, dynamic=True)
    with torch.no_grad():
        for hw in ((64, 64), (48, 64), (64, 64)):
            f(torch.randn(1, 3, *hw))
    assert [r.grid for r in be.records] == [(32, 32), (24, 32)]
    assert all(r.rewritten for r in be.records)
    assert "size(" not in be.graphs[0].code  # sizes fixed (and guarded)


def test_grid_from_token_sequence_is_not_proof():
    class Rows(nn.Module):  # reshapes a 1-D token sequence into rows: index grid, not an image
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, tokens):
            B, N, C = tokens.shape
            x = (tokens.view(B, 4, N // 4, C) * 2).reshape(B, N, C)
            q, k, v = (heads(z, 2) for z in self.qkv(x).chunk(3, dim=-1))
            return F.scaled_dot_product_attention(q, k, v)

    be, _ = run(Rows(), torch.randn(1, 32, 16), policy=Policy(default=GNA(2)))
    rec = be.records[0]
    assert not rec.rewritten and rec.reason.startswith("layout not provable")
    assert "is not a convolution's spatial output" in rec.reason
    be, _ = run(Rows(), torch.randn(1, 32, 16), policy=Policy(default=GNA(2), layout=(4, 8)))
    assert be.records[0].rewritten and be.records[0].grid == (4, 8)


def test_both_sdpa_spellings_found():
    class Two(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v) + torch._C._nn.scaled_dot_product_attention(q, k, v)

    q = torch.randn(1, 2, 16, 8)
    be, _ = run(Two(), q, q, q, policy=Policy())
    assert len(be.records) == 2 and all("not provable" in r.reason for r in be.records)


def test_dynamic_video_dit_symbolic_grid_and_text_length():
    torch.manual_seed(0)
    m = TinyVideoDiT().eval()
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA(2)), inner="eager")
    f = torch.compile(m, backend=be, fullgraph=True, dynamic=True)
    for T, L in ((2, 5), (3, 7)):
        args = (torch.randn(1, 4, T, 8, 12), torch.randn(1, L, 16), torch.arange(L)[None] < L - 1)
        with torch.no_grad():
            out = f(*args)
            with reference_sdpa(lambda q, k: dict(shape=(T, 4, 6), window=2, extra_suffix=L)) as ref:
                want = m(*args)
        assert ref.calls == 2
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert len(be.graphs) == 1
    assert all(r.rewritten and r.key_mask == "keys (extra tokens only)" for r in be.records)


def test_backend_passed_uncalled_uses_defaults():
    torch.manual_seed(0)
    m = ViT().eval()
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(m, backend=gna_compile.backend)(torch.randn(1, 3, 8, 8))
    assert out.shape == (1, 17, 16)


def test_backend_runs_permutation_hoisting_when_asked():
    torch.manual_seed(0)
    m = TinyVideoDiT(depth=2).eval()
    args = (torch.randn(1, 4, 2, 8, 8), torch.randn(1, 3, 16), torch.tensor([[True, True, False]]))
    policy = Policy(default=GNA((2, 2, 2)))
    _, plain = run(m, *args, policy=policy)
    torch._dynamo.reset()
    be = gna_compile.backend(policy, inner="eager", hoist_permutations=True)
    with torch.no_grad():
        hoisted = torch.compile(m, backend=be, fullgraph=True)(*args)
    assert len(be.hoist_results) == 1
    torch.testing.assert_close(hoisted, plain, atol=1e-5, rtol=1e-5)
