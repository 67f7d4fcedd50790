"""Masking penalty of partial tiles, used by NATTENSim's simulated speedup.

A *partial* KV-tile visit runs the fine-grained mask; a *full* one runs unmasked. The
penalty is the cost of a partial visit relative to a full one, measured on the Triton kernel
(H100, bf16, d=128; benchmarks/NOTES.md, run 3): the time per full 128x128-equivalent visit
from the perfectly block-sparse FLUX/Hunyuan cases, then the partial cost that fits the s=1
cases: 1.8x (FLUX, 8x8 KV tiles) and 1.5x (Hunyuan, 4x4x4 KV tiles); 1.6 in between.
"""

MASK_PENALTY: float = 1.6
"""Cost of a partial KV-tile visit relative to a full one (measured, see module docstring)."""
