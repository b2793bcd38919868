"""The unscheduled TensorIR of a fused conv2d + epilogue, built from TE with stable block names."""

from __future__ import annotations

import tvm
from tvm import te

from tvm_convadd.schedules.workload import Workload

# Block names the schedule and the lowering rely on.
PAD, CONV, ADD = "pad", "conv", "add"

_ALU = {
    "add": lambda value, operand: value + operand,
    "mul": lambda value, operand: value * operand,
    "max": tvm.tirx.max,
    "min": tvm.tirx.min,
}


def convadd_primfunc(workload: Workload) -> tvm.tirx.PrimFunc:
    """pad -> grouped conv -> add (the epilogue chain, in order): one PrimFunc whose params are
    `Workload.input_names` and then the output."""
    wl = workload
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.dtype, name="weight")
    operands = {
        name: te.placeholder(shape, wl.dtype, name=name)
        for name, shape in wl.operand_shapes.items()
    }
    top, left, _, _ = wl.padding
    height, width = wl.in_height, wl.in_width
    zero = tvm.tirx.const(0, wl.dtype)

    def padded_value(n, c, h, w):
        inside = tvm.tirx.all(h >= top, h < top + height, w >= left, w < left + width)
        return tvm.tirx.if_then_else(inside, data[n, c, h - top, w - left], zero)

    padded = te.compute(
        (wl.batch, wl.in_channels, wl.padded_height, wl.padded_width), padded_value, name=PAD
    )
    group_in, group_out = wl.group_in_channels, wl.group_out_channels
    rc = te.reduce_axis((0, group_in), name="rc")
    ry = te.reduce_axis((0, wl.kernel_h), name="ry")
    rx = te.reduce_axis((0, wl.kernel_w), name="rx")
    stride_h, stride_w = wl.stride

    def channel(k):
        """The input channel of reduction step rc for output channel k: its group's rc-th."""
        return rc if wl.groups == 1 else (k // group_out) * group_in + rc

    conv = te.compute(
        wl.out_shape,
        lambda n, k, h, w: te.sum(
            padded[n, channel(k), h * stride_h + ry, w * stride_w + rx] * weight[k, rc, ry, rx],
            axis=[rc, ry, rx],
        ),
        name=CONV,
    )

    def epilogue(n, k, h, w):
        value = conv[n, k, h, w]
        for op, name in zip(wl.epilogue, wl.operand_names):
            if op.kind == "const":
                operand = tvm.tirx.const(op.value, wl.dtype)
            elif op.kind == "channel":
                operand = operands[name][0, k, 0, 0]
            else:
                operand = operands[name][n, k, h, w]
            value = _ALU[op.op](value, operand)
        return value

    out = te.compute(wl.out_shape, epilogue, name=ADD)
    params = [data, weight, *operands.values(), out]
    return te.create_prim_func(params).with_attr("global_symbol", "main")
