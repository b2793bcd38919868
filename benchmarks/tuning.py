"""Tuning benchmark on ResNet-50's residual conv+add layers: XGBoost tuner vs random vs optimum.

For each layer: the exhaustive optimum (every fitting config simulated, timing only), the best
found by the MetaSchedule/XGBoost tuner and by random search after each budget, the trials each
needs to come within 1% of the optimum, the heuristic default and one untiled pass (N=1).
Prints a table and writes a best-so-far plot. usage: python benchmarks/tuning.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from tvm_convadd import heuristic, search_space, tuner
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload, standard_epilogue
from tvm_convadd.target.registry import hardware_for_target

# conv3 (1x1, stride 1) of each bottleneck stage, with the folded BN bias and the block's relu
LAYERS = {
    "stage1 64->256 @56": Workload(
        1, 64, 56, 56, 256, 1, 1, epilogue=standard_epilogue(bias=True, relu=True)
    ),
    "stage2 128->512 @28": Workload(
        1, 128, 28, 28, 512, 1, 1, epilogue=standard_epilogue(bias=True, relu=True)
    ),
    "stage3 256->1024 @14": Workload(
        1, 256, 14, 14, 1024, 1, 1, epilogue=standard_epilogue(bias=True, relu=True)
    ),
    "stage4 512->2048 @7": Workload(
        1, 512, 7, 7, 2048, 1, 1, epilogue=standard_epilogue(bias=True, relu=True)
    ),
}


def best_so_far(trials: list[int | None]) -> np.ndarray:
    """Running minimum of cycles per trial (inf until the first config that fits)."""
    values = [np.inf if c is None else c for c in trials]
    return np.minimum.accumulate(np.asarray(values, dtype=float)) if values else np.array([])


def at(curve: np.ndarray, budget: int) -> float:
    return float(curve[min(budget, len(curve)) - 1]) if len(curve) else float("inf")


def within(curve: np.ndarray, optimum: int, tolerance: float = 0.01) -> int | None:
    """Trials until best-so-far is within `tolerance` of the optimum (None: never)."""
    hits = np.nonzero(curve <= optimum * (1 + tolerance))[0]
    return int(hits[0]) + 1 if len(hits) else None


def exhaustive_table(name: str, wl: Workload, hardware, cache: Path, workers: int) -> dict:
    """{config: cycles} of every fitting config, cached on disk (the slowest part)."""
    path = cache / f"exhaustive_{hardware.name}_{wl.key}.json"
    if path.exists():
        rows = json.loads(path.read_text())
    else:
        start = time.time()
        rows = [[cfg.to_dict(), c] for cfg, c in tuner.exhaustive(wl, hardware, workers)]
        path.write_text(json.dumps(rows))
        print(f"  exhaustive {name}: {len(rows)} fitting configs in {time.time() - start:.0f} s")
    return {TileConfig(**cfg): cycles for cfg, cycles in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two layers, budgets up to 32")
    parser.add_argument("--target", default="convadd-sim")
    parser.add_argument("--seeds", type=int, default=5, help="random-search seeds to average")
    parser.add_argument("--workers", type=int, default=2)
    default_out = Path(tempfile.gettempdir()) / "tvm_convadd_tuning"
    parser.add_argument("--out", type=Path, default=default_out, help="cache and plot dir")
    args = parser.parse_args()
    budgets = [8, 16, 32] if args.quick else [8, 16, 32, 64]
    layers = dict(list(LAYERS.items())[2:]) if args.quick else LAYERS
    args.out.mkdir(parents=True, exist_ok=True)
    hardware = hardware_for_target(args.target)

    rows, curves = [], {}
    for name, wl in layers.items():
        table = exhaustive_table(name, wl, hardware, args.out, args.workers)
        optimum = min(table.values())
        with tempfile.TemporaryDirectory() as records_dir:
            start = time.time()
            result = tuner.tune_workload(
                wl,
                args.target,
                trials=budgets[-1],
                records_dir=records_dir,
                max_workers=args.workers,
                progress=True,
            )
            tune_secs = time.time() - start
        tuned = best_so_far(list(result.trials))
        randoms = [
            best_so_far(
                [
                    c
                    for _, c in tuner.random_search(
                        wl, hardware, budgets[-1], seed, measure=table.get
                    )
                ]
            )
            for seed in range(args.seeds)
        ]
        random_mean = np.mean([[at(r, b) for b in budgets] for r in randoms], axis=0)
        random_hit = [within(r, optimum) for r in randoms]
        default = heuristic.default_config(wl, hardware)
        one_tile = tuner.measure_config(wl, TileConfig(1, "height", "none"), hardware)
        curves[name] = (tuned, randoms, optimum)
        rows.append(
            {
                "layer": name,
                "space": len(search_space.enumerate_configs(wl)),
                "fit": len(table),
                "optimum": optimum,
                "opt_cfg": str(min(table, key=table.get)),
                "tuner": [at(tuned, b) for b in budgets],
                "random": list(random_mean),
                "tuner_1pct": within(tuned, optimum),
                "random_1pct": random_hit,
                "heuristic": table.get(default),
                "heuristic_cfg": str(default),
                "n1": one_tile,
                "tune_secs": tune_secs,
            }
        )

    print_table(rows, budgets)
    plot(curves, budgets, args.out / "tuning_best_so_far.png")


def gap(value: float, optimum: int) -> str:
    return "   -  " if not np.isfinite(value) else f"{value / optimum:6.3f}"


def print_table(rows: list[dict], budgets: list[int]) -> None:
    print("\nbest-so-far / optimum (1.000 = optimum), random averaged over seeds")
    head = " | ".join(f"tun@{b:<2} rnd@{b:<2}" for b in budgets)
    print(f"{'layer':<22}| space fit | optimum  | {head} | tun1% rnd1% (per seed)")
    for r in rows:
        cells = " | ".join(
            f"{gap(t, r['optimum'])} {gap(x, r['optimum'])}"
            for t, x in zip(r["tuner"], r["random"])
        )
        seeds = ",".join("-" if h is None else str(h) for h in r["random_1pct"])
        print(
            f"{r['layer']:<22}| {r['space']:5d} {r['fit']:3d} | {r['optimum']:8d} | {cells} | "
            f"{r['tuner_1pct'] or '-':>5} {seeds}"
        )
    print(
        "\nlayer                  | optimum config                       | heuristic"
        "                                          | N=1 cycles | tune s"
    )
    for r in rows:
        n1 = "no fit" if r["n1"] is None else str(r["n1"])
        heur = (
            f"{r['heuristic']} ({gap(r['heuristic'], r['optimum']).strip()}x) {r['heuristic_cfg']}"
        )
        print(
            f"{r['layer']:<22} | {r['opt_cfg']:<36} | {heur:<46} | {n1:>10} | {r['tune_secs']:.0f}"
        )


def plot(curves: dict, budgets: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), squeeze=False)
    for ax, (name, (tuned, randoms, optimum)) in zip(axes[0], curves.items()):
        x = np.arange(1, budgets[-1] + 1)
        pad = lambda c: np.concatenate([c, np.full(len(x) - len(c), c[-1] if len(c) else np.inf)])  # noqa: E731
        ax.plot(x, pad(tuned) / optimum, label="XGBoost tuner")
        ax.plot(x, np.mean([pad(r) for r in randoms], axis=0) / optimum, label="random (mean)")
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8, label="optimum")
        ax.set(title=name, xlabel="trials", ylabel="best cycles / optimum", ylim=(0.98, 1.5))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
