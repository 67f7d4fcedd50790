"""Launch configs of the Hopper forward kernels, as data: what each field does and which
candidates the autotuner times per problem (autotune.py keeps the fastest).

H100/H200 trials behind the defaults (benchmarks/NOTES.md): the frozen row max (``stale``)
was the fastest Triton config on all five 128-token cases (5-10% over exact); ``fma_exp``
gains 0-3%, only with stale; 2 stages always lost with 128-token tiles. Triton 3.6's
warp-specialisation pass leaves this loop unchanged with 8 warps (same SASS) and fails with 4
(run 6), so ``warp_specialize`` stays off. 2-CTA/SM configs (BN=64, fewer stages) were all
slower than one CTA with 3 stages. Gluon (run 9, H200, four block-sparse cases): 2 stages +
frozen max fastest on all four, 3 stages + frozen max 1-13% behind, the exact loops 5-14%
behind (not tried).
"""

from __future__ import annotations

from dataclasses import dataclass

from ... import settings

__all__ = ["TritonConfig", "GluonConfig", "triton_candidates", "GLUON_CANDIDATES", "GLUON_FORCED",
           "INTERPRET_CONFIG", "parse_configs", "TritonBwdConfig", "BWD_DEFAULT", "BWD_CANDIDATES",
           "BWD_INTERPRET_CONFIG"]


@dataclass(frozen=True)
class TritonConfig:
    """The Triton kernel (triton_fwd._gna_fwd). ``fma_exp``: 1 or 2 puts 1/2 or 1/4 of the
    unmasked tiles' exponentials on the FMA pipe (16-bit inputs only); ``stale``: frozen row
    max in the unmasked loop, exact redo when a row sum leaves [2^-60, 2^64)."""
    num_warps: int = 8
    num_stages: int = 3
    warp_specialize: bool = False
    fma_exp: int = 0
    stale: bool = False

    def __post_init__(self):
        object.__setattr__(self, "warp_specialize", bool(self.warp_specialize))  # 0/1 from tuples
        object.__setattr__(self, "stale", bool(self.stale))
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1 or self.fma_exp not in (0, 1, 2):
            raise ValueError(f"{self}: num_warps in 1..16 (power of 2), num_stages >= 1, fma_exp in 0..2")

    def __str__(self):
        return (f"triton(warps={self.num_warps}, stages={self.num_stages}"
                + (", ws" if self.warp_specialize else "") + (f", fma_exp={self.fma_exp}" if self.fma_exp else "")
                + (", stale" if self.stale else "") + ")")


@dataclass(frozen=True)
class GluonConfig:
    """A Gluon kernel: K/V ``stages`` (2 or 3), the frozen row max (``stale``, with its redo
    launch), ``ws``: the warp-specialised kernel (gluon_ws_fwd._gna_fwd_ws) instead of
    gluon_fwd._gna_fwd_gluon, and there ``pingpong``: its two consumer warpgroups take turns
    to issue their matmuls, and ``persistent``: one program per SM walks the (Q tile, head,
    batch) items, the next item's loads overlapping the current one's end. The
    warp-specialised kernel double-buffers Q and stages O apart, so with head dim 128 it
    takes 2 stages only (shared memory)."""
    stages: int = 2
    stale: bool = True
    ws: bool = False
    pingpong: bool = True
    persistent: bool = False

    def __post_init__(self):
        for f in ("stale", "ws", "pingpong", "persistent"):
            object.__setattr__(self, f, bool(getattr(self, f)))
        if self.stages not in (2, 3):
            raise ValueError(f"{self}: stages must be 2 or 3")

    def __str__(self):
        return (("gluon_ws" if self.ws else "gluon") + f"(stages={self.stages}" + (", stale" if self.stale else "")
                + (", no pingpong" if self.ws and not self.pingpong else "")
                + (", persistent" if self.ws and self.persistent else "") + ")")


_TRITON_DEFAULTS = {
    128: (TritonConfig(8, 3, stale=True), TritonConfig(8, 3, fma_exp=2, stale=True), TritonConfig(8, 3)),
    64: (TritonConfig(4, 2, stale=True), TritonConfig(4, 2), TritonConfig(4, 3), TritonConfig(8, 2)),
}
# Run 11 (H200): the warp-specialised kernel, 626-673 TFLOP/s, beat the other Gluon kernel
# (515-555) on every block-sparse case; persistent won except with FLUX's text tiles.
GLUON_CANDIDATES = tuple(GluonConfig(2, True, ws=True, pingpong=pp, persistent=pe)
                         for pp in (False, True) for pe in (True, False))
GLUON_FORCED = GluonConfig(2, True, ws=True, pingpong=False, persistent=True)  # GNA_GLUON=1, untimed
INTERPRET_CONFIG = TritonConfig(4, 1)      # TRITON_INTERPRET=1: the launch config does not matter


def parse_configs(text: str) -> tuple:
    """``"8,3,0,0,1;4,2"`` -> TritonConfigs (fields in TritonConfig's order)."""
    out = []
    for part in text.split(";"):
        try:
            vals = [int(x) for x in part.split(",")]
            if not 2 <= len(vals) <= 5:
                raise ValueError(f"{len(vals)} fields")
            nw, ns, ws, fx, st = (vals + [0, 0, 0])[:5]
            out.append(TritonConfig(nw, ns, bool(ws), fx, bool(st)))
        except ValueError as e:
            raise ValueError(f"GNA_TRITON_CONFIGS={text!r}: {part!r} is not "
                             f"num_warps,num_stages[,warp_specialize[,fma_exp[,stale]]] ({e})") from None
    return tuple(out)


def triton_candidates(q_tile_tokens: int) -> tuple:
    """The Triton configs timed for a Q tile of this many tokens (GNA_TRITON_CONFIGS overrides)."""
    env = settings.triton_configs()
    if env:
        return parse_configs(env)
    return _TRITON_DEFAULTS[q_tile_tokens if q_tile_tokens in _TRITON_DEFAULTS else 64]


@dataclass(frozen=True)
class TritonBwdConfig:
    """The Triton backward kernels (triton_bwd): one config for the dK/dV and dQ launches.
    ``block_m``: query rows per dK/dV step, ``block_n``: keys per dQ step (each capped at its
    tile; smaller steps keep the scores beside the [tile, D] fp32 accumulators in registers).
    ``split``: the forward's loop structure (an unmasked loop over full tiles, then a masked
    one over the rest, loads at the top of each body) instead of one loop that branches per
    tile; proven in the interpreter, not yet on the GPU, so no default picks it."""
    num_warps: int = 8
    num_stages: int = 2
    block_m: int = 128
    block_n: int = 128
    split: bool = False

    def __post_init__(self):
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1:
            raise ValueError(f"{self}: num_warps in 1..16 (power of 2), num_stages >= 1")
        if self.split not in (0, 1):  # 0/1 as --bwd-configs parses it
            raise ValueError(f"{self}: split must be a bool")
        object.__setattr__(self, "split", bool(self.split))
        for name in ("block_m", "block_n"):
            b = getattr(self, name)
            if b not in (16, 32, 64, 128):
                raise ValueError(f"{self}: {name}={b} must be 16, 32, 64 or 128")

    def steps(self, BM: int, BN: int) -> tuple[int, int]:
        """(SUB_M, SUB_N) for tiles of BM queries and BN keys."""
        return min(self.block_m, BM), min(self.block_n, BN)


BWD_DEFAULT = TritonBwdConfig(8, 2, 128, 128)
# H200 probe (run 13, Triton 3.6, bf16 D=128, gradients checked on two heads first): whole
# 128-token tiles at 8 warps lead on every case measured (FLUX s=16^2 46.3 ms, s=1 58.7,
# Cosmos 34.5; stages make no difference there); 32-row steps at 8 warps and 3 stages 56.6 ms,
# 64/64 steps 79-122 ms. 8 warps, 2 stages with 32-row dK/dV steps gave WRONG dK (rel. L2
# 0.107, dQ/dV right; 3 stages, 1 stage or 4 warps right, and the interpreter agrees with the
# oracle): a miscompile we have not isolated, so sub-tile steps are never picked by default.
BWD_CANDIDATES = (BWD_DEFAULT,)
BWD_INTERPRET_CONFIG = TritonBwdConfig(4, 1, 16, 16)  # TRITON_INTERPRET=1: the launch config does not matter
