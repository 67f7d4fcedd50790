"""The op's autograd: ``gna_attention`` / ``gna_attention_lse`` gradients run the Triton backward
kernel where the Triton forward ran (CUDA, or the interpreter with GNA_TRITON_ON_CPU=1), and
equal fp64 gradients of the reference; the LSE's own gradient enters the kernel too, and
everything the kernel cannot take falls back to the reference."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

import gna_compile  # noqa: E402
from gna_compile.kernels import triton_backend  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
DT = torch.bfloat16 if CUDA else torch.float32
TOL = 3e-2 if CUDA else 1e-4

# shape, window, stride, extra_prefix, extra_suffix, H, Hkv, tiles
CASES = {
    "2d_extras_gqa": ((4, 8), (3, 5), (2, 1), 1, 2, 2, 1, ((2, 8), (2, 8))),
    "1d_block_sparse": ((64,), 48, 16, 0, 0, 2, 2, ((16,), (16,))),
}


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the Triton backward's launches (and lets the op reach it on the CPU)."""
    monkeypatch.setenv("GNA_TRITON_ON_CPU", "1")
    calls = []
    real = triton_backend.run_backward

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    from gna_compile.kernels import dispatch
    monkeypatch.setitem(dispatch._BACKWARDS, "triton",
                        dispatch._Backend(counting, dispatch._BACKWARDS["triton"].why_not))
    return calls


def _inputs(case, seed, B=1, D=32):
    shape, w, s, P, S, H, Hkv, tiles = CASES[case]
    g = torch.Generator().manual_seed(seed)
    N = P + torch.Size(shape).numel() + S
    return [torch.randn(B, h, N, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv)]


def _grads(fn, q, k, v, dtype, dev, seed):
    ts = [t.to(dev, dtype).requires_grad_() for t in (q, k, v)]
    out, lse = fn(*ts)
    g = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(out.shape, generator=g, dtype=torch.float64)
    dl = torch.randn(lse.shape, generator=g, dtype=torch.float64)
    loss = (out.double() * do.to(dev)).sum() + (lse.double() * dl.to(dev)).sum()
    return torch.autograd.grad(loss, ts)


def _rel(a, b):
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("with_mask", [False, True])
def test_lse_op_grads_run_the_kernel_and_match_the_reference(case, with_mask, kernel_calls):
    shape, w, s, P, S, H, Hkv, tiles = CASES[case]
    q, k, v = _inputs(case, seed=len(kernel_calls) + 7)
    km = None
    if with_mask:  # hide one grid key and one extra key (or two grid keys)
        km = torch.ones(1, q.shape[2], dtype=torch.bool)
        km[0, P + 1] = False
        km[0, -1] = False

    def run(backend, dev):
        m = None if km is None else km.to(dev)
        return lambda q, k, v: gna_compile.gna_attention_lse(
            q, k, v, shape, w, s, extra_prefix=P, extra_suffix=S, key_mask=m, backend=backend, tiles=tiles)
    got = _grads(run("auto", DEV), q, k, v, DT, DEV, seed=3)
    assert len(kernel_calls) == 1
    want = _grads(run("reference", "cpu"), q, k, v, torch.float64, "cpu", seed=3)
    for a, b in zip(got, want):
        assert _rel(a, b) < TOL
    # A close variant must be refused: the window one larger gives other grads.
    w2 = tuple(x + 1 for x in ((w,) if isinstance(w, int) else w))
    wrong = _grads(lambda q, k, v: gna_compile.gna_attention_lse(
        q, k, v, shape, w2, s, extra_prefix=P, extra_suffix=S, key_mask=km, backend="reference"),
        q, k, v, torch.float64, "cpu", seed=3)
    far = 3 * TOL if CUDA else 10 * TOL  # bf16 rounding sits closer to the w+1 answer (0.13 away on 1-D)
    assert max(_rel(a, b) for a, b in zip(wrong, want)) > far


def test_lse_gradient_reaches_the_kernel(kernel_calls):
    """Only the LSE is used: the gradients are P * grad_lse through the scores, not zero."""
    shape, w, s, P, S, H, Hkv, tiles = CASES["2d_extras_gqa"]
    q, k, v = _inputs("2d_extras_gqa", seed=11)

    def lse_only(backend, dev, dtype):
        ts = [t.to(dev, dtype).requires_grad_() for t in (q, k, v)]
        _, lse = gna_compile.gna_attention_lse(*ts, shape, w, s, extra_prefix=P, extra_suffix=S,
                                               backend=backend, tiles=tiles)
        return torch.autograd.grad(lse.double().square().sum(), ts, allow_unused=True)
    got = lse_only("auto", DEV, DT)
    want = lse_only("reference", "cpu", torch.float64)
    assert len(kernel_calls) == 1
    assert want[0].abs().max() > 0.1 and want[1].abs().max() > 0.1
    assert _rel(got[0], want[0]) < TOL and _rel(got[1], want[1]) < TOL
    assert got[2] is None or got[2].abs().max() < 1e-6  # lse does not depend on v


@pytest.mark.parametrize("grad_needed", [True, False])
def test_out_op_under_autograd(grad_needed, kernel_calls):
    """gna_attention saves the LSE through the LSE op when grads are needed; the out op's own
    autograd (reached through torch.ops) reruns the forward for it. Both match the reference."""
    shape, w, s, P, S, H, Hkv, tiles = CASES["2d_extras_gqa"]
    q, k, v = _inputs("2d_extras_gqa", seed=5)
    ts = [t.to(DEV, DT).requires_grad_(grad_needed) for t in (q, k, v)]
    out = gna_compile.gna_attention(*ts, shape, w, s, extra_prefix=P, extra_suffix=S, tiles=tiles)
    assert out.requires_grad == grad_needed
    if not grad_needed:
        return
    do = torch.randn_like(out)
    got = torch.autograd.grad(out, ts, do)
    raw = torch.ops.gna_compile.gna_attention(*ts, list(shape), list(w), list(s), [1, 1], [False, False],
                                              P, S, 32 ** -0.5, None, True, *map(list, tiles), "auto")
    via_out_op = torch.autograd.grad(raw, ts, do)
    rs = [t.detach().cpu().double().requires_grad_() for t in ts]
    ref = gna_compile.gna_attention(*rs, shape, w, s, extra_prefix=P, extra_suffix=S, backend="reference")
    want = torch.autograd.grad(ref, rs, do.cpu().double())
    assert len(kernel_calls) == 2
    for a, b, c in zip(got, via_out_op, want):
        assert _rel(a, c) < TOL and _rel(b, c) < TOL


def test_reference_backend_never_runs_the_kernel(kernel_calls):
    q, k, v = _inputs("1d_block_sparse", seed=2)
    shape, w, s, P, S, H, Hkv, tiles = CASES["1d_block_sparse"]
    ts = [t.to(DEV, DT).requires_grad_() for t in (q, k, v)]
    out = gna_compile.gna_attention(*ts, shape, w, s, backend="reference", tiles=tiles)
    out.sum().backward()
    assert kernel_calls == [] and all(t.grad is not None for t in ts)


def test_traced_out_op_with_gradients_is_refused_with_the_reason():
    """The out op cannot record its forward's dense mode for a compiled backward; traced with
    gradients it refuses, naming the op to call instead (the same graph through
    gna_attention(), which picks the LSE op, compiles and trains)."""
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    raw = lambda q: torch.ops.gna_compile.gna_attention(  # noqa: E731
        q, q, q, [16], [5], [1], [1], [False], 0, 0, 8 ** -0.5, None, True, [], [], "reference")
    torch._dynamo.reset()
    with pytest.raises(Exception, match="cannot record the dense mode"):
        torch.compile(raw, backend="aot_eager", fullgraph=True)(q)
    torch._dynamo.reset()
    ok = torch.compile(lambda q: gna_compile.gna_attention(q, q, q, (16,), (5,), backend="reference"),
                       backend="aot_eager", fullgraph=True)(q)
    ok.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
