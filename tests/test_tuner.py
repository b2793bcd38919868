"""Tuner: MetaSchedule + the transferred cost model finds the exhaustive optimum where the
heuristic misses it; interrupted runs resume."""

from __future__ import annotations

import os
import signal

import pytest

from tvm_convadd import heuristic, records, tuner
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload, standard_epilogue
from tvm_convadd.target.registry import hardware_for_target

# a small space (429 configs) whose optimum the heuristic misses, found by measuring small
# layers on every target: a depthwise 3x3 on one read DMA queue, where the estimate's pick takes
# about 1.3x the best (test_the_heuristic_misses_the_optimum checks that this still holds)
EPILOGUE = standard_epilogue(bias=True, relu=True)
WL = Workload(1, 16, 8, 8, 16, 3, 3, padding=(1, 1, 1, 1), groups=16, epilogue=EPILOGUE)
TARGET = "convadd-sim-single-queue"


class Interrupt(Exception):
    """Stands in for Ctrl-C in the middle of a tuning run."""


@pytest.fixture(scope="module")
def measured() -> dict[TileConfig, int]:
    return dict(tuner.exhaustive(WL, hardware_for_target(TARGET)))


@pytest.fixture(scope="module")
def optimum(measured) -> int:
    return min(measured.values())


def test_the_heuristic_misses_the_optimum(measured, optimum):
    """Else finding the optimum would prove nothing the heuristic does not do already."""
    pick = heuristic.default_config(WL, hardware_for_target(TARGET))
    assert measured[pick] > optimum


def test_candidate_module_carries_workload_and_choice():
    mod = tuner.tuning_module(WL)
    assert tuner.workload_of(mod) == WL
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    tuner.sample_config(sch)
    assert isinstance(tuner.config_of(sch.mod), TileConfig)


def test_tuning_finds_the_optimum_the_heuristic_misses(tmp_path, measured, optimum):
    result = tuner.tune_workload(WL, TARGET, trials=32, records_dir=tmp_path, progress=False)
    assert result.best_cycles == optimum
    assert result.best_cycles < measured[heuristic.default_config(WL, hardware_for_target(TARGET))]
    assert result.measured == len(records.load_records(result.records_path)[0])
    assert records.find_best(WL, TARGET, [tmp_path]) == result.best
    assert len(result.trials) <= 32


def test_interrupted_run_resumes_without_losing_records(tmp_path, optimum):
    seen: list[TileConfig] = []

    def interrupt_after_five(config: TileConfig, _cycles: int) -> None:
        seen.append(config)
        if len(seen) == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        tuner.tune_workload(
            WL,
            TARGET,
            trials=16,
            records_dir=tmp_path,
            progress=False,
            on_measure=interrupt_after_five,
        )
    kept, problems = records.load_records(tmp_path / records.RECORDS_FILE)
    assert [r.config for r in kept] == seen and problems == []

    remeasured: list[TileConfig] = []
    result = tuner.tune_workload(
        WL,
        TARGET,
        trials=16,
        records_dir=tmp_path,
        progress=False,
        on_measure=lambda config, _: remeasured.append(config),
    )
    assert result.reused == 5
    assert not set(remeasured) & set(seen)  # earlier records are served, never re-simulated
    after, _ = records.load_records(tmp_path / records.RECORDS_FILE)
    assert after[:5] == kept and len(after) == 5 + result.measured <= 16


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C as an interactive Python sees it: a background job (a CI runner started with `&`)
    inherits SIGINT ignored, and tune then rightly leaves it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_at_a_safe_point_with_the_records_kept(tmp_path, ctrl_c_raises):
    seen: list[TileConfig] = []

    def ctrl_c_at_the_third(config: TileConfig, _cycles: int) -> None:
        seen.append(config)
        if len(seen) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(tuner.TuneInterrupted) as stop:
        tuner.tune_workload(
            WL,
            TARGET,
            trials=16,
            records_dir=tmp_path,
            progress=False,
            max_workers=0,
            on_measure=ctrl_c_at_the_third,
        )
    kept, problems = records.load_records(tmp_path / records.RECORDS_FILE)
    assert problems == [] and stop.value.measured == len(kept)
    assert [r.config for r in kept][:3] == seen  # the batch's finished measurements are kept too
    assert len({r.config for r in kept}) == len(kept) <= 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_exhausted_budget_measures_nothing(tmp_path):
    first = tuner.tune_workload(WL, TARGET, trials=8, records_dir=tmp_path, progress=False)
    again = tuner.tune_workload(
        WL, TARGET, trials=first.measured, records_dir=tmp_path, progress=False
    )
    assert again.measured == 0 and again.trials == () and again.best_cycles == first.best_cycles


def test_random_search_counts_misfits_as_trials():
    hardware = hardware_for_target("convadd-sim")
    wl = Workload(1, 64, 56, 56, 256, 1, 1)
    table = {TileConfig(56, "height", "software"): 1}
    trials = tuner.random_search(wl, hardware, 10, seed=1, measure=table.get)
    assert len(trials) == 10 and len({cfg for cfg, _ in trials}) == 10


def test_the_prior_follows_the_models_ranking_and_keeps_every_config_possible():
    predicted = [30.0, 10.0, 20.0, 40.0]
    prior = tuner.model_prior(predicted)
    assert abs(sum(prior) - 1) < 1e-9 and min(prior) > 0
    assert sorted(range(4), key=lambda i: -prior[i]) == sorted(range(4), key=predicted.__getitem__)


def test_a_neighbour_exists_for_every_config_of_a_space_with_grid_only_pipelines():
    """A pipeline mode only 2-D grids have (no 1-D tiling to move to) still has neighbours."""
    import random

    from tvm_convadd import search_space

    wl = Workload(1, 64, 7, 7, 32, 1, 1, epilogue=standard_epilogue(bias=True))
    configs = search_space.enumerate_configs(wl)
    rng = random.Random(0)
    for index in range(len(configs)):
        moves = {tuner.neighbour(configs, index, rng) for _ in range(8)}
        assert index not in moves and all(0 <= m < len(configs) for m in moves)
