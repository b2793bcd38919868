"""Tuning records: one JSON line per measured config, the tuner's memory and the codegen's lookup.

A line is {"workload": key, "workload_def": {...}, "target": tag, "config": {...}, "cycles": int,
"version": 1}. Lines are appended and flushed as measurements complete, so an interrupted run
keeps what it measured; a damaged line is reported (with its number) and skipped, never fatal.
Lookup order (`find_best`): the user's records directories, then the records shipped in
`tvm_convadd/schedules/records/*.json` (like TVM's old TopHub), then None (use the heuristic).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tvm_convadd.errors import ConvAddError, RecordsError
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload

VERSION = 1
RECORDS_FILE = "records.jsonl"  # the file tuning appends to inside a records directory
RECORDS_GLOBS = ("*.json", "*.jsonl")
_FIELDS = ("workload", "workload_def", "target", "config", "cycles", "version")
_FIX = "delete the line (or re-run tuning to measure it again)"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One measurement: `workload` tiled as `config` took `cycles` on `target`."""

    workload: Workload
    target: str
    config: TileConfig
    cycles: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "workload": self.workload.key,
                "workload_def": self.workload.to_dict(),
                "target": self.target,
                "config": self.config.to_dict(),
                "cycles": self.cycles,
                "version": VERSION,
            }
        )


def target_name(target) -> str:
    """The tag a record is filed under: a tag string as given, or a Target's tag (else its str)."""
    if isinstance(target, str):
        return target
    return str(getattr(target, "tag", "") or target)


def parse_record(line: str) -> Record:
    """One record from one line; RecordsError says what is wrong with it."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise RecordsError(f"not valid JSON ({err.msg} at column {err.colno}; truncated?)") from err
    if not isinstance(data, dict):
        raise RecordsError(f"expected a JSON object, got {type(data).__name__}")
    missing = [name for name in _FIELDS if name not in data]
    if missing:
        raise RecordsError(f"missing field(s) {missing}; a record needs {list(_FIELDS)}")
    if data["version"] != VERSION:
        raise RecordsError(f"version {data['version']!r}, this tvm-convadd reads {VERSION}")
    cycles = data["cycles"]
    if not isinstance(cycles, int) or isinstance(cycles, bool) or cycles < 1:
        raise RecordsError(f"cycles {cycles!r}: must be a positive integer")
    try:
        workload = Workload.from_dict(data["workload_def"])
        config = TileConfig(**data["config"])
    except (ConvAddError, TypeError, KeyError) as err:
        raise RecordsError(f"bad workload_def or config: {err}") from err
    if workload.key != data["workload"]:
        raise RecordsError(
            f"workload key {data['workload']!r} does not match its workload_def ({workload.key})"
        )
    try:
        config.validate(workload)
    except ConvAddError as err:
        raise RecordsError(str(err)) from err
    return Record(workload, str(data["target"]), config, cycles)


def load_records(path: str | os.PathLike) -> tuple[list[Record], list[str]]:
    """All good records of a JSON-lines file, and one message per damaged line (also logged)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise RecordsError(f"cannot read records file {path}: {err.strerror}") from err
    records, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(parse_record(line))
        except RecordsError as err:
            problems.append(f"{path}:{number}: {err}; {_FIX}")
    for problem in problems:
        logger.warning("skipping tuning record %s", problem)
    return records, problems


def save_records(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """Write `records` to a new file (replacing it)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        file.writelines(record.to_json() + "\n" for record in records)


def append_record(path: str | os.PathLike, record: Record) -> None:
    """Append one record and flush, so an interrupted run keeps it; a truncated last line
    (a previous crash mid-write) is closed first so the new record stays on its own line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() > 0:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")
        file.write((record.to_json() + "\n").encode())
        file.flush()
        os.fsync(file.fileno())


def matching(records: Iterable[Record], workload: Workload, target) -> list[Record]:
    """The records of `workload` on `target`."""
    name = target_name(target)
    return [r for r in records if r.workload.key == workload.key and r.target == name]


def best_config(records: Iterable[Record], workload: Workload, target) -> TileConfig | None:
    """The fastest measured config of `workload` on `target`, or None if none was measured."""
    found = matching(records, workload, target)
    return min(found, key=lambda r: r.cycles).config if found else None


def packaged_records_dir() -> Path:
    """Pre-tuned records shipped with the package (`tvm_convadd.schedules/records`)."""
    return Path(str(resources.files("tvm_convadd.schedules") / "records"))


def load_dir(directory: str | os.PathLike) -> list[Record]:
    """Every good record in a directory's records files (damaged lines are logged and skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    paths = sorted({p for pattern in RECORDS_GLOBS for p in directory.glob(pattern)})
    return [record for path in paths for record in load_records(path)[0]]


def find_best(
    workload: Workload, target, records_dirs: Iterable[str | os.PathLike] = ()
) -> TileConfig | None:
    """The config the codegen should use: the first directory with a record for (workload,
    target) wins, the user's directories before the shipped ones; None means use the heuristic."""
    for directory in [*records_dirs, packaged_records_dir()]:
        config = best_config(load_dir(directory), workload, target)
        if config is not None:
            return config
    return None
