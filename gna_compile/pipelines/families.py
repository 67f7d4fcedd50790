"""The diffusers pipeline families ``enable()`` knows: how each one's transformer call tells
its token grid, and the share of denoising steps kept dense by default.

The grid is read from what the pipeline hands its transformer on every call, never from a
token count: two resolutions with the same number of tokens (16x24 and 24x16) give different
inputs, hence different grids.

- ``packed`` families flatten the latents before the model, so no graph can prove the grid:
  FLUX passes image ids (one ``(0, row, col)`` per token, row-major), LTX-Video passes
  ``num_frames, height, width`` of its latent grid. The grid read here becomes the policy's
  layout, and a compiled graph is kept per grid (its own backend, so Dynamo never reuses a
  graph made for another grid of the same token count).
- the other families pass unpacked latents to a patch-embedding conv, from which the backend
  proves the grid itself (provenance, passes/spatial.py); nothing is read here.

Dense share: the fraction of the first denoising steps run dense (hybrid schedule), as
``zoo.CASES[...].paper_schedule`` states it for the paper's three models (FLUX 9 of 28,
HunyuanVideo 15 of 50, Cosmos 12 of 35: about a third, our reading of the paper's schedule);
the other video families take HunyuanVideo's share, SD3 FLUX's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import zoo

__all__ = ["Family", "FAMILIES", "family_of"]


def _share(case: str) -> float:
    steps, dense = zoo.CASES[case].paper_schedule
    return dense / steps


def _flux_grid(args, kwargs) -> tuple[Optional[tuple], str]:
    """FLUX: the image ids must be the row-major enumeration of an H x W grid."""
    ids = kwargs.get("img_ids")
    if ids is None:
        return None, "the transformer was called without img_ids"
    ids = ids[0] if ids.dim() == 3 else ids
    if ids.dim() != 2 or ids.shape[-1] != 3 or ids.shape[0] == 0:
        return None, f"img_ids of shape {tuple(ids.shape)} is not [N, 3]"
    rows, cols = ids[:, 1].round().long(), ids[:, 2].round().long()
    h, w = int(rows.max()) + 1, int(cols.max()) + 1
    n = ids.shape[0]
    idx = torch.arange(n, device=ids.device)
    if h * w != n or not (torch.equal(rows, idx // w) and torch.equal(cols, idx % w)):
        return None, "img_ids do not enumerate a row-major grid (packed latents of another kind)"
    return (h, w), ""


def _ltx_grid(args, kwargs) -> tuple[Optional[tuple], str]:
    """LTX-Video: the latent grid is passed as num_frames, height, width (patch size 1)."""
    dims = [kwargs.get(k) for k in ("num_frames", "height", "width")]
    if any(d is None for d in dims):
        return None, "the transformer was called without num_frames/height/width"
    return tuple(int(d) for d in dims), ""


@dataclass(frozen=True)
class Family:
    name: str
    pipelines: tuple[str, ...]          # diffusers pipeline class names
    dense_share: float                  # default share of first steps run dense
    packed_grid: Optional[Callable] = None  # (args, kwargs) -> (grid or None, why); None: proven by the graph
    reads: tuple[str, ...] = ()             # the call's kwargs packed_grid reads

    def default_dense_steps(self, num_inference_steps: int) -> int:
        return int(round(self.dense_share * num_inference_steps))


FAMILIES = (
    Family("flux", ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxControlPipeline"),
           _share("flux"), _flux_grid, ("img_ids",)),
    Family("sd3", ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"), _share("flux")),
    Family("hunyuan", ("HunyuanVideoPipeline",), _share("hunyuan")),
    Family("cosmos", ("CosmosTextToWorldPipeline", "CosmosVideoToWorldPipeline"), _share("cosmos")),
    Family("wan", ("WanPipeline", "WanImageToVideoPipeline"), _share("hunyuan")),
    Family("cogvideox", ("CogVideoXPipeline",), _share("hunyuan")),
    Family("ltx", ("LTXPipeline", "LTXImageToVideoPipeline"), _share("hunyuan"), _ltx_grid,
           ("num_frames", "height", "width")),
)


def family_of(pipe) -> Optional[Family]:
    """The family of a pipeline object (by its class or a base class), or None."""
    names = {c.__name__ for c in type(pipe).__mro__}
    for fam in FAMILIES:
        if names & set(fam.pipelines):
            return fam
    return None
