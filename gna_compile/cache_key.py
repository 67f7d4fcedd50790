"""Tag torch.compile's on-disk caches with a hash of gna_compile's source.

PyTorch's AOTAutograd and FX graph caches key a compiled graph on its Dynamo graph, which
names our custom ops but not their Python autograd formulas, fake implementations or the
graph passes the backend runs. After gna_compile changes, a graph cached by the old code would
be replayed as it was traced then: an error at best (an op's schema changed), silently old
gradients at worst. Appending this hash to ``torch.compiler.config.cache_key_tag`` gives every
version of the source its own cache entries; a tag the user set is kept in front of ours.

The package is read through importlib.resources, so a zip or wheel-in-zip install hashes
the same files as a directory; an install without sources hashes its ``.pyc`` files. A
package with neither (no readable code at all) gets a tag of its own per process: its
graphs are never shared across processes, which costs compile time, never soundness.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import warnings
from importlib import resources
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # importlib.abc.Traversable is deprecated from Python 3.12
    from importlib.resources.abc import Traversable

__all__ = ["source_hash", "tag_compile_caches"]

_PREFIX = "gna_compile-"
_CODE = (".py", ".pyc")


def _files(node: "Traversable", rel: str = ""):
    """(relative path, Traversable) of every code file under ``node``, sorted, no __pycache__
    (its .pyc are compiled from the .py we already read)."""
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        path = f"{rel}{child.name}"
        if child.is_dir():
            if child.name != "__pycache__":
                yield from _files(child, path + "/")
        elif child.name.endswith(_CODE):
            yield path, child


def source_hash(root: "str | Traversable | None" = None) -> str | None:
    """sha256 (16 hex digits) of every ``.py`` and ``.pyc`` file under ``root`` (default: this
    package, wherever it was imported from), with its relative path; None if there is none."""
    if root is None:
        root = resources.files(__package__)
    elif isinstance(root, (str, os.PathLike)):
        root = _Dir(os.fspath(root))
    h, n = hashlib.sha256(), 0
    for rel, f in _files(root):
        h.update(rel.encode())
        h.update(f.read_bytes())
        n += 1
    return h.hexdigest()[:16] if n else None


class _Dir:
    """A directory as a minimal Traversable (iterdir, is_dir, name, read_bytes)."""

    def __init__(self, path):
        self.path, self.name = path, os.path.basename(path)

    def iterdir(self):
        return (_Dir(os.path.join(self.path, n)) for n in os.listdir(self.path))

    def is_dir(self):
        return os.path.isdir(self.path)

    def read_bytes(self):
        with open(self.path, "rb") as f:
            return f.read()


def tag_compile_caches() -> str:
    """Append (once) this source's hash to the compile cache tag; returns the tag."""
    cfg = torch.compiler.config
    digest = source_hash()
    if digest is None:
        digest = "process-" + secrets.token_hex(8)
        warnings.warn("gna_compile: no .py or .pyc files found in the installed package, so compile caches "
                      "cannot be keyed on its code: this process's compiled graphs get a cache tag of their own "
                      "(never reused by another process)", stacklevel=2)
    ours = _PREFIX + digest
    parts = [p for p in cfg.cache_key_tag.split("+") if p and not p.startswith(_PREFIX)]
    cfg.cache_key_tag = "+".join([*parts, ours])
    return cfg.cache_key_tag
