"""Tiny offline pipelines (gna_compile.pipelines.offline, size "small") and what the tests know
about them independently of the compiler: the visual self-attention's token layout for a latent
grid (FLUX: text first; HunyuanVideo: text last, masked tail; Wan: no text in self-attention).
Each builder returns ``(pipe, call(grid, seed=0) -> call kwargs, plan(grid) -> GNA layout)``.
Not collected by pytest (no test_ prefix)."""

from gna_compile.pipelines import offline


def _build(name, layout):
    pipe, call = offline.build(name, "small")
    pipe.set_progress_bar_config(disable=False)
    return pipe, (lambda grid, seed=0: call(grid, seed)), layout


def flux():
    return _build("flux", lambda grid: dict(shape=tuple(grid), extra_prefix=5))


def hunyuan():
    return _build("hunyuan", lambda grid: dict(shape=tuple(grid), extra_suffix=5))


def wan():
    return _build("wan", lambda grid: dict(shape=tuple(grid)))


def cosmos():
    return _build("cosmos", lambda grid: dict(shape=tuple(grid)))


def ltx():
    return _build("ltx", lambda grid: dict(shape=tuple(grid)))
