"""Compile caches are tagged with the package's source hash (gna_compile/cache_key.py): a graph
cached by another version of the ops' autograd or passes must not be replayed."""

from __future__ import annotations

import re
import shutil

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
