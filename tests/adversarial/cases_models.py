"""Small whole models: ViT with cls / registers, MM-DiT joint attention, several
resolutions and scales in one forward, cross-attention to text, block loops, adaLN
modulation, alternating spatial / temporal video blocks, a manual-softmax attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blocks import DIM, Attn, Block, Patch2d, Patch3d, heads, img, merge, tokens, video
from harness import DENSE, Case, Truth

G = Truth(grid=(4, 4), rewrite=True)


class ViT(nn.Module):
    def __init__(self, cls=True, regs=0, depth=2, regs_first=False):
        super().__init__()
        self.patch = Patch2d()
        self.cls = nn.Parameter(torch.randn(1, 1, DIM)) if cls else None
        self.regs = nn.Parameter(torch.randn(1, regs, DIM)) if regs else None
        self.regs_first = regs_first
        self.pos = nn.Parameter(torch.randn(1, 16, DIM))
        self.blocks = nn.ModuleList([Block() for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(DIM), nn.Linear(DIM, 10)

    def forward(self, x):
        t = self.patch(x) + self.pos
        B = t.shape[0]
        pre, post = [], []
        if self.cls is not None:
            pre.append(self.cls.expand(B, -1, -1))
        if self.regs is not None:
            (pre if self.regs_first else post).append(self.regs.expand(B, -1, -1))
        t = torch.cat(pre + [t] + post, 1)
        for b in self.blocks:
            t = b(t)
        return self.head(self.norm(t)[:, 0])


class JointAttn(nn.Module):
    """SD3 / FLUX MM-DiT joint attention: separate projections per stream, one SDPA."""

    def __init__(self, text_first=True):
        super().__init__()
        self.qkv_x, self.qkv_c = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, 3 * DIM)
        self.out_x, self.out_c = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)
        self.text_first = text_first

    def forward(self, x, c):
        qx, kx, vx = (heads(z) for z in self.qkv_x(x).chunk(3, -1))
        qc, kc, vc = (heads(z) for z in self.qkv_c(c).chunk(3, -1))
        order = (lambda a, b: (b, a)) if self.text_first else (lambda a, b: (a, b))
        q, k, v = (torch.cat(order(a, b), 2) for a, b in ((qx, qc), (kx, kc), (vx, vc)))
        o = merge(F.scaled_dot_product_attention(q, k, v))
        n = c.shape[1]
        oc, ox = (o[:, :n], o[:, n:]) if self.text_first else (o[:, -n:], o[:, :-n])
        return x + self.out_x(ox), c + self.out_c(oc)


class MMDiT(nn.Module):
    def __init__(self, text_first=True, depth=2):
        super().__init__()
        self.patch, self.txt = Patch2d(), nn.Linear(8, DIM)
        self.blocks = nn.ModuleList([JointAttn(text_first) for _ in range(depth)])

    def forward(self, x, text):
        x, c = self.patch(x), self.txt(text)
        for b in self.blocks:
            x, c = b(x, c)
        return x, c


class TwoResolutions(nn.Module):
    """Two images of different sizes through one patch embedding and one block each."""

    def __init__(self):
        super().__init__()
        self.patch, self.b1, self.b2 = Patch2d(), Block(), Block()

    def forward(self, a, b):
        return self.b1(self.patch(a)).mean(1) + self.b2(self.patch(b)).mean(1)


class UNetish(nn.Module):
    """Conv stem, attention at 4x4, downsample conv, attention at 2x2, upsample, attention."""

    def __init__(self, up="conv_transpose"):
        super().__init__()
        self.stem = nn.Conv2d(3, DIM, 2, 2)
        self.down = nn.Conv2d(DIM, DIM, 2, 2)
        self.up = nn.ConvTranspose2d(DIM, DIM, 2, 2) if up == "conv_transpose" else nn.Conv2d(DIM, DIM, 3, 1, 1)
        self.kind = up
        self.a1, self.a2, self.a3 = Block(), Block(), Block()

    @staticmethod
    def attend(block, f):
        B, C, Hh, Ww = f.shape
        t = block(f.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(B, C, Hh, Ww)

    def forward(self, x):
        f1 = self.attend(self.a1, self.stem(x))                 # 4x4
        f2 = self.attend(self.a2, self.down(f1))                # 2x2
        if self.kind == "conv_transpose":
            u = self.up(f2)
        else:
            u = self.up(F.interpolate(f2, scale_factor=2.0))
        return self.attend(self.a3, u + f1)                     # 4x4 again (skip connection)


class CrossAttnDiT(nn.Module):
    """PixArt-like: self-attention on the grid, cross-attention from the grid to text."""

    def __init__(self, text_keys="text"):
        super().__init__()
        self.patch, self.txt = Patch2d(), nn.Linear(8, DIM)
        self.self_attn = Block()
        self.q, self.kv, self.out = nn.Linear(DIM, DIM), nn.Linear(DIM, 2 * DIM), nn.Linear(DIM, DIM)
        self.text_keys = text_keys

    def forward(self, x, text):
        t = self.self_attn(self.patch(x))
        c = self.txt(text)
        if self.text_keys == "text_plus_grid":       # keys: text followed by the grid tokens
            c = torch.cat([c, t], 1)
        k, v = (heads(z) for z in self.kv(c).chunk(2, -1))
        o = F.scaled_dot_product_attention(heads(self.q(t)), k, v)
        return t + self.out(merge(o))


class Loop(nn.Module):
    def __init__(self, n=3, shared=False):
        super().__init__()
        self.patch = Patch2d()
        blk = Block()
        self.blocks = nn.ModuleList([blk] * n if shared else [Block() for _ in range(n)])

    def forward(self, x):
        t = self.patch(x)
        for b in self.blocks:
            t = b(t)
        return t


class AdaLN(nn.Module):
    """DiT block with adaLN-zero modulation from a timestep embedding ([B, 1, C] broadcast)."""

    def __init__(self):
        super().__init__()
        self.patch = Patch2d()
        self.t_emb = nn.Sequential(nn.Linear(1, DIM), nn.SiLU(), nn.Linear(DIM, 6 * DIM))
        self.n1 = nn.LayerNorm(DIM, elementwise_affine=False)
        self.n2 = nn.LayerNorm(DIM, elementwise_affine=False)
        self.attn = Attn()
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, x, t):
        h = self.patch(x)
        s1, b1, g1, s2, b2, g2 = self.t_emb(t[:, None, None]).chunk(6, -1)
        h = h + g1 * self.attn(self.n1(h) * (1 + s1) + b1)
        return h + g2 * self.mlp(self.n2(h) * (1 + s2) + b2)


class Latte(nn.Module):
    """Alternating spatial ([B*T, HW, C]) and temporal ([B*HW, T, C]) blocks on a conv3d grid."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(4, DIM, (1, 2, 2), (1, 2, 2))
        self.spatial, self.temporal = Block(), Block()

    def forward(self, v):
        f = self.conv(v)                                         # [B, C, T, H, W]
        B, C, T, Hh, Ww = f.shape
        s = f.permute(0, 2, 3, 4, 1).reshape(B * T, Hh * Ww, C)
        s = self.spatial(s)
        tt = s.view(B, T, Hh * Ww, C).transpose(1, 2).reshape(B * Hh * Ww, T, C)
        return self.temporal(tt)


class ManualAttention(nn.Module):
    """softmax(q k^T) v by hand: no SDPA call at all."""

    def __init__(self):
        super().__init__()
        self.patch, self.qkv = Patch2d(), nn.Linear(DIM, 3 * DIM)

    def forward(self, x):
        q, k, v = (heads(z) for z in self.qkv(self.patch(x)).chunk(3, -1))
        a = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1)
        return merge(a @ v)


class PosEmbedInterp(nn.Module):
    """A learned 2x2 positional table interpolated to the grid and added (a leaf table)."""

    def __init__(self):
        super().__init__()
        self.patch, self.block = Patch2d(), Block()
        self.pos = nn.Parameter(torch.randn(1, DIM, 2, 2))

    def forward(self, x):
        f = self.patch.conv(x)
        pos = F.interpolate(self.pos, size=f.shape[-2:], mode="bilinear")
        return self.block((f + pos).flatten(2).transpose(1, 2))


class GraphBreakBetween(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch, self.b1, self.b2 = Patch2d(), Block(), Block()

    def forward(self, x):
        t = self.b1(self.patch(x))
        torch._dynamo.graph_break()
        return self.b2(t)


def vit_case(name, truths, **kw):
    return Case(f"model_{name}", "models", lambda: ViT(**kw), lambda g: (img(g, b=2),), truths)


T = 3                                   # text tokens
txt = lambda g, b=1: tokens(g, b=b, n=T, c=8)    # noqa: E731

CASES = [
    vit_case("vit_cls", [Truth((4, 4), 1, 0, rewrite=True)] * 2),
    vit_case("vit_registers_suffix", [Truth((4, 4), 0, 4, rewrite=True)] * 2, cls=False, regs=4),
    vit_case("vit_cls_registers", [Truth((4, 4), 1, 4, rewrite=True)] * 2, regs=4),
    vit_case("vit_cls_registers_first", [Truth((4, 4), 5, 0, rewrite=True)] * 2, regs=4, regs_first=True),
    vit_case("vit_no_cls_depth3", [G] * 3, cls=False, depth=3),
    Case("model_mmdit_text_first", "models", lambda: MMDiT(True), lambda g: (img(g), txt(g)),
         [Truth((4, 4), T, 0, rewrite=True)] * 2),
    Case("model_mmdit_text_last", "models", lambda: MMDiT(False), lambda g: (img(g, b=2), txt(g, 2)),
         [Truth((4, 4), 0, T, rewrite=True)] * 2),
    Case("model_two_resolutions", "models", TwoResolutions, lambda g: (img(g), img(g, h=8, w=12)),
         [G, Truth(grid=(4, 6), rewrite=True)]),
    Case("model_unet_two_scales", "models", UNetish, lambda g: (img(g),),
         [G, Truth(grid=(2, 2), rewrite=True), G]),
    # upsampled by interpolate + conv: the last attention is a conv output again
    Case("model_unet_interp_up", "models", lambda: UNetish("interp"), lambda g: (img(g),),
         [G, Truth(grid=(2, 2), rewrite=True), G]),
    # cross-attention from image queries to text keys: keys are not the query tokens
    Case("model_cross_attn_text", "models", CrossAttnDiT, lambda g: (img(g), txt(g)), [G, DENSE]),
    # ... and to keys [text, grid tokens]: the keys contain the query tokens, but not AS the
    # queries' sequence (the queries have no text): still no self-attention layout
    Case("model_cross_attn_text_plus_grid", "models", lambda: CrossAttnDiT("text_plus_grid"),
         lambda g: (img(g), txt(g)), [G, DENSE]),
    Case("model_block_loop", "models", Loop, lambda g: (img(g),), [G] * 3),
    Case("model_block_loop_shared", "models", lambda: Loop(3, shared=True), lambda g: (img(g, b=2),), [G] * 3),
    Case("model_adaln", "models", AdaLN, lambda g: (img(g, b=2), torch.rand(2, generator=g)), [G]),
    Case("model_latte", "models", Latte, lambda g: (video(g, t=2),),
         [G, Truth(grid=(2,), rewrite=True)]),
    Case("model_manual_attention", "models", ManualAttention, lambda g: (img(g),), []),
    Case("model_pos_embed_interp", "models", PosEmbedInterp, lambda g: (img(g),), [G]),
    # after the break, the second graph starts from its input tokens: a grid nothing proves
    Case("model_graph_break_between", "models", GraphBreakBetween, lambda g: (img(g),), [G, Truth(grid=(4, 4))]),
    Case("model_video_dit_text", "models", lambda: _VideoDiT(), lambda g: (video(g), txt(g)),
         [Truth((2, 4, 4), T, 0, rewrite=True)] * 2),
]


class _VideoDiT(nn.Module):
    """Conv3d patches with text prepended (CogVideoX 1.5 / Mochi-like), two blocks."""

    def __init__(self):
        super().__init__()
        self.patch, self.txt = Patch3d(), nn.Linear(8, DIM)
        self.b1, self.b2 = Block(), Block()

    def forward(self, v, text):
        t = torch.cat([self.txt(text), self.patch(v)], 1)
        return self.b2(self.b1(t))[:, T:]


class Mixer(nn.Module):
    """An MLP-Mixer token-mixing layer (a [N, N] matmul along the tokens) before attention:
    token j of its output mixes every token with learned weights: no grid."""

    def __init__(self):
        super().__init__()
        self.patch, self.block = Patch2d(), Block()
        self.mix = nn.Linear(16, 16)

    def forward(self, x):
        t = self.patch(x)
        return self.block(self.mix(t.transpose(1, 2)).transpose(1, 2))


class ManualThenSDPA(nn.Module):
    """A hand-written attention (softmax(q k^T) v keeps the query order), then an SDPA block."""

    def __init__(self):
        super().__init__()
        self.manual, self.block = ManualAttention(), Block()

    def forward(self, x):
        return self.block(self.manual(x))


CASES += [
    Case("model_mixer_token_mlp", "models", Mixer, lambda g: (img(g),), [DENSE]),
    Case("model_manual_then_sdpa", "models", ManualThenSDPA, lambda g: (img(g),), [G]),
]
