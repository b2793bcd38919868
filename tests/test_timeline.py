"""One accelerator timeline across layers: cross-layer prefetch, its capacity waits, DRAM
order, the independent check that rejects unsafe compositions, and a real build."""

from __future__ import annotations

import dataclasses
from itertools import pairwise

import numpy as np
import pytest
from tvm.script import ir as I
from tvm.script import relax as R

import tvm_convadd
from tests.handmade_programs import ConvAddShape, tiled_convadd_program
from tvm_convadd.build import run_main
from tvm_convadd.codegen import RunRecorder
from tvm_convadd.errors import BufferOverflowError, ConvAddError, HazardError, ProgramError
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import BIAS, RELU, RESIDUAL, Workload
from tvm_convadd.target.hardware import HardwareConfig, load_config
from tvm_convadd.target.isa import Conv, Load, Store
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.simulator import simulate
from tvm_convadd.target.timeline import (
    LayerCall,
    TensorRef,
    check_timeline,
    compose,
    network_timeline,
    network_timeline_of,
)

FIRST = ConvAddShape(in_channels=16, out_channels=32, height=16, width=16, residual=False)
SECOND = ConvAddShape(in_channels=32, out_channels=64, height=16, width=16, residual=False)
WEIGHT_BYTES = {  # float32 OIHW weights of each layer
    name: int(np.prod(shape.tensor_shapes()["weight"])) * 4
    for name, shape in (("first", FIRST), ("second", SECOND))
}


def chain(first=FIRST, second=SECOND, tiles=4) -> list[LayerCall]:
    """Layer 2 reads layer 1's output; the image is the host's, weights and biases constants."""
    image, w1, b1, mid, w2, b2, out = (TensorRef(storage) for storage in range(7))
    return [
        LayerCall(
            "conv1",
            tiled_convadd_program(first, tiles),
            {"data": image, "weight": w1, "bias": b1},
            {"output": mid},
            frozenset({"data"}),
        ),
        LayerCall(
            "conv2",
            tiled_convadd_program(second, tiles),
            {"data": mid, "weight": w2, "bias": b2},
            {"output": out},
            frozenset({"data"}),
        ),
    ]


def with_weight_pool(nbytes: int) -> HardwareConfig:
    data = load_config("default").to_dict()
    data["buffer_bytes"] = {**data["buffer_bytes"], "wgt": nbytes}
    return HardwareConfig.from_dict({**data, "name": f"wgt-{nbytes}"})


def events(composition, result, call: int, kind: type, pool: str | None = None):
    """The events of `call`'s instructions of type `kind` (touching buffer pool `pool`)."""
    found = []
    for event in result.events:
        inst = composition.program.streams[event.unit][event.index]
        if composition.call_of(event.unit, event.index) != call or not isinstance(inst, kind):
            continue
        slots = (*inst.reads(), *inst.writes())
        if pool is None or any(composition.buffer_owner[s.buffer][1] == pool for s in slots):
            found.append(event)
    return sorted(found, key=lambda e: e.start)


def assert_conv_stalls_add_up(timeline) -> int:
    """The Conv unit's stalls on the timeline are those inside each call plus those between
    two calls' CONVs (`conv_idle_between_calls`, returned)."""
    comp, result = timeline.composition, timeline.result
    convs = [events(comp, result, call, Conv) for call in range(len(timeline.layers))]
    spans = [(calls[0].start, calls[-1].end) for calls in convs]
    assert all(a[1] <= b[0] for a, b in pairwise(spans))  # calls one after the other
    between = sum(later[0] - earlier[1] for earlier, later in pairwise(spans))
    inside = sum(b.start - a.end for calls in convs for a, b in pairwise(calls))
    assert timeline.conv_idle_between_calls == between
    assert result.idle("conv").stall == inside + between
    return between


def test_next_layers_weights_load_while_this_layer_computes():
    hardware = load_config("default")
    timeline = network_timeline(chain(), hardware)
    comp, result = timeline.composition, timeline.result
    first_weight_load = events(comp, result, 1, Load, "wgt")[0]
    last_conv_of_layer_1 = events(comp, result, 0, Conv)[-1]
    assert first_weight_load.start < last_conv_of_layer_1.end
    assert first_weight_load.start < timeline.layers[0].end
    assert timeline.total_cycles < timeline.standalone_cycles
    alone = [simulate(c.program, hardware, functional=False) for c in chain()]
    assert [layer.standalone_cycles for layer in timeline.layers] == [r.total_cycles for r in alone]
    assert [layer.bound_cycles for layer in timeline.layers] == [r.bound_cycles for r in alone]
    # what each layer adds to the timeline: the first its whole span, the second less than it
    # costs alone (its weights loaded under the first)
    first, second = timeline.added_cycles
    assert first == timeline.layers[0].end
    assert second == timeline.layers[1].end - timeline.layers[0].end < alone[1].total_cycles
    assert first + second == timeline.total_cycles
    assert result.leftover_tokens == {}  # every added token has its one matching wait
    assert_conv_stalls_add_up(timeline)


def test_weights_that_do_not_fit_beside_the_last_layers_wait_for_its_last_conv():
    tight = with_weight_pool(max(WEIGHT_BYTES.values()) + 1024)
    assert sum(WEIGHT_BYTES.values()) > tight.pool_bytes("wgt")
    timeline = network_timeline(chain(), tight)
    comp, result = timeline.composition, timeline.result
    assert events(comp, result, 1, Load, "wgt")[0].start >= events(comp, result, 0, Conv)[-1].end

    unsafe = compose(chain(), tight, _capacity_waits=False)
    run = simulate(unsafe.program, tight, functional=False, check_buffers=False)
    assert events(unsafe, run, 1, Load, "wgt")[0].start < events(unsafe, run, 0, Conv)[-1].end
    with pytest.raises(BufferOverflowError, match="pool 'wgt' holds"):
        check_timeline(unsafe, chain(), run, tight)


def test_a_layer_whose_weights_do_not_fit_at_all_is_named():
    small = with_weight_pool(WEIGHT_BYTES["second"] - 1)
    need = WEIGHT_BYTES["second"]
    with pytest.raises(BufferOverflowError, match=f"conv2: buffer pool 'wgt' needs {need} bytes"):
        compose(chain(), small)


def conv_bias(data, weight, bias) -> np.ndarray:
    """conv2d (stride 1, padding 1) + bias in float64, by explicit kernel taps."""
    padded = np.pad(data.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    _, _, height, width = data.shape
    out = 0.0
    for ry in range(weight.shape[2]):
        for rx in range(weight.shape[3]):
            window = padded[:, :, ry : ry + height, rx : rx + width]
            out = out + np.einsum("nchw,kc->nkhw", window, weight[:, :, ry, rx])
    return out + bias


def test_dependent_layer_loads_its_input_after_the_store_and_computes_the_chain():
    hardware = load_config("default")
    calls = chain()
    comp = compose(calls, hardware)
    rng = np.random.default_rng(0)
    given = {
        "data": rng.standard_normal(FIRST.tensor_shapes()["data"]),
        "w1": rng.standard_normal(FIRST.tensor_shapes()["weight"]) / 12,
        "b1": rng.standard_normal(FIRST.tensor_shapes()["bias"]),
        "w2": rng.standard_normal(SECOND.tensor_shapes()["weight"]) / 17,
        "b2": rng.standard_normal(SECOND.tensor_shapes()["bias"]),
    }
    first, second = comp.tensor_names
    tensors = {
        first["data"]: given["data"],
        first["weight"]: given["w1"],
        first["bias"]: given["b1"],
        second["weight"]: given["w2"],
        second["bias"]: given["b2"],
        first["output"]: np.zeros(FIRST.output_shape),  # zeros until layer 1 stores it
    }
    result = simulate(comp.program, hardware, tensors, functional=True, check_buffers=False)
    check_timeline(comp, calls, result, hardware)
    assert second["data"] == first["output"]  # the value flows through DRAM
    middle = conv_bias(given["data"], given["w1"], given["b1"])
    want = conv_bias(middle, given["w2"], given["b2"])
    got = result.outputs[second["output"]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    loads = [e for e in events(comp, result, 1, Load, "inp") if source(comp, e) == second["data"]]
    stores = events(comp, result, 0, Store)
    for load in loads:  # each input LOAD after every STORE of what it reads, and only those
        inst = comp.program.streams[load.unit][load.index]
        needed = [s for s in stores if overlaps(region(comp, s), inst.src.region)]
        assert needed and all(load.start >= s.end for s in needed)
    assert loads[0].start < stores[-1].end  # the first tile needs only the first rows


def source(comp, event):
    return comp.program.streams[event.unit][event.index].src.tensor


def region(comp, event):
    return comp.program.streams[event.unit][event.index].dst.region


def overlaps(a, b) -> bool:
    return all(s1 < s2 + e2 and s2 < s1 + e1 for (s1, e1), (s2, e2) in zip(a, b))


@pytest.mark.parametrize("order", ["spatial_outer", "channel_outer"])
def test_lowered_grid_layers_compute_the_chain_on_one_timeline(order):
    """Channel-tiled layers reload weights into reused slots: moving their first weights to the
    front of the queue must not let a later weight tile overwrite a slot still to be read."""
    first = Workload(1, 8, 12, 12, 16, 3, 3, padding=(1, 1, 1, 1), epilogue=(BIAS, RELU))
    second = Workload(1, 16, 12, 12, 16, 3, 3, padding=(1, 1, 1, 1), epilogue=(BIAS, RESIDUAL))
    config = TileConfig(2, "height", "software", channel_tiles=4, order=order)
    programs = [lower_to_program(w, config) for w in (first, second)]
    image, w1, b1, mid, w2, b2, out = (TensorRef(storage) for storage in range(7))
    calls = [
        LayerCall("conv1", programs[0], {"data": image, "weight": w1, "bias": b1}, {"output": mid}),
        LayerCall(
            "conv2",
            programs[1],
            {"data": mid, "weight": w2, "bias": b2, "residual": mid},
            {"output": out},
        ),
    ]
    hardware = load_config("default")
    comp = compose(calls, hardware)
    rng = np.random.default_rng(2)
    values = {
        ref: rng.standard_normal(shape) / 6
        for ref, shape in (
            (image, (1, 8, 12, 12)),
            (w1, (16, 8, 3, 3)),
            (b1, (1, 16, 1, 1)),
            (w2, (16, 16, 3, 3)),
            (b2, (1, 16, 1, 1)),
            (mid, (1, 16, 12, 12)),  # zeros in DRAM until layer 1 stores it
        )
    }
    values[mid] = np.zeros_like(values[mid])
    tensors = {
        comp.tensor_names[k][n]: values[r] for k, c in enumerate(calls) for n, r in c.reads.items()
    }
    result = simulate(comp.program, hardware, tensors, functional=True, check_buffers=False)
    check_timeline(comp, calls, result, hardware)
    middle = np.maximum(conv_bias(values[image], values[w1], values[b1]), 0)
    want = conv_bias(middle, values[w2], values[b2]) + middle
    got = result.outputs[comp.tensor_names[1]["output"]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_a_tensor_read_in_another_shape_waits_for_all_its_stores():
    """A reshape between two calls: regions of the two shapes do not compare, so every input
    LOAD waits for the producer's last STORE (and the tensors keep their own names)."""
    flat = ConvAddShape(
        in_channels=512, height=4, width=4, out_channels=16, kernel=1, padding=0, residual=False
    )
    assert np.prod(flat.tensor_shapes()["data"]) == np.prod(FIRST.output_shape)
    calls = chain(second=flat)
    hardware = load_config("default")
    timeline = network_timeline(calls, hardware)
    comp, result = timeline.composition, timeline.result
    assert comp.tensor_names[1]["data"] != comp.tensor_names[0]["output"]
    first_input = events(comp, result, 1, Load, "inp")[0]
    assert first_input.start >= events(comp, result, 0, Store)[-1].end


def test_a_composition_that_does_not_wait_for_the_store_is_rejected():
    hardware = load_config("default")
    calls = chain(tiles=1)  # one STORE, at the end of layer 1: a blind LOAD comes before it
    blind = [calls[0], dataclasses.replace(calls[1], reads={}, host_inputs=frozenset())]
    comp = compose(blind, hardware)
    result = simulate(comp.program, hardware, functional=False, check_buffers=False)
    with pytest.raises(
        HazardError, match=r"conv2 loads data at cycle \d+, before conv1 finished storing"
    ):
        check_timeline(comp, calls, result, hardware)


@I.ir_module
class ConvPoolConv:
    """conv+relu -> conv + the image (a residual) + relu -> max pool (CPU) -> conv+relu."""

    @R.function
    def main(
        x: R.Tensor((1, 8, 16, 16), "float32"),
        w1: R.Tensor((8, 8, 3, 3), "float32"),
        w2: R.Tensor((8, 8, 3, 3), "float32"),
        w3: R.Tensor((16, 8, 3, 3), "float32"),
    ):
        with R.dataflow():
            a = R.nn.relu(R.nn.conv2d(x, w1, padding=(1, 1)))
            b = R.nn.relu(R.add(R.nn.conv2d(a, w2, padding=(1, 1)), x))
            p = R.nn.max_pool2d(b, pool_size=(2, 2), strides=(2, 2))
            c = R.nn.relu(R.nn.conv2d(p, w3, padding=(1, 1)))
            R.output(c)
        return c


def test_a_built_network_runs_on_one_timeline_between_the_bound_and_the_layer_sum():
    rng = np.random.default_rng(1)
    params = {
        name: (rng.standard_normal(shape) / 8).astype("float32")
        for name, shape in (("w1", (8, 8, 3, 3)), ("w2", (8, 8, 3, 3)), ("w3", (16, 8, 3, 3)))
    }
    net = tvm_convadd.build(ConvPoolConv, params=params)
    image = rng.standard_normal((1, 8, 16, 16)).astype("float32")
    with tvm_convadd.recording() as recorder:
        run_main(net.vm, [image])
    timeline = network_timeline_of(recorder)
    runs = recorder.runs
    assert len(timeline.layers) == len(runs) == 3
    producers = timeline.composition.producers
    assert producers[1] == {"data": 0}  # conv2 reads conv1's output from DRAM
    assert producers[2] == {}  # conv3 reads the pool's output: the host wrote it
    pooled = events(timeline.composition, timeline.result, 2, Load, "inp")[0]
    assert pooled.start >= max(layer.end for layer in timeline.layers[:2])  # the host synced
    assert assert_conv_stalls_add_up(timeline) > 0  # conv3 waits for the host's pool
    layer_sum = sum(run.result.total_cycles for run in runs)
    busy = {u: sum(run.result.units[u].busy_cycles for run in runs) for u in runs[0].result.units}
    busy["dram"] = sum(run.result.dram_busy_cycles for run in runs)
    for run in runs:
        for engine, cycles in run.result.engine_busy_cycles.items():
            busy[engine] = busy.get(engine, 0) + cycles
    bound = max(busy.values())
    assert bound <= timeline.total_cycles <= layer_sum
    assert timeline.standalone_cycles == layer_sum

    net.run(image)  # the session of the build keeps its last run: the same timeline
    assert network_timeline_of(net.session).total_cycles == timeline.total_cycles
    anonymous = RunRecorder([dataclasses.replace(runs[0], inputs=(), output=None)])
    with pytest.raises(ConvAddError, match="recorded without its tensors' identities"):
        network_timeline_of(anonymous)
    with pytest.raises(ConvAddError, match="no offloaded calls recorded"):
        network_timeline_of(RunRecorder())


def test_a_call_naming_a_tensor_its_program_lacks_is_refused():
    calls = chain()
    wrong = [dataclasses.replace(calls[0], reads={**calls[0].reads, "residual": TensorRef(9)})]
    with pytest.raises(ProgramError, match=r"conv1: tensors \['residual'\] are not in its program"):
        compose(wrong, load_config("default"))
