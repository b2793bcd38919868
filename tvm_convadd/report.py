"""Where the cycles went: per offloaded layer and for the network, as data and as a table."""

from __future__ import annotations

from dataclasses import dataclass

from tvm_convadd.codegen import LayerRun, OffloadSession, RunRecorder
from tvm_convadd.target.simulator import SimResult


@dataclass(frozen=True)
class LayerReport:
    """One offloaded conv+add. A and B are the Conv and Add units' busy cycles, so A + B is
    what the layer costs with conv and add run one after the other, and A + B/N the seed's
    promise for N pipelined tiles; `serial_cycles` is the same tiles simulated unpipelined."""

    symbol: str
    shape: str
    config: str
    config_source: str
    tiles: int
    conv_cycles: int
    add_cycles: int
    fused_cycles: int
    serial_cycles: int
    add_overlapped: int  # Add-unit cycles during which the Conv unit was busy too

    @property
    def unfused_cycles(self) -> int:
        return self.conv_cycles + self.add_cycles

    @property
    def law_cycles(self) -> float:
        return self.conv_cycles + self.add_cycles / self.tiles

    @property
    def saved_cycles(self) -> int:
        return self.unfused_cycles - self.fused_cycles

    @property
    def add_hidden(self) -> float:
        """Share of the add's time hidden behind the conv: it ran while the conv ran."""
        return self.add_overlapped / self.add_cycles if self.add_cycles else 0.0


_COLUMNS = (
    f"{'#':>3} {'layer':<50} {'tiles':<30} {'A conv':>9} {'B add':>8} {'A+B':>9} "
    f"{'A+B/N':>9} {'fused':>9} {'saved':>8} {'hidden':>6} {'serial':>9}"
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
    def serial_cycles(self) -> int:
        return self.total("serial_cycles")

    @property
    def add_hidden(self) -> float:
        add = self.total("add_cycles")
        return self.total("add_overlapped") / add if add else 0.0

    def table(self) -> str:
        if not self.layers:
            return "nothing to offload: no conv2d + add the accelerator can take"
        rows = [_COLUMNS, "-" * len(_COLUMNS)]
        for index, layer in enumerate(self.layers):
            rows.append(
                f"{index:>3} {layer.shape:<50} {layer.config + ' ' + layer.config_source:<30} "
                f"{layer.conv_cycles:>9} {layer.add_cycles:>8} {layer.unfused_cycles:>9} "
                f"{layer.law_cycles:>9.0f} {layer.fused_cycles:>9} {layer.saved_cycles:>8} "
                f"{layer.add_hidden:>6.0%} {layer.serial_cycles:>9}"
            )
        rows.append("-" * len(_COLUMNS))
        law = sum(layer.law_cycles for layer in self.layers)
        rows.append(
            f"{'':>3} {'total (' + str(len(self.layers)) + ' layers)':<50} {'':<30} "
            f"{self.total('conv_cycles'):>9} {self.total('add_cycles'):>8} "
            f"{self.unfused_cycles:>9} {law:>9.0f} {self.fused_cycles:>9} "
            f"{self.unfused_cycles - self.fused_cycles:>8} {self.add_hidden:>6.0%} "
            f"{self.serial_cycles:>9}"
        )
        rows.append(
            f"speed-up of fused + pipelined: {self.unfused_cycles / self.fused_cycles:.3f}x "
            f"over A + B, {self.serial_cycles / self.fused_cycles:.3f}x over the same tiles "
            "unpipelined (serial, DMA included)"
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
    config = layer.config
    return LayerReport(
        symbol=layer.symbol,
        shape=str(layer.workload),
        config=f"N={config.n_tiles} {config.axis} {config.pipeline}",
        config_source=layer.config_source,
        tiles=config.effective_tiles(layer.workload),
        conv_cycles=result.units["conv"].busy_cycles,
        add_cycles=result.units["add"].busy_cycles,
        fused_cycles=result.total_cycles,
        serial_cycles=layer.serial_cycles,
        add_overlapped=overlap_cycles(result, "add", "conv"),
    )


def network_report(session: OffloadSession | RunRecorder) -> NetworkReport:
    """The report of a build's last run, or of what a `recording()` block ran (a loaded
    executable in another process too), layers in the order the VM called them."""
    return NetworkReport(tuple(layer_report(run) for run in session.runs))
