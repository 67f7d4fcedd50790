"""diffusers (and transformers ViT/DINOv2) models, tiny configs, random weights, CPU, no hub,
through the gna backend.

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

import tiny_diffusers
from backend_models import reference_sdpa

pytest.importorskip("diffusers")


def flux():
    m, kwargs = tiny_diffusers.flux(grid=(4, 6))
    return m, kwargs, (4, 6), dict(extra_prefix=5), 3, dict(layout=(4, 6))


def hunyuan():
    m, kwargs = tiny_diffusers.hunyuan(grid=(3, 4, 4))
    return m, kwargs, (3, 4, 4), dict(extra_suffix=5), 2, {}


def cosmos():
    m, kwargs = tiny_diffusers.cosmos(grid=(3, 4, 4))
    return m, kwargs, (3, 4, 4), {}, 2, {}


def cogvideox():
    m, kwargs = tiny_diffusers.cogvideox(frames=3, grid=(4, 4))
    return m, kwargs, (3, 4, 4), dict(extra_prefix=5), 2, {}


def allegro():
    m, kwargs = tiny_diffusers.allegro(frames=3, grid=(4, 4))
    return m, kwargs, (3, 4, 4), {}, 2, {}


def sd3():
    m, kwargs = tiny_diffusers.sd3(grid=(4, 6))
    return m, kwargs, (4, 6), dict(extra_suffix=5), 2, {}


def pixart():
    m, kwargs = tiny_diffusers.pixart(grid=(4, 6))
    return m, kwargs, (4, 6), {}, 2, {}


def dit():
    m, kwargs = tiny_diffusers.dit(grid=(4, 4))
    return m, kwargs, (4, 4), {}, 2, {}


def wan():
    m, kwargs = tiny_diffusers.wan(frames=3, grid=(4, 6))
    return m, kwargs, (3, 4, 6), {}, 2, {}


def latte():  # spatial blocks only: the temporal ones (3 frames per position) are not provable
    m, kwargs = tiny_diffusers.latte(frames=3, grid=(4, 6))
    return m, kwargs, (4, 6), {}, 2, {}


def ltx():  # packed latents: the layout comes from the policy, as enable() gives it
    m, kwargs = tiny_diffusers.ltx(frames=3, grid=(4, 6))
    return m, kwargs, (3, 4, 6), {}, 2, dict(layout=(3, 4, 6))


def auraflow():
    m, kwargs = tiny_diffusers.auraflow(grid=(4, 6), text=5)
    return m, kwargs, (4, 6), dict(extra_prefix=8 + 5), 2, {}


def vit():
    pytest.importorskip("transformers")
    m, kwargs = tiny_diffusers.vit(grid=(4, 6))
    return m, kwargs, (4, 6), dict(extra_prefix=1), 2, {}


def dinov2_registers():
    pytest.importorskip("transformers")
    m, kwargs = tiny_diffusers.vit(grid=(4, 6), registers=4)
    return m, kwargs, (4, 6), dict(extra_prefix=5), 2, {}


MODELS = {"flux": flux, "hunyuan": hunyuan, "cosmos": cosmos, "cogvideox": cogvideox, "allegro": allegro,
          "sd3": sd3, "auraflow": auraflow, "pixart": pixart, "dit": dit, "wan": wan, "latte": latte, "ltx": ltx, "vit": vit,
          "dinov2_registers": dinov2_registers}


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
