"""Hoisting boundaries: tokens must leave the tiled region in natural order, whatever the
exit (graph outputs, graph breaks, transposes, dense attentions, token-mixing ops, in-place
writes, reductions over tokens, concatenations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gna_compile import GNA, Policy

from blocks import DIM, Attn, Block, Patch2d, Patch3d, img, video
from harness import DENSE, Case, Truth

G = Truth(grid=(4, 4), rewrite=True)          # conv2d patch grid of an 8x8 image
G3 = Truth(grid=(2, 4, 4), rewrite=True)      # conv3d grid of a 2x8x8 video


class TwoBlocks(nn.Module):
    """Patch embed, two blocks; ``tail`` says what happens to the tokens after them."""

    def __init__(self, tail="unpatchify", sdpa=None):
        super().__init__()
        self.patch = Patch2d()
        self.blocks = nn.ModuleList([Block(**(sdpa or {})), Block(**(sdpa or {}))])
        self.tail = tail
        self.head = nn.Linear(DIM, 12)

    def forward(self, x):
        t = self.patch(x)
        for b in self.blocks:
            t = b(t)
        return TAILS[self.tail](self, t)


def _unpatchify(m, t):
    B = t.shape[0]
    return m.head(t).view(B, 4, 4, 3, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, 8, 8)


TAILS = {
    "unpatchify": _unpatchify,
    "tokens": lambda m, t: t,                                           # tokens are the output
    "tokens_and_pooled": lambda m, t: (t, t.mean(1)),
    "mT": lambda m, t: t + m.head(t).mT.mean(1, keepdim=True).mT[..., :1],
    "mT_reshape": lambda m, t: t.mT.reshape(t.shape[0], DIM, 4, 4),
    "T_2d": lambda m, t: t[0].T,
    "transpose_conv": lambda m, t: F.avg_pool2d(t.transpose(1, 2).reshape(-1, DIM, 4, 4), 2),
    "norm_dim1": lambda m, t: t.norm(2, 1),                             # positional reduction args
    "std_dim1": lambda m, t: t.std(1, True),
    "sum_tokens": lambda m, t: t.sum(1),
    "amax_tokens": lambda m, t: t.amax(1, keepdim=True) - t,
    "cumsum_tokens": lambda m, t: t.cumsum(1),
    "flip_tokens": lambda m, t: t.flip(1),
    "roll_tokens": lambda m, t: torch.roll(t, 3, 1),
    "first_token": lambda m, t: t[:, 0],
    "last_rows": lambda m, t: t[:, 8:],
    "strided_tokens": lambda m, t: t[:, ::2],
    "gather_tokens": lambda m, t: t[:, torch.tensor([3, 1, 2, 0, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14])],
    "sort_tokens": lambda m, t: torch.sort(t, dim=1).values,
    "cat_twice": lambda m, t: torch.cat([t, t], 1),
    "cat_flipped": lambda m, t: torch.cat([t, t.flip(1)], 1),
    "token_matmul": lambda m, t: t @ t.transpose(1, 2),                 # [B, N, N]: tokens on both dims
    "softmax_tokens": lambda m, t: torch.softmax(t, dim=1),
    "conv1d_tokens": lambda m, t: F.conv1d(t.transpose(1, 2), torch.ones(DIM, 1, 3) / 3, padding=1, groups=DIM),
    "depthwise_2d": lambda m, t: F.conv2d(t.transpose(1, 2).reshape(-1, DIM, 4, 4), torch.ones(DIM, 1, 3, 3) / 9,
                                          padding=1, groups=DIM).flatten(2).transpose(1, 2),
    "view_grid": lambda m, t: t.view(t.shape[0], 4, 4, DIM)[:, 1:3],
    "unfold_rows": lambda m, t: t.view(t.shape[0], 4, 4, DIM).sum(2),
    "outer_product": lambda m, t: torch.einsum("bnc,bmc->bnm", t, t[:, :1]),
    "index_put_zero": lambda m, t: t.index_put((torch.tensor([0, 0]), torch.tensor([0, 5])), torch.zeros(2, DIM)),
    "complex_real": lambda m, t: torch.view_as_complex(t.contiguous().reshape(*t.shape[:-1], DIM // 2, 2)).real,
}


def _tail_case(tail):
    return Case(f"tail_{tail}", "hoist-exit", lambda: TwoBlocks(tail), lambda g: (img(g),), [G, G])


CASES = [_tail_case(t) for t in TAILS]


# -- in-place writes on the token dim between and after blocks ------------------------------

class InPlace(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.patch, self.b1, self.b2, self.how = Patch2d(), Block(), Block(), how

    def forward(self, x):
        t = self.b1(self.patch(x))
        f = t.transpose(1, 2)                    # a view [B, C, N]
        if self.how == "zero_view":
            f[:, :, 10:].zero_()
        elif self.how == "setitem_token":
            t[:, 5] = 0.0
        elif self.how == "masked_fill_":
            t.masked_fill_(torch.arange(16).view(1, 16, 1) < 3, 1.0)
        elif self.how == "mul_rows":
            t[:, 4:8] *= 2.0
        elif self.how == "add_slice_of_self":
            t[:, :8] += t[:, 8:]
        elif self.how == "copy_flipped":
            t.copy_(t.flip(1))
        return self.b2(t)


CASES += [Case(f"inplace_{h}", "hoist-inplace", lambda h=h: InPlace(h), lambda g: (img(g),), [G, G])
          for h in ("zero_view", "setitem_token", "masked_fill_", "mul_rows", "add_slice_of_self")]
# after copy_(t.flip(1)) the tokens run backwards: no longer the grid in row-major order
CASES.append(Case("inplace_copy_flipped", "hoist-inplace", lambda: InPlace("copy_flipped"), lambda g: (img(g),), [G, DENSE]))


# -- graph breaks right after attention -----------------------------------------------------

class BreakAfterAttn(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.patch, self.b1, self.b2, self.kind = Patch2d(), Block(), Block(), kind

    def forward(self, x):
        t = self.b1(self.patch(x))
        if self.kind == "isnan":
            if torch.isnan(t).any():
                raise RuntimeError("nan")
        elif self.kind == "item":
            if t.sum().item() > 1e9:
                t = t * 0
        elif self.kind == "explicit":
            torch._dynamo.graph_break()
        elif self.kind == "print":
            print(end="")
        return self.b2(t)


# after the break the next graph starts from its input tokens: a true grid nothing proves
CASES += [Case(f"graph_break_{k}", "hoist-exit", lambda k=k: BreakAfterAttn(k), lambda g: (img(g),),
               [G, Truth(grid=(4, 4))]) for k in ("isnan", "item", "explicit", "print")]


class ReturnsAttention(nn.Module):
    """Returns the raw attention output and the hidden states (both leave the graph)."""

    def __init__(self, n_out=2):
        super().__init__()
        self.patch, self.attn, self.b2, self.n_out = Patch2d(), Attn(), Block(), n_out

    def forward(self, x):
        t = self.patch(x)
        a = self.attn(t)
        t = self.b2(t + a)
        return (a, t) if self.n_out == 2 else a


CASES += [Case("returns_attention_1", "hoist-exit", lambda: ReturnsAttention(1), lambda g: (img(g),),
               [G, Truth(grid=(4, 4))]),  # the second block's result is unused: the compiler drops it
          Case("returns_attention_2", "hoist-exit", lambda: ReturnsAttention(2), lambda g: (img(g),), [G, G])]


# -- dense attention inside the region ------------------------------------------------------

class DenseInside(nn.Module):
    """Two GNA blocks around a second attention the policy or the call keeps dense."""

    def __init__(self, kind):
        super().__init__()
        self.patch, self.b1, self.b3 = Patch2d(), Block(), Block()
        self.kind = kind
        self.mid = Attn(is_causal=True) if kind == "causal" else Attn()
        self.bias = nn.Parameter(torch.randn(1, 1, 16, 16)) if kind == "float_bias_full" else None

    def forward(self, x):
        t = self.b1(self.patch(x))
        if self.kind == "float_key_bias":
            bias = torch.linspace(-2, 2, 16).view(1, 1, 1, 16)
            t = t + self.mid(t, bias)
        elif self.kind == "float_bias_full":
            t = t + self.mid(t, self.bias)
        elif self.kind in ("padding_mask_rule", "padding_mask_auto"):
            keep = torch.arange(16) < 12                       # hides the last image row
            t = t + self.mid(t, keep.view(1, 1, 1, 16))
        elif self.kind == "query_mask":
            m = torch.tril(torch.ones(16, 16, dtype=torch.bool))
            t = t + self.mid(t, m)
        else:
            t = t + self.mid(t)
        return self.b3(t)


_dense_rule = Policy(rules={"mid": "dense"}, default=GNA(2))
CASES += [
    Case("dense_inside_causal", "hoist-dense", lambda: DenseInside("causal"), lambda g: (img(g),), [G, DENSE, G]),
    Case("dense_inside_float_key_bias", "hoist-dense", lambda: DenseInside("float_key_bias"), lambda g: (img(g),), [G, DENSE, G]),
    Case("dense_inside_float_bias_full", "hoist-dense", lambda: DenseInside("float_bias_full"), lambda g: (img(g),), [G, DENSE, G]),
    Case("dense_inside_rule_padding_mask", "hoist-dense", lambda: DenseInside("padding_mask_rule"), lambda g: (img(g),),
         [G, Truth(grid=(4, 4)), G], policy=_dense_rule),
    Case("dense_inside_rule_plain", "hoist-dense", lambda: DenseInside("plain"), lambda g: (img(g),),
         [G, Truth(grid=(4, 4)), G], policy=_dense_rule),
    Case("dense_inside_rule_query_mask", "hoist-dense", lambda: DenseInside("query_mask"), lambda g: (img(g),),
         [G, DENSE, G], policy=_dense_rule),
    Case("gna_inside_padding_mask", "hoist-dense", lambda: DenseInside("padding_mask_auto"), lambda g: (img(g),),
         [G, Truth(grid=(4, 4), rewrite=True, masks_grid=True), G]),
]


# -- a key mask computed from the hidden states ---------------------------------------------

class DataMask(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.patch, self.b1, self.b2, self.kind = Patch2d(), Block(), Block(), kind

    def forward(self, x):
        t = self.b1(self.patch(x))
        if self.kind == "norm":
            keep = t.norm(dim=-1) > t.norm(dim=-1).median()
        elif self.kind == "first_feature":
            keep = t[..., 0] > 0
        else:
            keep = (t.sum(-1) > 0) | (torch.arange(16) < 2)
        return self.b2(t, keep[:, None, None, :])


CASES += [Case(f"data_key_mask_{k}", "hoist-keymask", lambda k=k: DataMask(k), lambda g: (img(g),),
               [G, Truth(grid=(4, 4), rewrite=True, masks_grid=True)])
          for k in ("norm", "first_feature", "or_prefix")]


# -- video blocks with RoPE-like per-token tables and text suffix ----------------------------

class VideoText(nn.Module):
    def __init__(self, tail):
        super().__init__()
        self.patch, self.txt = Patch3d(), nn.Linear(8, DIM)
        self.b1, self.b2, self.tail = Block(), Block(), tail
        self.register_buffer("table", torch.randn(32, DIM))

    def forward(self, v, text):
        x = self.patch(v) * self.table + self.table.flip(0)
        x = torch.cat([x, self.txt(text)], 1)
        x = self.b2(self.b1(x))
        if self.tail == "split":
            a, b = x.split([32, 3], 1)
            return a.mean(-1), b
        if self.tail == "text_only":
            return x[:, 32:]
        if self.tail == "video_unpatch":
            return x[:, :32].reshape(-1, 2, 4, 4, DIM).permute(0, 4, 1, 2, 3)
        return x


CASES += [Case(f"video_text_{t}", "hoist-exit", lambda t=t: VideoText(t),
               lambda g: (video(g), torch.randn(1, 3, 8, generator=g)), [Truth((2, 4, 4), 0, 3, rewrite=True)] * 2)
          for t in ("split", "text_only", "video_unpatch", "all")]
