"""Video frames: a per-frame 2-D patch embedding (the frame axis is a factor of the conv's
batch dim), conv3d patch embeddings, and the ways a "frame" axis can be something else (two
videos, two samples of a batch)."""

from __future__ import annotations

import torch
from torch import nn

from blocks import DIM, Block, tokens
from harness import DENSE, Case, Truth

F_, H, W = 2, 4, 6                # frames, and the conv grid of 8x12 frames


def frames(g, b=1, f=F_, c=3):
    """[B, F, C, 2H, 2W] (CogVideoX layout)"""
    return torch.randn(b, f, c, 2 * H, 2 * W, generator=g)


def cfhw(g, b=1, f=F_, c=3):
    """[B, C, F, 2H, 2W] (Allegro / diffusers video layout)"""
    return torch.randn(b, c, f, 2 * H, 2 * W, generator=g)


class Video(nn.Module):
    """``embed(self, *inputs) -> list of token tensors``, one block each."""

    def __init__(self, embed, n=1):
        super().__init__()
        self.embed = embed
        self.conv = nn.Conv2d(3, DIM, 2, 2)
        self.conv3 = nn.Conv3d(3, DIM, (1, 2, 2), (1, 2, 2))
        self.conv3t = nn.Conv3d(3, DIM, (2, 2, 2), (2, 2, 2))
        self.txt = nn.Linear(8, DIM)
        self.blocks = nn.ModuleList([Block() for _ in range(n)])

    def forward(self, *xs):
        return [b(t) for b, t in zip(self.blocks, self.embed(self, *xs))]


def cog(m, x):
    """CogVideoX 1.0 patch embedding: [B, F, C, H, W] -> [B, F*H'*W', C']."""
    B, Fr, C, Hh, Ww = x.shape
    f = m.conv(x.reshape(-1, C, Hh, Ww))
    f = f.view(B, Fr, *f.shape[1:])
    return f.flatten(3).transpose(2, 3).flatten(1, 2)


def allegro(m, x):
    """[B, C, F, H, W] -> per-frame conv2d -> [B, F*H'*W', C']."""
    B, C, Fr = x.shape[:3]
    f = m.conv(x.permute(0, 2, 1, 3, 4).flatten(0, 1))
    f = f.unflatten(0, (B, Fr)).permute(0, 2, 1, 3, 4)     # [B, C', F, H', W']
    return f.flatten(2).transpose(1, 2)


def _case(name, embed, inputs, truths):
    return Case(f"frames_{name}", "frames", lambda: Video(embed, len(truths)), inputs, truths)


V = Truth(grid=(F_, H, W), rewrite=True)

CASES = [
    _case("cogvideo_v1", lambda m, x: [cog(m, x)], lambda g: (frames(g),), [V]),
    _case("cogvideo_v1_b2", lambda m, x: [cog(m, x)], lambda g: (frames(g, b=2),), [V]),
    _case("cogvideo_v1_f3", lambda m, x: [cog(m, x)], lambda g: (frames(g, f=3),),
          [Truth(grid=(3, H, W), rewrite=True)]),
    _case("cogvideo_v1_text_prefix", lambda m, x, s: [torch.cat([m.txt(s), cog(m, x)], 1)],
          lambda g: (frames(g), tokens(g, n=5, c=8)), [Truth((F_, H, W), 5, 0, rewrite=True)]),
    _case("cogvideo_v1_text_suffix", lambda m, x, s: [torch.cat([cog(m, x), m.txt(s)], 1)],
          lambda g: (frames(g, b=2), tokens(g, b=2, n=3, c=8)), [Truth((F_, H, W), 0, 3, rewrite=True)]),
    _case("allegro", lambda m, x: [allegro(m, x)], lambda g: (cfhw(g),), [V]),
    _case("allegro_b2", lambda m, x: [allegro(m, x)], lambda g: (cfhw(g, b=2),), [V]),
    # frames stacked F-major ([F, B] in the conv batch): the frame axis is still a factor of it
    _case("frame_major_stack", lambda m, x: [m.conv(x.transpose(0, 1).reshape(-1, 3, 2 * H, 2 * W))
                                             .view(F_, x.shape[0], DIM, H, W).permute(1, 0, 3, 4, 2)
                                             .reshape(x.shape[0], -1, DIM)],
          lambda g: (frames(g, b=2),), [V]),
    # per-frame conv, tokens in (H', W', F) order: a true grid the compiler may or may not prove
    _case("tokens_hwf", lambda m, x: [m.conv(x.reshape(-1, 3, 2 * H, 2 * W)).view(x.shape[0], F_, DIM, H, W)
                                      .permute(0, 3, 4, 1, 2).reshape(x.shape[0], -1, DIM)],
          lambda g: (frames(g),), [Truth(grid=(H, W, F_))]),
    # spatial attention per frame ([B*F, H'W', C]) and temporal attention ([B*H'W', F, C])
    _case("spatial_per_frame", lambda m, x: [m.conv(x.reshape(-1, 3, 2 * H, 2 * W)).flatten(2).transpose(1, 2)],
          lambda g: (frames(g),), [Truth(grid=(H, W), rewrite=True)]),
    _case("temporal_per_pixel", lambda m, x: [m.conv(x.reshape(-1, 3, 2 * H, 2 * W)).view(x.shape[0], 4, DIM, H * W)
                                              .permute(0, 3, 1, 2).reshape(-1, 4, DIM)],
          lambda g: (frames(g, f=4),), [Truth(grid=(4,))]),
    # two different videos' frames concatenated along the batch, then treated as one video of
    # 2F frames: two separate grids glued along the frame axis
    _case("two_videos_stacked", lambda m, a, b: [m.conv(torch.cat([a[0], b[0]], 0)).view(1, 2 * F_, DIM, H, W)
                                                 .flatten(3).transpose(2, 3).flatten(1, 2)],
          lambda g: (frames(g), frames(g)), [DENSE]),
    # a conditioning first frame and the rest of the same video concatenated along the
    # frames, then embedded per frame: a true (F, H', W') video whose frame axis is a
    # concatenation (the compiler may refuse it)
    _case("first_frame_plus_rest", lambda m, c, x: [cog(m, torch.cat([c, x], 1))],
          lambda g: (frames(g, f=1), frames(g, f=2)), [Truth(grid=(3, H, W))]),
    # a batch of two independent images embedded by one conv, then flattened into ONE
    # sequence (the batch dim becomes the outer token axis). The "frames" rule sees a factor
    # of the conv's batch dim beside its spatial axes, but these are two samples, not frames
    # of a video: two separate grids in one sequence
    _case("batch_as_frames", lambda m, x: [m.conv(x).permute(0, 2, 3, 1).reshape(1, -1, DIM)],
          lambda g: (torch.randn(2, 3, 2 * H, 2 * W, generator=g),), [DENSE]),
    # the channels of one 6-channel image split into two 3-channel groups folded into the
    # batch, embedded by one conv, and the group axis put in front of the spatial axes: the
    # group axis is a factor of the conv's batch dim too, but it indexes channel groups of one
    # image, not frames: two grids (one per group) in one sequence
    _case("channel_groups_as_frames", lambda m, x: [m.conv(x.view(-1, 3, 2 * H, 2 * W)).view(x.shape[0], 2, DIM, H, W)
                                                    .permute(0, 1, 3, 4, 2).reshape(x.shape[0], -1, DIM)],
          lambda g: (torch.randn(1, 6, 2 * H, 2 * W, generator=g),), [DENSE]),
    # the same when the images come as [B, F, C, H, W] and F is the true frame axis, but the
    # batch B is ALSO folded into the sequence: (B, F, H', W') is 4 axes, no grid
    _case("batch_and_frames_in_tokens", lambda m, x: [cog(m, x).reshape(1, -1, DIM)],
          lambda g: (frames(g, b=2),), [DENSE]),
    # conv3d patch embeddings
    _case("conv3d", lambda m, v: [m.conv3(v).flatten(2).transpose(1, 2)], lambda g: (cfhw(g),), [V]),
    _case("conv3d_b2_f3", lambda m, v: [m.conv3(v).flatten(2).transpose(1, 2)], lambda g: (cfhw(g, b=2, f=3),),
          [Truth(grid=(3, H, W), rewrite=True)]),
    _case("conv3d_temporal_patch", lambda m, v: [m.conv3t(v).flatten(2).transpose(1, 2)], lambda g: (cfhw(g, f=4),),
          [V]),
    _case("conv3d_twh", lambda m, v: [m.conv3(v).permute(0, 2, 4, 3, 1).flatten(1, 3)], lambda g: (cfhw(g),),
          [Truth(grid=(F_, W, H), rewrite=True)]),
    _case("conv3d_text_prefix", lambda m, v, s: [torch.cat([m.txt(s), m.conv3(v).flatten(2).transpose(1, 2)], 1)],
          lambda g: (cfhw(g), tokens(g, n=4, c=8)), [Truth((F_, H, W), 4, 0, rewrite=True)]),
    # frames 1.. of a conv3d video (a slice of the T axis): a true (2, H, W) grid, but a
    # slice proves nothing
    _case("conv3d_drop_first_frame", lambda m, v: [m.conv3(v)[:, :, 1:].flatten(2).transpose(1, 2)],
          lambda g: (cfhw(g, f=3),), [Truth(grid=(2, H, W))]),
]
