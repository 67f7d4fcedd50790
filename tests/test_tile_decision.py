"""One tile decision per call: made by kernels/tile_choice, recorded by the pass, written into
the op, run by every backend path and shown by explain()."""

from __future__ import annotations

import pytest
import torch

import gna_compile
import gna_compile.kernels.op
from gna_compile import GNA, Policy
from gna_compile.config import make_spec
from gna_compile.kernels import dispatch, tile_choice
from gna_compile.passes.decide import decide
from gna_compile.passes.record import CallRecord

from backend_models import ViT


@pytest.mark.parametrize("shape,window,stride", [((256, 256), 80, 1), ((256, 256), 80, 16),
                                                 ((30, 48, 80), (18, 24, 24), (16, 8, 8)), ((16, 44, 80), (16, 14, 24), (1, 1, 8))])
def test_explicit_rule_tiles_are_the_kernels_tiles(shape, window, stride):
    spec = make_spec(shape, window, stride)
    q, kv = tile_choice.choose_tiles(spec)
    rec = CallRecord("m")
    decide(rec, GNA(window, stride), "rule", Policy(), shape, 0, 0)
    assert (rec.q_tile, rec.kv_tile) == (q, kv)
    assert (q, kv) in tile_choice.kernel_tiles(shape)


def test_auto_config_tiles_come_from_the_kernel_tile_set():
    rec = CallRecord("m")
    decide(rec, "auto", "default", Policy(sparsity=0.9, min_speedup=1.0), (64, 64), 1, 0)
    assert rec.rewritten and (rec.q_tile, rec.kv_tile) in tile_choice.kernel_tiles((64, 64))
    spec = make_spec((64, 64), rec.window, rec.stride)
    assert tile_choice.choose_tiles(spec, 1, 0) == (rec.q_tile, rec.kv_tile)


def test_recorded_tiles_reach_the_op_and_its_backend(monkeypatch):
    seen = []
    real = dispatch.run_gna

    def spy(q, k, v, spec, P, S, scale, key_mask, backend="auto", tiles=None):
        seen.append(tiles)
        return real(q, k, v, spec, P, S, scale, key_mask, backend, tiles)

    monkeypatch.setattr(dispatch, "run_gna", spy)
    monkeypatch.setattr(gna_compile.kernels.op, "run_gna", spy)
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA(4, 2)), inner="eager", hoist_permutations=False)
    with torch.no_grad():
        torch.compile(ViT(), backend=be)(torch.randn(1, 3, 32, 32))
    (rec,) = be.records
    assert rec.rewritten and seen == [(rec.q_tile, rec.kv_tile)]
    (node,) = [n for n in be.graphs[0].graph.nodes if "gna_attention" in str(n.target)]
    assert (tuple(node.args[13]), tuple(node.args[14])) == (rec.q_tile, rec.kv_tile)
    report = gna_compile.explain(ViT(), torch.randn(1, 3, 32, 32), policy=Policy(default=GNA(4, 2)), verbose=False)
    tiles = "x".join(map(str, rec.q_tile)) + "/" + "x".join(map(str, rec.kv_tile))
    assert tiles in str(report)


def test_hoisted_calls_run_the_recorded_tiling():
    from gna_compile.models import TinyVideoDiT
    torch._dynamo.reset()
    be = gna_compile.backend(Policy(default=GNA((2, 4, 4), (2, 4, 4))), inner="eager")
    m = TinyVideoDiT(depth=2).eval()
    with torch.no_grad():
        torch.compile(m, backend=be)(torch.randn(1, 4, 4, 16, 16), torch.randn(1, 3, 16))
    tiled = [n for n in be.graphs[0].graph.nodes if "gna_attention_tiled" in str(n.target)]
    perms = [n for n in be.graphs[0].graph.nodes if "permute_tokens" in str(n.target)]
    assert len(tiled) == 2 and perms
    for r, n in zip(be.records, tiled):
        assert r.hoisted and (tuple(n.args[13]), tuple(n.args[14])) == (r.q_tile, r.kv_tile)
    assert all(tuple(p.args[2]) == be.records[0].q_tile for p in perms)
