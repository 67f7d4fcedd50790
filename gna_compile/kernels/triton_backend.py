"""Backend "triton": the Hopper GNA kernels (gna_compile.kernels.hopper) behind the op.

Runs on natural-order tensors: the kernel gathers Q/K/V rows and scatters O rows by tile
coordinates itself, so no permutation pass is needed here (``gna_attention_permuted`` is the
entry point for already permuted tensors). Tiles: the recorded ones, else ``tile_choice.choose_tiles``.
Supported: CUDA sm80+, float16/bfloat16, head dims 32/64/128 (q, k, v equal), GQA. On the CPU
it runs only under TRITON_INTERPRET=1 with GNA_TRITON_ON_CPU=1 (tests; float32 allowed), so
backend="auto" keeps the reference there.
"""

from __future__ import annotations


import torch

from .. import settings
from .dispatch import register_backend, register_backward
from .hopper.constants import TRITON_HEAD_DIMS

try:
    import triton  # noqa: F401
    _TRITON_ERR = None
except ImportError as e:  # pragma: no cover - depends on the environment
    _TRITON_ERR = f"triton is not installed ({e})"

__all__ = ["why_not", "run", "why_not_backward", "run_backward"]

_GPU_DTYPES = (torch.float16, torch.bfloat16)


def why_not(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles=None):
    """None if the Triton kernel can run this call, else the reason."""
    if _TRITON_ERR is not None:
        return _TRITON_ERR
    if q.is_cuda:
        major, minor = torch.cuda.get_device_capability(q.device)
        if major < 8:
            return f"GPU compute capability {major}.{minor} < 8.0"
        if q.dtype not in _GPU_DTYPES:
            return f"dtype {q.dtype} (the kernel takes float16/bfloat16)"
    elif not (settings.interpret() and q.device.type == "cpu" and settings.triton_on_cpu()):
        # The interpreter is for tests: opt in, so "auto" keeps the reference on the CPU.
        return f"device {q.device.type} (needs CUDA, or TRITON_INTERPRET=1 and GNA_TRITON_ON_CPU=1 on the CPU)"
    elif q.dtype not in (*_GPU_DTYPES, torch.float32):
        return f"dtype {q.dtype} (the kernel takes float16/bfloat16; float32 in interpret mode)"
    if not (k.dtype == v.dtype == q.dtype):
        return "q, k, v dtypes differ"
    D = q.shape[-1]
    if D not in TRITON_HEAD_DIMS or k.shape[-1] != D or v.shape[-1] != D:
        return f"head dims q/k/v = {D}/{k.shape[-1]}/{v.shape[-1]} (need equal, one of {TRITON_HEAD_DIMS})"
    if q.shape[1] % k.shape[1]:
        return f"{q.shape[1]} query heads not a multiple of {k.shape[1]} kv heads"
    if scale is not None and not scale > 0:
        return f"scale {scale} (the kernel takes the row max before scaling, so it needs scale > 0)"
    if tiles is None:
        try:
            from .tile_choice import choose_tiles
            choose_tiles(spec, extra_prefix, extra_suffix)
        except ValueError as e:
            return str(e)
    else:
        import math
        bm, bn = math.prod(tiles[0]), math.prod(tiles[1])
        if bm not in (16, 32, 64, 128) or bn not in (16, 32, 64, 128):
            return f"tiles {tiles} ({bm}x{bn} tokens; the kernel takes 16..128-token tiles)"
    return None


def unit_last_stride(*tensors):
    """The tensors, each copied only where its last dim is strided: the kernels read rows
    with a unit last stride, and a caller (or Inductor, for a pass-made op) may hand any
    layout, e.g. a transposed view."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)


def run(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles=None):
    from .tile_choice import choose_tiles
    from .hopper import gna_forward
    q_tile, kv_tile = tiles if tiles is not None else choose_tiles(spec, extra_prefix, extra_suffix)
    q, k, v = unit_last_stride(q, k, v)
    km, grid_mask = _int8_mask(key_mask, q.device)
    return gna_forward(q, k, v, spec, q_tile, kv_tile, extra_prefix, extra_suffix, scale, km,
                       grid_mask, natural=True)


def _int8_mask(key_mask, device):
    if key_mask is None:
        return None, False
    return key_mask.mask.to(device=device, dtype=torch.int8).contiguous(), bool(key_mask.spatial)


def why_not_backward(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles=None):
    """None if the Triton backward kernels can take a call the Triton forward ran, else why."""
    from .hopper import why_not_backward as why_not_kernel
    from .tile_choice import choose_tiles
    why = why_not(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles)
    if why is not None:
        return why
    tiles = tuple(tiles) if tiles is not None else choose_tiles(spec, extra_prefix, extra_suffix)
    return why_not_kernel(q, k, v, spec, extra_prefix, extra_suffix, scale, key_mask, tiles)


def run_backward(grad_out, grad_lse, q, k, v, out, lse, spec, extra_prefix, extra_suffix, scale,
                 key_mask, tiles=None):
    from .hopper import gna_backward
    from .tile_choice import choose_tiles
    q_tile, kv_tile = tiles if tiles is not None else choose_tiles(spec, extra_prefix, extra_suffix)
    q, k, v, out, grad_out = unit_last_stride(q, k, v, out, grad_out)
    km, grid_mask = _int8_mask(key_mask, q.device)
    return gna_backward(q, k, v, out, lse, grad_out.to(q.dtype), spec, q_tile, kv_tile, extra_prefix,
                        extra_suffix, scale, km, grid_mask, natural=True, grad_lse=grad_lse)


register_backend("triton", run, why_not, auto=True)
register_backward("triton", run_backward, why_not_backward)
