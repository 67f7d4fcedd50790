"""Diffusers pipelines built offline: random-weight components (``size="full"``: the published
configs at the paper's resolutions; ``"small"``: tiny ones with the same structure, for CPU
tests), no text encoders (prompt embeddings are passed directly), nothing from a hub.

``build(name, size)`` returns ``(pipe, call)``: ``call(grid=None, seed=0)`` gives the pipeline
call's keyword arguments (resolution, frames, random prompt embeddings) for a latent token
grid (default: the size's own), so that ``pipe(**call(), num_inference_steps=...)`` runs.
"""

from __future__ import annotations

import warnings

import torch

from .. import zoo

__all__ = ["build", "NAMES", "FULL_GRIDS"]

NAMES = ("flux", "hunyuan", "wan", "cosmos", "ltx")
# The paper's workloads as latent token grids: FLUX.1-dev 4K, HunyuanVideo 720p (768x1280, 117
# frames), Wan 2.1 14B 720p (81 frames), Cosmos-1.0 704p (121 frames).
FULL_GRIDS = {"flux": (256, 256), "hunyuan": (30, 48, 80), "wan": (21, 45, 80), "cosmos": (16, 44, 80),
              "ltx": (21, 16, 22)}  # LTX-Video 512x704, 161 frames
SMALL_GRIDS = {"flux": (4, 6), "hunyuan": (2, 4, 6), "wan": (2, 4, 6), "cosmos": (2, 4, 6), "ltx": (2, 4, 6)}


def _rand(g, *shape, dtype, device):
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def _video_call(text, dim, space, time, dtype, device, extra=lambda g: {}):
    """``call(grid, g)`` of a video pipeline whose latent token grid (t, h, w) comes from
    ``height = space * h``, ``width = space * w``, ``num_frames = time * (t - 1) + 1`` (the
    VAE's and the transformer's patch factors), with random prompt embeddings drawn first."""
    def call(grid, g):
        t, h, w = grid
        return dict(prompt_embeds=_rand(g, 1, text, dim, dtype=dtype, device=device), height=space * h,
                    width=space * w, num_frames=time * (t - 1) + 1, **extra(g))
    return call


class _NoSafetyChecker(torch.nn.Module):
    """Cosmos' pipeline wants a safety checker (a hub download); random weights need none."""

    def __init__(self):
        super().__init__()
        self.register_buffer("_where", torch.zeros(0), persistent=False)

    @property
    def device(self):
        return self._where.device

    @property
    def dtype(self):
        return self._where.dtype

    def check_text_safety(self, prompt):
        return True

    def check_video_safety(self, video):
        return video


def _flux(size, device, dtype):
    import diffusers
    full = size == "full"
    tr = zoo.build_model("flux", size, device, dtype) if full else diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
    blocks = 4 if full else 2
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(128, 256, 512, 512) if full else (8, 16), layers_per_block=2 if full else 1,
        latent_channels=16 if full else 1, norm_num_groups=32 if full else 8,
        scaling_factor=0.3611 if full else 1.0, shift_factor=0.1159 if full else 0.0,
        use_quant_conv=False, use_post_quant_conv=False)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=full, base_shift=0.5,
                                                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = diffusers.FluxPipeline(scheduler=sched, vae=vae.to(device, dtype), text_encoder=None, tokenizer=None,
                                  text_encoder_2=None, tokenizer_2=None, transformer=tr.to(device, dtype))
    text, dim, pooled = (512, 4096, 768) if full else (5, 16, 8)
    f = 2 * pipe.vae_scale_factor  # latents are packed 2x2 after the VAE

    def call(grid, g):
        return dict(prompt_embeds=_rand(g, 1, text, dim, dtype=dtype, device=device),
                    pooled_prompt_embeds=_rand(g, 1, pooled, dtype=dtype, device=device),
                    height=f * grid[0], width=f * grid[1])
    return pipe, call


def _hunyuan(size, device, dtype):
    import diffusers
    full = size == "full"
    tr = zoo.build_model("hunyuan", size, device, dtype) if full else diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 2, 4))
    vae = diffusers.AutoencoderKLHunyuanVideo() if full else diffusers.AutoencoderKLHunyuanVideo(
        latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4, mid_block_add_attention=False)
    if full:
        vae.enable_tiling()  # as diffusers' HunyuanVideo docs decode 720p: untiled, one 128-channel
        # full-resolution activation of 117 frames is 29 GB in bf16
    pipe = diffusers.HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=tr.to(device, dtype),
                                          vae=vae.to(device, dtype), text_encoder_2=None, tokenizer_2=None,
                                          scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0))
    text, dim, pooled = (256, 4096, 768) if full else (5, 16, 8)
    mask = torch.ones(1, text, dtype=torch.long, device=device)
    mask[:, text - max(1, text // 4):] = 0  # a padded prompt tail, as the text encoder gives
    call = _video_call(text, dim, 8 * tr.config.patch_size, 4, dtype, device, lambda g: dict(
        pooled_prompt_embeds=_rand(g, 1, pooled, dtype=dtype, device=device), prompt_attention_mask=mask))
    return pipe, call


_WAN_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6)
_WAN_SMALL = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                  text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2)


def _wan(size, device, dtype):
    import diffusers
    full = size == "full"
    with torch.device(device):
        tr = diffusers.WanTransformer3DModel(**(_WAN_14B if full else _WAN_SMALL)).to(dtype).eval()
    vae = diffusers.AutoencoderKLWan() if full else diffusers.AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4, scale_factor_temporal=4, scale_factor_spatial=8)
    sched = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                              flow_shift=5.0 if full else 3.0)
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=vae.to(device), transformer=tr,
                                 scheduler=sched)
    text, dim = (512, 4096) if full else (5, 16)
    return pipe, _video_call(text, dim, 16, 4, dtype, device, lambda g: dict(guidance_scale=1.0))


def _cosmos(size, device, dtype):
    import diffusers
    from diffusers.utils import is_torchvision_available
    full = size == "full"
    cfg = {}
    if full and not is_torchvision_available():  # its padding-mask resize imports torchvision
        warnings.warn("gna_compile.pipelines.offline: torchvision is missing, so the Cosmos transformer is "
                      "built with concat_padding_mask=False (one input channel fewer than the published "
                      "config; attention is the same)")
        cfg["concat_padding_mask"] = False
    tr = zoo.build_model("cosmos", size, device, dtype, **cfg) if full else diffusers.CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=24, num_layers=2, mlp_ratio=2.0,
        text_embed_dim=16, adaln_lora_dim=8, max_size=(8, 16, 16), patch_size=(1, 2, 2), rope_scale=(1.0, 1.0, 1.0),
        concat_padding_mask=False, extra_pos_embed_type=None)
    vae = diffusers.AutoencoderKLCosmos() if full else diffusers.AutoencoderKLCosmos(
        latent_channels=4, encoder_block_out_channels=(8, 8), decode_block_out_channels=(8, 8),
        attention_resolutions=(), resolution=64, num_layers=1, patch_size=4, spatial_compression_ratio=8,
        temporal_compression_ratio=8, latents_mean=None, latents_std=None)
    sched = diffusers.EDMEulerScheduler(sigma_max=80.0, sigma_min=0.002, sigma_data=0.5, sigma_schedule="karras",
                                        num_train_timesteps=1000, prediction_type="epsilon", rho=7.0,
                                        final_sigmas_type="sigma_min")
    pipe = diffusers.CosmosTextToWorldPipeline(text_encoder=None, tokenizer=None, transformer=tr.to(device, dtype),
                                               vae=vae.to(device, dtype), scheduler=sched,
                                               safety_checker=_NoSafetyChecker())
    text, dim = (512, 1024) if full else (5, 16)
    return pipe, _video_call(text, dim, 16, 8, dtype, device, lambda g: dict(guidance_scale=1.0))


def _ltx(size, device, dtype):
    """LTX-Video: latents packed before the model (patch 1); VAE factors 32 (space), 8 (time)."""
    import diffusers
    full = size == "full"
    with torch.device(device):
        tr = diffusers.LTXVideoTransformer3DModel() if full else diffusers.LTXVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
            num_layers=2, caption_channels=16)
        vae = diffusers.AutoencoderKLLTXVideo() if full else diffusers.AutoencoderKLLTXVideo(
            latent_channels=4, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1))
    pipe = diffusers.LTXPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae.to(dtype),
                                 text_encoder=None, tokenizer=None, transformer=tr.to(dtype).eval())
    text, dim = (128, 4096) if full else (5, 16)
    mask = torch.ones(1, text, dtype=torch.long, device=device)
    return pipe, _video_call(text, dim, 32, 8, dtype, device,
                             lambda g: dict(prompt_attention_mask=mask, guidance_scale=1.0))


_BUILDERS = {"flux": _flux, "hunyuan": _hunyuan, "wan": _wan, "cosmos": _cosmos, "ltx": _ltx}


def build(name: str, size: str = "small", device="cpu", dtype=torch.float32):
    """``(pipe, call)`` for one of NAMES (see the module docstring)."""
    if name not in _BUILDERS:
        raise ValueError(f"name={name!r} must be one of {NAMES}")
    if size not in ("small", "full"):
        raise ValueError(f"size={size!r} must be 'small' or 'full'")
    pipe, make = _BUILDERS[name](size, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    default = (FULL_GRIDS if size == "full" else SMALL_GRIDS)[name]

    def call(grid=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        return dict(make(tuple(grid or default), g), generator=torch.Generator().manual_seed(seed))
    return pipe, call
