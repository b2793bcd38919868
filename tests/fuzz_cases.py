"""Differential fuzzing of lowering + simulation against torch: the cases and the checks.

Shared by `tests/test_fuzz.py` (Hypothesis draws the cases and shrinks a failure) and
`benchmarks/fuzz.py` (numpy's RNG draws many more; it shrinks greedily). Both drive the same
`draw_case` through a `Chooser`, so the two sample one distribution.

A case is a Workload (odd primes and dims of 1, non-square kernels, per-axis strides,
asymmetric padding, groups (depthwise included), an epilogue chain of 0-4 ALU ops), a
TileConfig (N up to 2 past the axis extent, a 2-D grid in either order) and a hardware
config (a shipped one or a random valid design point, sometimes with buffers too small).
`check_case` lowers it, simulates it functionally and timing-only, and compares with
torch.nn.functional.conv2d in float64; a BufferOverflowError is checked to be true and its
advice (the smallest tiling that fits, along the axis or as a grid) right. It returns the
name of the documented error the case raised (or None), raises `WrongAnswer` for a wrong
result and lets any other exception escape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from tvm_convadd.errors import BufferOverflowError, TileConfigError, UnsupportedWorkloadError
from tvm_convadd.schedules.tile_config import (
    AXES,
    LINE_PIPELINES,
    ORDERS,
    PIPELINES,
    REDUCE_PIPELINES,
    TileConfig,
)
from tvm_convadd.schedules.workload import SUPPORTED_EPILOGUE_OPS, EpilogueOp, Workload
from tvm_convadd.target.hardware import (
    BUFFERS,
    DATAFLOWS,
    HardwareConfig,
    list_configs,
    load_config,
)
from tvm_convadd.target.lower import lower_to_program
from tvm_convadd.target.simulator import simulate

if TYPE_CHECKING:
    from collections.abc import Sequence

T = TypeVar("T")

MAX_CHANNELS = 17
MAX_SPATIAL = 19
MAX_KERNEL = 5
MAX_STRIDE = 3
MAX_PAD = 2
SPECIAL_CHANNELS = (2, 3, 5, 7, 11, 13, 17)  # odd primes (and 2); 1 and the maximum come anyway
SPECIAL_SPATIAL = (2, 3, 5, 7, 11, 13, 17)
RTOL = 1e-5  # of the largest magnitude an output element sums (float32 accumulation)

# The only exceptions a valid Workload may raise on its way through lower + simulate.
DOCUMENTED = (TileConfigError, BufferOverflowError, UnsupportedWorkloadError)


class Chooser(Protocol):
    """Where the choices come from: Hypothesis's `draw` or numpy's RNG."""

    def integer(self, low: int, high: int) -> int:
        """An integer in low..high, both included (Hypothesis shrinks toward `low`)."""

    def choice(self, options: Sequence[T]) -> T:
        """One of `options` (Hypothesis shrinks toward the first)."""

    def boolean(self) -> bool:
        """True or False (Hypothesis shrinks toward False)."""


class RngChooser:
    """A Chooser over numpy's Generator: the long runs of benchmarks/fuzz.py."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def choice(self, options: Sequence[T]) -> T:
        return options[int(self.rng.integers(len(options)))]

    def boolean(self) -> bool:
        return bool(self.rng.integers(2))


class WrongAnswer(AssertionError):
    """The case ran but its result is wrong (output, cycles, or an error that was due)."""


@dataclass(frozen=True)
class Case:
    workload: Workload
    config: TileConfig
    hardware: HardwareConfig
    seed: int = 0  # of the random inputs

    def repro(self) -> str:
        """Python that reruns the case after `from tests.fuzz_cases import *`."""
        hardware = hardware_repr(self.hardware)
        lines = [
            f"workload = {workload_repr(self.workload)}",
            f"config = {self.config!r}",
            f"hardware = {hardware}",
            f"check_case(Case(workload, config, hardware, seed={self.seed}))",
        ]
        if "default" in hardware.split("(", 1)[1]:
            lines.insert(0, "default = load_config('default').to_dict()")
        return "\n".join(lines)


def workload_repr(w: Workload) -> str:
    """`Workload(...)` with only the fields that differ from the defaults after the seven dims."""
    args = [w.batch, w.in_channels, w.in_height, w.in_width, w.out_channels, w.kernel_h, w.kernel_w]
    text = ", ".join(map(str, args))
    if w.stride != (1, 1):
        text += f", stride={w.stride}"
    if w.padding != (0, 0, 0, 0):
        text += f", padding={w.padding}"
    if w.groups != 1:
        text += f", groups={w.groups}"
    if w.epilogue != Workload(1, 1, 1, 1, 1, 1, 1).epilogue:
        shown = [
            f"EpilogueOp({op.op!r}, {op.kind!r}" + ("" if op.value is None else f", {op.value!r}")
            for op in w.epilogue
        ]
        ops = ", ".join(f"{op})" for op in shown)
        text += f", epilogue=({ops}{',' if len(w.epilogue) == 1 else ''})"
    return f"Workload({text})"


def hardware_repr(hardware: HardwareConfig) -> str:
    """`load_config(name)` for a shipped config, else the default with the fields that differ."""
    if hardware.name in list_configs() and hardware == load_config(hardware.name):
        return f"load_config({hardware.name!r})"
    data, base = hardware.to_dict(), load_config("default").to_dict()
    diffs = [
        f"{key!r}: {value!r}"
        for key, value in data.items()
        if key not in ("description", "buffer_bytes") and value != base[key]
    ]
    buffers = {k: v for k, v in data["buffer_bytes"].items() if v != base["buffer_bytes"][k]}
    if buffers:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in buffers.items())
        diffs.append(f"'buffer_bytes': {{**default['buffer_bytes'], {inner}}}")
    return f"HardwareConfig.from_dict({{**default, {', '.join(diffs)}}})"


# -- generation ---------------------------------------------------------------------------


def _edgy(ch: Chooser, low: int, high: int, special: Sequence[int] = ()) -> int:
    """A value in low..high, weighted to the edges: in equal parts any value, `low` (a dim of
    1), one of `special` (odd primes) and the largest value `high`."""
    special = [value for value in special if low <= value <= high]
    mode = ch.integer(0, 3 if special else 2)
    if mode == 0:
        return ch.integer(low, high)
    if mode == 1:
        return low
    return high if mode == 2 else ch.choice(special)


def draw_epilogue(ch: Chooser) -> tuple[EpilogueOp, ...]:
    """0-4 ALU ops in any order; constants from a few values (0 for relu, 6 for relu6)."""
    ops = []
    for _ in range(ch.integer(0, 4)):
        op, kind = ch.choice(SUPPORTED_EPILOGUE_OPS)
        value = ch.choice((0.0, 6.0, -0.5, 0.25)) if kind == "const" else None
        ops.append(EpilogueOp(op, kind, value))
    return tuple(ops)


def draw_workload(ch: Chooser) -> Workload:
    batch = ch.integer(1, 2)
    groups = 1
    if ch.integer(0, 2) == 2:  # a third grouped: depthwise, or a divisor of both counts
        groups = ch.integer(1, 6)
        in_channels = groups * ch.integer(1, max(1, MAX_CHANNELS // groups))
        out_channels = groups * ch.integer(1, max(1, MAX_CHANNELS // groups))
        if ch.boolean():
            in_channels = out_channels = groups  # depthwise
    else:
        in_channels = _edgy(ch, 1, MAX_CHANNELS, SPECIAL_CHANNELS)
        out_channels = _edgy(ch, 1, MAX_CHANNELS, SPECIAL_CHANNELS)
    in_height = _edgy(ch, 1, MAX_SPATIAL, SPECIAL_SPATIAL)
    in_width = _edgy(ch, 1, MAX_SPATIAL, SPECIAL_SPATIAL)
    padding = tuple(ch.integer(0, MAX_PAD) for _ in range(4))  # top, left, bottom, right
    stride = (ch.integer(1, MAX_STRIDE), ch.integer(1, MAX_STRIDE))
    # anything, 1 (a 1x1 conv) or as large as fits (often the whole padded input)
    kernel_h = _edgy(ch, 1, min(MAX_KERNEL, in_height + padding[0] + padding[2]))
    kernel_w = _edgy(ch, 1, min(MAX_KERNEL, in_width + padding[1] + padding[3]))
    return Workload(
        batch,
        in_channels,
        in_height,
        in_width,
        out_channels,
        kernel_h,
        kernel_w,
        stride=stride,
        padding=padding,
        groups=groups,
        epilogue=draw_epilogue(ch),
    )


def draw_config(ch: Chooser, workload: Workload) -> TileConfig:
    """Any axis and pipeline (streamed weights on grids); N in 1..extent (weighted to 1 and to
    one-deep tiles, N = extent), or 1 in 8 times extent+1..extent+2: too big, a
    TileConfigError. (Uniform over 1..extent+2 would waste a third of the small workloads on
    the error.) A third of the spatial ones are 2-D grids with any channel count (some
    straddle groups: a TileConfigError too)."""
    axis = ch.choice(AXES)
    extent = TileConfig(1, axis).axis_extent(workload)
    too_big = ch.integer(0, 7) == 7
    n_tiles = ch.integer(extent + 1, extent + 2) if too_big else _edgy(ch, 1, extent)
    if axis != "channel" and ch.integer(0, 2) == 2:
        channels = _edgy(ch, 1, workload.out_channels)
        pipeline = ch.choice(PIPELINES if channels > 1 else LINE_PIPELINES)
        config = TileConfig(
            n_tiles, axis, pipeline, channel_tiles=channels, order=ch.choice(ORDERS)
        )
    else:
        config = TileConfig(n_tiles, axis, ch.choice(LINE_PIPELINES))
    if config.pipeline in REDUCE_PIPELINES and ch.integer(0, 3) == 3:
        # a reduction split: 2..C_in chunks, or one too many (a TileConfigError), or any on a
        # grouped conv (refused too)
        chunks = _edgy(ch, 2, workload.in_channels + 1) if workload.in_channels > 1 else 2
        config = replace(config, reduce_tiles=chunks)
    return config


def whole_tensor_bytes(workload: Workload) -> dict[str, int]:
    """Bytes of each on-chip buffer's whole tensor, one slot: what N=1 would roughly need."""
    w = workload
    out = w.batch * w.out_channels * w.out_height * w.out_width
    return {
        "inp": w.batch * w.in_channels * w.padded_height * w.padded_width * 4,
        "wgt": w.out_channels * w.group_in_channels * w.kernel_h * w.kernel_w * 4,
        "bias": w.out_channels * 4,
        "acc": out * 4,
        "res": out * 4,
        "out": out * 4,
    }


def draw_hardware(ch: Chooser, workload: Workload) -> HardwareConfig:
    """A shipped config, or a random valid design point built on the default's fields.

    Half the random ones are tight: one buffer holds 1/16..2x two slots of the workload's whole
    tensor, so some tile counts overflow and the lowering's advice is exercised."""
    if not ch.boolean():
        return load_config(ch.choice(list_configs()))
    base = load_config("default").to_dict()
    unlimited = ch.integer(0, 7) == 7
    bandwidth = None if unlimited else ch.integer(1, 64)
    buffers = dict(base["buffer_bytes"])
    if ch.boolean():  # tight, but only one buffer: then some larger N often fits
        name = ch.choice(BUFFERS)
        whole = whole_tensor_bytes(workload)[name]
        buffers[name] = max(1, int(2 * whole * 2.0 ** ch.integer(-4, 1)))
    data = {
        **base,
        "name": "fuzz",
        "description": "a random valid design point (tests/fuzz_cases.py)",
        "array_rows": ch.integer(1, 32),
        "array_cols": ch.integer(1, 32),
        "dataflow": ch.choice(tuple(DATAFLOWS)),
        "fill_drain": ch.boolean(),
        "add_lanes": ch.integer(1, 64),
        "add_latency_cycles": ch.integer(0, 16),
        "dma_bytes_per_cycle": bandwidth,
        "dma_latency_cycles": ch.integer(0, 128),
        "dma_run_cycles": ch.integer(0, 8),
        "issue_cycles": ch.integer(0, 8),
        "buffer_bytes": buffers,
    }
    return HardwareConfig.from_dict(data, "fuzz config")


def draw_case(ch: Chooser) -> Case:
    workload = draw_workload(ch)
    config = draw_config(ch, workload)
    return Case(workload, config, draw_hardware(ch, workload), ch.integer(0, 2**16))


# -- the independent reference --------------------------------------------------------------


def make_inputs(workload: Workload, seed: int) -> list[np.ndarray]:
    """float32 inputs in `Workload.input_names` order, weights scaled by fan-in."""
    rng = np.random.default_rng(seed)
    fan_in = workload.group_in_channels * workload.kernel_h * workload.kernel_w
    arrays = []
    for name, shape in zip(workload.input_names, workload.input_shapes):
        scale = fan_in**-0.5 if name == "weight" else 1.0
        arrays.append((rng.standard_normal(shape) * scale).astype(np.float32))
    return arrays


def torch_reference(workload: Workload, inputs: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The grouped conv2d and its epilogue chain by torch in float64, and the error scale: the
    largest magnitude any intermediate value reaches, bounded through the chain (the float32
    rounding grows with it)."""
    import torch
    import torch.nn.functional as F

    named = {name: torch.from_numpy(x).double() for name, x in zip(workload.input_names, inputs)}
    top, left, bottom, right = workload.padding
    data = F.pad(named["data"], (left, right, top, bottom))
    conv = lambda x, w: F.conv2d(x, w, stride=workload.stride, groups=workload.groups)  # noqa: E731
    out = conv(data, named["weight"])
    magnitude = conv(data.abs(), named["weight"].abs())
    binary = {"add": torch.add, "mul": torch.mul, "max": torch.maximum, "min": torch.minimum}
    for op, name in zip(workload.epilogue, workload.operand_names):
        other = torch.tensor(op.value, dtype=torch.float64) if name is None else named[name]
        out = binary[op.op](out, other)
        if op.op == "add":
            magnitude = magnitude + other.abs()
        elif op.op == "mul":
            magnitude = magnitude * other.abs()
        else:
            magnitude = torch.maximum(magnitude, other.abs())
    return out.numpy(), float(magnitude.max())


# -- the checks ----------------------------------------------------------------------------


def _fits(workload: Workload, config: TileConfig, hardware: HardwareConfig) -> bool:
    """Every on-chip buffer's slots fit its capacity (counted here, not by the package)."""
    program = lower_to_program(workload, config)
    need: dict[str, int] = {}
    for name, decl in program.buffers.items():
        # res, res_2, ... share the residual memory; bias and scale vectors the vector memory
        pool = {"scale": "bias"}.get(name.split("_")[0], name.split("_")[0])
        need[pool] = need.get(pool, 0) + decl.slots * int(np.prod(decl.shape)) * 4
    return all(need[pool] <= hardware.buffer_bytes[pool] for pool in need)


def _valid_below(workload: Workload, config: TileConfig, count: int) -> TileConfig | None:
    """The config with the largest valid tile count in config.n_tiles + 1 .. count - 1."""
    for n_tiles in range(count - 1, config.n_tiles, -1):
        candidate = replace(config, n_tiles=n_tiles)
        try:
            return candidate.validate(workload)
        except TileConfigError:
            continue  # its channel tiles straddle groups
    return None


# The lowering's advice (target/lower.py `check_fits`), one pattern per form.
ADVICE_ALONG_AXIS = re.compile(r"use at least (\d+) tiles along (\w+)")
ADVICE_GRID = re.compile(
    r"no tile count along (\w+) alone fits: use channel_tiles=(\d+) with (\d+) tile\(s\) along"
)
NO_FIT_CHANNEL = "no tile count along channel fits"
NO_FIT_GRID = re.compile(r"no tile count along (\w+), nor any with channel_tiles, fits")


def check_overflow(case: Case, err: BufferOverflowError) -> None:
    """A BufferOverflowError from the lowering must be true, and so must its advice, which must
    be one of the lowering's forms: "use at least K tiles along <axis>" names the smallest K
    that fits (channel tiles kept); "no tile count along <axis> alone fits: use channel_tiles=C
    with K tile(s)" means N = extent does not fit and C x K is a fitting grid with the fewest
    tiles; "no tile count ... fits" means the finest tiling does not fit either. (Fitting is
    monotone in each count: tiles only shrink as a count grows.)"""
    workload, config, hardware = case.workload, case.config, case.hardware
    message = str(err)
    if _fits(workload, config, hardware):
        raise WrongAnswer(f"BufferOverflowError, but the program fits {hardware.name}: {err}")
    extent = config.axis_extent(workload)
    if advice := ADVICE_ALONG_AXIS.search(message):
        smallest = int(advice[1])
        if advice[2] != config.axis:
            raise WrongAnswer(f"advises tiles along {advice[2]} for a {config.axis} tiling: {err}")
        if not config.n_tiles < smallest <= extent:
            raise WrongAnswer(f"advises {smallest} tiles, outside {config.n_tiles + 1}..{extent}")
        if not _fits(workload, replace(config, n_tiles=smallest), hardware):
            raise WrongAnswer(f"advises {smallest} tiles, which do not fit either: {err}")
        fewer = _valid_below(workload, config, smallest)  # counts between straddle groups
        if fewer is not None and _fits(workload, fewer, hardware):
            raise WrongAnswer(f"advises {smallest} tiles, but {fewer.n_tiles} fit: {err}")
    elif advice := ADVICE_GRID.search(message):
        check_grid_advice(case, advice[1], int(advice[2]), int(advice[3]), message)
    elif NO_FIT_CHANNEL in message:
        if config.axis != "channel":
            raise WrongAnswer(f"says no channel count fits for a {config.axis} tiling: {err}")
        finest = _finest_valid(workload, config, extent)
        if finest is not None and _fits(workload, finest, hardware):
            raise WrongAnswer(f"says no tile count fits, but {finest.n_tiles} tiles do: {err}")
    elif advice := NO_FIT_GRID.search(message):
        if advice[1] != config.axis or config.axis == "channel":
            raise WrongAnswer(f"says no {advice[1]} x channel grid fits a {config.axis} tiling")
        # the finest valid tiling along the axis, and for every channel count the grid with
        # the most spatial tiles that is valid (fitting only gets easier with more tiles)
        more = range(config.channel_tiles + 1, workload.out_channels + 1)
        grids = [replace(config, channel_tiles=c) for c in more]
        for grid in [config, *grids]:
            finest = _finest_valid(workload, grid, extent)
            if finest is not None and _fits(workload, finest, hardware):
                raise WrongAnswer(f"says no tiling fits, but {finest} does: {err}")
    else:
        raise WrongAnswer(f"BufferOverflowError without the lowering's advice: {err}")


def _finest_valid(workload: Workload, config: TileConfig, extent: int) -> TileConfig | None:
    """`config` with the most tiles along its axis that is a valid tiling, if any."""
    for n_tiles in range(extent, config.n_tiles - 1, -1):
        candidate = replace(config, n_tiles=n_tiles)
        if valid_config(workload, candidate):
            return candidate
    return None


def check_grid_advice(
    case: Case, axis: str, channel_tiles: int, n_tiles: int, message: str
) -> None:
    """The advice "use channel_tiles=C with K tile(s) along <axis>": no count along the axis
    alone fits, the C x K grid is valid and fits, and no valid grid with more channel tiles than
    the config's and fewer tiles in all fits (for each channel count, its largest spatial count
    below C x K)."""
    workload, config, hardware = case.workload, case.config, case.hardware
    extent = config.axis_extent(workload)
    if axis != config.axis or config.axis == "channel":
        raise WrongAnswer(f"advises a {axis} x channel grid for a {config.axis} tiling: {message}")
    if _fits(workload, replace(config, n_tiles=extent), hardware):
        raise WrongAnswer(f"says no count along {axis} alone fits, but {extent} does: {message}")
    advised = replace(config, n_tiles=n_tiles, channel_tiles=channel_tiles)
    channels = workload.out_channels
    if not (config.n_tiles <= n_tiles <= extent and config.channel_tiles < channel_tiles):
        raise WrongAnswer(f"advises {advised}, not a finer grid than {config}: {message}")
    if not valid_config(workload, advised):
        raise WrongAnswer(f"advises {advised}, whose channel tiles are invalid: {message}")
    if not _fits(workload, advised, hardware):
        raise WrongAnswer(f"advises {advised}, which does not fit either: {message}")
    total = n_tiles * channel_tiles
    for count in range(config.channel_tiles + 1, channels + 1):
        spatial = min(extent, (total - 1) // count)
        if spatial < config.n_tiles:
            break  # and for every larger count
        smaller = replace(config, n_tiles=spatial, channel_tiles=count)
        if not valid_config(workload, smaller):
            continue
        if _fits(workload, smaller, hardware):
            raise WrongAnswer(f"advises {advised} ({total} tiles), but {smaller} fits: {message}")


def valid_config(workload: Workload, config: TileConfig) -> bool:
    """Counts within their axes, and no channel tile across a group boundary (written from the
    definition: tile k covers channels [k*t, min((k+1)*t, K)))."""
    if config.n_tiles > config.axis_extent(workload):
        return False
    if config.reduce_tiles > 1 and (
        workload.groups > 1 or config.reduce_tiles > workload.in_channels
    ):
        return False
    channels = workload.out_channels
    count = config.n_tiles if config.axis == "channel" else config.channel_tiles
    if count > channels:
        return False
    tile, per_group = -(-channels // count), workload.group_out_channels
    if config.pipeline == "vthread" and workload.groups > 1 and tile % per_group:
        # virtual threads pair consecutive tiles of the grid: each pair's channels, as a
        # set, must also be whole groups or lie within one
        if not _vthread_pairs_within_groups(workload, config, tile, per_group):
            return False
    for start in range(0, channels, tile):
        stop = min(start + tile, channels)
        same_group = start // per_group == (stop - 1) // per_group
        whole = start % per_group == 0 and stop % per_group == 0
        if not (same_group or whole):
            return False
    return True


def _vthread_pairs_within_groups(workload, config, tile, per_group) -> bool:
    """Walk the grid in its order, pair consecutive tiles, and check each pair's channels
    (written from the definition, apart from the implementation's rule)."""
    channels = workload.out_channels
    channel_tiles = [(s, min(s + tile, channels)) for s in range(0, channels, tile)]
    if config.axis == "channel":
        walk = channel_tiles
    else:
        extent = config.axis_extent(workload)
        length = -(-extent // config.n_tiles)
        spatial = range(-(-extent // length))
        if config.order == "spatial_outer":
            walk = [c for _ in spatial for c in channel_tiles]
        else:
            walk = [c for c in channel_tiles for _ in spatial]
    for first in range(0, len(walk) - 1, 2):
        pair = {k for start, stop in walk[first : first + 2] for k in range(start, stop)}
        groups = {k // per_group for k in pair}
        whole = all(set(range(g * per_group, (g + 1) * per_group)) <= pair for g in groups)
        if len(groups) > 1 and not whole:
            return False
    return True


def check_case(case: Case) -> str | None:
    """Run one case; the name of the documented error it raised, or None when it ran right.

    Raises WrongAnswer for a wrong result (a false BufferOverflowError or false advice in one
    included), and lets every undocumented exception escape with its own traceback: a
    ProgramError other than BufferOverflowError, HazardError, DeadlockError, ValueError,
    IndexError, TVM's errors, ...
    """
    workload, config, hardware = case.workload, case.config, case.hardware
    try:
        program = lower_to_program(workload, config, hardware)
    except TileConfigError:
        if not valid_config(workload, config):
            return "TileConfigError"
        raise  # a valid config was refused
    except BufferOverflowError as err:
        check_overflow(case, err)
        return "BufferOverflowError"
    except UnsupportedWorkloadError:
        return "UnsupportedWorkloadError"
    if not valid_config(workload, config):
        raise WrongAnswer(f"{config} is invalid for {workload} but was accepted")

    inputs = make_inputs(workload, case.seed)
    # No documented error is left here: lowering with `hardware` already checked the fit.
    result = simulate(program, hardware, dict(zip(workload.input_names, inputs)))
    timing = simulate(program, hardware, functional=False)

    got = result.outputs["output"]
    expected, magnitude = torch_reference(workload, inputs)
    if got.shape != expected.shape:
        raise WrongAnswer(f"output shape {got.shape}, expected {expected.shape}")
    error = float(np.max(np.abs(got.astype(np.float64) - expected)))
    if not error <= RTOL * magnitude:  # also catches NaN
        worst = np.unravel_index(np.nanargmax(np.abs(got - expected)), got.shape)
        raise WrongAnswer(
            f"output differs from torch by {error:.3g} (allowed {RTOL * magnitude:.3g}); "
            f"worst at {tuple(map(int, worst))}: {got[worst]!r} vs {expected[worst]!r}"
        )
    for name, array in zip(workload.input_names, inputs):
        if not np.array_equal(result.outputs[name], array):
            raise WrongAnswer(f"the simulation changed its input tensor {name!r}")
    if timing.total_cycles != result.total_cycles:
        raise WrongAnswer(
            f"timing-only run took {timing.total_cycles} cycles, functional {result.total_cycles}"
        )
    return None
