"""Views of a simulation: a Chrome/Perfetto trace and a textbook pipeline (Gantt) figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tvm_convadd.target.isa import UNITS, Add, Conv

if TYPE_CHECKING:
    from tvm_convadd.target.isa import Program
    from tvm_convadd.target.simulator import SimResult

UNIT_COLORS = {
    "load": "#8c9bb0",
    "vload": "#b39ddb",
    "conv": "#2f6db5",
    "add": "#e07b24",
    "store": "#5c8f4a",
}


def chrome_trace(result: SimResult, program: Program | None = None) -> dict:
    """Trace Event Format: one "X" event per instruction, one thread per unit, ts/dur in cycles.

    With `program`, each event's args also list the operands and tokens of its instruction.
    """
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": 0, "args": {"name": result.hardware}},
    ]
    for tid, unit in enumerate(UNITS):
        events.append(
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": tid, "args": {"name": unit}}
        )
        events.append(
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": 0,
                "tid": tid,
                "args": {"sort_index": tid},
            }
        )
    tids = {unit: tid for tid, unit in enumerate(UNITS)}
    for event in result.events:
        args: dict = {"opcode": event.opcode, "index": event.index}
        if program is not None:
            inst = program.streams[event.unit][event.index]
            args.update({name: str(op) for name, op in inst.operands().items() if op is not None})
            if isinstance(inst, Conv):
                args["stride"] = list(inst.stride)
                args["groups"] = inst.groups
            if isinstance(inst, Add):
                args["expression"] = f"{inst.out} = {inst.expression()}"
            args["wait"] = list(inst.wait)
            args["signal"] = list(inst.signal)
        events.append(
            {
                "name": f"{event.opcode} #{event.index}",
                "cat": event.unit,
                "ph": "X",
                "pid": 0,
                "tid": tids[event.unit],
                "ts": event.start,
                "dur": event.end - event.start,
                "args": args,
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "time_unit": "cycles: ts and dur count accelerator cycles, not microseconds",
            "hardware": result.hardware,
            "total_cycles": result.total_cycles,
        },
    }


def write_chrome_trace(result: SimResult, path: str | Path, program: Program | None = None) -> Path:
    """Write `chrome_trace` as JSON (open it in https://ui.perfetto.dev or chrome://tracing)."""
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(result, program)))
    return path


def plot_gantt(result: SimResult, path: str | Path, title: str | None = None) -> Path:
    """A PNG with one row per unit (load, conv, add, store from the top) and a bar per instruction.

    Bars are labelled with the instruction index when wide enough, so tile i can be followed
    from the Conv row to the Add row: the add of tile i hides under the conv of tile i + 1.
    """
    heading = title or f"{result.hardware}: {result.total_cycles} cycles"
    busy = {unit: stats.busy_cycles for unit, stats in result.units.items()}
    return _draw_gantt(result.events, result.total_cycles, busy, path, heading, boundaries=())


def session_trace(session) -> dict:
    """One Chrome trace of every layer a network run simulated, back to back in call order.

    `session` is a `tvm_convadd.codegen.OffloadSession`: its `runs` hold (layer, result).
    A fifth thread shows which layer each stretch of cycles belongs to.
    """
    events: list[dict] = []
    offset = 0
    layer_tid = len(UNITS)
    for run in session.runs:
        trace = chrome_trace(run.result, run.layer.program)
        if not events:
            events += [e for e in trace["traceEvents"] if e["ph"] == "M"]
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": 0,
                    "tid": layer_tid,
                    "args": {"name": "layer"},
                }
            )
        for event in trace["traceEvents"]:
            if event["ph"] == "X":
                event["ts"] += offset
                event["args"]["layer"] = run.layer.symbol
                events.append(event)
        events.append(
            {
                "name": run.layer.symbol,
                "ph": "X",
                "pid": 0,
                "tid": layer_tid,
                "ts": offset,
                "dur": run.result.total_cycles,
                "args": {"config": str(run.layer.config)},
            }
        )
        offset += run.result.total_cycles
    hardware = session.runs[0].result.hardware if session.runs else ""
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "time_unit": "cycles: ts and dur count accelerator cycles, not microseconds",
            "hardware": hardware,
            "total_cycles": offset,
            "layers": len(session.runs),
        },
    }


def write_session_trace(session, path: str | Path) -> Path:
    """Write `session_trace` as JSON for Perfetto."""
    path = Path(path)
    path.write_text(json.dumps(session_trace(session)))
    return path


def plot_session_gantt(session, path: str | Path, title: str | None = None) -> Path:
    """The Gantt chart of a whole network run: layers back to back, dotted lines between them."""
    events, busy, boundaries, offset = [], dict.fromkeys(UNITS, 0), [], 0
    for run in session.runs:
        for event in run.result.events:
            events.append(event._replace(start=event.start + offset, end=event.end + offset))
        for unit, stats in run.result.units.items():
            busy[unit] += stats.busy_cycles
        offset += run.result.total_cycles
        boundaries.append(offset)
    hardware = session.runs[0].result.hardware if session.runs else ""
    heading = title or f"{hardware}: {len(session.runs)} layers, {offset} cycles"
    return _draw_gantt(events, offset, busy, path, heading, boundaries=boundaries[:-1])


def _draw_gantt(events, total_cycles: int, busy: dict, path, title: str, boundaries) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    total = max(total_cycles, 1)
    rows = {unit: [] for unit in UNITS}
    for event in events:
        rows[event.unit].append(event)

    fig, ax = plt.subplots(figsize=(11, 3.4), dpi=150)
    height = 0.7
    min_label_width = total / 60
    for row, unit in enumerate(UNITS):
        y = len(UNITS) - 1 - row
        spans = [(e.start, max(e.end - e.start, total / 2000)) for e in rows[unit]]
        ax.broken_barh(
            spans,
            (y - height / 2, height),
            facecolors=UNIT_COLORS[unit],
            edgecolors="white",
            linewidth=0.6 if len(spans) <= 200 else 0,
        )
        if len(rows[unit]) <= 64:
            for event in rows[unit]:
                if event.end - event.start >= min_label_width:
                    ax.text(
                        (event.start + event.end) / 2,
                        y,
                        str(event.index),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white",
                    )
        ax.text(
            total * 1.01,
            y,
            f"{100 * busy.get(unit, 0) / total:.0f}% busy",
            va="center",
            fontsize=8,
            color="#444444",
        )
    for boundary in boundaries:
        ax.axvline(boundary, color="#999999", linewidth=0.5, linestyle=":")
    ax.set_yticks(range(len(UNITS)))
    ax.set_yticklabels([unit.upper() for unit in reversed(UNITS)])
    ax.set_ylim(-0.6, len(UNITS) - 0.4)
    ax.set_xlim(0, total * 1.1)
    ax.set_xlabel("cycles")
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.axvline(total_cycles, color="#aa2222", linewidth=0.8, linestyle="--")
    ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
