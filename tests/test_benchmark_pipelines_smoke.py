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
    # hybrid and gna share one compile, warmed in both modes: their timed loops compile nothing
    assert [rows[v]["new_graphs"] for v in ("dense", "hybrid", "gna")] == [0, 0, 0]
    assert rows["hybrid"]["compile_s"] == rows["gna"]["compile_s"]
    torch._dynamo.reset()


def test_variants_split_over_runs_merge_into_one_table(tmp_path, capsys):
    """--variants over two runs, then --merge: one table with the speedups against the other
    run's dense loop; runs of different step counts are refused."""
    import torch
    bench = _load()
    base = ["--model", "flux", "--size", "small", "--device", "cpu", "--steps", "2", "--dense-steps", "1",
            "--inner", "aot_eager"]
    for name, variants in (("a", "dense"), ("b", "hybrid,gna")):
        torch._dynamo.reset()
        assert bench.main(base + ["--variants", variants, "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    a, b = tmp_path / "a" / "pipelines_flux.json", tmp_path / "b" / "pipelines_flux.json"
    assert bench.main(["--model", "flux", "--merge", str(a), str(b), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    loops = {r["variant"]: r["loop_s"] for f in (a, b) for r in json.loads(f.read_text())["rows"]}
    line = next(s for s in out.splitlines() if s.startswith("hybrid "))
    assert f"{loops['dense'] / loops['hybrid']:7.2f}" in line, (line, loops)
    assert (tmp_path / "pipelines_flux_merged.png").read_bytes().startswith(b"\x89PNG")
    other = json.loads(b.read_text())
    other["steps"] = 3
    c = tmp_path / "c.json"
    c.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="differ in"):
        bench.main(["--model", "flux", "--merge", str(a), str(c)])
    torch._dynamo.reset()
