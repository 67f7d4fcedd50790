"""Shared body of the model examples: explain, compile with GNA, check, time.

Each example builds a diffusers transformer (random weights, or a local checkpoint with
``--checkpoint DIR``), prints ``gna_compile.explain``'s table for its attention calls, compiles it
with ``backend=gna_compile.backend(policy=...)`` and times one forward against the dense model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import gna_compile  # noqa: E402
from gna_compile.zoo import CASES, build_model, make_inputs, paper_policy  # noqa: E402


def _ms(fn, device, reps=3):
    fn()  # warm-up (and compile)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def main(model_name: str, argv=None) -> int:
    case = CASES[model_name]
    p = argparse.ArgumentParser(description=f"GNA on {case.name} via torch.compile")
    p.add_argument("--checkpoint", help="local diffusers checkpoint directory (default: random weights)")
    p.add_argument("--size", choices=["small", "full"],
                   default="full" if torch.cuda.is_available() else "small",
                   help="full = published config at the paper's resolution (GPU); small = tiny CPU config")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-time", action="store_true", help="only print the explain table")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(model_name, args.size, device, dtype, checkpoint=args.checkpoint)
    inputs = make_inputs(model_name, model, args.size)
    policy = paper_policy(model_name, args.size)

    with torch.inference_mode():
        gna_compile.explain(model, policy=policy, **inputs)  # prints its table
        if args.no_time:
            return 0
        compiled = torch.compile(model, backend=gna_compile.backend(policy=policy))
        dense_ms = _ms(lambda: model(**inputs), device)
        gna_ms = _ms(lambda: compiled(**inputs), device)
    print(f"\n{case.name} ({args.size}, {dtype}, {device}): dense eager {dense_ms:.1f} ms, "
          f"GNA compiled {gna_ms:.1f} ms, {dense_ms / gna_ms:.2f}x")
    return 0
