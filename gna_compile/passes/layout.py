"""The token layout of one attention call: extra tokens, and the grid between them.

The sequence is split at its concatenation points into segments; exactly one segment of
the queries must be a spatial grid (:mod:`spatial`) or, where the graph proves none, match the
policy's layout. The keys must hold that very grid segment (the same source axes in the same
order, :mod:`provenance`) at the same position, between extra segments of the same lengths.
The extra tokens' own provenance does not matter: every grid query attends every extra key
and every extra query attends everything, so no locality is assumed of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from .provenance import Cat, Provenance, atoms_of, dim_size, format_dim
from .spatial import Grid, grid_of
from .symbolic import hint, same

__all__ = ["TokenLayout", "token_layout", "format_layout"]


@dataclass
class TokenLayout:
    segments: list            # [(factors, Grid | None)]
    grid_index: int | None    # which segment is the grid
    grid: Grid | None
    policy_grid: tuple | None = None  # the policy's grid shape, when the graph proved none

    @property
    def prefix(self) -> sympy.Expr:
        return sum((dim_size(s) for s, _ in self.segments[:self.grid_index]), sympy.Integer(0))

    @property
    def suffix(self) -> sympy.Expr:
        return sum((dim_size(s) for s, _ in self.segments[self.grid_index + 1:]), sympy.Integer(0))


def format_layout(segments, grid_index=None, policy_grid=None) -> str:
    out = []
    for i, (seg, g) in enumerate(segments):
        if i == grid_index:
            sizes = policy_grid if policy_grid is not None else g.sizes
            out.append("grid(" + "x".join(str(s) for s in sizes) + ")")
        else:
            out.append(f"tokens({dim_size(seg)})")
    return " + ".join(out)


def _segments(d):
    if len(d) == 1 and isinstance(d[0], Cat):
        return list(d[0].parts)
    return [d]


def _keys_problem(dq, dk) -> str | None:
    """None when k's segments are q's: the same lengths, and every segment that is not a
    plain run of extra tokens is the same source axes (checked again once the grid is known)."""
    sq, sk = _segments(dq), _segments(dk)
    if not same(dim_size(dq), dim_size(dk)) or len(sq) != len(sk) or not all(
            same(dim_size(a), dim_size(b)) for a, b in zip(sq, sk)):
        what = "keys are not the query tokens" if same(dim_size(dq), dim_size(dk)) else \
            f"cross-attention ({dim_size(dq)} queries, {dim_size(dk)} keys)"
        return (f"{what}: q tokens {format_dim(dq)} vs k tokens {format_dim(dk)} (different "
                f"source axes or order)")
    return None


def _collective_note(*dims) -> str:
    """A hint when token axes come out of a collective (sequence parallelism)."""
    for d in dims:
        for a in atoms_of(d or ()):
            if str(getattr(a.node, "target", "")).startswith(("_c10d_functional", "c10d")):
                return ("; the tokens come out of a collective (sequence parallelism), which the layout "
                        "proof does not see through: for GNA under Ulysses use "
                        "gna_compile.parallel.ulysses_gna_attention")
    return ""


def token_layout(prov: Provenance, q, k, policy, shape_env) -> TokenLayout | str:
    """The layout of a call's tokens, or the reason none is proven."""
    got = _token_layout(prov, q, k, policy, shape_env)
    if isinstance(got, str):
        got += _collective_note(prov.dim(q, 2), prov.dim(k, 2))
    return got


def _token_layout(prov: Provenance, q, k, policy, shape_env) -> TokenLayout | str:
    dq, dk = prov.dim(q, 2), prov.dim(k, 2)
    if dq is None or dk is None:
        return "q/k token dims are not tensors of the graph"
    if dq != dk:
        problem = _keys_problem(dq, dk)
        if problem:
            return problem
    segs = _segments(dq)
    found = [grid_of(prov, s) for s in segs]
    grids = [i for i, g in enumerate(found) if isinstance(g, Grid)]
    if len(grids) > 1:
        return f"{len(grids)} separate token grids in one sequence ({format_dim(dq)})"
    entries = [(s, g if isinstance(g, Grid) else None) for s, g in zip(segs, found)]
    if grids:
        return _keys_hold(dq, dk, TokenLayout(entries, grids[0], entries[grids[0]][1]))
    why = "; ".join(sorted({g for g in found if isinstance(g, str)}))
    if policy.layout is None:
        can = any(not _policy_problem(s) and (hint(dim_size(s), shape_env) or 0) > 1 for s in segs)
        hint_ = "; give Policy(layout=...)" if can else ""
        return f"layout not provable ({why}){hint_}"
    matches = []
    for i, (s, _) in enumerate(entries):
        n = hint(dim_size(s), shape_env)
        try:
            shape = policy.grid_for(n) if n is not None and len(s) >= 1 else None
        except ValueError as e:
            return f"Policy(layout=...) returned a bad shape for {n} tokens: {e}"
        if shape is not None:
            matches.append((i, shape))
    if len(matches) != 1:
        sizes = [str(dim_size(s)) for s, _ in entries]
        return (f"layout not provable ({why}); Policy(layout=...) matches {len(matches)} of the "
                f"token segments {sizes} (needs exactly one)")
    i, shape = matches[0]
    problem = _policy_problem(entries[i][0])
    if problem:
        return f"layout not provable ({why}); {problem}"
    return _keys_hold(dq, dk, TokenLayout(entries, i, None, policy_grid=tuple(shape)))


# Axes a policy layout may describe: the model's own inputs (packed latents), their channels-
# first spatial dims, convolution or resampling outputs, parameters. Not "fresh" axes (born at
# an op with no provenance rule: a gather with computed indices, a sort, a roll, an op the table
# does not know) nor "bcast" ones (copies of one token): their order is computed inside the
# graph, so no layout the user states about the model's tokens can vouch for it.
_POLICY_KINDS = ("input", "image", "conv", "resample", "leaf")


def _policy_problem(seg) -> str | None:
    """Why Policy(layout=...) cannot describe this token segment, or None."""
    bad = sorted({f"{a.node.target}" if a.kind == "fresh" else f"{a.kind} {a!r}"
                  for a in atoms_of(seg) if a.kind not in _POLICY_KINDS})
    if not bad:
        return None
    return (f"Policy(layout=...) describes tokens as the model receives them, but these are reordered or made "
            f"inside the graph ({', '.join(bad)}), so no stated layout can vouch for their order")


def _keys_hold(dq, dk, lay: TokenLayout) -> TokenLayout | str:
    """The keys' segment at the grid's position must be the queries' grid itself."""
    if dq == dk:
        return lay
    gq, gk = _segments(dq)[lay.grid_index], _segments(dk)[lay.grid_index]
    if gq != gk:
        return (f"keys are not the query tokens: the grid segment of q is {format_dim(gq)}, of k "
                f"{format_dim(gk)} (different source axes or order)")
    return lay
