"""Differential fuzzing, the long run: random conv+add workloads, tile configs and hardware,
lowered, simulated and compared with torch (float64).

Each case is drawn from numpy's RNG (case i from seed [S, i], so any case can be redrawn
alone) by the same generator as tests/test_fuzz.py (tests/fuzz_cases.py), and checked by the
same `check_case`. Prints a table: cases, wrong answers, crashes (unexpected exceptions),
and the count of each documented error (TileConfigError for a tile count above the axis
extent, BufferOverflowError, UnsupportedWorkloadError). Crashes and wrong answers are grouped
into classes (exception type, where it was raised, the message with its numbers blanked); for
each class it prints the first few messages and a reproducer shrunk greedily (smaller dims,
stride 1, no padding, N=1, the default hardware, ... while the class stays the same).
Exit code 0 only with no wrong answer and no crash. Needs torch (the `test` extra).

    python benchmarks/fuzz.py --cases 300 [--seed 0] [--shrink-runs 200] [--messages 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/fuzz.py` puts only benchmarks/ on the path

from tests.fuzz_cases import (  # noqa: E402
    Case,
    RngChooser,
    WrongAnswer,
    check_case,
    draw_case,
)
from tvm_convadd.errors import UnsupportedWorkloadError  # noqa: E402
from tvm_convadd.schedules.tile_config import AXES, LINE_PIPELINES, PIPELINES  # noqa: E402
from tvm_convadd.schedules.workload import Workload  # noqa: E402
from tvm_convadd.target.hardware import HardwareConfig, list_configs, load_config  # noqa: E402

DOCUMENTED_NAMES = ("TileConfigError", "BufferOverflowError", "UnsupportedWorkloadError")


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok", "documented", "wrong", "crash"
    label: str  # the documented error's name, or the failure's class
    message: str = ""


def _origin(err: BaseException) -> str:
    """Where `err` was raised: the innermost frame in the project's own code (not tests/)."""
    frames = traceback.extract_tb(err.__traceback__)
    own = [
        f
        for f in frames
        if str(ROOT) in str(Path(f.filename).resolve())
        and "/tests/" not in f.filename
        and "/benchmarks/" not in f.filename
    ]
    if isinstance(err, WrongAnswer):
        own = [f for f in frames if f.filename.endswith("fuzz_cases.py")]
    frame = (own or frames)[-1]
    path = Path(frame.filename)
    return f"{path.parent.name}/{path.name}:{frame.lineno} ({frame.name})"


def _pattern(message: str) -> str:
    """The message's first line with every number blanked: the same bug, different shapes."""
    first = message.splitlines()[0] if message else ""
    return re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", first)[:60]


def run(case: Case) -> Outcome:
    try:
        documented = check_case(case)
    except WrongAnswer as err:
        return Outcome("wrong", f"wrong answer at {_origin(err)}", str(err))
    except Exception as err:
        name = type(err).__name__
        return Outcome("crash", f"{name} at {_origin(err)}: {_pattern(str(err))}", str(err))
    if documented is None:
        return Outcome("ok", "ok")
    return Outcome("documented", documented)


# -- greedy shrinking ---------------------------------------------------------------------


def _smaller(value: int, low: int) -> list[int]:
    return sorted({low, (value + low) // 2, value - 1} - {value}) if value > low else []


def _retarget(case: Case, workload: Workload, axis: str) -> Case:
    """`case` on another workload or axis, its tile count kept valid (or kept too big)."""
    config = replace(case.config, axis=axis)
    old, new = case.config.axis_extent(case.workload), config.axis_extent(workload)
    n = case.config.n_tiles
    n = min(n, new) if n <= old else new + (n - old)
    return replace(case, workload=workload, config=replace(config, n_tiles=n))


def _workload_variants(w: Workload):
    data = w.to_dict()
    for key in ("batch", "in_channels", "out_channels", "in_height", "in_width"):
        for value in _smaller(data[key], 1):
            yield {**data, key: value}
    for key in ("kernel_h", "kernel_w"):
        for value in _smaller(data[key], 1):
            yield {**data, key: value}
    for axis in range(2):
        for value in _smaller(w.stride[axis], 1):
            yield {
                **data,
                "stride": tuple(value if i == axis else s for i, s in enumerate(w.stride)),
            }
    for side in range(4):
        for value in _smaller(w.padding[side], 0):
            pad = tuple(value if i == side else p for i, p in enumerate(w.padding))
            yield {**data, "padding": pad}
    for index in range(len(w.epilogue)):  # drop one epilogue op at a time
        yield {**data, "epilogue": data["epilogue"][:index] + data["epilogue"][index + 1 :]}
    if w.groups > 1:  # fewer groups, where the channels still divide
        for groups in _smaller(w.groups, 1):
            if w.in_channels % groups == 0 and w.out_channels % groups == 0:
                yield {**data, "groups": groups}


def _hardware_variants(hw: HardwareConfig):
    default = load_config("default")
    if hw == default:
        return
    yield default
    if hw.name in list_configs() and hw == load_config(hw.name):
        return
    data, base = hw.to_dict(), default.to_dict()
    for key, value in data.items():
        if key == "buffer_bytes":
            for name, size in value.items():
                if size != base[key][name]:
                    yield HardwareConfig.from_dict({**data, key: {**value, name: base[key][name]}})
        elif key not in ("name", "description") and value != base[key]:
            yield HardwareConfig.from_dict({**data, key: base[key]})


def _simpler(case: Case):
    """Candidate cases one step simpler than `case`, the likeliest wins first."""
    for data in _workload_variants(case.workload):
        try:
            workload = Workload.from_dict(data)
        except UnsupportedWorkloadError:  # the kernel no longer fits
            continue
        yield _retarget(case, workload, case.config.axis)
    config = case.config
    for n in _smaller(config.n_tiles, 1):
        yield replace(case, config=replace(config, n_tiles=n))
    for channels in _smaller(config.channel_tiles, 1):
        if channels > 1 or config.pipeline in LINE_PIPELINES:  # streamed weights need a grid
            yield replace(case, config=replace(config, channel_tiles=channels))
    for pipeline in PIPELINES[: PIPELINES.index(config.pipeline)]:
        yield replace(case, config=replace(config, pipeline=pipeline))
    for axis in AXES[: AXES.index(config.axis)]:
        yield _retarget(case, case.workload, axis)
    for hardware in _hardware_variants(case.hardware):
        yield replace(case, hardware=hardware)
    if case.seed:
        yield replace(case, seed=0)


def shrink(case: Case, label: str, budget: int) -> tuple[Case, Outcome, int]:
    """Greedily simplify `case` while its outcome keeps `label`; at most `budget` runs."""
    seen: set = set()
    runs, outcome = 0, None
    improved = True
    while improved and runs < budget:
        improved = False
        for candidate in _simpler(case):
            key = repr(candidate)
            if key in seen:
                continue
            seen.add(key)
            if runs >= budget:
                break
            runs += 1
            result = run(candidate)
            if result.label == label:
                case, outcome, improved = candidate, result, True
                break
    return case, outcome or run(case), runs


# -- the run ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shrink-runs", type=int, default=200, help="per failure class")
    parser.add_argument("--messages", type=int, default=3, help="messages shown per class")
    args = parser.parse_args(argv)

    outcomes: list[tuple[int, Case, Outcome]] = []
    seconds: list[float] = []
    counts: Counter = Counter()
    bar = tqdm(range(args.cases), unit="case")
    try:
        for index in bar:
            case = draw_case(RngChooser(np.random.default_rng([args.seed, index])))
            start = time.perf_counter()
            outcome = run(case)
            seconds.append(time.perf_counter() - start)
            outcomes.append((index, case, outcome))
            counts[outcome.kind] += 1
            bar.set_postfix(wrong=counts["wrong"], crashes=counts["crash"], refresh=False)
    except KeyboardInterrupt:
        print(f"\ninterrupted after {len(outcomes)} cases", file=sys.stderr)
    bar.close()

    documented = Counter(o.label for _, _, o in outcomes if o.kind == "documented")
    classes: dict[str, list[tuple[int, Case, Outcome]]] = {}
    for item in outcomes:
        if item[2].kind in ("wrong", "crash"):
            classes.setdefault(item[2].label, []).append(item)

    rows = [
        ("cases", len(outcomes)),
        ("ran and matched torch", counts["ok"]),
        ("wrong answers", counts["wrong"]),
        ("crashes (unexpected exceptions)", counts["crash"]),
        *((f"documented: {name}", documented[name]) for name in DOCUMENTED_NAMES),
        ("failure classes", len(classes)),
    ]
    if seconds:
        rows.append(
            (
                "seconds per case (mean / median / max)",
                f"{statistics.mean(seconds):.3f} / {statistics.median(seconds):.3f} / "
                f"{max(seconds):.3f}",
            )
        )
    print(f"\nseed {args.seed}\n\n| quantity | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")

    ordered = sorted(classes.items(), key=lambda item: -len(item[1]))
    if ordered:
        print("\nreproducers run from the repo root after `from tests.fuzz_cases import *`")
    for number, (label, items) in enumerate(ordered, 1):
        kind = items[0][2].kind
        print(f"\n## {kind} class {number}: {len(items)} case(s): {label}")
        for index, _, outcome in items[: args.messages]:
            print(f"  case {index}: {outcome.message.splitlines()[0][:300]}")
        first_index, first, _ = items[0]
        small, outcome, runs = shrink(first, label, args.shrink_runs)
        print(f"  reproducer (case {first_index} shrunk in {runs} runs):")
        for line in small.repro().splitlines():
            print(f"    {line}")
        print(f"  -> {outcome.message.splitlines()[0][:300]}")
    return 0 if not classes else 1


if __name__ == "__main__":
    sys.exit(main())
