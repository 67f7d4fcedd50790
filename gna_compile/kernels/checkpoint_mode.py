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
  from the suspended generator of ``checkpoint()``);
- a GNA call in a recompute (``CheckpointFunction.backward``; the ``unpack_hook`` running
  ``recompute_fn``) takes the next recorded mode of its holder, in call order, whatever mode
  is on now.

Nested checkpoints: a call records into every enclosing checkpoint forward up to the nearest
recompute, with the mode it ran in (replayed or current), so each recompute replays its own
calls. A recompute that makes more GNA calls than its forward did raises: the function is not
the same function twice, and no mode can be proven for the extra call.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

__all__ = ["mode_for_call"]

_ATTR = "_gna_dense_modes"   # on the checkpoint ctx: [modes recorded], (backward task, next index)


def _codes():
    import torch.utils.checkpoint as cp
    return cp.CheckpointFunction.forward.__code__, cp.CheckpointFunction.backward.__code__, cp.__file__


_FWD, _BWD, _CKPT_FILE = _codes()


def _holder(f):
    """``(kind, record holder)`` of one Python frame, or None. Reentrant: the forward or backward
    of CheckpointFunction (its ``ctx``). Non-reentrant: ``checkpoint()`` running the function
    (its suspended generator's ``new_frame``, the _CheckpointFrame) or the ``unpack_hook``
    running its recompute (its ``frame``)."""
    code = f.f_code
    if code is _FWD or code is _BWD:
        ctx = f.f_locals.get("ctx")
        return None if ctx is None else ("forward" if code is _FWD else "replay", ctx)
    if code.co_filename != _CKPT_FILE:
        return None
    if code.co_name == "checkpoint":
        gen = f.f_locals.get("gen")
        frame = getattr(getattr(gen, "gi_frame", None), "f_locals", {}).get("new_frame")
        return None if frame is None else ("forward", frame)
    if code.co_name == "unpack_hook":
        frame = f.f_locals.get("frame")
        return None if frame is None or not hasattr(frame, "recompute_fn") else ("replay", frame)
    return None


def _checkpoint_frames():
    """``[("forward" | "replay", holder), ...]``: the checkpoints around this call, innermost
    first, up to and including the nearest recompute (replay)."""
    out = []
    f = sys._getframe(2)
    while f is not None:
        got = _holder(f)
        if got is not None:
            out.append(got)
            if got[0] == "replay":
                break
        f = f.f_back
    return out


def mode_for_call(current: Callable[[], bool], ever_dense: Callable[[], bool]) -> bool:
    """The dense mode one GNA op call runs in: ``current()`` (the thread's mode), except inside
    a checkpoint's recompute, where it is the mode the checkpointed forward ran in. Call it
    exactly once per op call: calls are matched to records by order.

    A call inside a backward pass with gradients off and no checkpoint frame is a forward run
    again by something this module cannot see: a compiled backward recomputing a checkpointed
    forward (a backend that does not save GNA forwards, as backend="gna" does), another
    library's checkpointing, a backward hook. Its forward's mode is unknown, so once dense
    mode has been used in this process (``ever_dense()``) such a call raises instead of
    guessing; before that, every call ran sparse."""
    frames = _checkpoint_frames()
    if not frames:
        if ever_dense() and not torch.is_grad_enabled() and torch._C._current_graph_task_id() != -1:
            raise RuntimeError(
                "gna_compile: a GNA forward runs inside a backward pass outside torch.utils.checkpoint (a compiled "
                "backward of a backend other than backend='gna' recomputing a checkpointed forward, another "
                "library's checkpointing, or a backward hook), and dense_attention() has been used in this process, "
                "so the mode its forward ran in cannot be proven: compile with backend='gna' (it saves GNA forwards "
                "instead of recomputing them), use torch.utils.checkpoint, or keep the GNA call out of the "
                "recomputed region")
        return current()
    if frames[-1][0] == "replay":
        ctx = frames[-1][1]
        modes, (task, nxt) = getattr(ctx, _ATTR, ([], (None, 0)))
        now = torch._C._current_graph_task_id()
        if task != now:  # a new backward (retain_graph=True runs one twice) replays from the start
            nxt = 0
        if nxt >= len(modes):
            raise RuntimeError(
                f"gna_compile: activation checkpointing (torch.utils.checkpoint) recomputed {nxt + 1} GNA call(s) "
                f"where its forward made {len(modes)}: the checkpointed function must make the same GNA calls both "
                f"times, so that each recomputed call runs in the dense mode its forward ran in")
        mode = modes[nxt]
        setattr(ctx, _ATTR, (modes, (now, nxt + 1)))
        frames = frames[:-1]
    else:
        mode = current()
    for _, ctx in frames:  # enclosing checkpoint forwards (nested checkpoints) record it
        modes, replay = getattr(ctx, _ATTR, ([], (None, 0)))
        modes.append(mode)
        setattr(ctx, _ATTR, (modes, replay))
    return mode
