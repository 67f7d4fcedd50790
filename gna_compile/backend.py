"""The Dynamo backend ``"gna"``: rewrite spatial attention to GNA, then compile as usual.

``torch.compile(model, backend="gna")`` works without importing this package (entry point
``torch_dynamo_backends``) and uses the default :class:`~gna_compile.policy.Policy`.
``gna_compile.backend(policy=...)`` returns a configured backend. Each captured graph (one per
graph break) is analyzed, rewritten in place, and handed to the inner compiler, Inductor by
default; the GNA op stays one opaque node there.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Union

import torch

from .passes import CallRecord, run_passes
from .policy import Policy

__all__ = ["GNABackend", "backend", "gna_backend"]

log = logging.getLogger("gna_compile")

_INNER = ("inductor", "aot_eager", "eager")


class GNABackend:
    """A Dynamo backend: ``backend(gm, example_inputs) -> callable``.

    ``records`` collects one :class:`CallRecord` per attention call of every graph compiled so
    far (what ``explain()`` prints); ``inner`` is ``"inductor"`` (default), ``"aot_eager"``,
    ``"eager"`` or a backend callable. ``hoist_permutations`` (default on) runs the permutation
    hoisting pass after the rewrite (results in ``hoist_results``); it is skipped for graphs
    compiled with gradients on, since the tiled-layout ops are inference-only.
    """

    def __init__(self, policy: Optional[Policy] = None,
                 inner: Union[str, Callable] = "inductor", rewrite: bool = True,
                 hoist_permutations: bool = True):
        if policy is None:
            policy = Policy()
        if not isinstance(policy, Policy):
            raise ValueError(f"policy={policy!r} must be a gna_compile.Policy")
        if not callable(inner) and inner not in _INNER:
            raise ValueError(f"inner={inner!r} must be one of {_INNER} or a Dynamo backend callable")
        self.policy, self.inner, self.do_rewrite = policy, inner, rewrite
        self.hoist = bool(hoist_permutations)
        self.records: list[CallRecord] = []
        self.hoist_results: list = []
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        records = run_passes(gm, self.policy, do_rewrite=self.do_rewrite)
        self.records.extend(records)
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs)
        if self.hoist and self.do_rewrite and not needs_grad and any(r.rewritten for r in records):
            from .passes.hoist_permutations import hoist_permutations
            res = hoist_permutations(gm)
            self.hoist_results.append(res)
            log.info("gna_compile: %s", res)
        self.graphs.append(gm)
        for r in records:
            log.info("gna_compile: %s -> %s (%s)", r.module, r.decision, r.reason)
        return self._compile(gm, example_inputs)

    def _compile(self, gm, example_inputs):
        if callable(self.inner):
            return self.inner(gm, example_inputs)
        if self.inner == "eager":
            return gm.forward
        if self.inner == "aot_eager":
            from torch._dynamo.backends.registry import lookup_backend
            return lookup_backend("aot_eager")(gm, example_inputs)
        from torch._inductor.compile_fx import compile_fx
        return compile_fx(gm, example_inputs)

    @property
    def rewritten(self) -> list[CallRecord]:
        return [r for r in self.records if r.rewritten]


def backend(policy: Optional[Policy] = None, inner: Union[str, Callable] = "inductor",
            hoist_permutations: bool = True):
    """A configured ``gna`` backend: ``torch.compile(model, backend=gna_compile.backend(policy))``.

    Passed uncalled (``backend=gna_compile.backend``), Dynamo calls it with ``(gm,
    example_inputs)``: then it acts as the default backend.
    """
    if isinstance(policy, torch.fx.GraphModule):
        return gna_backend(policy, inner)
    return GNABackend(policy, inner, hoist_permutations=hoist_permutations)


def gna_backend(gm: torch.fx.GraphModule, example_inputs):
    """The registered ``"gna"`` backend (default policy, Inductor)."""
    return GNABackend()(gm, example_inputs)


class _CallableModule(type(torch)):
    """``gna_compile.backend`` is both this module and the factory: once the submodule is
    imported, Python binds the package attribute to the module, so make the module callable."""

    def __call__(self, *args, **kwargs):
        return backend(*args, **kwargs)


import sys as _sys  # noqa: E402

_sys.modules[__name__].__class__ = _CallableModule
