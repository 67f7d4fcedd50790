"""The benchmark competitor's block mask, built per tile (flex_backend.block_classes), equals
the one FlexAttention derives by evaluating the GNA mask_mod on every token pair."""

import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from gna_compile.config import make_spec
from gna_compile.kernels import flex_backend as fb

CASES = [
    ((20, 24), (7, 9), (2, 3), 1, False, (8, 16), 0, 0),
    ((20, 24), (7, 9), (1, 1), 1, False, (16, 8), 256, 0),
    ((5, 9, 11), (3, 4, 5), (1, 2, 3), 1, False, (2, 8, 8), 128, 0),
    ((16, 16), (4, 4), (4, 4), 1, False, (8, 16), 128, 0),
    ((24, 20), (5, 4), (1, 2), (2, 1), (True, False), (16, 8), 0, 128),
    ((33, 17), (9, 5), (3, 1), (1, 3), (False, True), (8, 16), 128, 256),
    ((16, 16), (4, 4), (4, 4), 1, False, (8, 16), 0, 128),
]


@pytest.mark.parametrize("shape,w,s,d,c,qt,P,S", CASES)
def test_block_mask_per_tile_equals_flex_evaluation(shape, w, s, d, c, qt, P, S):
    spec = make_spec(shape, w, s, d, c)
    n_tot = P + math.prod(-(-n // t) * t for n, t in zip(shape, qt)) + S
    ref = create_block_mask(fb.gna_mask_mod(spec, qt, P, S), None, None, n_tot, n_tot, device="cpu",
                            BLOCK_SIZE=fb.BLOCK)
    fb._block_mask_cached.cache_clear()
    ours = fb._block_mask_cached(spec, qt, P, S, n_tot, "cpu")
    assert torch.equal(ours.kv_num_blocks, ref.kv_num_blocks)
    assert torch.equal(ours.full_kv_num_blocks, ref.full_kv_num_blocks)
    assert torch.equal(ours.to_dense(), ref.to_dense())
    full_ref = torch.zeros_like(ref.to_dense())
    vis, full = fb.block_classes(spec, qt, P, S)
    for qb in range(vis.shape[0]):  # the full blocks are the same set, not just as many
        n = ref.full_kv_num_blocks[0, 0, qb]
        full_ref[0, 0, qb, ref.full_kv_indices[0, 0, qb, :n].long()] = 1
    assert torch.equal(full_ref[0, 0].bool(), full)


@pytest.mark.parametrize("qt,P", [((8, 8), 0), ((8, 16), 100)])
def test_block_mask_per_tile_refuses_unaligned_blocks(qt, P):
    """A 64-token Q tile or extra tokens that are not whole blocks: no per-tile mask
    (the cached builder then lets FlexAttention evaluate the mask_mod)."""
    with pytest.raises(ValueError, match="block-level mask needs"):
        fb.block_classes(make_spec((16, 16), (4, 4), (1, 1)), qt, P, 0)
