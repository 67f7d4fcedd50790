"""Building blocks of the adversarial models: tiny patch embeddings and attention layers.

Everything is small (dim 16, 2 heads, grids of 4x4 to 2x4x4) so that a case compiles in
about a second on the CPU. Each block calls ``F.scaled_dot_product_attention`` the way real
models do; nothing here knows about GNA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIM, HEADS = 16, 2


def heads(x, h=HEADS):
    """[B, N, C] -> [B, h, N, C/h]"""
    B, N, C = x.shape
    return x.view(B, N, h, C // h).transpose(1, 2)


def merge(o):
    """[B, h, N, d] -> [B, N, h*d]"""
    B, h, N, d = o.shape
    return o.transpose(1, 2).reshape(B, N, h * d)


class Attn(nn.Module):
    """Self-attention over [B, N, C] tokens (qkv projection, SDPA, output projection)."""

    def __init__(self, dim=DIM, h=HEADS, **sdpa):
        super().__init__()
        self.h, self.sdpa = h, sdpa
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
        q, k, v = (heads(z, self.h) for z in self.qkv(x).chunk(3, dim=-1))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **self.sdpa)
        return self.out(merge(o))


class Block(nn.Module):
    """Pre-norm transformer block: attention and MLP with residuals."""

    def __init__(self, dim=DIM, h=HEADS, **sdpa):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attn(dim, h, **sdpa)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, mask=None):
        x = x + self.attn(self.n1(x), mask)
        return x + self.mlp(self.n2(x))


class Patch2d(nn.Module):
    """Conv2d patch embedding: [B, 3, 2H, 2W] -> [B, H*W, C] (H-major tokens)."""

    def __init__(self, dim=DIM, cin=3):
        super().__init__()
        self.conv = nn.Conv2d(cin, dim, 2, 2)

    def forward(self, img):
        return self.conv(img).flatten(2).transpose(1, 2)


class Patch3d(nn.Module):
    """Conv3d patch embedding: [B, 4, T, 2H, 2W] -> [B, T*H*W, C]."""

    def __init__(self, dim=DIM, cin=4):
        super().__init__()
        self.conv = nn.Conv3d(cin, dim, (1, 2, 2), (1, 2, 2))

    def forward(self, video):
        return self.conv(video).flatten(2).transpose(1, 2)


def img(gen, b=1, h=8, w=8, c=3):
    return torch.randn(b, c, h, w, generator=gen)


def video(gen, b=1, t=2, h=8, w=8, c=4):
    return torch.randn(b, c, t, h, w, generator=gen)


def tokens(gen, b=1, n=16, c=DIM):
    return torch.randn(b, n, c, generator=gen)
