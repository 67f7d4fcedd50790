"""A tiny MM-DiT-style video transformer, written the way real ones are.

Conv3d patch embedding flattened to tokens, 3-D rotary embeddings on the video tokens, text
tokens appended after the video tokens in one joint attention, and an optional boolean text
padding mask over all keys (``[B, 1, 1, N]``, True on every video token). Nothing in it
mentions GNA: it is what ``torch.compile(model, backend="gna")`` has to understand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TinyVideoDiT", "rope_3d"]


def rope_3d(t: int, h: int, w: int, head_dim: int, theta: float = 256.0):
    """cos/sin tables [t*h*w, head_dim] for 3-D RoPE (head_dim split across the three axes)."""
    dims = [head_dim - 2 * (head_dim // 3 // 2 * 2), head_dim // 3 // 2 * 2, head_dim // 3 // 2 * 2]
    grids = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    cos, sin = [], []
    for g, d in zip(grids, dims):
        freqs = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        ang = g.reshape(-1, 1).float() * freqs
        cos.append(ang.cos().repeat_interleave(2, dim=1))
        sin.append(ang.sin().repeat_interleave(2, dim=1))
    return torch.cat(cos, dim=1), torch.cat(sin, dim=1)


def _rotate(x):
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([-x2, x1], dim=-1).flatten(-2)


class JointAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.qkv_text = nn.Linear(dim, 3 * dim)
        self.norm_q, self.norm_k = nn.RMSNorm(dim // heads), nn.RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim)
        self.out_text = nn.Linear(dim, dim)

    def forward(self, x, text, cos, sin, mask=None):
        n_video = x.shape[1]
        qkv = torch.cat([self.qkv(x), self.qkv_text(text)], dim=1)
        q, k, v = qkv.unflatten(2, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.norm_q(q), self.norm_k(k)
        # RoPE on the video tokens only (they come first).
        qv, kv = q[:, :, :n_video], k[:, :, :n_video]
        q = torch.cat([qv * cos + _rotate(qv) * sin, q[:, :, n_video:]], dim=2)
        k = torch.cat([kv * cos + _rotate(kv) * sin, k[:, :, n_video:]], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        o = o.transpose(1, 2).flatten(2)
        return self.out(o[:, :n_video]), self.out_text(o[:, n_video:])


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm1_text = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = JointAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))

    def forward(self, x, text, cos, sin, mask=None):
        a, t = self.attn(self.norm1(x), self.norm1_text(text), cos, sin, mask)
        x, text = x + a, text + t
        return x + self.mlp(self.norm2(x)), text


class TinyVideoDiT(nn.Module):
    """``forward(video [B, C, T, H, W], text [B, L, text_dim], text_mask [B, L] bool | None)``."""

    def __init__(self, in_channels=4, dim=32, heads=2, depth=2, patch=(1, 2, 2), text_dim=16):
        super().__init__()
        self.patch, self.heads = patch, heads
        self.embed = nn.Conv3d(in_channels, dim, patch, patch)
        self.text_in = nn.Linear(text_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, in_channels * patch[0] * patch[1] * patch[2])

    def forward(self, video, text, text_mask=None):
        B, C, T, H, W = video.shape
        t, h, w = T // self.patch[0], H // self.patch[1], W // self.patch[2]
        x = self.embed(video).flatten(2).transpose(1, 2)          # [B, t*h*w, dim]
        text = self.text_in(text)
        cos, sin = rope_3d(t, h, w, x.shape[-1] // self.heads)
        cos, sin = cos.to(x.device, x.dtype), sin.to(x.device, x.dtype)
        mask = None
        if text_mask is not None:  # True on every video key, the text mask on text keys
            video_keys = torch.ones(B, x.shape[1], dtype=torch.bool, device=x.device)
            mask = torch.cat([video_keys, text_mask], dim=1)[:, None, None, :]
        for block in self.blocks:
            x, text = block(x, text, cos, sin, mask)
        x = self.proj_out(self.norm_out(x))                      # [B, t*h*w, C*p]
        pt, ph, pw = self.patch
        x = x.reshape(B, t, h, w, C, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(B, C, T, H, W)
