"""``python -m gna_compile.demo``: what the package does, on the CPU, in under a minute.

1. NATTENSim on the paper's three workloads (FLUX 4K, HunyuanVideo 720p, Cosmos).
2. A small GNA attention (2-D grid, text tokens, GQA, key padding) checked against dense
   masked SDPA.
3. ``torch.compile(backend="gna")`` on a small built-in video DiT, with the explain table.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from . import gna_attention, make_spec
from .mask import dense_mask

# (name, grid, window, stride, tiles) as in the paper; Cosmos' config comes from the search.
PAPER_WORKLOADS = [
    ("FLUX.1-dev 4K", (256, 256), (80, 80), (16, 16), ((16, 8), (16, 8))),
    ("FLUX.1-dev 4K, s=1", (256, 256), (80, 80), (1, 1), ((16, 8), (16, 8))),
    ("HunyuanVideo 720p", (30, 48, 80), (18, 24, 24), (16, 8, 8), ((2, 8, 8), (2, 8, 8))),
    ("HunyuanVideo 720p, s=1", (30, 48, 80), (18, 24, 24), (1, 1, 1), ((2, 8, 8), (2, 8, 8))),
]


def _row(name, r):
    tiles = f"{'x'.join(map(str, r.q_tile))}/{'x'.join(map(str, r.kv_tile))}"
    cfg = f"w={'x'.join(map(str, r.window))} s={'x'.join(map(str, r.stride))}"
    return (f"{name:<24} {'x'.join(map(str, r.shape)):>9} {cfg:<22} {tiles:<13} "
            f"{r.visited_tiles:>9} {r.full_tiles:>9} {r.partial_tiles:>9} "
            f"{r.flop_speedup:>7.2f} {r.tile_speedup:>7.2f}  {'yes' if r.perfectly_block_sparse else 'no'}")


def simulator_section() -> None:
    from .sim import search, simulate

    print("== NATTENSim: the paper's workloads (tile counts per head) ==")
    print(f"{'workload':<24} {'grid':>9} {'config':<22} {'q/kv tile':<13} {'visited':>9} {'full':>9} "
          f"{'partial':>9} {'FLOP x':>7} {'sim x':>7}  block-sparse")
    for name, shape, window, stride, (qt, kt) in PAPER_WORKLOADS:
        print(_row(name, simulate(shape, window, stride, q_tile=qt, kv_tile=kt)))
    t0 = time.perf_counter()
    best = search((16, 44, 80), sparsity=0.9, require_block_sparse=True)
    took = time.perf_counter() - t0
    if best:
        print(_row("Cosmos (search, ~90%)", best[0]))
        print(f"  (search over windows/strides/tiles took {took * 1e3:.0f} ms)")
    else:
        print("Cosmos: no perfectly block-sparse config found at ~90% sparsity")


def attention_section(seed: int = 0) -> float:
    print("\n== GNA attention vs dense masked SDPA (CPU, fp32) ==")
    torch.manual_seed(seed)
    shape, window, stride, prefix = (12, 16), (5, 7), (2, 3), 8
    spec = make_spec(shape, window, stride)
    N = prefix + spec.num_tokens
    q = torch.randn(2, 8, N, 32)
    k, v = torch.randn(2, 2, N, 32), torch.randn(2, 2, N, 32)
    key_mask = torch.ones(2, N, dtype=torch.bool)
    key_mask[1, 5:prefix] = False  # text padding in the second sample
    out = gna_attention(q, k, v, shape, window, stride, extra_prefix=prefix, key_mask=key_mask)
    mask = dense_mask(spec, prefix)[None, None] & key_mask[:, None, None, :]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    err = (out - ref).abs().max().item()
    sparsity = 1 - mask[:, :, prefix:, prefix:].float().mean().item()
    print(f"grid {shape} + {prefix} text tokens, window {window}, stride {stride}, 8 q / 2 kv heads")
    print(f"spatial sparsity {sparsity:.1%}; max |gna - sdpa| = {err:.2e}  "
          f"({'OK' if err < 1e-4 else 'MISMATCH'})")
    return err


def compile_section() -> None:
    try:
        from .demo_compile import run_compile_demo
    except ImportError as e:  # the compile backend is an optional part of this build
        print(f"\n(compile demo unavailable: {e})")
        return
    print("\n== torch.compile(model, backend='gna') on a small video DiT ==")
    run_compile_demo()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gna-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--skip-compile", action="store_true", help="skip the torch.compile part")
    args = parser.parse_args(argv)
    simulator_section()
    err = attention_section()
    if not args.skip_compile:
        compile_section()
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
