"""One call on a diffusers pipeline: ``gna_compile.enable(pipe)`` (see enable.py), the families
it knows and how each tells its token grid (families.py)."""

from .enable import backends, disable, enable, records, report, set_dense_steps
from .families import FAMILIES, Family, family_of

__all__ = ["enable", "disable", "set_dense_steps", "backends", "records", "report", "FAMILIES", "Family", "family_of"]
