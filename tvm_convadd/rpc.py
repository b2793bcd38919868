"""Measurement past one machine: simulator workers as TVM RPC servers behind a tracker.

A server (`python -m tvm_convadd.rpc server --tracker HOST:PORT --key convadd-sim`) is a TVM
RPC server whose `server_init_callback` registers MEASURE_FUNC: a measurement job in (JSON
text: workload, config, hardware config), its result out (JSON text: cycles and per-unit
stats, or where it failed). The server lowers the config itself, so the lowering, which costs
far more than the timing-only simulation, is spread over the servers too.

The tuner's side is `TrackerPool`: it asks the tracker for a session on every server it has
for the key and keeps one job in flight on each. A job whose server dies goes back to the
front of the queue for the others; when no server is left, the jobs still waiting fail with
`RpcError`. Servers must run the same tvm-convadd as the tuner: they lower the configs.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from tvm_convadd.errors import RpcError

if TYPE_CHECKING:
    from tvm_convadd.schedules.tile_config import TileConfig
    from tvm_convadd.schedules.workload import Workload
    from tvm_convadd.target.hardware import HardwareConfig

MEASURE_FUNC = "tvm_convadd.measure_job"
DEFAULT_KEY = "convadd-sim"
DEFAULT_TIMEOUT = 5.0  # seconds to reach the tracker and to get a free server from it
MAX_ATTEMPTS = 3  # a job whose server died this many times fails alone (it may be the cause)
POLL_SECS = 0.2  # how often a thread waiting on the tracker looks for shutdown

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteRunner:
    """Where the tuner measures instead of its local process pool: the servers the tracker at
    `host:port` has for `key`. `timeout` bounds reaching the tracker and getting a server."""

    host: str
    port: int
    key: str = DEFAULT_KEY
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def parse(
        cls, address: str, key: str = DEFAULT_KEY, timeout: float = DEFAULT_TIMEOUT
    ) -> RemoteRunner:
        """From 'HOST:PORT' (the form `--tracker` takes)."""
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RpcError(f"tracker address {address!r}: write HOST:PORT, e.g. 127.0.0.1:9190")
        if not timeout > 0:
            raise RpcError(f"tracker timeout {timeout!r}: give a number of seconds > 0, e.g. 5")
        return cls(host, int(port), key, float(timeout))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


# -- the job: what a server computes ----------------------------------------------------------


def job_text(workload: Workload, config: TileConfig, hardware: HardwareConfig) -> str:
    """The measurement job of one config, as the server reads it."""
    return json.dumps(
        {"workload": workload.to_dict(), "config": config.to_dict(), "hardware": hardware.to_dict()}
    )


def run_job(text: str) -> str:
    """Lower the job's config, check it fits, simulate it (timing only). The result names the
    stage that failed ("job", "lower", "fit", "simulate") or gives cycles and per-unit stats."""
    from tvm_convadd import search_space
    from tvm_convadd.schedules.tile_config import TileConfig
    from tvm_convadd.schedules.workload import Workload
    from tvm_convadd.target.lower import overflowing
    from tvm_convadd.target.simulator import simulate

    try:
        job = json.loads(text)
        workload = Workload.from_dict(job["workload"])
        config = TileConfig.from_dict(job["config"])
        hardware = _hardware(json.dumps(job["hardware"], sort_keys=True))
    except Exception as err:
        return json.dumps({"stage": "job", "error": f"unreadable job: {err!r}"})
    try:
        program = search_space.lowered(workload, config)
    except Exception as err:
        return json.dumps({"stage": "lower", "error": str(err)})
    over = overflowing(program, hardware)
    if over:
        return json.dumps({"stage": "fit", "overflow": {b: list(nc) for b, nc in over.items()}})
    try:
        result = simulate(program, hardware, functional=False)
    except Exception as err:
        return json.dumps({"stage": "simulate", "error": str(err)})
    units = {unit: asdict(stats) for unit, stats in result.units.items()}
    return json.dumps({"cycles": int(result.total_cycles), "units": units})


class JobFailed(Exception):
    """A job that failed at a stage of its own (not for want of a server): the candidate's
    failure, as the same error would be in the local runner."""

    def __init__(self, result: dict) -> None:
        self.stage = result["stage"]
        self.result = result
        super().__init__(result.get("error") or json.dumps(result.get("overflow")))


def cycles_of(result: dict) -> int:
    """The cycles a job's result gives; JobFailed if a stage failed."""
    if "cycles" not in result:
        raise JobFailed(result)
    return int(result["cycles"])


def chained(future: Future, convert: Callable[[object], object]) -> Future:
    """A Future of `convert(future.result())`, settled when `future` is."""
    converted: Future = Future()

    def settle(done: Future) -> None:
        if done.cancelled():
            converted.cancel()
            return
        try:
            converted.set_result(convert(done.result()))
        except Exception as err:
            converted.set_exception(err)

    future.add_done_callback(settle)
    return converted


@lru_cache(maxsize=8)
def _hardware(text: str):
    from tvm_convadd.target.hardware import HardwareConfig

    return HardwareConfig.from_dict(json.loads(text))


# -- the server -------------------------------------------------------------------------------


def server_init_callback() -> None:
    """Runs in the RPC server's process: die with the `rpc server` command that started it,
    load the simulator once (each session forks from here), register MEASURE_FUNC."""
    import tvm

    import tvm_convadd.search_space
    import tvm_convadd.target.simulator  # noqa: F401

    _die_with_parent()
    tvm.register_global_func(MEASURE_FUNC, _serve_job, override=True)


_session_ready = False


def _serve_job(text: str) -> str:
    """MEASURE_FUNC, in a session's forked process: that process dies with its server too."""
    global _session_ready
    if not _session_ready:
        _die_with_parent()
        _session_ready = True
    return run_job(text)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux), so a killed server leaves nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def serve(
    tracker: str,
    key: str = DEFAULT_KEY,
    host: str = "0.0.0.0",
    port: int = 9090,
    port_end: int = 9199,
    custom_addr: str | None = None,
) -> None:
    """Start a measurement server registered with `tracker` (HOST:PORT) and serve until
    killed or interrupted."""
    from tvm import rpc

    address = RemoteRunner.parse(tracker, key)
    server = rpc.Server(
        host=host,
        port=port,
        port_end=port_end,
        key=key,
        tracker_addr=(address.host, address.port),
        custom_addr=custom_addr,
        silent=True,
        server_init_callback=server_init_callback,
    )
    print(
        f"convadd measurement server on {host}:{server.port}, key {key!r}, "
        f"tracker {address.address}",
        flush=True,
    )
    try:
        server.proc.join()
    finally:
        server.terminate()


# -- the tuner's side: jobs over the tracker's servers ---------------------------------------


def tracker_summary(runner: RemoteRunner) -> dict:
    """The tracker's summary (servers and queues), or RpcError within `runner.timeout`."""
    from tvm.rpc import base

    sock = _tracker_socket(runner)
    try:
        base.sendjson(sock, [base.TrackerCode.SUMMARY])
        value = base.recvjson(sock)
    except OSError as err:
        raise RpcError(
            f"tracker {runner.address} did not answer within {runner.timeout:g} s ({err}): "
            "is it a TVM RPC tracker (python -m tvm.exec.rpc_tracker)?"
        ) from None
    finally:
        sock.close()
    return value[1]


def server_count(runner: RemoteRunner) -> int:
    """How many servers the tracker has for `runner.key`; RpcError if none."""
    summary = tracker_summary(runner)
    keys = [info.get("key", "").partition(":")[2] for info in summary.get("server_info", [])]
    count = keys.count(runner.key)
    if count == 0:
        others = ", ".join(sorted(set(keys))) or "none"
        raise RpcError(
            f"tracker {runner.address} has no server for key {runner.key!r} (keys it has: "
            f"{others}); start one with python -m tvm_convadd.rpc server --tracker "
            f"{runner.address} --key {runner.key}"
        )
    return count


def _tracker_socket(runner: RemoteRunner) -> socket.socket:
    from tvm.rpc import base

    try:
        sock = socket.create_connection((runner.host, runner.port), timeout=runner.timeout)
    except OSError as err:
        raise RpcError(
            f"cannot reach the tracker at {runner.address} ({err.strerror or err}): start one "
            f"with python -m tvm.exec.rpc_tracker --port {runner.port}, or fix --tracker"
        ) from None
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
    except OSError as err:
        sock.close()
        raise RpcError(
            f"{runner.address} did not answer as a TVM RPC tracker within {runner.timeout:g} s "
            f"({err}); check --tracker"
        ) from None
    if magic != base.RPC_TRACKER_MAGIC:
        sock.close()
        raise RpcError(f"{runner.address} is not a TVM RPC tracker; check --tracker")
    return sock


@dataclass
class _Job:
    text: str
    future: Future
    attempts: int = 0  # servers lost while running it


@dataclass
class _Dispatch:
    """One thread's hold on one server: its session and its remote MEASURE_FUNC."""

    session: object
    measure: object
    address: str


class TrackerPool:
    """Measurement jobs on every server the tracker has for the key, one in flight on each.

    The constructor reaches the tracker and holds a session on each of its servers for the key
    (RpcError within `runner.timeout` if it cannot hold one). `submit` returns a Future of the
    job's result dict. A job whose server dies is re-dispatched to the others."""

    def __init__(self, runner: RemoteRunner) -> None:
        self.runner = runner
        self._queue: collections.deque[_Job] = collections.deque()
        self._lock = threading.Condition()
        self._closed = False
        self._live = 0  # threads holding a session
        self._starting = server_count(runner)
        self._failure: RpcError | None = None
        self._threads = [
            threading.Thread(target=self._serve, name=f"convadd-rpc-{i}", daemon=True)
            for i in range(self._starting)
        ]
        for thread in self._threads:
            thread.start()
        with self._lock:
            self._lock.wait_for(lambda: self._live > 0 or self._starting == 0, 2 * runner.timeout)
            if self._live == 0:
                self._closed = True
                self._lock.notify_all()
                raise self._failure or RpcError(
                    f"no server for key {runner.key!r} of tracker {runner.address} could be "
                    f"held within {2 * runner.timeout:g} s"
                )

    @property
    def servers(self) -> int:
        """Servers held now."""
        return self._live

    def submit(self, text: str) -> Future:
        """Queue one job (see `job_text`); the Future gives its result dict."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("TrackerPool is shut down")
            if self._live == 0 and self._starting == 0:
                future.set_exception(self._lost())
                return future
            self._queue.append(_Job(text, future))
            self._lock.notify()
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop taking jobs, release the servers; like Executor.shutdown."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                while self._queue:
                    self._queue.popleft().future.cancel()
            self._lock.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()

    def _lost(self) -> RpcError:
        return RpcError(
            f"lost every server for key {self.runner.key!r} of tracker {self.runner.address}: "
            "start servers and run the same tune again (it resumes from the records)"
        )

    def _serve(self) -> None:
        """A thread: hold a server, run jobs on it; on losing it, hold another if one is free."""
        dispatch = self._connect()
        with self._lock:
            self._starting -= 1
            if dispatch is not None:
                self._live += 1
            self._lock.notify_all()
        while dispatch is not None:
            job = self._next()
            if job is None:
                break
            try:
                result = json.loads(str(dispatch.measure(job.text)))
            except Exception as err:  # the server or its connection is gone
                logger.warning("server %s lost during a job: %s", dispatch.address, err)
                self._requeue(job, dispatch.address, err)
                dispatch = None  # close the dead session before holding another
                with self._lock:
                    self._live -= 1
                    self._starting += 1
                dispatch = self._connect(replacing=True)
                with self._lock:
                    self._starting -= 1
                    if dispatch is not None:
                        self._live += 1
                    else:
                        self._fail_if_alone()
                continue
            _settle(job.future, result)
        with self._lock:
            if dispatch is not None:
                self._live -= 1
            self._fail_if_alone()

    def _fail_if_alone(self) -> None:
        """With no server left nor coming, the queued jobs fail (called holding the lock)."""
        if self._live == 0 and self._starting == 0:
            error = self._lost()
            while self._queue:
                _settle(self._queue.popleft().future, error=error)

    def _next(self) -> _Job | None:
        with self._lock:
            while True:
                while self._queue:
                    job = self._queue.popleft()
                    if not job.future.cancelled():  # stays PENDING: it may come back
                        return job
                if self._closed:
                    return None
                self._lock.wait()

    def _requeue(self, job: _Job, address: str, err: Exception) -> None:
        job.attempts += 1
        if job.attempts >= MAX_ATTEMPTS:
            message = (
                f"{job.attempts} servers died running this job (the last {address}: {err}); "
                "the job itself may kill them"
            )
            _settle(job.future, {"stage": "servers", "error": message})
            return
        with self._lock:
            self._queue.appendleft(job)  # first in line for the servers left
            self._lock.notify()

    def _connect(self, replacing: bool = False) -> _Dispatch | None:
        """A session on a free server of the key, or None if none is free within the timeout
        (or, when `replacing` a lost one, if the tracker has no server this pool does not hold).
        """
        from tvm import rpc

        runner = self.runner
        deadline = time.monotonic() + runner.timeout
        while time.monotonic() < deadline and not self._closed:
            if replacing and self._none_to_spare():
                return None
            try:
                url, port, matchkey = self._request(deadline)
                session = rpc.connect(url, port, matchkey, session_timeout=0)
                measure = session.get_function(MEASURE_FUNC)
            except TimeoutError:
                break
            except (RpcError, OSError, RuntimeError) as err:
                self._failure = (
                    err
                    if isinstance(err, RpcError)
                    else RpcError(
                        f"no server for key {runner.key!r} of tracker {runner.address} could be "
                        f"held ({err}); is it running python -m tvm_convadd.rpc server?"
                    )
                )
                time.sleep(POLL_SECS)
                continue
            return _Dispatch(session, measure, f"{url}:{port}")
        if self._failure is None:
            self._failure = RpcError(
                f"tracker {runner.address} has servers for key {runner.key!r} but none became "
                f"free within {runner.timeout:g} s (another tuner holds them?); wait for it or "
                "raise --tracker-timeout"
            )
        return None

    def _none_to_spare(self) -> bool:
        """Whether the tracker lists no server beyond those this pool holds."""
        try:
            return server_count(self.runner) <= self._live
        except RpcError:  # no server for the key, or no tracker, any more
            return True

    def _request(self, deadline: float) -> tuple[str, int, str]:
        """One free server (url, port, matchkey) from the tracker, waiting until `deadline`."""
        from tvm.rpc import base

        sock = _tracker_socket(self.runner)
        try:
            base.sendjson(sock, [base.TrackerCode.REQUEST, self.runner.key, "", 1])
            while not select.select([sock], [], [], POLL_SECS)[0]:
                if self._closed or time.monotonic() > deadline:
                    raise TimeoutError(f"no free server within {self.runner.timeout:g} s")
            value = base.recvjson(sock)
        finally:
            sock.close()
        if value[0] != base.TrackerCode.SUCCESS:
            raise RuntimeError(f"tracker refused the request: {value!r}")
        url, port, matchkey = value[1]
        return url, int(port), matchkey


def _settle(future: Future, result: object = None, error: BaseException | None = None) -> None:
    """Finish `future` unless it was cancelled meanwhile (jobs stay PENDING while they run)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


# -- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tvm_convadd.rpc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="serve measurements to tuners through a tracker")
    server.add_argument("--tracker", required=True, metavar="HOST:PORT")
    server.add_argument("--key", default=DEFAULT_KEY, help=f"the tracker's key ({DEFAULT_KEY})")
    server.add_argument("--host", default="0.0.0.0", help="address to listen on (0.0.0.0)")
    server.add_argument("--port", type=int, default=9090, help="first port to try (9090)")
    server.add_argument("--port-end", type=int, default=9199, help="port range end (9199)")
    server.add_argument("--custom-addr", help="address to report to the tracker")
    args = parser.parse_args(argv)
    try:
        serve(args.tracker, args.key, args.host, args.port, args.port_end, args.custom_addr)
    except RpcError as err:
        print(f"tvm-convadd rpc: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    # run the importable module's main: the server pickles its callback by reference, which a
    # function of __main__ cannot be
    from tvm_convadd.rpc import main as module_main

    sys.exit(module_main())
