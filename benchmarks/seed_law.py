"""Reproduce the seed's law: a pipelined conv+add takes A + B/N cycles instead of A + B.

For each of ResNet-50's residual conv+add layers (224x224 input, the 1x1 conv3 of each stage
with its folded bias, residual add and relu) and each tile count N, print
N | A | B | A+B/N | simulated | error, under the `ideal` config (free DMA, no issue cost: the
law holds exactly) and the `default` config (DMA and per-instruction costs: a finite best N).
A and B are the whole layer's conv and add on the Conv and Add units. Writes a plot of
cycles against N, and the simulator's own speed in timing-only mode.

    python benchmarks/seed_law.py [--quick] [--plot benchmarks/figures/seed_law.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tvm_convadd import TileConfig, Workload
from tvm_convadd.errors import BufferOverflowError
from tvm_convadd.schedules.workload import standard_epilogue
from tvm_convadd.target.hardware import load_config
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.simulator import simulate

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


def whole_layer(workload: Workload, hardware) -> tuple[int, int]:
    elements = workload.batch * workload.out_channels * workload.out_height * workload.out_width
    return hardware.conv_cycles(*workload.gemm), hardware.add_cycles(elements)


def tile_counts(extent: int, quick: bool) -> list[int]:
    counts = [n for n in (1, 2, 4, 7, 8, 14, 16, 28, 32, 56, 64, 128, 256) if n <= extent]
    return counts[::2] if quick else counts


def tiled_axis(workload: Workload, hardware) -> str:
    """Height when some tile count fits the buffers, else output channels (weights per tile)."""
    extent = workload.out_height
    fits = simulated(workload, TileConfig(extent, "height", "software"), hardware) is not None
    return "height" if fits else "channel"


def simulated(workload: Workload, config: TileConfig, hardware) -> int | None:
    try:
        program = lower_to_program(workload, config, hardware)
    except BufferOverflowError:
        return None
    return simulate(program, hardware, functional=False).total_cycles


def law_table(name: str, workload: Workload, hardware, quick: bool) -> list[dict]:
    conv, add = whole_layer(workload, hardware)
    axis = tiled_axis(workload, hardware)
    rows = []
    for n_tiles in tile_counts(TileConfig(1, axis).axis_extent(workload), quick):
        config = TileConfig(n_tiles, axis, "software")
        tiles = config.effective_tiles(workload)
        rows.append(
            dict(
                layer=name,
                hw=hardware.name,
                axis=axis,
                n=n_tiles,
                tiles=tiles,
                a=conv,
                b=add,
                law=conv + add / tiles,
                sim=simulated(workload, config, hardware),
                serial=simulated(workload, TileConfig(n_tiles, axis, "none"), hardware),
            )
        )
    return rows


def print_rows(rows: list[dict]) -> None:
    print(
        f"\n{rows[0]['layer']} on {rows[0]['hw']}: A={rows[0]['a']} B={rows[0]['b']} "
        f"A+B={rows[0]['a'] + rows[0]['b']}"
    )
    print(
        f"{'N':>4} {'tiles':>5} {'A':>9} {'B':>8} {'A+B/tiles':>11} {'simulated':>10} "
        f"{'error':>8} {'serial':>10}"
    )
    for row in rows:
        if row["sim"] is None:
            print(
                f"{row['n']:>4} {row['tiles']:>5} {row['a']:>9} {row['b']:>8} {row['law']:>11.1f} "
                f"{'no fit':>10} {'':>8} {'':>10}"
            )
            continue
        error = (row["sim"] - row["law"]) / row["law"]
        print(
            f"{row['n']:>4} {row['tiles']:>5} {row['a']:>9} {row['b']:>8} {row['law']:>11.1f} "
            f"{row['sim']:>10} {error:>8.2%} {row['serial']:>10}"
        )
    fitted = [r for r in rows if r["sim"] is not None]
    if fitted:
        best = min(fitted, key=lambda r: r["sim"])
        print(f"best N = {best['n']} ({best['sim']} cycles)")
    else:
        print("no tile count fits this hardware's buffers")


def simulator_speed() -> tuple[int, float]:
    """Instructions per second of timing-only simulation on a long program."""
    workload = LAYERS["stage1 64->256 @56"]
    hardware = load_config("ideal")
    program = lower_to_program(workload, TileConfig(56, "width", "software"), hardware)
    repeats, started = 20, time.perf_counter()
    for _ in range(repeats):
        simulate(program, hardware, functional=False)
    elapsed = time.perf_counter() - started
    return program.num_instructions, program.num_instructions * repeats / elapsed


def plot(all_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(dict.fromkeys(r["layer"] for r in all_rows))
    fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.8))
    for ax, layer in zip(axes, layers):
        for hw, style in (("ideal", "o-"), ("default", "s-")):
            rows = [r for r in all_rows if r["layer"] == layer and r["hw"] == hw]
            ns = [r["n"] for r in rows if r["sim"] is not None]
            ax.plot(
                ns,
                [r["sim"] for r in rows if r["sim"] is not None],
                style,
                label=f"simulated ({hw})",
            )
            if hw == "ideal":
                ax.plot([r["n"] for r in rows], [r["law"] for r in rows], "k--", label="A + B/N")
                ax.axhline(rows[0]["a"] + rows[0]["b"], color="gray", ls=":", label="A + B")
        ax.set_xscale("log", base=2)
        ax.set_title(layer, fontsize=10)
        ax.set_xlabel("tiles N")
    axes[0].set_ylabel("cycles")
    axes[0].legend(fontsize=8)
    fig.suptitle("ResNet-50 residual conv+add: cycles vs tile count")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def timelines(directory: Path) -> list[Path]:
    """Gantt charts of one layer, serial then pipelined: the seed's picture of Conv and Add."""
    from tvm_convadd.target.trace import plot_gantt

    hardware = load_config("default")
    workload = Workload(1, 128, 28, 28, 512, 1, 1, epilogue=standard_epilogue(bias=True, relu=True))
    paths = []
    for pipeline in ("none", "software"):
        config = TileConfig(7, "height", pipeline)
        result = simulate(lower_to_program(workload, config, hardware), hardware, functional=False)
        path = directory / f"timeline_{pipeline}.png"
        plot_gantt(result, path, title=f"{workload} {config}: {result.total_cycles} cycles")
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tile counts")
    parser.add_argument("--plot", default="benchmarks/figures/seed_law.png")
    args = parser.parse_args()
    all_rows = []
    for hardware in (load_config("ideal"), load_config("default")):
        for name, workload in LAYERS.items():
            rows = law_table(name, workload, hardware, args.quick)
            print_rows(rows)
            all_rows += rows
    count, speed = simulator_speed()
    print(
        f"\nsimulator, timing-only: {speed:,.0f} instructions/s (program of {count} instructions)"
    )
    plot(all_rows, Path(args.plot))
    print(f"plot: {args.plot}")
    for path in timelines(Path(args.plot).parent):
        print(f"timeline: {path}")


if __name__ == "__main__":
    main()
