"""Fused token permutation in Triton: natural order <-> tiled order with padding, one pass.

Same layout as the torch reference :mod:`gna_compile.kernels.permute` (token dim -2,
``[prefix][padded tiled grid][suffix]``, padding rows zero). Each program copies BLOCK_R rows
of D contiguous elements: a row gather (permute) or scatter (unpermute) whose rows are whole
cache lines, so it runs at copy bandwidth. Works on any ``[..., N, D]`` with leading dims
folded into one (strided) batch dim.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["permute_tokens_triton", "unpermute_tokens_triton"]


@triton.jit
def _natural_row(r, P, NPG, n1, n2, NT1, NT2, TQ0: tl.constexpr, TQ1: tl.constexpr,
                 TQ2: tl.constexpr, BM: tl.constexpr):
    """Tiled row r (grid part, 0-based) -> (natural grid index, is real token)."""
    t = r // BM
    loc = r % BM
    c0 = (t // (NT1 * NT2)) * TQ0 + loc // (TQ1 * TQ2)
    c1 = ((t // NT2) % NT1) * TQ1 + (loc // TQ2) % TQ1
    c2 = (t % NT2) * TQ2 + loc % TQ2
    return (c0 * n1 + c1) * n2 + c2, (c1 < n1) & (c2 < n2) & (r < NPG)


@triton.jit
def _permute_kernel(X, Y, sxb, sxn, syb, syn, P, S, NG, NPG, n0, n1, n2, NT1, NT2, n_rows,
                    TQ0: tl.constexpr, TQ1: tl.constexpr, TQ2: tl.constexpr, BM: tl.constexpr,
                    D: tl.constexpr, BLOCK_R: tl.constexpr, INVERSE: tl.constexpr):
    """Forward: y[tiled row] = x[natural row] (zeros for padding). Inverse: y[natural] = x[tiled].
    Programs run over the rows of the tiled layout in both directions (padding rows skipped in
    the inverse)."""
    pid = tl.program_id(0)
    bb = tl.program_id(1).to(tl.int64)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, D)
    in_range = rows < n_rows
    g = rows - P
    is_grid = (g >= 0) & (g < NPG)
    nat_g, real = _natural_row(tl.where(is_grid, g, 0), P, NPG, n1, n2, NT1, NT2, TQ0, TQ1, TQ2, BM)
    real = real & (nat_g < NG)
    nat = tl.where(is_grid, P + nat_g, tl.where(g < 0, rows, rows - NPG + NG))
    valid = in_range & (real | ~is_grid)
    if INVERSE:
        x = tl.load(X + bb * sxb + rows[:, None] * sxn + cols[None, :], mask=valid[:, None])
        tl.store(Y + bb * syb + nat[:, None] * syn + cols[None, :], x, mask=valid[:, None])
    else:
        x = tl.load(X + bb * sxb + nat[:, None] * sxn + cols[None, :], mask=valid[:, None], other=0.0)
        tl.store(Y + bb * syb + rows[:, None] * syn + cols[None, :], x, mask=in_range[:, None])


def _geometry(shape, tile):
    shape3 = (1,) * (3 - len(shape)) + tuple(shape)
    tile3 = (1,) * (3 - len(tile)) + tuple(tile)
    pshape = tuple(-(-n // t) * t for n, t in zip(shape3, tile3))
    nt = [p // t for p, t in zip(pshape, tile3)]
    return shape3, tile3, pshape, nt


def supports(x: torch.Tensor) -> bool:
    """The kernel moves rows of a power-of-two width >= 16 (anything else: torch fallback)."""
    D = x.shape[-1]
    return x.is_cuda and x.dim() >= 2 and D >= 16 and not D & (D - 1)


def _launch(x, y, shape, tile, P, S, inverse):
    shape3, tile3, pshape, nt = _geometry(shape, tile)
    D = x.shape[-1]
    if D & (D - 1) or D < 16:
        raise ValueError(f"last dim {D} must be a power of 2 >= 16 for the Triton permutation")
    NG, NPG = math.prod(shape3), math.prod(pshape)
    src = x.reshape(-1, x.shape[-2], D) if x.dim() != 3 else x
    dst = y.view(-1, y.shape[-2], D)
    if src.stride(-1) != 1:
        src = src.contiguous()
    n_rows = P + NPG + S
    BLOCK_R = max(16, min(64, 8192 // D))
    grid = (triton.cdiv(n_rows, BLOCK_R), src.shape[0])
    _permute_kernel[grid](src, dst, src.stride(0), src.stride(1), dst.stride(0), dst.stride(1),
                          P, S, NG, NPG, *shape3, nt[1], nt[2], n_rows,
                          TQ0=tile3[0], TQ1=tile3[1], TQ2=tile3[2], BM=math.prod(tile3), D=D,
                          BLOCK_R=BLOCK_R, INVERSE=inverse, num_warps=4)
    return y


def _run(x, shape, tile, extra_prefix, extra_suffix, inverse):
    shape3, _, pshape, _ = _geometry(shape, tile)
    n_in, n_out = (math.prod(pshape), math.prod(shape3)) if inverse else (math.prod(shape3), math.prod(pshape))
    N = x.shape[-2]
    if N != extra_prefix + n_in + extra_suffix:
        raise ValueError(f"token dim has {N} tokens, expected {extra_prefix} + {n_in} + {extra_suffix}")
    y = torch.empty(*x.shape[:-2], extra_prefix + n_out + extra_suffix, x.shape[-1],
                    dtype=x.dtype, device=x.device)
    return _launch(x, y, shape, tile, extra_prefix, extra_suffix, inverse)


def permute_tokens_triton(x: torch.Tensor, shape, tile, extra_prefix: int = 0, extra_suffix: int = 0):
    """Triton version of :func:`gna_compile.kernels.permute.permute_tokens` (same output)."""
    return _run(x, shape, tile, extra_prefix, extra_suffix, inverse=False)


def unpermute_tokens_triton(x: torch.Tensor, shape, tile, extra_prefix: int = 0, extra_suffix: int = 0):
    """Triton version of :func:`gna_compile.kernels.permute.unpermute_tokens` (drops padding)."""
    return _run(x, shape, tile, extra_prefix, extra_suffix, inverse=True)
