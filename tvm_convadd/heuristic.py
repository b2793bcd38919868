"""The untuned default: an analytic estimate of every config's cycles, best one that fits wins.

Per tile, the hardware's own cost functions give the Conv, Add and DMA cycles (issue overhead
and DMA latency included). A pipelined schedule costs one tile's trip through every unit (the
fill) plus, for the other tiles, the busiest unit's remaining work, or Add + Load + Conv back
to back when single-slot buffers ("none") forbid overlapping. LOADs follow the lowering's
redundant-load elimination: a slot that still holds the window a tile needs is not reloaded,
which is how a 2-D grid reuses weights (or inputs) across the tiles of its inner index.
A reduction split costs a tile as the sum of its chunks; its first CONV waits for one chunk,
a chunk keeps its slot across tiles only when the chunks fit the slots, and a tile's
epilogue transfers, holding the one DRAM channel, stall a conv that has one chunk in hand.
The same numbers feed the tuner's cost model (`cost_model.py`) as features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from tvm_convadd.errors import TileConfigError
from tvm_convadd.schedules.tile_config import AXES, TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.search_space import enumerate_configs, fits
from tvm_convadd.target.hardware import HardwareConfig

SLOTS = {"none": 1, "software": 2, "vthread": 2, "stream_weights": 2}  # per-tile buffer copies
INPUT_SLOTS = {**SLOTS, "stream_weights": 1}  # the input's: streaming weights loads it just in time


@dataclass(frozen=True)
class TileCost:
    """Cycles of one tile on each unit, and the on-chip bytes of one slot of its buffers.

    `loads` is per operand (inp, wgt, each epilogue operand): the cost of loading it for this
    tile, whether or not a reused slot makes the load unnecessary.
    """

    loads: dict
    conv: int
    add: int
    store: int
    tile_bytes: int
    head: int = 0  # split: the first chunk's conv operands, what the first CONV waits for
    last_conv: int = 0  # split: the last chunk's conv, which no load of this tile hides under

    @property
    def load(self) -> int:
        return sum(self.loads.values())

    @property
    def conv_operands(self) -> int:
        """The part of `load` the first CONV waits for (input, weights)."""
        return self.loads["inp"] + self.loads.get("wgt", 0)

    @property
    def period(self) -> int:
        """Steady-state cycles per tile once the pipeline is full (double buffered)."""
        return max(self.load, self.conv, self.add, self.store)


@dataclass(frozen=True)
class Estimate:
    """Predicted cycles of one config and the pieces they come from.

    `busy` is each unit's predicted busy cycles over the whole layer (load counts only the
    LOADs that survive reuse); its maximum is the layer's bound on this machine.
    """

    config: TileConfig
    tiles: int
    full: TileCost
    last: TileCost
    once: int  # loads done once before the tile loop (weights and channel vectors if untiled)
    cycles: int
    buffer_bytes: int  # all buffers, all slots
    busy: dict


@dataclass(frozen=True)
class _Grid:
    """The tile grid: lengths of the spatial tiles (along `axis`) and of the channel tiles."""

    spatial: tuple[int, ...]
    channel: tuple[int, ...]
    channel_outer: bool


def _lengths(extent: int, count: int) -> tuple[int, ...]:
    tile = -(-extent // count)
    full = extent // tile
    rest = extent - full * tile
    return (tile,) * full + ((rest,) if rest else ())


def _grid(workload: Workload, config: TileConfig) -> _Grid:
    spatial_axis = "height" if config.axis == "channel" else config.axis
    extent = TileConfig(1, spatial_axis).axis_extent(workload)
    spatial = _lengths(extent, config.spatial_count)
    channel = _lengths(workload.out_channels, config.channel_count)
    return _Grid(spatial, channel, config.order == "channel_outer")


@lru_cache(maxsize=65536)
def split_tile_cost(
    workload: Workload,
    axis: str,
    length: int,
    hardware: HardwareConfig,
    channels: int | None,
    chunks: tuple[int, ...],
) -> TileCost:
    """A tile whose input channels come in `chunks` (a reduction split): its conv operands
    and conv summed over the chunks, the rest once; one slot holds the largest chunk."""
    parts = [tile_cost(workload, axis, length, hardware, channels, c) for c in chunks]
    first = parts[0]
    conv_loads = {n: sum(p.loads[n] for p in parts) for n in ("inp", "wgt")}
    return TileCost(
        loads={**first.loads, **conv_loads},
        conv=sum(p.conv for p in parts),
        add=first.add,
        store=first.store,
        tile_bytes=first.tile_bytes,
        head=first.conv_operands,
        last_conv=parts[-1].conv,
    )


@lru_cache(maxsize=65536)
def tile_cost(
    workload: Workload,
    axis: str,
    length: int,
    hardware: HardwareConfig,
    channels: int | None = None,
    chunk: int | None = None,
    whole_input: bool = False,
) -> TileCost:
    """Unit cycles of the first output tile `length` long along `axis` (and `channels` wide; a
    channel `axis` makes `length` the channel count), or with `chunk` of its first `chunk`
    input channels' share (a reduction split's CONV). Its DMA regions are those the lowering
    emits for tile 0: the input window the tile reads (`whole_input`: the padded input, loaded
    once), padding clipped off, runs counted in DRAM."""
    wl, dtype = workload, workload.dtype
    batch, out_channels, rows, cols = wl.out_shape
    channels = out_channels if channels is None else channels
    if axis == "height":
        rows = length
    elif axis == "width":
        cols = length
    else:
        channels = length
    in_rows = (rows - 1) * wl.stride[0] + wl.kernel_h
    in_cols = (cols - 1) * wl.stride[1] + wl.kernel_w
    if whole_input:
        in_rows, in_cols = wl.padded_height, wl.padded_width
    groups = -(-channels // wl.group_out_channels)  # groups in the tile (whole, by validation)
    in_channels = min(wl.in_channels, groups * wl.group_in_channels)
    reduced = wl.weight_shape[1] if chunk is None else chunk  # the weight's C this CONV sums
    in_channels = in_channels if chunk is None else chunk
    top, _, left, _ = wl.padding
    out_region = ((0, batch), (0, channels), (0, rows), (0, cols))
    inp_region = ((0, batch), (0, in_channels), (-top, in_rows), (-left, in_cols))
    wgt_region = ((0, channels), (0, reduced), *((0, d) for d in wl.weight_shape[2:]))
    vec_region = ((0, 1), (0, channels), (0, 1), (0, 1))
    loads = {
        "inp": hardware.region_dma_cycles(inp_region, wl.data_shape, dtype),
        "wgt": hardware.region_dma_cycles(wgt_region, wl.weight_shape, dtype),
    }
    for name, shape in wl.operand_shapes.items():
        region = out_region if shape == wl.out_shape else vec_region
        loads[name] = hardware.region_dma_cycles(region, shape, dtype)
    out = batch * channels * rows * cols
    pixels, per_group = batch * rows * cols, wl.group_out_channels
    reduction = reduced * wl.kernel_h * wl.kernel_w
    conv_groups = groups if wl.groups > 1 else 1
    conv_channels = per_group if wl.groups > 1 else channels
    vectors = sum(1 for shape in wl.operand_shapes.values() if shape != wl.out_shape)
    tensors = len(wl.operand_shapes) - vectors
    return TileCost(
        loads=loads,
        conv=hardware.conv_cycles(pixels, reduction, conv_channels, conv_groups),
        add=add_cycles(hardware, out, tuple(op.op for op in wl.epilogue)),
        store=hardware.region_dma_cycles(out_region, wl.out_shape, dtype),
        tile_bytes=(
            batch * in_channels * in_rows * in_cols
            + channels * reduced * wl.kernel_h * wl.kernel_w
            + (2 + tensors) * out
            + vectors * channels
        )
        * 4,
    )


def add_cycles(hardware: HardwareConfig, elements: int, ops: tuple[str, ...]) -> int:
    """One ADD of `elements` outputs applying `ops` (the hardware's cost function)."""
    return hardware.add_cycles(elements, ops)


def _depends(workload: Workload, config: TileConfig, operand: str) -> tuple[bool, bool]:
    """Whether an operand's window changes with the (spatial, channel) tile index."""
    channel_tiled = config.channel_count > 1
    if operand == "inp":
        return True, channel_tiled and workload.groups > 1
    if operand == "wgt" or workload.operand_shapes[operand] != workload.out_shape:
        return False, channel_tiled
    return True, channel_tiled


def _loads(outer: int, inner: int, slots: int, on_outer: bool, on_inner: bool) -> int:
    """LOADs of an operand over an outer x inner tile walk, tile t filling slot t % slots,
    when a slot still holding the needed window is not reloaded."""
    tiles = outer * inner
    if on_outer and on_inner:
        return tiles
    if on_outer:  # each value runs `inner` tiles back to back
        return outer * min(inner, slots)
    if on_inner:  # the values cycle; a slot keeps its value only if the cycle fits the slots
        return min(tiles, slots) if slots % inner == 0 else tiles
    return min(tiles, slots)


def estimate(workload: Workload, config: TileConfig, hardware: HardwareConfig) -> Estimate:
    """Predicted cycles of `config`: the first tile's trip, then the busiest unit's rest.

    Conv operands (input, weights) come in on the load queue, the epilogue's on vload; every
    transfer's bytes also pass the one DRAM channel, whose busy cycles bound the layer too."""
    grid = _grid(workload, config)
    axis = config.axis if config.axis != "channel" else "height"
    spatial_tiled = config.axis != "channel"

    chunks = _lengths(workload.in_channels, config.reduce_tiles)
    split = len(chunks) > 1
    whole_input = config.input_once(workload)

    def cost(rows: int, channels: int) -> TileCost:
        if split:
            return split_tile_cost(workload, axis, rows, hardware, channels, chunks)
        return tile_cost(workload, axis, rows, hardware, channels, None, whole_input)

    slots = SLOTS[config.pipeline]
    ns, nc = len(grid.spatial), len(grid.channel)
    tiles = ns * nc
    once_names = ["wgt"] if config.channel_count == 1 and not split else []
    if whole_input:  # the whole input, before the tile loop
        once_names.append("inp")
    if config.channel_count == 1:
        once_names += [n for n, s in workload.operand_shapes.items() if s != workload.out_shape]
    shapes = {  # distinct tile shapes (at most four: full and ragged along each axis)
        (r, c): grid.spatial.count(r) * grid.channel.count(c)
        for r in set(grid.spatial)
        for c in set(grid.channel)
    }
    first = cost(grid.spatial[0], grid.channel[0])
    once = {q: sum(first.loads[n] for n in once_names if _queue(n) == q) for q in QUEUES}
    busy = {"load": once["load"], "vload": once["vload"], "conv": 0, "add": 0, "store": 0}
    transfers = len(once_names) + tiles  # DMA instructions: once-loads, per-tile loads, stores
    mean, counts = {}, {}
    for name in first.loads:
        if name in once_names:
            continue
        on_s, on_c = _depends(workload, config, name)
        if not spatial_tiled:
            on_s = False
        outer, inner = (nc, ns) if grid.channel_outer else (ns, nc)
        on_outer, on_inner = (on_c, on_s) if grid.channel_outer else (on_s, on_c)
        operand_slots = INPUT_SLOTS[config.pipeline] if name == "inp" else slots
        chunked = split and name in ("inp", "wgt")
        if chunked:  # each chunk keeps a slot of its own only if the chunks fit the slots
            count = _loads(outer, inner, 1, on_outer, on_inner) if len(chunks) <= slots else tiles
        else:
            count = _loads(outer, inner, operand_slots, on_outer, on_inner)
        counts[name] = count
        total = sum(n * cost(r, c).loads[name] for (r, c), n in shapes.items())
        mean[name] = total / tiles
        busy[_queue(name)] += round(count * mean[name])
        transfers += count * (len(chunks) if chunked else 1)
    for (rows, channels), n in shapes.items():
        tile = cost(rows, channels)
        busy["conv"] += n * tile.conv
        busy["add"] += n * tile.add
        busy["store"] += n * tile.store
    setup = hardware.dma_setup_cycles
    dma = busy["load"] + busy["vload"] + busy["store"]
    busy["dram"] = max(dma - transfers * setup, 0) if hardware.dma_bytes_per_cycle else 0
    first_loads = {q: sum(first.loads[n] for n in mean if _queue(n) == q) for q in QUEUES}
    # the first tile: conv operands then its conv on one side, the epilogue's operands on the
    # other queue meanwhile, then its add and store
    firsts = {
        "load": once["load"] + first_loads["load"],
        "vload": once["vload"] + first_loads["vload"],
        "conv": first.conv,
        "add": first.add,
        "store": first.store,
    }
    conv_done = firsts["load"] + first.conv
    if split:  # chunk j+1 loads under the conv of chunk j (nothing conv-side loads once)
        conv_done = max(first.head + first.conv, firsts["load"] + first.last_conv)
    add_ready = max(conv_done, firsts["vload"])
    fill = add_ready + first.add + first.store
    rest = {unit: max(busy[unit] - firsts[unit], 0) for unit in firsts}
    if config.pipeline == "none":
        # one slot per buffer: conv(i+1) overwrites the acc add(i) reads, and add(i+1) the out
        # store(i) reads and the residual add(i) reads: conv and add alternate, and after
        # each add the next residual and this output cross the one DRAM channel in turn
        epilogue_dma = rest["store"] + rest["vload"] - setup * (tiles - 1)
        steady = max(
            rest["conv"] + max(rest["add"], rest["load"]),
            rest["add"] + (epilogue_dma if hardware.dma_bytes_per_cycle else rest["store"]),
        )
    else:
        bubble = 0
        if split:
            # a chunk's loads that come again on every tile (reused ones stay on chip)
            reloaded = sum(mean[n] for n in ("inp", "wgt") if counts[n] >= tiles) / len(chunks)
            if len(chunks) % 2:  # the tile ends on the slot the next one's first chunk needs
                bubble += round(reloaded)
            if hardware.dma_bytes_per_cycle and reloaded:
                bubble += _epilogue_stall(workload, first, len(chunks), reloaded, mean, setup)
        per_tile = _tile_periods(config, tiles, rest, mean, counts, setup, hardware, bubble)
        steady = max(*rest.values(), per_tile)
    if config.pipeline == "vthread" and tiles > 1:  # a tile pair's loads precede its convs
        fill += first_loads["load"]
    once_bytes_names = [n for n in once_names if n != "inp"]
    once_bytes = sum(_bytes(workload, name, grid.channel[0]) for name in once_bytes_names)
    buffer_bytes = first.tile_bytes * slots + once_bytes * (1 - slots)
    last = cost(grid.spatial[-1], grid.channel[-1])
    # the channel's own bound: the first setup, every byte, then the last tile's add and the
    # setup of its store, which nothing can overlap
    last_add = cost(grid.spatial[-1], grid.channel[-1]).add
    channel = 2 * setup + busy["dram"] + last_add if hardware.dma_bytes_per_cycle else 0
    cycles = max(fill + steady, channel)
    return Estimate(config, tiles, first, last, sum(once.values()), cycles, buffer_bytes, busy)


def _tile_periods(config, tiles, rest, mean, counts, setup, hardware, bubble=0) -> int:
    """The pipelined tiles after the first, tile by tile: a load prefetches one tile ahead, so
    an operand reloaded only every few tiles (the input of a spatial_outer grid) must hide
    under one tile's conv, not under the average. Each tile lasts as long as its busiest unit
    (or the DRAM channel); the sparse loads land on the same tiles. With streamed weights the
    input loads just in time: the conv waits for it."""
    if tiles < 2:
        return 0
    later = tiles - 1
    limited = hardware.dma_bytes_per_cycle is not None
    per = {unit: rest[unit] / later for unit in ("conv", "add", "store")}
    queues = {"load": 0.0, "vload": 0.0}
    dram = (per["store"] - setup) if limited else 0.0
    sparse = {}
    for name, cost in mean.items():
        if counts[name] >= tiles:
            queues[_queue(name)] += cost
            dram += (cost - setup) if limited else 0.0
        else:
            sparse[name] = cost
    jit_input = config.pipeline == "stream_weights"
    conv = per["conv"] + bubble
    conv += mean.get("inp", 0.0) if jit_input and "inp" not in sparse else 0.0
    dense = max(conv, per["add"], per["store"], *queues.values(), dram)
    if not sparse:
        return round(later * dense)
    heavy = min(max(counts[name] for name in sparse) - 1, later)
    for name, cost in sparse.items():
        queues[_queue(name)] += cost
        dram += (cost - setup) if limited else 0.0
    if jit_input and "inp" in sparse:
        conv += sparse["inp"]
    loaded = max(conv, per["add"], per["store"], *queues.values(), dram)
    return round((later - heavy) * dense + heavy * loaded)


def _epilogue_stall(workload, first: TileCost, chunks: int, reloaded: float, mean, setup) -> int:
    """Conv cycles a split tile loses to its epilogue's transfers: the DRAM channel serves one
    transfer at a time, first come first served, so a tile's residual loads and result store
    hold it whole while the conv has only the next chunk (`reloaded` cycles of loads) to
    work on."""
    epilogue = first.store - setup
    for name, shape in workload.operand_shapes.items():
        if shape == workload.out_shape:
            epilogue += mean[name] - setup
    slack = first.conv / chunks - reloaded
    return max(round(epilogue - slack), 0)


QUEUES = ("load", "vload")  # the read queues: conv operands, epilogue operands


def _queue(operand: str) -> str:
    """The read queue of an operand: inp and wgt on load, the epilogue's on vload."""
    return "load" if operand in ("inp", "wgt") else "vload"


def _bytes(workload: Workload, name: str, channels: int) -> int:
    if name == "wgt":
        return channels * math.prod(workload.weight_shape[1:]) * 4
    return channels * 4


def ranked(workload: Workload, hardware: HardwareConfig) -> list[Estimate]:
    """Every config of the search space, best predicted first (ties: fewer tiles first)."""
    estimates = [estimate(workload, cfg, hardware) for cfg in enumerate_configs(workload)]
    return sorted(estimates, key=lambda e: (e.cycles, e.tiles, AXES.index(e.config.axis)))


def footprint(workload: Workload, config: TileConfig) -> dict[str, int]:
    """Bytes per buffer pool that the lowered program allocates, all slots: a lower bound,
    exact but for the input of a ragged strided tiling, which TVM's buffer compaction
    over-allocates. Slots as the schedule gets them: a per-tile buffer crossing a pipeline
    stage has two (three for a per-channel vector, read two stages later), `out` included
    (its store is a stage of its own); what loads once has one."""
    grid = _grid(workload, config)
    rows, channels = grid.spatial[0], grid.channel[0]
    batch, _, out_h, out_w = workload.out_shape
    height, width = (rows, out_w) if config.axis != "width" else (out_h, rows)
    in_rows = (height - 1) * workload.stride[0] + workload.kernel_h
    in_cols = (width - 1) * workload.stride[1] + workload.kernel_w
    groups = -(-channels // workload.group_out_channels) if workload.groups > 1 else 1
    in_channels = min(workload.in_channels, groups * workload.group_in_channels)
    split = config.reduce_tiles > 1
    reduced = config.reduce_tile_extent(workload) if split else workload.weight_shape[1]
    if split:
        in_channels = reduced
    whole_input = config.input_once(workload)
    if whole_input:  # loaded whole: the padded input
        in_rows, in_cols = workload.padded_height, workload.padded_width
    tile = SLOTS[config.pipeline]
    channel_tiled = config.channel_count > 1
    vector_slots = {"none": 1, "software": 3, "vthread": 2, "stream_weights": 3}
    vector_slots = vector_slots[config.pipeline] if channel_tiled else 1
    out_tile = batch * channels * height * width
    tensors = sum(1 for s in workload.operand_shapes.values() if s == workload.out_shape)
    vectors = len(workload.operand_shapes) - tensors
    elem = 4
    return {
        "inp": (1 if whole_input else INPUT_SLOTS[config.pipeline])
        * batch
        * in_channels
        * in_rows
        * in_cols
        * elem,
        "wgt": (tile if channel_tiled or split else 1)
        * channels
        * reduced
        * workload.kernel_h
        * workload.kernel_w
        * elem,
        "acc": tile * out_tile * elem,
        "res": tensors * tile * out_tile * elem,
        "out": tile * out_tile * elem,
        "bias": vectors * vector_slots * channels * elem,
    }


def may_fit(workload: Workload, config: TileConfig, hardware: HardwareConfig) -> bool:
    """Whether the footprint's lower bound fits: False proves the config cannot run."""
    return all(
        need <= hardware.pool_bytes(pool) for pool, need in footprint(workload, config).items()
    )


def default_config(workload: Workload, hardware: HardwareConfig) -> TileConfig:
    """The best predicted config that fits `hardware` (lowered, best first, until one fits).

    Configs whose footprint cannot fit are skipped unlowered, so usually one is lowered."""
    best = best_fitting(workload, hardware, 1)
    if not best:
        raise TileConfigError(_no_fit_message(workload, hardware))
    return best[0]


def best_fitting(workload: Workload, hardware: HardwareConfig, count: int) -> list[TileConfig]:
    """The `count` best-ranked configs that fit `hardware`, best first (fewer if fewer fit);
    the footprint bound skips most of the others unlowered."""
    found = []
    for est in ranked(workload, hardware):
        if may_fit(workload, est.config, hardware) and fits(workload, est.config, hardware):
            found.append(est.config)
            if len(found) == count:
                break
    return found


def _no_fit_message(workload: Workload, hardware: HardwareConfig) -> str:
    """Name the buffer that cannot fit: the pool whose smallest need over every tiling
    (weights streamed per channel tile included) still exceeds its capacity."""
    configs = enumerate_configs(workload)
    for pool in ("wgt", "inp", "acc", "out", "res", "bias"):
        needs = [(footprint(workload, c)[pool], c) for c in configs]
        need, config = min(needs, key=lambda pair: pair[0])
        available = hardware.pool_bytes(pool)
        if need > available:
            return (
                f"layer {workload}: its {pool} buffer needs {need} bytes even at its smallest "
                f"tiling ({config}), {hardware.name} has {available}: pick a target with a "
                f"bigger {pool} buffer"
            )
    return (
        f"layer {workload}: no tile config fits {hardware.name} (each buffer fits alone, not "
        "all together): pick a target with bigger buffers"
    )
