"""`tvm_convadd.build`: the whole compile in one ordered pass list, and the module it returns.

graph clean-up (BindParams, FoldBatchnormToConv2D, FoldConstant)
PartitionConvAdd            conv2d (+bias) + add (+relu) -> functions for codegen "convadd"
UniqueOffloadSymbols        one symbol per build, so two builds never share a kernel
RunCodegen                  relax.ext.convadd: schedule -> Program -> packed function
tvm.compile(..., "llvm")    everything else runs on the CPU through the Relax VM
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvm_convadd.codegen import CODEGEN, CodegenOptions, OffloadSession, new_session
from tvm_convadd.partition import PartitionConvAdd, prepare


@tvm.transform.module_pass(opt_level=0, name="UniqueOffloadSymbols")
class UniqueOffloadSymbols:
    """Prefix the global symbol of every offloaded function with the build's session id."""

    def __init__(self, session_id: str):
        self.session_id = session_id

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gvar, func in list(mod.functions.items()):
            if func.attrs is not None and func.attrs.get("Codegen") == CODEGEN:
                symbol = f"convadd_{self.session_id}_{func.attrs['global_symbol']}"
                mod[gvar] = func.with_attr("global_symbol", symbol)
        return mod


def offload_passes(session_id: str) -> list[tvm.transform.Pass]:
    """The passes after graph clean-up, in order."""
    return [
        PartitionConvAdd(),
        UniqueOffloadSymbols(session_id),
        relax.transform.RunCodegen({CODEGEN: {"session": session_id}}),
    ]


@dataclass
class OffloadedModule:
    """A built network: `executable` runs in `relax.VirtualMachine`; `session` holds the
    offloaded layers and the cycles each call simulated."""

    executable: tvm.runtime.Executable
    session: OffloadSession

    def __post_init__(self) -> None:
        self.vm = relax.VirtualMachine(self.executable, tvm.cpu())

    @property
    def num_offloaded(self) -> int:
        return len(self.session.layers)

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """Run `main` once on numpy inputs; the simulated cycles land in `session.runs`."""
        self.session.runs.clear()
        return run_main(self.vm, inputs)


def build(
    mod: tvm.IRModule,
    target: str = "convadd-sim",
    params: dict[str, np.ndarray] | None = None,
    *,
    tiles: str | int = "auto",
    axis: str = "height",
    pipeline: str = "software",
    records: tuple[str, ...] | list[str] = (),
    functional: bool = True,
) -> OffloadedModule:
    """Compile a Relax module: fused conv+add on the `target` accelerator, the rest on llvm.

    `tiles="auto"` takes the best tuning record (from `records`, then the shipped ones) or the
    analytic heuristic; "heuristic" skips the records; an integer applies that tile count
    (clamped to each layer's axis).
    `functional=False` simulates timing only (the outputs are then not computed)."""
    options = CodegenOptions(target, tiles, axis, pipeline, tuple(records), functional)
    session_id, session = new_session(options)
    mod = prepare(mod, params)
    try:
        mod = tvm.transform.Sequential(offload_passes(session_id))(mod)
    except Exception:
        if session.error is not None:  # our own error, with its type, from inside RunCodegen
            raise session.error from None
        raise
    executable = tvm.compile(mod, target="llvm")
    return OffloadedModule(executable, session)


def build_reference(mod: tvm.IRModule, params: dict[str, np.ndarray] | None = None):
    """The same module, cleaned up the same way, all on llvm: the check for `build`."""
    executable = tvm.compile(prepare(mod, params), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return lambda *inputs: run_main(vm, inputs)


def run_main(vm: relax.VirtualMachine, inputs) -> np.ndarray:
    """Call `main` on numpy inputs; the first output as numpy (a tuple's first field)."""
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(x)) for x in inputs])
    return out.numpy() if isinstance(out, tvm.runtime.Tensor) else out[0].numpy()
