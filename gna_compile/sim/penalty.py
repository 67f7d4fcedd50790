"""Masking penalty of partial tiles, used by NATTENSim's simulated speedup.

A *partial* KV-tile visit runs the fine-grained mask; a *full* one runs unmasked. The
penalty is the cost of a partial visit relative to a full one, measured on the Triton kernel
(H100, bf16, d=128; `benchmarks/kernels.py` prints the fit, benchmarks/NOTES.md): the time per
full 128x128-equivalent visit from the perfectly block-sparse FLUX/Hunyuan/Cosmos cases, then
the partial cost that fits the s=1 cases. Run 3 (first kernel) gave 1.8 (FLUX, 8x8 KV tiles)
and 1.5 (Hunyuan, 4x4x4 KV tiles); after the leaner masked loop, two runs of run 7 gave
1.24/1.29 (FLUX) and 1.35/1.33 (Hunyuan): 1.3.
"""

MASK_PENALTY: float = 1.3
"""Cost of a partial KV-tile visit relative to a full one (measured, see module docstring)."""
