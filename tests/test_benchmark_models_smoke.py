"""The end-to-end benchmark script runs (tiny Cosmos on the CPU) and prints its table; --merge
joins the JSON of several runs into one report."""

from __future__ import annotations

import pytest

from scripts import load_script

pytest.importorskip("diffusers")


def _load():
    return load_script("benchmarks/models.py", "bench_models")


def test_models_benchmark_smoke(capsys):
    assert _load().main(["--model", "cosmos", "--size", "small", "--device", "cpu", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("eager dense (SDPA)", "compile default (dense)", "gna ", "gna, no hoisting",
                "gna in dense_attention()", "sampling loop, 35 steps, first 12 dense"):
        assert row in out, out


def test_merge_joins_runs_and_later_rows_win(tmp_path, capsys):
    import json
    row = lambda name, ms: dict(variant=name, ms=ms, compile_s=1.0, attn_share=0.5, perm_share=0.0,  # noqa: E731
                                peak_gib=1.0)
    a, b = tmp_path / "dense.json", tmp_path / "gna.json"
    a.write_text(json.dumps(dict(model="hunyuan", size="full", rows=[
        row("eager dense (SDPA)", 300.0), row("compile default (dense)", 200.0), row("gna", 99.0)])))
    b.write_text(json.dumps(dict(model="hunyuan", size="full", schedule=[10, 2], rows=[
        row("gna", 50.0), row("gna in dense_attention()", 210.0)])))
    assert _load().main(["--merge", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    lines = {ln.split("  ")[0]: ln for ln in out.splitlines()}
    assert "4.00x" in lines["gna"] and "gna.json" in lines["gna"], out  # b's row replaced a's
    assert "dense.json" in lines["compile default (dense)"], out
    # 10 steps: 2.0 s dense -> 2 * 0.21 + 8 * 0.05 = 0.82 s
    assert "first 2 dense (hybrid schedule): 2.0 s dense -> 0.8 s GNA hybrid = 2.44x" in out, out
    c = tmp_path / "flux.json"
    c.write_text(json.dumps(dict(model="flux", size="full", rows=[row("gna", 1.0)])))
    with pytest.raises(SystemExit, match="flux run"):
        _load().main(["--merge", str(a), str(c)])
