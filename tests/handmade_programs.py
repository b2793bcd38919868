"""Hand-built conv+add programs and their numpy reference, independent of the lowering.

`tiled_convadd_program` writes by hand what the lowering should produce: the output split
over its height into tiles, the accumulator (and the input, residual and output tiles) in
`slots` ping/pong slots, and the tokens that make slot reuse safe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tvm_convadd.target.isa import Add, BufferDecl, Conv, Dram, Load, Program, Slot, Store


@dataclass(frozen=True)
class ConvAddShape:
    """conv2d(data, weight, stride, padding) [+ bias] + residual [relu], NCHW / OIHW."""

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
    def macs(self) -> int:
        rows = self.in_channels * self.kernel * self.kernel
        return self.batch * self.out_channels * self.out_height * self.out_width * rows

    @property
    def out_elements(self) -> int:
        return self.batch * self.out_channels * self.out_height * self.out_width

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {
            "data": (self.batch, self.in_channels, self.height, self.width),
            "weight": (self.out_channels, self.in_channels, self.kernel, self.kernel),
            "residual": self.output_shape,
            "output": self.output_shape,
        }
        if self.bias:
            shapes["bias"] = (1, self.out_channels, 1, 1)
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
    buffers = {
        "inp": BufferDecl((s.batch, s.in_channels, in_rows, padded_width), slots),
        "wgt": BufferDecl((s.out_channels, s.in_channels, s.kernel, s.kernel), 1),
        "acc": BufferDecl(out_tile, slots),
        "res": BufferDecl(out_tile, slots),
        "out": BufferDecl(out_tile, slots),
    }
    if s.bias:
        buffers["bias"] = BufferDecl((1, s.out_channels, 1, 1), 1)
    weight = Slot("wgt", 0, _full(buffers["wgt"].shape))
    bias = Slot("bias", 0, _full(buffers["bias"].shape)) if s.bias else None

    load = [Load(dst=weight, src=Dram("weight", weight.region))]
    if bias is not None:
        load.append(Load(dst=bias, src=Dram("bias", bias.region)))
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
        shapes = s.tensor_shapes()
        load.append(
            Load.padded(inp, data, shapes["data"], wait=("conv",) * reused, signal=("conv",))
        )
        load.append(
            Load(dst=res, src=Dram("residual", dram_out), wait=("add",) * reused, signal=("add",))
        )
        conv.append(
            Conv(
                inp=inp,
                wgt=weight,
                acc=acc,
                stride=(s.stride, s.stride),
                wait=("load",) + ("add",) * reused,
                signal=("load",) * freed + ("add",),
            )
        )
        add.append(
            Add(
                acc=acc,
                res=res,
                out=out,
                bias=bias,
                relu=s.relu,
                wait=("conv", "load") + ("store",) * reused,
                signal=("conv", "load") * freed + ("store",),
            )
        )
        store.append(
            Store(src=out, dst=Dram("output", dram_out), wait=("add",), signal=("add",) * freed)
        )
    streams = {"load": tuple(load), "conv": tuple(conv), "add": tuple(add), "store": tuple(store)}
    meta = {"shape": repr(shape), "tiles": count, "slots": slots}
    return Program(streams, buffers, s.tensor_shapes(), meta=meta)


def with_instruction(program: Program, unit: str, index: int, **changes) -> Program:
    """A copy of `program` with one instruction's fields replaced (to break it on purpose)."""
    stream = list(program.streams[unit])
    stream[index] = replace(stream[index], **changes)
    streams = {**program.streams, unit: tuple(stream)}
    return Program(streams, program.buffers, program.tensors, program.dtype, program.meta)


def random_tensors(shape: ConvAddShape, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs with O(1) outputs (weights scaled by fan-in); "output" is left to the program."""
    rng = np.random.default_rng(seed)
    fan_in = shape.in_channels * shape.kernel * shape.kernel
    tensors = {
        name: rng.standard_normal(dims).astype(np.float32)
        for name, dims in shape.tensor_shapes().items()
        if name != "output"
    }
    tensors["weight"] = (tensors["weight"] / np.sqrt(fan_in)).astype(np.float32)
    return tensors


def reference_convadd(shape: ConvAddShape, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """conv2d [+ bias] + residual [+ relu] in float64 with explicit loops over the kernel."""
    s = shape
    pad = s.padding
    data = np.pad(tensors["data"].astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    weight = tensors["weight"].astype(np.float64)
    out = np.zeros(s.output_shape)
    for ry in range(s.kernel):
        for rx in range(s.kernel):
            rows = data[:, :, ry : ry + s.stride * (s.out_height - 1) + 1 : s.stride]
            window = rows[:, :, :, rx : rx + s.stride * (s.out_width - 1) + 1 : s.stride]
            out += np.tensordot(window, weight[:, :, ry, rx], axes=([1], [1])).transpose(0, 3, 1, 2)
    if s.bias:
        out += tensors["bias"]
    out += tensors["residual"]
    return np.maximum(out, 0) if s.relu else out
