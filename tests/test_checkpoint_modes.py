"""Activation checkpointing recomputes GNA forwards inside the backward, in the backward's
mode (kernels/checkpoint_mode.py). torch.utils.checkpoint, reentrant or not: each recomputed
call runs in the mode its forward ran in; the gradients are checked against the
same block without checkpointing, run in the forward's mode (dense forwards: against dense
SDPA), with the backward outside the block, on another thread or inside dense_attention().
A graph compiled by another backend that recomputes a GNA forward in its backward cannot
know that mode, and raises once dense mode has been used."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.utils.checkpoint as cp

import gna_compile

SHAPE, WINDOW = (4, 8), (3, 3)


def _block(proj, attn):
    def block(x):
        q = proj(x).view(1, 32, 2, 8).transpose(1, 2)
        return attn(q).transpose(1, 2).reshape(1, 32, 16)
    return block


def _gna(q):
    return gna_compile.gna_attention(q, q, q, SHAPE, WINDOW)


def _sdpa(q):
    return torch.nn.functional.scaled_dot_product_attention(q, q, q)


def _grads(proj, loss_fn, x, forward_dense, backward):
    proj.zero_grad()
    with gna_compile.dense_attention(forward_dense):
        loss = loss_fn(x)
    backward(loss)
    return proj.weight.grad.clone()


def _on_thread(loss):
    errors = []
    t = threading.Thread(target=lambda: _run(loss.backward, errors))
    t.start()
    t.join()
    if errors:
        raise errors[0]


def _run(fn, errors):
    try:
        fn()
    except BaseException as e:  # re-raised on the test's thread
        errors.append(e)


def _in_dense(loss):
    with gna_compile.dense_attention():
        loss.backward()


def _in_sparse(loss):
    with gna_compile.dense_attention(False):
        loss.backward()


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize("forward_dense,backward", [(True, _on_thread), (True, _in_sparse), (False, _in_dense)],
                         ids=["dense-fwd,bwd-on-thread", "dense-fwd,bwd-sparse", "sparse-fwd,bwd-dense"])
def test_recompute_runs_in_the_forward_mode(forward_dense, backward, reentrant):
    torch.manual_seed(0)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)  # reentrant checkpointing needs an input that does
    block = _block(proj, _gna)
    ckpt = lambda x: cp.checkpoint(block, x, use_reentrant=reentrant).square().sum()  # noqa: E731
    got = _grads(proj, ckpt, x, forward_dense, backward)
    plain = lambda x: block(x).square().sum()  # noqa: E731
    want = _grads(proj, plain, x, forward_dense, lambda loss: loss.backward())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if forward_dense:  # the oracle itself: dense SDPA's gradients
        sdpa = lambda x: _block(proj, _sdpa)(x).square().sum()  # noqa: E731
        torch.testing.assert_close(want, _grads(proj, sdpa, x, False, lambda loss: loss.backward()),
                                   rtol=1e-4, atol=1e-5)
    # the close variant: the other mode's gradients differ, so the check above can fail
    other = _grads(proj, plain, x, not forward_dense, lambda loss: loss.backward())
    assert (other - want).abs().max() > 1e-3


def test_nested_reentrant_checkpoints_each_replay_their_calls():
    """An inner checkpoint inside an outer one: the outer recompute replays the forward's mode
    into the inner forward it reruns, whose own recompute then replays it again."""
    torch.manual_seed(1)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)  # reentrant checkpointing needs an input that does
    block = _block(proj, _gna)

    def outer(x):
        return cp.checkpoint(block, x, use_reentrant=True) + block(x)
    ckpt = lambda x: cp.checkpoint(outer, x, use_reentrant=True).square().sum()  # noqa: E731
    got = _grads(proj, ckpt, x, True, _on_thread)
    sdpa = lambda x: (2 * _block(proj, _sdpa)(x)).square().sum()  # noqa: E731
    torch.testing.assert_close(got, _grads(proj, sdpa, x, False, lambda loss: loss.backward()),
                               rtol=1e-4, atol=1e-5)


def test_non_reentrant_recompute_with_frozen_attention_inputs_follows_the_forward():
    """No GNA input needs gradients (a frozen backbone, a trainable gate after the attention):
    the GNA op then keeps no autograd record of its own, and the gate's gradient reads the
    recomputed attention output, which must be the dense forward's (a review's repro: 9.0 off)."""
    torch.manual_seed(6)
    proj = torch.nn.Linear(16, 16).requires_grad_(False)
    gate = torch.nn.Parameter(torch.randn(16))
    x = torch.randn(1, 32, 16)
    block = _block(proj, _gna)

    def grads(f, attn_block):
        gate.grad = None
        with gna_compile.dense_attention():
            loss = f(lambda x: (attn_block(x) * gate).square().sum(), x)
        loss.backward()  # outside the block
        return gate.grad.clone()
    got = grads(lambda g, x: cp.checkpoint(g, x, use_reentrant=False), block)
    want = grads(lambda g, x: g(x), _block(proj, _sdpa))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("outer_reentrant", [False, True], ids=["non-reentrant-outer", "reentrant-outer"])
def test_mixed_nesting_replays_the_forward_mode(outer_reentrant):
    """A checkpoint of one kind inside the other: the outer recompute reruns the inner
    checkpoint's forward, which must record the replayed mode (a review's repro: 7.95 off)."""
    torch.manual_seed(7)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)
    block = _block(proj, _gna)
    outer = lambda x: cp.checkpoint(block, x, use_reentrant=not outer_reentrant)  # noqa: E731
    ckpt = lambda x: cp.checkpoint(outer, x, use_reentrant=outer_reentrant).square().sum()  # noqa: E731
    got = _grads(proj, ckpt, x, True, _on_thread)
    sdpa = lambda x: _block(proj, _sdpa)(x).square().sum()  # noqa: E731
    torch.testing.assert_close(got, _grads(proj, sdpa, x, False, lambda loss: loss.backward()), rtol=1e-4, atol=1e-5)


def test_a_second_backward_replays_from_the_first_call():
    """retain_graph=True: the recompute runs once per backward, each from the first record."""
    torch.manual_seed(2)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)  # reentrant checkpointing needs an input that does
    ckpt = lambda x: cp.checkpoint(_block(proj, _gna), x, use_reentrant=True).square().sum()  # noqa: E731
    with gna_compile.dense_attention():
        loss = ckpt(x)
    loss.backward(retain_graph=True)
    first = proj.weight.grad.clone()
    proj.zero_grad()
    loss.backward()
    torch.testing.assert_close(proj.weight.grad, first)
    sdpa = lambda x: _block(proj, _sdpa)(x).square().sum()  # noqa: E731
    torch.testing.assert_close(first, _grads(proj, sdpa, x, False, lambda loss: loss.backward()),
                               rtol=1e-4, atol=1e-5)


def test_a_recompute_with_more_gna_calls_than_its_forward_is_refused():
    """A checkpointed function that makes another GNA call when recomputed: no mode is known
    for it, so the backward raises, naming the rule."""
    torch.manual_seed(3)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)  # reentrant checkpointing needs an input that does
    block = _block(proj, _gna)
    runs = []

    def changing(x):
        runs.append(1)
        return block(x) if len(runs) == 1 else block(x) + block(x)
    with gna_compile.dense_attention():
        loss = cp.checkpoint(changing, x, use_reentrant=True).square().sum()
    with pytest.raises(RuntimeError, match=r"recomputed 2 GNA call\(s\) where its forward made 1"):
        loss.backward()


def _compiled_checkpoint(proj, backend):
    torch._dynamo.reset()
    block = _block(proj, _gna)
    return torch.compile(lambda x: cp.checkpoint(block, x, use_reentrant=False).square().sum(), backend=backend)


def test_another_backend_recomputing_a_gna_forward_is_refused():
    """aot_eager recomputes the checkpointed GNA forward in its compiled backward, where the
    forward's mode is unknown: the backward raises, naming the rule (it gave dense-forward,
    sparse-backward gradients before). The accepted variant: backend='gna' saves the forward,
    and its gradients are dense SDPA's."""
    torch.manual_seed(4)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)
    with gna_compile.dense_attention():
        loss = _compiled_checkpoint(proj, "aot_eager")(x)
    with pytest.raises(RuntimeError, match="runs inside a backward pass outside torch.utils.checkpoint"):
        _on_thread(loss)
    sdpa = lambda x: _block(proj, _sdpa)(x).square().sum()  # noqa: E731
    want = _grads(proj, sdpa, x, False, lambda loss: loss.backward())
    for inner in ("eager", "inductor"):  # Inductor runs the backend's pass on the joint graph itself
        got = _grads(proj, _compiled_checkpoint(proj, gna_compile.backend(inner=inner)), x, True, _on_thread)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def test_another_backend_recomputing_is_fine_while_dense_mode_was_never_used(monkeypatch):
    """Before any dense_attention() in the process every forward ran sparse, so the recompute
    is that of its forward: the gradients equal the uncheckpointed block's."""
    from gna_compile.kernels import dispatch
    monkeypatch.setattr(dispatch, "_EVER_DENSE", [False])
    torch.manual_seed(5)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)
    got = _grads(proj, _compiled_checkpoint(proj, "aot_eager"), x, False, _on_thread)
    assert dispatch._EVER_DENSE == [False]
    want = _grads(proj, lambda x: _block(proj, _gna)(x).square().sum(), x, False, lambda loss: loss.backward())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


# ---- Findings of a review (each gave silently wrong gradients or a wrong raise before).

def _two_mode_body(p1, p2, gate, modes=(True, False)):
    """Two GNA calls (windows 3x3 then 3x5) in the given dense modes, a gate after them."""
    def body(x):
        with gna_compile.dense_attention(modes[0]):
            a = gna_compile.gna_attention(*(p1(x).view(1, 32, 2, 8).transpose(1, 2),) * 3, SHAPE, (3, 3))
        a = a.transpose(1, 2).reshape(1, 32, 16)
        with gna_compile.dense_attention(modes[1]):
            b = gna_compile.gna_attention(*(p2(a).view(1, 32, 2, 8).transpose(1, 2),) * 3, SHAPE, (3, 5))
        return (b.transpose(1, 2).reshape(1, 32, 16) * gate).square()
    return body


def _sac(policy):
    from functools import partial
    return partial(cp.create_selective_checkpoint_contexts, policy)


@pytest.mark.parametrize("frozen", [False, True], ids=["trained", "frozen-attention-inputs"])
def test_selective_checkpointing_over_mixed_modes_is_refused(frozen):
    """SAC answers a saved call from its cache in the recompute, so the calls that run again
    cannot be matched to the forward's records by order (saving the dense first call replayed
    its mode into the sparse second one: 0.39 off). Mixed modes in one region raise; one mode
    (the accepted variant) gives the plain block's gradients."""
    from torch.utils.checkpoint import CheckpointPolicy
    torch.manual_seed(8)
    p1, p2 = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
    gate = torch.nn.Parameter(torch.randn(16))
    for p in (p1, p2):
        p.requires_grad_(not frozen)
    x = torch.randn(1, 32, 16)

    def policy(ctx, op, *args, **kwargs):
        save = "gna_compile" in str(op) and list(args[4]) == [3, 3]
        return CheckpointPolicy.MUST_SAVE if save else CheckpointPolicy.PREFER_RECOMPUTE

    def grads(body, checkpointed):
        gate.grad = None
        f = (lambda x: cp.checkpoint(body, x, use_reentrant=False, context_fn=_sac(policy))) if checkpointed else body
        f(x).sum().backward()
        return gate.grad.clone()
    with pytest.raises(RuntimeError, match="selective activation checkpointing"):
        grads(_two_mode_body(p1, p2, gate), True)
    same = _two_mode_body(p1, p2, gate, (True, True))
    torch.testing.assert_close(grads(same, True), grads(same, False), rtol=1e-4, atol=1e-5)


def test_concurrent_backwards_each_replay_from_their_own_first_call():
    """Two threads run backward over one reentrant-checkpointed graph at once: each recompute
    keeps its own cursor (one shared cursor made both replay the first record: 1.9-3.9 off)."""
    torch.manual_seed(9)
    p1, p2 = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
    gate = torch.nn.Parameter(torch.randn(16))
    x = torch.randn(1, 32, 16, requires_grad=True)  # reentrant checkpointing needs an input that does
    body = _two_mode_body(p1, p2, gate)
    barrier = threading.Barrier(2, timeout=30)
    in_recompute = []

    def racing(x):  # both recomputes stop between their two calls until the other got there
        with gna_compile.dense_attention():
            a = gna_compile.gna_attention(*(p1(x).view(1, 32, 2, 8).transpose(1, 2),) * 3, SHAPE, (3, 3))
        if in_recompute:
            barrier.wait()
        a = a.transpose(1, 2).reshape(1, 32, 16)
        b = gna_compile.gna_attention(*(p2(a).view(1, 32, 2, 8).transpose(1, 2),) * 3, SHAPE, (3, 5))
        return (b.transpose(1, 2).reshape(1, 32, 16) * gate).square()
    params = [p1.weight, p2.weight, gate]
    want = torch.autograd.grad(body(x).sum(), params)
    loss = cp.checkpoint(racing, x, use_reentrant=True).sum()
    in_recompute.append(True)
    errors = []  # reentrant checkpointing takes .backward() only: both add into .grad
    ts = [threading.Thread(target=lambda: _run(lambda: loss.backward(retain_graph=True), errors)) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    for p, w in zip(params, want):
        torch.testing.assert_close(p.grad, 2 * w, rtol=1e-4, atol=1e-5)


class _LibraryCheckpoint(torch.autograd.Function):
    """The DeepSpeed / Megatron-LM pattern: reentrant, recomputing under enable_grad()."""
    @staticmethod
    def forward(ctx, fn, x):
        ctx.fn = fn
        ctx.save_for_backward(x)
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_(x.requires_grad)
        with torch.enable_grad():
            out = ctx.fn(x)
        torch.autograd.backward(out, g)
        return None, x.grad


def test_another_librarys_checkpoint_over_frozen_attention_is_refused():
    """Its recompute runs with grad on, and with frozen attention inputs the GNA op has no
    autograd record of its own: the guard must not depend on grad mode (it read the library's
    enable_grad() and let a dense forward recompute sparse: 0.50 off)."""
    torch.manual_seed(10)
    frozen = torch.nn.Linear(16, 16).requires_grad_(False)
    c = torch.randn(1, 32, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)

    def body(x):
        a = gna_compile.gna_attention(*(frozen(c).view(1, 32, 2, 8).transpose(1, 2),) * 3, SHAPE, WINDOW)
        return (x * a.transpose(1, 2).reshape(1, 32, 16)).sin()
    with gna_compile.dense_attention():
        loss = _LibraryCheckpoint.apply(body, x).sum()
    with pytest.raises(RuntimeError, match="runs inside a backward pass outside torch.utils.checkpoint"):
        loss.backward()


def test_composable_checkpoint_replays_the_forward_mode():
    """torch.distributed._composable.checkpoint runs the forward from module hooks, with no
    checkpoint() frame on the stack: the forward is found through its saved-tensor hook (it
    recorded nothing and its recompute raised before)."""
    from torch.distributed._composable import checkpoint as composable

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(16, 16)

        def forward(self, x):
            return _block(self.proj, _gna)(x).sin()
    torch.manual_seed(11)
    m = Block()
    x = torch.randn(1, 32, 16)
    plain = copy.deepcopy(m)
    composable(m)
    grads = []
    for mod in (m, plain):
        with gna_compile.dense_attention():
            loss = mod(x).square().sum()
        loss.backward()  # outside the block
        grads.append(mod.proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_saved_tensors_read_twice_outside_backward_replay_from_the_first_call():
    """Each read of a checkpointed saved tensor outside backward recomputes under a fresh id:
    each replays from the first record (the second read raised before)."""
    torch.manual_seed(12)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)
    with gna_compile.dense_attention():
        y = cp.checkpoint(lambda x: _block(proj, _gna)(x).sin(), x, use_reentrant=False)
    first, second = y.grad_fn._saved_self, y.grad_fn._saved_self
    with gna_compile.dense_attention():
        want = _block(proj, _gna)(x)
    torch.testing.assert_close(first, want)
    torch.testing.assert_close(second, want)


def test_sparse_only_programs_never_meet_a_checkpoint_refusal(monkeypatch):
    """Before dense mode is first used every call ran sparse, so nothing is refused: an
    autograd.grad inside a checkpointed forward with early stop off (torch reruns the function
    with more calls than recorded) ran into the 'more calls' refusal before."""
    from gna_compile.kernels import dispatch
    monkeypatch.setattr(dispatch, "_EVER_DENSE", [False])
    torch.manual_seed(13)
    p1, p2 = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16, requires_grad=True)

    def body(x):
        q = p1(x).view(1, 32, 2, 8).transpose(1, 2)
        y = _gna(q)
        (g,) = torch.autograd.grad(y.square().sum(), q, retain_graph=True)
        return _block(p2, _gna)((y + g).transpose(1, 2).reshape(1, 32, 16)).sin()
    with cp.set_checkpoint_early_stop(False):
        cp.checkpoint(body, x, use_reentrant=False).sum().backward()
    got = p2.weight.grad.clone()
    p2.weight.grad = None
    body(x).sum().backward()
    torch.testing.assert_close(got, p2.weight.grad, rtol=1e-4, atol=1e-5)
    assert dispatch._EVER_DENSE == [False]


def test_gna_backend_saves_its_forwards_under_an_activation_memory_budget():
    """The partitioner recomputes untagged ops on its own under a memory budget < 1: every GNA
    forward of a training graph is MUST_SAVE, so a dense forward's gradients stay dense SDPA's
    (its backward raised, the forward recomputed with an unknown mode)."""
    import torch._functorch.config as fc
    from gna_compile import GNA, Policy
    torch.manual_seed(14)
    proj = torch.nn.Linear(16, 16)
    x = torch.randn(1, 32, 16)

    def block(x):
        q = proj(x).view(1, 32, 2, 8).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(1, 32, 16).sin()
    torch._dynamo.reset()
    f = torch.compile(block, backend=gna_compile.backend(Policy(default=GNA(WINDOW), layout=SHAPE), inner="inductor"))
    with fc.patch(activation_memory_budget=0.5):
        with gna_compile.dense_attention():
            loss = f(x).sum()
        _on_thread(loss)
    got = proj.weight.grad.clone()
    proj.zero_grad()
    block(x).sum().backward()
    torch.testing.assert_close(got, proj.weight.grad, rtol=1e-4, atol=1e-5)
