"""Tuning through a TVM RPC tracker: wall time with 2 measurement servers against 1.

Starts a tracker and three `python -m tvm_convadd.rpc server`s on localhost (two under one
key, one under another) and tunes ResNet-50's four conv + residual-add layers (one per stage,
the adds the project fuses) with the pair and with the single server in turn; the local
process pool is the reference row. Every run starts from empty records with the same seed, so
all measure the same configs (checked). The servers lower and simulate; this process runs
MetaSchedule and XGBoost.

    python benchmarks/rpc_scaling.py [--trials 32] [--layers 4] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tvm_convadd import records, rpc, tuner
from tvm_convadd.schedules.workload import Workload

KEY = "convadd-bench"
LAYERS = (  # ResNet-50 at 224x224: each stage's 1x1 expansion conv, whose output the add takes
    Workload(1, 64, 56, 56, 256, 1, 1),
    Workload(1, 128, 28, 28, 512, 1, 1),
    Workload(1, 512, 7, 7, 2048, 1, 1),
    Workload(1, 256, 14, 14, 1024, 1, 1),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for(runner: rpc.RemoteRunner, servers: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if rpc.server_count(runner) == servers:
                return
        except rpc.RpcError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the tracker did not list {servers} server(s) after {timeout:g} s")


def tune(layers, trials: int, runner: rpc.RemoteRunner | None) -> tuple[float, list]:
    """Wall seconds of tuning `layers` from empty records, and the records."""
    with tempfile.TemporaryDirectory(prefix="rpc_scaling_") as records_dir:
        started = time.perf_counter()
        tuner.tune_workloads(
            layers, trials=trials, records_dir=records_dir, progress=False, runner=runner
        )
        wall = time.perf_counter() - started
        kept, _ = records.load_records(Path(records_dir) / records.RECORDS_FILE)
    return wall, [(r.workload.key, r.config, r.cycles) for r in kept]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32, help="trials per layer (32)")
    parser.add_argument("--layers", type=int, default=len(LAYERS), help="how many of the four")
    parser.add_argument("--repeat", type=int, default=2, help="2-server/1-server pairs (2)")
    args = parser.parse_args()
    layers = LAYERS[: args.layers]
    load_before = os.getloadavg()[0]

    tracker_port = free_port()
    procs = [
        spawn(
            *("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--silent"),
            *("--port", str(tracker_port), "--port-end", str(tracker_port + 1)),
        )
    ]
    # two servers under one key, one under another: the runs alternate, an idle server costs
    # nothing, so a change in the machine's load hits both sides alike
    pair = rpc.RemoteRunner("127.0.0.1", tracker_port, f"{KEY}-pair", timeout=10.0)
    solo = rpc.RemoteRunner("127.0.0.1", tracker_port, f"{KEY}-solo", timeout=10.0)
    walls: dict[str, list[float]] = {"2 servers": [], "1 server": [], "local pool (2 workers)": []}
    found = []
    try:
        for key in (pair.key, pair.key, solo.key):
            port = free_port()
            procs.append(
                spawn(
                    *("tvm_convadd.rpc", "server", "--tracker", f"127.0.0.1:{tracker_port}"),
                    *("--key", key, "--host", "127.0.0.1"),
                    *("--port", str(port), "--port-end", str(port + 1)),
                )
            )
        import tvm.s_tir.tensor_intrin  # noqa: F401 (MetaSchedule's ~14 s import, outside the runs)

        wait_for(pair, 2)
        wait_for(solo, 1)
        for _ in range(args.repeat):
            for name, runner in (("2 servers", pair), ("1 server", solo)):
                wall, kept = tune(layers, args.trials, runner)
                walls[name].append(wall)
                found.append(kept)
        wall, kept = tune(layers, args.trials, None)
        walls["local pool (2 workers)"].append(wall)
        found.append(kept)
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    print(
        f"{len(layers)} ResNet-50 layers x {args.trials} trials, {len(found[0])} configs "
        f"measured per run, {os.cpu_count()} cores, load average {load_before:.1f} before and "
        f"{os.getloadavg()[0]:.1f} after (other work on the machine skews the ratio)"
    )
    one = statistics.median(walls["1 server"])
    print(f"{'runner':<24} {'runs':>4} {'median wall s':>14} {'vs 1 server':>12}  walls")
    for name, runs in walls.items():
        median = statistics.median(runs)
        shown = " ".join(f"{w:.1f}" for w in runs)
        print(f"{name:<24} {len(runs):>4} {median:>14.1f} {median / one:>12.2f}  {shown}")
    print(f"2 servers / 1 server wall time: {statistics.median(walls['2 servers']) / one:.2f}")
    print(f"records identical across runs: {'yes' if all(f == found[0] for f in found) else 'NO'}")


if __name__ == "__main__":
    main()
