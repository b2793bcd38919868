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
    assert [i.src.region[2] for i in loads] == [(-1, 5), (2, 5), (5, 4)]
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
