"""The end-to-end benchmark script runs (tiny Cosmos on the CPU) and prints its table."""

from __future__ import annotations

import importlib.util
import os

import pytest

pytest.importorskip("diffusers")


def test_models_benchmark_smoke(capsys):
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "models.py")
    spec = importlib.util.spec_from_file_location("bench_models", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--model", "cosmos", "--size", "small", "--device", "cpu", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("eager dense (SDPA)", "compile default (dense)", "gna ", "gna, no hoisting",
                "gna in dense_attention()", "sampling loop, 35 steps, first 12 dense"):
        assert row in out, out
