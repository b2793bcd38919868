"""The unfused baseline: the elementwise kernel and the conv kernel against numpy written here,
the pipeline's overlap, the tiling search, and the baseline against its bound and the fused run.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tvm_convadd.errors import BufferOverflowError, HazardError, ProgramError
from tvm_convadd.heuristic import default_config
from tvm_convadd.schedules.workload import Workload, parse_epilogue
from tvm_convadd.target.elementwise import (
    ElementwiseTiling,
    candidate_tilings,
    elementwise_program,
    fastest_elementwise,
    tile_regions,
)
from tvm_convadd.target.hardware import HardwareConfig, list_configs, load_config
from tvm_convadd.target.isa import UNITS, Program
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.simulator import overflowing, simulate
from tvm_convadd.unfused import unfused_baseline

HARDWARE = load_config("default")
RNG = np.random.default_rng(7)


def reference(x: np.ndarray, chain: str, operands: dict[str, np.ndarray]) -> np.ndarray:
    """The chain by hand, in float64: each label's meaning spelled out."""
    value = x.astype(np.float64)
    seen: dict[str, int] = {}
    for label in chain.split("+"):
        if label in ("residual", "bias", "scale"):
            seen[label] = seen.get(label, 0) + 1
            name = label if seen[label] == 1 else f"{label}_{seen[label]}"
            operand = operands[name].astype(np.float64)
            value = value * operand if label == "scale" else value + operand
        elif label == "relu":
            value = np.where(value > 0, value, 0.0)
        elif label.startswith("max"):
            value = np.where(value > float(label[3:]), value, float(label[3:]))
        elif label.startswith("min"):
            value = np.where(value < float(label[3:]), value, float(label[3:]))
    return value


def random_operands(program: Program) -> dict[str, np.ndarray]:
    return {
        name: RNG.standard_normal(shape).astype("float32")
        for name, shape in program.tensors.items()
        if name != "output"
    }


CHAINS = [
    "residual",  # add tensor
    "bias",  # add channel
    "scale",  # mul channel
    "max0.25",  # max const
    "relu",
    "scale+bias+residual+relu+min6",
    "residual+residual+bias",  # two operands of one kind: residual, residual_2
]
TILINGS = [  # on (2, 5, 7, 3): channel tiles 2, 2, 1 and row tiles 3, 3, 1 are ragged
    ElementwiseTiling(2, 7),
    ElementwiseTiling(1, 3),
    ElementwiseTiling(5, 7),
]


@pytest.mark.parametrize("vectors_once", [True, False], ids=["vectors-once", "vectors-per-tile"])
@pytest.mark.parametrize("tiling", TILINGS, ids=str)
@pytest.mark.parametrize("chain", CHAINS)
def test_elementwise_kernel_matches_numpy(chain, tiling, vectors_once):
    shape = (2, 5, 7, 3)
    program = elementwise_program(shape, parse_epilogue(chain), tiling, vectors_once)
    tensors = random_operands(program)
    result = simulate(program, HARDWARE, tensors)  # the hazard checker runs on every access
    expected = reference(tensors.pop("x"), chain, tensors).astype("float32")
    np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-6, atol=1e-6)
    assert result.leftover_tokens == {}


def test_the_kernel_listing(golden):
    """Three tiles in two slots: tile 2 reuses slot 0 once ADD 0 has read it (the loads wait
    for the Add unit) and STORE 0 has drained it (ADD 2 waits for the store); the bias loads
    once, ahead of the first residual, whose token covers it."""
    program = elementwise_program((1, 6, 2, 2), parse_epilogue("bias+residual+relu"),
                                  ElementwiseTiling(2, 2))  # fmt: skip
    golden("elementwise_bias_residual_relu.txt", program.listing() + "\n")


def test_tiles_cover_the_output_once():
    shape = (2, 5, 7, 3)
    covered = np.zeros(shape, dtype=int)
    for region in tile_regions(shape, ElementwiseTiling(1, 3)):
        covered[tuple(slice(start, start + extent) for start, extent in region)] += 1
    assert (covered == 1).all()


def test_elementwise_kernel_pipelines_and_needs_its_tokens():
    """LOAD, ADD and STORE of different tiles overlap, so the run beats the serial sum of its
    instructions; without its tokens the hazard checker refuses the same program."""
    shape = (1, 16, 8, 8)
    ops = parse_epilogue("bias+residual+relu")
    program = elementwise_program(shape, ops, ElementwiseTiling(2, 8))
    operand_queue = "vload" if "vload" in UNITS else "load"
    assert {inst.src.tensor for inst in program.streams["load"]} >= {"x"}
    assert {inst.src.tensor for inst in program.streams[operand_queue]} >= {"residual", "bias"}
    result = simulate(program, HARDWARE, functional=False)
    serial = sum(stats.busy_cycles for stats in result.units.values())
    assert result.total_cycles < serial
    adds = [e for e in result.events if e.opcode == "ADD"]
    transfers = [e for e in result.events if e.opcode in ("LOAD", "STORE")]
    assert any(t.start < a.end and a.start < t.end for a in adds for t in transfers)
    assert result.total_cycles >= result.bound_cycles
    untokened = Program(
        {
            unit: tuple(replace(inst, wait=(), signal=()) for inst in stream)
            for unit, stream in program.streams.items()
        },
        program.buffers,
        program.tensors,
    )
    with pytest.raises(HazardError):
        simulate(untokened, HARDWARE, functional=False)


def test_the_fastest_tiling_is_no_slower_than_any_fitting_candidate():
    shape, ops = (1, 64, 28, 28), parse_epilogue("bias+residual+relu")
    kernel = fastest_elementwise(shape, ops, HARDWARE)
    candidates = candidate_tilings(shape)
    assert len(candidates) > 2 and kernel.tiling in candidates
    for tiling in candidates:
        program = elementwise_program(shape, ops, tiling)
        if not overflowing(program, HARDWARE):
            assert kernel.cycles <= simulate(program, HARDWARE, functional=False).total_cycles


def test_the_tiling_search_skips_tilings_that_do_not_fit():
    """A 64 KiB buffer per pool: whole-tensor tiles of 128 KiB do not fit, smaller ones do."""
    small = _with_buffers(HARDWARE, 64 * 1024)
    shape, ops = (1, 32, 32, 32), parse_epilogue("residual")
    kernel = fastest_elementwise(shape, ops, small)
    assert not overflowing(kernel.program, small)
    assert kernel.tiles > 1


def test_no_fitting_tiling_is_a_one_line_error():
    tiny = _with_buffers(HARDWARE, 64)
    with pytest.raises(BufferOverflowError, match=r"no elementwise tiling of .* fits") as err:
        fastest_elementwise((1, 4, 4, 64), parse_epilogue("relu"), tiny)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("shape", "tiling", "message"),
    [
        ((1, 4, 4), ElementwiseTiling(1, 1), "give an NCHW shape"),
        ((1, 4, 4, 4), ElementwiseTiling(5, 4), "use 1..4 channels"),
        ((1, 4, 4, 4), ElementwiseTiling(2, 2), "a tile of part of the rows has 1 channel"),
    ],
)
def test_bad_elementwise_input_is_a_one_line_error(shape, tiling, message):
    with pytest.raises(ProgramError, match=message) as err:
        elementwise_program(shape, parse_epilogue("relu"), tiling)
    assert "\n" not in str(err.value)


def _with_buffers(hardware: HardwareConfig, nbytes: int) -> HardwareConfig:
    data = hardware.to_dict()
    data["name"] = f"{hardware.name}-{nbytes}B"
    data["buffer_bytes"] = dict.fromkeys(data["buffer_bytes"], nbytes)
    return HardwareConfig.from_dict(data)


def conv_reference(data, weight, stride, padding, groups) -> np.ndarray:
    """Direct grouped NCHW conv, written out with numpy loops over the kernel taps."""
    top, left, bottom, right = padding
    padded = np.pad(data.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_channels, group_channels, kernel_h, kernel_w = weight.shape
    out_h = (padded.shape[2] - kernel_h) // stride[0] + 1
    out_w = (padded.shape[3] - kernel_w) // stride[1] + 1
    per_group = out_channels // groups
    out = np.zeros((data.shape[0], out_channels, out_h, out_w))
    for k in range(out_channels):
        first = (k // per_group) * group_channels
        for r in range(kernel_h):
            for s in range(kernel_w):
                window = padded[
                    :,
                    first : first + group_channels,
                    r : r + stride[0] * out_h : stride[0],
                    s : s + stride[1] * out_w : stride[1],
                ]
                out[:, k] += np.tensordot(window, weight[k, :, r, s], axes=([1], [0]))
    return out


SMALL = Workload(
    1, 8, 10, 10, 8, 3, 3, padding=(1, 1, 1, 1), epilogue=parse_epilogue("bias+residual+relu")
)
STRIDED_GROUPED = Workload(
    1, 8, 9, 9, 16, 3, 3, stride=(2, 2), padding=(1, 1, 1, 1), groups=2,
    epilogue=parse_epilogue("scale+bias+relu+min6"),
)  # fmt: skip


@pytest.mark.parametrize("workload", [SMALL, STRIDED_GROUPED], ids=str)
def test_the_unfused_kernels_compute_conv_then_the_chain(workload):
    """The conv kernel alone equals numpy's conv; its output through the chain kernel, and
    through the per-op kernels one after another, equals numpy's conv + epilogue."""
    baseline = unfused_baseline(workload, HARDWARE)
    data = RNG.standard_normal(workload.data_shape).astype("float32")
    weight = RNG.standard_normal(workload.weight_shape).astype("float32")
    conv = simulate(baseline.conv.program, HARDWARE, {"data": data, "weight": weight})
    conv_out = conv.outputs["output"]
    expected_conv = conv_reference(data, weight, workload.stride, workload.padding, workload.groups)
    np.testing.assert_allclose(conv_out, expected_conv, rtol=1e-4, atol=1e-4)
    operands = {
        name: RNG.standard_normal(shape).astype("float32")
        for name, shape in workload.operand_shapes.items()
    }
    expected = reference(expected_conv, workload.epilogue_label, operands)
    (chain,) = baseline.chain
    chained = simulate(chain.program, HARDWARE, {"x": conv_out, **operands}).outputs["output"]
    np.testing.assert_allclose(chained, expected, rtol=1e-4, atol=1e-4)
    value = conv_out
    for kernel in baseline.per_op:
        inputs = {name: operands[name] for name in kernel.program.tensors if name in operands}
        value = simulate(kernel.program, HARDWARE, {"x": value, **inputs}).outputs["output"]
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
    assert [kernel.name for kernel in baseline.per_op] == workload.epilogue_label.split("+")


def test_the_baseline_is_no_faster_than_its_bound_and_per_op_costs_more():
    baseline = unfused_baseline(SMALL, HARDWARE)
    kernels = (baseline.conv, *baseline.chain)
    assert baseline.chain_cycles == sum(kernel.cycles for kernel in kernels)
    assert baseline.chain_cycles >= baseline.chain_bound_cycles
    assert baseline.per_op_cycles >= baseline.per_op_bound_cycles
    assert all(kernel.cycles >= kernel.bound_cycles for kernel in (*kernels, *baseline.per_op))
    # three passes over the tensor through DRAM instead of one
    assert baseline.per_op_cycles > baseline.chain_cycles
    # and no faster than the layer's bound: the same conv and epilogue work, more DMA
    fused = simulate(
        lower_to_program(SMALL, default_config(SMALL, HARDWARE)), HARDWARE, None, False
    )
    assert baseline.chain_cycles >= fused.bound_cycles


def test_fused_beats_unfused_on_a_residual_layer():
    workload = Workload(
        1, 16, 16, 16, 16, 3, 3, padding=(1, 1, 1, 1), epilogue=parse_epilogue("bias+residual+relu")
    )
    fused_program = lower_to_program(workload, default_config(workload, HARDWARE), HARDWARE)
    fused = simulate(fused_program, HARDWARE, functional=False)
    baseline = unfused_baseline(workload, HARDWARE)
    assert fused.total_cycles < baseline.chain_cycles < baseline.per_op_cycles


@pytest.mark.parametrize("config", list_configs())
def test_fused_beats_unfused_on_every_shipped_machine(config):
    """The residual layer on every config: fused < unfused (chain) <= per-op, each variant no
    faster than its kernels' bounds."""
    hardware = load_config(config)
    workload = Workload(
        1, 16, 16, 16, 16, 3, 3, padding=(1, 1, 1, 1), epilogue=parse_epilogue("bias+residual+relu")
    )
    fused = simulate(lower_to_program(workload, default_config(workload, hardware), hardware),
                     hardware, functional=False)  # fmt: skip
    baseline = unfused_baseline(workload, hardware)
    assert fused.total_cycles < baseline.chain_cycles <= baseline.per_op_cycles
    assert baseline.chain_cycles >= baseline.chain_bound_cycles
    assert baseline.per_op_cycles >= baseline.per_op_bound_cycles


def test_on_the_ideal_machine_unfused_is_the_laws_a_plus_b_and_a_copy():
    """DMA free: the chain baseline is the fused layer's A + B (the seed's serial figure) plus
    the conv kernel's acc-to-out copy on the Add unit, and per-op costs the same (one ALU pass
    per op either way)."""
    hardware = load_config("ideal")
    workload = Workload(1, 16, 16, 16, 16, 1, 1, epilogue=parse_epilogue("bias+residual+relu"))
    config = default_config(workload, hardware)
    fused = simulate(lower_to_program(workload, config, hardware), hardware, functional=False)
    a, b = fused.units["conv"].busy_cycles, fused.units["add"].busy_cycles
    baseline = unfused_baseline(workload, hardware)
    copy = baseline.conv.result.units["add"].busy_cycles
    elements = 16 * 16 * 16
    assert copy == elements // hardware.add_lanes  # one pass, no ops
    assert baseline.chain_cycles == baseline.per_op_cycles
    assert baseline.chain_cycles >= a + b
    assert baseline.chain_cycles <= a + b + copy


def test_the_conv_kernel_is_no_slower_than_the_heuristics_pick():
    """It gets its best: the fastest of the analytic top configs, the heuristic's among them."""
    bare = Workload(1, 16, 16, 16, 32, 3, 3, padding=(1, 1, 1, 1), epilogue=())
    program = lower_to_program(bare, default_config(bare, HARDWARE), HARDWARE)
    heuristic = simulate(program, HARDWARE, functional=False).total_cycles
    residual = Workload(1, 16, 16, 16, 32, 3, 3, padding=(1, 1, 1, 1))
    assert unfused_baseline(residual, HARDWARE).conv.cycles <= heuristic


def test_a_bare_conv_has_no_elementwise_kernel():
    bare = Workload(1, 8, 8, 8, 8, 1, 1, epilogue=())
    baseline = unfused_baseline(bare, HARDWARE)
    assert (baseline.chain, baseline.per_op) == ((), ())
    assert baseline.chain_cycles == baseline.per_op_cycles == baseline.conv.cycles


def test_the_baseline_is_cached_per_workload():
    assert unfused_baseline(SMALL, HARDWARE) is unfused_baseline(SMALL, HARDWARE)
