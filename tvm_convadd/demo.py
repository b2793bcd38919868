"""`tvm-convadd demo`: every step on one ResNet bottleneck, printed for a person to read."""

from __future__ import annotations

import numpy as np
import tvm

from tvm_convadd.errors import TileConfigError
from tvm_convadd.partition import (
    PartitionConvAdd,
    describe,
    explain,
    format_explanation,
    fused_functions,
    prepare,
)
from tvm_convadd.reference import convadd_reference, random_inputs
from tvm_convadd.schedules.convadd import schedule_convadd
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.target.hardware import load_config
from tvm_convadd.target.lower import lower_tir, lower_to_program
from tvm_convadd.target.simulator import simulate


def _section(title: str) -> None:
    print(f"\n{'=' * 8} {title} {'=' * max(0, 70 - len(title))}")


def _slot_buffers(lowered: tvm.IRModule) -> list[str]:
    """The allocations InjectSoftwarePipeline versioned: shape (2, ...) = ping and pong."""
    return [
        line.strip()
        for line in lowered.script().splitlines()
        if "alloc_buffer((2," in line.replace(" ", "")
    ]


def run_demo(n_tiles: int = 4, pipeline: str = "software") -> int:
    from tvm_convadd.networks import bottleneck_block

    mod, params = bottleneck_block()
    prepared = prepare(mod, params)
    partitioned = PartitionConvAdd()(prepared)
    symbol = next(iter(fused_functions(partitioned)))
    func = next(f for _, f in partitioned.functions.items() if f.attrs and "Codegen" in f.attrs)
    workload = describe(func).workload
    rows = workload.out_height  # checked before anything is printed
    if isinstance(n_tiles, bool) or not isinstance(n_tiles, int) or not 1 <= n_tiles <= rows:
        raise TileConfigError(
            f"tile count {n_tiles!r}: the demo block's output has {rows} rows to tile along "
            f"height; use --tiles 1 to {rows}"
        )
    config = TileConfig(n_tiles, "height", pipeline)

    _section("1. which conv2d fuse with the add after them")
    print(format_explanation(explain(prepared)))
    _section(f"2. the fused function {symbol} (offloaded to codegen 'convadd')")
    print(func.script())
    print(f"workload: {workload}")

    sch = schedule_convadd(workload, config)
    _section(f"3. the scheduled TensorIR: {config}")
    print(sch.mod.script())
    _section("4. the ping/pong buffers")
    slots = _slot_buffers(lower_tir(sch.mod))
    if slots:
        print("InjectSoftwarePipeline versioned these allocations into two slots:")
        print("\n".join(slots))
    elif pipeline == "vthread":
        print("each of the two virtual threads owns a copy (InjectVirtualThread) of the buffers")
        print("allocated under the vthread.x loop; on the accelerator these are slots 0 and 1:")
    else:
        print("pipeline 'none': one slot per buffer, so each tile waits for the previous one")
    hardware = load_config("default")
    program = lower_to_program(workload, config, hardware)
    for name, decl in program.buffers.items():
        print(f"  {name:<5} slots={decl.slots} slot shape={list(decl.shape)}")

    _section("5. numeric check: TVM llvm build of the schedule vs numpy")
    inputs = random_inputs(workload)
    expected = convadd_reference(workload, inputs)
    lib = tvm.compile(sch.mod, target="llvm")
    out = tvm.runtime.tensor(np.zeros(workload.out_shape, "float32"))
    lib(*[tvm.runtime.tensor(x) for x in inputs], out)
    llvm_error = float(np.abs(out.numpy() - expected).max())
    print(f"max |llvm - numpy| = {llvm_error:.3g}")

    _section(f"6. the instruction streams ({program.num_instructions} instructions)")
    print(program.listing())
    result = simulate(program, hardware, dict(zip(workload.input_names, inputs)))
    sim_error = float(np.abs(result.outputs["output"] - expected).max())
    serial = simulate(
        lower_to_program(workload, TileConfig(config.n_tiles, config.axis, "none"), hardware),
        hardware,
        functional=False,
    )
    _section(f"7. simulated on {hardware.name}")
    print(f"max |simulator - numpy| = {sim_error:.3g}")
    print(f"serial (A + B): {serial.total_cycles} cycles; pipelined: {result.total_cycles} cycles")
    for unit, stats in result.units.items():
        print(
            f"  {unit:<6} busy {stats.busy_cycles:>9} cycles  utilization {stats.utilization:.0%}"
        )
    ok = llvm_error < 1e-3 and sim_error < 1e-3
    print("\nOK" if ok else "\nMISMATCH")
    return 0 if ok else 1
