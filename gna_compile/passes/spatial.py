"""Is a run of tokens an image/video grid? The spatial proof, rule by rule.

A token segment (a dim's factors, see :mod:`provenance`) is a grid of 1-3 axes when every
factor is a whole axis or the outer (patch-coordinate) piece of one, no axis appears twice,
and the axes come from one source that is spatial by definition:

- **conv**: spatial output dims of one convolution (a patch embedding).
- **frames**: besides a convolution's spatial axes, an axis that is a factor of that same
  convolution's batch dim (per-frame 2-D patch embedding: ``[B, F, C, H, W] -> [B*F, C, H,
  W] -> conv2d``; the frame axis is the input's F dim).
- **patchify**: outer pieces of dims >= 2 of one channels-first graph input (rank 4/5),
  where at least one axis is split into patches and every within-patch offset went into one
  other dim of some tensor (the features a patch embedding projects).
- **resample**: spatial output dims of one interpolation.

Everything else (a graph input's dims on their own, slices, fresh axes, inner pieces, axes
of two sources) is refused with the rule that failed.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from .ops import op_key
from .provenance import Cat, Piece, Provenance, atoms_of, format_dim

__all__ = ["Grid", "grid_of"]


@dataclass(frozen=True)
class Grid:
    axes: tuple          # Pieces, outermost first
    source: str          # "conv <node>", "patchify <node>", ...

    @property
    def sizes(self) -> tuple:
        return tuple(p.size for p in self.axes)


def grid_of(prov: Provenance, d) -> Grid | str:
    """The grid a token segment is, or why it is not one."""
    if not d:
        return "a single token"
    if any(isinstance(f, Cat) for f in d):
        return f"tokens {format_dim(d)} mix concatenated pieces"
    for f in d:
        if not (f.whole or f.outer):
            return (f"axis {format_dim((f,))} is an inner piece of {f.atom!r} (positions within a "
                    f"patch, or an axis split and reordered)")
    atoms = [f.atom for f in d]
    if len(set(atoms)) != len(atoms):
        return f"tokens {format_dim(d)} use one axis twice"
    if not 1 <= len(d) <= 3:
        return f"tokens {format_dim(d)} form {len(d)} axes (GNA supports 1-3)"
    kinds = {a.kind for a in atoms}
    convs = {a.node for a in atoms if a.kind == "conv"}
    if convs:
        if len(convs) > 1:
            return f"grid axes come from {len(convs)} different convolutions"
        conv = next(iter(convs))
        others = [f for f in d if f.atom.kind != "conv"]
        if others:
            batch = prov.dim(conv.args[0], 0) or ()
            chans = set(atoms_of(prov.dim(conv.args[0], 1) or ()))
            for f in others:
                if f not in batch:
                    return (f"axis {format_dim((f,))} beside the spatial axes of {conv.name} is not "
                            f"a factor of that convolution's batch dim (frames)")
                if not f.whole or f.atom.dim == 0 or f.atom in chans:
                    return (f"axis {format_dim((f,))} folded into {conv.name}'s batch is a batch, a piece "
                            f"or the channels of its tensor, not a frame axis")
            return Grid(tuple(d), f"conv {conv.name} + frames")
        return Grid(tuple(d), f"conv {conv.name}")
    if kinds == {"resample"} and len({a.node for a in atoms}) == 1:
        return Grid(tuple(d), f"resample {atoms[0].node.name}")
    if kinds == {"image"}:
        srcs = {a.node for a in atoms}
        if len(srcs) > 1:
            return "grid axes come from different graph inputs"
        problem = _patchify_problem(prov, d)
        if problem:
            return problem
        return Grid(tuple(d), f"patchify {atoms[0].node.name}")
    first = atoms[0]
    return (f"axis {first!r} ({first.kind}) is not a convolution's spatial output, a patchified "
            f"video/image input or a frame axis of one")


def _patchify_problem(prov: Provenance, d) -> str | None:
    patched = [f for f in d if not f.whole]
    if not patched:
        return (f"tokens {format_dim(d)} are dims of graph input {d[0].atom.node.name} with no patch "
                f"embedding in the graph (a plain flatten is no proof of an image)")
    inner = {Piece(f.atom, f.inner, sympy.Integer(1)) for f in patched}
    grid_atoms = {f.atom for f in d}
    src = d[0].atom
    channels = {a for a in atoms_of(prov.dim(src.node, 1, src.out) or ())}
    for node in prov.nodes:
        dims = prov.dims(node) if node.op == "call_function" and op_key(node) else None
        if not dims:
            continue
        for feat in dims:
            if not inner <= {f for f in feat if isinstance(f, Piece)}:
                continue
            if any(isinstance(f, Piece) and f.atom in grid_atoms and f not in inner for f in feat):
                continue  # that dim also holds patch coordinates: not a feature dim
            if not channels or not channels & set(atoms_of(feat)):
                continue  # the input's channels (dim 1) are not among the features
            return None
    return (f"tokens {format_dim(d)} are patches of graph input {d[0].atom.node.name}, but no tensor "
            f"gathers the within-patch offsets and the input's channels (dim 1) into one feature dim "
            f"(not a channels-first patch embedding)")

