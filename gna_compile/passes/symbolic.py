"""Sizes as sympy expressions, and the only two guards the passes ever install.

ATen graphs carry fake values whose sizes are ints or SymInts (``dynamic=True``, or a dim
marked dynamic); as sympy expressions one pass handles both. The passes never call ``int()``
on a SymInt: a size is fixed only through :func:`guard_equal` / :func:`guard_at_least`, which
refuse (return False) for a symbol the user marked dynamic, instead of letting Dynamo raise
a ConstraintViolationError that never names gna.
"""

from __future__ import annotations

import sympy
import torch
from torch.fx import Node

__all__ = ["val", "shape_of", "to_expr", "same", "prod", "hint", "find_shape_env", "divides", "nonneg", "static_int", "source_name",
           "guard_equal", "guard_at_least", "marked_dynamic"]


def val(node, out: int | None = None):
    """The fake value recorded on a node (``meta["val"]``; Dynamo graphs: ``example_value``)."""
    if not isinstance(node, Node):
        return None
    v = node.meta.get("val", node.meta.get("example_value"))
    if out is not None and isinstance(v, (tuple, list)):
        return v[out] if out < len(v) else None
    return v


def _opaque(*exprs):
    """The expressions with every non-polynomial sub-term (FloorDiv, Mod, ...) replaced by a
    dummy symbol (one per distinct term, shared by all of them), and the map back: sympy's
    polynomial algebra then works on them."""
    terms = set()
    for e in exprs:
        terms |= sympy.sympify(e).atoms(sympy.Function)
    subs = {t: sympy.Dummy() for t in terms}
    back = {v: k for k, v in subs.items()}
    return [sympy.sympify(e).xreplace(subs) for e in exprs], back


def _quotient(a, b):
    """``a / b`` when it is a polynomial in the size symbols (FloorDiv terms kept opaque)."""
    (pa, pb), back = _opaque(a, b)
    if pb == 0:
        return None
    q = sympy.cancel(pa / pb)
    num, den = sympy.fraction(sympy.together(q))
    if den != 1:
        return None
    return sympy.expand(q).xreplace(back)


def nonneg(expr) -> bool:
    """Provably >= 0, reading every size symbol and floor-division of sizes as >= 0."""
    e = sympy.expand(sympy.sympify(expr))
    if e.is_Integer:
        return int(e) >= 0
    (e,), _ = _opaque(e)
    e = e.xreplace({x: sympy.Dummy(nonnegative=True, integer=True) for x in e.free_symbols})
    return bool(e.is_nonnegative)


def _exact_floordiv(expr):
    """``FloorDiv(a, b)`` -> ``a / b`` where ``b`` provably divides ``a`` (Dynamo writes
    ``(s0**2 * h) // s0`` for ``s0 * h``), so equal sizes compare equal."""
    try:
        from torch.utils._sympy.functions import FloorDiv
    except ImportError:  # pragma: no cover
        return expr
    if not expr.has(FloorDiv):
        return expr

    def div(a, b):
        q = _quotient(a, b)
        return q if q is not None else FloorDiv(a, b)
    return sympy.expand(expr.replace(FloorDiv, div))


def env_expr(size) -> sympy.Expr:
    """A size in its ShapeEnv's own symbols: symbols a guard has fixed are their values."""
    if not isinstance(size, torch.SymInt):
        return sympy.Integer(int(size))
    expr, env = sympy.sympify(size.node.expr), size.node.shape_env
    if env is not None and getattr(env, "replacements", None):
        expr = sympy.sympify(env.replace(expr))
    return expr


def to_expr(size) -> sympy.Expr:
    """A size as the passes compare it: env_expr, with each proven multiple written ``k * w``
    (learn_whole_quotients) and exact floor divisions divided out."""
    expr = env_expr(size)
    if not isinstance(size, torch.SymInt):
        return expr
    whole = _whole_map(size.node.shape_env)
    if whole:
        expr = expr.xreplace({sym: k * w for sym, (k, w) in whole.items()})
    return _exact_floordiv(expr)


_WHOLE = "_gna_whole_quotients"


def _whole_map(env) -> dict:
    return getattr(env, _WHOLE, None) or {} if env is not None else {}


def learn_whole_quotients(graph, env) -> dict:
    """Sizes the graph's guards prove to be multiples: ``{s: (k, w)}`` meaning ``s == k * w``
    for a size symbol ``s`` and a new whole symbol ``w`` (= ``s // k``). A model's own
    ``x.reshape(..., H // 2, 2, ...)`` makes Dynamo guard ``Mod(H, H // 2) == 0`` and
    ``H // (H // 2) == 2`` (guards hold whenever the graph runs; none is added here). Writing
    ``H`` as ``2 * w`` keeps every size an integer polynomial, so ``2 * (H // 2)`` is ``H``
    and a patch split of a dynamic axis is proven like a static one. Stored on the ShapeEnv
    (symbols belong to it), so to_expr applies it; to_env undoes it for ShapeEnv queries."""
    from torch.utils._sympy.functions import FloorDiv
    if env is None:
        return {}
    found: dict = {}
    for size in _sym_sizes(graph):
        for f in sympy.sympify(size.node.expr).atoms(FloorDiv):
            a, b = f.args
            if isinstance(a, sympy.Symbol) and b.is_Integer and int(b) > 1:
                found.setdefault(a, set()).add(int(b))
    whole = {}
    for sym, ks in found.items():
        proven = sorted(k for k in ks if _guarded_exact(sym, k, env))
        if proven and all(proven[-1] % k == 0 for k in proven):  # one multiple explains them all
            k = proven[-1]
            whole[sym] = (k, sympy.Symbol(f"{sym}_over_{k}", integer=True, nonnegative=True))
    setattr(env, _WHOLE, whole)
    return whole


def _guarded_exact(a, b, env) -> bool:
    """The installed guards prove the integer ``b`` divides ``a``."""
    try:
        from torch.utils._sympy.functions import FloorDiv, Mod
        static = env._maybe_evaluate_static
        if static(sympy.Eq(Mod(a, b), 0)) is sympy.true:
            return True
        f = FloorDiv(a, b)
        return static(sympy.Eq(Mod(a, f), 0)) is sympy.true and static(sympy.Eq(FloorDiv(a, f), b)) is sympy.true
    except Exception:  # private API; no proof means not a multiple
        return False


def to_env(expr, env):
    """``expr`` in the ShapeEnv's own symbols (each whole symbol ``w`` back to ``s // k``)."""
    whole = _whole_map(env)
    if not whole:
        return sympy.sympify(expr)
    from torch.utils._sympy.functions import FloorDiv
    return sympy.sympify(expr).xreplace({w: FloorDiv(sym, k) for sym, (k, w) in whole.items()})


def whole_sources(env) -> dict:
    """``{w: (s, k)}``: how to compute each whole symbol from a size symbol."""
    return {w: (sym, k) for sym, (k, w) in _whole_map(env).items()}


def shape_of(node, out: int | None = None) -> tuple[sympy.Expr, ...] | None:
    """Sizes of a tensor-valued node as sympy expressions, or None if it is not a tensor."""
    v = val(node, out)
    if not isinstance(v, torch.Tensor):
        return None
    return tuple(to_expr(s) for s in v.shape)


def same(a, b) -> bool:
    """True only when the two sizes are provably equal for every value of the symbols."""
    if isinstance(a, (int, sympy.Integer)) and isinstance(b, (int, sympy.Integer)):
        return int(a) == int(b)
    return sympy.expand(sympy.sympify(a) - sympy.sympify(b)) == 0


def prod(xs) -> sympy.Expr:
    out = sympy.Integer(1)
    for x in xs:
        out = out * x
    return sympy.expand(out)


def divides(a, b) -> sympy.Expr | None:
    """``b / a`` when it is provably a whole number (a polynomial with integer coefficients)."""
    a, b = sympy.sympify(a), sympy.sympify(b)
    if a.is_Integer and b.is_Integer:
        ia, ib = int(a), int(b)
        return sympy.Integer(ib // ia) if ia > 0 and ib % ia == 0 and ib >= 0 else None
    if a == 0:
        return None
    q = _quotient(b, a)
    if q is None:
        return None
    if q.is_Integer:
        return q if q > 0 else None
    (pq,), _ = _opaque(q)
    poly = sympy.Poly(pq, *pq.free_symbols)
    if not all(c.is_Integer for c in poly.coeffs()):
        return None
    return q


def _sym_sizes(graph):
    """Every SymInt of the graph's values: tensor sizes and SymInt values, in node order."""
    for node in graph.nodes:
        v = val(node)
        for t in v if isinstance(v, (tuple, list)) else (v,):
            for s in t.shape if isinstance(t, torch.Tensor) else (t,):
                if isinstance(s, torch.SymInt):
                    yield s


def find_shape_env(graph):
    """The ShapeEnv behind a graph's SymInts (None for a static graph)."""
    return next((s.node.shape_env for s in _sym_sizes(graph)), None)


def hint(expr, shape_env=None) -> int | None:
    """A concrete value for a size expression (the example's value), without adding guards."""
    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr)
    if shape_env is None:
        return None
    try:
        fn = getattr(shape_env, "optimization_hint", None) or shape_env.size_hint
        return int(fn(to_env(expr, shape_env)))
    except Exception:  # an unbacked symbol has no hint
        return None


def static_int(expr, shape_env=None) -> int | None:
    """The value of a size when it is an integer or fixed by the guards installed so far
    (e.g. a grid size 'auto' specialized); None while it can still vary."""
    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr)
    if shape_env is None:
        return None
    h = hint(expr, shape_env)
    if h is None:
        return None
    try:
        got = shape_env._maybe_evaluate_static(sympy.Eq(to_env(expr, shape_env), h))
    except Exception:  # private API; no proof means not static
        return None
    return h if got == sympy.true else None


def source_name(src) -> str:
    """A Dynamo Source's name (a method before torch 2.12, a property since)."""
    name = getattr(src, "name", None)
    if callable(name):
        name = name()
    return name if isinstance(name, str) else str(src)


def marked_dynamic(expr, shape_env, dynamic_sources: set) -> list[str]:
    """Source names (``L['x'].size()[2]``) of the symbols in ``expr`` that the user marked
    dynamic (``torch._dynamo.mark_dynamic``): those must not be specialized."""
    expr = sympy.sympify(expr)
    if shape_env is None or expr.is_Integer:
        return []
    expr = to_env(expr, shape_env)
    out = []
    for sym in expr.free_symbols:
        for src in shape_env.var_to_sources.get(sym, []):
            if source_name(src) in dynamic_sources:
                out.append(source_name(src))
    return sorted(set(out))


def guard_equal(expr, shape_env, dynamic_sources: set) -> int | None:
    """Fix a size to its example value (installs ``expr == value``); None if it has no hint or
    depends on a dim the user marked dynamic."""
    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr)
    v = hint(expr, shape_env)
    if v is None or marked_dynamic(expr, shape_env, dynamic_sources):
        return None
    shape_env.evaluate_expr(sympy.Eq(to_env(expr, shape_env), v))
    return v


def guard_at_least(expr, bound: int, shape_env) -> bool:
    """Install ``expr >= bound`` when the example satisfies it (a range guard: allowed on dims
    marked dynamic too); False when the example is smaller."""
    expr = sympy.sympify(expr)
    if expr.is_Integer:
        return int(expr) >= bound
    v = hint(expr, shape_env)
    if v is None or v < bound:
        return False
    shape_env.evaluate_expr(sympy.Ge(to_env(expr, shape_env), bound))
    return True
