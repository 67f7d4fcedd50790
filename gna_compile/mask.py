"""GNA semantics in one place (DESIGN.md §1): per-dim key ranges of a query.

The GNA mask is a product over dims, so everything (reference backend, simulator,
FlexAttention mask, kernel tile bounds) is built from the 1-D rule below. Two spellings of
the same rule: plain ints (simulator, kernels' host code) and int64 tensors (reference).
Bounds are inclusive and in original (undilated) coordinates; with dilation d only keys of
the query's residue ``q mod d`` inside ``[lo, hi]`` are attended.
"""

from __future__ import annotations

import torch

__all__ = ["key_range", "key_range_t", "attend_1d_t", "dense_mask"]


def _dilated_extent(n: int, d: int, r):
    """Number of grid positions with residue ``r`` mod ``d`` (``n'`` in DESIGN.md)."""
    return n // d + (1 if r < n % d else 0)


def key_range(q: int, n: int, w: int, s: int = 1, d: int = 1, causal: bool = False) -> tuple[int, int]:
    """Inclusive key range ``(lo, hi)`` that query coordinate ``q`` attends to in one dim."""
    r, qd = q % d, q // d
    nd = _dilated_extent(n, d, r)
    if causal:
        leader = min((qd // s) * s + s - 1, nd - 1)
        lo, hi = max(leader - w + 1, 0), qd
    else:
        wl = w // 2
        wr = w // 2 + w % 2 - 1
        leader = min((qd // s) * s + s // 2, nd - 1)
        center = max(wl, min(leader, nd - 1 - wr))
        lo, hi = center - wl, center + wr
    return lo * d + r, hi * d + r


def _min(a, b):
    return torch.where(a < b, a, b)


def _max(a, b):
    return torch.where(a > b, a, b)


def key_range_t(q: torch.Tensor, n: int, w: int, s: int = 1, d: int = 1, causal: bool = False):
    """Tensor version of :func:`key_range` for an int64 tensor of query coordinates.

    Written with ``torch.where`` only (no min/max/clamp): FlexAttention's FLASH backend
    (CuTe DSL) lowers a mask_mod built from it, and its lowering rejects ``maximum``."""
    r, qd = q % d, q // d
    # Positions with residue r, as a closed form (q < n, so r < n): no where/min/max, which
    # Inductor may turn into a bool cast that the CuTe DSL refuses to mix with int64.
    nd = (n - 1 - r) // d + 1
    if causal:
        leader = _min((qd // s) * s + s - 1, nd - 1)
        lo, hi = _max(leader - w + 1, torch.zeros_like(leader)), qd
    else:
        wl = w // 2
        wr = w // 2 + w % 2 - 1
        leader = _min((qd // s) * s + s // 2, nd - 1)
        center = _max(_min(leader, nd - 1 - wr), torch.full_like(leader, wl))
        lo, hi = center - wl, center + wr
    return lo * d + r, hi * d + r


def attend_1d_t(q: torch.Tensor, k: torch.Tensor, n: int, w: int, s: int = 1, d: int = 1,
                causal: bool = False) -> torch.Tensor:
    """Boolean ``[len(q), len(k)]`` mask of one dim: may query coordinate q see key coordinate k."""
    lo, hi = key_range_t(q, n, w, s, d, causal)
    k = k[None, :]
    ok = (k >= lo[:, None]) & (k <= hi[:, None])
    if d > 1:
        ok &= (k % d) == (q % d)[:, None]
    return ok


def dense_mask(spec, extra_prefix: int = 0, extra_suffix: int = 0, device=None) -> torch.Tensor:
    """Bool ``[N, N]`` (query, key) mask of a whole sequence, extra tokens included.

    O(N^2) memory: for small checks and demos only; kernels never build it.
    """
    S = spec.num_tokens
    coords = torch.stack(torch.meshgrid(*[torch.arange(n, device=device) for n in spec.shape],
                                        indexing="ij"), -1).view(S, spec.rank)
    grid = torch.ones(S, S, dtype=torch.bool, device=device)
    for i, (n, w, s, d, c) in enumerate(spec.dims()):
        axis = torch.arange(n, device=device)
        m = attend_1d_t(axis, axis, n, w, s, d, c)
        grid &= m[coords[:, i][:, None], coords[:, i][None, :]]
    N = extra_prefix + S + extra_suffix
    full = torch.ones(N, N, dtype=torch.bool, device=device)
    full[extra_prefix:extra_prefix + S, extra_prefix:extra_prefix + S] = grid
    return full
