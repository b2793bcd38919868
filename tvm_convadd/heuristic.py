"""The untuned default: an analytic estimate of every config's cycles, best one that fits wins.

Per tile, the hardware's own cost functions give the Conv, Add and DMA cycles (issue overhead
and DMA latency included). A pipelined schedule costs one tile's trip through every unit (the
fill and drain) plus one steady-state period per further tile, the period being the busiest
unit, or Add + Load + Conv back to back when single-slot buffers ("none") forbid overlapping.
The same numbers are the features of the tuner's XGBoost cost model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from tvm_convadd.errors import TileConfigError
from tvm_convadd.schedules.tile_config import AXES, PIPELINES, TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.search_space import enumerate_configs, fits
from tvm_convadd.target.hardware import HardwareConfig

SLOTS = {"none": 1, "software": 2, "vthread": 2}  # copies of each per-tile buffer


@dataclass(frozen=True)
class TileCost:
    """Cycles of one tile on each unit, and the on-chip bytes of one slot of its buffers."""

    load: int
    conv_operands: int  # the part of `load` the first CONV waits for (input, weights)
    conv: int
    add: int
    store: int
    tile_bytes: int

    @property
    def period(self) -> int:
        """Steady-state cycles per tile once the pipeline is full (double buffered)."""
        return max(self.load, self.conv, self.add, self.store)


@dataclass(frozen=True)
class Estimate:
    """Predicted cycles of one config and the pieces they come from."""

    config: TileConfig
    tiles: int
    full: TileCost
    last: TileCost
    once: int  # loads done once before the tile loop (weights and bias unless channel-tiled)
    cycles: int
    buffer_bytes: int  # all per-tile buffers, all slots


def tile_cost(workload: Workload, axis: str, length: int, hardware: HardwareConfig) -> TileCost:
    """Unit cycles of the first output tile `length` long along `axis` (its DMA regions are
    the ones the lowering emits for tile 0: padding clipped off, runs counted in DRAM)."""
    wl, elem, dtype = workload, 4, workload.dtype
    batch, channels, rows, cols = wl.out_shape
    in_rows, in_cols = wl.padded_height, wl.padded_width
    if axis == "height":
        rows, in_rows = length, (length - 1) * wl.stride[0] + wl.kernel_h
    elif axis == "width":
        cols, in_cols = length, (length - 1) * wl.stride[1] + wl.kernel_w
    else:
        channels = length
    top, _, left, _ = wl.padding
    out_region = ((0, batch), (0, channels), (0, rows), (0, cols))
    inp_region = ((0, batch), (0, wl.in_channels), (-top, in_rows), (-left, in_cols))
    conv_operands = hardware.region_dma_cycles(inp_region, wl.data_shape, dtype)
    loads = [hardware.region_dma_cycles(out_region, wl.out_shape, dtype)]  # the residual
    if axis == "channel":  # weights and bias follow the output channels into the tile loop
        wgt_region = ((0, channels), *((0, d) for d in wl.weight_shape[1:]))
        conv_operands += hardware.region_dma_cycles(wgt_region, wl.weight_shape, dtype)
        if wl.bias:
            bias_region = ((0, 1), (0, channels), (0, 1), (0, 1))
            loads.append(hardware.region_dma_cycles(bias_region, wl.bias_shape, dtype))
    out = batch * channels * rows * cols
    reduction = wl.in_channels * wl.kernel_h * wl.kernel_w
    return TileCost(
        load=conv_operands + sum(loads),
        conv_operands=conv_operands,
        conv=hardware.conv_cycles(batch * rows * cols, reduction, channels),
        add=hardware.add_cycles(out),
        store=hardware.region_dma_cycles(out_region, wl.out_shape, dtype),
        tile_bytes=(batch * wl.in_channels * in_rows * in_cols + 3 * out) * elem,
    )


def estimate(workload: Workload, config: TileConfig, hardware: HardwareConfig) -> Estimate:
    """Predicted cycles of `config`: fill + drain of one tile, then one period per tile."""
    extent, length = config.axis_extent(workload), config.tile_extent(workload)
    tiles = config.effective_tiles(workload)
    full = tile_cost(workload, config.axis, length, hardware)
    last = tile_cost(workload, config.axis, extent - (tiles - 1) * length, hardware)
    once = 0
    if config.axis != "channel":
        whole = lambda shape: tuple((0, d) for d in shape)  # noqa: E731
        once = hardware.region_dma_cycles(
            whole(workload.weight_shape), workload.weight_shape, workload.dtype
        )
        if workload.bias:
            once += hardware.region_dma_cycles(
                whole(workload.bias_shape), workload.bias_shape, workload.dtype
            )
    first = full if tiles > 1 else last
    # the first tile: its loads, its conv, its add, its store; software pipelining issues the
    # epilogue's loads after the conv's, so they run under the first conv
    epilogue_loads = first.load - first.conv_operands
    overlap = min(first.conv, epilogue_loads) if config.pipeline == "software" else 0
    fill = once + first.load + first.conv + first.add + first.store - overlap
    if config.pipeline == "none":
        # one slot per buffer: load(i+1) waits for add(i) to free the residual, conv(i+1) for
        # that load: Add, Load and Conv run back to back
        period = max(full.conv + full.add + full.load, full.add + full.store)
        last_period = max(last.conv + last.add + last.load, last.add + last.store)
    else:
        period, last_period = full.period, last.period
    steady = (tiles - 2) * period + last_period if tiles > 1 else 0
    if config.pipeline == "vthread" and tiles > 1:  # a tile pair's loads precede its convs
        fill += full.load
    return Estimate(
        config, tiles, full, last, once, fill + steady, full.tile_bytes * SLOTS[config.pipeline]
    )


@lru_cache(maxsize=4096)
def features(workload: Workload, config: TileConfig, hardware: HardwareConfig) -> tuple[float, ...]:
    """The XGBoost cost model's view of a config: knobs plus the analytic estimate's parts."""
    est = estimate(workload, config, hardware)
    extent, length = config.axis_extent(workload), config.tile_extent(workload)
    log = lambda x: math.log2(max(x, 1))  # noqa: E731
    return (
        log(est.tiles),
        float(length),
        length / extent,
        float(extent % length != 0),
        *(float(config.axis == a) for a in AXES),
        *(float(config.pipeline == p) for p in PIPELINES),
        log(est.full.conv),
        log(est.full.add),
        log(est.full.load),
        log(est.full.store),
        log(est.full.period),
        log(est.once),
        log(est.buffer_bytes),
        log(est.cycles),
    )


def ranked(workload: Workload, hardware: HardwareConfig) -> list[Estimate]:
    """Every config of the search space, best predicted first (ties: fewer tiles first)."""
    estimates = [estimate(workload, cfg, hardware) for cfg in enumerate_configs(workload)]
    return sorted(estimates, key=lambda e: (e.cycles, e.tiles, AXES.index(e.config.axis)))


def default_config(workload: Workload, hardware: HardwareConfig) -> TileConfig:
    """The best predicted config that fits `hardware` (lowered, best first, until one fits)."""
    for est in ranked(workload, hardware):
        if fits(workload, est.config, hardware):
            return est.config
    raise TileConfigError(
        f"no tile config of {workload} fits {hardware.name}: pick a target with bigger buffers"
    )
