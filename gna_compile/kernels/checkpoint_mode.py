"""The dense mode of a GNA call recomputed by activation checkpointing.

``torch.utils.checkpoint`` runs the checkpointed function once in the forward and again inside
the backward (reentrant: to build the graph it differentiates; non-reentrant: to refill saved
tensors). That second run would read the mode of the backward (possibly outside
``dense_attention()``, or on autograd's CUDA thread, where the thread-local mode is unset), so
its gradients or saved tensors could belong to another attention than the forward's output.
Checkpointing keeps no state for us (only RNG and autocast), so this module finds its frames
on the Python stack instead:

- a GNA call in a checkpointed forward appends its mode to that checkpoint's record holder
  (reentrant: ``CheckpointFunction``'s ``ctx``; non-reentrant: its ``_CheckpointFrame``, read
  from the suspended generator of ``checkpoint()``, or from the innermost saved-tensor hook
  when no such frame is on the stack, as with the composable ``checkpoint(module)``);
- a GNA call in a recompute (``CheckpointFunction.backward``; the ``unpack_hook`` running
  ``recompute_fn``) takes the next recorded mode of its holder, in call order, whatever mode
  is on now; each recompute has its own cursor, keyed as torch keys recomputes (graph task,
  GraphExecGroup, or a fresh id for a read outside backward), so concurrent backwards and
  repeated reads each replay from the first record.

Nested checkpoints: a call records into every enclosing checkpoint forward up to the nearest
recompute, with the mode it ran in (replayed or current), so each recompute replays its own
calls. Once dense mode has been used, what cannot be proven raises (mode_for_call): a
recompute with more GNA calls than its forward, selective checkpointing over calls of mixed
modes, a GNA forward inside a backward with no checkpoint frame.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

__all__ = ["mode_for_call"]

_ATTR = "_gna_dense_modes"   # on the checkpoint's record holder: a _Record


class _Record:
    """What one checkpoint knows: the modes of its forward's GNA calls in order, whether
    selective checkpointing (SAC) was on, and one replay cursor per recompute (keyed as torch
    keys recomputes: the graph task, a GraphExecGroup, or a fresh id outside backward)."""
    __slots__ = ("modes", "sac", "cursors")

    def __init__(self):
        self.modes: list = []
        self.sac = False
        self.cursors: dict = {}


def _record(holder) -> _Record:
    rec = getattr(holder, _ATTR, None)
    if rec is None:
        rec = _Record()
        setattr(holder, _ATTR, rec)
    return rec


def _codes():
    import torch.utils.checkpoint as cp
    return (cp.CheckpointFunction.forward.__code__, cp.CheckpointFunction.backward.__code__, cp.__file__,
            getattr(cp, "_CachingTorchDispatchMode", None))


_FWD, _BWD, _CKPT_FILE, _SAC_MODE = _codes()


def _holder(f):
    """``(kind, record holder, replay key)`` of one Python frame, or None. Reentrant: the
    forward or backward of CheckpointFunction (its ``ctx``; a recompute is keyed by its graph
    task). Non-reentrant: ``checkpoint()`` running the function (its suspended generator's
    ``new_frame``, the _CheckpointFrame) or the ``unpack_hook`` running its recompute (its
    ``frame``, keyed by the hook's own ``gid``). ``("sac", None, None)``: selective
    checkpointing's caching mode dispatching this op in a forward."""
    code = f.f_code
    if code is _FWD or code is _BWD:
        ctx = f.f_locals.get("ctx")
        if ctx is None:
            return None
        return ("forward", ctx, None) if code is _FWD else ("replay", ctx, torch._C._current_graph_task_id())
    if code.co_filename != _CKPT_FILE:
        return None
    if code.co_name == "checkpoint":
        gen = f.f_locals.get("gen")
        frame = getattr(getattr(gen, "gi_frame", None), "f_locals", {}).get("new_frame")
        return None if frame is None else ("forward", frame, None)
    if code.co_name == "unpack_hook":
        frame = f.f_locals.get("frame")
        if frame is None or not hasattr(frame, "recompute_fn"):
            return None
        return "replay", frame, f.f_locals.get("gid", torch._C._current_graph_task_id())
    if code.co_name == "__torch_dispatch__" and _SAC_MODE is not None and \
            isinstance(f.f_locals.get("self"), _SAC_MODE):
        return "sac", None, None
    return None


def _hooked_checkpoint():
    """The _CheckpointFrame whose saved-tensor hooks are innermost now, or None: a
    non-reentrant checkpoint driven without a ``checkpoint()`` frame on the stack (the
    composable ``torch.distributed._composable.checkpoint`` runs its forward from module
    hooks). Read from the pack hook's closure."""
    try:
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    except (AttributeError, TypeError, RuntimeError):
        return None
    pack = hooks[0] if hooks else None
    code = getattr(pack, "__code__", None)
    if code is None or code.co_filename != _CKPT_FILE or code.co_name != "pack_hook":
        return None
    cells = dict(zip(code.co_freevars, pack.__closure__ or ()))
    frame = cells["frame"].cell_contents if "frame" in cells else None
    return frame if hasattr(frame, "recompute_fn") else None


def _checkpoint_frames():
    """``([(kind, holder, key), ...], sac)``: the checkpoints around this call, innermost
    first, up to and including the nearest recompute (replay); ``sac``: a selective
    checkpointing forward is dispatching this call."""
    out = []
    sac = False
    f = sys._getframe(2)
    while f is not None:
        got = _holder(f)
        if got is not None:
            if got[0] == "sac":
                sac = True
            else:
                out.append(got)
                if got[0] == "replay":
                    break
        f = f.f_back
    if not out:
        hooked = _hooked_checkpoint()
        if hooked is not None:
            out.append(("forward", hooked, None))
    return out, sac


def mode_for_call(current: Callable[[], bool], ever_dense: Callable[[], bool]) -> bool:
    """The dense mode one GNA op call runs in: ``current()`` (the thread's mode), except inside
    a checkpoint's recompute, where it is the mode the checkpointed forward ran in. Call it
    exactly once per op call: calls are matched to records by order.

    Before dense mode is first used in this process (``ever_dense()`` false) every call ran
    sparse, so nothing is refused then. After that:

    - A call inside a backward pass with no checkpoint frame is a forward run again by
      something this module cannot see (a compiled backward of another backend recomputing a
      checkpointed forward, another library's checkpointing, a backward hook): its forward's
      mode is unknown, so it raises instead of guessing.
    - A recompute that makes more GNA calls than its forward recorded raises.
    - Selective checkpointing may answer some recomputed calls from its cache, so the calls
      that do run cannot be matched to records by order: a recompute under it raises unless
      all of the forward's calls ran in one mode (then any match gives that mode)."""
    frames, sac = _checkpoint_frames()
    if not frames:
        if ever_dense() and torch._C._current_graph_task_id() != -1:
            raise RuntimeError(
                "gna_compile: a GNA forward runs inside a backward pass outside torch.utils.checkpoint (a compiled "
                "backward of a backend other than backend='gna' recomputing a checkpointed forward, another "
                "library's checkpointing, an activation memory budget of 0 recomputing everything, or a backward "
                "hook), and dense_attention() has been used in this process, so the mode its forward ran in cannot "
                "be proven: compile with backend='gna' (it saves GNA forwards instead of recomputing them; keep "
                "torch._functorch.config.activation_memory_budget above 0), use torch.utils.checkpoint, or keep the "
                "GNA call out of the recomputed region")
        return current()
    if frames[-1][0] == "replay":
        _, holder, key = frames[-1]
        rec = _record(holder)
        nxt = rec.cursors.get(key, 0)
        if not ever_dense():
            mode = current()
        elif rec.sac and len(set(rec.modes)) > 1:
            raise RuntimeError(
                "gna_compile: selective activation checkpointing (context_fn) recomputes a region whose GNA calls "
                "ran in different dense modes; it answers some recomputed calls from its cache, so the mode of "
                "each call that runs again cannot be matched: keep each checkpointed region in one mode "
                "(dense_attention() around the whole region or none of it), or save the GNA calls")
        elif nxt >= len(rec.modes):
            raise RuntimeError(
                f"gna_compile: activation checkpointing recomputed {nxt + 1} GNA call(s) where its forward made "
                f"{len(rec.modes)}: the checkpointed function must make the same GNA calls both times, so that "
                f"each recomputed call runs in the dense mode its forward ran in")
        else:
            mode = rec.modes[nxt]
        rec.cursors[key] = nxt + 1
        frames = frames[:-1]
    else:
        mode = current()
    for _, holder, _ in frames:  # enclosing checkpoint forwards (nested checkpoints) record it
        rec = _record(holder)
        rec.modes.append(mode)
        rec.sac = rec.sac or sac
    return mode
