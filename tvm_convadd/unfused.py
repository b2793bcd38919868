"""The unfused baseline: what a compiler without this project runs for one conv + epilogue.

The conv is its own accelerator kernel: the same layer with `epilogue=()` (conv, then store),
through the normal lowering, the fastest (simulated) of the analytic ranking's top 8 fitting
configs, as the shipped records were chosen. Its output goes through DRAM to elementwise
kernels on the Add unit (`target/elementwise.py`), each DMA-pipelined as the fused one is and
given its fastest fitting tiling. Two variants:

- **chain**: the whole epilogue chain as one elementwise kernel, as TVM's own FuseOps fuses
  injective ops; the stronger baseline, and the one reports lead with. It leaves out only the
  fusion this project adds: the conv's output makes one round trip through DRAM (stored,
  then loaded again) and the epilogue runs after the conv instead of under it.
- **per-op**: each epilogue op its own kernel (bias add, residual add, relu each a
  load/op/store pass), as issue 10 words it; it leaves out FuseOps as well, so every op
  costs a round trip of the whole tensor.

Both leave out what this machine's kernel boundaries would cost or allow: the kernels run back
to back with no launch cost (in the baseline's favour) and no overlap of one kernel's tail with
the next one's head (against it), and the conv kernel still pays the Add unit's copy of acc to
out, because this machine's STORE reads `out`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from tvm_convadd.heuristic import best_fitting, default_config
from tvm_convadd.report import config_label, resource_busy
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.elementwise import fastest_elementwise
from tvm_convadd.target.hardware import HardwareConfig
from tvm_convadd.target.isa import Program
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.simulator import SimResult, simulate

CONV_CANDIDATES = 8  # the shipped records are the best of the analytic top 8, simulated


@dataclass(frozen=True)
class KernelRun:
    """One kernel of the baseline: what it computes, how it is tiled, its timing-only run."""

    name: str  # "conv", or the op labels it applies ("bias+residual+relu", "relu")
    tiling: str
    program: Program
    result: SimResult

    @property
    def cycles(self) -> int:
        return self.result.total_cycles

    @property
    def bound_cycles(self) -> int:
        return self.result.bound_cycles

    @property
    def busy(self) -> dict[str, int]:
        return resource_busy(self.result)


@dataclass(frozen=True)
class UnfusedBaseline:
    """The conv kernel and the elementwise kernels of both variants for one workload."""

    workload: Workload
    conv: KernelRun
    chain: tuple[KernelRun, ...]  # one kernel, none for a bare conv
    per_op: tuple[KernelRun, ...]  # one kernel per epilogue op

    @property
    def chain_cycles(self) -> int:
        """Conv kernel, then the epilogue chain as one elementwise kernel."""
        return self.conv.cycles + sum(kernel.cycles for kernel in self.chain)

    @property
    def per_op_cycles(self) -> int:
        """Conv kernel, then one elementwise kernel per epilogue op."""
        return self.conv.cycles + sum(kernel.cycles for kernel in self.per_op)

    @property
    def chain_bound_cycles(self) -> int:
        """No schedule of the chain variant's kernels, run one after the other, beats this."""
        return self.conv.bound_cycles + sum(kernel.bound_cycles for kernel in self.chain)

    @property
    def per_op_bound_cycles(self) -> int:
        return self.conv.bound_cycles + sum(kernel.bound_cycles for kernel in self.per_op)


def conv_kernel(
    workload: Workload, hardware: HardwareConfig, candidates: int = CONV_CANDIDATES
) -> KernelRun:
    """The layer's conv alone (`epilogue=()`): the fastest, simulated, of the analytic
    ranking's `candidates` best fitting configs (how the shipped records were chosen), lowered
    through the normal path and simulated timing-only."""
    bare = replace(workload, epilogue=())
    best = None
    # none fitting: default_config raises the TileConfigError that names the buffer
    configs = best_fitting(bare, hardware, candidates) or [default_config(bare, hardware)]
    for config in configs:
        program = lower_to_program(bare, config, hardware)
        result = simulate(program, hardware, functional=False)
        if best is None or result.total_cycles < best.cycles:
            best = KernelRun("conv", config_label(config), program, result)
    return best


def elementwise_kernel(workload: Workload, ops, hardware: HardwareConfig) -> KernelRun:
    """The fastest fitting elementwise kernel applying `ops` over the layer's output."""
    kernel = fastest_elementwise(workload.out_shape, tuple(ops), hardware)
    name = "+".join(op.label for op in ops)
    tiling = f"{kernel.tiles} tiles of {kernel.tiling}"
    return KernelRun(name, tiling, kernel.program, kernel.result)


@lru_cache(maxsize=1024)
def unfused_baseline(workload: Workload, hardware: HardwareConfig) -> UnfusedBaseline:
    """Both unfused variants of `workload` on `hardware`; cached per distinct workload, since
    a network repeats its layers and each costs a lowering and a few simulations."""
    ops = workload.epilogue
    chain = (elementwise_kernel(workload, ops, hardware),) if ops else ()
    if len(ops) == 1:
        per_op = chain
    else:
        per_op = tuple(elementwise_kernel(workload, (op,), hardware) for op in ops)
    return UnfusedBaseline(workload, conv_kernel(workload, hardware), chain, per_op)
