"""Tiny diffusers FLUX / HunyuanVideo / Cosmos transformers and their inputs, for CPU tests
(random weights, no hub). Not collected by pytest (no test_ prefix). Each builder returns
``(model, forward kwargs)``; the sizes are parameters because the tests need different
depths and grids (the visual grid is given in latent tokens after patching).
"""

import torch


def flux(grid=(4, 6), text=5, layers=1, single_layers=2):
    import diffusers
    m = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=layers, num_single_layers=single_layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
    h, w = grid
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(float(h)), torch.arange(float(w)),
                                     indexing="ij"), -1)
    kw = dict(hidden_states=torch.randn(1, h * w, 4), encoder_hidden_states=torch.randn(1, text, 16),
              pooled_projections=torch.randn(1, 8), timestep=torch.tensor([1.0]),
              img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(text, 3))
    return m, kw


def hunyuan(grid=(3, 4, 4), layers=1, single_layers=1):
    """Text of 5 tokens, the last 2 masked out (a bool padding mask, as the pipeline passes)."""
    import diffusers
    m = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=layers,
        num_single_layers=single_layers, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4))
    t, h, w = grid
    kw = dict(hidden_states=torch.randn(1, 4, t, 2 * h, 2 * w), timestep=torch.tensor([1.0]),
              encoder_hidden_states=torch.randn(1, 5, 16),
              encoder_attention_mask=torch.tensor([[True, True, True, False, False]]),
              pooled_projections=torch.randn(1, 8), guidance=torch.tensor([1.0]))
    return m, kw


def cosmos(grid=(3, 4, 4), layers=2, learnable_pos=False):
    import diffusers
    m = diffusers.CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=24, num_layers=layers,
        mlp_ratio=2.0, text_embed_dim=16, adaln_lora_dim=8, max_size=(8, 16, 16), patch_size=(1, 2, 2),
        rope_scale=(1.0, 1.0, 1.0), concat_padding_mask=False,
        extra_pos_embed_type="learnable" if learnable_pos else None)
    t, h, w = grid
    kw = dict(hidden_states=torch.randn(1, 4, t, 2 * h, 2 * w), timestep=torch.tensor([1.0]),
              encoder_hidden_states=torch.randn(1, 5, 16))
    return m, kw


def cogvideox(frames=3, grid=(4, 4), text=5, layers=2):
    """CogVideoX 1.0: per-frame 2-D patch embedding (conv2d over [B*F, C, H, W]), text first."""
    import diffusers
    h, w = grid
    m = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=layers,
        sample_width=2 * w, sample_height=2 * h, sample_frames=4 * frames - 3, patch_size=2, patch_size_t=None,
        text_embed_dim=16, time_embed_dim=8, max_text_seq_length=text, use_rotary_positional_embeddings=False)
    kw = dict(hidden_states=torch.randn(1, frames, 4, 2 * h, 2 * w), encoder_hidden_states=torch.randn(1, text, 16),
              timestep=torch.tensor([1]))
    return m, kw


def allegro(frames=3, grid=(4, 4), text=5, layers=2):
    """Allegro: per-frame conv2d patch embedding over [B*F, C, H, W] (frames moved to the batch)."""
    import diffusers
    h, w = grid
    m = diffusers.AllegroTransformer3DModel(
        patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        num_layers=layers, cross_attention_dim=16, sample_height=2 * h, sample_width=2 * w, sample_frames=frames,
        caption_channels=16)
    kw = dict(hidden_states=torch.randn(1, 4, frames, 2 * h, 2 * w), encoder_hidden_states=torch.randn(1, text, 16),
              timestep=torch.tensor([1]))
    return m, kw


def sd3(grid=(4, 6), text=5, layers=2):
    """SD3: conv patch embedding, joint attention over [image, text] (text after the image)."""
    import diffusers
    h, w = grid
    m = diffusers.SD3Transformer2DModel(
        sample_size=2 * max(h, w), patch_size=2, in_channels=4, num_layers=layers, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        out_channels=4, pos_embed_max_size=4 * max(h, w))
    kw = dict(hidden_states=torch.randn(1, 4, 2 * h, 2 * w), encoder_hidden_states=torch.randn(1, text, 16),
              pooled_projections=torch.randn(1, 8), timestep=torch.tensor([3.0]))
    return m, kw


def pixart(grid=(4, 6), text=5, layers=2):
    """PixArt-alpha/sigma: self-attention over image tokens, cross-attention to the caption."""
    import diffusers
    h, w = grid
    m = diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=layers,
        cross_attention_dim=16, sample_size=2 * max(h, w), patch_size=2, caption_channels=16,
        norm_type="ada_norm_single", use_additional_conditions=False)
    kw = dict(hidden_states=torch.randn(1, 4, 2 * h, 2 * w), encoder_hidden_states=torch.randn(1, text, 16),
              timestep=torch.tensor([3]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    return m, kw


def dit(grid=(4, 4), layers=2):
    """DiT (class-conditional): self-attention over image tokens only."""
    import diffusers
    h, w = grid
    m = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=layers,
        sample_size=2 * h, patch_size=2, num_embeds_ada_norm=10)
    kw = dict(hidden_states=torch.randn(1, 4, 2 * h, 2 * w), timestep=torch.tensor([3]), class_labels=torch.tensor([1]))
    return m, kw


def wan(frames=3, grid=(4, 6), text=5, layers=2):
    """Wan 2.1: conv3d patch embedding, self-attention over the video, cross-attention to text."""
    import diffusers
    h, w = grid
    m = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers)
    kw = dict(hidden_states=torch.randn(1, 4, frames, 2 * h, 2 * w), timestep=torch.tensor([3]),
              encoder_hidden_states=torch.randn(1, text, 16))
    return m, kw


def latte(frames=3, grid=(4, 6), text=5, layers=2):
    """Latte: spatial blocks attend within a frame (frames in the batch), temporal blocks across
    the frames of one position (positions in the batch)."""
    import diffusers
    h, w = grid
    m = diffusers.LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=layers,
        cross_attention_dim=16, sample_size=2 * max(h, w), patch_size=2, caption_channels=16, video_length=frames,
        norm_type="ada_norm_single")
    kw = dict(hidden_states=torch.randn(1, 4, frames, 2 * h, 2 * w), encoder_hidden_states=torch.randn(1, text, 16),
              timestep=torch.tensor([3]))
    return m, kw


def ltx(frames=3, grid=(4, 6), text=5, layers=2):
    """LTX-Video: latents packed before the model (patch 1), so only a Policy layout proves them."""
    import diffusers
    h, w = grid
    m = diffusers.LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
        num_layers=layers, caption_channels=16)
    kw = dict(hidden_states=torch.randn(1, frames * h * w, 4), encoder_hidden_states=torch.randn(1, text, 16),
              timestep=torch.tensor([3]), encoder_attention_mask=torch.ones(1, text), num_frames=frames, height=h,
              width=w)
    return m, kw


def vit(grid=(4, 6), layers=2, registers=0):
    """transformers ViT (registers=0) or DINOv2 with registers: [CLS, registers..., patches]."""
    import transformers
    h, w = grid
    common = dict(hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
                  patch_size=4, attn_implementation="sdpa")
    if registers:
        m = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            image_size=4 * max(h, w), num_register_tokens=registers, **common))
    else:
        m = transformers.ViTModel(transformers.ViTConfig(image_size=(4 * h, 4 * w), **common))
    return m, dict(pixel_values=torch.randn(1, 3, 4 * h, 4 * w))


def auraflow(grid=(4, 6), text=5):
    """AuraFlow: a reshape patchify (no conv), register tokens before the text, joint attention
    over [registers, text, image] (the class fixes 8 registers)."""
    import diffusers
    h, w = grid
    m = diffusers.AuraFlowTransformer2DModel(
        sample_size=2 * max(h, w), patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
        out_channels=4, pos_embed_max_size=16 * max(h, w))
    kw = dict(hidden_states=torch.randn(1, 4, 2 * h, 2 * w), encoder_hidden_states=torch.randn(1, text, 16),
              timestep=torch.tensor([3.0]))
    return m, kw
