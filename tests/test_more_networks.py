"""EfficientNet-B0 and RegNetX-400MF: against torch versions written here from the papers, with
the built-in network's weights loaded into them by name, and through `from_torch`."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_convadd import build_reference
from tvm_convadd.networks import get_network

torch = pytest.importorskip("torch")
nn = torch.nn

from tvm_convadd.frontends import from_torch  # noqa: E402

SMALL = {"image_size": 32, "width": 0.25, "num_classes": 10}


def divisible(channels: float, divisor: int = 8) -> int:
    """Nearest multiple of `divisor`, never 10% down (torchvision's `_make_divisible`)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class ConvBN(nn.Module):
    """conv (no bias) + batch-norm + optional activation: torchvision's Conv2dNormActivation."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1, act=None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return x if self.act is None else self.act(x)


# EfficientNet-B0, Tan & Le 2019 Table 1: (expansion, channels, repeats, stride, kernel)
B0_STAGES = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
             (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]  # fmt: skip


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        scale = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(scale))))


class MBConv(nn.Module):
    def __init__(self, cin, cout, expansion, stride, kernel, residual) -> None:
        super().__init__()
        hidden = divisible(cin * expansion)
        self.expand = ConvBN(cin, hidden, 1, act=nn.SiLU()) if expansion != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, stride, hidden, act=nn.SiLU())
        self.se = SqueezeExcite(hidden, max(1, cin // 4))
        self.project = ConvBN(hidden, cout, 1)
        self.residual = residual

    def forward(self, x):
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.se(self.depthwise(out)))
        return x + out if self.residual else out


class EfficientNetB0(nn.Module):
    def __init__(self, width: float, num_classes: int) -> None:
        super().__init__()
        self.stem = ConvBN(3, divisible(32 * width), 3, 2, act=nn.SiLU())
        self.stages = nn.ModuleList()
        cin, base_in = divisible(32 * width), 32
        for expansion, channels, repeats, stride, kernel in B0_STAGES:
            blocks = nn.ModuleList()
            for index in range(repeats):
                s = stride if index == 0 else 1
                cout = divisible(channels * width)
                residual = s == 1 and base_in == channels
                blocks.append(MBConv(cin, cout, expansion, s, kernel, residual))
                cin, base_in = cout, channels
            self.stages.append(blocks)
        self.last = ConvBN(cin, 4 * cin, 1, act=nn.SiLU())
        self.fc = nn.Linear(4 * cin, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for blocks in self.stages:
            for block in blocks:
                x = block(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.last(x), 1), 1))


# RegNetX-400MF, Radosavovic et al. 2020 (torchvision's regnet_x_400mf)
REGNET_PARAMS = {"depth": 22, "w_0": 24, "w_a": 24.48, "w_m": 2.54, "group_width": 16}


def regnet_stages(depth, w_0, w_a, w_m, group_width) -> tuple[list[int], list[int]]:
    """The paper's quantised linear widths, run-length encoded into stages (ratio 1)."""
    linear = np.arange(depth) * w_a + w_0
    exponents = np.round(np.log(linear / w_0) / np.log(w_m))
    widths = (np.round(w_0 * np.power(w_m, exponents) / 8) * 8).astype(int).tolist()
    stage_widths = sorted(set(widths))
    depths = [widths.count(w) for w in stage_widths]
    # made divisible by the group width (a group no wider than the block), as torchvision does
    stage_widths = [divisible(w, min(group_width, w)) for w in stage_widths]
    return stage_widths, depths


class ResBottleneck(nn.Module):
    def __init__(self, cin, cout, stride, group_width) -> None:
        super().__init__()
        self.a = ConvBN(cin, cout, 1, act=nn.ReLU())
        self.b = ConvBN(cout, cout, 3, stride, cout // group_width, act=nn.ReLU())
        self.c = ConvBN(cout, cout, 1)
        self.proj = ConvBN(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        shortcut = x if self.proj is None else self.proj(x)
        return torch.relu(self.c(self.b(self.a(x))) + shortcut)


class RegNetX400MF(nn.Module):
    def __init__(self, width: float, num_classes: int) -> None:
        super().__init__()
        stem = max(8, int(32 * width + 4) // 8 * 8)
        self.stem = ConvBN(3, stem, 3, 2, act=nn.ReLU())
        self.stages = nn.ModuleList()
        cin, group = stem, REGNET_PARAMS["group_width"]
        for channels, depth in zip(*regnet_stages(**REGNET_PARAMS)):
            cout = max(group, int(channels * width / group + 0.5) * group)
            blocks = nn.ModuleList()
            for index in range(depth):
                blocks.append(ResBottleneck(cin, cout, 2 if index == 0 else 1, group))
                cin = cout
            self.stages.append(blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for blocks in self.stages:
            for block in blocks:
                x = block(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


BN_FIELDS = {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}
REGNET_CONVS = {"conv1": "a", "conv2": "b", "conv3": "c", "down": "proj"}
# Relax layer name -> torch module path, per network.
MODULE_PATHS = {
    "efficientnet_b0": [
        (r"block(\d+)_(\d+)_(expand|depthwise|project)", r"stages.\1.\2.\3"),
        (r"block(\d+)_(\d+)_se_(reduce|expand)", r"stages.\1.\2.se.\3"),
        (r"stem|last|fc", r"\g<0>"),
    ],
    "regnetx_400mf": [
        (
            r"stage(\d+)_(\d+)_(conv1|conv2|conv3|down)",
            lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.{REGNET_CONVS[m[3]]}",
        ),
        (r"stem|fc", r"\g<0>"),
    ],
}
TORCH_MODELS = {"efficientnet_b0": EfficientNetB0, "regnetx_400mf": RegNetX400MF}


def torch_name(network: str, model, name: str) -> str:
    """The state_dict key of a Relax parameter: `<layer>_<field>` -> `<module>.<tensor>`."""
    layer, field = re.fullmatch(r"(.+?)_(weight|bias|bn_\w+)", name).groups()
    path = next(
        re.sub(pattern, replacement, layer)
        for pattern, replacement in MODULE_PATHS[network]
        if re.fullmatch(pattern, layer)
    )
    if not isinstance(model.get_submodule(path), ConvBN):
        return f"{path}.{field}"
    return f"{path}.conv.weight" if field == "weight" else f"{path}.bn.{BN_FIELDS[field[3:]]}"


def load_params(network: str, model, params) -> None:
    """Copy every Relax parameter into its torch tensor; both sides must be covered exactly."""
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    mapped = {torch_name(network, model, name): value for name, value in params.items()}
    assert sorted(mapped) == sorted(state)
    with torch.no_grad():
        for key, value in mapped.items():
            state[key].copy_(torch.from_numpy(value).reshape(state[key].shape))


@pytest.fixture(scope="module", autouse=True)
def torch_single_thread():
    """Torch's worker threads and TVM's spinning thread pool fight over the cores: a torch
    forward after a TVM run takes ~100x longer unless torch keeps to one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(TORCH_MODELS))
def small_network(request):
    """(torch model holding the built-in network's params, in eval mode; image; the built-in
    network's output on it, built on llvm)."""
    name = request.param
    mod, params = get_network(name, **SMALL, batch=2)
    model = TORCH_MODELS[name](SMALL["width"], SMALL["num_classes"]).eval()
    load_params(name, model, params)
    image = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype("float32")
    return model, image, build_reference(mod, params)(image)


def tolerance(expected: np.ndarray) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-5 * float(np.abs(expected).max())}


def test_builtin_matches_torch_from_the_paper(small_network):
    model, image, out = small_network
    with torch.no_grad():  # the reference in float64: what is left is float32 rounding
        expected = copy.deepcopy(model).double()(torch.from_numpy(image).double()).numpy()
    assert out.shape == (2, SMALL["num_classes"]) and 0.05 < expected.std() < 20
    assert np.abs(expected[0] - expected[1]).max() > 0.1 * expected.std()  # the image matters
    np.testing.assert_allclose(out, expected, **tolerance(expected))


def test_torch_import_matches_builtin(small_network):
    model, image, expected = small_network
    imported, _ = from_torch(model, (torch.from_numpy(image),))
    np.testing.assert_allclose(build_reference(imported)(image), expected, **tolerance(expected))


def test_regnet_stages_follow_from_the_published_parameters():
    assert regnet_stages(**REGNET_PARAMS) == ([32, 64, 160, 400], [1, 2, 7, 12])


def conv_calls(mod: tvm.IRModule) -> list[relax.Call]:
    return [
        binding.value
        for block in mod["main"].body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call)
        and isinstance(binding.value.op, tvm.ir.Op)
        and str(binding.value.op.name) == "relax.nn.conv2d"
    ]


def macs(mod: tvm.IRModule, params) -> int:
    """Multiply-accumulates of the convs and the classifier."""
    total = params["fc_weight"].size
    for conv in conv_calls(mod):
        out = math.prod(int(d) for d in conv.ty.shape.values)
        weight = conv.args[1].ty.shape.values
        total += out * math.prod(int(d) for d in weight[1:])
    return total


# name -> (conv2d, grouped conv2d, conv2d with batch-norm, MACs at 224 in millions)
FULL_SIZE = {"efficientnet_b0": (81, 16, 49, 386), "regnetx_400mf": (71, 22, 71, 414)}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_conv_counts_and_macs_at_224(name):
    mod, params = get_network(name)
    convs = conv_calls(mod)
    grouped = [conv for conv in convs if int(conv.attrs.groups) > 1]
    with_bn = sum(name.endswith("_bn_gamma") for name in params)
    assert (len(convs), len(grouped), with_bn) == FULL_SIZE[name][:3]
    assert round(macs(mod, params) / 1e6) == FULL_SIZE[name][3]
