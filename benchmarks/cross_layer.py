"""Whole networks on one accelerator timeline: the next layer's weights load under this one.

For each network at 224x224 on the default config (timing only): the sum of the layers'
standalone cycles (each on an empty machine), the network timeline's cycles (every offloaded
call of one VM run on one timeline, `target/timeline.py`), the network bound (the busiest unit,
or the DRAM channel, summed over the layers) and the ratios. Then a plot of the units over the
first layers of ResNet-50, each layer in its own colour, weight loads hatched.

    python benchmarks/cross_layer.py [--networks resnet50 mobilenet_v2 resnet18]
        [--image-size 224] [--plot-layers 6]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tvm_convadd import build, recording
from tvm_convadd.build import run_main
from tvm_convadd.networks import get_network
from tvm_convadd.target.isa import UNITS, Load
from tvm_convadd.target.timeline import NetworkTimeline, network_timeline_of

NETWORKS = ["resnet50", "mobilenet_v2", "resnet18"]
FIGURE = Path(__file__).parent / "figures" / "cross_layer_resnet50.png"


def measure(name: str, image_size: int, target: str) -> tuple[NetworkTimeline, dict]:
    """Build `name` (timing only), run it once inside `recording()`, put it on one timeline."""
    mod, params = get_network(name, image_size=image_size)
    started = time.perf_counter()
    net = build(mod, target, params, functional=False)
    image = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size))
    with recording() as recorder:
        run_main(net.vm, [image.astype("float32")])
    simulated = time.perf_counter()
    timeline = network_timeline_of(recorder)
    done = time.perf_counter()
    runs = recorder.runs
    busy = {unit: sum(run.result.units[unit].busy_cycles for run in runs) for unit in UNITS}
    busy["dram"] = sum(run.result.dram_busy_cycles for run in runs)
    for run in runs:  # a DMA engine several queues share is a resource too
        for engine, cycles in run.result.engine_busy_cycles.items():
            busy[engine] = busy.get(engine, 0) + cycles
    stats = {
        "layers": len(runs),
        "busy": busy,
        "build+run s": simulated - started,
        "timeline s": done - simulated,
    }
    return timeline, stats


def row(name: str, timeline: NetworkTimeline, stats: dict) -> str:
    busy = stats["busy"]
    unit = max(busy, key=busy.get)
    bound, alone, joint = busy[unit], timeline.standalone_cycles, timeline.total_cycles
    idle, between = timeline.result.idle("conv"), timeline.conv_idle_between_calls
    return (
        f"{name:<13} {stats['layers']:>6} {alone / 1e6:>9.3f}M {joint / 1e6:>9.3f}M "
        f"{bound / 1e6:>8.3f}M {unit:<10} {busy['dram'] / 1e6:>8.3f}M {joint / alone:>7.3f} "
        f"{joint / bound:>7.3f} {alone / bound:>7.3f} {idle.head + idle.tail:>9} "
        f"{idle.stall - between:>9} {between:>9} {stats['timeline s']:>6.1f}s"
    )


HEADER = (
    f"{'network':<13} {'layers':>6} {'sum alone':>10} {'timeline':>10} {'bound':>9} "
    f"{'unit':<10} {'dram':>9} {'tl/sum':>7} {'tl/bnd':>7} {'sum/bnd':>7} {'conv h+t':>9} "
    f"{'in calls':>9} {'between':>9} {'time':>7}"
)


def per_layer(timeline: NetworkTimeline) -> str:
    """Each layer against its own bound, alone on an empty machine and as what it adds to the
    timeline: the worst ratio and how many layers exceed 1.02x and 1.05x."""
    alone = [layer.standalone_cycles / layer.bound_cycles for layer in timeline.layers]
    added = [a / layer.bound_cycles for a, layer in zip(timeline.added_cycles, timeline.layers)]
    n = len(alone)
    return "; ".join(
        f"{label}: worst {max(ratios):.3f}x, over 1.02x {sum(r > 1.02 for r in ratios)}/{n}, "
        f"over 1.05x {sum(r > 1.05 for r in ratios)}/{n}"
        for label, ratios in (("alone", alone), ("added to the timeline", added))
    )


def layer_bounds(timeline: NetworkTimeline) -> str:
    """The network bound taken apart: each layer's own bound (its busiest resource) summed is
    what the network would cost if its layers ran one at a time, each at its bound. Over the
    network bound (the busiest resource summed) it is the price of layers bound by different
    resources, which only two layers running at once could pay back."""
    layers = sum(layer.bound_cycles for layer in timeline.layers)
    bound, total = timeline.bound_cycles, timeline.total_cycles
    return (
        f"{layers / 1e6:.3f}M = {layers / bound:.3f}x the network bound; the timeline is "
        f"{total / layers:.3f}x that sum"
    )


def plot(timeline: NetworkTimeline, layers: int, path: Path) -> Path:
    """The units over the first `layers` calls (one colour per call, weight LOADs outlined in
    black), and below it zooms on three layer boundaries: the next layer's weights under this
    one's last tiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    composition, result = timeline.composition, timeline.result
    rows = [unit for unit in UNITS if result.units[unit].instructions]
    shown = []  # (event, call, is a weight load)
    for event in result.events:
        call = composition.call_of(event.unit, event.index)
        if call < layers:
            inst = composition.program.streams[event.unit][event.index]
            pool = composition.buffer_owner[inst.dst.buffer][1] if isinstance(inst, Load) else ""
            shown.append((event, call, pool == "wgt"))
    fig = plt.figure(figsize=(15, 7.5))
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 1))
    overview = fig.add_subplot(grid[0, :])
    _draw(overview, shown, rows, (0, timeline.layers[layers - 1].end), timeline, layers)
    overview.set_title(
        f"ResNet-50's first {layers} offloaded layers on one timeline ({result.hardware}); "
        "black outline: weight LOADs, dotted: each layer's last instruction"
    )
    for panel, (low, high, k) in enumerate(_boundaries(shown, timeline, layers)[:3]):
        ax = fig.add_subplot(grid[1, panel])
        _draw(ax, shown, rows, (low, high), timeline, layers)
        ax.set_title(f"L{k} -> L{k + 1}: L{k + 1}'s first weights load under L{k}", fontsize=9)
    colors = plt.get_cmap("tab10")
    names = [Patch(color=colors(c % 10), label=timeline.layers[c].name[:40]) for c in range(layers)]
    fig.legend(handles=names, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _draw(ax, shown, rows, window, timeline: NetworkTimeline, layers: int) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colors = plt.get_cmap("tab10")
    low, high = window
    for event, call, weights in shown:
        if event.end < low or event.start > high:
            continue
        ax.broken_barh(
            [(event.start, max(event.end - event.start, 1))],
            (rows.index(event.unit) - 0.4, 0.8),
            facecolors=colors(call % 10),
            edgecolor="black" if weights else "none",
            linewidth=1.2 if weights else 0,
        )
    for call in range(layers):
        ax.axvline(timeline.layers[call].end, color=colors(call % 10), linestyle=":", lw=1.2)
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel("cycle")


def _boundaries(shown, timeline: NetworkTimeline, layers: int) -> list[tuple[int, int, int]]:
    """Windows (low, high, k) around the boundaries where call k+1's first weight LOAD starts
    before call k ends: from that LOAD to call k+1's first CONV, with a margin."""
    first_weights, first_conv = {}, {}
    for event, call, weights in shown:
        if weights:
            first_weights[call] = min(first_weights.get(call, event.start), event.start)
        if event.opcode == "CONV":
            first_conv[call] = min(first_conv.get(call, event.start), event.start)
    windows = []
    for k in range(layers - 1):
        load, conv = first_weights.get(k + 1), first_conv.get(k + 1)
        if load is not None and conv is not None and load < timeline.layers[k].end:
            margin = (conv - load) // 6 + 1
            windows.append((load - margin, conv + margin, k))
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=NETWORKS)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--target", default="convadd-sim")
    parser.add_argument("--plot-layers", type=int, default=6)
    args = parser.parse_args()
    print(
        f"one accelerator timeline per VM run, {args.target}, {args.image_size}x{args.image_size}"
    )
    print(HEADER)
    for name in args.networks:
        timeline, stats = measure(name, args.image_size, args.target)
        print(row(name, timeline, stats), flush=True)
        print(f"  per layer over its bound: {per_layer(timeline)}", flush=True)
        print(f"  the layers' own bounds summed: {layer_bounds(timeline)}", flush=True)
        if name == "resnet50" and args.plot_layers > 0:
            print(f"  plot: {plot(timeline, args.plot_layers, FIGURE)}")
            print(
                "\n".join(
                    "  " + line for line in timeline.table().splitlines()[: args.plot_layers + 1]
                )
            )
    print(
        "sum alone: each layer on an empty machine, one after the other; timeline: all calls on "
        "one machine; bound: the busiest unit (or DRAM) summed over the layers; conv h+t: the "
        "Conv unit idle before the first CONV and after the last; in calls, between: its "
        "stalls inside a call and between two calls' CONVs (timeline = conv busy + the three); "
        "added to the timeline: a layer's end minus the previous layers' latest end"
    )


if __name__ == "__main__":
    main()
