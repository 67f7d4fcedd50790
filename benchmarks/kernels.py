"""Kernel benchmark of issue 4: GNA (Triton) vs cuDNN dense SDPA vs FlexAttention, on an H100.

    python benchmarks/kernels.py [--check] [--cases flux_s16,hunyuan_s1,...] [--out DIR]

B=1, 24 heads, head dim 128, bf16; times are medians of triton.testing.do_bench (ms).
Columns: cuDNN = dense SDPA (cuDNN backend); flex = compiled FlexAttention with a block mask
from the same GNA definition in the same tile order (on permuted tensors); flash = the same
call with ``kernel_options={"BACKEND": "FLASH"}`` (FlashAttention-4 in the CuTe DSL; wheels:
../shared/tools/fa4_wheels.sh; both flex columns share one block mask built per tile,
flex_backend.block_classes); ours = Triton GNA
kernel on permuted tensors; ours-nat = the same kernel reading/writing natural token order
(what backend="triton" runs, no permutation pass); ours+perm = fused Triton permute of Q, K, V
+ kernel + unpermute of O; x-cuDNN / x-flex / x-flash = speedups of min(ours, ours-nat); TFLOP/s (flashTF) =
attended pairs x 4 x D / time of that best; bound = FLOP-wise speedup bound (N^2 / attended
pairs, extras included); sim = simulator's predicted speedup over dense (tile visits, partial
tiles weighted by the kernel's measured mask penalty, tile_choice.PARTIAL_PENALTY); perm% = (permute Q,K,V + unpermute
O) / kernel time. ``--check`` first compares ours, ours-nat and flex with the reference on
two heads (relative L2 error) and refuses to time a wrong kernel. Every time is the median
of ``--rounds`` do_bench medians taken in rotated order (spreads are in the JSON).
The autotuner (kernels/hopper/forward.gna_forward) picks, per problem, among the Triton kernel's launch
configs and, for perfectly block-sparse calls in tiled order, the Gluon kernel's variants
(kernels/hopper/gluon_ws_fwd.py, gluon_fwd.py); the table prints its choice. ``--gluon`` also times the Gluon kernel alone
(configs.GLUON_FORCED) where it applies, checked like the others, in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from gna_compile.config import make_spec  # noqa: E402
from gna_compile.kernels import tile_choice  # noqa: E402
from gna_compile.kernels.hopper import autotune, forward, gluon_launch  # noqa: E402
from gna_compile.kernels.hopper.configs import GLUON_FORCED  # noqa: E402
from gna_compile.kernels.permute import unpermute_tokens  # noqa: E402
from gna_compile.kernels.reference import reference_attention  # noqa: E402
from gna_compile.kernels.triton_permute import permute_tokens_triton, unpermute_tokens_triton  # noqa: E402

H, D, DTYPE = 24, 128, torch.bfloat16


def _block_sparse_config(shape, fallback):
    """The simulator's ~90% sparse window/stride for ``shape`` over 128-token Q tiles:
    perfectly block-sparse where such a config exists, else the fastest one (21x45x80, Wan
    720p, has none: 21 and 45 are odd, so every tiling pads dim 0 or 1 and the key tiles
    holding padding are partial)."""
    try:
        from gna_compile.sim import candidate_tiles, search
        tiles = [(q, k) for q, k in candidate_tiles(shape)
                 if math.prod(q) == 128 and math.prod(k) in (64, 128)]
        found = search(shape, sparsity=0.9, require_block_sparse=True, tiles=tiles, top=1)
        if not found:
            found = search(shape, sparsity=0.9, tiles=tiles, top=1)
            print(f"# {shape}: no perfectly block-sparse config; the simulator's fastest: "
                  f"w={found[0].window} s={found[0].stride} ({found[0].partial_tiles} of "
                  f"{found[0].visited_tiles} tile visits partial)", file=sys.stderr)
        return shape, found[0].window, found[0].stride
    except Exception as e:  # simulator search not available: a known config
        print(f"# simulator search unavailable ({e}); using a fixed config for {shape}", file=sys.stderr)
        return shape, *fallback


def cases():
    cos = _block_sparse_config((16, 44, 80), ((16, 14, 24), (1, 1, 8)))  # Cosmos 720p latent
    wan = _block_sparse_config((21, 45, 80), ((19, 24, 16), (1, 8, 16)))  # Wan 2.1 720p, 81 frames
    return {
        "flux_s16": ((256, 256), (80, 80), (16, 16), 0),
        "flux_s1": ((256, 256), (80, 80), (1, 1), 0),
        "hunyuan_s16x8x8": ((30, 48, 80), (18, 24, 24), (16, 8, 8), 0),
        "hunyuan_s1": ((30, 48, 80), (18, 24, 24), (1, 1, 1), 0),
        "cosmos_bs90": (cos[0], cos[1], cos[2], 0),
        "flux_s16_text512": ((256, 256), (80, 80), (16, 16), 512),
        "wan_90": (wan[0], wan[1], wan[2], 0),
    }


def bench(fn):
    return do_bench(fn, warmup=25, rep=150, return_mode="median")


ROUNDS = 3


def bench_rounds(fns, rounds):
    """Median over rounds of do_bench medians, the order rotated each round, so that no
    method is always timed right after the hot dense runs (clock/thermal drift)."""
    names = [n for n, f in fns.items() if f is not None]
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            times[n].append(bench(fns[n]))
    out = {n: sorted(t)[len(t) // 2] for n, t in times.items()}
    out.update({n.replace("_ms", "_spread"): (max(t) - min(t)) / min(t) for n, t in times.items()})
    for n, f in fns.items():
        if f is None:
            out[n] = float("nan")
    return out


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def attended_pairs(spec, P, S=0):
    from gna_compile.sim.core import dim_pairs
    pairs = math.prod(dim_pairs(*d) for d in spec.dims())
    n, e = spec.num_tokens, P + S
    return pairs + n * e + e * (n + e)


def sim_speedup(spec, qt, kt, P):
    from gna_compile.sim import simulate
    r = simulate(spec.shape, spec.window, spec.stride, spec.dilation, spec.causal, qt, kt, P, 0,
                 mask_penalty=tile_choice.PARTIAL_PENALTY)
    return r.tile_speedup_with_extras, r.perfectly_block_sparse, r.mask_penalty


def copy_bandwidth():
    x = torch.empty(1024 ** 3 // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x))
    return 2 * x.numel() * 2 / (t * 1e-3) / 1e9  # GB/s, read + write


def run_case(name, cfg, check, flex_ok, log, gluon=False, flash_ok=True):
    from gna_compile.kernels import flex_backend
    shape, window, stride, P = cfg
    spec = make_spec(shape, window, stride)
    N = P + spec.num_tokens
    qt, kt = tile_choice.choose_tiles(spec, P, 0)
    q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=DTYPE) for _ in range(3))
    res = dict(case=name, shape=shape, window=window, stride=stride, extra_prefix=P, N=N,
               q_tile=qt, kv_tile=kt)
    scale = D ** -0.5
    perm = lambda t: permute_tokens_triton(t, shape, qt, P, 0)  # noqa: E731
    qp, kp, vp = perm(q), perm(k), perm(v)
    o_nat = torch.empty_like(q)
    l_nat = torch.empty(1, H, N, device="cuda", dtype=torch.float32)
    o_p = torch.empty_like(qp)
    l_p = torch.empty(1, H, qp.shape[2], device="cuda", dtype=torch.float32)

    def ours_nat():
        return forward.gna_forward(q, k, v, spec, qt, kt, P, 0, scale, natural=True, out=o_nat, lse=l_nat)

    def ours_perm():
        return forward.gna_forward(qp, kp, vp, spec, qt, kt, P, 0, scale, natural=False, out=o_p, lse=l_p)

    def ours_plus_perm():
        a, b, c = perm(q), perm(k), perm(v)
        o, _ = forward.gna_forward(a, b, c, spec, qt, kt, P, 0, scale, natural=False)
        return unpermute_tokens_triton(o, shape, qt, P, 0)

    def permutes():
        perm(q), perm(k), perm(v)
        return unpermute_tokens_triton(o_p, shape, qt, P, 0)

    gluon_fn = None
    if gluon:
        why = gluon_launch.unsupported_reason(qp, kp, vp, spec, qt, kt, P, 0, None, False)
        res["gluon_applies"] = why or "yes"
        if why is None:
            o_g = torch.empty_like(qp)
            l_g = torch.empty(1, H, qp.shape[2], device="cuda", dtype=torch.float32)
            gluon_fn = lambda: forward.gna_forward(qp, kp, vp, spec, qt, kt, P, 0, scale, natural=False,  # noqa: E731
                                                   out=o_g, lse=l_g, config=GLUON_FORCED)
            try:
                gluon_fn()
                torch.cuda.synchronize()
            except Exception as e:  # keep the table going; report why
                log(f"# {name}: gluon failed: {type(e).__name__}: {e}")
                res["gluon_applies"] = f"failed: {type(e).__name__}"
                gluon_fn = None

    flex_fn = flash_fn = None
    if flex_ok:
        fq = flex_backend.q_tile_for(spec, P, 0)
        fqp, fkp, fvp = (permute_tokens_triton(t, shape, fq, P, 0) for t in (q, k, v))

        def flex_with(options):
            fn = lambda: flex_backend.run_permuted(fqp, fkp, fvp, spec, fq, P, 0, scale,  # noqa: E731
                                                   kernel_options=options)
            try:
                fn()
                torch.cuda.synchronize()
                return fn
            except Exception as e:  # keep the table going; report why
                log(f"# {name}: flex {options or ''} failed: {type(e).__name__}: {str(e)[:300]}")
                return None
        flex_fn = flex_with(None)
        flash_fn = flex_with({"BACKEND": "FLASH"}) if flash_ok else None

    t0 = time.time()
    n_log = len(autotune.TUNE_LOG)
    ours_nat()
    ours_perm()
    res["compile_s"] = time.time() - t0
    res["tune"] = [(str(c), round(t, 3)) for c, t in autotune.TUNE_LOG[n_log:]]
    if check:
        hs = slice(0, 2)
        ref_o, ref_l = reference_attention(q[:, hs].float(), k[:, hs].float(), v[:, hs].float(), spec, P, 0, scale)
        res["err_nat"] = rel_err(o_nat[:, hs], ref_o)
        res["err_perm"] = rel_err(unpermute_tokens(o_p[:, hs], shape, qt, P, 0), ref_o)
        fin = torch.isfinite(ref_l)
        res["lse_err_nat"] = (l_nat[:, hs][fin] - ref_l[fin]).abs().max().item()
        res["err_plus_perm"] = rel_err(ours_plus_perm()[:, hs], ref_o)
        if flex_fn is not None:
            fo, _ = flex_fn()
            res["err_flex"] = rel_err(unpermute_tokens(fo[:, hs], shape, fq, P, 0), ref_o)
        if flash_fn is not None:
            fo, _ = flash_fn()
            res["err_flash"] = rel_err(unpermute_tokens(fo[:, hs], shape, fq, P, 0), ref_o)
            if not res["err_flash"] < 2e-2:
                log(f"# {name}: flex-FLASH WRONG (err {res['err_flash']:.2e}); not timed")
                flash_fn = None
        if gluon_fn is not None:
            go, gl_ = gluon_fn()
            res["err_gluon"] = rel_err(unpermute_tokens(go[:, hs], shape, qt, P, 0), ref_o)
            gl_nat = unpermute_tokens(gl_[:, hs, :, None], shape, qt, P, 0)[..., 0]
            res["lse_err_gluon"] = (gl_nat[fin] - ref_l[fin]).abs().max().item()
            if not (res["err_gluon"] < 2e-2 and res["lse_err_gluon"] < 2e-2):
                log(f"# {name}: gluon WRONG (err {res['err_gluon']:.2e}, lse {res['lse_err_gluon']:.2e}); not timed")
                res["gluon_applies"] = "wrong result"
                gluon_fn = None
        del ref_o, ref_l
        bad = [k_ for k_ in ("err_nat", "err_perm", "err_plus_perm") if not res[k_] < 2e-2]
        if res.get("err_flex", 0) >= 2e-2 or res.get("err_flex", 0) != res.get("err_flex", 0):
            log(f"# {name}: flex WRONG (err {res['err_flex']:.2e}); not timed")
            flex_fn = None
        if bad:
            log(f"# {name}: ours WRONG {[(b, res[b]) for b in bad]}; not timed")
            res["wrong"] = True
            return res
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def cudnn():
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

    fns = {"cudnn_ms": cudnn, "flex_ms": flex_fn, "flash_ms": flash_fn, "ours_ms": ours_perm,
           "ours_nat_ms": ours_nat,
           "ours_perm_ms": ours_plus_perm, "permutes_ms": permutes}
    if gluon_fn is not None:
        fns["gluon_ms"] = gluon_fn
    res.update(bench_rounds(fns, ROUNDS))
    best = min(res["ours_ms"], res["ours_nat_ms"])
    res["best_ms"] = best
    pairs = attended_pairs(spec, P) * H
    res["tflops"] = pairs * 4 * D / (best * 1e-3) / 1e12
    res["x_cudnn"] = res["cudnn_ms"] / best
    res["x_flex"] = res["flex_ms"] / best
    res["x_flash"] = res["flash_ms"] / best
    res["flash_tflops"] = pairs * 4 * D / (res["flash_ms"] * 1e-3) / 1e12
    res["flop_bound_x"] = (N * N) / attended_pairs(spec, P)
    res["sim_x"], res["block_sparse"], res["sim_penalty"] = sim_speedup(spec, qt, kt, P)
    res["perm_share"] = res["permutes_ms"] / res["ours_ms"]
    if "gluon_ms" in res:
        res["gluon_x_flex"] = res["flex_ms"] / res["gluon_ms"]
        res["gluon_x_cudnn"] = res["cudnn_ms"] / res["gluon_ms"]
        res["gluon_tflops"] = pairs * 4 * D / (res["gluon_ms"] * 1e-3) / 1e12
    perm_bytes = (4 * q.numel() + 4 * qp.numel()) * q.element_size()
    res["perm_GBps"] = perm_bytes / (res["permutes_ms"] * 1e-3) / 1e9
    res["chosen"] = {("nat" if k_[10] else "tiled"): str(v_) for k_, v_ in autotune.CACHE.items()
                     if k_[:5] == (tuple(spec.dims()), tuple(qt), tuple(kt), P, 0)}
    return res


def mask_penalty_fit(results, all_cases) -> str:
    """The simulator's MASK_PENALTY from this run: the cost of one full 128x128-token tile visit
    from the cases with no partial tiles, then, for the others, what a partial visit costs in
    full visits (tile visits from tile_choice.tile_stats, natural-order kernel, per head)."""
    rows = {r["case"]: r for r in results if not r.get("wrong")}
    unit, parts = [], []
    for name, r in rows.items():
        shape, window, stride, P = all_cases[name]
        if P:
            continue
        spec = make_spec(shape, window, stride)
        vis, full, _, _ = tile_choice.tile_stats(spec, r["q_tile"], r["kv_tile"])
        size = math.prod(r["q_tile"]) * math.prod(r["kv_tile"]) / 128 ** 2
        (unit if vis == full else parts).append((name, r["ours_nat_ms"] / H, full * size, (vis - full) * size))
    if not unit or not parts:
        return ""
    per_full = sum(t / f for _, t, f, _ in unit) / len(unit)
    fits = [f"{n} {(t - f * per_full) / (p * per_full):.2f}" for n, t, f, p in parts if p]
    return (f"mask penalty fit: full 128x128 visit {1e3 * per_full:.4f} us per head "
            f"({', '.join(n for n, *_ in unit)}); partial visit in full visits: " + ", ".join(fits)
            + f" (simulator uses {tile_choice.PARTIAL_PENALTY})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="verify every kernel against the reference first")
    ap.add_argument("--cases", default="", help="comma-separated subset of case names")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-flash", action="store_true",
                    help="skip FlexAttention's FLASH backend (FlashAttention-4, needs its wheels)")
    ap.add_argument("--gluon", action="store_true", help="also time the experimental Gluon kernel")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (median), order rotated")
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="directory for results.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/kernels.py needs a CUDA GPU")
    torch._dynamo.config.cache_size_limit = 64
    global ROUNDS
    ROUNDS = args.rounds
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    dev = torch.cuda.get_device_name()
    log(f"# device: {dev}; torch {torch.__version__}; triton {__import__('triton').__version__}")
    bw = copy_bandwidth()
    log(f"# device copy bandwidth (read+write): {bw:.0f} GB/s")
    all_cases = cases()
    names = [c for c in args.cases.split(",") if c] or list(all_cases)
    results = []
    for name in names:
        t0 = time.time()
        r = run_case(name, all_cases[name], args.check, not args.no_flex, log, args.gluon, not args.no_flash)
        r["wall_s"] = time.time() - t0
        results.append(r)
        log("# " + json.dumps({k_: (round(v_, 4) if isinstance(v_, float) else v_) for k_, v_ in r.items()
                               if k_ != "config"}))
    hdr = (f"{'case':<18}{'N':>7} {'tiles':>14} {'cuDNN':>8} {'flex':>8} {'flash':>8} {'ours':>8} {'ours-nat':>8} "
           f"{'ours+perm':>9} {'x-cuDNN':>7} {'x-flex':>6} {'x-flash':>7} {'TFLOP/s':>7} {'flashTF':>7} "
           f"{'bound':>6} {'sim':>6} {'perm%':>6}")
    log("")
    log(f"GNA forward, B=1 H={H} D={D} bf16, median ms (do_bench), {dev}")
    log(hdr)
    for r in results:
        tiles = "x".join(map(str, r["q_tile"])) + "/" + "x".join(map(str, r["kv_tile"]))
        if r.get("wrong"):
            log(f"{r['case']:<18}{r['N']:>7} {tiles:>14}  WRONG RESULT (see log), not timed")
            continue
        log(f"{r['case']:<18}{r['N']:>7} {tiles:>14} {r['cudnn_ms']:8.2f} {r['flex_ms']:8.2f} "
            f"{r['flash_ms']:8.2f} {r['ours_ms']:8.2f} {r['ours_nat_ms']:8.2f} {r['ours_perm_ms']:9.2f} "
            f"{r['x_cudnn']:7.2f} {r['x_flex']:6.2f} {r['x_flash']:7.2f} {r['tflops']:7.0f} "
            f"{r['flash_tflops']:7.0f} {r['flop_bound_x']:6.2f} {r['sim_x']:6.2f} {100 * r['perm_share']:5.1f}%")
    log("permutation bandwidth (Q,K,V permute + O unpermute): "
        + ", ".join(f"{r['case']} {r['perm_GBps']:.0f} GB/s ({100 * r['perm_GBps'] / bw:.0f}% of copy)"
                    for r in results if not r.get("wrong")))
    if args.gluon:
        log("gluon (experimental, permuted tensors): " + "; ".join(
            f"{r['case']} " + (f"{r['gluon_ms']:.2f} ms, x-flex {r['gluon_x_flex']:.2f}, x-cuDNN "
                               f"{r['gluon_x_cudnn']:.2f}, {r['gluon_tflops']:.0f} TFLOP/s"
                               if "gluon_ms" in r else f"not timed ({r.get('gluon_applies')})")
            for r in results if not r.get("wrong")))
    log("autotuned launch config (tiled / natural order): "
        + ", ".join(f"{r['case']} {r.get('chosen', {}).get('tiled')} / {r.get('chosen', {}).get('nat')}"
                    for r in results if not r.get("wrong")))
    fit = mask_penalty_fit(results, all_cases)
    if fit:
        log(fit)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "kernels.json"), "w") as f:
            json.dump(dict(device=dev, copy_GBps=bw, results=results), f, indent=1, default=str)
        with open(os.path.join(args.out, "kernels.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
