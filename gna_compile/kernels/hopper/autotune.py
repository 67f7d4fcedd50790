"""Per-problem choice among launch configs: time each candidate once, keep the fastest.

The cache key is the problem (everything a launch specialises on, as the caller names it)
plus every GNA_* switch (settings.snapshot) and the device name, so a config tuned under one
setting is never reused under another. ``TUNE_LOG`` keeps every trial for the benchmarks.
"""

from __future__ import annotations

import torch

from ... import settings

__all__ = ["choose", "CACHE", "TUNE_LOG"]

CACHE: dict = {}     # key -> winning config
TUNE_LOG: list = []  # (config, ms) of every trial, in order


def cache_key(problem: tuple, device) -> tuple:
    return problem + (settings.snapshot(), torch.cuda.get_device_name(device))


def choose(problem: tuple, device, launch, candidates):
    """The cached winner for ``problem``, else the fastest of ``candidates`` (each run by
    ``launch(config)``); with GNA_TRITON_AUTOTUNE=0 the first candidate, untimed."""
    key = cache_key(problem, device)
    config = CACHE.get(key)
    if config is None:
        tune = settings.autotune() and len(candidates) > 1
        config = _fastest(launch, candidates) if tune else candidates[0]
        CACHE[key] = config
    return config


def _fastest(launch, candidates):
    from triton.testing import do_bench
    best, err = None, None
    for cfg in candidates:
        try:
            t = do_bench(lambda: launch(cfg), warmup=5, rep=30, return_mode="median")
            TUNE_LOG.append((cfg, t))
        except Exception as e:  # e.g. out of shared memory for this config
            err = e
            continue
        if best is None or t < best[0]:
            best = (t, cfg)
    if best is None:
        raise RuntimeError("no launch config of the GNA kernel compiled for this problem") from err
    return best[1]
