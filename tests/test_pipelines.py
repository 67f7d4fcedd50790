"""gna_compile.enable on tiny diffusers pipelines (random weights, offline): the sampling loop
equals the same pipeline with brute-force GNA on the true grid for the non-dense steps (an
eager run with the reference op, layouts written here from the pipeline's geometry), at two
resolutions of equal token count and different aspect ratio, with no recompilation when the
schedule switches from dense to sparse."""

import warnings

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # the pipeline classes need it importable

import gna_compile  # noqa: E402
import tiny_pipelines as tp  # noqa: E402
from backend_models import reference_sdpa  # noqa: E402
from gna_compile import GNA, Policy  # noqa: E402
from gna_compile.pipelines import backends, family_of, records  # noqa: E402
from gna_compile.pipelines.families import FAMILIES  # noqa: E402

GRIDS = {"flux": ((4, 6), (6, 4)), "hunyuan": ((2, 4, 6), (2, 6, 4)), "wan": ((2, 4, 6), (2, 6, 4)),
         "cosmos": ((2, 4, 6), (2, 6, 4)), "ltx": ((2, 4, 6), (2, 6, 4))}
WINDOW = {"flux": ((3, 3), (2, 2)), "hunyuan": ((2, 3, 3), (1, 2, 2)), "wan": ((2, 3, 3), (1, 2, 2)),
          "cosmos": ((2, 3, 3), (1, 2, 2)), "ltx": ((2, 3, 3), (1, 2, 2))}
STEPS, DENSE = 3, 1


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles the same transformer classes with new backends: start from an empty
    Dynamo cache, or earlier tests' entries count against the recompile limit."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _latents(out):
    return out[0]


def _graph_count(pipe):
    return sum(len(be.graphs) for be in backends(pipe).values())


def _reference(pipe, call, plan, grid, window, stride, dense_steps):
    """Eager loop: dense SDPA for the first steps, then the reference GNA op on the visual
    self-attention (q and k over the whole joint sequence) with the call's own key mask."""
    kw = plan(grid)
    n = 1
    for g in grid:
        n *= g
    n += kw.get("extra_prefix", 0) + kw.get("extra_suffix", 0)
    phase = {"dense": dense_steps > 0}

    def plan_fn(q, k):
        if phase["dense"] or q.shape[2] != n or k.shape[2] != n:
            return None
        return dict(window=window, stride=stride, **kw)

    def on_step_end(p, i, t, cb_kwargs):
        if i + 1 >= dense_steps:
            phase["dense"] = False
        return {}

    with reference_sdpa(plan_fn) as ref:
        out = _latents(pipe(**call(grid), num_inference_steps=STEPS, output_type="latent",
                            callback_on_step_end=on_step_end))
    assert (ref.calls > 0) == (dense_steps < STEPS)
    return out


@pytest.mark.parametrize("name", list(GRIDS))
def test_enable_equals_brute_force_gna_on_the_true_grid(name):
    torch.manual_seed(0)
    pipe, call, plan = getattr(tp, name)()
    window, stride = WINDOW[name]
    gna_compile.enable(pipe, dense_steps=DENSE, policy=Policy(default=GNA(window, stride)), inner="aot_eager")
    got, counts = {}, {}
    for grid in GRIDS[name]:
        seen = []
        out = pipe(**call(grid), num_inference_steps=STEPS, output_type="latent",
                   callback_on_step_end=lambda p, i, t, kw: seen.append(_graph_count(p)) or {})
        got[grid] = _latents(out)
        counts[grid] = seen
    rewritten = [r for r in records(pipe) if r.rewritten]
    assert {tuple(r.grid) for r in rewritten} == set(GRIDS[name]), [(r.module, r.grid, r.reason) for r in records(pipe)]
    table = gna_compile.pipelines.report(pipe)
    assert "attention calls rewritten to GNA" in table and all(r.module in table for r in rewritten)
    for grid, seen in counts.items():  # every graph exists after step 0 (dense): the switch compiles nothing
        assert len(seen) == STEPS and len(set(seen)) == 1, (grid, seen)
    gna_compile.disable(pipe)
    for grid in GRIDS[name]:
        want = _reference(pipe, call, plan, grid, window, stride, DENSE)
        torch.testing.assert_close(got[grid], want, atol=1e-4, rtol=1e-4)
        dense = _reference(pipe, call, plan, grid, window, stride, STEPS)
        assert (got[grid] - dense).abs().max() > 1e-4  # the sparse steps are really sparse


def test_flux_grid_is_read_from_the_image_ids_not_the_token_count():
    """Equal token counts, different grids; ids that are not a row-major enumeration are refused."""
    fam = family_of(tp.flux()[0])
    ids = lambda h, w: torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(float(h)), torch.arange(float(w)),  # noqa: E731
                                                  indexing="ij"), -1).reshape(-1, 3)
    assert fam.packed_grid((), dict(img_ids=ids(4, 6)))[0] == (4, 6)
    assert fam.packed_grid((), dict(img_ids=ids(6, 4)))[0] == (6, 4)
    assert fam.packed_grid((), dict(img_ids=ids(4, 6)[None]))[0] == (4, 6)  # legacy [B, N, 3]
    shuffled = ids(4, 6)[torch.randperm(24)]
    assert fam.packed_grid((), dict(img_ids=shuffled)) == (None, "img_ids do not enumerate a row-major grid "
                                                                "(packed latents of another kind)")
    col_major = ids(6, 4).view(6, 4, 3).transpose(0, 1).reshape(-1, 3)
    assert fam.packed_grid((), dict(img_ids=col_major))[0] is None
    assert fam.packed_grid((), {})[0] is None


def test_ltx_grid_comes_from_the_call():
    fam = next(f for f in FAMILIES if f.name == "ltx")
    assert fam.packed_grid((), dict(num_frames=3, height=4, width=6)) == ((3, 4, 6), "")
    assert fam.packed_grid((), dict(num_frames=3))[0] is None


def test_default_dense_steps_follow_the_family_share():
    fam = family_of(tp.flux()[0])
    assert fam.name == "flux" and fam.default_dense_steps(28) == 9
    assert next(f for f in FAMILIES if f.name == "hunyuan").default_dense_steps(50) == 15


def test_default_schedule_runs_the_first_steps_dense(monkeypatch):
    """dense_steps=None: the family's share of num_inference_steps; dense mode is on exactly
    for those steps' transformer calls, then off, and restored after the call."""
    from gna_compile.kernels import dispatch
    pipe, call, _ = tp.flux()
    gna_compile.enable(pipe, inner="eager")
    modes = []
    real = backends  # noqa: F841
    orig = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **kw: modes.append(dispatch.dense_mode()) or orig(*a, **kw)
    user_steps = []
    pipe(**call((4, 6)), num_inference_steps=7, output_type="latent",
         callback_on_step_end=lambda p, i, t, kw: user_steps.append(i) or {})
    assert user_steps == list(range(7))  # the user's callback still runs every step
    assert modes == [True] * 2 + [False] * 5  # round(9 / 28 * 7) = 2
    assert not dispatch.dense_mode()


def test_set_dense_steps_changes_the_schedule_without_recompiling():
    """set_dense_steps: the next calls run that many first steps dense (None: the family's
    share again), with no new graph; bad values and a pipeline not enabled are refused."""
    from gna_compile.kernels import dispatch
    pipe, call, _ = tp.flux()
    gna_compile.enable(pipe, dense_steps=1, inner="eager")
    modes = []
    orig = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **kw: modes.append(dispatch.dense_mode()) or orig(*a, **kw)
    pipe(**call((4, 6)), num_inference_steps=4, output_type="latent")
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for n, want in ((3, [True] * 3 + [False]), (0, [False] * 4), (None, [True] + [False] * 3)):  # round(9/28*4) = 1
        modes.clear()
        gna_compile.set_dense_steps(pipe, n)
        pipe(**call((4, 6)), num_inference_steps=4, output_type="latent")
        assert modes == want, (n, modes)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=f"dense_steps={bad!r}"):
            gna_compile.set_dense_steps(pipe, bad)
    pipe.transformer.forward = orig
    gna_compile.disable(pipe)
    with pytest.raises(ValueError, match="not enabled"):
        gna_compile.set_dense_steps(pipe, 1)


def test_enable_errors_name_the_argument():
    pipe, _, _ = tp.flux()
    with pytest.raises(ValueError, match="dense_steps=-1"):
        gna_compile.enable(pipe, dense_steps=-1)
    with pytest.raises(ValueError, match="policy="):
        gna_compile.enable(pipe, policy={"default": "dense"})
    with pytest.raises(ValueError, match="backend="):
        gna_compile.enable(pipe, backend="inductor")
    with pytest.raises(ValueError, match="needs a pipeline with a `transformer`"):
        gna_compile.enable(object())
    gna_compile.enable(pipe)
    with pytest.raises(ValueError, match="already enabled"):
        gna_compile.enable(pipe)
    gna_compile.disable(pipe)
    with pytest.raises(ValueError, match="not enabled"):
        gna_compile.disable(pipe)


def test_disable_restores_the_pipeline():
    pipe, call, _ = tp.flux()
    cls = type(pipe)
    gna_compile.enable(pipe)
    assert type(pipe).__name__ == cls.__name__ and isinstance(pipe, cls) and type(pipe) is not cls
    gna_compile.disable(pipe)
    assert type(pipe) is cls and "forward" not in pipe.transformer.__dict__


def test_unknown_pipeline_falls_back_to_the_graph():
    """A pipeline of no known family: a warning, no layout from the calls, dense_steps 0; the
    transformer still runs through the backend (here FLUX's packed tokens cannot be proven, so
    every call stays dense with the backend's reason) and the result is the eager one."""
    pipe, call, _ = tp.flux()

    class MyPipeline:  # not a diffusers class: only what enable() needs
        def __init__(self, inner):
            self.inner, self.transformer = inner, inner.transformer

        def __call__(self, **kw):
            return self.inner(**kw)

    mine = MyPipeline(pipe)
    with torch.no_grad():
        want = _latents(pipe(**call((4, 6)), num_inference_steps=2, output_type="latent"))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        gna_compile.enable(mine, policy=Policy(default=GNA((3, 3))), inner="aot_eager")
    assert any("not a pipeline family" in str(x.message) for x in w)
    got = _latents(mine(**call((4, 6)), num_inference_steps=2, output_type="latent"))
    recs = records(mine)
    assert recs and not any(r.rewritten for r in recs)
    assert all("layout not provable" in r.reason or "cross-attention" in r.reason for r in recs), \
        [r.reason for r in recs]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_forward_the_module_already_had_is_kept():
    """A hook that replaced the transformer's forward (diffusers' hooks do) still runs under
    enable(), and disable() puts it back."""
    pipe, call, _ = tp.flux()
    tr = pipe.transformer
    seen = []
    orig = tr.forward

    def hooked(*a, **kw):
        seen.append(1)
        return orig(*a, **kw)

    tr.forward = hooked
    gna_compile.enable(pipe, dense_steps=0, inner="eager")
    pipe(**call((4, 6)), num_inference_steps=2, output_type="latent")
    assert len(seen) == 2
    gna_compile.disable(pipe)
    assert tr.forward is hooked


def test_schedule_inside_dense_attention_stays_dense():
    """A user's dense_attention() around the call wins over the schedule: every step dense."""
    from gna_compile.kernels import dispatch
    pipe, call, _ = tp.flux()
    gna_compile.enable(pipe, dense_steps=1, inner="eager")
    modes = []
    orig = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **kw: modes.append(dispatch.dense_mode()) or orig(*a, **kw)
    with gna_compile.dense_attention():
        pipe(**call((4, 6)), num_inference_steps=3, output_type="latent")
    assert modes == [True] * 3
    pipe.transformer.forward = orig
    gna_compile.disable(pipe)


def test_shared_transformer_and_later_hooks_are_refused():
    """Two pipelines sharing one transformer cannot both be enabled, and disable() refuses to
    drop a hook installed after enable()."""
    import diffusers
    pipe, call, _ = tp.flux()
    twin = diffusers.FluxPipeline(**pipe.components)
    gna_compile.enable(pipe, inner="eager")
    with pytest.raises(ValueError, match="shares it"):
        gna_compile.enable(twin)
    ours = pipe.transformer.forward
    pipe.transformer.forward = lambda *a, **kw: ours(*a, **kw)  # a hook added later
    with pytest.raises(ValueError, match="replaced after gna_compile.enable"):
        gna_compile.disable(pipe)
    pipe.transformer.forward = ours
    gna_compile.disable(pipe)
    assert "forward" not in pipe.transformer.__dict__


@pytest.mark.parametrize("opts", [dict(mode="reduce-overhead"), dict(mode="max-autotune"),
                                  dict(options={"triton.cudagraphs": True})])
def test_cuda_graph_modes_are_refused(opts):
    pipe, _, _ = tp.flux()
    with pytest.raises(ValueError, match="CUDA-graph replay"):
        gna_compile.enable(pipe, **opts)


def test_grid_is_read_once_per_id_tensor_and_again_after_it_changes():
    """The dispatcher keeps the last grid while the very same, unmodified img_ids come back
    (reading them synchronises with the device); a new tensor or an in-place change is read."""
    import dataclasses
    pipe, _, _ = tp.flux()
    gna_compile.enable(pipe, inner="eager")
    state = pipe._gna_state
    reads = []
    real = state.family.packed_grid
    state.family = dataclasses.replace(state.family, packed_grid=lambda a, kw: reads.append(1) or real(a, kw))
    ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(6.0), indexing="ij"),
                      -1).reshape(-1, 3)
    assert state.read_grid((), dict(img_ids=ids)) == ((4, 6), "")
    assert state.read_grid((), dict(img_ids=ids)) == ((4, 6), "") and len(reads) == 1
    assert state.read_grid((), dict(img_ids=ids.clone()))[0] == (4, 6) and len(reads) == 2
    other = ids.clone()
    state.read_grid((), dict(img_ids=other))
    other.copy_(other.flip(0))  # in place: no longer a row-major enumeration
    assert state.read_grid((), dict(img_ids=other))[0] is None and len(reads) == 4
    gna_compile.disable(pipe)
