"""Compile the GNA kernel for Hopper (sm_90a) on a machine without a GPU, and read the result.

Device time is scarce; registers, spills, shared memory and the instruction mix of a variant
can be read off the compiled SASS without one. Triton is driven through a stand-in driver that
reports an sm_90 target (nothing is launched). Prints one line per (case, variant, config):
registers, stack, spill instructions (STL/LDL), shared memory, and counts of MUFU.EX2 (exponentials on the special-function
unit), HGMMA (wgmma) instructions and wgmma waits, plus where the waits sit in the unmasked
loop. Use the Triton version the device has (3.6) for numbers that carry over:

    python -m venv /tmp/t36 && /tmp/t36/bin/pip install triton==3.6.0 torch==2.13.0
    /tmp/t36/bin/python tools/sm90_compile.py [--case flux_s16] [--sass out.sass]
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver as _driver  # noqa: E402

from gna_compile.config import make_spec  # noqa: E402
from gna_compile.kernels.hopper import triton_fwd, triton_launch  # noqa: E402
from gna_compile.kernels.permute import padded_shape  # noqa: E402

CASES = {  # name: (shape, window, stride, extra_prefix, q_tile, kv_tile)
    "flux_s16": ((256, 256), 80, 16, 0, (8, 16), (8, 16)),
    "flux_s1": ((256, 256), 80, 1, 0, (16, 8), (8, 8)),
    "hunyuan_s16x8x8": ((30, 48, 80), (18, 24, 24), (16, 8, 8), 0, (2, 8, 8), (2, 8, 8)),
    "flux_s16_text512": ((256, 256), 80, 16, 512, (8, 16), (8, 16)),
    "cosmos_bs90": ((16, 44, 80), (16, 14, 24), (1, 1, 8), 0, (16, 1, 8), (16, 1, 8)),
}


class _Sm90Driver:
    """Just enough of a Triton driver to compile (never to launch) for an H100."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def map_python_to_cpp_type(self, ty):
        return ty


def compile_case(name, natural=False, config=(8, 3, False), variant=None, key_mask=False, tma=True):
    shape, w, s, P, qt, kt = CASES[name]
    spec = make_spec(shape, w, s)
    H, D = 2, 128
    NG = spec.num_tokens if natural else math.prod(padded_shape(spec.shape, qt))
    N = P + NG
    # Tiny storage is enough: nothing runs. Strides/shapes are those of the real problem.
    q, k, v, o = (torch.empty(1, H, N, D, dtype=torch.bfloat16) for _ in range(4))
    lse = torch.empty(1, H, N, dtype=torch.float32)
    km = torch.ones(1, N, dtype=torch.int8) if key_mask else None
    gv = torch.ones(1, dtype=torch.int32) if key_mask else None
    extra = dict(grid_visible=gv) if key_mask else {}
    grid, args, meta = triton_launch.launch_args(q, k, v, spec, qt, kt, P, 0, None, km, key_mask,
                                                 natural, o, lse, tma=tma, **extra)
    meta.update(variant or {})
    nw, ns, ws = config
    return triton_fwd._gna_fwd.warmup(*args, grid=grid, **meta, WS=bool(ws), num_warps=nw, num_stages=ns,
                                      enable_fp_fusion=True)


def compile_gluon_case(name, head_dim=128, heads_in_columns=False, stages=2, stale=False, redo=False,
                       ws=False, pingpong=True):
    """The Gluon kernel (gna_compile/kernels/hopper/gluon_fwd.py) for a perfectly block-sparse case;
    ``heads_in_columns``: q/k/v as views of one packed [B, N, 3, H, D] buffer."""
    from gna_compile.kernels.hopper import gluon_fwd, gluon_launch
    shape, w, s, P, qt, kt = CASES[name]
    spec = make_spec(shape, w, s)
    H, N = 2, P + spec.num_tokens
    if heads_in_columns:
        packed = torch.empty(1, N, 3, H, head_dim, dtype=torch.bfloat16)
        q, k, v = (packed[:, :, i].transpose(1, 2) for i in range(3))
    else:
        q, k, v = (torch.empty(1, H, N, head_dim, dtype=torch.bfloat16) for _ in range(3))
    o = torch.empty(1, H, N, head_dim, dtype=torch.bfloat16)
    lse = torch.empty(1, H, N, dtype=torch.float32)
    why = gluon_launch.unsupported_reason(q, k, v, spec, qt, kt, P, 0, None, False, o)
    if why:
        raise SystemExit(f"{name}: the Gluon kernel does not apply: {why}")
    grid, args, meta = gluon_launch.launch_args(q, k, v, spec, qt, o, lse, None, P, 0, ws=ws, persistent=ws)
    if ws:
        from gna_compile.kernels.hopper import gluon_ws_fwd
        return gluon_ws_fwd._gna_fwd_ws.warmup(*args, **meta, **gluon_launch.WS_LAUNCH, grid=grid, NS=stages,
                                               STALE=stale, REDO=redo, PINGPONG=pingpong, enable_fp_fusion=True)
    return gluon_fwd._gna_fwd_gluon.warmup(*args, **meta, grid=grid, num_warps=8, NS=stages, STALE=stale,
                                           REDO=redo, enable_fp_fusion=True)


def _cubin_tool(kernel, tool, *flags) -> str:
    exe = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([exe, *flags, f.name], capture_output=True, text=True, check=True).stdout


def sass_of(kernel) -> str:
    return _cubin_tool(kernel, "nvdisasm", "-c")


def resources(kernel) -> dict:
    """Registers and stack bytes from cuobjdump (the kernel is never loaded, so Triton's
    n_regs/n_spills are not filled in); spills are counted as STL/LDL in the SASS."""
    txt = _cubin_tool(kernel, "cuobjdump", "--dump-resource-usage")
    reg = re.search(r"REG:(\d+)", txt)
    stack = re.search(r"STACK:(\d+)", txt)
    return dict(regs=int(reg.group(1)) if reg else -1, stack=int(stack.group(1)) if stack else -1)


def loops(sass: str) -> list:
    """SASS text of each innermost loop: a label to a later branch back to it, holding no
    other such range."""
    lines = sass.splitlines()
    where, spans = {}, []
    for i, line in enumerate(lines):
        m = re.match(r"^(\.L_x_\d+):", line.strip())
        if m:
            where[m.group(1)] = i
        b = re.search(r"BRA\s+`\((\.L_x_\d+)\)", line)
        if b and b.group(1) in where:
            spans.append((where[b.group(1)], i))
    inner = [(a, b) for a, b in spans if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in spans)]
    return ["\n".join(lines[a:b + 1]) for a, b in inner]


def summarize(kernel) -> dict:
    sass = sass_of(kernel)
    ptx = kernel.asm["ptx"]
    count = lambda pat, txt=sass: len(re.findall(pat, txt))  # noqa: E731
    body = [x for x in loops(sass) if "HGMMA" in x]  # the attention loops (not spin-waits)
    return dict(**resources(kernel), spill_insts=count(r"\b(?:STL|LDL)\b"), smem=kernel.metadata.shared,
                ex2=count(r"MUFU\.EX2"), hgmma=count(r"HGMMA"), wgmma_wait=count(r"wgmma\.wait_group", ptx),
                ffma=count(r"\bFFMA\b"), sass_lines=sass.count("\n"),
                loop_ex2=[count(r"MUFU\.EX2", b) for b in body],
                loop_insts=[len(re.findall(r"^\s+/\*[0-9a-f]+\*/", b, re.M)) for b in body],
                loop_spills=sum(count(r"\b(?:STL|LDL)\b", b) for b in body),
                loop_shfl=sum(count(r"\bSHFL\b", b) for b in body),
                loop_lds_sts=sum(count(r"\b(?:LDS|STS)(?:\.\w+)*\b", b) for b in body),
                loop_ex2_in_flight=[_ex2_between_waits(b) for b in body])


def _ex2_between_waits(loop: str) -> int:
    """Exponentials issued after a wgmma wait that leaves one group in flight and before the
    wait for none: the softmax that runs while a matmul is still on the tensor cores."""
    n, inside = 0, False
    for line in loop.splitlines():
        if "WARPGROUP.DEPBAR.LE" in line:
            if inside and "0x0" in line:
                return n
            inside = "0x1" in line
        elif inside and "MUFU.EX2" in line:
            n += 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", help=f"one of {sorted(CASES)} (default: all)")
    ap.add_argument("--natural", action="store_true", help="natural-order I/O instead of tiled")
    ap.add_argument("--key-mask", action="store_true",
                    help="with a key mask on grid keys (HunyuanVideo's text-padding mask)")
    ap.add_argument("--no-tma", action="store_true",
                    help="tiled order with pointer loads (K/V not contiguous, as in a hoisted model)")
    ap.add_argument("--config", default="8,3,0", help="num_warps,num_stages,warp_specialize")
    ap.add_argument("--variant", action="append", default=[],
                    help="extra kernel constexpr, e.g. FMA_EXP=2 (repeatable)")
    ap.add_argument("--gluon", action="store_true", help="the Gluon kernel (hopper/gluon_fwd.py) instead")
    ap.add_argument("--head-dim", type=int, default=128, help="head dim (--gluon only)")
    ap.add_argument("--packed", action="store_true", help="q/k/v as views of a packed QKV buffer (--gluon only)")
    ap.add_argument("--stages", type=int, default=2, help="K/V stages (--gluon only)")
    ap.add_argument("--stale", action="store_true", help="frozen row max (--gluon only)")
    ap.add_argument("--redo", action="store_true", help="the redo launch of --stale (--gluon only)")
    ap.add_argument("--ws", action="store_true", help="the warp-specialised Gluon kernel (hopper/gluon_ws_fwd.py)")
    ap.add_argument("--no-pingpong", action="store_true", help="--ws without the consumers' turn-taking")
    ap.add_argument("--sass", help="write the SASS of the last compiled kernel here")
    ap.add_argument("--ptx", help="write the PTX of the last compiled kernel here")
    ap.add_argument("--json", help="write the summaries ({case: summary}) to this file")
    a = ap.parse_args()
    _driver.set_active(_Sm90Driver())
    cfg = tuple(int(x) for x in a.config.split(","))
    variant = {k: int(v) for k, v in (x.split("=") for x in a.variant)}
    kernel = None
    print(f"triton {triton.__version__}, target sm_90a, config {cfg}, {'natural' if a.natural else 'tiled'} I/O")
    results = {}
    for name in a.case or list(CASES):
        if a.gluon:
            kernel = compile_gluon_case(name, a.head_dim, a.packed, a.stages, a.stale, a.redo, a.ws,
                                        not a.no_pingpong)
        else:
            kernel = compile_case(name, a.natural, cfg, variant, a.key_mask, not a.no_tma)
        results[name] = summarize(kernel)
        print(f"{name:18} " + "  ".join(f"{k} {v}" for k, v in results[name].items()), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    if a.sass and kernel is not None:
        open(a.sass, "w").write(sass_of(kernel))
    if a.ptx and kernel is not None:
        open(a.ptx, "w").write(kernel.asm["ptx"])


if __name__ == "__main__":
    main()
