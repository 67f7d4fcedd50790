"""backend="gna" in graphs that need gradients: the joint graph's backward follows the
rewritten forward (the GNA backward op), and parameter gradients equal the eager model's
with reference GNA at the same calls."""

from __future__ import annotations

import pytest
import torch

import gna_compile
from gna_compile import GNA, Policy
from gna_compile.models import TinyVideoDiT

from backend_models import reference_sdpa


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_compiled_dit_gradients_equal_the_reference(inner):
    torch.manual_seed(0)
    m = TinyVideoDiT(depth=2)
    args = (torch.randn(2, 4, 2, 8, 8), torch.randn(2, 3, 16), torch.tensor([[True, True, False]] * 2))
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA((2, 3, 3), (1, 2, 2))), inner=inner)
    out = torch.compile(m, backend=be)(*args)
    out.square().sum().backward()
    got = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    with reference_sdpa(lambda q, k: dict(shape=(2, 4, 4), window=(2, 3, 3), stride=(1, 2, 2), extra_suffix=3)):
        want_out = m(*args)
    want_out.square().sum().backward()
    want = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert [r.rewritten for r in be.records] == [True, True]
    ops = [str(n.target) for g in be.graphs for n in g.graph.nodes if n.op == "call_function"]
    assert ops.count("gna_compile.gna_attention_backward.default") == 2 and not any("sdpa_site" in o for o in ops)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    assert got.keys() == want.keys()
    for n in got:
        torch.testing.assert_close(got[n], want[n], atol=1e-4, rtol=1e-4, msg=n)
