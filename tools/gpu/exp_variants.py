"""Device experiment: the softmax variants of the GNA kernel, checked and timed.

The softmax of a 128x128 tile runs while the tensor cores idle (benchmarks/NOTES.md, run 6).
Launch-config field 4 (``fma_exp``) moves 1/4 (2) of the unmasked tiles' exponentials from
the special-function unit to the FMA pipe; field 5 (``stale``) freezes the row max in the
unmasked loop (no max reduction, no rescale; exact redo if a sum leaves [2^-60, 2^64)).
SASS read offline (tools/sm90_compile.py) shows no spills and no extra shuffles; only the GPU
can say whether they are faster. For each case and variant: relative error against the
reference on two heads (a wrong variant is not timed), then the median of 3 rotated rounds
of do_bench, tiled (permuted, TMA) and natural-order I/O.

    python tools/gpu/exp_variants.py [--cases flux_s16,...] [--out DIR]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import math  # noqa: E402

import torch  # noqa: E402

import kernels as kb  # noqa: E402  (benchmarks/kernels.py: cases, timing, errors)
from gna_compile.config import make_spec  # noqa: E402
from gna_compile.kernels.hopper import forward, triton_launch  # noqa: E402
from gna_compile.kernels.hopper.configs import TritonConfig  # noqa: E402
from gna_compile.kernels.tile_choice import choose_tiles  # noqa: E402
from gna_compile.kernels.permute import unpermute_tokens  # noqa: E402
from gna_compile.kernels.reference import reference_attention  # noqa: E402
from gna_compile.kernels.triton_permute import permute_tokens_triton  # noqa: E402

VARIANTS = ((0, 0), (2, 0), (0, 1), (2, 1))  # (fma_exp, stale)


def run(name, cfg):
    shape, window, stride, P = cfg
    spec = make_spec(shape, window, stride)
    N = P + spec.num_tokens
    qt, kt = choose_tiles(spec, P, 0)
    H, D = kb.H, kb.D
    q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=kb.DTYPE) for _ in range(3))
    qp, kp, vp = (permute_tokens_triton(t, shape, qt, P, 0) for t in (q, k, v))
    base = (8, 3, 0) if math.prod(qt) == 128 else (4, 2, 0)
    hs = slice(0, 2)
    ref_o, _ = reference_attention(q[:, hs].float(), k[:, hs].float(), v[:, hs].float(), spec, P, 0, None)
    fns, res = {}, dict(case=name, q_tile=qt, kv_tile=kt, base_config=base)
    for fx, st in VARIANTS:
        c = base + (fx, st)
        for nat in (False, True):
            a = (q, k, v) if nat else (qp, kp, vp)
            fn = (lambda a=a, c=c, nat=nat:  # noqa: E731
                  forward.gna_forward(*a, spec, qt, kt, P, 0, None, natural=nat, config=TritonConfig(*c)))
            o, _ = fn()
            o = o if nat else unpermute_tokens(o, shape, qt, P, 0)
            key = f"fx{fx}s{st}_{'nat' if nat else 'perm'}"
            res[f"err_{key}"] = err = kb.rel_err(o[:, hs], ref_o)
            kk = triton_launch.LAST_KERNEL[0]
            res[f"regs_{key}"] = getattr(kk, "n_regs", None)
            res[f"spills_{key}"] = getattr(kk, "n_spills", None)
            fns[f"{key}_ms"] = fn if err < 2e-2 else None
    res.update(kb.bench_rounds(fns, 3))
    res["tflops_best"] = kb.attended_pairs(spec, P) * H * 4 * D / (
        min(v_ for k_, v_ in res.items() if k_.endswith("_ms") and v_ == v_) * 1e-3) / 1e12
    return res


def run_text_mask(shape=(30, 48, 80), window=(18, 24, 24), stride=(16, 8, 8), text=256, padded=100):
    """HunyuanVideo's attention: 30x48x80 grid + ``text`` tokens behind it, the last ``padded``
    of them masked out (a key mask that may hide grid keys but does not). Tiled order, Q/K/V
    strided views of one packed tensor (as in the hoisted model, so no TMA): masked full tiles
    (the old path, grid_visible not given) vs the unmasked loop chosen per batch on the device
    (gna_attention_permuted), and no mask at all for scale."""
    from gna_compile.kernels.dispatch import KeyMask
    from gna_compile.kernels.permute import permute_tokens
    spec = make_spec(shape, window, stride)
    qt, kt = choose_tiles(spec, 0, text)
    H, D = kb.H, kb.D
    N = spec.num_tokens + text
    q, k, v = (torch.randn(1, H, N, D, device="cuda", dtype=kb.DTYPE) for _ in range(3))
    mask = torch.ones(1, N, dtype=torch.bool, device="cuda")
    mask[:, N - padded:] = False
    perm = [permute_tokens_triton(t, shape, qt, 0, text) for t in (q, k, v)]
    packed = torch.empty(1, perm[0].shape[2], 3, H, D, device="cuda", dtype=kb.DTYPE)
    for i, t in enumerate(perm):
        packed[:, :, i] = t.transpose(1, 2)
    qp, kp, vp = (packed[:, :, i].transpose(1, 2) for i in range(3))
    km = permute_tokens(mask.float()[:, :, None], shape, qt, 0, text)[..., 0].to(torch.int8).contiguous()
    hs = slice(0, 2)
    ref_o, _ = reference_attention(q[:, hs].float(), k[:, hs].float(), v[:, hs].float(), spec, 0, text, None, mask)
    res, fns = dict(case="hunyuan_text_mask", q_tile=qt, kv_tile=kt, text=text, padded=padded), {}
    for name, fn in (
            ("masked_full_ms", lambda: forward.gna_forward(qp, kp, vp, spec, qt, kt, 0, text, None, km, True,
                                                             natural=False)),
            ("visible_ms", lambda: forward.gna_attention_permuted(qp, kp, vp, spec, qt, kt, 0, text, None,
                                                                    KeyMask(mask, True))),
            ("no_mask_ms", lambda: forward.gna_forward(qp, kp, vp, spec, qt, kt, 0, text, None, natural=False))):
        o, _ = fn()
        err = kb.rel_err(unpermute_tokens(o, shape, qt, 0, text)[:, hs], ref_o)
        res["err_" + name[:-3]] = err
        fns[name] = fn if (err < 2e-2 or name == "no_mask_ms") else None
    res.update(kb.bench_rounds(fns, 3))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="flux_s16,hunyuan_s16x8x8,cosmos_bs90,flux_s1")
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    ap.add_argument("--no-text-mask", dest="text_mask", action="store_false",
                    help="skip the HunyuanVideo text-mask case")
    a = ap.parse_args()
    allc = kb.cases()
    rows = []
    print(f"# {torch.cuda.get_device_name()}; torch {torch.__version__}; "
          f"triton {__import__('triton').__version__}", flush=True)
    names = [f"fx{x}s{st}" for x, st in VARIANTS]
    hdr = f"{'case':<18}{'tiles':>14} " + " ".join(f"{f'{n}-{l}':>11}" for n in names for l in ("perm", "nat"))
    for name in [c for c in a.cases.split(",") if c]:
        r = run(name, allc[name])
        rows.append(r)
        print("# " + json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
    print(hdr)
    for r in rows:
        tiles = "x".join(map(str, r["q_tile"])) + "/" + "x".join(map(str, r["kv_tile"]))
        print(f"{r['case']:<18}{tiles:>14} " + " ".join(
            f"{r[f'{n}_{l}_ms']:11.3f}" for n in names for l in ("perm", "nat")))
    if a.text_mask:
        r = run_text_mask()
        rows.append(r)
        print("# " + json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
        print(f"hunyuan + {r['text']} text ({r['padded']} padded), tiled: masked full tiles {r['masked_full_ms']:.3f} ms, "
              f"unmasked loop (grid_visible) {r['visible_ms']:.3f} ms, no mask at all {r['no_mask_ms']:.3f} ms")
    if a.out:
        with open(os.path.join(a.out, "exp_variants.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
