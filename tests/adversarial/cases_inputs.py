"""Graph inputs as token sources: a graph input's dims prove nothing by themselves; only a
patchified channels-first image/video input (Cosmos-style view + permute that gathers the
within-patch offsets into the features) or ``Policy(layout=...)`` does."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gna_compile import GNA, Policy

from blocks import DIM, Block, img, tokens, video
from harness import DENSE, Case, Truth

H, W = 4, 6                      # patch grid of an 8x12 image (2x2 patches)


class FromInput(nn.Module):
    """``embed(self, *inputs) -> [B, N, C]`` tokens, then one transformer block."""

    def __init__(self, embed, cin=3 * 4):
        super().__init__()
        self.embed = embed
        self.proj = nn.Identity() if cin is None else nn.Linear(cin, DIM)
        self.txt = nn.Linear(8, DIM)
        self.block = Block()

    def forward(self, *xs):
        return self.block(self.embed(self, *xs))


def _case(name, embed, inputs, truths, cin=3 * 4, policy=None):
    return Case(f"inp_{name}", "inputs", lambda: FromInput(embed, cin), inputs, truths, policy=policy)


def im(g, b=1, c=3):
    return img(g, b=b, h=2 * H, w=2 * W, c=c)


def cosmos2d(x, p=2, channels_last_feat=False, w_major=False):
    B, C, Hh, Ww = x.shape
    x = x.view(B, C, Hh // p, p, Ww // p, p)
    if w_major:
        x = x.permute(0, 4, 2, 1, 3, 5)                 # tokens (W/p, H/p)
    elif channels_last_feat:
        x = x.permute(0, 2, 4, 3, 5, 1)                 # features (ph, pw, C)
    else:
        x = x.permute(0, 2, 4, 1, 3, 5)                 # features (C, ph, pw)
    return x.flatten(3).flatten(1, 2)


def cosmos3d(x, pt=1, p=2):
    B, C, T, Hh, Ww = x.shape
    x = x.view(B, C, T // pt, pt, Hh // p, p, Ww // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.flatten(4).flatten(1, 3)


GP = Policy(layout=(H, W), default=GNA(2))
G2 = Truth(grid=(H, W), rewrite=True)

CASES = [
    # opaque token inputs
    _case("tokens", lambda m, t: t, lambda g: (tokens(g, n=H * W),), [DENSE], cin=None),
    _case("tokens_b2", lambda m, t: t, lambda g: (tokens(g, b=2, n=H * W),), [DENSE], cin=None),
    # [B, F, h*w, C]: a rank-4 input whose dims 2, 3 would count as "image" dims
    _case("frame_tokens", lambda m, t: t.flatten(1, 2), lambda g: (torch.randn(1, 2, 8, DIM, generator=g),),
          [DENSE], cin=None),
    # [1, 16, 16, C] (channels-last looking) viewed as 256 tokens
    _case("nhwc_tokens_256", lambda m, t: t.view(1, 256, DIM), lambda g: (torch.randn(1, 16, 16, DIM, generator=g),),
          [DENSE], cin=None),
    _case("nhwc_tokens_b2", lambda m, t: t.flatten(1, 2), lambda g: (torch.randn(2, H, W, DIM, generator=g),),
          [DENSE], cin=None),
    # a plain NCHW input flattened to tokens, no patch embedding (and with a per-pixel Linear)
    _case("nchw_flatten", lambda m, x: x.flatten(2).transpose(1, 2), lambda g: (im(g, c=DIM)[..., :H, :W],),
          [DENSE], cin=None),
    _case("nchw_pixel_linear", lambda m, x: m.proj(x.flatten(2).transpose(1, 2)),
          lambda g: (torch.randn(1, 3, H, W, generator=g),), [DENSE], cin=3),
    _case("nchw_permute_pixels", lambda m, x: m.proj(x.permute(0, 2, 3, 1).flatten(1, 2)),
          lambda g: (torch.randn(1, 3, H, W, generator=g),), [DENSE], cin=3),
    # a strided subsample of the input is no patch embedding either
    _case("nchw_strided_pixels", lambda m, x: m.proj(x[:, :, ::2, ::2].flatten(2).transpose(1, 2)),
          lambda g: (im(g),), [DENSE], cin=3),
    # Cosmos / FLUX-pack style patchify inside the model: the outer pieces are the grid
    _case("cosmos_2d", lambda m, x: m.proj(cosmos2d(x)), lambda g: (im(g),), [G2]),
    _case("cosmos_2d_b2", lambda m, x: m.proj(cosmos2d(x)), lambda g: (im(g, b=2),), [G2]),
    _case("cosmos_2d_channels_last_features", lambda m, x: m.proj(cosmos2d(x, channels_last_feat=True)),
          lambda g: (im(g),), [G2]),
    _case("cosmos_2d_w_major", lambda m, x: m.proj(cosmos2d(x, w_major=True)), lambda g: (im(g),),
          [Truth(grid=(W, H), rewrite=True)]),
    _case("flux_pack", lambda m, x: m.proj(x.view(x.shape[0], 3, H, 2, W, 2).permute(0, 2, 4, 1, 3, 5)
                                            .reshape(x.shape[0], H * W, 12)), lambda g: (im(g),), [G2]),
    _case("cosmos_3d", lambda m, v: m.proj(cosmos3d(v)), lambda g: (video(g, t=2, h=2 * H, w=2 * W, c=3),),
          [Truth(grid=(2, H, W), rewrite=True)]),
    _case("cosmos_3d_temporal_patch", lambda m, v: m.proj(cosmos3d(v, pt=2)),
          lambda g: (video(g, t=4, h=2 * H, w=2 * W, c=3),), [Truth(grid=(2, H, W), rewrite=True)], cin=3 * 8),
    # split-and-restore: (H/2, 2, W/2, 2) fuse back to (H, W): pixels with no patch embedding
    _case("split_restore_pixels", lambda m, x: m.proj(x.view(1, 3, H, 2, W, 2).permute(0, 2, 3, 4, 5, 1)
                                                       .reshape(1, 4 * H * W, 3)),
          lambda g: (im(g),), [DENSE], cin=3),
    # inner pieces as separate token axes: tokens (H/2, W/2, 2, 2) or (2, 2, H/2, W/2)
    _case("inner_tokens_last", lambda m, x: m.proj(x.view(1, 3, H, 2, W, 2).permute(0, 2, 4, 3, 5, 1)
                                                    .reshape(1, 4 * H * W, 3)),
          lambda g: (im(g),), [DENSE], cin=3),
    _case("inner_tokens_first", lambda m, x: m.proj(x.view(1, 3, H, 2, W, 2).permute(0, 3, 5, 2, 4, 1)
                                                     .reshape(1, 4 * H * W, 3)),
          lambda g: (im(g),), [DENSE], cin=3),
    # half a patchify: 1x2 patches (the column offsets go into the features, the rows stay
    # whole): a true (2H, W) grid
    _case("half_patchify", lambda m, x: m.proj(x.view(1, 3, 2 * H, W, 2).permute(0, 2, 3, 1, 4)
                                                .reshape(1, 2 * H * W, 6)),
          lambda g: (im(g),), [Truth(grid=(2 * H, W), rewrite=True)], cin=6),
    # tokens = rows of patches (strips): a true 1-D grid of H strips
    _case("row_strips", lambda m, x: m.proj(x.view(1, 3, H, 2, 2 * W).permute(0, 2, 1, 3, 4).reshape(1, H, -1)),
          lambda g: (im(g),), [Truth(grid=(H,))], cin=3 * 2 * 2 * W),
    # patches pooled (the offsets are summed away, no feature dim gathers them): a true grid
    # of pooled pixels, which the compiler need not prove
    _case("pooled_patches", lambda m, x: m.proj(x.view(1, 3, H, 2, W, 2).sum((3, 5)).flatten(2).transpose(1, 2)),
          lambda g: (im(g),), [Truth(grid=(H, W))], cin=3),
    # channels-last image input [B, 2H, 2W, C] patchified: the H pieces come from dim 1 of the
    # input (not a channels-first spatial dim): a true grid the compiler may refuse
    _case("nhwc_patchify", lambda m, x: m.proj(x.view(1, H, 2, W, 2, 3).permute(0, 1, 3, 2, 4, 5)
                                                .reshape(1, H * W, 12)),
          lambda g: (torch.randn(1, 2 * H, 2 * W, 3, generator=g),), [Truth(grid=(H, W))]),
    # a token merger on per-frame features [B, F, N=16, C] from an upstream 4x4 encoder:
    # adjacent token pairs are merged into the features. The input is rank 4, so dims 2, 3
    # look like channels-first image dims and the merge looks like a 1-D patchify; but the 16
    # tokens are an opaque (here: 4x4 row-major) sequence: the merged tokens are truly a
    # (4, 2) grid, never the 1-D grid (8,)
    _case("token_pair_merge", lambda m, t: m.proj(t.reshape(2, 8, 2 * DIM)),
          lambda g: (torch.randn(1, 2, 16, DIM, generator=g),), [Truth(grid=(4, 2))], cin=2 * DIM),
    # packed latents [B, N, C] (packed before the model): only Policy(layout=...) explains them
    _case("packed_no_policy", lambda m, t: m.proj(t), lambda g: (tokens(g, n=H * W, c=12),), [DENSE]),
    _case("packed_policy", lambda m, t: m.proj(t), lambda g: (tokens(g, n=H * W, c=12),), [G2], policy=GP),
    _case("packed_policy_b2", lambda m, t: m.proj(t), lambda g: (tokens(g, b=2, n=H * W, c=12),), [G2], policy=GP),
    _case("packed_policy_text_prefix", lambda m, t, s: torch.cat([m.txt(s), m.proj(t)], 1),
          lambda g: (tokens(g, n=H * W, c=12), tokens(g, n=5, c=8)), [Truth((H, W), 5, 0, rewrite=True)], policy=GP),
    _case("packed_policy_text_suffix", lambda m, t, s: torch.cat([m.proj(t), m.txt(s)], 1),
          lambda g: (tokens(g, n=H * W, c=12), tokens(g, n=3, c=8)), [Truth((H, W), 0, 3, rewrite=True)], policy=GP),
    # FLUX Kontext-like: two packed latents of the same size in one sequence: ambiguous
    _case("packed_policy_two_segments", lambda m, t, u: torch.cat([m.proj(t), m.proj(u)], 1),
          lambda g: (tokens(g, n=H * W, c=12), tokens(g, n=H * W, c=12)), [DENSE], policy=GP),
    _case("packed_policy_two_segments_text", lambda m, t, u, s: torch.cat([m.txt(s), m.proj(t), m.proj(u)], 1),
          lambda g: (tokens(g, n=H * W, c=12), tokens(g, n=H * W, c=12), tokens(g, n=4, c=8)), [DENSE], policy=GP),
    # a layout function: 5 text tokens fit no grid, so the latents are the one match ...
    _case("packed_policy_fn", lambda m, t, s: torch.cat([m.txt(s), m.proj(t)], 1),
          lambda g: (tokens(g, n=H * W, c=12), tokens(g, n=5, c=8)), [Truth((H, W), 5, 0, rewrite=True)],
          policy=Policy(layout=lambda n: (4, n // 4) if n % 4 == 0 and n >= 8 else None, default=GNA(2))),
    # ... but 8 text tokens fit one too ((4, 2)): two matches, ambiguous, dense
    _case("packed_policy_fn_ambiguous", lambda m, t, s: torch.cat([m.txt(s), m.proj(t)], 1),
          lambda g: (tokens(g, n=H * W, c=12), tokens(g, n=8, c=8)), [DENSE],
          policy=Policy(layout=lambda n: (4, n // 4) if n % 4 == 0 and n >= 8 else None, default=GNA(2))),
    # a layout of the wrong size matches nothing: the packed latents stay dense
    _case("packed_policy_wrong_size", lambda m, t: m.proj(t), lambda g: (tokens(g, n=H * W, c=12),),
          [Truth(grid=(H, W))], policy=Policy(layout=(4, 4), default=GNA(2))),
    # a graph-proven grid wins over the policy's layout (which is only for unexplained tokens)
    _case("policy_vs_patchify", lambda m, x: m.proj(cosmos2d(x)), lambda g: (im(g),), [G2],
          policy=Policy(layout=(W, H), default=GNA(2))),
]


# im2col patch embedding (F.unfold + Linear): a true (4, 6) grid the compiler need not prove
CASES.append(_case("unfold_patchify", lambda m, x: m.proj(F.unfold(x, 2, stride=2).transpose(1, 2)),
                   lambda g: (im(g),), [Truth(grid=(H, W))]))
