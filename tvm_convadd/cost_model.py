"""A cost model that transfers across layers: XGBoost on scale-free features of a config.

Each config is described by its knobs and by the analytic model's view of it (the estimate and
each unit's busy cycles, from `heuristic.estimate`), all as ratios to the analytic bound (the
busiest unit) or as logs of counts, so a 7x7 layer and a 56x56 one look alike where they
behave alike. The target is log(measured / estimated cycles): the model learns where the
analytic estimate is wrong, and with nothing learned it ranks as the estimate does.

It is trained on tuning records of other layers (the shipped ones and the user's), so a layer
that was never measured is already ranked well; `with_layer` refits it with a layer's own
measurements weighted up, which is how the tuner keeps learning during a search.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tvm_convadd import heuristic, records
from tvm_convadd.errors import ConvAddError, RecordsError
from tvm_convadd.schedules.tile_config import AXES, ORDERS, PIPELINES, TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.hardware import HardwareConfig
from tvm_convadd.target.isa import UNITS
from tvm_convadd.target.registry import hardware_for_target

logger = logging.getLogger(__name__)

ROUNDS = 150  # boosting rounds: a few hundred samples per layer, a few dozen layers
PARAMS = {
    "max_depth": 5,
    "eta": 0.1,
    "subsample": 0.8,
    "colsample_bytree": 0.9,
    "min_child_weight": 1.0,
    "objective": "reg:squarederror",
    "nthread": 1,
}
LAYER_WEIGHT = 3.0  # in `with_layer`: the layer's own samples weigh this many other layers


@dataclass(frozen=True)
class Sample:
    """One measurement: `workload` tiled as `config` took `cycles` on `hardware`."""

    workload: Workload
    config: TileConfig
    hardware: HardwareConfig
    cycles: int


@lru_cache(maxsize=65536)
def _estimate(workload: Workload, config: TileConfig, hardware: HardwareConfig):
    return heuristic.estimate(workload, config, hardware)


@lru_cache(maxsize=65536)
def features(workload: Workload, config: TileConfig, hardware: HardwareConfig) -> tuple:
    """The config's knobs and the analytic estimate, each scale-free (see the module doc)."""
    est = _estimate(workload, config, hardware)
    busy = [float(est.busy.get(unit, 0)) for unit in UNITS]
    bound = max(max(busy), 1.0)
    spatial_extent = config.axis_extent(workload) if config.axis != "channel" else 1
    spatial_tile = config.tile_extent(workload) if config.axis != "channel" else 1
    channel_tile = config.channel_tile_extent(workload)
    full = est.full
    per_tile = bound / max(est.tiles, 1)
    return (
        math.log2(max(est.tiles, 1)),
        math.log2(config.spatial_count),
        math.log2(config.channel_count),
        math.log2(config.effective_reduce_tiles(workload)),
        spatial_tile / spatial_extent,
        channel_tile / workload.out_channels,
        float(spatial_extent % spatial_tile != 0),
        float(workload.out_channels % channel_tile != 0),
        float(config.input_once(workload)),
        *(float(config.axis == axis) for axis in AXES),
        *(float(config.pipeline == mode) for mode in PIPELINES),
        *(float(config.order == order) for order in ORDERS),
        float(workload.groups > 1),
        math.log(est.cycles / bound),
        *(value / bound for value in busy),
        est.once / bound,
        full.conv / per_tile,
        full.add / per_tile,
        full.load / per_tile,
        full.store / per_tile,
        full.period / per_tile,
    )


def _matrix(samples: Sequence[Sample]) -> np.ndarray:
    return np.asarray([features(s.workload, s.config, s.hardware) for s in samples], dtype=float)


def _estimates(workload: Workload, configs: Sequence[TileConfig], hardware) -> np.ndarray:
    return np.asarray([_estimate(workload, c, hardware).cycles for c in configs], float)


@dataclass(frozen=True)
class CostModel:
    """Predicts a config's cycles as the analytic estimate times a learned correction."""

    samples: tuple[Sample, ...]
    booster: object | None  # xgboost.Booster; None: no samples, the estimate alone
    seed: int = 0

    def predict(
        self, workload: Workload, configs: Sequence[TileConfig], hardware: HardwareConfig
    ) -> np.ndarray:
        """Predicted cycles of each config (lower is better)."""
        estimates = _estimates(workload, configs, hardware)
        if self.booster is None or not configs:
            return estimates
        import xgboost

        rows = np.asarray([features(workload, c, hardware) for c in configs], dtype=float)
        correction = self.booster.predict(xgboost.DMatrix(rows))
        return estimates * np.exp(correction)

    def rank(
        self, workload: Workload, configs: Sequence[TileConfig], hardware: HardwareConfig
    ) -> list[TileConfig]:
        """`configs`, best predicted first (ties: enumeration order)."""
        cycles = self.predict(workload, configs, hardware)
        return [configs[i] for i in np.argsort(cycles, kind="stable")]

    def with_layer(self, layer: Sequence[Sample]) -> CostModel:
        """Refit on the training samples plus `layer` (one workload's own measurements),
        those weighted as LAYER_WEIGHT other layers: what the tuner does after each batch."""
        return train([*self.samples, *layer], self.seed, emphasis={s.workload for s in layer})


def train(
    samples: Iterable[Sample], seed: int = 0, emphasis: frozenset | set = frozenset()
) -> CostModel:
    """Fit on `samples` (the best cycles per distinct config). Every layer weighs the same
    in all, so a layer tuned with 500 trials does not drown one with 8; layers in
    `emphasis` weigh LAYER_WEIGHT."""
    best: dict[tuple, Sample] = {}
    for s in samples:
        key = (s.workload, s.config, s.hardware.name)
        if key not in best or s.cycles < best[key].cycles:
            best[key] = s
    kept = tuple(best.values())
    if not kept:
        return CostModel((), None, seed)
    import xgboost

    per_layer: dict[Workload, int] = {}
    for s in kept:
        per_layer[s.workload] = per_layer.get(s.workload, 0) + 1
    weights = [
        (LAYER_WEIGHT if s.workload in emphasis else 1.0) / per_layer[s.workload] for s in kept
    ]
    target = [math.log(s.cycles / _estimate(s.workload, s.config, s.hardware).cycles) for s in kept]
    data = xgboost.DMatrix(_matrix(kept), label=target, weight=weights)
    booster = xgboost.train({**PARAMS, "seed": seed}, data, num_boost_round=ROUNDS)
    return CostModel(kept, booster, seed)


# -- training data: tuning records --------------------------------------------------------------


def samples_from_records(found: Iterable[records.Record]) -> list[Sample]:
    """Records as samples; a record of a target this tvm-convadd does not know is skipped."""
    samples = []
    for record in found:
        try:
            hardware = hardware_for_target(record.target)
        except ConvAddError:
            continue
        samples.append(Sample(record.workload, record.config, hardware, record.cycles))
    return samples


def read_records(directory: str | os.PathLike) -> list[records.Record]:
    """Every good record of a records directory's files. Damaged lines are skipped (and
    logged, one line each); a file none of whose lines is a record, even of another version,
    is a RecordsError naming it: training on nothing from it would hide that it is broken."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in sorted({p for glob in records.RECORDS_GLOBS for p in directory.glob(glob)}):
        with _unlogged(records.logger):  # a file that is not a log is one error, not many
            good, problems = records.load_records(path)
        broken = [p for p in problems if _STALE not in p]
        if broken and not good:
            raise RecordsError(
                f"{path}: no readable tuning record ({len(broken)} damaged line(s), the "
                f"first: {_reason(broken[0])}); move the file out of {directory}"
            )
        for problem in problems:
            records.logger.warning("skipping tuning record %s", problem)
        found += good
    return found


def _reason(problem: str) -> str:
    """What is wrong with a line, from load_records' "path:line: what; how to fix it"."""
    return problem.split(": ", 1)[-1].rsplit("; ", 1)[0]


@contextmanager
def _unlogged(log: logging.Logger) -> Iterator[None]:
    def drop(_record: logging.LogRecord) -> bool:
        return False

    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


_STALE = f"this tvm-convadd reads {records.VERSION}"  # records.parse_record's version message


def training_records(
    dirs: Iterable[str | os.PathLike] = (), exclude: Workload | None = None
) -> list[records.Record]:
    """The shipped records and those in `dirs`, less `exclude`'s (a layer being tuned
    learns its own measurements through `with_layer`)."""
    found = []
    for directory in [records.packaged_records_dir(), *dirs]:
        found += read_records(directory)
    return [r for r in found if exclude is None or r.workload != exclude]


def pretrained(dirs: Sequence[str | os.PathLike] = (), exclude: Workload | None = None):
    """The model trained on `training_records(dirs, exclude)`, cached per file state."""
    stamp = tuple(_file_stamps([records.packaged_records_dir(), *dirs]))
    return _pretrained(tuple(str(d) for d in dirs), exclude, stamp)


@lru_cache(maxsize=8)
def _pretrained(dirs: tuple[str, ...], exclude: Workload | None, _stamp: tuple) -> CostModel:
    return train(samples_from_records(training_records(dirs, exclude)))


def _file_stamps(dirs: Iterable[str | os.PathLike]) -> Iterable[tuple]:
    for directory in dirs:
        directory = Path(directory)
        if directory.is_dir():
            for glob in records.RECORDS_GLOBS:
                for path in sorted(directory.glob(glob)):
                    stat = path.stat()
                    yield (str(path), stat.st_mtime_ns, stat.st_size)


# -- how well a model ranks a layer -------------------------------------------------------------


def rank_correlation(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Spearman's rho of two orderings (1: the same order, 0: unrelated)."""
    a = _ranks(np.asarray(predicted, dtype=float))
    b = _ranks(np.asarray(measured, dtype=float))
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def auto_config(
    workload: Workload, hardware: HardwareConfig, dirs: Sequence[str | os.PathLike] = ()
) -> TileConfig | None:
    """The best predicted config that fits, by the model trained on the shipped records and
    `dirs`; None if they hold no record to learn from (the heuristic then decides)."""
    from tvm_convadd.search_space import enumerate_configs, fits

    model = pretrained(dirs)
    if model.booster is None:
        return None
    configs = [c for c in enumerate_configs(workload) if heuristic.may_fit(workload, c, hardware)]
    for config in model.rank(workload, configs, hardware):
        if fits(workload, config, hardware):
            return config
    return None
