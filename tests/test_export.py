"""Self-contained executables: the kernels travel inside, survive export_library / load_module
in a fresh process, and a process that builds many networks does not keep them."""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_convadd import OffloadedModule, build, build_reference, network_report, recording
from tvm_convadd.codegen import (
    KERNEL_CACHE_SIZE,
    KERNELS,
    RUN_PROGRAM,
    CodegenOptions,
    OffloadedLayer,
    new_session,
    run_program,
)
from tvm_convadd.errors import ConvAddError
from tvm_convadd.partition import PartitionConvAdd, fused_calls, fused_functions, prepare


def residual_net(
    size: int = 8, channels: int = 4, epilogues=("relu", "relu", "none"), cpu_tail: bool = False
):
    """Basic blocks x -> relu(conv(x)) -> conv + x [-> relu]: both convs offload with their
    epilogue chains (relu; residual [+ relu]); equal layers share one kernel. `cpu_tail` ends
    the net in a tanh, which the Add unit lacks: one llvm kernel in the executable."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, channels, size, size), "float32"))
    names = [f"w{i}{part}" for i in range(len(epilogues)) for part in "ab"]
    weights = {
        n: relax.Var(n, relax.TensorType((channels, channels, 3, 3), "float32")) for n in names
    }
    with bb.function("main", [x, *weights.values()]):
        with bb.dataflow():
            y = x
            for index, epilogue in enumerate(epilogues):
                conv = relax.op.nn.conv2d(y, weights[f"w{index}a"], padding=(1, 1))
                h = bb.emit(relax.op.nn.relu(conv))
                c = bb.emit(relax.op.nn.conv2d(h, weights[f"w{index}b"], padding=(1, 1)))
                s = relax.op.add(c, y)
                y = bb.emit(relax.op.nn.relu(s) if epilogue == "relu" else s)
            if cpu_tail:
                y = bb.emit(relax.op.tanh(y))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    rng = np.random.default_rng(3)
    scale = 1 / np.sqrt(9 * channels)
    params = {
        n: (rng.standard_normal((channels, channels, 3, 3)) * scale).astype("float32")
        for n in names
    }
    return bb.get(), params


def image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@pytest.fixture(scope="module")
def small_net():
    mod, params = residual_net()
    return mod, params, build(mod, "convadd-sim", params)


def test_layers_and_kernels_are_counted_apart(small_net):
    mod, params, net = small_net
    partitioned = PartitionConvAdd()(prepare(mod, params))
    assert net.num_offloaded == len(fused_calls(partitioned)) == 6
    assert net.num_kernels == len(fused_functions(partitioned)) == 3
    conv_relu, residual_relu, _, _, _, residual = net.session.call_sites
    assert net.session.call_sites == [conv_relu, residual_relu] * 2 + [conv_relu, residual]
    assert len({conv_relu, residual_relu, residual}) == 3


def test_executable_calls_one_runtime_function_with_the_payload(small_net):
    _, _, net = small_net
    text = net.executable.as_text()
    assert text.count(f"call  {RUN_PROGRAM} in: c[") == net.num_offloaded
    for symbol in net.session.layers:  # nothing was registered for this build
        assert symbol not in text
        assert tvm_ffi.get_global_func(symbol, allow_missing=True) is None


def test_payload_round_trips(small_net):
    _, _, net = small_net
    for layer in net.session.layers.values():
        back = OffloadedLayer.from_payload(layer.to_payload())
        assert back.program.to_json() == layer.program.to_json()
        assert dataclasses.replace(back, program=layer.program) == layer
        assert back.hardware.name == "default"


def test_run_records_each_layer_and_a_plain_vm_only_computes(small_net):
    mod, params, net = small_net
    x = image((1, 4, 8, 8))
    out = net.run(x)
    np.testing.assert_allclose(out, build_reference(mod, params)(x), rtol=1e-4, atol=1e-4)
    assert [run.layer.symbol for run in net.session.runs] == net.session.call_sites
    assert all(run.result.outputs is None for run in net.session.runs)
    before = net.session.runs
    vm = relax.VirtualMachine(net.executable, tvm.cpu())
    plain = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_array_equal(plain, out)
    assert net.session.runs is before
    with recording() as recorder:
        vm["main"](tvm.runtime.tensor(x))
    cycles = [run.result.total_cycles for run in recorder.runs]
    assert cycles == [run.result.total_cycles for run in net.session.runs]


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tvm
    from tvm import relax

    library, inputs, results = sys.argv[1:]
    x = tvm.runtime.tensor(np.load(inputs))
    executable = tvm.runtime.load_module(library)
    try:  # without tvm_convadd the runtime function is missing, and only that
        relax.VirtualMachine(executable, tvm.cpu())["main"](x)
        missing = ""
    except Exception as err:
        missing = str(err)

    import tvm_convadd

    vm = relax.VirtualMachine(executable, tvm.cpu())
    with tvm_convadd.recording() as recorder:
        out = vm["main"](x).numpy()
    np.save(results + ".npy", out)
    json.dump(
        {
            "missing": missing,
            "cycles": [run.result.total_cycles for run in recorder.runs],
            "report": tvm_convadd.network_report(recorder).table(),
        },
        open(results + ".json", "w"),
    )
    """
)


def test_exported_library_runs_in_a_fresh_process(small_net, tmp_path):
    _, _, net = small_net
    x = image((1, 4, 8, 8), seed=5)
    want = net.run(x)
    library = tmp_path / "net.so"
    net.executable.export_library(str(library))
    np.save(tmp_path / "x.npy", x)
    results = tmp_path / "fresh"
    subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(library), str(tmp_path / "x.npy"), str(results)],
        check=True,
        timeout=300,
    )
    fresh = json.loads((tmp_path / "fresh.json").read_text())
    np.testing.assert_array_equal(np.load(tmp_path / "fresh.npy"), want)
    assert fresh["cycles"] == [run.result.total_cycles for run in net.session.runs]
    assert fresh["report"] == network_report(net.session).table()
    assert f"Cannot find ffi::Function {RUN_PROGRAM}" in fresh["missing"]


def test_two_hundred_builds_keep_memory_flat():
    """The old per-build registry kept every session, Program and result: RSS grew ~3.7 MB over
    these 200 builds and every session stayed alive. Now each build is freed with its module.
    The tanh tail keeps an llvm kernel in the executable: TVM 0.27 itself leaks ~26 KB per
    compile + VirtualMachine of a module whose only calls are call_dps_packed (its library is
    then an empty "c" module), ~9 MB over these builds whatever tvm_convadd does."""
    psutil = pytest.importorskip("psutil")
    models = {size: residual_net(size, epilogues=("relu",), cpu_tail=True) for size in (6, 8)}
    sessions = []

    def build_and_run(index: int) -> None:
        size = (6, 8)[index % 2]
        mod, params = models[size]
        net = build(mod, "convadd-sim", params, tiles=2)  # no heuristic search: faster
        net.run(image((1, 4, size, size)))
        assert len(net.session.runs) == 2  # conv + relu, conv + residual + relu
        sessions.append(weakref.ref(net.session))

    for index in range(10):  # warm up TVM's and the allocator's caches
        build_and_run(index)
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    for index in range(200):
        build_and_run(index)
    gc.collect()
    growth = process.memory_info().rss - before
    assert [ref for ref in sessions if ref() is not None] == []
    assert len(KERNELS) <= KERNEL_CACHE_SIZE
    assert growth < 2 * 1024 * 1024, f"RSS grew {growth / 1e6:.2f} MB over 200 builds"


def test_kernel_cache_parses_once_and_stays_bounded(small_net):
    _, _, net = small_net
    layer = next(iter(net.session.layers.values()))
    payload = dataclasses.replace(layer, symbol="parsed_once").to_payload()
    assert KERNELS.get(payload) is KERNELS.get(payload)
    for index in range(KERNEL_CACHE_SIZE + 8):
        KERNELS.get(dataclasses.replace(layer, symbol=f"kernel_{index}").to_payload())
    assert len(KERNELS) == KERNEL_CACHE_SIZE


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "not JSON"),
        ('{"format": "other"}', "not a tvm-convadd kernel payload"),
        ('{"format": "tvm-convadd-kernel", "version": 0}', "version 0"),
        ('{"format": "tvm-convadd-kernel", "version": 1}', "version 1: .* reads version 2"),
        ('{"format": "tvm-convadd-kernel", "version": 2}', "missing the field"),
    ],
)
def test_bad_payload_is_named(payload, message):
    with pytest.raises(ConvAddError, match=message):
        OffloadedLayer.from_payload(payload)


@I.ir_module
class StalePayload:
    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32")):
        y = R.call_dps_packed(
            "tvm_convadd.run_program",
            (R.str('{"format": "tvm-convadd-kernel", "version": 0}'), x),
            out_ty=R.Tensor((1, 4, 8, 8), "float32"),
        )
        return y


def test_runtime_error_keeps_its_type_through_the_vm():
    net = OffloadedModule(tvm.compile(StalePayload, "llvm"), new_session(CodegenOptions()))
    with pytest.raises(ConvAddError, match="version 0: this tvm-convadd reads version 2"):
        net.run(image((1, 4, 8, 8)))


def test_wrong_argument_count_is_named(small_net):
    _, _, net = small_net
    layer = net.session.layers[net.session.call_sites[1]]  # conv + residual + relu
    x = tvm.runtime.tensor(image((1, 4, 8, 8)))
    message = r"called with 1 inputs, the kernel takes 3 \(data, weight, residual\)"
    with pytest.raises(ConvAddError, match=message):
        run_program(layer.to_payload(), x, x)


def test_codegen_outside_a_build_says_how():
    mod, params = residual_net(epilogues=("relu",))
    partitioned = PartitionConvAdd()(prepare(mod, params))
    with pytest.raises(Exception, match=r"tvm_convadd.build"):
        relax.transform.RunCodegen()(partitioned)
