"""Triton GNA backward against autograd of dense attention with mask.dense_mask, in fp64.

On the CPU the kernels run under TRITON_INTERPRET=1 (set here before the kernels are imported,
as tests/conftest.py does), so shapes are tiny. Every case also checks that the oracle of a
deliberately wrong problem (window w+1, no key mask, ...) is far from the kernel's grads, so
a case cannot pass by the window rule not mattering.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

triton = pytest.importorskip("triton")

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)

from gna_compile.config import make_spec  # noqa: E402
from gna_compile.kernels.dispatch import KeyMask  # noqa: E402
from gna_compile.kernels.hopper import backward, forward  # noqa: E402
from gna_compile.kernels.hopper.configs import TritonBwdConfig  # noqa: E402
from gna_compile.kernels.hopper.triton_bwd_launch import inverse_box_tables  # noqa: E402
from gna_compile.kernels.hopper import triton_bwd_launch  # noqa: E402
from gna_compile.kernels.permute import permutation_index, permute_tokens, unpermute_tokens  # noqa: E402
from gna_compile.mask import dense_mask, key_range  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
# relative L2; fp32 accumulation in the kernel (on the GPU fp32 dots run in TF32)
TOL = {torch.float32: 5e-3 if CUDA else 2e-5, torch.float64: 5e-3 if CUDA else 2e-5, torch.bfloat16: 3e-2,
       torch.float16: 1e-2}

# (shape, window, stride, dilation, causal, q_tile, kv_tile, prefix, suffix, H, Hkv)
CASES = {
    "1d_stride3_extras_gqa": ((24,), 7, 3, 1, False, (16,), (16,), 3, 5, 4, 2),
    "1d_stride1_partial": ((24,), 5, 1, 1, False, (16,), (16,), 0, 0, 2, 2),
    "1d_block_sparse_full": ((64,), 48, 16, 1, False, (16,), (16,), 0, 0, 1, 1),
    "2d_6x8_stride": ((6, 8), (3, 5), (2, 1), 1, False, (2, 8), (2, 8), 0, 0, 2, 1),
    "2d_6x8_dilation": ((6, 8), (3, 3), 1, (2, 2), False, (2, 8), (2, 8), 2, 0, 2, 2),
    "2d_6x8_causal": ((6, 8), (3, 4), (1, 2), 1, (True, False), (2, 8), (2, 8), 0, 3, 4, 2),
    "3d_4x4x6": ((4, 4, 6), (2, 3, 3), (1, 1, 2), 1, False, (1, 4, 4), (1, 4, 4), 0, 2, 1, 1),
}


def _wrong(spec_args):
    """The same problem with every window one larger where it fits (w+1 <= n / d)."""
    shape, w, s, d, c = spec_args
    r = len(shape)
    w, s, d, c = ((x,) * r if not isinstance(x, tuple) else x for x in (w, s, d, c))
    w2 = tuple(wi + 1 if (wi + 1) * di <= n else wi for wi, di, n in zip(w, d, shape))
    return make_spec(shape, w2, s, d, c)


def _inputs(spec, P, S, H, Hkv, dtype, D=32, B=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = P + spec.num_tokens + S
    return tuple(torch.randn(B, h, N, D, generator=g, dtype=torch.float64).to(DEV, dtype)
                 for h in (H, Hkv, Hkv, H))


def _oracle(q, k, v, do, spec, P, S, scale, km=None, km_grid=False):
    """Grads of dense masked attention in fp64; a query with no key gives 0 (no NaN)."""
    q, k, v = (t.double().detach().requires_grad_() for t in (q, k, v))
    G = q.shape[1] // k.shape[1]
    m = dense_mask(spec, P, S, device=q.device)[None, None]
    if km is not None:
        eff = km.bool().clone()
        if not km_grid:
            eff[:, P:P + spec.num_tokens] = True
        m = m & eff[:, None, None, :]
    kk, vv = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    s = (q @ kk.transpose(-1, -2)) * scale
    seen = m.any(-1, keepdim=True)
    s = torch.where(seen, torch.where(m, s, float("-inf")), 0.0)
    o = (torch.softmax(s, -1) * seen) @ vv
    return torch.autograd.grad(o, (q, k, v), do.double())


def _err(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def _check(grads, good, wrong, dtype):
    tol = TOL[dtype]
    for name, g, r in zip("qkv", grads, good):
        assert torch.isfinite(g).all(), f"d{name} has NaN/inf"
        assert _err(g, r) < tol, f"d{name}: relative error {_err(g, r):.2e} >= {tol}"
    far = 4 * tol if CUDA else 100 * tol  # GPU: TF32/16-bit rounding sits closer to the wrong answer
    assert max(_err(g, r) for g, r in zip(grads, wrong)) > far, "the wrong problem's grads match too"


def _run(q, k, v, do, spec, qt, kt, P, S, scale, km=None, km_grid=False, natural=True, config=None):
    out, lse = forward.gna_forward(q, k, v, spec, qt, kt, P, S, scale, km, km_grid, natural=natural)
    return backward.gna_backward(q, k, v, out, lse, do, spec, qt, kt, P, S, scale, km, km_grid,
                                 natural=natural, config=config)


# Tiles larger than the kernels' steps: dK/dV walks each Q tile in block_m rows, dQ each KV
# tile in block_n keys; extra-token counts not multiples of either.
SUB_CASES = {
    "1d_extras_gqa": ((40,), 9, 2, 1, False, (32,), (32,), 5, 19, 2, 1),
    "2d_stride_partial": ((7, 8), (3, 5), (1, 2), 1, False, (4, 8), (4, 8), 0, 3, 2, 1),
}


@pytest.mark.parametrize("name", list(SUB_CASES))
def test_steps_smaller_than_tiles(name):
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = SUB_CASES[name]
    spec = make_spec(shape, w, s, d, c)
    q, k, v, do = _inputs(spec, P, S, H, Hkv, torch.float32)
    cfg = TritonBwdConfig(4, 1, 16, 16)
    assert cfg.steps(math.prod(qt), math.prod(kt)) == (16, 16)
    grads = _run(q, k, v, do, spec, qt, kt, P, S, None, config=cfg)
    _check(grads, _oracle(q, k, v, do, spec, P, S, 32 ** -0.5),
           _oracle(q, k, v, do, _wrong((shape, w, s, d, c)), P, S, 32 ** -0.5), torch.float32)


@pytest.mark.parametrize("name", list(CASES))
def test_backward_matches_dense_autograd(name):
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = CASES[name]
    spec = make_spec(shape, w, s, d, c)
    dtype = torch.float32
    q, k, v, do = _inputs(spec, P, S, H, Hkv, dtype)
    scale = 0.7 * 32 ** -0.5
    grads = _run(q, k, v, do, spec, qt, kt, P, S, scale)
    assert grads[1].shape == k.shape and grads[2].shape == v.shape
    _check(grads, _oracle(q, k, v, do, spec, P, S, scale),
           _oracle(q, k, v, do, _wrong((shape, w, s, d, c)), P, S, scale), dtype)


@pytest.mark.skipif(not CUDA, reason="16-bit dots: the GPU run (the CPU tests cover fp32)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(CASES))
def test_gpu_16bit_matches_dense_autograd(name, dtype):
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = CASES[name]
    spec = make_spec(shape, w, s, d, c)
    q, k, v, do = _inputs(spec, P, S, H, Hkv, dtype, D=64, B=2)
    scale = 0.7 * 64 ** -0.5
    grads = _run(q, k, v, do, spec, qt, kt, P, S, scale)
    assert all(g.dtype == dtype for g in grads)
    _check(grads, _oracle(q, k, v, do, spec, P, S, scale),
           _oracle(q, k, v, do, _wrong((shape, w, s, d, c)), P, S, scale), dtype)


def test_tiled_order_and_fp64():
    """Tiled (permuted) tensors in and out, fp64 inputs; padding rows of the grads are zero."""
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = CASES["2d_6x8_causal"]
    spec = make_spec((5, 8), w, s, d, c)  # 5 rows: one padded row of Q tiles
    # the forward kernel takes fp64 only under the interpreter; on the GPU this runs in fp32
    q, k, v, do = _inputs(spec, P, S, H, Hkv, torch.float32 if CUDA else torch.float64)
    tp = [permute_tokens(t, spec.shape, qt, P, S) for t in (q, k, v, do)]
    out, lse = forward.gna_forward(*tp[:3], spec, qt, kt, P, S, None, natural=False)
    gt = backward.gna_backward(*tp[:3], out, lse, tp[3], spec, qt, kt, P, S, natural=False)
    pad = P + torch.nonzero(permutation_index(spec.shape, qt) < 0)[:, 0]
    assert len(pad) > 0 and all((g[:, :, pad] == 0).all() for g in gt)
    grads = [unpermute_tokens(g, spec.shape, qt, P, S) for g in gt]
    _check(grads, _oracle(q, k, v, do, spec, P, S, 32 ** -0.5),
           _oracle(q, k, v, do, _wrong(((5, 8), w, s, d, c)), P, S, 32 ** -0.5), torch.float64)


@pytest.mark.parametrize("km_grid", [False, True])
def test_key_mask(km_grid):
    """Key mask on extra keys only, or on grid keys too (then through gna_backward_permuted)."""
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = CASES["1d_stride3_extras_gqa"]
    spec = make_spec(shape, w, s, d, c)
    q, k, v, do = _inputs(spec, P, S, H, Hkv, torch.float32)
    B, N = q.shape[0], q.shape[2]
    km = (torch.rand(B, N, generator=torch.Generator().manual_seed(1)) > 0.4).to(DEV)
    km[:, :P + 1] = torch.tensor([True, False, False, True])
    if km_grid:
        m = KeyMask(km, spatial=True)
        tp = [permute_tokens(t, spec.shape, qt, P, S) for t in (q, k, v, do)]
        out, lse = forward.gna_attention_permuted(*tp[:3], spec, qt, kt, P, S, key_mask=m)
        gt = backward.gna_backward_permuted(*tp[:3], out, lse, tp[3], spec, qt, kt, P, S, key_mask=m)
        grads = [unpermute_tokens(g, spec.shape, qt, P, S) for g in gt]
    else:
        grads = _run(q, k, v, do, spec, qt, kt, P, S, None, km, False)
    scale = 32 ** -0.5
    _check(grads, _oracle(q, k, v, do, spec, P, S, scale, km, km_grid),
           _oracle(q, k, v, do, spec, P, S, scale), torch.float32)


def test_query_without_keys_gets_zero_grads():
    """A key mask that hides a query's whole window: zero grads for it, no NaN anywhere."""
    spec = make_spec((24,), 4)
    q, k, v, do = _inputs(spec, 0, 0, 2, 2, torch.float32)
    km = torch.ones(1, 24, dtype=torch.bool, device=DEV)
    km[:, :8] = False  # queries 0..5 see keys 0..3 .. 4..7 only
    grads = _run(q, k, v, do, spec, (16,), (16,), 0, 0, None, km, True)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][:, :, :6] == 0).all() and (grads[1][:, :, :8] == 0).all()
    _check(grads, _oracle(q, k, v, do, spec, 0, 0, 32 ** -0.5, km, True),
           _oracle(q, k, v, do, spec, 0, 0, 32 ** -0.5), torch.float32)


def test_deterministic():
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = CASES["1d_stride3_extras_gqa"]
    spec = make_spec(shape, w, s, d, c)
    q, k, v, do = _inputs(spec, P, S, H, Hkv, torch.float32)
    out, lse = forward.gna_forward(q, k, v, spec, qt, kt, P, S)
    a = backward.gna_backward(q, k, v, out, lse, do, spec, qt, kt, P, S, natural=True)
    b = backward.gna_backward(q, k, v, out, lse, do, spec, qt, kt, P, S, natural=True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(CASES))
def test_inverse_box_tables_cover_every_pair(name):
    """Host tables: every (query, key) pair the window rule allows lies in a listed Q tile."""
    shape, w, s, d, c, qt, kt, *_ = CASES[name]
    spec = make_spec(shape, w, s, d, c)
    tab = inverse_box_tables(spec, qt, kt, "cpu")
    off = 3 - spec.rank
    for i, (n, wi, si, di, ci) in enumerate(spec.dims()):
        for x in range(n):
            lo, hi = key_range(x, n, wi, si, di, ci)
            for y in range(lo, hi + 1):
                j = y // kt[i]
                assert tab[off + i, 0, j] <= x // qt[i] <= tab[off + i, 1, j]


def test_why_not_backward():
    spec = make_spec((24,), 5)
    q = torch.zeros(1, 2, 24, 32)
    assert backward.why_not_backward(q, q, q, spec, 0, 0, None, None, ((16,), (16,))) is None
    assert "head dim" in backward.why_not_backward(q[..., :16], q[..., :16], q[..., :16], spec, 0, 0,
                                                   None, None, ((16,), (16,)))
    assert "kv heads" in backward.why_not_backward(q, q[:, :1].repeat(1, 3, 1, 1), q[:, :1].repeat(1, 3, 1, 1),
                                                   spec, 0, 0, None, None, ((16,), (16,)))
    assert "tile" in backward.why_not_backward(q, q, q, spec, 0, 0, None, None, ((8,), (8,)))


def test_inverse_box_tables_are_built_once_per_problem():
    """The table is cached per problem and device: uploading it on every backward call was a
    blocking host-to-device copy (a stream sync per call). A different window, stride or tile
    gets its own table, never a neighbour's."""
    spec = make_spec((6, 8), (3, 5), (1, 2))
    a = inverse_box_tables(spec, (2, 4), (2, 4), "cpu")
    assert inverse_box_tables(make_spec((6, 8), (3, 5), (1, 2)), [2, 4], [2, 4], torch.device("cpu")) is a
    for other, tiles in ((make_spec((6, 8), (3, 5), (1, 1)), ((2, 4), (2, 4))),
                         (make_spec((6, 8), (3, 3), (1, 2)), ((2, 4), (2, 4))),
                         (spec, ((2, 4), (2, 2)))):
        b = inverse_box_tables(other, *tiles, "cpu")
        assert b is not a
        fresh = triton_bwd_launch._host_table(tuple(tuple(d) for d in other.dims()), *tiles)
        assert torch.equal(b, fresh)


# The split loops (TritonBwdConfig.split): cases whose dK/dV walks take the full loop and every
# piece of the box minus the full box (A: dim 0 partial; B; C), with extras and GQA.
SPLIT_CASES = {**CASES, **SUB_CASES,
               "2d_block_full": ((8, 32), (4, 24), (2, 8), 1, False, (2, 8), (2, 8), 0, 0, 2, 1),
               "3d_pieces_extras_gqa": ((6, 8, 12), (3, 5, 6), (1, 2, 2), 1, False, (2, 4, 4), (1, 4, 4), 2, 1, 2, 1)}


@pytest.mark.parametrize("block", [16, 128])
@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_split_loops_match_dense_autograd(name, block):
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = SPLIT_CASES[name]
    spec = make_spec(shape, w, s, d, c)
    q, k, v, do = _inputs(spec, P, S, H, Hkv, torch.float32)
    scale = 0.7 * 32 ** -0.5
    cfg = TritonBwdConfig(8 if CUDA else 4, 2 if CUDA else 1, block, block, split=True)
    grads = _run(q, k, v, do, spec, qt, kt, P, S, scale, config=cfg)
    _check(grads, _oracle(q, k, v, do, spec, P, S, scale),
           _oracle(q, k, v, do, _wrong((shape, w, s, d, c)), P, S, scale), torch.float32)


@pytest.mark.skipif(not CUDA, reason="16-bit dots: the GPU run (the CPU tests cover fp32)")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_gpu_16bit_split_loops_match_dense_autograd(name, dtype):
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = SPLIT_CASES[name]
    spec = make_spec(shape, w, s, d, c)
    q, k, v, do = _inputs(spec, P, S, H, Hkv, dtype, D=64, B=2)
    scale = 0.7 * 64 ** -0.5
    grads = _run(q, k, v, do, spec, qt, kt, P, S, scale, config=TritonBwdConfig(8, 2, 128, 128, split=True))
    _check(grads, _oracle(q, k, v, do, spec, P, S, scale),
           _oracle(q, k, v, do, _wrong((shape, w, s, d, c)), P, S, scale), dtype)


@pytest.mark.parametrize("name", list(SPLIT_CASES))
def test_full_box_tables_are_exactly_the_fully_seen_q_tiles(name):
    """Per dim and KV tile, the listed Q tiles are exactly those whose every (real) query sees
    every key of the tile, inside the grid; none is [first, first - 1] of the inverse box.
    An unmasked pair that holds one masked (query, key) would be a silent wrong gradient."""
    shape, w, s, d, c, qt, kt, *_ = SPLIT_CASES[name]
    spec = make_spec(shape, w, s, d, c)
    box = inverse_box_tables(spec, qt, kt, "cpu")
    full = triton_bwd_launch.full_box_tables(spec, qt, kt, "cpu")
    off = 3 - spec.rank
    for i, (n, wi, si, di, ci) in enumerate(spec.dims()):
        for j in range(-(-n // qt[i]) * qt[i] // kt[i]):
            keys = range(j * kt[i], j * kt[i] + kt[i])
            want = [t for t in range(-(-n // qt[i])) if di == 1 and keys[-1] < n and all(
                key_range(x, n, wi, si, di, ci)[0] <= keys[0] and keys[-1] <= key_range(x, n, wi, si, di, ci)[1]
                for x in range(t * qt[i], min(t * qt[i] + qt[i], n)))]
            lo, hi = int(full[off + i, 0, j]), int(full[off + i, 1, j])
            if want:
                assert (lo, hi) == (want[0], want[-1]) and want == list(range(lo, hi + 1)), (i, j, want, lo, hi)
            else:
                assert (lo, hi) == (int(box[off + i, 0, j]), int(box[off + i, 0, j]) - 1), (i, j, lo, hi)


@pytest.mark.parametrize("split", [False, True], ids=["branch", "split"])
@pytest.mark.parametrize("name,case", [
    ("1d_full", ((20,), 20, 1, 1, False, (16,), (16,), 2, 1, 2, 1)),
    ("2d_full", ((6, 13), (6, 13), 1, 1, False, (2, 8), (2, 8), 0, 0, 2, 2)),
    ("2d_causal", ((5, 8), (3, 4), (1, 2), 1, (True, False), (2, 8), (2, 8), 0, 3, 4, 2))])
def test_tiled_padding_rows_holding_values_change_nothing(name, case, split):
    """A caller's tiled tensors may hold anything in their padding rows (a model kept in tiled
    order between calls): the gradients of the real rows and the zero padding rows of the
    result must not depend on them (the full-pair loop read them: dK 210x off, a review)."""
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = case
    spec = make_spec(shape, w, s, d, c)
    q, k, v, do = _inputs(spec, P, S, H, Hkv, torch.float32)
    tp = [permute_tokens(t, spec.shape, qt, P, S) for t in (q, k, v, do)]
    pad = P + torch.nonzero(permutation_index(spec.shape, qt) < 0)[:, 0]
    assert len(pad) > 0
    for t in (tp[0], tp[3]):
        t[:, :, pad] = 3.0
    out, lse = forward.gna_forward(*tp[:3], spec, qt, kt, P, S, None, natural=False)
    cfg = TritonBwdConfig(8 if CUDA else 4, 2 if CUDA else 1, 16, 16, split=split)
    gt = backward.gna_backward(*tp[:3], out, lse, tp[3], spec, qt, kt, P, S, natural=False, config=cfg)
    assert all((g[:, :, pad] == 0).all() for g in gt)
    grads = [unpermute_tokens(g, spec.shape, qt, P, S) for g in gt]
    r = len(shape)
    narrower = make_spec(shape, tuple(max(x - 1, 1) for x in ((w,) * r if isinstance(w, int) else w)), s, d, c)
    _check(grads, _oracle(q, k, v, do, spec, P, S, 32 ** -0.5),
           _oracle(q, k, v, do, narrower, P, S, 32 ** -0.5), torch.float32)


@pytest.mark.parametrize("name,km_grid,seed", [("2d_block_full", True, 3), ("3d_pieces_extras_gqa", False, 4),
                                                ("3d_pieces_extras_gqa", True, 4)],
                         ids=["full-tiles-grid-keys-masked", "extras-extra-keys-masked", "extras-grid-keys-masked"])
def test_split_loops_with_a_key_mask(name, km_grid, seed):
    """A grid key mask turns the full loops off (their keys may be masked), one on extra keys
    only does not: split gives the masked oracle's grads, not the unmasked problem's."""
    shape, w, s, d, c, qt, kt, P, S, H, Hkv = SPLIT_CASES[name]
    spec = make_spec(shape, w, s, d, c)
    q, k, v, do = _inputs(spec, P, S, H, Hkv, torch.float32)
    km = (torch.rand(1, q.shape[2], generator=torch.Generator().manual_seed(seed)) > 0.3).to(DEV)
    if P:
        km[:, 0] = False  # a masked prefix key
    cfg = TritonBwdConfig(4, 1, 16, 16, split=True)
    m = KeyMask(km, spatial=km_grid)
    tp = [permute_tokens(t, spec.shape, qt, P, S) for t in (q, k, v, do)]
    out, lse = forward.gna_attention_permuted(*tp[:3], spec, qt, kt, P, S, key_mask=m)
    gt = backward.gna_backward_permuted(*tp[:3], out, lse, tp[3], spec, qt, kt, P, S, key_mask=m, config=cfg)
    grads = [unpermute_tokens(g, spec.shape, qt, P, S) for g in gt]
    scale = 32 ** -0.5
    _check(grads, _oracle(q, k, v, do, spec, P, S, scale, km, km_grid),
           _oracle(q, k, v, do, spec, P, S, scale), torch.float32)
