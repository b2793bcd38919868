"""PyTorch modules through torch.export (skipped where torch is not installed)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from tvm_convadd import build, build_reference
from tvm_convadd.errors import ConvAddError

torch = pytest.importorskip("torch")

from tvm_convadd.frontends import from_torch  # noqa: E402


class ResidualBlock(torch.nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(channels)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


def test_torch_residual_block_offloads_and_matches_torch():
    torch.manual_seed(0)
    block = ResidualBlock().eval()
    for bn in (block.bn1, block.bn2):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 8, 8, 8)
    mod, params = from_torch(block, (x,))
    net = build(mod, "convadd-sim", params)
    out = net.run(x.numpy())
    assert (net.num_offloaded, net.num_kernels) == (2, 2)  # bn + relu; bn + residual + relu
    with torch.no_grad():
        expected = block(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out, build_reference(mod, params)(x.numpy()), rtol=1e-4, atol=1e-4)


class ConvAdd(torch.nn.Module):
    """conv3x3 (with bias) + the input: one fusable conv + add."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.conv(x)) + x


def test_train_mode_module_is_refused_and_left_as_it_was():
    block = ConvAdd()  # a fresh module is in training mode
    with pytest.raises(ConvAddError, match=r"the module is in training mode: .*call module\.eval"):
        from_torch(block, (torch.randn(1, 4, 8, 8),))
    assert block.training and all(m.training for m in block.modules())  # not switched to eval
    block.eval()
    block.bn.train()
    with pytest.raises(ConvAddError, match=r"submodule 'bn' is in training mode"):
        from_torch(block, (torch.randn(1, 4, 8, 8),))
    assert block.bn.training and not block.training


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_non_float32_module_is_refused_with_the_cast_option_named(dtype):
    block = ConvAdd().eval().to(dtype)
    with pytest.raises(ConvAddError, match=r"parameter 'conv\.weight' is .*cast='float32'"):
        from_torch(block, (torch.randn(1, 4, 8, 8, dtype=dtype),))
    float_block = ConvAdd().eval()
    with pytest.raises(ConvAddError, match=r"input '0' is .*: the accelerator computes in float32"):
        from_torch(float_block, (torch.randn(1, 4, 8, 8, dtype=dtype),))


def test_cast_float32_imports_a_converted_copy():
    torch.manual_seed(0)
    block = ConvAdd().eval().half()
    x = torch.randn(1, 4, 8, 8).half()
    mod, params = from_torch(block, (x,), cast="float32")
    assert block.conv.weight.dtype == torch.float16  # the caller's module is untouched
    assert x.dtype == torch.float16
    assert str(mod["main"].params[0].ty.dtype) == "float32"
    x32 = x.float()
    with torch.no_grad():
        expected = copy.deepcopy(block).float()(x32).numpy()
    out = build_reference(mod, params)(x32.numpy())
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConvAddError, match=r"cast='float16': choose one of \['float32'\]"):
        from_torch(ConvAdd().eval(), (x32,), cast="float16")


def test_example_inputs_must_be_a_tuple_and_the_module_a_module():
    block = ConvAdd().eval()
    with pytest.raises(
        ConvAddError, match=r"example_inputs must be a tuple of tensors, e\.g\. \(x,\)"
    ):
        from_torch(block, torch.randn(1, 4, 8, 8))
    with pytest.raises(ConvAddError, match=r"takes a torch\.nn\.Module, got function"):
        from_torch(lambda x: x, (torch.randn(1, 4, 8, 8),))
