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


def test_user_op_through_the_gna_backend_with_inductor_matches_eager():
    """A model's own gna_attention() call compiled by backend(inner="inductor"): the backend
    fills its tiles and hoists it to the tiled op after tracing. Inductor constrained custom
    ops' list arguments to the traced (empty) tile lists, so the op ran with no tile and
    raised; the outputs and gradients now equal eager's, with the tiles filled."""
    torch.manual_seed(1)
    proj = torch.nn.Linear(16, 16)

    def f(x):
        q = proj(x).view(1, 32, 2, 8).transpose(1, 2)
        return gc.gna_attention(q, q, q, (4, 8), (3, 3)).square().sum()
    x = torch.randn(1, 32, 16)
    torch._dynamo.reset()
    be = gc.backend(inner="inductor")
    cf = torch.compile(f, backend=be)
    with torch.no_grad():
        torch.testing.assert_close(cf(x), f(x), rtol=1e-5, atol=1e-5)
    cf(x).backward()
    got = proj.weight.grad.clone()
    proj.zero_grad()
    f(x).backward()
    torch.testing.assert_close(got, proj.weight.grad, rtol=1e-4, atol=1e-5)
    from gna_compile.passes.ops import args_of
    tiled = [args_of(n) for g in be.graphs for n in g.graph.nodes if "gna_attention_tiled" in str(n.target)]
    assert tiled and all(list(a["q_tile"]) == [4, 8] for a in tiled), tiled
    torch._dynamo.reset()
