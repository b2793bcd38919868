"""The accelerator's instruction set: LOAD, CONV, ADD, STORE with VTA-style dependency tokens.

Four units run concurrently, each through its own in-order stream. An instruction may `wait`
for a token from other units before it starts and `signal` a token to other units when it
finishes; tokens between a pair of units travel through a FIFO queue (VTA's push/pop flags).
On-chip operands name a buffer, a slot of it (ping = 0, pong = 1) and a region of the slot;
DRAM operands name a tensor and a region of it, which lies inside the tensor. Padding is
explicit: a LOAD's `pad` says how many zeros surround its `src` in `dst`, per dimension.

`Program.from_json` is the door for programs from files: it checks every field's type (an int
is an int, not "3", 3.0 or true) so that a bad file fails with one ProgramError naming the
field, never later inside the simulator.
"""

from __future__ import annotations

import json
import sys
from dataclasses import MISSING, dataclass, field
from typing import ClassVar

from tvm_convadd.errors import ProgramError
from tvm_convadd.target.annotations import epilogue_family

UNITS = ("load", "vload", "conv", "add", "store")
# The DMA units: conv operands in (load), epilogue operands in (vload), results out (store).
DMA_UNITS = ("load", "vload", "store")
Region = tuple[tuple[int, int], ...]  # (start, extent) per dimension
DTYPES = ("float16", "float32", "float64")  # element types a buffer or program may have
ALU_OPS = ("add", "mul", "max", "min")  # the Add unit's vector ALU (VTA's ALU: add/mul/max/min)
ALU_KINDS = ("tensor", "channel", "const")  # operand: out-shaped, (1, C, 1, 1), or a scalar
_LARGEST_FLOAT = sys.float_info.max  # a const beyond it (or nan) is no finite float64


def _show(value) -> str:
    """A bad value for a one-line message: its repr, cut short if it is a whole subtree."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value, what: str, low: int | None = None) -> int:
    """`value` itself if it is a JSON integer (not a bool, float or string) and >= `low`."""
    if type(value) is not int or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise ProgramError(f"{what} {_show(value)}: must be an integer{bound}")
    return value


def _str(value, what: str) -> str:
    if not isinstance(value, str):
        raise ProgramError(f"{what} {_show(value)}: must be a string")
    return value


def _object(value, what: str, required: tuple[str, ...] = (), optional=()) -> dict:
    """A JSON object with every `required` key and no key outside `required` + `optional`."""
    if not isinstance(value, dict):
        raise ProgramError(f"{what} {_show(value)}: must be an object with {list(required)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise ProgramError(f"{what} {_show(value)}: missing {missing}; it needs {list(required)}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise ProgramError(f"{what}: unknown field(s) {unknown}; fields: {[*required, *optional]}")
    return value


def _list(value, what: str) -> list:
    if not isinstance(value, list):
        raise ProgramError(f"{what} {_show(value)}: must be a list")
    return value


def _dtype(value, what: str) -> str:
    if not isinstance(value, str) or value not in DTYPES:
        raise ProgramError(f"{what} {_show(value)}: choose one of {list(DTYPES)}")
    return value


def _shape(value, what: str) -> tuple[int, ...]:
    return tuple(_int(dim, f"{what}[{i}]", 1) for i, dim in enumerate(_list(value, what)))


def _pairs(value, what: str, kind: str) -> tuple[tuple[int, int], ...]:
    """A list of two-integer lists ([start, extent] or [before, after])."""
    ok = isinstance(value, list) and all(
        isinstance(p, list) and len(p) == 2 and all(type(x) is int for x in p) for p in value
    )
    if not ok:
        raise ProgramError(f"{what}: {_show(value)} is not a list of {kind} integer pairs")
    return tuple((p[0], p[1]) for p in value)


def _region(value, what: str, min_extent: int = 1) -> Region:
    region = _pairs(value, what, "[start, extent]")
    if any(extent < min_extent for _, extent in region):
        raise ProgramError(f"{what}: region {format_region(region)} has an empty dimension")
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
        data = _object(data, f"{what}: on-chip operand", ("buffer", "slot", "region"))
        buffer = _str(data["buffer"], f"{what}.buffer")
        return cls(buffer, _int(data["slot"], f"{what}.slot", 0), _region(data["region"], what))


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
    def from_json(cls, data: dict, what: str, min_extent: int = 1) -> Dram:
        data = _object(data, f"{what}: DRAM operand", ("tensor", "region"))
        tensor = _str(data["tensor"], f"{what}.tensor")
        return cls(tensor, _region(data["region"], what, min_extent))


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


Pad = tuple[tuple[int, int], ...]  # (zeros before, zeros after) per dimension


@dataclass(frozen=True, kw_only=True)
class Load(Instruction):
    """DMA DRAM -> on-chip: `src` (inside the tensor) lands in `dst` framed by `pad` zeros.

    Per dimension, dst extent = before + src extent + after; `pad=()` means no padding. The
    halo of a padded conv is the usual case. A window wholly in padding (a tile whose input
    is all zeros) is a pure zero fill: its src is empty, extent 0 in a dimension whose pad
    covers all of dst; it still names the tensor whose padding it is. `Load.padded` builds
    either from a window that may run past the tensor's edge.

    The buffer decides the queue: conv operands (inp, wgt) come in on "load", the epilogue's
    operands (res*, bias*, scale*) on "vload", so that a residual never queues behind weights.
    """

    opcode: ClassVar[str] = "LOAD"
    dst: Slot
    src: Dram
    pad: Pad = ()

    @property
    def unit(self) -> str:
        return "vload" if epilogue_family(self.dst.buffer) is not None else "load"

    def __post_init__(self) -> None:
        no_padding = not any(before or after for before, after in self.pad)
        if self.pad and no_padding and len(self.pad) == len(self.dst.region):
            object.__setattr__(self, "pad", ())  # one spelling of "no padding": equality holds

    @classmethod
    def padded(
        cls,
        dst: Slot,
        src: Dram,
        shape: tuple[int, ...],
        *,
        wait: tuple[str, ...] = (),
        signal: tuple[str, ...] = (),
    ) -> Load:
        """The LOAD of window `src` of a tensor of `shape`, clipped to the tensor, the rest pad."""
        if len(src.region) != len(shape):
            raise ProgramError(
                f"LOAD of {src}: region rank {len(src.region)}, the tensor has {len(shape)} dims"
            )
        inside, pad = [], []
        for (start, extent), dim in zip(src.region, shape):
            low, high = min(max(start, 0), dim), min(max(start + extent, 0), dim)
            before = min(max(-start, 0), extent)
            inside.append((low, high - low))
            pad.append((before, extent - before - (high - low)))
        return cls(
            dst=dst, src=Dram(src.tensor, tuple(inside)), pad=tuple(pad), wait=wait, signal=signal
        )

    @property
    def padded_extents(self) -> tuple[int, ...]:
        """The extents src fills with its pad: what dst's extents must be."""
        if not self.pad:
            return tuple(extent for _, extent in self.src.region)
        return tuple(b + e + a for (_, e), (b, a) in zip(self.src.region, self.pad))

    def operands(self):
        return {"dst": self.dst, "src": self.src}

    def writes(self):
        return (self.dst,)


def format_pad(pad: Pad) -> str:
    return "[" + ", ".join(f"{before}+{after}" for before, after in pad) + "]"


@dataclass(frozen=True, kw_only=True)
class Conv(Instruction):
    """acc = conv2d(inp, wgt, groups) over the whole input-channel and kernel window of the regions,
    or with `accumulate` acc += it: a reduction split over input channels runs one CONV per
    channel chunk into the same acc, the first one initialising it.

    With cg = the wgt region's C extent and ng = acc channels / groups, acc channel j (local to
    the region) reduces over inp channels [(j // ng) * cg, (j // ng + 1) * cg) and the kernel
    window: the inp region has groups * cg channels (depthwise: cg = 1, ng = 1 per group).
    """

    opcode: ClassVar[str] = "CONV"
    unit: ClassVar[str] = "conv"
    inp: Slot
    wgt: Slot
    acc: Slot
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    accumulate: bool = False

    def operands(self):
        return {"inp": self.inp, "wgt": self.wgt, "acc": self.acc}

    @property
    def macs(self) -> int:
        """Multiply-accumulates: every output element reduces over its group's C x R x S."""
        _, (_, channels), (_, kernel_h), (_, kernel_w) = self.wgt.region
        return region_size(self.acc.region) * channels * kernel_h * kernel_w

    def reads(self):
        return (self.inp, self.wgt, self.acc) if self.accumulate else (self.inp, self.wgt)

    def writes(self):
        return (self.acc,)


@dataclass(frozen=True)
class AluOp:
    """One step of an ADD's op list: v = op(v, operand).

    The operand is an on-chip `src` for kind "tensor" (extents equal out's) and "channel"
    (extents (1, out channels, 1, 1), broadcast over n, h, w), or the scalar `value` for "const".
    """

    op: str
    kind: str
    src: Slot | None = None
    value: float | None = None

    def __post_init__(self) -> None:
        if self.op not in ALU_OPS:
            raise ProgramError(f"ALU op {_show(self.op)}: choose one of {list(ALU_OPS)}")
        if self.kind not in ALU_KINDS:
            kinds = list(ALU_KINDS)
            raise ProgramError(f"ALU operand kind {_show(self.kind)}: choose one of {kinds}")
        if self.kind == "const":
            if self.src is not None or self.value is None:
                raise ProgramError(f"ALU op {self.op} const: give a value and no src")
            number = isinstance(self.value, (int, float)) and not isinstance(self.value, bool)
            if not number or not abs(self.value) <= _LARGEST_FLOAT:
                raise ProgramError(f"ALU op {self.op} const {self.value!r}: a finite number")
            object.__setattr__(self, "value", float(self.value))
        elif self.src is None or self.value is not None:
            raise ProgramError(f"ALU op {self.op} {self.kind}: give a src and no value")

    def operand_text(self) -> str:
        return f"{self.value:g}" if self.src is None else str(self.src)

    def to_json(self) -> dict:
        data: dict = {"op": self.op, "kind": self.kind}
        if self.src is not None:
            data["src"] = self.src.to_json()
        else:
            data["value"] = self.value
        return data

    @classmethod
    def from_json(cls, data, what: str) -> AluOp:
        data = _object(data, f"{what}: ALU op", ("op", "kind"), ("src", "value"))
        op, kind = _str(data["op"], f"{what}.op"), _str(data["kind"], f"{what}.kind")
        if kind == "const":
            value = data.get("value")
            ok = type(value) in (int, float) and abs(value) <= _LARGEST_FLOAT  # no inf, nan
            if not ok or "src" in data:
                raise ProgramError(
                    f"{what}: const ALU op value {_show(value)}: give a finite number and no src"
                )
            return cls(op, kind, value=float(value))
        if "value" in data or "src" not in data:
            raise ProgramError(f"{what}: {kind} ALU op: give a src (an on-chip operand), no value")
        return cls(op, kind, Slot.from_json(data["src"], f"{what}.src"))


_ALU_SYMBOLS = {"add": "+", "mul": "*"}


@dataclass(frozen=True, kw_only=True)
class Add(Instruction):
    """out = the op list applied in order to acc (v = acc; v = op(v, operand); out = v).

    The fused epilogue: bias, scale, residual, relu and clip are steps of one pass over acc.
    """

    opcode: ClassVar[str] = "ADD"
    unit: ClassVar[str] = "add"
    acc: Slot
    out: Slot
    ops: tuple[AluOp, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", tuple(self.ops))

    def operands(self):
        sources = {f"ops[{i}].src": op.src for i, op in enumerate(self.ops) if op.src is not None}
        return {"acc": self.acc, **sources, "out": self.out}

    def expression(self) -> str:
        """The op list as one expression: `max(acc[0][..] + bias[0][..], 0)`."""
        text, is_sum = str(self.acc), False
        for step in self.ops:
            operand = step.operand_text()
            if step.op in _ALU_SYMBOLS:
                if step.op == "mul" and is_sum:
                    text = f"({text})"
                text = f"{text} {_ALU_SYMBOLS[step.op]} {operand}"
            else:
                text = f"{step.op}({text}, {operand})"
            is_sum = step.op == "add"
        return text

    def reads(self):
        return (self.acc, *(op.src for op in self.ops if op.src is not None))

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


OPCODES: dict[str, type[Instruction]] = {cls.opcode: cls for cls in (Load, Conv, Add, Store)}


def instruction_to_json(inst: Instruction) -> dict:
    data: dict = {"op": inst.opcode}
    if isinstance(inst, Add):
        data |= {"acc": inst.acc.to_json(), "out": inst.out.to_json()}
        data["ops"] = [op.to_json() for op in inst.ops]
    else:
        data |= {name: operand.to_json() for name, operand in inst.operands().items()}
    if isinstance(inst, Load) and inst.pad:
        data["pad"] = [list(p) for p in inst.pad]
    if isinstance(inst, Conv):
        data["stride"] = list(inst.stride)
        data["groups"] = inst.groups
        if inst.accumulate:
            data["accumulate"] = True
    data["wait"] = list(inst.wait)
    data["signal"] = list(inst.signal)
    return data


_OPERANDS = ("dst", "src", "inp", "wgt", "acc", "out")
_ATTRIBUTES = {
    "LOAD": ("pad",),
    "CONV": ("stride", "groups", "accumulate"),
    "ADD": ("ops",),
    "STORE": (),
}
_REQUIRED_ATTRIBUTES = {"CONV": ("groups",), "ADD": ("ops",)}


def instruction_from_json(data: dict, where: str) -> Instruction:
    """One instruction from its JSON object; every field is type-checked (ProgramError)."""
    op = data.get("op") if isinstance(data, dict) else None
    if not isinstance(op, str) or op not in OPCODES:
        shown = _show(op if isinstance(data, dict) else data)
        raise ProgramError(f"{where}: unknown opcode {shown}; expected one of {sorted(OPCODES)}")
    cls = OPCODES[op]
    fields = cls.__dataclass_fields__
    operands = [name for name in _OPERANDS if name in fields]
    required = [name for name in operands if fields[name].default is MISSING]
    required += _REQUIRED_ATTRIBUTES.get(op, ())
    missing = [name for name in required if name not in data]
    if missing:
        raise ProgramError(f"{where}: {op} is missing a field: {missing}; it needs {required}")
    known = {"op", "wait", "signal", *operands, *_ATTRIBUTES[op]}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProgramError(f"{where}: {op} has no field(s) {unknown}; fields: {sorted(known)}")
    kwargs: dict = {key: _units(data.get(key, []), f"{where}: {key}") for key in ("wait", "signal")}
    for name in operands:
        if name not in data:
            continue
        what = f"{where} {op}.{name}"
        if (cls is Load and name == "src") or (cls is Store and name == "dst"):
            kwargs[name] = Dram.from_json(data[name], what, min_extent=0 if cls is Load else 1)
        else:
            kwargs[name] = Slot.from_json(data[name], what)
    if cls is Load and "pad" in data:  # its rank and signs: Program checks them, as for code
        kwargs["pad"] = _pairs(data["pad"], f"{where} LOAD.pad", "[before, after]")
    if cls is Conv:
        if "stride" in data:
            stride = data["stride"]
            ok = isinstance(stride, list) and len(stride) == 2
            if not ok or not all(type(s) is int and s >= 1 for s in stride):
                raise ProgramError(f"{where}: CONV stride {_show(stride)}: give two integers >= 1")
            kwargs["stride"] = tuple(stride)
        kwargs["groups"] = _int(data["groups"], f"{where} CONV.groups", 1)
        if "accumulate" in data:
            if not isinstance(data["accumulate"], bool):
                shown = _show(data["accumulate"])
                raise ProgramError(f"{where}: CONV accumulate {shown}: give true or false")
            kwargs["accumulate"] = data["accumulate"]
    if cls is Add:
        items = _list(data["ops"], f"{where} ADD.ops")
        kwargs["ops"] = tuple(
            AluOp.from_json(item, f"{where} ADD.ops[{i}]") for i, item in enumerate(items)
        )
    return cls(**kwargs)


def _units(value, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise ProgramError(f"{what} must be a list of unit names, got {_show(value)}")
    bad = [u for u in value if u not in UNITS]
    if bad:
        raise ProgramError(f"{what} names unknown units {bad}; units are {UNITS}")
    return tuple(value)


@dataclass(frozen=True)
class BufferDecl:
    """An on-chip buffer as the program uses it: the shape of one slot and the number of slots."""

    shape: tuple[int, ...]
    slots: int
    dtype: str = "float32"

    def __post_init__(self) -> None:
        _dtype(self.dtype, "buffer dtype")  # an unknown dtype would have no byte size

    @property
    def slot_bytes(self) -> int:
        size = 1
        for dim in self.shape:
            size *= dim
        return size * dtype_bytes(self.dtype)


def dtype_bytes(dtype: str) -> int:
    """Bytes of one element of a float dtype (`float32` -> 4)."""
    return int(dtype.removeprefix("float")) // 8


@dataclass(frozen=True)
class Program:
    """One instruction stream per unit, the on-chip buffers they use and the DRAM tensors."""

    streams: dict[str, tuple[Instruction, ...]]
    buffers: dict[str, BufferDecl]
    tensors: dict[str, tuple[int, ...]]
    dtype: str = "float32"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _dtype(self.dtype, "program dtype")
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
                _check_inside(where, operand.region, decl.shape, "buffer")
            elif isinstance(operand, Dram):
                shape = self.tensors.get(operand.tensor)
                if shape is None:
                    raise ProgramError(
                        f"{where}: unknown tensor {operand.tensor!r}; declared: "
                        f"{sorted(self.tensors)}"
                    )
                if isinstance(inst, Load):  # may be empty: a pure zero fill
                    fix = ": a LOAD's src lies inside the tensor, zeros outside it are its pad"
                    _check_inside(where, operand.region, shape, "tensor", fix, min_extent=0)
                else:
                    _check_inside(where, operand.region, shape, "tensor")
        if isinstance(inst, Conv) and (type(inst.groups) is not int or inst.groups < 1):
            raise ProgramError(f"{unit}#{index} CONV.groups {inst.groups!r}: an integer >= 1")
        if isinstance(inst, Load) and inst.pad:
            where = f"{unit}#{index} LOAD.pad"
            if len(inst.pad) != len(inst.dst.region):
                raise ProgramError(
                    f"{where} {format_pad(inst.pad)}: one (before, after) per dimension of dst, "
                    f"which has {len(inst.dst.region)}"
                )
            if any(before < 0 or after < 0 for before, after in inst.pad):
                raise ProgramError(f"{where} {format_pad(inst.pad)}: zero counts must be >= 0")

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
                if isinstance(inst, Load) and inst.pad:
                    extra = f", pad={format_pad(inst.pad)}"
                if isinstance(inst, Conv):
                    extra = f", stride={inst.stride[0]}x{inst.stride[1]}"
                    extra += f", groups={inst.groups}" if inst.groups != 1 else ""
                    extra += ", accumulate" if inst.accumulate else ""
                if isinstance(inst, Add):
                    ops = f"{inst.out} = {inst.expression()}"
                flags = inst.flags()
                lines.append(
                    f"  {index:4d}  {inst.opcode:<5} {ops}{extra}"
                    + (f"  ; {flags}" if flags else "")
                )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.listing()

    def to_dict(self) -> dict:
        """The program as plain JSON data (what `to_json` writes)."""
        return {
            "version": 1,
            "dtype": self.dtype,
            "meta": self.meta,
            "tensors": {k: list(v) for k, v in self.tensors.items()},
            "buffers": {
                k: {"shape": list(d.shape), "slots": d.slots, "dtype": d.dtype}
                for k, d in self.buffers.items()
            },
            "streams": {u: [instruction_to_json(i) for i in s] for u, s in self.streams.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Program:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProgramError(
                f"program JSON does not parse at line {err.lineno} column {err.colno}: {err.msg}"
            ) from err
        if not isinstance(data, dict) or type(data.get("version")) is not int:
            raise ProgramError("not a tvm-convadd program: expected an object with version 1")
        if data["version"] != 1:
            raise ProgramError(f"program version {data['version']}: this tvm-convadd reads 1")
        for key in ("tensors", "buffers", "streams"):
            if key not in data:
                raise ProgramError(f"program JSON is missing a field: {key!r}")
        dtype = _dtype(data.get("dtype", "float32"), "program dtype")
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise ProgramError(f"program meta {_show(meta)}: must be an object")
        tensors = {
            name: _shape(shape, f"tensor {name!r} shape")
            for name, shape in _mapping(data["tensors"], "program tensors").items()
        }
        buffers = {
            name: _buffer(decl, f"buffer {name!r}")
            for name, decl in _mapping(data["buffers"], "program buffers").items()
        }
        streams = {
            unit: tuple(
                instruction_from_json(item, f"{unit}#{index}")
                for index, item in enumerate(_list(items, f"stream {unit!r}"))
            )
            for unit, items in _mapping(data["streams"], "program streams").items()
        }
        return cls(streams, buffers, tensors, dtype, meta)


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProgramError(f"{what} {_show(value)}: must be an object of name -> entry")
    return value


def _buffer(value, what: str) -> BufferDecl:
    data = _object(value, what, ("shape", "slots"), ("dtype",))
    return BufferDecl(
        _shape(data["shape"], f"{what} shape"),
        _int(data["slots"], f"{what} slots", 1),
        _dtype(data.get("dtype", "float32"), f"{what} dtype"),
    )


def _check_inside(
    where: str, region: Region, shape: tuple[int, ...], kind: str, fix: str = "", min_extent=1
) -> None:
    """`region` of the same rank as the `kind` ("buffer", "tensor") of `shape` and inside it."""
    if len(region) != len(shape):
        raise ProgramError(
            f"{where}: region {format_region(region)} has rank {len(region)}, "
            f"the {kind} has rank {len(shape)}"
        )
    for (start, extent), dim in zip(region, shape):
        if extent < min_extent:
            raise ProgramError(f"{where}: region {format_region(region)} has an empty dimension")
        if start < 0 or start + extent > dim:
            raise ProgramError(
                f"{where}: region {format_region(region)} runs outside shape {list(shape)}{fix}"
            )
