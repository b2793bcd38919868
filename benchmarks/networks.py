"""Whole networks on the simulated accelerator: fused against the unfused baseline and the bound.

For each network and image size under the default config: the share of conv MACs the
accelerator runs, the ops left on the CPU, and the network's cycles three ways:

- fused: every conv with its epilogue chain as one pipelined kernel (this project);
- unfused: what a compiler without it runs (`tvm_convadd.unfused`): each conv its own kernel,
  then the epilogue chain as one elementwise kernel (TVM's FuseOps), each DMA-pipelined;
  per-op: one elementwise kernel per epilogue op;
- the bound: the busiest resource (a unit or the DRAM channel), summed over the layers;

with the count of layers where fused beats unfused, and the ideal-machine law's A + B (DMA
free) for reference. `--layers` prints every layer's row; `--check` also runs the numbers
(functional simulation) and compares the output with the pure-llvm build.

    python benchmarks/networks.py [--networks resnet50 ...] [--image-sizes 224 64] [--layers]
        [--plot benchmarks/figures/layers_resnet50.png]

`--plot` draws the first network at the first image size layer by layer: fused and unfused
over each layer's bound, and below, the fused cycles taken apart (the Conv unit busy, its
head, stall and tail).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tvm
from tqdm import tqdm
from tvm import relax

from tvm_convadd import build, build_reference, network_report
from tvm_convadd.networks import get_network
from tvm_convadd.partition import PartitionConvAdd, offload_summary, prepare
from tvm_convadd.unfused import unfused_baseline

NETWORKS = ["resnet50", "resnet18", "mobilenet_v2", "efficientnet_b0", "regnetx_400mf"]


def check_writable(path: str) -> None:
    """Fail before minutes of work, not after, if the plot cannot be written."""
    folder = Path(path).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise SystemExit(f"networks.py: cannot write {path}: {folder} is not a writable folder")


def cpu_ops(partitioned: tvm.IRModule) -> Counter:
    """The ops `main` still runs on the CPU after partitioning (calls of fused functions and
    shape-only ops excluded)."""
    shape_only = {"relax.reshape", "relax.flatten", "relax.permute_dims"}
    ops = Counter()
    for block in partitioned["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                name = str(value.op.name)
                if name not in shape_only:
                    ops[name.removeprefix("relax.")] += 1
    return ops


def measure(name: str, image_size: int, target: str, check: bool) -> dict:
    """Build and run one network, then its unfused baseline (one per distinct layer)."""
    mod, params = get_network(name, image_size=image_size)
    prepared = prepare(mod, params)
    summary = offload_summary(prepared)
    left = cpu_ops(PartitionConvAdd(offload=False)(prepared))
    image = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size))
    image = image.astype("float32")
    started = time.perf_counter()
    net = build(mod, target, params, functional=check)
    out = net.run(image)
    compile_run = time.perf_counter() - started
    started = time.perf_counter()
    distinct = dict.fromkeys((r.layer.workload, r.layer.hardware) for r in net.session.runs)
    for workload, hardware in tqdm(
        distinct, desc=f"  {name} unfused", leave=False, file=sys.stderr
    ):
        unfused_baseline(workload, hardware)
    report = network_report(net.session, baseline=True)
    baseline_seconds = time.perf_counter() - started
    error = None
    if check:
        reference = build_reference(mod, params)(image)
        error = float(np.abs(out - reference).max() / (np.abs(reference).max() or 1.0))
    return dict(
        name=name,
        report=report,
        summary=summary,
        cpu_ops=left,
        compile_run=compile_run,
        baseline=baseline_seconds,
        error=error,
    )


def summary_table(results: list[dict]) -> str:
    header = (
        f"{'network':<16} {'convs':>9} {'fused':>10} {'unfused':>10} {'per-op':>10} "
        f"{'bound':>10} {'unit':<10} {'f/bound':>7} {'head':>8} {'stall':>8} {'tail':>8} "
        f"{'f/unf':>6} {'f/per-op':>8} {'wins':>7} "
        f"{'A+B ideal':>10} {'f/(A+B)':>7} {'build+run s':>11} {'unfused s':>9} {'rel. err':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        rep, summary = r["report"], r["summary"]
        fused, idle = rep.fused_cycles, rep.conv_idle
        error = "-" if r["error"] is None else f"{r['error']:.1e}"
        lines.append(
            f"{r['name']:<16} {summary.offloaded:>4}/{summary.convs:<4} {fused:>10} "
            f"{rep.unfused_cycles:>10} {rep.unfused_per_op_cycles:>10} {rep.bound_cycles:>10} "
            f"{rep.bound_unit:<10} {fused / rep.bound_cycles:>7.3f} {idle.head:>8} "
            f"{idle.stall:>8} {idle.tail:>8} {fused / rep.unfused_cycles:>6.3f} "
            f"{fused / rep.unfused_per_op_cycles:>8.3f} "
            f"{rep.fused_wins:>3}/{len(rep.layers):<3} {rep.ideal_serial_cycles:>10} "
            f"{fused / rep.ideal_serial_cycles:>7.3f} {r['compile_run']:>11.1f} "
            f"{r['baseline']:>9.1f} {error:>8}"
        )
    return "\n".join(lines)


def plot_layers(result: dict, size: int, path: str) -> str:
    """Fused and unfused cycles over each layer's bound, one bar pair per layer; below, the
    fused cycles taken apart: the Conv unit busy, then idle before its first CONV (head),
    between CONVs (stall) and after its last (tail)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = result["report"]
    layers = report.layers
    index = np.arange(len(layers))
    fused = [layer.fused_cycles / layer.bound_cycles for layer in layers]
    unfused = [layer.unfused_cycles / layer.bound_cycles for layer in layers]
    fig, (ax, parts) = plt.subplots(2, 1, figsize=(14, 8), sharex=True)
    ax.bar(index - 0.2, unfused, 0.4, label="unfused (conv kernel + epilogue kernel)")
    ax.bar(index + 0.2, fused, 0.4, label="fused (this project)")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("cycles / the layer's bound")
    ax.set_ylim(0.9, max(unfused) * 1.05)
    ax.set_title(
        f"{result['name']} at {size}x{size}: fused {report.fused_cycles / 1e6:.2f} M cycles "
        f"({report.fused_cycles / report.bound_cycles:.3f}x the network bound), unfused "
        f"{report.unfused_cycles / 1e6:.2f} M; fused wins {report.fused_wins}/{len(layers)}"
    )
    ax.legend(loc="upper right")
    bottom = np.zeros(len(layers))
    for label, values in (
        ("Conv unit busy", [layer.conv_cycles for layer in layers]),
        ("head: before the first CONV", [layer.conv_idle.head for layer in layers]),
        ("stall: between CONVs", [layer.conv_idle.stall for layer in layers]),
        ("tail: after the last CONV", [layer.conv_idle.tail for layer in layers]),
    ):
        share = np.array(values) / [layer.bound_cycles for layer in layers]
        parts.bar(index, share, 0.7, bottom=bottom, label=label)
        bottom += share
    parts.axhline(1.0, color="black", linewidth=0.8)
    parts.set_ylim(0.8, max(bottom) * 1.03)
    parts.set_ylabel("fused cycles / the layer's bound")
    parts.set_title("where each fused layer's cycles go (each layer alone on an empty machine)")
    parts.legend(loc="upper right", fontsize=8)
    parts.set_xticks(index, [str(i) for i in index], fontsize=7)
    parts.set_xlabel("offloaded layer, in the order the VM calls them")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=NETWORKS)
    parser.add_argument("--image-sizes", nargs="+", type=int, default=[224, 64])
    parser.add_argument("--target", default="convadd-sim")
    parser.add_argument("--layers", action="store_true", help="print every layer's row")
    parser.add_argument("--check", action="store_true", help="compare with the llvm build")
    parser.add_argument(
        "--plot", help="PNG of the first network's layers (fused, unfused, head/stall/tail)"
    )
    args = parser.parse_args()
    if args.plot:
        check_writable(args.plot)
    jobs = [(size, name) for size in args.image_sizes for name in args.networks]
    results: dict[int, list[dict]] = {size: [] for size in args.image_sizes}
    for size, name in tqdm(jobs, desc="networks", file=sys.stderr):
        result = measure(name, size, args.target, args.check)
        results[size].append(result)
        if args.layers:
            tqdm.write(f"\n=== {name} @ {size}x{size} on {args.target} ===")
            tqdm.write(str(result["summary"]))
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(result["cpu_ops"].items()))
            tqdm.write(f"left on the CPU: {ops or 'nothing'}")
            tqdm.write(result["report"].table())
            tqdm.write(result["report"].baseline_table())
    for size, sized in results.items():
        print(f"\n=== {size}x{size} on {args.target} ===")
        print(summary_table(sized))
    if args.plot:
        first = args.image_sizes[0]
        print(f"plot: {plot_layers(results[first][0], first, args.plot)}")
    print(
        "\nunfused: each conv its own kernel, then its epilogue chain as one elementwise "
        "kernel; per-op: one elementwise kernel per op; wins: layers where fused < unfused; "
        "bound: the busiest unit or the DRAM channel over the network; head, stall, tail: the "
        "Conv unit idle before its first CONV, between CONVs, after its last, summed over the "
        "layers (fused = conv busy + the three); A+B ideal: the ideal-machine law (conv then "
        "epilogue, DMA free)"
    )


if __name__ == "__main__":
    main()
