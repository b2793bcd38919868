"""Traces: Chrome trace events that Perfetto opens, and a readable Gantt PNG."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.handmade_programs import ConvAddShape, tiled_convadd_program
from tvm_convadd.target.hardware import load_config
from tvm_convadd.target.isa import UNITS
from tvm_convadd.target.simulator import simulate
from tvm_convadd.target.trace import (
    chrome_trace,
    plot_gantt,
    plot_session_gantt,
    session_trace,
    write_chrome_trace,
    write_session_trace,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run():
    program = tiled_convadd_program(ConvAddShape(relu=True), tiles=4)
    return program, simulate(program, load_config("default"), functional=False)


def test_one_complete_event_per_instruction(run):
    program, result = run
    trace = chrome_trace(result)
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(spans) == program.num_instructions
    for span, event in zip(spans, result.events):
        assert span["pid"] == 0 and span["tid"] == UNITS.index(event.unit)
        assert (span["ts"], span["dur"]) == (event.start, event.end - event.start)
        assert span["args"]["opcode"] == event.opcode
    assert "cycles" in trace["otherData"]["time_unit"]
    assert trace["otherData"]["total_cycles"] == result.total_cycles


def test_threads_are_named_and_ordered_by_unit(run):
    _, result = run
    meta = [e for e in chrome_trace(result)["traceEvents"] if e["ph"] == "M"]
    names = {e["tid"]: e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert names == dict(enumerate(UNITS))
    order = {e["tid"]: e["args"]["sort_index"] for e in meta if e["name"] == "thread_sort_index"}
    assert order == {tid: tid for tid in range(len(UNITS))}


def test_program_adds_operands_and_tokens(run):
    program, result = run
    spans = [e for e in chrome_trace(result, program)["traceEvents"] if e["ph"] == "X"]
    conv = next(e for e in spans if e["args"]["opcode"] == "CONV")
    assert conv["args"]["acc"].startswith("acc[0][") and conv["args"]["stride"] == [1, 1]
    assert conv["args"]["groups"] == 1
    add = next(e for e in spans if e["args"]["opcode"] == "ADD")
    assert add["args"]["wait"] == ["conv", "vload", "vload"]  # the bias, then the residual
    region = "[0:1, 0:16, 0:4, 0:16]"
    assert add["args"]["expression"] == (
        f"out[0]{region} = max(acc[0]{region} + bias[0][0:1, 0:16, 0:1, 0:1] + res[0]{region}, 0)"
    )
    assert add["args"]["ops[1].src"] == f"res[0]{region}"


def test_written_trace_is_valid_json(run, tmp_path):
    program, result = run
    path = write_chrome_trace(result, tmp_path / "trace.json", program)
    assert json.loads(path.read_text()) == json.loads(json.dumps(chrome_trace(result, program)))


@pytest.mark.parametrize("title", [None, "N=4 ping/pong"])
def test_gantt_png_is_written(run, tmp_path, title):
    _, result = run
    path = plot_gantt(result, tmp_path / "gantt.png", title=title)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def _session(count: int):
    """A stand-in for codegen's OffloadSession: layers run one after another."""
    hardware = load_config("default")
    runs = []
    for index in range(count):
        program = tiled_convadd_program(ConvAddShape(height=8 + 4 * index), tiles=2)
        layer = SimpleNamespace(symbol=f"fused_{index}", program=program, config="N=2")
        runs.append(SimpleNamespace(layer=layer, result=simulate(program, hardware, None, False)))
    return SimpleNamespace(runs=runs)


def test_session_trace_puts_layers_back_to_back(tmp_path):
    session = _session(3)
    trace = session_trace(session)
    layers = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["tid"] == len(UNITS)]
    assert [e["name"] for e in layers] == ["fused_0", "fused_1", "fused_2"]
    ends = [run.result.total_cycles for run in session.runs]
    assert [e["ts"] for e in layers] == [0, ends[0], ends[0] + ends[1]]
    assert trace["otherData"]["total_cycles"] == sum(ends)
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["tid"] < len(UNITS)]
    assert len(spans) == sum(run.layer.program.num_instructions for run in session.runs)
    assert all(e["args"]["layer"].startswith("fused_") for e in spans)
    path = write_session_trace(session, tmp_path / "net.json")
    assert json.loads(path.read_text())["otherData"]["layers"] == 3
    png = plot_session_gantt(session, tmp_path / "net.png")
    assert png.read_bytes().startswith(PNG_MAGIC)
