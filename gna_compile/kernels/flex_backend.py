"""Backend "flex" (not auto): FlexAttention with a block mask built from the same GNA
definition (gna_compile.mask) in the same tiled token order. The benchmark's competitor.

Tokens are permuted with the Q tile the simulator picks for the Triton kernel (128 tokens,
FlexAttention's block size), so both kernels see the same tile boxes. mask_mod maps each
permuted index back to grid coordinates and applies ``key_range_t`` per dim; extra tokens are
dense (queries) / always visible (keys); padding keys are masked; the key mask is applied.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..mask import key_range_t
from .dispatch import register_backend
from .permute import permute_tokens, unpermute_tokens

__all__ = ["why_not", "run", "gna_mask_mod", "gna_block_mask"]

try:
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
    _ERR = None
except ImportError as e:  # pragma: no cover
    _ERR = f"FlexAttention unavailable ({e})"


def gna_mask_mod(spec, q_tile, extra_prefix, extra_suffix, key_mask=None):
    """mask_mod(b, h, q_idx, kv_idx) over the permuted layout ``[prefix][tiled grid][suffix]``.
    ``key_mask``: None or a bool [B, Ntot] in the permuted layout (padding False)."""
    shape = tuple(spec.shape)
    tile = tuple(q_tile)
    pshape = tuple(-(-n // t) * t for n, t in zip(shape, tile))
    ntiles = [p // t for p, t in zip(pshape, tile)]
    BM = math.prod(tile)
    P, NPG = extra_prefix, math.prod(pshape)
    dims = spec.dims()

    def coords(g):
        t, loc = g // BM, g % BM
        out = []
        for i in range(len(shape)):
            after_t = math.prod(ntiles[i + 1:])
            after_l = math.prod(tile[i + 1:])
            out.append(((t // after_t) % ntiles[i]) * tile[i] + (loc // after_l) % tile[i])
        return out

    def mask_mod(b, h, q_idx, kv_idx):
        gq, gk = q_idx - P, kv_idx - P
        q_grid = (gq >= 0) & (gq < NPG)
        k_grid = (gk >= 0) & (gk < NPG)
        # No clamp/min/max (the FLASH backend's CuTe DSL lowering rejects them): torch.where.
        qc = coords(torch.where(q_grid, gq, 0))
        kc = coords(torch.where(k_grid, gk, 0))
        k_real = k_grid
        ok = q_grid
        for (n, w, s, d, c), a, kk in zip(dims, qc, kc):
            k_real = k_real & (kk < n)
            lo, hi = key_range_t(torch.where(a < n, a, n - 1), n, w, s, d, c)
            ok = ok & (kk >= lo) & (kk <= hi)
            if d > 1:
                ok = ok & ((kk % d) == (a % d))
        # grid query: GNA keys + every extra key; extra query: every real key.
        allowed = (ok & k_real) | (q_grid & ~k_grid) | (~q_grid & (k_real | ~k_grid))
        if key_mask is not None:
            allowed = allowed & key_mask[b, kv_idx]
        return allowed

    return mask_mod


BLOCK = 128  # FlexAttention's block: one Q tile of 128 tokens in the tiled order


def _tile_classes(spec, q_tile):
    """Per dim, which (query tile, key tile) pairs have some / all of their pairs attended, from
    the 1-D rule on the padded axis (padding keys never attended; a padding query is taken as
    the last real one: with dilation the mask_mod's residue test may leave it nothing, which
    changes no block's class, since its tile holds the last real query and a dilated tile is
    never full). The GNA mask is a product over dims and tiles are
    boxes, so a block is visited iff it is in every dim, and full iff full in every dim."""
    from ..mask import attend_1d_t
    some, every = [], []
    for (n, w, s, d, c), t in zip(spec.dims(), q_tile):
        nt = -(-n // t)
        q = torch.arange(nt * t).clamp(max=n - 1)
        ok = attend_1d_t(q, torch.arange(nt * t), n, w, s, d, c) & (torch.arange(nt * t) < n)[None, :]
        ok = ok.view(nt, t, nt, t)
        some.append(ok.any(3).any(1))
        every.append(ok.all(3).all(1))
    return some, every


def _outer_and(mats):
    """[nq_0, nk_0], [nq_1, nk_1], ... -> [prod nq, prod nk] (row-major tile order)."""
    out = mats[0]
    for m in mats[1:]:
        a, b = out.shape
        out = (out[:, None, :, None] & m[None, :, None, :]).reshape(a * m.shape[0], b * m.shape[1])
    return out


def block_classes(spec, q_tile, extra_prefix, extra_suffix):
    """``(visited, full)`` bool ``[n_blocks, n_blocks]`` of 128-token blocks of the tiled
    layout, built per tile (O(blocks^2), never O(tokens^2): a torch.where mask_mod over the
    115k tokens of HunyuanVideo ran out of memory in create_block_mask). Extra-token blocks:
    grid queries see them fully; extra queries see every real key (tiles with padding keys are
    partial). Needs 128-token Q tiles and extra counts that are multiples of 128."""
    if math.prod(q_tile) != BLOCK or extra_prefix % BLOCK or extra_suffix % BLOCK:
        raise ValueError(f"block-level mask needs a {BLOCK}-token q_tile (got {tuple(q_tile)}) and extra "
                         f"tokens in whole blocks (got {extra_prefix}, {extra_suffix})")
    some, every = _tile_classes(spec, q_tile)
    g_vis, g_full = _outer_and(some), _outer_and(every)
    # key tiles with no padding token (extra queries see every real key)
    nopad = _outer_and([torch.tensor([[(i + 1) * t <= n for i in range(-(-n // t))]])
                        for n, t in zip(spec.shape, q_tile)])[0]
    p, s, g = extra_prefix // BLOCK, extra_suffix // BLOCK, g_vis.shape[0]
    nb = p + g + s
    vis = torch.ones(nb, nb, dtype=torch.bool)
    full = torch.ones(nb, nb, dtype=torch.bool)
    grid = slice(p, p + g)
    vis[grid, grid], full[grid, grid] = g_vis, g_full
    full[:p, grid] = nopad
    full[p + g:, grid] = nopad
    return vis, full


def _as_kv_blocks(sel):
    """(num [1, 1, nq], indices [1, 1, nq, nk]) of a bool block matrix, selected blocks first."""
    num = sel.sum(-1, dtype=torch.int32)
    idx = torch.argsort(sel.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return num[None, None].contiguous(), idx[None, None].contiguous()


@lru_cache(maxsize=16)
def _block_mask_cached(spec, q_tile, P, S, n_tot, device):
    mm = gna_mask_mod(spec, q_tile, P, S)
    try:
        vis, full = block_classes(spec, q_tile, P, S)
    except ValueError:  # blocks not aligned with tiles/extras: let flex evaluate the mask_mod
        return create_block_mask(mm, None, None, n_tot, n_tot, device=device, BLOCK_SIZE=BLOCK, _compile=True)
    if vis.shape[0] * BLOCK != n_tot:
        raise ValueError(f"{n_tot} tokens are not the {vis.shape[0]} blocks of the tiled layout")
    kn, ki = _as_kv_blocks(vis & ~full)
    fn, fi = _as_kv_blocks(full)
    return BlockMask.from_kv_blocks(kn.to(device), ki.to(device), fn.to(device), fi.to(device),
                                    BLOCK_SIZE=BLOCK, mask_mod=mm, seq_lengths=(n_tot, n_tot))


def gna_block_mask(spec, q_tile, extra_prefix, extra_suffix, n_tot, device, key_mask=None, batch=None):
    """Block mask of the GNA pattern (cached when there is no key mask)."""
    if key_mask is None:
        return _block_mask_cached(spec, tuple(q_tile), extra_prefix, extra_suffix, n_tot, str(device))
    mm = gna_mask_mod(spec, q_tile, extra_prefix, extra_suffix, key_mask)
    return create_block_mask(mm, batch, None, n_tot, n_tot, device=device, BLOCK_SIZE=BLOCK, _compile=True)


_COMPILED = None


def _flex():
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED


def why_not(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles=None):
    if _ERR is not None:
        return _ERR
    if not q.is_cuda:
        return "the flex backend is for CUDA (benchmark competitor)"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"dtype {q.dtype}"
    return None


def q_tile_for(spec, extra_prefix=0, extra_suffix=0, tiles=None):
    """Same tile order as the Triton kernel where its Q tile has 128 tokens (flex's block)."""
    from .tile_choice import choose_tiles
    try:
        qt = tuple(tiles[0]) if tiles is not None else choose_tiles(spec, extra_prefix, extra_suffix)[0]
        if math.prod(qt) == 128:
            return qt
    except ValueError:
        pass
    from ..sim import default_tile
    return tuple(default_tile(spec.shape))


def run_permuted(qp, kp, vp, spec, q_tile, extra_prefix, extra_suffix, scale, key_mask=None,
                 kernel_options=None):
    """Flex attention on permuted tensors; ``key_mask`` bool [B, Ntot] permuted (or None).
    ``kernel_options``: FlexAttention's, e.g. ``{"BACKEND": "FLASH"}`` (FlashAttention-4)."""
    n_tot = qp.shape[-2]
    bm = gna_block_mask(spec, q_tile, extra_prefix, extra_suffix, n_tot, qp.device, key_mask, qp.shape[0])
    out, lse = _flex()(qp, kp, vp, block_mask=bm, scale=scale, enable_gqa=qp.shape[1] != kp.shape[1],
                       return_lse=True, kernel_options=kernel_options)
    return out, lse


def run(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles=None):
    P, S = extra_prefix, extra_suffix
    q_tile = q_tile_for(spec, P, S, tiles)
    perm = [permute_tokens(t, spec.shape, q_tile, P, S) for t in (q, k, v)]
    kmp = None
    if key_mask is not None:
        kmp = permute_tokens(key_mask.mask.to(q.dtype)[..., None], spec.shape, q_tile, P, S)[..., 0] > 0
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out, lse = run_permuted(*perm, spec, q_tile, P, S, scale, kmp)
    out = unpermute_tokens(out, spec.shape, q_tile, P, S).contiguous()
    lse = unpermute_tokens(lse[..., None], spec.shape, q_tile, P, S)[..., 0].float().contiguous()
    return out, lse


register_backend("flex", run, why_not, auto=False)
