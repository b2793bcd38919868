"""report.py's figures on SimResults written by hand: every expected number is worked out here.

A layer's A and B are the Conv and Add units' busy cycles, A + B the unfused cost, A + B/N the
law for N tiles, fused the simulated total, saved = A + B - fused, overlapped the Add cycles
during which the Conv unit was busy too and hidden = overlapped / B.
"""

from __future__ import annotations

from collections import Counter

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
from tvm_convadd.target.hardware import load_config
from tvm_convadd.target.isa import UNITS, Program
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.simulator import Event, SimResult, UnitStats, simulate

# 8x8 output: 2 tiles along the height hold 4 rows each
WORKLOAD = Workload(
    1, 8, 8, 8, 8, 3, 3, padding=(1, 1, 1, 1), epilogue=standard_epilogue(bias=True, relu=True)
)


def sim(*spans: tuple[str, int, int], total: int | None = None) -> SimResult:
    """A SimResult with one event per (unit, start, end); each unit's busy cycles are the sum of
    its events' lengths (what the simulator counts), the total the last end unless given."""
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
    return SimResult(total, units, tuple(events), None, "by hand", {})


def run(
    result: SimResult,
    n_tiles: int = 2,
    serial: int = 0,
    symbol: str = "fused_conv2d_add_convadd",
    workload: Workload = WORKLOAD,
    source: str = "heuristic",
) -> LayerRun:
    layer = OffloadedLayer(
        symbol=symbol,
        workload=workload,
        roles=("data", "weight", "bias", "residual"),
        config=TileConfig(n_tiles, "height", "software"),
        config_source=source,
        program=Program(streams={}, buffers={}, tensors={}),
        serial_cycles=serial,
        hardware=load_config("default"),
    )
    return LayerRun(layer, result)


def figures(report) -> dict:
    return {
        "A": report.conv_cycles,
        "B": report.add_cycles,
        "A+B": report.unfused_cycles,
        "law": report.law_cycles,
        "fused": report.fused_cycles,
        "saved": report.saved_cycles,
        "overlapped": report.add_overlapped,
        "hidden": report.add_hidden,
        "serial": report.serial_cycles,
    }


def test_the_issue_example():
    """Conv [0,10) [10,20), Add [10,14) [20,24): the first add runs under the second conv."""
    result = sim(("conv", 0, 10), ("conv", 10, 20), ("add", 10, 14), ("add", 20, 24))
    report = layer_report(run(result, n_tiles=2, serial=28))
    # A = 10 + 10, B = 4 + 4, overlap = |[10,14) & [10,20)| + |[20,24) & conv| = 4 + 0
    assert figures(report) == {
        "A": 20,
        "B": 8,
        "A+B": 28,
        "law": 24.0,  # 20 + 8 / 2
        "fused": 24,
        "saved": 4,  # 28 - 24
        "overlapped": 4,
        "hidden": 0.5,  # 4 / 8
        "serial": 28,
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
    report = layer_report(run(result, serial=40))
    # A = 20, B = 8, overlap: add [13,17) under conv [13,23) = 4; add [23,27) = 0
    assert figures(report) == {
        "A": 20,
        "B": 8,
        "A+B": 28,
        "law": 24.0,
        "fused": 30,
        "saved": -2,  # 28 - 30: the DMA costs more than the pipeline saves
        "overlapped": 4,
        "hidden": 0.5,
        "serial": 40,
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
        "saved": 0,
        "overlapped": 0,  # add [10,15) ends where conv [15,25) starts 0 cycles later
        "hidden": 0.0,
        "serial": 0,
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
        "saved": 8,
        "overlapped": 8,  # 4 + 4
        "hidden": 1.0,
        "serial": 0,
    }


def test_an_add_across_two_convs_counts_both_parts():
    """Add [5,15) against conv [0,10) and [12,20): 5 cycles under the first, 3 under the second."""
    result = sim(("conv", 0, 10), ("conv", 12, 20), ("add", 5, 15), ("add", 20, 22))
    report = layer_report(run(result))
    # B = 10 + 2 = 12; overlap = |[5,10)| + |[12,15)| = 5 + 3 = 8; A = 10 + 8 = 18
    assert (report.conv_cycles, report.add_cycles, report.add_overlapped) == (18, 12, 8)
    assert report.add_hidden == pytest.approx(8 / 12)
    assert report.law_cycles == 24.0  # 18 + 12 / 2
    assert report.saved_cycles == 30 - 22
    # both units busy at once is symmetric
    assert overlap_cycles(result, "conv", "add") == 8


def test_zero_add_cycles():
    """No add work (or only empty add events): B = 0, nothing to hide, the law is A."""
    for result in (
        sim(("conv", 0, 10), ("conv", 10, 16)),
        sim(("conv", 0, 10), ("add", 5, 5), ("conv", 10, 16)),
    ):
        report = layer_report(run(result, n_tiles=2, serial=16))
        assert figures(report) == {
            "A": 16,
            "B": 0,
            "A+B": 16,
            "law": 16.0,
            "fused": 16,
            "saved": 0,
            "overlapped": 0,
            "hidden": 0.0,
            "serial": 16,
        }


def test_the_law_divides_by_the_tiles_that_hold_output():
    """N = 3 on a 4-row output: tiles of ceil(4 / 3) = 2 rows, so only 2 tiles exist."""
    small = Workload(1, 8, 4, 4, 8, 3, 3, padding=(1, 1, 1, 1))
    result = sim(("conv", 0, 10), ("conv", 10, 20), ("add", 10, 16), ("add", 20, 26))
    report = layer_report(run(result, n_tiles=3, workload=small))
    assert report.tiles == 2
    assert report.law_cycles == 26.0  # B = 6 + 6: 20 + 12 / 2, not 20 + 12 / 3 = 24
    assert report.config == "N=3 height software"


def three_layers() -> list[LayerRun]:
    return [
        # A 20, B 8, overlapped 4, fused 24, serial 30
        run(sim(("conv", 0, 10), ("conv", 10, 20), ("add", 10, 14), ("add", 20, 24)), 2, 30),
        # A 30, B 2, overlapped 0, fused 32, serial 32, N = 1
        run(sim(("conv", 0, 30), ("add", 30, 32)), 1, 32, symbol="second"),
        # A 16, B 0, fused 16, serial 16
        run(sim(("conv", 0, 16)), 4, 16, symbol="third"),
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
    assert report.unfused_cycles == 76  # 28 + 32 + 16
    assert report.fused_cycles == 72  # 24 + 32 + 16
    assert report.serial_cycles == 78  # 30 + 32 + 16
    assert report.total("saved_cycles") == 4  # 4 + 0 + 0
    assert report.total("add_overlapped") == 4
    assert sum(layer.law_cycles for layer in report.layers) == 72.0  # 24 + 32 + 16
    # weighted by each layer's add: 4 / 10, not the mean of 50 %, 0 % and 0 %
    assert report.add_hidden == pytest.approx(0.4)


def test_network_table_shows_the_hand_computed_figures():
    table = network_report(RunRecorder(runs=three_layers())).table()
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["#", "layer"]
    rows = [line.split() for line in lines[2:5]]
    # A, B, A+B, A+B/N, fused, saved, hidden, serial: the last eight columns
    assert [row[-8:] for row in rows] == [
        ["20", "8", "28", "24", "24", "4", "50%", "30"],
        ["30", "2", "32", "32", "32", "0", "0%", "32"],
        ["16", "0", "16", "16", "16", "0", "0%", "16"],
    ]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    assert rows[0][-11:-8] == ["height", "software", "heuristic"]
    assert lines[6].split()[:3] == ["total", "(3", "layers)"]
    assert lines[6].split()[-8:] == ["66", "10", "76", "72", "72", "4", "40%", "78"]
    # 76 / 72 = 1.0556 over A + B, 78 / 72 = 1.0833 over the same tiles serial
    assert lines[7].startswith("speed-up of fused + pipelined: 1.056x over A + B, 1.083x over")
    assert len(lines) == 8


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
    assert (report.fused_cycles, report.unfused_cycles, report.add_hidden) == (0, 0, 0.0)
    assert report.table() == "nothing to offload: no conv2d + add the accelerator can take"


@pytest.mark.parametrize("n_tiles", [2, 4])
def test_a_simulated_layer_on_the_ideal_machine_meets_the_law(n_tiles):
    """End to end on the simulator: where the law is exact the report's figures agree.

    On the ideal config each tile's conv takes A/N and its add B/N, and with B <= A every add
    but the last runs under the next tile's conv: overlapped = (N - 1) B / N.
    """
    hardware = load_config("ideal")
    workload = Workload(1, 64, 32, 32, 64, 1, 1)
    config = TileConfig(n_tiles, "height", "software")
    result = simulate(lower_to_program(workload, config, hardware), hardware, functional=False)
    layer = OffloadedLayer(
        "ideal", workload, ("data", "weight", "residual"), config, "user",
        Program(streams={}, buffers={}, tensors={}), 0, hardware,
    )  # fmt: skip
    report = layer_report(LayerRun(layer, result))
    a, b = report.conv_cycles, report.add_cycles
    assert b <= a and b % n_tiles == 0
    assert report.fused_cycles == report.law_cycles == a + b // n_tiles
    assert report.add_overlapped == (n_tiles - 1) * b // n_tiles
    assert report.saved_cycles == b - b // n_tiles
