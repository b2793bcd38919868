"""Lowered programs on the simulator: exact numbers vs numpy, and the seed's law A + B/N."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.fuzz_cases import Case, check_overflow, valid_config
from tests.test_schedule import FAMILIES, tile_counts
from tvm_convadd import TileConfig, Workload
from tvm_convadd.errors import BufferOverflowError, DeadlockError, HazardError, TileConfigError
from tvm_convadd.reference import convadd_reference, random_inputs
from tvm_convadd.schedules.workload import BIAS, RELU, RESIDUAL, SCALE, standard_epilogue
from tvm_convadd.target.hardware import load_config
from tvm_convadd.target.isa import Program
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.simulator import simulate

MODES = ("none", "software", "vthread")


def tensors_for(workload: Workload, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip(workload.input_names, inputs))


def run_on_simulator(workload: Workload, config: TileConfig, hardware) -> np.ndarray:
    inputs = random_inputs(workload, seed=config.n_tiles)
    program = lower_to_program(workload, config, hardware)
    result = simulate(program, hardware, tensors_for(workload, inputs))
    expected = convadd_reference(workload, inputs)
    np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-4, atol=1e-4)
    return result


@pytest.fixture(scope="module")
def default_hw():
    return load_config("default")


@pytest.fixture(scope="module")
def ideal_hw():
    return load_config("ideal")


def run_every_fitting_tile_count(workload: Workload, axis: str, mode: str, hardware) -> None:
    """Each tile count runs and matches numpy, or is refused: as too big for the buffers (with
    true advice), or because its channel tiles would straddle the groups of a grouped conv."""
    ran = 0
    for n_tiles in tile_counts(workload, axis):
        config = TileConfig(n_tiles, axis, mode)
        if not valid_config(workload, config):
            with pytest.raises(TileConfigError, match="straddle the groups"):
                lower_to_program(workload, config, hardware)
            continue
        try:
            run_on_simulator(workload, config, hardware)
            ran += 1
        except BufferOverflowError as err:
            check_overflow(Case(workload, config, hardware), err)
    assert ran > 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_simulated_output_equals_numpy(family, mode, default_hw):
    run_every_fitting_tile_count(FAMILIES[family], "height", mode, default_hw)


# the layers the width and channel axes are run on: strided and padded ones from test_schedule,
# a grouped one, and ResNet-50's last residual 1x1 conv (channels scaled by 1/8 for CI time)
OTHER_AXES_FAMILIES = {
    **{
        name: FAMILIES[name]
        for name in ("3x3_s2_p1", "7x7_s2_p3_bias", "grouped_g3_scale_bias_relu6")
    },
    "resnet50_stage4": Workload(
        1, 64, 7, 7, 256, 1, 1, epilogue=standard_epilogue(bias=True, relu=True)
    ),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis", ["width", "channel"])
@pytest.mark.parametrize("family", OTHER_AXES_FAMILIES)
def test_simulated_output_other_axes(family, axis, mode, default_hw):
    run_every_fitting_tile_count(OTHER_AXES_FAMILIES[family], axis, mode, default_hw)


# 1x1 conv, 64 -> 64 channels on 32x32: every tile count below divides MACs and elements evenly,
# and up to four ALU ops the add stays no longer than the conv
SEED_LAW = Workload(1, 64, 32, 32, 64, 1, 1)
SEED_LAW_EPILOGUES = {
    "residual": (RESIDUAL,),
    "bare_conv": (),
    "bias_residual_relu": standard_epilogue(bias=True, relu=True),
    "scale_bias_residual_relu": (SCALE, BIAS, RESIDUAL, RELU),
}
# (n_tiles, channel_tiles, order): 1-D tilings along the height and 2-D grids in both orders
SEED_LAW_TILINGS = [
    (1, 1, "spatial_outer"),
    (2, 1, "spatial_outer"),
    (4, 1, "spatial_outer"),
    (8, 1, "spatial_outer"),
    (16, 1, "spatial_outer"),
    (2, 2, "spatial_outer"),
    (4, 2, "channel_outer"),
    (4, 4, "spatial_outer"),
]


@pytest.fixture(params=SEED_LAW_EPILOGUES.values(), ids=SEED_LAW_EPILOGUES.keys())
def seed_law(request) -> Workload:
    return replace(SEED_LAW, epilogue=request.param)


def whole_layer_cycles(workload: Workload, hardware) -> tuple[int, int]:
    """A and B: the conv and the epilogue of the whole layer, each as one instruction (B is one
    lane pass per op, at least one: a bare conv still moves acc to out)."""
    elements = workload.batch * workload.out_channels * workload.out_height * workload.out_width
    ops = [op.op for op in workload.epilogue]
    add = hardware.add_cycles(elements, ops)
    assert add == max(1, len(ops)) * elements // hardware.add_lanes  # ideal: 1 cycle an op
    return hardware.conv_cycles(*workload.gemm), add


@pytest.mark.parametrize("mode", ["software", "vthread"])
@pytest.mark.parametrize(("n_tiles", "channel_tiles", "order"), SEED_LAW_TILINGS)
def test_ideal_pipeline_takes_a_plus_b_over_n(
    seed_law, n_tiles, channel_tiles, order, mode, ideal_hw
):
    conv, add = whole_layer_cycles(seed_law, ideal_hw)
    tiles = n_tiles * channel_tiles
    assert conv % tiles == 0 and add % tiles == 0 and add <= conv
    config = TileConfig(n_tiles, "height", mode, channel_tiles=channel_tiles, order=order)
    program = lower_to_program(seed_law, config, ideal_hw)
    assert simulate(program, ideal_hw, functional=False).total_cycles == conv + add // tiles


@pytest.mark.parametrize(("n_tiles", "channel_tiles", "order"), SEED_LAW_TILINGS)
def test_ideal_serial_takes_a_plus_b(seed_law, n_tiles, channel_tiles, order, ideal_hw):
    conv, add = whole_layer_cycles(seed_law, ideal_hw)
    config = TileConfig(n_tiles, "height", "none", channel_tiles=channel_tiles, order=order)
    program = lower_to_program(seed_law, config, ideal_hw)
    assert simulate(program, ideal_hw, functional=False).total_cycles == conv + add


def test_timing_only_agrees_with_functional(default_hw):
    workload = FAMILIES["3x3_s1_p1_bias_relu"]
    config = TileConfig(4, "height", "software")
    functional = run_on_simulator(workload, config, default_hw)
    program = lower_to_program(workload, config, default_hw)
    assert simulate(program, default_hw, functional=False).total_cycles == functional.total_cycles


def test_more_tiles_help_until_overheads_win(default_hw):
    workload = Workload(1, 64, 14, 14, 128, 1, 1, epilogue=standard_epilogue(bias=True, relu=True))
    cycles = {
        n: simulate(
            lower_to_program(workload, TileConfig(n, "height", "software"), default_hw),
            default_hw,
            functional=False,
        ).total_cycles
        for n in tile_counts(workload, "height")
    }
    best = min(cycles, key=cycles.get)
    assert cycles[2] < cycles[1]
    assert 1 < best < 14
    assert cycles[14] > cycles[best]


def _edit(program: Program, unit: str, index: int, **changes) -> Program:
    stream = list(program.streams[unit])
    stream[index] = replace(stream[index], **changes)
    return replace(program, streams={**program.streams, unit: tuple(stream)})


def test_hand_edited_missing_signal_deadlocks(default_hw):
    program = lower_to_program(SEED_LAW, TileConfig(4, "height", "software"), default_hw)
    conv = program.streams["conv"][0]
    broken = _edit(program, "conv", 0, signal=tuple(u for u in conv.signal if u != "add"))
    with pytest.raises(DeadlockError, match="add"):
        simulate(broken, default_hw, functional=False)


def test_hand_edited_swapped_slot_is_a_hazard(default_hw):
    program = lower_to_program(SEED_LAW, TileConfig(4, "height", "software"), default_hw)
    add = program.streams["add"][1]
    swapped = replace(add.acc, slot=1 - add.acc.slot)
    with pytest.raises(HazardError, match="acc"):
        simulate(_edit(program, "add", 1, acc=swapped), default_hw, functional=False)


def test_tile_too_large_names_the_smallest_tile_count(default_hw):
    workload = Workload(1, 256, 56, 56, 256, 1, 1, epilogue=standard_epilogue(bias=True))
    config = TileConfig(1, "height", "software")
    with pytest.raises(BufferOverflowError, match=r"use at least \d+ tiles along height") as err:
        lower_to_program(workload, config, default_hw)
    check_overflow(Case(workload, config, default_hw), err.value)  # the smallest count that fits
