"""Runs tools/sm90_compile.py (Hopper SASS without a GPU) for the SASS tests. Not collected by
pytest (no test_ prefix)."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
H100_SMEM = 227 * 1024


def have_ptxas() -> bool:
    """Whether the installed Triton ships the NVIDIA toolchain the compile needs."""
    import triton
    return os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"))


def compile_summary(tmp_path, *flags, case="flux_s16"):
    """The summary sm90_compile.py prints for one case (interpretation off)."""
    out = tmp_path / "r.json"
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sm90_compile.py"), "--case", case,
                    "--json", str(out), *flags], check=True, env=env, capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())[case]
