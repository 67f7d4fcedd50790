"""Forward+backward timing of the kernel table's cases: GNA vs cuDNN dense SDPA vs FlexAttention.

    python benchmarks/kernels_backward.py [--check] [--cases flux_s16,...] [--out DIR]

The sibling of benchmarks/kernels.py (forward only), whose cases, problem size (B=1, H, D,
bf16), tile choice, flex block mask (flex_backend.run_permuted) and FLOP count it imports, so
both tables describe the same problems. Why: training cost is forward plus backward, and the
backward of each method is a different kernel (GNA's is the package's
``gna_attention_backward`` op: the Triton backward kernel where the Triton forward ran).

Columns per method: fwd+bwd ms and bwd ms (fwd+bwd minus the forward run with grad enabled,
both medians over ``--rounds`` rounds of do_bench); TFLOP/s = effective FLOPs / fwd+bwd time,
the backward counted as 2.5x the forward's attended pairs x 4 x D. Methods: gna =
``op.gna_attention`` with the case's spec and kernels.py's tiles under torch.autograd (natural
order: the backward permutes its tensors into tiled order and back); gna_tiled = the same
kernels on tensors already in tiled order (what hoisting gives), as flex runs; cudnn =
dense SDPA (SDPBackend.CUDNN_ATTENTION); flex = compiled FlexAttention with the case's block
mask on permuted tensors; flash = the same with ``kernel_options={"BACKEND": "FLASH"}``, where
it runs (else the reason is printed). ``--check`` first compares every method's dq, dk, dv on
two heads with the fp32 reference's autograd gradients (for cuDNN the reference with a window
of the whole grid, i.e. dense) and does not time a wrong one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kernels as K  # noqa: E402  (also puts the repository on sys.path)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gna_compile.config import make_spec  # noqa: E402
from gna_compile.kernels import tile_choice  # noqa: E402
from gna_compile.kernels.hopper.configs import TritonBwdConfig  # noqa: E402

BWD_FLOP_FACTOR = 2.5  # backward FLOPs per forward FLOP (dQ, dK, dV, and P recomputed)
METHODS = ("gna", "gna_tiled", "cudnn", "flex", "flash")
GRAD_TOL = 3e-2  # relative L2 of bf16 gradients vs the fp32 reference


def flops(spec, P: int, heads: int = K.H, head_dim: int = K.D) -> dict:
    """Effective FLOPs: forward = attended pairs x 4 x D (QK^T and PV) per head, as kernels.py."""
    fwd = K.attended_pairs(spec, P) * heads * 4 * head_dim
    return dict(fwd=fwd, bwd=BWD_FLOP_FACTOR * fwd, fwd_bwd=(1 + BWD_FLOP_FACTOR) * fwd)


def select_cases(spec: str, all_cases: dict) -> dict:
    names = [c for c in spec.split(",") if c] or list(all_cases)
    unknown = [c for c in names if c not in all_cases]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {list(all_cases)}")
    return {n: all_cases[n] for n in names}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare every method's gradients with the reference first")
    ap.add_argument("--cases", default="", help="comma-separated subset of kernels.py's case names")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (median), order rotated")
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="directory for kernels_backward.json")
    ap.add_argument("--bwd-configs", default="",
                    help="';'-separated TritonBwdConfig fields 'warps,stages,block_m,block_n[,split]' (split 1: "
                         "the full/partial loops): time the tiled backward kernels alone per config "
                         "and case first (a tuning probe; each config's gradients are checked first)")
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    try:
        args.bwd_configs = [TritonBwdConfig(*(int(x) for x in c.split(","))) for c in args.bwd_configs.split(";") if c]
    except (TypeError, ValueError) as e:
        ap.error(f"--bwd-configs: {e}")
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {METHODS}")
    return args


def _methods(spec, qt, kt, P, scale):
    """name -> (inputs builder, call): each call maps its own leaf tensors to the output, and
    ``to_natural`` maps that method's gradients back to natural token order for --check."""
    from gna_compile.kernels import flex_backend
    from gna_compile.kernels.op import gna_attention
    from gna_compile.kernels.permute import unpermute_tokens
    from gna_compile.kernels.triton_permute import permute_tokens_triton
    from torch.nn.attention import SDPBackend, sdpa_kernel
    shape = spec.shape
    fq = flex_backend.q_tile_for(spec, P, 0)

    def gna(q, k, v):
        return gna_attention(q, k, v, shape, spec.window, spec.stride, extra_prefix=P, scale=scale,
                             tiles=(qt, kt))

    def cudnn(q, k, v):
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

    def flex_with(options):
        return lambda q, k, v: flex_backend.run_permuted(q, k, v, spec, fq, P, 0, scale, kernel_options=options)[0]

    from gna_compile.kernels.hopper import gna_attention_permuted, gna_backward_permuted

    class Tiled(torch.autograd.Function):
        """The forward and backward kernels on tiled-order tensors (no permutation passes)."""

        @staticmethod
        def forward(ctx, q, k, v):
            out, lse = gna_attention_permuted(q, k, v, spec, qt, kt, P, 0, scale)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, g):
            return gna_backward_permuted(*ctx.saved_tensors, g.contiguous(), spec, qt, kt, P, 0, scale)

    natural = (lambda t: t, lambda t: t)
    tiled = (lambda t: permute_tokens_triton(t, shape, qt, P, 0), lambda g: unpermute_tokens(g, shape, qt, P, 0))
    permuted = (lambda t: permute_tokens_triton(t, shape, fq, P, 0), lambda g: unpermute_tokens(g, shape, fq, P, 0))
    return {"gna": (gna, natural), "gna_tiled": (Tiled.apply, tiled), "cudnn": (cudnn, natural),
            "flex": (flex_with(None), permuted), "flash": (flex_with({"BACKEND": "FLASH"}), permuted)}


def reference_spec(method, spec):
    """What a method computes: cuDNN is dense SDPA (a window of the whole grid), the rest GNA."""
    return make_spec(spec.shape, spec.shape) if method == "cudnn" else spec


def grad_errors(entry, q, k, v, g, ref) -> list[float]:
    """Relative L2 errors of one method's dq, dk, dv (in natural order) against ``ref``."""
    call, (to_layout, to_natural) = entry
    leaves = [to_layout(t.detach().contiguous()).requires_grad_(True) for t in (q, k, v)]
    grads = torch.autograd.grad(call(*leaves), leaves, to_layout(g.contiguous()))
    return [K.rel_err(to_natural(gr), r) for gr, r in zip(grads, ref)]


def reference_grads(q, k, v, g, spec, P, scale):
    from gna_compile.kernels.reference import reference_attention
    leaves = [t.detach().float().requires_grad_(True) for t in (q, k, v)]
    out, _ = reference_attention(*leaves, spec, P, 0, scale)
    return torch.autograd.grad(out, leaves, g.float())


def run_case(name, cfg, methods, check, rounds, log):
    shape, window, stride, P = cfg
    spec = make_spec(shape, window, stride)
    N = P + spec.num_tokens
    qt, kt = tile_choice.choose_tiles(spec, P, 0)
    scale = K.D ** -0.5
    res = dict(case=name, shape=shape, window=window, stride=stride, extra_prefix=P, N=N, q_tile=qt,
               kv_tile=kt, flops=flops(spec, P), skipped={})
    calls = _methods(spec, qt, kt, P, scale)
    q, k, v, g = (torch.randn(1, K.H, N, K.D, device="cuda", dtype=K.DTYPE) for _ in range(4))

    def prepared(m):
        call, (to_layout, _) = calls[m]
        return call, [to_layout(t.detach()).requires_grad_(True) for t in (q, k, v)], to_layout(g)

    fns = {}
    refs = {}
    hs = slice(0, 2)
    for m in methods:
        try:
            if check:
                rs = reference_spec(m, spec)
                if rs not in refs:
                    refs[rs] = reference_grads(q[:, hs], k[:, hs], v[:, hs], g[:, hs], rs, P, scale)
                errs = grad_errors(calls[m], q[:, hs], k[:, hs], v[:, hs], g[:, hs], refs[rs])
                res[f"grad_err_{m}"] = max(errs)
                if not max(errs) < GRAD_TOL:
                    raise RuntimeError(f"WRONG gradients (rel. L2 dq/dk/dv {', '.join(f'{e:.2e}' for e in errs)})")
            call, leaves, gg = prepared(m)
            torch.autograd.grad(call(*leaves), leaves, gg)  # compile / autotune outside the timing
            torch.cuda.synchronize()
        except Exception as e:  # keep the table going; report why
            res["skipped"][m] = f"{type(e).__name__}: {str(e)[:300]}"
            torch.cuda.empty_cache()
            log(f"# {name}: {m} not timed: {res['skipped'][m]}")
            continue

        def fwd(call=call, leaves=leaves):
            return call(*leaves)

        def fwd_bwd(call=call, leaves=leaves, gg=gg):
            return torch.autograd.grad(call(*leaves), leaves, gg)
        fns[f"{m}_fwd_ms"], fns[f"{m}_fwd_bwd_ms"] = fwd, fwd_bwd
    t0 = time.time()
    res.update(K.bench_rounds(fns, rounds) if fns else {})
    res["timing_s"] = time.time() - t0
    return summarise(res, methods)


def probe_configs(name, cfg, configs, log) -> dict:
    """ms of the tiled backward kernels alone (delta, dK/dV, dQ) per config, on one case."""
    from triton.testing import do_bench
    from gna_compile.kernels.hopper import gna_attention_permuted, gna_backward_permuted
    shape, window, stride, P = cfg
    spec = make_spec(shape, window, stride)
    qt, kt = tile_choice.choose_tiles(spec, P, 0)
    from gna_compile.kernels.tiled_op import tiled_length
    N = tiled_length(spec.shape, qt, P, 0)
    q, k, v, g = (torch.randn(1, K.H, N, K.D, device="cuda", dtype=K.DTYPE) for _ in range(4))
    out, lse = gna_attention_permuted(q, k, v, spec, qt, kt, P, 0)
    bwd_flops = flops(spec, P)["bwd"]
    from gna_compile.kernels.permute import unpermute_tokens
    hs = slice(0, 2)
    nat = [unpermute_tokens(t[:, hs], shape, qt, P, 0) for t in (q, k, v, g)]
    ref = reference_grads(*nat, spec, P, K.D ** -0.5)
    small = [t[:, hs].contiguous() for t in (q, k, v, out, lse, g)]
    res = {}
    for c in configs:
        try:
            grads = gna_backward_permuted(*small[:5], small[5], spec, qt, kt, P, 0, config=c)
            errs = [K.rel_err(unpermute_tokens(gr, shape, qt, P, 0), r) for gr, r in zip(grads, ref)]
            if not max(errs) < GRAD_TOL:
                log(f"# {name} bwd {c}: WRONG (rel. L2 dq/dk/dv {', '.join(f'{e:.2e}' for e in errs)}); not timed")
                continue
            ms = do_bench(lambda: gna_backward_permuted(q, k, v, out, lse, g, spec, qt, kt, P, 0, config=c))
        except Exception as e:  # a config that does not compile (registers, shared memory)
            log(f"# {name} {c}: {type(e).__name__}: {str(e)[:200]}")
            continue
        res[str(c)] = ms
        log(f"# {name} bwd {c}: {ms:.2f} ms, {bwd_flops / (ms * 1e-3) / 1e12:.0f} TFLOP/s")
    return res


def summarise(res, methods):
    """bwd = fwd+bwd - fwd, TFLOP/s of fwd+bwd; NaN for a method that was not timed."""
    nan = float("nan")
    for m in methods:
        fb, f = res.get(f"{m}_fwd_bwd_ms", nan), res.get(f"{m}_fwd_ms", nan)
        res[f"{m}_fwd_bwd_ms"], res[f"{m}_fwd_ms"] = fb, f
        res[f"{m}_bwd_ms"] = fb - f
        res[f"{m}_tflops"] = res["flops"]["fwd_bwd"] / (fb * 1e-3) / 1e12
    return res


def table(results, methods, title) -> list[str]:
    cols = [f"{m} {what}" for m in methods for what in ("fwd+bwd", "bwd", "TF/s")]
    lines = [title, "", "| case | N | " + " | ".join(cols) + " |", "|" + "---|" * (2 + len(cols))]
    for r in results:
        cells = []
        for m in methods:
            cells += [f"{r[f'{m}_fwd_bwd_ms']:.2f}", f"{r[f'{m}_bwd_ms']:.2f}", f"{r[f'{m}_tflops']:.0f}"]
        lines.append(f"| {r['case']} | {r['N']} | " + " | ".join(cells) + " |")
    skipped = [f"{r['case']} {m}: {why}" for r in results for m, why in r["skipped"].items()]
    if skipped:
        lines += ["", "not timed: " + "; ".join(skipped)]
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels_backward.py needs a CUDA GPU")
    torch._dynamo.config.cache_size_limit = 64
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    dev = torch.cuda.get_device_name()
    log(f"# device: {dev}; torch {torch.__version__}")
    results = []
    if args.bwd_configs:
        for name, cfg in select_cases(args.cases, K.cases()).items():
            probe_configs(name, cfg, args.bwd_configs, log)
    for name, cfg in select_cases(args.cases, K.cases()).items():
        r = run_case(name, cfg, args.methods, args.check, args.rounds, log)
        results.append(r)
        log("# " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    log("")
    for ln in table(results, args.methods, f"GNA forward+backward, B=1 H={K.H} D={K.D} bf16, median ms "
                    f"(do_bench), TF/s with backward = {BWD_FLOP_FACTOR}x forward FLOPs, {dev}"):
        log(ln)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "kernels_backward.json"), "w") as f:
            json.dump(dict(device=dev, bwd_flop_factor=BWD_FLOP_FACTOR, results=results), f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
