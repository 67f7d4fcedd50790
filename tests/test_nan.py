"""NaN/inf behave as in dense SDPA with the same mask, on every backend.

The oracle attends, row by row in float64, exactly the keys the brute-force mask
(``gna_compile.mask.dense_mask``) allows: a NaN or inf in a query, or in an attended key's k
or v, gives what softmax and ``p @ v`` give (NaN/inf, or a key dropped when its score is
-inf); keys a query does not attend are never touched. Every backend must return a
non-finite row wherever the oracle does, never a zero or a finite value. Where the oracle is
finite the reference matches it; a block-sparse kernel may also return a non-finite row when
a key it masks out inside a visited tile holds a NaN/inf value (``0 * nan``: dense SDPA's
math path spreads such a value to every row).
"""

from __future__ import annotations

import os

import pytest
import torch

import gna_compile as gc
from gna_compile.config import make_spec
from gna_compile.mask import dense_mask

SHAPE, WINDOW, STRIDE, P, S = (4, 8), (2, 3), (1, 2), 2, 3
N = P + 32 + S


def _qkv(gen, D, dtype=torch.float32, device="cpu"):
    return [torch.randn(1, 2, N, D, generator=gen).to(device, dtype) for _ in range(3)]


def _poison(t, where, value):
    t = t.clone()
    t[0, 0, where, 1] = value
    return t


def _oracle(mask, q, k, v, scale):
    """Row by row: softmax over exactly the allowed keys (no masked multiplication)."""
    q, k, v = (t.double() for t in (q, k, v))
    out = torch.empty_like(q)
    for i in range(q.shape[2]):
        keys = mask[i].nonzero().flatten()
        s = q[:, :, i:i + 1] @ k[:, :, keys].transpose(-1, -2) * scale
        out[:, :, i] = (torch.softmax(s, -1) @ v[:, :, keys])[:, :, 0]
    return out


POISONS = [("q", 9, float("nan")), ("k", 9, float("nan")), ("v", 9, float("nan")), ("k", 20, float("inf")),
           ("v", 20, float("-inf")), ("q", 0, float("nan")), ("v", N - 1, float("nan")), ("k", 30, float("-inf"))]


def _check(run, D=8, dtype=torch.float32, device="cpu", leaks=False, tol=1e-5):
    gen = torch.Generator().manual_seed(0)
    spec = make_spec(SHAPE, WINDOW, STRIDE)
    mask = dense_mask(spec, P, S)
    for which, pos, value in POISONS:
        args = dict(zip("qkv", _qkv(gen, D, dtype, device)))
        args[which] = _poison(args[which], pos, value)
        got = run(args["q"], args["k"], args["v"]).double().cpu()
        want = _oracle(mask, *(args[x].cpu() for x in "qkv"), D ** -0.5)
        bad_want = ~torch.isfinite(want).all(-1)
        bad_got = ~torch.isfinite(got).all(-1)
        assert bad_want.any(), (which, pos)
        assert bad_got[bad_want].all(), f"{which}[{pos}]={value}: a row the oracle makes non-finite is finite"
        ok = ~bad_want & (~bad_got if leaks else torch.ones_like(bad_got))
        assert not (bad_got & ~bad_want).any() or leaks, f"{which}[{pos}]={value} leaked into rows that do not attend it"
        torch.testing.assert_close(got[ok], want[ok], atol=tol, rtol=tol, msg=f"{which}[{pos}]={value}")


def _op(backend):
    return lambda q, k, v: gc.gna_attention(q, k, v, SHAPE, WINDOW, STRIDE, extra_prefix=P, extra_suffix=S,
                                            backend=backend)


def test_reference_backend_propagates_nan_inf_like_dense_sdpa():
    _check(_op("reference"))


def test_tiled_op_fallback_propagates_nan_inf():
    ops = torch.ops.gna_compile
    tile = (2, 4)
    a = (list(SHAPE), list(tile), P, S)

    def run(q, k, v):
        qp, kp, vp = (ops.permute_tokens(t, *a) for t in (q, k, v))
        o = ops.gna_attention_tiled(qp, kp, vp, list(SHAPE), list(WINDOW), list(STRIDE), [1, 1], [False, False],
                                    P, S, 8 ** -0.5, None, True, list(tile), list(tile), "auto")
        return ops.unpermute_tokens(o, *a)
    _check(run)


def test_no_attendable_key_returns_zero_not_nan():
    gen = torch.Generator().manual_seed(0)
    q, k, v = _qkv(gen, 8)
    km = torch.zeros(1, N, dtype=torch.bool)
    out = gc.gna_attention(q, k, v, SHAPE, WINDOW, STRIDE, extra_prefix=P, extra_suffix=S, key_mask=km,
                           backend="reference")
    assert torch.equal(out, torch.zeros_like(out))


triton = pytest.importorskip("triton") if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1" else None


@pytest.mark.skipif(triton is None, reason="needs CUDA or TRITON_INTERPRET=1")
def test_triton_backend_propagates_nan_inf(monkeypatch):
    monkeypatch.setenv("GNA_TRITON_ON_CPU", "1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    run = _op("triton")
    _check(lambda q, k, v: run(q.to(dev, dtype), k.to(dev, dtype), v.to(dev, dtype)), D=32,
           leaks=True, tol=2e-2 if dev == "cuda" else 1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (FlexAttention backend)")
def test_flex_backend_propagates_nan_inf():
    run = _op("flex")
    _check(lambda q, k, v: run(q.cuda().half(), k.cuda().half(), v.cuda().half()), D=32, leaks=True, tol=5e-3)
