"""NATTENSim: exact tile-level cost model of GNA configs (DESIGN.md §3).

``simulate`` counts the KV tiles a tiled kernel visits (full vs partial) for one config;
``search`` ranks configs (windows, strides, tiles) by simulated speedup; ``candidate_tiles``
lists the tile pairs a kernel may use. CLI: ``python -m gna_compile.sim --help``.
"""

from .core import DimStats, SimResult, simulate
from .penalty import MASK_PENALTY
from .ranking import search
from .tiles import candidate_tiles, default_tile, is_kv_subtile

__all__ = ["simulate", "search", "candidate_tiles", "default_tile", "is_kv_subtile",
           "SimResult", "DimStats", "MASK_PENALTY"]
