"""The sampling-loop benchmark runs (tiny FLUX pipeline on the CPU, Dynamo's aot_eager) and
prints its table; the per-step plot is a PNG; each variant records its steps (the schedule itself
is tested in test_pipelines.py)."""

from __future__ import annotations

import json

import pytest

from scripts import load_script

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


def _load():
    return load_script("benchmarks/pipelines.py", "bench_pipelines")


def test_pipelines_benchmark_smoke(tmp_path, capsys):
    import torch
    torch._dynamo.reset()
    assert _load().main(["--model", "flux", "--size", "small", "--device", "cpu", "--steps", "3",
                         "--dense-steps", "1", "--inner", "aot_eager", "--compare", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sampling loop, 3 steps (fewer than the pipeline's 28 steps, same dense share: 1/3)" in out, out
    for v in ("dense", "hybrid", "gna"):
        assert f"\n{v} " in out, out
    png = (tmp_path / "pipelines_flux.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    rows = {r["variant"]: r for r in json.loads((tmp_path / "pipelines_flux.json").read_text())["rows"]}
    assert [rows[v]["dense_steps"] for v in ("dense", "hybrid", "gna")] == [3, 1, 0]
    assert all(len(r["per_step_s"]) == 3 for r in rows.values())
    torch._dynamo.reset()
