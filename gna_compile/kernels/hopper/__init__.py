"""Hopper (sm_90) GNA forward kernels, one job per file:

- ``constants.py``: numbers the kernels and launchers share;
- ``configs.py``: named launch configs and the autotuner's candidates (data);
- ``autotune.py``: per-problem choice among candidates, cached with every GNA_* switch;
- ``triton_fwd.py`` / ``triton_launch.py``: the Triton kernel (masked and unmasked tiles,
  natural or tiled order) and its launch;
- ``gluon_fwd.py`` / ``gluon_launch.py``: the Gluon kernel (perfectly block-sparse calls,
  softmax under the PV matmul) and its launch;
- ``forward.py``: the entry point that routes between them;
- ``triton_bwd.py`` / ``triton_bwd_launch.py`` / ``backward.py``: the Triton backward
  (dK/dV per KV tile, dQ per Q tile, tiled order) and its entry points.
Tile shapes come from kernels/tile_choice.py; the window rule from gna_compile.mask.
"""

from .constants import TRITON_HEAD_DIMS
from .backward import gna_backward, gna_backward_permuted, why_not_backward, why_not_backward_permuted
from .forward import gna_attention_permuted, gna_forward

__all__ = ["gna_forward", "gna_attention_permuted", "gna_backward", "gna_backward_permuted",
           "why_not_backward", "why_not_backward_permuted", "TRITON_HEAD_DIMS"]
