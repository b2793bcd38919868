"""The plain description of one fused conv2d + elementwise epilogue: what the schedule and the
simulator need."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tvm_convadd.errors import UnsupportedWorkloadError

SUPPORTED_DTYPES = ("float32",)

# The vector ALU's ops (VTA's ALU has add/max/min/mul/shr) and the operand each may take: a full
# output-shaped tensor (a residual), a per-output-channel vector (a bias, a batch-norm scale), or
# one scalar constant (relu is max 0, relu6 is max 0 then min 6, clip(a, b) is max a then min b).
ALU_OPS = ("add", "mul", "max", "min")
OPERAND_KINDS = ("tensor", "channel", "const")
SUPPORTED_EPILOGUE_OPS = (
    ("add", "tensor"),
    ("add", "channel"),
    ("mul", "channel"),
    ("max", "const"),
    ("min", "const"),
)
# The name of an op's DRAM operand (the first of each; later ones get _2, _3, ...).
OPERAND_NAMES = {
    ("add", "tensor"): "residual",
    ("add", "channel"): "bias",
    ("mul", "channel"): "scale",
}


@dataclass(frozen=True)
class EpilogueOp:
    """One step of the epilogue the Add unit applies to the conv's accumulator, in order.

    `value` is the scalar of a `const` operand (and only of one).
    """

    op: str
    kind: str
    value: float | None = None

    def __post_init__(self) -> None:
        if (self.op, self.kind) not in SUPPORTED_EPILOGUE_OPS:
            supported = ", ".join(f"{op} {kind}" for op, kind in SUPPORTED_EPILOGUE_OPS)
            raise UnsupportedWorkloadError(
                f"epilogue op {self.op} {self.kind}: the vector ALU takes {supported}"
            )
        if (self.kind == "const") != (self.value is not None):
            raise UnsupportedWorkloadError(
                f"epilogue op {self.op} {self.kind}: a value is given exactly for const operands"
            )
        if self.value is not None:
            object.__setattr__(self, "value", float(self.value))

    @property
    def label(self) -> str:
        """Short name used in keys and reports: bias, residual, scale, relu, max<c>, min<c>."""
        if self.kind == "const":
            if self.op == "max" and self.value == 0.0:
                return "relu"
            return f"{self.op}{self.value:g}"
        return OPERAND_NAMES[(self.op, self.kind)]

    def to_dict(self) -> dict:
        return {
            "op": self.op,
            "kind": self.kind,
            **({"value": self.value} if self.value is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> EpilogueOp:
        return cls(data["op"], data["kind"], data.get("value"))


def epilogue_operand_names(epilogue: tuple[EpilogueOp, ...]) -> tuple[str | None, ...]:
    """Per op of a chain, the name of its DRAM operand (None for a constant): residual, bias,
    scale, the second of a kind residual_2, and so on."""
    seen: dict[str, int] = {}
    names = []
    for op in epilogue:
        base = OPERAND_NAMES.get((op.op, op.kind))
        if base is None:
            names.append(None)
            continue
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return tuple(names)


RESIDUAL = EpilogueOp("add", "tensor")
BIAS = EpilogueOp("add", "channel")
SCALE = EpilogueOp("mul", "channel")
RELU = EpilogueOp("max", "const", 0.0)


def standard_epilogue(
    bias: bool = False, relu: bool = False, residual: bool = True
) -> tuple[EpilogueOp, ...]:
    """The classic chain: [+ bias] [+ residual] [relu]."""
    return (BIAS,) * bias + (RESIDUAL,) * residual + (RELU,) * relu


def parse_epilogue(text: str) -> tuple[EpilogueOp, ...]:
    """The inverse of the labels: "bias+residual+relu", "scale+bias+relu+min6", "" for none."""
    by_label = {"residual": RESIDUAL, "bias": BIAS, "scale": SCALE, "relu": RELU}
    ops = []
    for label in filter(None, text.split("+")):
        if label in by_label:
            ops.append(by_label[label])
        elif label[:3] in ("max", "min"):
            try:
                ops.append(EpilogueOp(label[:3], "const", float(label[3:])))
            except ValueError:
                raise UnsupportedWorkloadError(
                    f"epilogue op {label!r}: not max<c> or min<c>"
                ) from None
        else:
            raise UnsupportedWorkloadError(
                f"epilogue op {label!r}: choose from residual, bias, scale, relu, max<c>, min<c>"
            )
    return tuple(ops)


@dataclass(frozen=True)
class Workload:
    """conv2d (NCHW data, OIHW weight, dilation 1, any `groups`) and its elementwise epilogue.

    `padding` is (top, left, bottom, right), Relax's order. `epilogue` is the chain the Add unit
    applies to the accumulator, in order; its tensor operands have the output's shape and its
    channel operands are (1, out_channels, 1, 1). The default is the project's namesake, a
    residual add; `()` is a bare conv (the Add unit still moves the result out).
    """

    batch: int
    in_channels: int
    in_height: int
    in_width: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dtype: str = "float32"
    groups: int = 1
    epilogue: tuple[EpilogueOp, ...] = (RESIDUAL,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stride", tuple(int(s) for s in self.stride))
        object.__setattr__(self, "padding", tuple(int(p) for p in self.padding))
        object.__setattr__(self, "epilogue", tuple(self.epilogue))
        dims = {
            "batch": self.batch,
            "in_channels": self.in_channels,
            "in_height": self.in_height,
            "in_width": self.in_width,
            "out_channels": self.out_channels,
            "kernel_h": self.kernel_h,
            "kernel_w": self.kernel_w,
            "groups": self.groups,
        }
        for name, value in dims.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UnsupportedWorkloadError(
                    f"{name}={value!r}: must be a static positive integer (dynamic shapes are "
                    "not supported; bind them before partitioning)"
                )
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise UnsupportedWorkloadError(
                f"groups={self.groups} must divide in_channels {self.in_channels} and "
                f"out_channels {self.out_channels}"
            )
        if not all(isinstance(op, EpilogueOp) for op in self.epilogue):
            raise UnsupportedWorkloadError(
                f"epilogue {self.epilogue!r}: must be a tuple of EpilogueOp"
            )
        if len(self.stride) != 2 or min(self.stride) < 1:
            raise UnsupportedWorkloadError(f"stride {self.stride}: need two positive integers")
        if len(self.padding) != 4 or min(self.padding) < 0:
            raise UnsupportedWorkloadError(
                f"padding {self.padding}: need (top, left, bottom, right), each >= 0"
            )
        if self.dtype not in SUPPORTED_DTYPES:
            raise UnsupportedWorkloadError(
                f"dtype {self.dtype!r}: the accelerator computes in {SUPPORTED_DTYPES}; cast first"
            )
        if self.out_height < 1 or self.out_width < 1:
            raise UnsupportedWorkloadError(
                f"kernel {self.kernel_h}x{self.kernel_w} does not fit the padded input "
                f"{self.padded_height}x{self.padded_width}"
            )

    @property
    def padded_height(self) -> int:
        return self.in_height + self.padding[0] + self.padding[2]

    @property
    def padded_width(self) -> int:
        return self.in_width + self.padding[1] + self.padding[3]

    @property
    def out_height(self) -> int:
        return (self.padded_height - self.kernel_h) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        return (self.padded_width - self.kernel_w) // self.stride[1] + 1

    @property
    def group_in_channels(self) -> int:
        """Input channels each output channel reduces over (C / groups)."""
        return self.in_channels // self.groups

    @property
    def group_out_channels(self) -> int:
        """Output channels per group: a channel tile must hold whole groups."""
        return self.out_channels // self.groups

    @property
    def data_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.in_height, self.in_width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.group_in_channels, self.kernel_h, self.kernel_w)

    @property
    def channel_shape(self) -> tuple[int, int, int, int]:
        """Shape of a per-channel epilogue operand (bias, scale)."""
        return (1, self.out_channels, 1, 1)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def operand_names(self) -> tuple[str | None, ...]:
        """Per epilogue op, the name of its DRAM operand (None for a constant): residual, bias,
        scale, the second of a kind residual_2, and so on."""
        return epilogue_operand_names(self.epilogue)

    @property
    def operand_shapes(self) -> dict[str, tuple[int, ...]]:
        """The epilogue's DRAM operands, in chain order, with their shapes."""
        return {
            name: self.out_shape if op.kind == "tensor" else self.channel_shape
            for op, name in zip(self.epilogue, self.operand_names)
            if name is not None
        }

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the fused function's inputs, in order: data, weight, then the epilogue's
        operands in chain order."""
        return ("data", "weight", *self.operand_shapes)

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the fused function's inputs, in `input_names` order."""
        return [self.data_shape, self.weight_shape, *self.operand_shapes.values()]

    @property
    def macs(self) -> int:
        out = self.batch * self.out_channels * self.out_height * self.out_width
        return out * self.group_in_channels * self.kernel_h * self.kernel_w

    @property
    def gemm(self) -> tuple[int, int, int]:
        """One group's conv as a matrix multiply (P, K, N): output pixels, reduction, output
        channels. The conv is `groups` such GEMMs."""
        pixels = self.batch * self.out_height * self.out_width
        reduction = self.group_in_channels * self.kernel_h * self.kernel_w
        return pixels, reduction, self.group_out_channels

    @property
    def epilogue_label(self) -> str:
        """The chain's labels joined by "+" ("bias+residual+relu"); "none" for a bare conv."""
        return "+".join(op.label for op in self.epilogue) or "none"

    @property
    def key(self) -> str:
        """A stable, human-readable identity, used to look up tuning records."""
        pad = "_".join(map(str, self.padding))
        groups = f"_g{self.groups}" if self.groups != 1 else ""
        return (
            f"n{self.batch}_c{self.in_channels}_h{self.in_height}_w{self.in_width}"
            f"_k{self.out_channels}_r{self.kernel_h}x{self.kernel_w}"
            f"_s{self.stride[0]}x{self.stride[1]}_p{pad}{groups}_{self.dtype}"
            f"_{self.epilogue_label}"
        )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["epilogue"] = [op.to_dict() for op in self.epilogue]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Workload:
        """The inverse of `to_dict`; also reads the first format's `bias`/`relu` booleans."""
        data = dict(data)
        if "epilogue" not in data and ("bias" in data or "relu" in data):
            epilogue = standard_epilogue(
                bool(data.pop("bias", False)), bool(data.pop("relu", False))
            )
        else:
            epilogue = tuple(
                EpilogueOp.from_dict(op) for op in data.pop("epilogue", [RESIDUAL.to_dict()])
            )
        return cls(
            **{**data, "stride": tuple(data["stride"]), "padding": tuple(data["padding"])},
            epilogue=epilogue,
        )

    def __str__(self) -> str:
        groups = (
            ""
            if self.groups == 1
            else (" dw" if self.groups == self.in_channels else f" g{self.groups}")
        )
        return (
            f"conv{self.kernel_h}x{self.kernel_w}/s{self.stride[0]}{groups} "
            f"{self.in_channels}->{self.out_channels} @ {self.in_height}x{self.in_width} "
            f"-> {self.out_height}x{self.out_width} [{self.epilogue_label}]"
        )
