"""Reference GNA backend: plain PyTorch, any device/dtype, memory-bounded. Ground truth.

Never builds an N x N mask: queries are processed one Q tile (a box of the grid) at a time
against the KV box that tile can see (per dim: smallest window start to largest window end)
plus every extra token, so peak memory is O(tile x box), which lets a 65k-token FLUX-4K
problem run on a GPU. Extra-token queries attend densely, in row chunks. Scores, softmax and
accumulation are fp32 for half inputs (fp64 stays fp64).
"""

from __future__ import annotations

import itertools
import math

import torch

from ..config import GNASpec
from ..mask import attend_1d_t, key_range

__all__ = ["reference_attention", "default_tile"]


def default_tile(shape, target: int = 256) -> tuple[int, ...]:
    """A roughly cubic query tile of about ``target`` tokens (smaller than the grid where needed)."""
    tile, budget = [], target
    for i, n in enumerate(shape):
        left = len(shape) - i
        t = max(1, min(n, round(budget ** (1.0 / left))))
        tile.append(t)
        budget = max(1, budget // t)
    return tuple(tile)


def _attend(q, k, v, allowed, scale, out_dtype):
    """Masked softmax attention on one block. ``allowed`` broadcasts to ``[..., Nq, Nk]``.

    NaN/inf behave as in dense SDPA for the keys a query attends: a NaN score or value there
    makes the row NaN. A key the query does not attend never reaches it, also when its value
    is NaN/inf (``0 * nan`` would): those values are multiplied out separately. A row with no
    attendable key returns 0, like SDPA's kernels. Without autograd the score block is
    reused in place (it is the largest tensor here: rows x keys)."""
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    inplace = not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))
    s = torch.matmul(q.to(cdt), k.to(cdt).transpose(-1, -2)).mul_(scale)
    s = s.masked_fill_(~allowed, float("-inf")) if inplace else s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # masked NaN scores are -inf by now
    empty = lse == float("-inf")
    shift = torch.where(empty, torch.zeros_like(lse), lse).unsqueeze(-1)
    p = s.sub_(shift).exp_() if inplace else torch.exp(s - shift)
    del s
    vv = v.to(cdt)
    if bool(torch.isfinite(v).all()):
        out = torch.matmul(p, vv)
    else:
        bad = ~torch.isfinite(vv).all(dim=-1)  # [..., Nk]: keys whose value holds a NaN/inf
        cols = bad.reshape(-1, bad.shape[-1]).any(0).nonzero().flatten()
        out = torch.matmul(p, vv.masked_fill(bad.unsqueeze(-1), 0.0))
        pb, vb = p.index_select(-1, cols), vv.index_select(-2, cols)
        ab = allowed.expand(*allowed.shape[:-1], p.shape[-1]).index_select(-1, cols)
        ab = ab & bad.index_select(-1, cols).unsqueeze(-2)  # only what the masked fill removed
        contrib = torch.where(ab.unsqueeze(-1), pb.unsqueeze(-1) * vb.unsqueeze(-3), 0.0)
        out = out + contrib.sum(-2)
    out = torch.where(empty.unsqueeze(-1), torch.zeros_like(out), out)
    return out.to(out_dtype), lse.to(torch.float32)


def reference_attention(q, k, v, spec: GNASpec, extra_prefix: int = 0, extra_suffix: int = 0,
                        scale: float | None = None, key_mask: torch.Tensor | None = None,
                        tile=None, row_chunk: int = 1024):
    """GNA attention in natural token order; returns ``(out [B,H,N,D], lse [B,H,N] fp32)``.

    q is ``[B, H, N, D]``, k/v ``[B, Hkv, N, D]`` with ``H % Hkv == 0`` (SDPA's GQA: query head
    h uses kv head ``h // (H // Hkv)``). ``key_mask`` is a bool ``[B, N]`` (True = may be
    attended) applied to every query. ``tile`` is the query tile shape (a grid box).
    """
    B, H, N, D = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    G = H // Hkv
    P, S = extra_prefix, spec.num_tokens
    scale = D ** -0.5 if scale is None else scale
    shape = spec.shape
    tile = default_tile(shape) if tile is None else tuple(tile)
    dev = q.device

    out = q.new_empty(B, H, N, Dv)
    lse = torch.empty(B, H, N, dtype=torch.float32, device=dev)
    qg = q.reshape(B, Hkv, G, N, D)
    og = out.view(B, Hkv, G, N, Dv)
    lg = lse.view(B, Hkv, G, N)
    kk, vv = k.unsqueeze(2), v.unsqueeze(2)  # [B, Hkv, 1, N, D]
    km = None if key_mask is None else key_mask.view(B, 1, 1, 1, N)

    def grid(t):
        return t[..., P:P + S, :].unflatten(-2, shape)

    # o_grid / l_grid must be views (they are written through); unflatten of a slice is one.
    q_grid, o_grid, k_grid, v_grid = grid(qg), grid(og), grid(kk), grid(vv)
    l_grid = lg[..., P:P + S].unflatten(-1, shape)
    m_grid = None if km is None else km[..., P:P + S].unflatten(-1, shape)
    has_extra = N > S
    if has_extra:
        k_ext = torch.cat([kk[..., :P, :], kk[..., P + S:, :]], dim=-2)
        v_ext = torch.cat([vv[..., :P, :], vv[..., P + S:, :]], dim=-2)
        m_ext = None if km is None else torch.cat([km[..., :P], km[..., P + S:]], dim=-1)

    ranges = [range(0, n, t) for n, t in zip(shape, tile)]
    for starts in itertools.product(*ranges):
        qcoords, box, masks = [], [], []
        for a, t, (n, w, s, d, c) in zip(starts, tile, spec.dims()):
            b = min(a + t, n)
            # Box bounds from host ints (no device sync); the mask itself on the device.
            ranges_1d = [key_range(x, n, w, s, d, c) for x in range(a, b)]
            lo, hi = min(r[0] for r in ranges_1d), max(r[1] for r in ranges_1d)
            qcoords.append(slice(a, b))
            box.append(slice(lo, hi + 1))
            masks.append(attend_1d_t(torch.arange(a, b, device=dev), torch.arange(lo, hi + 1, device=dev),
                                     n, w, s, d, c))
        # Product over dims: [q1..qk, k1..kk] -> [Qt, Kb].
        k_dims = len(masks)
        allowed = None
        for i, m in enumerate(masks):
            view = [1] * (2 * k_dims)
            view[i], view[k_dims + i] = m.shape
            m = m.view(view)
            allowed = m if allowed is None else allowed & m
        qt = math.prod(s.stop - s.start for s in qcoords)
        kb = math.prod(s.stop - s.start for s in box)
        allowed = allowed.reshape(qt, kb)
        sel_q = (Ellipsis, *qcoords, slice(None))
        sel_k = (Ellipsis, *box, slice(None))
        qt_ = q_grid[sel_q].reshape(B, Hkv, G, qt, D)
        kt = k_grid[sel_k].reshape(B, Hkv, 1, kb, D)
        vt = v_grid[sel_k].reshape(B, Hkv, 1, kb, Dv)
        allowed = allowed.view(1, 1, 1, qt, kb)
        if m_grid is not None:
            allowed = allowed & m_grid[(Ellipsis, *box)].reshape(B, 1, 1, 1, kb)
        if has_extra:
            kt, vt = torch.cat([kt, k_ext], dim=-2), torch.cat([vt, v_ext], dim=-2)
            ext_ok = torch.ones(1, 1, 1, 1, k_ext.shape[-2], dtype=torch.bool, device=dev)
            if m_grid is not None:
                ext_ok = ext_ok & m_ext
            allowed = torch.cat([allowed.expand(*allowed.shape[:3], qt, kb),
                                 ext_ok.expand(*ext_ok.shape[:3], qt, -1)], dim=-1)
        o, l_ = _attend(qt_, kt, vt, allowed, scale, out.dtype)
        o_grid[sel_q] = o.reshape(*o_grid[sel_q].shape)
        l_grid[(Ellipsis, *qcoords)] = l_.reshape(*l_grid[(Ellipsis, *qcoords)].shape)

    # Extra-token queries: dense over all keys.
    extra_rows = [r for r in (range(0, P), range(P + S, N)) if len(r)]
    all_ok = torch.ones(1, 1, 1, 1, N, dtype=torch.bool, device=dev) if km is None else km
    for rows in extra_rows:
        for a in range(rows.start, rows.stop, row_chunk):
            b = min(a + row_chunk, rows.stop)
            o, l_ = _attend(qg[..., a:b, :], kk, vv, all_ok, scale, out.dtype)
            og[..., a:b, :] = o
            lg[..., a:b] = l_
    return out, lse
