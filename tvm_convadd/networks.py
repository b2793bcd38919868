"""Built-in networks in Relax (ResNet-18/50, MobileNetV2) with seeded weights: no downloads.

Every conv is followed by an inference-mode batch-norm with non-trivial statistics, so the graph
clean-up (`partition.prepare`) has real folding to do. `width` shrinks the channels for tests.
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
    """Emits ops into one dataflow block and collects their weights as named parameters."""

    def __init__(self, seed: int) -> None:
        self.bb = relax.BlockBuilder()
        self.rng = np.random.default_rng(seed)
        self.param_vars: list[relax.Var] = []
        self.params: Params = {}

    def param(self, name: str, value: np.ndarray) -> relax.Var:
        var = relax.Var(name, relax.TensorType(value.shape, "float32"))
        self.param_vars.append(var)
        self.params[name] = value.astype("float32")
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
        conv = self.bb.emit(
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
        args = [self.param(f"{name}_bn_{key}", value) for key, value in stats.items()]
        norm = relax.op.nn.batch_norm(conv, *args, axis=1, epsilon=BN_EPSILON, training=False)
        return self.bb.emit(relax.TupleGetItem(self.bb.emit(norm), 0))

    def relu(self, data: relax.Expr) -> relax.Var:
        return self.bb.emit(relax.op.nn.relu(data))

    def relu6(self, data: relax.Expr) -> relax.Var:
        return self.bb.emit(relax.op.clip(data, 0.0, 6.0))

    def add(self, lhs: relax.Expr, rhs: relax.Expr) -> relax.Var:
        return self.bb.emit(relax.op.add(lhs, rhs))

    def head(self, data: relax.Expr, num_classes: int) -> relax.Var:
        """Global average pool + dense classifier."""
        batch, channels = (int(v) for v in data.ty.shape.values[:2])
        pooled = self.bb.emit(relax.op.nn.adaptive_avg_pool2d(data, (1, 1)))
        flat = self.bb.emit(relax.op.reshape(pooled, (batch, channels)))
        weight = self.rng.standard_normal((num_classes, channels)) / np.sqrt(channels)
        bias = self.rng.normal(0.0, 0.1, num_classes)
        fc_weight, fc_bias = self.param("fc_weight", weight), self.param("fc_bias", bias)
        return self.bb.emit(relax.op.linear(flat, fc_weight, fc_bias))


def _build(
    image_size: int, batch: int, seed: int, body: Callable[[_Builder, relax.Var], relax.Expr]
) -> tuple[tvm.IRModule, Params]:
    """Wrap `body` in a `main(image, *weights)` whose weights are listed in params."""
    if not _is_int(image_size) or image_size < 32:
        raise ConvAddError(
            f"image_size {image_size!r}: the networks downsample 32x; use an integer >= 32"
        )
    if not _is_int(batch) or batch < 1:
        raise ConvAddError(f"batch {batch!r}: use an integer >= 1")
    builder = _Builder(seed)
    image = relax.Var("image", relax.TensorType((batch, 3, image_size, image_size), "float32"))
    with builder.bb.function("main", attrs={"num_input": 1}):
        with builder.bb.dataflow():
            out = builder.bb.emit_output(body(builder, image))
        builder.bb.emit_func_output(out, params=[image, *builder.param_vars])
    return builder.bb.finalize(), builder.params


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
    """MobileNetV2 (10 residual adds of a linear bottleneck; depthwise convs stay unfused)."""
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
}


def get_network(name: str, **kwargs) -> tuple[tvm.IRModule, Params]:
    """Build a built-in network by name: `(mod, params)` with main(image)."""
    if name not in NETWORKS:
        raise ConvAddError(f"unknown network {name!r}: choose one of {sorted(NETWORKS)}")
    return NETWORKS[name](**kwargs)
