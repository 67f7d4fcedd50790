"""``enable(pipe)`` / ``disable(pipe)``: a diffusers pipeline whose transformer runs through
the gna backend, with the first denoising steps dense.

How: the transformer's ``forward`` becomes a dispatcher that reads the token grid from each
call (families.py) and runs the graph compiled for that grid; the pipeline's class becomes a
subclass (same name) whose ``__call__`` switches dense mode off at the end of the last dense
step through ``callback_on_step_end``, chained with the user's callback. Dense mode is read
inside the GNA op at run time, so switching it recompiles nothing.
"""

from __future__ import annotations

import inspect
import types
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..kernels.dispatch import set_dense_mode
from ..policy import Policy
from .families import Family, family_of

__all__ = ["enable", "disable", "set_dense_steps", "backends", "records", "report"]

_STATE = "_gna_state"
_BACKEND_OPTIONS = ("inner", "hoist_permutations")


@dataclass
class _State:
    family: Optional[Family]
    cls: type
    transformer: torch.nn.Module
    policy: Policy
    dense_steps: Optional[int]
    compile_options: dict
    backend_options: dict
    old_forward: object = None   # the instance-level forward the module had (a hook's), if any
    dispatcher: object = None
    grid_memo: tuple = None      # (tensors/values read, their versions, grid) of the last call
    compiled: dict = field(default_factory=dict)   # grid (or None) -> compiled forward
    backends: dict = field(default_factory=dict)   # grid (or None) -> GNABackend
    warned: set = field(default_factory=set)

    def forward_for(self, grid):
        if grid not in self.compiled:
            from ..backend import GNABackend
            limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
            if len(self.compiled) + 1 > limit and "limit" not in self.warned:
                self.warned.add("limit")
                warnings.warn(f"gna_compile: {len(self.compiled) + 1} token grids compiled for one transformer, over "
                              f"Dynamo's recompile limit ({limit}): later ones run eagerly (dense). Raise "
                              f"torch._dynamo.config.recompile_limit if you need more resolutions.", stacklevel=3)
            policy = self.policy if grid is None or self.policy.layout is not None else self.policy.with_layout(grid)
            be = GNABackend(policy, **self.backend_options)
            # the forward the module had (a hook's wrapper, if one replaced it), else its class's
            fwd = self.old_forward if self.old_forward is not None else types.MethodType(
                type(self.transformer).forward, self.transformer)
            self.backends[grid] = be
            self.compiled[grid] = torch.compile(fwd, backend=be, **self.compile_options)
        return self.compiled[grid]

    def read_grid(self, args, kwargs):
        """The packed family's grid for this call: ``(grid or None, why)``. The pipeline hands
        its transformer the same id tensors every step, so the last answer is kept while the
        very same objects, unmodified (tensor versions), come back: reading FLUX's ids
        synchronises with the device, which would stall every step's launches."""
        read = tuple(kwargs.get(k) for k in self.family.reads)
        versions = tuple(v._version if isinstance(v, torch.Tensor) else None for v in read)
        memo = self.grid_memo
        if memo is not None and versions == memo[1] and all(a is b for a, b in zip(read, memo[0])):
            return memo[2], ""
        grid, why = self.family.packed_grid(args, kwargs)
        self.grid_memo = (read, versions, grid) if grid is not None else None
        return grid, why


def _check_pipe(pipe):
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise ValueError(f"pipe={type(pipe).__name__}: enable() needs a pipeline with a `transformer` "
                         f"module, got {type(transformer).__name__}")
    if getattr(transformer.__dict__.get("forward"), "_gna_state", None) is not None:
        raise ValueError(f"pipe.transformer is already enabled through another pipeline that shares it; call "
                         f"gna_compile.disable on that pipeline first")
    if isinstance(transformer, torch._dynamo.eval_frame.OptimizedModule):
        raise ValueError(f"pipe.transformer is already compiled ({type(transformer).__name__}); pass the "
                         f"uncompiled pipeline to enable()")
    if getattr(pipe, _STATE, None) is not None:
        raise ValueError(f"pipe={type(pipe).__name__} is already enabled; call gna_compile.disable(pipe) first")
    return transformer


def enable(pipe, *, dense_steps: Optional[int] = None, policy: Optional[Policy] = None, **compile_options):
    """Return ``pipe`` with its transformer compiled by the gna backend.

    ``dense_steps``: how many first denoising steps run dense (default: the family's share,
    families.py); ``policy``: a :class:`Policy` (its layout, if given, wins over the grid read
    from the calls); ``compile_options``: ``inner`` and ``hoist_permutations`` go to the
    backend, the rest (``mode``, ``dynamic`` (default False: a graph per resolution),
    ``fullgraph``, ...) to ``torch.compile``.
    A pipeline of no known family still works: its grid is left to the graph's proof, and
    ``records(pipe)`` says why a call stayed dense.
    """
    transformer = _check_pipe(pipe)
    _check_dense_steps(dense_steps)
    policy = Policy() if policy is None else policy
    if not isinstance(policy, Policy):
        raise ValueError(f"policy={policy!r} must be a gna_compile.Policy")
    mode = compile_options.get("mode")
    if mode in ("reduce-overhead", "max-autotune") or (compile_options.get("options") or {}).get("triton.cudagraphs"):
        raise ValueError(f"mode={mode!r}: CUDA-graph replay would freeze the dense/sparse schedule (the GNA op "
                         f"reads it at run time); use the default mode or 'max-autotune-no-cudagraphs'")
    backend_options = {k: compile_options.pop(k) for k in _BACKEND_OPTIONS if k in compile_options}
    # One static graph per resolution (the packed families get one per grid anyway): static
    # graphs are the simplest to prove, and resolutions are few in a sampling workload.
    compile_options.setdefault("dynamic", False)
    if "backend" in compile_options:
        raise ValueError("enable() compiles with the gna backend; configure it with policy=/inner=, not backend=")
    family = family_of(pipe)
    if family is None:
        warnings.warn(f"gna_compile.enable: {type(pipe).__name__} is not a pipeline family gna_compile knows "
                      f"(gna_compile.pipelines.FAMILIES); its token layouts are left to the graph, and "
                      f"dense_steps defaults to 0", stacklevel=2)
    state = _State(family, type(pipe), transformer, policy, dense_steps, compile_options, backend_options,
                   old_forward=transformer.__dict__.get("forward"))

    def forward(*args, **kwargs):
        grid = None
        if family is not None and family.packed_grid is not None:
            grid, why = state.read_grid(args, kwargs)
            if grid is None and why not in state.warned:
                state.warned.add(why)
                warnings.warn(f"gna_compile: {family.name} transformer call without a readable grid ({why}); "
                              f"its attention is left to the graph's proof", stacklevel=2)
        return state.forward_for(grid)(*args, **kwargs)

    forward._gna_state = state
    state.dispatcher = forward
    transformer.forward = forward
    setattr(pipe, _STATE, state)
    pipe.__class__ = _subclass(type(pipe))
    return pipe


def _check_dense_steps(dense_steps):
    if dense_steps is not None and (isinstance(dense_steps, bool) or not isinstance(dense_steps, int)
                                    or dense_steps < 0):
        raise ValueError(f"dense_steps={dense_steps!r} must be None or an int >= 0")


def set_dense_steps(pipe, dense_steps: Optional[int]):
    """Change how many first steps the next pipeline calls run dense (None: the family's
    share), keeping everything compiled: the schedule is read at run time, so no recompile."""
    state = getattr(pipe, _STATE, None)
    if state is None:
        raise ValueError(f"pipe={type(pipe).__name__} is not enabled (gna_compile.enable was not called on it)")
    _check_dense_steps(dense_steps)
    state.dense_steps = dense_steps
    return pipe


def disable(pipe):
    """Undo :func:`enable`: the pipeline's own class and transformer forward again."""
    state = getattr(pipe, _STATE, None)
    if state is None:
        raise ValueError(f"pipe={type(pipe).__name__} is not enabled (gna_compile.enable was not called on it)")
    if state.transformer.__dict__.get("forward") is not state.dispatcher:
        raise ValueError("pipe.transformer.forward was replaced after gna_compile.enable (a hook?); remove that "
                         "hook first, so that disable() does not drop it")
    if state.old_forward is not None:
        state.transformer.forward = state.old_forward
    else:
        del state.transformer.forward
    pipe.__class__ = state.cls
    delattr(pipe, _STATE)
    return pipe


def backends(pipe) -> dict:
    """grid (None: proven by the graph) -> the GNABackend that compiled it."""
    return dict(getattr(pipe, _STATE).backends)


def records(pipe) -> list:
    """Every attention call site the backends saw (CallRecord), for explain-style reports."""
    return [r for be in backends(pipe).values() for r in be.records]


def report(pipe) -> str:
    """The explain() table of every call site compiled so far, per token grid."""
    from ..explain import format_table
    parts = []
    for grid, be in backends(pipe).items():
        head = "grid proven by the graph" if grid is None else f"grid {'x'.join(map(str, grid))} (read from the calls)"
        parts.append(f"{head}:\n{format_table(be.records)}")
    return "\n\n".join(parts) if parts else "no transformer call compiled yet"


_SUBCLASSES: dict = {}


def _call_arguments(cls, self, args, kwargs) -> dict:
    """The pipeline call's arguments by name (positional ones included)."""
    try:
        bound = inspect.signature(cls.__call__).bind(self, *args, **kwargs)
    except TypeError:
        return dict(kwargs)
    bound.apply_defaults()
    out = {k: v for k, v in bound.arguments.items() if k != "self"}
    out.update(out.pop("kwargs", {}) if isinstance(out.get("kwargs"), dict) else {})
    return out


def _steps(arguments) -> int:
    for k in ("timesteps", "sigmas"):
        if arguments.get(k) is not None:
            return len(arguments[k])
    n = arguments.get("num_inference_steps")
    return int(n) if isinstance(n, int) else 0


def _subclass(cls):
    """``cls`` with a ``__call__`` that runs the first dense steps dense (same class name)."""
    if cls in _SUBCLASSES:
        return _SUBCLASSES[cls]

    def __call__(self, *args, **kwargs):
        state = getattr(self, _STATE)
        arguments = _call_arguments(cls, self, args, kwargs)
        n = state.dense_steps
        if n is None:
            n = state.family.default_dense_steps(_steps(arguments)) if state.family else 0
        if n == 0:
            return cls.__call__(self, *args, **kwargs)
        if "callback_on_step_end" not in kwargs and arguments.get("callback_on_step_end") is not None:
            raise TypeError(f"{cls.__name__}: with dense steps, pass callback_on_step_end by name")
        user = kwargs.get("callback_on_step_end")
        inputs = getattr(user, "tensor_inputs", None)
        if inputs is not None and kwargs.get("callback_on_step_end_tensor_inputs") is None:
            kwargs["callback_on_step_end_tensor_inputs"] = list(inputs)

        def on_step_end(pipe, i, t, cb_kwargs):
            out = user(pipe, i, t, cb_kwargs) if user is not None else {}
            if i + 1 >= n:
                set_dense_mode(prev)  # the mode the call began in (dense inside a dense_attention())
            return {} if out is None else out

        kwargs["callback_on_step_end"] = on_step_end
        prev = set_dense_mode(True)  # (on_step_end reads prev: set before the loop runs)
        try:
            return cls.__call__(self, *args, **kwargs)
        finally:
            set_dense_mode(prev)

    sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                      "__doc__": cls.__doc__})
    _SUBCLASSES[cls] = sub
    return sub

