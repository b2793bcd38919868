"""Graph clean-up, partitioning and the reading of fused functions, on whole networks."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax

from tvm_convadd.errors import ConvAddError, UnsupportedWorkloadError
from tvm_convadd.networks import mobilenet_v2, resnet18, resnet50
from tvm_convadd.partition import (
    ConvDecision,
    PartitionConvAdd,
    describe,
    explain,
    format_explanation,
    fused_calls,
    fused_functions,
    prepare,
)
from tvm_convadd.reference import convadd_reference

SMALL = {"image_size": 32, "width": 0.125, "num_classes": 10}


def ops_in(mod: tvm.IRModule, func_name: str = "main") -> list[str]:
    return [
        str(binding.value.op.name)
        for block in mod[func_name].body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call) and isinstance(binding.value.op, tvm.ir.Op)
    ]


def run(mod: tvm.IRModule, image: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(image)).numpy()


@pytest.fixture(scope="module")
def small_resnet50():
    mod, params = resnet50(**SMALL)
    return mod, params, prepare(mod, params)


@pytest.fixture(scope="module")
def prepared_networks():
    """resnet18 and mobilenet_v2, small, prepared once (FoldConstant is the slow step)."""
    return {network.__name__: prepare(*network(**SMALL)) for network in (resnet18, mobilenet_v2)}


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype("float32")


@pytest.fixture
def numpy_codegen():
    """A stand-in `relax.ext.convadd` that runs each fused function with the numpy reference.

    It places the VM's arguments by `describe(...).roles`, so wrong roles give wrong numbers.
    """
    name = "relax.ext.convadd"
    previous = tvm_ffi.get_global_func(name, allow_missing=True)
    calls = []

    def make_kernel(fused):
        def kernel(*args):
            *inputs, out = args
            ordered = [inputs[i].numpy() for i in fused.operand_indices()]
            out.copyfrom(convadd_reference(fused.workload, ordered))
            calls.append(fused.symbol)

        return kernel

    def codegen(functions, options, constant_names):
        for func in functions:
            fused = describe(func)
            tvm_ffi.register_global_func(fused.symbol, make_kernel(fused), override=True)
        return []

    tvm_ffi.register_global_func(name, codegen, override=True)
    yield calls
    if previous is None:
        tvm_ffi.remove_global_func(name)
    else:
        tvm_ffi.register_global_func(name, previous, override=True)


def test_prepare_folds_batch_norm_and_keeps_the_numbers(small_resnet50, image):
    mod, params, prepared = small_resnet50
    assert "relax.nn.batch_norm" in ops_in(mod)
    assert "relax.nn.batch_norm" not in ops_in(prepared)
    assert len(prepared["main"].params) == 1
    bound = relax.transform.BindParams("main", params)(mod)
    expected = run(bound, image)
    np.testing.assert_allclose(run(prepared, image), expected, rtol=1e-4, atol=1e-4)


def test_prepare_names_unbound_weights():
    mod, params = resnet18(**SMALL)
    with pytest.raises(ConvAddError, match=r"stem_weight.*and 96 more.*params=\{name: array\}"):
        prepare(mod, None)
    partial = {k: v for k, v in params.items() if k != "layer1_0_conv1_weight"}
    with pytest.raises(ConvAddError, match=r"\['layer1_0_conv1_weight'\]"):
        prepare(mod, partial)
    with pytest.raises(ConvAddError, match="not parameters of main"):
        prepare(mod, {**params, "no_such_weight": np.zeros(1, "float32")})


def test_partition_is_a_module_pass():
    assert isinstance(PartitionConvAdd(), tvm.transform.ModulePass)
    assert PartitionConvAdd().info.name == "PartitionConvAdd"


def test_resnet50_fuses_sixteen_residual_adds(small_resnet50):
    partitioned = PartitionConvAdd()(small_resnet50[2])
    assert len(fused_calls(partitioned)) == 16
    for name, fused in fused_functions(partitioned).items():
        func = partitioned[name]
        assert func.attrs["Codegen"] == "convadd"
        assert str(func.attrs["global_symbol"]) == fused.symbol == name
        assert fused.roles == ("data", "weight", "bias", "residual")
        assert fused.workload.bias and fused.workload.relu


def test_full_size_resnet50_fuses_sixteen():
    mod, params = resnet50()
    partitioned = PartitionConvAdd()(prepare(mod, params))
    calls = fused_calls(partitioned)
    assert len(calls) == 16
    workloads = {fused.workload.out_shape for fused in fused_functions(partitioned).values()}
    assert workloads == {(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7)}


def test_partitioned_resnet50_computes_the_same_on_llvm(small_resnet50, image):
    """Composites (no Codegen) run on llvm: partitioning alone must not change the numbers."""
    prepared = small_resnet50[2]
    expected = run(prepared, image)
    out = run(PartitionConvAdd(offload=False)(prepared), image)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * scale)


def test_offloaded_resnet50_with_numpy_kernels_matches(small_resnet50, image, numpy_codegen):
    """Through RunCodegen and the VM: each fused call gets its arguments in `roles` order."""
    prepared = small_resnet50[2]
    expected = run(prepared, image)
    offloaded = relax.transform.RunCodegen()(PartitionConvAdd()(prepared))
    out = run(offloaded, image)
    assert len(numpy_codegen) == 16
    scale = np.abs(expected).max()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize(
    ("network", "adds", "convs"),
    [(resnet18, 8, 20), (mobilenet_v2, 10, 52)],
    ids=["resnet18", "mobilenet_v2"],
)
def test_fused_add_count_and_explanation(network, adds, convs, prepared_networks):
    prepared = prepared_networks[network.__name__]
    partitioned = PartitionConvAdd()(prepared)
    assert len(fused_calls(partitioned)) == adds
    decisions = explain(prepared)
    assert len(decisions) == convs
    assert sum(decision.fused for decision in decisions) == adds
    table = format_explanation(decisions)
    assert table.splitlines()[0].split() == ["conv", "shape", "decision"]
    assert table.endswith(f"{adds} of {convs} conv2d fused")


def test_mobilenet_depthwise_convs_are_explained(prepared_networks):
    decisions = explain(prepared_networks["mobilenet_v2"])
    depthwise = [d for d in decisions if "groups=" in d.description]
    assert len(depthwise) == 17
    for decision in depthwise:
        assert not decision.fused
        assert "(the accelerator takes groups=1)" in decision.reason
    # the MobileNet projection adds have no relu after them
    assert {d.reason for d in decisions if d.fused} == {"fused: conv2d+bias+residual"}


def test_resnet18_projection_shortcut_is_explained(prepared_networks):
    decisions = explain(prepared_networks["resnet18"])
    shortcut = [d for d in decisions if d.description.startswith("conv1x1/s2")]
    assert len(shortcut) == 3
    assert all("it is that conv's residual" in d.reason for d in shortcut)
    assert isinstance(decisions[0], ConvDecision)
    assert decisions[0].reason == "not fused: no residual add follows (only a per-channel bias)"


def test_describe_refuses_a_function_without_conv(small_resnet50):
    with pytest.raises(UnsupportedWorkloadError, match=r"function main: expected a conv2d"):
        describe(small_resnet50[2]["main"], "main")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 4, 4), "float32"))
    with bb.function("add_only", [x]):
        bb.emit_func_output(bb.emit(relax.op.add(x, x)))
    with pytest.raises(UnsupportedWorkloadError, match=r"add_only.*found 0 conv2d"):
        describe(bb.finalize()["add_only"])
