"""Lowering scheduled TIR to unit streams: regions, slots and tokens follow from the schedule, and
the lowered programs compute what torch computes on the simulator."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from tvm_convadd import TileConfig, Workload
from tvm_convadd.errors import BufferOverflowError, TileConfigError
from tvm_convadd.schedules.tile_config import vthread_pairs_fit
from tvm_convadd.schedules.workload import (
    BIAS,
    RELU,
    RESIDUAL,
    SCALE,
    EpilogueOp,
    standard_epilogue,
)
from tvm_convadd.target.hardware import HardwareConfig, load_config
from tvm_convadd.target.isa import UNITS, Add, Conv, Load, Program, Store
from tvm_convadd.target.lower import derive_tokens, drop_reloads, lower_to_program
from tvm_convadd.target.simulator import simulate

MODES = ("none", "software", "vthread")
ORDERS = ("spatial_outer", "channel_outer")
WORKLOAD = Workload(
    1, 4, 8, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1), epilogue=standard_epilogue(bias=True, relu=True)
)
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


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
def test_grid_stores_cover_the_output_exactly_once(mode, order):
    for n_tiles, channel_tiles in ((2, 2), (3, 2), (2, 5)):
        config = TileConfig(n_tiles, "width", mode, channel_tiles=channel_tiles, order=order)
        program = lower_to_program(STRIDED, config)
        covered = np.zeros(STRIDED.out_shape, dtype=int)
        for store in stores(program):
            covered[tuple(slice(s, s + e) for s, e in store.dst.region)] += 1
        assert (covered == 1).all()
        assert len(stores(program)) == config.effective_tiles(STRIDED)


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
        1, 2, 1, 1, 3, 1, 1, stride=(2, 2), padding=(1, 1, 0, 0), epilogue=(BIAS, RESIDUAL, RELU)
    ),
    # not one padding-only window for the whole conv, but whole tiles of them
    "tiles_in_padding": Workload(
        2, 2, 3, 4, 3, 2, 2, stride=(2, 2), padding=(2, 0, 1, 3), epilogue=(BIAS, RESIDUAL, RELU)
    ),
}


def torch_convadd(workload: Workload, inputs: list[np.ndarray]) -> np.ndarray:
    """The grouped conv2d and its epilogue chain computed by torch, independently of the
    project."""
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    data, weight, *operands = (torch.from_numpy(x).double() for x in inputs)
    top, left, bottom, right = workload.padding
    out = functional.conv2d(
        functional.pad(data, (left, right, top, bottom)),
        weight,
        stride=workload.stride,
        groups=workload.groups,
    )
    operands = iter(operands)
    for step in workload.epilogue:
        if step.op == "max":
            out = torch.clamp(out, min=step.value)
        elif step.op == "min":
            out = torch.clamp(out, max=step.value)
        elif step.op == "add":
            out = out + next(operands)
        else:
            out = out * next(operands)
    return out.numpy()


def simulate_against_torch(workload: Workload, config: TileConfig, seed: int = 0) -> Program:
    """Lower, run on the ideal machine and compare with torch; the program, for more checks."""
    hardware = load_config("ideal")
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(s).astype("float32") for s in workload.input_shapes]
    program = lower_to_program(workload, config, hardware)
    result = simulate(program, hardware, dict(zip(workload.input_names, inputs)))
    expected = torch_convadd(workload, inputs)
    np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)
    return program


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PADDING_ONLY)
def test_padding_only_windows_lower_and_match_torch(name, mode):
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


@pytest.mark.parametrize("mode", MODES)
def test_a_grid_tile_wholly_in_padding(mode):
    """TVM folds the width bound of a spatial tile in padding into `fused < 2` and, knowing it,
    drops the tile's offset from the read: the zero fill still names its own window (column 4,
    the right padding)."""
    workload = Workload(1, 1, 3, 4, 3, 2, 1, stride=(2, 2), padding=(2, 0, 2, 1), epilogue=(BIAS,))
    program = simulate_against_torch(workload, TileConfig(2, "width", mode, channel_tiles=2))
    fills = [i for i in loads_of(program, "inp") if i.src.region[3][1] == 0]
    assert fills and all((i.src.region[3], i.pad[3]) == ((4, 0), (0, 1)) for i in fills)


@pytest.mark.parametrize("mode", MODES)
def test_a_grouped_grid_wholly_in_padding(mode):
    """Every input column is padding: TVM guards the read with a condition that never holds
    (`fused // 4 == 1 and fused < 4`) and indexes it `data[0, fused, h, -1]`; each tile is
    still a zero fill of its own group's channel."""
    workload = Workload(
        1, 4, 4, 1, 8, 3, 1, (2, 2), (0, 1, 0, 1), groups=4, epilogue=(RESIDUAL, RELU)
    )
    program = simulate_against_torch(workload, TileConfig(2, "width", mode, channel_tiles=4))
    assert {i.src.region[1] for i in loads_of(program, "inp")} == {(c, 1) for c in range(4)}


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


# -- numerics of lowered programs against torch ----------------------------------------------
def epilogue_workload(*epilogue: EpilogueOp, groups: int = 1, channels: int = 4) -> Workload:
    return Workload(
        1, channels, 7, 6, channels, 3, 3, (1, 1), (1, 1, 1, 1), groups=groups, epilogue=epilogue
    )


EPILOGUES = {
    "bare_conv": (),
    "residual": (RESIDUAL,),
    "bias": (BIAS,),
    "scale": (SCALE,),
    "relu": (RELU,),
    "max_const": (EpilogueOp("max", "const", 0.25),),
    "min_const": (EpilogueOp("min", "const", -0.25),),
    "scale_bias_residual_relu6": (SCALE, BIAS, RESIDUAL, RELU, EpilogueOp("min", "const", 6.0)),
    "two_residuals_two_scales": (RESIDUAL, SCALE, RESIDUAL, SCALE),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", EPILOGUES)
def test_each_epilogue_op_matches_torch(name, mode):
    workload = epilogue_workload(*EPILOGUES[name])
    program = simulate_against_torch(workload, TileConfig(3, "height", mode))  # ragged: 3+3+1
    ops = {(op.op, op.kind, op.value) for add in program.streams["add"] for op in add.ops}
    assert ops == {(op.op, op.kind, op.value) for op in workload.epilogue}
    operands = {op.src.buffer for add in program.streams["add"] for op in add.ops if op.src}
    assert len(operands) == len(workload.operand_shapes)  # res, res_2, scale, scale_2, ...


# name -> workload, tile configs (n_tiles, axis, channel_tiles): each in every mode
GROUPED = {
    "grouped_g2": (
        epilogue_workload(BIAS, RESIDUAL, RELU, groups=2),
        [(1, "height", 1), (2, "channel", 1), (3, "height", 2), (2, "width", 4)],
    ),
    "grouped_g2_of_3": (
        Workload(1, 6, 5, 6, 6, 3, 3, (2, 1), (1, 1, 1, 1), groups=2, epilogue=(SCALE, BIAS)),
        [(1, "height", 1), (2, "height", 2), (2, "width", 6)],
    ),
    "depthwise": (
        epilogue_workload(BIAS, RELU, groups=6, channels=6),
        [(1, "height", 1), (4, "channel", 1), (3, "width", 3), (2, "height", 6)],
    ),
    "depthwise_x2": (
        Workload(1, 3, 6, 5, 6, 3, 3, (1, 2), (1, 1, 1, 1), groups=3, epilogue=(RESIDUAL,)),
        [(1, "height", 1), (6, "channel", 1), (2, "height", 3)],
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", GROUPED)
def test_grouped_and_depthwise_convs_match_torch(name, mode):
    workload, configs = GROUPED[name]
    for n_tiles, axis, channel_tiles in configs:
        config = TileConfig(n_tiles, axis, mode, channel_tiles=channel_tiles)
        if not vthread_pairs_fit(workload, config):  # a virtual-thread pair across groups
            with pytest.raises(TileConfigError, match="so that a pair spans two groups"):
                config.validate(workload)
            continue
        program = simulate_against_torch(workload, config)
        for conv in program.streams["conv"]:
            channels = conv.acc.region[1][1]
            assert channels // conv.groups <= workload.group_out_channels
            assert conv.inp.region[1][1] == conv.groups * workload.group_in_channels


def test_a_whole_grouped_conv_is_one_grouped_conv():
    workload, _ = GROUPED["depthwise_x2"]
    program = lower_to_program(workload, TileConfig(1, "height", "none"))
    (conv,) = program.streams["conv"]
    assert conv.groups == 3 and conv.wgt.region[1] == (0, 1)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("mode", MODES)
def test_grids_match_torch_in_both_orders(mode, order):
    workload = epilogue_workload(SCALE, RESIDUAL, RELU, channels=5)
    for n_tiles, channel_tiles in ((2, 2), (3, 2), (2, 3), (3, 3)):  # ragged along both axes
        config = TileConfig(n_tiles, "height", mode, channel_tiles=channel_tiles, order=order)
        program = simulate_against_torch(workload, config)
        assert len(program.streams["store"]) == n_tiles * channel_tiles


def test_grid_order_decides_which_operand_is_reloaded():
    """spatial_outer walks the channel tiles of one spatial tile back to back, channel_outer the
    spatial tiles of one channel tile."""
    workload = epilogue_workload(BIAS, RESIDUAL, channels=4)
    tiles = {}
    for order in ORDERS:
        program = lower_to_program(workload, TileConfig(2, "height", "none", 2, order))
        tiles[order] = [s.dst.region[1:3] for s in stores(program)]
    assert tiles["spatial_outer"] == [
        ((0, 2), (0, 4)),
        ((2, 2), (0, 4)),
        ((0, 2), (4, 3)),
        ((2, 2), (4, 3)),
    ]
    assert tiles["channel_outer"] == [
        ((0, 2), (0, 4)),
        ((0, 2), (4, 3)),
        ((2, 2), (0, 4)),
        ((2, 2), (4, 3)),
    ]


def loads_of(program: Program, buffer: str) -> list[Load]:
    loads = program.streams["load"] + program.streams["vload"]
    return [i for i in loads if i.dst.buffer == buffer]


@pytest.mark.parametrize(
    ("mode", "order", "weight_loads", "input_loads"),
    [
        # one slot: the operand that stays across consecutive tiles is loaded once per stay
        ("none", "channel_outer", 2, 8),
        ("none", "spatial_outer", 8, 4),
        # two slots, tile t in slot t % 2: an even channel_tiles brings each channel tile's
        # weights back to the same slot, so they load once; spatial tiles alternate slots
        ("software", "spatial_outer", 2, 8),
        ("vthread", "spatial_outer", 2, 8),
        ("software", "channel_outer", 4, 8),  # once per slot and channel tile
    ],
)
def test_redundant_loads_are_dropped_when_the_slot_holds_the_window(
    mode, order, weight_loads, input_loads
):
    workload = Workload(1, 4, 8, 8, 8, 3, 3, (1, 1), (1, 1, 1, 1), epilogue=(BIAS, RESIDUAL, RELU))
    config = TileConfig(4, "height", mode, channel_tiles=2, order=order)
    program = simulate_against_torch(workload, config)  # the hazard checker agrees
    assert len(loads_of(program, "wgt")) == weight_loads
    assert len(loads_of(program, "inp")) == input_loads
    assert len(loads_of(program, "res")) == 8  # a tensor operand is new on every tile
    assert len(program.streams["conv"]) == 8


def test_drop_reloads_keeps_a_load_after_its_slot_was_overwritten():
    program = lower_to_program(WORKLOAD, TileConfig(2, "height", "none"))
    (first_inp,) = loads_of(program, "inp")[:1]
    conv = program.streams["conv"][0]
    sequence = [first_inp, conv, first_inp, conv]
    assert drop_reloads(sequence) == [first_inp, conv, conv]
    other = loads_of(program, "inp")[1]
    assert drop_reloads([first_inp, other, first_inp]) == [first_inp, other, first_inp]


def test_lowering_is_memoized():
    config = TileConfig(3, "height", "software")
    program = lower_to_program(WORKLOAD, config)
    assert lower_to_program(WORKLOAD, TileConfig(3, "height", "software")) is program
    assert lower_to_program(WORKLOAD, config, load_config("ideal")) is program
    assert isinstance(program.streams["add"][0], Add)


def tight(**buffer_bytes: int):
    ideal = load_config("ideal")
    return replace(ideal, name="tight", buffer_bytes={**ideal.buffer_bytes, **buffer_bytes})


def test_overflow_advice_names_the_smallest_tile_count():
    workload = Workload(1, 4, 16, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1))
    hardware = tight(acc=4 * 4 * 4 * 8 * 2)  # two slots of four output rows
    with pytest.raises(
        BufferOverflowError, match=r"acc needs .*; use at least 4 tiles along height"
    ):
        lower_to_program(workload, TileConfig(1, "height", "software"), hardware)
    lower_to_program(workload, TileConfig(4, "height", "software"), hardware)


def test_overflow_advice_names_both_axes_when_no_spatial_count_fits():
    """Spatial tiles never shrink the weights: the advice is a grid with channel tiles."""
    workload = Workload(1, 4, 8, 8, 8, 3, 3, (1, 1), (1, 1, 1, 1))
    hardware = tight(wgt=600)  # all weights 1152 B; two slots of a quarter of them 576 B
    with pytest.raises(BufferOverflowError) as info:
        lower_to_program(workload, TileConfig(2, "height", "software"), hardware)
    message = str(info.value)
    assert "wgt needs 1152 B, has 600 B" in message
    assert "no tile count along height alone fits: use channel_tiles=4 with 2 tile(s)" in message
    lower_to_program(workload, TileConfig(2, "height", "software", channel_tiles=4), hardware)
    with pytest.raises(BufferOverflowError, match="nor any with channel_tiles, fits"):
        lower_to_program(workload, TileConfig(2, "height", "software"), tight(wgt=100))


@pytest.mark.parametrize("order", ORDERS)
def test_streamed_weights_double_buffer_the_weights_and_not_the_input(order):
    """stream_weights: the input in one slot, loaded with its conv, the weights (and every
    other per-tile buffer) in two; the output equals torch on ragged grids in both orders,
    and a spatial_outer walk loads each input tile once."""
    workload = epilogue_workload(SCALE, RESIDUAL, RELU, channels=5)
    for n_tiles, channel_tiles in ((2, 2), (3, 2), (2, 3)):
        config = TileConfig(n_tiles, "height", "stream_weights", channel_tiles, order)
        program = simulate_against_torch(workload, config)
        slots = {name: decl.slots for name, decl in program.buffers.items()}
        assert slots["inp"] == 1 and slots["wgt"] == slots["acc"] == slots["out"] == 2
        input_loads = len(loads_of(program, "inp"))
        walked = n_tiles if order == "spatial_outer" else n_tiles * channel_tiles
        assert input_loads == walked


def test_the_smallest_fit_advice_skips_channel_counts_that_straddle_groups():
    """6 groups of 2 channels: 4 or 5 channel tiles would straddle groups, so the advice for a
    32-byte weight buffer jumps from 3 tiles to 6 (2 channels x 2 inputs x 4 B, two slots)."""
    data = {**load_config("default").to_dict(), "name": "tiny_wgt"}
    data["buffer_bytes"] = {**data["buffer_bytes"], "wgt": 32}
    tiny = HardwareConfig.from_dict(data)
    workload = Workload(1, 12, 4, 4, 12, 1, 1, groups=6, epilogue=())
    with pytest.raises(BufferOverflowError, match=r"use at least 6 tiles along channel"):
        lower_to_program(workload, TileConfig(3, "channel", "software"), tiny)
    lower_to_program(workload, TileConfig(6, "channel", "software"), tiny)  # the advice fits


def test_a_virtual_thread_pair_across_two_groups_is_refused():
    """The fuzzer's shrunk case: channel tiles of 2 inside groups of 6 pair into channels
    4..8, two groups' inputs in one region; tiles of 3 pair into whole groups and run."""
    workload = Workload(1, 6, 1, 1, 12, 1, 1, groups=2, epilogue=())
    with pytest.raises(TileConfigError, match="so that a pair spans two groups"):
        lower_to_program(workload, TileConfig(6, "channel", "vthread"))
    simulate_against_torch(workload, TileConfig(4, "channel", "vthread"))
