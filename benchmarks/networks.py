"""Whole networks on the simulated accelerator at 224x224: what is offloaded, and its cycles.

For each network under the default config: the share of conv MACs the accelerator runs (and
each conv left on the CPU, with its reason), the ops left on the CPU, every offloaded layer
with its tile config, the Conv and Add units' busy cycles (A, B), A + B (conv then epilogue,
DMA free), the pipelined run, the machine's bound (the busiest unit's busy cycles, DMA
included) and fused/bound; then the network totals, the wall time of compile + simulate, and
the output checked against the pure-llvm build.

    python benchmarks/networks.py [--networks resnet50 ...] [--image-size 224]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
import tvm
from tvm import relax

from tvm_convadd import build, build_reference, network_report
from tvm_convadd.networks import get_network
from tvm_convadd.partition import PartitionConvAdd, offload_summary, prepare

NETWORKS = ["resnet50", "resnet18", "mobilenet_v2", "efficientnet_b0", "regnetx_400mf"]


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


def measure(name: str, image_size: int, target: str) -> dict:
    mod, params = get_network(name, image_size=image_size)
    prepared = prepare(mod, params)
    summary = offload_summary(prepared)
    left = cpu_ops(PartitionConvAdd(offload=False)(prepared))
    image = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size))
    image = image.astype("float32")
    started = time.perf_counter()
    net = build(mod, target, params)
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    out = net.run(image)
    run_seconds = time.perf_counter() - started
    reference = build_reference(mod, params)(image)
    error = float(np.abs(out - reference).max() / (np.abs(reference).max() or 1.0))
    return dict(
        name=name,
        report=network_report(net.session),
        summary=summary,
        cpu_ops=left,
        compile=compile_seconds,
        run=run_seconds,
        error=error,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=NETWORKS)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--target", default="convadd-sim")
    args = parser.parse_args()
    results = []
    for name in args.networks:
        result = measure(name, args.image_size, args.target)
        results.append(result)
        print(f"\n=== {name} @ {args.image_size}x{args.image_size} on {args.target} ===")
        print(result["summary"])
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(result["cpu_ops"].items()))
        print(f"left on the CPU: {ops or 'nothing'}")
        print(result["report"].table())
    print(
        f"\n{'network':<16} {'convs':>9} {'MACs off':>8} {'A+B':>10} {'fused':>10} "
        f"{'bound':>10} {'f/bound':>7} {'f/(A+B)':>7} {'hidden':>6} {'compile s':>9} "
        f"{'run s':>6} {'rel. err':>8}"
    )
    for r in results:
        rep, summary = r["report"], r["summary"]
        print(
            f"{r['name']:<16} {summary.offloaded:>4}/{summary.convs:<4} {summary.share:>8.1%} "
            f"{rep.unfused_cycles:>10} {rep.fused_cycles:>10} {rep.bound_cycles:>10} "
            f"{rep.fused_cycles / rep.bound_cycles:>7.3f} "
            f"{rep.fused_cycles / rep.unfused_cycles:>7.3f} {rep.add_hidden:>6.0%} "
            f"{r['compile']:>9.1f} {r['run']:>6.2f} {r['error']:>8.1e}"
        )


if __name__ == "__main__":
    main()
