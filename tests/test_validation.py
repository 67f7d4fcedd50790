"""Every validation error path: ValueError naming the argument, the value and the rule."""

from __future__ import annotations

import pytest
import torch

import gna_compile as gc
from gna_compile.config import GNA, make_spec


@pytest.mark.parametrize("kwargs,match", [
    (dict(shape=(8, 8), window=9), r"window\[0\]=9 .*dilation\*window <= shape\[0\]"),
    (dict(shape=(8, 8), window=1), r"window\[0\]=1 must be >= 2"),
    (dict(shape=(8, 8), window=(4, 4), stride=(5, 1)), r"stride\[0\]=5 must satisfy 1 <= stride <= window"),
    (dict(shape=(8, 8), window=(4, 4), stride=(1, 0)), r"stride\[1\]=0"),
    (dict(shape=(8, 8), window=(4, 4), dilation=(3, 1)), r"window\[0\]=4 with dilation\[0\]=3"),
    (dict(shape=(8, 8), window=(4, 4), dilation=(0, 1)), r"dilation\[0\]=0 must be >= 1"),
    (dict(shape=(8, 8), window=(4, 4, 4)), r"window=\(4, 4, 4\) has 3 dims but the grid shape has 2"),
    (dict(shape=(8, 8), window=(4, 4), causal=(True,)), r"causal=\(True,\) has 1 dims"),
    (dict(shape=(8, 8), window=(4, 4), causal="yes"), r"causal='yes' must be a bool"),
    (dict(shape=(8, 8), window=4.0), r"window=4.0 must be a int"),
    (dict(shape=(2, 2, 2, 2), window=2), r"shape=\(2, 2, 2, 2\) has 4 dims"),
    (dict(shape=(8, 0), window=2), r"every grid extent must be >= 1"),
    (dict(shape="8x8", window=2), r"shape='8x8' must be a tuple of ints"),
])
def test_spec_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_spec(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=1), r"window=1: every window must be >= 2"),
    (dict(window=(8, 8), stride=9), r"stride=9 with window=\(8, 8\): every stride must satisfy 1 <= stride <= window"),
    (dict(window=(8, 8), stride=(4, 0)), r"stride=\(4, 0\)"),
    (dict(window=4, causal="yes"), r"causal='yes' must be a bool or a tuple of bools"),
    (dict(window=4, causal=(True, 1)), r"causal=\(True, 1\) must be a bool"),
    (dict(window=4, dilation=0), r"dilation=0: every dilation must be >= 1"),
    (dict(window=(4, 4), stride=(1, 2, 2)), r"window has 2, stride has 3"),
    (dict(window=()), r"window=\(\) must be an int or a non-empty tuple"),
])
def test_gna_validates_where_it_is_written(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GNA(**kwargs)


def test_gna_accepts_valid_configs():
    assert GNA((18, 24, 24), (16, 8, 8)).stride == (16, 8, 8)
    assert GNA(4, stride=(1, 4)).bind((8, 8)).stride == (1, 4)
    assert GNA(3, causal=(True, False)).bind((6, 6)).causal == (True, False)


def test_gna_dataclass():
    with pytest.raises(ValueError, match=r"window='big' must be an int or a non-empty tuple of ints"):
        GNA("big")
    spec = GNA([4, 6], stride=2).bind((8, 12))
    assert spec.window == (4, 6) and spec.stride == (2, 2) and spec.causal == (False, False)
    assert GNA(8).bind((8,)).is_dense and not GNA(4).bind((8,)).is_dense


def _qkv(n=16, h=2, hkv=2, d=8, dtype=torch.float32):
    return torch.randn(1, h, n, d, dtype=dtype), torch.randn(1, hkv, n, d, dtype=dtype), torch.randn(1, hkv, n, d, dtype=dtype)


@pytest.mark.parametrize("change,match", [
    (lambda q, k, v: (q[0], k, v), r"q must be a 4-D tensor"),
    (lambda q, k, v: (q.int(), k.int(), v.int()), r"q.dtype=torch.int32 is not supported"),
    (lambda q, k, v: (q, k.double(), v), r"must share a dtype"),
    (lambda q, k, v: (q, k[:, :, :8], v[:, :, :8]), r"must be \[B=1, Hkv, N=16"),
    (lambda q, k, v: (q, k[..., :4], v), r"k has head dim 4 but q has 8"),
    (lambda q, k, v: (q.repeat(1, 3, 1, 1)[:, :3], k, v), r"3 heads, which is not a multiple of the 2 kv heads"),
])
def test_op_input_errors(change, match):
    q, k, v = change(*_qkv())
    with pytest.raises(ValueError, match=match):
        gc.gna_attention(q, k, v, (4, 4), 2)


def test_op_argument_errors():
    q, k, v = _qkv(n=20)
    with pytest.raises(ValueError, match=r"N=20 tokens but extra_prefix \+ prod\(shape\) \+ extra_suffix = 0 \+ 16 \+ 0"):
        gc.gna_attention(q, k, v, (4, 4), 2)
    with pytest.raises(ValueError, match=r"extra_prefix=-1 must be an int >= 0"):
        gc.gna_attention(q, k, v, (4, 4), 2, extra_prefix=-1, extra_suffix=5)
    with pytest.raises(ValueError, match=r"key_mask.dtype=torch.float32 must be torch.bool"):
        gc.gna_attention(q, k, v, (4, 4), 2, extra_suffix=4, key_mask=torch.ones(1, 20))
    with pytest.raises(ValueError, match=r"key_mask \(1, 19\) must broadcast to \[B, 1, 1, N\]"):
        gc.gna_attention(q, k, v, (4, 4), 2, extra_suffix=4, key_mask=torch.ones(1, 19, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"backend='cuda-magic' is not available"):
        gc.gna_attention(q, k, v, (4, 4), 2, extra_suffix=4, backend="cuda-magic")
    with pytest.raises(ValueError, match=r"backend=3 must be a string"):
        gc.gna_attention(q, k, v, (4, 4), 2, extra_suffix=4, backend=3)
    with pytest.raises(ValueError, match=r"window\[1\]=5"):
        gc.gna_attention(q, k, v, (4, 4), (2, 5), extra_suffix=4)


def test_op_device_mismatch_raises():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"q, k, v must be on one device, got cpu, meta, cpu"):
        gc.gna_attention(q, k.to("meta"), v, (4, 4), 2)
    with pytest.raises(ValueError, match=r"key_mask is on meta but q is on cpu"):
        gc.gna_attention(q, k, v, (4, 4), 2, key_mask=torch.ones(1, 16, dtype=torch.bool, device="meta"))


@pytest.mark.parametrize("shape", [(1, 0, 16, 8), (0, 2, 16, 8)])
def test_op_empty_heads_or_batch_returns_empty_like_sdpa(shape):
    q = torch.randn(*shape)
    out = gc.gna_attention(q, q, q, (4, 4), 2)
    assert out.shape == shape  # what SDPA returns (torch 2.11's CPU SDPA crashes on zero heads)


def test_op_key_mask_broadcast_shapes():
    q, k, v = _qkv()
    m = torch.rand(16) > 0.3
    want = gc.gna_attention(q, k, v, (4, 4), 2, key_mask=m[None])
    for shaped in (m, m[None, None], m[None, None, None]):
        torch.testing.assert_close(gc.gna_attention(q, k, v, (4, 4), 2, key_mask=shaped), want)
    with pytest.raises(ValueError, match=r"must broadcast to \[B, 1, 1, N\]: it has 16 entries along a head/query dim"):
        gc.gna_attention(q, k, v, (4, 4), 2, key_mask=m[None, None, :, None].expand(1, 1, 16, 16))


def test_backend_override_env(monkeypatch):
    q, k, v = _qkv()
    monkeypatch.setenv("GNA_COMPILE_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match=r"backend='no-such-backend' is not available"):
        gc.gna_attention(q, k, v, (4, 4), 2)
    monkeypatch.setenv("GNA_COMPILE_BACKEND", "reference")
    torch.testing.assert_close(gc.gna_attention(q, k, v, (4, 4), 2), gc.gna_attention(q, k, v, (4, 4), 2, backend="reference"))
