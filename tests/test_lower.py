"""Lowering scheduled TIR to unit streams: regions, slots and tokens follow from the schedule."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tvm_convadd import TileConfig, Workload
from tvm_convadd.target.isa import UNITS, Conv, Load, Program, Store
from tvm_convadd.target.lower import derive_tokens, lower_to_program

MODES = ("none", "software", "vthread")
WORKLOAD = Workload(1, 4, 8, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1), bias=True, relu=True)
STRIDED = Workload(1, 3, 15, 13, 5, 3, 3, (2, 2), (1, 1, 1, 1))


def stores(program: Program) -> list[Store]:
    return list(program.streams["store"])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis", ["height", "width", "channel"])
@pytest.mark.parametrize("workload", [WORKLOAD, STRIDED], ids=["3x3", "3x3s2"])
def test_stores_cover_the_output_exactly_once(workload, axis, mode):
    extent = TileConfig(1, axis).axis_extent(workload)
    for n_tiles in sorted({1, 2, 3, extent}):
        program = lower_to_program(workload, TileConfig(n_tiles, axis, mode))
        covered = np.zeros(workload.out_shape, dtype=int)
        for store in stores(program):
            covered[tuple(slice(s, s + e) for s, e in store.dst.region)] += 1
        assert (covered == 1).all()
        assert len(stores(program)) == TileConfig(n_tiles, axis).effective_tiles(workload)


@pytest.mark.parametrize("mode", MODES)
def test_tokens_pair_up_on_every_queue(mode):
    program = lower_to_program(STRIDED, TileConfig(5, "height", mode))
    pushed, popped = Counter(), Counter()
    for unit, stream in program.streams.items():
        for inst in stream:
            pushed.update((unit, dst) for dst in inst.signal)
            popped.update((src, unit) for src in inst.wait)
    assert pushed == popped
    assert pushed  # a tiled program must synchronize its units


def test_ping_pong_slots_alternate_only_when_pipelined():
    config = TileConfig(4, "height", "software")
    pipelined = lower_to_program(WORKLOAD, config)
    serial = lower_to_program(WORKLOAD, TileConfig(4, "height", "none"))
    assert [c.acc.slot for c in pipelined.streams["conv"]] == [0, 1, 0, 1]
    assert pipelined.buffers["acc"].slots == 2
    assert [c.acc.slot for c in serial.streams["conv"]] == [0, 0, 0, 0]
    assert serial.buffers["acc"].slots == 1


def test_conv_waits_for_the_add_to_free_its_slot():
    program = lower_to_program(WORKLOAD, TileConfig(4, "height", "software"))
    convs = program.streams["conv"]
    assert "add" not in convs[0].wait and "add" not in convs[1].wait
    assert "add" in convs[2].wait  # slot 0 again: wait for the add of tile 0 to read it
    serial = lower_to_program(WORKLOAD, TileConfig(4, "height", "none"))
    assert all("add" in conv.wait for conv in serial.streams["conv"][1:])


def test_stream_follows_the_tile_count_axis_and_mode():
    listings = {
        (n, axis, mode): lower_to_program(WORKLOAD, TileConfig(n, axis, mode)).listing()
        for n in (2, 4)
        for axis in ("height", "channel")
        for mode in MODES
    }
    assert len(set(listings.values())) == len(listings)


def test_ragged_last_tile_and_padding_regions():
    program = lower_to_program(WORKLOAD, TileConfig(3, "height", "software"))
    loads = [i for i in program.streams["load"] if i.dst.buffer == "inp"]
    # rows -1..3, 2..6 and 5..8 of the padded input: the padding rows are explicit zeros
    assert [(i.src.region[2], i.pad[2]) for i in loads] == [
        ((0, 4), (1, 0)),
        ((2, 5), (0, 0)),
        ((5, 3), (0, 1)),
    ]
    convs = program.streams["conv"]
    assert [c.acc.region[2][1] for c in convs] == [3, 3, 2]


def test_vthread_odd_tile_count_emits_no_work_for_the_empty_tile():
    program = lower_to_program(WORKLOAD, TileConfig(3, "height", "vthread"))
    inputs = [i for i in program.streams["load"] if isinstance(i, Load) and i.dst.buffer == "inp"]
    assert len(inputs) == 3
    assert all(isinstance(c, Conv) for c in program.streams["conv"])
    assert len(program.streams["conv"]) == 3


def test_program_json_round_trip():
    program = lower_to_program(STRIDED, TileConfig(3, "width", "vthread"))
    again = Program.from_json(program.to_json())
    assert again.listing() == program.listing()
    assert again.to_json() == program.to_json()


def test_listing_golden(golden):
    golden("program_h3_software.txt", lower_to_program(WORKLOAD, TileConfig(3)).listing() + "\n")


def test_derive_tokens_needs_no_token_within_one_unit():
    program = lower_to_program(WORKLOAD, TileConfig(2, "height", "none"))
    flat = [inst for unit in UNITS for inst in program.streams[unit]]
    loads_only = [inst for inst in flat if inst.unit == "load"]
    assert all(not i.wait and not i.signal for i in derive_tokens(loads_only)["load"])


# Conv windows that touch only padding along some axis: TVM folds such an input tile's load to
# a constant zero, and the lowering must still emit the LOAD (a zero fill) the CONV reads.
PADDING_ONLY = {
    "height_1x1": Workload(1, 1, 1, 1, 1, 1, 1, stride=(2, 1), padding=(1, 0, 0, 0)),
    "width_1x1": Workload(1, 1, 1, 1, 1, 1, 1, stride=(1, 2), padding=(0, 1, 0, 0)),
    "height_strided": Workload(1, 2, 2, 3, 2, 1, 1, stride=(3, 1), padding=(1, 0, 0, 0)),
    "width_asymmetric": Workload(1, 2, 3, 2, 2, 3, 1, stride=(1, 3), padding=(1, 1, 1, 0)),
    "both_asymmetric": Workload(
        1, 2, 1, 1, 3, 1, 1, stride=(2, 2), padding=(1, 1, 0, 0), bias=True, relu=True
    ),
    # not one padding-only window for the whole conv, but whole tiles of them
    "tiles_in_padding": Workload(
        2, 2, 3, 4, 3, 2, 2, stride=(2, 2), padding=(2, 0, 1, 3), bias=True, relu=True
    ),
}


def torch_convadd(workload: Workload, inputs: list[np.ndarray]) -> np.ndarray:
    """conv2d [+ bias] + residual [+ relu] computed by torch, independently of the project."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    data, weight, *rest = (torch.from_numpy(x).double() for x in inputs)
    top, left, bottom, right = workload.padding
    out = functional.conv2d(
        functional.pad(data, (left, right, top, bottom)), weight, stride=workload.stride
    )
    if workload.bias:
        out = out + rest.pop(0)
    out = out + rest[0]
    if workload.relu:
        out = torch.relu(out)
    return out.numpy()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PADDING_ONLY)
def test_padding_only_windows_lower_and_match_torch(name, mode):
    from tvm_convadd.target.hardware import load_config
    from tvm_convadd.target.simulator import simulate

    workload, hardware = PADDING_ONLY[name], load_config("ideal")
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(s).astype("float32") for s in workload.input_shapes]
    expected = torch_convadd(workload, inputs)
    for axis in ("height", "width", "channel"):
        for n_tiles in range(1, TileConfig(1, axis).axis_extent(workload) + 1):
            program = lower_to_program(workload, TileConfig(n_tiles, axis, mode), hardware)
            loads = [i for i in program.streams["load"] if i.dst.buffer == "inp"]
            assert loads and all(i.src.tensor == "data" for i in loads)
            result = simulate(program, hardware, dict(zip(workload.input_names, inputs)))
            np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)


def test_padding_only_load_is_a_zero_fill_of_the_whole_tile():
    workload = PADDING_ONLY["height_1x1"]
    program = lower_to_program(workload, TileConfig(1, "height", "none"))
    (load,) = [i for i in program.streams["load"] if i.dst.buffer == "inp"]
    assert load.dst.region == ((0, 1), (0, 1), (0, 1), (0, 1))
    # no element of the source lies inside the tensor (row -1 is top padding)
    assert any(
        extent == 0 or start + extent <= 0 or start >= dim
        for (start, extent), dim in zip(load.src.region, workload.data_shape)
    )
