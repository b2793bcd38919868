"""The schedule's knobs: one frozen dataclass shared by the hand-written default and the tuner."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tvm_convadd.errors import TileConfigError
from tvm_convadd.schedules.workload import Workload

AXES = ("height", "width", "channel")
PIPELINES = ("none", "software", "vthread")


@dataclass(frozen=True)
class TileConfig:
    """Split the output along `axis` into `n_tiles` tiles and pipeline Conv with Add.

    `pipeline`: "none" runs tile after tile through one accumulator; "software" uses TVM's
    software pipelining (InjectSoftwarePipeline double-buffers the accumulator); "vthread"
    binds tile pairs to two virtual threads (InjectVirtualThread gives each its own copy).
    N need not divide the axis: tiles are ceil(extent / N) long and the last one is predicated.
    """

    n_tiles: int = 1
    axis: str = "height"
    pipeline: str = "software"

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise TileConfigError(f"tile axis {self.axis!r}: choose one of {AXES}")
        if self.pipeline not in PIPELINES:
            raise TileConfigError(f"pipeline mode {self.pipeline!r}: choose one of {PIPELINES}")
        if not isinstance(self.n_tiles, int) or isinstance(self.n_tiles, bool) or self.n_tiles < 1:
            raise TileConfigError(f"tile count {self.n_tiles!r}: must be an integer >= 1")

    def axis_extent(self, workload: Workload) -> int:
        """Extent of the tiled output axis."""
        return {
            "height": workload.out_height,
            "width": workload.out_width,
            "channel": workload.out_channels,
        }[self.axis]

    def validate(self, workload: Workload) -> TileConfig:
        extent = self.axis_extent(workload)
        if self.n_tiles > extent:
            raise TileConfigError(
                f"tile count {self.n_tiles} for output {self.axis} {extent}: choose 1..{extent}"
            )
        return self

    def tile_extent(self, workload: Workload) -> int:
        """Length of every tile but possibly the last (ceil division, like `split`)."""
        extent = self.axis_extent(workload)
        return -(-extent // self.n_tiles)

    def effective_tiles(self, workload: Workload) -> int:
        """Tiles that hold any output: fewer than `n_tiles` when ceil division leaves some empty."""
        extent = self.axis_extent(workload)
        return -(-extent // self.tile_extent(workload))

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"N={self.n_tiles} axis={self.axis} pipeline={self.pipeline}"
