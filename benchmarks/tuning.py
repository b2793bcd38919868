"""Tuning benchmark on layers no shipped record covers: the tuner against random search and
the analytic top-k, each as best-found / exhaustive optimum; and what `tiles="auto"` should
pick for a layer with no record (the transferred model's pick or the heuristic's).

Held out: 6 layers of EfficientNet-B0 and RegNetX-400MF. The cost model is trained on
measurements of layers of the other built-in networks (ResNet-50, ResNet-18, MobileNetV2):
per layer the analytic top-8 and 24 random configs, as a user's records would hold them.
The optimum is exact without simulating every config: the Conv, Add and Store units' analytic
busy cycles equal the simulator's (checked on every config simulated here; a unit that ever
differs is dropped from the bound), a layer takes at least its busiest unit's, so a config
whose bound is above the best found cannot be the optimum and is never simulated. Random
search and top-k skip a pick the same way when its bound is above that run's best so far,
which leaves their best-so-far curves exact. Every simulation (timing only) is cached in
benchmarks/tuning_cache.json, keyed by workload, hardware and a hash of the code that sets
the cycles, so a rerun on unchanged code simulates only the tuner's trials.

    python benchmarks/tuning.py [--quick] [--workers 2] [--plot benchmarks/figures/tuning.png]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tvm_convadd import cost_model, heuristic, records, search_space, tuner
from tvm_convadd.networks import get_network
from tvm_convadd.partition import PartitionConvAdd, fused_functions, prepare
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.hardware import HardwareConfig
from tvm_convadd.target.isa import UNITS
from tvm_convadd.target.lower import overflowing
from tvm_convadd.target.registry import hardware_for_target
from tvm_convadd.target.simulator import simulate

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / "tuning_cache.json"
BUDGETS = (8, 16, 32)
HELD_OUT = {  # short name: (network, the layer as tvm-convadd prints it)
    "E 1152->192 @7 +res": ("efficientnet_b0", "conv1x1/s1 1152->192 @ 7x7 -> 7x7 [bias+residual]"),
    "E 480->80 @14 +res": (
        "efficientnet_b0",
        "conv1x1/s1 480->80 @ 14x14 -> 14x14 [bias+residual]",
    ),
    "E 144->40 @28": ("efficientnet_b0", "conv1x1/s1 144->40 @ 28x28 -> 28x28 [bias]"),
    "R 400->400 @7 +res": (
        "regnetx_400mf",
        "conv1x1/s1 400->400 @ 7x7 -> 7x7 [bias+residual+relu]",
    ),
    "R 3x3 g10 160 @14": ("regnetx_400mf", "conv3x3/s1 g10 160->160 @ 14x14 -> 14x14 [bias+relu]"),
    "R 64->160 s2 @28": ("regnetx_400mf", "conv1x1/s2 64->160 @ 28x28 -> 14x14 [bias]"),
}
TRAIN_NETWORKS = ("resnet50", "resnet18", "mobilenet_v2")
TRAIN_TOP, TRAIN_RANDOM = 8, 24  # per training layer: the analytic top, then random configs
TRAIN_MAX_PIXELS = 28 * 28  # training layers: larger inputs, more output channels or more
TRAIN_MAX_CHANNELS = 512  # tiles than these lower too slowly to measure dozens of configs
TRAIN_MAX_TILES = 64
BOUND_UNITS = ("conv", "add", "store")  # the units whose analytic busy cycles are exact


def code_version() -> str:
    """A hash of what decides a simulated cycle count: the target, the schedules, the search
    space and the records version (not the heuristic: it only orders the simulations)."""
    digest = hashlib.sha256(str(records.VERSION).encode())
    for path in sorted([*(ROOT / "target").glob("*.py"), *(ROOT / "schedules").glob("*.py")]):
        if path.name not in ("functional.py", "trace.py", "timeline.py"):
            digest.update(path.name.encode() + path.read_bytes())
    digest.update((ROOT / "tvm_convadd" / "search_space.py").read_bytes())
    return digest.hexdigest()[:12]


def _config_key(config: TileConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def _measure(workload: Workload, config: TileConfig, hardware_json: str) -> tuple:
    """Worker: (cycles or None if it does not fit, {unit: busy cycles})."""
    hardware = HardwareConfig.from_dict(json.loads(hardware_json))
    program = search_space.lowered(workload, config)
    if overflowing(program, hardware):
        return None, {}
    result = simulate(program, hardware, functional=False)
    return int(result.total_cycles), {u: s.busy_cycles for u, s in result.units.items()}


@dataclass
class Layer:
    """One workload's simulated configs (cached), its analytic estimates and bound."""

    workload: Workload
    hardware: HardwareConfig
    cycles: dict[TileConfig, int | None]
    units: set[str] = field(default_factory=lambda: set(BOUND_UNITS) & set(UNITS))

    def __post_init__(self) -> None:
        self.configs = search_space.enumerate_configs(self.workload)
        self.estimates = {
            c: heuristic.estimate(self.workload, c, self.hardware) for c in self.configs
        }
        self.may_fit = {c: heuristic.may_fit(self.workload, c, self.hardware) for c in self.configs}

    def bound(self, config: TileConfig) -> int:
        """Cycles no run of `config` can beat: the busiest bound unit's analytic busy cycles."""
        busy = self.estimates[config].busy
        return max((busy.get(u, 0) for u in self.units), default=0)

    def known(self, config: TileConfig) -> bool:
        return config in self.cycles or not self.may_fit[config]

    def value(self, config: TileConfig) -> int | None:
        return self.cycles.get(config) if self.may_fit[config] else None

    def check(self, config: TileConfig, busy: dict[str, int]) -> None:
        """Drop from the bound every unit whose analytic busy cycles exceed the simulator's."""
        for unit in list(self.units):
            if unit in busy and self.estimates[config].busy.get(unit, 0) > busy[unit]:
                self.units.discard(unit)

    def ranked(self) -> list[TileConfig]:
        """The analytic ranking, configs whose footprint cannot fit left out."""
        return [
            e.config
            for e in heuristic.ranked(self.workload, self.hardware)
            if self.may_fit[e.config]
        ]


class Bench:
    """The cache, the worker pool and the progress bar shared by every measurement."""

    def __init__(self, workers: int, hardware: HardwareConfig) -> None:
        self.hardware = hardware
        self.hardware_json = json.dumps(hardware.to_dict())
        self.version = code_version()
        cached = json.loads(CACHE.read_text()) if CACHE.exists() else {}
        self.cache = {k: v for k, v in cached.items() if k.endswith(f"|{self.version}")}
        self.pool = tuner.worker_pool(workers) if workers > 0 else None
        self.simulated = 0

    def key(self, workload: Workload) -> str:
        hw = hashlib.sha256(self.hardware_json.encode()).hexdigest()[:8]
        return f"{workload.key}|{self.hardware.name}:{hw}|{self.version}"

    def layer(self, workload: Workload) -> Layer:
        stored = self.cache.get(self.key(workload), {})
        cycles = {TileConfig.from_dict(json.loads(k)): v for k, v in stored.items()}
        return Layer(workload, self.hardware, cycles)

    def measure(self, layer: Layer, configs, desc: str) -> None:
        """Simulate the configs not yet known, in the pool, and save them to the cache."""
        todo = [c for c in dict.fromkeys(configs) if not layer.known(c)]
        if not todo:
            return
        if self.pool is None:
            results = [_measure(layer.workload, c, self.hardware_json) for c in todo]
        else:
            jobs = [self.pool.submit(_measure, layer.workload, c, self.hardware_json) for c in todo]
            results = [job.result() for job in tqdm(jobs, desc=desc, leave=False, unit="cfg")]
        for config, (cycles, busy) in zip(todo, results):
            layer.cycles[config] = cycles
            if cycles is not None:
                layer.check(config, busy)
        self.simulated += len(todo)
        self.save(layer)

    def save(self, layer: Layer) -> None:
        """Write the cache (this code version's entries only) in one rename."""
        self.cache[self.key(layer.workload)] = {_config_key(c): v for c, v in layer.cycles.items()}
        temporary = CACHE.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.cache))
        temporary.replace(CACHE)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# -- the exhaustive optimum and the baselines ----------------------------------------------------


def optimum(bench: Bench, layer: Layer, name: str) -> tuple[int, int]:
    """The best cycles over every fitting config, and how many configs the bound spared."""
    bench.measure(layer, layer.ranked()[: max(BUDGETS)], f"{name}: analytic top")
    while True:
        best = min((v for v in layer.cycles.values() if v is not None), default=np.inf)
        todo = sorted(
            (c for c in layer.configs if not layer.known(c) and layer.bound(c) < best),
            key=layer.bound,
        )
        if not todo:
            spared = sum(1 for c in layer.configs if not layer.known(c))
            return int(best), spared
        bench.measure(layer, todo[:16], f"{name}: bound < best ({len(todo)} left)")


def best_so_far(bench: Bench, layer: Layer, runs: list[list[TileConfig]], name: str) -> np.ndarray:
    """Best-so-far cycles of each run of picks (one row per run). A pick is simulated only if
    its bound is below that run's best so far; otherwise it cannot change the curve."""
    curves = np.full((len(runs), max(len(r) for r in runs)), np.inf)
    best = np.full(len(runs), np.inf)
    for step in range(curves.shape[1]):
        picks = [r[step] if step < len(r) else None for r in runs]
        needed = [
            p
            for p, b in zip(picks, best)
            if p is not None and not layer.known(p) and layer.bound(p) < b
        ]
        bench.measure(layer, needed, f"{name}: baselines, trial {step + 1}")
        for run, pick in enumerate(picks):
            if pick is not None and layer.known(pick):
                value = layer.value(pick)
                if value is not None:
                    best[run] = min(best[run], value)
            curves[run, step] = best[run]
    return curves


def random_runs(layer: Layer, seeds: int, trials: int) -> list[list[TileConfig]]:
    """tuner.random_search's picks: uniform over the space without replacement."""
    return [random.Random(seed).sample(list(layer.configs), trials) for seed in range(seeds)]


# -- training data: layers of the other networks --------------------------------------------------


def network_layers(network: str) -> list[Workload]:
    mod, params = get_network(network, image_size=224)
    fused = fused_functions(PartitionConvAdd()(prepare(mod, params)))
    return list(dict.fromkeys(f.workload for f in fused.values()))


def training_samples(bench: Bench, quick: bool) -> list[cost_model.Sample]:
    """Per training layer, the analytic top and random configs, simulated (cached)."""
    layers = [
        wl
        for network in TRAIN_NETWORKS
        for wl in network_layers(network)
        if wl.in_height * wl.in_width <= TRAIN_MAX_PIXELS and wl.out_channels <= TRAIN_MAX_CHANNELS
    ]
    layers = list(dict.fromkeys(layers))[: 8 if quick else None]
    samples = []
    for wl in tqdm(layers, desc="training layers", unit="layer"):
        layer = bench.layer(wl)
        fitting = [
            c for c in layer.configs if layer.may_fit[c] and c.total_tiles <= TRAIN_MAX_TILES
        ]
        picks = layer.ranked()[:TRAIN_TOP] + random.Random(0).sample(
            fitting, min(TRAIN_RANDOM, len(fitting))
        )
        bench.measure(layer, picks, str(wl))
        samples += [
            cost_model.Sample(wl, c, bench.hardware, v)
            for c in picks
            if (v := layer.value(c)) is not None
        ]
    return samples


# -- the tuner ----------------------------------------------------------------------------------


def tuner_curves(
    bench: Bench, layer: Layer, model, seeds: int, target: str, workers: int
) -> tuple[np.ndarray, float]:
    """Best-so-far of the tuner, one row per seed, and the mean wall time of a tune."""
    curves, seconds = [], []
    for seed in range(seeds):
        with tempfile.TemporaryDirectory() as records_dir:
            start = time.perf_counter()
            result = tuner.tune_workload(
                layer.workload,
                target,
                trials=max(BUDGETS),
                records_dir=records_dir,
                seed=seed,
                progress=False,
                max_workers=workers,
                model=model,
            )
            seconds.append(time.perf_counter() - start)
            for record in records.load_records(result.records_path)[0]:  # free cache entries
                layer.cycles.setdefault(record.config, record.cycles)
        values = [np.inf if c is None else c for c in result.trials]
        values += [values[-1] if values else np.inf] * (max(BUDGETS) - len(values))
        curves.append(np.minimum.accumulate(np.asarray(values, dtype=float)))
    bench.save(layer)
    return np.asarray(curves), float(np.mean(seconds))


def auto_pick(bench: Bench, layer: Layer, model) -> tuple[TileConfig, TileConfig]:
    """What `tiles="auto"` would pick with no record: the heuristic's config, and the
    model's best predicted config that fits."""
    heuristic_pick = heuristic.default_config(layer.workload, layer.hardware)
    fitting = [c for c in layer.configs if layer.may_fit[c]]
    for config in model.rank(layer.workload, fitting, layer.hardware):
        bench.measure(layer, [config], "model pick")
        if layer.value(config) is not None:
            break
    bench.measure(layer, [heuristic_pick], "heuristic pick")
    return heuristic_pick, config


# -- report ---------------------------------------------------------------------------------------


def at(curves: np.ndarray, budget: int) -> float:
    return float(np.mean(curves[:, budget - 1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers, 1 tuner seed, 3 random")
    parser.add_argument("--target", default="convadd-sim")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks/figures/tuning.png")
    args = parser.parse_args()
    hardware = hardware_for_target(args.target)
    tuner_seeds, random_seeds = (1, 3) if args.quick else (3, 10)
    held_out = dict(list(HELD_OUT.items())[:2]) if args.quick else HELD_OUT
    bench = Bench(args.workers, hardware)
    started = time.perf_counter()
    try:
        samples = training_samples(bench, args.quick)
        model = cost_model.train(samples)
        print(
            f"model trained on {len(samples)} measurements of "
            f"{len({s.workload for s in samples})} layers"
        )
        workloads = {
            n: layers
            for n in {net for net, _ in held_out.values()}
            for layers in [network_layers(n)]
        }
        rows, plots = [], {}
        for name, (network, description) in held_out.items():
            wl = next(w for w in workloads[network] if str(w) == description)
            layer = bench.layer(wl)
            best, spared = optimum(bench, layer, name)
            runs = random_runs(layer, random_seeds, max(BUDGETS))
            topk = best_so_far(bench, layer, [layer.ranked()[: max(BUDGETS)]], name)
            rand = best_so_far(bench, layer, runs, name)
            tuned, tune_secs = tuner_curves(
                bench, layer, model, tuner_seeds, args.target, args.workers
            )
            heuristic_pick, model_pick = auto_pick(bench, layer, model)
            measured = [c for c in layer.configs if layer.value(c) is not None]
            truth = [layer.value(c) for c in measured]
            rows.append(
                dict(
                    name=name,
                    space=len(layer.configs),
                    simulated=len(layer.cycles),
                    spared=spared,
                    optimum=best,
                    tuner=[at(tuned, b) / best for b in BUDGETS],
                    random=[at(rand, b) / best for b in BUDGETS],
                    topk=[at(topk, b) / best for b in BUDGETS],
                    heuristic=layer.value(heuristic_pick) / best,
                    model=layer.value(model_pick) / best,
                    rho_model=cost_model.rank_correlation(
                        model.predict(wl, measured, hardware), truth
                    ),
                    rho_analytic=cost_model.rank_correlation(
                        [layer.estimates[c].cycles for c in measured], truth
                    ),
                    tune_secs=tune_secs,
                )
            )
            plots[name] = (tuned / best, rand / best, topk / best)
    finally:
        bench.close()
    print_table(rows, tuner_seeds, random_seeds)
    print(
        f"\n{bench.simulated} configs simulated in {time.perf_counter() - started:.0f} s; "
        f"cache {CACHE.name} (code {bench.version})"
    )
    plot(plots, args.plot)


def print_table(rows: list[dict], tuner_seeds: int, random_seeds: int) -> None:
    budgets = " ".join(f"{b:>5}" for b in BUDGETS)
    print(
        f"\nbest found / exhaustive optimum at {', '.join(map(str, BUDGETS))} trials "
        f"(tuner: mean of {tuner_seeds} seeds, random: mean of {random_seeds}, "
        "top-k: the analytic top k)"
    )
    print(
        f"{'layer':<22} {'space':>5} {'sim':>5} {'optimum':>9} | tuner {budgets} "
        f"| random {budgets} | top-k {budgets}"
    )
    for r in rows:
        cells = " | ".join(
            " ".join(f"{v:5.3f}" for v in r[kind]) for kind in ("tuner", "random", "topk")
        )
        print(
            f"{r['name']:<22} {r['space']:>5} {r['simulated']:>5} {r['optimum']:>9} |       {cells}"
        )
    for kind in ("tuner", "random", "topk"):
        mean = np.mean([r[kind] for r in rows], axis=0)
        print(f"  mean {kind:<7} " + " ".join(f"{v:5.3f}" for v in mean))
    print(
        "\ntiles=auto with no record: each pick / optimum; rank correlation (Spearman) with the "
        "simulated cycles over every config simulated"
    )
    print(
        f"{'layer':<22} {'heuristic':>9} {'model':>7} {'rho model':>9} {'rho analytic':>12} "
        f"{'tune s':>7}"
    )
    for r in rows:
        print(
            f"{r['name']:<22} {r['heuristic']:9.3f} {r['model']:7.3f} {r['rho_model']:9.3f} "
            f"{r['rho_analytic']:12.3f} {r['tune_secs']:7.1f}"
        )
    print(
        f"  mean {'':<16} {np.mean([r['heuristic'] for r in rows]):9.3f} "
        f"{np.mean([r['model'] for r in rows]):7.3f}"
    )


def plot(plots: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(plots), figsize=(3.6 * len(plots), 3.4), squeeze=False)
    x = np.arange(1, max(BUDGETS) + 1)
    for ax, (name, (tuned, rand, topk)) in zip(axes[0], plots.items()):
        ax.plot(x, tuned.mean(axis=0), label="tuner (transfer model)")
        ax.plot(x, np.median(rand, axis=0), label="random (median)")  # inf before a fit
        ax.plot(x, topk[0], label="analytic top-k")
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
        ax.set(title=name, xlabel="trials", ylim=(0.98, 2.5))
        ax.set_xscale("log", base=2)
    axes[0][0].set_ylabel("best found / optimum")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
