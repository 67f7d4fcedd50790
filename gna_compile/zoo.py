"""The paper's three models as diffusers transformers: configs, inputs and GNA policies.

Random weights only (nothing is loaded from a hub unless a local checkpoint path is given).
``size="full"`` is the published config at the paper's resolution; ``size="small"`` is a tiny
config with the same structure, for CPU smoke tests. Needs ``pip install gna_compile[models]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .config import GNA

__all__ = ["ModelCase", "CASES", "build_model", "make_inputs", "paper_policy"]


@dataclass(frozen=True)
class ModelCase:
    name: str
    cls_name: str                      # diffusers class
    full_config: dict
    small_config: dict
    full_grid: tuple[int, ...]         # spatial tokens after patchify
    small_grid: tuple[int, ...]
    text_tokens: dict = field(default_factory=lambda: {"full": 0, "small": 0})
    gna: Callable[[str], object] = None  # size -> GNA config or "auto"
    # (sampling steps, first steps kept dense) for the hybrid-schedule estimate. The step counts
    # are the pipelines' usual defaults; the dense share (about a third) is our assumption of
    # the paper's schedule, overridable with benchmarks/models.py --steps/--dense-steps.
    paper_schedule: tuple[int, int] = (50, 15)


def _flux_gna(size):
    return GNA(window=(80, 80), stride=(16, 16)) if size == "full" else GNA(window=(4, 4), stride=(2, 2))


def _hunyuan_gna(size):
    return GNA(window=(18, 24, 24), stride=(16, 8, 8)) if size == "full" else GNA(window=(2, 4, 4), stride=(2, 2, 2))


CASES = {
    "flux": ModelCase(
        name="FLUX.1-dev 4K", cls_name="FluxTransformer2DModel",
        full_config=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                         attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                         pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        small_config=dict(patch_size=1, in_channels=8, num_layers=1, num_single_layers=1,
                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                          pooled_projection_dim=12, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
        full_grid=(256, 256), small_grid=(8, 8), text_tokens={"full": 512, "small": 5},
        gna=_flux_gna, paper_schedule=(28, 9)),
    "hunyuan": ModelCase(
        name="HunyuanVideo 720p", cls_name="HunyuanVideoTransformer3DModel",
        full_config=dict(),  # the class defaults are the published 13B config
        small_config=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                          num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2,
                          patch_size_t=1, text_embed_dim=24, pooled_projection_dim=12,
                          rope_axes_dim=(4, 6, 6)),
        full_grid=(30, 48, 80), small_grid=(4, 4, 8), text_tokens={"full": 256, "small": 6},
        gna=_hunyuan_gna, paper_schedule=(50, 15)),
    "cosmos": ModelCase(
        name="Cosmos-1.0 7B 704p", cls_name="CosmosTransformer3DModel",
        full_config=dict(),  # the class defaults are Cosmos-1.0-Diffusion-7B
        small_config=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                          num_layers=1, text_embed_dim=24, adaln_lora_dim=8, max_size=(8, 16, 16),
                          concat_padding_mask=False),  # the padding-mask resize needs torchvision
        full_grid=(16, 44, 80), small_grid=(4, 4, 8), text_tokens={"full": 512, "small": 6},
        gna=lambda size: "auto", paper_schedule=(35, 12)),
}


def _cls(case: ModelCase):
    import diffusers
    return getattr(diffusers, case.cls_name)


def build_model(name: str, size: str = "small", device="cpu", dtype=torch.float32, checkpoint=None,
                **config):
    """The diffusers transformer with random weights (or a local checkpoint directory);
    ``config`` overrides entries of the size's config."""
    case = CASES[name]
    cls = _cls(case)
    if checkpoint:
        return cls.from_pretrained(checkpoint, torch_dtype=dtype, local_files_only=True).to(device).eval()
    cfg = {**(case.full_config if size == "full" else case.small_config), **config}
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype: no fp32 copy on the GPU
    try:
        with torch.device(device):
            model = cls(**cfg)
    finally:
        torch.set_default_dtype(prev)
    return model.eval()


def make_inputs(name: str, model, size: str = "small", batch: int = 1, seed: int = 0) -> dict:
    """Forward kwargs at the paper's resolution (full) or a tiny one (small)."""
    case = CASES[name]
    grid = case.full_grid if size == "full" else case.small_grid
    text = case.text_tokens[size]
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    g = torch.Generator(device="cpu").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device=dev, dtype=dt)
    cfg = model.config
    if name == "flux":
        h, w = grid
        ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(h).float(), torch.arange(w).float(),
                                          indexing="ij"), -1)
        return dict(hidden_states=rnd(batch, h * w, cfg.in_channels),
                    encoder_hidden_states=rnd(batch, text, cfg.joint_attention_dim),
                    pooled_projections=rnd(batch, cfg.pooled_projection_dim),
                    timestep=torch.full((batch,), 0.5, device=dev, dtype=dt),
                    img_ids=ids.view(h * w, 3).to(dev, dt), txt_ids=torch.zeros(text, 3, device=dev, dtype=dt),
                    guidance=torch.full((batch,), 3.5, device=dev, dtype=dt), return_dict=False)
    pt = getattr(cfg, "patch_size_t", None) or (cfg.patch_size[0] if isinstance(cfg.patch_size, (tuple, list)) else 1)
    ps = cfg.patch_size[1] if isinstance(cfg.patch_size, (tuple, list)) else cfg.patch_size
    t, h, w = grid
    latents = rnd(batch, cfg.in_channels, t * pt, h * ps, w * ps)
    if name == "hunyuan":
        mask = torch.ones(batch, text, dtype=torch.bool, device=dev)
        mask[:, text - max(1, text // 4):] = False  # padded prompt tail, as the pipeline produces
        return dict(hidden_states=latents, timestep=torch.full((batch,), 500, device=dev),
                    encoder_hidden_states=rnd(batch, text, cfg.text_embed_dim),
                    encoder_attention_mask=mask, pooled_projections=rnd(batch, cfg.pooled_projection_dim),
                    guidance=torch.full((batch,), 6016.0, device=dev, dtype=dt), return_dict=False)
    if name == "cosmos":
        kw = dict(hidden_states=latents, timestep=torch.full((batch,), 0.5, device=dev, dtype=dt),
                  encoder_hidden_states=rnd(batch, text, cfg.text_embed_dim), fps=24, return_dict=False)
        if cfg.concat_padding_mask:
            kw["padding_mask"] = torch.zeros(1, 1, h * ps, w * ps, device=dev, dtype=dt)
        return kw
    raise ValueError(f"model={name!r} is not one of {sorted(CASES)}")


def paper_policy(name: str, size: str = "small", **overrides):
    """The paper's GNA config for every self-attention over visual tokens of the model."""
    from .policy import Policy

    case = CASES[name]
    grid = case.full_grid if size == "full" else case.small_grid
    kwargs = dict(default=case.gna(size))
    if name == "flux":  # FLUX packs latents before the model: the grid must come from the user
        kwargs["layout"] = grid
    kwargs.update(overrides)
    return Policy(**kwargs)
