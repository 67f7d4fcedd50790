"""Masking penalty of partial tiles, used by NATTENSim's simulated speedup.

A *partial* KV-tile visit runs the fine-grained mask; a *full* one runs unmasked. The
penalty is the cost of a partial visit relative to a full one. 1.0 (masking is free) until
a GPU measurement of the Triton kernel replaces it; keep the value and its source together.
"""

MASK_PENALTY: float = 1.0
"""Cost of a partial KV-tile visit relative to a full one (unmeasured placeholder: 1.0)."""
