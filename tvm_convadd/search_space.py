"""The tuner's search space: every TileConfig of a workload, one per distinct program."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING

from tvm_convadd.schedules.tile_config import (
    LINE_PIPELINES,
    ORDERS,
    PIPELINES,
    SPATIAL_AXES,
    TileConfig,
    vthread_pairs_fit,
    whole_groups,
)
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.isa import Program
from tvm_convadd.target.lower import lower_to_program, overflowing

if TYPE_CHECKING:
    from tvm_convadd.target.hardware import HardwareConfig


def distinct_tile_counts(extent: int, keep=None) -> tuple[int, ...]:
    """Tile counts 1..extent, one per tile length ceil(extent / N), the smallest N of each;
    with `keep`, only counts whose tile length it accepts.

    N's with the same tile length split the axis at the same points (the surplus tiles are
    empty and predicated off), so they lower to the same program; measuring more than one of
    them would waste trials. Non-divisors stay in: their last tile is ragged.
    """
    counts, seen = [], set()
    for n_tiles in range(1, extent + 1):
        tile = -(-extent // n_tiles)
        if tile not in seen and (keep is None or keep(tile)):
            seen.add(tile)
            counts.append(n_tiles)
    return tuple(counts)


# Reduction splits the space offers, each on every software-pipelined tiling: halving the
# chunk each time, as long as a chunk still reduces over at least MIN_CHUNK_REDUCTION taps.
REDUCE_COUNTS = (2, 4, 8, 16)
MIN_CHUNK_REDUCTION = 16


def reduce_tile_counts(workload: Workload) -> tuple[int, ...]:
    """The reduction splits of an ungrouped conv the space holds (none for a grouped one):
    distinct chunk lengths, each chunk reducing over enough taps to fill a fold."""
    if workload.groups > 1:
        return ()
    taps = workload.kernel_h * workload.kernel_w
    counts, lengths = [], set()
    for count in REDUCE_COUNTS:
        chunk = -(-workload.in_channels // count)
        if count <= workload.in_channels and chunk * taps >= MIN_CHUNK_REDUCTION:
            if chunk not in lengths:
                lengths.add(chunk)
                counts.append(count)
    return tuple(counts)


def channel_tile_counts(workload: Workload) -> tuple[int, ...]:
    """Distinct channel tile counts whose tiles hold whole groups or lie within one."""
    return distinct_tile_counts(workload.out_channels, lambda tile: whole_groups(workload, tile))


@lru_cache(maxsize=256)
def enumerate_configs(workload: Workload) -> tuple[TileConfig, ...]:
    """Every distinct config of `workload` in a stable order (the tuner's categorical decision
    is an index into it): 1-D tiles by axis, pipeline, then N (one tile once, as N=1 along
    height); then the 2-D grids by spatial
    axis, order, pipeline, spatial N and channel N (both at least 2: a grid with one row is a
    1-D tiling); then every software-pipelined one of those with each reduction split."""
    channel_counts = channel_tile_counts(workload)
    configs = []
    for axis in SPATIAL_AXES:
        extent = TileConfig(1, axis).axis_extent(workload)
        for pipeline in LINE_PIPELINES:
            counts = distinct_tile_counts(extent)
            configs += [TileConfig(n, axis, pipeline) for n in counts if n > 1 or axis == "height"]
    for pipeline in LINE_PIPELINES:
        configs += [TileConfig(n, "channel", pipeline) for n in channel_counts if n > 1]
    for axis in SPATIAL_AXES:
        extent = TileConfig(1, axis).axis_extent(workload)
        for order in ORDERS:
            for pipeline in PIPELINES:
                configs += [
                    TileConfig(n, axis, pipeline, channel_tiles=c, order=order)
                    for n in distinct_tile_counts(extent)
                    if n > 1
                    for c in channel_counts
                    if c > 1
                ]
    configs = [c for c in configs if vthread_pairs_fit(workload, c)]
    splits = reduce_tile_counts(workload)
    configs += [
        replace(config, reduce_tiles=r)
        for config in configs
        if config.pipeline == "software"
        for r in splits
    ]
    return tuple(configs)


def canonical(workload: Workload, config: TileConfig) -> TileConfig:
    """The enumerated representative of `config`: the smallest counts with the same tile
    lengths; a grid of one spatial tile is the channel axis, one of one channel tile the
    spatial axis, and a single tile is N=1 along height."""
    spatial = 1
    if config.axis != "channel":
        spatial = _smallest(config.axis_extent(workload), config.tile_extent(workload))
    channel = _smallest(workload.out_channels, config.channel_tile_extent(workload))
    pipeline = config.pipeline
    if pipeline not in LINE_PIPELINES and not (spatial > 1 and channel > 1):
        # a streamed-weights grid that collapses to one axis has no equal in the space: its
        # nearest is that axis's software pipeline (which double-buffers the input too)
        pipeline = "software"
    split = _smallest(workload.in_channels, config.reduce_tile_extent(workload))
    if spatial > 1 and channel > 1:
        found = TileConfig(
            spatial, config.axis, pipeline, channel_tiles=channel, order=config.order
        )
    elif channel > 1:
        found = TileConfig(channel, "channel", pipeline)
    else:
        found = TileConfig(spatial, config.axis if spatial > 1 else "height", pipeline)
    return replace(found, reduce_tiles=split)


def _smallest(extent: int, tile: int) -> int:
    """The smallest count that cuts `extent` into tiles of length `tile`."""
    return -(-extent // tile)


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
