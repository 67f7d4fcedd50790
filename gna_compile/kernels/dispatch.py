"""Backend dispatch for the GNA op: picks a kernel at run time by device/dtype/support.

Backends register ``run(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles)
-> (out, lse)`` and ``why_not(...) -> str | None`` (None = supported), where ``key_mask`` is
None or a :class:`KeyMask` and ``tiles`` is the recorded ``(q_tile, kv_tile)`` or None (then
a tiled backend asks ``tile_choice.choose_tiles``, the function the compile pass asked). ``"auto"`` takes the
first fast backend that supports the call and otherwise falls back to the reference, logging
once per reason why. The pass never picks a backend; this module does, per call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from .. import settings
from .checkpoint_mode import mode_for_call
from .reference import reference_attention

__all__ = ["KeyMask", "register_backend", "register_backward", "available_backends", "run_gna",
           "run_gna_backward", "dense_attention", "dense_mode"]

log = logging.getLogger("gna_compile")
_SDPA = torch._C._nn.scaled_dot_product_attention  # the builtin, never a patched F attribute


class KeyMask(NamedTuple):
    """A bool ``[B, N]`` key mask (True = may be attended). ``spatial=False`` promises it is
    True on every grid token, so a fast backend may apply it to extra-token keys only."""

    mask: torch.Tensor
    spatial: bool = True


@dataclass(frozen=True)
class _Backend:
    run: Callable
    why_not: Callable  # -> None if supported, else a reason


def _reference_run(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles=None):
    mask = None if key_mask is None else key_mask.mask
    return reference_attention(q, k, v, spec, extra_prefix, extra_suffix, scale, mask)


_BACKENDS: dict[str, _Backend] = {"reference": _Backend(_reference_run, lambda *a, **k: None)}
# Order in which "auto" tries the fast backends.
_AUTO_ORDER: list[str] = []
_LOGGED: set[str] = set()
_LAZY_LOADED = False


def register_backend(name: str, run: Callable, why_not: Callable, auto: bool = True) -> None:
    """Add a backend; ``auto=True`` lets ``backend="auto"`` choose it when supported."""
    _BACKENDS[name] = _Backend(run, why_not)
    if auto and name not in _AUTO_ORDER:
        _AUTO_ORDER.append(name)


def _load_optional_backends() -> None:
    """Import the optional backends once; each registers itself if its imports work."""
    global _LAZY_LOADED
    if _LAZY_LOADED:
        return
    _LAZY_LOADED = True
    for mod in ("triton_backend", "flex_backend"):
        try:
            __import__(f"{__package__}.{mod}")
        except ImportError as e:  # a missing optional dependency (triton) or module
            log.debug("gna_compile: backend module %s not loaded: %s", mod, e)


def available_backends() -> list[str]:
    _load_optional_backends()
    return list(_BACKENDS)


def _log_once(msg: str) -> None:
    if msg not in _LOGGED:
        _LOGGED.add(msg)
        log.warning(msg)


def forced_backend(backend: str) -> str:
    """``"auto"`` becomes ``$GNA_COMPILE_BACKEND`` when that is set (e.g. ``reference``, to
    check a compiled model against the ground truth without recompiling it)."""
    return (settings.forced_backend() or backend) if backend == "auto" else backend


def _auto_pick(args):
    """``(name, reasons)``: the first fast backend in auto order that takes the call (None if
    none does) and why each one before it refused."""
    reasons = []
    for name in _AUTO_ORDER:
        why = _BACKENDS[name].why_not(*args)
        if why is None:
            return name, reasons
        reasons.append(f"{name}: {why}")
    return None, reasons


def run_gna(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, backend: str = "auto",
            tiles=None):
    """Run GNA attention with the named backend (or the best supported one for "auto")."""
    _load_optional_backends()
    backend = forced_backend(backend)
    args = (q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles)
    if backend == "auto":
        name, reasons = _auto_pick(args)
        if name is not None:
            return _BACKENDS[name].run(*args)
        if q.is_cuda:
            _log_once("gna_compile: using the slow reference backend on CUDA because "
                      + ("; ".join(reasons) if reasons else "no fast backend is installed (pip install triton)"))
        return _BACKENDS["reference"].run(*args)
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r} is not available; choose one of {['auto', *_BACKENDS]}")
    why = _BACKENDS[backend].why_not(*args)
    if why is not None:
        raise ValueError(f"backend={backend!r} cannot run this call: {why}")
    return _BACKENDS[backend].run(*args)


# -- backward ------------------------------------------------------------------------------
# A backward kernel is registered under the name of the forward backend whose (out, lse) it
# consumes: it runs only where that backend ran the forward, and only where it supports the
# call; everything else recomputes through the reference under autograd (the oracle).
_BACKWARDS: dict[str, _Backend] = {}


def register_backward(name: str, run: Callable, why_not: Callable) -> None:
    """``run(grad_out, grad_lse, q, k, v, out, lse, spec, extra_prefix, extra_suffix, scale,
    key_mask, tiles) -> (dq, dk, dv)`` for forwards run by backend ``name``; ``why_not`` takes
    the forward's arguments."""
    _BACKWARDS[name] = _Backend(run, why_not)


def _forward_backend(backend: str, args) -> str:
    """The backend run_gna runs for these arguments (it raises there if a forced one cannot)."""
    if backend != "auto":
        return backend
    return _auto_pick(args)[0] or "reference"


def reference_backward(grad_out, grad_lse, q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask):
    """Gradients by recomputing the reference forward under autograd (out and lse)."""
    mask = None if key_mask is None else key_mask.mask
    # Custom-op impls run below the autograd dispatch keys; re-enable them for the recompute.
    with torch.enable_grad(), torch._C._SetExcludeDispatchKeyGuard(
            torch._C.DispatchKey.AutogradFunctionality, False), torch._C._SetExcludeDispatchKeyGuard(
            torch._C.DispatchKey.ADInplaceOrView, False):
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        out, lse = reference_attention(qq, kk, vv, spec, extra_prefix, extra_suffix, scale, mask)
        outs, grads = [out], [grad_out.to(out.dtype)]
        if grad_lse is not None:
            outs.append(lse)
            grads.append(grad_lse.to(lse.dtype))
        return torch.autograd.grad(outs, (qq, kk, vv), grads, allow_unused=True)


def run_gna_backward(grad_out, grad_lse, q, k, v, out, lse, spec, extra_prefix, extra_suffix, scale,
                     key_mask, backend: str = "auto", tiles=None):
    """``(dq, dk, dv)`` of GNA attention. ``out``/``lse``: the forward's (None: recomputed by
    the kernel's forward where a kernel runs); ``grad_lse``: the LSE's gradient or None."""
    _load_optional_backends()
    args = (q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles)
    name = _forward_backend(forced_backend(backend), args)
    bwd = _BACKWARDS.get(name)
    if bwd is not None:
        why = bwd.why_not(*args)
        if why is None:
            if out is None or lse is None:
                out, lse = _BACKENDS[name].run(*args)
            return bwd.run(grad_out, grad_lse, q, k, v, out, lse, *args[3:])
        if q.is_cuda:
            _log_once(f"gna_compile: the {name} backward cannot take this call ({why}); "
                      f"gradients recompute through the slow reference")
    elif q.is_cuda and name != "reference":
        _log_once(f"gna_compile: backend {name!r} has no backward kernel; gradients recompute "
                  f"through the slow reference")
    return reference_backward(grad_out, grad_lse, q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask)


# Hybrid schedule (paper §5): run rewritten calls densely without recompiling. The flag is read
# inside the opaque custom op at run time, so Dynamo never guards on it.
_DENSE = threading.local()
_EVER_DENSE = [False]  # dense mode was switched on at some point in this process (any thread)


def dense_mode() -> bool:
    return getattr(_DENSE, "on", False)


_LAST = threading.local()


def call_mode() -> bool:
    """The mode one GNA op call runs in; read it exactly once per call. The thread's mode,
    except in a reentrant checkpoint's recompute, where it is the one the checkpointed forward
    ran in (checkpoint_mode.py)."""
    _LAST.mode = mode_for_call(dense_mode, lambda: _EVER_DENSE[0])
    return _LAST.mode


def last_call_mode() -> bool:
    """The mode of this thread's last GNA op call (for its autograd setup, which runs next)."""
    return getattr(_LAST, "mode", False)


def dense_flag() -> torch.Tensor:
    """The mode a forward runs in (call_mode), as a 0-dim CPU bool tensor its backward reads:
    the backward may run outside the ``dense_attention()`` block, or on autograd's CUDA device
    thread, where the thread-local mode is not set."""
    return torch.tensor(call_mode())


def fake_dense_flag() -> torch.Tensor:
    """dense_flag's shape, dtype and device, for the ops' fake implementations."""
    return torch.empty((), dtype=torch.bool)


@contextlib.contextmanager
def dense_attention(enabled: bool = True):
    """Inside this context every GNA call computes full (dense) attention, e.g. for the first
    diffusion steps of a hybrid schedule. Compiled graphs are reused as they are."""
    prev = dense_mode()
    _DENSE.on = enabled
    _EVER_DENSE[0] = _EVER_DENSE[0] or bool(enabled)
    try:
        yield
    finally:
        _DENSE.on = prev


def set_dense_mode(on: bool) -> bool:
    """Switch dense mode for this thread and return the previous value (for a schedule that
    changes mode mid-loop, e.g. from a pipeline's step callback; prefer dense_attention())."""
    prev = dense_mode()
    _DENSE.on = bool(on)
    _EVER_DENSE[0] = _EVER_DENSE[0] or bool(on)
    return prev


def dense_sdpa(q, k, v, scale, key_mask: KeyMask | None):
    """Full attention with the same key mask, via SDPA (cuDNN/flash where available)."""
    mask = None if key_mask is None else key_mask.mask[:, None, None, :]
    return _SDPA(q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
