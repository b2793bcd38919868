"""The numpy reference every numeric path is checked against, independent of TVM."""

from __future__ import annotations

import numpy as np

from tvm_convadd.schedules.workload import Workload


def conv2d_nchw(
    data: np.ndarray, weight: np.ndarray, stride, padding, groups: int = 1
) -> np.ndarray:
    """Direct grouped conv2d (NCHW, OIHW): one einsum per kernel tap and group, float64
    accumulation."""
    top, left, bottom, right = padding
    padded = np.pad(data, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_channels, group_in, kernel_h, kernel_w = weight.shape
    group_out = out_channels // groups
    out_h = (padded.shape[2] - kernel_h) // stride[0] + 1
    out_w = (padded.shape[3] - kernel_w) // stride[1] + 1
    out = np.zeros((data.shape[0], out_channels, out_h, out_w), dtype=np.float64)
    # Split into groups as (n, g, c, h, w) x (g, k, c): one einsum covers every group.
    grouped_w = weight.reshape(groups, group_out, group_in, kernel_h, kernel_w)
    for ry in range(kernel_h):
        for rx in range(kernel_w):
            window = padded[
                :,
                :,
                ry : ry + (out_h - 1) * stride[0] + 1 : stride[0],
                rx : rx + (out_w - 1) * stride[1] + 1 : stride[1],
            ]
            window = window.reshape(data.shape[0], groups, group_in, out_h, out_w)
            taps = np.einsum("ngchw,gkc->ngkhw", window, grouped_w[..., ry, rx], optimize=True)
            out += taps.reshape(out.shape)
    return out


_BINARY = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def convadd_reference(workload: Workload, inputs: list[np.ndarray]) -> np.ndarray:
    """The conv and its epilogue chain for inputs ordered as `Workload.input_shapes`."""
    data, weight, *operands = inputs
    out = conv2d_nchw(data, weight, workload.stride, workload.padding, workload.groups)
    operands = iter(operands)
    for op in workload.epilogue:
        other = op.value if op.kind == "const" else next(operands)
        out = _BINARY[op.op](out, other)
    return out.astype(workload.dtype)


def random_inputs(workload: Workload, seed: int = 0) -> list[np.ndarray]:
    """Deterministic inputs with O(1) outputs (weights scaled by fan-in)."""
    rng = np.random.default_rng(seed)
    fan_in = workload.group_in_channels * workload.kernel_h * workload.kernel_w
    weight_scale = 1.0 / np.sqrt(fan_in)
    return [
        (rng.standard_normal(shape) * (weight_scale if index == 1 else 1.0)).astype(workload.dtype)
        for index, shape in enumerate(workload.input_shapes)
    ]
