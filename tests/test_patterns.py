"""The planned chains on one-conv graphs: each epilogue op alone and in chains, either operand
order, where a chain stops and why, and the numbers of every fused graph on llvm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_convadd.errors import ConvAddError
from tvm_convadd.partition import (
    PartitionConvAdd,
    clip_scalar_bounds,
    describe,
    explain,
    fused_functions,
)
from tvm_convadd.patterns import pattern_name, pattern_table, plan_chains
from tvm_convadd.reference import convadd_reference
from tvm_convadd.schedules.workload import (
    BIAS,
    RELU,
    RESIDUAL,
    SCALE,
    EpilogueOp,
    Workload,
)


def const_op(op: str, value: float) -> EpilogueOp:
    return EpilogueOp(op, "const", value)


# A step of a test graph: "name[:arg...][:rev]" ("rev": the operand comes first).
STEP_OPS = {
    "bias": (BIAS,),
    "residual": (RESIDUAL,),
    "scale": (SCALE,),
    "relu": (RELU,),
    "relu6": (RELU, const_op("min", 6.0)),
}


def step_ops(spec: str) -> tuple[EpilogueOp, ...]:
    name, *args = [part for part in spec.split(":") if part != "rev"]
    if name == "clip":
        return (const_op("max", float(args[0])), const_op("min", float(args[1])))
    if name in ("max", "min"):
        return (const_op(name, float(args[0])),)
    return STEP_OPS[name]


@dataclass(frozen=True)
class Graph:
    """A one-conv Relax graph: conv2d, then `epilogue` steps (see `step_ops`)."""

    data_shape: tuple = (1, 8, 10, 10)
    out_channels: int = 8
    kernel: int = 3
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (1, 1, 1, 1)
    epilogue: tuple[str, ...] = ()
    constant_weight: bool = True
    groups: int = 1
    dilation: int = 1
    layout: str = "NCHW"
    dtype: str = "float32"

    @property
    def workload(self) -> Workload:
        batch, channels, height, width = self.data_shape
        ops = tuple(op for spec in self.epilogue for op in step_ops(spec))
        return Workload(
            batch, channels, height, width, self.out_channels, self.kernel, self.kernel,
            self.stride, self.padding, self.dtype, self.groups, ops,
        )  # fmt: skip


def build_graph(graph: Graph, seed: int = 0) -> tvm.IRModule:
    """main(data, [weight], residual, residual_2...); weight, bias and scale constant."""
    rng = np.random.default_rng(seed)
    channels = graph.data_shape[1] if graph.layout == "NCHW" else graph.data_shape[3]
    k, kernel = graph.out_channels, graph.kernel
    oihw = (k, channels // graph.groups, kernel, kernel)
    weight_shape = oihw if graph.layout == "NCHW" else (kernel, kernel, channels // graph.groups, k)
    fan_in = channels // graph.groups * kernel**2
    weight_value = (rng.standard_normal(weight_shape) / np.sqrt(fan_in)).astype(graph.dtype)
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
            for spec in graph.epilogue:
                out = bb.emit(_step(spec, out, params, rng, graph.dtype))
            out = bb.emit_output(out)
        bb.emit_func_output(out, params=params)
    return bb.finalize()


def _step(spec: str, out: relax.Var, params: list, rng, dtype: str) -> relax.Expr:
    name, *args = [part for part in spec.split(":") if part != "rev"]
    channel = (1, int(out.ty.shape[1]), 1, 1)
    if name == "relu":
        return relax.op.nn.relu(out)
    if name == "relu6":
        return relax.op.nn.relu6(out)
    if name == "clip":
        return relax.op.clip(out, float(args[0]), float(args[1]))
    if name in ("max", "min"):
        operand = relax.const(float(args[0]), dtype)
        op = relax.op.maximum if name == "max" else relax.op.minimum
    elif name == "residual":
        count = sum(p.name.startswith("residual") for p in params)
        operand = relax.Var(
            "residual" if count == 0 else f"residual_{count + 1}",
            relax.TensorType(out.ty.shape, dtype),
        )
        params.append(operand)
        op = relax.op.add
    else:
        value = rng.uniform(0.5, 1.5, channel) if name == "scale" else rng.standard_normal(channel)
        operand = relax.const(value.astype(dtype))
        op = relax.op.multiply if name == "scale" else relax.op.add
    return op(operand, out) if spec.endswith(":rev") else op(out, operand)


def llvm_run(mod: tvm.IRModule, inputs: list[np.ndarray]) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(x) for x in inputs]).numpy()


def random_inputs(mod: tvm.IRModule, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal([int(d) for d in param.ty.shape]).astype(str(param.ty.dtype))
        for param in mod["main"].params
    ]


def fused_arguments(partitioned: tvm.IRModule, inputs: list[np.ndarray]):
    """Per fused call of main (offload=False): its FusedConvAdd and its arguments as numpy."""
    values = dict(zip(partitioned["main"].params, inputs))
    found = []
    for block in partitioned["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.GlobalVar):
                continue
            fused = describe(partitioned[call.op], call.op.name_hint)
            args = [
                arg.value.numpy() if isinstance(arg, tvm.ir.expr.Constant) else values[arg]
                for arg in call.args
            ]
            found.append((fused, args))
    return found


def check_numbers(graph: Graph) -> None:
    """The composites (offload=False) compute what the graph does, and `roles` feed numpy."""
    mod = build_graph(graph)
    inputs = random_inputs(mod)
    expected = llvm_run(mod, inputs)
    partitioned = PartitionConvAdd(offload=False)(mod)
    np.testing.assert_allclose(llvm_run(partitioned, inputs), expected, rtol=1e-5, atol=1e-5)
    ((fused, args),) = fused_arguments(partitioned, inputs)
    ordered = [args[i] for i in fused.operand_indices()]
    np.testing.assert_allclose(
        convadd_reference(fused.workload, ordered), expected, rtol=1e-5, atol=1e-5
    )


def the_fused(mod: tvm.IRModule):
    fused = fused_functions(PartitionConvAdd()(mod))
    assert len(fused) == 1, fused
    ((name, found),) = fused.items()
    return name, found


SINGLE = [
    "bias", "bias:rev", "residual", "residual:rev", "scale", "scale:rev", "relu", "relu6",
    "clip:-0.5:1.5", "max:0.25", "max:0.25:rev", "min:-0.5", "min:0.5:rev",
]  # fmt: skip
CHAINS = [
    (),
    ("bias", "relu"),
    ("bias", "residual", "relu"),
    ("bias", "relu", "residual"),
    ("residual:rev", "bias:rev", "relu6"),
    ("scale", "bias", "relu6"),
    ("bias", "residual", "residual:rev", "bias"),
    ("max:0", "min:6", "scale:rev"),
    ("relu", "clip:0.1:0.9", "residual"),
]


@pytest.mark.parametrize(
    "chain", [(step,) for step in SINGLE] + CHAINS, ids=lambda c: "+".join(c) or "bare"
)
def test_chain_fuses_describes_and_computes(chain):
    graph = Graph(data_shape=(1, 4, 7, 6), stride=(2, 1), epilogue=chain)
    mod = build_graph(graph)
    name, found = the_fused(mod)
    assert found.workload == graph.workload
    assert found.roles == graph.workload.input_names
    assert found.symbol == name and found.bound == ()
    (decision,) = explain(mod)
    label = graph.workload.epilogue_label
    assert decision.reason == "fused: conv2d" + ("" if label == "none" else f"+{label}")
    check_numbers(graph)


def test_a_second_operand_of_a_kind_gets_a_numbered_role():
    graph = Graph(epilogue=("bias", "residual", "residual:rev", "bias"))
    _, found = the_fused(build_graph(graph))
    assert found.roles == ("data", "weight", "bias", "residual", "residual_2", "bias_2")


@pytest.mark.parametrize(
    "graph",
    [
        Graph(
            data_shape=(2, 4, 9, 7), out_channels=16, kernel=3, stride=(2, 2), epilogue=("bias",)
        ),
        Graph(data_shape=(1, 8, 8, 8), kernel=1, padding=(0, 0, 0, 0), epilogue=("relu",)),
        Graph(data_shape=(1, 3, 11, 11), kernel=5, padding=(2, 1, 2, 1), epilogue=("bias", "relu")),
        Graph(kernel=3, stride=(1, 2), padding=(0, 1, 1, 0), epilogue=("residual:rev",)),
        Graph(data_shape=(1, 8, 9, 9), groups=2, epilogue=("bias", "relu")),
        Graph(data_shape=(1, 8, 9, 9), out_channels=16, groups=4, epilogue=("residual",)),
        Graph(data_shape=(1, 8, 9, 9), groups=8, stride=(2, 2), epilogue=("bias", "relu6")),
        Graph(data_shape=(1, 8, 9, 9), out_channels=16, groups=8, epilogue=("scale", "bias")),
    ],
    ids=["stride2-batch2", "1x1", "5x5-asym-pad", "stride1x2", "g2", "g4-wide", "dw", "dw-x2"],
)
def test_shapes_groups_and_numbers(graph):
    _, found = the_fused(build_graph(graph))
    assert found.workload == graph.workload
    check_numbers(graph)


def test_weight_parameter_keeps_its_role():
    """A weight left as a parameter of main is a parameter of the fused function too."""
    graph = Graph(epilogue=("bias", "residual", "relu"), constant_weight=False)
    _, found = the_fused(build_graph(graph))
    assert found.roles == ("data", "weight", "bias", "residual")
    check_numbers(graph)


def test_bound_constants_stay_inside_and_leave_the_roles():
    """With bind_constants=True, weight and bias are not parameters: roles shrink, bound says so."""
    mod = build_graph(Graph(epilogue=("bias", "residual", "relu")))
    fused = relax.transform.FuseOpsByPattern(
        pattern_table(mod), bind_constants=True, annotate_codegen=True
    )(mod)
    (found,) = fused_functions(fused).values()
    assert found.roles == ("data", "residual")
    assert found.bound == ("weight", "bias")
    assert found.operand_indices() == (0, 1)


def test_scalar_bounds_become_clips_inside_the_function():
    """maximum/minimum with a constant: a lifted constant would be a parameter without a role."""
    mod = build_graph(Graph(epilogue=("max:0.5", "min:2:rev")))
    with pytest.raises(ConvAddError, match=r"run partition\.clip_scalar_bounds"):
        pattern_table(mod)
    canonical = clip_scalar_bounds(mod)
    bindings = canonical["main"].body.blocks[0].bindings
    ops = [str(b.value.op.name) for b in bindings if isinstance(b.value, relax.Call)]
    assert ops == ["relax.nn.conv2d", "relax.clip", "relax.clip"]
    assert [p.name for p in canonical["main"].params] == ["data"]
    fused = PartitionConvAdd()(mod)
    (name,) = fused_functions(fused)
    assert len(fused[name].params) == 2  # data, weight


def test_one_pattern_per_chain_shape_longest_first():
    mod = build_graph(Graph(epilogue=("bias", "relu:", "residual:rev")))
    (pattern,) = pattern_table(mod)
    assert pattern.name == pattern_name(["bias", "relu", "residual"])
    assert pattern.name == "convadd.conv2d_bias_relu_residual"


def two_conv_add(order: str) -> tvm.IRModule:
    """add(conv_a + bias, conv_b + bias): both operands of the add are conv chains."""
    bb = relax.BlockBuilder()
    data = relax.Var("data", relax.TensorType((1, 8, 6, 6), "float32"))
    rng = np.random.default_rng(3)

    def conv_bias(kernel):
        weight = relax.const((rng.standard_normal((8, 8, kernel, kernel)) / 8).astype("float32"))
        conv = bb.emit(relax.op.nn.conv2d(data, weight, padding=kernel // 2))
        bias = relax.const(rng.standard_normal((1, 8, 1, 1)).astype("float32"))
        return bb.emit(relax.op.add(conv, bias))

    with bb.function("main", [data]):
        with bb.dataflow():
            first, second = conv_bias(3), conv_bias(1)
            lhs, rhs = (first, second) if order == "ab" else (second, first)
            out = bb.emit_output(bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(lhs, rhs)))))
        bb.emit_func_output(out)
    return bb.finalize()


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_an_add_of_two_conv_chains_goes_to_the_first_conv(order):
    """No matcher backtracking: the plan gives the add to the earlier conv, in either order."""
    mod = two_conv_add(order)
    first, second = explain(mod)
    assert first.reason == "fused: conv2d+bias+residual+relu"
    assert second.reason == "fused: conv2d+bias"
    partitioned = PartitionConvAdd(offload=False)(mod)
    inputs = random_inputs(mod)
    np.testing.assert_allclose(
        llvm_run(partitioned, inputs), llvm_run(mod, inputs), rtol=1e-5, atol=1e-5
    )


DYNAMIC_BATCH = (tvm.tirx.Var("n", "int64"), 8, 10, 10)


@pytest.mark.parametrize(
    ("graph", "reason"),
    [
        (Graph(data_shape=(1, 10, 10, 8), layout="NHWC"), "layout NHWC/HWIO"),
        (Graph(dilation=2, padding=(2, 2, 2, 2)), "dilation 2 (the accelerator takes dilation 1)"),
        (Graph(dtype="float16"), "data dtype float16 (the accelerator takes float32)"),
        (Graph(data_shape=DYNAMIC_BATCH), "dynamic data shape (n, 8, 10, 10)"),
    ],
    ids=["nhwc", "dilation", "float16", "dynamic"],
)
def test_conv_the_accelerator_refuses_stays_on_the_cpu(graph, reason):
    mod = build_graph(replace_epilogue(graph, ("bias", "relu")))
    assert fused_functions(PartitionConvAdd()(mod)) == {}
    (decision,) = explain(mod)
    assert not decision.fused
    assert decision.reason.startswith("not fused: ")
    assert reason in decision.reason


def replace_epilogue(graph: Graph, epilogue: tuple[str, ...]) -> Graph:
    return Graph(**{**graph.__dict__, "epilogue": epilogue})


def one_conv(tail, *extra_inputs) -> tvm.IRModule:
    """main(x, *extra) = tail(bb, conv(x) + bias, x, *extra), in one dataflow block."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "float32"))
    extra = [relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in extra_inputs]
    weight = relax.const(
        (np.random.default_rng(5).standard_normal((8, 8, 3, 3)) / 8).astype("float32")
    )
    bias = relax.const(np.linspace(-1, 1, 8, dtype="float32").reshape(1, 8, 1, 1))
    with bb.function("main", [x, *extra]):
        with bb.dataflow():
            out = bb.emit(relax.op.add(bb.emit(relax.op.nn.conv2d(x, weight, padding=1)), bias))
            out = bb.emit_output(tail(bb, out, x, *extra))
        bb.emit_func_output(out)
    return bb.finalize()


def emit(bb, expr):
    return bb.emit(expr)


# The op after conv + bias that the Add unit cannot take: the conv still fuses with the bias.
ENDS = {
    "sigmoid": (
        lambda bb, c, x: emit(bb, relax.op.sigmoid(c)),
        (),
        "sigmoid after it runs on the CPU: not an ALU op",
    ),
    "broadcast-residual": (
        lambda bb, c, x, r: emit(bb, relax.op.add(c, r)),
        (("r", (1, 8, 6, 1)),),
        "add after it runs on the CPU: add of (1, 8, 6, 1): the ALU adds the output's shape "
        "(1, 8, 6, 6) or a per-channel (1, 8, 1, 1) vector (it does not broadcast)",
    ),
    "full-multiply": (
        lambda bb, c, x, r: emit(bb, relax.op.multiply(c, r)),
        (("r", (1, 8, 6, 6)),),
        "multiply after it runs on the CPU: multiply by (1, 8, 6, 6): the ALU multiplies by "
        "a per-channel (1, 8, 1, 1) vector",
    ),
    "own-input": (
        lambda bb, c, x: emit(bb, relax.op.add(c, x)),
        (),
        "add after it runs on the CPU: its operand is also the conv's input",
    ),
    "tensor-maximum": (
        lambda bb, c, x, r: emit(bb, relax.op.maximum(r, c)),
        (("r", (1, 8, 6, 6)),),
        "maximum after it runs on the CPU: maximum with a tensor operand (1, 8, 6, 6)",
    ),
    "scalar-add": (
        lambda bb, c, x: emit(bb, relax.op.add(c, relax.const(1.0, "float32"))),
        (),
        "add of (): the ALU adds",
    ),
    "broadcast-result": (
        lambda bb, c, x, r: emit(bb, relax.op.add(c, r)),
        (("r", (2, 8, 6, 6)),),
        "its result (2, 8, 6, 6) float32 is not the chain's shape",
    ),
    "infinite-max": (
        lambda bb, c, x: emit(bb, relax.op.maximum(c, relax.const(-np.inf, "float32"))),
        (),
        "maximum with -inf (the ALU takes finite constants)",
    ),
    "nan-clip": (
        lambda bb, c, x: emit(bb, relax.op.clip(c, float("nan"), 1.0)),
        (),
        "clip bounds (nan, 1) (the ALU takes finite constants)",
    ),
    "self-add": (
        lambda bb, c, x: emit(bb, relax.op.add(c, c)),
        (),
        "both its operands are the chain's value",
    ),
}


@pytest.mark.parametrize("case", list(ENDS))
def test_an_op_the_alu_lacks_ends_the_chain_and_is_explained(case):
    tail, extra, reason = ENDS[case]
    mod = one_conv(tail, *extra)
    (decision,) = explain(mod)
    assert decision.fused
    assert decision.reason.startswith("fused: conv2d+bias; ")
    assert reason in decision.reason, decision.reason
    partitioned = PartitionConvAdd(offload=False)(mod)
    inputs = random_inputs(mod)
    np.testing.assert_allclose(
        llvm_run(partitioned, inputs), llvm_run(mod, inputs), rtol=1e-5, atol=1e-5
    )


def silu(bb, c, x):
    """EfficientNet's conv + BN + SiLU: the biased conv output feeds sigmoid and multiply."""
    return emit(bb, relax.op.multiply(c, emit(bb, relax.op.sigmoid(c))))


def test_a_shared_value_cuts_the_chain_and_the_rest_runs_on_the_cpu():
    mod = one_conv(silu)
    (chain,) = plan_chains(mod["main"]).values()
    assert [step.label for step in chain.steps] == ["bias"]
    (decision,) = explain(mod)
    assert decision.reason == (
        "fused: conv2d+bias; chain cut at a shared value: its output has 2 users (sigmoid, "
        "multiply), so the fused function returns it and the ops after it run on the CPU"
    )
    partitioned = PartitionConvAdd(offload=False)(mod)
    ((fused, _),) = fused_arguments(partitioned, random_inputs(mod))
    assert fused.workload.epilogue == (BIAS,)
    inputs = random_inputs(mod)
    np.testing.assert_allclose(
        llvm_run(partitioned, inputs), llvm_run(mod, inputs), rtol=1e-5, atol=1e-5
    )


def test_a_bare_conv_with_two_users_fuses_alone():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "float32"))
    weight = relax.const(np.ones((8, 8, 1, 1), "float32") / 8)
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(x, weight))
            out = bb.emit_output(bb.emit(relax.op.multiply(bb.emit(relax.op.nn.relu(conv)), conv)))
        bb.emit_func_output(out)
    (decision,) = explain(bb.finalize())
    assert decision.reason.startswith(
        "fused: conv2d; chain cut at a shared value: its output has 2"
    )
