"""The reduction split: each output tile's input channels in `reduce_tiles` chunks, one
accumulating CONV each, the chunks' loads pipelined under the previous chunk's conv. Checked
against torch on the simulator and against TVM's llvm build of the same schedule, and the
lowering's reduction checks against modules that reduce wrongly."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tests.llvm import run_llvm
from tests.test_lower import simulate_against_torch, torch_convadd
from tvm_convadd import TileConfig, Workload
from tvm_convadd.errors import ProgramError, TileConfigError
from tvm_convadd.schedules.convadd import schedule_convadd
from tvm_convadd.schedules.workload import RESIDUAL, standard_epilogue
from tvm_convadd.target.hardware import load_config
from tvm_convadd.target.isa import Conv, Program
from tvm_convadd.target.lower import lower_module, lower_to_program
from tvm_convadd.target.simulator import simulate

WORKLOAD = Workload(
    1, 12, 7, 6, 8, 3, 3, (1, 1), (1, 1, 1, 1), epilogue=standard_epilogue(bias=True, relu=True)
)
STRIDED = Workload(1, 10, 9, 8, 6, 3, 3, (2, 2), (1, 0, 1, 1), epilogue=(RESIDUAL,))
CONFIGS = [
    TileConfig(2, "height", "software", reduce_tiles=2),
    TileConfig(3, "height", "software", reduce_tiles=3),  # ragged tiles and an odd chunk count
    TileConfig(2, "width", "none", reduce_tiles=4),
    TileConfig(2, "channel", "software", reduce_tiles=5),  # chunks of 3, 3, 3, 3 and 0: 4 real
    TileConfig(2, "height", "software", channel_tiles=2, reduce_tiles=2),
    TileConfig(2, "width", "software", 2, "channel_outer", reduce_tiles=3),
    TileConfig(1, "height", "software", reduce_tiles=4),  # one tile: the chunks alone pipeline
]


def convs(program: Program) -> list[Conv]:
    return list(program.streams["conv"])


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("workload", [WORKLOAD, STRIDED], ids=str)
def test_split_reductions_match_torch_and_accumulate_in_chunks(workload, config):
    program = simulate_against_torch(workload, config)
    chunks = config.effective_reduce_tiles(workload)
    tiles = config.effective_tiles(workload)
    assert len(convs(program)) == tiles * chunks
    # each tile: one CONV that starts its accumulator, then one per later chunk adding to it
    flags = [c.accumulate for c in convs(program)]
    assert flags == ([False] + [True] * (chunks - 1)) * tiles
    extents = [c.wgt.region[1][1] for c in convs(program)[:chunks]]
    assert sum(extents) == workload.in_channels


@pytest.mark.parametrize("config", CONFIGS[:4], ids=str)
def test_the_split_schedule_runs_on_llvm_as_torch_does(config):
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(s).astype("float32") for s in WORKLOAD.input_shapes]
    got = run_llvm(schedule_convadd(WORKLOAD, config).mod, inputs, WORKLOAD.out_shape)
    np.testing.assert_allclose(got, torch_convadd(WORKLOAD, inputs), rtol=1e-5, atol=1e-5)


def test_chunks_are_double_buffered_and_load_under_the_previous_conv():
    workload = Workload(1, 64, 8, 8, 64, 3, 3, padding=(1, 1, 1, 1))  # conv-bound chunks
    config = TileConfig(2, "height", "software", reduce_tiles=4)
    program = lower_to_program(workload, config)
    assert program.buffers["inp"].slots == 2 and program.buffers["wgt"].slots == 2
    hardware = load_config("default")
    result = simulate(program, hardware, functional=False)
    stream = program.streams["load"]
    loads = [e for e in result.events if e.unit == "load" and stream[e.index].dst.buffer == "inp"]
    conv_events = [e for e in result.events if e.unit == "conv"]
    # chunk 1's input is in before chunk 0's conv ends: the chunk pipeline overlaps
    assert loads[1].end <= conv_events[0].end
    # and a split that serializes (one slot) takes longer on the same machine
    serial = simulate(
        lower_to_program(workload, TileConfig(2, "height", "none", reduce_tiles=4)),
        hardware,
        functional=False,
    )
    assert result.total_cycles < serial.total_cycles


def test_unsplit_weights_reload_only_when_chunks_outnumber_the_slots():
    workload = Workload(1, 16, 8, 8, 8, 1, 1)

    def weight_loads(chunks: int) -> int:
        config = TileConfig(4, "height", "software", reduce_tiles=chunks)
        program = lower_to_program(workload, config)
        return sum(1 for inst in program.streams["load"] if inst.dst.buffer == "wgt")

    assert weight_loads(2) == 2  # each slot keeps its chunk for every tile
    assert weight_loads(4) == 4 * 4  # four chunks cycle through two slots: reloaded per tile


@pytest.mark.parametrize(
    ("workload", "config", "expected"),
    [
        (
            Workload(1, 8, 6, 6, 8, 3, 3, groups=2),
            TileConfig(2, "height", reduce_tiles=2),
            "needs groups=1",
        ),
        (WORKLOAD, TileConfig(2, "height", reduce_tiles=13), "choose 1..12"),
    ],
)
def test_a_split_the_conv_cannot_take_is_refused(workload, config, expected):
    with pytest.raises(TileConfigError, match=expected):
        config.validate(workload)


def test_a_split_with_virtual_threads_is_refused():
    with pytest.raises(TileConfigError, match="nests its own pipeline"):
        TileConfig(2, "height", "vthread", reduce_tiles=2)
    with pytest.raises(TileConfigError, match="must be an integer >= 1"):
        TileConfig(2, "height", reduce_tiles=0)


def test_an_unsplit_config_keeps_its_record_form():
    assert "reduce_tiles" not in TileConfig(2).to_dict()
    split = TileConfig(2, reduce_tiles=3)
    assert TileConfig.from_dict(split.to_dict()) == split
    assert "reduce_tiles=3" in str(split)


def test_the_accumulate_flag_survives_the_json_round_trip():
    program = lower_to_program(WORKLOAD, CONFIGS[0])
    again = Program.from_json(program.to_json())
    assert [c.accumulate for c in convs(again)] == [c.accumulate for c in convs(program)]
    assert "accumulate" in program.listing()


def _edited(config: TileConfig, old: str, new: str) -> tvm.IRModule:
    """The split schedule's module with one piece of its TVMScript replaced."""
    text = schedule_convadd(WORKLOAD, config).mod.script()
    assert text.count(old) == 1, text
    return tvm.script.from_source(text.replace(old, new))


def test_a_reduction_that_skips_a_chunk_is_rejected():
    config = TileConfig(2, "height", "none", reduce_tiles=2)
    # the chunk loop runs once: the ADD would read half a sum
    module = _edited(config, "for ax4_0 in range(2):", "for ax4_0 in range(1):")
    with pytest.raises(ProgramError, match=r"summed input channels \[0, 6\) of 12"):
        lower_module(module)


def test_a_reduction_that_starts_on_its_last_chunk_is_rejected():
    config = TileConfig(2, "height", "none", reduce_tiles=2)
    # the chunks walked backwards: the first CONV (channels 6..12) has no init
    module = _edited(
        config,
        "v_rc = T.axis.reduce(12, ax4_0 * 6 + ax4_1)",
        "v_rc = T.axis.reduce(12, (1 - ax4_0) * 6 + ax4_1)",
    )
    with pytest.raises(ProgramError, match="which no CONV started"):
        lower_module(module)
