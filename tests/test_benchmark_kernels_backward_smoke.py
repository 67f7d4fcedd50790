"""benchmarks/kernels_backward.py imports on the CPU (it times on CUDA only): its arguments,
case selection (kernels.py's list), FLOP accounting and table are checked here."""

from __future__ import annotations

import math

import pytest

from scripts import load_script


@pytest.fixture(scope="module")
def kb():
    return load_script("benchmarks/kernels_backward.py", "bench_kernels_backward")


def test_arguments_and_case_selection(kb):
    a = kb.parse_args(["--check", "--cases", "flux_s16,hunyuan_s1", "--methods", "gna,flex", "--rounds", "1"])
    assert a.check and a.rounds == 1 and a.methods == ["gna", "flex"]
    assert kb.parse_args([]).methods == list(kb.METHODS)
    with pytest.raises(SystemExit):
        kb.parse_args(["--methods", "gna,nope"])
    all_cases = kb.K.cases()
    assert list(kb.select_cases("", all_cases)) == list(all_cases)  # the forward table's cases, in order
    assert list(kb.select_cases("hunyuan_s1,flux_s16", all_cases)) == ["hunyuan_s1", "flux_s16"]
    with pytest.raises(SystemExit, match="nope"):
        kb.select_cases("flux_s16,nope", all_cases)


def test_flop_accounting_counts_backward_as_2_5_forwards(kb):
    from gna_compile.config import make_spec
    spec = make_spec((256, 256), (80, 80), (16, 16))
    f = kb.flops(spec, 0)
    assert f["fwd"] == kb.K.attended_pairs(spec, 0) * kb.K.H * 4 * kb.K.D
    assert f["bwd"] == 2.5 * f["fwd"] and f["fwd_bwd"] == 3.5 * f["fwd"]
    dense = make_spec((8, 8), (8, 8))  # window = grid: every pair attended
    assert kb.flops(dense, 0, heads=1, head_dim=2)["fwd"] == 64 * 64 * 4 * 2
    assert kb.flops(dense, 3, heads=1, head_dim=1)["fwd"] == 67 * 67 * 4  # extras attend and are attended


def test_summary_and_table(kb):
    res = dict(case="flux_s16", N=65536, flops=dict(fwd=1e12, bwd=2.5e12, fwd_bwd=3.5e12),
               skipped={"flash": "NotImplementedError: no backward"},
               gna_fwd_ms=1.0, gna_fwd_bwd_ms=5.0, cudnn_fwd_ms=2.0, cudnn_fwd_bwd_ms=7.0)
    r = kb.summarise(res, ["gna", "cudnn", "flash"])
    assert r["gna_bwd_ms"] == 4.0 and r["cudnn_bwd_ms"] == 5.0
    assert r["gna_tflops"] == pytest.approx(3.5e12 / 5e-3 / 1e12)
    assert math.isnan(r["flash_fwd_bwd_ms"]) and math.isnan(r["flash_tflops"])
    lines = kb.table([r], ["gna", "cudnn", "flash"], "title")
    assert lines[2].startswith("| case | N | gna fwd+bwd | gna bwd | gna TF/s | cudnn fwd+bwd")
    assert "| flux_s16 | 65536 | 5.00 | 4.00 | 700 | 7.00 | 5.00 | 500 | nan |" in lines[4]
    assert "flux_s16 flash: NotImplementedError" in lines[-1]


def test_main_refuses_without_cuda(kb, monkeypatch):
    monkeypatch.setattr(kb.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA"):
        kb.main(["--cases", "flux_s16"])


def test_gradient_check_passes_gna_and_catches_a_wrong_reference(kb):
    """The --check plumbing on the CPU (the gna method runs the reference there): GNA's
    gradients match the GNA reference, and do not match cuDNN's (dense) one."""
    import torch
    from gna_compile.config import make_spec
    spec, P = make_spec((8, 8), (4, 4), (2, 2)), 2
    calls = kb._methods(spec, (8, 8), (8, 8), P, 0.25)
    torch.manual_seed(0)
    q, k, v, g = (torch.randn(1, 2, P + 64, 16) for _ in range(4))
    assert kb.reference_spec("cudnn", spec).window == (8, 8) and kb.reference_spec("flex", spec) is spec
    ref = kb.reference_grads(q, k, v, g, spec, P, 0.25)
    assert max(kb.grad_errors(calls["gna"], q, k, v, g, ref)) < 1e-5
    dense = kb.reference_grads(q, k, v, g, kb.reference_spec("cudnn", spec), P, 0.25)
    assert max(kb.grad_errors(calls["gna"], q, k, v, g, dense)) > kb.GRAD_TOL
