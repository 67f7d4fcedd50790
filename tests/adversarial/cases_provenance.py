"""Provenance of q and k: the keys must be the queries' own tokens, in the same order, from
the same source axes. Every model here patch-embeds a non-square 8x12 image (a 4x6 conv grid,
so that H-major and W-major orders differ) and then builds q, k and v from variants of the
tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from blocks import DIM, heads, img, merge, video
from gna_compile import GNA, Policy

from harness import DENSE, Case, Truth

H, W = 4, 6                                    # conv grid of an 8x12 image
GRID = Truth(grid=(H, W), rewrite=True)
GRID_T = Truth(grid=(W, H), rewrite=True)      # W-major tokens: the true grid is (W, H)
GRID_ANY = Truth(grid=(H, W))                  # a true grid the compiler may miss


def im(g, b=1):
    return img(g, b=b, h=2 * H, w=2 * W)


def hmajor(f):
    """[B, C, H, W] -> [B, H*W, C]"""
    return f.flatten(2).transpose(1, 2)


def wmajor(f):
    """[B, C, H, W] -> [B, W*H, C] (column-major tokens)"""
    return f.transpose(2, 3).flatten(2).transpose(1, 2)


class QKV(nn.Module):
    """conv patch embedding(s), then q/k/v projections of token tensors chosen by ``make``:
    ``make(self, f, *inputs) -> (q_tokens, k_tokens, v_tokens)``, each [B, N, C], where ``f``
    is ``self.conv`` of the first input, computed once (two calls of a conv are two nodes,
    i.e. two different sources)."""

    def __init__(self, make):
        super().__init__()
        self.make = make
        self.conv = nn.Conv2d(3, DIM, 2, 2)
        self.conv_b = nn.Conv2d(3, DIM, 2, 2)
        self.q, self.k, self.v = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)
        self.out = nn.Linear(DIM, DIM)
        self.register_buffer("table", torch.randn(H * W, DIM))
        self.register_buffer("cos", torch.randn(H * W, DIM // 2))

    def forward(self, *xs):
        tq, tk, tv = self.make(self, self.conv(xs[0]), *xs)
        o = F.scaled_dot_product_attention(heads(self.q(tq)), heads(self.k(tk)), heads(self.v(tv)))
        return self.out(merge(o))


def _case(name, make, truth, n_inputs=1, b=1, video_input=False):
    if video_input:
        inputs = lambda g: (video(g, b=b, t=2, h=2 * H, w=2 * W, c=3),)
    else:
        inputs = lambda g: tuple(im(g, b) for _ in range(n_inputs))
    return Case(f"prov_{name}", "provenance", lambda: QKV(make), inputs, [truth])


def _rope(m, t):
    """RoPE-like rotation with a buffer table [N, D/2] (cos) applied to feature pairs."""
    a, b = t[..., 0::2], t[..., 1::2]
    c = m.cos
    return torch.stack([a * c - b * (1 - c), b * c + a * (1 - c)], -1).flatten(-2)


CASES = [
    # q H-major, k W-major of the same image: same atoms, different order
    _case("q_hmajor_k_wmajor", lambda m, f, x: (hmajor(f), wmajor(f), wmajor(f)), DENSE),
    _case("q_wmajor_k_hmajor", lambda m, f, x: (wmajor(f), hmajor(f), hmajor(f)), DENSE),
    # both W-major: a true grid of shape (W, H)
    _case("both_wmajor", lambda m, f, x: (wmajor(f),) * 3, GRID_T),
    # W-major through permute + reshape (non-contiguous reshape)
    _case("both_wmajor_permute", lambda m, f, x: (f.permute(0, 3, 2, 1).reshape(x.shape[0], W * H, DIM),) * 3,
          GRID_T),
    # cross-attention: keys from another image of the same size (same conv module, other node)
    _case("keys_other_image", lambda m, f, x, y: (hmajor(f), hmajor(m.conv(y)), hmajor(m.conv(y))), DENSE, 2),
    # keys from a second convolution of the same image
    _case("keys_second_conv", lambda m, f, x: (hmajor(f), hmajor(m.conv_b(x)), hmajor(m.conv_b(x))), DENSE),
    # keys flipped / rolled along the tokens
    _case("keys_flipped", lambda m, f, x: (hmajor(f), hmajor(f).flip(1), hmajor(f)), DENSE),
    _case("keys_rolled", lambda m, f, x: (hmajor(f), torch.roll(hmajor(f), 1, 1), hmajor(f)),
          DENSE),
    _case("keys_flipped_rows", lambda m, f, x: (hmajor(f), hmajor(f.flip(2)), hmajor(f)), DENSE),
    # keys re-ordered by a gather that happens to be the identity: fresh axis, but truly the grid
    _case("keys_identity_gather", lambda m, f, x: (hmajor(f), hmajor(f)[:, torch.arange(H * W)],
                                                hmajor(f)), GRID_ANY),
    # q from the sum of two convolutions of the image, k the same tensor: a true grid
    _case("sum_of_two_convs", lambda m, f, x: (hmajor(f + m.conv_b(x)),) * 3, GRID_ANY),
    # ControlNet-like: image tokens plus the embedding of a conditioning image (same size)
    _case("controlnet_sum", lambda m, f, x, c: (hmajor(f + m.conv_b(c)),) * 3, GRID_ANY, 2),
    # q and k the same tokens, v from another image: the keys are the query tokens
    _case("values_other_image", lambda m, f, x, y: (hmajor(f), hmajor(f), hmajor(m.conv(y))), GRID, 2),
    _case("values_flipped", lambda m, f, x: (hmajor(f), hmajor(f), hmajor(f).flip(1)), GRID),
    # positional tables (buffers [N, D]) modulating the tokens
    _case("table_mul", lambda m, f, x: (hmajor(f) * m.table, hmajor(f) * m.table, hmajor(f)),
          GRID),
    _case("table_mul_add", lambda m, f, x: ((hmajor(f) * m.table + m.table.flip(0)),) * 3, GRID),
    _case("rope_pairs", lambda m, f, x: (_rope(m, hmajor(f)), _rope(m, hmajor(f)), hmajor(f)),
          GRID),
    # tokens plus their mirror image: token i still sits at patch i (its index is the conv's),
    # the mirrored copy only adds values, like a positional embedding would: a true grid
    _case("mirror_mix", lambda m, f, x: ((hmajor(f) + hmajor(f).flip(1)),) * 3, Truth(grid=GRID.grid)),
    # the conv output plus another conv's output transposed: both are spatial axes, and they
    # disagree (H against W): which grid the tokens are is not provable, the compiler refuses
    Case("prov_transpose_mix_square", "provenance",
         lambda: QKV(lambda m, f, x: (hmajor(f + m.conv_b(x).transpose(2, 3)),) * 3),
         lambda g: (img(g, h=8, w=8),), [DENSE]),
    # the same through a data-dependent gate [B, N, 1] from the mirrored tokens: token i is
    # still patch i, scaled (a true grid)
    _case("mirror_mix_gate", lambda m, f, x: ((hmajor(f) * hmajor(f).flip(1).mean(-1, keepdim=True).sigmoid()),) * 3,
          Truth(grid=GRID.grid)),
    # its sound twin: conv_b of the transposed image, transposed back, is a conv of the image
    # itself (with a transposed kernel), so token (i, j) is patch (i, j) twice: a true grid
    Case("prov_transpose_twice_square", "provenance",
         lambda: QKV(lambda m, f, x: (hmajor(f + m.conv_b(x.transpose(2, 3)).transpose(2, 3)),) * 3),
         lambda g: (img(g, h=8, w=8),), [Truth(grid=(4, 4))]),
    # the same conv called twice on the same image: identical tokens (two graph nodes, so
    # nothing proves it, but a rewrite would be sound)
    _case("keys_recomputed_same_conv", lambda m, f, x: (hmajor(f), hmajor(m.conv(x)), hmajor(f)), GRID_ANY),
    # keys that are the query tokens through no-op copies
    _case("keys_detach", lambda m, f, x: (hmajor(f), hmajor(f).detach(), hmajor(f)), GRID),
    _case("keys_clone", lambda m, f, x: (hmajor(f), hmajor(f).clone(), hmajor(f)), GRID),
    _case("keys_contiguous", lambda m, f, x: (hmajor(f), hmajor(f).contiguous(), hmajor(f)),
          GRID),
    _case("keys_f64_roundtrip", lambda m, f, x: (hmajor(f), hmajor(f).double().float(),
                                              hmajor(f)), GRID),
    _case("keys_reshape_roundtrip", lambda m, f, x: (hmajor(f),
                                                  hmajor(f).reshape(x.shape[0], H, W, DIM).reshape(
                                                      x.shape[0], H * W, DIM), hmajor(f)), GRID),
    # keys from the other sample of the batch (same conv node, same token axes): GNA's mask
    # only depends on positions and both are the same grid positions, so a rewrite is sound,
    # but nothing requires one
    _case("keys_other_sample", lambda m, f, x: (hmajor(f), hmajor(f).flip(0), hmajor(f)),
          GRID_ANY, b=2),
]


# keys from frame 0 broadcast to every frame of a conv3d video grid [B, C, T=2, H, W]
class FrameZeroKeys(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.conv = nn.Conv3d(3, DIM, (1, 2, 2), (1, 2, 2))
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.how = how

    def forward(self, v):
        f = self.conv(v)
        if self.how == "expand":
            fk = f[:, :, :1].expand(-1, -1, f.shape[2], -1, -1)
        elif self.how == "repeat":
            fk = f[:, :, :1].repeat(1, 1, f.shape[2], 1, 1)
        else:  # "self": the control, keys are the query tokens
            fk = f
        q = heads(self.qkv(f.flatten(2).transpose(1, 2)).chunk(3, -1)[0])
        k, v_ = (heads(z) for z in self.qkv(fk.flatten(2).transpose(1, 2)).chunk(3, -1)[1:])
        return merge(F.scaled_dot_product_attention(q, k, v_))


CASES += [Case(f"prov_frame0_keys_{how}", "provenance", lambda how=how: FrameZeroKeys(how),
               lambda g: (video(g, t=2, h=2 * H, w=2 * W, c=3),), [t])
          for how, t in (("expand", DENSE), ("repeat", DENSE), ("self", Truth(grid=(2, H, W), rewrite=True)))]


# Per-sample or per-feature layouts that differ. On a square map a W-major token order has
# the same sizes as the H-major one; with an anisotropic window (2 rows x 3 columns) the two
# orders give different neighborhoods, so no single claimed layout is right for every token.
_ANISO = Policy(default=GNA((2, 3)))
CASES += [
    # sample 0 H-major, sample 1 W-major (a transposed view concatenated along the batch)
    Case("prov_batch_cat_transposed", "provenance",
         lambda: QKV(lambda m, f, x: (torch.cat([hmajor(f), hmajor(m.conv_b(x).transpose(2, 3))], 0),) * 3),
         lambda g: (img(g, h=8, w=8),), [DENSE], policy=_ANISO),
    # half of the features H-major, half W-major
    Case("prov_feature_cat_transposed", "provenance",
         lambda: QKV(lambda m, f, x: (torch.cat([hmajor(f)[..., :8], hmajor(m.conv_b(x).transpose(2, 3))[..., 8:]],
                                                -1),) * 3),
         lambda g: (img(g, h=8, w=8),), [DENSE], policy=_ANISO),
    # the control: both H-major under the anisotropic window
    Case("prov_batch_cat_same_order", "provenance",
         lambda: QKV(lambda m, f, x: (torch.cat([hmajor(f), hmajor(m.conv_b(x))], 0),) * 3),
         lambda g: (img(g, h=8, w=8),), [Truth(grid=(4, 4))], policy=_ANISO),
]


class TextKeys(nn.Module):
    """q = [text_q, grid], k = [text_k, grid'] (text of 3 tokens, the 4x6 conv grid)."""

    def __init__(self, how):
        super().__init__()
        self.conv, self.txt, self.how = nn.Conv2d(3, DIM, 2, 2), nn.Linear(8, DIM), how
        self.q, self.k, self.v = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)

    def forward(self, x, a, b):
        t = hmajor(self.conv(x))
        ta, tb = self.txt(a), self.txt(b)
        tq = torch.cat([ta, t], 1)
        if self.how == "other_text":          # Mochi-like: the keys' text tokens differ
            tk = torch.cat([tb, t], 1)
        elif self.how == "text_after":        # the keys put the text after the grid
            tk = torch.cat([t, tb], 1)
        elif self.how == "grid_flipped":      # the keys' grid segment runs backwards
            tk = torch.cat([ta, t.flip(1)], 1)
        else:                                 # the keys' text is longer by one token
            tk = torch.cat([torch.cat([tb, tb[:, :1]], 1), t[:, 1:]], 1)
        o = F.scaled_dot_product_attention(heads(self.q(tq)), heads(self.k(tk)), heads(self.v(tk)))
        return merge(o)


# extra tokens are attended densely, so the keys' extra segments need only the queries'
# lengths; their grid segment must be the queries' grid at the same position
CASES += [Case(f"prov_text_keys_{how}", "provenance", lambda how=how: TextKeys(how),
               lambda g: (im(g), torch.randn(1, 3, 8, generator=g), torch.randn(1, 3, 8, generator=g)), [t])
          for how, t in (("other_text", Truth((H, W), 3, 0, rewrite=True)), ("text_after", DENSE),
                         ("grid_flipped", DENSE), ("shifted_boundary", DENSE))]
