"""Golden graphs: the attention calls of the rewritten ATen graph for small models (expecttest)."""

import expecttest
import torch

import gna_compile
from gna_compile import GNA, Policy

from backend_models import BiasViT, FluxLike, VideoBlock, ViT, graph_code


def compile_graph(model, *args, policy, dynamic=False):
    torch._dynamo.reset()
    # The rewrite itself; permutation hoisting has its own golden test (test_hoist_models.py).
    be = gna_compile.backend(policy, inner="eager", hoist_permutations=False)
    with torch.no_grad():
        torch.compile(model, backend=be, fullgraph=True, dynamic=dynamic)(*args)
    assert len(be.graphs) == 1
    return be, graph_code(be.graphs[0])


class TestGolden(expecttest.TestCase):
    def test_vit_conv2d_patchify(self):
        torch.manual_seed(0)
        be, code = compile_graph(ViT(), torch.randn(2, 3, 16, 16), policy=Policy(default=GNA(4, 2)))
        self.assertExpectedInline(code, """gna_attention_default = gna_attention.default(permute_2, permute_3, permute_4, [8, 8], [4, 4], [2, 2], [1, 1], [False, False], 1, 0, 0.353553, None, True, [8, 8], [8, 8], 'auto')""")

    def test_video_text_suffix_key_mask(self):
        torch.manual_seed(0)
        mask = torch.tensor([[True, True, False], [True, True, True]])
        be, code = compile_graph(VideoBlock(), torch.randn(2, 4, 3, 8, 8), torch.randn(2, 3, 16), mask,
                                 policy=Policy(default=GNA((2, 2, 2))))
        self.assertExpectedInline(code, """gna_attention_default = gna_attention.default(permute_2, permute_3, permute_4, [3, 4, 4], [2, 2, 2], [1, 1, 1], [1, 1, 1], [False, False, False], 0, 3, 0.353553, unsqueeze_1, False, [4, 4, 4], [4, 4, 4], 'auto')""")

    def test_flux_like_policy_layout_text_first(self):
        torch.manual_seed(0)
        be, code = compile_graph(FluxLike(), torch.randn(1, 48, 8), torch.randn(1, 5, 12),
                                 policy=Policy(default=GNA((4, 4)), layout=(6, 8)))
        self.assertExpectedInline(code, """gna_attention_default = gna_attention.default(permute_3, permute_4, permute_5, [6, 8], [4, 4], [1, 1], [1, 1], [False, False], 5, 0, 0.353553, None, True, [8, 8], [8, 8], 'auto')""")

    def test_float_mask_stays_dense(self):
        torch.manual_seed(0)
        be, code = compile_graph(BiasViT(), torch.randn(2, 3, 16, 16), torch.randn(1, 1, 64, 64),
                                 policy=Policy(default=GNA(4)))
        self.assertExpectedInline(be.records[0].reason, """attn_mask is torch.float32 (an additive bias), not a boolean key mask""")
        self.assertExpectedInline(code, """sdpa_site = sdpa_site.default(permute_2, permute_3, permute_4, arg5_1, False, None, False, <site>)""")

    def test_dynamic_shapes(self):
        torch.manual_seed(0)
        be, code = compile_graph(ViT(), torch.randn(2, 3, 16, 24), policy=Policy(default=GNA(4, 2)),
                                 dynamic=True)
        self.assertExpectedInline(code, """\
floordiv_2 = floordiv(arg3_1, 2)
floordiv_3 = floordiv(arg4_1, 2)
gna_attention_default = gna_attention.default(permute_2, permute_3, permute_4, [floordiv_2, floordiv_3], [4, 4], [2, 2], [1, 1], [False, False], 1, 0, 0.353553, None, True, [8, 16], [4, 16], 'auto')""")


if __name__ == "__main__":
    import unittest
    unittest.main()
