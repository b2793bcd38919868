"""The hand-written schedule, built for llvm and checked against numpy for every mode and axis."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.llvm import run_llvm
from tvm_convadd import TileConfig, Workload
from tvm_convadd.errors import ConvAddError, TileConfigError
from tvm_convadd.reference import convadd_reference, random_inputs
from tvm_convadd.schedules.convadd import schedule_convadd

MODES = ("none", "software", "vthread")
AXES = ("height", "width", "channel")

# name -> workload: kernel sizes 1/3/7, strides 1/2, paddings 0/1/3, ResNet-50 residual shapes
FAMILIES = {
    "1x1_s1_p0": Workload(1, 16, 14, 14, 32, 1, 1),
    "3x3_s1_p1_bias_relu": Workload(
        1, 8, 16, 16, 8, 3, 3, (1, 1), (1, 1, 1, 1), bias=True, relu=True
    ),
    "3x3_s2_p1": Workload(1, 8, 17, 17, 16, 3, 3, (2, 2), (1, 1, 1, 1)),
    "7x7_s2_p3": Workload(1, 3, 32, 32, 8, 7, 7, (2, 2), (3, 3, 3, 3), bias=True),
    "1x1_s2_p0_batch2": Workload(2, 8, 16, 16, 16, 1, 1, (2, 2), bias=True),
    # ResNet-50's residual 1x1 convs (conv3 of each stage), channels scaled by 1/8 for CI time
    "resnet50_stage1": Workload(1, 8, 56, 56, 32, 1, 1, bias=True, relu=True),
    "resnet50_stage2": Workload(1, 16, 28, 28, 64, 1, 1, bias=True, relu=True),
    "resnet50_stage3": Workload(1, 32, 14, 14, 128, 1, 1, bias=True, relu=True),
    "resnet50_stage4": Workload(1, 64, 7, 7, 256, 1, 1, bias=True, relu=True),
}
TILE_COUNTS = (1, 2, 3, 4, 7, 8, 16, "full")


def check(workload: Workload, config: TileConfig) -> None:
    inputs = random_inputs(workload, seed=config.n_tiles)
    got = run_llvm(schedule_convadd(workload, config).mod, inputs, workload.out_shape)
    np.testing.assert_allclose(got, convadd_reference(workload, inputs), rtol=1e-4, atol=1e-4)


def tile_counts(workload: Workload, axis: str) -> list[int]:
    extent = TileConfig(1, axis).axis_extent(workload)
    counts = {extent if n == "full" else n for n in TILE_COUNTS}
    return sorted(n for n in counts if n <= extent)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_tile_count_along_height(family, mode):
    workload = FAMILIES[family]
    for n_tiles in tile_counts(workload, "height"):
        check(workload, TileConfig(n_tiles, "height", mode))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("axis", ["width", "channel"])
@pytest.mark.parametrize("family", ["3x3_s2_p1", "7x7_s2_p3", "resnet50_stage4"])
def test_every_tile_count_along_other_axes(family, axis, mode):
    workload = FAMILIES[family]
    for n_tiles in tile_counts(workload, axis):
        check(workload, TileConfig(n_tiles, axis, mode))


@settings(max_examples=20, deadline=None)
@given(
    channels=st.integers(1, 6),
    out_channels=st.integers(1, 6),
    height=st.integers(3, 12),
    width=st.integers(3, 12),
    kernel=st.sampled_from([1, 3]),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    bias=st.booleans(),
    relu=st.booleans(),
    mode=st.sampled_from(MODES),
    axis=st.sampled_from(AXES),
    data=st.data(),
)
def test_random_shapes(
    channels, out_channels, height, width, kernel, stride, pad, bias, relu, mode, axis, data
):
    workload = Workload(
        1,
        channels,
        height,
        width,
        out_channels,
        kernel,
        kernel,
        (stride, stride),
        (pad,) * 4,
        bias=bias,
        relu=relu,
    )
    extent = TileConfig(1, axis).axis_extent(workload)
    n_tiles = data.draw(st.integers(1, extent), label="n_tiles")
    check(workload, TileConfig(n_tiles, axis, mode))


def test_schedule_is_printable_and_shows_the_ping_pong_pipeline(golden):
    workload = Workload(1, 4, 8, 8, 4, 3, 3, (1, 1), (1, 1, 1, 1), bias=True, relu=True)
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


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(in_channels=0), "in_channels=0"),
        (dict(kernel_h=9), "does not fit the padded input"),
        (dict(dtype="float16"), "dtype 'float16'"),
        (dict(stride=(0, 1)), "stride"),
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
