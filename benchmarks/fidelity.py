"""CONV cycles of the simulated array against SCALE-Sim 3.0's compute model.

For every conv of ResNet-50 as a whole layer, and for every distinct CONV tile shape the
schedule emits on the layers offloaded from the built-in networks, print the GEMM shape
(P pixels, K = C_in*kh*kw, N output channels), the simulator's CONV cycles, the closed form
of SCALE-Sim's count, and SCALE-Sim's own compute cycles when its side venv exists.
Each dataflow (ws, os, is) runs on a 16x16 array.

The simulator's figure is a CONV instruction's duration in a timing-only run, less the issue
cost SCALE-Sim does not model. SCALE-Sim is never a dependency: it crashes with numpy >= 2.4,
so it lives in its own venv (see benchmarks/SCALESIM.md):

    python3 -m venv /tmp/scalesim-venv
    /tmp/scalesim-venv/bin/pip install scalesim==3.0.0 'numpy<2.4'
    python benchmarks/fidelity.py [--scalesim-python /tmp/scalesim-venv/bin/python] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from tvm import relax

from tvm_convadd.heuristic import default_config
from tvm_convadd.networks import NETWORKS, get_network, resnet50
from tvm_convadd.partition import PartitionConvAdd, fused_functions, prepare
from tvm_convadd.records import find_best
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.hardware import HardwareConfig, conv_gemm, load_config
from tvm_convadd.target.isa import Conv, Program, Slot
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.simulator import simulate

ORACLE = Path(__file__).with_name("scalesim_oracle.py")
DATAFLOWS = ("ws", "os", "is")


@dataclass(frozen=True)
class ConvShape:
    """One conv as SCALE-Sim takes it: the padded input, the filter, the stride."""

    name: str
    in_height: int  # padded
    in_width: int  # padded
    kernel_h: int
    kernel_w: int
    in_channels: int
    out_channels: int
    stride: tuple[int, int]
    batch: int = 1

    @property
    def gemm(self) -> tuple[int, int, int]:
        out_h = (self.in_height - self.kernel_h) // self.stride[0] + 1
        out_w = (self.in_width - self.kernel_w) // self.stride[1] + 1
        reduction = self.in_channels * self.kernel_h * self.kernel_w
        return self.batch * out_h * out_w, reduction, self.out_channels


def resnet50_convs(image_size: int) -> list[ConvShape]:
    """Every conv2d of the built-in ResNet-50, in program order."""
    mod, _ = resnet50(image_size=image_size)
    shapes = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not (
                isinstance(call, relax.Call) and getattr(call.op, "name", "") == "relax.nn.conv2d"
            ):
                continue
            _, channels, height, width = (int(d) for d in call.args[0].ty.shape.values)
            out_channels, _, kernel_h, kernel_w = (int(d) for d in call.args[1].ty.shape.values)
            top, left, bottom, right = (int(p) for p in call.attrs.padding)
            stride = tuple(int(s) for s in call.attrs.strides)
            shapes.append(
                ConvShape(
                    f"conv{len(shapes) + 1:02d} {kernel_h}x{kernel_w}/s{stride[0]} "
                    f"{channels}->{out_channels} @{height}",
                    height + top + bottom,
                    width + left + right,
                    kernel_h,
                    kernel_w,
                    channels,
                    out_channels,
                    stride,
                )
            )
    return shapes


def offloaded_workloads(image_size: int) -> list[Workload]:
    """The distinct workloads PartitionConvAdd offloads from the built-in networks."""
    workloads = set()
    for name in NETWORKS:
        mod, params = get_network(name, image_size=image_size)
        fused = fused_functions(PartitionConvAdd()(prepare(mod, params)))
        workloads |= {f.workload for f in fused.values()}
    return sorted(workloads, key=lambda w: w.key)


def emitted_tile_shapes(workloads: list[Workload], hardware: HardwareConfig) -> list[ConvShape]:
    """Every distinct CONV instruction shape of the program each workload runs with (its
    shipped record, else the heuristic's pick), checked against the simulator's own cycles
    for it (timing-only run, less the issue cost)."""
    shapes: dict[tuple, ConvShape] = {}
    for workload in tqdm(workloads, desc="lowering offloaded layers", leave=False):
        config = find_best(workload, "convadd-sim") or default_config(workload, hardware)
        program = lower_to_program(workload, config)
        for conv, cycles in _conv_durations(program, hardware):
            (_, _), (_, c), (_, h), (_, w) = conv.inp.region
            _, _, (_, kh), (_, kw) = conv.wgt.region
            key = (h, w, kh, kw, c, conv.acc.region[1][1], conv.stride)
            shapes.setdefault(
                key,
                ConvShape(
                    f"{workload.key[:28]} {config}",
                    h,
                    w,
                    kh,
                    kw,
                    c,
                    conv.acc.region[1][1],
                    conv.stride,
                    conv.acc.region[0][1],
                ),
            )
            assert cycles == hardware.conv_mapping(*conv_gemm(conv)).cycles
    return list(shapes.values())


def _conv_durations(program: Program, hardware: HardwareConfig):
    """(CONV instruction, its simulated cycles less issue) for every CONV of `program`."""
    result = simulate(program, hardware, functional=False)
    convs = program.streams["conv"]
    for event in result.events:
        if event.unit == "conv":
            yield convs[event.index], event.end - event.start - hardware.issue_cycles


def simulated_cycles(shape: ConvShape, hardware: HardwareConfig) -> int:
    """The simulator's cycles for one whole-layer CONV instruction of `shape`."""
    pixels, reduction, channels = shape.gemm
    out_h = (shape.in_height - shape.kernel_h) // shape.stride[0] + 1
    out_w = (shape.in_width - shape.kernel_w) // shape.stride[1] + 1
    conv = Conv(
        inp=_slot("inp", (shape.batch, shape.in_channels, shape.in_height, shape.in_width)),
        wgt=_slot("wgt", (channels, shape.in_channels, shape.kernel_h, shape.kernel_w)),
        acc=_slot("acc", (shape.batch, channels, out_h, out_w)),
        stride=shape.stride,
    )
    assert conv_gemm(conv) == (pixels, reduction, channels)
    return hardware.conv_cycles(*conv_gemm(conv)) - hardware.issue_cycles


def _slot(buffer: str, shape: tuple[int, ...]) -> Slot:
    return Slot(buffer, 0, tuple((0, d) for d in shape))


def scalesim_cycles(shapes: list[ConvShape], python: str | None) -> dict[tuple, int]:
    """SCALE-Sim's compute cycles per (shape, dataflow), run in its side venv; {} if absent.

    The count is the length of its demand matrices; its COMPUTE_REPORT prints the index of the
    last cycle, one less (benchmarks/SCALESIM.md, quirk 2).
    """
    if not python or not Path(python).exists():
        return {}
    layers = [
        {
            "name": f"{index}:{dataflow}",
            "ifmap_h": s.in_height,
            "ifmap_w": s.in_width,
            "filter_h": s.kernel_h,
            "filter_w": s.kernel_w,
            "channels": s.in_channels,
            "num_filters": s.out_channels,
            "stride_h": s.stride[0],
            "stride_w": s.stride[1],
            "batch": s.batch,
            "rows": 16,
            "cols": 16,
            "dataflow": dataflow,
        }
        for index, s in enumerate(shapes)
        for dataflow in DATAFLOWS
    ]
    done = subprocess.run(  # --trim: TVM's floor output size, not SCALE-Sim's ceil
        [python, str(ORACLE), "--trim"], input=json.dumps(layers), capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"fidelity: SCALE-Sim oracle failed: {done.stderr.strip().splitlines()[-1:]}")
    return {
        (int(row["name"].split(":")[0]), row["dataflow"]): int(row["scalesim_demand_rows"])
        for row in json.loads(done.stdout)
    }


def table(title: str, shapes: list[ConvShape], configs: dict[str, HardwareConfig], oracle):
    """Print one row per shape: GEMM shape, then simulator / formula / SCALE-Sim per dataflow."""
    print(f"\n## {title}\n")
    head = "| shape | P | K | N | " + " | ".join(
        f"{d} sim | {d} formula | {d} SCALE-Sim | {d} ratio" for d in DATAFLOWS
    )
    print(head + " |")
    print("|" + " --- |" * (4 + 4 * len(DATAFLOWS)))
    worst = dict.fromkeys(DATAFLOWS, 0.0)
    for index, shape in enumerate(shapes):
        cells = [shape.name, *map(str, shape.gemm)]
        for dataflow in DATAFLOWS:
            hardware = configs[dataflow]
            simulated = simulated_cycles(shape, hardware)
            formula = closed_form(*shape.gemm, dataflow)
            reference = oracle.get((index, dataflow))
            ratio = simulated / reference if reference else None
            if ratio is not None:
                worst[dataflow] = max(worst[dataflow], abs(ratio - 1))
            cells += [
                str(simulated),
                str(formula),
                str(reference) if reference else "-",
                f"{ratio:.4f}" if ratio else "-",
            ]
        print("| " + " | ".join(cells) + " |")
    if oracle:
        print(
            "\nworst |sim / SCALE-Sim - 1|: "
            + ", ".join(f"{d} {100 * w:.3f}%" for d, w in worst.items())
        )
    return worst


def closed_form(pixels: int, reduction: int, channels: int, dataflow: str, rows=16, cols=16):
    """SCALE-Sim's demand-matrix length written out apart from HardwareConfig: folds x
    (2R + C + T - 2) for ws/is, folds x (R + C + T - 2) for os (benchmarks/SCALESIM.md)."""
    sr, sc, t = {
        "ws": (reduction, channels, pixels),
        "os": (pixels, channels, reduction),
        "is": (reduction, pixels, channels),
    }[dataflow]
    folds = -(-sr // rows) * -(-sc // cols)
    preload = 0 if dataflow == "os" else rows
    return folds * (preload + rows + cols + t - 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scalesim-python", default="/tmp/scalesim-venv/bin/python")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--quick", action="store_true", help="whole layers only")
    args = parser.parse_args()
    base = load_config("default").to_dict()
    configs = {
        d: HardwareConfig.from_dict({**base, "name": f"16x16-{d}", "dataflow": d})
        for d in DATAFLOWS
    }
    layers = resnet50_convs(args.image_size)
    tiles = (
        []
        if args.quick
        else emitted_tile_shapes(offloaded_workloads(args.image_size), configs["ws"])
    )
    if not Path(args.scalesim_python).exists():
        print(f"SCALE-Sim side venv not found at {args.scalesim_python}: its columns stay empty")
    oracle = scalesim_cycles(layers + tiles, args.scalesim_python)
    worst = table(
        f"ResNet-50 at {args.image_size}: all {len(layers)} convs as whole layers",
        layers,
        configs,
        oracle,
    )
    if tiles:
        tile_oracle = {(i - len(layers), d): v for (i, d), v in oracle.items() if i >= len(layers)}
        tile_worst = table(
            f"all {len(tiles)} CONV tile shapes emitted on the layers offloaded from "
            f"{', '.join(NETWORKS)} with their shipped records (default config)",
            tiles,
            configs,
            tile_oracle,
        )
        worst = {d: max(worst[d], tile_worst[d]) for d in DATAFLOWS}
    if oracle:
        print("\nwithin 1 % of SCALE-Sim everywhere:", all(w <= 0.01 for w in worst.values()))


if __name__ == "__main__":
    main()
