"""report.py's figures on SimResults written by hand: every expected number is worked out here.

A layer's A and B are the Conv and Add units' busy cycles, A + B the ideal machine's
conv-then-epilogue (DMA free), A + B/N the law for N tiles, fused the simulated total, the
bound the busiest resource's busy cycles (each unit, DMA included, and the DRAM channel),
overlapped the Add cycles during which the Conv unit was busy too and hidden = overlapped / B.
Unfused is the baseline's conv kernel plus its elementwise kernel(s), per-op one per op.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from tvm_convadd.codegen import (
    CodegenOptions,
    LayerRun,
    OffloadedLayer,
    OffloadSession,
    RunRecorder,
)
from tvm_convadd.report import NetworkReport, layer_report, network_report, overlap_cycles
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload, standard_epilogue
from tvm_convadd.target.hardware import HardwareConfig, load_config
from tvm_convadd.target.isa import UNITS, Program
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.simulator import Event, SimResult, UnitIdle, UnitStats, simulate
from tvm_convadd.unfused import KernelRun, UnfusedBaseline, unfused_baseline

# 8x8 output: 2 tiles along the height hold 4 rows each
WORKLOAD = Workload(
    1, 8, 8, 8, 8, 3, 3, padding=(1, 1, 1, 1), epilogue=standard_epilogue(bias=True, relu=True)
)


def sim(*spans: tuple[str, int, int], total: int | None = None, dram: int = 0) -> SimResult:
    """A SimResult with one event per (unit, start, end); each unit's busy cycles are the sum of
    its events' lengths (what the simulator counts), the total the last end unless given, and
    `dram` the DRAM channel's busy cycles."""
    events, busy = [], Counter()
    for unit, start, end in spans:
        index = sum(event.unit == unit for event in events)
        events.append(Event(unit, index, unit.upper(), start, end))
        busy[unit] += end - start
    total = max(end for _, _, end in spans) if total is None else total
    units = {
        unit: UnitStats(busy[unit], sum(e.unit == unit for e in events), busy[unit] / total)
        for unit in UNITS
    }
    return SimResult(total, units, tuple(events), None, "by hand", {}, dram)


def run(
    result: SimResult,
    n_tiles: int = 2,
    symbol: str = "fused_conv2d_add_convadd",
    workload: Workload = WORKLOAD,
    source: str = "heuristic",
    config: TileConfig | None = None,
) -> LayerRun:
    layer = OffloadedLayer(
        symbol=symbol,
        workload=workload,
        roles=("data", "weight", "bias", "residual"),
        config=config or TileConfig(n_tiles, "height", "software"),
        config_source=source,
        program=Program(streams={}, buffers={}, tensors={}),
        hardware=load_config("default"),
    )
    return LayerRun(layer, result)


def busy(report) -> dict:
    """The resources that did anything (units and the DRAM channel that stayed idle left out)."""
    return {name: cycles for name, cycles in report.busy.items() if cycles}


def figures(report) -> dict:
    return {
        "A": report.conv_cycles,
        "B": report.add_cycles,
        "A+B": report.ideal_serial_cycles,
        "law": report.law_cycles,
        "fused": report.fused_cycles,
        "overlapped": report.add_overlapped,
        "hidden": report.add_hidden,
        "bound": report.bound_cycles,
        "unit": report.bound_unit,
    }


def test_the_issue_example():
    """Conv [0,10) [10,20), Add [10,14) [20,24): the first add runs under the second conv."""
    result = sim(("conv", 0, 10), ("conv", 10, 20), ("add", 10, 14), ("add", 20, 24))
    report = layer_report(run(result, n_tiles=2))
    # A = 10 + 10, B = 4 + 4, overlap = |[10,14) & [10,20)| + |[20,24) & conv| = 4 + 0
    assert figures(report) == {
        "A": 20,
        "B": 8,
        "A+B": 28,
        "law": 24.0,  # 20 + 8 / 2
        "fused": 24,
        "overlapped": 4,
        "hidden": 0.5,  # 4 / 8
        "bound": 20,  # the conv's busy cycles: no DMA here
        "unit": "conv",
    }
    assert report.tiles == 2
    assert report.symbol == "fused_conv2d_add_convadd"
    assert report.shape == str(WORKLOAD)
    assert (report.config, report.config_source) == ("N=2 height software", "heuristic")


def test_dma_counts_in_fused_cycles_only():
    """LOAD and STORE are neither A nor B and hide nothing, though they overlap the add."""
    result = sim(
        ("load", 0, 3),
        ("conv", 3, 13),
        ("conv", 13, 23),
        ("add", 13, 17),
        ("load", 13, 20),  # under the first add too: not counted
        ("add", 23, 27),
        ("store", 17, 19),
        ("store", 27, 30),
    )
    report = layer_report(run(result))
    # A = 20, B = 8, overlap: add [13,17) under conv [13,23) = 4; add [23,27) = 0
    assert figures(report) == {
        "A": 20,
        "B": 8,
        "A+B": 28,
        "law": 24.0,
        "fused": 30,
        "overlapped": 4,
        "hidden": 0.5,
        "bound": 20,  # load 3 + 7 = 10 and store 2 + 3 = 5 cycles: the conv is still busiest
        "unit": "conv",
    }


def test_the_bound_is_the_busiest_unit_dma_included():
    """A layer whose loads take longer than its convs: the bound is the load unit's busy
    cycles, and fused against it says how close the schedule came."""
    result = sim(
        ("load", 0, 12),
        ("conv", 12, 20),
        ("load", 12, 24),
        ("add", 20, 23),
        ("conv", 24, 32),
        ("add", 32, 35),
        ("store", 35, 37),
    )
    report = layer_report(run(result))
    # load 12 + 12 = 24 > conv 8 + 8 = 16 > add 3 + 3 = 6 > store 2
    assert busy(report) == {"load": 24, "conv": 16, "add": 6, "store": 2}
    assert figures(report) == {
        "A": 16,
        "B": 6,
        "A+B": 22,
        "law": 19.0,  # 16 + 6 / 2
        "fused": 37,
        "overlapped": 0,  # add [20,23) falls between conv [12,20) and [24,32)
        "hidden": 0.0,
        "bound": 24,
        "unit": "load",
    }


def test_no_overlap():
    """Strictly one after the other: nothing hidden, fused = A + B, nothing saved."""
    result = sim(("conv", 0, 10), ("add", 10, 15), ("conv", 15, 25), ("add", 25, 30))
    report = layer_report(run(result))
    assert figures(report) == {
        "A": 20,
        "B": 10,
        "A+B": 30,
        "law": 25.0,  # 20 + 10 / 2
        "fused": 30,
        "overlapped": 0,  # add [10,15) ends where conv [15,25) starts 0 cycles later
        "hidden": 0.0,
        "bound": 20,
        "unit": "conv",
    }


def test_touching_intervals_do_not_overlap():
    """[0,10) and [10,14) share no cycle."""
    result = sim(("conv", 0, 10), ("add", 10, 14))
    assert overlap_cycles(result, "add", "conv") == 0
    assert layer_report(run(result, n_tiles=1)).add_hidden == 0.0


def test_full_overlap():
    """Every add cycle falls inside the one long conv: hidden 100 %."""
    result = sim(("conv", 0, 20), ("add", 2, 6), ("add", 10, 14))
    report = layer_report(run(result))
    assert figures(report) == {
        "A": 20,
        "B": 8,
        "A+B": 28,
        "law": 24.0,
        "fused": 20,
        "overlapped": 8,  # 4 + 4
        "hidden": 1.0,
        "bound": 20,  # fused meets the bound
        "unit": "conv",
    }


def test_an_add_across_two_convs_counts_both_parts():
    """Add [5,15) against conv [0,10) and [12,20): 5 cycles under the first, 3 under the second."""
    result = sim(("conv", 0, 10), ("conv", 12, 20), ("add", 5, 15), ("add", 20, 22))
    report = layer_report(run(result))
    # B = 10 + 2 = 12; overlap = |[5,10)| + |[12,15)| = 5 + 3 = 8; A = 10 + 8 = 18
    assert (report.conv_cycles, report.add_cycles, report.add_overlapped) == (18, 12, 8)
    assert report.add_hidden == pytest.approx(8 / 12)
    assert report.law_cycles == 24.0  # 18 + 12 / 2
    assert report.ideal_serial_cycles == 30  # 18 + 12
    # both units busy at once is symmetric
    assert overlap_cycles(result, "conv", "add") == 8


def test_zero_add_cycles():
    """No add work (or only empty add events): B = 0, nothing to hide, the law is A."""
    for result in (
        sim(("conv", 0, 10), ("conv", 10, 16)),
        sim(("conv", 0, 10), ("add", 5, 5), ("conv", 10, 16)),
    ):
        report = layer_report(run(result, n_tiles=2))
        assert figures(report) == {
            "A": 16,
            "B": 0,
            "A+B": 16,
            "law": 16.0,
            "fused": 16,
            "overlapped": 0,
            "hidden": 0.0,
            "bound": 16,
            "unit": "conv",
        }


def test_the_law_divides_by_the_tiles_that_hold_output():
    """N = 3 on a 4-row output: tiles of ceil(4 / 3) = 2 rows, so only 2 tiles exist."""
    small = Workload(1, 8, 4, 4, 8, 3, 3, padding=(1, 1, 1, 1))
    result = sim(("conv", 0, 10), ("conv", 10, 20), ("add", 10, 16), ("add", 20, 26))
    report = layer_report(run(result, n_tiles=3, workload=small))
    assert report.tiles == 2
    assert report.law_cycles == 26.0  # B = 6 + 6: 20 + 12 / 2, not 20 + 12 / 3 = 24
    assert report.config == "N=3 height software"


def test_the_law_divides_by_the_grid_tiles_that_hold_output():
    """A 3 x 3 grid on a 4-row, 8-channel output: 2 row tiles (2 rows each) by 3 channel tiles
    (3, 3 and 2 channels) hold output, so N = 6."""
    small = Workload(1, 8, 4, 4, 8, 3, 3, padding=(1, 1, 1, 1))
    config = TileConfig(3, "height", "software", channel_tiles=3)
    result = sim(("conv", 0, 10), ("conv", 10, 20), ("add", 10, 16), ("add", 20, 26))
    report = layer_report(run(result, workload=small, config=config))
    assert report.tiles == 6
    assert report.law_cycles == 22.0  # 20 + 12 / 6
    assert report.config == "N=3 height x 3ch spatial_outer software"
    channel_outer = replace(config, order="channel_outer", pipeline="vthread")
    label = layer_report(run(result, workload=small, config=channel_outer)).config
    assert label == "N=3 height x 3ch channel_outer vthread"


def three_layers() -> list[LayerRun]:
    return [
        # A 20, B 8, overlapped 4, fused 24, bound 20 (conv)
        run(sim(("conv", 0, 10), ("conv", 10, 20), ("add", 10, 14), ("add", 20, 24)), 2),
        # A 30, B 2, overlapped 0, fused 32, bound 30 (conv), N = 1
        run(sim(("conv", 0, 30), ("add", 30, 32)), 1, symbol="second"),
        # A 16, B 0, load 20, fused 20, bound 20 (load)
        run(sim(("load", 0, 20), ("conv", 4, 20)), 4, symbol="third"),
    ]


def test_network_totals():
    report = network_report(RunRecorder(runs=three_layers()))
    assert [layer.symbol for layer in report.layers] == [
        "fused_conv2d_add_convadd",
        "second",
        "third",
    ]
    assert report.total("conv_cycles") == 66  # 20 + 30 + 16
    assert report.total("add_cycles") == 10  # 8 + 2 + 0
    assert report.ideal_serial_cycles == 76  # 28 + 32 + 16
    assert report.fused_cycles == 76  # 24 + 32 + 20
    assert report.unfused_cycles is None  # not asked for
    assert report.total("add_overlapped") == 4
    assert report.conv_idle == UnitIdle(4, 0, 6)  # heads 0 + 0 + 4, tails 4 + 2 + 0
    assert sum(layer.law_cycles for layer in report.layers) == 72.0  # 24 + 32 + 16
    # the network bound sums each unit over the layers, then takes the busiest: conv's 66,
    # not the sum of the layers' own bounds 20 + 30 + 20 = 70
    assert busy(report) == {"load": 20, "conv": 66, "add": 10}
    assert report.bound_cycles == 66
    assert report.total("bound_cycles") == 70
    # weighted by each layer's add: 4 / 10, not the mean of 50 %, 0 % and 0 %
    assert report.add_hidden == pytest.approx(0.4)


def test_the_conv_units_idle_cycles_add_up_to_the_layer():
    """Conv [2,5) [8,12) in 15 cycles: it waits 2 before, 3 between, 3 after; 7 busy + 8."""
    result = sim(("load", 0, 2), ("conv", 2, 5), ("load", 2, 8), ("conv", 8, 12), ("add", 12, 15))
    report = layer_report(run(result))
    idle = report.conv_idle
    assert (idle.head, idle.stall, idle.tail, idle.total) == (2, 3, 3, 8)
    assert report.conv_cycles + idle.total == report.fused_cycles
    assert result.idle("add") == UnitIdle(12, 0, 0)  # another unit: its own waits
    assert result.idle("store").head == 15  # a unit that never ran waited all along


def test_network_table_shows_the_hand_computed_figures():
    table = network_report(RunRecorder(runs=three_layers())).table()
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["#", "layer"]
    rows = [line.split() for line in lines[2:5]]
    # unfused, per-op (not asked for: "-"), fused, f/unf, bound, its unit, fused / bound, the
    # Conv unit's head, stall and tail, then the ideal-machine law: A, B, A+B, A+B/N, hidden
    assert [row[-16:] for row in rows] == [
        ["-", "-", "24", "-", "20", "conv", "1.200", "0", "0", "4", "|", "20", "8", "28", "24",
         "50%"],
        ["-", "-", "32", "-", "30", "conv", "1.067", "0", "0", "2", "|", "30", "2", "32", "32",
         "0%"],
        ["-", "-", "20", "-", "20", "load", "1.000", "4", "0", "0", "|", "16", "0", "16", "16",
         "0%"],
    ]  # fmt: skip
    assert [row[0] for row in rows] == ["0", "1", "2"]
    assert rows[0][-20:-16] == ["N=2", "height", "software", "heuristic"]
    total = lines[6].split()
    assert total[:3] == ["total", "(3", "layers)"]
    assert total[-16:] == [
        "-",
        "-",
        "76",
        "-",
        "66",
        "conv",
        "1.152",
        "4",  # the third layer's conv waits 4 cycles for its first load
        "0",
        "6",  # the first two layers' last adds: 4 + 2
        "|",
        "66",
        "10",
        "76",
        "72",
        "40%",
    ]
    # 76 / 66 = 1.1515 of the bound, 76 / 76 of A + B
    assert lines[7] == (
        "fused (unfused baseline not computed: run --baseline, or network_report(..., "
        "baseline=True)): 1.152x the network bound (busiest: conv); ideal-machine law (A+B, DMA "
        "free): 1.000x A+B"
    )
    assert lines[8].startswith("unfused: conv kernel, then the epilogue chain")
    assert len(lines) == 9


def kernel(name: str, cycles: int) -> KernelRun:
    return KernelRun(name, "by hand", Program(streams={}, buffers={}, tensors={}),
                     sim(("add", 0, cycles)))  # fmt: skip


def baseline(conv: int, chain: int, *per_op: int) -> UnfusedBaseline:
    ops = tuple(kernel(f"op{i}", cycles) for i, cycles in enumerate(per_op))
    return UnfusedBaseline(WORKLOAD, kernel("conv", conv), (kernel("chain", chain),), ops)


def with_baselines() -> NetworkReport:
    """three_layers with unfused kernels: conv 22 + chain 10 (per-op 6 + 7 + 8), conv 30 +
    chain 1 (per-op 2), conv 16 + chain 5 (per-op 5 + 6)."""
    baselines = [baseline(22, 10, 6, 7, 8), baseline(30, 1, 2), baseline(16, 5, 5, 6)]
    return NetworkReport(
        tuple(layer_report(r, b) for r, b in zip(three_layers(), baselines, strict=True))
    )


def test_the_unfused_baseline_leads_the_table():
    report = with_baselines()
    assert [layer.unfused_cycles for layer in report.layers] == [32, 31, 21]
    assert [layer.unfused_per_op_cycles for layer in report.layers] == [43, 32, 27]
    assert (report.unfused_cycles, report.unfused_per_op_cycles) == (84, 102)
    assert report.fused_wins == 2  # 24 < 32, 32 > 31, 20 < 21
    lines = report.table().splitlines()
    rows = [line.split()[-16:-11] for line in lines[2:5]]
    # unfused, per-op, fused, fused / unfused, bound
    assert rows == [
        ["32", "43", "24", "0.750", "20"],
        ["31", "32", "32", "1.032", "30"],
        ["21", "27", "20", "0.952", "20"],
    ]
    assert lines[6].split()[-16:-11] == ["84", "102", "76", "0.905", "66"]
    # 76 / 84 = 0.9048, 76 / 102 = 0.7451, 76 / 66 = 1.1515, 76 / 76
    assert lines[7] == (
        "fused: 0.905x unfused (faster on 2 of 3 layers), 0.745x unfused per-op, 1.152x the "
        "network bound (busiest: conv); ideal-machine law (A+B, DMA free): 1.000x A+B"
    )


def test_the_baseline_table_lists_each_distinct_layers_kernels():
    report = with_baselines()  # three layers of one shape: one row
    lines = report.baseline_table().splitlines()
    assert lines[0].split()[:3] == ["layer", "conv", "kernel"]
    assert len(lines) == 3
    assert lines[2].split()[-12:] == [
        "by", "hand", "22", "by", "hand", "10", "op0", "6,", "op1", "7,", "op2", "8",
    ]  # fmt: skip
    assert "not computed" in network_report(RunRecorder(runs=three_layers())).baseline_table()


def test_the_dram_channel_can_be_the_bound():
    """Loads on two queues overlap, but their bytes share one channel busy for 30 cycles."""
    first = run(sim(("load", 0, 12), ("conv", 12, 20), ("store", 20, 30), dram=30), 1)
    second = run(sim(("conv", 0, 25), dram=4), 1)
    report = network_report(RunRecorder(runs=[first, second]))
    assert [(layer.bound_cycles, layer.bound_unit) for layer in report.layers] == [
        (30, "dram"),
        (25, "conv"),
    ]
    # summed over the layers: dram 30 + 4 = 34 > conv 8 + 25 = 33
    assert (report.bound_cycles, report.bound_unit) == (34, "dram")


def test_network_report_takes_a_session_or_a_recorder():
    """A build's session after net.run and a recording() block give the same report."""
    runs = three_layers()
    session = OffloadSession(CodegenOptions(), load_config("default"), runs=list(runs))
    from_session = network_report(session)
    assert from_session == network_report(RunRecorder(runs=runs))
    assert isinstance(from_session, NetworkReport)
    # one kernel called twice is two rows, in call order
    twice = network_report(RunRecorder(runs=[runs[1], runs[0], runs[1]]))
    assert [layer.symbol for layer in twice.layers] == [
        "second",
        "fused_conv2d_add_convadd",
        "second",
    ]
    assert twice.fused_cycles == 32 + 24 + 32


def test_an_empty_network():
    report = network_report(RunRecorder())
    assert report.layers == ()
    assert (report.fused_cycles, report.ideal_serial_cycles, report.add_hidden) == (0, 0, 0.0)
    assert (report.unfused_cycles, report.fused_wins) == (None, None)
    assert report.bound_cycles == 0
    assert report.table() == "nothing to offload: no conv2d the accelerator can take"


@pytest.mark.parametrize(
    "config",
    [
        TileConfig(2, "height", "software"),
        TileConfig(4, "height", "software"),
        TileConfig(2, "height", "vthread", channel_tiles=2, order="channel_outer"),
    ],
    ids=str,
)
def test_a_simulated_layer_on_the_ideal_machine_meets_the_law(config):
    """End to end on the simulator: where the law is exact the report's figures agree.

    On the ideal config each of the N tiles' convs takes A/N and its add B/N, and with B <= A
    every add but the last runs under the next tile's conv: overlapped = (N - 1) B / N. DMA
    is free, so the bound is the conv's A.
    """
    hardware = load_config("ideal")
    workload = Workload(1, 64, 32, 32, 64, 1, 1)
    result = simulate(lower_to_program(workload, config, hardware), hardware, functional=False)
    layer = OffloadedLayer(
        "ideal", workload, ("data", "weight", "residual"), config, "user",
        Program(streams={}, buffers={}, tensors={}), hardware,
    )  # fmt: skip
    report = layer_report(LayerRun(layer, result))
    a, b, n_tiles = report.conv_cycles, report.add_cycles, config.total_tiles
    assert report.tiles == n_tiles
    assert b <= a and b % n_tiles == 0
    assert report.fused_cycles == report.law_cycles == a + b // n_tiles
    assert report.add_overlapped == (n_tiles - 1) * b // n_tiles
    assert report.ideal_serial_cycles == a + b
    assert (report.bound_cycles, report.bound_unit) == (a, "conv")


def one_read_engine(hardware: HardwareConfig) -> HardwareConfig:
    """`hardware` with its two read queues (load, vload) on one DMA engine."""
    data = hardware.to_dict()
    data["name"] = f"{hardware.name}-one-read-engine"
    data["dma_queues"] = [["load", "vload"], ["store"]]
    return HardwareConfig.from_dict(data)


@pytest.mark.parametrize("shared_engine", [False, True], ids=["split-queues", "one-read-engine"])
def test_a_simulated_layers_bound_is_the_simulators(shared_engine):
    """On the default machine (DMA busy, the DRAM channel shared), and with its read queues on
    one engine: the report's bound is SimResult.bound_cycles, the DRAM channel and a shared
    engine among the resources."""
    hardware = load_config("default")
    hardware = one_read_engine(hardware) if shared_engine else hardware
    config = TileConfig(2, "height", "software")
    result = simulate(lower_to_program(WORKLOAD, config, hardware), hardware, functional=False)
    report = layer_report(run(result, config=config))
    assert report.bound_cycles == result.bound_cycles
    assert report.busy["dram"] == result.dram_busy_cycles
    assert {unit: report.busy[unit] for unit in UNITS} == {
        unit: stats.busy_cycles for unit, stats in result.units.items()
    }
    if shared_engine:
        assert report.busy["load+vload"] == report.busy["load"] + report.busy["vload"]


def test_a_shared_engine_can_be_the_bound():
    """load 12 and vload 10 on one engine: 22 > conv 20, though each queue alone is below."""
    result = sim(("load", 0, 12), ("vload", 12, 22), ("conv", 2, 22))
    result = replace(result, engine_busy_cycles={"load+vload": 22})
    report = layer_report(run(result, n_tiles=1))
    assert (report.bound_cycles, report.bound_unit) == (22, "load+vload")


def test_network_report_computes_the_baseline_once_per_workload():
    """Asked for, every layer gets the unfused baseline of its workload; a repeated layer
    reuses the cached one (the same object)."""
    hardware = load_config("default")
    config = TileConfig(2, "height", "software")
    result = simulate(lower_to_program(WORKLOAD, config, hardware), hardware, functional=False)
    runs = [run(result, config=config), run(result, config=config, symbol="again")]
    plain = network_report(RunRecorder(runs=runs))
    report = network_report(RunRecorder(runs=runs), baseline=True)
    assert plain.unfused_cycles is None and report.has_baseline
    first, second = report.layers
    assert first.baseline is second.baseline is unfused_baseline(WORKLOAD, hardware)
    (chain,) = first.baseline.chain
    assert first.unfused_cycles == first.baseline.conv.cycles + chain.cycles
    assert report.unfused_cycles == 2 * first.unfused_cycles
    assert report.fused_wins == 2 * (result.total_cycles < first.unfused_cycles)


@pytest.mark.parametrize(
    "config",
    [
        TileConfig(2, "height", "software"),
        TileConfig(2, "channel", "software", reduce_tiles=2),
        TileConfig(2, "height", "software", channel_tiles=2, order="channel_outer"),
    ],
    ids=str,
)
def test_a_simulated_layers_head_is_its_first_operands_and_its_tail_the_last_epilogue(config):
    """On the default machine the Conv unit's head is the DMA time of exactly the LOADs its
    first CONV reads (the load order puts them first), and its tail the last tile's ADD then
    STORE: what no pipeline of this tiling can hide on an empty machine."""
    hardware = load_config("default")
    workload = Workload(1, 32, 16, 16, 32, 3, 3, padding=(1, 1, 1, 1),
                        epilogue=standard_epilogue(bias=True, relu=True))  # fmt: skip
    program = lower_to_program(workload, config, hardware)
    result = simulate(program, hardware, functional=False)
    idle = layer_report(run(result, config=config, workload=workload)).conv_idle
    first_conv = program.streams["conv"][0]
    operands = {(s.buffer, s.slot) for s in first_conv.reads()}
    loads = program.streams["load"]
    first = [
        inst for inst in loads[: len(operands)] if (inst.dst.buffer, inst.dst.slot) in operands
    ]
    assert len(first) == len(operands) == 2  # its input and weights, first in the queue
    assert idle.head == sum(hardware.instruction_cycles(inst, program) for inst in first)
    last_add, last_store = program.streams["add"][-1], program.streams["store"][-1]
    epilogue = [hardware.instruction_cycles(inst, program) for inst in (last_add, last_store)]
    assert idle.tail == sum(epilogue)
    assert result.units["conv"].busy_cycles + idle.total == result.total_cycles
