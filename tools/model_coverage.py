"""Which attention calls of real model classes the gna backend proves, on the CPU.

Builds tiny random-weight diffusers transformers (no hub) and the built-in video DiT, runs
``gna_compile.explain`` with ``GNA(window=2)`` on every call (packed-latent models get their
grid from ``Policy(layout=...)``, as a user would give it), and prints per model the attention
calls, how many are rewritten, and why the others stay dense. Only ``explain``, ``GNA`` and
``Policy`` are used, so the same script compares two versions of the package
(``PYTHONPATH=<other checkout> python tools/model_coverage.py``).

    python tools/model_coverage.py [--models flux,hunyuan,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings

import torch


def _flux():
    import diffusers
    m = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=2,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                         pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
    h, w = 4, 6
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(float(h)), torch.arange(float(w)), indexing="ij"), -1)
    kw = dict(hidden_states=torch.randn(1, h * w, 4), encoder_hidden_states=torch.randn(1, 5, 16),
              pooled_projections=torch.randn(1, 8), timestep=torch.tensor([1.0]), img_ids=ids.reshape(-1, 3),
              txt_ids=torch.zeros(5, 3))
    return m, kw, dict(layout=(h, w))


def _sd3():
    import diffusers
    m = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                        pooled_projection_dim=8, out_channels=4, pos_embed_max_size=8)
    kw = dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 5, 16),
              pooled_projections=torch.randn(1, 8), timestep=torch.tensor([1.0]))
    return m, kw, {}


def _hunyuan():
    import diffusers
    m = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))
    kw = dict(hidden_states=torch.randn(1, 4, 3, 8, 8), timestep=torch.tensor([1.0]),
              encoder_hidden_states=torch.randn(1, 5, 16),
              encoder_attention_mask=torch.tensor([[True, True, True, False, False]]),
              pooled_projections=torch.randn(1, 8), guidance=torch.tensor([1.0]))
    return m, kw, {}


def _cosmos(pad_mask=False):
    import diffusers
    m = diffusers.CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=24, num_layers=2, mlp_ratio=2.0,
        text_embed_dim=16, adaln_lora_dim=8, max_size=(8, 16, 16), patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0),
        concat_padding_mask=pad_mask, extra_pos_embed_type="learnable")
    kw = dict(hidden_states=torch.randn(1, 4, 3, 8, 8), timestep=torch.tensor([1.0]),
              encoder_hidden_states=torch.randn(1, 5, 16))
    if pad_mask:
        kw["padding_mask"] = torch.ones(1, 1, 8, 8)
    return m, kw, {}


def _wan():
    import diffusers
    m = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2)
    kw = dict(hidden_states=torch.randn(1, 4, 3, 8, 8), timestep=torch.tensor([1]),
              encoder_hidden_states=torch.randn(1, 5, 16))
    return m, kw, {}


def _ltx():
    import diffusers
    m = diffusers.LTXVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                                             cross_attention_dim=16, num_layers=2, caption_channels=16)
    f, h, w = 3, 4, 4
    kw = dict(hidden_states=torch.randn(1, f * h * w, 4), encoder_hidden_states=torch.randn(1, 5, 16),
              timestep=torch.tensor([1]), encoder_attention_mask=torch.ones(1, 5), num_frames=f, height=h, width=w)
    return m, kw, dict(layout=(f, h, w))


def _mochi():
    import diffusers
    m = diffusers.MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                                          pooled_projection_dim=8, in_channels=4, text_embed_dim=16, time_embed_dim=8,
                                          max_sequence_length=5)
    kw = dict(hidden_states=torch.randn(1, 4, 3, 8, 8), encoder_hidden_states=torch.randn(1, 5, 16),
              timestep=torch.tensor([1]), encoder_attention_mask=torch.ones(1, 5, dtype=torch.bool))
    return m, kw, {}


def _cogvideox():
    import diffusers
    m = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2, sample_width=8,
        sample_height=8, sample_frames=9, patch_size=2, patch_size_t=None, text_embed_dim=16, time_embed_dim=8,
        max_text_seq_length=5, use_rotary_positional_embeddings=False)
    kw = dict(hidden_states=torch.randn(1, 3, 4, 8, 8), encoder_hidden_states=torch.randn(1, 5, 16),
              timestep=torch.tensor([1]))
    return m, kw, {}


def _allegro():
    import diffusers
    m = diffusers.AllegroTransformer3DModel(patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
                                            in_channels=4, out_channels=4, num_layers=2, cross_attention_dim=16,
                                            sample_height=8, sample_width=8, sample_frames=3, caption_channels=16)
    kw = dict(hidden_states=torch.randn(1, 4, 3, 8, 8), encoder_hidden_states=torch.randn(1, 5, 16),
              timestep=torch.tensor([1]))
    return m, kw, {}


def _video_dit():
    from gna_compile.models import TinyVideoDiT
    m = TinyVideoDiT(depth=2)
    return m, dict(video=torch.randn(1, 4, 2, 8, 8), text=torch.randn(1, 3, 16),
                   text_mask=torch.tensor([[True, True, False]])), {}


MODELS = {"flux": _flux, "sd3": _sd3, "hunyuan": _hunyuan, "cosmos": _cosmos, "wan": _wan, "ltx": _ltx,
          "mochi": _mochi, "cogvideox": _cogvideox, "allegro": _allegro, "video_dit": _video_dit}
try:  # diffusers resizes Cosmos's padding mask with torchvision
    import torchvision  # noqa: F401
    MODELS["cosmos_padmask"] = lambda: _cosmos(True)
except ImportError:
    pass


def coverage(name):
    import gna_compile
    from gna_compile import GNA, Policy
    torch.manual_seed(0)
    m, kw, pkw = MODELS[name]()
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = gna_compile.explain(m.eval(), policy=Policy(default=GNA(2), **pkw), verbose=False, **kw)
    n = lambda r: getattr(r, "calls", 1)  # noqa: E731  (older versions: one row per call)
    reasons = collections.Counter()
    for r in report:
        if not r.rewritten:
            reasons[r.reason.split(":")[0][:70]] += n(r)
    return dict(model=name, calls=sum(n(r) for r in report), rewritten=sum(n(r) for r in report if r.rewritten),
                dense=dict(reasons))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print(f"{'model':16} {'calls':>5} {'rewritten':>9}  dense because")
    for name in args.models.split(","):
        try:
            row = coverage(name)
        except Exception as e:  # a model this version cannot compile
            row = dict(model=name, calls=None, rewritten=None, dense={f"error: {type(e).__name__}: {str(e)[:80]}": 1})
        rows.append(row)
        why = "; ".join(f"{k} (x{v})" for k, v in row["dense"].items())
        print(f"{name:16} {str(row['calls']):>5} {str(row['rewritten']):>9}  {why}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
