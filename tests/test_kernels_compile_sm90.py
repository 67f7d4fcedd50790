"""The Triton backward kernels compile for Hopper (sm_90, to PTX) on this CPU-only machine.

Why: the interpreter runs the kernels as Python, so what only the real compiler sees (a
loop-carried value changing type, a name bound only in a constexpr branch, an op the NVIDIA
backend rejects) would first fail on the GPU. Both loop structures, with and without every
optional feature; the local Triton may be newer than the GPU's, so this is a floor, not proof.
Each compile runs in a child process: the test session imports Triton in interpreter mode
(tests/conftest.py), where kernels are not compilable objects.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PTR = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "DO": "*bf16", "DK": "*bf16", "DV": "*bf16", "DQ": "*bf16",
       "LSE": "*fp32", "DELTA": "*fp32", "KM": "*i8", "QT": "*i32", "FT": "*i32"}
BASE = dict(TQ0=1, TQ1=8, TQ2=16, TK0=1, TK1=8, TK2=16, BM=128, BN=128, D=64, C0=False, C1=True, C2=False)


def compile_for_sm90(kernel: str, split: bool, features: bool) -> str:
    """The PTX of one backward kernel (run without TRITON_INTERPRET)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gna_compile.kernels.hopper import triton_bwd
    fn = getattr(triton_bwd, kernel)
    step = dict(SUB_M=64) if kernel == "_gna_bwd_dkdv" else dict(SUB_N=64)
    consts = dict(BASE, SPLIT=split, DIL=features, KM_GRID=features, HAS_KM=features, HAS_EXTRA=features, **step)
    sig = {a: "constexpr" if a in consts else PTR.get(a, "fp32" if a in ("qk_scale", "scale") else "i32")
           for a in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=8, num_stages=2))
    return k.asm["ptx"]


@pytest.mark.parametrize("features", [False, True], ids=["plain", "mask-extras-dilation"])
@pytest.mark.parametrize("split", [False, True], ids=["branch", "split"])
@pytest.mark.parametrize("kernel", ["_gna_bwd_dkdv", "_gna_bwd_dq"])
def test_backward_kernel_compiles_for_sm90(kernel, split, features):
    pytest.importorskip("triton")
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, os.path.join(root, "tests"), env.get("PYTHONPATH", "")])
    code = (f"import test_kernels_compile_sm90 as t; ptx = t.compile_for_sm90({kernel!r}, {split}, {features}); "
            "print('.target sm_90' in ptx)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("True"), r.stdout[-500:]
