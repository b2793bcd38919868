"""Records: round trip, damaged lines reported line by line, lookup order."""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing

import pytest

from tvm_convadd import records
from tvm_convadd.errors import RecordsError
from tvm_convadd.records import Record
from tvm_convadd.schedules.tile_config import AXES, LINE_PIPELINES, TileConfig
from tvm_convadd.schedules.workload import Workload, standard_epilogue

WL = Workload(1, 8, 8, 8, 8, 1, 1, epilogue=standard_epilogue(bias=True, relu=True))
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
        "config": {
            "n_tiles": 2,
            "axis": "height",
            "pipeline": "software",
            "channel_tiles": 1,
            "order": "spatial_outer",
        },
        "cycles": 900,
        "version": records.VERSION,
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
        (None, "version 1, this tvm-convadd reads 4 (older records were measured on another"),
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
        bad_line = json.dumps({**data, "version": 1})
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


def _with_bad_line(tmp_path, sample, bad: bytes):
    path = tmp_path / "r.jsonl"
    good = [r.to_json().encode() for r in sample]
    path.write_bytes(b"\n".join([good[0], bad, *good[1:]]) + b"\n")
    return path, records.load_records(path)


def test_a_non_utf8_byte_costs_its_line_only(tmp_path, sample):
    bad = sample[0].to_json().encode().replace(b'"height"', b'"h\xe9ight"')
    path, (loaded, problems) = _with_bad_line(tmp_path, sample, bad)
    assert loaded == sample
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:2: not UTF-8 text (byte 0xe9 at column ")


def _edited(record: Record, edit) -> bytes:
    data = json.loads(record.to_json())
    edit(data)
    return json.dumps(data).encode()


def _put(*path_and_value):
    *path, value = path_and_value

    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _put("workload_def", "stride", ["a", "b"]),
            "workload_def.stride ['a', 'b']: must be a list",
        ),
        (
            _put("workload_def", "stride", ["1", "1"]),
            "workload_def.stride ['1', '1']: must be a list of 2 integers",
        ),
        (_put("workload_def", "stride", 5), "workload_def.stride 5: must be a list of 2 integers"),
        (
            _put("workload_def", "stride", [1.0, 1.0]),
            "workload_def.stride [1.0, 1.0]: must be a list",
        ),
        (_put("workload_def", "epilogue", "relu"), "workload_def.epilogue 'relu': must be a list"),
        (
            _put("workload_def", "epilogue", [{"op": "add", "kind": 1}]),
            "workload_def.epilogue[0].kind 1: must be a string",
        ),
        (
            _put("workload_def", "epilogue", [{"op": "max", "kind": "const", "value": "0"}]),
            "workload_def.epilogue[0].value '0': must be a number",
        ),
        (
            _put("workload_def", "epilogue", [{"op": "shr", "kind": "const", "value": 1}]),
            "bad workload_def or config: epilogue op shr const: the vector ALU takes",
        ),
        (_put("workload_def", "groups", "2"), "workload_def.groups '2': must be an integer"),
        (
            _put("workload_def", "padding", [0, 0]),
            "workload_def.padding [0, 0]: must be a list of 4",
        ),
        (_put("workload_def", "kernel_h", "1"), "workload_def.kernel_h '1': must be an integer"),
        (_put("workload_def", "batch", 0), "bad workload_def or config: batch=0"),
        (_put("workload_def", "groups", 3), "bad workload_def or config: groups=3 must divide"),
        (_put("workload_def", "dilation", 2), "bad workload_def or config"),
        (_put("workload_def", [1, 2]), "workload_def [1, 2]: must be a JSON object"),
        (lambda data: data["workload_def"].pop("batch"), "workload_def lacks field 'batch'"),
        (_put("config", "n_tiles", "2"), "config.n_tiles '2': must be an integer"),
        (_put("config", "axis", ["height"]), "config.axis ['height']: must be a string"),
        (_put("config", "axis", "depth"), "bad workload_def or config: tile axis 'depth'"),
        (_put("config", "axis", None), "config.axis None: must be a string"),
        (_put("config", "stages", 2), "bad workload_def or config"),
        (_put("config", "height"), "config 'height': must be a JSON object"),
        (_put("target", 5), "target 5: must be a string"),
        (_put("workload", None), "workload None: must be a string"),
        (_put("cycles", "900"), "cycles '900': must be a positive integer"),
        (_put("cycles", 900.0), "cycles 900.0: must be a positive integer"),
        (_put("version", True), "version True"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_reported_line(tmp_path, sample, edit, message):
    path, (loaded, problems) = _with_bad_line(tmp_path, sample, _edited(sample[0], edit))
    assert loaded == sample
    assert len(problems) == 1 and "\n" not in problems[0]
    assert problems[0].startswith(f"{path}:2: ") and message in problems[0], problems[0]


def test_locked_holds_an_exclusive_lock_and_nests(tmp_path):
    path = tmp_path / "sub" / records.RECORDS_FILE
    with records.locked(path):
        lock = path.with_name(path.name + ".lock")
        with open(lock) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: refused
        with records.locked(path):  # the same thread again: no deadlock
            records.append_record(path, Record(WL, TARGET, TileConfig(1), 5))  # locks too
    with open(lock) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    assert records.load_records(path)[0] == [Record(WL, TARGET, TileConfig(1), 5)]
    assert records.load_dir(path.parent) == [Record(WL, TARGET, TileConfig(1), 5)]


def test_claim_hands_each_unmeasured_config_out_once(tmp_path, sample):
    path = tmp_path / records.RECORDS_FILE
    records.save_records(path, sample)
    configs = [TileConfig(2, "height", "software"), TileConfig(3), TileConfig(4), TileConfig(3)]
    assert records.claim(path, WL, TARGET, configs) == [TileConfig(3), TileConfig(4)]
    assert records.claim(path, WL, TARGET, configs) == []  # claimed by us, still running
    assert records.claim(path, WL, "convadd-sim-big-array", configs[:2]) == configs[:2]
    records.append_record(path, Record(WL, TARGET, TileConfig(3), 77))
    assert records.claim(path, WL, TARGET, [TileConfig(3)]) == []  # measured now
    assert records.load_dir(tmp_path) == [*sample, Record(WL, TARGET, TileConfig(3), 77)]


def test_a_dead_tuners_claims_are_free_again(tmp_path):
    path = tmp_path / records.RECORDS_FILE
    context = multiprocessing.get_context("fork")
    child = context.Process(target=records.claim, args=(path, WL, TARGET, [TileConfig(5)]))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert f":{child.pid}" in path.with_name(path.name + ".claims").read_text()
    assert records.claim(path, WL, TARGET, [TileConfig(5), TileConfig(6)]) == [
        TileConfig(5),
        TileConfig(6),
    ]


def _claim_in_batches(path, configs, barrier, results) -> None:
    barrier.wait()
    mine = []
    for start in range(0, len(configs), 4):
        mine += records.claim(path, WL, TARGET, configs[start : start + 4])
    results.put(mine)


def test_two_tuners_never_claim_the_same_config(tmp_path):
    path = tmp_path / records.RECORDS_FILE
    configs = [
        TileConfig(n, axis, mode) for n in range(1, 9) for axis in AXES for mode in LINE_PIPELINES
    ]
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [
        context.Process(target=_claim_in_batches, args=(path, configs, barrier, results))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    claimed = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join()
    assert sorted(map(str, [c for mine in claimed for c in mine])) == sorted(map(str, configs))


def test_a_records_file_is_read_and_warned_about_once_while_unchanged(tmp_path, sample, caplog):
    """The codegen looks up every layer: a damaged line must not warn once per layer."""
    path = tmp_path / "user.json"
    stale = json.dumps({**json.loads(sample[0].to_json()), "version": 1})
    path.write_text("\n".join([stale, sample[0].to_json()]) + "\n")
    other = Workload(1, 4, 4, 4, 4, 1, 1)
    with caplog.at_level(logging.WARNING, logger="tvm_convadd.records"):
        assert records.find_best(WL, TARGET, [tmp_path]) == sample[0].config
        assert records.find_best(other, TARGET, [tmp_path]) is None  # reads the dir again
        assert records.load_dir(tmp_path) == [sample[0]]
    assert sum("version 1" in r.getMessage() for r in caplog.records) == 1
    records.append_record(path, sample[1])  # a changed file is read again
    assert records.load_dir(tmp_path) == sample[:2]
