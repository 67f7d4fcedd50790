"""The GPU kernel, compiled for Hopper (sm_90a) on this machine without a GPU.

Interpret mode checks the kernel's arithmetic but not what the compiler makes of it; these
checks read the SASS (tools/sm90_compile.py, in a subprocess with interpretation off) and fail
on the regressions that cost speed silently: register spills or shared-memory round trips in
the attention loops, a shared-memory footprint over the H100's 227 KB, or a softmax variant
(exponential split, frozen row max) that does not take effect.
"""

import pytest

from sm90 import H100_SMEM, have_ptxas
from sm90 import compile_summary as _compile

pytest.importorskip("triton")
if not have_ptxas():
    pytest.skip("this Triton has no NVIDIA toolchain (ptxas)", allow_module_level=True)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("tiled"))


def test_tiled_tma_kernel_is_clean(tiled):
    r = tiled
    assert len(r["loop_ex2"]) == 2, f"expected the full and the masked loop, got {r['loop_ex2']}"
    assert r["loop_spills"] == 0 and r["loop_lds_sts"] == 0, r
    assert r["smem"] <= H100_SMEM and r["regs"] <= 255, r
    # 128x128 tile, 256 threads: 64 scores per thread, plus the row rescale(s).
    assert 64 <= r["loop_ex2"][0] <= 70, r


def test_fma_exp_quarter_moves_16_exponentials_per_thread(tiled, tmp_path):
    r = _compile(tmp_path, "--variant", "FMA_EXP=2")
    assert r["loop_ex2"][0] == tiled["loop_ex2"][0] - 16, (r["loop_ex2"], tiled["loop_ex2"])
    assert r["loop_ex2"][1] == tiled["loop_ex2"][1], "the masked loop must keep MUFU exponentials"
    assert r["loop_spills"] == 0 and r["loop_lds_sts"] == 0 and r["loop_shfl"] == tiled["loop_shfl"], r


def test_frozen_max_loop_has_no_max_and_no_rescale(tiled, tmp_path):
    """STALE: the unmasked loop does exactly one exponential per score (no rescale factor) and
    loses the row-max reductions; the exact loop (the rare redo) and the masked loop remain."""
    r = _compile(tmp_path, "--variant", "STALE=1")
    assert len(r["loop_ex2"]) == 3 and r["loop_ex2"][0] == 64, r["loop_ex2"]
    assert r["loop_insts"][0] < 0.8 * tiled["loop_insts"][0], (r["loop_insts"], tiled["loop_insts"])
    assert r["loop_spills"] == 0 and r["loop_lds_sts"] == 0 and r["smem"] == tiled["smem"], r


def test_key_mask_kernel_fits_and_keeps_an_unmasked_loop(tiled, tmp_path):
    """With a key mask on grid keys (HunyuanVideo's text padding) the kernel holds the unmasked
    loop (for batches whose grid keys are all visible) next to the masked one; their stage
    buffers must be shared, not added (two pipelined loops in the arms of an `if` needed
    416 KB), and the unmasked loop must be as lean as the maskless kernel's."""
    r = _compile(tmp_path, "--key-mask", "--no-tma")
    assert r["smem"] <= H100_SMEM and r["loop_spills"] == 0, r
    assert len(r["loop_insts"]) == 3, r["loop_insts"]
    assert r["loop_insts"][0] <= 1.15 * tiled["loop_insts"][0] < r["loop_insts"][1], (r["loop_insts"], tiled["loop_insts"])


def test_masked_loop_stays_lean(tmp_path):
    """FLUX s=1 (16x8 / 8x8 tiles): a masked tile may cost at most 1.6x the instructions of a
    full one (the simulator's penalty; 1.43 after the odometer and the leaner score mask)."""
    r = _compile(tmp_path, case="flux_s1")
    full, masked = r["loop_insts"]
    assert masked <= 1.6 * full and r["loop_spills"] == 0, r["loop_insts"]


def test_natural_order_kernel_has_no_spills_in_loops(tmp_path):
    r = _compile(tmp_path, "--natural")
    assert r["loop_spills"] == 0 and r["smem"] <= H100_SMEM, r
