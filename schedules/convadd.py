"""The hand-written schedule: a grid of output tiles, a ping/pong accumulator, Conv and Add
pipelined.

Every tile runs its stages, each one block that maps to one accelerator instruction: LOAD the
padded input tile, CONV into the accumulator, LOAD each tensor operand of the epilogue (a
residual), ADD the epilogue chain into the output tile, STORE it. Weights and the epilogue's
per-channel operands (bias, scale) are loaded once, or per tile when the output channels are
tiled. A 2-D grid (a spatial axis and `channel_tiles`) fuses its two tile loops into one in the
config's order, so the pipeline sees one loop of tiles. The pipeline then overlaps the Conv of
tile i+1 with the Add of tile i, either with TVM's software pipelining (stages 0/1/2,
InjectSoftwarePipeline versions every buffer that crosses a stage into two slots) or with two
virtual threads (each owns a copy of the per-tile buffers). "stream_weights" software-pipelines
a grid with the input load in its conv's stage: the input keeps one slot, and the weights of
the next channel tile stream in under the conv of this one. A reduction split (`reduce_tiles`)
cuts the conv's input-channel loop in the tile: under it, LOAD input chunk, LOAD weight chunk and
an accumulating CONV, a pipeline of its own (loads | conv) nested in the tile loop's, so chunk
j+1 loads while chunk j convolves and the accumulator stays one slot of the tile's.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir

from tvm_convadd.errors import TileConfigError
from tvm_convadd.schedules.primfunc import ADD, CONV, PAD, convadd_primfunc
from tvm_convadd.schedules.tile_config import PIPELINES, TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.annotations import (
    BUFFER_ATTR,
    EPILOGUE_KINDS,
    STAGE_ROOT_ATTR,
    TILE_LOOP_ATTR,
    UNIT_ATTR,
    epilogue_family,
    operand_buffer,
)

# Software-pipeline stage of each per-tile stage: load(i+3) | conv(i+2) + load res | add(i+1)
# | store(i). The store has a stage of its own so that `out` crosses a stage and gets two slots:
# ADD i+1 does not wait for STORE i.
PIPELINE_STAGE = {"inp": 0, "wgt": 0, "channel": 0, "acc": 1, "tensor": 1, "out": 2, "store": 3}
# Producer-first order of a tile's stages (compute_at then runs it in reverse).
PROGRAM_ORDER = ("wgt", "channel", "inp", "acc", "tensor", "out")
# A reduction chunk's stages, and their stages in the nested pipeline: loads(j+1) | conv(j).
CHUNK_ROLES = ("wgt", "inp")
CHUNK_STAGE = {"wgt": 0, "inp": 0, "acc": 1}
# InjectSoftwarePipeline expands a nested pipelined loop into prologue, body and epilogue
# before it versions the outer loop, whose annotation then needs one entry for each.
NESTED_STATEMENTS = 3


@dataclass(frozen=True)
class Stage:
    """One block of the tile body: its role, the unit that runs it, the buffer it fills."""

    block: str
    unit: str
    buffer: str

    @property
    def role(self) -> str:
        return buffer_role(self.buffer)


def buffer_role(buffer: str) -> str:
    """The buffer, or for an epilogue operand's buffer what it holds: "tensor" or "channel"."""
    family = epilogue_family(buffer)
    return buffer if family is None else EPILOGUE_KINDS[family]


def schedule_convadd(workload: Workload, config: TileConfig) -> s_tir.Schedule:
    """Schedule `convadd_primfunc(workload)` for `config` (validated against the workload)."""
    config.validate(workload)
    sch = s_tir.Schedule(tvm.IRModule({"main": convadd_primfunc(workload)}))
    stages = _add_cache_stages(sch, workload)
    tile_loop = _split_tiles(sch, workload, config)
    # A channel-only tiling of an ungrouped conv reads the whole input in every tile: it loads
    # once before the tile loop (one slot), as the weights do when the channels are not cut.
    whole_input = config.input_once(workload)
    split = config.reduce_tiles > 1
    per_tile = [s for s in stages if s.role in ("acc", "tensor", "out")]
    per_tile += [s for s in stages if s.role == "inp" and not whole_input and not split]
    if config.channel_count > 1:
        per_tile += [s for s in stages if s.role == "channel"]
    if config.channel_count > 1 and not split:
        per_tile += [s for s in stages if s.role == "wgt"]
    for stage in reversed(_program_order(per_tile)):
        sch.compute_at(sch.get_sblock(stage.block), tile_loop, preserve_unit_loops=True)
    chunk_loop = _split_reduction(sch, workload, config, stages) if split else None
    for stage in stages:
        block = sch.get_sblock(stage.block)
        sch.annotate(block, UNIT_ATTR, stage.unit)
        sch.annotate(block, BUFFER_ATTR, stage.buffer)
        chunked = chunk_loop is not None and stage.role in (*CHUNK_ROLES, "acc")
        root = _stage_root(sch, block, chunk_loop if chunked else tile_loop)
        sch.annotate(root, STAGE_ROOT_ATTR, stage.buffer)
    sch.annotate(tile_loop, TILE_LOOP_ATTR, config.effective_tiles(workload))
    if chunk_loop is not None and config.pipeline == "software":
        _pipeline_chunks(sch, chunk_loop)
    _pipeline(sch, tile_loop, config, chunk_loop)
    return sch


def _split_reduction(
    sch: s_tir.Schedule, workload: Workload, config: TileConfig, stages: list[Stage]
) -> s_tir.schedule.LoopRV:
    """Cut the conv's input-channel loop into `reduce_tiles` chunks, hoisted just below the
    tile loop, and load each chunk's input and weights under it: the chunk loop."""
    conv = sch.get_sblock(CONV)
    *_, batch, channel, height, width, rc, _, _ = sch.get_loops(conv)
    chunk, rc_inner = sch.split(rc, [None, config.reduce_tile_extent(workload)])
    sch.reorder(chunk, batch, channel, height, width, rc_inner)
    for stage in reversed(_program_order([s for s in stages if s.role in CHUNK_ROLES])):
        sch.compute_at(sch.get_sblock(stage.block), chunk, preserve_unit_loops=True)
    return chunk


def _pipeline_chunks(sch: s_tir.Schedule, chunk_loop) -> None:
    """Pipeline the chunk loop: the loads of chunk j+1 under the CONV of chunk j."""
    body = sch.get_child_blocks(chunk_loop)
    roles = [buffer_role(str(sch.get(b).annotations[BUFFER_ATTR])) for b in body]
    sch.annotate(chunk_loop, "software_pipeline_stage", [CHUNK_STAGE[r] for r in roles])
    sch.annotate(chunk_loop, "software_pipeline_order", list(range(len(body))))


def _add_cache_stages(sch: s_tir.Schedule, workload: Workload) -> list[Stage]:
    """Give every operand an on-chip buffer: cache-read each input, cache-write the output."""
    wgt = sch.cache_read(CONV, "weight", "local.wgt")
    operands = []
    for name in workload.operand_shapes:
        buffer = operand_buffer(name)
        block = sch.cache_read(ADD, name, f"local.{buffer}")
        operands.append(Stage(sch.get(block).name_hint, "vload", buffer))
    store = sch.cache_write(ADD, 0, "local.out")
    sch.set_scope(PAD, 0, "local.inp")
    sch.set_scope(CONV, 0, "local.acc")
    return [
        Stage(sch.get(wgt).name_hint, "load", "wgt"),
        Stage(PAD, "load", "inp"),
        Stage(CONV, "conv", "acc"),
        *operands,
        Stage(ADD, "add", "out"),
        Stage(sch.get(store).name_hint, "store", "store"),
    ]


def _stage_root(sch: s_tir.Schedule, block, tile_loop) -> s_tir.schedule.LoopRV:
    """The outermost loop that belongs to the stage alone (below the tile loop, if any)."""
    loops = sch.get_loops(block)
    tile = sch.get(tile_loop)
    inside = [i for i, loop in enumerate(loops) if sch.get(loop).same_as(tile)]
    return loops[inside[0] + 1] if inside else loops[0]


def _program_order(stages: list[Stage]) -> list[Stage]:
    """Producer-first order of the per-tile stages, operands of one role in chain order."""
    return sorted(stages, key=lambda s: PROGRAM_ORDER.index(s.role))


def _split_tiles(
    sch: s_tir.Schedule, workload: Workload, config: TileConfig
) -> s_tir.schedule.LoopRV:
    """Split the store block's output into the config's tiles and hoist one tile loop outermost
    (a 2-D grid's two tile loops fused, the fastest index last). Each axis is split by its tile
    length, so a count that leaves tiles empty (8 rows in 7 tiles of 2) makes no empty ones."""
    store = sch.get_child_blocks(sch.get_sblock("root"))[-1]
    batch, channel, height, width = sch.get_loops(store)
    if config.axis == "channel":
        tile, inner = sch.split(channel, [None, config.tile_extent(workload)])
        sch.reorder(batch, tile, inner, height, width)
    elif config.channel_tiles == 1:
        spatial = height if config.axis == "height" else width
        tile, spatial_inner = sch.split(spatial, [None, config.tile_extent(workload)])
        pixels = (spatial_inner, width) if config.axis == "height" else (height, spatial_inner)
        sch.reorder(batch, tile, channel, *pixels)
    else:
        tile = _fused_grid(sch, workload, config, (batch, channel, height, width))
    if config.pipeline == "vthread":
        _, slot = sch.split(tile, [None, 2])
        return slot
    return tile


def _fused_grid(sch: s_tir.Schedule, workload: Workload, config: TileConfig, loops):
    """The 2-D grid's tile loop: spatial and channel tile loops fused, the outer one first.

    For vthread pairs an odd number of tiles gets one more, empty, row of the outer axis: the
    pairs of the real tiles stay, and TVM's affine analysis (which `bind` needs) fails on a
    fused loop whose pair split and ragged outer axis are both predicated."""
    batch, channel, height, width = loops
    spatial = height if config.axis == "height" else width
    lengths = {
        "spatial": config.tile_extent(workload),
        "channel": config.channel_tile_extent(workload),
    }
    extents = {"spatial": config.axis_extent(workload), "channel": workload.out_channels}
    counts = {axis: -(-extents[axis] // lengths[axis]) for axis in lengths}
    outer = "spatial" if config.order == "spatial_outer" else "channel"
    if config.pipeline == "vthread" and counts["spatial"] * counts["channel"] % 2:
        counts[outer] += 1
    spatial_tile, spatial_inner = sch.split(spatial, [counts["spatial"], lengths["spatial"]])
    channel_tile, channel_inner = sch.split(channel, [counts["channel"], lengths["channel"]])
    pixels = (spatial_inner, width) if config.axis == "height" else (height, spatial_inner)
    grid = (spatial_tile, channel_tile) if outer == "spatial" else (channel_tile, spatial_tile)
    sch.reorder(batch, *grid, channel_inner, *pixels)
    return sch.fuse(*grid)


def _pipeline(sch: s_tir.Schedule, tile_loop, config: TileConfig, chunk_loop=None) -> None:
    if config.pipeline in ("software", "stream_weights"):
        stages = dict(PIPELINE_STAGE)
        if config.pipeline == "stream_weights":  # the input loads with its conv: one slot
            stages["inp"] = stages["acc"]
        entries = []
        for statement in _body_statements(sch, tile_loop):
            if chunk_loop is not None and statement.same_as(sch.get(chunk_loop)):
                # the chunk pipeline (loads and conv, expanded) runs in the conv's stage
                entries += [stages["acc"]] * NESTED_STATEMENTS
            else:
                (block,) = _blocks_in(statement)
                entries.append(stages[buffer_role(str(block.annotations[BUFFER_ATTR]))])
        sch.annotate(tile_loop, "software_pipeline_stage", entries)
        sch.annotate(tile_loop, "software_pipeline_order", list(range(len(entries))))
    elif config.pipeline == "vthread":
        sch.bind(tile_loop, "vthread.x")
    elif config.pipeline != "none":
        raise TileConfigError(f"pipeline mode {config.pipeline!r}: choose one of {PIPELINES}")


def _body_statements(sch: s_tir.Schedule, loop) -> list:
    """The statements of a loop's body, as InjectSoftwarePipeline sees them."""
    body = sch.get(loop).body
    if isinstance(body, tvm.s_tir.SBlockRealize):
        body = body.block.body
    return list(body.seq) if isinstance(body, tvm.tirx.SeqStmt) else [body]


def _blocks_in(statement) -> list:
    """The stage blocks (annotated with a buffer) a statement holds."""
    found = []

    def visit(node):
        if isinstance(node, tvm.s_tir.SBlock) and BUFFER_ATTR in node.annotations:
            found.append(node)

    tvm_ffi.structural_walk(statement, (tvm.s_tir.SBlock, visit), order="pre")
    return found
