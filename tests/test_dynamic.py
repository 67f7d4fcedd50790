"""Dynamic shapes: the batch never specializes; a dynamic grid works with an explicit rule and
is refused, with a message naming gna and what to do, where 'auto' needs a fixed grid."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

import gna_compile
from gna_compile import GNA, Policy
from gna_compile.models import TinyVideoDiT

from backend_models import ViT, reference_sdpa


def _video(b, t=2, h=8, w=8):
    return torch.randn(b, 4, t, h, w), torch.randn(b, 3, 16), torch.tensor([[True, True, False]] * b)


def test_mark_dynamic_batch_one_graph_every_batch_size():
    torch.manual_seed(0)
    m = TinyVideoDiT(depth=2).eval()
    torch._dynamo.reset()
    counters.clear()
    be = gna_compile.backend(Policy(), inner="eager")  # 'auto': decides from the grid only
    f = torch.compile(m, backend=be)
    with torch.no_grad():
        for b in (2, 3, 4):
            args = _video(b)
            for a in args:
                torch._dynamo.mark_dynamic(a, 0)
            out = f(*args)
            assert out.shape[0] == b
    assert len(be.graphs) == 1 and counters["stats"]["unique_graphs"] == 1
    assert all(r.rewritten for r in be.records), [r.reason for r in be.records]


def test_mark_dynamic_grid_auto_refused_with_a_message_naming_gna():
    m = ViT().eval()
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(), inner="eager")
    img = torch.randn(1, 3, 64, 64)
    torch._dynamo.mark_dynamic(img, 2)
    with torch.no_grad():
        out = torch.compile(m, backend=be)(img)  # no ConstraintViolationError
    (rec,) = be.records
    assert not rec.rewritten
    assert rec.reason.startswith("gna:") and "mark_dynamic" in rec.reason and "L['img'].size()[2]" in rec.reason
    assert "GNA(window=...)" in rec.reason
    torch.testing.assert_close(out, m(img))


def test_mark_dynamic_grid_with_a_rule_runs_every_size_in_one_graph():
    torch.manual_seed(0)
    m = ViT().eval()
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA(4, 2)), inner="eager")
    f = torch.compile(m, backend=be)
    for hw in ((16, 24), (20, 12), (24, 24)):
        img = torch.randn(2, 3, *hw)
        torch._dynamo.mark_dynamic(img, 2)
        torch._dynamo.mark_dynamic(img, 3)
        with torch.no_grad():
            out = f(img)
            with reference_sdpa(lambda q, k: dict(shape=(hw[0] // 2, hw[1] // 2), window=4, stride=2,
                                                  extra_prefix=1)):
                want = m(img)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert len(be.graphs) == 1 and be.records[0].rewritten


class _ReshapePatchify(torch.nn.Module):
    """Patchify by reshape, as Cosmos does: [B, C, H, W] -> tokens (H/2) x (W/2) of 2x2xC
    features; ``inner_first`` splits each axis the other way round, (2, H/2), so the token
    axes are positions within a patch: no image grid."""

    def __init__(self, inner_first=False):
        super().__init__()
        self.inner_first = inner_first
        self.proj = torch.nn.Linear(16, 32)
        self.qkv = torch.nn.Linear(32, 96)

    def forward(self, x):
        b, c, h, w = x.shape
        if self.inner_first:
            t = x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 3, 5, 1, 2, 4)
        else:
            t = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        t = self.proj(t.flatten(3).flatten(1, 2))
        q, k, v = self.qkv(t).view(b, -1, 3, 2, 16).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_dynamic_reshape_patchify_is_proven_from_the_models_own_guards():
    """Under dynamic shapes the reshape H -> (H//2, 2) makes Dynamo guard that 2 divides H;
    reading those guards, the tokens are proven the (H/2, W/2) grid: one graph serves two
    resolutions of equal token count, each equal to brute-force GNA on its true grid."""
    torch.manual_seed(0)
    m = _ReshapePatchify().eval()
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA((3, 3), (2, 2))), inner="aot_eager")
    f = torch.compile(m, backend=be, dynamic=True)
    for hw in ((8, 12), (12, 8)):
        x = torch.randn(1, 4, *hw)
        with torch.no_grad():
            out = f(x)
            grid = (hw[0] // 2, hw[1] // 2)
            with reference_sdpa(lambda q, k, grid=grid: dict(shape=grid, window=(3, 3), stride=(2, 2))) as ref:
                want = m(x)
        assert ref.calls == 1
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    assert len(be.graphs) == 1 and all(r.rewritten for r in be.records), [r.reason for r in be.records]


def test_dynamic_reshape_split_the_other_way_is_refused():
    """The close variant, (2, H//2): the guards prove the split just as well, but the token
    axes are the inner pieces (positions within a patch): dense, with the reason."""
    m = _ReshapePatchify(inner_first=True).eval()
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA((3, 3), (2, 2))), inner="aot_eager")
    f = torch.compile(m, backend=be, dynamic=True)
    x = torch.randn(1, 4, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), atol=1e-5, rtol=1e-5)
    assert be.records and not any(r.rewritten for r in be.records)
    assert all("layout not provable" in r.reason for r in be.records), [r.reason for r in be.records]
