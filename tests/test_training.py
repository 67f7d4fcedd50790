"""backend="gna" in graphs that need gradients: the joint graph's backward follows the
rewritten forward (the GNA backward op), and parameter gradients equal the eager model's
with reference GNA at the same calls. With permutation hoisting the backward runs on tiled
tokens too; reductions over the tokens that depend on their order (positional weights made
in the graph) must still see one order."""

from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

import gna_compile
from gna_compile import GNA, Policy
from gna_compile.kernels.permute import permutation_index
from gna_compile.models import TinyVideoDiT

from backend_models import reference_sdpa

POLICY = dict(default=GNA((2, 3, 3), (1, 2, 2)))
# a 2x8x16 token grid: the kernel's tile (2, 4, 16) splits it, so tiled order is not natural
PLAN = dict(shape=(2, 8, 16), window=(2, 3, 3), stride=(1, 2, 2), extra_suffix=3)


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 2, 16, 32, generator=g), torch.randn(2, 3, 16, generator=g),
            torch.tensor([[True, True, False], [True, False, False]]))


def _loss(out):
    return sum(o.square().sum() for o in (out if isinstance(out, tuple) else (out,)))


def _step(fn, m, args):
    out = fn(*args)
    _loss(out).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    m.zero_grad()
    return out, grads


def _check(m, inner="eager", hoist=True):
    """Compile and train one step on fresh random inputs, against the eager reference;
    returns the backend and the op counts of its graphs."""
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(**POLICY), inner=inner, hoist_permutations=hoist)
    compiled = torch.compile(m, backend=be)
    args = _inputs(torch.randint(1 << 30, ()).item())
    out, got = _step(compiled, m, args)
    with reference_sdpa(lambda q, k: PLAN):
        want_out, want = _step(m, m, args)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    assert got.keys() == want.keys()
    for n in got:
        torch.testing.assert_close(got[n], want[n], atol=1e-4, rtol=1e-4, msg=n)
    ops = collections.Counter(getattr(n.target, "_opname", "") for g in be.graphs for n in g.graph.nodes
                              if n.op == "call_function")
    for r in be.rewritten:  # else a wrong token order would go unseen
        idx = permutation_index(PLAN["shape"], r.q_tile)
        assert not torch.equal(idx, torch.arange(idx.numel())), r.q_tile
    return be, ops


@pytest.mark.parametrize("inner,hoist", [("eager", False), ("eager", True), ("inductor", True)])
def test_compiled_dit_gradients_equal_the_reference(inner, hoist):
    torch.manual_seed(0)
    be, ops = _check(TinyVideoDiT(depth=2), inner, hoist)
    assert [r.rewritten for r in be.records] == [True, True]
    assert not any("sdpa_site" in o for o in ops)
    if not hoist:
        assert ops["gna_attention_backward"] == 2 and ops["permute_tokens"] == ops["unpermute_tokens"] == 0
        return
    (res,) = be.hoist_results
    assert (res.calls, res.backward_calls) == (2, 2), str(res)
    assert ops["gna_attention_tiled_backward"] == 2 and ops["gna_attention_tiled_lse"] == 2
    assert ops["gna_attention_backward"] == ops["gna_attention_lse"] == 0
    permutes = ops["permute_tokens"] + ops["unpermute_tokens"]
    # entries: the patch tokens, the RoPE cos/sin tables, the output's gradient; exits: the
    # output and the patch tokens' gradient (per-call permutation: 4 per call, 8 per step)
    assert permutes == res.permutes == 6 < 4 * res.calls, str(res)


class PositionWeighted(nn.Module):
    """A block followed by ops whose result depends on the token order: a learnable gain
    scaled by the token position (its gradient sums grad * x * position over the tokens),
    and a contraction of the tokens with a position basis (an mm over the tokens whose
    other operand is made in the graph from torch.arange)."""

    def __init__(self, block, dim=32):
        super().__init__()
        self.block = block
        self.gain = nn.Parameter(torch.randn(dim) * 0.5)
        self.mix = nn.Linear(4, 1)

    def forward(self, x, text, cos, sin, mask=None):
        x, text = self.block(x, text, cos, sin, mask)
        n = x.shape[1]
        pos = torch.arange(n, dtype=x.dtype, device=x.device)[:, None] / n
        x = x * (1 + self.gain * pos)
        basis = torch.cos(pos * torch.arange(1, 5, dtype=x.dtype, device=x.device))  # [N, 4]
        pooled = torch.einsum("bnc,nk->bck", x, basis)
        return x + self.mix(pooled).transpose(1, 2), text


def test_position_dependent_reductions_keep_gradients_exact():
    torch.manual_seed(1)
    m = TinyVideoDiT(depth=2)
    m.blocks[0] = PositionWeighted(m.blocks[0])
    be, ops = _check(m)
    (res,) = be.hoist_results
    assert (res.calls, res.backward_calls) == (2, 2), str(res)
    assert ops["gna_attention_tiled_backward"] == 2


class LseBlock(nn.Module):
    """Calls gna_attention_lse itself, with a tiling that reorders its 8x16 grid, and feeds
    the LSE into its output: the backward op gets the LSE's gradient (tiled when hoisted)."""

    def __init__(self, dim=16):
        super().__init__()
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.lse_gain = nn.Parameter(torch.randn(dim))

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, 2, C // 2).permute(2, 0, 3, 1, 4)
        o, lse = gna_compile.gna_attention_lse(q, k, v, (8, 16), (3, 4), (1, 2), tiles=((4, 8), (4, 8)))
        o = o.transpose(1, 2).reshape(B, N, C)
        return x + self.proj(o) + lse.mean(1)[..., None] * self.lse_gain


class LseNet(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.patch = nn.Conv2d(4, dim, 2, 2)
        self.blocks = nn.Sequential(LseBlock(dim), LseBlock(dim))
        self.head = nn.Linear(dim, 16)

    def forward(self, img):
        B = img.shape[0]
        x = self.blocks(self.patch(img).flatten(2).transpose(1, 2))
        return self.head(x).view(B, 8, 16, 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, 4, 16, 32)


def test_direct_lse_calls_train_hoisted_with_the_lse_gradient():
    torch.manual_seed(2)
    m = LseNet()
    img = torch.randn(2, 4, 16, 32)
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(), inner="eager")
    out, got = _step(torch.compile(m, backend=be), m, (img,))
    want_out, want = _step(m, m, (img,))
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-4, rtol=1e-4, msg=n)
    (res,) = be.hoist_results
    assert (res.calls, res.backward_calls) == (2, 2), str(res)
    bwd = [n for g in be.graphs for n in g.graph.nodes
           if getattr(n.target, "_opname", "") == "gna_attention_tiled_backward"]
    assert len(bwd) == 2 and all(isinstance(n.args[1], torch.fx.Node) for n in bwd)  # grad_lse, tiled


def test_a_training_graph_traced_in_dense_mode_keeps_no_dense_backward():
    """The first (compiling) step inside dense_attention() trains densely; later steps outside
    it get the sparse gradients: the dense flag is not baked into the compiled backward."""
    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 16)

        def forward(self, x):
            q = self.proj(x).view(1, 32, 2, 8).transpose(1, 2)
            return gna_compile.gna_attention(q, q, q, (4, 8), (3, 3)).transpose(1, 2).reshape(1, 32, 16)
    torch.manual_seed(0)
    m = Attn()
    torch._dynamo.reset()
    cm = torch.compile(m, backend=gna_compile.backend(inner="eager"))
    for dense in (True, False, True):
        x = torch.randn(1, 32, 16)
        m.zero_grad()
        with gna_compile.dense_attention(dense):
            cm(x).square().sum().backward()
        got = m.proj.weight.grad.clone()
        m.zero_grad()
        with gna_compile.dense_attention(dense):
            m(x).square().sum().backward()
        torch.testing.assert_close(got, m.proj.weight.grad, rtol=1e-4, atol=1e-5, msg=f"dense={dense}")
    m.zero_grad()
    m(x).square().sum().backward()  # the close variant: sparse and dense gradients differ
    assert (m.proj.weight.grad - got).abs().max() > 1e-3


def _backward_elsewhere(loss, dense_now):
    """``loss.backward()`` where the mode differs from the forward's: on a fresh thread
    (autograd runs CUDA backwards on its own device thread, where the thread-local mode is
    unset) or inside ``dense_attention()``."""
    if dense_now:
        with gna_compile.dense_attention():
            loss.backward()
        return
    import threading
    errors = []
    t = threading.Thread(target=lambda: _try(loss.backward, errors))
    t.start()
    t.join()
    if errors:
        raise errors[0]


def _try(fn, errors):
    try:
        fn()
    except BaseException as e:  # re-raised on the test's thread
        errors.append(e)


@pytest.mark.parametrize("hoist", [False, True])
def test_the_backward_follows_the_mode_its_forward_ran_in(hoist):
    """A forward inside dense_attention() whose backward runs outside it (on another thread)
    gets dense SDPA's gradients; a sparse forward whose backward runs inside dense_attention()
    gets GNA's. The oracles: the eager model with plain SDPA, and with brute-force GNA."""
    torch.manual_seed(0)
    m = TinyVideoDiT(depth=2)
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(**POLICY), inner="eager", hoist_permutations=hoist)
    compiled = torch.compile(m, backend=be)
    for dense_fwd in (False, True, False, True):
        args = _inputs(torch.randint(1 << 30, ()).item())
        with gna_compile.dense_attention(dense_fwd):
            loss = _loss(compiled(*args))
        _backward_elsewhere(loss, dense_now=not dense_fwd)
        got = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        m.zero_grad()
        if dense_fwd:
            _, want = _step(m, m, args)
        else:
            with reference_sdpa(lambda q, k: PLAN):
                _, want = _step(m, m, args)
        for n in got:
            torch.testing.assert_close(got[n], want[n], atol=1e-4, rtol=1e-4, msg=f"{n} dense={dense_fwd}")
    assert [r.rewritten for r in be.records] == [True, True]
    with reference_sdpa(lambda q, k: PLAN):  # the close variant: GNA's gradients differ from dense's
        _, sparse = _step(m, m, args)
    assert max((sparse[n] - got[n]).abs().max() for n in got) > 1e-3


def test_user_op_backward_follows_its_forward_mode_across_threads():
    """gna_attention() called by the model: a dense forward's backward on another thread is
    dense SDPA's backward."""
    torch.manual_seed(1)
    proj = torch.nn.Linear(16, 16)

    def f(x, attn):
        q = proj(x).view(1, 32, 2, 8).transpose(1, 2)
        return attn(q).square().sum()
    gna = lambda q: gna_compile.gna_attention(q, q, q, (4, 8), (3, 3))  # noqa: E731
    sdpa = lambda q: torch.nn.functional.scaled_dot_product_attention(q, q, q)  # noqa: E731
    torch._dynamo.reset()
    cf = torch.compile(f, backend=gna_compile.backend(inner="eager"))
    for call in (cf, f):
        x = torch.randn(1, 32, 16)
        with gna_compile.dense_attention():
            loss = call(x, gna)
        _backward_elsewhere(loss, dense_now=False)
        got = proj.weight.grad.clone()
        proj.zero_grad()
        f(x, sdpa).backward()
        torch.testing.assert_close(got, proj.weight.grad, rtol=1e-4, atol=1e-5)
        proj.zero_grad()


def _checkpointed_user_op(proj):
    import torch.utils.checkpoint as cp

    def block(x):
        q = proj(x).view(1, 32, 2, 8).transpose(1, 2)
        return gna_compile.gna_attention(q, q, q, (4, 8), (3, 3)).transpose(1, 2).reshape(1, 32, 16)
    return lambda x: cp.checkpoint(block, x, use_reentrant=False).square().sum()


def _sdpa_grads(proj, x):
    proj.zero_grad()
    q = proj(x).view(1, 32, 2, 8).transpose(1, 2)
    torch.nn.functional.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(1, 32, 16).square().sum().backward()
    g = proj.weight.grad.clone()
    proj.zero_grad()
    return g


def test_checkpointed_forwards_are_saved_not_recomputed_in_another_mode():
    """Activation checkpointing around a GNA call compiled by the gna backend: the forward ran
    in dense mode, the backward (which would recompute it) runs outside the block on another
    thread; the GNA forward is saved (MUST_SAVE), so the gradients are dense SDPA's."""
    from torch.utils.checkpoint import CheckpointPolicy
    torch.manual_seed(2)
    proj = torch.nn.Linear(16, 16)
    torch._dynamo.reset()
    be = gna_compile.backend(inner="eager")
    f = torch.compile(_checkpointed_user_op(proj), backend=be)
    x = torch.randn(1, 32, 16)
    with gna_compile.dense_attention():
        loss = f(x)
    _backward_elsewhere(loss, dense_now=False)
    got = proj.weight.grad.clone()
    torch.testing.assert_close(got, _sdpa_grads(proj, x), rtol=1e-4, atol=1e-5)
    fwd = [n for g in be.graphs for n in g.graph.nodes if getattr(n.target, "_opname", "").endswith("_lse")]
    assert fwd and all(n.meta.get("recompute") == CheckpointPolicy.MUST_SAVE for n in fwd)
    proj.zero_grad()
    f(x).backward()  # the close variant: a sparse step's gradients are not dense SDPA's
    assert (proj.weight.grad - got).abs().max() > 1e-3


def test_eager_checkpoint_recompute_follows_the_forward_mode():
    """Eager activation checkpointing recomputes the forward inside the backward: in the
    forward's mode (kernels/checkpoint_mode.py), whatever mode the backward runs in, so a dense
    forward trains with dense SDPA's gradients either way (this raised before)."""
    torch.manual_seed(3)
    proj = torch.nn.Linear(16, 16)
    f = _checkpointed_user_op(proj)
    x = torch.randn(1, 32, 16)
    want = _sdpa_grads(proj, x)
    for backward_dense in (True, False):
        proj.zero_grad()
        with gna_compile.dense_attention():
            loss = f(x)
        with gna_compile.dense_attention(backward_dense):
            loss.backward()
        torch.testing.assert_close(proj.weight.grad, want, rtol=1e-4, atol=1e-5)


def test_attention_inside_a_checkpoint_body_stays_dense_with_the_reason():
    """SDPA inside torch.utils.checkpoint sits in a higher-order op body the analysis does
    not enter: it stays dense SDPA (the gradients are SDPA's) and the record says why; the
    same block without the checkpoint is rewritten."""
    import torch.utils.checkpoint as cp
    torch.manual_seed(4)
    proj = torch.nn.Linear(16, 16)

    def block(x):
        q = proj(x).view(1, 32, 2, 8).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(1, 32, 16)
    x = torch.randn(1, 32, 16)
    for wrapped, rewritten in ((lambda x: cp.checkpoint(block, x, use_reentrant=False), False), (block, True)):
        torch._dynamo.reset()
        be = gna_compile.backend(Policy(default=GNA((3, 3)), layout=(4, 8)), inner="eager")
        torch.compile(lambda x: wrapped(x).square().sum(), backend=be)(x).backward()
        (rec,) = be.records
        assert rec.rewritten == rewritten, rec.reason
        if not rewritten:
            assert "higher-order op body" in rec.reason
            torch.testing.assert_close(proj.weight.grad, _sdpa_grads(proj, x), rtol=1e-4, atol=1e-5)
        proj.zero_grad()


class SharedQKV(nn.Module):
    """Two attention calls on the same q, k, v that differ only in scale."""

    def __init__(self, dim=16, h=2):
        super().__init__()
        self.h, self.patch, self.qkv = h, nn.Conv2d(3, dim, 2, 2), nn.Linear(dim, 3 * dim)

    def forward(self, img):
        from backend_models import heads
        t = self.patch(img).flatten(2).transpose(1, 2)
        q, k, v = (heads(z, self.h) for z in self.qkv(t).chunk(3, dim=-1))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        b = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=2.0)
        return a.square().sum() + 3 * b.sum()


@pytest.mark.parametrize("hoist", [False, True])
def test_calls_sharing_q_k_v_each_get_their_own_backward(hoist):
    """Backwards pair with their forwards by site, not by q, k, v: the gradients equal the eager
    model's with reference GNA (they were the second call's for both, a review's repro)."""
    torch.manual_seed(0)
    m, img = SharedQKV(), torch.randn(2, 3, 16, 32)
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA((3, 3), (1, 1))), inner="eager", hoist_permutations=hoist)
    _, got = _step(torch.compile(m, backend=be), m, (img,))
    assert [r.rewritten for r in be.records] == [True, True]
    with reference_sdpa(lambda q, k: dict(shape=(8, 16), window=(3, 3))):
        _, want = _step(m, m, (img,))
    for n in got:
        torch.testing.assert_close(got[n], want[n], atol=1e-4, rtol=1e-4, msg=n)
