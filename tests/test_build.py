"""End to end: networks offloaded through RunCodegen and the Relax VM equal their llvm build."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_convadd import TileConfig, build, build_reference, network_report
from tvm_convadd.errors import ConvAddError
from tvm_convadd.frontends import from_onnx
from tvm_convadd.networks import get_network
from tvm_convadd.target import trace

SMALL = dict(image_size=32, width=0.125, num_classes=10)


def image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    scale = float(np.abs(want).max()) or 1.0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize(
    ("name", "layers", "kernels"),
    [
        ("resnet50", 54, 25),  # 53 convs + the classifier as a 1x1 conv
        ("resnet18", 21, 16),  # 20 + 1
        ("mobilenet_v2", 53, 31),  # 52 (17 depthwise) + 1
        ("efficientnet_b0", 82, 38),  # 81 (16 depthwise, 32 squeeze-excitation) + 1
        ("regnetx_400mf", 72, 23),  # 71 (22 grouped) + 1
    ],
)
def test_offloaded_network_equals_llvm(name, layers, kernels):
    mod, params = get_network(name, **SMALL)
    net = build(mod, "convadd-sim", params)
    assert (net.num_offloaded, net.num_kernels) == (layers, kernels)  # equal layers share
    x = image((1, 3, 32, 32))
    out = net.run(x)
    assert len(net.session.runs) == layers  # every conv ran on the accelerator
    want = build_reference(mod, params)(x)
    scale = float(np.abs(want).max())
    assert scale > 0
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * scale)
    report = network_report(net.session)
    assert len(report.layers) == layers
    assert all(0 < layer.bound_cycles <= layer.fused_cycles for layer in report.layers)
    # the network bound (busiest unit over the whole run) is at most the layers' bounds summed
    layer_bounds = sum(layer.bound_cycles for layer in report.layers)
    assert 0 < report.bound_cycles <= layer_bounds <= report.fused_cycles
    assert all(layer.config_source in ("records", "heuristic") for layer in report.layers)


def test_user_tiles_and_traces(tmp_path):
    mod, params = get_network("resnet18", **SMALL)
    net = build(mod, "convadd-sim-ideal", params, tiles=2, pipeline="vthread")
    net.run(image((1, 3, 32, 32)))
    report = network_report(net.session)
    assert {layer.config for layer in report.layers} <= {"N=2 height vthread", "N=1 height vthread"}
    assert "total (21 layers)" in report.table()
    trace.write_session_trace(net.session, tmp_path / "run.json")
    events = json.loads((tmp_path / "run.json").read_text())["traceEvents"]
    assert {
        e["args"]["opcode"] for e in events if e.get("ph") == "X" and "opcode" in e.get("args", {})
    } >= {"CONV", "ADD"}
    trace.plot_session_gantt(net.session, tmp_path / "run.png")
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_timing_only_run_counts_the_same_cycles():
    mod, params = get_network("resnet18", **SMALL)
    x = image((1, 3, 32, 32))
    functional = build(mod, "convadd-sim", params, tiles=2)
    functional.run(x)
    timing = build(mod, "convadd-sim", params, tiles=2, functional=False)
    timing.run(x)
    cycles = [run.result.total_cycles for run in functional.session.runs]
    assert cycles == [run.result.total_cycles for run in timing.session.runs]


def onnx_residual_block(path, channels=8, size=8):
    """conv3x3 -> BN -> relu -> conv3x3 -> BN -> + x -> relu, built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = []

    def const(name, array):
        inits.append(numpy_helper.from_array(array.astype("float32"), name))
        return name

    nodes = []
    x = "x"
    for i in (1, 2):
        w = const(f"w{i}", rng.standard_normal((channels, channels, 3, 3)) * 0.2)
        stats = [
            const(f"bn{i}_{k}", v)
            for k, v in (
                ("scale", rng.uniform(0.5, 1.5, channels)),
                ("bias", rng.normal(0, 0.1, channels)),
                ("mean", rng.normal(0, 0.1, channels)),
                ("var", rng.uniform(0.5, 1.5, channels)),
            )
        ]
        nodes.append(helper.make_node("Conv", [x if i == 1 else "r1", w], [f"c{i}"], pads=[1] * 4))
        nodes.append(helper.make_node("BatchNormalization", [f"c{i}", *stats], [f"b{i}"]))
        if i == 1:
            nodes.append(helper.make_node("Relu", ["b1"], ["r1"]))
    nodes.append(helper.make_node("Add", ["b2", x], ["s"]))
    nodes.append(helper.make_node("Relu", ["s"], ["y"]))
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "residual_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return shape


def test_onnx_residual_block_imports_fuses_and_runs(tmp_path):
    shape = onnx_residual_block(tmp_path / "block.onnx")
    mod, params = from_onnx(tmp_path / "block.onnx")
    net = build(mod, "convadd-sim", params)
    x = image(shape)
    out = net.run(x)
    assert (net.num_offloaded, net.num_kernels) == (2, 2)  # bias + relu; bias + residual + relu
    assert_close(out, build_reference(mod, params)(x))


def test_onnx_file_that_does_not_parse(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf")
    with pytest.raises(ConvAddError, match="not a valid ONNX model"):
        from_onnx(bad)
    with pytest.raises(ConvAddError, match="does not exist"):
        from_onnx(tmp_path / "missing.onnx")


@I.ir_module
class DilatedConv:
    """conv + relu would offload, but the accelerator takes dilation 1 only."""

    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 3, 3), "float32")):
        with R.dataflow():
            y = R.nn.relu(R.nn.conv2d(x, w, padding=(2, 2), dilation=(2, 2)))
            R.output(y)
        return y


@I.ir_module
class ChannelsLast:
    @R.function
    def main(
        x: R.Tensor((1, 8, 8, 4), "float32"),
        w: R.Tensor((4, 3, 3, 4), "float32"),
        r: R.Tensor((1, 8, 8, 4), "float32"),
    ):
        with R.dataflow():
            c = R.nn.conv2d(x, w, padding=(1, 1), data_layout="NHWC", kernel_layout="OHWI")
            y = R.add(c, r)
            R.output(y)
        return y


def test_nothing_to_offload_is_a_plain_report():
    weight = image((4, 4, 3, 3), seed=1)
    net = build(DilatedConv, "convadd-sim", {"w": weight})
    x = image((1, 4, 8, 8))
    out = net.run(x)
    assert net.num_offloaded == 0
    assert "nothing to offload" in network_report(net.session).table()
    assert_close(out, build_reference(DilatedConv, {"w": weight})(x))


def test_unsupported_layout_stays_on_the_cpu():
    params = {"w": image((4, 3, 3, 4), seed=1)}
    net = build(ChannelsLast, "convadd-sim", params)
    x, r = image((1, 8, 8, 4)), image((1, 8, 8, 4), seed=2)
    assert net.num_offloaded == 0
    assert_close(net.run(x, r), build_reference(ChannelsLast, params)(x, r))


def test_missing_params_binding_is_named():
    with pytest.raises(ConvAddError, match="w"):
        build(DilatedConv, "convadd-sim", {})


def test_unknown_target_and_bad_tiles():
    mod, params = get_network("resnet18", **SMALL)
    with pytest.raises(ConvAddError, match="convadd-sim"):
        build(mod, "no-such-accelerator", params)
    with pytest.raises(ConvAddError, match="tiles"):
        build(mod, "convadd-sim", params, tiles="many")


def test_executable_runs_in_a_plain_virtual_machine():
    mod, params = get_network("resnet18", **SMALL)
    net = build(mod, "convadd-sim", params)
    vm = relax.VirtualMachine(net.executable, tvm.cpu())
    x = image((1, 3, 32, 32))
    out = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert_close(out, net.run(x))


def test_tile_count_that_does_not_fit_names_the_fix():
    from tvm_convadd.errors import BufferOverflowError

    mod, params = get_network("resnet50", image_size=224, width=0.25)
    with pytest.raises(BufferOverflowError, match=r"use at least \d+ tiles along height"):
        build(mod, "convadd-sim", params, tiles=1, functional=False)


def test_users_tuning_records_take_effect(tmp_path):
    from tvm_convadd.partition import PartitionConvAdd, fused_functions, prepare
    from tvm_convadd.records import RECORDS_FILE, Record, save_records

    mod, params = get_network("resnet18", **SMALL)
    workloads = {
        f.workload for f in fused_functions(PartitionConvAdd()(prepare(mod, params))).values()
    }
    chosen = TileConfig(2, "channel", "vthread")
    save_records(
        tmp_path / RECORDS_FILE,
        [Record(wl, "convadd-sim", chosen, 1) for wl in workloads],
    )
    net = build(mod, "convadd-sim", params, records=[str(tmp_path)])
    net.run(image((1, 3, 32, 32)))
    layers = network_report(net.session).layers
    assert {(layer.config, layer.config_source) for layer in layers} == {
        ("N=2 channel vthread", "records")
    }
