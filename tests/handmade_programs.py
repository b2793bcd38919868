"""Hand-built conv+epilogue programs and their numpy reference, independent of the lowering.

`tiled_convadd_program` writes by hand what the lowering should produce: the output split
over its height into tiles, the accumulator (and the input, residual and output tiles) in
`slots` ping/pong slots, and the tokens that make slot reuse safe. The epilogue is the
batch-norm-folded chain [* scale] [+ bias] [+ residual] [relu] [min clip].
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tvm_convadd.target.isa import Add, AluOp, BufferDecl, Conv, Dram, Load, Program, Slot, Store


@dataclass(frozen=True)
class ConvAddShape:
    """grouped conv2d(data, weight, stride, padding) [* scale] [+ bias] [+ residual] [relu]
    [min clip], NCHW / OIHW."""

    batch: int = 1
    in_channels: int = 16
    height: int = 16
    width: int = 16
    out_channels: int = 16
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    bias: bool = True
    relu: bool = False
    groups: int = 1
    scale: bool = False
    residual: bool = True
    clip: float | None = None

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def group_in_channels(self) -> int:
        return self.in_channels // self.groups

    @property
    def macs(self) -> int:
        rows = self.group_in_channels * self.kernel * self.kernel
        return self.batch * self.out_channels * self.out_height * self.out_width * rows

    @property
    def out_elements(self) -> int:
        return self.batch * self.out_channels * self.out_height * self.out_width

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {
            "data": (self.batch, self.in_channels, self.height, self.width),
            "weight": (self.out_channels, self.group_in_channels, self.kernel, self.kernel),
            "output": self.output_shape,
        }
        vector = (1, self.out_channels, 1, 1)
        shapes |= {"scale": vector} if self.scale else {}
        shapes |= {"bias": vector} if self.bias else {}
        shapes |= {"residual": self.output_shape} if self.residual else {}
        return shapes


def _full(shape) -> tuple[tuple[int, int], ...]:
    return tuple((0, extent) for extent in shape)


def tiled_convadd_program(shape: ConvAddShape, tiles: int, slots: int = 2) -> Program:
    """Split the output rows into `tiles` tiles (the last may be shorter) over `slots` slots."""
    s = shape
    tile_rows = -(-s.out_height // tiles)
    bounds = [(r, min(tile_rows, s.out_height - r)) for r in range(0, s.out_height, tile_rows)]
    count = len(bounds)
    padded_width = s.width + 2 * s.padding
    in_rows = (tile_rows - 1) * s.stride + s.kernel
    out_tile = (s.batch, s.out_channels, tile_rows, s.out_width)
    shapes = s.tensor_shapes()
    buffers = {
        "inp": BufferDecl((s.batch, s.in_channels, in_rows, padded_width), slots),
        "wgt": BufferDecl(shapes["weight"], 1),
        "acc": BufferDecl(out_tile, slots),
        "out": BufferDecl(out_tile, slots),
    }
    if s.residual:
        buffers["res"] = BufferDecl(out_tile, slots)
    weight = Slot("wgt", 0, _full(buffers["wgt"].shape))
    load = [Load(dst=weight, src=Dram("weight", weight.region))]
    vload = []  # the epilogue's operands come in on their own queue
    vectors = {}  # tensor name -> its on-chip slot, loaded once
    for name in ("scale", "bias"):
        if name in shapes:
            buffers[name] = BufferDecl(shapes[name], 1)
            vectors[name] = Slot(name, 0, _full(shapes[name]))
            vload.append(Load(dst=vectors[name], src=Dram(name, vectors[name].region)))
    if vload:  # the first ADD waits for the vectors (later ones, transitively, too)
        vload[-1] = replace(vload[-1], signal=("add",))
    conv, add, store = [], [], []
    for tile, (row, rows) in enumerate(bounds):
        slot = tile % slots
        reused = tile >= slots  # the slot held an earlier tile: wait until it is free
        freed = tile + slots < count  # a later tile reuses the slot: say when it is free
        rows_in = (rows - 1) * s.stride + s.kernel
        in_region = ((0, s.batch), (0, s.in_channels), (0, rows_in), (0, padded_width))
        out_region = ((0, s.batch), (0, s.out_channels), (0, rows), (0, s.out_width))
        dram_in = (
            (0, s.batch),
            (0, s.in_channels),
            (row * s.stride - s.padding, rows_in),
            (-s.padding, padded_width),
        )
        dram_out = ((0, s.batch), (0, s.out_channels), (row, rows), (0, s.out_width))
        inp, acc = Slot("inp", slot, in_region), Slot("acc", slot, out_region)
        res, out = Slot("res", slot, out_region), Slot("out", slot, out_region)
        data = Dram("data", dram_in)  # the window runs into the padding: clip it, pad the rest
        load.append(
            Load.padded(inp, data, shapes["data"], wait=("conv",) * reused, signal=("conv",))
        )
        if s.residual:
            residual = Dram("residual", dram_out)
            vload.append(Load(dst=res, src=residual, wait=("add",) * reused, signal=("add",)))
        conv.append(
            Conv(
                inp=inp,
                wgt=weight,
                acc=acc,
                stride=(s.stride, s.stride),
                groups=s.groups,
                wait=("load",) + ("add",) * reused,
                signal=("load",) * freed + ("add",),
            )
        )
        ops = [AluOp("mul", "channel", vectors["scale"])] if s.scale else []
        ops += [AluOp("add", "channel", vectors["bias"])] if s.bias else []
        ops += [AluOp("add", "tensor", res)] if s.residual else []
        ops += [AluOp("max", "const", value=0.0)] if s.relu else []
        ops += [AluOp("min", "const", value=s.clip)] if s.clip is not None else []
        load_token = ("vload",) * s.residual  # the residual tile is the add's only per-tile load
        vectors_token = ("vload",) * (tile == 0 and bool(vectors))
        add.append(
            Add(
                acc=acc,
                out=out,
                ops=tuple(ops),
                wait=("conv", *vectors_token, *load_token) + ("store",) * reused,
                signal=("conv", *load_token) * freed + ("store",),
            )
        )
        store.append(
            Store(src=out, dst=Dram("output", dram_out), wait=("add",), signal=("add",) * freed)
        )
    streams = {
        "load": tuple(load),
        "vload": tuple(vload),
        "conv": tuple(conv),
        "add": tuple(add),
        "store": tuple(store),
    }
    meta = {"shape": repr(shape), "tiles": count, "slots": slots}
    return Program(streams, buffers, shapes, meta=meta)


def with_instruction(program: Program, unit: str, index: int, **changes) -> Program:
    """A copy of `program` with one instruction's fields replaced (to break it on purpose)."""
    stream = list(program.streams[unit])
    stream[index] = replace(stream[index], **changes)
    streams = {**program.streams, unit: tuple(stream)}
    return Program(streams, program.buffers, program.tensors, program.dtype, program.meta)


def random_tensors(shape: ConvAddShape, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs with O(1) outputs (weights scaled by fan-in); "output" is left to the program."""
    rng = np.random.default_rng(seed)
    fan_in = shape.group_in_channels * shape.kernel * shape.kernel
    tensors = {
        name: rng.standard_normal(dims).astype(np.float32)
        for name, dims in shape.tensor_shapes().items()
        if name != "output"
    }
    tensors["weight"] = (tensors["weight"] / np.sqrt(fan_in)).astype(np.float32)
    return tensors


def reference_convadd(shape: ConvAddShape, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The grouped conv (one group at a time, explicit loops over the kernel) and the epilogue
    chain, in float64."""
    s = shape
    pad = s.padding
    data = np.pad(tensors["data"].astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    weight = tensors["weight"].astype(np.float64)
    out = np.zeros(s.output_shape)
    cg, ng = s.group_in_channels, s.out_channels // s.groups
    for group in range(s.groups):
        inputs = data[:, group * cg : (group + 1) * cg]
        outputs = slice(group * ng, (group + 1) * ng)
        for ry in range(s.kernel):
            for rx in range(s.kernel):
                rows = inputs[:, :, ry : ry + s.stride * (s.out_height - 1) + 1 : s.stride]
                window = rows[:, :, :, rx : rx + s.stride * (s.out_width - 1) + 1 : s.stride]
                taps = weight[outputs, :, ry, rx]
                out[:, outputs] += np.tensordot(window, taps, axes=([1], [1])).transpose(0, 3, 1, 2)
    if s.scale:
        out *= tensors["scale"]
    if s.bias:
        out += tensors["bias"]
    if s.residual:
        out += tensors["residual"]
    if s.relu:
        out = np.maximum(out, 0)
    return out if s.clip is None else np.minimum(out, s.clip)
