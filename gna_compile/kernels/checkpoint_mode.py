"""The dense mode of a GNA call recomputed by reentrant activation checkpointing.

``torch.utils.checkpoint(fn, use_reentrant=True)`` runs ``fn`` once without gradients and runs
it again inside the backward to build the graph it differentiates. That second run reads the
mode of the backward (possibly outside ``dense_attention()``, or on autograd's CUDA thread,
where the thread-local mode is unset), so its gradients could belong to another attention
than the forward's output. Reentrant checkpointing keeps no state for us (only RNG and
autocast), so this module finds its frames on the Python stack instead:

- a GNA call inside ``CheckpointFunction.forward`` appends its mode to that call's ``ctx``;
- a GNA call inside ``CheckpointFunction.backward`` (the recompute) takes the next recorded
  mode of that ``ctx``, in call order, whatever mode is on now.

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


def _checkpoint_frames():
    """``([("forward" | "backward", ctx), ...], eager)``: the reentrant checkpoint frames,
    innermost first, up to and including the nearest recompute (backward) frame; ``eager``:
    a non-reentrant checkpoint's recompute (its ``recompute_fn``) is on the stack."""
    out, eager = [], False
    f = sys._getframe(2)
    while f is not None:
        code = f.f_code
        if code is _FWD or code is _BWD:
            ctx = f.f_locals.get("ctx")
            if ctx is not None:
                out.append(("forward" if code is _FWD else "backward", ctx))
                if code is _BWD:
                    break
        elif code.co_name == "recompute_fn" and code.co_filename == _CKPT_FILE:
            eager = True
        f = f.f_back
    return out, eager


def mode_for_call(current: Callable[[], bool], ever_dense: Callable[[], bool]) -> bool:
    """The dense mode one GNA op call runs in: ``current()`` (the thread's mode), except inside
    a reentrant checkpoint's recompute, where it is the mode the checkpointed forward ran in.
    Call it exactly once per op call: calls are matched to records by order.

    A call inside a backward pass with gradients off and no checkpoint frame (neither kind) is
    a forward that a compiled backward recomputes (activation checkpointing compiled by a backend that does
    not save GNA forwards, as backend="gna" does). Its forward's mode is unknown, so once dense
    mode has been used in this process (``ever_dense()``) such a call raises instead of
    guessing; before that, every call ran sparse."""
    frames, eager = _checkpoint_frames()
    if not frames:
        # (op bodies run with gradients off under autograd too: eager non-reentrant recomputes
        # are told apart by their frame, and op.py's saved-mode check covers them)
        if ever_dense() and not eager and not torch.is_grad_enabled() and \
                torch._C._current_graph_task_id() != -1:
            raise RuntimeError(
                "gna_compile: a GNA forward is being recomputed inside a backward pass (activation "
                "checkpointing in a graph compiled by a backend other than backend='gna'), and dense_attention() "
                "has been used in this process, so the mode its forward ran in cannot be proven: compile with "
                "backend='gna' (it saves GNA forwards instead of recomputing them), use eager "
                "torch.utils.checkpoint, or keep the GNA call out of the checkpointed region")
        return current()
    if frames[-1][0] == "backward":
        ctx = frames[-1][1]
        modes, (task, nxt) = getattr(ctx, _ATTR, ([], (None, 0)))
        now = torch._C._current_graph_task_id()
        if task != now:  # a new backward (retain_graph=True runs one twice) replays from the start
            nxt = 0
        if nxt >= len(modes):
            raise RuntimeError(
                f"gna_compile: reentrant activation checkpointing (torch.utils.checkpoint, use_reentrant=True) "
                f"recomputed {nxt + 1} GNA call(s) where its forward made {len(modes)}: the checkpointed "
                f"function must make the same GNA calls both times, so that each recomputed call runs in the "
                f"dense mode its forward ran in")
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
