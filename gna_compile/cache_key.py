"""Tag torch.compile's on-disk caches with a hash of gna_compile's source.

PyTorch's AOTAutograd and FX graph caches key a compiled graph on its Dynamo graph, which
names our custom ops but not their Python autograd formulas, fake implementations or the
graph passes the backend runs. After gna_compile changes, a graph cached by the old code would
be replayed as it was traced then: an error at best (an op's schema changed), silently old
gradients at worst. Appending this hash to ``torch.compiler.config.cache_key_tag`` gives every
version of the source its own cache entries; a tag the user set is kept in front of ours.
"""

from __future__ import annotations

import hashlib
import os

import torch

__all__ = ["source_hash", "tag_compile_caches"]

_PREFIX = "gna_compile-"


def source_hash(root: str | None = None) -> str:
    """sha256 (16 hex digits) of every ``.py`` file under ``root`` (default: this package),
    with its relative path."""
    root = root or os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(f for f in filenames if f.endswith(".py")):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def tag_compile_caches() -> str:
    """Append (once) this source's hash to the compile cache tag; returns the tag."""
    cfg = torch.compiler.config
    ours = _PREFIX + source_hash()
    parts = [p for p in cfg.cache_key_tag.split("+") if p and not p.startswith(_PREFIX)]
    cfg.cache_key_tag = "+".join([*parts, ours])
    return cfg.cache_key_tag
