"""Triton GNA kernel and permutation against the reference, on fresh random inputs.

On the CPU the kernels run under TRITON_INTERPRET=1 (tests/conftest.py) with tiny shapes in
float32/float16 (the interpreter's bfloat16 dot is broken in Triton 3.9); with CUDA the same
cases run compiled in bfloat16/float16 with bf16 tolerances (relative L2 error). Outputs are
poisoned with NaN before each launch, so an unwritten row fails.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from gna_compile.config import make_spec  # noqa: E402
from gna_compile.kernels.dispatch import KeyMask  # noqa: E402
from gna_compile.kernels.permute import permute_tokens, unpermute_tokens  # noqa: E402
from gna_compile.kernels.reference import reference_attention  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from gna_compile.kernels.hopper import forward, triton_fwd  # noqa: E402
from gna_compile.kernels.hopper.configs import TritonConfig  # noqa: E402
from gna_compile.kernels.tile_choice import choose_tiles, tile_stats  # noqa: E402
from gna_compile.kernels.triton_permute import permute_tokens_triton, unpermute_tokens_triton  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
DTYPES = (torch.bfloat16, torch.float16) if CUDA else (torch.float32, torch.float16)
TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (4e-3, 5e-3), torch.bfloat16: (2e-2, 2e-2)}

# (shape, window, stride, dilation, causal, q_tile, kv_tile, prefix, suffix, H, Hkv, D)
CASES = {
    "1d_pad_stride_extras": ((37,), 9, 3, 1, False, (16,), (16,), 3, 5, 2, 2, 32),
    "1d_block_sparse": ((64,), 48, 16, 1, False, (16,), (16,), 0, 0, 2, 1, 32),
    "2d_kvsplit_gqa_causal": ((10, 12), (5, 7), (2, 3), 1, (True, False), (4, 8), (2, 8), 0, 4, 4, 2, 32),
    "2d_dilation": ((12, 13), (3, 4), 1, (2, 3), False, (4, 4), (4, 4), 2, 0, 1, 1, 32),
    "3d_stride_pad": ((4, 5, 6), (2, 3, 4), (1, 2, 3), 1, False, (2, 4, 4), (1, 4, 4), 0, 0, 2, 2, 32),
    "1d_extras_full_and_tails": ((40,), 8, 2, 1, False, (16,), (16,), 20, 37, 2, 2, 32),
    "2d_d64_prefix": ((8, 16), (4, 8), (4, 8), 1, False, (4, 8), (4, 8), 16, 0, 1, 1, 64),
    "3d_full_box_2x2x2": ((4, 4, 16), (4, 4, 11), 1, 1, False, (4, 2, 4), (2, 2, 4), 0, 0, 1, 1, 32),
}


def _inputs(spec, P, S, H, Hkv, D, dtype, B=1):
    N = P + spec.num_tokens + S
    q = torch.randn(B, H, N, D, dtype=torch.float32).to(DEV, dtype)
    k = torch.randn(B, Hkv, N, D, dtype=torch.float32).to(DEV, dtype)
    v = torch.randn(B, Hkv, N, D, dtype=torch.float32).to(DEV, dtype)
    return q, k, v


def _ref(q, k, v, spec, P, S, scale, mask):
    cdt = torch.float64 if not CUDA else torch.float32
    out, lse = reference_attention(q.to(cdt), k.to(cdt), v.to(cdt), spec, P, S, scale, mask)
    return out, lse


def _check(out, lse, ref_out, ref_lse, dtype, rows=None):
    rtol, ltol = TOL[dtype]
    assert torch.isfinite(out.float()).all(), "output has NaN/inf (unwritten rows?)"
    err = ((out.double() - ref_out.double()).norm() / ref_out.double().norm()).item()
    assert err < rtol, f"relative error {err:.2e} >= {rtol}"
    fin = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), fin)
    lerr = (lse[fin].double() - ref_lse[fin].double()).abs().max().item()
    assert lerr < ltol, f"lse error {lerr:.2e} >= {ltol}"


def _unpermute_out(out, lse, shape, qt, P, S):
    """Kernel output and LSE from tiled back to natural token order."""
    return (unpermute_tokens(out, shape, qt, P, S),
            unpermute_tokens(lse[..., None], shape, qt, P, S)[..., 0])


def _launch(q, k, v, spec, qt, kt, P, S, scale, km, km_grid, natural=True, config=None, grid_visible=None):
    B, H, N, D = q.shape
    out = torch.full((B, H, N, D), float("nan"), dtype=q.dtype, device=q.device)
    lse = torch.full((B, H, N), float("nan"), dtype=torch.float32, device=q.device)
    return forward.gna_forward(q, k, v, spec, qt, kt, P, S, scale, km, km_grid, natural=natural,
                               out=out, lse=lse, config=config, grid_visible=grid_visible)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_reference(name):
    shape, w, s, d, c, qt, kt, P, S, H, Hkv, D = CASES[name]
    spec = make_spec(shape, w, s, d, c)
    dtype = DTYPES[list(CASES).index(name) % 2]
    q, k, v = _inputs(spec, P, S, H, Hkv, D, dtype)
    scale = 0.7 / math.sqrt(D)
    out, lse = _launch(q, k, v, spec, qt, kt, P, S, scale, None, False)
    _check(out, lse, *_ref(q, k, v, spec, P, S, scale, None), dtype)


@pytest.mark.parametrize("fma_exp,stale", [(1, 0), (2, 0), (0, 1), (2, 1)])
@pytest.mark.parametrize("name", ["1d_block_sparse", "2d_d64_prefix", "1d_extras_full_and_tails",
                                  "3d_full_box_2x2x2"])
@pytest.mark.parametrize("natural", [True, False])
def test_softmax_variants_match_reference(name, fma_exp, stale, natural):
    """Launch configs with fma_exp (exponentials partly on the FMA pipe) and stale (frozen row max in
    the unmasked loop): same results in 16 bits."""
    shape, w, s, d, c, qt, kt, P, S, H, Hkv, D = CASES[name]
    spec = make_spec(shape, w, s, d, c)
    dtype = torch.bfloat16 if CUDA else torch.float16
    q, k, v = _inputs(spec, P, S, H, Hkv, D, dtype)
    if not natural:
        q, k, v = (permute_tokens(t, spec.shape, qt, P, S) for t in (q, k, v))
    out, lse = _launch(q, k, v, spec, qt, kt, P, S, None, None, False, natural, config=TritonConfig(4, 2, fma_exp=fma_exp, stale=bool(stale)))
    if not natural:
        out, lse = _unpermute_out(out, lse, spec.shape, qt, P, S)
        q, k, v = (unpermute_tokens(t, spec.shape, qt, P, S) for t in (q, k, v))
    _check(out, lse, *_ref(q, k, v, spec, P, S, None, None), dtype)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's exp2 overflow before the redo
@pytest.mark.parametrize("gap", [20.0, 300.0])
def test_frozen_max_falls_back_when_a_later_score_is_far_above(gap):
    """Frozen row max: the first full tile's keys score 0, a later tile's score ``gap`` (log2
    units) above. 20 stays on the frozen path (P up to 2**20); 300 would overflow to inf, so
    the Q tile must be redone with the exact online softmax."""
    spec = make_spec((64,), 48, 16)
    H, D, dtype = 2, 32, DTYPES[0]
    q = torch.ones(1, H, 64, D)
    k = torch.randn(1, H, 64, D) * 0.01
    k[:, :, 40:48] = 1.0  # in every Q tile's box (tiles 0-2 or 1-3), never its first tile
    k[:, :, :16] = 0.0
    scale = gap / (D * 1.4426950408889634)  # q.k = D on the hot keys -> gap in log2 units
    v = torch.randn(1, H, 64, D)
    q, k, v = (t.to(DEV, dtype) for t in (q, k, v))
    out, lse = _launch(q, k, v, spec, (16,), (16,), 0, 0, scale, None, False, True, config=TritonConfig(4, 2, stale=True))
    _check(out, lse, *_ref(q, k, v, spec, 0, 0, scale, None), dtype)


@triton.jit
def _krange_probe(LO, HI, n, w, s, d, N: tl.constexpr, CAUSAL: tl.constexpr, DIL: tl.constexpr):
    q = tl.arange(0, N)
    lo, hi = triton_fwd._krange(tl.minimum(q, n - 1), n, w, s, d, CAUSAL, DIL)
    tl.store(LO + q, lo)
    tl.store(HI + q, hi)


@pytest.mark.parametrize("n,w,s,d,c", [(37, 9, 3, 1, False), (40, 8, 8, 1, True), (23, 5, 2, 3, False),
                                        (23, 4, 4, 2, True), (16, 16, 1, 1, False), (9, 2, 1, 4, True)])
def test_device_window_rule_is_the_mask_rule(n, w, s, d, c):
    """triton_fwd._krange (the device spelling of the window rule) equals mask.key_range for
    every query, with and without dilation and causality."""
    from gna_compile.mask import key_range
    lo = torch.empty(64, dtype=torch.int32, device=DEV)
    hi = torch.empty_like(lo)
    _krange_probe[(1,)](lo, hi, n, w, s, d, N=64, CAUSAL=c, DIL=d > 1)
    got = list(zip(lo.tolist()[:n], hi.tolist()[:n]))
    assert got == [key_range(q, n, w, s, d, c) for q in range(n)]


@triton.jit
def _exp2_fma_probe(X, Y, N: tl.constexpr):
    offs = tl.arange(0, N)
    tl.store(Y + offs, triton_fwd._exp2_fma(tl.load(X + offs)))


def test_exp2_fma_accuracy():
    """The cubic 2**x: relative error < 1e-4 wherever the result is a normal float, a finite
    non-negative ~0 below that (never a wrapped exponent), exact powers of two stay close."""
    x = torch.cat([torch.linspace(-140.0, 0.0, 4000), -torch.rand(96) * 3, torch.tensor([-126.0, -0.0, -1.0, -0.5])])
    x = x[:4096].contiguous().to(DEV)
    y = torch.empty_like(x)
    _exp2_fma_probe[(1,)](x, y, N=4096)
    ref = torch.exp2(x.double())
    ok = x >= -125.0
    rel = ((y.double() - ref) / ref)[ok].abs().max().item()
    assert rel < 1e-4, rel
    assert torch.isfinite(y).all() and (y >= 0).all() and (y[~ok] < 1e-37).all()


def test_cases_cover_full_and_partial_tiles():
    """The cases must exercise both loops: unmasked full tiles and masked partial tiles."""
    full = partial = 0
    for shape, w, s, d, c, qt, kt, *_ in CASES.values():
        vis, f, _, _ = tile_stats(make_spec(shape, w, s, d, c), qt, kt)
        full += f
        partial += vis - f
    assert full > 0 and partial > 0
    vis, f, _, _ = tile_stats(make_spec((64,), 48, 16), (16,), (16,))
    assert vis == f, "1d_block_sparse must be perfectly block-sparse"


@pytest.mark.parametrize("spatial", [True, False])
def test_key_mask(spatial):
    shape, w, s, P, S = (6, 10), (3, 5), (1, 2), 5, 3
    spec = make_spec(shape, w, s)
    dtype = DTYPES[0]
    B, H, D = 2, 2, 32
    q, k, v = _inputs(spec, P, S, H, H, D, dtype, B=B)
    N = q.shape[2]
    mask = torch.rand(B, N) > 0.3
    if not spatial:
        mask[:, P:P + spec.num_tokens] = True
    mask[1, :P] = False
    mask[1, P + spec.num_tokens:] = False  # batch 1: no extra key visible
    mask = mask.to(DEV)
    out, lse = _launch(q, k, v, spec, (2, 8), (2, 8), P, S, None, mask.to(torch.int8), spatial)
    _check(out, lse, *_ref(q, k, v, spec, P, S, None, mask), dtype)


@pytest.mark.parametrize("natural,stale", [(True, 0), (False, 0), (False, 1)])
def test_key_mask_that_hides_no_grid_key_takes_the_unmasked_loop(natural, stale):
    """A mask that may hide grid keys (spatial=True) but, in batch 0, hides none: batch 0 runs
    its full tiles unmasked (grid_visible), batch 1 (grid keys hidden) the masked loop; both
    must equal the reference."""
    shape, w, s, P, S = (4, 32), (3, 24), 1, 3, 21
    spec = make_spec(shape, w, s)
    dtype = DTYPES[0]
    q, k, v = _inputs(spec, P, S, 1, 1, 32, dtype, B=2)
    N = q.shape[2]
    mask = torch.ones(2, N, dtype=torch.bool)
    mask[0, N - 5:] = False  # batch 0: text padding only
    mask[1] = torch.rand(N) > 0.3
    mask = mask.to(DEV)
    qt, kt = (2, 8), (2, 8)
    cfg = TritonConfig(4, 2, stale=bool(stale))
    if natural:
        out, lse = _launch(q, k, v, spec, qt, kt, P, S, None, mask.to(torch.int8), True, True, config=cfg)
    else:
        qp, kp, vp = (permute_tokens(t, shape, qt, P, S) for t in (q, k, v))
        km = permute_tokens(mask.float()[..., None], shape, qt, P, S)[..., 0].to(torch.int8).contiguous()
        visible = mask[:, P:P + spec.num_tokens].all(dim=1)
        assert visible.tolist() == [True, False]
        out, lse = _unpermute_out(*_launch(qp, kp, vp, spec, qt, kt, P, S, None, km, True, False, config=cfg,
                                           grid_visible=visible), shape, qt, P, S)
    vis, full, _, _ = tile_stats(spec, qt, kt)
    assert full > 0
    _check(out, lse, *_ref(q, k, v, spec, P, S, None, mask), dtype)


def test_backend_and_permuted_entry_point(monkeypatch):
    """backend="triton" through the public op, and gna_attention_permuted on tiled tensors."""
    import gna_compile
    monkeypatch.setenv("GNA_TRITON_ON_CPU", "1")
    shape, w, s, P, S = (7, 9), (3, 4), (2, 2), 2, 3
    spec = make_spec(shape, w, s)
    dtype = DTYPES[1]
    q, k, v = _inputs(spec, P, S, 2, 1, 32, dtype)
    ref_out, ref_lse = _ref(q, k, v, spec, P, S, None, None)
    out, lse = gna_compile.gna_attention_lse(q, k, v, shape, w, s, extra_prefix=P, extra_suffix=S,
                                             backend="triton")
    _check(out, lse, ref_out, ref_lse, dtype)
    qt, kt = (4, 8), (2, 8)
    qp, kp, vp = (permute_tokens(t, shape, qt, P, S) for t in (q, k, v))
    for hide_grid_key in (True, False):  # False: only extra keys hidden (grid_visible from the mask)
        mask = torch.ones(1, q.shape[2], dtype=torch.bool, device=DEV)
        mask[0, 0] = False
        if hide_grid_key:
            mask[0, P + 4] = False
        out, lse = _unpermute_out(*forward.gna_attention_permuted(qp, kp, vp, spec, qt, kt, P, S, None,
                                                                     KeyMask(mask, True)), shape, qt, P, S)
        _check(out, lse, *_ref(q, k, v, spec, P, S, None, mask), dtype)


def test_backend_refuses_unsupported(monkeypatch):
    from gna_compile.kernels.triton_backend import why_not
    monkeypatch.setenv("GNA_TRITON_ON_CPU", "1")
    spec = make_spec((16,), 4)
    q = torch.randn(1, 1, 16, 48, device=DEV, dtype=DTYPES[0])
    assert "head dim" in why_not(q, q, q, spec, 0, 0, None, None)
    q = torch.randn(1, 1, 16, 32, device=DEV, dtype=torch.float64)
    assert "dtype" in why_not(q, q, q, spec, 0, 0, None, None)
    q = torch.randn(1, 1, 16, 32, device=DEV, dtype=DTYPES[0])
    assert why_not(q, q, q, spec, 0, 0, None, None) is None
    assert "scale" in why_not(q, q, q, spec, 0, 0, -0.5, None)  # row max before scaling: needs > 0
    with pytest.raises(ValueError, match="scale"):
        forward.gna_forward(q, q, q, spec, (16,), (16,), 0, 0, 0.0)
    assert "too small" in why_not(q[:, :, :5], q[:, :, :5], q[:, :, :5], make_spec((5,), 2), 0, 0, None, None)
    if not CUDA:  # without the opt-in, "auto" must keep the reference on the CPU
        monkeypatch.delenv("GNA_TRITON_ON_CPU")
        assert "GNA_TRITON_ON_CPU" in why_not(q, q, q, spec, 0, 0, None, None)


@pytest.mark.parametrize("shape,tile,P,S", [((37,), (16,), 0, 3), ((5, 7), (4, 4), 3, 2),
                                            ((3, 5, 6), (2, 2, 4), 0, 5)])
def test_triton_permutation_matches_torch(shape, tile, P, S):
    x = torch.randn(2, 3, P + math.prod(shape) + S, 32, device=DEV)
    y = permute_tokens_triton(x, shape, tile, P, S)
    assert torch.equal(y, permute_tokens(x, shape, tile, P, S))
    assert torch.equal(unpermute_tokens_triton(y, shape, tile, P, S), x)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_paper_like_shapes(dtype):
    """Real tile sizes (128/64 tokens) on shapes with padding, strides, extras and GQA."""
    for shape, w, s, P, S in [((30, 48, 40), (18, 24, 24), (16, 8, 8), 0, 77),
                              ((40, 72), (24, 24), (1, 1), 64, 0),
                              ((20, 24, 40), (7, 9, 9), (1, 3, 1), 0, 0)]:
        spec = make_spec(shape, w, s)
        qt, kt = choose_tiles(spec, P, S)
        q, k, v = _inputs(spec, P, S, 4, 2, 128, dtype)
        out, lse = _launch(q, k, v, spec, qt, kt, P, S, None, None, False)
        _check(out, lse, *_ref(q, k, v, spec, P, S, None, None), dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_int64_offsets():
    """B*H*N*D > 2**31: check the last head (its offsets overflow int32)."""
    shape, w, s = (256, 512), (16, 16), (16, 16)
    spec = make_spec(shape, w, s)
    H, D = 130, 128
    N = spec.num_tokens
    assert H * N * D > 2 ** 31
    q, k, v = (torch.randn(1, H, N, D, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    qt, kt = choose_tiles(spec)
    out, lse = _launch(q, k, v, spec, qt, kt, 0, 0, None, None, False)
    h = slice(H - 2, H)
    ref = _ref(q[:, h], k[:, h], v[:, h], spec, 0, 0, None, None)
    _check(out[:, h], lse[:, h], *ref, torch.bfloat16)
    del q, k, v, out, lse
    torch.cuda.empty_cache()


@pytest.mark.parametrize("shape,w,s,d,c,qt,P,S", [
    ((7, 9), (3, 4), (2, 2), (1, 2), (False, True), (4, 4), 2, 3),
    ((5, 6, 7), (3, 4, 5), (1, 2, 3), 1, False, (2, 4, 4), 0, 4)])
def test_flex_mask_mod_is_gna(shape, w, s, d, c, qt, P, S):
    """The flex competitor's mask_mod, evaluated densely in tiled order, equals DESIGN §1."""
    from gna_compile.kernels.flex_backend import gna_mask_mod
    from gna_compile.mask import dense_mask
    spec = make_spec(shape, w, s, d, c)
    pshape = [-(-n // t) * t for n, t in zip(shape, qt)]
    i = torch.arange(P + math.prod(pshape) + S)
    m = gna_mask_mod(spec, qt, P, S)(0, 0, i[:, None], i[None, :]).float()
    m = unpermute_tokens(m, shape, qt, P, S)
    m = unpermute_tokens(m.t().contiguous(), shape, qt, P, S).t()
    assert torch.equal(m.bool(), dense_mask(spec, P, S))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_gpu_flex_backend():
    import gna_compile
    shape, w, s, P = (24, 40), (9, 12), (3, 4), 100
    spec = make_spec(shape, w, s)
    q, k, v = _inputs(spec, P, 0, 4, 2, 64, torch.bfloat16)
    out, lse = gna_compile.gna_attention_lse(q, k, v, shape, w, s, extra_prefix=P, backend="flex")
    _check(out, lse, *_ref(q, k, v, spec, P, 0, None, None), torch.bfloat16)
