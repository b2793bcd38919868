"""A stand-alone elementwise kernel on the Add unit: load its operands, apply an op list, store.

What a compiler without conv fusion emits for the ops after a conv (TVM's FuseOps fuses the
injective chain into one kernel; a naive one emits a kernel per op). The output is cut into
tiles, two slots per tile buffer, so LOAD of tile i+1 runs while ADD of tile i runs while
STORE of tile i-1 runs. The primary input `x` (the conv's output, read back from DRAM) loads
into `acc`, the ALU's source, and the epilogue operands into their own buffers (res*, bias*,
scale*), which put their LOADs on the epilogue-operand queue where the machine has one.
Tokens come from the operands (`derive_tokens`), the fewest that order every slot's accesses.
`fastest_elementwise` simulates a few tilings and keeps the fastest that fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tvm_convadd.errors import BufferOverflowError, ProgramError
from tvm_convadd.schedules.workload import EpilogueOp, epilogue_operand_names
from tvm_convadd.target.annotations import operand_buffer
from tvm_convadd.target.hardware import HardwareConfig
from tvm_convadd.target.isa import (
    Add,
    AluOp,
    BufferDecl,
    Dram,
    Instruction,
    Load,
    Program,
    Region,
    Slot,
    Store,
    dtype_bytes,
)
from tvm_convadd.target.lower import derive_tokens
from tvm_convadd.target.simulator import SimResult, overflowing, simulate

INPUT = "x"  # the kernel's DRAM input: the tensor the op list starts from
OUTPUT = "output"
MAX_TILES = 256  # tilings beyond this only add per-transfer latency


@dataclass(frozen=True)
class ElementwiseTiling:
    """Tiles of `channels` whole channels, or (channels 1) of `rows` rows of one channel."""

    channels: int
    rows: int

    def __str__(self) -> str:
        return f"{self.channels}ch x {self.rows}rows"


@dataclass(frozen=True)
class ElementwiseKernel:
    """One elementwise kernel as chosen: its tiling, Program and timing-only SimResult."""

    shape: tuple[int, ...]
    ops: tuple[EpilogueOp, ...]
    tiling: ElementwiseTiling
    tiles: int
    program: Program
    result: SimResult

    @property
    def cycles(self) -> int:
        return self.result.total_cycles


def tile_regions(shape: tuple[int, ...], tiling: ElementwiseTiling) -> list[Region]:
    """The output's tiles in order (ragged last ones included): batch, channel, row blocks."""
    batch, channels, height, width = shape
    regions = []
    for n in range(batch):
        for c in range(0, channels, tiling.channels):
            for h in range(0, height, tiling.rows):
                cl, hl = min(tiling.channels, channels - c), min(tiling.rows, height - h)
                regions.append(((n, 1), (c, cl), (h, hl), (0, width)))
    return regions


def _vectors_fit(shape, ops, hardware: HardwareConfig) -> bool:
    """Whether every channel vector fits on chip whole, one slot each (loaded once)."""
    vectors = sum(op.kind == "channel" for op in ops)
    return vectors * shape[1] * dtype_bytes(hardware.dtype) <= hardware.pool_bytes("bias")


def _check(shape: tuple[int, ...], tiling: ElementwiseTiling) -> None:
    if len(shape) != 4:
        raise ProgramError(f"elementwise kernel over shape {list(shape)}: give an NCHW shape")
    _, channels, height, _ = shape
    if not (1 <= tiling.channels <= channels and 1 <= tiling.rows <= height):
        raise ProgramError(
            f"elementwise tiling {tiling} of shape {list(shape)}: use 1..{channels} channels "
            f"and 1..{height} rows"
        )
    if tiling.rows < height and tiling.channels != 1:
        raise ProgramError(f"elementwise tiling {tiling}: a tile of part of the rows has 1 channel")


def _declarations(shape, ops, tiling: ElementwiseTiling, vectors_once: bool):
    """The DRAM tensors, the on-chip buffers, and the LOADs of whole channel vectors that run
    once before the tile loop."""
    vector_shape = (1, shape[1], 1, 1)
    tile_shape = (1, tiling.channels, tiling.rows, shape[3])
    tensors = {INPUT: tuple(shape)}
    buffers = {"acc": BufferDecl(tile_shape, 2), "out": BufferDecl(tile_shape, 2)}
    once: list[Instruction] = []
    for op, name in zip(ops, epilogue_operand_names(ops)):
        if name is None:
            continue
        buffer = operand_buffer(name)
        if op.kind == "tensor":
            tensors[name], buffers[buffer] = tuple(shape), BufferDecl(tile_shape, 2)
            continue
        tensors[name] = vector_shape
        if vectors_once:
            buffers[buffer] = BufferDecl(vector_shape, 1)
            whole = tuple((0, d) for d in vector_shape)
            once.append(Load(dst=Slot(buffer, 0, whole), src=Dram(name, whole)))
        else:
            buffers[buffer] = BufferDecl((1, tiling.channels, 1, 1), 2)
    tensors[OUTPUT] = tuple(shape)
    return tensors, buffers, once


def _tile(ops, region: Region, slot: int, vectors_once: bool) -> list[Instruction]:
    """One tile's LOADs (x into acc, its operands into their buffers), ADD and STORE."""
    local = tuple((0, extent) for _, extent in region)
    channels = ((0, 1), region[1], (0, 1), (0, 1))  # the tile's slice of a channel vector
    instructions: list[Instruction] = [Load(dst=Slot("acc", slot, local), src=Dram(INPUT, region))]
    steps = []
    for op, name in zip(ops, epilogue_operand_names(ops)):
        if name is None:
            steps.append(AluOp(op.op, "const", value=op.value))
            continue
        buffer = operand_buffer(name)
        if op.kind == "tensor":
            src = Slot(buffer, slot, local)
            instructions.append(Load(dst=src, src=Dram(name, region)))
        elif vectors_once:
            src = Slot(buffer, 0, channels)
        else:
            src = Slot(buffer, slot, ((0, 1), (0, region[1][1]), (0, 1), (0, 1)))
            instructions.append(Load(dst=src, src=Dram(name, channels)))
        steps.append(AluOp(op.op, op.kind, src))
    out = Slot("out", slot, local)
    instructions.append(Add(acc=Slot("acc", slot, local), out=out, ops=tuple(steps)))
    instructions.append(Store(src=out, dst=Dram(OUTPUT, region)))
    return instructions


def elementwise_program(
    shape: tuple[int, ...],
    ops: tuple[EpilogueOp, ...],
    tiling: ElementwiseTiling,
    vectors_once: bool = True,
) -> Program:
    """The pipelined kernel `output = ops(x)` over NCHW `shape`, tiled as `tiling`, tile i in
    slot i % 2 of every tile buffer.

    Channel vectors load once whole before the tile loop (`vectors_once`), else per tile into
    two slots. Raises ProgramError for a shape that is not 4-D or a tiling that does not fit it.
    """
    shape = tuple(shape)
    _check(shape, tiling)
    tensors, buffers, instructions = _declarations(shape, ops, tiling, vectors_once)
    for index, region in enumerate(tile_regions(shape, tiling)):
        instructions += _tile(ops, region, index % 2, vectors_once)
    meta = {"kernel": "elementwise", "ops": [op.to_dict() for op in ops], "tiling": str(tiling)}
    return Program(derive_tokens(instructions), buffers, tensors, meta=meta)


def candidate_tilings(shape: tuple[int, ...]) -> list[ElementwiseTiling]:
    """Power-of-two tile counts per batch item up to MAX_TILES, as channel blocks, then row
    blocks of one channel; one tiling per distinct tile shape."""
    _, channels, height, _ = shape
    tilings: list[ElementwiseTiling] = []
    count = 1
    while count <= min(MAX_TILES, channels * height):
        if count <= channels:
            tiling = ElementwiseTiling(-(-channels // count), height)
        else:
            tiling = ElementwiseTiling(1, -(-height // -(-count // channels)))
        if tiling not in tilings:
            tilings.append(tiling)
        count *= 2
    return tilings


@lru_cache(maxsize=1024)
def fastest_elementwise(
    shape: tuple[int, ...], ops: tuple[EpilogueOp, ...], hardware: HardwareConfig
) -> ElementwiseKernel:
    """The fastest fitting kernel of `candidate_tilings`, each simulated timing-only.

    Raises BufferOverflowError when no tiling fits (a row of one channel is too big)."""
    shape = tuple(shape)
    vectors_once = _vectors_fit(shape, ops, hardware)
    best = None
    for tiling in candidate_tilings(shape):
        program = elementwise_program(shape, ops, tiling, vectors_once)
        if overflowing(program, hardware):
            continue
        result = simulate(program, hardware, functional=False)
        if best is None or result.total_cycles < best.cycles:
            tiles = len(tile_regions(shape, tiling))
            best = ElementwiseKernel(shape, ops, tiling, tiles, program, result)
    if best is None:
        raise BufferOverflowError(
            f"no elementwise tiling of {list(shape)} fits {hardware.name}: a row of one "
            "channel exceeds a buffer pool; pick a configuration with bigger buffers"
        )
    return best
