"""Where the cycles went: per offloaded layer and for the network, as data and as a table."""

from __future__ import annotations

from dataclasses import dataclass

from tvm_convadd.codegen import LayerRun, OffloadSession
from tvm_convadd.target.simulator import SimResult


@dataclass(frozen=True)
class LayerReport:
    """One offloaded conv+add: A and B are the Conv and Add units' busy cycles."""

    symbol: str
    shape: str
    config: str
    config_source: str
    conv_cycles: int
    add_cycles: int
    serial_cycles: int
    fused_cycles: int
    add_overlapped: int  # Add-unit cycles during which the Conv unit was busy too

    @property
    def saved_cycles(self) -> int:
        return self.serial_cycles - self.fused_cycles

    @property
    def add_hidden(self) -> float:
        """Share of the add's time hidden behind the conv: it ran while the conv ran."""
        return self.add_overlapped / self.add_cycles if self.add_cycles else 0.0


@dataclass(frozen=True)
class NetworkReport:
    layers: tuple[LayerReport, ...]

    @property
    def serial_cycles(self) -> int:
        return sum(layer.serial_cycles for layer in self.layers)

    @property
    def fused_cycles(self) -> int:
        return sum(layer.fused_cycles for layer in self.layers)

    @property
    def add_cycles(self) -> int:
        return sum(layer.add_cycles for layer in self.layers)

    def table(self) -> str:
        if not self.layers:
            return "nothing to offload: no conv2d + add the accelerator can take"
        head = (
            f"{'#':>3} {'layer':<44} {'tiles':<28} {'A conv':>10} {'B add':>9} "
            f"{'A+B serial':>11} {'fused':>10} {'saved':>9} {'hidden':>7}"
        )
        rows = [head, "-" * len(head)]
        for index, layer in enumerate(self.layers):
            rows.append(
                f"{index:>3} {layer.shape:<44} {layer.config + ' ' + layer.config_source:<28} "
                f"{layer.conv_cycles:>10} {layer.add_cycles:>9} {layer.serial_cycles:>11} "
                f"{layer.fused_cycles:>10} {layer.saved_cycles:>9} {layer.add_hidden:>7.0%}"
            )
        rows.append("-" * len(head))
        saved = self.serial_cycles - self.fused_cycles
        overlapped = sum(layer.add_overlapped for layer in self.layers)
        hidden = overlapped / self.add_cycles if self.add_cycles else 0.0
        rows.append(
            f"{'':>3} {'total (' + str(len(self.layers)) + ' layers)':<44} {'':<28} "
            f"{sum(x.conv_cycles for x in self.layers):>10} {self.add_cycles:>9} "
            f"{self.serial_cycles:>11} {self.fused_cycles:>10} {saved:>9} {hidden:>7.0%}"
        )
        speedup = self.serial_cycles / self.fused_cycles if self.fused_cycles else 0.0
        rows.append(f"accelerator speed-up from pipelining: {speedup:.3f}x")
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
    config = layer.config
    return LayerReport(
        symbol=layer.symbol,
        shape=str(layer.workload),
        config=f"N={config.n_tiles} {config.axis} {config.pipeline}",
        config_source=layer.config_source,
        conv_cycles=result.units["conv"].busy_cycles,
        add_cycles=result.units["add"].busy_cycles,
        serial_cycles=layer.serial_cycles,
        fused_cycles=result.total_cycles,
        add_overlapped=overlap_cycles(result, "add", "conv"),
    )


def network_report(session: OffloadSession) -> NetworkReport:
    """The report of the last run, layers in the order the VM called them."""
    return NetworkReport(tuple(layer_report(run) for run in session.runs))
