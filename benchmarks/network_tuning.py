"""Whole networks under three tilings: N=1, the analytic heuristic, and the shipped tuned records.

Timing-only simulation at 224x224 on the default target. N=1 is reported as "no fit" when a
layer's tile does not fit the on-chip buffers (the error names the smallest N that would).

    python benchmarks/network_tuning.py [--networks resnet50 resnet18 mobilenet_v2]
"""

from __future__ import annotations

import argparse

import numpy as np

from tvm_convadd import build, network_report
from tvm_convadd.errors import BufferOverflowError
from tvm_convadd.networks import get_network


def network_cycles(mod, params, image, tiles) -> int | str:
    try:
        net = build(mod, "convadd-sim", params, tiles=tiles, functional=False)
    except BufferOverflowError as err:
        return f"no fit ({str(err).split('; ')[-1]})"
    net.run(image)
    return network_report(net.session).fused_cycles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=["resnet50", "resnet18", "mobilenet_v2"])
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    print(f"{'network':<14} {'N=1':>12} {'heuristic':>10} {'tuned':>10} {'tuned gain':>10}")
    for name in args.networks:
        mod, params = get_network(name, image_size=args.image_size)
        image = np.zeros((1, 3, args.image_size, args.image_size), "float32")
        single = network_cycles(mod, params, image, 1)
        heuristic = network_cycles(mod, params, image, "heuristic")
        tuned = network_cycles(mod, params, image, "auto")
        gain = heuristic / tuned - 1
        single_text = single if isinstance(single, int) else "no fit"
        print(f"{name:<14} {single_text:>12} {heuristic:>10} {tuned:>10} {gain:>10.2%}")
        if not isinstance(single, int):
            print(f"  N=1: {single}")


if __name__ == "__main__":
    main()
