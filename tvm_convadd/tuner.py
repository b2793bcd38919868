"""Tune a workload's TileConfig with MetaSchedule: XGBoost picks, the simulator measures.

The design space is one `sample_categorical` over the workload's enumerated configs, its value
annotated on the root block, so every candidate module names its config. The builder lowers
that config to a Program (a config that does not fit fails the build and is never measured),
the runner simulates it (timing only) in a process pool, and each measurement is appended to
the records file as it completes. Import this module lazily: MetaSchedule's TuneContext pulls
in `tvm.s_tir.tensor_intrin` (~14 s) on first use.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
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
from tvm.s_tir.meta_schedule.feature_extractor import PyFeatureExtractor
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.mutator import PyMutator
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerInput, RunnerResult

from tvm_convadd import heuristic, records, search_space
from tvm_convadd.errors import TileConfigError
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


def sample_config(sch: s_tir.Schedule) -> None:
    """The design space: one categorical over the configs, recorded on the root block.

    The number of choices depends only on the module (fixed), never on a sampled value:
    traces are replayed with mutated decisions, so no Python branch may read one."""
    count = len(search_space.enumerate_configs(workload_of(sch.mod)))
    choice = sch.sample_categorical(list(range(count)), [1.0 / count] * count)
    sch.annotate(sch.get_sblock("root"), CHOICE_ATTR, choice)


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
    elif knob == "axis":
        axes = {c.axis for c in configs} - {old.axis}
        moves = [
            min(
                (i for i, c in enumerate(configs) if c.axis == axis and c.pipeline == old.pipeline),
                key=lambda i: abs(math.log(configs[i].n_tiles / old.n_tiles)),
            )
            for axis in axes
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
class ConfigFeatures(PyFeatureExtractor):
    """Features from the config and the analytic cost model: MetaSchedule's per-store features
    see the same (unscheduled) stores in every candidate and cannot tell them apart."""

    def __init__(self, hardware: HardwareConfig) -> None:
        self.hardware = hardware

    def extract_from(self, _context, candidates) -> list:
        rows = []
        for candidate in candidates:
            mod = candidate.sch.mod
            vector = heuristic.features(workload_of(mod), config_of(mod), self.hardware)
            rows.append(tvm.runtime.tensor(np.asarray([vector], dtype="float32")))
        return rows


@dataclass
class _Session:
    """What builder, runner and history share during one tune: the hardware, the records file,
    the cache of earlier measurements, and the per-trial history."""

    workload: Workload
    target: str
    hardware: HardwareConfig
    records_path: Path
    known: dict[TileConfig, int]  # config -> cycles, earlier runs and this one
    on_measure: MeasureHook | None = None
    pool: ProcessPoolExecutor | None = None
    artifacts: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="convadd_tune_"))
    trials: list[int | None] = field(default_factory=list)
    measured: int = 0
    progress: object = None
    interrupted: BaseException | None = None  # raised in a callback; FFI would mangle its type

    def record(self, config: TileConfig, cycles: int) -> None:
        """Persist one new measurement at once (append + flush), then tell the caller."""
        self.known[config] = cycles
        self.measured += 1
        records.append_record(
            self.records_path, records.Record(self.workload, self.target, config, cycles)
        )
        if self.on_measure is not None:
            try:
                self.on_measure(config, cycles)
            except BaseException as err:
                self.interrupted = err
                raise


@derived_object
class ProgramBuilder(PyBuilder):
    """Lowers each candidate's config to a Program JSON artifact; no TVM codegen."""

    def __init__(self, session: _Session) -> None:
        self.session = session

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        return [self._build_one(bi.mod) for bi in build_inputs]

    def _build_one(self, mod: tvm.IRModule) -> BuilderResult:
        session = self.session
        config = config_of(mod)
        # RemoveBuildArtifact deletes dirname(artifact): one directory per artifact
        directory = tempfile.mkdtemp(dir=session.artifacts)
        artifact = os.path.join(directory, "program.json")
        if config in session.known:
            with open(artifact, "w") as file:
                json.dump(
                    {"cached_cycles": session.known[config], "config": config.to_dict()}, file
                )
            return BuilderResult(artifact, None)
        try:
            program = search_space.lowered(session.workload, config)
        except Exception as err:  # a schedule or lowering bug must not stop the whole tune
            return BuilderResult(None, f"{config}: lowering failed: {err}")
        over = overflowing(program, session.hardware)
        if over:
            details = "; ".join(f"{b} needs {n} B, has {c} B" for b, (n, c) in over.items())
            return BuilderResult(
                None,
                f"{config} does not fit {session.hardware.name}: {details}; "
                "the tuner skips it (more tiles or another axis fit)",
            )
        with open(artifact, "w") as file:
            file.write(program.to_json())
        return BuilderResult(artifact, None)


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
        return [self._run_one(ri.artifact_path) for ri in runner_inputs]

    def _run_one(self, path: str) -> RunnerFuture:
        session = self.session
        with open(path) as file:
            head = file.read(200)
        if head.startswith('{"cached_cycles"'):
            with open(path) as file:
                cycles = int(json.load(file)["cached_cycles"])
            done: Future = Future()
            done.set_result(cycles)
            return self._future(done, None)
        config = _program_config(path)
        if session.pool is None:
            future: Future = Future()
            future.set_result(simulate_artifact(path, _hardware_json(session.hardware)))
        else:
            hardware = _hardware_json(session.hardware)
            future = session.pool.submit(simulate_artifact, path, hardware)
        return self._future(future, config)

    def _future(self, future: Future, new_config: TileConfig | None) -> RunnerFuture:
        session, clock_hz = self.session, self.session.hardware.clock_mhz * 1e6

        def result() -> RunnerResult:
            try:
                cycles = future.result()
            except Exception as err:  # a simulator error is this candidate's failure only
                return RunnerResult(None, f"simulation failed: {err}")
            if new_config is not None:
                session.record(new_config, cycles)
            return RunnerResult([cycles / clock_hz], None)

        return RunnerFuture(f_done=future.done, f_result=result)


def _program_config(path: str) -> TileConfig:
    with open(path) as file:
        meta = json.load(file)["meta"]
    return TileConfig(**meta["config"])


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
) -> TuneResult:
    """Tune `workload` for `target` with MetaSchedule + XGBoost, `trials` measurements in all.

    Records already in `records_dir` count toward `trials` and are never re-measured, so an
    interrupted run, started again, spends only what is left. `max_workers=0` simulates in
    this process. `on_measure(config, cycles)` runs after each new record is written."""
    _import_tensor_intrin()
    name = records.target_name(target)
    hardware = hardware_for_target(target)
    records_path = Path(records_dir) / records.RECORDS_FILE
    earlier = records.matching(_load(records_path), workload, name)
    known = {}
    for record in earlier:
        known[record.config] = min(record.cycles, known.get(record.config, record.cycles))
    session = _Session(workload, name, hardware, records_path, known, on_measure)
    budget = min(trials - len(known), len(search_space.enumerate_configs(workload)))
    if budget > 0:
        _run_metaschedule(
            session,
            budget,
            Path(records_dir) / MS_DIR / name,
            seed,
            progress,
            max_workers,
            trials_per_iter,
        )
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
    """Tune each workload in turn (one progress bar each), all into one records directory."""
    return [
        tune_workload(wl, target, trials, records_dir, seed, progress, **kwargs)
        for wl in dict.fromkeys(workloads)
    ]


def exhaustive(
    workload: Workload, hardware: HardwareConfig, max_workers: int = 2
) -> list[tuple[TileConfig, int]]:
    """Every fitting config with its simulated cycles (timing only), in enumeration order."""
    configs = search_space.enumerate_configs(workload)
    if max_workers == 0:
        cycles = [measure_config(workload, cfg, hardware) for cfg in configs]
    else:
        with _pool(max_workers) as pool:
            hardware_json = [_hardware_json(hardware)] * len(configs)
            cycles = list(
                pool.map(_measure_in_worker, [workload] * len(configs), configs, hardware_json)
            )
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
    max_workers: int,
    trials_per_iter: int,
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
    space = ms.space_generator.ScheduleFn(
        sample_config, sch_rules=[], postprocs=[], mutator_probs={MutateConfig(seed): 1.0}
    )
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=128, init_min_unmeasured=32, genetic_num_iters=3, eps_greedy=0.1
    )
    cost_model = ms.cost_model.XGBModel(
        extractor=ConfigFeatures(session.hardware),
        num_warmup_samples=trials_per_iter,
        num_tuning_cores=1,
    )
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), TrialHistory(session)]
    session.progress = tqdm(
        total=budget, desc=str(session.workload), unit="trial", disable=not progress, leave=True
    )
    numpy_state = np.random.get_state()
    np.random.seed(seed)  # XGBModel scores candidates with np.random before its warm-up ends
    try:
        session.pool = _pool(max_workers) if max_workers > 0 else None
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
            cost_model=cost_model,
            measure_callbacks=callbacks,
            task_scheduler="round-robin",
            num_tuning_cores=1,
            seed=seed,
        )
    except BaseException:
        if session.interrupted is not None:  # re-raise what the caller raised, not FFI's copy
            raise session.interrupted from None
        raise
    finally:
        np.random.set_state(numpy_state)
        ms_logger.setLevel(user_level)
        for handler in unnamed:
            ms_logger.addHandler(handler)
        session.progress.close()
        if session.pool is not None:
            session.pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(session.artifacts, ignore_errors=True)  # the build artifacts' scratch


def _pool(max_workers: int) -> ProcessPoolExecutor:
    """Spawned workers: forking a process that holds TVM's thread pool can deadlock."""
    return ProcessPoolExecutor(max_workers, mp_context=multiprocessing.get_context("spawn"))


def _load(path: Path) -> list[records.Record]:
    return records.load_records(path)[0] if path.exists() else []


def _import_tensor_intrin() -> None:
    """TuneContext imports it anyway (~14 s once); doing it here keeps the cost visible."""
    import tvm.s_tir.tensor_intrin  # noqa: F401
