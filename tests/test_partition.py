"""Graph clean-up, partitioning and the reading of fused functions, on whole networks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax

from tvm_convadd.errors import ConvAddError, UnsupportedWorkloadError
from tvm_convadd.networks import mobilenet_v2, resnet18, resnet50
from tvm_convadd.partition import (
    UNEXPLAINED,
    ConvDecision,
    PartitionConvAdd,
    describe,
    explain,
    format_explanation,
    fused_calls,
    fused_functions,
    prepare,
)
from tvm_convadd.patterns import pattern_table
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


# --- explain against the partition: the oracle walks the partitioned module itself ------------


def conv_bindings(func: relax.Function) -> list[relax.Binding]:
    conv2d = tvm.ir.Op.get("relax.nn.conv2d")
    return [
        binding
        for block in func.body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call) and binding.value.op.same_as(conv2d)
    ]


def fused_conv_operands(partitioned: tvm.IRModule, func_name: str) -> list[tuple]:
    """(data, weight) as passed at each call of a fused function in `func_name`, in order.

    Walks the fused function down to its composite's conv2d and maps each operand back through
    the composite call and the call site, so the result is the call site's argument.
    """
    found = []
    for block in partitioned[func_name].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.GlobalVar):
                continue
            func = partitioned[call.op]
            attrs = func.attrs or {}
            if attrs.get("Codegen") != "convadd" and "Composite" not in attrs:
                continue
            if "Composite" in attrs:  # offload=False: main calls the composite itself
                composite, inner_args = func, list(func.params)
            else:  # the composite is a local function, called once with the outer parameters
                inner = [b for block in func.body.blocks for b in block.bindings]
                local = {b.var: b.value for b in inner if isinstance(b.value, relax.Function)}
                calls = [b.value for b in inner if isinstance(b.value, relax.Call)]
                (inner_call,) = [call for call in calls if call.op in local]
                composite, inner_args = local[inner_call.op], list(inner_call.args)
            assert str(composite.attrs["Composite"]).startswith("convadd.")
            (conv,) = [b.value for b in conv_bindings(composite)]

            def at_call_site(expr, composite=composite, inner_args=inner_args, call=call):
                for param, arg in zip(composite.params, inner_args):
                    if expr.same_as(param):
                        expr = arg
                for param, arg in zip(func.params, call.args):
                    if expr.same_as(param):
                        expr = arg
                return expr

            found.append(tuple(at_call_site(arg) for arg in conv.args))
    return found


def partition_verdicts(mod: tvm.IRModule, partitioned: tvm.IRModule, func_name="main"):
    """For each conv2d of `mod[func_name]` in order: did the partition fuse it?

    A fused call matches an original conv by its weight and its data; data that is another
    fused call's result is not an original variable, and then the weight alone must tell.
    Every fused call must match exactly one conv, so the oracle never guesses.
    """
    func = mod[func_name]
    convs = [binding.value for binding in conv_bindings(func)]
    originals = {*func.params, *(b.var for block in func.body.blocks for b in block.bindings)}
    verdicts = [False] * len(convs)
    for data, weight in fused_conv_operands(partitioned, func_name):
        matches = [
            i
            for i, conv in enumerate(convs)
            if conv.args[1].same_as(weight)
            and (conv.args[0].same_as(data) or data not in originals)
        ]
        assert len(matches) == 1, f"a fused call matches convs {matches}"
        assert not verdicts[matches[0]], "two fused calls claim one conv"
        verdicts[matches[0]] = True
    remaining = len(conv_bindings(partitioned[func_name]))
    assert remaining + sum(verdicts) == len(convs)
    return verdicts


def check_explain_against_partition(mod: tvm.IRModule, func_name: str = "main"):
    """explain's verdicts are the partition's, conv by conv; each refusal names its cause."""
    decisions = [d for d in explain(mod) if d.name.startswith(f"{func_name}/")]
    convs = conv_bindings(mod[func_name])
    assert [d.name for d in decisions] == [f"{func_name}/{b.var.name}" for b in convs]
    verdicts = partition_verdicts(mod, PartitionConvAdd()(mod), func_name)
    assert [d.fused for d in decisions] == verdicts
    for decision in decisions:
        prefix = "fused: conv2d+" if decision.fused else "not fused: "
        assert decision.reason.startswith(prefix), decision
        assert UNEXPLAINED not in decision.reason, decision
    return decisions


@pytest.mark.parametrize(
    ("network", "adds", "convs"),
    [(resnet18, 8, 20), (mobilenet_v2, 10, 52), (resnet50, 16, 53)],
    ids=["resnet18", "mobilenet_v2", "resnet50"],
)
def test_explain_is_the_partition_on_each_network(
    network, adds, convs, prepared_networks, small_resnet50
):
    if network is resnet50:
        prepared = small_resnet50[2]
    else:
        prepared = prepared_networks[network.__name__]
    decisions = check_explain_against_partition(prepared)
    assert len(decisions) == convs
    assert sum(decision.fused for decision in decisions) == adds
    # a given partition gives the same verdicts: offloaded or not, constants bound or not
    bound = relax.transform.FuseOpsByPattern(
        pattern_table(), bind_constants=True, annotate_codegen=True
    )
    for partitioned in (PartitionConvAdd()(prepared), PartitionConvAdd(offload=False)(prepared)):
        assert explain(prepared, partitioned=partitioned) == decisions
    assert explain(prepared, partitioned=bound(prepared)) == decisions
    table = format_explanation(decisions)
    assert table.splitlines()[0].split() == ["conv", "shape", "decision"]
    assert table.endswith(f"{adds} of {convs} conv2d fused")


SEEDS = itertools.count()


def weight_of(data: relax.Expr, channels: int, kernel: int, groups: int, layout: str, seed: int):
    in_channels = int(data.ty.shape[1 if layout == "NCHW" else 3]) // groups
    shape = (channels, in_channels, kernel, kernel)
    if layout == "NHWC":
        shape = (kernel, kernel, in_channels, channels)
    rng = np.random.default_rng(seed)
    return relax.const((rng.standard_normal(shape) / 8).astype(str(data.ty.dtype)))


def conv(bb, data, channels=8, kernel=3, groups=1, dilation=1, layout="NCHW", weight=None):
    """A 'same' conv2d of `data`, with a fresh constant weight unless one is given."""
    if weight is None:
        weight = weight_of(data, channels, kernel, groups, layout, next(SEEDS))
    return bb.emit(
        relax.op.nn.conv2d(
            data,
            weight,
            padding=dilation * (kernel // 2),
            dilation=dilation,
            groups=groups,
            data_layout=layout,
            kernel_layout="OIHW" if layout == "NCHW" else "HWIO",
        )
    )


def bias(bb, x, channels=8):
    value = np.linspace(-1, 1, channels, dtype="float32").reshape(1, channels, 1, 1)
    return bb.emit(relax.op.add(x, relax.const(value)))


def add(bb, a, b):
    return bb.emit(relax.op.add(a, b))


def module(body, *inputs, dataflow=True, name="main") -> tvm.IRModule:
    """`name`(*inputs) whose ops `body(bb, *params)` emits; inputs: (name, shape[, dtype])."""
    bb = relax.BlockBuilder()
    params = []
    for param_name, shape, *dtype in inputs:
        params.append(relax.Var(param_name, relax.TensorType(shape, (*dtype, "float32")[0])))
    with bb.function(name, params):
        if dataflow:
            with bb.dataflow():
                out = bb.emit_output(body(bb, *params))
        else:
            out = body(bb, *params)
        bb.emit_func_output(out)
    return bb.finalize()


X = ("x", (1, 8, 6, 6))
R = ("r", (1, 8, 6, 6))
N = tvm.tirx.Var("n", "int64")
LEAK = "its output also feeds other ops"

# name: (module, the expected reason of each conv in program order)
HAND_BUILT = {
    "fused": (lambda: module(lambda bb, x, r: add(bb, conv(bb, x), r), X, R), ["fused: "]),
    "nhwc": (
        lambda: module(
            lambda bb, x, r: add(bb, conv(bb, x, layout="NHWC"), r),
            ("x", (1, 6, 6, 8)),
            ("r", (1, 6, 6, 8)),
        ),
        ["layout NHWC/HWIO (the accelerator takes NCHW/OIHW)"],
    ),
    "grouped": (
        lambda: module(lambda bb, x, r: add(bb, conv(bb, x, groups=2), r), X, R),
        ["groups=2 (the accelerator takes groups=1)"],
    ),
    "dilated": (
        lambda: module(lambda bb, x, r: add(bb, conv(bb, x, dilation=2), r), X, R),
        ["dilation 2 (the accelerator takes dilation 1)"],
    ),
    "fp16": (
        lambda: module(lambda bb, x, r: add(bb, conv(bb, x), r), (*X, "float16"), (*R, "float16")),
        ["data dtype float16 (the accelerator takes float32)"],
    ),
    "dynamic": (
        lambda: module(
            lambda bb, x, r: add(bb, conv(bb, x), r), ("x", (N, 8, 6, 6)), ("r", (N, 8, 6, 6))
        ),
        ["dynamic data shape (n, 8, 6, 6)"],
    ),
    "used-twice": (
        lambda: module(
            lambda bb, x, r: (
                c := conv(bb, x),
                bb.emit(relax.op.multiply(add(bb, c, r), c)),
            )[-1],
            X,
            R,
        ),
        [LEAK],
    ),
    "two-adds": (
        lambda: module(
            lambda bb, x, r: (
                c := conv(bb, x),
                bb.emit(relax.op.multiply(add(bb, c, r), add(bb, r, c))),
            )[-1],
            X,
            R,
        ),
        [LEAK],
    ),
    "broadcast": (
        lambda: module(lambda bb, x, r: add(bb, conv(bb, x), r), X, ("r", (1, 8, 1, 1))),
        ["residual shape (1, 8, 1, 1) differs from the conv output (1, 8, 6, 6)"],
    ),
    "bias-broadcast": (
        lambda: module(lambda bb, x, r: add(bb, bias(bb, conv(bb, x)), r), X, ("r", (1, 8, 6, 1))),
        ["residual shape (1, 8, 6, 1) differs"],
    ),
    "own-input": (
        lambda: module(lambda bb, x: add(bb, conv(bb, x, kernel=1), x), X),
        ["the residual is the conv's own input"],
    ),
    "constant-residual": (
        lambda: module(
            lambda bb, x: add(bb, conv(bb, x), relax.const(np.ones((1, 8, 6, 6), "float32"))),
            X,
        ),
        ["the added tensor is a constant: a bias, not a residual"],
    ),
    "bias-only": (
        lambda: module(lambda bb, x: bb.emit(relax.op.nn.relu(bias(bb, conv(bb, x)))), X),
        ["no residual add follows (only a per-channel bias); next comes nn.relu"],
    ),
    "two-biases": (
        lambda: module(lambda bb, x: bias(bb, bias(bb, conv(bb, x))), X),
        ["no residual add follows (only per-channel biases): its output is the result"],
    ),
    "no-add": (
        lambda: module(lambda bb, x: conv(bb, x), X),
        ["no add follows: its output is the result"],
    ),
    "not-dataflow": (
        lambda: module(lambda bb, x, r: add(bb, conv(bb, x), r), X, R, dataflow=False),
        ["not in a dataflow block"],
    ),
    # both operands of the add are conv chains: the first fuses, the second is its residual
    "projection": (
        lambda: module(
            lambda bb, x: bb.emit(
                relax.op.nn.relu(add(bb, bias(bb, conv(bb, x)), bias(bb, conv(bb, x, kernel=1))))
            ),
            X,
        ),
        ["fused: conv2d+bias+residual+relu", "its add is fused with main/lv"],
    ),
    # the first conv feeds the second, which fuses
    "conv-chain": (
        lambda: module(lambda bb, x, r: add(bb, conv(bb, conv(bb, x)), r), X, R),
        ["no add follows: it is the input of main/lv1, which is fused", "fused: conv2d+residual"],
    ),
    # one weight, two inputs: the later conv fuses, the earlier one does not
    "shared-weight": (
        lambda: module(
            lambda bb, x, y, r: (
                w := weight_of(x, 8, 3, 1, "NCHW", 5),
                c := bb.emit(relax.op.nn.relu(conv(bb, y, weight=w))),
                bb.emit(relax.op.multiply(add(bb, conv(bb, x, weight=w), r), c)),
            )[-1],
            X,
            ("y", (1, 8, 6, 6)),
            R,
        ),
        ["no add follows; next comes nn.relu", "fused: conv2d+residual"],
    ),
    # a conv whose output is the residual of a fused conv and feeds another op too
    "residual-and-more": (
        lambda: module(
            lambda bb, x: (
                c := bias(bb, conv(bb, x)),
                bb.emit(relax.op.multiply(add(bb, conv(bb, x, kernel=1), c), c)),
            )[-1],
            X,
        ),
        ["its output has 2 users (the add fused with main/lv2, multiply)", "fused: "],
    ),
    "weight-parameter": (
        lambda: module(
            lambda bb, x, w, r: add(bb, conv(bb, x, weight=w), r), X, ("w", (8, 8, 3, 3)), R
        ),
        ["fused: conv2d+residual"],
    ),
}


@pytest.mark.parametrize("case", list(HAND_BUILT))
def test_explain_is_the_partition_on_hand_built_modules(case):
    build, reasons = HAND_BUILT[case]
    decisions = check_explain_against_partition(build())
    assert len(decisions) == len(reasons)
    for decision, reason in zip(decisions, reasons):
        assert reason in decision.reason, decision
        assert decision.fused == reason.startswith("fused: ")


def test_explain_maps_twin_convs_by_their_epilogue():
    """Same data, weight and attributes: only the chain after each conv tells them apart."""

    def body(bb, x, r):
        w = weight_of(x, 8, 3, 1, "NCHW", 3)
        alone = bb.emit(relax.op.nn.relu(conv(bb, x, weight=w)))
        return bb.emit(relax.op.multiply(alone, add(bb, conv(bb, x, weight=w), r)))

    mod = module(body, X, R)
    assert len(fused_calls(PartitionConvAdd()(mod))) == 1
    first, second = explain(mod)
    assert (first.fused, second.fused) == (False, True)
    assert first.reason == "not fused: no add follows; next comes nn.relu"


def test_explain_reads_every_function():
    """Each function's convs, named by function; PartitionConvAdd partitions them all."""
    mod = module(lambda bb, x, r: add(bb, conv(bb, x), r), X, R)
    other = module(lambda bb, x: bb.emit(relax.op.nn.relu(conv(bb, x))), X, name="other")
    mod["other"] = other["other"]
    decisions = explain(mod)
    assert [(d.name.split("/")[0], d.fused) for d in decisions] == [
        ("main", True),
        ("other", False),
    ]
    check_explain_against_partition(mod, "other")


def test_explain_refuses_a_partitioned_or_unrelated_module():
    mod = HAND_BUILT["fused"][0]()
    partitioned = PartitionConvAdd()(mod)
    with pytest.raises(ConvAddError, match=r"before partitioning.*fused_relax_nn_conv2d"):
        explain(partitioned)
    unrelated = PartitionConvAdd()(HAND_BUILT["fused"][0]())  # equal, but other constants
    with pytest.raises(ConvAddError, match=r"is not one of main's: pass explain the module"):
        explain(mod, partitioned=unrelated)
    assert [d.fused for d in explain(mod, partitioned=partitioned)] == [True]


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
    assert decisions[0].reason == (
        "not fused: no residual add follows (only a per-channel bias); next comes nn.relu"
    )


def test_describe_refuses_a_function_without_conv(small_resnet50):
    with pytest.raises(UnsupportedWorkloadError, match=r"function main: expected a conv2d"):
        describe(small_resnet50[2]["main"], "main")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 4, 4), "float32"))
    with bb.function("add_only", [x]):
        bb.emit_func_output(bb.emit(relax.op.add(x, x)))
    with pytest.raises(UnsupportedWorkloadError, match=r"add_only.*found 0 conv2d"):
        describe(bb.finalize()["add_only"])
