"""Tiled-layout ops (used after permutation hoisting) agree with the natural-order op."""

from __future__ import annotations

import torch

import gna_compile as gc
from gna_compile.kernels.tiled_op import tiled_length

OPS = torch.ops.gna_compile
SPARSE, DENSE = torch.tensor(False), torch.tensor(True)  # the mode a forward recorded


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


def _call(shape, tile, pre, post, causal):
    return (list(shape), [3, 4], [1, 2], [1, 1], list(causal), pre, post, 8 ** -0.5)


def test_tiled_lse_and_backward_equal_the_natural_ops():
    """Joint-graph ops: out, LSE and (dq, dk, dv) in tiled order are the natural ops' results
    permuted, with a key mask in natural order, GQA, and the LSE's own gradient."""
    torch.manual_seed(1)
    shape, tile, pre, post = (4, 8), (2, 4), 2, 3
    n = pre + 32 + post
    q, k, v = torch.randn(2, 4, n, 8), torch.randn(2, 2, n, 8), torch.randn(2, 2, n, 8)
    go, gl = torch.randn(2, 4, n, 8), torch.randn(2, 4, n)
    km = torch.rand(2, n) > 0.2
    args = (shape, tile, pre, post)
    head = _call(shape, tile, pre, post, (False, True))
    tail = (km, True, list(tile), list(tile), "auto")
    perm = lambda t: OPS.permute_tokens(t, *args)  # noqa: E731
    perm_rows = lambda t: OPS.permute_tokens(t[..., None], *args)[..., 0]  # noqa: E731
    out, lse, _ = OPS.gna_attention_lse(q, k, v, *head, *tail)
    out_p, lse_p, _ = OPS.gna_attention_tiled_lse(perm(q), perm(k), perm(v), *head, *tail)
    torch.testing.assert_close(out_p, perm(out))
    torch.testing.assert_close(lse_p, perm_rows(lse))
    want = OPS.gna_attention_backward(go, gl, q, k, v, out, lse, *head, *tail, SPARSE)
    got = OPS.gna_attention_tiled_backward(perm(go), perm_rows(gl), perm(q), perm(k), perm(v), out_p, lse_p,
                                           *head, *tail, SPARSE)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, perm(w))


def test_tiled_backward_pads_with_zero_rows():
    """A tile that pads the grid: the gradients' padding rows are zeros, the rest the natural op's."""
    torch.manual_seed(2)
    shape, tile = (5, 6), (2, 4)
    q, k, v, go = (torch.randn(1, 2, 30, 8) for _ in range(4))
    args = (shape, tile, 0, 0)
    head = _call(shape, tile, 0, 0, (False, False))
    tail = (None, True, list(tile), list(tile), "auto")
    perm = lambda t: OPS.permute_tokens(t, *args)  # noqa: E731
    qp, kp, vp = perm(q), perm(k), perm(v)
    pad = OPS.permute_tokens(torch.ones(1, 1, 30, 1), *args)[0, 0, :, 0] == 0
    assert pad.sum() == 48 - 30
    qp, kp, vp = (t.masked_fill(pad[:, None], 7.0) for t in (qp, kp, vp))  # garbage in padding rows
    out_p, lse_p, _ = OPS.gna_attention_tiled_lse(qp, kp, vp, *head, *tail)
    got = OPS.gna_attention_tiled_backward(perm(go), None, qp, kp, vp, out_p, lse_p, *head, *tail, SPARSE)
    want = OPS.gna_attention_backward(go, None, q, k, v, None, None, *head, *tail, SPARSE)
    for g, w in zip(got, want):
        assert torch.all(g[:, :, pad] == 0)
        torch.testing.assert_close(OPS.unpermute_tokens(g, *args), w)


def test_tiled_backward_in_dense_mode_equals_the_natural_op():
    """``dense`` recorded True (a forward run under dense_attention): full attention's
    gradients, those of SDPA with no mask, whatever mode is on when the backward runs."""
    torch.manual_seed(3)
    shape, tile = (4, 8), (2, 4)
    q, k, v, go = (torch.randn(1, 2, 32, 8) for _ in range(4))
    args = (shape, tile, 0, 0)
    head = _call(shape, tile, 0, 0, (False, False))
    tail = (None, True, list(tile), list(tile), "auto")
    perm = lambda t: OPS.permute_tokens(t, *args)  # noqa: E731
    got = OPS.gna_attention_tiled_backward(perm(go), None, perm(q), perm(k), perm(v), None, None, *head, *tail, DENSE)
    want = OPS.gna_attention_backward(go, None, q, k, v, None, None, *head, *tail, DENSE)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.nn.functional.scaled_dot_product_attention(*leaves).backward(go)
    for g, w, leaf in zip(got, want, leaves):
        torch.testing.assert_close(OPS.unpermute_tokens(g, *args), w)
        torch.testing.assert_close(w, leaf.grad)


def test_triton_path_takes_inputs_without_a_unit_last_stride(monkeypatch):
    """Inductor may give a pass-made op any layout; a transposed q/k/v (last stride != 1)
    must give the contiguous inputs' result, not a launch error (the kernels' own check)."""
    import os

    import pytest
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    from gna_compile.config import make_spec
    from gna_compile.kernels import tiled_op
    monkeypatch.setenv("GNA_TRITON_ON_CPU", "1")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    spec = make_spec((4, 8), (3, 5), (1, 2))
    tiles = ((2, 8), (2, 8))
    P, S = 2, 3
    N = tiled_length(spec.shape, tiles[0], P, S)
    g = torch.Generator().manual_seed(0)
    # [B, H, D, N] made then viewed as [B, H, N, D]: stride(-1) = N
    q, k, v, do = (torch.randn(1, 2, 32, N, generator=g).to(dev, dtype).transpose(-1, -2) for _ in range(4))
    assert q.stride(-1) != 1
    got = tiled_op._fast_tiled(q, k, v, spec, tiles, P, S, None, None)
    want = tiled_op._fast_tiled(*(t.contiguous() for t in (q, k, v)), spec, tiles, P, S, None, None)
    assert got is not None and want is not None
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    grads = tiled_op._fast_tiled_backward(do, None, q, k, v, None, None, spec, tiles, P, S, None, None)
    ref = tiled_op._fast_tiled_backward(do.contiguous(), None, *(t.contiguous() for t in (q, k, v)), None, None,
                                        spec, tiles, P, S, None, None)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b)


def test_tma_descriptors_only_on_16_byte_aligned_kv():
    """TMA needs a 16-byte aligned base: a contiguous K/V starting 2 elements into its storage
    takes the pointer loads instead (a descriptor there is an error or a misread)."""
    import pytest
    pytest.importorskip("triton")
    from gna_compile.config import make_spec
    from gna_compile.kernels.hopper import triton_launch
    spec = make_spec((4, 8), (3, 5), (1, 2))
    qt, kt = (2, 8), (2, 8)
    N = tiled_length(spec.shape, qt, 0, 0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.zeros(1, 2, N, 32, device=dev, dtype=torch.float16)
    out, lse = torch.empty_like(q), torch.empty(1, 2, N, device=dev)

    def uses_tma(k, v):
        return triton_launch.launch_args(q, k, v, spec, qt, kt, 0, 0, None, None, False, False, out, lse,
                                         tma=True)[2]["TMA"]
    assert uses_tma(torch.zeros_like(q), torch.zeros_like(q))
    shifted = torch.zeros(q.numel() + 2, device=dev, dtype=q.dtype)[2:].view(q.shape)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16
    assert not uses_tma(shifted, torch.zeros_like(q)) and not uses_tma(torch.zeros_like(q), shifted)
