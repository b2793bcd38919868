"""The unscheduled TensorIR of a fused conv2d + add, built from TE with stable block names."""

from __future__ import annotations

import tvm
from tvm import te

from tvm_convadd.schedules.workload import Workload

# Block names the schedule and the lowering rely on.
PAD, CONV, ADD = "pad", "conv", "add"


def convadd_primfunc(workload: Workload) -> tvm.tirx.PrimFunc:
    """pad -> conv -> add(+bias, +residual, relu): one PrimFunc whose params follow
    `Workload.input_shapes` and then the output."""
    wl = workload
    data = te.placeholder(wl.data_shape, wl.dtype, name="data")
    weight = te.placeholder(wl.weight_shape, wl.dtype, name="weight")
    bias = te.placeholder(wl.bias_shape, wl.dtype, name="bias") if wl.bias else None
    residual = te.placeholder(wl.out_shape, wl.dtype, name="residual")
    top, left, _, _ = wl.padding
    height, width = wl.in_height, wl.in_width
    zero = tvm.tirx.const(0, wl.dtype)

    def padded_value(n, c, h, w):
        inside = tvm.tirx.all(h >= top, h < top + height, w >= left, w < left + width)
        return tvm.tirx.if_then_else(inside, data[n, c, h - top, w - left], zero)

    padded = te.compute(
        (wl.batch, wl.in_channels, wl.padded_height, wl.padded_width), padded_value, name=PAD
    )
    rc = te.reduce_axis((0, wl.in_channels), name="rc")
    ry = te.reduce_axis((0, wl.kernel_h), name="ry")
    rx = te.reduce_axis((0, wl.kernel_w), name="rx")
    stride_h, stride_w = wl.stride
    conv = te.compute(
        wl.out_shape,
        lambda n, k, h, w: te.sum(
            padded[n, rc, h * stride_h + ry, w * stride_w + rx] * weight[k, rc, ry, rx],
            axis=[rc, ry, rx],
        ),
        name=CONV,
    )

    def epilogue(n, k, h, w):
        value = conv[n, k, h, w]
        if bias is not None:
            value = value + bias[0, k, 0, 0]
        value = value + residual[n, k, h, w]
        return tvm.tirx.max(value, zero) if wl.relu else value

    out = te.compute(wl.out_shape, epilogue, name=ADD)
    params = [data, weight, *([bias] if bias is not None else []), residual, out]
    return te.create_prim_func(params).with_attr("global_symbol", "main")
