"""The hoisting rules of joint (training) graphs, one small graph each: order-free reductions
over the tokens, slice writes and fills. Every accepting rule has a close variant that must
be refused (the op reads natural order); every graph computes what it computed unhoisted."""

from __future__ import annotations

import pytest
import torch
from torch._guards import detect_fake_mode
from torch.fx.experimental.proxy_tensor import make_fx

import gna_compile  # noqa: F401  (registers the ops)
from gna_compile.passes.hoist_permutations import hoist_permutations
from gna_compile.passes.op_rules import order_free_reductions, slice_write, uniform

OPS = torch.ops.gna_compile
B, N, C, PRE = 2, 32, 32, 2  # a 4x8 grid in (2, 4) tiles: tiled order is not natural


def attn(x, pre=0):
    """GNA over x [B, pre + 32, C] (pre extra tokens first), back to [B, pre + 32, C]."""
    b, n, c = x.shape
    q = x.view(b, n, 2, c // 2).transpose(1, 2)
    o = OPS.gna_attention(q, q, q, [4, 8], [3, 3], [1, 1], [1, 1], [False, False], pre, 0, 0.5, None,
                          True, [2, 4], [2, 4], "auto")
    return o.transpose(1, 2).reshape(b, n, c)


def positions(n, c=C):
    """A [n, c] tensor made in the graph whose rows differ: token order matters to it."""
    return torch.cos(torch.arange(n, dtype=torch.float32)[:, None] * torch.arange(1, c + 1) / n)


def hoisted(tail, pre=0):
    """The graph of ``tail(attn(x))`` after hoisting; asserts it computes what it did."""
    def f(x):
        return tail(attn(x, pre))
    x = torch.randn(B, pre + N, C)
    gm = make_fx(f, tracing_mode="fake")(x)
    fake = detect_fake_mode([n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"])
    res = hoist_permutations(gm, (), fake)
    assert res.calls == 1, str(res)
    torch.testing.assert_close(gm(x), f(x), rtol=1e-5, atol=1e-5)
    return gm


def _nodes(gm, op):
    return [n for n in gm.graph.nodes if n.op == "call_function" and getattr(n.target, "_opname", "") == op]


def reads_natural(gm, op) -> bool:
    """Whether the last ``op`` node (the tail's) reads a tensor that left the tiled region."""
    node = _nodes(gm, op)[-1]
    return any(getattr(a.target, "_opname", "") == "unpermute_tokens" for a in node.all_input_nodes)


# -- symmetric reductions over the token dim ----------------------------------------------------

@pytest.mark.parametrize("tail,op", [
    (lambda t: (t * t).sum(1), "sum"),
    (lambda t: t.sum([0, 1]), "sum"),                    # a bias gradient: batch and tokens
    (lambda t: t.mean(1, keepdim=True), "mean"),
    (lambda t: t.amax(1), "amax"),
    (lambda t: (t * positions(N)).sum(1), "sum"),         # positions enter permuted, then reduce
])
def test_symmetric_reduction_over_tokens_reads_tiled(tail, op):
    gm = hoisted(tail)
    assert not reads_natural(gm, op) and not _nodes(gm, "unpermute_tokens"), gm.code


@pytest.mark.parametrize("tail,op", [
    (lambda t: t.argmax(1), "argmax"),                   # names a position
    (lambda t: t.view(B, 4, 8, C).sum(2), "view"),        # the token dim split: part of it reduced
    (lambda t: t[:, :8].sum(1), "slice"),                 # a sub-range of the grid
])
def test_order_dependent_reduction_reads_natural(tail, op):
    assert reads_natural(hoisted(tail), op)


@pytest.mark.parametrize("tail", [
    lambda t: t * (t > 0).any(dim=()) * positions(N),
    lambda t: t * (t > 0).all(dim=(), keepdim=True) * positions(N),
])
def test_any_all_over_no_dims_are_elementwise_not_reductions(tail):
    """``any/all(dim=[])`` reduce nothing (unlike ``sum(dim=[])``, which reduces all): read as a
    reduction, the still-tiled output was taken as order-free (a review found it: 0.85 off)."""
    hoisted(tail)  # asserts the hoisted graph computes what the unhoisted one did


# -- contractions over the token dim ------------------------------------------------------------

def test_contraction_of_two_tiled_operands_reads_tiled():
    gm = hoisted(lambda t: t[0].t() @ t[1])              # a weight gradient: x.t() @ grad
    assert not reads_natural(gm, "mm") and not _nodes(gm, "unpermute_tokens"), gm.code


def test_contraction_with_a_natural_operand_permutes_it_in():
    """positions() is natural: it enters permuted like the other operand, never mixed."""
    gm = hoisted(lambda t: t[0].t() @ positions(N))
    assert not reads_natural(gm, "mm") and len(_nodes(gm, "permute_tokens")) == 2, gm.code


def test_contraction_against_a_non_token_dim_reads_natural():
    """t[1].t() holds the tokens at dim 1, but mm contracts its dim 0 (channels, also 32)."""
    assert reads_natural(hoisted(lambda t: t[0].t() @ t[1].t()), "mm")


def test_contraction_of_two_orders_reads_natural():
    """t with the extras first and u with them last: the same length, two token orders."""
    def tail(t):
        u = torch.cat([t[:, PRE:], t[:, PRE:PRE + 2]], 1)
        return t[0].t() @ u[1]
    assert reads_natural(hoisted(tail, pre=PRE), "mm")


def test_batched_contraction_reads_tiled():
    gm = hoisted(lambda t: torch.bmm(t.transpose(1, 2), t))
    assert not reads_natural(gm, "bmm") and not _nodes(gm, "unpermute_tokens"), gm.code


# -- slice writes and fills ---------------------------------------------------------------------

def test_writing_the_grid_into_zeros_keeps_it_tiled():
    """slice_scatter(zeros, t) over the whole grid: extras widened, the zeros never permuted."""
    gm = hoisted(lambda t: (torch.slice_scatter(torch.zeros(B, N + 3, C), t, 1, 0, N) * positions(N + 3)).sum(1))
    assert not reads_natural(gm, "slice_scatter") and not _nodes(gm, "unpermute_tokens"), gm.code
    assert len(_nodes(gm, "permute_tokens")) == 2  # x and the positions; not the zeros


def test_writing_into_a_non_uniform_base_permutes_it_in():
    gm = hoisted(lambda t: (torch.slice_scatter(positions(N + 3).expand(B, -1, -1), t, 1, 0, N)).sum(1))
    assert not reads_natural(gm, "slice_scatter")


def test_writing_part_of_the_grid_reads_natural():
    assert reads_natural(hoisted(lambda t: torch.slice_scatter(t, t[:, :8] * 2, 1, 0, 8) * positions(N)),
                         "slice_scatter")


def test_writing_extras_keeps_the_grid_in_place():
    def tail(t):
        u = torch.cat([t, positions(3).expand(B, -1, -1)], 1)
        return torch.slice_scatter(u, 2 * u[:, N:], 1, N, N + 3) * positions(N + 3)
    assert not reads_natural(hoisted(tail), "slice_scatter")


def test_writing_over_the_grid_end_reads_natural():
    def tail(t):
        u = torch.cat([t, positions(3).expand(B, -1, -1)], 1)
        return torch.slice_scatter(u, 2 * u[:, N - 1:N + 2], 1, N - 1, N + 2) * positions(N + 3)
    assert reads_natural(hoisted(tail), "slice_scatter")


# -- the op_rules tables themselves ------------------------------------------------------------

def _graph(f, *args):
    gm = make_fx(f, tracing_mode="fake")(*args)
    return {getattr(n.target, "_opname", n.name): n for n in gm.graph.nodes}


def test_order_free_reduction_table():
    x, y = torch.randn(4, 5), torch.randn(5, 3)
    g = _graph(lambda x, y: (x.sum(-1), x @ y, x.argmax(0), x.max(0).values, x.cumsum(0)), x, y)
    assert order_free_reductions(g["sum"]) == [((g["x_1"], 1),)]
    assert order_free_reductions(g["mm"]) == [((g["x_1"], 1), (g["y_1"], 0))]
    for op in ("argmax", "max", "cumsum"):
        assert order_free_reductions(g[op]) == [], op
    e = _graph(lambda x: (x > 0).any(dim=()), x)
    assert order_free_reductions(next(n for k, n in e.items() if k.startswith("any"))) == []


def test_slice_write_table():
    g = _graph(lambda b, s: (torch.slice_scatter(b, s, 1, 2, 5), torch.slice_scatter(b, s[:, :2], 1, 0, 4, 2)),
               torch.randn(2, 6), torch.randn(2, 3))
    nodes = [n for n in g.values() if getattr(n.target, "_opname", "") == "slice_scatter"]
    g = {n.name: n for n in nodes[0].graph.nodes}
    ss = [n for n in g.values() if getattr(n.target, "_opname", "") == "slice_scatter"]
    base, src, d, start, stop = slice_write(ss[0])
    assert (d, int(start), int(stop)) == (1, 2, 5)
    assert slice_write(ss[1]) is None  # step 2


def test_uniform_fills_only():
    x = torch.randn(3)
    gm = make_fx(lambda x: (torch.zeros(3), torch.full((3,), 2.0), torch.empty(3), torch.arange(3.0),
                            torch.zeros_like(x), x.new_ones(3)), tracing_mode="fake")(x)
    got = {getattr(n.target, "_opname", ""): uniform(n) for n in gm.graph.nodes if n.op == "call_function"}
    assert got == {"zeros": True, "full": True, "empty": False, "arange": False, "zeros_like": False,
                   "new_ones": True}, got
