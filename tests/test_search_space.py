"""Search space and heuristic: distinct programs only, fit checks, the analytic default."""

from __future__ import annotations

import pytest

from tvm_convadd import heuristic, search_space
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload, standard_epilogue
from tvm_convadd.target.hardware import load_config
from tvm_convadd.target.simulator import simulate

SMALL = Workload(1, 8, 8, 8, 8, 1, 1, epilogue=standard_epilogue(bias=True, relu=True))
# ResNet-50 bottleneck conv3 shape, scaled down so that N=1 fits the default buffers
RESNET_LIKE = Workload(1, 32, 14, 14, 128, 1, 1, epilogue=standard_epilogue(bias=True, relu=True))


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


def test_space_covers_every_axis_and_pipeline():
    configs = search_space.enumerate_configs(SMALL)
    assert len(configs) == len(set(configs)) == 3 * 3 * 5  # N in (1, 2, 3, 4, 8)
    assert {(c.axis, c.pipeline) for c in configs} == {
        (a, p) for a in ("height", "width", "channel") for p in ("none", "software", "vthread")
    }
    assert search_space.canonical(SMALL, TileConfig(7, "height")) == TileConfig(4, "height")


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


@pytest.mark.parametrize(
    "workload",
    [
        RESNET_LIKE,
        Workload(
            1, 16, 20, 20, 32, 3, 3, padding=(1, 1, 1, 1), epilogue=standard_epilogue(relu=True)
        ),
    ],
)
def test_estimate_tracks_the_simulator(workload, hardware):
    """The analytic model is what the default and the cost model's features rest on: over
    the whole fitting space its median error is under 2 %, and its pick is the optimum."""
    simulated = {
        config: cycles(workload, config, hardware)
        for config in search_space.fitting_configs(workload, hardware)
    }
    errors = sorted(
        abs(heuristic.estimate(workload, config, hardware).cycles / sim - 1)
        for config, sim in simulated.items()
    )
    assert errors[len(errors) // 2] < 0.02
    pick = heuristic.default_config(workload, hardware)
    assert simulated[pick] == min(simulated.values())
