"""The Hopper kernel folder's host side: one settings module for every GNA_* switch (bad
values name the switch), named launch configs, settings in the autotune key, and the KV-tile
ranges the Gluon kernel reads instead of evaluating the window rule on the device."""

from __future__ import annotations

import itertools

import pytest
import torch

from gna_compile import settings
from gna_compile.mask import key_range
from gna_compile.sim.core import full_tile_ranges


@pytest.mark.parametrize("name,bad", [("GNA_TRITON_AUTOTUNE", "yes"), ("GNA_TRITON_TMA", "2"),
                                      ("GNA_GLUON", "auto"), ("GNA_TRITON_ON_CPU", "true")])
def test_bad_switch_value_names_switch_and_value(monkeypatch, name, bad):
    monkeypatch.setenv(name, bad)
    read = {"GNA_TRITON_AUTOTUNE": settings.autotune, "GNA_TRITON_TMA": settings.tma,
            "GNA_GLUON": settings.gluon_mode, "GNA_TRITON_ON_CPU": settings.triton_on_cpu}[name]
    with pytest.raises(ValueError, match=f"{name}='{bad}'"):
        read()


def test_switches_read_at_call_time(monkeypatch):
    monkeypatch.delenv("GNA_GLUON", raising=False)
    assert settings.gluon_mode() == "auto"
    monkeypatch.setenv("GNA_GLUON", "0")
    assert settings.gluon_mode() == "off"
    monkeypatch.setenv("GNA_COMPILE_BACKEND", "reference")
    assert settings.forced_backend() == "reference"


def test_no_module_reads_a_gna_switch_but_settings():
    """One place: every os.environ read of a GNA_* name is in settings.py."""
    import pathlib
    import re
    root = pathlib.Path(settings.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "settings.py"
                 and re.search(r"environ(\.get)?\(?\[?['\"]GNA_|getenv\(['\"]GNA_", p.read_text())]
    assert offenders == []


def test_autotune_key_holds_every_switch(monkeypatch):
    pytest.importorskip("triton")
    from gna_compile.kernels.hopper import autotune
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "fake")
    monkeypatch.setenv("GNA_TRITON_TMA", "1")
    a = autotune.cache_key(("p",), "cpu")
    monkeypatch.setenv("GNA_TRITON_TMA", "0")
    assert autotune.cache_key(("p",), "cpu") != a
    monkeypatch.setenv("GNA_TRITON_TMA", "1")
    assert autotune.cache_key(("p",), "cpu") == a


def test_launch_configs_are_named_and_checked(monkeypatch):
    pytest.importorskip("triton")
    from gna_compile.kernels.hopper.configs import GluonConfig, TritonConfig, parse_configs, triton_candidates
    assert parse_configs("8,3,0,2,1") == (TritonConfig(8, 3, False, 2, True),)
    monkeypatch.setenv("GNA_TRITON_CONFIGS", "4,2;8,3,0,0,1")
    assert triton_candidates(128) == (TritonConfig(4, 2), TritonConfig(8, 3, stale=True))
    with pytest.raises(ValueError, match="GNA_TRITON_CONFIGS='8'"):
        parse_configs("8")
    with pytest.raises(ValueError, match="fma_exp"):
        TritonConfig(8, 3, fma_exp=3)
    with pytest.raises(ValueError, match="stages must be 2 or 3"):
        GluonConfig(4)


def test_forward_refuses_a_gluon_config_for_a_call_it_cannot_take():
    pytest.importorskip("triton")
    from gna_compile.config import make_spec
    from gna_compile.kernels.hopper import forward
    from gna_compile.kernels.hopper.configs import GluonConfig
    spec = make_spec((16,), 4, 1)
    q = torch.randn(1, 1, 16, 32)
    with pytest.raises(ValueError, match="does not take this call"):
        forward.gna_forward(q, q, q, spec, (16,), (16,), config=GluonConfig())
    with pytest.raises(TypeError, match="TritonConfig or GluonConfig"):
        forward.gna_forward(q, q, q, spec, (16,), (16,), config=(8, 3))


@pytest.mark.parametrize("n,w,s,c,t", [(n, w, s, c, t) for n, w, s, c, t in itertools.product(
    (16, 30, 48), (4, 7, 16), (1, 3, 8), (False, True), (4, 8)) if w <= n and s <= w])
def test_full_tile_ranges_are_the_fully_seen_tiles(n, w, s, c, t):
    """Brute force from the window rule: KV tile j is full for Q tile i iff every query of i
    sees every key of j (and j holds no padding); the full tiles form the range returned."""
    got = full_tile_ranges(n, w, s, c, t, t)
    for i, (lo, hi) in enumerate(got):
        qs = range(i * t, min(i * t + t, n))
        full = [j for j in range(-(-n // t)) if (j + 1) * t <= n and all(
            key_range(q, n, w, s, 1, c)[0] <= j * t and j * t + t - 1 <= key_range(q, n, w, s, 1, c)[1]
            for q in qs)]
        assert list(range(lo, hi + 1)) == full, (i, lo, hi, full)
