"""DenseToConv2D: a classifier's dense layer as a 1x1 conv2d, so that it offloads like any conv.

Relax has no dense op. `relax.op.linear` (what `networks.head` and from_torch make of nn.Linear)
and ONNX Gemm/MatMul become `matmul(x[B, C], W^T)` with W^T either `permute_dims(W)` or, after
`prepare`'s constant folding, one (C, K) constant; the bias is an add after it. The pass
rewrites

    matmul(x, W^T) [+ bias] [relu | clip | ...]            on (B, K)
into
    reshape(x, (B, C, 1, 1)) -> conv2d(W as (K, C, 1, 1)) -> the same ops on (B, K, 1, 1)
    -> reshape back to (B, K)

Every output element is the same sum of the same products, and each elementwise op sees the
same values; only llvm's summation order may differ. The ops moved along are the ones the Add
unit takes (`patterns.epilogue_step`): add or multiply by a (K,)/(1, K) vector (a per-channel
(1, K, 1, 1) operand), add of a (B, K) tensor, relu, clip, maximum/minimum with a constant;
each moves only while it is the single user of the value before it, as a chain grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvm_convadd.patterns import (
    ACCEPTED_DTYPE,
    ADD,
    CLIP,
    MAXIMUM,
    MINIMUM,
    MULTIPLY,
    RELU_OP,
    dtype_of,
    graph_functions,
    is_constant,
    is_op_call,
    op_name,
    scalar_constant,
    static_shape,
    var_users,
    with_functions,
)

MATMUL = "relax.matmul"
PERMUTE_DIMS = "relax.permute_dims"


@dataclass(frozen=True)
class _Dense:
    """One matmul to rewrite: its data, its weight as (K, C), and the ops that move with it,
    each with the position of the chain's value among its arguments (None for relu, clip)."""

    data: relax.Expr
    weight: relax.Expr
    transpose: relax.Var | None  # the permute_dims binding the rewrite leaves unused
    steps: tuple[tuple[relax.Var, int | None], ...]
    batch: int
    channels: int
    classes: int


def _weight_kc(weight: relax.Expr, var2val: dict) -> relax.Expr | None:
    """The (K, C) tensor whose transpose is the matmul's (C, K) operand, when the graph has it."""
    value = var2val.get(weight) if isinstance(weight, relax.Var) else None
    if is_op_call(value, PERMUTE_DIMS):
        axes = value.attrs.axes
        if axes is None or [int(axis) for axis in axes] == [1, 0]:
            return value.args[0]
    return None


def _dense(var: relax.Var, value: relax.Expr, var2val: dict, users: dict) -> _Dense | None:
    """The rewrite of a `matmul(x[B, C], w[C, K])` binding, or None if it is not a dense."""
    if not is_op_call(value, MATMUL):
        return None
    data, weight = value.args
    out_dtype = value.attrs.out_dtype
    data_shape, weight_shape = static_shape(data), static_shape(weight)
    if (
        data_shape is None
        or weight_shape is None
        or len(data_shape) != 2
        or len(weight_shape) != 2
        or {dtype_of(data), dtype_of(weight), dtype_of(value)} != {ACCEPTED_DTYPE}
        or (out_dtype is not None and str(out_dtype) not in ("", "void", ACCEPTED_DTYPE))
    ):
        return None
    batch, channels = data_shape
    classes = weight_shape[1]
    steps, current = [], var
    while True:
        consumers = users.get(current, [])
        if len(consumers) != 1 or consumers[0] is None:
            break
        position = _moves(var2val.get(consumers[0]), current, batch, classes)
        if position is False:
            break
        current = consumers[0]
        steps.append((current, position))
    kc = _weight_kc(weight, var2val)
    if kc is None:
        return _Dense(data, weight, None, tuple(steps), batch, channels, classes)
    unused = weight if len(users.get(weight, [])) == 1 else None
    return _Dense(data, kc, unused, tuple(steps), batch, channels, classes)


def _moves(value: relax.Expr | None, current: relax.Var, batch: int, classes: int):
    """Whether an op after the matmul is one the Add unit takes once it is on (B, K, 1, 1):
    False if not, else the position of `current` among its arguments (None when unary)."""
    name = op_name(value)
    if static_shape(value) != (batch, classes) or dtype_of(value) != ACCEPTED_DTYPE:
        return False
    if name in (RELU_OP, CLIP):
        return None if value.args[0].same_as(current) else False
    if name not in (ADD, MULTIPLY, MAXIMUM, MINIMUM) or value.args[0].same_as(value.args[1]):
        return False
    position = 0 if value.args[0].same_as(current) else 1
    other = value.args[1 - position]
    if dtype_of(other) != ACCEPTED_DTYPE:
        return False
    if name in (MAXIMUM, MINIMUM):
        return position if scalar_constant(other) is not None else False
    shape = static_shape(other)
    if shape in ((classes,), (1, classes)) or (name == ADD and shape == (batch, classes)):
        return position
    return False


@relax.expr_functor.mutator
class _DenseRewriter(relax.PyExprMutator):
    """Emits each planned dense as reshape -> conv2d -> ops on 4-D -> reshape, in place."""

    def __init__(self, mod: tvm.IRModule, denses: dict[relax.Var, _Dense]) -> None:
        super().__init__(mod)
        self.denses = denses
        self.step_of = {
            var: (dense, position) for dense in denses.values() for var, position in dense.steps
        }
        self.current: dict[int, relax.Var] = {}  # id(dense) -> its 4-D value so far
        self.unused = {dense.transpose for dense in denses.values()} - {None}

    def _reshape(self, expr: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
        if is_constant(expr):
            return relax.const(np.ascontiguousarray(expr.value.numpy().reshape(shape)))
        return self.builder_.emit(relax.op.reshape(self.visit_expr(expr), shape))

    def _transposed(self, expr: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
        if is_constant(expr):
            value = expr.value.numpy().T.reshape(shape)
            return relax.const(np.ascontiguousarray(value))
        transposed = self.builder_.emit(relax.op.permute_dims(self.visit_expr(expr)))
        return self.builder_.emit(relax.op.reshape(transposed, shape))

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        var = binding.var
        if var in self.denses:
            self._emit_conv(var, self.denses[var], binding.value)
        elif var in self.step_of:
            self._emit_step(var, binding.value, *self.step_of[var])
        elif var in self.unused:
            return
        else:
            super().visit_var_binding_(binding)

    def _emit_conv(self, var: relax.Var, dense: _Dense, matmul: relax.Call) -> None:
        data = self._reshape(dense.data, (dense.batch, dense.channels, 1, 1))
        oihw = (dense.classes, dense.channels, 1, 1)
        if dense.weight.same_as(matmul.args[1]):  # (C, K): transpose it here
            weight = self._transposed(dense.weight, oihw)
        else:  # the (K, C) tensor under a permute_dims
            weight = self._reshape(dense.weight, oihw)
        conv = self.builder_.emit(relax.op.nn.conv2d(data, weight), f"{var.name}_as_conv2d")
        self.current[id(dense)] = conv
        if not dense.steps:
            self._finish(var, dense, conv)

    def _emit_step(self, var: relax.Var, value: relax.Call, dense: _Dense, position) -> None:
        current = self.current[id(dense)]
        if position is None:
            moved = relax.Call(value.op, [current, *value.args[1:]], value.attrs)
        else:
            other = value.args[1 - position]
            if op_name(value) not in (MAXIMUM, MINIMUM):
                full = static_shape(other) == (dense.batch, dense.classes)
                rows = dense.batch if full else 1
                other = self._reshape(other, (rows, dense.classes, 1, 1))
            args = [other, other]
            args[position] = current
            moved = relax.Call(value.op, args, value.attrs)
        current = self.builder_.emit(moved)
        self.current[id(dense)] = current
        if var.same_as(dense.steps[-1][0]):
            self._finish(var, dense, current)

    def _finish(self, var: relax.Var, dense: _Dense, value4: relax.Var) -> None:
        back = relax.op.reshape(value4, (dense.batch, dense.classes))
        self.builder_.emit_normalized(relax.VarBinding(var, self.builder_.normalize(back)))


@tvm.transform.module_pass(opt_level=0, name="DenseToConv2D")
class DenseToConv2D:
    """Rewrite each dense (`matmul(x[B, C], W^T)` and the ops the Add unit takes after it) into
    a 1x1 conv2d on (B, C, 1, 1) between two reshapes."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in graph_functions(mod):
            var2val = relax.analysis.get_var2val(func)
            users = var_users(func)
            denses = {}
            for block in func.body.blocks:
                if not isinstance(block, relax.DataflowBlock):
                    continue
                for binding in block.bindings:
                    found = _dense(binding.var, binding.value, var2val, users)
                    if found is not None:
                        denses[binding.var] = found
            if denses:
                updates[gvar] = _DenseRewriter(mod, denses).visit_expr(func)
        return with_functions(mod, updates)
