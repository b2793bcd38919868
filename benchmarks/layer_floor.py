"""How close can any schedule of a layer come to a bound, alone on an empty machine?

For the layers of a network whose shipped record is furthest over its own bound, every config
of the search space is simulated (timing only, default config). Per layer:

- fastest: the least cycles of any config (the exhaustive optimum), and that config's own
  bound (its busiest unit or the DRAM channel);
- B*: the least bound of any config. No schedule in the space beats it, so fastest / B* is
  the layer's distance from ideal that no choice of tiles closes: its fill and drain;
- the fastest config within 1.02x of its own bound, as a multiple of the fastest. A config's
  own bound grows with its overheads (every CONV's set-up, every DMA run), so a slow config
  can sit right at its bound: the ratio to its own bound rewards overhead.

    python benchmarks/layer_floor.py [--network mobilenet_v2] [--worst 1] [--workers 2]

A layer takes minutes (MobileNetV2's 192->64 @14: 2514 configs; ResNet-50's 64->64 @56: over
4000).
"""

from __future__ import annotations

import argparse
import multiprocessing
from dataclasses import dataclass
from functools import cache

from tqdm import tqdm

from tvm_convadd import search_space
from tvm_convadd.errors import ConvAddError
from tvm_convadd.records import Record, load_records, packaged_records_dir
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.hardware import load_config
from tvm_convadd.target.simulator import simulate

NEAR_BOUND = 1.02
HARDWARE = "default"  # the machine the shipped records were measured on


@dataclass(frozen=True)
class Run:
    config: TileConfig
    cycles: int
    bound: int


def measure(job: tuple[Workload, TileConfig, str]) -> Run | None:
    """One config simulated alone (None if it does not fit or is refused)."""
    workload, config, hardware_name = job
    hardware = _hardware(hardware_name)
    try:
        result = simulate(search_space.lowered(workload, config), hardware, functional=False)
    except ConvAddError:
        return None
    return Run(config, result.total_cycles, result.bound_cycles)


@cache
def _hardware(name: str):
    """The config, read once per worker process, not once per job."""
    return load_config(name)


def worst_records(network: str, count: int, hardware_name: str) -> list[tuple[float, Record]]:
    """The shipped records furthest over their own bound, worst first."""
    records, problems = load_records(packaged_records_dir() / f"{network}.json")
    if problems:
        raise SystemExit(f"layer_floor.py: {problems[0]}")
    best: dict[str, Record] = {}
    for record in records:
        if record.workload.key not in best or record.cycles < best[record.workload.key].cycles:
            best[record.workload.key] = record
    hardware = _hardware(hardware_name)
    ratios = []
    for record in best.values():
        result = simulate(
            search_space.lowered(record.workload, record.config), hardware, functional=False
        )
        ratios.append((result.total_cycles / result.bound_cycles, record))
    return sorted(ratios, key=lambda pair: -pair[0])[:count]


def floor_row(workload: Workload, runs: list[Run]) -> str:
    fastest = min(runs, key=lambda run: run.cycles)
    least_bound = min(run.bound for run in runs)
    near = [run for run in runs if run.cycles <= NEAR_BOUND * run.bound]
    near_text = f"{min(run.cycles for run in near) / fastest.cycles:.2f}x" if near else "none"
    return (
        f"{str(workload)[:52]:<52} {len(runs):>7} {fastest.cycles:>9} "
        f"{fastest.cycles / fastest.bound:>9.3f} {least_bound:>9} "
        f"{fastest.cycles / least_bound:>9.3f} {near_text:>12}"
    )


HEADER = (
    f"{'layer':<52} {'configs':>7} {'fastest':>9} {'/its bnd':>9} {'B*':>9} {'/B*':>9} "
    f"{'<=1.02x own':>12}"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shipped = sorted(path.stem for path in packaged_records_dir().glob("*.json"))
    parser.add_argument("--network", default="mobilenet_v2", choices=shipped)
    parser.add_argument("--worst", type=int, default=1, help="how many layers, worst first")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.worst < 1 or args.workers < 1:
        raise SystemExit("layer_floor.py: --worst and --workers must be at least 1")
    rows = []
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        for ratio, record in worst_records(args.network, args.worst, HARDWARE):
            workload = record.workload
            jobs = [(workload, c, HARDWARE) for c in search_space.enumerate_configs(workload)]
            runs = [
                run
                for run in tqdm(
                    pool.imap_unordered(measure, jobs, chunksize=8),
                    total=len(jobs),
                    desc=f"{workload} (record {ratio:.3f}x its bound)",
                )
                if run is not None
            ]
            rows.append(floor_row(workload, runs))
    print(f"every config of the search space, alone on {HARDWARE} (timing only)")
    print(HEADER)
    print("\n".join(rows))
    print(
        "fastest: the exhaustive optimum and its cycles over its own bound; B*: the least "
        "bound of any config; <=1.02x own: the fastest config within 1.02x of its own bound, "
        "over the fastest"
    )


if __name__ == "__main__":
    main()
