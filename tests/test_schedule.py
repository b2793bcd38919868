"""The hand-written schedule, built for llvm and checked against numpy for every mode and axis,
every epilogue op, grouped and depthwise convs and 2-D tile grids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.llvm import run_llvm
from tvm_convadd import TileConfig, Workload
from tvm_convadd.errors import ConvAddError, TileConfigError
from tvm_convadd.reference import convadd_reference, random_inputs
from tvm_convadd.schedules.convadd import schedule_convadd
from tvm_convadd.schedules.workload import (
    BIAS,
    RELU,
    RESIDUAL,
    SCALE,
    EpilogueOp,
    standard_epilogue,
)

MODES = ("none", "software", "vthread")
AXES = ("height", "width", "channel")
CLIP = (EpilogueOp("max", "const", -0.5), EpilogueOp("min", "const", 0.5))
RELU6 = (RELU, EpilogueOp("min", "const", 6.0))

# name -> workload: kernel sizes 1/3/7, strides 1/2, paddings 0/1/3, every epilogue op, grouped
# and depthwise convs, a bare conv (test_accelerator runs them on the simulator too)
FAMILIES = {
    "1x1_s1_p0": Workload(1, 16, 14, 14, 32, 1, 1),
    "3x3_s1_p1_bias_relu": Workload(
        1,
        8,
        16,
        16,
        8,
        3,
        3,
        (1, 1),
        (1, 1, 1, 1),
        epilogue=standard_epilogue(bias=True, relu=True),
    ),
    "3x3_s2_p1": Workload(1, 8, 17, 17, 16, 3, 3, (2, 2), (1, 1, 1, 1)),
    "7x7_s2_p3_bias": Workload(
        1, 3, 20, 20, 8, 7, 7, (2, 2), (3, 3, 3, 3), epilogue=(BIAS, RESIDUAL)
    ),
    "1x1_s2_batch2_scale_bias": Workload(
        2, 8, 16, 16, 16, 1, 1, (2, 2), epilogue=(SCALE, BIAS, RESIDUAL)
    ),
    "bare_conv": Workload(1, 4, 9, 9, 6, 3, 3, (1, 1), (1, 1, 1, 1), epilogue=()),
    "grouped_g3_scale_bias_relu6": Workload(
        1, 6, 9, 9, 6, 3, 3, (1, 1), (1, 1, 1, 1), groups=3, epilogue=(SCALE, BIAS, *RELU6)
    ),
    "depthwise_bias_relu": Workload(
        1, 6, 10, 10, 6, 3, 3, (2, 2), (1, 1, 1, 1), groups=6, epilogue=(BIAS, RELU)
    ),
    "depthwise_x2_clip": Workload(
        1, 3, 8, 8, 6, 3, 3, (1, 1), (1, 1, 1, 1), groups=3, epilogue=CLIP
    ),
    "two_residuals_mul": Workload(1, 4, 8, 8, 4, 1, 1, epilogue=(RESIDUAL, SCALE, RESIDUAL)),
}
# the axis each family's three tiles cut, so that the families cover every axis
FAMILY_AXES = {
    "1x1_s1_p0": "height",
    "3x3_s1_p1_bias_relu": "width",
    "3x3_s2_p1": "channel",
    "7x7_s2_p3_bias": "height",
    "1x1_s2_batch2_scale_bias": "width",
    "bare_conv": "height",
    "grouped_g3_scale_bias_relu6": "channel",
    "depthwise_bias_relu": "height",
    "depthwise_x2_clip": "channel",
    "two_residuals_mul": "width",
}
TILE_COUNTS = (1, 2, 3, 4, 7, 8, 16, "full")


def tile_counts(workload: Workload, axis: str) -> list[int]:
    """A spread of tile counts along `axis`, from 1 to its extent (test_accelerator's too)."""
    extent = TileConfig(1, axis).axis_extent(workload)
    counts = {extent if n == "full" else n for n in TILE_COUNTS}
    return sorted(n for n in counts if n <= extent)


def check(workload: Workload, config: TileConfig) -> None:
    inputs = random_inputs(workload, seed=config.n_tiles)
    got = run_llvm(schedule_convadd(workload, config).mod, inputs, workload.out_shape)
    np.testing.assert_allclose(got, convadd_reference(workload, inputs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_in_every_mode(family, mode):
    """Three tiles along the family's axis: ragged for most of them."""
    check(FAMILIES[family], TileConfig(3, FAMILY_AXES[family], mode))


@pytest.mark.parametrize("n_tiles", [1, 2, "full"])
def test_tile_counts_from_one_to_the_extent(n_tiles):
    workload = FAMILIES["3x3_s1_p1_bias_relu"]
    for axis in AXES:
        extent = TileConfig(1, axis).axis_extent(workload)
        check(workload, TileConfig(extent if n_tiles == "full" else n_tiles, axis, "software"))


GRIDS = {
    "plain": (
        Workload(
            1,
            4,
            7,
            6,
            5,
            3,
            3,
            (1, 1),
            (1, 1, 1, 1),
            epilogue=standard_epilogue(bias=True, relu=True),
        ),
        3,
        2,
    ),
    "grouped": (
        Workload(1, 8, 6, 7, 8, 3, 3, (1, 1), (1, 1, 1, 1), groups=4, epilogue=(SCALE, RESIDUAL)),
        2,
        2,
    ),
    "depthwise": (
        Workload(1, 6, 7, 6, 6, 3, 3, (2, 1), (1, 1, 1, 1), groups=6, epilogue=(BIAS, *RELU6)),
        3,
        3,
    ),
}


@pytest.mark.parametrize("order", ["spatial_outer", "channel_outer"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("grid", GRIDS)
def test_two_dimensional_grids(grid, mode, order):
    workload, n_tiles, channel_tiles = GRIDS[grid]
    axis = "width" if grid == "depthwise" else "height"
    check(workload, TileConfig(n_tiles, axis, mode, channel_tiles=channel_tiles, order=order))


def test_a_grid_fuses_its_tile_loops_into_one_pipelined_loop():
    workload, n_tiles, channel_tiles = GRIDS["plain"]
    config = TileConfig(n_tiles, "height", "software", channel_tiles=channel_tiles)
    sch = schedule_convadd(workload, config)
    text = sch.mod.script()
    assert text.count("software_pipeline_stage") == 1
    assert "ax2_0_ax1_0_fused in T.serial(6" in text


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    channels=st.integers(1, 4),
    multiplier=st.integers(1, 2),
    height=st.integers(3, 9),
    width=st.integers(3, 9),
    kernel=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    grouped=st.booleans(),
    epilogue=st.lists(st.sampled_from([BIAS, SCALE, RESIDUAL, RELU, *CLIP]), max_size=3),
    mode=st.sampled_from(MODES),
    axis=st.sampled_from(AXES),
    data=st.data(),
)
def test_random_shapes(
    channels, multiplier, height, width, kernel, stride, pad, grouped, epilogue, mode, axis, data
):
    groups = channels if grouped else 1
    workload = Workload(
        1,
        channels,
        height,
        width,
        channels * multiplier,
        kernel,
        kernel,
        (stride, stride),
        (pad,) * 4,
        groups=groups,
        epilogue=tuple(epilogue),
    )
    extent = TileConfig(1, axis).axis_extent(workload)
    n_tiles = data.draw(st.integers(1, extent), label="n_tiles")
    channel_tiles = 1
    if axis != "channel":
        channel_tiles = data.draw(st.integers(1, workload.out_channels), label="channel_tiles")
    config = TileConfig(n_tiles, axis, mode, channel_tiles=channel_tiles)
    try:
        config.validate(workload)
    except TileConfigError:
        assume(False)  # channel tiles across a group boundary: refused, tested below
    check(workload, config)


def test_schedule_is_printable_and_shows_the_ping_pong_pipeline(golden):
    workload = Workload(
        1, 4, 8, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1), epilogue=standard_epilogue(bias=True, relu=True)
    )
    sch = schedule_convadd(workload, TileConfig(4, "height", "software"))
    text = sch.mod.script()
    assert "software_pipeline_stage" in text
    golden("schedule_h4_software.py.txt", text)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(n_tiles=0), "tile count 0: must be an integer >= 1"),
        (dict(n_tiles=-3), "tile count -3"),
        (dict(axis="depth"), "tile axis 'depth': choose one of ('height', 'width', 'channel')"),
        (dict(pipeline="async"), "pipeline mode 'async': choose one of"),
        (dict(order="diagonal"), "tile order 'diagonal': choose one of"),
        (dict(channel_tiles=0), "channel tile count 0: must be an integer >= 1"),
        (dict(axis="channel", channel_tiles=2), "the channel axis is already tiled"),
    ],
)
def test_bad_tile_config_is_named(config, message):
    with pytest.raises(TileConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TileConfig(**config)


def test_too_many_tiles_names_the_valid_range():
    workload = Workload(1, 4, 8, 8, 4, 3, 3, padding=(1, 1, 1, 1))
    with pytest.raises(TileConfigError, match=r"tile count 9 for output height 8: choose 1..8"):
        schedule_convadd(workload, TileConfig(9, "height"))
    with pytest.raises(TileConfigError, match=r"output channel 4: choose 1..4"):
        schedule_convadd(workload, TileConfig(5, "channel"))
    with pytest.raises(TileConfigError, match=r"channel tile count 5 for 4 output channels"):
        schedule_convadd(workload, TileConfig(2, "height", channel_tiles=5))


def test_channel_tiles_that_straddle_groups_are_refused():
    workload = Workload(1, 6, 8, 8, 6, 3, 3, padding=(1, 1, 1, 1), groups=2)
    with pytest.raises(TileConfigError, match=r"straddle the groups of 3 output channels"):
        schedule_convadd(workload, TileConfig(2, "height", channel_tiles=3))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(in_channels=0), "in_channels=0"),
        (dict(kernel_h=9), "does not fit the padded input"),
        (dict(dtype="float16"), "dtype 'float16'"),
        (dict(stride=(0, 1)), "stride"),
        (dict(groups=3), "groups=3 must divide"),
    ],
)
def test_bad_workload_is_named(fields, message):
    base = dict(
        batch=1, in_channels=4, in_height=8, in_width=8, out_channels=4, kernel_h=3, kernel_w=3
    )
    with pytest.raises(ConvAddError, match=message):
        Workload(**{**base, **fields})


def test_effective_tiles_for_non_divisors():
    workload = Workload(1, 4, 8, 8, 4, 1, 1)
    assert TileConfig(3, "height").tile_extent(workload) == 3
    assert TileConfig(3, "height").effective_tiles(workload) == 3
    assert TileConfig(7, "height").effective_tiles(workload) == 4
    assert TileConfig(3, "height", channel_tiles=3).effective_tiles(workload) == 3 * 2
