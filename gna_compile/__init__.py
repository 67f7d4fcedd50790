"""gna_compile: Generalized Neighborhood Attention for vision/video transformers via torch.compile.

``torch.compile(model, backend="gna")`` rewrites spatial attention to GNA; the op
:func:`gna_attention` can also be called directly. See DESIGN.md for the semantics.
"""

from importlib import import_module

from .cache_key import tag_compile_caches
from .config import GNA, GNASpec, make_spec
from .kernels.dispatch import available_backends, dense_attention
from .kernels.op import gna_attention, gna_attention_lse
from .kernels.permute import permute_tokens, unpermute_tokens
from .kernels import tiled_op as _tiled_op  # noqa: F401  (registers the tiled-layout ops)

__version__ = "0.1.0"

tag_compile_caches()  # compile caches made by another version of this source are not reused

# Heavier pieces load on first use, so `import gna_compile` stays cheap.
_LAZY = {
    "backend": ("gna_compile.backend", "backend"),
    "Policy": ("gna_compile.policy", "Policy"),
    "explain": ("gna_compile.explain", "explain"),
    "sim": ("gna_compile.sim", None),
    "enable": ("gna_compile.pipelines", "enable"),
    "disable": ("gna_compile.pipelines", "disable"),
    "set_dense_steps": ("gna_compile.pipelines", "set_dense_steps"),
}

__all__ = ["GNA", "GNASpec", "make_spec", "gna_attention", "gna_attention_lse", "dense_attention",
           "permute_tokens", "unpermute_tokens", "available_backends", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        mod, attr = _LAZY[name]
        m = import_module(mod)
        return m if attr is None else getattr(m, attr)
    raise AttributeError(f"module 'gna_compile' has no attribute {name!r}")
