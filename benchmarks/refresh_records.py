"""Refresh the shipped records: per layer, the best of a tuning run and the analytic top-k.

The tuner's records (from `tvm-convadd tune NET --records DIR`) are merged with the `--top`
best configs of the analytic ranking, each simulated timing-only on the target; the fastest
measured config of every layer becomes the shipped record. Taking the analytic top-k as well
keeps a shipped record from ever losing to the heuristic it replaces.

    python benchmarks/refresh_records.py resnet50 [--tuned DIR/records.jsonl] [--top 16]
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from tvm_convadd import heuristic, search_space
from tvm_convadd.networks import get_network
from tvm_convadd.partition import PartitionConvAdd, fused_functions, prepare
from tvm_convadd.records import Record, load_records, packaged_records_dir, save_records
from tvm_convadd.target.registry import hardware_for_target
from tvm_convadd.target.simulator import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network")
    parser.add_argument("--tuned", help="records.jsonl of a tuning run (optional)")
    parser.add_argument("--top", type=int, default=16)
    parser.add_argument("--target", default="convadd-sim")
    args = parser.parse_args()
    hardware = hardware_for_target(args.target)
    tuned, errors = load_records(args.tuned) if args.tuned else ([], [])
    if errors:
        raise SystemExit(f"refresh_records: {errors[0]}")
    mod, params = get_network(args.network, image_size=224)
    fused = fused_functions(PartitionConvAdd()(prepare(mod, params)))
    workloads = {f.workload for f in fused.values()}
    best: list[Record] = []
    for workload in tqdm(sorted(workloads, key=lambda w: w.key), desc=args.network):
        candidates = [r for r in tuned if r.workload == workload]
        for config in heuristic.best_fitting(workload, hardware, args.top):
            program = search_space.lowered(workload, config)
            cycles = simulate(program, hardware, functional=False).total_cycles
            candidates.append(Record(workload, args.target, config, cycles))
        winner = min(candidates, key=lambda r: r.cycles)
        source = "tuner" if winner in tuned else "analytic top-k"
        print(f"{workload}: {winner.config} {winner.cycles} ({source})")
        best.append(winner)
    path = packaged_records_dir() / f"{args.network}.json"
    save_records(path, best)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
