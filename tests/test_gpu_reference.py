"""GPU checks of the reference backend: a FLUX-4K-sized problem fits in memory (no N x N)."""

from __future__ import annotations

import pytest
import torch

import gna_compile as gc
from gna_compile.mask import key_range

CUDA = torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_reference_flux_4k_runs_within_memory():
    # 256x256 grid + 512 text tokens, 24 heads, d=128, bf16: one N x N fp32 score matrix per
    # head would take 16 GiB; all heads 400 GiB. The reference must stay far below that.
    torch.manual_seed(0)
    shape, pre, H, D = (256, 256), 512, 24, 128
    N = pre + 256 * 256
    q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = gc.gna_attention(q, k, v, shape, 80, 16, extra_prefix=pre, backend="reference")
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 8 * 2**30, f"reference used {peak / 2**30:.1f} GiB above its inputs"
    assert torch.isfinite(out).all()
    # One spatial query checked directly on its window plus the text tokens.
    r, c, h = 200, 17, 5
    lo0, hi0 = key_range(r, 256, 80, 16)
    lo1, hi1 = key_range(c, 256, 80, 16)
    grid_k = k[0, h, pre:].view(256, 256, D)[lo0:hi0 + 1, lo1:hi1 + 1].reshape(-1, D)
    grid_v = v[0, h, pre:].view(256, 256, D)[lo0:hi0 + 1, lo1:hi1 + 1].reshape(-1, D)
    keys = torch.cat([k[0, h, :pre], grid_k]).float()
    vals = torch.cat([v[0, h, :pre], grid_v]).float()
    qi = q[0, h, pre + r * 256 + c].float()
    want = torch.softmax(keys @ qi / D ** 0.5, -1) @ vals
    torch.testing.assert_close(out[0, h, pre + r * 256 + c].float(), want, rtol=2e-2, atol=2e-2)
