"""Numbers the Hopper kernels and their launchers share (one place, no copies)."""

from __future__ import annotations

import math

LOG2E = 1.4426950408889634   # softmax in base 2: log2(e) is folded into the score scale
LN2 = 0.6931471805599453     # base-2 row sums -> natural-log LSE
# Frozen row max (STALE variants): a row sum outside [2^-60, 2^64) sends the Q tile through the
# exact loop again (the first tile's keys are all attended, so an honest sum is >= 1).
ROW_SUM_MIN = 2.0 ** -60
ROW_SUM_MAX = 2.0 ** 64
TRITON_HEAD_DIMS = (32, 64, 128)
TRITON_TILE_TOKENS = (16, 32, 64, 128)   # Q and KV tiles: powers of two up to 128 tokens
GLUON_BLOCK = 128                        # the Gluon kernel: Q tile = KV tile = 128 tokens
GLUON_HEAD_DIMS = (64, 128)

assert ROW_SUM_MIN == 8.673617379884035e-19 and ROW_SUM_MAX == 18446744073709551616.0
assert math.isclose(LOG2E * LN2, 1.0)


def pad3(t, fill):
    """A rank-1..3 per-dim tuple padded in front to 3 dims (the kernels are written for 3)."""
    t = tuple(t)
    return (fill,) * (3 - len(t)) + t
