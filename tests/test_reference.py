"""The reference backend and the public op against a dense masked-attention oracle."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import gna_compile as gc
from gna_compile.kernels.reference import reference_attention
from gna_compile.mask import key_range

from gna_dense import attends_1d, dense_attention, dense_mask


@st.composite
def gna_cases(draw, max_rank=3, max_n=9):
    rank = draw(st.integers(1, max_rank))
    shape, window, stride, dilation, causal = [], [], [], [], []
    for _ in range(rank):
        n = draw(st.integers(2, max_n))
        d = draw(st.sampled_from([1, 1, 2, 3])) if n >= 4 else 1
        d = max(1, min(d, n // 2))
        w = draw(st.integers(2, n // d))
        shape.append(n)
        dilation.append(d)
        window.append(w)
        stride.append(draw(st.integers(1, w)))
        causal.append(draw(st.booleans()) if draw(st.integers(0, 3)) == 0 else False)
    prefix = draw(st.sampled_from([0, 0, 1, 3]))
    suffix = draw(st.sampled_from([0, 0, 2, 5]))
    hkv = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2]))
    tile = tuple(draw(st.integers(1, n)) for n in shape)
    return dict(shape=tuple(shape), window=tuple(window), stride=tuple(stride),
                dilation=tuple(dilation), causal=tuple(causal), prefix=prefix, suffix=suffix,
                hkv=hkv, heads=hkv * groups, tile=tile, key_mask=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31 - 1)))


def _inputs(c, dtype=torch.float64, B=2, D=8):
    g = torch.Generator().manual_seed(c["seed"])
    N = c["prefix"] + math.prod(c["shape"]) + c["suffix"]
    q = torch.randn(B, c["heads"], N, D, generator=g, dtype=dtype)
    k = torch.randn(B, c["hkv"], N, D, generator=g, dtype=dtype)
    v = torch.randn(B, c["hkv"], N, D, generator=g, dtype=dtype)
    km = (torch.rand(B, N, generator=g) > 0.3) if c["key_mask"] else None
    return q, k, v, km


def test_literal_oracle_matches_library_rule():
    # The oracle and gna_compile.mask are two transcriptions of DESIGN.md §1: they must agree.
    for n in range(2, 13):
        for d in range(1, n // 2 + 1):
            for w in range(2, n // d + 1):
                for s in range(1, w + 1):
                    for c in (False, True):
                        for q in range(n):
                            lo, hi = key_range(q, n, w, s, d, c)
                            got = [k for k in range(n) if lo <= k <= hi and k % d == q % d]
                            want = [k for k in range(n) if attends_1d(q, k, n, w, s, d, c)]
                            assert got == want, (q, n, w, s, d, c)


@pytest.mark.parametrize("n,w,s,expected", [
    (8, 3, 1, {0: (0, 2), 3: (2, 4), 7: (5, 7)}),              # sliding window, shifted at borders
    (8, 4, 4, {0: (0, 3), 3: (0, 3), 4: (4, 7), 7: (4, 7)}),   # blocked attention
    (8, 4, 2, {0: (0, 3), 1: (0, 3), 2: (1, 4), 7: (4, 7)}),   # strided: groups share a window
    (8, 8, 1, {0: (0, 7), 5: (0, 7)}),                          # window = grid: dense
])
def test_key_range_examples(n, w, s, expected):
    for q, rng in expected.items():
        assert key_range(q, n, w, s) == rng


def test_causal_and_dilation_examples():
    assert key_range(5, 10, 3, 1, 1, True) == (3, 5)
    assert key_range(0, 10, 3, 1, 1, True) == (0, 0)
    assert key_range(1, 10, 4, 4, 1, True) == (0, 1)       # leader 3: keys 0..1 (k <= q)
    assert key_range(3, 9, 2, 1, 2, False) == (1, 3)        # residue 1: keys 1, 3
    assert key_range(8, 9, 2, 1, 2, False) == (6, 8)        # border shift in the dilated grid


@settings(max_examples=220, deadline=None)
@given(gna_cases())
def test_reference_matches_dense_oracle(c):
    q, k, v, km = _inputs(c)
    out, lse = reference_attention(q, k, v, gc.make_spec(c["shape"], c["window"], c["stride"],
                                                         c["dilation"], c["causal"]),
                                   c["prefix"], c["suffix"], None, km, tile=c["tile"])
    mask = dense_mask(c["shape"], c["window"], c["stride"], c["dilation"], c["causal"],
                      c["prefix"], c["suffix"])
    ref, ref_lse = dense_attention(q, k, v, mask, key_mask=km)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse.double(), ref_lse.float().double(), rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(gna_cases(max_rank=2))
def test_public_op_matches_sdpa_with_dense_mask(c):
    # Tie the oracle to PyTorch's own SDPA (no key mask, so no row is empty).
    q, k, v, _ = _inputs(c)
    out = gc.gna_attention(q, k, v, c["shape"], c["window"], c["stride"], c["dilation"],
                           c["causal"], extra_prefix=c["prefix"], extra_suffix=c["suffix"],
                           backend="reference")
    mask = dense_mask(c["shape"], c["window"], c["stride"], c["dilation"], c["causal"],
                      c["prefix"], c["suffix"])
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_reference_low_precision(dtype, tol):
    c = dict(shape=(5, 7), window=(3, 4), stride=(2, 1), dilation=(1, 1), causal=(False, True),
             prefix=2, suffix=3, hkv=2, heads=4, key_mask=True, seed=7)
    q, k, v, km = _inputs(c, dtype=dtype)
    out = gc.gna_attention(q, k, v, c["shape"], c["window"], c["stride"], causal=c["causal"],
                           extra_prefix=2, extra_suffix=3, key_mask=km, backend="reference")
    assert out.dtype == dtype
    ref, _ = dense_attention(q, k, v, dense_mask(c["shape"], c["window"], c["stride"], (1, 1),
                                                 c["causal"], 2, 3), key_mask=km)
    rel = (out.double() - ref).norm() / ref.norm()
    assert rel < tol


def test_scale_argument_is_used():
    c = dict(shape=(6,), window=(3,), stride=(1,), dilation=(1,), causal=(False,), prefix=0,
             suffix=0, hkv=1, heads=1, key_mask=False, seed=3)
    q, k, v, _ = _inputs(c)
    out = gc.gna_attention(q, k, v, (6,), 3, scale=0.3)
    ref, _ = dense_attention(q, k, v, dense_mask((6,), (3,), (1,), (1,), (False,)), scale=0.3)
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(out, gc.gna_attention(q, k, v, (6,), 3))


def test_lse_variant_and_sdpa_key_mask_layout():
    c = dict(shape=(4, 4), window=(2, 3), stride=(1, 1), dilation=(1, 1), causal=(False, False),
             prefix=0, suffix=3, hkv=1, heads=2, key_mask=True, seed=11)
    q, k, v, km = _inputs(c)
    km[:, :16] = True  # text padding only
    out, lse = gc.gna_attention_lse(q, k, v, (4, 4), (2, 3), extra_suffix=3,
                                    key_mask=km[:, None, None, :], key_mask_spatial=False)
    ref, ref_lse = dense_attention(q, k, v, dense_mask((4, 4), (2, 3), (1, 1), (1, 1),
                                                       (False, False), 0, 3), key_mask=km)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-6, atol=1e-6)


def test_fully_masked_query_returns_zero():
    q = torch.randn(1, 1, 4, 8, dtype=torch.float64)
    km = torch.zeros(1, 4, dtype=torch.bool)
    out, lse = gc.gna_attention_lse(q, q, q, (4,), 2, key_mask=km)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isinf(lse).all()


def test_reference_is_memory_bounded():
    # 131,072 tokens: one N x N fp32 score matrix would take 64 GiB, far over this machine.
    shape = (256, 512)
    q = torch.randn(1, 1, math.prod(shape), 16)
    out = gc.gna_attention(q, q, q, shape, (5, 7), (1, 7), backend="reference")
    assert out.shape == q.shape and torch.isfinite(out).all()
    # Spot-check one query row against a direct computation on its window.
    r, c = 100, 300
    lo0, hi0 = key_range(r, 256, 5, 1)
    lo1, hi1 = key_range(c, 512, 7, 7)
    grid = q.view(256, 512, 16)
    keys = grid[lo0:hi0 + 1, lo1:hi1 + 1].reshape(-1, 16)
    want = torch.softmax(grid[r, c] @ keys.T / 4.0, -1) @ keys
    torch.testing.assert_close(out.view(256, 512, 16)[r, c], want, rtol=1e-4, atol=1e-5)
