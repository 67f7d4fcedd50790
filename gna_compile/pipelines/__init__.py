"""One call on a diffusers pipeline: ``gna_compile.enable(pipe)`` (see enable.py), the families
it knows and how each tells its token grid (families.py)."""

from .enable import backends, disable, enable, records, report
from .families import FAMILIES, Family, family_of

__all__ = ["enable", "disable", "backends", "records", "report", "FAMILIES", "Family", "family_of"]
