"""The schedule's knobs: one frozen dataclass shared by the hand-written default and the tuner."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tvm_convadd.errors import TileConfigError
from tvm_convadd.schedules.workload import Workload

AXES = ("height", "width", "channel")
SPATIAL_AXES = ("height", "width")
# "stream_weights" pipelines a 2-D grid as "software" does but prefetches only what changes
# from tile to tile along the inner index (weights, per-channel vectors) into two slots; the
# input loads just in time into one slot. A layer whose input tile is too big to double-buffer
# (a 1x1 conv over 1024 channels) still streams its weights under the conv.
LINE_PIPELINES = ("none", "software", "vthread")  # the modes of a 1-D tiling
PIPELINES = (*LINE_PIPELINES, "stream_weights")
# The order of a 2-D tile grid: which tile index runs fastest. "spatial_outer" walks the channel
# tiles of one spatial tile back to back (its input is reused); "channel_outer" walks the spatial
# tiles of one channel tile back to back (its weights are reused).
ORDERS = ("spatial_outer", "channel_outer")
# A reduction split cuts the input channels of every output tile into `reduce_tiles` chunks, one
# accumulating CONV each, its input and weight chunks double-buffered by a pipeline nested in the
# tile loop: an input too big to double-buffer whole streams in chunks, with no cost on the
# array when a chunk is a multiple of its rows. The modes that can nest it:
REDUCE_PIPELINES = ("none", "software")


def whole_groups(workload: Workload, channels: int) -> bool:
    """Whether channel tiles `channels` long keep every tile within whole groups or within one
    group (a tile across a group boundary would need two groups' inputs in one CONV)."""
    per_group = workload.group_out_channels
    return workload.groups == 1 or channels % per_group == 0 or per_group % channels == 0


def vthread_pairs_fit(workload: Workload, config: TileConfig) -> bool:
    """Whether the tiles virtual threads pair (consecutive ones in the grid's order) hold
    whole groups or lie within one, as a single tile must: a pair's input is one region.
    Tiles of whole groups always pair well; tiles inside a group may pair across a group
    boundary, or, where a pair wraps from one row of the grid to the next, join the last
    channel tile with the first."""
    per_group, channels = workload.group_out_channels, workload.out_channels
    tile = config.channel_tile_extent(workload)
    if config.pipeline != "vthread" or workload.groups == 1 or tile % per_group == 0:
        return True
    starts = range(0, channels, tile)
    if config.axis == "channel":
        walk = list(starts)
    else:
        rows = range(-(-config.axis_extent(workload) // config.tile_extent(workload)))
        spatial_outer = config.order == "spatial_outer"
        walk = (
            [c for _ in rows for c in starts]
            if spatial_outer
            else [c for c in starts for _ in rows]
        )
    for first, second in zip(walk[::2], walk[1::2]):
        low, high = min(first, second), min(max(first, second) + tile, channels)
        if first == second:
            continue  # one channel tile twice
        if abs(first - second) != tile:
            return False  # the last channel tile and the first: two groups
        within = low // per_group == (high - 1) // per_group
        if not within and (low % per_group or high % per_group):
            return False
    return True


@dataclass(frozen=True)
class TileConfig:
    """Split the output into tiles and pipeline Conv with Add.

    `n_tiles` tiles cut `axis`; with a spatial axis, `channel_tiles` also cuts the output
    channels, making a 2-D grid of n_tiles x channel_tiles tiles walked in `order`.
    `pipeline`: "none" runs tile after tile through one accumulator; "software" uses TVM's
    software pipelining (InjectSoftwarePipeline double-buffers the accumulator); "vthread"
    binds tile pairs to two virtual threads (InjectVirtualThread gives each its own copy);
    "stream_weights" (a 2-D grid only) software-pipelines with the input in one slot.
    `reduce_tiles` cuts the input channels of each tile into chunks that accumulate into its
    accumulator (an ungrouped conv, pipeline "software" or "none").
    A count need not divide its axis: tiles are ceil(extent / N) long and the last one is
    predicated. A channel tile of a grouped conv holds whole groups or lies within one.
    """

    n_tiles: int = 1
    axis: str = "height"
    pipeline: str = "software"
    channel_tiles: int = 1
    order: str = "spatial_outer"
    reduce_tiles: int = 1

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise TileConfigError(f"tile axis {self.axis!r}: choose one of {AXES}")
        if self.pipeline not in PIPELINES:
            raise TileConfigError(f"pipeline mode {self.pipeline!r}: choose one of {PIPELINES}")
        if self.order not in ORDERS:
            raise TileConfigError(f"tile order {self.order!r}: choose one of {ORDERS}")
        for name, count in (
            ("tile count", self.n_tiles),
            ("channel tile count", self.channel_tiles),
            ("reduce tile count", self.reduce_tiles),
        ):
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise TileConfigError(f"{name} {count!r}: must be an integer >= 1")
        if self.pipeline not in LINE_PIPELINES and self.channel_tiles == 1:
            raise TileConfigError(
                f"pipeline {self.pipeline!r} streams the weights of a 2-D grid: give "
                "channel_tiles >= 2 with a spatial axis, or choose one of "
                f"{LINE_PIPELINES}"
            )
        if self.reduce_tiles > 1 and self.pipeline not in REDUCE_PIPELINES:
            raise TileConfigError(
                f"reduce_tiles={self.reduce_tiles} with pipeline {self.pipeline!r}: a reduction "
                f"split nests its own pipeline; choose one of {REDUCE_PIPELINES}"
            )
        if self.axis == "channel" and self.channel_tiles != 1:
            raise TileConfigError(
                f"channel_tiles={self.channel_tiles} with axis channel: the channel axis is "
                "already tiled; use a spatial axis for a 2-D grid"
            )

    @property
    def total_tiles(self) -> int:
        """Tiles in the grid (before ceil division leaves any empty)."""
        return self.n_tiles * self.channel_tiles

    @property
    def channel_count(self) -> int:
        """How many tiles cut the output channels (1 when they are not cut)."""
        return self.n_tiles if self.axis == "channel" else self.channel_tiles

    @property
    def spatial_count(self) -> int:
        """How many tiles cut the spatial axis (1 when it is not cut)."""
        return 1 if self.axis == "channel" else self.n_tiles

    def input_once(self, workload: Workload) -> bool:
        """Whether the input loads whole, once, before the tile loop: when only the channels
        are cut and every tile reads all input channels (an ungrouped conv), unsplit."""
        return self.axis == "channel" and workload.groups == 1 and self.reduce_tiles == 1

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
        channels = workload.out_channels
        if self.channel_tiles > channels:
            raise TileConfigError(
                f"channel tile count {self.channel_tiles} for {channels} output channels: "
                f"choose 1..{channels}"
            )
        if self.reduce_tiles > 1 and workload.groups > 1:
            raise TileConfigError(
                f"reduce_tiles={self.reduce_tiles} for the grouped conv {workload}: a reduction "
                "split needs groups=1; use reduce_tiles=1"
            )
        if self.reduce_tiles > workload.in_channels:
            raise TileConfigError(
                f"reduce tile count {self.reduce_tiles} for {workload.in_channels} input "
                f"channels: choose 1..{workload.in_channels}"
            )
        if not vthread_pairs_fit(workload, self):
            raise TileConfigError(
                f"vthread pairs channel tiles of {self.channel_tile_extent(workload)} channels "
                f"inside the groups of {workload.group_out_channels} output channels of "
                f"{workload} so that a pair spans two groups: use channel tiles of whole groups, "
                "an even tile count, or pipeline software"
            )
        if not whole_groups(workload, self.channel_tile_extent(workload)):
            per_group = workload.group_out_channels
            raise TileConfigError(
                f"{self.channel_count} channel tiles of {self.channel_tile_extent(workload)} "
                f"channels straddle the groups of {per_group} output channels of {workload}: "
                f"choose a count whose tiles are a multiple or a divisor of {per_group}"
            )
        return self

    def tile_extent(self, workload: Workload) -> int:
        """Length along `axis` of every tile but possibly the last (ceil division, like
        `split`)."""
        extent = self.axis_extent(workload)
        return -(-extent // self.n_tiles)

    def channel_tile_extent(self, workload: Workload) -> int:
        """Output channels of every tile but possibly the last."""
        return -(-workload.out_channels // self.channel_count)

    def reduce_tile_extent(self, workload: Workload) -> int:
        """Input channels of every reduction chunk but possibly the last."""
        return -(-workload.in_channels // self.reduce_tiles)

    def effective_reduce_tiles(self, workload: Workload) -> int:
        """Reduction chunks that hold any input channel."""
        return -(-workload.in_channels // self.reduce_tile_extent(workload))

    def effective_tiles(self, workload: Workload) -> int:
        """Tiles that hold any output: fewer than the grid when ceil division leaves some
        empty."""
        extent = self.axis_extent(workload)
        along_axis = -(-extent // self.tile_extent(workload))
        if self.axis == "channel":
            return along_axis
        channels = workload.out_channels
        return along_axis * -(-channels // self.channel_tile_extent(workload))

    def to_dict(self) -> dict:
        """The fields; `reduce_tiles` only when split, so unsplit records read as before."""
        data = asdict(self)
        if self.reduce_tiles == 1:
            del data["reduce_tiles"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TileConfig:
        return cls(**data)

    def __str__(self) -> str:
        text = f"N={self.n_tiles} axis={self.axis} pipeline={self.pipeline}"
        if self.channel_tiles != 1:
            text += f" channel_tiles={self.channel_tiles} order={self.order}"
        if self.reduce_tiles != 1:
            text += f" reduce_tiles={self.reduce_tiles}"
        return text
