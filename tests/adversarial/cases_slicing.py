"""Slices, splits and concatenations along the tokens: a slice that keeps whole segments of a
concatenation keeps their layout; a slice that cuts an axis (or strides over it) leaves
positions of unknown origin."""

from __future__ import annotations

import torch
from torch import nn

from blocks import DIM, Attn, Block, Patch2d, img, tokens
from harness import DENSE, Case, Truth

G = Truth(grid=(4, 4), rewrite=True)            # conv2d patch grid of an 8x8 image
N = 16


class Sliced(nn.Module):
    """Patch tokens (and a cls token, 4 registers, text) fed to one attention per entry of
    ``views``: ``view(self, t, parts) -> tokens`` where parts = dict(grid=, cls=, reg=, txt=)."""

    def __init__(self, views):
        super().__init__()
        self.patch = Patch2d()
        self.cls = nn.Parameter(torch.randn(1, 1, DIM))
        self.reg = nn.Parameter(torch.randn(1, 4, DIM))
        self.txt = nn.Linear(8, DIM)
        self.views = views
        self.attn = nn.ModuleList([Attn() for _ in views])

    def forward(self, x, text=None, seq=None):
        t = self.patch(x)
        B = t.shape[0]
        parts = dict(grid=t, cls=self.cls.expand(B, -1, -1), reg=self.reg.expand(B, -1, -1),
                     txt=None if text is None else self.txt(text), seq=seq)
        outs = []
        for view, attn in zip(self.views, self.attn):
            s = view(self, t, parts)
            outs.append(attn(s))
        return outs


def cat(*xs):
    return torch.cat(xs, 1)


def _case(name, views, truths, text=False, seq=False, b=1):
    def inputs(g):
        return (img(g, b=b), tokens(g, b=b, n=3, c=8) if text else None,
                tokens(g, b=b, n=17) if seq else None)
    return Case(f"slice_{name}", "slicing", lambda: Sliced(views), inputs, truths)


CLS_GRID = lambda m, t, p: cat(p["cls"], t)          # noqa: E731

CASES = [
    # an opaque input sequence stays opaque when sliced
    _case("opaque_tail", [lambda m, t, p: p["seq"][:, 1:]], [DENSE], seq=True),
    _case("opaque_split", [lambda m, t, p: p["seq"].split([1, 16], 1)[1]], [DENSE], seq=True),
    _case("opaque_narrow", [lambda m, t, p: p["seq"].narrow(1, 1, 16)], [DENSE], seq=True),
    # cls + grid, then the grid part again, then a cut through the grid
    _case("cls_then_slices", [CLS_GRID, lambda m, t, p: CLS_GRID(m, t, p)[:, 1:],
                              lambda m, t, p: CLS_GRID(m, t, p)[:, :9]],
          [Truth((4, 4), 1, 0, rewrite=True), G, DENSE]),
    _case("cls_slice_negative", [lambda m, t, p: CLS_GRID(m, t, p)[:, -16:]], [G]),
    _case("cls_slice_keeps_cls", [lambda m, t, p: CLS_GRID(m, t, p)[:, :17]], [Truth((4, 4), 1, 0, rewrite=True)]),
    _case("cls_slice_cuts_first_row", [lambda m, t, p: CLS_GRID(m, t, p)[:, 5:]], [DENSE]),
    _case("cls_split", [lambda m, t, p: CLS_GRID(m, t, p).split([1, 16], 1)[1]], [G]),
    _case("cls_split_uneven", [lambda m, t, p: CLS_GRID(m, t, p).split([5, 12], 1)[1]], [DENSE]),
    _case("cls_narrow", [lambda m, t, p: CLS_GRID(m, t, p).narrow(1, 1, 16)], [G]),
    _case("grid_narrow_half", [lambda m, t, p: t.narrow(1, 0, 8)], [DENSE]),
    # chunk(2) of the grid: each half is a cut of the H axis. At a row boundary the halves
    # happen to be (2, 4) grids (rows 0-1, rows 2-3), so a (2, 4) claim would be sound, but a
    # slice proves nothing and no other claim (e.g. the uncut (4, 4)) is
    _case("grid_chunk_halves", [lambda m, t, p: t.chunk(2, 1)[0], lambda m, t, p: t.chunk(2, 1)[1]],
          [Truth(grid=(2, 4)), Truth(grid=(2, 4))]),
    # a cut that is not a row boundary: tokens 3..10 are no grid at all
    _case("grid_cut_mid_row", [lambda m, t, p: t[:, 3:11]], [DENSE]),
    _case("grid_strided", [lambda m, t, p: t[:, ::2]], [DENSE]),
    _case("grid_strided_offset", [lambda m, t, p: t[:, 1::2]], [DENSE]),
    # full-extent slices and slices of other dims keep the grid
    _case("grid_full_slice", [lambda m, t, p: t[:, 0:16]], [G]),
    _case("grid_batch_slice", [lambda m, t, p: t[:1]], [G], b=2),
    _case("grid_feature_slice", [lambda m, t, p: torch.cat([t[..., :8], t[..., 8:] * 2], -1)], [G]),
    # registers after the grid, cls + registers, text on both sides
    _case("registers_suffix", [lambda m, t, p: cat(t, p["reg"])], [Truth((4, 4), 0, 4, rewrite=True)]),
    _case("cls_and_registers", [lambda m, t, p: cat(p["cls"], t, p["reg"])], [Truth((4, 4), 1, 4, rewrite=True)]),
    _case("cls_registers_before", [lambda m, t, p: cat(p["cls"], p["reg"], t)], [Truth((4, 4), 5, 0, rewrite=True)]),
    _case("text_both_sides", [lambda m, t, p: cat(p["txt"], t, p["reg"])], [Truth((4, 4), 3, 4, rewrite=True)],
          text=True),
    # whole segments sliced out of a longer concatenation
    _case("strip_text_keep_registers", [lambda m, t, p: cat(p["txt"], t, p["reg"])[:, 3:]],
          [Truth((4, 4), 0, 4, rewrite=True)], text=True),
    _case("strip_both_ends", [lambda m, t, p: cat(p["cls"], t, p["reg"])[:, 1:-4]], [G]),
    # a slice that cuts the registers (an extra segment, not the grid): still a grid with
    # 2 extra tokens, but the compiler may refuse a cut segment
    _case("strip_cuts_registers", [lambda m, t, p: cat(p["cls"], t, p["reg"])[:, 1:-2]],
          [Truth((4, 4), 0, 2)]),
    # the grid twice, or the grid and its mirror. Only the first copy may be claimed as the
    # grid: the other 16 tokens are then extra tokens (attending and attended densely), which
    # is sound; claiming no grid is sound too (the compiler refuses two proven grids)
    _case("grid_twice", [lambda m, t, p: cat(t, t)], [Truth((4, 4), 0, 16)]),
    _case("grid_and_flipped", [lambda m, t, p: cat(t, t.flip(1))], [Truth((4, 4), 0, 16)]),
    _case("flipped_and_grid", [lambda m, t, p: cat(t.flip(1), t)], [Truth((4, 4), 16, 0)]),
    # a cut through the mirrored copy leaves only fresh positions around the grid
    _case("grid_and_flipped_rows", [lambda m, t, p: cat(t, t.view(-1, 4, 4, DIM).flip(1).reshape(-1, 16, DIM))],
          [Truth((4, 4), 0, 16)]),
    # a nested concatenation (cls + (grid + registers)), then the inner part sliced back out
    _case("nested_cat", [lambda m, t, p: cat(p["cls"], cat(t, p["reg"])),
                         lambda m, t, p: cat(p["cls"], cat(t, p["reg"]))[:, 1:]],
          [Truth((4, 4), 1, 4, rewrite=True), Truth((4, 4), 0, 4, rewrite=True)]),
    # the grid re-assembled from its two halves (a cat of two slices): positions are the
    # grid's again, but as a concatenation of cut pieces the compiler may refuse it
    _case("halves_reassembled", [lambda m, t, p: cat(t[:, :8], t[:, 8:])], [Truth(grid=(4, 4))]),
    # halves swapped: rows 2-3 before rows 0-1
    _case("halves_swapped", [lambda m, t, p: cat(t[:, 8:], t[:, :8])], [DENSE]),
]


class GridSliceAfterBlocks(nn.Module):
    """ViT with cls: blocks on cls + grid, then a block on the grid alone (t[:, 1:])."""

    def __init__(self):
        super().__init__()
        self.patch, self.cls = Patch2d(), nn.Parameter(torch.randn(1, 1, DIM))
        self.b1, self.b2 = Block(), Block()

    def forward(self, x):
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.patch(x)], 1)
        t = self.b1(t)
        return self.b2(t[:, 1:])


CASES.append(Case("slice_after_block", "slicing", GridSliceAfterBlocks, lambda g: (img(g, b=2),),
                  [Truth((4, 4), 1, 0, rewrite=True), G]))


# the same slices with symbolic sizes (dynamic=True): a slice bound that cannot be compared
# with the symbolic segment lengths must be refused, not guessed
def _dyn(name, views, truths, h=8, w=12):
    return Case(f"slice_{name}_dynamic", "slicing", lambda: Sliced(views),
                lambda g: (img(g, b=2, h=h, w=w), None, None), truths, compile={"dynamic": True})


GD = Truth(grid=(4, 6), rewrite=True)
CASES += [
    _dyn("cls_then_slices", [CLS_GRID, lambda m, t, p: CLS_GRID(m, t, p)[:, 1:],
                             lambda m, t, p: CLS_GRID(m, t, p)[:, :9]],
         [Truth((4, 6), 1, 0, rewrite=True), GD, DENSE]),
    # a cut exactly at the end of the grid (25 = 1 + 24): with symbolic sizes nothing proves
    # that 25 is the segment boundary, so the cut is no proof (a (4, 6) claim would be sound
    # for this shape, and the compiler may guard on it)
    _dyn("cls_slice_constant_end", [lambda m, t, p: CLS_GRID(m, t, p)[:, 1:25]], [Truth(grid=(4, 6))]),
    _dyn("registers_strip", [lambda m, t, p: cat(p["cls"], t, p["reg"])[:, 1:-4]], [GD]),
    _dyn("grid_strided", [lambda m, t, p: t[:, ::2]], [DENSE]),
    _dyn("grid_half", [lambda m, t, p: t[:, :t.shape[1] // 2]], [Truth(grid=(2, 6))]),
]
