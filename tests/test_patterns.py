"""The conv2d [+ bias] + add [+ relu] patterns: what fuses, what does not and why."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_convadd.partition import PartitionConvAdd, explain, fused_functions
from tvm_convadd.patterns import VARIANTS, pattern_name, pattern_table
from tvm_convadd.reference import convadd_reference
from tvm_convadd.schedules.workload import Workload


@dataclass(frozen=True)
class Graph:
    """A one-conv Relax graph to build: conv2d [+ bias] [+ residual] [+ relu]."""

    data_shape: tuple = (1, 8, 10, 10)
    out_channels: int = 8
    kernel: int = 3
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (1, 1, 1, 1)
    bias: bool = False
    relu: bool = False
    residual: bool = True
    residual_first: bool = False
    residual_shape: tuple | None = None
    constant_weight: bool = True
    groups: int = 1
    dilation: int = 1
    layout: str = "NCHW"
    dtype: str = "float32"

    @property
    def workload(self) -> Workload:
        batch, channels, height, width = self.data_shape
        return Workload(
            batch, channels, height, width, self.out_channels, self.kernel, self.kernel,
            self.stride, self.padding, self.dtype, self.bias, self.relu,
        )  # fmt: skip


def build_graph(graph: Graph, seed: int = 0) -> tvm.IRModule:
    """main(data, [weight], residual) built with BlockBuilder; weights constant unless asked."""
    rng = np.random.default_rng(seed)
    channels = graph.data_shape[1] if graph.layout == "NCHW" else graph.data_shape[3]
    k, kernel = graph.out_channels, graph.kernel
    oihw = (k, channels // graph.groups, kernel, kernel)
    weight_shape = oihw if graph.layout == "NCHW" else (kernel, kernel, channels // graph.groups, k)
    weight_value = (rng.standard_normal(weight_shape) / np.sqrt(channels * kernel**2)).astype(
        graph.dtype
    )
    data = relax.Var("data", relax.TensorType(graph.data_shape, graph.dtype))
    params = [data]
    if graph.constant_weight:
        weight = relax.const(weight_value)
    else:
        weight = relax.Var("weight", relax.TensorType(weight_shape, graph.dtype))
        params.append(weight)
    bb = relax.BlockBuilder()
    with bb.function("main"):
        with bb.dataflow():
            out = bb.emit(
                relax.op.nn.conv2d(
                    data,
                    weight,
                    strides=graph.stride,
                    padding=graph.padding,
                    dilation=graph.dilation,
                    groups=graph.groups,
                    data_layout=graph.layout,
                    kernel_layout="OIHW" if graph.layout == "NCHW" else "HWIO",
                )
            )
            if graph.bias:
                bias = rng.standard_normal((1, k, 1, 1)).astype(graph.dtype)
                out = bb.emit(relax.op.add(out, relax.const(bias)))
            if graph.residual:
                residual_shape = graph.residual_shape or out.ty.shape
                residual = relax.Var("residual", relax.TensorType(residual_shape, graph.dtype))
                params.append(residual)
                operands = (residual, out) if graph.residual_first else (out, residual)
                out = bb.emit(relax.op.add(*operands))
            if graph.relu:
                out = bb.emit(relax.op.nn.relu(out))
            out = bb.emit_output(out)
        bb.emit_func_output(out, params=params)
    return bb.finalize()


def constants_of(mod: tvm.IRModule) -> list[np.ndarray]:
    """The constant weight (and bias) of a graph from `build_graph`, in order of use."""
    found = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            for arg in getattr(binding.value, "args", []):
                if isinstance(arg, tvm.ir.expr.Constant):
                    found.append(arg.value.numpy())
    return found


def run_llvm(mod: tvm.IRModule, inputs: list[np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()


EPILOGUES = [
    pytest.param(bias, relu, first, id=f"{pattern_name(bias, relu)}-{'rc' if first else 'cr'}")
    for bias, relu, first in VARIANTS
]


def test_table_is_longest_first_with_both_operand_orders():
    names = [pattern.name for pattern in pattern_table()]
    expected = ["conv2d_bias_add_relu", "conv2d_bias_add", "conv2d_add_relu", "conv2d_add"]
    assert names == [f"convadd.{name}" for name in expected for _ in range(2)]


@pytest.mark.parametrize(("bias", "relu", "residual_first"), EPILOGUES)
def test_each_variant_fuses_and_describes(bias, relu, residual_first):
    graph = Graph(bias=bias, relu=relu, residual_first=residual_first)
    fused = fused_functions(PartitionConvAdd()(build_graph(graph)))
    assert len(fused) == 1
    (name, found), *_ = fused.items()
    assert found.workload == graph.workload
    assert found.roles == ("data", "weight", *(("bias",) if bias else ()), "residual")
    assert found.symbol == name
    assert found.bound == ()


@pytest.mark.parametrize(
    "graph",
    [
        Graph(data_shape=(2, 4, 9, 7), out_channels=16, kernel=3, stride=(2, 2), bias=True),
        Graph(data_shape=(1, 8, 8, 8), kernel=1, padding=(0, 0, 0, 0), relu=True),
        Graph(data_shape=(1, 3, 11, 11), kernel=5, padding=(2, 1, 2, 1), bias=True, relu=True),
        Graph(kernel=3, stride=(1, 2), padding=(0, 1, 1, 0), residual_first=True),
    ],
    ids=["stride2-batch2", "1x1", "5x5-asym-pad", "stride1x2-rc"],
)
def test_describe_reads_shapes_stride_padding(graph):
    (found,) = fused_functions(PartitionConvAdd()(build_graph(graph))).values()
    assert found.workload == graph.workload


def test_weight_parameter_keeps_its_role():
    """A weight left as a parameter of main is a parameter of the fused function too."""
    graph = Graph(bias=True, relu=True, constant_weight=False)
    (found,) = fused_functions(PartitionConvAdd()(build_graph(graph))).values()
    assert found.roles == ("data", "weight", "bias", "residual")


def test_bound_constants_stay_inside_and_leave_the_roles():
    """With bind_constants=True, weight and bias are not parameters: roles shrink, bound says so."""
    mod = build_graph(Graph(bias=True, relu=True))
    fused = relax.transform.FuseOpsByPattern(
        pattern_table(), bind_constants=True, annotate_codegen=True
    )(mod)
    (found,) = fused_functions(fused).values()
    assert found.roles == ("data", "residual")
    assert found.bound == ("weight", "bias")
    assert found.operand_indices() == (0, 1)


@pytest.mark.parametrize(("bias", "relu", "residual_first"), EPILOGUES)
def test_fused_graph_computes_the_reference(bias, relu, residual_first):
    """The composites (offload=False) run on llvm and match numpy, fed in `roles` order."""
    graph = Graph(data_shape=(1, 4, 7, 6), out_channels=8, stride=(2, 1), bias=bias, relu=relu)
    graph = replace(graph, residual_first=residual_first)
    mod = build_graph(graph)
    rng = np.random.default_rng(1)
    data = rng.standard_normal(graph.data_shape).astype("float32")
    residual = rng.standard_normal(graph.workload.out_shape).astype("float32")
    expected = convadd_reference(graph.workload, [data, *constants_of(mod), residual])
    partitioned = PartitionConvAdd(offload=False)(mod)
    assert len(fused_functions(partitioned)) == 1
    np.testing.assert_allclose(run_llvm(partitioned, [data, residual]), expected, atol=1e-5)


DYNAMIC_BATCH = (tvm.tirx.Var("n", "int64"), 8, 10, 10)


@pytest.mark.parametrize(
    ("graph", "reason"),
    [
        (Graph(data_shape=(1, 10, 10, 8), layout="NHWC"), "layout NHWC/HWIO"),
        (Graph(groups=2), "groups=2 (the accelerator takes groups=1)"),
        (Graph(dilation=2, padding=(2, 2, 2, 2)), "dilation 2"),
        (Graph(dtype="float16"), "data dtype float16"),
        (Graph(data_shape=DYNAMIC_BATCH), "dynamic data shape (n, 8, 10, 10)"),
        (Graph(residual=False, relu=True), "no add follows"),
        (Graph(residual=False, bias=True), "no residual add follows (only a per-channel bias)"),
        (Graph(residual_shape=(1, 8, 1, 1)), "residual shape (1, 8, 1, 1) differs"),
        (Graph(residual_shape=(1, 8, 10, 1), bias=True), "residual shape (1, 8, 10, 1) differs"),
    ],
    ids=["nhwc", "groups", "dilation", "float16", "dynamic", "no-add", "bias-only", "bcast", "bc2"],
)
def test_unsupported_conv_stays_unfused_and_is_explained(graph, reason):
    mod = build_graph(graph)
    assert fused_functions(PartitionConvAdd()(mod)) == {}
    (decision,) = explain(mod)
    assert not decision.fused
    assert decision.reason.startswith("not fused: ")
    assert reason in decision.reason


def test_residual_equal_to_conv_input_is_refused():
    """FuseOpsByPattern would merge the two into one parameter: refuse rather than guess."""
    bb = relax.BlockBuilder()
    data = relax.Var("data", relax.TensorType((1, 8, 6, 6), "float32"))
    weight = relax.const(np.eye(8, dtype="float32").reshape(8, 8, 1, 1))
    with bb.function("main", [data]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(data, weight))
            out = bb.emit_output(bb.emit(relax.op.add(conv, data)))
        bb.emit_func_output(out)
    mod = bb.finalize()
    assert fused_functions(PartitionConvAdd()(mod)) == {}
    (decision,) = explain(mod)
    assert "residual is the conv's own input" in decision.reason


def test_conv_output_used_elsewhere_is_not_fused():
    bb = relax.BlockBuilder()
    data = relax.Var("data", relax.TensorType((1, 8, 6, 6), "float32"))
    residual = relax.Var("residual", relax.TensorType((1, 8, 6, 6), "float32"))
    weight = relax.const(np.ones((8, 8, 3, 3), "float32"))
    with bb.function("main", [data, residual]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(data, weight, padding=1))
            added = bb.emit(relax.op.add(conv, residual))
            out = bb.emit_output(bb.emit(relax.op.multiply(added, conv)))
        bb.emit_func_output(out)
    mod = bb.finalize()
    assert fused_functions(PartitionConvAdd()(mod)) == {}
    (decision,) = explain(mod)
    assert "also feeds other ops" in decision.reason


def test_describe_matches_explain_for_each_variant():
    for bias, relu, first in VARIANTS:
        mod = build_graph(Graph(bias=bias, relu=relu, residual_first=first))
        (decision,) = explain(mod)
        label = "+".join(["conv2d", *["bias"] * bias, "residual", *["relu"] * relu])
        assert decision.fused and decision.reason == f"fused: {label}"
        (found,) = fused_functions(PartitionConvAdd()(mod)).values()
        assert found.workload.epilogue == label.removeprefix("conv2d+")
