"""The ring-sharding planner's halo counts (tools/halo_plan.py, docs/ring_sharding.md) equal a
brute force over the dense GNA mask: for each rank's slab of queries, the keys it attends
that other ranks own."""

import itertools
from types import SimpleNamespace

import pytest
import torch

from gna_compile.config import make_spec
from gna_compile.mask import dense_mask
from scripts import load_script


def _plan():
    return load_script("tools/halo_plan.py", "halo_plan")


@pytest.mark.parametrize("shape,window,stride,tiles,parts", [
    ((8, 12), (3, 5), (1, 2), (2, 4), (2, 2)),
    ((6, 8, 8), (3, 4, 3), (1, 2, 1), (2, 2, 4), (2, 1, 2)),
    ((16,), (5,), (2,), (4,), (4,)),
])
def test_halo_tokens_equal_brute_force(shape, window, stride, tiles, parts):
    hp = _plan()
    a = SimpleNamespace(shape=shape, window=window, stride=stride, q_tile=tiles, kv_tile=tiles, extra=0,
                        head_dim=8, bytes=2, heads=4, tflops=500.0, gpus_per_node=8, nvlink=400.0, ib=45.0)
    got = hp.evaluate(a, 1, parts)
    mask = dense_mask(make_spec(shape, window, stride))
    coords = list(itertools.product(*[range(n) for n in shape]))
    for row in got["rows"]:
        own = torch.tensor([all(c.own[0] <= x <= c.own[1] for c, x in zip(row["box"], xyz)) for xyz in coords])
        needed = mask[own].any(0)
        assert row["halo"] == int((needed & ~own).sum()), row["box"]
        assert row["pairs"] == int(mask[own].sum())
