"""The Dynamo backend ``"gna"``: rewrite spatial attention to GNA, then compile as usual.

``torch.compile(model, backend="gna")`` works without importing this package (entry point
``torch_dynamo_backends``) and uses the default :class:`~gna_compile.policy.Policy`.
``gna_compile.backend(policy=...)`` returns a configured backend.

Per captured graph: attention calls become site ops (:mod:`passes.sites`) and get the
model's own module names (:mod:`passes.names`); AOTAutograd functionalizes and decomposes
the graph; the analyses, the rewrite and permutation hoisting run on that ATen graph
(Inductor's ``joint_custom_pre_pass``, or the inference/partition hook for the other inner
compilers, so every inner compiler sees the same analysis); then the inner compiler runs.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Union

import torch

from . import calls
from .passes import AtenPass, CallRecord, prepare_graph
from .policy import Policy

__all__ = ["GNABackend", "backend", "gna_backend"]

log = logging.getLogger("gna_compile")

_INNER = ("inductor", "aot_eager", "eager")


class GNABackend:
    """A Dynamo backend: ``backend(gm, example_inputs) -> callable``.

    ``records`` collects one :class:`CallRecord` per attention call site of every graph
    compiled so far; ``graphs`` the rewritten ATen graphs; ``hoist_results`` what hoisting
    did. ``inner`` is ``"inductor"`` (default), ``"aot_eager"``, ``"eager"`` or a compiler
    callable, which receives the rewritten ATen graph. ``hoist_permutations`` (default on)
    keeps tokens in tiled order between GNA calls (in training graphs, through the backward too).
    """

    def __init__(self, policy: Optional[Policy] = None,
                 inner: Union[str, Callable] = "inductor", rewrite: bool = True,
                 hoist_permutations: bool = True):
        if policy is None:
            policy = Policy()
        if not isinstance(policy, Policy):
            raise ValueError(f"policy={policy!r} must be a gna_compile.Policy")
        if not callable(inner) and inner not in _INNER:
            raise ValueError(f"inner={inner!r} must be one of {_INNER} or a compiler callable")
        self.policy, self.inner, self.do_rewrite = policy, inner, rewrite
        self.hoist = bool(hoist_permutations)
        self.records: list[CallRecord] = []
        self.hoist_results: list = []
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        prep = prepare_graph(gm, self.policy)
        self.records.extend(prep.unmarked_records)
        aten = AtenPass(self, prep)
        compiled = self._compile(gm, example_inputs, aten)
        return calls.wrap_graph(compiled, prep, aten)

    # -- the pass hooks, called by AOTAutograd / Inductor with the ATen graph -----------------
    def _record(self, aten_gm, records, hoist_result):
        self.records.extend(records)
        self.graphs.append(aten_gm)
        if hoist_result is not None:
            self.hoist_results.append(hoist_result)
            log.info("gna_compile: %s", hoist_result)
        for r in records:
            log.info("gna_compile: %s -> %s (%s)", r.module, r.decision, r.reason)

    def _compile(self, gm, example_inputs, aten):
        if self.inner == "inductor":
            from torch._inductor import config as inductor_config
            from torch._inductor.compile_fx import compile_fx
            user = inductor_config.joint_custom_pre_pass

            def pre_pass(graph):
                # Inductor runs this pass on inference graphs and on joint ones (their tangents
                # are inputs): a joint graph gets the training passes (its GNA forwards saved,
                # not recomputed, even without a site backward to pair: a user's own op)
                joint = any(n.op == "placeholder" and n.name.startswith("tangents") for n in graph.nodes)
                aten.run(graph.owning_module, training=joint)
                if user is not None:
                    user(graph)
            with torch._functorch.config.patch(enable_autograd_cache=False):
                return compile_fx(gm, example_inputs, config_patches={
                    "joint_custom_pre_pass": pre_pass, "fx_graph_cache": False})
        import importlib
        importlib.import_module("torch._inductor.lowering")  # Inductor's decompositions consult it (max_pool2d)
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.aot_autograd import make_boxed_func
        from torch._functorch.partitioners import default_partition
        from torch._inductor.decomposition import select_decomp_table
        inner = self.inner

        def finish(g, ex):
            if callable(inner):
                fn = inner(g, ex)
                return fn if getattr(fn, "_boxed_call", False) else make_boxed_func(fn)
            return make_boxed_func(g.forward)

        def inference(g, ex):
            aten.run(g)
            return finish(g, ex)

        def partition(joint, joint_inputs, **kw):
            aten.run(joint, training=True)
            return default_partition(joint, joint_inputs, **kw)

        return aot_autograd(fw_compiler=finish, inference_compiler=inference, partition_fn=partition,
                            decompositions=select_decomp_table(),
                            keep_inference_input_mutations=True)(gm, example_inputs)

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
