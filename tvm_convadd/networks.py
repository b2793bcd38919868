"""Built-in networks in Relax (ResNet-18/50, MobileNetV2, EfficientNet-B0, RegNetX-400MF) with
seeded weights: no downloads.

Every conv is followed by an inference-mode batch-norm with non-trivial statistics, so the graph
clean-up (`partition.prepare`) has real folding to do. `width` shrinks the channels for tests.

EfficientNet-B0 and RegNetX-400MF take their batch-norm statistics from a seeded probe batch, as
training would: with fixed statistics a SiLU network's activations die out or blow up with depth
and its logits stop depending on the image (RegNet follows the same rule). ResNet and MobileNetV2
keep their fixed statistics, and their weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax

from tvm_convadd.errors import ConvAddError

Params = dict[str, np.ndarray]
BN_EPSILON = 1e-5


class _Builder:
    """Emits ops into one dataflow block and collects their weights as named parameters.

    With `probe` (the input variable and a batch for it), every op is also evaluated in numpy on
    that batch, and each batch-norm takes its statistics from the conv output it normalises."""

    def __init__(self, seed: int, probe: tuple[relax.Var, np.ndarray] | None = None) -> None:
        self.bb = relax.BlockBuilder()
        self.rng = np.random.default_rng(seed)
        self.param_vars: list[relax.Var] = []
        self.params: Params = {}
        self.values: dict[relax.Var, np.ndarray] | None = None if probe is None else dict([probe])

    def param(self, name: str, value: np.ndarray) -> relax.Var:
        var = relax.Var(name, relax.TensorType(value.shape, "float32"))
        self.param_vars.append(var)
        self.params[name] = value.astype("float32")
        if self.values is not None:
            self.values[var] = self.params[name]
        return var

    def emit(self, expr: relax.Expr) -> relax.Var:
        var = self.bb.emit(expr)
        if self.values is not None:
            self.values[var] = _evaluate(expr, self.values)
        return var

    def conv_bn(
        self,
        name: str,
        data: relax.Expr,
        out_channels: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        gamma_scale: float = 1.0,
    ) -> relax.Var:
        """conv2d (He-initialised, no bias) followed by batch-norm in inference mode."""
        in_channels = int(data.ty.shape.values[1])
        fan_in = in_channels // groups * kernel * kernel
        weight_shape = (out_channels, in_channels // groups, kernel, kernel)
        weight = self.rng.standard_normal(weight_shape) * np.sqrt(2.0 / fan_in)
        conv = self.emit(
            relax.op.nn.conv2d(
                data,
                self.param(f"{name}_weight", weight),
                strides=stride,
                padding=kernel // 2,
                groups=groups,
            )
        )
        # Statistics loosely matched to a He-initialised conv's output, so activations stay O(1).
        stats = {
            "gamma": self.rng.uniform(0.5, 1.0, out_channels) * gamma_scale,
            "beta": self.rng.normal(0.0, 0.1, out_channels),
            "mean": self.rng.normal(0.0, 0.1, out_channels),
            "var": self.rng.uniform(0.5, 1.5, out_channels),
        }
        if self.values is not None:  # the probe's channel statistics, perturbed by the same draws
            channel_mean, pooled_var = _probe_moments(self.values[conv])
            stats["mean"] = channel_mean + stats["mean"] * np.sqrt(pooled_var)
            stats["var"] = pooled_var * stats["var"]
        args = [self.param(f"{name}_bn_{key}", value) for key, value in stats.items()]
        norm = relax.op.nn.batch_norm(conv, *args, axis=1, epsilon=BN_EPSILON, training=False)
        return self.emit(relax.TupleGetItem(self.emit(norm), 0))

    def relu(self, data: relax.Expr) -> relax.Var:
        return self.emit(relax.op.nn.relu(data))

    def relu6(self, data: relax.Expr) -> relax.Var:
        return self.emit(relax.op.clip(data, 0.0, 6.0))

    def silu(self, data: relax.Expr) -> relax.Var:
        """x * sigmoid(x), spelled out so the graph shows both ops."""
        return self.multiply(data, self.sigmoid(data))

    def sigmoid(self, data: relax.Expr) -> relax.Var:
        return self.emit(relax.op.sigmoid(data))

    def multiply(self, lhs: relax.Expr, rhs: relax.Expr) -> relax.Var:
        return self.emit(relax.op.multiply(lhs, rhs))

    def add(self, lhs: relax.Expr, rhs: relax.Expr) -> relax.Var:
        return self.emit(relax.op.add(lhs, rhs))

    def conv1x1_bias(self, name: str, data: relax.Expr, out_channels: int) -> relax.Var:
        """1x1 conv2d with a (1, C, 1, 1) bias and no batch-norm (the squeeze-excitation fcs)."""
        in_channels = int(data.ty.shape.values[1])
        weight = self.rng.standard_normal((out_channels, in_channels, 1, 1))
        weight *= np.sqrt(2.0 / in_channels)
        bias = self.rng.normal(0.0, 0.1, (1, out_channels, 1, 1))
        conv = self.emit(relax.op.nn.conv2d(data, self.param(f"{name}_weight", weight)))
        return self.add(conv, self.param(f"{name}_bias", bias))

    def head(self, data: relax.Expr, num_classes: int) -> relax.Var:
        """Global average pool + dense classifier."""
        batch, channels = (int(v) for v in data.ty.shape.values[:2])
        pooled = self.emit(relax.op.nn.adaptive_avg_pool2d(data, (1, 1)))
        flat = self.emit(relax.op.reshape(pooled, (batch, channels)))
        weight = self.rng.standard_normal((num_classes, channels)) / np.sqrt(channels)
        bias = self.rng.normal(0.0, 0.1, num_classes)
        fc_weight, fc_bias = self.param("fc_weight", weight), self.param("fc_bias", bias)
        return self.emit(relax.op.linear(flat, fc_weight, fc_bias))


def _build(
    image_size: int,
    batch: int,
    seed: int,
    body: Callable[[_Builder, relax.Var], relax.Expr],
    calibrate: bool = False,
) -> tuple[tvm.IRModule, Params]:
    """Wrap `body` in a `main(image, *weights)` whose weights are listed in params; with
    `calibrate`, the batch-norm statistics come from a probe batch (see `_probe_batch`)."""
    if not _is_int(image_size) or image_size < 32:
        raise ConvAddError(
            f"image_size {image_size!r}: the networks downsample 32x; use an integer >= 32"
        )
    if not _is_int(batch) or batch < 1:
        raise ConvAddError(f"batch {batch!r}: use an integer >= 1")
    image = relax.Var("image", relax.TensorType((batch, 3, image_size, image_size), "float32"))
    builder = _Builder(seed, (image, _probe_batch(image_size, seed)) if calibrate else None)
    with builder.bb.function("main", attrs={"num_input": 1}):
        with builder.bb.dataflow():
            out = builder.bb.emit_output(body(builder, image))
        builder.bb.emit_func_output(out, params=[image, *builder.param_vars])
    return builder.bb.finalize(), builder.params


PROBE_SAMPLES = 64  # per channel of the last 1/32-resolution feature map, at least


def _probe_batch(image_size: int, seed: int) -> np.ndarray:
    """Seeded standard-normal images, enough that the last feature map has PROBE_SAMPLES values
    per channel; drawn apart from the weights, so the weights do not depend on the image size."""
    count = -(-PROBE_SAMPLES // (image_size // 32) ** 2)
    rng = np.random.default_rng((seed, 1))
    return rng.standard_normal((count, 3, image_size, image_size)).astype("float32")


def _probe_moments(value: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-channel means of an NCHW batch, and the variance about them pooled over channels:
    a per-channel variance from a few late-layer samples would fit the probe and amplify
    other images, compounding with depth."""
    value = value.astype("float64")
    mean = value.mean(axis=(0, 2, 3))
    return mean, max(float(np.mean((value - mean[:, None, None]) ** 2)), 1e-6)


def _conv2d(data: np.ndarray, weight: np.ndarray, attrs) -> np.ndarray:
    """NCHW/OIHW grouped conv2d as a sum over kernel offsets of batched matmuls."""
    batch, _, height, width = data.shape
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    groups = int(attrs.groups)
    stride_h, stride_w = (int(v) for v in attrs.strides)
    top, left, bottom, right = (int(v) for v in attrs.padding)
    padded = np.pad(data, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (height + top + bottom - kernel_h) // stride_h + 1
    out_w = (width + left + right - kernel_w) // stride_w + 1
    grouped = weight.reshape(groups, out_channels // groups, group_channels, kernel_h, kernel_w)
    out = np.zeros((batch, groups, out_channels // groups, out_h * out_w), data.dtype)
    for y in range(kernel_h):
        for x in range(kernel_w):
            rows = slice(y, y + stride_h * (out_h - 1) + 1, stride_h)
            cols = slice(x, x + stride_w * (out_w - 1) + 1, stride_w)
            window = padded[:, :, rows, cols].reshape(batch, groups, group_channels, -1)
            if group_channels == 1 and out_channels == groups:  # depthwise: a scaled copy
                out += window * grouped[None, :, :, 0, y, x, None]
            else:
                out += grouped[:, :, :, y, x] @ window
    return out.reshape(batch, out_channels, out_h, out_w)


def _batch_norm(call: relax.Call, data, gamma, beta, mean, var) -> tuple[np.ndarray]:
    scale = gamma / np.sqrt(var + np.float32(call.attrs.epsilon))
    shape = (1, -1, 1, 1)
    return ((data - mean.reshape(shape)) * scale.reshape(shape) + beta.reshape(shape),)


def _shape(expr: relax.Expr) -> tuple[int, ...]:
    return tuple(int(v) for v in expr.values)


_PROBE_RULES: dict[str, Callable[..., np.ndarray | tuple[np.ndarray, ...]]] = {
    "relax.nn.conv2d": lambda call, data, weight: _conv2d(data, weight, call.attrs),
    "relax.nn.batch_norm": _batch_norm,
    "relax.nn.relu": lambda call, data: np.maximum(data, 0),
    "relax.sigmoid": lambda call, data: 1 / (1 + np.exp(-data)),
    "relax.multiply": lambda call, lhs, rhs: lhs * rhs,
    "relax.add": lambda call, lhs, rhs: lhs + rhs,
    "relax.nn.adaptive_avg_pool2d": lambda call, data: data.mean(axis=(2, 3), keepdims=True),
    # the probe's batch is its own: a reshape keeps dim 0 (the head's flatten)
    "relax.reshape": lambda call, data, shape: data.reshape(len(data), *shape[1:]),
    "relax.matmul": lambda call, lhs, rhs: lhs @ rhs,
    "relax.permute_dims": lambda call, data: np.transpose(data, call.attrs.axes),
}


def _evaluate(expr: relax.Expr, values: dict[relax.Var, np.ndarray]):
    """The value of an emitted expression on the probe batch, from the values of its variables
    (its operands may be calls themselves: `relax.op.linear` is a matmul of a permute_dims)."""
    if isinstance(expr, relax.Var):
        return values[expr]
    if isinstance(expr, relax.ShapeExpr):
        return _shape(expr)
    if isinstance(expr, relax.TupleGetItem):
        return _evaluate(expr.tuple_value, values)[expr.index]
    name = str(expr.op.name)
    if name not in _PROBE_RULES or (
        name == "relax.nn.adaptive_avg_pool2d" and _shape(expr.ty.shape)[2:] != (1, 1)
    ):
        raise ConvAddError(
            f"batch-norm calibration: no numpy rule for {name} in _PROBE_RULES; add one, or "
            "build the network without calibrate"
        )
    return _PROBE_RULES[name](expr, *(_evaluate(arg, values) for arg in expr.args))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


MAX_WIDTH = 4.0  # beyond this the weights alone run to gigabytes


def check_width(width) -> float:
    """`width` as a float if it is a finite channel multiplier in (0, MAX_WIDTH], else an error."""
    try:
        value = float(width)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(width, bool) or not 0 < value <= MAX_WIDTH:  # nan fails both comparisons
        raise ConvAddError(
            f"width {width!r}: the channel multiplier must be a number in (0, {MAX_WIDTH:g}], "
            "e.g. 0.25 for a quarter of the channels"
        )
    return value


def _scaled(channels: int, width: float) -> int:
    """Scale a channel count by `width`, kept a multiple of 8 (at least 8)."""
    return max(8, int(channels * width + 4) // 8 * 8)


def _bottleneck(
    net: _Builder, name: str, data: relax.Var, planes: int, stride: int, downsample: bool
) -> relax.Var:
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1 (x4), projection when shapes change."""
    out = net.relu(net.conv_bn(f"{name}_conv1", data, planes, 1))
    out = net.relu(net.conv_bn(f"{name}_conv2", out, planes, 3, stride))
    out = net.conv_bn(f"{name}_conv3", out, planes * 4, 1, gamma_scale=0.3)
    identity = net.conv_bn(f"{name}_down", data, planes * 4, 1, stride) if downsample else data
    return net.relu(net.add(out, identity))


def _basic(
    net: _Builder, name: str, data: relax.Var, planes: int, stride: int, downsample: bool
) -> relax.Var:
    """ResNet basic block: 3x3 (strided) -> 3x3, projection when shapes change."""
    out = net.relu(net.conv_bn(f"{name}_conv1", data, planes, 3, stride))
    out = net.conv_bn(f"{name}_conv2", out, planes, 3, gamma_scale=0.3)
    identity = net.conv_bn(f"{name}_down", data, planes, 1, stride) if downsample else data
    return net.relu(net.add(out, identity))


def _resnet(
    block: Callable, expansion: int, depths: tuple[int, ...], width: float, num_classes: int
) -> Callable[[_Builder, relax.Var], relax.Expr]:
    def body(net: _Builder, image: relax.Var) -> relax.Expr:
        out = net.relu(net.conv_bn("stem", image, _scaled(64, width), 7, 2))
        out = net.bb.emit(relax.op.nn.max_pool2d(out, 3, 2, 1))
        in_planes = 64
        for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            for index in range(depth):
                stride = 2 if stage > 0 and index == 0 else 1
                downsample = index == 0 and (stride != 1 or in_planes != planes * expansion)
                name = f"layer{stage + 1}_{index}"
                out = block(net, name, out, _scaled(planes, width), stride, downsample)
                in_planes = planes * expansion
        return net.head(out, num_classes)

    return body


def resnet50(
    image_size: int = 224,
    width: float = 1.0,
    num_classes: int = 1000,
    batch: int = 1,
    seed: int = 0,
) -> tuple[tvm.IRModule, Params]:
    """ResNet-50 v1.5 (bottlenecks [3, 4, 6, 3]: 16 residual adds)."""
    width = check_width(width)
    body = _resnet(_bottleneck, 4, (3, 4, 6, 3), width, num_classes)
    return _build(image_size, batch, seed, body)


def resnet18(
    image_size: int = 224,
    width: float = 1.0,
    num_classes: int = 1000,
    batch: int = 1,
    seed: int = 0,
) -> tuple[tvm.IRModule, Params]:
    """ResNet-18 (basic blocks [2, 2, 2, 2]: 8 residual adds)."""
    width = check_width(width)
    body = _resnet(_basic, 1, (2, 2, 2, 2), width, num_classes)
    return _build(image_size, batch, seed, body)


# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _inverted_residual(
    net: _Builder, name: str, data: relax.Var, hidden: int, out_channels: int, stride: int
) -> relax.Var:
    """Expand 1x1 -> depthwise 3x3 -> linear 1x1 projection (no relu after the projection)."""
    out = data
    if hidden != int(data.ty.shape.values[1]):
        out = net.relu6(net.conv_bn(f"{name}_expand", out, hidden, 1))
    out = net.relu6(net.conv_bn(f"{name}_depthwise", out, hidden, 3, stride, groups=hidden))
    return net.conv_bn(f"{name}_project", out, out_channels, 1, gamma_scale=0.3)


def mobilenet_v2(
    image_size: int = 224,
    width: float = 1.0,
    num_classes: int = 1000,
    batch: int = 1,
    seed: int = 0,
) -> tuple[tvm.IRModule, Params]:
    """MobileNetV2 (10 residual adds of a linear bottleneck; its 17 depthwise convs are grouped)."""
    width = check_width(width)

    def body(net: _Builder, image: relax.Var) -> relax.Expr:
        out = net.relu6(net.conv_bn("stem", image, _scaled(32, width), 3, 2))
        in_channels = 32
        for stage, (expansion, channels, repeats, first_stride) in enumerate(MOBILENET_V2_SETTINGS):
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                hidden = _scaled(in_channels * expansion, width)
                name = f"block{stage}_{index}"
                branch = _inverted_residual(
                    net, name, out, hidden, _scaled(channels, width), stride
                )
                # Decide on the unscaled channels, so a small width keeps the standard 10 adds.
                residual = stride == 1 and in_channels == channels
                out = net.add(out, branch) if residual else branch
                in_channels = channels
        out = net.relu6(net.conv_bn("last", out, _scaled(1280, max(width, 1.0)), 1))
        return net.head(out, num_classes)

    return _build(image_size, batch, seed, body)


def _make_divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor` (at least `divisor`), never more than 10%
    down: torchvision's `_make_divisible`, used by its EfficientNets."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


# (expansion, output channels, repeats, first stride, kernel): EfficientNet-B0, Table 1 of
# Tan & Le 2019 (the stages after the stem and before the 1x1 head conv).
EFFICIENTNET_B0_SETTINGS = (
    (1, 16, 1, 1, 3),
    (6, 24, 2, 2, 3),
    (6, 40, 2, 2, 5),
    (6, 80, 3, 2, 3),
    (6, 112, 3, 1, 5),
    (6, 192, 4, 2, 5),
    (6, 320, 1, 1, 3),
)


def _squeeze_excite(net: _Builder, name: str, data: relax.Var, squeeze: int) -> relax.Var:
    """Global average pool -> 1x1 (bias) + SiLU -> 1x1 (bias) + sigmoid -> channel scale."""
    pooled = net.emit(relax.op.nn.adaptive_avg_pool2d(data, (1, 1)))
    hidden = net.silu(net.conv1x1_bias(f"{name}_reduce", pooled, squeeze))
    expanded = int(data.ty.shape.values[1])
    gate = net.sigmoid(net.conv1x1_bias(f"{name}_expand", hidden, expanded))
    return net.multiply(data, gate)


def _mbconv(
    net: _Builder,
    name: str,
    data: relax.Var,
    expansion: int,
    out_channels: int,
    stride: int,
    kernel: int,
) -> relax.Var:
    """[1x1 expand] -> depthwise kxk -> squeeze-excitation -> linear 1x1 projection."""
    in_channels = int(data.ty.shape.values[1])
    hidden = _make_divisible(in_channels * expansion)
    out = data
    if expansion != 1:
        out = net.silu(net.conv_bn(f"{name}_expand", out, hidden, 1))
    out = net.silu(net.conv_bn(f"{name}_depthwise", out, hidden, kernel, stride, groups=hidden))
    out = _squeeze_excite(net, f"{name}_se", out, max(1, in_channels // 4))
    return net.conv_bn(f"{name}_project", out, out_channels, 1, gamma_scale=0.3)


def efficientnet_b0(
    image_size: int = 224,
    width: float = 1.0,
    num_classes: int = 1000,
    batch: int = 1,
    seed: int = 0,
) -> tuple[tvm.IRModule, Params]:
    """EfficientNet-B0 as torchvision's `efficientnet_b0`: 81 convs (16 depthwise, 32 in the
    squeeze-excitations, with a bias and no batch-norm), 9 residual adds, 386M MACs at 224.
    `width` scales the channels with `_make_divisible`; the head is 4x the last stage. Which
    blocks add is decided on the unscaled channels, so every width has the 9 adds."""
    width = check_width(width)

    def body(net: _Builder, image: relax.Var) -> relax.Expr:
        out = net.silu(net.conv_bn("stem", image, _make_divisible(32 * width), 3, 2))
        in_channels = 32
        for stage, (expansion, channels, repeats, first_stride, kernel) in enumerate(
            EFFICIENTNET_B0_SETTINGS
        ):
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                scaled = _make_divisible(channels * width)
                name = f"block{stage}_{index}"
                branch = _mbconv(net, name, out, expansion, scaled, stride, kernel)
                residual = stride == 1 and in_channels == channels
                out = net.add(out, branch) if residual else branch
                in_channels = channels
        last = 4 * _make_divisible(EFFICIENTNET_B0_SETTINGS[-1][1] * width)
        out = net.silu(net.conv_bn("last", out, last, 1))
        return net.head(out, num_classes)

    return _build(image_size, batch, seed, body, calibrate=True)


# RegNetX-400MF (Radosavovic et al. 2020): the quantised linear widths of torchvision's
# regnet_x_400mf parameters, made divisible by the group width (checked in
# tests/test_more_networks.py); bottleneck ratio 1.
REGNETX_400MF_WIDTHS = (32, 64, 160, 400)
REGNETX_400MF_DEPTHS = (1, 2, 7, 12)
REGNETX_400MF_GROUP_WIDTH = 16


def _regnet_width(channels: int, width: float, group_width: int) -> int:
    """Scale a stage width by `width`, kept a multiple of the group width (at least one group)."""
    return max(group_width, int(channels * width / group_width + 0.5) * group_width)


def _res_bottleneck(
    net: _Builder,
    name: str,
    data: relax.Var,
    out_channels: int,
    stride: int,
    group_width: int,
    project: bool,
) -> relax.Var:
    """RegNet's ResBottleneckBlock (ratio 1): 1x1 -> grouped 3x3 (strided) -> 1x1, + shortcut."""
    out = net.relu(net.conv_bn(f"{name}_conv1", data, out_channels, 1))
    groups = out_channels // group_width
    out = net.relu(net.conv_bn(f"{name}_conv2", out, out_channels, 3, stride, groups=groups))
    out = net.conv_bn(f"{name}_conv3", out, out_channels, 1, gamma_scale=0.3)
    identity = net.conv_bn(f"{name}_down", data, out_channels, 1, stride) if project else data
    return net.relu(net.add(out, identity))


def regnetx_400mf(
    image_size: int = 224,
    width: float = 1.0,
    num_classes: int = 1000,
    batch: int = 1,
    seed: int = 0,
) -> tuple[tvm.IRModule, Params]:
    """RegNetX-400MF as torchvision's `regnet_x_400mf`: its published parameters (depth 22, w_0 24,
    w_a 24.48, w_m 2.54, group width 16) give stages of widths (32, 64, 160, 400) and depths
    (1, 2, 7, 12); 71 convs (22 grouped 3x3s), 22 residual adds (4 onto a projection), 414M MACs
    at 224. `width` scales the stage widths in multiples of 16 (and the stem in 8s)."""
    width = check_width(width)
    group_width = REGNETX_400MF_GROUP_WIDTH

    def body(net: _Builder, image: relax.Var) -> relax.Expr:
        out = net.relu(net.conv_bn("stem", image, _scaled(32, width), 3, 2))
        for stage, (channels, depth) in enumerate(zip(REGNETX_400MF_WIDTHS, REGNETX_400MF_DEPTHS)):
            scaled = _regnet_width(channels, width, group_width)
            for index in range(depth):
                stride = 2 if index == 0 else 1
                name = f"stage{stage + 1}_{index}"
                # Every stage opens with stride 2, so its first block (only) projects.
                out = _res_bottleneck(net, name, out, scaled, stride, group_width, index == 0)
        return net.head(out, num_classes)

    return _build(image_size, batch, seed, body, calibrate=True)


def bottleneck_block(
    in_channels: int = 64, planes: int = 16, image_size: int = 14, batch: int = 1, seed: int = 0
) -> tuple[tvm.IRModule, Params]:
    """One ResNet-50 bottleneck with an identity shortcut: the smallest graph with one fused add."""
    if in_channels != planes * 4:
        raise ConvAddError(
            f"in_channels {in_channels} != 4 * planes {planes}: an identity shortcut needs "
            f"in_channels = {planes * 4}"
        )
    builder = _Builder(seed)
    shape = (batch, in_channels, image_size, image_size)
    data = relax.Var("data", relax.TensorType(shape, "float32"))
    with builder.bb.function("main", attrs={"num_input": 1}):
        with builder.bb.dataflow():
            block = _bottleneck(builder, "block", data, planes, 1, downsample=False)
            out = builder.bb.emit_output(block)
        builder.bb.emit_func_output(out, params=[data, *builder.param_vars])
    return builder.bb.finalize(), builder.params


NETWORKS: dict[str, Callable[..., tuple[tvm.IRModule, Params]]] = {
    "resnet50": resnet50,
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_b0": efficientnet_b0,
    "regnetx_400mf": regnetx_400mf,
}


def get_network(name: str, **kwargs) -> tuple[tvm.IRModule, Params]:
    """Build a built-in network by name: `(mod, params)` with main(image)."""
    if name not in NETWORKS:
        raise ConvAddError(f"unknown network {name!r}: choose one of {sorted(NETWORKS)}")
    return NETWORKS[name](**kwargs)
