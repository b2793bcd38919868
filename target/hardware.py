"""The accelerator's hardware description: unit throughputs, DMA, on-chip capacities, costs.

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
from tvm_convadd.target.isa import Add, Conv, Instruction, Load, Store, region_size

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tvm_convadd.target.isa import Program

BUFFERS = ("inp", "wgt", "bias", "acc", "res", "out")
DTYPES = ("float16", "float32", "float64")

# field -> (smallest, largest) accepted value; the ranges only catch typos and nonsense.
_INT_RANGES = {
    "macs_per_cycle": (1, 1 << 24),
    "add_lanes": (1, 1 << 20),
    "dma_latency_cycles": (0, 1 << 20),
    "issue_cycles": (0, 1 << 16),
    "conv_setup_cycles": (0, 1 << 20),
}
_DMA_BANDWIDTH_RANGE = (1, 1 << 40)
_CLOCK_RANGE = (1e-3, 1e5)
_CAPACITY_RANGE = (1, 1 << 44)


@dataclass(frozen=True)
class HardwareConfig:
    """One design point of the simulated accelerator (frozen: shared freely, cached by name).

    `dma_bytes_per_cycle` None means unlimited bandwidth (transfers take no cycles), which
    with zero latency and issue cost gives the ideal machine used to check `A + B/N`.
    """

    name: str
    description: str
    macs_per_cycle: int
    add_lanes: int
    dma_bytes_per_cycle: int | None
    dma_latency_cycles: int
    issue_cycles: int
    conv_setup_cycles: int  # per CONV: fill and drain the MAC array, preload its weights
    buffer_bytes: Mapping[str, int] = field(hash=False)
    dtype: str = "float32"
    clock_mhz: float = 500.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "buffer_bytes", MappingProxyType(dict(self.buffer_bytes)))

    def __reduce__(self):
        """Pickle through the plain dict (a MappingProxyType does not pickle): process pools."""
        return (self.from_dict, (self.to_dict(),))

    # -- cost model: the one place where an instruction's cycles are defined ----------------
    def conv_cycles(self, macs: int) -> int:
        """Cycles of one CONV instruction doing `macs` multiply-accumulates: the fixed set-up
        is what makes very small tiles lose (the best N is finite)."""
        return _ceil_div(macs, self.macs_per_cycle) + self.conv_setup_cycles + self.issue_cycles

    def add_cycles(self, elements: int) -> int:
        """Cycles of one ADD instruction producing `elements` outputs."""
        return _ceil_div(elements, self.add_lanes) + self.issue_cycles

    def dma_cycles(self, nbytes: int) -> int:
        """Cycles of one LOAD or STORE moving `nbytes` (each DMA engine serves one unit)."""
        bandwidth = self.dma_bytes_per_cycle
        transfer = 0 if bandwidth is None else _ceil_div(nbytes, bandwidth)
        return self.dma_latency_cycles + transfer + self.issue_cycles

    def instruction_cycles(self, inst: Instruction, program: Program) -> int:
        """Cycles of any ISA instruction of `program` (the program gives the element size)."""
        if isinstance(inst, Conv):
            return self.conv_cycles(inst.macs)
        if isinstance(inst, Add):
            return self.add_cycles(region_size(inst.out.region))
        if isinstance(inst, (Load, Store)):
            return self.dma_cycles(inst.transfer_bytes(program))
        raise HardwareConfigError(f"no cost for instruction {type(inst).__name__}")

    def capacity(self, buffer: str) -> int:
        """Bytes of on-chip buffer `buffer`, all its slots together."""
        try:
            return self.buffer_bytes[buffer]
        except KeyError:
            raise HardwareConfigError(
                f"{self.name} has no on-chip buffer {buffer!r}; buffers: {list(BUFFERS)}"
            ) from None

    def cycles_to_us(self, cycles: int) -> float:
        """Wall time of `cycles` at the configured clock, for reports."""
        return cycles / self.clock_mhz

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["buffer_bytes"] = dict(self.buffer_bytes)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "hardware config") -> HardwareConfig:
        """Validate and build; errors name the field, the bad value and the accepted range."""
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise HardwareConfigError(f"{source}: expected a JSON object, got {kind}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise HardwareConfigError(f"{source}: unknown field(s) {unknown}; fields are {known}")
        required = [f.name for f in fields(cls) if f.name not in ("dtype", "clock_mhz")]
        missing = [name for name in required if name not in data]
        if missing:
            raise HardwareConfigError(f"{source}: missing field(s) {missing}")

        for key in ("name", "description"):
            if not isinstance(data[key], str) or (key == "name" and not data[key]):
                raise HardwareConfigError(f"{source}: {key} must be a non-empty string")
        values = {key: _int_field(source, key, data[key], *rng) for key, rng in _INT_RANGES.items()}
        bandwidth = data["dma_bytes_per_cycle"]
        if bandwidth is not None:
            bandwidth = _int_field(source, "dma_bytes_per_cycle", bandwidth, *_DMA_BANDWIDTH_RANGE)
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
            dma_bytes_per_cycle=bandwidth,
            buffer_bytes=capacities,
            dtype=dtype,
            clock_mhz=float(clock),
            **values,
        )


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


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
            text = path.read_text()
        except OSError as err:
            raise HardwareConfigError(f"cannot read hardware config {path}: {err}") from err
        return _parse(text, str(path))
    raise HardwareConfigError(
        f"unknown hardware config {key!r}: known configs are {shipped}, or give a .json path"
    )
