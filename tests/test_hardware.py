"""HardwareConfig: shipped configs, validation messages, cost functions, plausibility."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from tests.handmade_programs import ConvAddShape, tiled_convadd_program
from tvm_convadd.errors import HardwareConfigError
from tvm_convadd.target.hardware import BUFFERS, HardwareConfig, list_configs, load_config
from tvm_convadd.target.isa import Add, Conv, Load, Store, region_size

SHIPPED = ["big_array", "default", "ideal", "slow_add"]


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
        assert config.description


def test_variants_differ_from_default_in_one_knob(default):
    slow, big = load_config("slow_add"), load_config("big_array")
    assert slow.add_lanes * 4 == default.add_lanes
    assert big.macs_per_cycle == 32 * 32 == 4 * default.macs_per_cycle
    for variant, knob in ((slow, "add_lanes"), (big, "macs_per_cycle")):
        expected = {**default.to_dict(), knob: getattr(variant, knob)}
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


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(HardwareConfigError, match=r"unknown hardware config 'fast'.*'default'"):
        load_config("fast")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"macs_per_cycle": 0}, r"macs_per_cycle 0: must be an integer in 1\.\."),
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
    ],
)
def test_validation_names_the_field_and_range(default, change, message):
    with pytest.raises(HardwareConfigError, match=message):
        HardwareConfig.from_dict({**default.to_dict(), **change})


def test_validation_of_missing_fields_and_capacities(default):
    data = default.to_dict()
    del data["add_lanes"]
    with pytest.raises(HardwareConfigError, match=r"missing field\(s\) \['add_lanes'\]"):
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
    assert hash(default) == hash(load_config("default"))
    assert pickle.loads(pickle.dumps(default)) == default  # travels to process-pool workers
    with pytest.raises(HardwareConfigError, match="no on-chip buffer 'sram'"):
        default.capacity("sram")


def test_cost_functions_round_up_and_add_the_issue_cost(default):
    issue, latency = default.issue_cycles, default.dma_latency_cycles
    setup = default.conv_setup_cycles
    assert setup > 0
    assert default.conv_cycles(256 * 10) == 10 + setup + issue
    assert default.conv_cycles(256 * 10 + 1) == 11 + setup + issue
    assert default.add_cycles(16 * 3) == 3 + issue
    assert default.add_cycles(16 * 3 + 1) == 4 + issue
    assert default.dma_cycles(0) == latency + issue
    assert default.dma_cycles(33) == latency + 2 + issue


def test_ideal_makes_dma_free_and_compute_exact():
    ideal = load_config("ideal")
    assert ideal.dma_cycles(10**12) == 0
    assert ideal.conv_cycles(256 * 7 + 1) == 8
    assert ideal.add_cycles(16 * 5) == 5
    assert min(ideal.buffer_bytes.values()) >= 1 << 30


@pytest.mark.parametrize("name", SHIPPED)
def test_instruction_cycles_follow_the_cost_functions(name):
    config = load_config(name)
    shape = ConvAddShape(in_channels=3, out_channels=5, height=9, width=7, stride=2)
    program = tiled_convadd_program(shape, tiles=2)
    for stream in program.streams.values():
        for inst in stream:
            if isinstance(inst, Conv):
                _, (_, c), (_, r), (_, s) = inst.wgt.region
                expected = config.conv_cycles(region_size(inst.acc.region) * c * r * s)
            elif isinstance(inst, Add):
                expected = config.add_cycles(region_size(inst.out.region))
            elif isinstance(inst, Load):
                expected = config.dma_cycles(4 * region_size(inst.src.region))
            else:
                assert isinstance(inst, Store)
                expected = config.dma_cycles(4 * region_size(inst.dst.region))
            assert config.instruction_cycles(inst, program) == expected


# ResNet-50 bottleneck conv3 (1x1) layers, the convs whose output the residual add consumes.
RESNET50_RESIDUAL = [(64, 256, 56), (128, 512, 28), (256, 1024, 14), (512, 2048, 7)]
BLOCKS = [3, 4, 6, 3]


def test_default_is_a_plausible_edge_accelerator(default):
    """The add is a real share of the conv, DMA is not free, N=1 overflows the accumulator."""
    conv_total = add_total = 0
    for (cin, cout, size), blocks in zip(RESNET50_RESIDUAL, BLOCKS):
        elements = cout * size * size
        conv = default.conv_cycles(elements * cin)
        add = default.add_cycles(elements)
        conv_total += blocks * conv
        add_total += blocks * add
        residual_load = default.dma_cycles(4 * elements)
        assert residual_load > add  # moving the residual costs more than adding it
        assert 4 * elements > default.capacity("acc") // 2  # one tile (N=1) never fits a slot
        rows_per_tile = (default.capacity("acc") // 2) // (4 * cout * size)
        assert rows_per_tile >= 1  # ... but tiles of a couple of rows do
    assert 0.10 <= add_total / conv_total <= 0.40
    first = RESNET50_RESIDUAL[0]
    ratio = default.add_cycles(first[1] * first[2] ** 2) / default.conv_cycles(
        first[0] * first[1] * first[2] ** 2
    )
    assert 0.10 <= ratio <= 0.40
