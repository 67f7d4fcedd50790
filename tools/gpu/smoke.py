"""Smallest GPU launch of the GNA kernel with a fixed config, to surface compile errors."""
import sys, os, traceback
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch
from gna_compile.config import make_spec
from gna_compile.kernels.hopper import gna_forward
from gna_compile.kernels.hopper.configs import TritonConfig
spec = make_spec((37,), 9, 3)
q = torch.randn(1, 2, 45, 32, device="cuda", dtype=torch.bfloat16)
for cfg in [(4, 1), (4, 2)]:
    try:
        gna_forward(q, q, q, spec, (16,), (16,), 3, 5, config=TritonConfig(*cfg))
        torch.cuda.synchronize()
        print("ok", cfg)
    except Exception:
        traceback.print_exc()
