"""Reshapes of convolution outputs: views that split an axis and restore it keep the grid;
pieces reordered or moved into the tokens as separate axes do not; 1-D grids (conv1d, axial
attention), strided / transposed convolutions, pooling and resampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blocks import DIM, Block, img, video
from harness import DENSE, Case, Truth

H, W = 4, 6                                     # conv grid of an 8x12 image


class Tokens(nn.Module):
    """``make(self, x) -> list of [B', N, C] token tensors``, one transformer block each."""

    def __init__(self, make, n=1):
        super().__init__()
        self.make = make
        self.conv = nn.Conv2d(3, DIM, 2, 2)
        self.conv1 = nn.Conv1d(3, DIM, 2, 2)
        self.conv_s1 = nn.Conv2d(3, DIM, 3, 1, 1)
        self.conv_s2 = nn.Conv2d(DIM, DIM, 3, 2, 1)
        self.up = nn.ConvTranspose2d(DIM, DIM, 2, 2)
        self.conv3 = nn.Conv3d(3, DIM, (1, 2, 2), (1, 2, 2))
        self.shuffle = nn.Conv2d(3, 4 * DIM, 4, 4)
        self.param = nn.Parameter(torch.randn(1, DIM, 2, 2, W))
        self.lin = nn.Linear(4 * DIM, DIM)
        self.blocks = nn.ModuleList([Block() for _ in range(n)])

    def forward(self, x):
        return [b(t) for b, t in zip(self.blocks, self.make(self, x))]


def tok(f):
    """[B, C, *S] -> [B, prod(S), C]"""
    return f.flatten(2).transpose(1, 2)


def _case(name, make, truths, inputs=None):
    inputs = inputs or (lambda g: (img(g, h=2 * H, w=2 * W),))
    return Case(f"reshape_{name}", "reshape", lambda: Tokens(make, len(truths)), inputs, truths)


def sig(g, b=1):
    return (torch.randn(b, 3, 32, generator=g),)


def swin_windows(f, wh, ww):
    """[B, C, H, W] -> [B * nW, wh*ww, C]: tokens are positions inside each window."""
    B, C, Hh, Ww = f.shape
    return f.view(B, C, Hh // wh, wh, Ww // ww, ww).permute(0, 2, 4, 3, 5, 1).reshape(-1, wh * ww, C)


CASES = [
    # conv1d output [B, C, L=16]: a 1-D grid
    _case("conv1d", lambda m, x: [tok(m.conv1(x))], [Truth(grid=(16,), rewrite=True)], sig),
    _case("conv1d_b2", lambda m, x: [tok(m.conv1(x))], [Truth(grid=(16,), rewrite=True)], lambda g: sig(g, 2)),
    # ... viewed as (4, 4) and flattened back: still the 1-D grid (16,)
    _case("conv1d_view_back", lambda m, x: [tok(m.conv1(x).view(-1, DIM, 4, 4))], [Truth(grid=(16,), rewrite=True)],
          sig),
    # ... viewed as (4, 4) and the pieces transposed: no longer the 1-D order
    _case("conv1d_view_transposed", lambda m, x: [tok(m.conv1(x).view(-1, DIM, 4, 4).transpose(2, 3))], [DENSE], sig),
    # a conv2d output viewed as (B, C, 2, 2, W), modulated by a parameter of that shape, then
    # flattened: the split H axis is restored
    _case("split_modulate_restore", lambda m, x: [tok(m.conv(x).view(-1, DIM, 2, 2, W) * m.param)],
          [Truth(grid=(H, W), rewrite=True)]),
    # ... the two pieces swapped before the flatten: rows in the order 0, 2, 1, 3
    _case("split_pieces_swapped", lambda m, x: [tok(m.conv(x).view(-1, DIM, 2, 2, W).transpose(2, 3))], [DENSE]),
    # ... the inner piece moved behind W: tokens (H/2, W, 2): no grid (inner piece in the tokens)
    _case("split_inner_last", lambda m, x: [tok(m.conv(x).view(-1, DIM, 2, 2, W).permute(0, 1, 2, 4, 3))], [DENSE]),
    # ... the inner piece moved into the batch: tokens (H/2, W) = every other row, 2 such
    # grids in the batch: a strided subgrid of rows, a true (2, 6) grid of the rows kept
    # (dilated), but the inner piece stays: refusing is the sound answer; (2, 6) would be a
    # sound claim too
    _case("split_inner_to_batch", lambda m, x: [m.conv(x).view(-1, DIM, 2, 2, W).permute(0, 3, 2, 4, 1)
                                                .reshape(-1, 2 * W, DIM)], [Truth(grid=(2, W))]),
    # the outer piece moved into the batch: tokens (2, W) = rows 2i and 2i+1 of chunk i: a
    # true (2, W) grid (contiguous rows)
    _case("split_outer_to_batch", lambda m, x: [m.conv(x).view(-1, DIM, 2, 2, W).permute(0, 2, 3, 4, 1)
                                                .reshape(-1, 2 * W, DIM)], [Truth(grid=(2, W))]),
    # axial attention along W: [B, C, H, W] -> [B*H, W, C], and along H: [B*W, H, C]
    _case("axial_w", lambda m, x: [m.conv(x).permute(0, 2, 3, 1).reshape(-1, W, DIM)],
          [Truth(grid=(W,), rewrite=True)]),
    _case("axial_h", lambda m, x: [m.conv(x).permute(0, 3, 2, 1).reshape(-1, H, DIM)],
          [Truth(grid=(H,), rewrite=True)]),
    _case("axial_both", lambda m, x: [m.conv(x).permute(0, 2, 3, 1).reshape(-1, W, DIM),
                                      m.conv(x).permute(0, 3, 2, 1).reshape(-1, H, DIM)],
          [Truth(grid=(W,), rewrite=True), Truth(grid=(H,), rewrite=True)]),
    _case("axial_w_b2", lambda m, x: [m.conv(x).permute(0, 2, 3, 1).reshape(-1, W, DIM)],
          [Truth(grid=(W,), rewrite=True)], lambda g: (img(g, b=2, h=2 * H, w=2 * W),)),
    # axial along T of a video ([B, C, T, H, W] -> [B*H*W, T, C]) and spatial per frame
    _case("video_temporal", lambda m, v: [m.conv3(v).permute(0, 3, 4, 2, 1).reshape(-1, 2, DIM)],
          [Truth(grid=(2,), rewrite=True)], lambda g: (video(g, t=2, h=2 * H, w=2 * W, c=3),)),
    _case("video_spatial", lambda m, v: [m.conv3(v).permute(0, 2, 3, 4, 1).reshape(-1, H * W, DIM)],
          [Truth(grid=(H, W), rewrite=True)], lambda g: (video(g, t=2, h=2 * H, w=2 * W, c=3),)),
    # Swin window partition: the tokens are positions inside a window (inner pieces). Inside
    # one window they are a true (2, 3) grid, which is sound to claim but nothing requires;
    # the whole map (4, 6) is wrong
    _case("swin_windows", lambda m, x: [swin_windows(m.conv(x), 2, 3)], [Truth(grid=(2, 3))]),
    # windows kept in the token dim: tokens (window index, position in window): no grid
    _case("swin_windows_in_tokens", lambda m, x: [swin_windows(m.conv(x), 2, 3).reshape(x.shape[0], H * W, DIM)],
          [DENSE]),
    # shifted windows (roll before the partition): positions of unknown origin
    _case("swin_shifted", lambda m, x: [swin_windows(torch.roll(m.conv(x), (1, 1), (2, 3)), 2, 3)], [DENSE]),
    # a stride-1 conv, then a stride-2 conv: the downsampled map is the grid
    _case("stride2_after_conv", lambda m, x: [tok(m.conv_s2(m.conv_s1(x)))], [Truth(grid=(H, W), rewrite=True)]),
    # a transposed conv upsampling a 2x3 map to 4x6
    _case("transposed_conv", lambda m, x: [tok(m.up(F.avg_pool2d(m.conv(x), 2)))], [Truth(grid=(H, W), rewrite=True)]),
    # avg-pool between the conv and the tokens: a true (pooled) grid the compiler may refuse
    _case("avg_pool", lambda m, x: [tok(F.avg_pool2d(m.conv(x), 2))], [Truth(grid=(2, 3))]),
    _case("max_pool", lambda m, x: [tok(F.max_pool2d(m.conv(x), 2))], [Truth(grid=(2, 3))]),
    # ... a dilated sampling: inner pieces of both axes into the batch, tokens = a (2, 3)
    # grid of every other row and column (a true, coarser grid)
    _case("dilated_subgrids", lambda m, x: [m.conv(x).view(-1, DIM, 2, 2, 3, 2).permute(0, 3, 5, 2, 4, 1)
                                            .reshape(-1, 6, DIM)], [Truth(grid=(2, 3))]),
    # nearest / bilinear upsampling of a conv output: a true grid. (The spatial pass has a
    # "resample" rule for upsample ops, but the decomposition table turns F.interpolate into
    # index arithmetic first, so it is not required here)
    _case("upsample_nearest", lambda m, x: [tok(F.interpolate(F.avg_pool2d(m.conv(x), 2), scale_factor=2.0))],
          [Truth(grid=(H, W))]),
    _case("upsample_bilinear", lambda m, x: [tok(F.interpolate(m.conv(x), size=(6, 8), mode="bilinear"))],
          [Truth(grid=(6, 8))]),
    # pixel_unshuffle of a conv output: tokens = the coarse (2, 3) map, offsets in the channels
    _case("pixel_unshuffle", lambda m, x: [m.lin(tok(F.pixel_unshuffle(m.conv(x), 2)))], [Truth(grid=(2, 3))]),
    # pixel_shuffle: the fine positions come partly from the channel dim: a true (4, 6) grid,
    # which no source axis explains (channel pieces are no spatial axis)
    _case("pixel_shuffle", lambda m, x: [tok(F.pixel_shuffle(m.shuffle(x), 2))], [Truth(grid=(H, W))]),
    # padding the map before the tokens (a padded conv output is still a grid, of 6x8, but
    # the pad creates new positions)
    _case("pad_map", lambda m, x: [tok(F.pad(m.conv(x), (1, 1, 1, 1)))], [Truth(grid=(6, 8))]),
    # a crop of the map (cuts both axes): a true (2, 4) grid, no proof
    _case("crop_map", lambda m, x: [tok(m.conv(x)[:, :, 1:3, 1:5])], [Truth(grid=(2, 4))]),
    # the map flattened W-major through reshape of a permuted (non-contiguous) tensor
    _case("w_major_reshape", lambda m, x: [m.conv(x).permute(0, 3, 2, 1).reshape(x.shape[0], -1, DIM)],
          [Truth(grid=(W, H), rewrite=True)]),
    # tokens via unflatten / flatten round trips of the token dim
    _case("token_unflatten_roundtrip", lambda m, x: [tok(m.conv(x)).unflatten(1, (H, W)).flatten(1, 2)],
          [Truth(grid=(H, W), rewrite=True)]),
    # the token dim viewed as (3, 8) and back: (3, 8) does not split (4, 6) into pieces, so
    # the round trip loses the provenance (a true grid the compiler may miss)
    _case("token_view_other_split", lambda m, x: [tok(m.conv(x)).view(-1, 3, 8, DIM).reshape(-1, H * W, DIM)],
          [Truth(grid=(H, W))]),
    # the token dim re-split as (3, 8) and the pieces transposed: a scramble of the grid
    _case("token_resplit_transposed", lambda m, x: [tok(m.conv(x)).view(-1, 3, 8, DIM).transpose(1, 2)
                                                    .reshape(-1, H * W, DIM)], [DENSE]),
]



class ConvOverTokens(nn.Module):
    """A 4x4 conv2d patch grid, then a convolution applied to the flattened tokens (a 1-D
    conv along the token dim, or a 2-D conv on a view of them), then attention."""

    def __init__(self, how):
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, 2, 2)
        self.dw3 = nn.Conv1d(DIM, DIM, 3, 1, 1, groups=DIM)
        self.pw1 = nn.Conv1d(DIM, DIM, 1)
        self.pw2 = nn.Conv2d(DIM, DIM, 1)
        self.block, self.how = Block(), how

    def forward(self, x):
        t = tok(self.patch(x))                                 # [B, 16, C], a 4x4 grid
        f = t.transpose(1, 2)                                  # [B, C, 16]
        B = t.shape[0]
        if self.how == "conv1d_k3":
            t = tok(self.dw3(f))
        elif self.how == "conv1d_k3_residual":
            t = t + tok(self.dw3(f))
        elif self.how == "conv1d_k1":
            t = tok(self.pw1(f))
        elif self.how == "conv2d_1x1_right_view":
            t = tok(self.pw2(f.reshape(B, DIM, 4, 4)))
        elif self.how == "conv2d_1x1_wrong_view":
            t = tok(self.pw2(f.reshape(B, DIM, 2, 8)))
        return self.block(t)


# A stride-1 convolution that keeps every position (kernel 1, or kernel 3 with padding 1)
# applied to the flattened tokens of the 4x4 grid leaves token i where it was: patch
# (i // 4, i % 4). The conv's output dim is a new axis, but the tokens are still the 2-D grid;
# claiming the 1-D grid (16,) (a window over the flat sequence, across row ends), or the
# (2, 8) grid of a view the model happened to convolve, is wrong.
CASES += [Case(f"reshape_conv_over_tokens_{how}", "reshape", lambda how=how: ConvOverTokens(how),
               lambda g: (img(g),), [t])
          for how, t in (("conv1d_k3", Truth(grid=(4, 4))), ("conv1d_k3_residual", Truth(grid=(4, 4))),
                         ("conv1d_k1", Truth(grid=(4, 4))),
                         ("conv2d_1x1_right_view", Truth(grid=(4, 4), rewrite=True)),
                         ("conv2d_1x1_wrong_view", Truth(grid=(4, 4))))]
