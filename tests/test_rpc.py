"""Remote measurement: a tracker and two servers on localhost measure what the local runner does;
a missing tracker or key is a one-line error within the timeout; a server killed mid-tune costs
no record."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tvm_convadd import cli, records, rpc, tuner
from tvm_convadd.errors import RpcError
from tvm_convadd.schedules.tile_config import LINE_PIPELINES, TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.registry import hardware_for_target
from tvm_convadd.target.simulator import UNITS

WL = Workload(1, 64, 32, 32, 64, 3, 3, padding=(1, 1, 1, 1))
JOBS_WL = Workload(1, 64, 56, 56, 256, 1, 1)  # its few-tile configs do not fit, the others do
TARGET = "convadd-sim"
TRIALS = 8
PER_ITER = 4  # two batches: the server-dies test kills one in the first
TIMEOUT = 2.0  # the tracker timeout the tests give
STARTUP_SECS = 120.0  # a server imports TVM twice (its command, then its server process)
WATCHDOG_SECS = 300.0  # a block using the servers for longer kills them: it fails, never hangs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(log, *args: str) -> subprocess.Popen:
    """`python -m args` in its own process group (so a kill takes all its processes)."""
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _wait(ready: Callable[[], bool], procs: list[subprocess.Popen], log, what: str) -> None:
    deadline = time.monotonic() + STARTUP_SECS
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except RpcError:
            pass
        dead = [proc.args for proc in procs if proc.poll() is not None]
        assert not dead, f"{what} exited: {dead}\n{log.read_text()}"
        time.sleep(0.2)
    pytest.fail(f"{what} not up after {STARTUP_SECS:g} s\n{log.read_text()}")


class Servers:
    """Measurement servers for one key at the tracker, started at once (they come up while
    the test process works: `ready` waits for them), killed by `close`."""

    def __init__(self, tracker_port: int, key: str, count: int, log) -> None:
        self.runner = rpc.RemoteRunner("127.0.0.1", tracker_port, key, TIMEOUT)
        self.procs: list[subprocess.Popen] = []
        self.count = count
        self.log = log
        with open(log, "ab") as out:
            for _ in range(count):
                port = _free_port()
                self.procs.append(
                    _spawn(
                        out,
                        *("tvm_convadd.rpc", "server", "--tracker", f"127.0.0.1:{tracker_port}"),
                        *("--key", key, "--host", "127.0.0.1"),
                        *("--port", str(port), "--port-end", str(port + 1)),
                    )
                )

    def ready(self) -> rpc.RemoteRunner:
        """The runner, once the tracker has every server."""
        count, key = self.count, self.runner.key
        _wait(lambda: rpc.server_count(self.runner) == count, self.procs, self.log, key)
        return self.runner

    @contextmanager
    def watchdog(self) -> Iterator[rpc.RemoteRunner]:
        """The runner, for a block that the servers' death ends if it runs WATCHDOG_SECS."""
        runner = self.ready()
        timer = threading.Timer(WATCHDOG_SECS, self.close)
        timer.start()
        try:
            yield runner
        finally:
            timer.cancel()

    def close(self) -> None:
        _stop(self.procs)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Iterator[int]:
    port = _free_port()
    log = tmp_path_factory.mktemp("rpc") / "tracker.log"
    with open(log, "wb") as out:
        proc = _spawn(
            out,
            *("tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--silent"),
            *("--port", str(port), "--port-end", str(port + 1)),
        )
    runner = rpc.RemoteRunner("127.0.0.1", port, timeout=TIMEOUT)
    try:
        _wait(lambda: rpc.tracker_summary(runner) is not None, [proc], log, "tracker")
        yield port
    finally:
        _stop([proc])


@pytest.fixture(scope="module")
def servers(tracker, tmp_path_factory) -> Iterator[Servers]:
    pair = Servers(tracker, "convadd-sim-test", 2, tmp_path_factory.mktemp("rpc") / "servers.log")
    yield pair
    pair.close()


@pytest.fixture(scope="module")
def local_tune(tmp_path_factory) -> tuner.TuneResult:
    """A local tune with the seed the remote tunes use."""
    return _tune(tmp_path_factory.mktemp("local"), max_workers=0)


def _tune(records_dir, **how) -> tuner.TuneResult:
    """WL tuned with the seed and batch size every run here shares; `how` says where."""
    return tuner.tune_workload(
        WL, TARGET, TRIALS, records_dir, seed=0, progress=False, trials_per_iter=PER_ITER, **how
    )


@pytest.fixture(scope="module")
def local_records(local_tune) -> list[tuple]:
    return _records(local_tune.records_path)


def _records(path) -> list[tuple]:
    kept, problems = records.load_records(path)
    assert problems == []
    return [(record.config, record.cycles) for record in kept]


def test_remote_tune_records_equal_a_local_tune(servers, local_tune, local_records, tmp_path):
    with servers.watchdog() as runner:
        result = _tune(tmp_path, runner=runner)
    assert _records(result.records_path) == local_records
    assert result.measured == len(local_records) > 0
    assert result.trials == local_tune.trials  # the same trials fit, or fail to, in order


def test_jobs_measure_what_the_local_runner_does(servers):
    hardware = hardware_for_target(TARGET)
    configs = [TileConfig(n, "height", p) for n in (1, 4, 8, 14, 28) for p in LINE_PIPELINES]
    with servers.watchdog() as runner:
        pool = rpc.TrackerPool(runner)
        try:
            futures = [pool.submit(rpc.job_text(JOBS_WL, c, hardware)) for c in configs]
            results = [future.result(timeout=WATCHDOG_SECS) for future in futures]
            assert pool.servers == 2
        finally:
            pool.shutdown()
    local_results = [tuner.measure_config(JOBS_WL, config, hardware) for config in configs]
    assert None in local_results and set(local_results) != {None}, "want both fits and misfits"
    for config, result, local in zip(configs, results, local_results):
        if local is None:
            assert result["stage"] == "fit", (config, result)
        else:
            assert rpc.cycles_of(result) == local, config
            assert set(result["units"]) == set(UNITS)


def test_a_server_killed_mid_tune_loses_no_record(servers, local_records, tmp_path, caplog):
    """The first batch's records are in when one server's command is killed (SIGKILL; its
    server and session processes die with it); the second batch goes to the other server.
    After the other tests that use the module's servers (it kills one): xdist hands out
    consecutive tests, so the three that start servers share one worker and one pair."""
    seen = []

    def kill_one(config, _cycles) -> None:
        seen.append(config)
        if len(seen) == 3:
            servers.procs[0].kill()
            servers.procs[0].wait(timeout=10)

    with servers.watchdog() as runner:
        result = _tune(tmp_path, runner=runner, on_measure=kill_one)
    assert _records(result.records_path) == local_records
    assert "lost during a job" in caplog.text  # a job did go to the dead server
    deadline = time.monotonic() + 10  # the tracker drops it once its processes are gone
    while rpc.server_count(servers.runner) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rpc.server_count(servers.runner) == 1


def test_unreachable_tracker_is_a_one_line_error_within_the_timeout(tmp_path, capsys):
    runner = rpc.RemoteRunner("127.0.0.1", _free_port(), timeout=TIMEOUT)  # nobody listens
    started = time.monotonic()
    with pytest.raises(RpcError, match="cannot reach the tracker at "):
        tuner.tune_workload(WL, TARGET, TRIALS, tmp_path, progress=False, runner=runner)
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        argv = ["tune", "resnet18", "--records", str(tmp_path), "--tracker", address]
        assert cli.main([*argv, "--tracker-timeout", str(TIMEOUT)]) == 2
    assert time.monotonic() - started < 3 * TIMEOUT + 2
    err = capsys.readouterr().err
    assert err.startswith(f"tvm-convadd: {address} did not answer as a TVM RPC tracker within")
    assert err.count("\n") == 1


def test_key_without_servers_is_a_one_line_error(tracker, tmp_path, capsys):
    address = f"127.0.0.1:{tracker}"
    argv = ["tune", "resnet18", "--records", str(tmp_path), "--tracker", address]
    started = time.monotonic()
    assert cli.main([*argv, "--key", "nobody", "--tracker-timeout", str(TIMEOUT)]) == 2
    assert time.monotonic() - started < TIMEOUT + 2
    err = capsys.readouterr().err
    assert err.startswith(f"tvm-convadd: tracker {address} has no server for key 'nobody'")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "address", ["localhost", ":9190", "localhost:", "localhost:port", "localhost:70000"]
)
def test_a_bad_tracker_address_is_refused(address):
    with pytest.raises(RpcError, match="write HOST:PORT"):
        rpc.RemoteRunner.parse(address)
