"""Tune a workload's TileConfig with MetaSchedule: a transferred XGBoost model picks, the
simulator measures.

The design space is one `sample_categorical` over the workload's enumerated configs, its value
annotated on the root block, so every candidate module names its config. MetaSchedule's cost
model is `cost_model.CostModel`, pre-trained on the records of other layers (the shipped ones
and those in the records directory) and refitted after each batch with this layer's own: it
scores the evolutionary search's candidates, and its ranking is also the categorical's prior,
so the population evolution starts from holds the configs it rates best (among thousands, a
uniform population of 128 rarely does). The builder lowers
that config to a Program (a config that does not fit fails the build and is never measured),
the runner simulates it (timing only) in a process pool, and each measurement is appended to
the records file as it completes. Import this module lazily: MetaSchedule's TuneContext pulls
in `tvm.s_tir.tensor_intrin` (~14 s) on first use.

Interrupting. MetaSchedule's loop runs in C++ and calls back into Python; a KeyboardInterrupt
raised inside a callback comes out of `tune_tir` as a RuntimeError (tvm_ffi converts it), and a
KeyboardInterrupt raised at an arbitrary point could cut a record in half. So while it runs,
Ctrl-C only asks the tuner to stop: the callbacks check that request at safe points and the
tune ends with `TuneInterrupted` (a KeyboardInterrupt), every measurement taken so far in the
records file. A second Ctrl-C interrupts at once. The pool's workers ignore SIGINT (it is the
parent's to handle) and exit when their parent dies, even by SIGKILL.

Past one machine, `runner=RemoteRunner(...)` measures on TVM RPC servers behind a tracker
(`tvm_convadd.rpc`): the builder sends each new config to them at once, and they lower, check
and simulate it (lowering is most of the cost); a config that does not fit fails its build, as
here, so the search and its records are the same as a local run's. There a config is claimed
once measured: two tuners racing for one may both measure it, but only one records it.

Several tuners may share a records directory: each claims its configs (`records.claim`) after
lowering them and before measuring, and takes the cycles of a config another live tuner
claimed from the records file once that tuner has written them, so no config is measured twice.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.cost_model import PyCostModel
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.mutator import PyMutator
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerInput, RunnerResult

from tvm_convadd import cost_model, records, rpc, search_space
from tvm_convadd.errors import RecordsError, RpcError, TileConfigError
from tvm_convadd.rpc import RemoteRunner, TrackerPool
from tvm_convadd.schedules.primfunc import convadd_primfunc
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.hardware import HardwareConfig
from tvm_convadd.target.isa import Program
from tvm_convadd.target.lower import overflowing
from tvm_convadd.target.registry import hardware_for_target
from tvm_convadd.target.simulator import simulate

WORKLOAD_ATTR = "convadd.workload"  # PrimFunc attr: the Workload as a JSON string
CHOICE_ATTR = "convadd.config_index"  # root-block annotation: index into enumerate_configs
MS_DIR = "metaschedule"  # MetaSchedule's database and logs, inside the records directory
CLAIM_POLL_SECS = 0.2  # how often a tuner looks for a config another tuner claimed
CLAIM_WAIT_SECS = 120.0  # how long it waits for that config's record before skipping it

logger = logging.getLogger(__name__)
MeasureHook = Callable[[TileConfig, int], None]


@dataclass(frozen=True)
class TuneResult:
    """Outcome of tuning one workload: the best record so far and this run's trial history."""

    workload: Workload
    target: str
    best: TileConfig | None
    best_cycles: int | None
    trials: tuple[int | None, ...]  # this run's MetaSchedule trials in order; None = did not fit
    measured: int  # configs simulated in this run
    reused: int  # records of earlier runs (kept, never re-measured)
    records_path: Path
    shared: int = 0  # trials served from records a concurrent tuner wrote during this run


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped tuning at a safe point. Every measurement taken is in the records file
    (each is appended and flushed as it completes), so running the same tuning again resumes:
    recorded configs are served from the file, never re-measured."""

    def __init__(
        self, measured: int, records_path: Path, results: Sequence[TuneResult] = ()
    ) -> None:
        super().__init__(
            f"tuning interrupted: {measured} new measurement(s) kept in {records_path}"
        )
        self.measured = measured  # configs this run measured and recorded, all workloads
        self.records_path = records_path
        self.results = tuple(results)  # the workloads whose tuning had finished


# -- the module MetaSchedule tunes ----------------------------------------------------------


def tuning_module(workload: Workload) -> tvm.IRModule:
    """The unscheduled PrimFunc carrying its Workload, so builder and runner can recover it."""
    func = convadd_primfunc(workload).with_attr(WORKLOAD_ATTR, json.dumps(workload.to_dict()))
    return tvm.IRModule({"main": func})


def workload_of(mod: tvm.IRModule) -> Workload:
    """The Workload stored on the module's PrimFunc by `tuning_module`."""
    func = mod["main"]
    if func.attrs is None or WORKLOAD_ATTR not in func.attrs:
        raise TileConfigError(f"module has no {WORKLOAD_ATTR!r} attr: build it with tuning_module")
    return Workload.from_dict(json.loads(str(func.attrs[WORKLOAD_ATTR])))


def config_of(mod: tvm.IRModule) -> TileConfig:
    """The config a scheduled candidate chose (the categorical decision on its root block)."""
    found: list[int] = []

    def visit(block) -> None:
        if CHOICE_ATTR in block.annotations:
            found.append(int(block.annotations[CHOICE_ATTR]))

    tvm_ffi.structural_walk(mod["main"].body, (s_tir.SBlock, visit))
    if not found:
        raise TileConfigError(f"candidate has no {CHOICE_ATTR!r} annotation on its root block")
    return search_space.enumerate_configs(workload_of(mod))[found[0]]


def sample_config(sch: s_tir.Schedule, prior: Sequence[float] | None = None) -> None:
    """The design space: one categorical over the configs, recorded on the root block; `prior`
    gives each config's probability (uniform if None).

    The number of choices depends only on the module (fixed), never on a sampled value:
    traces are replayed with mutated decisions, so no Python branch may read one."""
    count = len(search_space.enumerate_configs(workload_of(sch.mod)))
    probs = [1.0 / count] * count if prior is None else [float(p) for p in prior]
    choice = sch.sample_categorical(list(range(count)), probs)
    sch.annotate(sch.get_sblock("root"), CHOICE_ATTR, choice)


PRIOR_SCALE = 16.0  # the prior halves about every 11 ranks down the model's order
PRIOR_UNIFORM = 0.25  # and keeps this share uniform, so every config can still be drawn


def model_prior(predicted: Sequence[float]) -> list[float]:
    """Probabilities from predicted cycles: exp(-rank / PRIOR_SCALE), mixed with uniform."""
    ranks = np.empty(len(predicted))
    ranks[np.argsort(np.asarray(predicted), kind="stable")] = np.arange(len(predicted))
    peaked = np.exp(-ranks / PRIOR_SCALE)
    probs = (1 - PRIOR_UNIFORM) * peaked / peaked.sum() + PRIOR_UNIFORM / len(predicted)
    return list(probs / probs.sum())


# -- MetaSchedule components ----------------------------------------------------------------


@derived_object
class MutateConfig(PyMutator):
    """Moves the categorical to a neighbouring config: one knob (N, axis or pipeline) changes."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.configs: tuple[TileConfig, ...] = ()

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.configs = search_space.enumerate_configs(workload_of(context.mod))

    def apply(self, trace, _rand_state):
        insts = [i for i in trace.insts if i.kind.name == "SampleCategorical"]
        if not insts or len(self.configs) < 2:
            return None
        old = int(trace.get_decision(insts[0]))
        new = neighbour(self.configs, old, self.rng)
        return trace.with_decision(insts[0], new, remove_postproc=True)

    def clone(self) -> MutateConfig:
        clone = MutateConfig(self.seed)
        clone.configs = self.configs
        return clone


def neighbour(configs: Sequence[TileConfig], index: int, rng: random.Random) -> int:
    """A config one knob away from configs[index], so evolution takes small steps: the N class
    one or two up or down, the same pipeline on another axis at the nearest tile count, or
    another pipeline mode at the same N."""
    old = configs[index]
    knob = rng.choice(("n_tiles", "n_tiles", "axis", "pipeline"))
    if knob == "n_tiles":
        line = [
            i for i, c in enumerate(configs) if (c.axis, c.pipeline) == (old.axis, old.pipeline)
        ]
        moves = [
            line[p] for p in (line.index(index) + d for d in (-2, -1, 1, 2)) if 0 <= p < len(line)
        ]
    elif knob == "axis":  # a pipeline some axes lack ("stream_weights": grids only) moves none
        same_pipeline = [i for i, c in enumerate(configs) if c.pipeline == old.pipeline]
        axes = {configs[i].axis for i in same_pipeline} - {old.axis}
        moves = [
            min(
                (i for i in same_pipeline if configs[i].axis == axis),
                key=lambda i: abs(math.log(configs[i].n_tiles / old.n_tiles)),
            )
            for axis in sorted(axes)
        ]
    else:
        moves = [
            i
            for i, c in enumerate(configs)
            if (c.axis, c.n_tiles) == (old.axis, old.n_tiles) and c.pipeline != old.pipeline
        ]
    if not moves:
        moves = [i for i in range(len(configs)) if i != index]
    return rng.choice(moves)


@derived_object
class TransferCostModel(PyCostModel):
    """MetaSchedule's cost model: `cost_model.CostModel`'s predicted cycles of every config of
    the layer, scored as best / predicted (higher is better), refitted after each batch with
    the layer's measurements so far (`session.known`)."""

    def __init__(self, session: _Session, model: cost_model.CostModel) -> None:
        self.session = session
        self.base = model
        self.configs = search_space.enumerate_configs(session.workload)
        self.index = {config: i for i, config in enumerate(self.configs)}
        self.predicted = model.predict(session.workload, self.configs, session.hardware)
        self.fitted_on = 0

    def load(self, _path: str) -> None:
        pass  # the model lives in the records, not in MetaSchedule's work dir

    def save(self, _path: str) -> None:
        pass

    def update(self, _context, _candidates, _results) -> None:
        session = self.session
        if len(session.known) == self.fitted_on:
            return
        layer = [
            cost_model.Sample(session.workload, config, session.hardware, cycles)
            for config, cycles in session.known.items()
        ]
        model = self.base.with_layer(layer)
        self.predicted = model.predict(session.workload, self.configs, session.hardware)
        self.fitted_on = len(session.known)

    def predict(self, _context, candidates) -> np.ndarray:
        best = float(self.predicted.min())
        return np.asarray(
            [best / self.predicted[self.index[config_of(c.sch.mod)]] for c in candidates],
            dtype="float64",
        )


class _Stop(Exception):
    """Raised at a safe point after Ctrl-C; tune_workload turns it into TuneInterrupted."""


# configs this process claimed in a tune that ended without recording them (an interrupted or
# failed run): the claims file still names this process, so no other tuner measures them, and
# a later tune in this process takes them back. Keyed by (pid, records file, workload, target).
_orphans: dict[tuple[int, str, str, str], set[TileConfig]] = {}
_orphans_lock = threading.Lock()


@dataclass
class _Session:
    """What builder, runner and history share during one tune: the hardware, the records file,
    the cache of earlier measurements, this run's claims and measurements, and the per-trial
    history."""

    workload: Workload
    target: str
    hardware: HardwareConfig
    records_path: Path
    known: dict[TileConfig, int]  # config -> cycles, earlier runs and this one
    on_measure: MeasureHook | None = None
    pool: ProcessPoolExecutor | TrackerPool | None = None
    artifacts: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="convadd_tune_"))
    kinds: dict[str, tuple] = field(default_factory=dict)  # artifact -> (kind, value)
    trials: list[int | None] = field(default_factory=list)
    measured: int = 0
    shared: int = 0
    claimed: set[TileConfig] = field(default_factory=set)  # ours to measure
    recorded: set[TileConfig] = field(default_factory=set)  # measured and written by this run
    running: dict[TileConfig, Future] = field(default_factory=dict)  # submitted, not yet told
    progress: object = None
    interrupted: BaseException | None = None  # raised in a callback; FFI would mangle its type
    stop_requested: bool = False  # Ctrl-C was pressed
    defer_ctrl_c: bool = False  # while MetaSchedule runs, Ctrl-C waits for a safe point

    @property
    def orphan_key(self) -> tuple[int, str, str, str]:
        return (os.getpid(), str(self.records_path.absolute()), self.workload.key, self.target)

    def check_stop(self) -> None:
        """A safe point: stop here if Ctrl-C was pressed."""
        if self.stop_requested:
            raise _Stop("Ctrl-C")

    def persist(self, config: TileConfig, cycles: int) -> None:
        """Append one new measurement at once (append + flush); idempotent."""
        if config in self.recorded:
            return
        records.append_record(
            self.records_path, records.Record(self.workload, self.target, config, cycles)
        )
        self.recorded.add(config)
        self.known[config] = cycles
        self.measured += 1

    def record(self, config: TileConfig, cycles: int) -> None:
        """Persist one new measurement, then tell the caller."""
        self.persist(config, cycles)
        self.running.pop(config, None)
        if self.on_measure is not None:
            try:
                self.on_measure(config, cycles)
            except BaseException as err:
                self.interrupted = err
                raise

    def persist_finished(self) -> None:
        """Write the measurements that are done but not yet asked for, so that a tuner waiting
        for one of our claims never waits on us while we wait on it."""
        for config, future in list(self.running.items()):
            if future.done() and not future.cancelled() and future.exception() is None:
                self.persist(config, future.result())

    def claim(self, configs: Sequence[TileConfig]) -> set[TileConfig]:
        """The `configs` this run may measure: claimed now, or already ours."""
        wanted = [c for c in dict.fromkeys(configs) if c not in self.claimed]
        got = set(records.claim(self.records_path, self.workload, self.target, wanted))
        refused = set(wanted) - got
        if refused:
            with _orphans_lock:
                orphans = _orphans.get(self.orphan_key, set())
                got |= refused & orphans
                orphans -= refused
        self.claimed |= got
        return {c for c in configs if c in self.claimed}

    def release(self) -> None:
        """At the end of the run: claims not recorded stay this process's (see `_orphans`)."""
        unrecorded = self.claimed - self.recorded
        if unrecorded:
            with _orphans_lock:
                _orphans.setdefault(self.orphan_key, set()).update(unrecorded)


@derived_object
class ProgramBuilder(PyBuilder):
    """Lowers each candidate's config to a Program JSON artifact; no TVM codegen. The configs
    that fit are claimed in the records file before anything is measured."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        session = self.session
        session.check_stop()
        if isinstance(session.pool, TrackerPool):
            return self._build_remote([bi.mod for bi in build_inputs])
        built = [self._build_one(bi.mod) for bi in build_inputs]
        new = [config for result, config in built if config is not None]
        ours = session.claim(new) if new else set()
        for result, config in built:
            if config is not None and config not in ours:  # another live tuner measures it
                session.kinds[result.artifact_path] = ("claimed", config)
        session.check_stop()
        return [result for result, _ in built]

    def _build_one(self, mod: tvm.IRModule) -> tuple[BuilderResult, TileConfig | None]:
        """The build result, and the config if it is to be measured (else None)."""
        session = self.session
        config = config_of(mod)
        artifact = self._artifact()
        if config in session.known:
            return self._cached(config, artifact), None
        try:
            program = search_space.lowered(session.workload, config)
        except Exception as err:  # a schedule or lowering bug must not stop the whole tune
            session.check_stop()  # tvm_ffi turns a KeyboardInterrupt in a callback into this
            return BuilderResult(None, f"{config}: lowering failed: {err}"), None
        over = overflowing(program, session.hardware)
        if over:
            return BuilderResult(None, self._misfit(config, over)), None
        with open(artifact, "w") as file:
            file.write(program.to_json())
        session.kinds[artifact] = ("program", config)
        return BuilderResult(artifact, None), config

    def _artifact(self) -> str:
        # RemoveBuildArtifact deletes dirname(artifact): one directory per artifact
        return os.path.join(tempfile.mkdtemp(dir=self.session.artifacts), "program.json")

    def _cached(self, config: TileConfig, artifact: str) -> BuilderResult:
        cycles = self.session.known[config]
        with open(artifact, "w") as file:
            json.dump({"cycles": cycles, "config": config.to_dict()}, file)
        self.session.kinds[artifact] = ("cached", cycles)
        return BuilderResult(artifact, None)

    def _misfit(self, config: TileConfig, over: dict) -> str:
        details = "; ".join(f"{b} needs {n} B, has {c} B" for b, (n, c) in over.items())
        return (
            f"{config} does not fit {self.session.hardware.name}: {details}; "
            "the tuner skips it (more tiles or another axis fit)"
        )

    def _build_remote(self, mods: list[tvm.IRModule]) -> list[BuilderResult]:
        """The remote runner's build: each new config goes to the servers at once, which lower,
        check and simulate it; a config that does not fit fails here, as in `_build_one`. Each
        result is claimed as it comes (and kept by a stop); a refused claim is another tuner's."""
        session = self.session
        configs = [config_of(mod) for mod in mods]
        artifacts = [self._artifact() for _ in mods]
        jobs = {
            session.pool.submit(rpc.job_text(session.workload, config, session.hardware)): config
            for config in dict.fromkeys(configs)
            if config not in session.known
        }
        failed: dict[TileConfig, str] = {}
        pending = set(jobs)
        while pending:
            session.check_stop()
            done, pending = wait(pending, timeout=rpc.POLL_SECS, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    result = future.result()
                except RpcError as err:  # no server left: stop, keeping the records
                    session.interrupted = err
                    raise
                failure = self._remote_result(jobs[future], result)
                if failure is not None:
                    failed[jobs[future]] = failure
        results = []
        for config, artifact in zip(configs, artifacts):
            if config in failed:
                results.append(BuilderResult(None, failed[config]))
                continue
            if config in session.known and config not in session.running:
                results.append(self._cached(config, artifact))
                continue
            with open(artifact, "w") as file:
                file.write(rpc.job_text(session.workload, config, session.hardware))
            mine = config in session.running
            session.kinds[artifact] = ("program" if mine else "claimed", config)
            results.append(BuilderResult(artifact, None))
        session.check_stop()
        return results

    def _remote_result(self, config: TileConfig, result: dict) -> str | None:
        """Take one job's result: the build error if it failed to lower or fit, else None
        (its cycles, or its simulation error, wait in `running` if this tuner claims it)."""
        session = self.session
        stage = result.get("stage")
        if stage == "fit":
            return self._misfit(config, {b: tuple(nc) for b, nc in result["overflow"].items()})
        if stage == "lower":
            return f"{config}: lowering failed on a server: {result['error']}"
        if stage in ("job", "servers"):
            return f"{config}: {result['error']}"
        if config in session.claim([config]):
            done: Future = Future()
            try:
                done.set_result(rpc.cycles_of(result))
            except rpc.JobFailed as err:
                done.set_exception(err)
            session.running[config] = done
        return None


def simulate_artifact(path: str, hardware: str) -> int:
    """Worker side of the runner: timing-only simulation of a Program JSON artifact."""
    with open(path) as file:
        program = Program.from_json(file.read())
    return int(simulate(program, _hardware(hardware), functional=False).total_cycles)


def _measure_in_worker(workload: Workload, config: TileConfig, hardware: str) -> int | None:
    return measure_config(workload, config, _hardware(hardware))


@lru_cache(maxsize=8)
def _hardware(text: str) -> HardwareConfig:
    """HardwareConfig travels to workers as JSON (its MappingProxyType does not pickle)."""
    return HardwareConfig.from_dict(json.loads(text))


def _hardware_json(hardware: HardwareConfig) -> str:
    return json.dumps(hardware.to_dict())


@derived_object
class SimRunner(PyRunner):
    """Simulates artifacts in the session's process pool; run_secs = cycles / clock."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        self.session.check_stop()
        return [self._run_one(ri.artifact_path) for ri in runner_inputs]

    def _run_one(self, path: str) -> RunnerFuture:
        session = self.session
        kind, value = session.kinds.pop(path)
        if kind == "cached":
            done: Future = Future()
            done.set_result(value)
            return self._future(done, None)
        if kind == "claimed":
            return RunnerFuture(f_done=lambda: False, f_result=lambda: self._wait_for(value, path))
        if value not in session.running:
            session.running[value] = self._submit(path)
        return self._future(session.running[value], value)

    def _submit(self, path: str) -> Future:
        hardware = _hardware_json(self.session.hardware)
        if isinstance(self.session.pool, TrackerPool):  # the artifact is the job
            with open(path) as file:
                return rpc.chained(self.session.pool.submit(file.read()), rpc.cycles_of)
        if self.session.pool is not None:
            return self.session.pool.submit(simulate_artifact, path, hardware)
        future: Future = Future()
        try:
            future.set_result(simulate_artifact(path, hardware))
        except Exception as err:
            future.set_exception(err)
        return future

    def _result(self, cycles: int) -> RunnerResult:
        return RunnerResult([cycles / (self.session.hardware.clock_mhz * 1e6)], None)

    def _future(self, future: Future, new_config: TileConfig | None) -> RunnerFuture:
        return RunnerFuture(f_done=future.done, f_result=lambda: self._collect(future, new_config))

    def _collect(self, future: Future, new_config: TileConfig | None) -> RunnerResult:
        """The candidate's result; a new measurement is recorded first."""
        session = self.session
        session.check_stop()
        try:
            cycles = future.result()
        except RpcError as err:  # no server left to measure on: stop, keeping the records
            session.interrupted = err
            raise
        except Exception as err:  # a simulator error is this candidate's failure only
            session.check_stop()
            session.running.pop(new_config, None)
            return RunnerResult(None, f"simulation failed: {err}")
        if new_config is not None:
            session.record(new_config, cycles)
        session.check_stop()
        return self._result(cycles)

    def _wait_for(self, config: TileConfig, path: str) -> RunnerResult:
        """A config another live tuner claimed: its cycles once that tuner records them, or
        ours if it exits without recording them; never measured by both."""
        session = self.session
        deadline = time.monotonic() + CLAIM_WAIT_SECS
        while True:
            session.check_stop()
            session.persist_finished()
            cycles = _recorded(session.records_path, session.workload, session.target).get(config)
            if cycles is not None:
                session.known[config] = cycles
                session.shared += 1
                return self._result(cycles)
            if config in session.claim([config]):  # its claimer exited without recording it
                session.running[config] = self._submit(path)
                return self._collect(session.running[config], config)
            if time.monotonic() > deadline:
                return RunnerResult(
                    None,
                    f"{config}: claimed by another tuner of {session.records_path} and still "
                    f"not recorded after {CLAIM_WAIT_SECS:g} s; skipped (not measured twice)",
                )
            time.sleep(CLAIM_POLL_SECS)


@derived_object
class TrialHistory(PyMeasureCallback):
    """Keeps each trial's cycles in MetaSchedule's order and advances the progress bar."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def apply(self, _scheduler, _task_id, candidates, _builder_results, runner_results) -> None:
        session = self.session
        for candidate, result in zip(candidates, runner_results):
            ok = result.error_msg is None and result.run_secs
            session.trials.append(session.known.get(config_of(candidate.sch.mod)) if ok else None)
        if session.progress is not None:
            session.progress.update(len(candidates))
            best = min(session.known.values(), default=None)
            session.progress.set_postfix(best_cycles=best)
        session.check_stop()


# -- public API -----------------------------------------------------------------------------


def tune_workload(
    workload: Workload,
    target: str = "convadd-sim",
    trials: int = 64,
    records_dir: str | os.PathLike = "convadd_records",
    seed: int = 0,
    progress: bool = True,
    *,
    max_workers: int = 2,
    trials_per_iter: int = 8,
    on_measure: MeasureHook | None = None,
    runner: RemoteRunner | None = None,
    model: cost_model.CostModel | None = None,
) -> TuneResult:
    """Tune `workload` for `target` with MetaSchedule + XGBoost, `trials` measurements in all.

    Records already in `records_dir` count toward `trials` and are never re-measured, so an
    interrupted run, started again, spends only what is left. Tuners sharing `records_dir`
    never measure a config twice (see the module docstring). `max_workers=0` simulates in
    this process; `runner` measures on the servers of a TVM RPC tracker instead (RpcError if
    there is none, or none is left). `on_measure(config, cycles)` runs after each new record is
    written. Ctrl-C (in the main thread) raises `TuneInterrupted` once the records written so
    far are safe. `model` is the cost model to start from; by default the one trained on the
    shipped records and on `records_dir`'s other layers (RecordsError if a file there holds
    no readable record)."""
    name = records.target_name(target)
    hardware = hardware_for_target(target)
    records_path = Path(records_dir) / records.RECORDS_FILE
    earlier = records.matching(_load(records_path), workload, name)
    known = {}
    for record in earlier:
        known[record.config] = min(record.cycles, known.get(record.config, record.cycles))
    session = _Session(workload, name, hardware, records_path, known, on_measure)
    budget = min(trials - len(known), len(search_space.enumerate_configs(workload)))
    try:
        with _ctrl_c_requests_stop(session):
            try:
                if budget > 0:
                    if model is None:  # first: a broken records file fails before any work
                        model = cost_model.pretrained([records_dir], exclude=workload)
                    # the workers start (and import TVM) while this process imports the rest
                    if runner is not None:
                        session.pool = TrackerPool(runner)
                    elif max_workers > 0:
                        session.pool = _pool(max_workers)
                    _import_tensor_intrin()
                    _run_metaschedule(
                        session,
                        budget,
                        Path(records_dir) / MS_DIR / name,
                        seed,
                        progress,
                        trials_per_iter,
                        model,
                    )
            finally:
                if session.pool is not None:
                    session.pool.shutdown(wait=True, cancel_futures=True)
                if session.stop_requested:
                    session.persist_finished()  # measured before the stop: keep them too
                session.release()
                shutil.rmtree(session.artifacts, ignore_errors=True)  # the builds' scratch
            session.check_stop()
    except BaseException as err:
        if session.stop_requested:  # whatever Ctrl-C became on its way through the FFI
            raise TuneInterrupted(session.measured, records_path) from None
        if session.interrupted is not None and err is not session.interrupted:
            raise session.interrupted from None  # what on_measure raised, not FFI's copy
        raise
    for config, cycles in _recorded(records_path, workload, name).items():  # concurrent tuners'
        session.known[config] = min(cycles, session.known.get(config, cycles))
    best = min(session.known.items(), key=lambda item: item[1], default=(None, None))
    return TuneResult(
        workload,
        name,
        best[0],
        best[1],
        tuple(session.trials),
        session.measured,
        len(earlier),
        records_path,
        session.shared,
    )


def tune_workloads(
    workloads: Sequence[Workload],
    target: str = "convadd-sim",
    trials: int = 64,
    records_dir: str | os.PathLike = "convadd_records",
    seed: int = 0,
    progress: bool = True,
    **kwargs,
) -> list[TuneResult]:
    """Tune each workload in turn (one progress bar each), all into one records directory.
    Ctrl-C raises `TuneInterrupted`, counting the measurements of every workload so far."""
    results: list[TuneResult] = []
    records_path = Path(records_dir) / records.RECORDS_FILE
    try:
        for wl in dict.fromkeys(workloads):
            results.append(tune_workload(wl, target, trials, records_dir, seed, progress, **kwargs))
    except KeyboardInterrupt as err:
        now = err.measured if isinstance(err, TuneInterrupted) else 0
        measured = now + sum(result.measured for result in results)
        raise TuneInterrupted(measured, records_path, results) from None
    return results


def exhaustive(
    workload: Workload, hardware: HardwareConfig, max_workers: int = 2
) -> list[tuple[TileConfig, int]]:
    """Every fitting config with its simulated cycles (timing only), in enumeration order."""
    configs = search_space.enumerate_configs(workload)
    if max_workers == 0:
        cycles = [measure_config(workload, cfg, hardware) for cfg in configs]
    else:
        pool = _pool(max_workers)
        try:
            hardware_json = [_hardware_json(hardware)] * len(configs)
            cycles = list(
                pool.map(_measure_in_worker, [workload] * len(configs), configs, hardware_json)
            )
        finally:  # on Ctrl-C too: the workers ignore it, so drop the work they have not begun
            pool.shutdown(wait=True, cancel_futures=True)
    return [(cfg, c) for cfg, c in zip(configs, cycles) if c is not None]


def random_search(
    workload: Workload,
    hardware: HardwareConfig,
    trials: int,
    seed: int = 0,
    measure: Callable[[TileConfig], int | None] | None = None,
) -> list[tuple[TileConfig, int | None]]:
    """Uniform sampling without replacement; a config that does not fit costs a trial (as a
    failed build does in the tuner) and reads None. `measure` defaults to simulating."""
    configs = list(search_space.enumerate_configs(workload))
    picks = random.Random(seed).sample(configs, min(trials, len(configs)))
    measure = measure or (lambda cfg: measure_config(workload, cfg, hardware))
    return [(cfg, measure(cfg)) for cfg in picks]


def measure_config(workload: Workload, config: TileConfig, hardware: HardwareConfig) -> int | None:
    """Simulated cycles of one config (timing only), None if it does not fit `hardware`."""
    if not search_space.fits(workload, config, hardware):
        return None
    program = search_space.lowered(workload, config)
    return int(simulate(program, hardware, functional=False).total_cycles)


# -- plumbing -------------------------------------------------------------------------------


def _run_metaschedule(
    session: _Session,
    budget: int,
    work_dir: Path,
    seed: int,
    progress: bool,
    trials_per_iter: int,
    model: cost_model.CostModel,
) -> None:
    from tqdm.auto import tqdm

    work_dir.mkdir(parents=True, exist_ok=True)
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    user_level = ms_logger.level
    if user_level == logging.NOTSET:  # else MetaSchedule prints DEBUG to stdout, and keeps it
        ms_logger.setLevel(logging.WARNING)
    unnamed = [h for h in ms_logger.handlers if h.get_name() is None]
    for handler in unnamed:  # MetaSchedule's logging config formats every handler's name
        ms_logger.removeHandler(handler)
    scorer = TransferCostModel(session, model)
    prior = model_prior(scorer.predicted)
    space = ms.space_generator.ScheduleFn(
        lambda sch: sample_config(sch, prior),
        sch_rules=[],
        postprocs=[],
        mutator_probs={MutateConfig(seed): 1.0},
    )
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=128, init_min_unmeasured=32, genetic_num_iters=3, eps_greedy=0.1
    )
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), TrialHistory(session)]
    session.progress = tqdm(
        total=budget, desc=str(session.workload), unit="trial", disable=not progress, leave=True
    )
    numpy_state = np.random.get_state()
    np.random.seed(seed)  # MetaSchedule's Python side draws from np.random
    session.defer_ctrl_c = True
    try:
        ms.tune_tir(
            tuning_module(session.workload),
            target=tvm.target.Target(session.target),
            work_dir=str(work_dir),
            max_trials_global=budget,
            num_trials_per_iter=min(trials_per_iter, budget),
            space=space,
            strategy=strategy,
            builder=ProgramBuilder(session),
            runner=SimRunner(session),
            database=ms.database.JSONDatabase(work_dir=str(work_dir)),
            cost_model=scorer,
            measure_callbacks=callbacks,
            task_scheduler="round-robin",
            num_tuning_cores=1,
            seed=seed,
        )
    finally:
        np.random.set_state(numpy_state)
        ms_logger.setLevel(user_level)
        for handler in unnamed:
            ms_logger.addHandler(handler)
        session.progress.close()


@contextmanager
def _ctrl_c_requests_stop(session: _Session) -> Iterator[None]:
    """Route SIGINT to `session` while tuning. Before MetaSchedule starts it interrupts at once;
    once it runs, the first Ctrl-C only sets `stop_requested` (the callbacks stop at the next
    safe point), a second one interrupts at once. Outside the main thread, or under a handler
    the caller installed, SIGINT is left alone."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def handler(_signum, _frame) -> None:
        first = not session.stop_requested
        session.stop_requested = True
        if not (first and session.defer_ctrl_c):
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def worker_pool(max_workers: int) -> ProcessPoolExecutor:
    """The tuner's measurement pool, for callers that simulate many configs themselves."""
    return _pool(max_workers)


def _pool(max_workers: int) -> ProcessPoolExecutor:
    """Spawned workers (forking a process that holds TVM's thread pool can deadlock), all
    started now. They start with SIGINT blocked, so a Ctrl-C sent to the whole process group
    never reaches them, even while they import; `_worker_init` then makes them exit with the
    parent."""
    pool = ProcessPoolExecutor(
        max_workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    try:
        with _sigint_blocked():
            for _ in range(max_workers):  # each submit with no idle worker spawns one
                pool.submit(int)
    except BaseException:  # a Ctrl-C held back by the mask arrives as it is lifted
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    return pool


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread; spawned children inherit the mask (as multiprocessing's
    resource tracker does). A Ctrl-C meanwhile stays pending and is delivered on exit."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _worker_init(parent: int) -> None:
    """Pool worker setup: ignore SIGINT (the parent stops the pool), and never outlive the
    parent: the kernel sends SIGKILL when it dies (Linux), and a watchdog thread polls for it
    (elsewhere too). A parent that died before this ran is noticed at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        except (OSError, AttributeError):
            pass  # the watchdog still covers it
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, interval: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def _load(path: Path) -> list[records.Record]:
    return records.load_records(path)[0] if path.exists() else []


def _recorded(path: Path, workload: Workload, target: str) -> dict[TileConfig, int]:
    """The best cycles per config of (workload, target) in the records file, read quietly:
    `_load` has reported its damaged lines once, and a line being appended may be cut."""
    found: dict[TileConfig, int] = {}
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return found
    for line in lines:
        try:
            record = records.parse_record(line.decode("utf-8"))
        except (UnicodeDecodeError, RecordsError):
            continue
        if record.workload.key == workload.key and record.target == target:
            found[record.config] = min(record.cycles, found.get(record.config, record.cycles))
    return found


def _import_tensor_intrin() -> None:
    """TuneContext imports it anyway (~14 s once); doing it here keeps the cost visible."""
    import tvm.s_tir.tensor_intrin  # noqa: F401
