"""Test oracle: GNA as a dense N x N mask, written straight from DESIGN.md §1.

Deliberately independent of ``gna_compile.mask`` (per-pair Python, no shared helpers), so a
bug in the library's semantics cannot hide in both places.
"""

from __future__ import annotations

import itertools
import math

import torch


def attends_1d(q: int, k: int, n: int, w: int, s: int, d: int, causal: bool) -> bool:
    if q % d != k % d:
        return False
    r = q % d
    qq, kk = q // d, k // d
    nn = n // d + (1 if r < n % d else 0)
    if causal:
        leader = min((qq // s) * s + s - 1, nn - 1)
        return kk <= qq and leader - kk < w
    leader = min((qq // s) * s + s // 2, nn - 1)
    wl, wr = w // 2, w // 2 + (w % 2) - 1
    center = min(max(leader, wl), nn - 1 - wr)
    return center - wl <= kk <= center + wr


def dense_mask(shape, window, stride, dilation, causal, extra_prefix=0, extra_suffix=0):
    """Bool ``[N, N]`` (query, key) mask including extra tokens."""
    coords = list(itertools.product(*[range(n) for n in shape]))
    per_dim = []
    for i, n in enumerate(shape):
        m = torch.tensor([[attends_1d(a, b, n, window[i], stride[i], dilation[i], causal[i])
                           for b in range(n)] for a in range(n)])
        per_dim.append(m)
    S = math.prod(shape)
    idx = torch.tensor(coords).view(S, len(shape))
    grid = torch.ones(S, S, dtype=torch.bool)
    for i, m in enumerate(per_dim):
        grid &= m[idx[:, i][:, None], idx[:, i][None, :]]
    P = extra_prefix
    N = P + S + extra_suffix
    full = torch.ones(N, N, dtype=torch.bool)
    full[P:P + S, P:P + S] = grid
    return full


def dense_attention(q, k, v, mask, scale=None, key_mask=None):
    """Masked softmax attention in fp64 with GQA; fully masked rows give 0 (and lse -inf)."""
    B, H, N, D = q.shape
    G = H // k.shape[1]
    k = k.repeat_interleave(G, dim=1).double()
    v = v.repeat_interleave(G, dim=1).double()
    scale = D ** -0.5 if scale is None else scale
    s = q.double() @ k.transpose(-1, -2) * scale
    allowed = mask.view(1, 1, N, N)
    if key_mask is not None:
        allowed = allowed & key_mask.view(B, 1, 1, N)
    s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.nan_to_num(neginf=0.0).unsqueeze(-1))
    out = (p @ v).masked_fill(~torch.isfinite(lse).unsqueeze(-1), 0.0)
    return out, lse
