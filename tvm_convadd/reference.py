"""The numpy reference every numeric path is checked against, independent of TVM."""

from __future__ import annotations

import numpy as np

from tvm_convadd.schedules.workload import Workload


def conv2d_nchw(data: np.ndarray, weight: np.ndarray, stride, padding) -> np.ndarray:
    """Direct conv2d (NCHW, OIHW, groups 1): one einsum per kernel tap, float64 accumulation."""
    top, left, bottom, right = padding
    padded = np.pad(data, ((0, 0), (0, 0), (top, bottom), (left, right)))
    _, _, kernel_h, kernel_w = weight.shape
    out_h = (padded.shape[2] - kernel_h) // stride[0] + 1
    out_w = (padded.shape[3] - kernel_w) // stride[1] + 1
    out = np.zeros((data.shape[0], weight.shape[0], out_h, out_w), dtype=np.float64)
    for ry in range(kernel_h):
        for rx in range(kernel_w):
            window = padded[
                :,
                :,
                ry : ry + (out_h - 1) * stride[0] + 1 : stride[0],
                rx : rx + (out_w - 1) * stride[1] + 1 : stride[1],
            ]
            out += np.einsum("nchw,kc->nkhw", window, weight[:, :, ry, rx], optimize=True)
    return out


def convadd_reference(workload: Workload, inputs: list[np.ndarray]) -> np.ndarray:
    """conv2d [+ bias] + residual [+ relu] for inputs ordered as `Workload.input_shapes`."""
    data, weight, *rest = inputs
    out = conv2d_nchw(data, weight, workload.stride, workload.padding)
    if workload.bias:
        out = out + rest.pop(0)
    out = out + rest[0]
    if workload.relu:
        out = np.maximum(out, 0)
    return out.astype(workload.dtype)


def random_inputs(workload: Workload, seed: int = 0) -> list[np.ndarray]:
    """Deterministic inputs with O(1) outputs (weights scaled by fan-in)."""
    rng = np.random.default_rng(seed)
    weight_scale = 1.0 / np.sqrt(workload.in_channels * workload.kernel_h * workload.kernel_w)
    return [
        (rng.standard_normal(shape) * (weight_scale if index == 1 else 1.0)).astype(workload.dtype)
        for index, shape in enumerate(workload.input_shapes)
    ]
