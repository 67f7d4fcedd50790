"""Device probe: which mask_mod constructs FlexAttention's FLASH backend (CuTe DSL) lowers."""
import sys, os, traceback
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from gna_compile.config import make_spec
from gna_compile.kernels import flex_backend as fb
f = torch.compile(flex_attention, dynamic=False)
N = 1024
q, k, v = (torch.randn(1, 2, N, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
spec = make_spec((32, 32), (8, 8), (1, 1))
from gna_compile.mask import key_range_t


def _kr(qi, ki, **kw):
    lo, hi = key_range_t(qi, 1024, 64, **kw)
    return (ki >= lo) & (ki <= hi)


mods = {
    "krange": lambda b, h, qi, ki: _kr(qi, ki),
    "krange_causal": lambda b, h, qi, ki: _kr(qi, ki, causal=True),
    "gna": fb.gna_mask_mod(spec, (8, 16), 0, 0),
    "gna_dilated": fb.gna_mask_mod(make_spec((32, 32), (5, 8), (1, 1), (3, 1)), (8, 16), 0, 0),
}
for name, mm in mods.items():
    try:
        bm = create_block_mask(mm, None, None, N, N, device="cuda")
        o = f(q, k, v, block_mask=bm, kernel_options={"BACKEND": "FLASH"})
        torch.cuda.synchronize()
        print("OK  ", name, flush=True)
    except Exception as e:
        tb = traceback.format_exc().strip().split("\n")
        print("FAIL", name, type(e).__name__, str(e)[:200], "|", " / ".join(l.strip() for l in tb[-12:-1] if "File" in l)[-600:], flush=True)
