"""Tuner processes: Ctrl-C stops `tune` cleanly, no worker outlives a SIGKILLed tuner, and
tuners sharing a records directory never measure a config twice.

Each tuner runs in a subprocess. The subprocesses stub out `tvm.s_tir.tensor_intrin`, which
MetaSchedule's TuneContext imports only to register tensor intrinsics (this design space uses
none) and which costs 15-40 s to import; everything else is the real tuner."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest

from tvm_convadd import records
from tvm_convadd.schedules.workload import Workload

WL = Workload(1, 16, 8, 8, 16, 1, 1)  # conv1x1 16->16 @ 8x8 + residual: 51 configs
TARGET = "convadd-sim"

STUB = (
    "import sys, types\n"
    "sys.modules['tvm.s_tir.tensor_intrin'] = types.ModuleType('tvm.s_tir.tensor_intrin')\n"
)
TUNE = (
    STUB
    + """
import json
from tvm_convadd import tuner
from tvm_convadd.schedules.workload import Workload
workload, target, records_dir, options = json.loads(sys.argv[1])
result = tuner.tune_workload(
    Workload.from_dict(workload), target, records_dir=records_dir, progress=False, **options
)
print(json.dumps({"measured": result.measured}))
"""
)
CLI = STUB + "from tvm_convadd.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def start(code: str, *args: str) -> subprocess.Popen:
    """`python -c code args` in its own session, so a signal to its group reaches only it and
    its children (as Ctrl-C reaches a terminal's foreground job)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # a shell's background job (a CI runner started with `&`) ignores SIGINT, and so would
        # the child: give it the disposition an interactive terminal's job has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def tune(records_dir: Path, **options) -> subprocess.Popen:
    return start(TUNE, json.dumps([WL.to_dict(), TARGET, str(records_dir), options]))


def records_in(records_dir: Path) -> list[records.Record]:
    path = records_dir / records.RECORDS_FILE
    if not path.exists():
        return []
    kept, problems = records.load_records(path)
    assert problems == []
    return kept


def wait_until(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"tuner exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def left_after(processes: list[psutil.Process], timeout: float = 10.0) -> list[list[str]]:
    """The command lines of `processes` still alive after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not all(gone(p.pid) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p.cmdline() for p in processes if not gone(p.pid)]


def residual_onnx(path: Path) -> str:
    """relu(x) -> conv1x1 16->16 -> + x: one fused layer, the workload WL."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((16, 16, 1, 1)).astype("float32") * 0.2
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Conv", ["r", "w"], ["c"]),
            helper.make_node("Add", ["c", "x"], ["y"]),
        ],
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def test_ctrl_c_stops_tune_keeps_records_and_exits_130(tmp_path):
    records_dir = tmp_path / "records"
    argv = ["tune", residual_onnx(tmp_path / "block.onnx"), "--trials", "51"]
    proc = start(CLI, *argv, "--records", str(records_dir))
    wait_until(lambda: len(records_in(records_dir)) >= 2, proc)
    family = psutil.Process(proc.pid).children(recursive=True)  # workers, resource tracker
    assert len(family) >= 3, [p.cmdline() for p in family]
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
    _, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in re.split(r"[\r\n]", err) if "interrupted" in line]
    assert len(lines) == 1, err[-3000:]
    kept = records_in(records_dir)
    assert lines[0] == (
        f"tvm-convadd: interrupted; {len(kept)} new measurement(s) kept in "
        f"{records_dir / records.RECORDS_FILE}; resume with: tvm-convadd tune "
        f"{argv[1]} --trials 51 --records {records_dir} --target convadd-sim"
    )
    assert 2 <= len(kept) < 51  # stopped early, nothing measured twice or cut in half
    assert len({r.config for r in kept}) == len(kept)
    assert left_after(family) == []  # the pool was shut down on the way out


def test_no_worker_outlives_a_killed_tuner(tmp_path):
    proc = tune(tmp_path, trials=51, max_workers=2)
    wait_until(lambda: records_in(tmp_path), proc)  # the workers are up and measuring
    family = psutil.Process(proc.pid).children(recursive=True)
    kinds = Counter(
        "worker" if "spawn_main" in line else "tracker" if "resource_tracker" in line else line
        for line in (" ".join(p.cmdline()) for p in family)
    )
    assert kinds == {"worker": 2, "tracker": 1}
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert left_after(family) == []  # the workers and multiprocessing's resource tracker


def test_concurrent_tuners_never_measure_a_config_twice(tmp_path):
    # the same seed: both propose the same candidates, so every batch collides
    options = {"trials": 24, "max_workers": 0, "trials_per_iter": 4, "seed": 0}
    procs = [tune(tmp_path, **options) for _ in range(2)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    kept = records_in(tmp_path)
    twice = [
        key for key, n in Counter((r.workload, r.target, r.config) for r in kept).items() if n > 1
    ]
    assert twice == []
    assert len(kept) == sum(o["measured"] for o in outs)
    assert len(kept) <= 24 + 24


def test_tune_with_a_broken_records_file_is_a_one_line_error_and_keeps_it(tmp_path):
    """The cost model trains on the records directory: a file there that holds no record
    stops `tune` before any work, in one line naming it, and the file is left as it was."""
    broken = tmp_path / "notes.json"
    broken.write_bytes(b"this is not a tuning log\n")
    command = [sys.executable, "-c", STUB + "from tvm_convadd.cli import main; sys.exit(main())"]
    command += ["tune", "resnet18", "--image-size", "32", "--width", "0.25", "--trials", "2"]
    done = subprocess.run(
        [*command, "--records", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("tvm-convadd:")]
    assert done.returncode == 2 and len(errors) == 1
    assert str(broken) in errors[0] and "move the file" in errors[0]
    assert broken.read_bytes() == b"this is not a tuning log\n"
    assert not (tmp_path / records.RECORDS_FILE).exists()  # nothing measured
