"""Device experiment: the warp-specialised Gluon kernel (hopper/gluon_ws_fwd.py) against the
kernels it would replace, on the block-sparse cases of benchmarks/kernels.py.

Each variant is first checked against the reference on two heads (a wrong one is not timed);
then all of them are timed in the same rotated rounds (kb.bench_rounds), tiled order, with
the effective TFLOP/s of each. Variants: the Triton kernel's default config, the current
Gluon kernel (2 stages, frozen max), and the warp-specialised kernel over stages x frozen max
x ping-pong. Run tools/gpu/gluon_debug.py --ws first: it localises a wrong result.

    python tools/gpu/ws_probe.py [--cases flux_s16,...] [--out DIR]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import torch  # noqa: E402

import kernels as kb  # noqa: E402  (benchmarks/kernels.py: cases, timing, errors)
from gna_compile.config import make_spec  # noqa: E402
from gna_compile.kernels.hopper import forward  # noqa: E402
from gna_compile.kernels.hopper.configs import GluonConfig, TritonConfig  # noqa: E402
from gna_compile.kernels.permute import unpermute_tokens  # noqa: E402
from gna_compile.kernels.reference import reference_attention  # noqa: E402
from gna_compile.kernels.tile_choice import choose_tiles  # noqa: E402
from gna_compile.kernels.triton_permute import permute_tokens_triton  # noqa: E402

VARIANTS = {
    "triton": TritonConfig(8, 3, stale=True),
    "gluon": GluonConfig(2, True),
    "ws": GluonConfig(2, True, ws=True),
    "ws_nopp": GluonConfig(2, True, ws=True, pingpong=False),
    "ws_pers": GluonConfig(2, True, ws=True, persistent=True),
    "ws_pers_nopp": GluonConfig(2, True, ws=True, pingpong=False, persistent=True),
    "ws_pers_x": GluonConfig(2, False, ws=True, persistent=True),
}
BLOCK_SPARSE = "flux_s16,hunyuan_s16x8x8,cosmos_bs90,flux_s16_text512"


def run(name, cfg, variants):
    shape, window, stride, P = cfg
    spec = make_spec(shape, window, stride)
    N = P + spec.num_tokens
    qt, kt = choose_tiles(spec, P, 0)
    H, D = kb.H, kb.D
    q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=kb.DTYPE) for _ in range(3))
    qp, kp, vp = (permute_tokens_triton(t, shape, qt, P, 0) for t in (q, k, v))
    hs = slice(0, 2)
    ref_o, _ = reference_attention(q[:, hs].float(), k[:, hs].float(), v[:, hs].float(), spec, P, 0, None)
    fns, res = {}, dict(case=name, q_tile=qt, kv_tile=kt)
    for vname, c in variants.items():
        fn = lambda c=c: forward.gna_forward(qp, kp, vp, spec, qt, kt, P, 0, None, natural=False, config=c)  # noqa: E731
        try:
            o, _ = fn()
            torch.cuda.synchronize()
        except Exception as e:  # report, do not time
            res[f"error_{vname}"] = f"{type(e).__name__}: {e}"[:300]
            fns[f"{vname}_ms"] = None
            continue
        res[f"err_{vname}"] = err = kb.rel_err(unpermute_tokens(o, shape, qt, P, 0)[:, hs], ref_o)
        fns[f"{vname}_ms"] = fn if err < 2e-2 else None
    res.update(kb.bench_rounds(fns, 3))
    flops = kb.attended_pairs(spec, P) * H * 4 * D
    for vname in variants:
        ms = res.get(f"{vname}_ms", float("nan"))
        res[f"{vname}_tflops"] = flops / (ms * 1e-3) / 1e12 if ms == ms else float("nan")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=BLOCK_SPARSE)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    a = ap.parse_args()
    variants = {k: VARIANTS[k] for k in a.variants.split(",") if k}
    allc = kb.cases()
    print(f"# {torch.cuda.get_device_name()}; torch {torch.__version__}; "
          f"triton {__import__('triton').__version__}", flush=True)
    rows = []
    for name in [c for c in a.cases.split(",") if c]:
        r = run(name, allc[name], variants)
        rows.append(r)
        print("# " + json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    print(f"{'case':<18}" + "".join(f"{v:>16}" for v in variants) + "   (ms / TFLOP/s)")
    for r in rows:
        print(f"{r['case']:<18}" + "".join(
            f"{r.get(f'{v}_ms', float('nan')):8.2f}/{r.get(f'{v}_tflops', float('nan')):<7.0f}" for v in variants))
    if a.out:
        with open(os.path.join(a.out, "ws_probe.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
