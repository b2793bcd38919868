"""Where the cycles went: per offloaded layer and for the network, as data and as a table.

The report leads with fused against the unfused baseline (`tvm_convadd.unfused`: the conv as
its own kernel, then the epilogue chain as one elementwise kernel; per-op beside it) and
against the bound (the busiest resource). The seed's law is kept, labelled for what it is:
the ideal machine's A + B (conv then epilogue, DMA free) and A + B/N. The baseline costs a
lowering and a few simulations per distinct layer, so `network_report` computes it only when
asked (`baseline=True`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tvm_convadd.codegen import LayerRun, OffloadSession, RunRecorder
from tvm_convadd.target.isa import UNITS
from tvm_convadd.target.simulator import SimResult, UnitIdle

if TYPE_CHECKING:
    from tvm_convadd.unfused import UnfusedBaseline


def resource_busy(result: SimResult) -> dict[str, int]:
    """Busy cycles of every unit, of the shared DRAM channel ("dram") and of each DMA engine
    that several queues share ("load+vload"): the resources `SimResult.bound_cycles` is the
    busiest of."""
    return {
        **{unit: result.units[unit].busy_cycles for unit in UNITS},
        "dram": result.dram_busy_cycles,
        **result.engine_busy_cycles,
    }


@dataclass(frozen=True)
class LayerReport:
    """One offloaded conv + epilogue. A and B are the Conv and Add units' busy cycles: A + B is
    the ideal machine's conv-then-epilogue (DMA free), A + B/N the seed's law for N tiles.
    The bound is the busiest resource's busy cycles (`SimResult.bound_cycles`: a unit, the
    DRAM channel or a shared DMA engine); `baseline` the unfused kernels, when asked for."""

    symbol: str
    shape: str
    config: str
    config_source: str
    tiles: int
    busy: dict  # resource (each unit, "dram") -> busy cycles
    fused_cycles: int
    add_overlapped: int  # Add-unit cycles during which the Conv unit was busy too
    conv_idle: UnitIdle  # fused = conv busy + its head, stalls and tail
    baseline: UnfusedBaseline | None = None

    @property
    def conv_cycles(self) -> int:
        return self.busy["conv"]

    @property
    def add_cycles(self) -> int:
        return self.busy["add"]

    @property
    def ideal_serial_cycles(self) -> int:
        """A + B: conv then epilogue on the ideal machine (DMA free); not a compiler's output."""
        return self.conv_cycles + self.add_cycles

    @property
    def law_cycles(self) -> float:
        """A + B/N: the ideal machine's pipelined promise."""
        return self.conv_cycles + self.add_cycles / self.tiles

    @property
    def unfused_cycles(self) -> int | None:
        """The chain baseline: conv kernel, then the epilogue as one elementwise kernel."""
        return self.baseline.chain_cycles if self.baseline is not None else None

    @property
    def unfused_per_op_cycles(self) -> int | None:
        """The per-op baseline: conv kernel, then one elementwise kernel per epilogue op."""
        return self.baseline.per_op_cycles if self.baseline is not None else None

    @property
    def bound_cycles(self) -> int:
        return max(self.busy.values())

    @property
    def bound_unit(self) -> str:
        return max(self.busy, key=self.busy.get)

    @property
    def add_hidden(self) -> float:
        """Share of the add's time hidden behind the conv: it ran while the conv ran."""
        return self.add_overlapped / self.add_cycles if self.add_cycles else 0.0


_BASELINE_HINT = "run --baseline, or network_report(..., baseline=True)"


def _ratio(numerator: float, denominator: float | None) -> str:
    return f"{numerator / denominator:.3f}" if denominator else "-"


def _cycles(value: int | None) -> str:
    return "-" if value is None else str(value)


_COLUMNS = (
    f"{'#':>3} {'layer':<60} {'tiles':<44} {'unfused':>9} {'per-op':>9} {'fused':>9} "
    f"{'f/unf':>6} {'bound':>9} {'unit':<10} {'f/bound':>7} {'head':>7} {'stall':>7} "
    f"{'tail':>7} | {'A conv':>9} {'B add':>8} "
    f"{'A+B ideal':>10} {'A+B/N ideal':>12} {'hidden':>6}"
)
_LEGEND = (
    "unfused: conv kernel, then the epilogue chain as one elementwise kernel (TVM's FuseOps); "
    "per-op: one elementwise kernel per epilogue op; bound: the busiest unit or the DRAM "
    "channel; head, stall, tail: the Conv unit idle before its first CONV (the first "
    "operands' loads), between CONVs, after its last (the last tile's epilogue and store): "
    "fused = A + head + stall + tail; A+B ideal, A+B/N ideal: the ideal-machine law (A+B: conv "
    "then epilogue, DMA free)"
)


def _row(index: str, name: str, tiles: str, figures: dict) -> str:
    f = figures
    return (
        f"{index:>3} {name:<60} {tiles:<44} {_cycles(f['unfused']):>9} "
        f"{_cycles(f['per_op']):>9} {f['fused']:>9} {_ratio(f['fused'], f['unfused']):>6} "
        f"{f['bound']:>9} {f['unit']:<10} {_ratio(f['fused'], f['bound']):>7} "
        f"{f['idle'].head:>7} {f['idle'].stall:>7} {f['idle'].tail:>7} | "
        f"{f['conv']:>9} {f['add']:>8} {f['conv'] + f['add']:>10} {f['law']:>12.0f} "
        f"{f['hidden']:>6.0%}"
    )


@dataclass(frozen=True)
class NetworkReport:
    layers: tuple[LayerReport, ...]

    def total(self, field: str) -> int:
        return sum(getattr(layer, field) for layer in self.layers)

    @property
    def has_baseline(self) -> bool:
        return bool(self.layers) and all(layer.baseline is not None for layer in self.layers)

    @property
    def fused_cycles(self) -> int:
        return self.total("fused_cycles")

    @property
    def unfused_cycles(self) -> int | None:
        """The chain baseline summed over the layers (None unless every layer has one)."""
        return self.total("unfused_cycles") if self.has_baseline else None

    @property
    def unfused_per_op_cycles(self) -> int | None:
        return self.total("unfused_per_op_cycles") if self.has_baseline else None

    @property
    def fused_wins(self) -> int | None:
        """Layers where fused is faster than the chain baseline."""
        if not self.has_baseline:
            return None
        return sum(layer.fused_cycles < layer.unfused_cycles for layer in self.layers)

    @property
    def ideal_serial_cycles(self) -> int:
        return self.total("ideal_serial_cycles")

    @property
    def law_cycles(self) -> float:
        return sum(layer.law_cycles for layer in self.layers)

    @property
    def busy(self) -> dict:
        resources = dict.fromkeys(key for layer in self.layers for key in layer.busy)
        return {name: sum(layer.busy.get(name, 0) for layer in self.layers) for name in resources}

    @property
    def bound_cycles(self) -> int:
        """The network bound: each resource's busy cycles summed over the layers, the busiest."""
        return max(self.busy.values()) if self.layers else 0

    @property
    def bound_unit(self) -> str:
        busy = self.busy
        return max(busy, key=busy.get) if busy else "-"

    @property
    def conv_idle(self) -> UnitIdle:
        """The Conv unit's waits summed over the layers, each layer on its own machine."""
        idles = [layer.conv_idle for layer in self.layers]
        return UnitIdle(*(sum(getattr(i, f) for i in idles) for f in ("head", "stall", "tail")))

    @property
    def add_hidden(self) -> float:
        add = self.total("add_cycles")
        return self.total("add_overlapped") / add if add else 0.0

    def table(self) -> str:
        if not self.layers:
            return "nothing to offload: no conv2d the accelerator can take"
        rows = [_COLUMNS, "-" * len(_COLUMNS)]
        for index, layer in enumerate(self.layers):
            figures = {
                "unfused": layer.unfused_cycles,
                "per_op": layer.unfused_per_op_cycles,
                "fused": layer.fused_cycles,
                "bound": layer.bound_cycles,
                "unit": layer.bound_unit,
                "conv": layer.conv_cycles,
                "add": layer.add_cycles,
                "law": layer.law_cycles,
                "hidden": layer.add_hidden,
                "idle": layer.conv_idle,
            }
            tiles = f"{layer.config} {layer.config_source}"
            rows.append(_row(str(index), layer.shape, tiles, figures))
        rows.append("-" * len(_COLUMNS))
        totals = {
            "unfused": self.unfused_cycles,
            "per_op": self.unfused_per_op_cycles,
            "fused": self.fused_cycles,
            "bound": self.bound_cycles,
            "unit": self.bound_unit,
            "conv": self.total("conv_cycles"),
            "add": self.total("add_cycles"),
            "law": self.law_cycles,
            "hidden": self.add_hidden,
            "idle": self.conv_idle,
        }
        rows.append(_row("", f"total ({len(self.layers)} layers)", "", totals))
        rows.append(self.summary())
        rows.append(_LEGEND)
        return "\n".join(rows)

    def baseline_table(self) -> str:
        """What the unfused baseline ran, once per distinct layer: the conv kernel's config and
        cycles, the chain kernel's tiling and cycles, each per-op kernel's cycles."""
        if not self.has_baseline:
            return f"unfused baseline not computed: {_BASELINE_HINT}"
        header = (
            f"{'layer':<60} {'conv kernel':<44} {'cycles':>9} {'chain kernel':<28} "
            f"{'cycles':>8}  per-op kernels"
        )
        rows = [header, "-" * len(header)]
        shown = set()
        for layer in self.layers:
            if layer.shape in shown:
                continue
            shown.add(layer.shape)
            base = layer.baseline
            tiling, cycles = (base.chain[0].tiling, base.chain[0].cycles) if base.chain else "--"
            per_op = ", ".join(f"{k.name} {k.cycles}" for k in base.per_op) or "-"
            rows.append(
                f"{layer.shape:<60} {base.conv.tiling:<44} {base.conv.cycles:>9} "
                f"{tiling:<28} {cycles:>8}  {per_op}"
            )
        return "\n".join(rows)

    def summary(self) -> str:
        """The verdict in one line: fused against unfused, the bound and the ideal law."""
        fused = self.fused_cycles
        if self.has_baseline:
            lead = (
                f"fused: {fused / self.unfused_cycles:.3f}x unfused (faster on "
                f"{self.fused_wins} of {len(self.layers)} layers), "
                f"{fused / self.unfused_per_op_cycles:.3f}x unfused per-op, "
            )
        else:
            lead = f"fused (unfused baseline not computed: {_BASELINE_HINT}): "
        return (
            f"{lead}{fused / self.bound_cycles:.3f}x the network bound (busiest: "
            f"{self.bound_unit}); ideal-machine law (A+B, DMA free): "
            f"{fused / self.ideal_serial_cycles:.3f}x A+B"
        )


def overlap_cycles(result: SimResult, unit: str, other: str) -> int:
    """Cycles during which both units were busy (each unit's own intervals never overlap)."""
    spans = [(e.start, e.end) for e in result.events if e.unit == other]
    total = 0
    for event in result.events:
        if event.unit != unit:
            continue
        total += sum(max(0, min(event.end, end) - max(event.start, start)) for start, end in spans)
    return total


def layer_report(run: LayerRun, baseline: UnfusedBaseline | None = None) -> LayerReport:
    layer, result = run.layer, run.result
    return LayerReport(
        symbol=layer.symbol,
        shape=str(layer.workload),
        config=config_label(layer.config),
        config_source=layer.config_source,
        tiles=layer.config.effective_tiles(layer.workload),
        busy=resource_busy(result),
        fused_cycles=result.total_cycles,
        add_overlapped=overlap_cycles(result, "add", "conv"),
        conv_idle=result.idle("conv"),
        baseline=baseline,
    )


def config_label(config) -> str:
    """ "N=4 height software", for a 2-D grid "N=4 height x 8ch channel_outer software", and
    with a reduction split "... software /16cin" (the input channels in 16 chunks)."""
    grid = f"N={config.n_tiles} {config.axis}"
    if config.channel_tiles > 1:
        grid += f" x {config.channel_tiles}ch {config.order}"
    split = f" /{config.reduce_tiles}cin" if config.reduce_tiles > 1 else ""
    return f"{grid} {config.pipeline}{split}"


def network_report(session: OffloadSession | RunRecorder, baseline: bool = False) -> NetworkReport:
    """The report of a build's last run, or of what a `recording()` block ran (a loaded
    executable in another process too), layers in the order the VM called them.

    `baseline=True` adds the unfused baseline of every layer (lowered and simulated once per
    distinct workload and hardware, then cached)."""
    if not baseline:
        return NetworkReport(tuple(layer_report(run) for run in session.runs))
    from tvm_convadd.unfused import unfused_baseline

    return NetworkReport(
        tuple(
            layer_report(run, unfused_baseline(run.layer.workload, run.layer.hardware))
            for run in session.runs
        )
    )
