"""The tuner's search space: every TileConfig of a workload, one per distinct program."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from tvm_convadd.schedules.tile_config import AXES, PIPELINES, TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.isa import Program
from tvm_convadd.target.lower import lower_to_program, overflowing

if TYPE_CHECKING:
    from tvm_convadd.target.hardware import HardwareConfig


def distinct_tile_counts(extent: int) -> tuple[int, ...]:
    """Tile counts 1..extent, one per tile length ceil(extent / N), the smallest N of each.

    N's with the same tile length split the axis at the same points (the surplus tiles are
    empty and predicated off), so they lower to the same program; measuring more than one of
    them would waste trials. Non-divisors stay in: their last tile is ragged.
    """
    counts, seen = [], set()
    for n_tiles in range(1, extent + 1):
        tile = -(-extent // n_tiles)
        if tile not in seen:
            seen.add(tile)
            counts.append(n_tiles)
    return tuple(counts)


@lru_cache(maxsize=256)
def enumerate_configs(workload: Workload) -> tuple[TileConfig, ...]:
    """Every distinct config of `workload`, ordered by axis, pipeline, then N (a stable order:
    the tuner's categorical decision is an index into it)."""
    configs = []
    for axis in AXES:
        extent = TileConfig(1, axis).axis_extent(workload)
        for pipeline in PIPELINES:
            configs += [TileConfig(n, axis, pipeline) for n in distinct_tile_counts(extent)]
    return tuple(configs)


def canonical(workload: Workload, config: TileConfig) -> TileConfig:
    """The enumerated representative of `config` (the smallest N with the same tile length)."""
    tile = config.tile_extent(workload)
    extent = config.axis_extent(workload)
    n_tiles = next(n for n in distinct_tile_counts(extent) if -(-extent // n) == tile)
    return TileConfig(n_tiles, config.axis, config.pipeline)


@lru_cache(maxsize=32)
def lowered(workload: Workload, config: TileConfig) -> Program:
    """The program of `config` (cached: the fit check and the measurement lower it once)."""
    return lower_to_program(workload, config)


def fits(workload: Workload, config: TileConfig, hardware: HardwareConfig) -> bool:
    """Whether every on-chip buffer of the lowered program fits `hardware`."""
    return not overflowing(lowered(workload, config), hardware)


def fitting_configs(workload: Workload, hardware: HardwareConfig) -> list[TileConfig]:
    """The configs that can run on `hardware`: the space exhaustive search measures."""
    return [cfg for cfg in enumerate_configs(workload) if fits(workload, cfg, hardware)]
