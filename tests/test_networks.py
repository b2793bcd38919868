"""The built-in networks: structure, determinism, and sane numbers on llvm."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_convadd.errors import ConvAddError
from tvm_convadd.networks import NETWORKS, bottleneck_block, get_network, resnet50

SMALL = {"image_size": 32, "width": 0.125, "num_classes": 10}
# name -> (conv2d count, batch-norms, residual adds)
STRUCTURE = {
    "resnet50": (53, 53, 16),
    "resnet18": (20, 20, 8),
    "mobilenet_v2": (52, 52, 10),
    "efficientnet_b0": (81, 49, 9),  # the 32 squeeze-excitation 1x1s have a bias, no batch-norm
    "regnetx_400mf": (71, 71, 22),
}


def calls(mod: tvm.IRModule) -> list[relax.Call]:
    return [
        binding.value
        for block in mod["main"].body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call) and isinstance(binding.value.op, tvm.ir.Op)
    ]


def op_count(mod: tvm.IRModule, op_name: str) -> int:
    return sum(str(call.op.name) == op_name for call in calls(mod))


def residual_adds(mod: tvm.IRModule) -> int:
    """Adds of two activations (both operands dataflow values, not parameters)."""
    params = mod["main"].params
    return sum(
        str(call.op.name) == "relax.add"
        and not any(arg.same_as(param) for arg in call.args for param in params)
        for call in calls(mod)
    )


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_structure_and_params(name):
    mod, params = get_network(name, **SMALL)
    main = mod["main"]
    assert int(main.attrs["num_input"]) == 1
    assert [p.name for p in main.params[1:]] == list(params)
    for param in main.params[1:]:
        shape = tuple(int(d.value) for d in param.ty.shape.values)
        assert params[param.name].shape == shape and params[param.name].dtype == np.float32
    convs, norms, adds = STRUCTURE[name]
    assert op_count(mod, "relax.nn.conv2d") == convs
    assert op_count(mod, "relax.nn.batch_norm") == norms
    assert residual_adds(mod) == adds
    assert all(not call.attrs.training for call in calls(mod) if "batch_norm" in str(call.op.name))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_weights_are_deterministic_and_seeded(name):
    _, first = get_network(name, **SMALL)
    _, again = get_network(name, **SMALL)
    _, other = get_network(name, **SMALL, seed=1)
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert not all(np.array_equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_runs_on_llvm_with_order_one_logits(name):
    """He init and matched batch-norm statistics keep the logits O(1) through the whole depth."""
    mod, params = get_network(name, **SMALL, batch=2)
    bound = relax.transform.BindParams("main", params)(mod)
    vm = relax.VirtualMachine(tvm.compile(bound, target="llvm"), tvm.cpu())
    image = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype("float32")
    logits = vm["main"](tvm.runtime.tensor(image)).numpy()
    assert logits.shape == (2, 10)
    assert np.isfinite(logits).all()
    assert 0.05 < logits.std() < 20


def test_width_scales_channels_in_multiples_of_eight():
    full, _ = resnet50()
    small, _ = resnet50(width=0.125)
    full_channels = [int(c.ty.shape.values[1]) for c in calls(full) if "conv2d" in str(c.op.name)]
    small_channels = [int(c.ty.shape.values[1]) for c in calls(small) if "conv2d" in str(c.op.name)]
    assert max(full_channels) == 2048 and max(small_channels) == 256
    assert all(c % 8 == 0 for c in small_channels)


def test_bottleneck_block_has_one_identity_shortcut():
    mod, _ = bottleneck_block()
    assert op_count(mod, "relax.nn.conv2d") == 3 and op_count(mod, "relax.add") == 1
    with pytest.raises(ConvAddError, match="in_channels = 64"):
        bottleneck_block(in_channels=32, planes=16)


def test_unknown_network_names_the_choices():
    choices = r"\['efficientnet_b0', 'mobilenet_v2', 'regnetx_400mf', 'resnet18', 'resnet50'\]"
    with pytest.raises(ConvAddError, match=r"'vgg16'.*" + choices):
        get_network("vgg16")


def test_too_small_image_is_refused():
    with pytest.raises(ConvAddError, match="image_size 16"):
        get_network("resnet18", image_size=16)
