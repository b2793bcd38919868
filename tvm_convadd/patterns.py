"""Relax dataflow patterns for conv2d [+ bias] + residual add [+ relu], and what the hardware takes.

`rejection` is the one place that decides whether a matched conv can be offloaded; the pattern
table's `check` and `partition.explain` both call it, so a refusal always has a readable reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import tvm
from tvm import relax
from tvm.relax.backend.utils import has_leaking_intermediate_variables
from tvm.relax.dpl import DFPattern, is_op, wildcard
from tvm.relax.transform import FusionPattern, PatternCheckContext

CODEGEN = "convadd"
ACCEPTED_DTYPE = "float32"
CONV2D = "relax.nn.conv2d"


def make_pattern(
    bias: bool, relu: bool, residual_first: bool = False
) -> tuple[DFPattern, dict[str, DFPattern]]:
    """conv2d [+ bias] + residual [+ relu]; each add takes its operands in either order.

    When both operands of the residual add are conv chains (a projection shortcut, or the input of
    a MobileNet block), the matcher takes the first order that fits and does not come back if the
    check then refuses; `residual_first` makes it try the other operand first.

    The annotations name the operands (data, weight, bias, residual; matched as their values, not
    their variables) and the matched ops (conv, bias_add, add, root).
    """
    data, weight, residual = wildcard(), wildcard(), wildcard()
    conv = is_op(CONV2D)(data, weight)
    annotations = {"data": data, "weight": weight, "conv": conv, "residual": residual}
    out = conv
    if bias:
        annotations["bias"] = bias_value = wildcard()
        out = is_op("relax.add")(out, bias_value) | is_op("relax.add")(bias_value, out)
        annotations["bias_add"] = out
    chain_first = is_op("relax.add")(out, residual)
    chain_second = is_op("relax.add")(residual, out)
    out = chain_second | chain_first if residual_first else chain_first | chain_second
    annotations["add"] = out
    if relu:
        out = is_op("relax.nn.relu")(out)
    annotations["root"] = out
    return out, annotations


def pattern_name(bias: bool, relu: bool) -> str:
    return f"{CODEGEN}.conv2d" + "_bias" * bias + "_add" + "_relu" * relu


# (bias, relu, residual_first), longest first: FuseOpsByPattern tries the table in order (pattern
# by pattern over the whole function) and keeps the first accepted match of each binding.
VARIANTS: tuple[tuple[bool, bool, bool], ...] = tuple(
    (bias, relu, residual_first)
    for bias, relu in ((True, True), (True, False), (False, True), (False, False))
    for residual_first in (False, True)
)


def pattern_table() -> list[FusionPattern]:
    """The table for `relax.transform.FuseOpsByPattern`, longest pattern first."""
    table = []
    for bias, relu, residual_first in VARIANTS:
        pattern, annotations = make_pattern(bias, relu, residual_first)
        table.append(FusionPattern(pattern_name(bias, relu), pattern, annotations, _check))
    return table


def _check(context: PatternCheckContext) -> bool:
    if has_leaking_intermediate_variables(context):
        return False
    return rejection(context.annotated_expr) is None


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The tensor's shape as ints, or None when it is unknown or symbolic."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = getattr(ty.shape, "values", None)
    if dims is None or not all(isinstance(dim, tvm.tirx.IntImm) for dim in dims):
        return None
    return tuple(int(dim.value) for dim in dims)


def dtype_of(expr: relax.Expr) -> str:
    ty = expr.ty
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else "unknown"


def format_dim(dim: tvm.ir.PrimExpr) -> str:
    return str(int(dim.value)) if isinstance(dim, tvm.tirx.IntImm) else str(dim)


def format_shape(expr: relax.Expr) -> str:
    ty = expr.ty
    if isinstance(ty, relax.TensorType) and ty.shape is not None:
        return "(" + ", ".join(format_dim(dim) for dim in ty.shape.values) + ")"
    return "(unknown)"


def conv_rejection(conv: relax.Call) -> str | None:
    """Why the accelerator cannot run this conv2d (layout, groups, dilation, dtype, shape)."""
    attrs = conv.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        shown = "/".join(dict.fromkeys(layouts))
        return f"layout {shown} (the accelerator takes NCHW/OIHW)"
    if int(attrs.groups) != 1:
        return f"groups={int(attrs.groups)} (the accelerator takes groups=1)"
    dilation = tuple(int(d) for d in attrs.dilation)
    if dilation != (1, 1):
        shown = dilation[0] if dilation[0] == dilation[1] else "x".join(map(str, dilation))
        return f"dilation {shown} (the accelerator takes dilation 1)"
    data, weight = conv.args
    out_dtype = "" if attrs.out_dtype is None else str(attrs.out_dtype)
    for role, dtype in (("data", dtype_of(data)), ("weight", dtype_of(weight))):
        if dtype != ACCEPTED_DTYPE:
            return f"{role} dtype {dtype} (the accelerator takes {ACCEPTED_DTYPE})"
    if out_dtype not in ("", "void", ACCEPTED_DTYPE):
        return f"out_dtype {out_dtype} (the accelerator takes {ACCEPTED_DTYPE})"
    for role, expr in (("data", data), ("weight", weight), ("output", conv)):
        if static_shape(expr) is None:
            return f"dynamic {role} shape {format_shape(expr)} (bind the shape to constants first)"
    return None


def rejection(matched: Mapping[str, relax.Expr]) -> str | None:
    """Why a matched conv2d [+ bias] + add cannot be offloaded, or None if it can."""
    conv = matched["conv"]
    reason = conv_rejection(conv)
    if reason is not None:
        return reason
    out_shape = static_shape(conv)
    out_channels = out_shape[1]
    if "bias" in matched:
        bias = matched["bias"]
        if static_shape(bias) != (1, out_channels, 1, 1) or dtype_of(bias) != ACCEPTED_DTYPE:
            return (
                f"bias {format_shape(bias)} {dtype_of(bias)} is not a per-channel "
                f"(1, {out_channels}, 1, 1) {ACCEPTED_DTYPE} vector"
            )
    residual = matched["residual"]
    if isinstance(residual, tvm.ir.expr.Constant):
        return "the added tensor is a constant: a bias, not a residual"
    if static_shape(residual) != out_shape:
        return (
            f"residual shape {format_shape(residual)} differs from the conv output "
            f"{format_shape(conv)} (the accelerator does not broadcast)"
        )
    if dtype_of(residual) != ACCEPTED_DTYPE:
        return f"residual dtype {dtype_of(residual)} (the accelerator takes {ACCEPTED_DTYPE})"
    if residual.same_as(matched["data"]):
        # The fused function would get one parameter for two operands; keep the roles unambiguous.
        return "the residual is the conv's own input (the accelerator takes two distinct tensors)"
    return None
