"""GPU smoke check of the compile path: mid-size FLUX/Hunyuan/Cosmos configs (head dim 64/128),
bf16, Triton kernels. For each: hoisted vs unhoisted vs the eager model whose GNA calls run the
reference op; prints relative errors and the hoisting summary. Usage: python tools/gpu/hoist_smoke.py"""

import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import diffusers  # noqa: E402

import gna_compile  # noqa: E402
from gna_compile import GNA, Policy  # noqa: E402


def flux():
    m = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=64, num_attention_heads=4, joint_attention_dim=64,
                                         pooled_projection_dim=32, axes_dims_rope=(8, 28, 28))
    h = w = 64
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(float(h)), torch.arange(float(w)), indexing="ij"), -1)
    kw = dict(hidden_states=torch.randn(1, h * w, 16), encoder_hidden_states=torch.randn(1, 32, 64),
              pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]),
              img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(32, 3))
    return m, kw, Policy(default=GNA((24, 24), (8, 8)), layout=(h, w))


def hunyuan():
    m = diffusers.HunyuanVideoTransformer3DModel(in_channels=16, out_channels=16, num_attention_heads=4,
                                                 attention_head_dim=128, num_layers=2, num_single_layers=2,
                                                 num_refiner_layers=1, text_embed_dim=64, pooled_projection_dim=32,
                                                 rope_axes_dim=(16, 56, 56))
    mask = torch.ones(1, 24, dtype=torch.bool)
    mask[:, 18:] = False
    kw = dict(hidden_states=torch.randn(1, 16, 8, 64, 64), timestep=torch.tensor([500]),
              encoder_hidden_states=torch.randn(1, 24, 64), encoder_attention_mask=mask,
              pooled_projections=torch.randn(1, 32), guidance=torch.tensor([6016.0]))
    return m, kw, Policy(default=GNA((4, 16, 16), (2, 8, 8)))


def cosmos():
    m = diffusers.CosmosTransformer3DModel(in_channels=16, out_channels=16, num_attention_heads=4,
                                           attention_head_dim=128, num_layers=2, text_embed_dim=64,
                                           adaln_lora_dim=32, max_size=(32, 128, 128), concat_padding_mask=False)
    kw = dict(hidden_states=torch.randn(1, 16, 8, 64, 64), timestep=torch.tensor([0.5]),
              encoder_hidden_states=torch.randn(1, 32, 64), fps=24)
    return m, kw, Policy(default=GNA((8, 8, 16), (1, 1, 8)))


def _to(kw, dev, dt):
    return {k: (v.to(dev, dt) if torch.is_tensor(v) and v.is_floating_point() else
                v.to(dev) if torch.is_tensor(v) else v) for k, v in kw.items()}


def main():
    dev = torch.device(os.environ.get("SMOKE_DEVICE", "cuda"))
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    for build in (flux, hunyuan, cosmos):
        torch.manual_seed(0)
        m, kw, policy = build()
        m = m.to(dev, dt).eval()
        kw = _to(kw, dev, dt)
        outs = {}
        for name, hoist in (("unhoisted", False), ("hoisted", True)):
            torch._dynamo.reset()
            be = gna_compile.backend(policy, hoist_permutations=hoist)
            t = time.perf_counter()
            with torch.inference_mode():
                outs[name] = torch.compile(m, backend=be)(**kw, return_dict=False)[0].float()
            print(f"{build.__name__} {name}: {len(be.rewritten)} rewritten, {time.perf_counter() - t:.1f} s;",
                  "; ".join(str(r).replace("\n", " |") for r in be.hoist_results))
        # Reference: the same rewritten graph with every GNA call on the reference backend.
        torch._dynamo.reset()
        ref_policy = policy
        be = gna_compile.backend(ref_policy, inner="eager")
        os.environ["GNA_COMPILE_BACKEND"] = "reference"
        with torch.inference_mode():
            ref = torch.compile(m, backend=be)(**kw, return_dict=False)[0].float()
        os.environ.pop("GNA_COMPILE_BACKEND")
        for name, o in outs.items():
            rel = ((o - ref).norm() / ref.norm()).item()
            print(f"  {build.__name__} {name} vs reference: rel err {rel:.2e}, finite {torch.isfinite(o).all().item()}")
        rel = ((outs["hoisted"] - outs["unhoisted"]).norm() / outs["unhoisted"].norm()).item()
        print(f"  {build.__name__} hoisted vs unhoisted: rel err {rel:.2e}")


if __name__ == "__main__":
    main()
