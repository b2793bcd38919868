"""HardwareConfig: shipped configs, validation messages, cost functions, plausibility."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.handmade_programs import ConvAddShape, tiled_convadd_program
from tvm_convadd.errors import HardwareConfigError
from tvm_convadd.target.hardware import (
    BUFFERS,
    HardwareConfig,
    buffer_pool,
    conv_gemm,
    dram_footprint,
    list_configs,
    load_config,
)
from tvm_convadd.target.isa import ALU_OPS, Add, AluOp, Conv, Load, Slot, Store, region_size

SHIPPED = ["big_array", "default", "ideal", "output_stationary", "single_queue", "slow_add"]


@pytest.fixture
def default() -> HardwareConfig:
    return load_config("default")


def test_shipped_configs_load_and_are_named_after_their_file():
    assert list_configs() == SHIPPED
    for name in SHIPPED:
        config = load_config(name)
        assert config.name == name
        assert config.dtype == "float32"
        assert set(config.buffer_bytes) == set(BUFFERS)
        assert dict(config.alu_op_cycles) == {"add": 1, "mul": 1, "max": 1, "min": 1}
        assert config.description


def test_variants_differ_from_default_in_one_knob(default):
    slow, big = load_config("slow_add"), load_config("big_array")
    output_stationary = load_config("output_stationary")
    single = load_config("single_queue")
    assert default.dma_queues == (("load",), ("vload",), ("store",))
    assert single.dma_queues == (("load", "vload"), ("store",))
    assert (default.array_rows, default.array_cols, default.dataflow) == (16, 16, "ws")
    assert slow.add_lanes * 4 == default.add_lanes
    assert big.macs_per_cycle == 32 * 32 == 4 * default.macs_per_cycle
    assert output_stationary.dataflow == "os"
    for variant, knobs in (
        (slow, ("add_lanes",)),
        (big, ("array_rows", "array_cols")),
        (output_stationary, ("dataflow",)),
        (single, ("dma_queues",)),
    ):
        expected = {**default.to_dict(), **{knob: variant.to_dict()[knob] for knob in knobs}}
        assert {**variant.to_dict(), "name": "default", "description": ""} == {
            **expected,
            "description": "",
        }


@pytest.mark.parametrize("name", SHIPPED)
def test_dict_and_json_round_trip(name):
    config = load_config(name)
    assert HardwareConfig.from_dict(config.to_dict()) == config
    assert HardwareConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_load_by_path_and_bad_files(tmp_path, default):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**default.to_dict(), "name": "mine", "add_lanes": 8}))
    assert load_config(path).add_lanes == 8
    assert load_config(str(path)).name == "mine"
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x",')
    with pytest.raises(HardwareConfigError, match=r"broken.json: not valid JSON at line 1"):
        load_config(broken)
    with pytest.raises(HardwareConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x89PNG\x00\xff binary")
    with pytest.raises(HardwareConfigError, match=r"binary.json: not a JSON text file \(byte 0x89"):
        load_config(binary)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(HardwareConfigError, match=r"unknown hardware config 'fast'.*'default'"):
        load_config("fast")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"array_rows": 0}, r"array_rows 0: must be an integer in 1\.\."),
        ({"array_cols": 1.5}, r"array_cols 1\.5: must be an integer in 1\.\."),
        ({"dataflow": "rs"}, r"dataflow 'rs': choose one of \['ws', 'os', 'is'\]"),
        ({"fill_drain": 1}, r"fill_drain 1: must be true or false"),
        ({"dma_run_cycles": -2}, r"dma_run_cycles -2: must be an integer in 0\.\."),
        ({"add_lanes": "16"}, r"add_lanes '16': must be an integer in 1\.\."),
        ({"add_lanes": True}, r"add_lanes True"),
        ({"dma_bytes_per_cycle": 0}, r"dma_bytes_per_cycle 0: must be an integer in 1\.\."),
        ({"dma_latency_cycles": -1}, r"dma_latency_cycles -1: must be an integer in 0\.\."),
        ({"issue_cycles": 2.5}, r"issue_cycles 2\.5"),
        ({"clock_mhz": 0}, r"clock_mhz 0: must be in"),
        ({"dtype": "int4"}, r"dtype 'int4': choose one of"),
        ({"name": ""}, r"name must be a non-empty string"),
        ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
        ({"buffer_bytes": {"acc": 1}}, r"buffer_bytes must give exactly the buffers"),
        (
            {"alu_op_cycles": {"add": 1, "mul": 1, "max": 1}},
            r"alu_op_cycles is missing op\(s\) \['min'\]: give cycles for each of "
            r"\['add', 'mul', 'max', 'min'\]",
        ),
        (
            {"alu_op_cycles": {"add": 1, "mul": 1, "max": 1, "min": 1, "shr": 1}},
            r"alu_op_cycles has unknown op\(s\) \['shr'\]: the ALU ops are \['add', 'mul'",
        ),
        (
            {"alu_op_cycles": {"add": 1, "mul": 1.5, "max": 1, "min": 1}},
            r"alu_op_cycles.mul 1.5: must be an integer in 0\.\.",
        ),
        (
            {"alu_op_cycles": {"add": 1, "mul": 1, "max": "1", "min": 1}},
            r"alu_op_cycles.max '1': must be an integer in 0\.\.",
        ),
        (
            {"alu_op_cycles": {"add": -1, "mul": 1, "max": 1, "min": 1}},
            r"alu_op_cycles.add -1: must be an integer in 0\.\.",
        ),
        (
            {"alu_op_cycles": {"add": True, "mul": 1, "max": 1, "min": 1}},
            r"alu_op_cycles.add True: must be an integer",
        ),
        ({"alu_op_cycles": [1, 1, 1, 1]}, r"alu_op_cycles \[1, 1, 1, 1\]: must be an object of"),
    ],
)
def test_validation_names_the_field_and_range(default, change, message):
    with pytest.raises(HardwareConfigError, match=message) as info:
        HardwareConfig.from_dict({**default.to_dict(), **change})
    assert "\n" not in str(info.value)


def test_an_old_format_config_names_the_new_fields(default):
    old = {**default.to_dict(), "macs_per_cycle": 256, "conv_setup_cycles": 128}
    for key in ("array_rows", "array_cols", "dataflow", "fill_drain"):
        del old[key]
    with pytest.raises(
        HardwareConfigError,
        match=r"old-format config: macs_per_cycle by array_rows, array_cols and dataflow; "
        r"conv_setup_cycles by fill_drain",
    ):
        HardwareConfig.from_dict(old)


@pytest.mark.parametrize("geometry", ["array_rows", "array_cols", "dataflow", "fill_drain"])
def test_a_missing_geometry_field_is_named(default, geometry):
    data = default.to_dict()
    del data[geometry]
    with pytest.raises(HardwareConfigError, match=rf"missing field\(s\) \['{geometry}'\]"):
        HardwareConfig.from_dict(data)


def test_validation_of_missing_fields_and_capacities(default):
    data = default.to_dict()
    del data["add_lanes"]
    with pytest.raises(HardwareConfigError, match=r"missing field\(s\) \['add_lanes'\]"):
        HardwareConfig.from_dict(data)
    data = default.to_dict()
    del data["alu_op_cycles"]
    with pytest.raises(HardwareConfigError, match=r"missing field\(s\) \['alu_op_cycles'\]"):
        HardwareConfig.from_dict(data)
    bad = {**default.to_dict(), "buffer_bytes": {**default.buffer_bytes, "acc": 0}}
    with pytest.raises(HardwareConfigError, match=r"buffer_bytes.acc 0: must be an integer in 1"):
        HardwareConfig.from_dict(bad)
    with pytest.raises(HardwareConfigError, match="expected a JSON object"):
        HardwareConfig.from_dict([1, 2])


def test_config_is_immutable(default):
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.add_lanes = 1
    with pytest.raises(TypeError):
        default.buffer_bytes["acc"] = 1
    with pytest.raises(TypeError):
        default.alu_op_cycles["add"] = 2
    assert hash(default) == hash(load_config("default"))
    assert pickle.loads(pickle.dumps(default)) == default  # travels to process-pool workers
    with pytest.raises(HardwareConfigError, match="buffer 'sram' draws from no pool"):
        default.capacity("sram")
    with pytest.raises(HardwareConfigError, match="no on-chip buffer pool 'scale'; pools: "):
        default.pool_bytes("scale")


@pytest.mark.parametrize(
    ("buffer", "pool"),
    [
        *((name, name) for name in ("inp", "wgt", "acc", "out", "res", "bias")),
        ("res_2", "res"),
        ("res_11", "res"),
        ("bias_2", "bias"),
        ("scale", "bias"),
        ("scale_3", "bias"),
    ],
)
def test_epilogue_buffers_draw_from_their_pool(buffer, pool, default):
    assert buffer_pool(buffer) == pool
    assert default.capacity(buffer) == default.buffer_bytes[pool]


def _array(dataflow: str, rows: int = 16, cols: int = 16, fill_drain: bool = True):
    return HardwareConfig.from_dict(
        {
            **load_config("default").to_dict(),
            "dataflow": dataflow,
            "array_rows": rows,
            "array_cols": cols,
            "fill_drain": fill_drain,
        }
    )


# Hand-derived: one fold on R x C costs 2R + C + T - 2 for ws and is (46 + T on 16x16),
# R + C + T - 2 for os (30 + T: no stationary operand to preload); plus the issue cost.
@pytest.mark.parametrize(
    ("dataflow", "pixels", "reduction", "channels", "folds", "per_fold"),
    [
        ("ws", 100, 16, 16, 1, 46 + 100),  # one fold: K = 16 rows, N = 16 columns, P streams
        ("ws", 50, 64, 32, 4 * 2, 46 + 50),  # several folds: K over 4 row folds, N over 2
        ("ws", 10, 17, 20, 2 * 2, 46 + 10),  # partial folds: 17 rows, 20 columns need two each
        ("os", 100, 27, 16, 7 * 1, 30 + 27),  # P over 7 row folds (the last holds 4), K streams
        ("os", 16, 16, 16, 1, 30 + 16),  # os, one fold
        ("is", 100, 27, 16, 2 * 7, 46 + 16),  # K over 2 row folds, P over 7 column folds
    ],
)
def test_conv_cycles_by_hand(dataflow, pixels, reduction, channels, folds, per_fold):
    config = _array(dataflow)
    assert config.conv_mapping(pixels, reduction, channels).folds == folds
    expected = folds * per_fold + config.issue_cycles
    assert config.conv_cycles(pixels, reduction, channels) == expected


def test_conv_cycles_on_a_rectangular_array():
    config = _array("ws", rows=8, cols=32)
    # K = 20 over 8 rows: 3 row folds; N = 40 over 32 columns: 2; fold = 16 + 32 + 64 - 2
    assert config.conv_cycles(64, 20, 40) == 6 * 110 + config.issue_cycles
    output_stationary = _array("os", rows=8, cols=32)
    # P = 64 over 8 rows: 8 row folds; N = 40 over 32: 2; fold = 8 + 32 + 20 - 2
    assert output_stationary.conv_cycles(64, 20, 40) == 16 * 58 + config.issue_cycles


def _conv(batch, groups, cg, ng, out_size, kernel) -> Conv:
    """A CONV instruction of the given group shape, stride 1 (only its regions matter here)."""
    in_size = out_size + kernel - 1
    return Conv(
        inp=Slot("inp", 0, ((0, batch), (0, groups * cg), (0, in_size), (0, in_size))),
        wgt=Slot("wgt", 0, ((0, groups * ng), (0, cg), (0, kernel), (0, kernel))),
        acc=Slot("acc", 0, ((0, batch), (0, groups * ng), (0, out_size), (0, out_size))),
        groups=groups,
    )


def test_grouped_conv_cycles_by_hand(default):
    """Each group is its own GEMM on the 16x16 ws array (one fold costs 46 + P), in turn."""
    # depthwise 3x3, 32 channels, 8x8 out: per group K = 9 (1 row fold), N = 1 (1 column
    # fold), P = 64: 46 + 64 = 110 cycles; 32 groups; one issue
    depthwise = _conv(1, 32, 1, 1, 8, 3)
    assert conv_gemm(depthwise) == (64, 9, 1)
    assert default.instruction_cycles(depthwise, None) == 32 * 110 + 4
    # 2 groups of 24 -> 20 channels, 3x3, batch 2, 5x5 out: P = 50, K = 216 (14 row folds),
    # N = 20 (2 column folds): 28 folds of 46 + 50 = 96 per group
    grouped = _conv(2, 2, 24, 20, 5, 3)
    assert conv_gemm(grouped) == (50, 216, 20)
    assert default.instruction_cycles(grouped, None) == 2 * 28 * 96 + 4
    assert default.conv_cycles(50, 216, 20, groups=2) == 2 * 28 * 96 + 4


def test_ws_tiles_that_cut_the_pixels_pay_fill_and_drain_per_fold(default):
    """The issue's example: 28 width tiles of a 56x56 3x3 64->64 layer cost +39 % on ws."""
    whole = default.conv_cycles(56 * 56, 64 * 9, 64) - default.issue_cycles
    tiles = 28 * (default.conv_cycles(56 * 2, 64 * 9, 64) - default.issue_cycles)
    assert tiles / whole == pytest.approx((112 + 46) * 28 / (3136 + 46))
    assert 1.38 < tiles / whole < 1.40


def test_add_and_dma_costs_by_hand(default):
    issue, latency, per_run = (
        default.issue_cycles,
        default.dma_latency_cycles,
        default.dma_run_cycles,
    )
    pipe = default.add_latency_cycles
    assert pipe > 0 and per_run > 0
    assert default.add_cycles(16 * 3) == 3 + pipe + issue  # no ops: one pass moves acc to out
    assert default.add_cycles(16 * 3 + 1) == 4 + pipe + issue
    assert default.add_cycles(16 * 3 + 1, ["add", "mul", "max"]) == 4 * 3 + pipe + issue
    assert default.add_cycles(16 * 3 + 1, ["add", "add"]) == 4 * 2 + pipe + issue
    assert default.dma_cycles(0, 0) == latency + issue
    assert default.dma_cycles(33, 1) == latency + 2 + per_run + issue


@pytest.mark.parametrize(
    ("ops", "per_pass"),
    [
        ((), 1),  # an empty list still streams acc to out: one pass
        (("mul",), 3),
        (("mul", "add", "min"), 3 + 1 + 2),
        (("max", "max"), 1),  # max costs 0 here, floored at 1 cycle per pass
        (("min", "mul", "min", "add", "max"), 2 + 3 + 2 + 1 + 0),
    ],
)
def test_add_cost_sums_the_ops_alu_cycles(ops, per_pass, default):
    """ceil(49 / 16) = 4 lane-wide passes, each costing the ops' cycles summed, + 8 + 4."""
    costly = HardwareConfig.from_dict(
        {**default.to_dict(), "alu_op_cycles": {"add": 1, "mul": 3, "max": 0, "min": 2}}
    )
    assert costly.add_cycles(49, ops) == 4 * per_pass + 8 + 4
    out = Slot("out", 0, ((0, 1), (0, 7), (0, 7), (0, 1)))  # 49 elements
    vector = Slot("bias", 0, ((0, 1), (0, 7), (0, 1), (0, 1)))
    steps = tuple(
        AluOp(op, "const", value=1.0) if op in ("max", "min") else AluOp(op, "channel", vector)
        for op in ops
    )
    add = Add(acc=Slot("acc", 0, out.region), out=out, ops=steps)
    assert costly.instruction_cycles(add, None) == 4 * per_pass + 8 + 4


def test_an_unknown_alu_op_has_no_cost(default):
    with pytest.raises(HardwareConfigError, match=r"default: no ALU op 'shr'; ops are"):
        default.add_cycles(16, ["add", "shr"])


def test_dma_cost_of_a_strided_region(default):
    shape = (1, 8, 10, 12)
    latency, per_run, issue = (
        default.dma_latency_cycles,
        default.dma_run_cycles,
        default.issue_cycles,
    )
    whole = tuple((0, d) for d in shape)
    assert dram_footprint(whole, shape, 0)[1] == 1
    rows = ((0, 1), (0, 8), (2, 3), (0, 12))  # 3 whole rows per channel: one run per channel
    assert dram_footprint(rows, shape, 0)[1] == 8
    assert default.region_dma_cycles(rows, shape, "float32") == (
        latency + 8 * 3 * 12 * 4 // 32 + 8 * per_run + issue
    )
    columns = ((0, 1), (0, 8), (2, 3), (4, 5))  # cut across the width: 24 rows of 5
    assert dram_footprint(columns, shape, 0)[1] == 24
    # 7 elements (28 B) between the rows of a channel: cheaper to stream through than a new
    # burst (4 cycles at 32 B/cycle is 128 B), so the 16 such gaps move; between channels
    # 120 - 2 * 12 - 5 = 91 elements (364 B): a new run each, 8 runs in all
    assert dram_footprint(columns, shape, 32) == (8 * 3 * 5 + 16 * 7, 8)
    assert default.region_dma_cycles(columns, shape, "float32") == (
        latency + -(-(8 * 3 * 5 + 16 * 7) * 4 // 32) + 8 * per_run + issue
    )
    padded = ((0, 1), (0, 8), (-1, 4), (4, 5))  # one row of padding above: not on the bus
    assert default.region_dma_cycles(padded, shape, "float32") == (
        default.region_dma_cycles(columns, shape, "float32")
    )
    assert default.region_dma_cycles(((0, 1), (0, 8), (-3, 2), (0, 12)), shape, "float32") == (
        latency + issue
    )


def test_a_stride_two_window_streams_through_the_column_it_skips(default):
    """A 1x1/s2 conv of a 28x28 map reads columns 0..26: one element short of each row. The
    DMA streams through the 1-element gaps and the 29-element ones between channels (116 B),
    so 64 channels of 27 x 27 move as one run instead of 1728."""
    shape, window = (1, 128, 28, 28), ((0, 1), (0, 64), (0, 27), (0, 27))
    moved = 64 * 27 * 27 + 64 * 26 * 1 + 63 * 29
    assert dram_footprint(window, shape, 32) == (moved, 1)
    assert default.region_dma_cycles(window, shape, "float32") == (
        default.dma_setup_cycles + -(-moved * 4 // 32) + default.dma_run_cycles
    )
    assert dram_footprint(window, shape, 0) == (64 * 27 * 27, 64 * 27)  # nothing streams


def brute_force_footprint(region, shape, stream_gap: int) -> tuple[int, int]:
    """The same from every element's address: sort them, and each jump over more than
    `stream_gap` missing elements starts a run; shorter jumps move what they skip."""
    axes = [np.arange(start, start + extent) for start, extent in region]
    addresses = np.sort(np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), shape).ravel())
    gaps = np.diff(addresses) - 1
    streamed = gaps[(gaps > 0) & (gaps <= stream_gap)]
    return int(addresses.size + streamed.sum()), int(1 + (gaps > stream_gap).sum())


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_dram_footprint_matches_the_addresses(data):
    rank = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.integers(1, 7)) for _ in range(rank))
    region = []
    for dim in shape:
        start = data.draw(st.integers(0, dim - 1))
        region.append((start, data.draw(st.integers(1, dim - start))))
    stream_gap = data.draw(st.integers(0, 40))
    region = tuple(region)
    assert dram_footprint(region, shape, stream_gap) == brute_force_footprint(
        region, shape, stream_gap
    )


def test_ideal_makes_dma_free_and_compute_exact():
    ideal = load_config("ideal")
    assert ideal.region_dma_cycles(((0, 1), (0, 7), (0, 1), (3, 9)), (1, 7, 5, 20), "float32") == 0
    assert ideal.dma_cycles(10**12, 10**6) == 0
    assert ideal.conv_cycles(100, 16, 32) == 2 * 100  # two column folds, no fill, no drain
    assert ideal.add_cycles(16 * 5) == 5
    assert ideal.add_cycles(16 * 5, ALU_OPS) == 5 * 4
    assert min(ideal.buffer_bytes.values()) >= 1 << 30


@pytest.mark.parametrize(
    "shape",
    [
        ConvAddShape(in_channels=3, out_channels=5, height=9, width=7, stride=2),
        ConvAddShape(in_channels=6, out_channels=4, groups=2, scale=True, relu=True, clip=6.0),
        ConvAddShape(in_channels=8, out_channels=8, groups=8, residual=False, bias=False),
    ],
    ids=["dense", "grouped_chain", "depthwise_bare"],
)
@pytest.mark.parametrize("name", SHIPPED)
def test_instruction_cycles_follow_the_cost_functions(name, shape):
    config = load_config(name)
    program = tiled_convadd_program(shape, tiles=2)
    ops = ["mul"] * shape.scale + ["add"] * (shape.bias + shape.residual)
    ops += ["max"] * shape.relu + ["min"] * (shape.clip is not None)
    for stream in program.streams.values():
        for inst in stream:
            if isinstance(inst, Conv):
                (_, n), (_, k), (_, h), (_, w) = inst.acc.region
                _, (_, c), (_, r), (_, s) = inst.wgt.region
                assert c == shape.in_channels // shape.groups
                expected = config.conv_cycles(n * h * w, c * r * s, k // shape.groups, shape.groups)
            elif isinstance(inst, Add):
                expected = config.add_cycles(region_size(inst.out.region), ops)
            else:
                dram = inst.src if isinstance(inst, Load) else inst.dst
                assert isinstance(inst, (Load, Store))
                expected = config.region_dma_cycles(
                    dram.region, program.tensors[dram.tensor], "float32"
                )
            assert config.instruction_cycles(inst, program) == expected


# ResNet-50 bottleneck conv3 (1x1) layers, the convs whose output the residual add consumes.
RESNET50_RESIDUAL = [(64, 256, 56), (128, 512, 28), (256, 1024, 14), (512, 2048, 7)]
BLOCKS = [3, 4, 6, 3]


def test_default_is_a_plausible_edge_accelerator(default):
    """The add is a real share of the conv, DMA is not free, N=1 overflows the accumulator."""
    conv_total = add_total = 0
    for (cin, cout, size), blocks in zip(RESNET50_RESIDUAL, BLOCKS):
        elements = cout * size * size
        conv = default.conv_cycles(size * size, cin, cout)
        add = default.add_cycles(elements)
        conv_total += blocks * conv
        add_total += blocks * add
        residual_load = default.dma_cycles(4 * elements, 1)
        assert residual_load > add  # moving the residual costs more than adding it
        assert 4 * elements > default.capacity("acc") // 2  # one tile (N=1) never fits a slot
        rows_per_tile = (default.capacity("acc") // 2) // (4 * cout * size)
        assert rows_per_tile >= 1  # ... but tiles of a couple of rows do
    # on the weight-stationary array the 7x7 and 14x14 layers stream few pixels per fold, so
    # fill and drain swell their conv and the add's share of the whole falls below 10 %
    assert 0.05 <= add_total / conv_total <= 0.40
    first = RESNET50_RESIDUAL[0]
    ratio = default.add_cycles(first[1] * first[2] ** 2) / default.conv_cycles(
        first[2] ** 2, first[0], first[1]
    )
    assert 0.10 <= ratio <= 0.40


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        (
            [["load"], ["store"]],
            r"must name each DMA unit \['load', 'vload', 'store'\] exactly once",
        ),
        ([["load", "vload"], ["vload"], ["store"]], r"exactly once"),
        ([["load"], ["vload"], ["store"], ["conv"]], r"exactly once"),
        ([["load"], [], ["vload", "store"]], r"must be a list of non-empty lists of units"),
        ("load", r"must be a list of non-empty lists"),
    ],
)
def test_dma_queues_must_partition_the_dma_units(default, queues, message):
    with pytest.raises(HardwareConfigError, match=message) as info:
        HardwareConfig.from_dict({**default.to_dict(), "dma_queues": queues}, "x.json")
    assert "\n" not in str(info.value)


def test_a_config_without_dma_queues_gets_the_split_queues(default):
    data = default.to_dict()
    del data["dma_queues"]
    assert HardwareConfig.from_dict(data).dma_queues == (("load",), ("vload",), ("store",))


def test_a_transfer_is_setup_then_channel_time(default):
    """64 latency + 4 issue hold the queue; 4096 B at 32 B/cycle plus one burst's 4 cycles hold
    the DRAM channel; alone on the channel, the two add up to the DMA cost."""
    assert default.dma_setup_cycles == 64 + 4
    assert default.dma_transfer_cycles(4096, runs=1) == 4096 // 32 + 4
    assert default.dma_cycles(4096, 1) == 68 + 132
    ideal = load_config("ideal")
    assert ideal.dma_transfer_cycles(1 << 20, runs=9) == 0
