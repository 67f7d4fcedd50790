"""examples/finetune.py trains a tiny DiT dense and with GNA on the CPU: both curves are
written (PNG + JSON), losses are finite and the GNA run learns (its loss falls)."""

from __future__ import annotations

import json
import math

from scripts import load_script


def test_finetune_example_runs_and_gna_learns(tmp_path, capsys):
    ft = load_script("examples/finetune.py", "finetune_example")
    assert ft.main(["--device", "cpu", "--size", "small", "--steps", "8", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ms/step" in out and "2 attention calls rewritten to GNA" in out, out
    png = tmp_path / "finetune.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = json.loads((tmp_path / "finetune.json").read_text())["runs"]
    assert set(runs) == {"dense", "gna"}
    for r in runs.values():
        assert len(r["losses"]) == 8 and all(math.isfinite(x) for x in r["losses"])
        assert r["step_ms"] > 0
    # Same init, same batches: the first losses differ only by the attention (close, not equal).
    assert abs(runs["dense"]["losses"][0] - runs["gna"]["losses"][0]) < 0.1
    g = runs["gna"]["losses"]
    first, last = sum(g[:3]) / 3, sum(g[-3:]) / 3
    assert last < 0.85 * first, g


def test_defaults_follow_the_device():
    ft = load_script("examples/finetune.py", "finetune_example")
    cpu = ft.parse_args(["--device", "cpu"])
    assert (cpu.steps, cpu.size, cpu.inner, cpu.bf16) == (5, "small", "eager", False)
    gpu = ft.parse_args(["--device", "cuda"])
    assert (gpu.steps, gpu.size, gpu.inner, gpu.bf16) == (300, "medium", "inductor", True)
    assert ft.median_step_ms([10.0, 0.001, 0.003, 0.002], warmup=1) == 2.0


def test_profile_prints_where_each_run_spends_its_steps(tmp_path, capsys):
    ft = load_script("examples/finetune.py", "finetune_example")
    assert ft.main(["--device", "cpu", "--size", "small", "--steps", "2", "--profile", "1",
                    "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("dense", "gna"):
        assert f"# {name}: 1 profiled steps, top kernels by self_cpu_time_total" in out, out
    assert out.count("Self CPU time total") == 2, out
    # The profiled steps are extra: the recorded curves keep --steps losses.
    runs = json.loads((tmp_path / "finetune.json").read_text())["runs"]
    assert all(len(r["losses"]) == 2 for r in runs.values())
