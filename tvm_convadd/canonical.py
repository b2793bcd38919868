"""Graph rewrites that spell the epilogue ops importers leave in forms the chains cannot read as
the Relax ops they are, with the same numbers. `partition.prepare` runs both.

- `BatchNormToScaleBias`: FoldBatchnormToConv2D folds a batch-norm into the conv right before
  it, and only then. After a conv with its own bias (PyTorch's `Conv2d(bias=True)` before
  `BatchNorm2d`) or after an add, the batch-norm stays, and would end the conv's chain. In
  inference it is `x * s + t`, `s = gamma / sqrt(var + eps)`, `t = beta - mean * s` per channel:
  each such batch-norm (4-D, axis 1, constant statistics, `training=False`) becomes
  `add(multiply(x, s), t)` with (1, C, 1, 1) constants computed in float64, so the chain reads
  conv + bias + scale + bias. Relax's own legalization, `(x - mean) / sqrt(var + eps) * gamma +
  beta`, agrees to float32 rounding.
- `TirMaxMinToRelax`: the ONNX importer emits Clip (how ONNX spells relu6) as `call_tir` of
  `topi.maximum` / `topi.minimum` with a scalar constant, TIR the chains cannot look into. A
  call whose PrimFunc is structurally equal to the one topi makes for those shapes becomes
  `relax.maximum` / `relax.minimum`, which legalizes to that very PrimFunc; PrimFuncs nothing
  calls any more are dropped.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from tvm_convadd.patterns import (
    ACCEPTED_DTYPE,
    bindings_of,
    dtype_of,
    graph_functions,
    is_constant,
    is_op_call,
    rebind,
    static_shape,
    var_users,
    with_functions,
)

BATCH_NORM = "relax.nn.batch_norm"
CALL_TIR = "relax.call_tir"


def _scale_bias(call: relax.Call) -> tuple[relax.Expr, relax.Expr] | None:
    """The (1, C, 1, 1) scale and bias constants equal to an inference batch-norm, or None."""
    data, gamma, beta, mean, var = call.args
    attrs = call.attrs
    shape = static_shape(data)
    if (
        bool(attrs.training)
        or shape is None
        or len(shape) != 4
        or int(attrs.axis) not in (1, -3)
        or dtype_of(data) != ACCEPTED_DTYPE
        or not all(is_constant(arg) for arg in (gamma, beta, mean, var))
    ):
        return None
    gamma, beta, mean, var = (
        arg.value.numpy().astype("float64") for arg in (gamma, beta, mean, var)
    )
    if not bool(attrs.scale):
        gamma = np.ones_like(gamma)
    if not bool(attrs.center):
        beta = np.zeros_like(beta)
    scale = gamma / np.sqrt(var + float(attrs.epsilon))
    bias = beta - mean * scale
    channel = (1, shape[1], 1, 1)
    return tuple(relax.const(v.reshape(channel).astype(ACCEPTED_DTYPE)) for v in (scale, bias))


def _batch_norm_values(func: relax.Function) -> dict:
    """Each `bn[0]` binding's new value `x * s + t`; None for a batch-norm nothing else reads."""
    users = var_users(func)
    var2val = relax.analysis.get_var2val(func)
    values = {}
    for binding in bindings_of(func):
        found = _scale_bias(binding.value) if is_op_call(binding.value, BATCH_NORM) else None
        if found is None:
            continue
        scale, bias = found
        readers = users.get(binding.var, [])
        firsts = [
            user
            for user in readers
            if isinstance(var2val.get(user), relax.TupleGetItem) and var2val[user].index == 0
        ]
        data = binding.value.args[0]
        for user in firsts:
            values[user] = relax.op.add(relax.op.multiply(data, scale), bias)
        if firsts and len(firsts) == len(readers):
            values[binding.var] = None
    return values


@tvm.transform.module_pass(opt_level=0, name="BatchNormToScaleBias")
class BatchNormToScaleBias:
    """Write each inference batch-norm with constant statistics as a per-channel multiply and
    add (run after FoldBatchnormToConv2D, which takes those right after a conv)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gvar, func in graph_functions(mod):
            values = _batch_norm_values(func)
            if values:
                updates[gvar] = rebind(mod, func, values)
        return with_functions(mod, updates)


@cache
def _topi_prim_func(op: str, shape: tuple[int, ...], dtype: str) -> tvm.tirx.PrimFunc:
    """What `bb.emit_te(topi.<op>, x, scalar)` makes for an x of `shape`."""
    from tvm import te, topi

    data, scalar = te.placeholder(shape, dtype), te.placeholder((), dtype)
    compute = topi.maximum if op == "max" else topi.minimum
    func = te.create_prim_func([data, scalar, compute(data, scalar)], index_dtype_override="int64")
    return func.without_attr("global_symbol")


def _relax_max_min(call: relax.Expr, mod: tvm.IRModule) -> relax.Expr | None:
    """relax.maximum/minimum(x, c) for a call_tir of topi's maximum/minimum(x, c), else None."""
    if not is_op_call(call, CALL_TIR) or len(call.args) != 2:
        return None
    gvar, args = call.args
    if not isinstance(args, relax.Tuple) or len(args.fields) != 2 or gvar not in mod.functions:
        return None
    data, scalar = args.fields
    shape, dtype = static_shape(data), dtype_of(data)
    if (
        shape is None
        or not is_constant(scalar)
        or static_shape(scalar) != ()
        or dtype_of(scalar) != dtype
        or static_shape(call) != shape
        or dtype_of(call) != dtype
    ):
        return None
    func = mod[gvar]
    if not isinstance(func, tvm.tirx.PrimFunc):
        return None
    func = func.without_attr("global_symbol")
    for op, relax_op in (("max", relax.op.maximum), ("min", relax.op.minimum)):
        if tvm_ffi.structural_equal(func, _topi_prim_func(op, shape, dtype)):
            return relax_op(data, scalar)
    return None


@tvm.transform.module_pass(opt_level=0, name="TirMaxMinToRelax")
class TirMaxMinToRelax:
    """Replace each call_tir of topi's maximum/minimum with a scalar constant by the Relax op."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates, replaced = {}, set()
        for gvar, func in graph_functions(mod):
            values = {}
            for binding in bindings_of(func):
                value = _relax_max_min(binding.value, mod)
                if value is not None:
                    values[binding.var] = value
                    replaced.add(binding.value.args[0])
            if values:
                updates[gvar] = rebind(mod, func, values)
        mod = with_functions(mod, updates)
        still_called = {
            gvar
            for _, func in graph_functions(mod)
            for gvar in relax.analysis.all_global_vars(func)
        }
        for gvar in replaced - still_called:
            del mod[gvar]
        return mod
