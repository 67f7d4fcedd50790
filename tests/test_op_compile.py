"""The op as a torch.library custom op: one node under torch.compile, autograd, hybrid mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import gna_compile as gc

from gna_dense import dense_attention, dense_mask


def _inputs(requires_grad=False, n_extra=3, dtype=torch.float64):
    torch.manual_seed(0)
    n = 4 * 5 + n_extra
    mk = lambda h: torch.randn(1, h, n, 8, dtype=dtype, requires_grad=requires_grad)
    km = torch.ones(1, n, dtype=torch.bool)
    km[0, -1] = False
    return mk(4), mk(2), mk(2), km


def _f(q, k, v, km):
    return gc.gna_attention(q, k, v, (4, 5), (2, 3), (1, 2), extra_prefix=1, extra_suffix=2,
                            key_mask=km)


def test_fullgraph_compile_is_one_op_node():
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    q, k, v, km = _inputs()
    out = torch.compile(_f, fullgraph=True, backend=counting_backend)(q, k, v, km)
    assert len(graphs) == 1
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.gna_compile.gna_attention.default) == 1
    torch.testing.assert_close(out, _f(q, k, v, km))


def test_inductor_compile_matches_eager():
    q, k, v, km = _inputs(dtype=torch.float32)
    compiled = torch.compile(lambda q, k, v: _f(q, k, v, km) * 2 + 1, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), _f(q, k, v, km) * 2 + 1)


def test_autograd_gradcheck():
    q, k, v, km = _inputs(requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: _f(q, k, v, km), (q, k, v), fast_mode=True)


def test_autograd_under_compile():
    q, k, v, km = _inputs(requires_grad=True)
    out = torch.compile(_f, fullgraph=True)(q, k, v, km)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    want = torch.autograd.grad(_f(q, k, v, km).square().sum(), (q, k, v))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)


def test_dense_attention_context_runs_full_attention():
    q, k, v, km = _inputs()
    with gc.dense_attention():
        out = _f(q, k, v, km)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=km[:, None, None, :], enable_gqa=True)
    torch.testing.assert_close(out, ref)
    sparse, _ = dense_attention(q, k, v, dense_mask((4, 5), (2, 3), (1, 2), (1, 1), (False, False), 1, 2), key_mask=km)
    torch.testing.assert_close(_f(q, k, v, km), sparse)
