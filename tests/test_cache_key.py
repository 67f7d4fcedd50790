"""Compile caches are tagged with the package's source hash (gna_compile/cache_key.py): a graph
cached by another version of the ops' autograd or passes must not be replayed."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch

import gna_compile
from gna_compile import cache_key


def test_import_tags_the_compile_caches_with_the_source_hash():
    # the hash of the source at import (it differs from source_hash() if a file changed since)
    assert re.fullmatch(r"gna_compile-[0-9a-f]{16}", torch.compiler.config.cache_key_tag.split("+")[-1])


def test_a_user_tag_is_kept_and_ours_is_not_repeated(monkeypatch):
    monkeypatch.setattr(torch.compiler.config, "cache_key_tag", "mine+gna_compile-0123456789abcdef")
    tag = cache_key.tag_compile_caches()
    assert tag == "mine+gna_compile-" + cache_key.source_hash()
    assert cache_key.tag_compile_caches() == tag


def test_the_hash_follows_any_source_change(tmp_path):
    src = tmp_path / "pkg"
    shutil.copytree(gna_compile.__path__[0], src, ignore=shutil.ignore_patterns("__pycache__"))
    before = cache_key.source_hash(str(src))
    assert before == cache_key.source_hash()
    (src / "kernels" / "op.py").write_text((src / "kernels" / "op.py").read_text() + "\n# changed\n")
    assert cache_key.source_hash(str(src)) != before


def test_a_zip_install_hashes_the_same_files(tmp_path):
    """importlib.resources reads a zipped package: the same hash as the directory."""
    import zipfile
    root = gna_compile.__path__[0]
    z = tmp_path / "pkg.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                path = os.path.join(dirpath, name)
                zf.write(path, os.path.join("gna_compile", os.path.relpath(path, root)))
    with zipfile.ZipFile(z) as zf:
        assert cache_key.source_hash(zipfile.Path(zf, "gna_compile/")) == cache_key.source_hash(root)


def test_an_install_without_sources_hashes_its_pyc(tmp_path):
    """A sourceless install (compileall -b, .py removed) still follows changes to its code."""
    import compileall
    src = tmp_path / "pkg"
    shutil.copytree(gna_compile.__path__[0], src, ignore=shutil.ignore_patterns("__pycache__"))
    compileall.compile_dir(str(src), legacy=True, quiet=1)
    for py in src.rglob("*.py"):
        py.unlink()
    before = cache_key.source_hash(str(src))
    assert before is not None and before != cache_key.source_hash()
    pyc = src / "kernels" / "op.pyc"
    pyc.write_bytes(pyc.read_bytes() + b"\0")
    assert cache_key.source_hash(str(src)) != before


def test_no_code_at_all_gets_a_tag_of_its_own_per_process(monkeypatch, tmp_path):
    """Nothing to hash: a per-process tag and a warning, never a constant one shared by all
    versions."""
    (tmp_path / "empty").mkdir()
    assert cache_key.source_hash(str(tmp_path / "empty")) is None
    monkeypatch.setattr(cache_key, "source_hash", lambda root=None: None)
    monkeypatch.setattr(torch.compiler.config, "cache_key_tag", "")
    with pytest.warns(UserWarning, match="no .py or .pyc files"):
        a = cache_key.tag_compile_caches()
    with pytest.warns(UserWarning):
        b = cache_key.tag_compile_caches()
    assert a.startswith("gna_compile-process-") and a != b
