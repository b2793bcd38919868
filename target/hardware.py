"""The accelerator's hardware description: the MAC array, the vector unit, the DMA, buffers.

A configuration is data (a JSON file under `configs/`), not constants in code, so a new
design point is a new file. The cost of every ISA instruction is defined here and only here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tvm_convadd.errors import HardwareConfigError
from tvm_convadd.target.isa import (
    ALU_OPS,
    DMA_UNITS,
    DTYPES,
    Add,
    Conv,
    Instruction,
    Load,
    Store,
    dtype_bytes,
    region_size,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from tvm_convadd.target.isa import Program, Region

BUFFERS = ("inp", "wgt", "bias", "acc", "res", "out")  # the buffer pools of `buffer_bytes`
# Epilogue operand buffers ("res", "res_2", ..., "bias", "scale_2", ...) and the pool each draws
# from: full tensors from the residual memory, per-channel vectors from the vector memory.
_POOL_OF_PREFIX = {"res": "res", "bias": "bias", "scale": "bias"}
DATAFLOWS = {"ws": "weight-stationary", "os": "output-stationary", "is": "input-stationary"}

# field -> (smallest, largest) accepted value; the ranges only catch typos and nonsense.
_INT_RANGES = {
    "array_rows": (1, 1 << 12),
    "array_cols": (1, 1 << 12),
    "add_lanes": (1, 1 << 20),
    "add_latency_cycles": (0, 1 << 16),
    "dma_latency_cycles": (0, 1 << 20),
    "dma_run_cycles": (0, 1 << 16),
    "issue_cycles": (0, 1 << 16),
}
_ALU_OP_CYCLES_RANGE = (0, 1 << 16)
# Which DMA units share one engine (one transfer in flight): each queue its own engine, as
# NVDLA splits its conv DMA from the SDP's read DMA. All engines share the DRAM bandwidth.
SPLIT_DMA_QUEUES = (("load",), ("vload",), ("store",))
_OPTIONAL = {"dtype": "float32", "clock_mhz": 500.0, "dma_queues": SPLIT_DMA_QUEUES}
_RETIRED = {  # fields of the first, flat cost model, and what replaced them
    "macs_per_cycle": "array_rows, array_cols and dataflow",
    "conv_setup_cycles": "fill_drain (the array's fill and drain per fold)",
}
_DMA_BANDWIDTH_RANGE = (1, 1 << 40)
_CLOCK_RANGE = (1e-3, 1e5)
_CAPACITY_RANGE = (1, 1 << 44)


@dataclass(frozen=True)
class ConvMapping:
    """A CONV as the array walks it: the GEMM dims in the dataflow's roles, folds, cycles.

    SCALE-Sim's notation: `spatial_rows` (Sr) and `spatial_cols` (Sc) are the dims laid over
    the array's rows and columns, `temporal` (T) the dim streamed through it in time.
    """

    spatial_rows: int
    spatial_cols: int
    temporal: int
    row_folds: int
    col_folds: int
    cycles_per_fold: int

    @property
    def folds(self) -> int:
        return self.row_folds * self.col_folds

    @property
    def cycles(self) -> int:
        return self.folds * self.cycles_per_fold


@dataclass(frozen=True)
class HardwareConfig:
    """One design point of the simulated accelerator (frozen: shared freely, cached by name).

    `dma_bytes_per_cycle` None means unlimited bandwidth (transfers take no cycles), which
    with zero latencies, no fill/drain and no issue cost gives the ideal machine of `A + B/N`.
    Otherwise it is the one DRAM channel's bandwidth, shared by every DMA queue: a second queue
    overlaps latencies and orders transfers by readiness, but moves no byte faster.
    `dma_queues` groups the DMA units (load: conv operands; vload: epilogue operands; store)
    into engines; units of one engine have one transfer in flight between them.
    """

    name: str
    description: str
    array_rows: int
    array_cols: int
    dataflow: str  # one of DATAFLOWS
    fill_drain: bool  # False only on the ideal machine: folds stream with no skew
    add_lanes: int
    add_latency_cycles: int  # the vector unit's pipeline depth, paid once per instruction
    alu_op_cycles: Mapping[str, int] = field(hash=False)  # cycles per lane-wide pass, per op
    dma_bytes_per_cycle: int | None
    dma_latency_cycles: int  # per transfer: descriptor, DRAM round trip
    dma_run_cycles: int  # per run of the DRAM region: a new burst and address (short gaps stream)
    issue_cycles: int
    buffer_bytes: Mapping[str, int] = field(hash=False)
    dtype: str = "float32"
    clock_mhz: float = 500.0
    dma_queues: tuple[tuple[str, ...], ...] = SPLIT_DMA_QUEUES

    def __post_init__(self) -> None:
        object.__setattr__(self, "buffer_bytes", MappingProxyType(dict(self.buffer_bytes)))
        object.__setattr__(self, "alu_op_cycles", MappingProxyType(dict(self.alu_op_cycles)))

    def __reduce__(self):
        """Pickle through the plain dict (a MappingProxyType does not pickle): process pools."""
        return (self.from_dict, (self.to_dict(),))

    @property
    def macs_per_cycle(self) -> int:
        """Peak multiply-accumulates per cycle (every PE busy)."""
        return self.array_rows * self.array_cols

    # -- cost model: the one place where an instruction's cycles are defined ----------------
    def conv_mapping(self, pixels: int, reduction: int, channels: int) -> ConvMapping:
        """How a conv of GEMM shape P x K x N (`pixels`, `reduction` = C_in*kh*kw,
        `channels` out) maps onto the array, following SCALE-Sim 3.0's compute model.

        Which GEMM dim goes where is the dataflow (SCALE-Sim's Sr / Sc / T):
          ws: the weights stay, K over the rows and N over the columns; the P pixels stream.
          os: each PE keeps one output, P over the rows and N over the columns; K streams.
          is: the inputs stay, K over the rows and P over the columns; the N filters stream.
        The array walks ceil(Sr/R) x ceil(Sc/C) folds one after another; a partial fold costs a
        full one (SCALE-Sim pads it to R x C), its idle PEs the poor utilization of a channel
        count off the array. One fold of ws or is on an R x C array costs 2R + C + T - 2:
          R       fill: the stationary tile (weights / inputs) enters, one array row a cycle;
          T       stream: one vector of the moving operand enters per cycle;
          R - 1   skew: row r receives its stream r cycles after row 0;
          C - 1   drain: the partial sums ripple across the columns to the array's edge.
        One fold of os costs R + C + T - 2: nothing is preloaded (the outputs build up in
        place), the T = K reduction steps stream with R - 1 of row skew and C - 1 of column
        skew, and SCALE-Sim charges no separate drain of the finished outputs.
        These are SCALE-Sim 3.0's demand-matrix lengths, checked equal on 120 random layers
        (benchmarks/SCALESIM.md); its report prints the last cycle's 0-based index, one less.
        `fill_drain` False (the ideal machine) keeps only T: every fold is pure streaming.
        """
        sr, sc, t = {
            "ws": (reduction, channels, pixels),
            "os": (pixels, channels, reduction),
            "is": (reduction, pixels, channels),
        }[self.dataflow]
        rows, cols = self.array_rows, self.array_cols
        preload = 0 if self.dataflow == "os" else rows
        overhead = preload + rows + cols - 2 if self.fill_drain else 0
        return ConvMapping(sr, sc, t, _ceil_div(sr, rows), _ceil_div(sc, cols), t + overhead)

    def conv_cycles(self, pixels: int, reduction: int, channels: int, groups: int = 1) -> int:
        """Cycles of one CONV instruction of `groups` GEMMs of shape P x K x N each (K and N
        per group): every group's folds one after another, plus issue once.

        Each group is its own GEMM on the array: there is no block-diagonal packing of several
        groups into one fold (SCALE-Sim models no grouped conv either), so a depthwise conv
        (K = kh*kw, N = 1) uses one column of the array and pays fill and drain per channel.
        """
        per_group = self.conv_mapping(pixels, reduction, channels).cycles
        return groups * per_group + self.issue_cycles

    def add_cycles(self, elements: int, ops: Sequence[str] = ()) -> int:
        """Cycles of one ADD producing `elements` outputs through the op list `ops` (names):
        each lane-wide pass of `add_lanes` elements costs the ops' `alu_op_cycles` summed (at
        least one cycle: an empty list still moves acc to out), then the pipeline latency."""
        try:
            per_pass = max(1, sum(self.alu_op_cycles[op] for op in ops))
        except KeyError as err:
            raise HardwareConfigError(
                f"{self.name}: no ALU op {err.args[0]!r}; ops are {list(ALU_OPS)}"
            ) from None
        passes = _ceil_div(elements, self.add_lanes)
        return passes * per_pass + self.add_latency_cycles + self.issue_cycles

    def dma_cycles(self, nbytes: int, runs: int = 1) -> int:
        """Cycles of one LOAD or STORE moving `nbytes` of DRAM in `runs` runs (bursts), alone
        on the channel: `dma_setup_cycles` then `dma_transfer_cycles`."""
        return self.dma_setup_cycles + self.dma_transfer_cycles(nbytes, runs)

    @property
    def dma_setup_cycles(self) -> int:
        """The part of a transfer that holds its queue but not the DRAM channel: the issue and
        the descriptor's round trip (latency, paid once per transfer)."""
        return self.dma_latency_cycles + self.issue_cycles

    def dma_transfer_cycles(self, nbytes: int, runs: int = 1) -> int:
        """The part that holds the shared DRAM channel: bytes / bandwidth, and `dma_run_cycles`
        for each run, because each run is its own burst (a tile that cuts the width moves many
        short rows). Zero on an unlimited-bandwidth machine."""
        if self.dma_bytes_per_cycle is None:
            return 0
        return _ceil_div(nbytes, self.dma_bytes_per_cycle) + runs * self.dma_run_cycles

    def region_dma_cycles(self, region: Region, shape: Sequence[int], dtype: str) -> int:
        """Cycles to move the part of `region` inside a DRAM tensor of `shape` (the padding
        around it is zero-filled on chip and crosses no bus)."""
        return self.dma_setup_cycles + self.region_transfer_cycles(region, shape, dtype)

    def region_transfer_cycles(self, region: Region, shape: Sequence[int], dtype: str) -> int:
        """The DRAM channel's share of `region_dma_cycles`."""
        inside = clip_region(region, shape)
        if inside is None:
            return self.dma_transfer_cycles(0, 0)
        if self.dma_bytes_per_cycle is None:
            return 0
        stream = self.dma_run_cycles * self.dma_bytes_per_cycle // dtype_bytes(dtype)
        moved, runs = dram_footprint(inside, shape, stream)
        return self.dma_transfer_cycles(moved * dtype_bytes(dtype), runs)

    def transfer_cycles(self, inst: Instruction, program: Program) -> int:
        """Cycles a LOAD or STORE holds the DRAM channel; 0 for compute instructions."""
        if isinstance(inst, (Load, Store)):
            dram = inst.src if isinstance(inst, Load) else inst.dst
            shape = program.tensors[dram.tensor]
            return self.region_transfer_cycles(dram.region, shape, program.dtype)
        return 0

    def dma_engine(self, unit: str) -> int | None:
        """Index of the DMA engine (`dma_queues` entry) serving `unit`; None for compute units."""
        for index, queue in enumerate(self.dma_queues):
            if unit in queue:
                return index
        return None

    def instruction_cycles(self, inst: Instruction, program: Program) -> int:
        """Cycles of any ISA instruction of `program` (the program gives the tensor shapes)."""
        if isinstance(inst, Conv):
            return self.conv_cycles(*conv_gemm(inst), groups=inst.groups)
        if isinstance(inst, Add):
            return self.add_cycles(region_size(inst.out.region), [op.op for op in inst.ops])
        if isinstance(inst, (Load, Store)):
            dram = inst.src if isinstance(inst, Load) else inst.dst
            return self.region_dma_cycles(dram.region, program.tensors[dram.tensor], program.dtype)
        raise HardwareConfigError(f"no cost for instruction {type(inst).__name__}")

    def pool_bytes(self, pool: str) -> int:
        """Bytes of buffer pool `pool` (one of BUFFERS), shared by every buffer drawing on it."""
        try:
            return self.buffer_bytes[pool]
        except KeyError:
            raise HardwareConfigError(
                f"{self.name} has no on-chip buffer pool {pool!r}; pools: {list(BUFFERS)}"
            ) from None

    def capacity(self, buffer: str) -> int:
        """Bytes of the pool a program buffer draws from ("res_2" -> res, "scale" -> bias):
        all its slots together, and all other buffers of the pool with it (see `overflowing`)."""
        return self.pool_bytes(buffer_pool(buffer))

    def cycles_to_us(self, cycles: int) -> float:
        """Wall time of `cycles` at the configured clock, for reports."""
        return cycles / self.clock_mhz

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["buffer_bytes"] = dict(self.buffer_bytes)
        data["alu_op_cycles"] = dict(self.alu_op_cycles)
        data["dma_queues"] = [list(queue) for queue in self.dma_queues]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "hardware config") -> HardwareConfig:
        """Validate and build; errors name the field, the bad value and the accepted range."""
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise HardwareConfigError(f"{source}: expected a JSON object, got {kind}")
        retired = [name for name in _RETIRED if name in data]
        if retired:
            replaced = "; ".join(f"{name} by {_RETIRED[name]}" for name in retired)
            raise HardwareConfigError(
                f"{source}: an old-format config: {replaced} (see target/configs/default.json)"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise HardwareConfigError(f"{source}: unknown field(s) {unknown}; fields are {known}")
        missing = [name for name in known if name not in data and name not in _OPTIONAL]
        if missing:
            raise HardwareConfigError(f"{source}: missing field(s) {missing}")

        for key in ("name", "description"):
            if not isinstance(data[key], str) or (key == "name" and not data[key]):
                raise HardwareConfigError(f"{source}: {key} must be a non-empty string")
        values = {key: _int_field(source, key, data[key], *rng) for key, rng in _INT_RANGES.items()}
        bandwidth = data["dma_bytes_per_cycle"]
        if bandwidth is not None:
            bandwidth = _int_field(source, "dma_bytes_per_cycle", bandwidth, *_DMA_BANDWIDTH_RANGE)
        dataflow = data["dataflow"]
        if dataflow not in DATAFLOWS:
            raise HardwareConfigError(
                f"{source}: dataflow {dataflow!r}: choose one of {list(DATAFLOWS)} "
                f"({', '.join(DATAFLOWS.values())})"
            )
        if not isinstance(data["fill_drain"], bool):
            raise HardwareConfigError(
                f"{source}: fill_drain {data['fill_drain']!r}: must be true or false"
            )
        dtype = data.get("dtype", "float32")
        if dtype not in DTYPES:
            raise HardwareConfigError(f"{source}: dtype {dtype!r}: choose one of {list(DTYPES)}")
        clock = data.get("clock_mhz", 500.0)
        low, high = _CLOCK_RANGE
        is_number = isinstance(clock, (int, float)) and not isinstance(clock, bool)
        if not is_number or not low <= clock <= high:
            raise HardwareConfigError(f"{source}: clock_mhz {clock!r}: must be in {low}..{high}")

        buffers = data["buffer_bytes"]
        if not isinstance(buffers, dict) or set(buffers) != set(BUFFERS):
            got = sorted(buffers) if isinstance(buffers, dict) else buffers
            raise HardwareConfigError(
                f"{source}: buffer_bytes must give exactly the buffers {list(BUFFERS)}, got {got}"
            )
        capacities = {
            name: _int_field(source, f"buffer_bytes.{name}", buffers[name], *_CAPACITY_RANGE)
            for name in BUFFERS
        }
        return cls(
            name=data["name"],
            description=data["description"],
            dataflow=dataflow,
            fill_drain=data["fill_drain"],
            dma_bytes_per_cycle=bandwidth,
            alu_op_cycles=_alu_op_cycles(source, data["alu_op_cycles"]),
            buffer_bytes=capacities,
            dtype=dtype,
            clock_mhz=float(clock),
            dma_queues=_dma_queues(source, data.get("dma_queues", SPLIT_DMA_QUEUES)),
            **values,
        )


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _alu_op_cycles(source: str, value: Any) -> dict[str, int]:
    """`alu_op_cycles`: an object giving every ALU op, and only those, an integer cost."""
    if not isinstance(value, dict):
        raise HardwareConfigError(
            f"{source}: alu_op_cycles {value!r}: must be an object of op -> cycles for "
            f"{list(ALU_OPS)}"
        )
    unknown = sorted(set(value) - set(ALU_OPS))
    if unknown:
        raise HardwareConfigError(
            f"{source}: alu_op_cycles has unknown op(s) {unknown}: the ALU ops are {list(ALU_OPS)}"
        )
    missing = [op for op in ALU_OPS if op not in value]
    if missing:
        raise HardwareConfigError(
            f"{source}: alu_op_cycles is missing op(s) {missing}: give cycles for each of "
            f"{list(ALU_OPS)}"
        )
    return {
        op: _int_field(source, f"alu_op_cycles.{op}", value[op], *_ALU_OP_CYCLES_RANGE)
        for op in ALU_OPS
    }


def _dma_queues(source: str, value: Any) -> tuple[tuple[str, ...], ...]:
    """`dma_queues`: a partition of the DMA units into engines, each unit in exactly one."""
    hint = 'e.g. [["load"], ["vload"], ["store"]] (split) or [["load", "vload"], ["store"]]'
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(queue, (list, tuple)) and queue and all(isinstance(u, str) for u in queue)
        for queue in value
    ):
        raise HardwareConfigError(
            f"{source}: dma_queues {value!r}: must be a list of non-empty lists of units, {hint}"
        )
    named = [unit for queue in value for unit in queue]
    if sorted(named) != sorted(DMA_UNITS):
        raise HardwareConfigError(
            f"{source}: dma_queues {value!r} must name each DMA unit {list(DMA_UNITS)} exactly "
            f"once, {hint}"
        )
    return tuple(tuple(queue) for queue in value)


def buffer_pool(buffer: str) -> str:
    """The `buffer_bytes` pool a program buffer draws from: inp, wgt, acc, out their own; the
    epilogue operands res, res_2, ... from "res"; bias, bias_2, scale, scale_2, ... from "bias"."""
    if buffer in BUFFERS:
        return buffer
    prefix, _, number = buffer.partition("_")
    numbered = number.isascii() and number.isdigit() and int(number) >= 2
    if prefix in _POOL_OF_PREFIX and (numbered or buffer == prefix):
        return _POOL_OF_PREFIX[prefix]
    raise HardwareConfigError(
        f"on-chip buffer {buffer!r} draws from no pool: name it one of {list(BUFFERS)}, "
        "scale, or an epilogue operand's res_<n>, bias_<n>, scale_<n> (n >= 2)"
    )


def conv_gemm(conv: Conv) -> tuple[int, int, int]:
    """One group's GEMM shape (P, K, N) of a CONV: output pixels, reduction cg*kh*kw (the weight
    region's C x R x S), output channels per group; the CONV runs `conv.groups` of them."""
    (_, batch), (_, channels), (_, rows), (_, cols) = conv.acc.region
    _, (_, in_channels), (_, kernel_h), (_, kernel_w) = conv.wgt.region
    return batch * rows * cols, in_channels * kernel_h * kernel_w, channels // conv.groups


def clip_region(region: Region, shape: Sequence[int]) -> Region | None:
    """The part of `region` inside a tensor of `shape`, or None when it lies wholly outside."""
    clipped = []
    for (start, extent), dim in zip(region, shape):
        low, high = max(start, 0), min(start + extent, dim)
        if high <= low:
            return None
        clipped.append((low, high - low))
    return tuple(clipped)


def dram_footprint(region: Region, shape: Sequence[int], stream_gap: int) -> tuple[int, int]:
    """(elements the DMA moves, runs it starts) for `region` of a row-major tensor of `shape`.

    The region's runs of consecutive addresses are separated by gaps (every gap is at least
    one element, so `stream_gap=0` counts those runs). A gap of at most `stream_gap` elements
    costs less to stream through than a new burst: the DMA reads it and drops it (or, storing,
    masks it with the write strobes). Its elements are moved, and no run starts there. A
    longer gap starts a new run. The gaps are those of the address walk:
    at the wrap of each dim outside the first one the region cuts.
    """
    extents = [extent for _, extent in region]
    cut = len(shape) - 1  # the innermost dim the region does not cover whole
    while cut >= 0 and extents[cut] == shape[cut]:
        cut -= 1
    size = region_size(region)
    if cut < 0:
        return size, 1
    strides = [1] * len(shape)
    for dim in range(len(shape) - 2, -1, -1):
        strides[dim] = strides[dim + 1] * shape[dim + 1]
    run = extents[cut] * strides[cut]
    moved, runs, span = size, 1, run  # span: from a run's start to the end of the dims inside
    for dim in range(cut - 1, -1, -1):
        gap = strides[dim] - span
        count = (extents[dim] - 1) * region_size(tuple(region[:dim]))
        if gap <= stream_gap:
            moved += count * gap
        else:
            runs += count
        span += (extents[dim] - 1) * strides[dim]
    return moved, runs


def _int_field(source: str, key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HardwareConfigError(f"{source}: {key} {value!r}: must be an integer in {low}..{high}")
    return value


def _config_dir():
    return resources.files("tvm_convadd.target") / "configs"


def list_configs() -> list[str]:
    """Names of the configurations shipped with the package (the JSON file stems)."""
    return sorted(
        entry.name.removesuffix(".json")
        for entry in _config_dir().iterdir()
        if entry.name.endswith(".json")
    )


def _parse(text: str, source: str) -> HardwareConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise HardwareConfigError(
            f"{source}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from err
    return HardwareConfig.from_dict(data, source)


_SHIPPED: dict[str, HardwareConfig] = {}  # shipped configs are immutable: parse each once


def load_config(name_or_path: str | Path) -> HardwareConfig:
    """A shipped configuration by name (`"default"`), or any JSON file by path."""
    key = str(name_or_path)
    if key in _SHIPPED:
        return _SHIPPED[key]
    shipped = list_configs()
    if key in shipped:
        config = _parse((_config_dir() / f"{key}.json").read_text(), f"{key}.json")
        if config.name != key:
            raise HardwareConfigError(f"{key}.json: name {config.name!r} differs from the file")
        _SHIPPED[key] = config
        return config
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as err:
            raise HardwareConfigError(f"cannot read hardware config {path}: {err}") from err
        except UnicodeDecodeError as err:
            raise HardwareConfigError(
                f"{path}: not a JSON text file (byte {err.object[err.start]:#04x} at offset "
                f"{err.start} is not UTF-8): give a hardware config like target/configs/"
                "default.json"
            ) from err
        return _parse(text, str(path))
    raise HardwareConfigError(
        f"unknown hardware config {key!r}: known configs are {shipped}, or give a .json path"
    )
