"""Search space and heuristic: distinct programs only, fit checks, the analytic default."""

from __future__ import annotations

from itertools import product

import pytest

from tvm_convadd import heuristic, search_space
from tvm_convadd.errors import TileConfigError
from tvm_convadd.schedules.tile_config import (
    AXES,
    LINE_PIPELINES,
    ORDERS,
    PIPELINES,
    SPATIAL_AXES,
    TileConfig,
)
from tvm_convadd.schedules.workload import Workload, standard_epilogue
from tvm_convadd.target.hardware import HardwareConfig, load_config
from tvm_convadd.target.simulator import simulate

SMALL = Workload(1, 8, 8, 8, 8, 1, 1, epilogue=standard_epilogue(bias=True, relu=True))
# ResNet-50 bottleneck conv3 shape, scaled down so that N=1 fits the default buffers
RESNET_LIKE = Workload(1, 32, 14, 14, 128, 1, 1, epilogue=standard_epilogue(bias=True, relu=True))
# a 1x1 over 512 channels at 14x14: its 401 KB input cannot be double-buffered whole in 512 KiB
WIDE_INPUT = Workload(1, 512, 14, 14, 64, 1, 1, epilogue=standard_epilogue(bias=True, relu=True))


@pytest.fixture(scope="module")
def hardware():
    return load_config("default")


def cycles(workload: Workload, config: TileConfig, hardware) -> int:
    program = search_space.lowered(workload, config)
    return simulate(program, hardware, functional=False).total_cycles


@pytest.mark.parametrize("extent", [1, 7, 8, 56])
def test_tile_counts_are_distinct_and_smallest(extent):
    counts = search_space.distinct_tile_counts(extent)
    lengths = [-(-extent // n) for n in counts]
    assert len(set(lengths)) == len(lengths)
    assert set(lengths) == {-(-extent // n) for n in range(1, extent + 1)}
    for n, length in zip(counts, lengths):
        assert all(-(-extent // m) != length for m in range(1, n))


def test_space_covers_every_axis_pipeline_and_grid():
    """N in (1, 2, 3, 4, 8) on SMALL's 8 rows, columns and channels: 1-D tilings (one tile
    once, as N=1 along height), then the 2-D grids of at least 2 x 2 tiles."""
    configs = search_space.enumerate_configs(SMALL)
    one_d = [c for c in configs if c.channel_tiles == 1]
    grids = [c for c in configs if c.channel_tiles > 1]
    # 3 pipelines x (5 along height + 4 along width + 4 along channel); 2 spatial axes x 2
    # orders x 4 pipelines (streamed weights for grids only) x 4 spatial x 4 channel counts
    assert len(one_d) == 3 * (5 + 4 + 4)
    assert len(grids) == 2 * 2 * 4 * 4 * 4
    assert len(configs) == len(set(configs)) == len(one_d) + len(grids)
    assert configs[: len(one_d)] == tuple(one_d)  # the 1-D tilings first
    assert {(c.axis, c.pipeline) for c in one_d} == set(product(AXES, LINE_PIPELINES))
    assert {(c.axis, c.order, c.pipeline) for c in grids} == set(
        product(SPATIAL_AXES, ORDERS, PIPELINES)
    )
    assert {(c.n_tiles, c.channel_tiles) for c in grids} == set(product((2, 3, 4, 8), repeat=2))


def test_every_config_has_its_representative_in_the_space():
    """canonical maps every valid config of SMALL into the space, each enumerated config to
    itself, and reaches all of it."""
    configs = search_space.enumerate_configs(SMALL)
    assert all(search_space.canonical(SMALL, c) == c for c in configs)
    images = set()
    for axis, pipeline, order in product(AXES, PIPELINES, ORDERS):
        for n_tiles, channel_tiles in product(range(1, 9), repeat=2):
            if axis == "channel" and channel_tiles > 1:
                continue
            if pipeline not in LINE_PIPELINES and channel_tiles == 1:
                continue  # streamed weights need a grid
            config = TileConfig(n_tiles, axis, pipeline, channel_tiles, order)
            images.add(search_space.canonical(SMALL, config))
    assert images == set(configs)


@pytest.mark.parametrize(
    ("config", "representative"),
    [
        (TileConfig(7, "height"), TileConfig(4, "height")),  # tiles of 2 rows
        (TileConfig(1, "width", "none"), TileConfig(1, "height", "none")),  # one tile
        (
            TileConfig(7, "width", channel_tiles=5, order="channel_outer"),
            TileConfig(4, "width", channel_tiles=4, order="channel_outer"),
        ),
        (TileConfig(1, "width", "vthread", channel_tiles=6), TileConfig(4, "channel", "vthread")),
        (TileConfig(5, "height", channel_tiles=1, order="channel_outer"), TileConfig(4, "height")),
    ],
    ids=str,
)
def test_canonical_picks_the_smallest_counts_and_the_simplest_form(config, representative):
    assert search_space.canonical(SMALL, config) == representative


def test_grouped_space_keeps_channel_tiles_within_groups():
    """12 channels in groups of 4: channel tiles of 12, 4, 2 and 1 channels hold whole groups
    or lie within one; tiles of 6 or 3 (2 or 4 tiles) would straddle two groups."""
    grouped = Workload(1, 12, 6, 6, 12, 3, 3, padding=(1, 1, 1, 1), groups=3)
    configs = search_space.enumerate_configs(grouped)
    assert {c.channel_count for c in configs} == {1, 3, 6, 12}
    for config in configs:
        config.validate(grouped)


def test_fits_agrees_with_lowering(hardware):
    wl = Workload(1, 64, 56, 56, 256, 1, 1)
    assert not search_space.fits(wl, TileConfig(1, "height", "none"), hardware)
    assert search_space.fits(wl, TileConfig(56, "height", "software"), hardware)


def test_heuristic_beats_one_tile_and_fits(hardware):
    best = heuristic.default_config(RESNET_LIKE, hardware)
    one_tile = TileConfig(1, "height", "none")
    assert search_space.fits(RESNET_LIKE, best, hardware)
    assert best.n_tiles > 1
    assert cycles(RESNET_LIKE, best, hardware) < cycles(RESNET_LIKE, one_tile, hardware)


@pytest.mark.parametrize("target", ["default", "slow_add", "big_array"])
def test_heuristic_never_returns_a_config_that_does_not_fit(target):
    hardware = load_config(target)
    wl = Workload(1, 64, 56, 56, 256, 1, 1, epilogue=standard_epilogue(bias=True, relu=True))
    assert search_space.fits(wl, heuristic.default_config(wl, hardware), hardware)


# the sample of the fitting space the estimate is checked on: about this many of each
SAMPLE_ONE_D, SAMPLE_GRIDS, SAMPLE_BEST = 24, 36, 16


def sampled_space(workload: Workload, hardware) -> list[TileConfig]:
    """A deterministic sample of the fitting space (lowering all of it, thousands of configs
    with the 2-D grids, takes minutes): a stride through the 1-D tilings and one through the
    grids, plus the estimate's best that may fit, where a better pick than its own would be."""
    configs = search_space.enumerate_configs(workload)
    one_d = [c for c in configs if c.channel_tiles == 1]
    grids = [c for c in configs if c.channel_tiles > 1]
    ranked = [e.config for e in heuristic.ranked(workload, hardware)]
    best = [c for c in ranked if heuristic.may_fit(workload, c, hardware)][:SAMPLE_BEST]
    sample = dict.fromkeys(
        [
            *one_d[:: max(1, len(one_d) // SAMPLE_ONE_D)],
            *grids[:: max(1, len(grids) // SAMPLE_GRIDS)],
            *best,
        ]
    )
    return [c for c in sample if search_space.fits(workload, c, hardware)]


@pytest.mark.parametrize(
    "workload",
    [
        RESNET_LIKE,
        Workload(
            1, 16, 20, 20, 32, 3, 3, padding=(1, 1, 1, 1), epilogue=standard_epilogue(relu=True)
        ),
        WIDE_INPUT,  # most of its sample are reduction splits
    ],
)
def test_estimate_tracks_the_simulator(workload, hardware):
    """The analytic model is what the default and the cost model's features rest on: over a
    sample of the fitting space, 1-D tilings and grids, its median error is under 3.5 % (the
    shared DRAM channel makes the overlap approximate), and its pick is within 2 % of the
    fastest sampled config (the shipped records simulate the analytic top-k to close that).

    The bound was 3 % until the DMA streamed short gaps (records version 4). That halved the
    cycles of the 1x1 at 14x14's width tilings (21 of its 77 sampled configs) and left the
    estimate's error on them in cycles as it was: its median went from 2.5 % to 3.04 %."""
    simulated = {
        config: cycles(workload, config, hardware) for config in sampled_space(workload, hardware)
    }
    assert sum(c.channel_tiles > 1 for c in simulated) >= SAMPLE_GRIDS // 2
    assert sum(c.channel_tiles == 1 for c in simulated) >= SAMPLE_ONE_D // 2
    errors = sorted(
        abs(heuristic.estimate(workload, config, hardware).cycles / sim - 1)
        for config, sim in simulated.items()
    )
    assert errors[len(errors) // 2] < 0.035
    pick = heuristic.default_config(workload, hardware)
    assert pick in simulated
    assert simulated[pick] <= 1.02 * min(simulated.values())


def test_weights_that_fit_no_tiling_name_the_buffer_and_the_bytes(hardware):
    """Even one output channel per tile and the finest reduction split the space holds (16
    chunks of 4 input channels, double-buffered) need 2 x 4 x 3 x 3 floats of weights: on a
    256 B weight buffer the error names the layer, the buffer, the bytes needed and those
    available, in one line."""
    data = {**hardware.to_dict(), "name": "tiny_wgt"}
    data["buffer_bytes"] = {**data["buffer_bytes"], "wgt": 256}
    tiny = HardwareConfig.from_dict(data)
    workload = Workload(1, 64, 8, 8, 64, 3, 3, padding=(1, 1, 1, 1))
    with pytest.raises(TileConfigError) as info:
        heuristic.default_config(workload, tiny)
    message = str(info.value)
    assert "\n" not in message
    assert f"layer {workload}: its wgt buffer needs {2 * 4 * 9 * 4} bytes" in message
    assert "tiny_wgt has 256" in message


def test_a_reduction_split_wins_where_the_input_cannot_be_double_buffered(hardware):
    """WIDE_INPUT's input streams in chunks only when split: the heuristic picks a split, and
    it beats by over 15 % the best of the 8 best-ranked unsplit configs that fit, simulated."""
    pick = heuristic.default_config(WIDE_INPUT, hardware)
    assert pick.reduce_tiles > 1
    unsplit = [
        e.config
        for e in heuristic.ranked(WIDE_INPUT, hardware)
        if e.config.reduce_tiles == 1 and heuristic.may_fit(WIDE_INPUT, e.config, hardware)
    ]
    fitting = [c for c in unsplit[:32] if search_space.fits(WIDE_INPUT, c, hardware)][:8]
    best_unsplit = min(cycles(WIDE_INPUT, c, hardware) for c in fitting)
    assert cycles(WIDE_INPUT, pick, hardware) < 0.85 * best_unsplit
