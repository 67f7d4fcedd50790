"""Token permutation (DESIGN.md §2), reference implementation in plain PyTorch.

The token dim is dim -2, so the same code serves ``[B, H, N, D]`` attention tensors and
``[B, N, C]`` hidden states. A sequence is ``[prefix extras][grid][suffix extras]``; the grid
part is padded per dim up to a multiple of the tile and reordered so each tile box is
contiguous (tile grid row-major, row-major inside a tile). Extra tokens stay outside the grid,
in place. Padding rows are zeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["padded_shape", "permute_tokens", "unpermute_tokens", "permutation_index"]


def padded_shape(shape, tile) -> tuple[int, ...]:
    """Grid shape rounded up per dim to a multiple of the tile."""
    if len(shape) != len(tile):
        raise ValueError(f"tile={tuple(tile)} must have one extent per grid dim (shape={tuple(shape)})")
    if any(t < 1 for t in tile):
        raise ValueError(f"tile={tuple(tile)}: every tile extent must be >= 1")
    return tuple(-(-n // t) * t for n, t in zip(shape, tile))


def _split(x: torch.Tensor, n_grid: int, extra_prefix: int, extra_suffix: int):
    n = x.shape[-2]
    if n != extra_prefix + n_grid + extra_suffix:
        raise ValueError(
            f"token dim (dim -2) has {n} tokens but extra_prefix + prod(shape) + extra_suffix = "
            f"{extra_prefix} + {n_grid} + {extra_suffix} = {extra_prefix + n_grid + extra_suffix}")
    return x.split([extra_prefix, n_grid, extra_suffix], dim=-2)


def permute_tokens(x: torch.Tensor, shape, tile, extra_prefix: int = 0, extra_suffix: int = 0):
    """Natural row-major token order -> tiled order with per-dim padding (extras untouched)."""
    shape, tile = tuple(shape), tuple(tile)
    pshape = padded_shape(shape, tile)
    pre, grid, post = _split(x, math.prod(shape), extra_prefix, extra_suffix)
    lead, c, k = grid.shape[:-2], grid.shape[-1], len(shape)
    g = grid.reshape(*lead, *shape, c)
    pad = []
    for n, p in zip(reversed(shape), reversed(pshape)):
        pad += [0, p - n]
    if any(pad):
        g = F.pad(g, [0, 0] + pad)
    nl = len(lead)
    split = [e for p, t in zip(pshape, tile) for e in (p // t, t)]
    g = g.reshape(*lead, *split, c)
    order = list(range(nl)) + [nl + 2 * i for i in range(k)] + [nl + 2 * i + 1 for i in range(k)] + [nl + 2 * k]
    g = g.permute(order).reshape(*lead, math.prod(pshape), c)
    return torch.cat([pre, g, post], dim=-2) if (extra_prefix or extra_suffix) else g.contiguous()


def unpermute_tokens(x: torch.Tensor, shape, tile, extra_prefix: int = 0, extra_suffix: int = 0):
    """Inverse of :func:`permute_tokens`: drops the padding rows."""
    shape, tile = tuple(shape), tuple(tile)
    pshape = padded_shape(shape, tile)
    pre, g, post = _split(x, math.prod(pshape), extra_prefix, extra_suffix)
    lead, c, k = g.shape[:-2], g.shape[-1], len(shape)
    nl = len(lead)
    g = g.reshape(*lead, *[p // t for p, t in zip(pshape, tile)], *tile, c)
    order = list(range(nl)) + [e for i in range(k) for e in (nl + i, nl + k + i)] + [nl + 2 * k]
    g = g.permute(order).reshape(*lead, *pshape, c)
    g = g[(Ellipsis, *[slice(0, n) for n in shape], slice(None))]
    g = g.reshape(*lead, math.prod(shape), c)
    return torch.cat([pre, g, post], dim=-2) if (extra_prefix or extra_suffix) else g.contiguous()


def permutation_index(shape, tile) -> torch.Tensor:
    """int64 ``[prod(padded_shape)]``: natural grid index at each tiled position, -1 for padding."""
    idx = torch.arange(math.prod(shape), dtype=torch.float64).view(1, -1, 1) + 1
    return (permute_tokens(idx, shape, tile).view(-1) - 1).to(torch.int64)
