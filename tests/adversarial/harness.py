"""The adversarial suite's harness: small models whose true layouts are stated by hand.

A :class:`Case` is a model, a function drawing fresh random inputs, and for every attention
call the model makes (in execution order) a :class:`Truth`: the token grid and extra tokens
it really has, or none (then any rewrite is wrong). :func:`check` compiles the model with the
gna backend (permutation hoisting off or on), runs it on inputs it was not compiled with
while recording every attention call, and asserts:

- every rewritten call claims exactly the true layout (grid, extra tokens), and the calls a
  case marks ``rewrite=True`` are rewritten;
- a call whose key mask may hide grid keys is never told "extra tokens only";
- the compiled output equals an eager run of the same model in which each call the compiler
  rewrote runs dense SDPA with the brute-force GNA mask of the *true* layout (and the call's
  own key mask), and every other call runs plain SDPA.

The oracle never looks at the compiler's layout: a wrong grid, a permuted output, a skipped
mask all show up as a numeric difference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves

import gna_compile
from gna_compile import GNA, Policy, calls
from gna_compile.config import make_spec
from gna_compile.kernels import tile_choice
from gna_compile.mask import dense_mask

tile_choice._REAL_KERNEL_TILES = tile_choice.kernel_tiles

__all__ = ["Truth", "DENSE", "Case", "check", "check_training", "oracle_sdpa"]

_SDPA = torch._C._nn.scaled_dot_product_attention


@dataclass(frozen=True)
class Truth:
    """The true layout of one attention call. ``grid=None``: the tokens are no grid (or the
    keys are not the queries' tokens): the call must stay dense."""

    grid: Optional[tuple] = None
    prefix: int = 0
    suffix: int = 0
    rewrite: bool = False             # a supported pattern: the compiler must prove it
    masks_grid: Optional[bool] = None  # its key mask can hide grid keys (None: unchecked)


DENSE = Truth()


@dataclass
class Case:
    name: str
    family: str
    model: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.Generator], tuple]
    truths: list
    policy: Optional[Policy] = None          # default: GNA(window=2) on every call
    compile: dict = field(default_factory=dict)  # torch.compile kwargs
    atol: float = 1e-5

    def __str__(self):
        return self.name


@contextlib.contextmanager
def oracle_sdpa(events, truths):
    """Patch F.scaled_dot_product_attention for an eager run: call i runs dense SDPA with the
    brute-force GNA mask of ``truths[i]`` when ``events[i]`` was rewritten, plain SDPA else."""
    state = {"i": 0}

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        i = state["i"]
        state["i"] += 1
        ev = events[i] if i < len(events) else None
        if ev is not None and ev.rewritten:
            r, t = ev.record, truths[i]
            spec = make_spec(t.grid, r.window, r.stride, r.dilation, r.causal)
            m = dense_mask(spec, t.prefix, t.suffix, device=query.device)
            attn_mask = m if attn_mask is None else (m & attn_mask)
        return _SDPA(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                     scale=scale, enable_gqa=enable_gqa)

    saved = F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention
    F.scaled_dot_product_attention = torch._C._nn.scaled_dot_product_attention = sdpa
    try:
        yield state
    finally:
        F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention = saved


def _describe(ev) -> str:
    r = ev.record
    if r is None:
        return f"{ev.module}: ran outside a graph"
    return f"{ev.module}: {r.decision} grid={r.grid} pre/suf={r.extra_prefix}/{r.extra_suffix} ({r.reason})"


def scrambling_tiles(shape) -> tuple:
    """Tile pairs of 8 or 4 tokens narrower than the grid's rows, so that the tiled order is
    never the natural one (a tile of whole rows would make every permutation an identity and
    hide hoisting bugs). Installed in place of ``tile_choice.kernel_tiles`` for the suite."""
    import math
    from gna_compile.sim import candidate_tiles, is_kv_subtile
    pairs = tuple((q, kv) for q, kv in candidate_tiles(tuple(shape), sizes=(8, 4))
                  if math.prod(q) in (8, 4) and is_kv_subtile(q, kv) and (len(shape) == 1 or q[-1] < shape[-1])
                  and all(n % t == 0 for n, t in zip(shape, q)))
    return pairs or tile_choice._REAL_KERNEL_TILES(shape)


@contextlib.contextmanager
def scrambled_tiles():
    tile_choice._choose.cache_clear()
    saved = tile_choice.kernel_tiles
    tile_choice.kernel_tiles = scrambling_tiles
    try:
        yield
    finally:
        tile_choice.kernel_tiles = saved
        tile_choice._choose.cache_clear()


def check(case: Case, hoist: bool, seed: int = 0):
    with scrambled_tiles():
        return _check(case, hoist, seed)


def _check(case: Case, hoist: bool, seed: int = 0):
    torch._dynamo.reset()
    torch.manual_seed(seed)
    model = case.model().eval()
    policy = case.policy or Policy(default=GNA(2))
    be = gna_compile.backend(policy, inner="eager", hoist_permutations=hoist)
    fn = torch.compile(model, backend=be, **case.compile)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        with calls.recording():  # (recording patches SDPA: compile under it, so nothing recompiles)
            fn(*case.inputs(gen))                   # compiled on these ...
        x = case.inputs(gen)                        # ... checked on fresh ones
        with calls.recording() as events:
            out = fn(*x)
        truths = case.truths
        report = "\n  ".join(_describe(e) for e in events)
        assert len(events) == len(truths), f"{len(events)} attention calls, the case states {len(truths)}:\n  {report}"
        for i, (ev, t) in enumerate(zip(events, truths)):
            r = ev.record
            if ev.rewritten:
                assert t.grid is not None, f"call {i} rewritten but its tokens are no grid:\n  {report}"
                got = (tuple(r.grid), r.extra_prefix, r.extra_suffix)
                assert got == (tuple(t.grid), t.prefix, t.suffix), \
                    f"call {i} claims {got}, truly {(t.grid, t.prefix, t.suffix)}:\n  {report}"
                if t.masks_grid:
                    assert r.key_mask != "keys (extra tokens only)", f"call {i}: grid keys are masked"
            if t.rewrite:
                assert ev.rewritten, f"call {i} (a supported pattern) was not rewritten:\n  {report}"
        with oracle_sdpa(events, truths) as st:
            want = model(*x)
        assert st["i"] == len(events), "the eager run made a different number of attention calls"
    got_t, want_t = tree_leaves(out), tree_leaves(want)
    assert len(got_t) == len(want_t)
    for g, w in zip(got_t, want_t):
        if isinstance(w, torch.Tensor):
            assert g.shape == w.shape, (g.shape, w.shape)
            torch.testing.assert_close(g, w, atol=case.atol, rtol=case.atol,
                                       msg=lambda m: f"{case.name} (hoist={hoist}): {m}\n  {report}")
    return be, events


def check_training(case: Case, seed: int = 0):
    """One training step, hoisting on against hoisting off (the layouts are :func:`check`'s
    job): outputs, parameter and input gradients equal, under tiles that reorder tokens."""
    with scrambled_tiles():
        _, plain = _train(case, False, seed)
        be, hoisted = _train(case, True, seed)
    assert len(hoisted) == len(plain)
    for g, w in zip(hoisted, plain):
        if w is not None:
            torch.testing.assert_close(g, w, atol=case.atol, rtol=case.atol, msg=lambda m: f"{case.name}: {m}")
    return be


def _train(case: Case, hoist: bool, seed: int):
    torch._dynamo.reset()
    torch.manual_seed(seed)
    model = case.model()
    be = gna_compile.backend(case.policy or Policy(default=GNA(2)), inner="eager", hoist_permutations=hoist)
    gen = torch.Generator().manual_seed(seed)
    x = [t.requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
         for t in case.inputs(gen)]
    out = [o for o in tree_leaves(torch.compile(model, backend=be, **case.compile)(*x))
           if isinstance(o, torch.Tensor) and o.requires_grad]
    sum((o * torch.randn(o.shape, generator=gen)).sum() for o in out).backward()
    return be, ([o.detach() for o in out] + [p.grad for _, p in sorted(model.named_parameters())]
                + [t.grad for t in x if isinstance(t, torch.Tensor)])
