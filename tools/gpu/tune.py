"""Tile / launch-config sweep of the GNA kernel on block-sparse cases (device experiment).

Prints ms (do_bench median) per (case, q_tile, kv_tile, layout, config) with the compiled
kernel's registers, spills and shared memory, so a config that spills or runs one CTA per SM
is visible. Usage: python tools/gpu/tune.py [case ...]
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from gna_compile.config import make_spec  # noqa: E402
from gna_compile.kernels.hopper import forward, triton_launch  # noqa: E402
from gna_compile.kernels.hopper.configs import TritonConfig  # noqa: E402
from gna_compile.kernels.triton_permute import permute_tokens_triton  # noqa: E402

H, D = 24, 128
SWEEP = {
    "flux_s16": (((256, 256), 80, 16, 0), [
        ((8, 16), (8, 16), [(8, 3, 0), (8, 2, 0)]),
        ((8, 16), (4, 16), [(8, 2, 0), (8, 3, 0), (8, 4, 0), (4, 2, 0)]),
        ((4, 16), (4, 16), [(4, 2, 0), (4, 3, 0), (8, 2, 0)]),
        ((4, 16), (2, 16), [(4, 2, 0), (4, 3, 0), (4, 4, 0)]),
    ]),
    "hunyuan_s16x8x8": (((30, 48, 80), (18, 24, 24), (16, 8, 8), 0), [
        ((2, 8, 8), (2, 8, 8), [(8, 3, 0)]),
        ((2, 8, 8), (1, 8, 8), [(8, 2, 0), (8, 3, 0), (8, 4, 0), (4, 2, 0)]),
        ((1, 8, 8), (1, 8, 8), [(4, 2, 0), (4, 3, 0)]),
        ((1, 8, 8), (1, 4, 8), [(4, 2, 0), (4, 3, 0), (4, 4, 0)]),
    ]),
}


def main():
    names = sys.argv[1:] or list(SWEEP)
    for name in names:
        (shape, w, s, P), tilings = SWEEP[name]
        spec = make_spec(shape, w, s)
        N = P + spec.num_tokens
        q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for qt, kt, cfgs in tilings:
            qp, kp, vp = (permute_tokens_triton(t, shape, qt, P, 0) for t in (q, k, v))
            for natural in (False, True):
                a = (q, k, v) if natural else (qp, kp, vp)
                for cfg in cfgs:
                    try:
                        fn = lambda: forward.gna_forward(*a, spec, qt, kt, P, 0, None, natural=natural,  # noqa: E731
                                                         config=TritonConfig(*cfg))
                        fn()
                        kk = triton_launch.LAST_KERNEL[0]
                        t = do_bench(fn, warmup=30, rep=150, return_mode="median")
                        info = f"regs {kk.n_regs} spills {kk.n_spills} smem {kk.metadata.shared}"
                    except Exception as e:
                        t, info = float("nan"), f"{type(e).__name__}: {str(e)[:80]}"
                    print(f"{name:16} {str(qt):11} {str(kt):11} {'nat ' if natural else 'perm'} {str(cfg):12} "
                          f"{t:8.3f} ms  {info}", flush=True)


if __name__ == "__main__":
    main()
