"""Cost model: trained on other layers' records, it ranks a layer it never saw; bad records
are a one-line error."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tvm_convadd import cost_model, heuristic, records, search_space, tuner
from tvm_convadd.errors import RecordsError
from tvm_convadd.schedules.workload import Workload, standard_epilogue
from tvm_convadd.target.registry import hardware_for_target

TARGET = "convadd-sim"
HARDWARE = hardware_for_target(TARGET)
RELU = standard_epilogue(relu=True, residual=False)
BIAS_RESIDUAL = standard_epilogue(bias=True, relu=True)
TRAINING = [  # small layers (cheap to lower), of the shapes networks have
    Workload(1, 32, 12, 12, 64, 1, 1, epilogue=RELU),
    Workload(1, 64, 8, 8, 32, 1, 1, epilogue=BIAS_RESIDUAL),
    Workload(1, 16, 12, 12, 32, 3, 3, padding=(1, 1, 1, 1), epilogue=RELU),
    Workload(1, 32, 8, 8, 32, 3, 3, padding=(1, 1, 1, 1), groups=4, epilogue=RELU),
]
HELD_OUT = Workload(1, 48, 10, 10, 48, 1, 1, epilogue=BIAS_RESIDUAL)
PER_LAYER = 16


def sampled(workload: Workload, count: int, seed: int) -> dict:
    """`count` random configs of the layer whose footprint can fit, simulated (misfits left out)."""
    configs = [
        c
        for c in search_space.enumerate_configs(workload)
        if heuristic.may_fit(workload, c, HARDWARE)
    ]
    picks = random.Random(seed).sample(configs, min(count, len(configs)))
    measured = {c: tuner.measure_config(workload, c, HARDWARE) for c in picks}
    return {c: v for c, v in measured.items() if v is not None}


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory):
    """A user's records directory holding measurements of the training layers only."""
    directory = tmp_path_factory.mktemp("records")
    found = [
        records.Record(wl, TARGET, config, cycles)
        for seed, wl in enumerate(TRAINING)
        for config, cycles in sampled(wl, PER_LAYER, seed).items()
    ]
    records.save_records(directory / records.RECORDS_FILE, found)
    return directory


@pytest.fixture(scope="module")
def held_out() -> dict:
    return sampled(HELD_OUT, 30, seed=99)


def null_correlations(measured: list[int], draws: int = 400) -> np.ndarray:
    """Spearman's rho of random orderings against the measurements: chance, measured."""
    rng = np.random.default_rng(0)
    return np.asarray(
        [
            cost_model.rank_correlation(rng.permutation(len(measured)), measured)
            for _ in range(draws)
        ]
    )


def test_the_model_trains_on_records_and_ranks_an_unseen_layer_better_than_chance(
    records_dir, held_out
):
    model = cost_model.pretrained([records_dir])
    assert {s.workload for s in model.samples} >= set(TRAINING) and HELD_OUT not in {
        s.workload for s in model.samples
    }
    configs, measured = list(held_out), list(held_out.values())
    rho = cost_model.rank_correlation(model.predict(HELD_OUT, configs, HARDWARE), measured)
    chance = null_correlations(measured)
    assert rho > chance.mean() + 3 * chance.std()  # three standard deviations above chance


def test_with_no_records_the_model_ranks_as_the_analytic_estimate(held_out):
    model = cost_model.train([])
    configs = list(held_out)
    predicted = model.predict(HELD_OUT, configs, HARDWARE)
    estimates = [heuristic.estimate(HELD_OUT, c, HARDWARE).cycles for c in configs]
    assert list(predicted) == estimates


def test_the_layers_own_measurements_move_its_predictions_toward_them(records_dir, held_out):
    model = cost_model.pretrained([records_dir])
    configs, measured = list(held_out), np.asarray(list(held_out.values()), dtype=float)
    own = [cost_model.Sample(HELD_OUT, c, HARDWARE, int(v)) for c, v in zip(configs, measured)]
    before = np.abs(np.log(model.predict(HELD_OUT, configs, HARDWARE) / measured)).mean()
    after = np.abs(np.log(model.with_layer(own).predict(HELD_OUT, configs, HARDWARE) / measured))
    assert after.mean() < before


@pytest.mark.parametrize(
    "content",
    [b"not json at all\n{also not\n", b"\xff\xfe\x00garbage\n", b'{"workload": 1}\n'],
    ids=["text", "binary", "wrong fields"],
)
def test_a_records_file_with_no_record_is_a_one_line_error(tmp_path, content):
    bad = tmp_path / "broken.jsonl"
    bad.write_bytes(content)
    with pytest.raises(RecordsError) as error:
        cost_model.pretrained([tmp_path])
    message = str(error.value)
    assert "\n" not in message and str(bad) in message and "move the file" in message
    assert bad.read_bytes() == content  # nothing lost


def test_damaged_lines_are_skipped_and_the_good_ones_train(tmp_path, records_dir):
    good = (records_dir / records.RECORDS_FILE).read_bytes().splitlines(keepends=True)
    mixed = tmp_path / records.RECORDS_FILE
    mixed.write_bytes(b"".join([good[0], b"{cut off\n", *good[1:]]))
    model = cost_model.pretrained([tmp_path])
    assert len(model.samples) == len(cost_model.pretrained([records_dir]).samples)
