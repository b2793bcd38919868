"""The hand-written schedule: N output tiles, a ping/pong accumulator, Conv and Add pipelined.

Every tile runs five stages, each one block that maps to one accelerator instruction:
LOAD the padded input tile, CONV into the accumulator, LOAD the residual tile, ADD the epilogue
into the output tile, STORE it. Weights (and bias) are loaded once, or per tile when the
output channels are tiled. The pipeline then overlaps the Conv of tile i+1 with the Add of
tile i, either with TVM's software pipelining (stages 0/1/2, InjectSoftwarePipeline versions
every buffer that crosses a stage into two slots) or with two virtual threads (each owns a copy
of the per-tile buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir

from tvm_convadd.errors import TileConfigError
from tvm_convadd.schedules.primfunc import ADD, CONV, PAD, convadd_primfunc
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.annotations import BUFFER_ATTR, STAGE_ROOT_ATTR, TILE_LOOP_ATTR, UNIT_ATTR

# Software-pipeline stage of each per-tile stage: load(i+2) | conv(i+1) + load res | add(i).
PIPELINE_STAGE = {"inp": 0, "wgt": 0, "bias": 0, "acc": 1, "res": 1, "out": 2, "store": 2}


@dataclass(frozen=True)
class Stage:
    """One block of the tile body: its role, the unit that runs it, the buffer it fills."""

    block: str
    unit: str
    buffer: str


def schedule_convadd(workload: Workload, config: TileConfig) -> s_tir.Schedule:
    """Schedule `convadd_primfunc(workload)` for `config` (validated against the workload)."""
    config.validate(workload)
    sch = s_tir.Schedule(tvm.IRModule({"main": convadd_primfunc(workload)}))
    stages = _add_cache_stages(sch, workload)
    tile_loop = _split_tiles(sch, config)
    per_tile = [s for s in stages if s.buffer in ("inp", "acc", "res", "out")]
    if config.axis == "channel":
        per_tile += [s for s in stages if s.buffer in ("wgt", "bias")]
    for stage in reversed(_program_order(per_tile)):
        sch.compute_at(sch.get_sblock(stage.block), tile_loop, preserve_unit_loops=True)
    for stage in stages:
        block = sch.get_sblock(stage.block)
        sch.annotate(block, UNIT_ATTR, stage.unit)
        sch.annotate(block, BUFFER_ATTR, stage.buffer)
        sch.annotate(_stage_root(sch, block, tile_loop), STAGE_ROOT_ATTR, stage.buffer)
    sch.annotate(tile_loop, TILE_LOOP_ATTR, config.n_tiles)
    _pipeline(sch, tile_loop, config)
    return sch


def _add_cache_stages(sch: s_tir.Schedule, workload: Workload) -> list[Stage]:
    """Give every operand an on-chip buffer: cache-read each input, cache-write the output."""
    wgt = sch.cache_read(CONV, "weight", "local.wgt")
    res = sch.cache_read(ADD, "residual", "local.res")
    store = sch.cache_write(ADD, 0, "local.out")
    sch.set_scope(PAD, 0, "local.inp")
    sch.set_scope(CONV, 0, "local.acc")
    stages = [
        Stage(sch.get(wgt).name_hint, "load", "wgt"),
        Stage(PAD, "load", "inp"),
        Stage(CONV, "conv", "acc"),
        Stage(sch.get(res).name_hint, "load", "res"),
        Stage(ADD, "add", "out"),
        Stage(sch.get(store).name_hint, "store", "store"),
    ]
    if workload.bias:
        bias = sch.cache_read(ADD, "bias", "local.bias")
        stages.insert(0, Stage(sch.get(bias).name_hint, "load", "bias"))
    return stages


def _stage_root(sch: s_tir.Schedule, block, tile_loop) -> s_tir.schedule.LoopRV:
    """The outermost loop that belongs to the stage alone (below the tile loop, if any)."""
    loops = sch.get_loops(block)
    tile = sch.get(tile_loop)
    inside = [i for i, loop in enumerate(loops) if sch.get(loop).same_as(tile)]
    return loops[inside[0] + 1] if inside else loops[0]


def _program_order(stages: list[Stage]) -> list[Stage]:
    """Producer-first order of the per-tile stages (compute_at then runs it in reverse)."""
    order = ["wgt", "bias", "inp", "acc", "res", "out"]
    return sorted(stages, key=lambda s: order.index(s.buffer))


def _split_tiles(sch: s_tir.Schedule, config: TileConfig) -> s_tir.schedule.LoopRV:
    """Split the tiled axis of the store block into N tiles and hoist the tile loop outermost."""
    store = sch.get_child_blocks(sch.get_sblock("root"))[-1]
    batch, channel, height, width = sch.get_loops(store)
    axis = {"height": height, "width": width, "channel": channel}[config.axis]
    tile, inner = sch.split(axis, [config.n_tiles, None])
    rest = [loop for loop in (channel, height, width) if loop != axis]
    if config.axis == "channel":
        sch.reorder(batch, tile, inner, *rest)
    else:
        sch.reorder(batch, tile, channel, *[loop for loop in (height, width) if loop != axis])
    if config.pipeline == "vthread":
        _, slot = sch.split(tile, [None, 2])
        return slot
    return tile


def _pipeline(sch: s_tir.Schedule, tile_loop, config: TileConfig) -> None:
    if config.pipeline == "software":
        body = sch.get_child_blocks(tile_loop)
        buffers = [str(sch.get(b).annotations[BUFFER_ATTR]) for b in body]
        sch.annotate(tile_loop, "software_pipeline_stage", [PIPELINE_STAGE[b] for b in buffers])
        sch.annotate(tile_loop, "software_pipeline_order", list(range(len(body))))
    elif config.pipeline == "vthread":
        sch.bind(tile_loop, "vthread.x")
    elif config.pipeline != "none":
        raise TileConfigError(f"pipeline mode {config.pipeline!r}: choose none, software, vthread")
