"""The `relax.ext.convadd` codegen, and the one runtime function every offloaded call runs.

`RunCodegen` hands us the functions `PartitionConvAdd` annotated. For each we read its
Workload, choose a TileConfig (the user's, the best tuning record, or the analytic heuristic)
and lower it to a Program for the target's hardware. The build then replaces every call of the
function by `call_dps_packed("tvm_convadd.run_program", (payload, inputs...), out)`: the
payload is the compiled layer as a JSON string constant (Program, hardware, tiles), so the
executable carries its kernels and runs wherever `tvm_convadd` is imported, after
`export_library` and `load_module` too. Nothing is registered per build.

`run_program` simulates the payload's Program on the VM's tensors and writes the output. Inside
`with recording() as recorder:` each call's SimResult is kept for reports; otherwise it only
computes.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import tvm

from tvm_convadd.errors import ConvAddError
from tvm_convadd.partition import describe
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.hardware import HardwareConfig
from tvm_convadd.target.isa import Program
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.registry import hardware_for_target
from tvm_convadd.target.simulator import SimResult, simulate
from tvm_convadd.target.timeline import TensorRef, fingerprint

CODEGEN = "convadd"
RUN_PROGRAM = "tvm_convadd.run_program"  # the one packed function offloaded calls go through
PAYLOAD_FORMAT = "tvm-convadd-kernel"
PAYLOAD_VERSION = 2  # 2: epilogue chains, groups, 2-D tiles
KERNEL_CACHE_SIZE = 64  # parsed payloads kept by run_program; enough for any one network


@dataclass(frozen=True)
class CodegenOptions:
    """How to compile the fused functions. `tiles`: "auto" (best tuning record, else the
    heuristic), "heuristic" (ignore records), or one tile count for every layer."""

    target: str = "convadd-sim"
    tiles: str | int = "auto"
    axis: str = "height"
    pipeline: str = "software"
    records: tuple[str, ...] = ()
    functional: bool = True

    def __post_init__(self) -> None:
        named = self.tiles in ("auto", "heuristic")
        if not named and (not str(self.tiles).isdigit() or int(self.tiles) < 1):
            raise ConvAddError(
                f"tiles {self.tiles!r}: use 'auto', 'heuristic' or a tile count >= 1"
            )
        TileConfig(1, self.axis, self.pipeline)  # validates axis and pipeline names


@dataclass(frozen=True)
class OffloadedLayer:
    """One fused function as compiled: what it computes, how it is tiled and why, and for which
    hardware. `functional=False` simulates timing only (the VM's output is left unwritten)."""

    symbol: str
    workload: Workload
    roles: tuple[str, ...]
    config: TileConfig
    config_source: str  # "records", "heuristic" or "user"
    program: Program
    hardware: HardwareConfig
    functional: bool = True

    def to_payload(self) -> str:
        """The layer as the JSON string the executable carries to `run_program`."""
        return json.dumps(
            {
                "format": PAYLOAD_FORMAT,
                "version": PAYLOAD_VERSION,
                "symbol": self.symbol,
                "workload": self.workload.to_dict(),
                "roles": list(self.roles),
                "config": self.config.to_dict(),
                "config_source": self.config_source,
                "hardware": self.hardware.to_dict(),
                "functional": self.functional,
                "program": self.program.to_dict(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_payload(cls, payload: str) -> OffloadedLayer:
        try:
            data = json.loads(payload)
        except json.JSONDecodeError as err:
            raise ConvAddError(f"kernel payload is not JSON: {err}") from err
        if not isinstance(data, dict) or data.get("format") != PAYLOAD_FORMAT:
            raise ConvAddError(f"not a tvm-convadd kernel payload: expected {PAYLOAD_FORMAT!r}")
        if data.get("version") != PAYLOAD_VERSION:
            raise ConvAddError(
                f"kernel payload version {data.get('version')!r}: this tvm-convadd reads "
                f"version {PAYLOAD_VERSION}; rebuild the executable with it"
            )
        try:
            return cls(
                symbol=str(data["symbol"]),
                workload=Workload.from_dict(data["workload"]),
                roles=tuple(data["roles"]),
                config=TileConfig.from_dict(data["config"]),
                config_source=str(data["config_source"]),
                program=Program.from_json(json.dumps(data["program"])),
                hardware=HardwareConfig.from_dict(data["hardware"], "kernel payload hardware"),
                functional=bool(data["functional"]),
            )
        except KeyError as err:
            raise ConvAddError(f"kernel payload is missing the field {err}") from err
        except TypeError as err:
            raise ConvAddError(f"kernel payload has a malformed field: {err}") from err


@dataclass(frozen=True)
class LayerRun:
    """One offloaded call as run: its layer, what it simulated, and which DRAM buffers (by
    identity and version, `timeline.TensorRef`) its inputs (in role order) and output were."""

    layer: OffloadedLayer
    result: SimResult  # `outputs` dropped: the output went to the VM's tensor
    inputs: tuple[TensorRef, ...] = ()
    output: TensorRef | None = None


@dataclass
class OffloadSession:
    """Everything one build offloaded, and what the last `OffloadedModule.run` simulated.

    `layers` holds the distinct kernels by symbol; `call_sites` the kernel each offloaded call
    of `main` runs, in program order (structurally equal layers share one kernel)."""

    options: CodegenOptions
    hardware: HardwareConfig
    layers: dict[str, OffloadedLayer] = field(default_factory=dict)
    call_sites: list[str] = field(default_factory=list)
    runs: list[LayerRun] = field(default_factory=list)
    error: ConvAddError | None = None  # raised in the codegen; the FFI would lose its type

    def compile_function(self, func: tvm.relax.Function) -> OffloadedLayer:
        fused = describe(func)
        config, source = choose_config(fused.workload, self.hardware, self.options)
        program = lower_to_program(fused.workload, config, self.hardware)
        symbol = str(func.attrs["global_symbol"])
        layer = OffloadedLayer(
            symbol,
            fused.workload,
            fused.roles,
            config,
            source,
            program,
            self.hardware,
            self.options.functional,
        )
        self.layers[symbol] = layer
        return layer


def choose_config(
    workload: Workload, hardware: HardwareConfig, options: CodegenOptions
) -> tuple[TileConfig, str]:
    """The user's tile count, else the best tuning record, else the analytic heuristic."""
    if options.tiles not in ("auto", "heuristic"):
        extent = TileConfig(1, options.axis).axis_extent(workload)
        n_tiles = min(int(options.tiles), extent)
        return TileConfig(n_tiles, options.axis, options.pipeline), "user"
    from tvm_convadd.heuristic import default_config
    from tvm_convadd.records import find_best

    if options.tiles == "auto":
        best = find_best(workload, options.target, list(options.records))
        if best is not None:
            return best, "records"
    return default_config(workload, hardware), "heuristic"


def new_session(options: CodegenOptions) -> OffloadSession:
    """An empty session for one build; `compiling(session)` lets the codegen fill it in."""
    return OffloadSession(options, hardware_for_target(options.target))


# -- the codegen: the session of the build in progress is context, not a global registry -------
_COMPILING: contextvars.ContextVar[OffloadSession | None] = contextvars.ContextVar(
    "tvm_convadd_compiling", default=None
)


@contextmanager
def compiling(session: OffloadSession) -> Iterator[OffloadSession]:
    """Make `session` the one `relax.ext.convadd` compiles into, for the duration of a build."""
    token = _COMPILING.set(session)
    try:
        yield session
    finally:
        _COMPILING.reset(token)


@tvm.register_global_func(f"relax.ext.{CODEGEN}", override=True)
def _codegen(functions, options, constant_names):
    session = _COMPILING.get()
    if session is None:
        raise ConvAddError(
            "relax.ext.convadd runs inside a build: use tvm_convadd.build(...), which runs "
            "RunCodegen within codegen.compiling(session)"
        )
    for func in functions:
        try:
            session.compile_function(func)
        except ConvAddError as err:
            session.error = err
            raise
    return []  # no external module: the build embeds each layer's payload in main


# -- the runtime: one packed function, a bounded cache of parsed payloads, an optional recorder -
class _KernelCache:
    """Parsed payloads by payload text, least recently used first out: repeated calls parse
    once, and a process that builds and runs many networks keeps at most `size` kernels."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, OffloadedLayer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, payload: str) -> OffloadedLayer:
        with self._lock:
            layer = self._entries.get(payload)
            if layer is not None:
                self._entries.move_to_end(payload)
                return layer
        layer = OffloadedLayer.from_payload(payload)
        self.put(payload, layer)
        return layer

    def put(self, payload: str, layer: OffloadedLayer) -> None:
        with self._lock:
            self._entries[payload] = layer
            self._entries.move_to_end(payload)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


KERNELS = _KernelCache(KERNEL_CACHE_SIZE)


@dataclass
class RunRecorder:
    """What the offloaded calls made inside `recording()` simulated, in call order; `error`
    keeps the type of a tvm-convadd error that the VM's FFI turns into a RuntimeError."""

    runs: list[LayerRun] = field(default_factory=list)
    error: ConvAddError | None = None
    versions: dict[int, tuple[int, int]] = field(default_factory=dict)  # storage -> (version, mark)

    def tensor_ref(
        self, tensor: tvm.runtime.Tensor, contents: np.ndarray, written: bool = False
    ) -> TensorRef:
        """Which version of `tensor`'s storage `contents` is: the VM reuses memory, so a call's
        write, or contents changed since the last look (a CPU op's output), is a new one."""
        storage, mark = tensor.data_ptr(), fingerprint(contents)
        version, seen = self.versions.get(storage, (-1, None))
        if written or mark != seen:
            version += 1
            self.versions[storage] = (version, mark)
        return TensorRef(storage, version)


_RECORDER: contextvars.ContextVar[RunRecorder | None] = contextvars.ContextVar(
    "tvm_convadd_recorder", default=None
)


@contextmanager
def recording() -> Iterator[RunRecorder]:
    """Keep each offloaded call's layer and SimResult while the block runs (any VM, any
    executable, loaded or built); nested blocks record into the innermost one."""
    recorder = RunRecorder()
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def run_program(payload: str, *args) -> None:
    """DPS: simulate the payload's Program on the input tensors and write the output tensor."""
    recorder = _RECORDER.get()
    try:
        layer = KERNELS.get(str(payload))
        *inputs, out = args
        if len(inputs) != len(layer.roles):
            raise ConvAddError(
                f"{layer.symbol}: called with {len(inputs)} inputs, the kernel takes "
                f"{len(layer.roles)} ({', '.join(layer.roles)})"
            )
        # a role is the name of the program's DRAM tensor it feeds
        tensors = {role: arg.numpy() for role, arg in zip(layer.roles, inputs)}
        for name, shape in layer.workload.operand_shapes.items():  # a bias may come flat
            if name in tensors:
                tensors[name] = tensors[name].reshape(shape)
        result = simulate(layer.program, layer.hardware, tensors, functional=layer.functional)
        if layer.functional:
            out.copyfrom(np.ascontiguousarray(result.outputs["output"]))
    except ConvAddError as err:
        if recorder is not None:
            recorder.error = err
        raise
    if recorder is not None:
        refs = tuple(recorder.tensor_ref(arg, tensors[r]) for r, arg in zip(layer.roles, inputs))
        written = result.outputs["output"] if layer.functional else out.numpy()
        output = recorder.tensor_ref(out, written, written=True)
        result = dataclasses.replace(result, outputs=None)
        recorder.runs.append(LayerRun(layer, result, refs, output))


tvm.register_global_func(RUN_PROGRAM, run_program, override=True)
