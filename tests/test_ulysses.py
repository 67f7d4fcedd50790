"""GNA under Ulysses sequence parallelism on the CPU: 2 processes over gloo, each with a
contiguous shard of the sequence, give the same output and input gradients as one process
with the whole sequence (reference backend), with extra tokens, a key mask and GQA."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gna_compile
from gna_compile.parallel import ulysses_gna_attention

CASE = dict(shape=(6, 8), window=(3, 5), stride=(1, 2), extra_prefix=3, extra_suffix=1)  # N = 52


def _inputs():
    g = torch.Generator().manual_seed(0)
    n = CASE["extra_prefix"] + 48 + CASE["extra_suffix"]
    q = torch.randn(2, 4, n, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, n, 8, generator=g, dtype=torch.float64)
    mask = torch.rand(2, n, generator=g) > 0.2
    mask[:, :2] = True
    return q, k, v, mask


def _worker(rank, world, init, out_dir):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        q, k, v, mask = _inputs()
        n = q.shape[2] // world
        shard = lambda t: t[:, :, rank * n:(rank + 1) * n].clone().requires_grad_()  # noqa: E731
        ql, kl, vl = shard(q), shard(k), shard(v)
        kw = dict(CASE)
        shape, window, stride = kw.pop("shape"), kw.pop("window"), kw.pop("stride")
        out = ulysses_gna_attention(ql, kl, vl, shape, window, stride, key_mask=mask, backend="reference", **kw)
        out.sum().backward()
        torch.save(dict(out=out.detach(), dq=ql.grad, dk=kl.grad, dv=vl.grad), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one():
    q, k, v, mask = _inputs()
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    kw = dict(CASE)
    want = gna_compile.gna_attention(q, k, v, kw.pop("shape"), kw.pop("window"), kw.pop("stride"), key_mask=mask,
                                     backend="reference", **kw)
    want.sum().backward()
    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "rendezvous")
        mp.start_processes(_worker, args=(2, init, d), nprocs=2, join=True, start_method="spawn")
        parts = [torch.load(os.path.join(d, f"{r}.pt")) for r in range(2)]
    for name, ref in (("out", want.detach()), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        got = torch.cat([p[name] for p in parts], dim=2)
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10, msg=name)


def test_degree_must_divide_the_heads():
    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("gloo", init_method="file://" + os.path.join(d, "r"), rank=0, world_size=1)
        try:
            q = torch.randn(1, 3, 8, 4)
            out = ulysses_gna_attention(q, q, q, (8,), 3, backend="reference")  # degree 1: plain GNA
            torch.testing.assert_close(out, gna_compile.gna_attention(q, q, q, (8,), 3, backend="reference"))
            with pytest.raises(ValueError, match="same tokens"):
                ulysses_gna_attention(q, q[:, :, :4], q, (8,), 3)
        finally:
            dist.destroy_process_group()


def test_needs_an_initialised_group():
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(RuntimeError, match="init_process_group"):
        ulysses_gna_attention(q, q, q, (8,), 3)


def test_tokens_out_of_a_collective_stay_dense_and_say_why():
    """A compiled model whose q/k/v pass through all-to-alls (diffusers' context parallelism
    does this): the layout proof does not see through a collective, so the call stays dense,
    and the reason points to ulysses_gna_attention. (Degree 1, so eager is the oracle.)"""
    import torch.distributed._functional_collectives as funcol
    from gna_compile import GNA, Policy

    class SP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Conv2d(3, 32, 2, 2)
            self.qkv = torch.nn.Linear(32, 96)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            q, k, v = self.qkv(t).view(1, -1, 3, 2, 16).permute(2, 0, 3, 1, 4)
            q, k, v = (funcol.all_to_all_single(a.contiguous(), None, None, dist.group.WORLD) for a in (q, k, v))
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("gloo", init_method="file://" + os.path.join(d, "r"), rank=0, world_size=1)
        try:
            m = SP().eval()
            torch._dynamo.reset()
            be = gna_compile.backend(Policy(default=GNA((3, 3))), inner="aot_eager")
            x = torch.randn(1, 3, 16, 16)
            with torch.no_grad():
                got = torch.compile(m, backend=be)(x)
                want = m(x)
            torch.testing.assert_close(got, want)
            assert be.records and not any(r.rewritten for r in be.records)
            assert all("collective" in r.reason for r in be.records), [r.reason for r in be.records]
        finally:
            dist.destroy_process_group()
            torch._dynamo.reset()
