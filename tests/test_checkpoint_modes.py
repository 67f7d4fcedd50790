"""Activation checkpointing recomputes GNA forwards inside the backward, in the backward's
mode (kernels/checkpoint_mode.py). torch.utils.checkpoint, reentrant or not: each recomputed
call runs in the mode its forward ran in; the gradients are checked against the
same block without checkpointing, run in the forward's mode (dense forwards: against dense
SDPA), with the backward outside the block, on another thread or inside dense_attention().
A graph compiled by another backend that recomputes a GNA forward in its backward cannot
know that mode, and raises once dense mode has been used."""

from __future__ import annotations

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
