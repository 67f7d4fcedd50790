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


def test_gna_dataclass():
    with pytest.raises(ValueError, match=r"window='big' must be an int or a tuple of ints"):
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
    with pytest.raises(ValueError, match=r"key_mask \(1, 19\) must be \[B, N\]"):
        gc.gna_attention(q, k, v, (4, 4), 2, extra_suffix=4, key_mask=torch.ones(1, 19, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"backend='cuda-magic' is not available"):
        gc.gna_attention(q, k, v, (4, 4), 2, extra_suffix=4, backend="cuda-magic")
    with pytest.raises(ValueError, match=r"backend=3 must be a string"):
        gc.gna_attention(q, k, v, (4, 4), 2, extra_suffix=4, backend=3)
    with pytest.raises(ValueError, match=r"window\[1\]=5"):
        gc.gna_attention(q, k, v, (4, 4), (2, 5), extra_suffix=4)


def test_backend_override_env(monkeypatch):
    q, k, v = _qkv()
    monkeypatch.setenv("GNA_COMPILE_BACKEND", "no-such-backend")
    with pytest.raises(ValueError, match=r"backend='no-such-backend' is not available"):
        gc.gna_attention(q, k, v, (4, 4), 2)
    monkeypatch.setenv("GNA_COMPILE_BACKEND", "reference")
    torch.testing.assert_close(gc.gna_attention(q, k, v, (4, 4), 2), gc.gna_attention(q, k, v, (4, 4), 2, backend="reference"))
