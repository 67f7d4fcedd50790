"""Sequence parallelism for GNA (Ulysses): ulysses.py."""

from .ulysses import ulysses_gna_attention

__all__ = ["ulysses_gna_attention"]
