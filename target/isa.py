"""The accelerator's instruction set: LOAD, CONV, ADD, STORE with VTA-style dependency tokens.

Four units run concurrently, each through its own in-order stream. An instruction may `wait`
for a token from other units before it starts and `signal` a token to other units when it
finishes; tokens between a pair of units travel through a FIFO queue (VTA's push/pop flags).
On-chip operands name a buffer, a slot of it (ping = 0, pong = 1) and a region of the slot;
DRAM operands name a tensor and a region of it (a LOAD region may run past the tensor's edge:
those elements are padding and read as zero).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import ClassVar

from tvm_convadd.errors import ProgramError

UNITS = ("load", "conv", "add", "store")
Region = tuple[tuple[int, int], ...]  # (start, extent) per dimension


def _region(value, what: str) -> Region:
    try:
        region = tuple((int(start), int(extent)) for start, extent in value)
    except (TypeError, ValueError) as err:
        raise ProgramError(f"{what}: region {value!r} is not a list of [start, extent]") from err
    if any(extent < 1 for _, extent in region):
        raise ProgramError(f"{what}: region {region} has an empty dimension")
    return region


def region_size(region: Region) -> int:
    """Number of elements in a region."""
    size = 1
    for _, extent in region:
        size *= extent
    return size


def format_region(region: Region) -> str:
    return "[" + ", ".join(f"{s}:{s + e}" for s, e in region) + "]"


@dataclass(frozen=True)
class Slot:
    """A region of one slot of an on-chip buffer."""

    buffer: str
    slot: int
    region: Region

    def __str__(self) -> str:
        return f"{self.buffer}[{self.slot}]{format_region(self.region)}"

    def to_json(self) -> dict:
        return {"buffer": self.buffer, "slot": self.slot, "region": [list(r) for r in self.region]}

    @classmethod
    def from_json(cls, data: dict, what: str) -> Slot:
        try:
            return cls(str(data["buffer"]), int(data["slot"]), _region(data["region"], what))
        except ProgramError:
            raise
        except (KeyError, TypeError, ValueError) as err:
            raise ProgramError(
                f"{what}: on-chip operand {data!r} needs buffer, slot, region"
            ) from err


@dataclass(frozen=True)
class Dram:
    """A region of a tensor in DRAM (a function argument)."""

    tensor: str
    region: Region

    def __str__(self) -> str:
        return f"{self.tensor}{format_region(self.region)}"

    def to_json(self) -> dict:
        return {"tensor": self.tensor, "region": [list(r) for r in self.region]}

    @classmethod
    def from_json(cls, data: dict, what: str) -> Dram:
        try:
            return cls(str(data["tensor"]), _region(data["region"], what))
        except (KeyError, TypeError) as err:
            raise ProgramError(f"{what}: DRAM operand {data!r} needs tensor, region") from err


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """Common part: the unit that runs it and its dependency tokens."""

    opcode: ClassVar[str] = ""
    unit: ClassVar[str] = ""
    wait: tuple[str, ...] = ()
    signal: tuple[str, ...] = ()

    def operands(self) -> dict[str, Slot | Dram | None]:
        raise NotImplementedError

    def reads(self) -> tuple[Slot, ...]:
        """On-chip regions this instruction reads."""
        return ()

    def writes(self) -> tuple[Slot, ...]:
        """On-chip regions this instruction writes."""
        return ()

    def flags(self) -> str:
        parts = [f"wait({','.join(self.wait)})"] * bool(self.wait)
        parts += [f"signal({','.join(self.signal)})"] * bool(self.signal)
        return " ".join(parts)


@dataclass(frozen=True, kw_only=True)
class Load(Instruction):
    """DMA DRAM -> on-chip; elements outside the tensor are zero (padding)."""

    opcode: ClassVar[str] = "LOAD"
    unit: ClassVar[str] = "load"
    dst: Slot
    src: Dram

    def operands(self):
        return {"dst": self.dst, "src": self.src}

    def writes(self):
        return (self.dst,)

    def transfer_bytes(self, program: Program) -> int:
        """Bytes the DMA moves (padding elements included: the engine writes them)."""
        return region_size(self.dst.region) * _dtype_bytes(program.buffers[self.dst.buffer].dtype)


@dataclass(frozen=True, kw_only=True)
class Conv(Instruction):
    """acc = conv2d(inp, wgt) over the whole input-channel and kernel window of the regions."""

    opcode: ClassVar[str] = "CONV"
    unit: ClassVar[str] = "conv"
    inp: Slot
    wgt: Slot
    acc: Slot
    stride: tuple[int, int] = (1, 1)

    def operands(self):
        return {"inp": self.inp, "wgt": self.wgt, "acc": self.acc}

    @property
    def macs(self) -> int:
        """Multiply-accumulates: every output element reduces over the weight's C x R x S."""
        _, (_, channels), (_, kernel_h), (_, kernel_w) = self.wgt.region
        return region_size(self.acc.region) * channels * kernel_h * kernel_w

    def reads(self):
        return (self.inp, self.wgt)

    def writes(self):
        return (self.acc,)


@dataclass(frozen=True, kw_only=True)
class Add(Instruction):
    """out = acc [+ bias] + res, then relu if asked: the fused epilogue."""

    opcode: ClassVar[str] = "ADD"
    unit: ClassVar[str] = "add"
    acc: Slot
    res: Slot
    out: Slot
    bias: Slot | None = None
    relu: bool = False

    def operands(self):
        return {"acc": self.acc, "bias": self.bias, "res": self.res, "out": self.out}

    def reads(self):
        return tuple(s for s in (self.acc, self.bias, self.res) if s is not None)

    def writes(self):
        return (self.out,)


@dataclass(frozen=True, kw_only=True)
class Store(Instruction):
    """DMA on-chip -> DRAM."""

    opcode: ClassVar[str] = "STORE"
    unit: ClassVar[str] = "store"
    src: Slot
    dst: Dram

    def operands(self):
        return {"src": self.src, "dst": self.dst}

    def reads(self):
        return (self.src,)

    def transfer_bytes(self, program: Program) -> int:
        """Bytes the DMA moves."""
        return region_size(self.src.region) * _dtype_bytes(program.buffers[self.src.buffer].dtype)


OPCODES: dict[str, type[Instruction]] = {cls.opcode: cls for cls in (Load, Conv, Add, Store)}


def instruction_to_json(inst: Instruction) -> dict:
    data: dict = {"op": inst.opcode}
    for name, operand in inst.operands().items():
        if operand is not None:
            data[name] = operand.to_json()
    if isinstance(inst, Conv):
        data["stride"] = list(inst.stride)
    if isinstance(inst, Add):
        data["relu"] = inst.relu
    data["wait"] = list(inst.wait)
    data["signal"] = list(inst.signal)
    return data


def instruction_from_json(data: dict, where: str) -> Instruction:
    op = data.get("op") if isinstance(data, dict) else data
    if not isinstance(op, str) or op not in OPCODES:
        raise ProgramError(f"{where}: unknown opcode {op!r}; expected one of {sorted(OPCODES)}")
    cls = OPCODES[data["op"]]
    kwargs: dict = {}
    for key in ("wait", "signal"):
        if not isinstance(data.get(key, []), (list, tuple)):
            raise ProgramError(f"{where}: {key} must be a list of unit names, got {data[key]!r}")
        units = tuple(str(u) for u in data.get(key, ()))
        bad = [u for u in units if u not in UNITS]
        if bad:
            raise ProgramError(f"{where}: {key} names unknown units {bad}; units are {UNITS}")
        kwargs[key] = units
    probe = cls.__dataclass_fields__
    for name in ("dst", "src", "inp", "wgt", "acc", "res", "out", "bias"):
        if name not in probe or name not in data:
            continue
        is_dram = (cls is Load and name == "src") or (cls is Store and name == "dst")
        operand_cls = Dram if is_dram else Slot
        kwargs[name] = operand_cls.from_json(data[name], f"{where} {cls.opcode}.{name}")
    if cls is Conv and "stride" in data:
        try:
            stride = tuple(int(s) for s in data["stride"])
        except (TypeError, ValueError):
            stride = ()
        if len(stride) != 2 or min(stride) < 1:
            raise ProgramError(f"{where}: CONV stride {data['stride']!r}: give two integers >= 1")
        kwargs["stride"] = stride
    if cls is Add:
        kwargs["relu"] = bool(data.get("relu", False))
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ProgramError(f"{where}: {cls.opcode} is missing an operand ({err})") from err


@dataclass(frozen=True)
class BufferDecl:
    """An on-chip buffer as the program uses it: the shape of one slot and the number of slots."""

    shape: tuple[int, ...]
    slots: int
    dtype: str = "float32"

    @property
    def slot_bytes(self) -> int:
        size = 1
        for dim in self.shape:
            size *= dim
        return size * _dtype_bytes(self.dtype)


def _dtype_bytes(dtype: str) -> int:
    bits = int("".join(ch for ch in dtype if ch.isdigit()) or 32)
    return bits // 8


@dataclass(frozen=True)
class Program:
    """One instruction stream per unit, the on-chip buffers they use and the DRAM tensors."""

    streams: dict[str, tuple[Instruction, ...]]
    buffers: dict[str, BufferDecl]
    tensors: dict[str, tuple[int, ...]]
    dtype: str = "float32"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.streams) - set(UNITS)
        if unknown:
            raise ProgramError(f"streams for unknown units {sorted(unknown)}; units are {UNITS}")
        for unit in UNITS:
            self.streams.setdefault(unit, ())
        for unit, stream in self.streams.items():
            for index, inst in enumerate(stream):
                if inst.unit != unit:
                    raise ProgramError(
                        f"{unit}#{index}: {inst.opcode} runs on the {inst.unit} unit, not on {unit}"
                    )
                self._check_operands(unit, index, inst)

    def _check_operands(self, unit: str, index: int, inst: Instruction) -> None:
        for name, operand in inst.operands().items():
            where = f"{unit}#{index} {inst.opcode}.{name}"
            if isinstance(operand, Slot):
                decl = self.buffers.get(operand.buffer)
                if decl is None:
                    raise ProgramError(
                        f"{where}: unknown buffer {operand.buffer!r}; declared: "
                        f"{sorted(self.buffers)}"
                    )
                if not 0 <= operand.slot < decl.slots:
                    raise ProgramError(
                        f"{where}: slot {operand.slot} of {operand.buffer!r}, which has "
                        f"{decl.slots} slot(s): use 0..{decl.slots - 1}"
                    )
                _check_inside(where, operand.region, decl.shape)
            elif isinstance(operand, Dram):
                if operand.tensor not in self.tensors:
                    raise ProgramError(
                        f"{where}: unknown tensor {operand.tensor!r}; declared: "
                        f"{sorted(self.tensors)}"
                    )
                if len(operand.region) != len(self.tensors[operand.tensor]):
                    raise ProgramError(f"{where}: region rank differs from the tensor's")
                if isinstance(inst, Store):
                    _check_inside(where, operand.region, self.tensors[operand.tensor])

    @property
    def num_instructions(self) -> int:
        return sum(len(s) for s in self.streams.values())

    def listing(self) -> str:
        """A readable assembly listing, one section per unit."""
        lines = []
        for name, decl in self.buffers.items():
            lines.append(f".buffer {name} slots={decl.slots} shape={list(decl.shape)}")
        for name, shape in self.tensors.items():
            lines.append(f".tensor {name} shape={list(shape)}")
        for unit in UNITS:
            lines.append(f"{unit}:")
            for index, inst in enumerate(self.streams[unit]):
                ops = ", ".join(f"{k}={v}" for k, v in inst.operands().items() if v is not None)
                extra = ""
                if isinstance(inst, Conv):
                    extra = f", stride={inst.stride[0]}x{inst.stride[1]}"
                if isinstance(inst, Add) and inst.relu:
                    extra = ", relu"
                flags = inst.flags()
                lines.append(
                    f"  {index:4d}  {inst.opcode:<5} {ops}{extra}"
                    + (f"  ; {flags}" if flags else "")
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.listing()

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "dtype": self.dtype,
                "meta": self.meta,
                "tensors": {k: list(v) for k, v in self.tensors.items()},
                "buffers": {
                    k: {"shape": list(d.shape), "slots": d.slots, "dtype": d.dtype}
                    for k, d in self.buffers.items()
                },
                "streams": {
                    u: [instruction_to_json(i) for i in s] for u, s in self.streams.items()
                },
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Program:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProgramError(
                f"program JSON does not parse at line {err.lineno} column {err.colno}: {err.msg}"
            ) from err
        if not isinstance(data, dict) or data.get("version") != 1:
            raise ProgramError("not a tvm-convadd program: expected an object with version 1")
        try:
            buffers = {
                k: BufferDecl(
                    tuple(int(x) for x in d["shape"]), int(d["slots"]), d.get("dtype", "float32")
                )
                for k, d in data["buffers"].items()
            }
            tensors = {k: tuple(int(x) for x in v) for k, v in data["tensors"].items()}
            streams = {
                unit: tuple(
                    instruction_from_json(item, f"{unit}#{index}")
                    for index, item in enumerate(items)
                )
                for unit, items in data["streams"].items()
            }
        except ProgramError:
            raise
        except KeyError as err:
            raise ProgramError(f"program JSON is missing a field: {err}") from err
        except (TypeError, ValueError, AttributeError) as err:
            raise ProgramError(f"program JSON has a malformed buffer or tensor: {err}") from err
        return cls(streams, buffers, tensors, data.get("dtype", "float32"), data.get("meta", {}))


def _check_inside(where: str, region: Region, shape: tuple[int, ...]) -> None:
    if len(region) != len(shape):
        raise ProgramError(
            f"{where}: region {format_region(region)} has rank {len(region)}, "
            f"the buffer has rank {len(shape)}"
        )
    for (start, extent), dim in zip(region, shape):
        if start < 0 or start + extent > dim:
            raise ProgramError(
                f"{where}: region {format_region(region)} runs outside shape {list(shape)}"
            )
