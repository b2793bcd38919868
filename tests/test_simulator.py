"""The simulator: numpy semantics, exact A + B/N timing, deadlocks, hazards, overflow."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.handmade_programs import (
    ConvAddShape,
    random_tensors,
    reference_convadd,
    tiled_convadd_program,
    with_instruction,
)
from tvm_convadd.errors import (
    BufferOverflowError,
    DeadlockError,
    HardwareConfigError,
    HazardError,
    ProgramError,
)
from tvm_convadd.target.hardware import HardwareConfig, load_config
from tvm_convadd.target.isa import (
    DMA_UNITS,
    UNITS,
    Add,
    AluOp,
    BufferDecl,
    Conv,
    Dram,
    Load,
    Program,
    Slot,
    Store,
)
from tvm_convadd.target.simulator import SimResult, overflowing, simulate

SHAPES = [
    ConvAddShape(batch=1, in_channels=3, height=9, width=7, out_channels=5, kernel=3),
    ConvAddShape(batch=2, in_channels=4, height=8, width=8, out_channels=3, kernel=3, stride=2),
    ConvAddShape(in_channels=6, height=7, width=5, out_channels=4, kernel=1, padding=0),
    ConvAddShape(in_channels=2, height=10, width=6, out_channels=2, kernel=1, stride=2, padding=0),
    ConvAddShape(in_channels=3, height=6, width=6, out_channels=4, kernel=3, padding=0, bias=False),
    ConvAddShape(in_channels=3, height=11, width=9, out_channels=8, stride=2, relu=True),
    ConvAddShape(in_channels=6, height=7, width=6, out_channels=4, groups=2, scale=True, clip=1.0),
    ConvAddShape(in_channels=5, height=8, width=5, out_channels=5, groups=5, residual=False),
    ConvAddShape(in_channels=3, height=6, width=6, out_channels=6, groups=3, stride=2, relu=True),
]
# 16x16 output, 16 -> 16 channels, 3x3, + bias + residual: A = 2304 and B = 16 passes x 2 ops
# x 16 = 512 cycles on `ideal`, both divisible by every N in {1, 2, 4, 8} and B < A.
EXACT = ConvAddShape()


@pytest.fixture(scope="module")
def ideal() -> HardwareConfig:
    return load_config("ideal")


@pytest.fixture(scope="module")
def default() -> HardwareConfig:
    return load_config("default")


def _check_output(shape: ConvAddShape, program: Program, hardware: HardwareConfig, seed=0):
    tensors = random_tensors(shape, seed)
    result = simulate(program, hardware, tensors)
    expected = reference_convadd(shape, tensors)
    np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)
    for name, array in tensors.items():  # inputs are untouched, also the caller's arrays
        np.testing.assert_array_equal(result.outputs[name], array)
    return result


@pytest.mark.parametrize("slots", [1, 2])
@pytest.mark.parametrize("tiles", [1, 2, 3])
@pytest.mark.parametrize(
    "shape", SHAPES, ids=lambda s: f"k{s.kernel}s{s.stride}p{s.padding}g{s.groups}"
)
def test_functional_output_matches_numpy(shape, tiles, slots, default):
    _check_output(shape, tiled_convadd_program(shape, tiles, slots), default)


@pytest.mark.parametrize("tiles", [1, 2, 4, 8])
def test_ping_pong_on_ideal_takes_exactly_a_plus_b_over_n(tiles, ideal):
    conv_total = EXACT.macs // ideal.macs_per_cycle
    add_total = EXACT.out_elements // ideal.add_lanes * 2  # two ALU ops: + bias, + residual
    assert (conv_total, add_total) == (2304, 512)
    pipelined = simulate(tiled_convadd_program(EXACT, tiles, slots=2), ideal, functional=False)
    assert pipelined.total_cycles == conv_total + add_total // tiles
    serial = simulate(tiled_convadd_program(EXACT, tiles, slots=1), ideal, functional=False)
    assert serial.total_cycles == conv_total + add_total
    for result in (pipelined, serial):
        assert result.units["conv"].busy_cycles == conv_total
        assert result.units["add"].busy_cycles == add_total
        assert result.units["load"].busy_cycles == result.units["store"].busy_cycles == 0


def test_timing_only_matches_functional(default):
    shape = SHAPES[1]
    program = tiled_convadd_program(shape, tiles=3)
    functional = simulate(program, default, random_tensors(shape))
    timing = simulate(program, default, functional=False)
    assert timing.outputs is None
    assert timing.total_cycles == functional.total_cycles
    assert timing.events == functional.events
    assert timing.units == functional.units


@pytest.mark.parametrize("slots", [1, 2])
def test_busy_cycles_events_and_utilization_add_up(slots, default):
    program = tiled_convadd_program(SHAPES[0], tiles=3, slots=slots)
    result = simulate(program, default, functional=False)
    assert isinstance(result, SimResult) and result.hardware == "default"
    assert len(result.events) == program.num_instructions
    assert result.total_cycles == max(event.end for event in result.events)
    assert result.leftover_tokens == {}
    for unit in UNITS:
        stream = program.streams[unit]
        events = [e for e in result.events if e.unit == unit]
        stats = result.units[unit]
        assert [e.index for e in events] == list(range(len(stream)))
        assert [e.opcode for e in events] == [inst.opcode for inst in stream]
        costs = [default.instruction_cycles(inst, program) for inst in stream]
        durations = [e.end - e.start for e in events]
        if unit in DMA_UNITS:  # a transfer may wait for the shared DRAM channel
            assert all(d >= c for d, c in zip(durations, costs))
        else:
            assert durations == costs
        assert stats.busy_cycles == sum(costs)
        assert stats.instructions == len(stream)
        assert stats.utilization == pytest.approx(sum(costs) / result.total_cycles)
        assert all(a.end <= b.start for a, b in itertools.pairwise(events))  # in order, no overlap
    assert "cycles on default" in result.summary()


def test_pipelining_pays_on_the_default_machine(default):
    shape = ConvAddShape(in_channels=32, out_channels=64, height=32, width=32)
    serial = simulate(tiled_convadd_program(shape, 8, slots=1), default, functional=False)
    pipelined = simulate(tiled_convadd_program(shape, 8, slots=2), default, functional=False)
    assert pipelined.total_cycles < serial.total_cycles


def test_json_round_trip_simulates_identically(default):
    program = tiled_convadd_program(SHAPES[5], tiles=4)
    again = Program.from_json(program.to_json())
    assert simulate(again, default, functional=False) == simulate(
        program, default, functional=False
    )


def test_missing_signal_deadlocks_and_names_the_blocked_units(ideal):
    program = tiled_convadd_program(EXACT, tiles=4)
    broken = with_instruction(program, "conv", 1, signal=("load",))  # drops conv -> add
    with pytest.raises(DeadlockError) as info:
        simulate(broken, ideal, functional=False)
    message = str(info.value)
    assert "add#3 ADD acc=acc[1]" in message and "queue conv->add" in message
    assert "store#3 STORE" in message and "queue add->store" in message
    assert "load: finished" in message and "conv: finished" in message


def test_swapped_ping_pong_slot_is_a_hazard(ideal):
    program = tiled_convadd_program(EXACT, tiles=4)
    add = program.streams["add"][1]
    swapped = Slot("acc", 0, add.acc.region)
    broken = with_instruction(program, "add", 1, acc=swapped)
    with pytest.raises(HazardError, match=r"acc\[0\] by .*(ADD add#1|CONV conv#2)"):
        simulate(broken, ideal, functional=False)
    first = with_instruction(program, "add", 0, acc=Slot("acc", 1, add.acc.region))
    with pytest.raises(HazardError, match=r"acc\[1\]"):
        simulate(first, ideal, tensors=random_tensors(EXACT))


def test_removed_wait_is_a_hazard(ideal):
    program = tiled_convadd_program(EXACT, tiles=4)
    broken = with_instruction(program, "add", 2, wait=("vload", "store"))  # no wait on conv
    with pytest.raises(HazardError, match=r"acc\[0\].*(ADD add#2|CONV conv#2)") as info:
        simulate(broken, ideal, functional=False)
    assert "wait" in str(info.value)
    war = with_instruction(program, "conv", 2, wait=("load",))  # reuses acc[0] unasked
    with pytest.raises(HazardError, match=r"write of acc\[0\] by CONV conv#2 while ADD add#0"):
        simulate(war, ideal, functional=False)


def test_read_of_a_never_written_slot_is_a_hazard(ideal):
    program = tiled_convadd_program(EXACT, tiles=2)
    vload, add = program.streams["vload"], program.streams["add"]
    assert vload[0].dst.buffer == "bias" and add[0].wait == ("conv", "vload", "vload")
    first = dataclasses.replace(add[0], wait=("conv", "vload"))  # waits for the residual only
    streams = {**program.streams, "vload": vload[1:], "add": (first, *add[1:])}
    broken = Program(streams, program.buffers, program.tensors)
    with pytest.raises(HazardError, match=r"read of bias\[0\] by ADD add#0 before anything"):
        simulate(broken, ideal, functional=False)


def _rows(region, start, extent):
    """`region` with its height dimension (NCHW's H) replaced."""
    return (*region[:2], (start, extent), region[3])


@pytest.mark.parametrize("functional", [False, True])
def test_a_load_that_fills_half_of_what_is_read_is_a_hazard(functional, ideal):
    program = tiled_convadd_program(EXACT, tiles=2)
    tensors = random_tensors(EXACT) if functional else None
    res = program.streams["vload"][1]
    assert res.dst == Slot("res", 0, ((0, 1), (0, 16), (0, 8), (0, 16)))
    half = with_instruction(
        program,
        "vload",
        1,
        dst=Slot("res", 0, _rows(res.dst.region, 0, 4)),
        src=Dram("residual", _rows(res.src.region, 0, 4)),
    )
    with pytest.raises(
        HazardError,
        match=r"read of res\[0\]\[0:1, 0:16, 0:8, 0:16\] by ADD add#0: its part "
        r"res\[0\]\[0:1, 0:16, 4:8, 0:16\] was never written",
    ):
        simulate(half, ideal, tensors, functional=functional)
    inp = program.streams["load"][1]
    window = Dram("data", ((0, 1), (0, 16), (-1, 5), (-1, 18)))  # the top half of 10 rows
    short = Load.padded(Slot("inp", 0, _rows(inp.dst.region, 0, 5)), window, (1, 16, 16, 16))
    broken = with_instruction(program, "load", 1, dst=short.dst, src=short.src, pad=short.pad)
    with pytest.raises(
        HazardError, match=r"by CONV conv#0: its part inp\[0\]\[0:1, 0:16, 5:10, 0:18\]"
    ):
        simulate(broken, ideal, tensors, functional=functional)


def _split_residual_load(program: Program, pieces) -> Program:
    """Load tile 0's residual in several pieces, (rows, cols) each; the last one signals."""
    load = list(program.streams["vload"])
    whole = load[1]
    parts = [
        Load(
            dst=Slot("res", 0, (*whole.dst.region[:2], rows, cols)),
            src=Dram("residual", (*whole.src.region[:2], rows, cols)),
            signal=whole.signal if index == len(pieces) - 1 else (),
        )
        for index, (rows, cols) in enumerate(pieces)
    ]
    load[1:2] = parts
    return Program({**program.streams, "vload": tuple(load)}, program.buffers, program.tensors)


def test_a_read_covered_by_several_writes_together_is_no_hazard(ideal):
    program = tiled_convadd_program(EXACT, tiles=2)
    pieces = [((0, 8), (0, 8)), ((0, 3), (8, 8)), ((3, 5), (8, 8))]
    result = _check_output(EXACT, _split_residual_load(program, pieces), ideal)
    assert result.units["vload"].instructions == len(program.streams["vload"]) + 2
    holed = _split_residual_load(program, [((0, 8), (0, 8)), ((0, 3), (8, 8)), ((4, 4), (8, 8))])
    with pytest.raises(HazardError, match=r"its part res\[0\]\[0:1, 0:16, 3:4, 8:16\] was never"):
        simulate(holed, ideal, functional=False)


def test_every_overlapping_write_must_happen_before_the_read(ideal):
    """The ADD's residual region is covered by one LOAD it waits for, but a CONV later writes
    part of it without a token to the ADD: a race, though a covering write exists."""
    program = tiled_convadd_program(EXACT, tiles=2)
    load = list(program.streams["vload"])
    load[1] = dataclasses.replace(load[1], signal=("add", "conv"))  # orders the CONV after it
    conv = program.streams["conv"]
    inp = Slot("inp", 0, _rows(conv[0].inp.region, 0, 6))
    stray = Conv(
        inp=inp,
        wgt=conv[0].wgt,
        acc=Slot("res", 0, _rows(conv[0].acc.region, 0, 4)),
        wait=("vload",),
    )
    streams = {**program.streams, "vload": tuple(load), "conv": (conv[0], stray, *conv[1:])}
    racing = Program(streams, program.buffers, program.tensors)
    with pytest.raises(
        HazardError, match=r"read of res\[0\] by ADD add#0 before CONV conv#1 signalled it"
    ):
        simulate(racing, ideal, functional=False)


def test_distinct_regions_of_one_slot_do_not_conflict(ideal):
    """Two tiles in disjoint halves of a single-slot accumulator: no tokens needed between them."""
    program = tiled_convadd_program(EXACT, tiles=1)
    conv, add = program.streams["conv"][0], program.streams["add"][0]
    assert conv.acc.region[2] == (0, 16)
    # Writing the lower half while the add reads the upper half would be fine, so a CONV
    # limited to rows 8.. after the ADD (no token from it) races only with overlapping reads.
    late = dataclasses.replace(
        conv,
        inp=Slot("inp", 0, (*conv.inp.region[:2], (8, 10), conv.inp.region[3])),
        acc=Slot("acc", 0, (*conv.acc.region[:2], (8, 8), conv.acc.region[3])),
        wait=(),
        signal=(),
    )
    streams = {**program.streams, "conv": (conv, late)}
    racing = Program(streams, program.buffers, program.tensors)
    with pytest.raises(
        HazardError, match=r"acc\[0\] by (CONV conv#1 while ADD add#0|ADD add#0 be)"
    ):
        simulate(racing, ideal, functional=False)
    bias, residual = add.ops
    top = (*add.acc.region[:2], (0, 8), add.acc.region[3])
    add_top = dataclasses.replace(
        add,
        acc=Slot("acc", 0, top),
        out=Slot("out", 0, top),
        ops=(bias, dataclasses.replace(residual, src=Slot("res", 0, top))),
    )
    store = program.streams["store"][0]
    store_top = dataclasses.replace(
        store,
        src=add_top.out,
        dst=dataclasses.replace(store.dst, region=(*store.dst.region[:2], (0, 8), (0, 16))),
    )
    streams = {**program.streams, "conv": (conv, late), "add": (add_top,), "store": (store_top,)}
    disjoint = simulate(Program(streams, program.buffers, program.tensors), ideal, functional=False)
    assert disjoint.units["conv"].instructions == 2


def _with_pools(hardware: HardwareConfig, **pools: int) -> HardwareConfig:
    return HardwareConfig.from_dict(
        {**hardware.to_dict(), "buffer_bytes": {**hardware.buffer_bytes, **pools}}
    )


def test_overflow_names_buffer_and_bytes(default):
    program = tiled_convadd_program(EXACT, tiles=2)
    need = 2 * 4 * 16 * 8 * 16
    tiny = _with_pools(default, acc=need - 1)
    with pytest.raises(
        BufferOverflowError,
        match=rf"buffer pool 'acc' needs {need} bytes \(acc 2 slot\(s\) of \[1, 16, 8, 16\] "
        rf"float32\) but default has {need - 1}: use more",
    ):
        simulate(program, tiny, functional=False)
    fits = HardwareConfig.from_dict(
        {**default.to_dict(), "buffer_bytes": {**default.buffer_bytes, "acc": need}}
    )
    assert simulate(program, fits, functional=False).total_cycles > 0
    assert overflowing(program, tiny) == {"acc": (need, need - 1)}
    assert overflowing(program, fits) == {}


def _two_operand_program(vectors: tuple[str, ...], tensors: tuple[str, ...]) -> Program:
    """Declares per-channel buffers `vectors` (1 x 64 x 1 x 1, one slot: 256 B each) and
    output-shaped buffers `tensors` (1 x 8 x 4 x 4, two slots: 1024 B each): pools only."""
    buffers = {name: BufferDecl((1, 64, 1, 1), 1) for name in vectors}
    buffers |= {name: BufferDecl((1, 8, 4, 4), 2) for name in tensors}
    return Program({}, buffers, {})


@pytest.mark.parametrize(
    ("vectors", "tensors", "pools", "over"),
    [
        # bias and scale share the vector memory: 256 + 256 = 512 B
        (("bias", "scale"), (), {"bias": 512}, {}),
        (("bias", "scale"), (), {"bias": 511}, {"bias (bias + scale)": (512, 511)}),
        (("scale",), (), {"bias": 255}, {"bias (scale)": (256, 255)}),
        (
            ("bias", "bias_2", "scale"),
            (),
            {"bias": 767},
            {"bias (bias + bias_2 + scale)": (768, 767)},
        ),
        # the residuals share the residual memory: 1024 + 1024 = 2048 B
        ((), ("res", "res_2"), {"res": 2048}, {}),
        ((), ("res", "res_2"), {"res": 2047}, {"res (res + res_2)": (2048, 2047)}),
        ((), ("res",), {"res": 1023}, {"res": (1024, 1023)}),
        # two pools over at once, each with its own bytes
        (
            ("scale", "scale_2"),
            ("res", "res_2", "res_3"),
            {"bias": 500, "res": 3000},
            {"bias (scale + scale_2)": (512, 500), "res (res + res_2 + res_3)": (3072, 3000)},
        ),
    ],
)
def test_epilogue_buffers_fit_their_pool_together(vectors, tensors, pools, over, default):
    program = _two_operand_program(vectors, tensors)
    hardware = _with_pools(default, **pools)
    assert overflowing(program, hardware) == over
    if over:
        pool = next(iter(over)).split(" ")[0]
        with pytest.raises(BufferOverflowError, match=rf"buffer pool '{pool}' needs"):
            simulate(program, hardware, functional=False)
    else:
        assert simulate(program, hardware, functional=False).total_cycles == 0


def test_a_buffer_of_no_pool_is_refused(default):
    for name in ("sram", "res_1", "res_x", "scalex", "bias_"):
        with pytest.raises(HardwareConfigError, match=rf"buffer '{name}' draws from no pool"):
            overflowing(Program({}, {name: BufferDecl((1,), 1)}, {}), default)


def test_malformed_operands_are_refused(default):
    program = tiled_convadd_program(SHAPES[0], tiles=2)
    conv = program.streams["conv"][0]
    (n, c, h, w) = conv.acc.region
    wrong = with_instruction(program, "conv", 0, acc=Slot("acc", 0, (n, c, (0, h[1] - 1), w)))
    with pytest.raises(ProgramError, match=r"conv#0 CONV: acc region .* is not the conv output"):
        simulate(wrong, default, functional=False)
    (k, _, r, s) = conv.wgt.region
    narrow = with_instruction(program, "conv", 0, wgt=Slot("wgt", 0, (k, (0, 2), r, s)))
    with pytest.raises(
        ProgramError,
        match=r"conv#0 CONV: input region has 3 channels, groups 1 x weight region's 2 = 2 "
        r"expected",
    ):
        simulate(narrow, default, functional=False)
    store = program.streams["store"][0]
    short = dataclasses.replace(store.dst, region=(*store.dst.region[:3], (0, 1)))
    with pytest.raises(ProgramError, match=r"store#0 STORE: operand shapes differ"):
        simulate(with_instruction(program, "store", 0, dst=short), default, functional=False)
    add = program.streams["add"][0]
    bias, residual = add.ops
    narrow_bias = AluOp("add", "channel", Slot("bias", 0, ((0, 1), (0, 1), (0, 1), (0, 1))))
    with pytest.raises(
        ProgramError,
        match=r"add#0 ADD.ops\[0\]: add channel src extents \(1, 1, 1, 1\) must be "
        r"\(1, 5, 1, 1\) to broadcast over out \(1, 5, 5, 7\)",
    ):
        simulate(
            with_instruction(program, "add", 0, ops=(narrow_bias, residual)),
            default,
            functional=False,
        )
    (n, c, h, w) = residual.src.region
    short = dataclasses.replace(residual, src=Slot("res", 0, (n, c, (0, 2), w)))
    with pytest.raises(ProgramError, match=r"add#0 ADD: operand shapes differ: .*'ops\[1\].src'"):
        simulate(with_instruction(program, "add", 0, ops=(bias, short)), default, functional=False)


def test_bad_tensors_are_refused(default):
    shape = SHAPES[0]
    program = tiled_convadd_program(shape, tiles=2)
    tensors = random_tensors(shape)
    with pytest.raises(
        ProgramError, match=r"tensor 'data' has shape \[3, 9, 7\], the program expects"
    ):
        simulate(program, default, {**tensors, "data": tensors["data"][0]})
    with pytest.raises(ProgramError, match=r"tensors \['extra'\] are not in the program"):
        simulate(program, default, {**tensors, "extra": tensors["data"]})
    half = HardwareConfig.from_dict({**default.to_dict(), "dtype": "float16"})
    with pytest.raises(ProgramError, match="program computes in float32"):
        simulate(program, half)
    text = {**tensors, "weight": np.full(tensors["weight"].shape, "w")}
    with pytest.raises(ProgramError, match=r"tensor 'weight' holds <U1 values: pass a numeric"):
        simulate(program, default, text)
    with pytest.raises(ProgramError, match=r"tensor 'weight' is not an array \(.*\): pass a"):
        simulate(program, default, {**tensors, "weight": [[1.0], [2.0, 3.0]]})


def test_every_tensor_a_load_reads_must_be_given(default):
    shape = SHAPES[0]
    program = tiled_convadd_program(shape, tiles=2)
    tensors = random_tensors(shape)
    assert "output" not in tensors  # a pure output may be left out: it starts as zeros
    without = {k: v for k, v in tensors.items() if k != "residual"}
    with pytest.raises(
        ProgramError,
        match=r"tensors \['residual'\] are read by the program's LOADs but not given: pass "
        r"every input \['bias', 'data', 'residual', 'weight'\] \(outputs \['output'\] may",
    ):
        simulate(program, default, without)
    with pytest.raises(ProgramError, match=r"tensors \['bias', 'data', 'residual', 'weight'\] are"):
        simulate(program, default)
    with pytest.raises(ProgramError, match=r"tensors \['data'\] are read by the program's LOADs"):
        simulate(program, default, {**tensors, "data": None})
    given = {**tensors, "output": np.ones(shape.output_shape)}  # given outputs are overwritten
    expected = reference_convadd(shape, tensors)
    np.testing.assert_allclose(
        simulate(program, default, given).outputs["output"], expected, rtol=1e-5, atol=1e-5
    )
    assert simulate(program, default, functional=False).outputs is None  # timing needs none


def test_padded_and_zero_fill_loads(ideal):
    """A LOAD writes its pad as zeros around its src; one with an empty src is a zero fill."""
    rows = ((0, 1), (0, 1), (0, 3), (0, 2))
    tensor = np.arange(1, 7, dtype=np.float32).reshape(1, 1, 3, 2)  # rows [1 2], [3 4], [5 6]
    buffers = {"res": BufferDecl((1, 1, 3, 2), 1)}
    tensors = {"residual": (1, 1, 3, 2), "output": (1, 1, 3, 2)}

    def run(window) -> np.ndarray:
        whole = Load(dst=Slot("res", 0, rows), src=Dram("residual", rows))
        shifted = Load.padded(
            Slot("res", 0, rows), Dram("residual", window), (1, 1, 3, 2), signal=("store",)
        )
        store = Store(src=Slot("res", 0, rows), dst=Dram("output", rows), wait=("vload",))
        program = Program({"vload": (whole, shifted), "store": (store,)}, buffers, tensors)
        return simulate(program, ideal, {"residual": tensor}).outputs["output"][0, 0]

    np.testing.assert_array_equal(run(((0, 1), (0, 1), (1, 3), (-1, 2))), [[0, 3], [0, 5], [0, 0]])
    np.testing.assert_array_equal(run(((0, 1), (0, 1), (-2, 3), (0, 2))), [[0, 0], [0, 0], [1, 2]])
    np.testing.assert_array_equal(run(((0, 1), (0, 1), (3, 3), (0, 2))), np.zeros((3, 2)))
    np.testing.assert_array_equal(run(((0, 1), (0, 1), (0, 3), (5, 2))), np.zeros((3, 2)))


def test_load_dst_must_be_src_plus_pad(default):
    program = tiled_convadd_program(SHAPES[0], tiles=2)
    inp = program.streams["load"][1]
    assert inp.pad == ((0, 0), (0, 0), (1, 0), (1, 1))
    with pytest.raises(
        ProgramError,
        match=r"load#1 LOAD: dst extents \(1, 3, 7, 9\) differ from src extents \(1, 3, 6, 7\) "
        r"\(no pad\): make dst = before \+ src \+ after",
    ):
        simulate(with_instruction(program, "load", 1, pad=()), default, functional=False)
    wide = ((0, 0), (0, 0), (1, 0), (2, 1))
    with pytest.raises(ProgramError, match=r"src extents \(1, 3, 6, 7\) plus pad \[0\+0, 0\+0"):
        simulate(with_instruction(program, "load", 1, pad=wide), default, functional=False)


def test_unconsumed_tokens_are_reported(ideal):
    program = tiled_convadd_program(EXACT, tiles=2)
    chatty = with_instruction(program, "store", 1, signal=("add",))
    result = simulate(chatty, ideal, functional=False)
    assert result.leftover_tokens == {"store->add": 1}


def test_empty_program_takes_no_time(ideal):
    result = simulate(Program({}, {}, {}), ideal)
    assert result.total_cycles == 0 and result.events == () and result.outputs == {}


@st.composite
def _cases(draw):
    kernel = draw(st.sampled_from([1, 3]))
    padding = draw(st.integers(0, kernel // 2))
    stride = draw(st.integers(1, 2))
    height = draw(st.integers(max(1, kernel - 2 * padding), 9))
    width = draw(st.integers(max(1, kernel - 2 * padding), 6))
    groups = draw(st.integers(1, 3))
    shape = ConvAddShape(
        batch=draw(st.integers(1, 2)),
        in_channels=groups * draw(st.integers(1, 3)),
        height=height,
        width=width,
        out_channels=groups * draw(st.integers(1, 3)),
        kernel=kernel,
        stride=stride,
        padding=padding,
        bias=draw(st.booleans()),
        relu=draw(st.booleans()),
        groups=groups,
        scale=draw(st.booleans()),
        residual=draw(st.booleans()),
        clip=draw(st.sampled_from([None, 0.5, 2.0])),
    )
    tiles = draw(st.integers(1, shape.out_height))
    return shape, tiles, draw(st.sampled_from([1, 2])), draw(st.integers(0, 2**16))


@settings(max_examples=25, deadline=None)
@given(_cases())
def test_random_shapes_and_tile_counts_match_numpy(case):
    shape, tiles, slots, seed = case
    program = tiled_convadd_program(shape, tiles, slots)
    _check_output(shape, program, load_config("default"), seed)


# -- grouped CONV and the ALU op list, each against an independent reference -----------------


def _single_conv_program(
    batch, groups, cg, ng, size, kernel, stride
) -> tuple[Program, dict[str, tuple[int, ...]]]:
    """LOAD inp and wgt, one grouped CONV, STORE acc: the instruction alone, unpadded."""
    out_size = (size - kernel) // stride + 1
    shapes = {
        "data": (batch, groups * cg, size, size),
        "weight": (groups * ng, cg, kernel, kernel),
        "output": (batch, groups * ng, out_size, out_size),
    }
    full = {name: tuple((0, d) for d in dims) for name, dims in shapes.items()}
    inp, wgt = Slot("inp", 0, full["data"]), Slot("wgt", 0, full["weight"])
    acc = Slot("acc", 0, full["output"])
    streams = {
        "load": (
            Load(dst=inp, src=Dram("data", full["data"])),
            Load(dst=wgt, src=Dram("weight", full["weight"]), signal=("conv",)),
        ),
        "conv": (
            Conv(
                inp=inp,
                wgt=wgt,
                acc=acc,
                stride=(stride, stride),
                groups=groups,
                wait=("load",),
                signal=("store",),
            ),
        ),
        "store": (Store(src=acc, dst=Dram("output", full["output"]), wait=("conv",)),),
    }
    buffers = {
        "inp": BufferDecl(shapes["data"], 1),
        "wgt": BufferDecl(shapes["weight"], 1),
        "acc": BufferDecl(shapes["output"], 1),
    }
    return Program(streams, buffers, shapes), shapes


@pytest.mark.parametrize(
    ("batch", "groups", "cg", "ng", "size", "kernel", "stride"),
    [
        (1, 1, 3, 4, 6, 3, 1),  # dense
        (2, 2, 3, 2, 7, 3, 2),  # two groups, strided
        (1, 4, 2, 3, 5, 1, 1),  # pointwise grouped
        (1, 8, 1, 1, 6, 3, 1),  # depthwise
        (2, 6, 1, 2, 7, 3, 2),  # depthwise with channel multiplier 2, strided
        (1, 3, 4, 1, 5, 2, 1),  # one output per group, even kernel
    ],
    ids=["dense", "g2s2", "pointwise_g4", "depthwise", "depthwise_x2", "g3_n1"],
)
def test_grouped_conv_matches_torch(batch, groups, cg, ng, size, kernel, stride, ideal):
    program, shapes = _single_conv_program(batch, groups, cg, ng, size, kernel, stride)
    rng = np.random.default_rng(groups * 10 + cg)
    data = rng.standard_normal(shapes["data"]).astype(np.float32)
    weight = rng.standard_normal(shapes["weight"]).astype(np.float32)
    result = simulate(program, ideal, {"data": data, "weight": weight})
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(data).double(),
        torch.from_numpy(weight).double(),
        stride=stride,
        groups=groups,
    ).numpy()
    np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)
    assert program.streams["conv"][0].macs == int(np.prod(shapes["output"])) * cg * kernel**2


def test_depthwise_output_channel_sees_only_its_own_input_channel(ideal):
    """Channel c of a depthwise 1x1 conv is data[c] * weight[c]: no other channel leaks in."""
    program, _ = _single_conv_program(1, 3, 1, 1, 2, 1, 1)
    data = np.array([1.0, 10.0, 100.0], dtype=np.float32).reshape(1, 3, 1, 1) * np.ones((2, 2))
    weight = np.array([2.0, 3.0, 5.0], dtype=np.float32).reshape(3, 1, 1, 1)
    out = simulate(program, ideal, {"data": data, "weight": weight}).outputs["output"]
    np.testing.assert_array_equal(out[0, :, 0, 0], [2.0, 30.0, 500.0])


@pytest.mark.parametrize(
    ("inp_channels", "acc_channels", "message"),
    [
        (6, 5, r"conv#0 CONV: acc region has 5 channels, not a multiple of groups 2"),
        (5, 4, r"conv#0 CONV: input region has 5 channels, groups 2 x weight region's 3 = 6"),
    ],
)
def test_grouped_conv_shapes_are_checked(inp_channels, acc_channels, message, ideal):
    program, _ = _single_conv_program(1, 2, 3, 3, 4, 1, 1)
    conv = program.streams["conv"][0]
    inp = Slot("inp", 0, ((0, 1), (0, inp_channels), (0, 4), (0, 4)))
    acc = Slot("acc", 0, ((0, 1), (0, acc_channels), (0, 4), (0, 4)))
    wgt = Slot("wgt", 0, ((0, acc_channels), (0, 3), (0, 1), (0, 1)))
    broken = with_instruction(program, "conv", 0, inp=inp, acc=acc, wgt=wgt)
    assert broken.streams["conv"][0].groups == conv.groups == 2
    with pytest.raises(ProgramError, match=message) as info:
        simulate(broken, ideal, functional=False)
    assert "\n" not in str(info.value)


ALU_SHAPE = (2, 3, 2, 4)
_NUMPY_OPS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _alu_program(ops: tuple[AluOp, ...], operands: dict[str, tuple[int, ...]]) -> Program:
    """LOAD acc and every operand tensor into its own buffer, one ADD, STORE out."""
    shapes = {"acc_in": ALU_SHAPE, **operands, "output": ALU_SHAPE}
    full = {name: tuple((0, d) for d in dims) for name, dims in shapes.items()}
    acc, out = Slot("acc", 0, full["acc_in"]), Slot("out", 0, full["output"])
    loads = [Load(dst=acc, src=Dram("acc_in", full["acc_in"]), signal=("add",))]
    vloads = [Load(dst=Slot(name, 0, full[name]), src=Dram(name, full[name])) for name in operands]
    if vloads:
        vloads[-1] = dataclasses.replace(vloads[-1], signal=("add",))
    waits = ("load", "vload") if vloads else ("load",)
    streams = {
        "load": tuple(loads),
        "vload": tuple(vloads),
        "add": (Add(acc=acc, out=out, ops=ops, wait=waits, signal=("store",)),),
        "store": (Store(src=out, dst=Dram("output", full["output"]), wait=("add",)),),
    }
    buffers = {"acc": BufferDecl(ALU_SHAPE, 1), "out": BufferDecl(ALU_SHAPE, 1)}
    buffers |= {name: BufferDecl(shape, 1) for name, shape in operands.items()}
    return Program(streams, buffers, shapes)


@pytest.mark.parametrize("kind", ["tensor", "channel", "const"])
@pytest.mark.parametrize("op", ["add", "mul", "max", "min"])
def test_each_alu_op_matches_numpy(op, kind, ideal):
    rng = np.random.default_rng(7)
    acc = rng.standard_normal(ALU_SHAPE).astype(np.float32)
    tensors = {"acc_in": acc}
    if kind == "const":
        program = _alu_program((AluOp(op, "const", value=0.25),), {})
        operand = np.float32(0.25)
    else:
        shape = ALU_SHAPE if kind == "tensor" else (1, ALU_SHAPE[1], 1, 1)
        name = "res" if kind == "tensor" else "bias"
        tensors[name] = operand = rng.standard_normal(shape).astype(np.float32)
        program = _alu_program((AluOp(op, kind, Slot(name, 0, _full(shape))),), {name: shape})
    out = simulate(program, ideal, tensors).outputs["output"]
    np.testing.assert_allclose(out, _NUMPY_OPS[op](acc, operand), rtol=1e-6)


def _full(shape) -> tuple[tuple[int, int], ...]:
    return tuple((0, d) for d in shape)


def test_an_alu_chain_applies_its_ops_in_order(ideal):
    """relu6(acc * scale + bias + res + res_2), and the same ops reordered give another value."""
    vector, rng = (1, ALU_SHAPE[1], 1, 1), np.random.default_rng(3)
    operands = {"scale": vector, "bias": vector, "res": ALU_SHAPE, "res_2": ALU_SHAPE}
    tensors = {name: 3 * rng.standard_normal(s).astype(np.float32) for name, s in operands.items()}
    tensors["acc_in"] = 3 * rng.standard_normal(ALU_SHAPE).astype(np.float32)
    slot = {name: Slot(name, 0, _full(shape)) for name, shape in operands.items()}
    chain = (
        AluOp("mul", "channel", slot["scale"]),
        AluOp("add", "channel", slot["bias"]),
        AluOp("add", "tensor", slot["res"]),
        AluOp("add", "tensor", slot["res_2"]),
        AluOp("max", "const", value=0.0),
        AluOp("min", "const", value=6.0),
    )
    out = simulate(_alu_program(chain, operands), ideal, tensors).outputs["output"]
    t = {name: array.astype(np.float64) for name, array in tensors.items()}
    expected = np.clip(t["acc_in"] * t["scale"] + t["bias"] + t["res"] + t["res_2"], 0, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert 0 < (out == 0).mean() < 1 and 0 < (out == 6).mean() < 1  # both clamps did something
    clamp_first = (chain[4], chain[5], *chain[:4])  # clip acc first, then scale and add
    out = simulate(_alu_program(clamp_first, operands), ideal, tensors).outputs["output"]
    expected = np.clip(t["acc_in"], 0, 6) * t["scale"] + t["bias"] + t["res"] + t["res_2"]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_an_add_with_no_ops_moves_acc_to_out(ideal):
    acc = np.arange(np.prod(ALU_SHAPE), dtype=np.float32).reshape(ALU_SHAPE)
    out = simulate(_alu_program((), {}), ideal, {"acc_in": acc}).outputs["output"]
    np.testing.assert_array_equal(out, acc)


def test_every_alu_src_is_hazard_checked(ideal):
    vector = (1, ALU_SHAPE[1], 1, 1)
    ops = (AluOp("add", "channel", Slot("bias", 0, _full(vector))),)
    program = _alu_program(ops, {"bias": vector})
    unloaded = Program(
        {
            **program.streams,
            "vload": (),
            "add": (dataclasses.replace(program.streams["add"][0], wait=("load",)),),
        },
        program.buffers,
        program.tensors,
    )
    with pytest.raises(HazardError, match=r"read of bias\[0\] by ADD add#0 before anything"):
        simulate(unloaded, ideal, functional=False)


# -- the DMA: one DRAM channel shared by every queue ----------------------------------------


def _two_transfers(hardware: HardwareConfig) -> tuple[Program, int]:
    """Two independent LOADs on the two read queues (input on load, residual on vload)."""
    shape = (1, 16, 16, 16)
    full = _full(shape)
    buffers = {"inp": BufferDecl(shape, 1), "res": BufferDecl(shape, 1)}
    tensors = {"data": shape, "residual": shape}
    streams = {
        "load": (Load(dst=Slot("inp", 0, full), src=Dram("data", full)),),
        "vload": (Load(dst=Slot("res", 0, full), src=Dram("residual", full)),),
    }
    nbytes = 16 * 16 * 16 * 4
    return Program(streams, buffers, tensors), hardware.dma_transfer_cycles(nbytes, 1)


def test_concurrent_transfers_share_the_dram_channel(default):
    """Two queues overlap their setup but not their bytes: the second transfer waits for the
    channel, so the pair takes setup + both transfers, not setup + one."""
    program, transfer = _two_transfers(default)
    result = simulate(program, default, functional=False)
    setup = default.dma_setup_cycles
    assert result.total_cycles == setup + 2 * transfer
    assert result.dram_busy_cycles == 2 * transfer
    assert result.bound_cycles == 2 * transfer and result.bound_resource == "dram"
    single = simulate(program, load_config("single_queue"), functional=False)
    assert single.total_cycles == 2 * (setup + transfer)  # one engine: setups do not overlap
    starts = sorted(e.start for e in result.events)
    assert starts == [0, 0]  # both queues start at once: only the channel serializes them


def test_an_unlimited_channel_serializes_nothing():
    ideal = load_config("ideal")
    program, transfer = _two_transfers(ideal)
    result = simulate(program, ideal, functional=False)
    assert transfer == 0 and result.total_cycles == 0 and result.dram_busy_cycles == 0


def test_queues_of_one_engine_run_one_transfer_at_a_time(default):
    """On the single-queue machine load and vload share an engine: a residual LOAD cannot
    start its setup while the weights' LOAD is in flight."""
    single = load_config("single_queue")
    program = tiled_convadd_program(SHAPES[0], tiles=2)
    split_run = simulate(program, default, functional=False)
    single_run = simulate(program, single, functional=False)
    assert single_run.engine_busy_cycles == {
        "load+vload": split_run.units["load"].busy_cycles + split_run.units["vload"].busy_cycles
    }
    read = sorted((e.start, e.end) for e in single_run.events if e.unit in ("load", "vload"))
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(read))
    overlapping = sorted((e.start, e.end) for e in split_run.events if e.unit in ("load", "vload"))
    assert any(b_start < a_end for (_, a_end), (b_start, _) in itertools.pairwise(overlapping))
    assert split_run.total_cycles <= single_run.total_cycles


def test_channel_order_is_first_come_first_served(default):
    """Whatever order the streams are declared in, the transfer that is ready first gets the
    channel first: the instruction order is by start time, not by unit."""
    program = tiled_convadd_program(SHAPES[1], tiles=3)
    result = simulate(program, default, functional=False)
    dma = sorted((e for e in result.events if e.unit in DMA_UNITS), key=lambda e: (e.start, e.end))
    ends = [e.end for e in dma]
    # served in start order, each holding the channel for its transfer: ends never go back
    assert ends == sorted(ends)
    assert result.dram_busy_cycles == sum(
        default.transfer_cycles(inst, program)
        for unit in DMA_UNITS
        for inst in program.streams[unit]
    )
