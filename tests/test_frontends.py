"""PyTorch modules through torch.export (skipped where torch is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

from tvm_convadd import build, build_reference

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
    assert net.num_offloaded == 1
    with torch.no_grad():
        expected = block(x).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out, build_reference(mod, params)(x.numpy()), rtol=1e-4, atol=1e-4)
