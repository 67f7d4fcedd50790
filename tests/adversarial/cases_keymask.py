"""Boolean key masks: a key padding mask (broadcast over heads and queries) is supported and
may hide grid keys unless the graph proves it is True on them ("extra tokens only" is the
claim that must never be made for a mask that can hide grid keys). Masks that depend on the
head or the query, and float biases, keep the call dense.

Masks are chosen so that no query loses every key of its window (a fully masked row is NaN
in SDPA): hidden grid keys never cover a whole 2x2 window."""

from __future__ import annotations

import torch
from torch import nn

from blocks import DIM, Attn, Patch2d, img, tokens
from harness import DENSE, Case, Truth

B, N, T = 2, 16, 4                     # batch, grid tokens (4x4), text tokens

GM = Truth(grid=(4, 4), rewrite=True, masks_grid=True)          # grid keys may be hidden
GT = Truth(grid=(4, 4), suffix=T, rewrite=True, masks_grid=False)  # only text keys hidden
GTM = Truth(grid=(4, 4), suffix=T, rewrite=True, masks_grid=True)  # text after, grid keys may be hidden


class KeyMask(nn.Module):
    """Patch tokens (+ text before/after), one attention with ``mask(self, t, aux, n)``."""

    def __init__(self, mask, text=None):
        super().__init__()
        self.patch, self.txt, self.attn = Patch2d(), nn.Linear(8, DIM), Attn()
        self.mask, self.text = mask, text

    def forward(self, x, text=None, aux=None):
        t = self.patch(x)
        if self.text == "after":
            t = torch.cat([t, self.txt(text)], 1)
        elif self.text == "before":
            t = torch.cat([self.txt(text), t], 1)
        return self.attn(t, self.mask(self, t, aux, t.shape[1]))


def _case(name, mask, truth, text=None, aux=None, b=B):
    def inputs(g):
        return (img(g, b=b), tokens(g, b=b, n=T, c=8) if text else None, aux(g) if aux else None)
    return Case(f"keymask_{name}", "keymask", lambda: KeyMask(mask, text), inputs, [truth])


def k4(m):
    """[B, N] -> [B, 1, 1, N]"""
    return m[:, None, None, :]


def ones(t, n):
    return torch.ones(t.shape[0], n, dtype=torch.bool, device=t.device)


def slice_false(m, t, a, n):
    keep = ones(t, n)
    keep[:, 5:9] = False                       # hides grid keys 5..8 (never a whole window)
    return keep


def hunyuan(lengths):
    """HunyuanVideo: True up to grid + text length, False after."""
    def mask(m, t, a, n):
        L = lengths(a)
        keep = torch.ones(t.shape[0], n, dtype=torch.bool).masked_fill(
            torch.arange(n)[None, :] >= N + L[:, None], False)
        return k4(keep)
    return mask


def text_bool(g):
    return torch.tensor([[True, True, False, False], [True, True, True, True]])


def text_int_negative(g):
    # an int64 "text mask" whose sums are -3 and 3: its lengths are not provably >= 0, and
    # here sample 0's threshold is N - 3, which hides grid keys 13..15
    return torch.tensor([[1, 0, -3, -1], [1, 1, 1, 0]])


def lengths_negative(g):
    return torch.tensor([-2, 3])


def even_or(keep, n):
    """Keep every even token as well, so that no 2x2 window (two adjacent columns) is empty."""
    return keep | (torch.arange(n) % 2 == 0)


def user_mask(g):
    return torch.rand(B, N, generator=g) > 0.5


CASES = [
    _case("slice_false", lambda m, t, a, n: k4(slice_false(m, t, a, n)), GM),
    _case("slice_false_b1", lambda m, t, a, n: k4(slice_false(m, t, a, n)), GM, b=1),
    # mask shapes: [B, 1, 1, N], [1, N], [1, 1, 1, N], [B, 1, N] (B == 1); (a 1-D [N] mask
    # is rejected by SDPA itself)
    _case("shape_1N", lambda m, t, a, n: slice_false(m, t, a, n)[:1], GM),
    _case("shape_B11N_view", lambda m, t, a, n: slice_false(m, t, a, n).view(t.shape[0], 1, 1, n), GM),
    _case("shape_111N", lambda m, t, a, n: slice_false(m, t, a, n)[:1].view(1, 1, 1, n), GM),
    _case("shape_B1N_b1", lambda m, t, a, n: slice_false(m, t, a, n)[:, None, :], GM, b=1),
    # a 3-D [B, 1, N] mask with B = 2: SDPA right-aligns it as [1, B, 1, N], i.e. it is
    # indexed by the HEAD (2 heads), not the batch: a per-head mask, not a key padding mask.
    # Sample 0's row hides keys 5..8 and becomes head 0's mask for both samples.
    _case("shape_B1N_is_per_head", lambda m, t, a, n: torch.stack([slice_false(m, t, a, n)[0], ones(t, n)[0]])[:, None],
          Truth(grid=(4, 4), masks_grid=True)),
    # HunyuanVideo-style text padding mask after the grid: lengths from a bool mask's sum
    # are >= 0, so the grid keys are provably kept (a claim "extra tokens only" is allowed)
    _case("hunyuan_bool_lengths", hunyuan(lambda a: a.sum(1)), GT, text="after", aux=text_bool),
    _case("hunyuan_bool_lengths_int", hunyuan(lambda a: a.long().sum(1)), GT, text="after", aux=text_bool),
    # ... lengths from an int64 tensor's sum: not provably >= 0 (and here negative)
    _case("hunyuan_int_lengths", hunyuan(lambda a: a.sum(1)), GTM, text="after", aux=text_int_negative),
    # ... lengths given directly as an int64 input (negative for sample 0)
    _case("hunyuan_lengths_input", hunyuan(lambda a: a), GTM, text="after", aux=lengths_negative),
    # the same "padding" mask with the text BEFORE the grid and an off-by-offset threshold:
    # positions >= len + 3 are hidden, i.e. grid keys
    _case("text_before_offset_bug", lambda m, t, a, n: k4(torch.ones(t.shape[0], n, dtype=torch.bool).masked_fill(
        torch.arange(n)[None, :] >= a.sum(1)[:, None] + 3 + N // 2, False)),
        Truth(grid=(4, 4), prefix=T, rewrite=True, masks_grid=True), text="before", aux=text_bool),
    # text masks concatenated to an all-True grid part (after / before), or written into it
    _case("cat_text_after", lambda m, t, a, n: k4(torch.cat([ones(t, N), a], 1)), GT, text="after", aux=text_bool),
    _case("cat_text_before", lambda m, t, a, n: k4(torch.cat([a, ones(t, N)], 1)),
          Truth(grid=(4, 4), prefix=T, rewrite=True, masks_grid=False), text="before", aux=text_bool),
    _case("slice_scatter_text", lambda m, t, a, n: k4(_scatter_text(t, a, n)), GT, text="after", aux=text_bool),
    _case("where_text", lambda m, t, a, n: k4(torch.where(torch.arange(n)[None] < N, True,
                                                          torch.cat([ones(t, N), a], 1))),
          GT, text="after", aux=text_bool),
    _case("not_padding", lambda m, t, a, n: k4(~(torch.arange(n)[None] >= N + a.sum(1)[:, None])), GT,
          text="after", aux=text_bool),
    # the text part and a data-dependent grid part: grid keys may be hidden
    _case("cat_data_grid_text", lambda m, t, a, n: k4(torch.cat([even_or(t[:, :N, 0] > 0, N), a], 1)), GTM,
          text="after", aux=text_bool),
    # masks from data: a user-supplied [B, N] mask, or one computed from the tokens
    _case("user_mask", lambda m, t, a, n: k4(even_or(a, n)), GM, aux=user_mask),
    _case("user_mask_2d_bcast", lambda m, t, a, n: even_or(a, n)[:1], GM, aux=user_mask),
    _case("data_mask", lambda m, t, a, n: k4(even_or(t[..., 0] > 0, n)), GM),
    # writes the prover does not interpret: index_put with an index tensor, a boolean-index
    # assignment
    _case("index_put", lambda m, t, a, n: k4(_index_put(t, n)), GM),
    _case("bool_index_assign", lambda m, t, a, n: k4(_bool_assign(t, n)), GM),
    # an all-True mask (nothing hidden): a claim "extra tokens only" is sound
    _case("all_true", lambda m, t, a, n: k4(ones(t, n)), Truth(grid=(4, 4), rewrite=True, masks_grid=False)),
    # masks that depend on the query or the head: not key padding masks
    _case("per_query_NN", lambda m, t, a, n: torch.tril(torch.ones(n, n, dtype=torch.bool)), DENSE),
    _case("expanded_to_queries", lambda m, t, a, n: k4(slice_false(m, t, a, n)).expand(-1, 1, n, n),
          Truth(grid=(4, 4), masks_grid=True)),
    _case("per_head", lambda m, t, a, n: torch.stack([slice_false(m, t, a, n), ones(t, n)], 1)[:, :, None],
          Truth(grid=(4, 4), masks_grid=True)),
    # a mask broadcast along the keys ([B, 1, 1, 1], all True here): not a per-key mask
    _case("broadcast_keys", lambda m, t, a, n: (t.sum((1, 2)) > -1e9)[:, None, None, None],
          Truth(grid=(4, 4))),
    # a float additive bias (one value per key): not a boolean mask, dense
    _case("float_key_bias", lambda m, t, a, n: k4(torch.linspace(-1, 1, n).expand(t.shape[0], n)), DENSE),
    _case("float_from_bool", lambda m, t, a, n: k4(slice_false(m, t, a, n).float().log()), DENSE),
]


def _scatter_text(t, a, n):
    keep = ones(t, n)
    keep[:, N:] = a
    return keep


def _index_put(t, n):
    keep = ones(t, n)
    keep[:, torch.tensor([2, 7])] = False
    return keep


def _bool_assign(t, n):
    keep = ones(t, n)
    keep[(torch.arange(n) % 5 == 0).expand(t.shape[0], n)] = False
    return keep


# -- lengths cast to a narrow integer type: the cast wraps, so a length that is >= 0 before
# it can be negative after it (254 text tokens: sum 254 -> int8 -2 -> grid keys 14, 15 hidden
# for sample 0; sample 1 has 100 text tokens)
T_LONG = 254


class LongText(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.patch, self.txt, self.attn, self.dtype = Patch2d(), nn.Linear(8, DIM), Attn(), dtype

    def forward(self, x, text, text_mask):
        t = torch.cat([self.patch(x), self.txt(text)], 1)
        n = t.shape[1]
        lengths = text_mask.sum(1).to(self.dtype)
        keep = torch.ones(t.shape[0], n, dtype=torch.bool).masked_fill(
            torch.arange(n)[None, :] >= N + lengths[:, None], False)
        return self.attn(t, k4(keep))


def _long_text(g):
    m = torch.zeros(B, T_LONG, dtype=torch.bool)
    m[0, :] = True
    m[1, :100] = True
    return img(g, b=B), tokens(g, b=B, n=T_LONG, c=8), m


CASES += [
    Case("keymask_lengths_int8_wrap", "keymask", lambda: LongText(torch.int8), _long_text,
         [Truth(grid=(4, 4), suffix=T_LONG, rewrite=True, masks_grid=True)]),
    # the control: int32 does not wrap here, the grid keys are provably kept
    Case("keymask_lengths_int32", "keymask", lambda: LongText(torch.int32), _long_text,
         [Truth(grid=(4, 4), suffix=T_LONG, rewrite=True, masks_grid=False)]),
]


# -- a mask built for [grid, text] applied to a [text, grid] sequence (a model bug): the
# mask's last T positions are the text mask, and they fall on grid keys 12..15
CASES.append(_case("mask_order_mismatch", lambda m, t, a, n: k4(torch.cat([ones(t, N), a], 1)),
                   Truth(grid=(4, 4), prefix=T, rewrite=True, masks_grid=True), text="before", aux=text_bool))


# -- HunyuanVideo-style mask with dynamic shapes (the grid size is a symbol)
class DynHunyuan(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch, self.txt, self.attn = Patch2d(), nn.Linear(8, DIM), Attn()

    def forward(self, x, text, text_mask):
        g = self.patch(x)
        t = torch.cat([g, self.txt(text)], 1)
        L = g.shape[1] + text_mask.sum(1)
        keep = torch.ones(t.shape[0], t.shape[1], dtype=torch.bool).masked_fill(
            torch.arange(t.shape[1])[None, :] >= L[:, None], False)
        return self.attn(t, k4(keep))


CASES.append(Case("keymask_hunyuan_dynamic", "keymask", DynHunyuan,
                  lambda g: (img(g, b=B, h=8, w=12), tokens(g, b=B, n=T, c=8), text_bool(g)),
                  [Truth(grid=(4, 6), suffix=T, rewrite=True, masks_grid=False)], compile={"dynamic": True}))
