"""`tvm_convadd.build`: the whole compile in one ordered pass list, and the module it returns.

graph clean-up (BindParams, FoldBatchnormToConv2D, FoldConstant)
PartitionConvAdd            conv2d (+bias) + add (+relu) -> functions for codegen "convadd"
RunCodegen                  relax.ext.convadd: schedule -> Program, one per distinct function
EmbedPrograms               each offloaded call -> call_dps_packed(run_program, (payload, ...))
tvm.compile(..., "llvm")    everything else runs on the CPU through the Relax VM
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvm_convadd.codegen import (
    KERNELS,
    RUN_PROGRAM,
    CodegenOptions,
    OffloadSession,
    compiling,
    new_session,
    recording,
)
from tvm_convadd.errors import ConvAddError
from tvm_convadd.partition import PartitionConvAdd, prepare

_CALL_DPS_PACKED = tvm.ir.Op.get("relax.call_dps_packed")


@relax.expr_functor.mutator
class _PayloadEmbedder(relax.PyExprMutator):
    def __init__(self, session: OffloadSession, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.session = session
        self.payloads = {symbol: layer.to_payload() for symbol, layer in session.layers.items()}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not (call.op.same_as(_CALL_DPS_PACKED) and isinstance(call.args[0], relax.ExternFunc)):
            return call
        symbol = str(call.args[0].global_symbol)
        if symbol not in self.payloads:
            return call
        self.session.call_sites.append(symbol)
        args = relax.Tuple([tvm.ir.StringImm(self.payloads[symbol]), *call.args[1].fields])
        return relax.Call(call.op, [relax.ExternFunc(RUN_PROGRAM), args], call.attrs, call.ty_args)


@tvm.transform.module_pass(opt_level=0, name="EmbedPrograms")
class EmbedPrograms:
    """Replace each call RunCodegen left to an offloaded symbol by a call of `run_program`
    with the layer's payload as its first argument: the executable carries its kernels."""

    def __init__(self, session: OffloadSession) -> None:
        self.session = session

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        embedder = _PayloadEmbedder(self.session, mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gvar] = embedder.visit_expr(func)
        for symbol, layer in self.session.layers.items():
            KERNELS.put(embedder.payloads[symbol], layer)  # the first run need not re-parse
        missing = sorted(set(self.session.layers) - set(self.session.call_sites))
        if missing:
            self.session.error = ConvAddError(
                f"offloaded functions {missing} have no call left to embed: RunCodegen must "
                "run before EmbedPrograms"
            )
            raise self.session.error
        return mod


def offload_passes(session: OffloadSession) -> list[tvm.transform.Pass]:
    """The passes after graph clean-up, in order; run them within `compiling(session)`."""
    return [PartitionConvAdd(), relax.transform.RunCodegen(), EmbedPrograms(session)]


@dataclass
class OffloadedModule:
    """A built network: `executable` runs in `relax.VirtualMachine` (and survives
    `export_library` / `tvm.runtime.load_module` in a process that imports tvm_convadd);
    `session` holds the offloaded layers and what the last `run` simulated."""

    executable: tvm.runtime.Executable
    session: OffloadSession

    def __post_init__(self) -> None:
        self.vm = relax.VirtualMachine(self.executable, tvm.cpu())

    @property
    def num_offloaded(self) -> int:
        """Offloaded layers: calls of `main` that run on the accelerator."""
        return len(self.session.call_sites)

    @property
    def num_kernels(self) -> int:
        """Distinct kernels (Programs) behind those calls: equal layers share one."""
        return len(self.session.layers)

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """Run `main` once on numpy inputs; the simulated cycles land in `session.runs`."""
        with recording() as recorder:
            try:
                out = run_main(self.vm, inputs)
            except Exception:
                if recorder.error is not None:  # ours, with its type, from inside the VM
                    raise recorder.error from None
                raise
            finally:
                self.session.runs = recorder.runs
        return out


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
    session = new_session(options)
    mod = prepare(mod, params)
    try:
        with compiling(session):
            mod = tvm.transform.Sequential(offload_passes(session))(mod)
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
