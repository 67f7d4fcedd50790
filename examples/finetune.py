"""Fine-tune a random-weight DiT twice, dense and GNA, on a synthetic denoising task.

    python examples/finetune.py [--steps N] [--device cuda] [--size small|medium]
        [--window T H W] [--stride T H W] [--profile N] [--out DIR]

Why: the backend's training path (the GNA backward follows the rewritten forward) should be
usable end to end, not only gradient-exact on one step (tests/test_training.py). Both runs
start from the same weights and see the same batches and noise, so their loss curves differ
only by the attention. The task: a fixed "dataset" of smooth random latents, noised at a random
level per sample, the model predicting the noise (MSE). The noise level enters through the
text tokens' first feature (TinyVideoDiT has no timestep input).

Prints the median time per step after warm-up (CUDA synchronised) and the final losses of
both runs (``--profile N``: then N more steps under torch.profiler, its top kernels printed,
to see whether a step is bound by the GPU or the host); writes ``finetune.png`` (both loss
curves) and ``finetune.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import gna_compile  # noqa: E402
from gna_compile import GNA, Policy  # noqa: E402
from gna_compile.models import TinyVideoDiT  # noqa: E402

# size -> model kwargs, latent [C, T, H, W] (patch 1x2x2 makes the token grid T x H/2 x W/2),
# GNA window/stride on that grid, text tokens, batch, dataset size.
SIZES = {
    "small": dict(model=dict(in_channels=4, dim=32, heads=2, depth=2, text_dim=16),
                  latent=(4, 4, 8, 8), window=(2, 3, 3), stride=(1, 1, 1), text=4, batch=2, samples=8),
    "medium": dict(model=dict(in_channels=16, dim=512, heads=8, depth=4, text_dim=64),
                   latent=(16, 16, 64, 64), window=(8, 16, 16), stride=(4, 8, 8), text=16, batch=1,
                   samples=16),
}


def make_dataset(cfg, seed: int):
    """Smooth random latents (coarse noise upsampled), so neighbouring tokens are related and
    local attention has something to use; plus one fixed random caption per sample."""
    g = torch.Generator().manual_seed(seed)
    C, T, H, W = cfg["latent"]
    n = cfg["samples"]
    coarse = torch.randn(n, C, max(T // 2, 1), max(H // 4, 1), max(W // 4, 1), generator=g)
    x0 = torch.nn.functional.interpolate(coarse, size=(T, H, W), mode="trilinear", align_corners=False)
    x0 = x0 / x0.std()
    text = torch.randn(n, cfg["text"], cfg["model"]["text_dim"], generator=g)
    return x0, text


def batches(x0, text, cfg, steps: int, seed: int):
    """The same sequence of (noisy latent, text, noise) for every run."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x0.shape[0], (cfg["batch"],), generator=g)
        a = torch.rand(cfg["batch"], generator=g) * 0.9 + 0.05  # signal fraction of the variance
        noise = torch.randn(x0[idx].shape, generator=g)
        s = a.view(-1, 1, 1, 1, 1)
        xt = s.sqrt() * x0[idx] + (1 - s).sqrt() * noise
        t = text[idx].clone()
        t[..., 0] = a[:, None]
        yield xt, t, noise


def train(model, compiled, data, args, device):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    losses, times = [], []
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    for xt, t, noise in data:
        xt, t, noise = xt.to(device), t.to(device), noise.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with amp:
            pred = compiled(xt, t)
        loss = (pred.float() - noise).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return losses, times


def profile_steps(model, compiled, data, args, device, name: str) -> None:
    """Where a step's device time goes (the top kernels), to explain a per-step ratio."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        train(model, compiled, data, args, device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"# {name}: {args.profile} profiled steps, top kernels by {key}")
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=70), flush=True)


def median_step_ms(times, warmup: int) -> float:
    """Median after the first ``warmup`` steps (compilation); all steps if there are no more."""
    rest = times[warmup:] or times
    return 1e3 * statistics.median(rest)


def save_plot(path: str, curves: dict) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
        from plot_png import line_plot
        return "; ".join(line_plot(path, curves))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in curves.items():
        ax.plot(ys, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=None, help="default: 300 on CUDA, 5 on the CPU")
    ap.add_argument("--size", choices=list(SIZES), default=None, help="default: medium on CUDA, small on the CPU")
    ap.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: 3e-3 small, 3e-4 medium)")
    ap.add_argument("--inner", default=None, help="compiler behind Dynamo for both runs (default: "
                    "inductor on CUDA, eager on the CPU, where Inductor's C++ build dominates)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out of the timing median")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 autocast (default: on for --size medium on CUDA)")
    ap.add_argument("--window", type=int, nargs=3, default=None, help="GNA window (default: the size's)")
    ap.add_argument("--stride", type=int, nargs=3, default=None, help="GNA stride (default: the size's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after each run, profile N more steps and print the kernels that take the time")
    ap.add_argument("--out", default=os.environ.get("OUT", "finetune_out"))
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.steps = args.steps if args.steps is not None else (300 if cuda else 5)
    args.size = args.size or ("medium" if cuda else "small")
    args.lr = args.lr if args.lr is not None else (3e-3 if args.size == "small" else 3e-4)
    args.inner = args.inner or ("inductor" if cuda else "eager")
    args.warmup = args.warmup if args.warmup is not None else min(3, max(args.steps - 1, 0))
    args.bf16 = args.bf16 if args.bf16 is not None else (cuda and args.size == "medium")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    cfg = dict(SIZES[args.size])
    cfg.update({k: tuple(getattr(args, k)) for k in ("window", "stride") if getattr(args, k)})
    torch.manual_seed(args.seed)
    init = TinyVideoDiT(**cfg["model"]).state_dict()
    x0, text = make_dataset(cfg, args.seed + 1)
    C, T, H, W = cfg["latent"]
    grid = (T, H // 2, W // 2)
    print(f"# {args.size}: latent {cfg['latent']}, token grid {grid} ({math.prod(grid)} tokens) + "
          f"{cfg['text']} text, {cfg['model']}, GNA window {cfg['window']} stride {cfg['stride']}, "
          f"{args.steps} steps, lr {args.lr}, inner {args.inner}, bf16 autocast {args.bf16}, {device}")
    runs = {}
    for name in ("dense", "gna"):
        torch._dynamo.reset()
        model = TinyVideoDiT(**cfg["model"])
        model.load_state_dict(copy.deepcopy(init))
        model.to(device).train()
        if name == "dense":
            be = args.inner
        else:
            be = gna_compile.backend(Policy(default=GNA(cfg["window"], cfg["stride"])), inner=args.inner)
        compiled = torch.compile(model, backend=be)
        losses, times = train(model, compiled, batches(x0, text, cfg, args.steps, args.seed + 2), args, device)
        if args.profile:
            profile_steps(model, compiled, batches(x0, text, cfg, args.profile, args.seed + 3), args, device, name)
        rewritten = None if name == "dense" else sum(r.rewritten for r in be.records)
        runs[name] = dict(losses=losses, step_ms=median_step_ms(times, args.warmup),
                          first_step_s=times[0], rewritten_calls=rewritten)
        extra = "" if rewritten is None else f", {rewritten} attention calls rewritten to GNA"
        print(f"{name:>5}: {runs[name]['step_ms']:.1f} ms/step (median after {args.warmup} warm-up steps; "
              f"first step {times[0]:.1f} s), loss {losses[0]:.4f} -> {losses[-1]:.4f}{extra}", flush=True)
    d, g = runs["dense"]["step_ms"], runs["gna"]["step_ms"]
    print(f"gna vs dense: {d / g:.2f}x per step; final loss dense {runs['dense']['losses'][-1]:.4f}, "
          f"gna {runs['gna']['losses'][-1]:.4f}")
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "finetune.png")
    how = save_plot(png, {n: r["losses"] for n, r in runs.items()})
    with open(os.path.join(args.out, "finetune.json"), "w") as f:
        json.dump(dict(size=args.size, device=str(device), steps=args.steps, lr=args.lr, inner=args.inner,
                       bf16=args.bf16, seed=args.seed, grid=grid, window=cfg["window"],
                       stride=cfg["stride"], runs=runs), f, indent=1)
    print(f"wrote {png} ({how}) and finetune.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
