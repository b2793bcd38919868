"""Integer TIR expressions evaluated in Python: the lowering's per-tile constants, fast.

Unrolling the tile loops asks for the value of the same index expressions once per tile and
loop value, hundreds of thousands of times per network. Substituting and simplifying through
TVM costs microseconds per call; a Python closure compiled once per expression costs a tenth
of that. Only the integer arithmetic TIR index expressions use is compiled (floor division
and modulo as TIR defines them); anything else returns None, and the caller falls back on
TVM's own simplifier, which stays the reference.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from tvm import tirx

Env = dict  # tirx.Var -> int

_BINARY = {
    tirx.Add: operator.add,
    tirx.Sub: operator.sub,
    tirx.Mul: operator.mul,
    tirx.FloorDiv: operator.floordiv,
    tirx.FloorMod: operator.mod,
    tirx.Min: min,
    tirx.Max: max,
    tirx.LT: operator.lt,
    tirx.LE: operator.le,
    tirx.GT: operator.gt,
    tirx.GE: operator.ge,
    tirx.EQ: operator.eq,
    tirx.NE: operator.ne,
}


def compile_int_expr(expr) -> Callable[[Env], int] | None:
    """A function of the loop values that computes `expr`, or None if `expr` uses an op this
    module does not know (a missing variable raises KeyError when it is called)."""
    kind = type(expr)
    if kind is tirx.IntImm:
        value = int(expr.value)
        return lambda env: value
    if kind is tirx.Var:
        return lambda env: env[expr]
    if kind in _BINARY:
        left, right = compile_int_expr(expr.a), compile_int_expr(expr.b)
        if left is None or right is None:
            return None
        op = _BINARY[kind]
        return lambda env: op(left(env), right(env))
    if kind is tirx.And or kind is tirx.Or:
        left, right = compile_int_expr(expr.a), compile_int_expr(expr.b)
        if left is None or right is None:
            return None
        if kind is tirx.And:
            return lambda env: bool(left(env)) and bool(right(env))
        return lambda env: bool(left(env)) or bool(right(env))
    if kind is tirx.Not:
        inner = compile_int_expr(expr.a)
        return None if inner is None else (lambda env: not inner(env))
    if kind is tirx.Select:
        parts = [compile_int_expr(e) for e in (expr.condition, expr.true_value, expr.false_value)]
        if any(part is None for part in parts):
            return None
        cond, yes, no = parts
        return lambda env: yes(env) if cond(env) else no(env)
    if kind is tirx.Cast and expr.dtype.startswith(("int", "uint", "bool")):
        inner = compile_int_expr(expr.value)
        if inner is None:
            return None
        if expr.dtype == "bool":
            return lambda env: bool(inner(env))
        return lambda env: int(inner(env))
    return None


class ConstCache:
    """Compiled expressions by identity; each entry keeps its expression alive, so that the
    handle it is keyed on cannot be reused by another object while the entry exists."""

    def __init__(self) -> None:
        self._compiled: dict[int, tuple[object, Callable[[Env], int] | None]] = {}
        self._bounds: dict[tuple, tuple[object, Bounds | None]] = {}
        self._lasts: dict[tuple, tuple] = {}

    def function(self, expr) -> Callable[[Env], int] | None:
        key = expr.__chandle__()
        entry = self._compiled.get(key)
        if entry is None or not entry[0].same_as(expr):
            entry = self._compiled[key] = (expr, compile_int_expr(expr))
        return entry[1]

    def last(self, index, extent):
        """`index + extent - 1`, built once per pair (a new expression per call would miss
        every cache keyed on it)."""
        key = (
            index.__chandle__(),
            extent.__chandle__() if hasattr(extent, "__chandle__") else extent,
        )
        entry = self._lasts.get(key)
        if entry is None or not entry[0].same_as(index):
            entry = self._lasts[key] = (index, extent, index + extent - 1)
        return entry[2]

    def bounds(self, expr, ranged: frozenset) -> Bounds | None:
        key = (expr.__chandle__(), ranged)
        entry = self._bounds.get(key)
        if entry is None or not entry[0].same_as(expr):
            entry = self._bounds[key] = (expr, compile_int_bounds(expr, ranged))
        return entry[1]


# (loop values, {ranged var's handle: (lo, hi)}) -> (lo, hi)
Bounds = Callable[[Env, dict], tuple[int, int]]


def compile_int_bounds(expr, ranged: frozenset) -> Bounds | None:
    """A function giving the exact range of `expr` when the variables in `ranged` (identified
    by handle) range over intervals and the others are fixed: interval arithmetic, exact
    because each ranged variable may occur at most once and every op is monotone in it. None
    when that does not hold (the caller asks TVM's int_set)."""
    counts: dict[int, int] = {}

    def count(node) -> None:
        if type(node) is tirx.Var:
            key = node.__chandle__()
            counts[key] = counts.get(key, 0) + 1

    tirx_post_order(expr, count)
    if any(counts.get(key, 0) > 1 for key in ranged):
        return None
    return _interval(expr, ranged)


def tirx_post_order(expr, visit) -> None:
    """Call `visit` on every node of an integer expression (the node kinds compiled here)."""
    kind = type(expr)
    if kind in _BINARY or kind is tirx.And or kind is tirx.Or:
        tirx_post_order(expr.a, visit)
        tirx_post_order(expr.b, visit)
    elif kind is tirx.Not:
        tirx_post_order(expr.a, visit)
    elif kind is tirx.Select:
        for part in (expr.condition, expr.true_value, expr.false_value):
            tirx_post_order(part, visit)
    elif kind is tirx.Cast:
        tirx_post_order(expr.value, visit)
    visit(expr)


def _mentions(expr, ranged: frozenset) -> bool:
    found = []
    tirx_post_order(
        expr, lambda n: found.append(1) if type(n) is tirx.Var and n.__chandle__() in ranged else 0
    )
    return bool(found)


def _interval(expr, ranged: frozenset) -> Bounds | None:
    if not _mentions(expr, ranged):
        point = compile_int_expr(expr)
        if point is None:
            return None
        return lambda env, dom: (point(env),) * 2
    kind = type(expr)
    if kind is tirx.Var:
        key = expr.__chandle__()
        return lambda env, dom: dom[key]
    if kind not in (tirx.Add, tirx.Sub, tirx.Mul, tirx.FloorDiv):
        return None
    left, right = _interval(expr.a, ranged), _interval(expr.b, ranged)
    if left is None or right is None:
        return None
    if kind is tirx.Add:
        return lambda env, dom: _add(left(env, dom), right(env, dom))
    if kind is tirx.Sub:
        return lambda env, dom: _sub(left(env, dom), right(env, dom))
    if kind is tirx.Mul:
        if _mentions(expr.a, ranged) and _mentions(expr.b, ranged):
            return None
        return lambda env, dom: _mul(left(env, dom), right(env, dom))
    if _mentions(expr.b, ranged):  # FloorDiv by a ranged divisor
        return None
    return lambda env, dom: _floordiv(left(env, dom), right(env, dom))


def _add(a, b):
    return a[0] + b[0], a[1] + b[1]


def _sub(a, b):
    return a[0] - b[1], a[1] - b[0]


def _mul(a, b):
    if a[0] == a[1]:
        a, b = b, a
    scale = b[0]  # b is the fixed factor
    low, high = a[0] * scale, a[1] * scale
    return (low, high) if scale >= 0 else (high, low)


def _floordiv(a, b):
    divisor = b[0]
    if divisor <= 0:
        raise ZeroDivisionError("a non-positive divisor: ask TVM")
    return a[0] // divisor, a[1] // divisor
