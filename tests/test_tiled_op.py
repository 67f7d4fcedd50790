"""Tiled-layout ops (used after permutation hoisting) agree with the natural-order op."""

from __future__ import annotations

import torch

import gna_compile as gc
from gna_compile.kernels.tiled_op import tiled_length

OPS = torch.ops.gna_compile


def test_tiled_attention_equals_natural_order_op():
    torch.manual_seed(0)
    shape, tile, pre, post = (5, 6), (2, 4), 2, 3
    n = pre + 30 + post
    q, k, v = torch.randn(1, 4, n, 8), torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
    km = torch.rand(1, n) > 0.2
    args = (shape, tile, pre, post)
    qp, kp, vp = (OPS.permute_tokens(t, *args) for t in (q, k, v))
    assert qp.shape[-2] == tiled_length(*args) == pre + 6 * 8 + post
    out_p = OPS.gna_attention_tiled(qp, kp, vp, list(shape), [3, 4], [1, 2], [1, 1], [False, True],
                                    pre, post, 8 ** -0.5, km, True, list(tile), list(tile), "auto")
    want = gc.gna_attention(q, k, v, shape, (3, 4), (1, 2), causal=(False, True),
                            extra_prefix=pre, extra_suffix=post, key_mask=km)
    torch.testing.assert_close(OPS.unpermute_tokens(out_p, *args), want)


def test_permute_ops_round_trip_and_grad():
    x = torch.randn(2, 3 + 4 * 5, 6, requires_grad=True)
    args = ((4, 5), (4, 2), 3, 0)
    y = OPS.permute_tokens(x, *args)
    assert torch.equal(OPS.unpermute_tokens(y, *args), x)
    (g,) = torch.autograd.grad((y * y).sum(), x)
    torch.testing.assert_close(g, 2 * x)
