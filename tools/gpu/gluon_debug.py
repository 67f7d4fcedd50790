"""Device run: the experimental Gluon kernel (gna_compile/kernels/hopper/gluon_fwd.py) on a ladder of
perfectly block-sparse problems, from one KV tile per Q tile up to the paper's shapes.

Its first run on a GPU, so this script is made to localise a failure, not just to report one:
- every rung runs with the pipelined loop (overlap) and with the matmuls waited at once
  (baseline). Baseline right and overlap wrong means a pipelining hazard; both wrong means
  an indexing, phase or layout bug;
- each rung reports the relative error, NaNs (outputs are poisoned first), the LSE error,
  and the worst Q tiles with their KV-tile count;
- the shapes climb in KV tiles per Q tile (1, 2, 3, 5, 12), so the first wrong rung points at
  the stage or phase logic it exercises (2 stages: a third tile reuses stage 0); then extra
  tokens (whole tiles before and after the grid), then q/k/v as views of a packed QKV buffer
  (heads in the TMA view's columns), then the paper's shapes.

    python tools/gpu/gluon_debug.py [--stages 3] [--stale] [--out DIR]
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch  # noqa: E402

from gna_compile.config import make_spec  # noqa: E402
from gna_compile.kernels.hopper import gluon_launch  # noqa: E402
from gna_compile.kernels.permute import permute_tokens, unpermute_tokens  # noqa: E402
from gna_compile.kernels.reference import reference_attention  # noqa: E402

BF, F16 = torch.bfloat16, torch.float16
# name: (shape, window, stride, q_tile, B, H, Hkv, D, dtype, extra prefix, extra suffix, packed QKV)
LADDER = {
    "kv1": ((32, 64), (8, 16), (8, 16), (8, 16), 1, 1, 1, 128, BF, 0, 0, False),
    "kv2": ((32, 64), (8, 32), (8, 32), (8, 16), 1, 1, 1, 128, BF, 0, 0, False),
    "kv3": ((32, 64), (8, 48), (8, 16), (8, 16), 1, 1, 1, 128, BF, 0, 0, False),
    "kv5": ((16, 128), (8, 80), (8, 16), (8, 16), 1, 2, 2, 128, BF, 0, 0, False),
    "kv12_2d": ((32, 64), (32, 48), (16, 16), (8, 16), 2, 4, 2, 128, BF, 0, 0, False),
    "kv12_3d_d64_fp16": ((4, 16, 32), (4, 16, 24), (4, 16, 16), (2, 8, 8), 2, 4, 2, 64, F16, 0, 0, False),
    "extras_256_128": ((32, 64), (32, 48), (16, 16), (8, 16), 2, 2, 2, 128, BF, 256, 128, False),
    "packed_qkv": ((32, 64), (32, 48), (16, 16), (8, 16), 2, 2, 2, 128, BF, 0, 0, True),
    "packed_extras": ((32, 64), (32, 48), (16, 16), (8, 16), 1, 2, 2, 128, BF, 128, 0, True),
    "flux_s16": ((256, 256), (80, 80), (16, 16), (8, 16), 1, 2, 2, 128, BF, 0, 0, False),
    "flux_s16_text512": ((256, 256), (80, 80), (16, 16), (8, 16), 1, 2, 2, 128, BF, 512, 0, True),
    "hunyuan_s16x8x8": ((30, 48, 80), (18, 24, 24), (16, 8, 8), (2, 8, 8), 1, 2, 2, 128, BF, 0, 0, False),
    "cosmos_bs90": ((16, 44, 80), (16, 14, 24), (1, 1, 8), (16, 1, 8), 1, 2, 2, 128, BF, 0, 0, False),
}


def rung(name, overlap, stages=2, stale=False, ws=False, persistent=False):
    """One rung; with ``ws`` (the warp-specialised kernel) ``overlap`` is its ping-pong."""
    shape, w, s, qt, B, H, Hkv, D, dtype, P, S, packed = LADDER[name]
    spec = make_spec(shape, w, s)
    N = P + spec.num_tokens + S
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, h, N, D, device="cuda", generator=g).to(dtype) for h in (H, Hkv, Hkv))
    tiled = [permute_tokens(t, shape, qt, P, S).contiguous() for t in (q, k, v)]
    if packed:  # q/k/v as views of one [B, N, 3, H, D] buffer (needs H == Hkv)
        buf = torch.empty(B, N, 3, H, D, device="cuda", dtype=dtype)
        for i, t in enumerate(tiled):
            buf[:, :, i] = t.transpose(1, 2)
        tiled = [buf[:, :, i].transpose(1, 2) for i in range(3)]
    why = gluon_launch.unsupported_reason(*tiled, spec, qt, qt, P, S, None, False)
    if why:
        return dict(case=name, overlap=overlap, skipped=why)
    out = torch.full((B, H, N, D), float("nan"), device="cuda", dtype=dtype)
    lse = torch.full((B, H, N), float("nan"), device="cuda")
    try:
        gluon_launch.gna_forward_gluon(*tiled, spec, qt, 0.8 / math.sqrt(D), out, lse, overlap=overlap,
                                       extra_prefix=P, extra_suffix=S, stages=stages, stale=stale, ws=ws,
                                       pingpong=overlap, persistent=persistent)
        torch.cuda.synchronize()
    except Exception as e:  # report and go on with the ladder
        return dict(case=name, overlap=overlap, error=f"{type(e).__name__}: {e}"[:300])
    ref_o, ref_l = reference_attention(q.float(), k.float(), v.float(), spec, P, S, 0.8 / math.sqrt(D), None)
    ref_t = permute_tokens(ref_o, shape, qt, P, S)  # compare tile by tile in the kernel's order
    # (extra tiles first in the reported tile indices: prefix tiles, then the grid's, then suffix)
    bm = math.prod(qt)
    diff = (out.float() - ref_t).abs().nan_to_num(float("inf"))
    per_tile = diff.view(B, H, -1, bm, D).amax(dim=(0, 1, 3, 4))
    worst = torch.topk(per_tile, min(4, per_tile.numel()))
    o_nat = unpermute_tokens(out, shape, qt, P, S)
    l_nat = unpermute_tokens(lse[..., None], shape, qt, P, S)[..., 0]
    err = ((o_nat.double() - ref_o.double()).norm() / ref_o.double().norm()).item()
    from gna_compile.kernels.tile_choice import tile_stats
    vis, _, _, _ = tile_stats(spec, qt, qt)
    return dict(case=name, overlap=overlap, rel_err=err, nan_out=int(torch.isnan(out).sum()),
                nan_lse=int(torch.isnan(lse).sum()),
                lse_err=(l_nat.double() - ref_l.double()).abs().max().item(),
                kv_tiles_per_q_tile=vis / (spec.num_tokens // bm) + (P + S) // bm,
                worst_tiles=[(int(i), float(x)) for x, i in zip(worst.values, worst.indices)],
                ok=bool(err < 2e-2 and torch.isfinite(out).all()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", ""))
    ap.add_argument("--stages", type=int, default=2, help="K/V stages (2 or 3)")
    ap.add_argument("--stale", action="store_true", help="frozen row max (with its redo launch)")
    ap.add_argument("--ws", action="store_true",
                    help="the warp-specialised kernel (gluon_ws_fwd.py); its two columns: ping-pong off, on")
    ap.add_argument("--persistent", action="store_true", help="--ws with one program per SM")
    a = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {__import__('triton').__version__}")
    rows = []
    for name in LADDER:
        for overlap in (False, True):
            r = rung(name, overlap, a.stages, a.stale, a.ws, a.persistent)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"\n{'case':<18}{'kv/q':>5} {'baseline':>10} {'overlap':>10}")
    for name in LADDER:
        b, o = (next(r for r in rows if r["case"] == name and r["overlap"] == ov) for ov in (False, True))
        cell = lambda r: ("skip" if "skipped" in r else "ERROR" if "error" in r  # noqa: E731
                          else f"{r['rel_err']:.1e}{'' if r['ok'] else '!'}")
        print(f"{name:<18}{o.get('kv_tiles_per_q_tile', 0):5.0f} {cell(b):>10} {cell(o):>10}")
    if a.out:
        tag = ("_ws" if a.ws else "") + ("_persistent" if a.persistent else "") + f"_ns{a.stages}" + ("_stale" if a.stale else "")
        with open(os.path.join(a.out, f"gluon_debug{tag}.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
