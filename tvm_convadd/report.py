"""Where the cycles went: per offloaded layer and for the network, as data and as a table."""

from __future__ import annotations

from dataclasses import dataclass

from tvm_convadd.codegen import LayerRun, OffloadSession, RunRecorder
from tvm_convadd.target.isa import UNITS
from tvm_convadd.target.simulator import SimResult


@dataclass(frozen=True)
class LayerReport:
    """One offloaded conv + epilogue. A and B are the Conv and Add units' busy cycles, so A + B
    is what the layer costs with conv and epilogue run one after the other (DMA free), and
    A + B/N the seed's promise for N pipelined tiles. The bound is the busiest unit's busy
    cycles (DMA included): no schedule of these instructions on this machine beats it."""

    symbol: str
    shape: str
    config: str
    config_source: str
    tiles: int
    busy: dict  # unit -> busy cycles
    fused_cycles: int
    add_overlapped: int  # Add-unit cycles during which the Conv unit was busy too

    @property
    def conv_cycles(self) -> int:
        return self.busy["conv"]

    @property
    def add_cycles(self) -> int:
        return self.busy["add"]

    @property
    def unfused_cycles(self) -> int:
        """A + B: conv then epilogue, DMA not counted (the seed's baseline)."""
        return self.conv_cycles + self.add_cycles

    @property
    def law_cycles(self) -> float:
        return self.conv_cycles + self.add_cycles / self.tiles

    @property
    def bound_cycles(self) -> int:
        return max(self.busy.values())

    @property
    def bound_unit(self) -> str:
        return max(self.busy, key=self.busy.get)

    @property
    def saved_cycles(self) -> int:
        return self.unfused_cycles - self.fused_cycles

    @property
    def add_hidden(self) -> float:
        """Share of the add's time hidden behind the conv: it ran while the conv ran."""
        return self.add_overlapped / self.add_cycles if self.add_cycles else 0.0


_COLUMNS = (
    f"{'#':>3} {'layer':<52} {'tiles':<36} {'A conv':>9} {'B add':>8} {'A+B':>9} "
    f"{'A+B/N':>9} {'fused':>9} {'bound':>9} {'unit':<5} {'f/bound':>7} {'hidden':>6}"
)


@dataclass(frozen=True)
class NetworkReport:
    layers: tuple[LayerReport, ...]

    def total(self, field: str) -> int:
        return sum(getattr(layer, field) for layer in self.layers)

    @property
    def fused_cycles(self) -> int:
        return self.total("fused_cycles")

    @property
    def unfused_cycles(self) -> int:
        return self.total("unfused_cycles")

    @property
    def busy(self) -> dict:
        return {unit: sum(layer.busy[unit] for layer in self.layers) for unit in UNITS}

    @property
    def bound_cycles(self) -> int:
        """The network bound: the busiest unit's busy cycles summed over all layers."""
        return max(self.busy.values()) if self.layers else 0

    @property
    def add_hidden(self) -> float:
        add = self.total("add_cycles")
        return self.total("add_overlapped") / add if add else 0.0

    def table(self) -> str:
        if not self.layers:
            return "nothing to offload: no conv2d the accelerator can take"
        rows = [_COLUMNS, "-" * len(_COLUMNS)]
        for index, layer in enumerate(self.layers):
            rows.append(
                f"{index:>3} {layer.shape:<52} {layer.config + ' ' + layer.config_source:<36} "
                f"{layer.conv_cycles:>9} {layer.add_cycles:>8} {layer.unfused_cycles:>9} "
                f"{layer.law_cycles:>9.0f} {layer.fused_cycles:>9} {layer.bound_cycles:>9} "
                f"{layer.bound_unit:<5} {layer.fused_cycles / layer.bound_cycles:>7.3f} "
                f"{layer.add_hidden:>6.0%}"
            )
        rows.append("-" * len(_COLUMNS))
        law = sum(layer.law_cycles for layer in self.layers)
        busy = self.busy
        unit = max(busy, key=busy.get)
        rows.append(
            f"{'':>3} {'total (' + str(len(self.layers)) + ' layers)':<52} {'':<36} "
            f"{self.total('conv_cycles'):>9} {self.total('add_cycles'):>8} "
            f"{self.unfused_cycles:>9} {law:>9.0f} {self.fused_cycles:>9} "
            f"{self.bound_cycles:>9} {unit:<5} {self.fused_cycles / self.bound_cycles:>7.3f} "
            f"{self.add_hidden:>6.0%}"
        )
        rows.append(
            f"fused: {self.fused_cycles / self.bound_cycles:.3f}x the network bound (busiest "
            f"unit: {unit}), {self.fused_cycles / self.unfused_cycles:.3f}x the bare A + B "
            "(conv then epilogue, DMA free)"
        )
        return "\n".join(rows)


def overlap_cycles(result: SimResult, unit: str, other: str) -> int:
    """Cycles during which both units were busy (each unit's own intervals never overlap)."""
    spans = [(e.start, e.end) for e in result.events if e.unit == other]
    total = 0
    for event in result.events:
        if event.unit != unit:
            continue
        total += sum(max(0, min(event.end, end) - max(event.start, start)) for start, end in spans)
    return total


def layer_report(run: LayerRun) -> LayerReport:
    layer, result = run.layer, run.result
    return LayerReport(
        symbol=layer.symbol,
        shape=str(layer.workload),
        config=config_label(layer.config),
        config_source=layer.config_source,
        tiles=layer.config.effective_tiles(layer.workload),
        busy={unit: result.units[unit].busy_cycles for unit in UNITS},
        fused_cycles=result.total_cycles,
        add_overlapped=overlap_cycles(result, "add", "conv"),
    )


def config_label(config) -> str:
    """"N=4 height software", and for a 2-D grid "N=4 height x 8ch channel_outer software"."""
    grid = f"N={config.n_tiles} {config.axis}"
    if config.channel_tiles > 1:
        grid += f" x {config.channel_tiles}ch {config.order}"
    return f"{grid} {config.pipeline}"


def network_report(session: OffloadSession | RunRecorder) -> NetworkReport:
    """The report of a build's last run, or of what a `recording()` block ran (a loaded
    executable in another process too), layers in the order the VM called them."""
    return NetworkReport(tuple(layer_report(run) for run in session.runs))
