"""Per-layer and total cycles of whole networks on the simulated accelerator, at 224x224.

For ResNet-50, ResNet-18 and MobileNetV2 under the default config: every offloaded conv+add
layer with its tile config, the Conv and Add units' busy cycles (A, B), the same tiles run
serially (A + B), the pipelined run, the cycles saved and the share of the add that ran while
the conv ran; then the network totals and the wall time of compile + simulate (functional and
timing-only) on this machine. Also checks the output against the pure-llvm build.

    python benchmarks/networks.py [--networks resnet50 resnet18 mobilenet_v2] [--image-size 224]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tvm_convadd import build, build_reference, network_report
from tvm_convadd.networks import get_network


def measure(name: str, image_size: int, target: str) -> dict:
    mod, params = get_network(name, image_size=image_size)
    image = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size))
    image = image.astype("float32")
    started = time.perf_counter()
    net = build(mod, target, params)
    compile_seconds = time.perf_counter() - started
    started = time.perf_counter()
    out = net.run(image)
    functional_seconds = time.perf_counter() - started
    report = network_report(net.session)
    timing = build(mod, target, params, functional=False)
    started = time.perf_counter()
    timing.run(image)
    timing_seconds = time.perf_counter() - started
    reference = build_reference(mod, params)(image)
    error = float(np.abs(out - reference).max() / (np.abs(reference).max() or 1.0))
    return dict(
        name=name,
        report=report,
        compile=compile_seconds,
        functional=functional_seconds,
        timing=timing_seconds,
        error=error,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["resnet50", "resnet18", "mobilenet_v2"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--target", default="convadd-sim")
    args = parser.parse_args()
    results = []
    for name in args.networks:
        result = measure(name, args.image_size, args.target)
        results.append(result)
        print(f"\n=== {name} @ {args.image_size}x{args.image_size} on {args.target} ===")
        print(result["report"].table())
    print(
        f"\n{'network':<14} {'layers':>6} {'A+B':>10} {'serial':>10} {'fused':>10} "
        f"{'vs A+B':>7} {'vs serial':>9} {'hidden':>6} {'compile s':>9} {'sim s':>6} "
        f"{'timing s':>8} {'rel. err':>8}"
    )
    for r in results:
        rep = r["report"]
        print(
            f"{r['name']:<14} {len(rep.layers):>6} {rep.unfused_cycles:>10} "
            f"{rep.serial_cycles:>10} {rep.fused_cycles:>10} "
            f"{rep.unfused_cycles / rep.fused_cycles:>6.3f}x "
            f"{rep.serial_cycles / rep.fused_cycles:>8.3f}x {rep.add_hidden:>6.0%} "
            f"{r['compile']:>9.1f} {r['functional']:>6.2f} {r['timing']:>8.2f} "
            f"{r['error']:>8.1e}"
        )


if __name__ == "__main__":
    main()
