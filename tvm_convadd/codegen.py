"""The `relax.ext.convadd` codegen: each fused conv+add function becomes a Program the VM calls.

`RunCodegen` hands us the functions `PartitionConvAdd` annotated. For each we read its
Workload, choose a TileConfig (the user's, the best tuning record, or the analytic heuristic),
lower it to a Program for the target's hardware, and register a packed function under the
function's global symbol. The VM calls it destination-passing style (inputs..., out); it runs
the simulator on the arguments and keeps the cycle counts for the report.
"""

from __future__ import annotations

import itertools
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

CODEGEN = "convadd"


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
    """One fused function as compiled: what it computes, how it is tiled, and why."""

    symbol: str
    workload: Workload
    roles: tuple[str, ...]
    config: TileConfig
    config_source: str  # "records", "heuristic" or "user"
    program: Program
    serial_cycles: int  # the same tiles run without pipelining: the A + B baseline


@dataclass(frozen=True)
class LayerRun:
    layer: OffloadedLayer
    result: SimResult


@dataclass
class OffloadSession:
    """Everything one build offloaded, and what each VM call of it simulated."""

    options: CodegenOptions
    hardware: HardwareConfig
    layers: dict[str, OffloadedLayer] = field(default_factory=dict)
    runs: list[LayerRun] = field(default_factory=list)
    error: ConvAddError | None = None  # raised in the codegen; the FFI would lose its type

    def compile_function(self, func: tvm.relax.Function) -> OffloadedLayer:
        fused = describe(func)
        config, source = choose_config(fused.workload, self.hardware, self.options)
        program = lower_to_program(fused.workload, config, self.hardware)
        serial = lower_to_program(fused.workload, _serial(config), self.hardware)
        serial_cycles = simulate(serial, self.hardware, functional=False).total_cycles
        symbol = str(func.attrs["global_symbol"])
        layer = OffloadedLayer(
            symbol, fused.workload, fused.roles, config, source, program, serial_cycles
        )
        self.layers[symbol] = layer
        return layer

    def packed_function(self, layer: OffloadedLayer):
        """The DPS function the VM calls for `layer`."""

        def run(*args):
            *inputs, out = args
            # a role is the name of the program's DRAM tensor it feeds
            tensors = {role: arg.numpy() for role, arg in zip(layer.roles, inputs)}
            if "bias" in tensors:
                tensors["bias"] = tensors["bias"].reshape(layer.workload.bias_shape)
            result = simulate(
                layer.program, self.hardware, tensors, functional=self.options.functional
            )
            if self.options.functional:
                out.copyfrom(np.ascontiguousarray(result.outputs["output"]))
            self.runs.append(LayerRun(layer, result))

        return run


def _serial(config: TileConfig) -> TileConfig:
    return TileConfig(config.n_tiles, config.axis, "none")


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


_SESSIONS: dict[str, OffloadSession] = {}
_COUNTER = itertools.count()


def new_session(options: CodegenOptions) -> tuple[str, OffloadSession]:
    """A session the codegen fills in; its id travels to the codegen through RunCodegen."""
    session_id = f"s{next(_COUNTER)}"
    session = OffloadSession(options, hardware_for_target(options.target))
    _SESSIONS[session_id] = session
    return session_id, session


@tvm.register_global_func(f"relax.ext.{CODEGEN}", override=True)
def _codegen(functions, options, constant_names):
    session_id = str(options["session"]) if options is not None and "session" in options else ""
    if session_id not in _SESSIONS:
        raise ConvAddError(
            "relax.ext.convadd needs a session: build with tvm_convadd.build(...), which passes "
            "RunCodegen({'convadd': {'session': ...}})"
        )
    session = _SESSIONS[session_id]
    for func in functions:
        try:
            layer = session.compile_function(func)
        except ConvAddError as err:
            session.error = err
            raise
        tvm.register_global_func(layer.symbol, session.packed_function(layer), override=True)
    return []
