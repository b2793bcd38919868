"""Graph clean-up, partitioning and the reading of fused functions, on whole networks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.transform import FusionPattern

from tvm_convadd.dense import DenseToConv2D
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
    offload_summary,
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
def small_resnet18():
    mod, params = resnet18(**SMALL)
    return mod, params, prepare(mod, params)


@pytest.fixture(scope="module")
def prepared_networks(small_resnet18):
    """resnet18 and mobilenet_v2, small, prepared once."""
    return {"resnet18": small_resnet18[2], "mobilenet_v2": prepare(*mobilenet_v2(**SMALL))}


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


def test_prepare_folds_batch_norm_and_keeps_the_numbers(small_resnet18, image):
    """Batch-norm folded into the convs, the classifier a 1x1 conv: the same numbers."""
    mod, params, prepared = small_resnet18
    assert "relax.nn.batch_norm" in ops_in(mod)
    assert "relax.nn.batch_norm" not in ops_in(prepared)
    assert "relax.matmul" not in ops_in(prepared)
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


EPILOGUES = {"resnet": {"bias", "bias+relu", "bias+residual+relu"}}


def test_resnet50_offloads_every_conv_and_the_classifier(small_resnet50):
    partitioned = PartitionConvAdd()(small_resnet50[2])
    assert len(fused_calls(partitioned)) == 54  # 53 convs and the dense as a 1x1 conv
    assert "relax.matmul" not in ops_in(partitioned)
    labels = set()
    for name, fused in fused_functions(partitioned).items():
        func = partitioned[name]
        assert func.attrs["Codegen"] == "convadd"
        assert str(func.attrs["global_symbol"]) == fused.symbol == name
        assert fused.roles == fused.workload.input_names
        labels.add(fused.workload.epilogue_label)
    assert labels == EPILOGUES["resnet"]


def test_full_size_resnet50_offloads_every_conv():
    mod, params = resnet50()
    prepared = prepare(mod, params)
    partitioned = PartitionConvAdd()(prepared)
    assert len(fused_calls(partitioned)) == 54
    residual = {
        fused.workload.out_shape
        for fused in fused_functions(partitioned).values()
        if "residual" in fused.workload.epilogue_label
    }
    assert residual == {(1, 256, 56, 56), (1, 512, 28, 28), (1, 1024, 14, 14), (1, 2048, 7, 7)}
    summary = offload_summary(prepared, partitioned)
    assert summary.share == 1.0 and summary.total_macs > 4e9


def test_partitioned_resnet50_computes_the_same_on_llvm(small_resnet50, image):
    """Composites (no Codegen) run on llvm: partitioning alone must not change the numbers."""
    prepared = small_resnet50[2]
    expected = run(prepared, image)
    out = run(PartitionConvAdd(offload=False)(prepared), image)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4 * scale)


def test_offloaded_mobilenet_with_numpy_kernels_matches(prepared_networks, image, numpy_codegen):
    """Through RunCodegen and the VM: each fused call (depthwise and relu6 ones too) gets its
    arguments in `roles` order."""
    prepared = prepared_networks["mobilenet_v2"]
    expected = run(prepared, image)
    offloaded = relax.transform.RunCodegen()(PartitionConvAdd()(prepared))
    out = run(offloaded, image)
    assert len(numpy_codegen) == 53
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
        prefix = "fused: conv2d" if decision.fused else "not fused: "
        assert decision.reason.startswith(prefix), decision
        assert UNEXPLAINED not in decision.reason, decision
    return decisions


@pytest.mark.parametrize(
    ("network", "convs"),
    [(resnet18, 21), (mobilenet_v2, 53), (resnet50, 54)],
    ids=["resnet18", "mobilenet_v2", "resnet50"],
)
def test_explain_is_the_partition_on_each_network(
    network, convs, prepared_networks, small_resnet50
):
    """Every conv (the classifier too) is offloaded: all MACs, and explain says so, conv by conv."""
    if network is resnet50:
        prepared = small_resnet50[2]
    else:
        prepared = prepared_networks[network.__name__]
    decisions = check_explain_against_partition(prepared)
    assert len(decisions) == convs
    assert all(decision.fused for decision in decisions)
    # a given partition gives the same verdicts: offloaded or not, constants bound or not
    bound = relax.transform.FuseOpsByPattern(
        pattern_table(prepared), bind_constants=True, annotate_codegen=True
    )
    for partitioned in (PartitionConvAdd()(prepared), PartitionConvAdd(offload=False)(prepared)):
        assert explain(prepared, partitioned=partitioned) == decisions
    assert explain(prepared, partitioned=bound(prepared)) == decisions
    table = format_explanation(decisions)
    assert table.splitlines()[0].split() == ["conv", "shape", "decision"]
    assert table.endswith(f"{convs} of {convs} conv2d fused")
    summary = offload_summary(prepared)
    assert (summary.convs, summary.offloaded, summary.not_offloaded) == (convs, convs, ())
    assert summary.offloaded_macs == summary.total_macs == sum(d.macs for d in decisions) > 0
    assert summary.share == 1.0
    assert str(summary).startswith(f"conv MACs offloaded: 100.0% ({summary.total_macs:,} of ")


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
SHARED = "chain cut at a shared value: its output has 2 users"
CPU_ADD = "add after it runs on the CPU: "

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
        ["fused: conv2d+residual"],
    ),
    "depthwise": (
        lambda: module(
            lambda bb, x: bb.emit(relax.op.nn.relu6(bias(bb, conv(bb, x, groups=8)))), X
        ),
        ["fused: conv2d+bias+relu+min6"],
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
        [f"fused: conv2d; {SHARED} (add, multiply)"],
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
        [f"fused: conv2d; {SHARED} (add, add)"],
    ),
    "channel-tensor": (
        lambda: module(lambda bb, x, r: add(bb, conv(bb, x), r), X, ("r", (1, 8, 1, 1))),
        ["fused: conv2d+bias"],
    ),
    "bias-broadcast": (
        lambda: module(lambda bb, x, r: add(bb, bias(bb, conv(bb, x)), r), X, ("r", (1, 8, 6, 1))),
        [f"fused: conv2d+bias; {CPU_ADD}add of (1, 8, 6, 1)"],
    ),
    "own-input": (
        lambda: module(lambda bb, x: add(bb, conv(bb, x, kernel=1), x), X),
        [f"fused: conv2d; {CPU_ADD}its operand is also the conv's input"],
    ),
    "constant-residual": (
        lambda: module(
            lambda bb, x: add(bb, conv(bb, x), relax.const(np.ones((1, 8, 6, 6), "float32"))),
            X,
        ),
        ["fused: conv2d+residual"],
    ),
    "bias-relu": (
        lambda: module(lambda bb, x: bb.emit(relax.op.nn.relu(bias(bb, conv(bb, x)))), X),
        ["fused: conv2d+bias+relu"],
    ),
    "two-biases": (
        lambda: module(lambda bb, x: bias(bb, bias(bb, conv(bb, x))), X),
        ["fused: conv2d+bias+bias"],
    ),
    "bare": (lambda: module(lambda bb, x: conv(bb, x), X), ["fused: conv2d"]),
    "not-dataflow": (
        lambda: module(lambda bb, x, r: add(bb, conv(bb, x), r), X, R, dataflow=False),
        ["not in a dataflow block"],
    ),
    # both operands of the add are conv chains: the first takes it, the second is its residual
    "projection": (
        lambda: module(
            lambda bb, x: bb.emit(
                relax.op.nn.relu(add(bb, bias(bb, conv(bb, x)), bias(bb, conv(bb, x, kernel=1))))
            ),
            X,
        ),
        ["fused: conv2d+bias+residual+relu", "fused: conv2d+bias"],
    ),
    # the first conv feeds the second
    "conv-chain": (
        lambda: module(lambda bb, x, r: add(bb, conv(bb, conv(bb, x)), r), X, R),
        ["fused: conv2d", "fused: conv2d+residual"],
    ),
    # one weight, two inputs
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
        ["fused: conv2d+relu; multiply after it", "fused: conv2d+residual; multiply after it"],
    ),
    # a conv whose output is the residual of another fused conv and feeds a CPU op too
    "residual-and-more": (
        lambda: module(
            lambda bb, x: (
                c := bias(bb, conv(bb, x)),
                bb.emit(relax.op.multiply(add(bb, conv(bb, x, kernel=1), c), c)),
            )[-1],
            X,
        ),
        [f"fused: conv2d+bias; {SHARED} (add, multiply)", "fused: conv2d+residual"],
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


@pytest.mark.parametrize("case", ["used-twice", "projection", "residual-and-more", "shared-weight"])
def test_hand_built_partitions_compute_the_same_on_llvm(case):
    mod = HAND_BUILT[case][0]()
    rng = np.random.default_rng(2)
    inputs = [
        tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32"))
        for p in mod["main"].params
    ]

    def run_all(m):
        return relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())["main"](*inputs).numpy()

    partitioned = PartitionConvAdd(offload=False)(mod)
    assert fused_calls(partitioned)
    np.testing.assert_allclose(run_all(partitioned), run_all(mod), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("residual_first", [False, True])
def test_explain_maps_twin_convs_by_their_epilogue(residual_first):
    """Same data, weight and attributes: only the chain after each conv tells them apart."""

    def body(bb, x, r):
        w = weight_of(x, 8, 3, 1, "NCHW", 3)
        if residual_first:
            added = add(bb, conv(bb, x, weight=w), r)
            alone = bb.emit(relax.op.sigmoid(conv(bb, x, weight=w)))
        else:
            alone = bb.emit(relax.op.sigmoid(conv(bb, x, weight=w)))
            added = add(bb, conv(bb, x, weight=w), r)
        return bb.emit(relax.op.multiply(alone, added))

    mod = module(body, X, R)
    assert len(fused_calls(PartitionConvAdd()(mod))) == 2
    reasons = [d.reason for d in explain(mod)]
    bare = "fused: conv2d; sigmoid after it runs on the CPU: not an ALU op (the Add unit has "
    bare += "add tensor/per-channel, mul per-channel, max/min const)"
    residual = "fused: conv2d+residual; multiply after it runs on the CPU: multiply by"
    if residual_first:
        reasons.reverse()
    assert reasons[0] == bare
    assert reasons[1].startswith(residual)


def test_explain_reads_every_function():
    """Each function's convs, named by function; PartitionConvAdd partitions them all."""
    mod = module(lambda bb, x, r: add(bb, conv(bb, x), r), X, R)
    other = module(
        lambda bb, x: bb.emit(relax.op.nn.relu(conv(bb, x, dilation=2))), X, name="other"
    )
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
    with pytest.raises(ConvAddError, match=r"are not one of main.s: pass explain the module"):
        explain(mod, partitioned=unrelated)
    assert [d.fused for d in explain(mod, partitioned=partitioned)] == [True]


def test_mobilenet_depthwise_and_relu6_are_fused(prepared_networks):
    decisions = explain(prepared_networks["mobilenet_v2"])
    depthwise = [d for d in decisions if "groups=" in d.description]
    assert len(depthwise) == 17
    assert {d.reason for d in depthwise} == {"fused: conv2d+bias+relu+min6"}
    projections = [d for d in decisions if d.reason == "fused: conv2d+bias+residual"]
    assert len(projections) == 10  # the linear bottlenecks' residual adds, no relu after them


def test_resnet18_projection_shortcut_is_explained(prepared_networks):
    decisions = explain(prepared_networks["resnet18"])
    shortcut = [d for d in decisions if d.description.startswith("conv1x1/s2")]
    assert [d.reason for d in shortcut] == ["fused: conv2d+bias"] * 3
    assert isinstance(decisions[0], ConvDecision)
    assert decisions[0].reason == "fused: conv2d+bias+relu"
    assert decisions[-1].name == "main/lv89_as_conv2d"  # the classifier
    assert decisions[-1].description == "conv1x1/s1 (1, 64, 1, 1) -> (1, 10, 1, 1)"


def test_offload_summary_counts_what_stays_on_the_cpu():
    def body(bb, x, r):
        dilated = conv(bb, x, dilation=2)  # 8 * 36 * 8 * 9 MACs on the CPU
        return add(bb, conv(bb, dilated, kernel=1), r)  # 8 * 36 * 8 on the accelerator

    summary = offload_summary(module(body, X, R))
    assert (summary.total_macs, summary.offloaded_macs) == (8 * 36 * 8 * 10, 8 * 36 * 8)
    assert summary.share == pytest.approx(0.1)
    (left,) = summary.not_offloaded
    assert left.reason == "not fused: dilation 2 (the accelerator takes dilation 1)"
    assert str(summary).splitlines() == [
        "conv MACs offloaded: 10.0% (2,304 of 23,040); 1 of 2 conv2d",
        f"  main/lv {left.description}: not fused: dilation 2 (the accelerator takes dilation 1)",
    ]


def test_describe_refuses_a_function_without_conv(small_resnet50):
    with pytest.raises(UnsupportedWorkloadError, match=r"function main: expected a conv2d"):
        describe(small_resnet50[2]["main"], "main")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 4, 4), "float32"))
    with bb.function("add_only", [x]):
        bb.emit_func_output(bb.emit(relax.op.add(x, x)))
    with pytest.raises(UnsupportedWorkloadError, match=r"add_only.*found 0 conv2d"):
        describe(bb.finalize()["add_only"])


def test_describe_refuses_a_composite_it_did_not_name():
    mod = HAND_BUILT["fused"][0]()
    (planned,) = pattern_table(mod)
    unknown = FusionPattern("convadd.conv2d_sigmoid", planned.pattern, {}, planned.check)
    renamed = relax.transform.FuseOpsByPattern([unknown], bind_constants=False)(mod)
    (func,) = [f for g, f in renamed.functions.items() if g.name_hint != "main"]
    with pytest.raises(UnsupportedWorkloadError, match=r"Composite convadd\.conv2d_<steps>"):
        describe(func)


# --- the dense rewrite ----------------------------------------------------------------------------

B, C, K = 2, 12, 5


def dense_module(tail, x_shape=(B, C), weight=("w", (K, C))) -> tvm.IRModule:
    """main(x, [w], [b]) = tail(bb, x, w): weights as parameters unless the tail makes them."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    params = [x]
    w = None
    if weight is not None:
        w = relax.Var(weight[0], relax.TensorType(weight[1], "float32"))
        params.append(w)
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(tail(bb, x, w, params))
        bb.emit_func_output(out)
    return bb.finalize()


def param(params, name, shape):
    var = relax.Var(name, relax.TensorType(shape, "float32"))
    params.append(var)
    return var


def constant(shape, seed=4):
    return relax.const(np.random.default_rng(seed).standard_normal(shape).astype("float32"))


def head(bb, x, w, ps):
    """networks.head: global average pool, flatten, linear."""
    pooled = bb.emit(relax.op.nn.adaptive_avg_pool2d(x, (1, 1)))
    flat = bb.emit(relax.op.reshape(pooled, (B, C)))
    return bb.emit(relax.op.linear(flat, w, param(ps, "b", (K,))))


DENSES = {
    "head": (head, {"x_shape": (B, C, 3, 3)}, "conv2d+bias"),
    "linear": (
        lambda bb, x, w, ps: bb.emit(relax.op.linear(x, w, param(ps, "b", (K,)))),
        {},
        "conv2d+bias",
    ),
    "constant-weight-and-bias": (
        lambda bb, x, w, ps: bb.emit(
            relax.op.add(bb.emit(relax.op.matmul(x, constant((C, K)))), constant((K,), 5))
        ),
        {"weight": None},
        "conv2d+bias",
    ),
    "linear-relu": (
        lambda bb, x, w, ps: bb.emit(
            relax.op.nn.relu(bb.emit(relax.op.linear(x, w, constant((1, K)))))
        ),
        {},
        "conv2d+bias+relu",
    ),
    "bias-first-clip-scale": (
        lambda bb, x, w, ps: bb.emit(
            relax.op.multiply(
                bb.emit(
                    relax.op.clip(
                        bb.emit(relax.op.add(constant((K,)), bb.emit(relax.op.linear(x, w)))),
                        -0.5,
                        0.5,
                    )
                ),
                constant((1, K), 6),
            )
        ),
        {},
        "conv2d+bias+max-0.5+min0.5+scale",
    ),
    "residual-and-max": (
        lambda bb, x, w, ps: bb.emit(
            relax.op.maximum(
                bb.emit(relax.op.add(bb.emit(relax.op.linear(x, w)), param(ps, "r", (B, K)))),
                relax.const(0.1, "float32"),
            )
        ),
        {},
        "conv2d+residual+max0.1",
    ),
    "untransposed-weight": (
        lambda bb, x, w, ps: bb.emit(relax.op.matmul(x, w)),
        {"weight": ("w", (C, K))},
        "conv2d",
    ),
    "shared-output": (
        lambda bb, x, w, ps: (
            y := bb.emit(relax.op.linear(x, w)),
            bb.emit(relax.op.multiply(bb.emit(relax.op.sigmoid(y)), y)),
        )[-1],
        {},
        "conv2d",  # the shared value is the reshape back, after the chain
    ),
}


@pytest.mark.parametrize("case", list(DENSES))
def test_dense_becomes_a_1x1_conv_with_the_same_numbers(case):
    tail, kwargs, label = DENSES[case]
    mod = dense_module(tail, **kwargs)
    rewritten = DenseToConv2D()(mod)
    assert "relax.matmul" not in ops_in(rewritten)
    assert "relax.permute_dims" not in ops_in(rewritten) or kwargs.get("weight")
    assert ops_in(rewritten).count("relax.nn.conv2d") == 1
    rng = np.random.default_rng(8)
    inputs = [
        tvm.runtime.tensor(rng.standard_normal([int(d) for d in p.ty.shape]).astype("float32"))
        for p in mod["main"].params
    ]

    def run_all(m):
        return relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())["main"](*inputs).numpy()

    np.testing.assert_allclose(run_all(rewritten), run_all(mod), rtol=1e-6, atol=1e-6)
    (decision,) = explain(rewritten)
    assert decision.reason.startswith(f"fused: {label}"), decision.reason
    partitioned = PartitionConvAdd(offload=False)(rewritten)
    np.testing.assert_allclose(run_all(partitioned), run_all(mod), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("tail", "x_shape"),
    [
        (lambda bb, x, w, ps: bb.emit(relax.op.matmul(x, param(ps, "v", (4, C, K)))), (B, C)),
        (lambda bb, x, w, ps: bb.emit(relax.op.matmul(x, relax.op.permute_dims(w))), (3, B, C)),
    ],
    ids=["batched-weight", "3-d-data"],
)
def test_a_matmul_that_is_no_dense_stays(tail, x_shape):
    mod = dense_module(tail, x_shape=x_shape)
    assert DenseToConv2D()(mod).same_as(mod)


# --- what prepare spells as ops the chains take ---------------------------------------------------


def conv_then(tail) -> tvm.IRModule:
    """main(x) = tail(bb, conv(x) + bias): a conv with its own bias, as PyTorch exports one."""
    return module(lambda bb, x: tail(bb, bias(bb, conv(bb, x))), X)


def batch_norm(bb, x, channels=8, center=True, scale=True):
    rng = np.random.default_rng(9)
    stats = [
        rng.uniform(0.5, 1.5, channels),
        rng.normal(0, 0.1, channels),
        rng.normal(0, 0.1, channels),
        rng.uniform(0.5, 1.5, channels),
    ]
    args = [relax.const(value.astype("float32")) for value in stats]
    norm = relax.op.nn.batch_norm(
        x, *args, axis=1, epsilon=1e-5, center=center, scale=scale, training=False
    )
    return bb.emit(relax.TupleGetItem(bb.emit(norm), 0))


def clip_as_onnx(bb, x, low=0.0, high=6.0):
    """How the ONNX importer spells Clip: call_tir of topi.maximum then topi.minimum."""
    from tvm import topi

    low = bb.emit_te(topi.maximum, x, relax.const(low, "float32"))
    return bb.emit_te(topi.minimum, low, relax.const(high, "float32"))


CANONICAL = {
    "batch-norm-after-bias": (
        lambda bb, c: bb.emit(relax.op.nn.relu(batch_norm(bb, c))),
        "fused: conv2d+bias+scale+bias+relu",
    ),
    "batch-norm-no-center-no-scale": (
        lambda bb, c: batch_norm(bb, batch_norm(bb, c, center=False), scale=False),
        "fused: conv2d+bias+scale+bias+scale+bias",
    ),
    "onnx-clip": (clip_as_onnx, "fused: conv2d+bias+relu+min6"),
    "onnx-clip-then-residual": (
        lambda bb, c: bb.emit(relax.op.add(clip_as_onnx(bb, c, -1.0, 1.0), c)),
        "fused: conv2d+bias; chain cut at a shared value",
    ),
}


@pytest.mark.parametrize("case", list(CANONICAL))
def test_prepare_spells_epilogues_as_ops_the_chain_takes(case, image):
    tail, reason = CANONICAL[case]
    mod = conv_then(tail)
    prepared = prepare(mod)
    assert "relax.nn.batch_norm" not in ops_in(prepared)
    assert "relax.call_tir" not in ops_in(prepared)
    assert not [g for g, f in prepared.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    (decision,) = explain(prepared)
    assert decision.reason.startswith(reason), decision.reason
    x = tvm.runtime.tensor(np.random.default_rng(3).standard_normal((1, 8, 6, 6)).astype("float32"))

    def run_all(m):
        return relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())["main"](x).numpy()

    expected = run_all(mod)
    np.testing.assert_allclose(run_all(prepared), expected, rtol=1e-5, atol=1e-5)
    partitioned = PartitionConvAdd(offload=False)(prepared)
    np.testing.assert_allclose(run_all(partitioned), expected, rtol=1e-5, atol=1e-5)


def test_other_tir_calls_and_training_batch_norms_stay():
    from tvm import topi

    def tail(bb, c):
        added = bb.emit_te(topi.add, c, relax.const(1.0, "float32"))
        return bb.emit_te(topi.maximum, added, relax.const(0.0, "float32"))

    prepared = prepare(conv_then(tail))
    assert ops_in(prepared).count("relax.call_tir") == 1  # the add; the maximum became Relax
    assert "relax.maximum" in ops_in(prepared)
    training = module(
        lambda bb, x: bb.emit(
            relax.TupleGetItem(
                bb.emit(
                    relax.op.nn.batch_norm(
                        bias(bb, conv(bb, x)),
                        *[relax.const(np.ones(8, "float32"))] * 4,
                        axis=1,
                        training=True,
                    )
                ),
                0,
            )
        ),
        X,
    )
    assert "relax.nn.batch_norm" in ops_in(prepare(training))
