"""Records: round trip, damaged lines reported line by line, lookup order."""

from __future__ import annotations

import json
import logging

import pytest

from tvm_convadd import records
from tvm_convadd.errors import RecordsError
from tvm_convadd.records import Record
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload

WL = Workload(1, 8, 8, 8, 8, 1, 1, bias=True, relu=True)
OTHER = Workload(1, 8, 8, 8, 16, 1, 1)
TARGET = "convadd-sim"


@pytest.fixture
def sample() -> list[Record]:
    return [
        Record(WL, TARGET, TileConfig(2, "height", "software"), 900),
        Record(WL, TARGET, TileConfig(4, "width", "vthread"), 700),
        Record(WL, "convadd-sim-slow-add", TileConfig(8, "height", "none"), 100),
        Record(OTHER, TARGET, TileConfig(1, "channel", "none"), 50),
    ]


def test_round_trip(tmp_path, sample):
    path = tmp_path / "r.jsonl"
    records.save_records(path, sample)
    loaded, problems = records.load_records(path)
    assert loaded == sample and problems == []
    line = json.loads(path.read_text().splitlines()[0])
    assert line == {
        "workload": WL.key,
        "workload_def": json.loads(json.dumps(WL.to_dict())),
        "target": TARGET,
        "config": {"n_tiles": 2, "axis": "height", "pipeline": "software"},
        "cycles": 900,
        "version": 1,
    }


def test_best_config_filters_workload_and_target(sample):
    assert records.best_config(sample, WL, TARGET) == TileConfig(4, "width", "vthread")
    assert records.best_config(sample, WL, "convadd-sim-big-array") is None


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"workload": "x", "cycl', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"workload": "x"}', "missing field"),
        (None, "cycles -3"),
        (None, "version 2"),
        (None, "does not match its workload_def"),
        (None, "tile count 99"),
    ],
)
def test_damaged_line_is_reported_and_good_records_load(
    tmp_path, sample, caplog, bad_line, message
):
    good = [r.to_json() for r in sample]
    data = json.loads(good[0])
    if message.startswith("cycles"):
        bad_line = json.dumps({**data, "cycles": -3})
    elif message.startswith("version"):
        bad_line = json.dumps({**data, "version": 2})
    elif message.startswith("does not"):
        bad_line = json.dumps({**data, "workload": OTHER.key})
    elif message.startswith("tile count"):
        bad_line = json.dumps({**data, "config": {**data["config"], "n_tiles": 99}})
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([good[0], bad_line, *good[1:]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="tvm_convadd.records"):
        loaded, problems = records.load_records(path)
    assert loaded == sample
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:2: ") and message in problems[0]
    assert "delete the line" in problems[0]
    assert any(message in r.getMessage() for r in caplog.records)


def test_truncated_last_line_then_append_keeps_both(tmp_path, sample):
    path = tmp_path / "r.jsonl"
    text = "".join(r.to_json() + "\n" for r in sample[:2])
    path.write_text(text + sample[2].to_json()[:40])  # a crash mid-write
    records.append_record(path, sample[3])
    loaded, problems = records.load_records(path)
    assert loaded == [sample[0], sample[1], sample[3]]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:3: ")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(RecordsError, match="cannot read records file"):
        records.load_records(tmp_path / "nope.jsonl")


def test_find_best_prefers_the_users_directory(tmp_path, monkeypatch, sample):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    records.save_records(shipped / "resnet.json", [Record(WL, TARGET, TileConfig(1), 10)])
    monkeypatch.setattr(records, "packaged_records_dir", lambda: shipped)
    assert records.find_best(WL, TARGET, [user]) == TileConfig(1)  # falls back to shipped
    records.save_records(user / records.RECORDS_FILE, sample)
    assert records.find_best(WL, TARGET, [user]) == TileConfig(4, "width", "vthread")
    assert records.find_best(Workload(1, 4, 4, 4, 4, 1, 1), TARGET, [user]) is None


def test_packaged_records_dir_is_inside_the_package():
    assert records.packaged_records_dir().parts[-2:] == ("schedules", "records")
