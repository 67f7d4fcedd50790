"""Token permutation: exact round trips, tile boxes contiguous, extras untouched."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from gna_compile import permute_tokens, unpermute_tokens
from gna_compile.kernels.permute import padded_shape, permutation_index


@st.composite
def layouts(draw):
    rank = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(1, 7)) for _ in range(rank))
    tile = tuple(draw(st.integers(1, 5)) for _ in range(rank))
    return shape, tile, draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.booleans())


@settings(max_examples=120, deadline=None)
@given(layouts())
def test_round_trip_is_exact(case):
    shape, tile, pre, post, hidden_layout = case
    n = pre + math.prod(shape) + post
    x = torch.randn(2, n, 5) if hidden_layout else torch.randn(2, 3, n, 4)
    y = permute_tokens(x, shape, tile, pre, post)
    assert y.shape[-2] == pre + math.prod(padded_shape(shape, tile)) + post
    assert torch.equal(y[..., :pre, :], x[..., :pre, :])
    assert torch.equal(y[..., y.shape[-2] - post:, :], x[..., n - post:, :])
    assert torch.equal(unpermute_tokens(y, shape, tile, pre, post), x)


@pytest.mark.parametrize("shape,tile", [((5, 7), (2, 4)), ((3, 4, 5), (2, 2, 4)), ((9,), (4,))])
def test_each_tile_box_is_contiguous(shape, tile):
    # Build the expected order independently: tile grid row-major, then row-major inside a tile.
    pshape = padded_shape(shape, tile)
    expected = []
    for t in itertools.product(*[range(p // e) for p, e in zip(pshape, tile)]):
        for i in itertools.product(*[range(e) for e in tile]):
            coord = [a * e + b for a, e, b in zip(t, tile, i)]
            inside = all(c < n for c, n in zip(coord, shape))
            expected.append(sum(c * math.prod(shape[j + 1:]) for j, c in enumerate(coord)) if inside else -1)
    assert permutation_index(shape, tile).tolist() == expected


def test_padding_rows_are_zero():
    x = torch.randn(1, 1, 5 * 7, 2)
    y = permute_tokens(x, (5, 7), (2, 4))
    idx = permutation_index((5, 7), (2, 4))
    assert torch.equal(y[0, 0][idx < 0], torch.zeros(int((idx < 0).sum()), 2))


def test_bad_arguments():
    x = torch.randn(1, 12, 3)
    with pytest.raises(ValueError, match="token dim"):
        permute_tokens(x, (3, 5), (1, 1))
    with pytest.raises(ValueError, match="tile"):
        permute_tokens(x, (3, 4), (2,))
    with pytest.raises(ValueError, match="tile extent"):
        permute_tokens(x, (3, 4), (0, 2))
