"""Whole sampling loops (VAE decode included): dense torch.compile vs gna with the hybrid
schedule vs gna on every step, in one run (issue 14).

    python benchmarks/pipelines.py --model {flux,hunyuan,cosmos,wan,ltx} [--size full|small]
        [--steps N] [--dense-steps K] [--variants dense,hybrid,gna] [--compare] [--out DIR]

Pipelines come from gna_compile.pipelines.offline (random weights, the published configs with
``--size full`` at the paper's resolutions: FLUX.1-dev 4K, HunyuanVideo 720p 30x48x80,
Cosmos 16x44x80, Wan 2.1 14B 720p 81 frames; prompt embeddings passed directly). The run
starts with one eager step and a decode (the VAE's first call warms its kernels for all
variants alike); each variant then runs a warm-up loop without the decode (2 steps; hybrid:
its dense steps + 1, so both modes run once; its wall time is the compile column), then the
timed loop: per-step times from the step callback (device synchronised), the decode as the rest of the
loop. ``--steps`` runs fewer steps than the pipeline's default with ``--dense-steps`` (default:
the family's dense share of the steps, gna_compile/pipelines/families.py) when a full loop
does not fit one GPU command; the table says which. ``--compare`` prints PSNR and max
difference of each decoded output against the dense loop's (meaningful with trained weights;
random weights only show that the loop ran). Writes ``pipelines_<model>.json`` and a per-step
time plot ``pipelines_<model>.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import gna_compile  # noqa: E402
from gna_compile import zoo  # noqa: E402
from gna_compile.pipelines import family_of, offline  # noqa: E402
from gna_compile.pipelines.families import FAMILIES  # noqa: E402
from plot_png import line_plot  # noqa: E402

VARIANTS = ("dense", "hybrid", "gna")
DEFAULT_STEPS = {"flux": 28, "hunyuan": 50, "cosmos": 36, "wan": 50, "ltx": 50}  # the pipelines' defaults


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _policy(name, size):
    """The paper's GNA configs where zoo has them (FLUX, HunyuanVideo), else the simulator's."""
    if name in zoo.CASES and size == "full":
        gna = zoo.CASES[name].gna(size)
        return gna_compile.Policy(default=gna)
    return gna_compile.Policy(default="auto")


def _run_loop(pipe, call, steps, device, decode=True):
    """(per-step seconds, loop seconds, decoded output) of one sampling loop; ``decode=False``
    stops at the latents (warm-up loops: the VAE is not compiled, so decoding warms nothing)."""
    marks = []

    def on_step_end(p, i, t, kw):
        _sync(device)
        marks.append(time.perf_counter())
        return {}

    _sync(device)
    t0 = time.perf_counter()
    out = pipe(**call(), num_inference_steps=steps, output_type="np" if decode else "latent",
               callback_on_step_end=on_step_end)
    _sync(device)
    t1 = time.perf_counter()
    per_step = [b - a for a, b in zip([t0] + marks[:-1], marks)]
    return per_step, t1 - t0, out[0]


def _enable_variant(pipe, variant, dense_steps, policy, inner):
    """Put the pipeline in the variant's state; returns an undo function."""
    tr = pipe.transformer
    if variant == "dense":
        tr.forward = torch.compile(type(tr).forward.__get__(tr), backend=inner, dynamic=False)
        return lambda: tr.__dict__.pop("forward")
    n = dense_steps if variant == "hybrid" else 0
    gna_compile.enable(pipe, dense_steps=n, policy=policy, inner=inner)
    return lambda: gna_compile.disable(pipe)


def psnr(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    mse = ((a - b) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def run(name, size, device, steps, dense_steps, variants, compare, log, inner="inductor"):
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    pipe, call = offline.build(name, size, device, dtype)
    fam = family_of(pipe)
    policy = _policy(name, size)
    rows, outputs = [], {}
    _run_loop(pipe, call, 1, device)  # one eager step and a decode: the VAE's first run is not any variant's
    for variant in variants:
        torch._dynamo.reset()
        undo = _enable_variant(pipe, variant, dense_steps, policy, inner)
        try:
            t0 = time.perf_counter()
            warm = dense_steps + 1 if variant == "hybrid" else 2  # the hybrid warm-up reaches a sparse step
            _run_loop(pipe, call, warm, device, decode=False)  # warm-up: compiles, runs each mode once
            compile_s = time.perf_counter() - t0
            if torch.device(device).type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            per_step, loop_s, out = _run_loop(pipe, call, steps, device)
            peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.device(device).type == "cuda" else float("nan")
        finally:
            undo()
        n_dense = {"dense": steps, "hybrid": dense_steps, "gna": 0}[variant]
        dense_part = per_step[:n_dense] if variant != "dense" else per_step
        sparse_part = per_step[n_dense:]
        row = dict(variant=variant, steps=steps, dense_steps=n_dense, loop_s=loop_s, per_step_s=per_step,
                   dense_step_ms=1e3 * sum(dense_part) / max(len(dense_part), 1) if dense_part else float("nan"),
                   sparse_step_ms=1e3 * sum(sparse_part) / len(sparse_part) if sparse_part else float("nan"),
                   decode_s=loop_s - sum(per_step), compile_s=compile_s, peak_gib=peak)
        rows.append(row)
        outputs[variant] = out
        log(f"# {name} {variant}: loop {loop_s:.2f} s, compile {compile_s:.1f} s")
    base = next((r for r in rows if r["variant"] == "dense"), None)
    for r in rows:
        r["speedup"] = base["loop_s"] / r["loop_s"] if base else float("nan")
        if compare and "dense" in outputs:
            ref = outputs["dense"]
            r["psnr_db"] = psnr(outputs[r["variant"]], ref)
            r["max_diff"] = float(abs(torch.as_tensor(outputs[r["variant"]]) - torch.as_tensor(ref)).max())
    return rows, fam


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=offline.NAMES)
    ap.add_argument("--size", default="full", choices=("full", "small"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's)")
    ap.add_argument("--dense-steps", type=int, default=None, help="first steps dense in the hybrid loop")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--compare", action="store_true", help="PSNR / max diff of the decoded output vs dense")
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    ap.add_argument("--inner", default="inductor", help="compiler behind Dynamo (aot_eager for CPU smoke runs)")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: {bad} not in {VARIANTS}")
    full_steps = DEFAULT_STEPS[args.model]
    steps = args.steps or full_steps
    fam = next(f for f in FAMILIES if f.name == args.model)
    dense_steps = fam.default_dense_steps(steps) if args.dense_steps is None else args.dense_steps
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    dev = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    log(f"# {args.model} ({args.size}), grid {offline.FULL_GRIDS[args.model] if args.size == 'full' else 'small'}, "
        f"{dev}, torch {torch.__version__}")
    rows, _ = run(args.model, args.size, args.device, steps, dense_steps, variants, args.compare, log, args.inner)
    note = "" if steps == full_steps else (f" (fewer than the pipeline's {full_steps} steps, same dense "
                                           f"share: {dense_steps}/{steps})")
    log("")
    log(f"sampling loop, {steps} steps{note}, VAE decode included; hybrid: first {dense_steps} steps dense")
    hdr = (f"{'variant':<8} {'dense':>5} {'loop s':>8} {'x dense':>7} {'ms/dense step':>13} {'ms/GNA step':>11} "
           f"{'decode s':>8} {'compile s':>9} {'peak GiB':>8}" + (f" {'PSNR dB':>8} {'max diff':>8}" if args.compare else ""))
    log(hdr)
    for r in rows:
        log(f"{r['variant']:<8} {r['dense_steps']:>5} {r['loop_s']:8.2f} {r['speedup']:7.2f} {r['dense_step_ms']:13.1f} "
            f"{r['sparse_step_ms']:11.1f} {r['decode_s']:8.2f} {r['compile_s']:9.1f} {r['peak_gib']:8.1f}"
            + (f" {r['psnr_db']:8.2f} {r['max_diff']:8.3g}" if args.compare else ""))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        legend = line_plot(os.path.join(args.out, f"pipelines_{args.model}.png"),
                           {r["variant"]: [1e3 * s for s in r["per_step_s"]] for r in rows})
        log(f"per-step time plot (ms per step): pipelines_{args.model}.png: " + "; ".join(legend))
        with open(os.path.join(args.out, f"pipelines_{args.model}.json"), "w") as f:
            json.dump(dict(model=args.model, size=args.size, device=dev, steps=steps, dense_steps=dense_steps,
                           rows=rows), f, indent=1)
        with open(os.path.join(args.out, f"pipelines_{args.model}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
