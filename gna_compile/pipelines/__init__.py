"""One call on a diffusers pipeline: ``gna_compile.enable(pipe)`` (see enable.py), the families
it knows and how each tells its token grid (families.py)."""

from .enable import backends, disable, enable, records
from .families import FAMILIES, Family, family_of

__all__ = ["enable", "disable", "backends", "records", "FAMILIES", "Family", "family_of"]
