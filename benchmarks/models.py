"""End-to-end transformer benchmark: dense vs GNA on FLUX, HunyuanVideo and Cosmos.

    python benchmarks/models.py --model flux            # full published config, GPU, bf16
    python benchmarks/models.py --model cosmos --size small --device cpu   # smoke test

One run measures, for one transformer forward (random weights, no hub access):
eager dense (SDPA picks cuDNN), torch.compile default (Inductor, dense), backend="gna" with the
paper's config and permutation hoisting, the same without hoisting, and the GNA model inside
``dense_attention()`` (the dense steps of the hybrid schedule). Per variant: median ms, speedup
over the best dense variant, share of GPU time in attention and in token permutation (from the
profiler), compile time and peak memory. Then the sampling-loop estimate with the paper's hybrid
schedule from the measured per-step times.

A full-size HunyuanVideo run of all five variants outlasts one 10-minute device call, so runs
of variant subsets (``--variants``, ``--json``) can be joined into one report:

    python benchmarks/models.py --merge dense.json gna.json   # a later file's row replaces
                                                              # an earlier one of that variant
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import gna_compile  # noqa: E402
from gna_compile.zoo import CASES, build_model, make_inputs, paper_policy  # noqa: E402

# Kernel-name keys for the profiler breakdown: cuDNN / flash / mem-efficient SDPA kernels and
# ours (_gna_fwd); our token permutation kernel (_permute_kernel).
ATTN_KERNELS = ("fmha", "flash", "cudnn", "attention", "_gna_fwd")
PERM_KERNELS = ("_permute_kernel",)


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn, dev, reps):
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _kernel_shares(fn, dev):
    """Fractions of device time in attention and permutation kernels over one call."""
    if dev.type != "cuda":
        return None, None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    total = attn = perm = 0.0
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        if e.device_type != torch.autograd.DeviceType.CUDA and not t:
            continue
        name = e.key.lower()
        if e.device_type == torch.autograd.DeviceType.CUDA:
            total += t
            if any(k in name for k in PERM_KERNELS):
                perm += t
            elif any(k in name for k in ATTN_KERNELS):
                attn += t
    return (attn / total if total else None), (perm / total if total else None)


_BACKENDS = {}  # hoist flag -> the gna backend object (for its rewrite/hoisting records)


def _variants(args, model):
    """Variants in run order; factories compile lazily."""
    def gna(hoist):
        be = gna_compile.backend(policy=paper_policy(args.model, args.size), hoist_permutations=hoist)
        _BACKENDS[hoist] = be
        return torch.compile(model, backend=be)
    return [  # (short key for --variants, name, factory, context)
        ("eager", "eager dense (SDPA)", lambda: model, None),
        ("compile", "compile default (dense)", lambda: torch.compile(model), None),
        ("gna", "gna", lambda: gna(True), None),
        ("gna-dense", "gna in dense_attention()", None, gna_compile.dense_attention),  # same model
        ("gna-gluon", "gna, Gluon kernel forced", None, _gluon_kernel),  # same model; only if named
        ("gna-nohoist", "gna, no hoisting", lambda: gna(False), None),
    ]


OPT_IN = {"gna-gluon"}  # variants run only when --variants names them


@contextlib.contextmanager
def _gluon_kernel():
    """The Gluon kernel forced (GNA_GLUON=1) for every call it takes, instead of the autotuner's
    choice; read per call, so the compiled gna model needs no recompile."""
    old = os.environ.get("GNA_GLUON")
    os.environ["GNA_GLUON"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["GNA_GLUON"]
        else:
            os.environ["GNA_GLUON"] = old


def run(args) -> dict:
    dev = torch.device(args.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = build_model(args.model, args.size, dev, dtype, checkpoint=args.checkpoint)
    inputs = make_inputs(args.model, model, args.size)
    print(f"# {CASES[args.model].name} ({args.size}), {dtype}, device: "
          f"{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, torch {torch.__version__}",
          flush=True)
    rows, fn, outputs = [], None, {}
    wanted = ({k for k, *_ in _variants(args, model)} - OPT_IN if not args.variants
              else {v.strip() for v in args.variants.split(",")})
    with torch.inference_mode():
        for key, name, factory, ctx in _variants(args, model):
            if wanted is not None and key not in wanted:
                continue
            if factory is not None:  # a new compiled variant: start from a clean Dynamo cache
                torch._dynamo.reset()
                fn = factory()
            with (ctx() if ctx else contextlib.nullcontext()):
                last = {}
                call = lambda: last.__setitem__("out", fn(**inputs))  # keeps the latest output
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                call()
                _sync(dev)
                first = time.perf_counter() - t0
                ms = _time_ms(call, dev, args.reps)
                attn, perm = _kernel_shares(call, dev)
                peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
                outputs[name] = last["out"][0].float()
            rows.append(dict(variant=name, ms=ms, compile_s=max(0.0, first - ms / 1e3),
                             attn_share=attn, perm_share=perm, peak_gib=peak))
            print(f"  {name}: {ms:.1f} ms (first call {first:.1f} s)", flush=True)
            if factory is not None and name.startswith("gna"):
                be = _BACKENDS[name == "gna"]
                print(f"    {len(be.rewritten)} of {len(be.records)} attention calls rewritten; "
                      + "; ".join(str(r).replace("\n", " |") for r in be.hoist_results), flush=True)
            if args.json:  # keep partial results if a later variant runs out of time
                with open(args.json, "w") as f:
                    json.dump(dict(model=args.model, size=args.size, rows=rows), f, indent=1)
    if "gna" in outputs and "gna, no hoisting" in outputs:  # hoisting must not change results
        a, b = outputs["gna"], outputs["gna, no hoisting"]
        print(f"  check: |gna - gna without hoisting| / |.| = {((a - b).norm() / b.norm()).item():.2e}")
    if "gna" in outputs and "gna, Gluon kernel" in outputs:
        a, b = outputs["gna, Gluon kernel"], outputs["gna"]
        print(f"  check: |gna Gluon - gna| / |.| = {((a - b).norm() / b.norm()).item():.2e}")
    if "gna in dense_attention()" in outputs and "eager dense (SDPA)" in outputs:
        a, b = outputs["gna in dense_attention()"], outputs["eager dense (SDPA)"]
        print(f"  check: |gna in dense mode - eager dense| / |.| = {((a - b).norm() / b.norm()).item():.2e}")
    schedule = CASES[args.model].paper_schedule
    schedule = (args.steps or schedule[0], schedule[1] if args.dense_steps is None else args.dense_steps)
    return dict(model=args.model, size=args.size, rows=rows, schedule=schedule)


def merge(paths) -> dict:
    """One result from several runs' JSON files of the same model: rows keyed by variant, a
    later file's row replacing an earlier one's; each row names the file it came from."""
    model, rows, schedule = None, {}, None
    for path in paths:
        with open(path) as f:
            res = json.load(f)
        if model is not None and res["model"] != model:
            raise SystemExit(f"--merge: {path} is a {res['model']} run, the others {model}")
        model = res["model"]
        schedule = res.get("schedule") or schedule
        for r in res["rows"]:
            rows[r["variant"]] = dict(r, source=os.path.basename(path))
    order = [name for _, name, _, _ in _variants(None, None)]
    return dict(model=model, size="merged", rows=sorted(rows.values(), key=lambda r: order.index(r["variant"])),
                schedule=schedule or CASES[model].paper_schedule)


def report(res) -> str:
    rows = res["rows"]
    dense = min((r["ms"] for r in rows if "dense" in r["variant"] and "gna" not in r["variant"]),
                default=None)
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"
    out = [f"{'variant':<26} {'ms':>10} {'vs best dense':>13} {'attention':>9} {'permute':>8} "
           f"{'compile s':>9} {'peak GiB':>8}"]
    for r in rows:
        vs = "-" if dense is None else f"{dense / r['ms']:.2f}x"
        out.append(f"{r['variant']:<26} {r['ms']:>10.1f} {vs:>13} {pct(r['attn_share']):>9} "
                   f"{pct(r['perm_share']):>8} {r['compile_s']:>9.1f} "
                   f"{'-' if r['peak_gib'] is None else format(r['peak_gib'], '.1f'):>8}"
                   + (f"  {r['source']}" if "source" in r else ""))
    by = {r["variant"]: r["ms"] for r in rows}
    if dense is None:
        return "\n".join(out)
    steps, dense_steps = res["schedule"]
    if "gna" in by and "gna in dense_attention()" in by:
        hybrid = dense_steps * by["gna in dense_attention()"] + (steps - dense_steps) * by["gna"]
        out.append(f"\nsampling loop, {steps} steps, first {dense_steps} dense (hybrid schedule): "
                   f"{steps * dense / 1e3:.1f} s dense -> {hybrid / 1e3:.1f} s GNA hybrid = "
                   f"{steps * dense / hybrid:.2f}x (transformer only, from the per-step times above)")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(CASES))
    p.add_argument("--merge", nargs="+", metavar="JSON", help="report the rows of earlier --json runs together")
    p.add_argument("--size", choices=["full", "small"], default="full")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--checkpoint", default=None, help="local diffusers checkpoint dir (default: random weights)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of eager,compile,gna,gna-dense,gna-nohoist (default: these) "
                        "and gna-gluon (experimental Gluon kernel); gna-dense and gna-gluon need gna")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's schedule in zoo.py)")
    p.add_argument("--dense-steps", type=int, default=None, help="first steps run dense (hybrid schedule)")
    args = p.parse_args(argv)
    if args.merge:
        res = merge(args.merge)
        if args.steps or args.dense_steps is not None:
            steps, dense_steps = res["schedule"]
            res["schedule"] = (args.steps or steps, dense_steps if args.dense_steps is None else args.dense_steps)
        print(report(res))
        return 0
    if args.model is None:
        p.error("--model is required (unless --merge)")
    res = run(args)
    print(report(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
