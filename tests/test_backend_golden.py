"""Golden graphs: the rewritten Dynamo graph for small models, as code (expecttest)."""

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
        self.assertExpectedInline(code, """\
conv2d = torch.conv2d(l_img_, l_self_modules_patch_parameters_weight_, l_self_modules_patch_parameters_bias_, (2, 2), (0, 0), (1, 1), 1)
flatten = conv2d.flatten(2)
t = flatten.transpose(1, 2)
expand = l_self_parameters_cls_.expand(2, -1, -1)
t_1 = torch.cat([expand, t], dim = 1)
linear = torch._C._nn.linear(t_1, l_self_modules_qkv_parameters_weight_, l_self_modules_qkv_parameters_bias_)
chunk = linear.chunk(3, dim = -1)
z = chunk[0]
z_1 = chunk[1]
z_2 = chunk[2]
view = z.view(2, 65, 2, 8)
q = view.transpose(1, 2)
view_1 = z_1.view(2, 65, 2, 8)
k = view_1.transpose(1, 2)
view_2 = z_2.view(2, 65, 2, 8)
v = view_2.transpose(1, 2)
gna_attention_default = torch.ops.gna_compile.gna_attention.default(q, k, v, [8, 8], [4, 4], [2, 2], [1, 1], [False, False], 1, 0, 0.3535533905932738, None, True, 'auto')
transpose_4 = gna_attention_default.transpose(1, 2)
flatten_1 = transpose_4.flatten(2)
return (flatten_1,)""")

    def test_video_text_suffix_key_mask(self):
        torch.manual_seed(0)
        mask = torch.tensor([[True, True, False], [True, True, True]])
        be, code = compile_graph(VideoBlock(), torch.randn(2, 4, 3, 8, 8), torch.randn(2, 3, 16), mask,
                                 policy=Policy(default=GNA((2, 2, 2))))
        self.assertExpectedInline(code, """\
conv3d = torch.conv3d(l_video_, l_self_modules_patch_parameters_weight_, l_self_modules_patch_parameters_bias_, (1, 2, 2), (0, 0, 0), (1, 1, 1), 1)
flatten = conv3d.flatten(2)
x = flatten.transpose(1, 2)
x_1 = torch.cat([x, l_text_], dim = 1)
keep = torch.ones(2, 48, dtype = torch.bool)
cat_1 = torch.cat([keep, l_text_mask_], dim = 1)
mask = cat_1[(slice(None, None, None), None, None, slice(None, None, None))]
linear = torch._C._nn.linear(x_1, l_self_modules_qkv_parameters_weight_, l_self_modules_qkv_parameters_bias_)
chunk = linear.chunk(3, dim = -1)
z = chunk[0]
z_1 = chunk[1]
z_2 = chunk[2]
view = z.view(2, 51, 2, 8)
q = view.transpose(1, 2)
view_1 = z_1.view(2, 51, 2, 8)
k = view_1.transpose(1, 2)
view_2 = z_2.view(2, 51, 2, 8)
v = view_2.transpose(1, 2)
key_mask_2d = gna_compile_passes_rewrite_key_mask_2d(mask, q)
gna_attention_default = torch.ops.gna_compile.gna_attention.default(q, k, v, [3, 4, 4], [2, 2, 2], [1, 1, 1], [1, 1, 1], [False, False, False], 0, 3, 0.3535533905932738, key_mask_2d, False, 'auto')
return (gna_attention_default,)""")

    def test_flux_like_policy_layout_text_first(self):
        torch.manual_seed(0)
        be, code = compile_graph(FluxLike(), torch.randn(1, 48, 8), torch.randn(1, 5, 12),
                                 policy=Policy(default=GNA((4, 4)), layout=(6, 8)))
        self.assertExpectedInline(code, """\
linear = torch._C._nn.linear(l_text_, l_self_modules_txt_in_parameters_weight_, l_self_modules_txt_in_parameters_bias_)
linear_1 = torch._C._nn.linear(l_packed_, l_self_modules_img_in_parameters_weight_, l_self_modules_img_in_parameters_bias_)
x = torch.cat([linear, linear_1], dim = 1)
linear_2 = torch._C._nn.linear(x, l_self_modules_qkv_parameters_weight_, l_self_modules_qkv_parameters_bias_)
chunk = linear_2.chunk(3, dim = -1)
z = chunk[0]
z_1 = chunk[1]
z_2 = chunk[2]
view = z.view(1, 53, 2, 8)
q = view.transpose(1, 2)
view_1 = z_1.view(1, 53, 2, 8)
k = view_1.transpose(1, 2)
view_2 = z_2.view(1, 53, 2, 8)
v = view_2.transpose(1, 2)
gna_attention_default = torch.ops.gna_compile.gna_attention.default(q, k, v, [6, 8], [4, 4], [1, 1], [1, 1], [False, False], 5, 0, 0.3535533905932738, None, True, 'auto')
return (gna_attention_default,)""")

    def test_float_mask_stays_dense(self):
        torch.manual_seed(0)
        be, code = compile_graph(BiasViT(), torch.randn(2, 3, 16, 16), torch.randn(1, 1, 64, 64),
                                 policy=Policy(default=GNA(4)))
        self.assertExpectedInline(be.records[0].reason, """attn_mask is torch.float32 (an additive bias), not a boolean key mask""")
        self.assertExpectedInline(code, """\
conv2d = torch.conv2d(l_img_, l_self_modules_patch_parameters_weight_, l_self_modules_patch_parameters_bias_, (2, 2), (0, 0), (1, 1), 1)
flatten = conv2d.flatten(2)
t = flatten.transpose(1, 2)
linear = torch._C._nn.linear(t, l_self_modules_qkv_parameters_weight_, l_self_modules_qkv_parameters_bias_)
chunk = linear.chunk(3, dim = -1)
z = chunk[0]
z_1 = chunk[1]
z_2 = chunk[2]
view = z.view(2, 64, 2, 8)
q = view.transpose(1, 2)
view_1 = z_1.view(2, 64, 2, 8)
k = view_1.transpose(1, 2)
view_2 = z_2.view(2, 64, 2, 8)
v = view_2.transpose(1, 2)
scaled_dot_product_attention = torch._C._nn.scaled_dot_product_attention(q, k, v, attn_mask = l_bias_)
return (scaled_dot_product_attention,)""")

    def test_dynamic_shapes(self):
        torch.manual_seed(0)
        be, code = compile_graph(ViT(), torch.randn(2, 3, 16, 24), policy=Policy(default=GNA(4, 2)),
                                 dynamic=True)
        self.assertExpectedInline(code, """\
conv2d = torch.conv2d(l_img_, l_self_modules_patch_parameters_weight_, l_self_modules_patch_parameters_bias_, (2, 2), (0, 0), (1, 1), 1)
flatten = conv2d.flatten(2)
t = flatten.transpose(1, 2)
floordiv = s23 // 2
floordiv_1 = s25 // 2
mul = floordiv * floordiv_1
expand = l_self_parameters_cls_.expand(s45, -1, -1)
t_1 = torch.cat([expand, t], dim = 1)
linear = torch._C._nn.linear(t_1, l_self_modules_qkv_parameters_weight_, l_self_modules_qkv_parameters_bias_)
chunk = linear.chunk(3, dim = -1)
z = chunk[0]
z_1 = chunk[1]
z_2 = chunk[2]
sym_sum = torch.sym_sum([1, mul])
view = z.view(s45, sym_sum, 2, 8)
q = view.transpose(1, 2)
view_1 = z_1.view(s45, sym_sum, 2, 8)
k = view_1.transpose(1, 2)
view_2 = z_2.view(s45, sym_sum, 2, 8)
v = view_2.transpose(1, 2)
size_4 = conv2d.size(2)
size_5 = conv2d.size(3)
gna_attention_default = torch.ops.gna_compile.gna_attention.default(q, k, v, [size_4, size_5], [4, 4], [2, 2], [1, 1], [False, False], 1, 0, 0.3535533905932738, None, True, 'auto')
transpose_4 = gna_attention_default.transpose(1, 2)
flatten_1 = transpose_4.flatten(2)
return (flatten_1,)""")


if __name__ == "__main__":
    import unittest
    unittest.main()
