"""Print ``gna_compile.explain`` tables for diffusers' FLUX, HunyuanVideo and Cosmos transformers.

Small configs with random weights on the CPU (no hub access); the token grids are large enough
for the simulator to matter. Usage: ``python examples/explain_models.py [flux|hunyuan|cosmos ...]``.
"""

from __future__ import annotations

import sys

import torch
from diffusers import CosmosTransformer3DModel, FluxTransformer2DModel, HunyuanVideoTransformer3DModel

import gna_compile
from gna_compile import Policy


def flux():
    h = w = 32  # packed latent tokens (FLUX packs 2x2 latent patches before the model)
    m = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                               pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(float(h)), torch.arange(float(w)),
                                     indexing="ij"), -1).reshape(-1, 3)
    kw = dict(hidden_states=torch.randn(1, h * w, 16), encoder_hidden_states=torch.randn(1, 64, 32),
              pooled_projections=torch.randn(1, 16), timestep=torch.tensor([1.0]), img_ids=ids,
              txt_ids=torch.zeros(64, 3))
    return m, kw, Policy(layout=(h, w))  # the grid is not in the graph: the policy gives it


def hunyuan():
    m = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=32, pooled_projection_dim=16,
        rope_axes_dim=(4, 6, 6))
    # int64 like the diffusers pipeline's tokenizer mask; with a bool mask the pass can also
    # prove that no video key is ever masked ("keys (extra tokens only)").
    text_mask = (torch.arange(32)[None] < 20).long()
    kw = dict(hidden_states=torch.randn(1, 4, 8, 32, 32), timestep=torch.tensor([1.0]),
              encoder_hidden_states=torch.randn(1, 32, 32), encoder_attention_mask=text_mask,
              pooled_projections=torch.randn(1, 16), guidance=torch.tensor([1.0]))
    return m, kw, Policy()


def cosmos():
    m = CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=24, num_layers=2,
        mlp_ratio=2.0, text_embed_dim=32, adaln_lora_dim=8, max_size=(16, 64, 64), patch_size=(1, 2, 2),
        rope_scale=(1.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type=None)
    kw = dict(hidden_states=torch.randn(1, 4, 8, 32, 32), timestep=torch.tensor([1.0]),
              encoder_hidden_states=torch.randn(1, 32, 32))
    return m, kw, Policy()


MODELS = {"flux": flux, "hunyuan": hunyuan, "cosmos": cosmos}


def main(names) -> None:
    for name in names or MODELS:
        torch.manual_seed(0)
        model, kwargs, policy = MODELS[name]()
        print(f"\n== {type(model).__name__} ({name}), {policy!r} ==")
        gna_compile.explain(model.eval(), policy=policy, **kwargs)


if __name__ == "__main__":
    main(sys.argv[1:])
