"""Tuning records: one JSON line per measured config, the tuner's memory and the codegen's lookup.

A line is {"workload": key, "workload_def": {...}, "target": tag, "config": {...}, "cycles": int,
"version": 1}. Lines are appended and flushed as measurements complete, so an interrupted run
keeps what it measured; a damaged line (bad JSON, bad UTF-8, a field of the wrong type) is
reported as path:line and skipped, never fatal.
Lookup order (`find_best`): the user's records directories, then the records shipped in
`tvm_convadd/schedules/records/*.json` (like TVM's old TopHub), then None (use the heuristic).

Several tuners may share one records file. `locked(path)` holds an exclusive cross-process
lock (fcntl.flock on `<path>.lock`); `claim(path, workload, target, configs)` uses it to hand
each config to one tuner only, so that no two tuners measure the same config.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tvm_convadd.errors import ConvAddError, RecordsError
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload

# 4: the DMA streams through gaps shorter than a burst; 3: a shared DRAM channel, a vload
# queue, out double-buffered; 2: epilogue chains, groups, 2-D tiles. Cycles of an older
# version are another machine's.
VERSION = 4
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
    if type(data["version"]) is not int or data["version"] != VERSION:
        raise RecordsError(
            f"version {data['version']!r}, this tvm-convadd reads {VERSION} (older records "
            "were measured on another cost model: re-tune)"
        )
    cycles = data["cycles"]
    if type(cycles) is not int or cycles < 1:
        raise RecordsError(f"cycles {cycles!r}: must be a positive integer")
    for name in ("workload", "target"):
        if not isinstance(data[name], str):
            raise RecordsError(f"{name} {data[name]!r}: must be a string")
    for name in ("workload_def", "config"):
        if not isinstance(data[name], dict):
            raise RecordsError(f"{name} {data[name]!r}: must be a JSON object")
    _check_types("workload_def", data["workload_def"])
    _check_types("config", data["config"])
    try:
        workload = Workload.from_dict(data["workload_def"])
        config = TileConfig.from_dict(data["config"])
    except (ConvAddError, TypeError, ValueError, KeyError) as err:
        raise RecordsError(f"bad workload_def or config: {err}") from err
    if workload.key != data["workload"]:
        raise RecordsError(
            f"workload key {data['workload']!r} does not match its workload_def ({workload.key})"
        )
    try:
        config.validate(workload)
    except ConvAddError as err:
        raise RecordsError(str(err)) from err
    return Record(workload, data["target"], config, cycles)


# what a record's workload_def and config hold, field by field: the constructors coerce
# ("1" -> 1 in a stride) or store what they get (1 as bias), so the types are checked here
_TEMPLATES = {
    "workload_def": Workload(1, 1, 1, 1, 1, 1, 1).to_dict(),
    "config": TileConfig().to_dict(),
}


def _check_types(what: str, given: dict) -> None:
    """Each field of `given` of the JSON type tvm-convadd writes (1, 1.0 and true differ)."""
    for name, example in json.loads(json.dumps(_TEMPLATES[what])).items():
        if name not in given:
            raise RecordsError(f"{what} lacks field {name!r}")
        value = given[name]
        if name == "epilogue":
            _check_epilogue(f"{what}.{name}", value)
        elif not _same_type(value, example):
            raise RecordsError(f"{what}.{name} {value!r}: must be {_describe(example)}")


def _check_epilogue(what: str, ops) -> None:
    """An epilogue is a list of {"op": str, "kind": str[, "value": number]} objects."""
    if not isinstance(ops, list):
        raise RecordsError(f"{what} {ops!r}: must be a list of epilogue ops")
    for index, op in enumerate(ops):
        where = f"{what}[{index}]"
        if not isinstance(op, dict) or set(op) - {"op", "kind", "value"}:
            raise RecordsError(f"{where} {op!r}: must be an object with op, kind[, value]")
        for name in ("op", "kind"):
            if not isinstance(op.get(name), str):
                raise RecordsError(f"{where}.{name} {op.get(name)!r}: must be a string")
        value = op.get("value")
        if "value" in op and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RecordsError(f"{where}.value {value!r}: must be a number")


def _describe(example) -> str:
    if isinstance(example, list):
        return f"a list of {len(example)} {_describe(example[0]).removeprefix('an ')}s"
    return {bool: "true or false", int: "an integer", str: "a string"}[type(example)]


def _same_type(value, example) -> bool:
    if type(value) is not type(example):
        return False
    if isinstance(value, list):
        return len(value) == len(example) and all(map(_same_type, value, example))
    return True


def load_records(path: str | os.PathLike) -> tuple[list[Record], list[str]]:
    """All good records of a JSON-lines file, and one message per damaged line (also logged)."""
    records, problems = _read(Path(path))
    for problem in problems:
        logger.warning("skipping tuning record %s", problem)
    return records, problems


def _read(path: Path) -> tuple[list[Record], list[str]]:
    """Good records and "path:line: problem" messages; lines are decoded one by one, so a
    stray non-UTF-8 byte costs its own line only."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as err:
        raise RecordsError(f"cannot read records file {path}: {err.strerror}") from err
    records, problems = [], []
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(
                f"{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                f"{err.start + 1}); {_FIX}"
            )
            continue
        if not line.strip():
            continue
        try:
            records.append(parse_record(line))
        except RecordsError as err:
            problems.append(f"{path}:{number}: {err}; {_FIX}")
    return records, problems


def save_records(path: str | os.PathLike, records: Iterable[Record]) -> None:
    """Write `records` to a new file (replacing it)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as file:
        file.writelines(record.to_json() + "\n" for record in records)


def append_record(path: str | os.PathLike, record: Record) -> None:
    """Append one record and flush, so an interrupted run keeps it; a truncated last line
    (a previous crash mid-write) is closed first so the new record stays on its own line.
    Holds `locked(path)`, so concurrent tuners' lines never interleave."""
    path = Path(path)
    with locked(path), open(path, "a+b") as file:
        file.seek(0, os.SEEK_END)
        if file.tell() > 0:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                file.write(b"\n")
        file.write((record.to_json() + "\n").encode())
        file.flush()
        os.fsync(file.fileno())


# -- sharing a records file between tuners ---------------------------------------------------

_held = threading.local()  # the records files whose lock this thread holds: locked() nests


@contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive cross-process lock of the records file `path` (fcntl.flock on
    `<path>.lock` beside it, created if needed); blocks until no other holder is left.

    Wrap "read the records, decide, append" in it to make that step atomic across tuners.
    Nested use in one thread is fine (only the outermost takes the lock); other threads and
    processes wait. flock is advisory and per host: NFS without lock support is not covered.
    """
    path = Path(path).absolute()
    held = _held.__dict__.setdefault("paths", set())
    if path in held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(_beside(path, ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim(
    path: str | os.PathLike, workload: Workload, target, configs: Iterable[TileConfig]
) -> list[TileConfig]:
    """The `configs` this tuner should measure now: those of (workload, target) neither in
    the records file `path` nor claimed by a tuner still running, each now claimed by us.

    Claims live in `<path>.claims` (JSON lines: workload key, target, config, owner
    "host:pid"), rewritten under `locked(path)`. A claim ends when the config's record is in
    `path`, or when its owner exits (a crashed tuner's configs become free); owners on another
    host count as running. A config we claimed earlier is not handed out again either.
    """
    path = Path(path)
    name = target_name(target)
    wanted = list(dict.fromkeys(configs))
    with locked(path):
        recorded = _read(path)[0] if path.exists() else []
        done = {(r.workload.key, r.target, r.config) for r in recorded}
        claims = [c for c in _read_claims(path) if c[:3] not in done and _running(c[3])]
        taken = done | {c[:3] for c in claims}
        mine = [config for config in wanted if (workload.key, name, config) not in taken]
        owner = f"{socket.gethostname()}:{os.getpid()}"  # at call time: forked tuners differ
        claims += [(workload.key, name, config, owner) for config in mine]
        _write_claims(path, claims)
    return mine


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _read_claims(path: Path) -> list[tuple[str, str, TileConfig, str]]:
    """The claims file's entries; an unreadable line is dropped (the file is only ours)."""
    try:
        lines = _beside(path, ".claims").read_bytes().splitlines()
    except FileNotFoundError:
        return []
    claims = []
    for raw in lines:
        try:
            data = json.loads(raw)
            claims.append(
                (data["workload"], data["target"], TileConfig(**data["config"]), data["owner"])
            )
        except (ValueError, TypeError, KeyError):
            continue
    return claims


def _write_claims(path: Path, claims: list) -> None:
    """Replace the claims file in one rename, so a crash never leaves half of it."""
    lines = [
        json.dumps({"workload": w, "target": t, "config": c.to_dict(), "owner": o}) + "\n"
        for w, t, c, o in claims
    ]
    temporary = _beside(path, f".claims.{os.getpid()}.tmp")
    temporary.write_text("".join(lines))
    os.replace(temporary, _beside(path, ".claims"))


def _running(owner: str) -> bool:
    """Whether the process `owner` ("host:pid") may still be measuring."""
    host, _, pid = str(owner).rpartition(":")
    if host != socket.gethostname():
        return True  # another host's process: we cannot tell, so it keeps its claims
    if not pid.isdigit() or int(pid) < 1:
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


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
    """Every good record in a directory's records files (damaged lines are logged and skipped).

    A file is parsed again only when it changed (its size or modification time), so the
    codegen, which looks up every layer of a network, reads and warns about a file once."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    paths = sorted({p for pattern in RECORDS_GLOBS for p in directory.glob(pattern)})
    return [record for path in paths for record in _load_unchanged(path)]


_parsed: dict[Path, tuple[tuple[int, int], list[Record]]] = {}  # path -> (stamp, records)


def _load_unchanged(path: Path) -> list[Record]:
    """`load_records(path)`'s records, from the last parse while the file is unchanged."""
    try:
        stat = path.stat()
    except OSError as err:
        raise RecordsError(f"cannot read records file {path}: {err.strerror}") from err
    key, stamp = path.resolve(), (stat.st_mtime_ns, stat.st_size)
    cached = _parsed.get(key)
    if cached is not None and cached[0] == stamp:
        return list(cached[1])
    records = load_records(path)[0]
    _parsed[key] = (stamp, records)
    return list(records)


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
