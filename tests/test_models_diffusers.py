"""diffusers transformers (tiny configs, random weights, CPU, no hub) through the gna backend.

For each model: every self-attention over visual tokens is rewritten (counted), the compiled
output equals the eager model whose matching attention calls run the reference GNA op, and
with a window covering the whole grid the output equals the untouched eager model. The
eager-side plan below is written from the model config (grid size, text length, which side
the text is on), not from the compiler's inference.
"""

import pytest
import torch

import gna_compile
from gna_compile import GNA, Policy

from backend_models import reference_sdpa

diffusers = pytest.importorskip("diffusers")


def flux():
    m = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, axes_dims_rope=(2, 2, 4))
    grid, text = (4, 6), 5
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(6.0), indexing="ij"), -1)
    kwargs = dict(hidden_states=torch.randn(1, 24, 4), encoder_hidden_states=torch.randn(1, text, 16),
                  pooled_projections=torch.randn(1, 8), timestep=torch.tensor([1.0]),
                  img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(text, 3))
    return m, kwargs, grid, dict(extra_prefix=text), 3, dict(layout=grid)


def hunyuan():
    m = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
        qk_norm="rms_norm", guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 2, 4))
    grid, text = (3, 4, 4), 5
    kwargs = dict(hidden_states=torch.randn(1, 4, 3, 8, 8), timestep=torch.tensor([1.0]),
                  encoder_hidden_states=torch.randn(1, text, 16),
                  encoder_attention_mask=torch.tensor([[True, True, True, False, False]]),
                  pooled_projections=torch.randn(1, 8), guidance=torch.tensor([1.0]))
    return m, kwargs, grid, dict(extra_suffix=text), 2, {}


def cosmos():
    m = diffusers.CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=24, num_layers=2,
        mlp_ratio=2.0, text_embed_dim=16, adaln_lora_dim=8, max_size=(8, 16, 16), patch_size=(1, 2, 2),
        rope_scale=(1.0, 1.0, 1.0), concat_padding_mask=False, extra_pos_embed_type=None)
    grid = (3, 4, 4)
    kwargs = dict(hidden_states=torch.randn(1, 4, 3, 8, 8), timestep=torch.tensor([1.0]),
                  encoder_hidden_states=torch.randn(1, 5, 16))
    return m, kwargs, grid, {}, 2, {}


MODELS = {"flux": flux, "hunyuan": hunyuan, "cosmos": cosmos}


def compile_run(m, kwargs, policy):
    torch._dynamo.reset()
    be = gna_compile.backend(policy, inner="eager")
    with torch.no_grad():
        out = torch.compile(m, backend=be, fullgraph=True)(**kwargs)[0]
    return be, out


def plan_for(grid, extras, window, stride=1):
    n = 1
    for g in grid:
        n *= g
    n += sum(extras.values())

    def plan(q, k):  # self-attention over the joint (visual + text) sequence only
        if q.shape[2] == n and k.shape[2] == n:
            return dict(shape=grid, window=window, stride=stride, **extras)
        return None
    return plan


@pytest.mark.parametrize("name", list(MODELS))
def test_rewrites_every_visual_self_attention_and_matches_reference(name):
    torch.manual_seed(0)
    m, kwargs, grid, extras, n_visual, pkw = MODELS[name]()
    m = m.eval()
    window = tuple(max(2, g // 2) for g in grid)
    stride = tuple(max(1, w // 2) for w in window)
    be, out = compile_run(m, kwargs, Policy(default=GNA(window, stride), **pkw))
    rewritten = be.rewritten
    assert len(rewritten) == n_visual, [(r.module, r.reason) for r in be.records]
    assert all(r.grid == grid for r in rewritten)
    assert all((r.extra_prefix, r.extra_suffix) == (extras.get("extra_prefix", 0), extras.get("extra_suffix", 0))
               for r in rewritten)
    for r in be.records:  # what stays dense is not over visual tokens, and says why
        if not r.rewritten:
            assert r.reason and (r.reason.startswith("cross-attention") or r.grid is None), r
    with reference_sdpa(plan_for(grid, extras, window, stride)) as ref, torch.no_grad():
        want = m(**kwargs)[0]
    assert ref.calls == n_visual
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
    with torch.no_grad():
        dense = m(**kwargs)[0]
    assert (out - dense).abs().max() > 1e-4  # the sparsity is real


@pytest.mark.parametrize("name", list(MODELS))
def test_whole_grid_window_equals_uncompiled(name):
    torch.manual_seed(0)
    m, kwargs, grid, extras, n_visual, pkw = MODELS[name]()
    m = m.eval()
    be, out = compile_run(m, kwargs, Policy(default=GNA(grid), **pkw))
    assert len(be.rewritten) == n_visual
    with torch.no_grad():
        want = m(**kwargs)[0]
    torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)


def test_hunyuan_text_mask_only_masks_text_keys():
    torch.manual_seed(0)
    m, kwargs, grid, extras, n_visual, pkw = hunyuan()
    be, _ = compile_run(m.eval(), kwargs, Policy(default=GNA(2)))
    assert [r.key_mask for r in be.rewritten] == ["keys (extra tokens only)"] * n_visual
    # an integer mask's sum is not provably >= 0: the op then masks every key (still correct)
    kwargs["encoder_attention_mask"] = kwargs["encoder_attention_mask"].long()
    be, _ = compile_run(m.eval(), kwargs, Policy(default=GNA(2)))
    assert [r.key_mask for r in be.rewritten] == ["keys"] * n_visual


def test_hunyuan_through_inductor():
    """End to end with Inductor compiling everything around the opaque GNA op."""
    torch.manual_seed(0)
    m, kwargs, grid, extras, n_visual, pkw = hunyuan()
    m = m.eval()
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA((2, 2, 2), (1, 2, 2))))
    with torch.no_grad():
        out = torch.compile(m, backend=be, fullgraph=True)(**kwargs)[0]
    assert len(be.rewritten) == n_visual
    with reference_sdpa(plan_for(grid, extras, (2, 2, 2), (1, 2, 2))) as ref, torch.no_grad():
        want = m(**kwargs)[0]
    assert ref.calls == n_visual
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
