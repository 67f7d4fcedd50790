"""The Gluon kernel (gna_compile/kernels/gluon_gna.py): what it accepts, what the compiler
makes of it, and, on a GPU, its results against the reference.

Gluon has no interpreter, so on the CPU only two things can be checked:
- which problems the kernel takes (``unsupported_reason``);
- its SASS, compiled offline for sm_90a. The point of the kernel is that the softmax
  exponentials sit between the wgmma wait that leaves the PV matmul in flight and the wait
  for it, and ptxas is free to move that wait. So the SASS is where this is checked.
The GPU tests run the same shapes as a user's call would: tiled token order, bf16/fp16,
head dims 64 and 128, GQA, batch 2, outputs poisoned with NaN beforehand.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from gna_compile.config import make_spec
from gna_compile.kernels import gluon_gna
from gna_compile.kernels.permute import permute_tokens, unpermute_tokens
from gna_compile.kernels.reference import reference_attention

CUDA = torch.cuda.is_available()
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# (shape, window, stride, q_tile): perfectly block-sparse with 128-token tiles.
BLOCK_SPARSE = {
    "flux_like_2d": ((32, 64), (32, 48), (16, 16), (8, 16)),
    "one_kv_tile": ((32, 64), (8, 16), (8, 16), (8, 16)),
    "hunyuan_like_3d": ((4, 16, 32), (4, 16, 24), (4, 16, 16), (2, 8, 8)),
    "cosmos_like_3d": ((8, 8, 32), (8, 8, 16), (8, 8, 16), (8, 1, 16)),
}


def _qkv(spec, B=1, H=2, Hkv=2, D=128, dtype=torch.bfloat16, device="cpu"):
    N = spec.num_tokens
    return (torch.randn(B, H, N, D, device=device).to(dtype), torch.randn(B, Hkv, N, D, device=device).to(dtype),
            torch.randn(B, Hkv, N, D, device=device).to(dtype))


@pytest.mark.parametrize("name", list(BLOCK_SPARSE))
def test_takes_perfectly_block_sparse_calls(name):
    if not gluon_gna.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    shape, w, s, qt = BLOCK_SPARSE[name]
    spec = make_spec(shape, w, s)
    q, k, v = _qkv(spec)
    assert gluon_gna.unsupported_reason(q, k, v, spec, qt, qt, 0, 0, None, False) is None


def test_refuses_what_it_does_not_handle_with_a_reason():
    if not gluon_gna.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    shape, w, s, qt = BLOCK_SPARSE["flux_like_2d"]
    spec = make_spec(shape, w, s)
    q, k, v = _qkv(spec)
    why = lambda *a, **kw: gluon_gna.unsupported_reason(*a, **kw)  # noqa: E731
    assert "tiled" in why(q, k, v, spec, qt, qt, 0, 0, None, True)
    assert "extra tokens" in why(q, k, v, spec, qt, qt, 4, 0, None, False)
    assert "key mask" in why(q, k, v, spec, qt, qt, 0, 0, torch.ones(1, spec.num_tokens), False)
    assert "KV tile" in why(q, k, v, spec, qt, (8, 8), 0, 0, None, False)
    s1 = make_spec(shape, w, 1)
    assert "partial" in why(q, k, v, s1, qt, qt, 0, 0, None, False)
    odd = make_spec((30, 64), (8, 16), (8, 16))
    assert "divide" in why(*_qkv(odd), odd, qt, qt, 0, 0, None, False)
    assert "dilation" in why(q, k, v, make_spec(shape, (8, 16), 1, (2, 1)), qt, qt, 0, 0, None, False)
    assert "head dim" in why(*_qkv(spec, D=32), spec, qt, qt, 0, 0, None, False)
    assert "bf16" in why(*_qkv(spec, dtype=torch.float32), spec, qt, qt, 0, 0, None, False)


def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv("GNA_GLUON", raising=False)
    assert not gluon_gna.enabled()
    monkeypatch.setenv("GNA_GLUON", "1")
    assert gluon_gna.enabled() == gluon_gna.HAVE_GLUON


def _sass_summary(tmp_path, case, head_dim):
    triton = pytest.importorskip("triton")
    if not gluon_gna.HAVE_GLUON:
        pytest.skip("this Triton has no Gluon")
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("this Triton has no NVIDIA toolchain (ptxas)")
    out = tmp_path / "r.json"
    env = dict(os.environ, TRITON_INTERPRET="0")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "sm90_compile.py"), "--gluon", "--case", case,
                    "--head-dim", str(head_dim), "--json", str(out)],
                   check=True, env=env, capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())[case]


@pytest.mark.parametrize("case,head_dim", [("flux_s16", 128), ("cosmos_bs90", 128), ("hunyuan_s16x8x8", 64)])
def test_softmax_runs_while_pv_is_in_flight(tmp_path, case, head_dim):
    """In the loop, (nearly) every exponential is issued after `wgmma.wait_group 1` and before
    `wait_group 0`: the softmax of tile t overlaps the PV matmul of tile t-1. The Triton
    kernel has none there (tools/sm90_compile.py reports 0 for it)."""
    r = _sass_summary(tmp_path, case, head_dim)
    assert len(r["loop_ex2"]) == 1, r
    assert r["loop_ex2_in_flight"][0] >= 60, r
    assert r["loop_spills"] == 0 and r["loop_lds_sts"] == 0 and r["spill_insts"] == 0, r
    assert r["smem"] <= 227 * 1024 and r["regs"] <= 255, r


# ----------------------------------------------------------------------------- GPU

def _run(name, B, H, Hkv, D, dtype):
    shape, w, s, qt = BLOCK_SPARSE[name]
    spec = make_spec(shape, w, s)
    q, k, v = _qkv(spec, B, H, Hkv, D, dtype, "cuda")
    scale = 0.8 / math.sqrt(D)
    tiled = [permute_tokens(t, shape, qt, 0, 0).contiguous() for t in (q, k, v)]
    assert gluon_gna.unsupported_reason(*tiled, spec, qt, qt, 0, 0, None, False) is None
    out = torch.full_like(tiled[0], float("nan"))
    lse = torch.full(tiled[0].shape[:3], float("nan"), device="cuda")
    gluon_gna.gna_forward_gluon(*tiled, spec, qt, scale, out, lse)
    torch.cuda.synchronize()
    out = unpermute_tokens(out, shape, qt, 0, 0)
    lse = unpermute_tokens(lse[..., None], shape, qt, 0, 0)[..., 0]
    ref_o, ref_l = reference_attention(q.float(), k.float(), v.float(), spec, 0, 0, scale, None)
    assert torch.isfinite(out.float()).all() and torch.isfinite(lse).all(), "unwritten rows"
    err = ((out.double() - ref_o.double()).norm() / ref_o.double().norm()).item()
    assert err < (2e-2 if dtype == torch.bfloat16 else 5e-3), err
    assert (lse.double() - ref_l.double()).abs().max().item() < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and gluon_gna.HAVE_GLUON), reason="needs CUDA and Gluon")
@pytest.mark.parametrize("name", list(BLOCK_SPARSE))
@pytest.mark.parametrize("D,dtype", [(128, torch.bfloat16), (64, torch.float16)])
def test_gpu_matches_reference(name, D, dtype):
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernel is for Hopper (sm_90)")
    _run(name, B=2, H=4, Hkv=2, D=D, dtype=dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and gluon_gna.HAVE_GLUON), reason="needs CUDA and Gluon")
def test_gpu_dispatch_through_gna_forward(monkeypatch):
    """With GNA_GLUON=1, a tiled-order call that qualifies goes to the Gluon kernel (and gives
    the Triton kernel's answer)."""
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon kernel is for Hopper (sm_90)")
    from gna_compile.kernels import triton_gna
    shape, w, s, qt = BLOCK_SPARSE["hunyuan_like_3d"]
    spec = make_spec(shape, w, s)
    tiled = [permute_tokens(t, shape, qt, 0, 0).contiguous() for t in _qkv(spec, device="cuda")]
    ref, _ = triton_gna.gna_forward(*tiled, spec, qt, qt, natural=False, config=(8, 3, 0))
    monkeypatch.setenv("GNA_GLUON", "1")
    calls = []
    real = gluon_gna.gna_forward_gluon
    monkeypatch.setattr(gluon_gna, "gna_forward_gluon", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    out, _ = triton_gna.gna_forward(*tiled, spec, qt, qt, natural=False)
    assert calls and ((out.double() - ref.double()).norm() / ref.double().norm()).item() < 2e-2
