"""Permutation hoisting: permutes only at region boundaries, outputs equal to the unhoisted graph."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import gna_compile as gc

OPS = torch.ops.gna_compile


class Block(nn.Module):
    """A joint-attention DiT block: text first, RoPE on image tokens, AdaLN modulation."""

    def __init__(self, dim, heads, grid, text):
        super().__init__()
        self.heads, self.grid, self.text = heads, grid, text
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.txt_qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.mod = nn.Linear(dim, 2 * dim)

    def forward(self, img, txt, temb, cos, sin):
        B, N, C = img.shape
        shift, scale = self.mod(F.silu(temb))[:, None].chunk(2, dim=-1)
        h = self.norm(img) * (1 + scale) + shift
        q, k, v = self.qkv(h).view(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = q * cos + q.flip(-1) * sin          # RoPE-like: per-token tables [N, D]
        k = k * cos + k.flip(-1) * sin
        tq, tk, tv = self.txt_qkv(txt).view(B, self.text, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = (torch.cat([t, x], dim=2) for t, x in ((tq, q), (tk, k), (tv, v)))
        o = gc.gna_attention(q, k, v, self.grid, (3, 4), (1, 2), extra_prefix=self.text,
                             tiles=getattr(self, "tiles", None))
        o = o.transpose(1, 2).reshape(B, self.text + N, C)
        t_out, i_out = o.split([self.text, N], dim=1)
        img = img + self.proj(i_out)
        img = img + self.mlp(self.norm(img))
        return img, txt + t_out


class TinyDiT(nn.Module):
    def __init__(self, grid=(6, 8), dim=32, heads=2, text=3, depth=2):
        super().__init__()
        self.grid, self.text = grid, text
        self.patch = nn.Conv2d(4, dim, 2, 2)
        self.blocks = nn.ModuleList(Block(dim, heads, grid, text) for _ in range(depth))
        self.out = nn.Linear(dim, 16)

    def forward(self, x, txt, temb):
        B = x.shape[0]
        img = self.patch(x).flatten(2).transpose(1, 2)
        n = img.shape[1]
        pos = torch.arange(n, dtype=x.dtype, device=x.device)[:, None]
        freq = torch.arange(16 // 2 + 8, dtype=x.dtype, device=x.device)[None, :16] / 16
        cos, sin = torch.cos(pos * freq), torch.sin(pos * freq)
        for blk in self.blocks:
            img, txt = blk(img, txt, temb, cos, sin)
        out = self.out(img)
        h, w = self.grid
        return out.view(B, h, w, 2, 2, 4).permute(0, 5, 1, 3, 2, 4).reshape(B, 4, 2 * h, 2 * w), txt


def _compile(model, inputs, hoist):
    torch._dynamo.reset()
    be = gc.backend(gc.Policy(), inner="eager", hoist_permutations=hoist)
    with torch.no_grad():
        out = torch.compile(model, backend=be, fullgraph=True)(*inputs)
    return be, out


def _count(gm, name):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and getattr(n.target, "_opname", "") == name)


def test_hoisted_dit_matches_and_permutes_once_per_boundary():
    torch.manual_seed(0)
    model = TinyDiT(grid=(8, 8)).eval()  # the kernel's 8x8 tiles cover it without padding
    inputs = torch.randn(2, 4, 16, 16), torch.randn(2, 3, 32), torch.randn(2, 32)
    _, want = _compile(model, inputs, hoist=False)
    be, got = _compile(model, inputs, hoist=True)
    (res,) = be.hoist_results
    assert res.calls == 2 and res.regions == 1, str(res)
    gm = be.graphs[0]
    assert _count(gm, "gna_attention") == 0 and _count(gm, "gna_attention_tiled") == 2
    # Boundaries: image tokens after the patch embedding, the position ids the cos/sin tables
    # are computed from (once for both blocks), and one unpermute before the unpatchify: 3
    # instead of 4 per call (8).
    assert _count(gm, "permute_tokens") == 2, gm.code
    assert _count(gm, "unpermute_tokens") == 1, gm.code
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


class _PaddedTiles(TinyDiT):
    """The same model with a tiling written into the call that pads the 6x8 grid."""

    def __init__(self):
        super().__init__(grid=(6, 8))
        for blk in self.blocks:
            blk.tiles = ((4, 4), (4, 4))


def test_padding_tile_is_not_hoisted():
    torch.manual_seed(0)
    model = _PaddedTiles().eval()
    be, _ = _compile(model, (torch.randn(1, 4, 12, 16), torch.randn(1, 3, 32), torch.randn(1, 32)), hoist=True)
    (res,) = be.hoist_results
    assert res.calls == 0 and "pads grid" in str(res)
