"""Whole sampling loops (VAE decode included): dense torch.compile vs gna with the hybrid
schedule vs gna on every step, in one run (issue 14).

    python benchmarks/pipelines.py --model {flux,hunyuan,cosmos,wan,ltx} [--size full|small]
        [--steps N] [--dense-steps K] [--variants dense,hybrid,gna] [--compare] [--out DIR]
    python benchmarks/pipelines.py --model M --merge A.json B.json [--out DIR]

Pipelines come from gna_compile.pipelines.offline (random weights, the published configs with
``--size full`` at the paper's resolutions: FLUX.1-dev 4K, HunyuanVideo 720p 30x48x80,
Cosmos 16x44x80, Wan 2.1 14B 720p 81 frames; prompt embeddings passed directly).

Each variant warms up first (its compile column is the warm-up's step time): dense one step;
hybrid and gna share one gna compile, warmed by one dense and one sparse step, since the
schedule is read at run time (``gna_compile.set_dense_steps`` switches it, recompiling
nothing; the ``new graphs`` column counts graphs compiled during each timed loop and should
read 0). The run's first warm-up decodes, so the VAE's first call is no timed loop's; the
others stop at the latents. Timed loops: per-step times from the step callback (device
synchronised), the decode as the rest of the loop.

``--steps`` runs fewer steps than the pipeline's default with ``--dense-steps`` (default: the
family's dense share of the steps, gna_compile/pipelines/families.py) when a full loop does
not fit one GPU command; the table says which. Where even that does not fit, ``--variants``
splits the variants over commands and ``--merge`` prints their one table (each run's JSON
names its GPU, UUID included). ``--compare`` prints PSNR and max difference of each decoded
output against the dense loop's (meaningful with trained weights; random weights only show
that the loop ran). Writes ``pipelines_<model>.json``, ``.txt`` and a per-step time plot
``pipelines_<model>.png`` under ``--out``.
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


# Pipelines whose latents change dtype after the first step. HunyuanVideo's prepares float32
# latents, but its scheduler returns them in the model's dtype, and the transformer's timestep
# takes the latents' dtype: float32 at step 1, bf16 after, so every compiled variant (dense
# included) compiles twice. The benchmark keeps the latents float32 after each step (as the
# original HunyuanVideo sampler does) for every variant alike: one compile each.
KEEP_LATENTS = {"hunyuan": torch.float32}


def _run_loop(pipe, call, steps, device, decode=True, latents_dtype=None):
    """(per-step seconds, loop seconds, decoded output) of one sampling loop; ``decode=False``
    stops at the latents (warm-up loops: the VAE is not compiled, so decoding warms nothing)."""
    marks = []

    def on_step_end(p, i, t, kw):
        _sync(device)
        marks.append(time.perf_counter())
        return {} if latents_dtype is None else {"latents": kw["latents"].to(latents_dtype)}

    _sync(device)
    t0 = time.perf_counter()
    out = pipe(**call(), num_inference_steps=steps, output_type="np" if decode else "latent",
               callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    _sync(device)
    t1 = time.perf_counter()
    per_step = [b - a for a, b in zip([t0] + marks[:-1], marks)]
    return per_step, t1 - t0, out[0]


def psnr(a, b):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    mse = ((a - b) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _graphs():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _rewrites(records):
    """'R of N attention calls rewritten: <config> xK, ...; dense: <reason> xK' for the log."""
    from collections import Counter
    done = Counter(f"w={r.window} s={r.stride} tiles {r.q_tile}/{r.kv_tile} on {r.grid} (sim {r.speedup:.1f}x)"
                   for r in records if r.rewritten)
    dense = Counter(r.reason for r in records if not r.rewritten)
    return (f"{sum(done.values())} of {len(records)} attention calls rewritten: "
            + "; ".join(f"{k} x{n}" for k, n in done.items())
            + ("; dense: " + "; ".join(f"{k} x{n}" for k, n in dense.items()) if dense else ""))


def _device_id(device):
    if torch.device(device).type != "cuda":
        return "cpu"
    p = torch.cuda.get_device_properties(torch.device(device))
    return f"{p.name} {getattr(p, 'uuid', '')}".strip()


def run(name, size, device, steps, dense_steps, variants, compare, log, inner="inductor", on_row=None):
    """Rows of the table. Dense: its own compile. Hybrid and gna: one compile of the gna
    backend shared by both (the schedule is read at run time, set_dense_steps), so the second
    compiles nothing. The run's first warm-up loop decodes (the VAE's first call warms its
    kernels before any timed loop, for every variant alike); the others stop at the latents."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    pipe, call = offline.build(name, size, device, dtype)
    fam = family_of(pipe)
    policy = _policy(name, size)
    rows, outputs, first = [], {}, [True]
    keep = KEEP_LATENTS.get(name)

    def warm(n):
        per_step, _, _ = _run_loop(pipe, call, n, device, decode=first[0], latents_dtype=keep)
        first[0] = False
        return sum(per_step)  # the compile column: the warm-up's steps, not its decode

    def timed(variant, compile_s):
        n_dense = {"dense": steps, "hybrid": dense_steps, "gna": 0}[variant]
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        graphs = _graphs()
        per_step, loop_s, out = _run_loop(pipe, call, steps, device, latents_dtype=keep)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.device(device).type == "cuda" else float("nan")
        dense_part, sparse_part = per_step[:n_dense], per_step[n_dense:]
        rows.append(dict(variant=variant, steps=steps, dense_steps=n_dense, loop_s=loop_s, per_step_s=per_step,
                         dense_step_ms=1e3 * sum(dense_part) / len(dense_part) if dense_part else float("nan"),
                         sparse_step_ms=1e3 * sum(sparse_part) / len(sparse_part) if sparse_part else float("nan"),
                         decode_s=loop_s - sum(per_step), compile_s=compile_s, peak_gib=peak,
                         new_graphs=_graphs() - graphs, device=_device_id(device)))
        outputs[variant] = out
        log(f"# {name} {variant}: loop {loop_s:.2f} s, graphs compiled during it: {rows[-1]['new_graphs']}")
        if on_row is not None:
            on_row(rows)  # saved as they come: a command that runs out of time keeps its loops

    if "dense" in variants:
        torch._dynamo.reset()
        tr = pipe.transformer
        tr.forward = torch.compile(type(tr).forward.__get__(tr), backend=inner, dynamic=False)
        try:
            compile_s = warm(1)
            log(f"# {name} dense: compile (first step) {compile_s:.1f} s")
            timed("dense", compile_s)
        finally:
            tr.__dict__.pop("forward")
    mine = [v for v in ("hybrid", "gna") if v in variants]
    if mine:
        torch._dynamo.reset()
        hybrid = "hybrid" in mine
        gna_compile.enable(pipe, dense_steps=1 if hybrid else 0, policy=policy, inner=inner)
        try:
            compile_s = warm(2 if hybrid else 1)  # hybrid: one dense and one sparse step
            log(f"# {name} gna: compile (first steps, {'dense and sparse' if hybrid else 'sparse'}) {compile_s:.1f} s, "
                f"shared by {' and '.join(mine)}")
            log(f"# {name} gna: {_rewrites(gna_compile.pipelines.records(pipe))}")
            for v in mine:
                gna_compile.set_dense_steps(pipe, dense_steps if v == "hybrid" else 0)
                timed(v, compile_s)
        finally:
            gna_compile.disable(pipe)
    if compare and "dense" in outputs:
        for r in rows:
            r["psnr_db"] = psnr(outputs[r["variant"]], outputs["dense"])
            r["max_diff"] = float(abs(torch.as_tensor(outputs[r["variant"]]) - torch.as_tensor(outputs["dense"])).max())
    return rows, fam


def table(rows, log):
    """The loop table; speedups against the dense row (when there is one)."""
    base = next((r for r in rows if r["variant"] == "dense"), None)
    compare = any("psnr_db" in r for r in rows)
    hdr = (f"{'variant':<8} {'dense':>5} {'loop s':>8} {'x dense':>7} {'ms/dense step':>13} {'ms/GNA step':>11} "
           f"{'decode s':>8} {'compile s':>9} {'peak GiB':>8} {'new graphs':>10}"
           + (f" {'PSNR dB':>8} {'max diff':>8}" if compare else ""))
    log(hdr)
    for r in rows:
        x = base["loop_s"] / r["loop_s"] if base else float("nan")
        log(f"{r['variant']:<8} {r['dense_steps']:>5} {r['loop_s']:8.2f} {x:7.2f} {r['dense_step_ms']:13.1f} "
            f"{r['sparse_step_ms']:11.1f} {r['decode_s']:8.2f} {r['compile_s']:9.1f} {r['peak_gib']:8.1f} "
            f"{r.get('new_graphs', '-'):>10}"
            + (f" {r.get('psnr_db', float('nan')):8.2f} {r.get('max_diff', float('nan')):8.3g}" if compare else ""))


def merge(paths, log):
    """One table from the JSON of several runs of one model (variants split over commands
    that would not fit one); the header says which device each ran on."""
    runs = [json.load(open(p)) for p in paths]
    keys = {(r["model"], r["size"], r["steps"], r["dense_steps"]) for r in runs}
    if len(keys) != 1:
        raise SystemExit(f"--merge: the runs differ in (model, size, steps, dense steps): {sorted(keys)}")
    rows = [row for r in runs for row in r["rows"]]
    names = [row["variant"] for row in rows]
    if len(set(names)) != len(names):
        raise SystemExit(f"--merge: a variant appears twice: {names}")
    model, size, steps, dense_steps = keys.pop()
    log(f"# {model} ({size}), merged from {len(paths)} runs: " + "; ".join(
        f"{os.path.basename(p)}: {', '.join(row['variant'] for row in r['rows'])} on {r.get('device_id', r['device'])}"
        for p, r in zip(paths, runs)))
    log(f"sampling loop, {steps} steps, VAE decode included; hybrid: first {dense_steps} steps dense")
    order = {v: i for i, v in enumerate(VARIANTS)}
    rows.sort(key=lambda r: order[r["variant"]])
    table(rows, log)
    return rows


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
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="print one table from the JSON of earlier runs "
                    "(variants split over commands) and exit")
    args = ap.parse_args(argv)
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    if args.merge:
        rows = merge(args.merge, log)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            legend = line_plot(os.path.join(args.out, f"pipelines_{args.model}_merged.png"),
                               {r["variant"]: [1e3 * s for s in r["per_step_s"]] for r in rows})
            log(f"per-step time plot (ms per step): pipelines_{args.model}_merged.png: " + "; ".join(legend))
            with open(os.path.join(args.out, f"pipelines_{args.model}_merged.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
        return 0
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: {bad} not in {VARIANTS}")
    full_steps = DEFAULT_STEPS[args.model]
    steps = args.steps or full_steps
    fam = next(f for f in FAMILIES if f.name == args.model)
    dense_steps = fam.default_dense_steps(steps) if args.dense_steps is None else args.dense_steps

    dev = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    log(f"# {args.model} ({args.size}), grid {offline.FULL_GRIDS[args.model] if args.size == 'full' else 'small'}, "
        f"{dev}, torch {torch.__version__}")
    def save(rows):
        if not args.out:
            return
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"pipelines_{args.model}.json"), "w") as f:
            json.dump(dict(model=args.model, size=args.size, device=dev, device_id=_device_id(args.device),
                           steps=steps, dense_steps=dense_steps, rows=rows), f, indent=1)
        with open(os.path.join(args.out, f"pipelines_{args.model}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")

    rows, _ = run(args.model, args.size, args.device, steps, dense_steps, variants, args.compare, log, args.inner,
                  on_row=save)
    note = "" if steps == full_steps else (f" (fewer than the pipeline's {full_steps} steps, same dense "
                                           f"share: {dense_steps}/{steps})")
    log("")
    log(f"sampling loop, {steps} steps{note}, VAE decode included; hybrid: first {dense_steps} steps dense")
    table(rows, log)
    if args.out:
        legend = line_plot(os.path.join(args.out, f"pipelines_{args.model}.png"),
                           {r["variant"]: [1e3 * s for s in r["per_step_s"]] for r in rows})
        log(f"per-step time plot (ms per step): pipelines_{args.model}.png: " + "; ".join(legend))
    save(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
