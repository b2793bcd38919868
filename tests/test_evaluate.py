"""The lowering's compiled constants and ranges against TVM's own simplifier and int_set."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tvm import sym, tirx

from tvm_convadd.target.evaluate import ConstCache, compile_int_bounds, compile_int_expr
from tvm_convadd.target.semantics import substitute

VARS = [tirx.Var(name, "int32") for name in ("a", "b", "c", "d")]


def _expressions(depth: int):
    """Integer index expressions of TIR's ops over VARS, with small constants."""
    leaf = st.one_of(
        st.sampled_from(VARS), st.integers(-9, 9).map(lambda v: tirx.const(v, "int32"))
    )
    if depth == 0:
        return leaf
    sub = _expressions(depth - 1)
    positive = st.integers(1, 7).map(lambda v: tirx.const(v, "int32"))
    return st.one_of(
        leaf,
        st.tuples(sub, sub).map(lambda p: p[0] + p[1]),
        st.tuples(sub, sub).map(lambda p: p[0] - p[1]),
        st.tuples(sub, st.integers(-4, 4)).map(lambda p: p[0] * p[1]),
        st.tuples(sub, positive).map(lambda p: tirx.floordiv(p[0], p[1])),
        st.tuples(sub, positive).map(lambda p: tirx.floormod(p[0], p[1])),
        st.tuples(sub, sub).map(lambda p: tirx.min(p[0], p[1])),
        st.tuples(sub, sub).map(lambda p: tirx.max(p[0], p[1])),
        st.tuples(sub, sub, sub, sub).map(lambda p: tirx.Select(p[0] < p[1], p[2], p[3])),
    )


VALUES = st.lists(st.integers(-20, 20), min_size=4, max_size=4)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(expr=_expressions(3), values=VALUES)
def test_compiled_constants_equal_tvms_simplifier(expr, values):
    env = dict(zip(VARS, values))
    compiled = compile_int_expr(expr)
    assert compiled is not None
    expected = sym.Analyzer().simplify(substitute(expr, env))
    assert isinstance(expected, tirx.IntImm)
    assert compiled(env) == expected.value


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    expr=_expressions(3),
    values=VALUES,
    spans=st.lists(st.tuples(st.integers(-6, 6), st.integers(0, 6)), min_size=2, max_size=2),
)
def test_compiled_ranges_are_exact_where_they_apply(expr, values, spans):
    """Where interval arithmetic applies (each ranged variable at most once, monotone ops), it
    gives the exact range: TVM's int_set's answer, and the extremes of brute force."""
    ranged_vars = VARS[:2]
    domain = {v: (lo, lo + width) for v, (lo, width) in zip(ranged_vars, spans)}
    keys = frozenset(v.__chandle__() for v in ranged_vars)
    bounds = compile_int_bounds(expr, keys)
    if bounds is None:
        return
    env = dict(zip(VARS[2:], values[2:]))
    got = bounds(env, {v.__chandle__(): span for v, span in domain.items()})
    points = [
        compile_int_expr(expr)({**env, ranged_vars[0]: x, ranged_vars[1]: y})
        for x in range(domain[ranged_vars[0]][0], domain[ranged_vars[0]][1] + 1)
        for y in range(domain[ranged_vars[1]][0], domain[ranged_vars[1]][1] + 1)
    ]
    assert got == (min(points), max(points))
    dom = {v: sym.IntervalSet(lo, hi) for v, (lo, hi) in domain.items()}
    analyzer = sym.Analyzer()
    tvm_set = analyzer.int_set(analyzer.simplify(substitute(expr, env)), dom)
    assert (int(tvm_set.min_value), int(tvm_set.max_value)) == got


def test_a_ranged_variable_used_twice_is_left_to_tvm():
    a, b = VARS[:2]
    keys = frozenset({a.__chandle__()})
    assert compile_int_bounds(a - a + b, keys) is None  # interval arithmetic would say [-w, w]
    assert compile_int_bounds(a * 2 + b, keys) is not None


def test_unknown_ops_and_free_variables_fall_back():
    a = VARS[0]
    assert compile_int_expr(tirx.Div(a, tirx.const(2, "int32"))) is None  # truncating division
    with pytest.raises(KeyError):
        compile_int_expr(a + 1)({})


def test_the_cache_builds_each_last_element_once():
    cache = ConstCache()
    a = VARS[0]
    first = cache.last(a, 4)
    assert cache.last(a, 4).same_as(first)
    assert not cache.last(a, 5).same_as(first)


@pytest.mark.parametrize(
    "build",
    [
        lambda a, b, c: a * 2 + b - 1,  # a strided window row
        lambda a, b, c: tirx.floordiv(a * 3 + b - 2, 4) + c,
        lambda a, b, c: (a - b) * -3 + c * c,  # the fixed variable may repeat
        lambda a, b, c: tirx.floordiv(a + c, 2) * 5 - b,
    ],
)
def test_index_shapes_the_lowering_meets_get_exact_ranges(build):
    a, b, c = VARS[:3]
    expr = build(a, b, c)
    keys = frozenset({a.__chandle__(), b.__chandle__()})
    bounds = compile_int_bounds(expr, keys)
    assert bounds is not None
    domain = {a: (2, 7), b: (-3, 4)}
    env = {c: 5}
    got = bounds(env, {v.__chandle__(): span for v, span in domain.items()})
    dom = {v: sym.IntervalSet(lo, hi) for v, (lo, hi) in domain.items()}
    analyzer = sym.Analyzer()
    tvm_set = analyzer.int_set(analyzer.simplify(substitute(expr, env)), dom)
    assert got == (int(tvm_set.min_value), int(tvm_set.max_value))
