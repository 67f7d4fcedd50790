"""GNA under Ulysses sequence parallelism, for plain models: each rank holds a contiguous
shard of the natural-order token sequence; an all-to-all gives every rank the whole sequence
for H/P of the heads, GNA runs on it unchanged (the grid is whole there), and a second
all-to-all returns the rank's sequence shard for every head. P is the process group's size
(the Ulysses degree) and must divide the query and key/value head counts and the token count.

Shards are contiguous in the natural order (rank r holds tokens [r*N/P, (r+1)*N/P)), so the
all-to-all's concatenation in rank order is the natural order again: extra (text) tokens are
sharded with the grid tokens and come back where they were. The all-to-alls are
torch.distributed.nn's differentiable ones, so gradients flow to every rank's shard.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..kernels.op import gna_attention

__all__ = ["ulysses_gna_attention"]


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    from torch.distributed.nn.functional import all_to_all_single
    x = x.contiguous()  # (and a contiguous output: empty_like of a permuted view is not)
    return all_to_all_single(torch.empty(x.shape, dtype=x.dtype, device=x.device), x, group=group)


def _seq_to_heads(x: torch.Tensor, p: int, group) -> torch.Tensor:
    """[B, H, n, D] (a sequence shard, every head) -> [B, H/p, p*n, D] (every token, a head group)."""
    b, h, n, d = x.shape
    x = x.reshape(b, p, h // p, n, d).permute(1, 0, 2, 3, 4)   # chunk j goes to rank j
    x = _all_to_all(x, group)                                  # chunk i came from rank i: its shard
    return x.permute(1, 2, 0, 3, 4).reshape(b, h // p, p * n, d)


def _heads_to_seq(x: torch.Tensor, p: int, group) -> torch.Tensor:
    """[B, H/p, p*n, D] -> [B, H, n, D]: the inverse of _seq_to_heads."""
    b, hp, pn, d = x.shape
    n = pn // p
    x = x.reshape(b, hp, p, n, d).permute(2, 0, 1, 3, 4)       # sequence chunk j goes to rank j
    x = _all_to_all(x, group)                                  # chunk i: head group i
    return x.permute(1, 0, 2, 3, 4).reshape(b, p * hp, n, d)


def ulysses_gna_attention(q, k, v, shape, window, stride=1, dilation=1, causal=False, *, group=None,
                          extra_prefix: int = 0, extra_suffix: int = 0, scale=None, key_mask=None,
                          backend: str = "auto"):
    """:func:`gna_compile.gna_attention` over a sequence sharded across ``group``.

    ``q, k, v``: ``[B, H, N/P, D]``, this rank's contiguous shard of the natural-order sequence
    ``[prefix][grid][suffix]`` of ``N = extra_prefix + prod(shape) + extra_suffix`` tokens.
    ``key_mask``: None or the whole sequence's mask (``[B, N]`` or broadcastable), the same on
    every rank. Returns this rank's shard of the output, ``[B, H, N/P, D]``.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ulysses_gna_attention needs torch.distributed initialised (init_process_group)")
    p = dist.get_world_size(group)
    b, h, n, d = q.shape
    hk = k.shape[1]
    if k.shape[2] != n or v.shape[2] != n:
        raise ValueError(f"q, k, v shards must have the same tokens, got {n}, {k.shape[2]}, {v.shape[2]}")
    if h % p or hk % p:
        raise ValueError(f"the Ulysses degree {p} (group size) must divide the query heads ({h}) and "
                         f"the key/value heads ({hk})")
    q, k, v = (_seq_to_heads(t, p, group) for t in (q, k, v))
    out = gna_attention(q, k, v, shape, window, stride, dilation, causal, extra_prefix=extra_prefix,
                        extra_suffix=extra_suffix, scale=scale, key_mask=key_mask, backend=backend)
    return _heads_to_seq(out, p, group)
