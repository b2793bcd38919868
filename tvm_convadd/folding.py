"""Constant folding in numpy, for the weight arithmetic that FoldBatchnormToConv2D leaves behind.

`relax.transform.FoldConstant` evaluates a call of constants by legalizing it to TIR and
compiling it for llvm: one build per distinct op and shape, 425 builds for ResNet-50, most of
`prepare`'s time. What FoldBatchnormToConv2D leaves is small and simple: per batch-norm
`add(var, eps)`, `sqrt`, `divide(gamma, .)`, `reshape`, `multiply(weight, .)`, `multiply(mean, .)`,
`subtract(beta, .)`, `reshape`, and the classifier's `permute_dims` of its weight.

`FoldConstantNumpy` walks each function's bindings in order and evaluates, in numpy, every call
in a dataflow block (FoldConstant folds only there too) whose op is in `_RULES` and whose tensor
operands are constants (or variables it has already folded), then binds the variable to the
result as a constant. The table holds only ops whose result numpy gives bit for bit like TVM's
llvm code: the arithmetic ones (add, subtract, multiply, divide, sqrt; float32 and float64 only)
are one IEEE-754 correctly rounded operation per element, with numpy's broadcasting, which is
Relax's, and the others only move data (reshape, permute_dims). A call it does not know, or
whose dtypes or shapes it cannot check, stays as it is.

The pass only rewrites values; it does not inline the constants into their users or drop the
dead bindings. `partition.prepare` runs TVM's FoldConstant and CanonicalizeBindings after it,
which do that and fold whatever this pass left (with llvm builds, as before), so the numpy
coverage decides the speed, never the result: the module is the one the TVM-only pipeline makes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

#: dtypes whose arithmetic is one correctly rounded IEEE operation in numpy as in llvm. The
#: rest (float16, integers with their own division rules) is left to FoldConstant.
_ARITHMETIC_DTYPES = frozenset({"float32", "float64"})

Known = dict[relax.Var, np.ndarray]


class _Unfoldable(Exception):
    """This call is not one numpy can evaluate exactly: leave it to FoldConstant."""


def _tensor(expr: relax.Expr, known: Known) -> np.ndarray:
    """The value of a tensor operand: a constant, or a variable already folded."""
    if isinstance(expr, tvm.ir.expr.GenericConst):
        return expr.value.numpy()
    if isinstance(expr, relax.Var) and expr in known:
        return known[expr]
    raise _Unfoldable


def _operand(expr: relax.Expr, known: Known) -> np.ndarray:
    """A tensor operand, or a scalar FloatImm/IntImm as a 0-d array of its own dtype."""
    if isinstance(expr, (tvm.ir.prim.expr.FloatImm, tvm.ir.prim.expr.IntImm)):
        return np.asarray(expr.value, dtype=str(expr.ty.dtype))
    return _tensor(expr, known)


def _arithmetic(ufunc: np.ufunc) -> Callable[[relax.Call, Known], np.ndarray]:
    """An elementwise op with broadcasting, on operands of one float dtype."""

    def rule(call: relax.Call, known: Known) -> np.ndarray:
        operands = [_operand(arg, known) for arg in call.args]
        dtypes = {operand.dtype.name for operand in operands}
        if len(dtypes) != 1 or not dtypes <= _ARITHMETIC_DTYPES:
            raise _Unfoldable
        with np.errstate(all="ignore"):
            return ufunc(*operands)

    return rule


def _reshape(call: relax.Call, known: Known) -> np.ndarray:
    data, shape = call.args
    if not isinstance(shape, relax.ShapeExpr):
        raise _Unfoldable
    dims = [dim.value for dim in shape.values if isinstance(dim, tvm.ir.prim.expr.IntImm)]
    if len(dims) != len(shape.values) or any(dim < 0 for dim in dims):
        raise _Unfoldable
    array = _tensor(data, known)
    if array.size != int(np.prod(dims, dtype=np.int64)):
        raise _Unfoldable
    return array.reshape(dims)


def _permute_dims(call: relax.Call, known: Known) -> np.ndarray:
    (data,) = call.args
    axes = call.attrs.axes
    return np.transpose(_tensor(data, known), None if axes is None else [int(a) for a in axes])


_RULES: dict[str, Callable[[relax.Call, Known], np.ndarray]] = {
    "relax.add": _arithmetic(np.add),
    "relax.subtract": _arithmetic(np.subtract),
    "relax.multiply": _arithmetic(np.multiply),
    "relax.divide": _arithmetic(np.divide),
    "relax.sqrt": _arithmetic(np.sqrt),
    "relax.reshape": _reshape,
    "relax.permute_dims": _permute_dims,
}


def _static_type(ty) -> tuple[tuple[int, ...], str] | None:
    """The static shape and dtype of a tensor type, or None."""
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = ty.shape.values
    if not all(isinstance(dim, tvm.ir.prim.expr.IntImm) for dim in dims):
        return None
    return tuple(int(dim.value) for dim in dims), str(ty.dtype)


def _evaluate(value: relax.Expr, var: relax.Var, known: Known) -> np.ndarray | None:
    """`value` evaluated in numpy, if it is a call `_RULES` knows on known operands, else None."""
    if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
        return None
    rule = _RULES.get(str(value.op.name))
    expected = _static_type(var.ty)
    if rule is None or expected is None:
        return None
    try:
        result = rule(value, known)
    except _Unfoldable:
        return None
    shape, dtype = expected
    if result.shape != shape or result.dtype.name != dtype:
        return None
    return np.ascontiguousarray(result)


def _constant(array: np.ndarray) -> relax.Expr:
    """`array` as a constant of its own dtype (`relax.const` would narrow float64 and int64)."""
    return relax.const(tvm.runtime.tensor(array))


def fold_function(func: relax.Function) -> tuple[relax.Function, int]:
    """`func` with each numpy-foldable binding bound to a constant, and how many were folded."""
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return func, 0
    known: Known = {}
    folded = 0
    blocks = []
    for block in body.blocks:
        bindings = []
        for binding in block.bindings:
            if isinstance(binding, relax.VarBinding):
                if isinstance(binding.value, tvm.ir.expr.GenericConst):
                    known[binding.var] = binding.value.value.numpy()
                elif isinstance(block, relax.DataflowBlock):  # as FoldConstant: dataflow only
                    result = _evaluate(binding.value, binding.var, known)
                    if result is not None:
                        known[binding.var] = result
                        binding = relax.VarBinding(binding.var, _constant(result), binding.span)
                        folded += 1
            bindings.append(binding)
        blocks.append(type(block)(bindings, block.span))
    if not folded:
        return func, 0
    new_body = relax.SeqExpr(blocks, body.body, body.span)
    new_func = relax.Function(
        func.params, new_body, func.ret_ty, func.is_pure, func.attrs, func.span
    )
    return new_func, folded


@tvm.transform.module_pass(opt_level=0, name="FoldConstantNumpy")
class FoldConstantNumpy:
    """Fold the constant calls numpy computes exactly (see the module docstring); leave the rest.

    Run `relax.transform.FoldConstant` and `CanonicalizeBindings` after it: they inline the
    folded constants, fold what this pass left, and drop the dead bindings.
    """

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        functions = {}
        changed = False
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                func, folded = fold_function(func)
                changed = changed or folded > 0
            functions[gvar] = func
        if not changed:
            return mod
        return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)
