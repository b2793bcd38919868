"""The plain description of one fused conv2d + add: what the schedule and the simulator need."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tvm_convadd.errors import UnsupportedWorkloadError

SUPPORTED_DTYPES = ("float32",)


@dataclass(frozen=True)
class Workload:
    """conv2d (NCHW data, OIHW weight, groups 1, dilation 1) [+ bias] + residual [+ relu].

    `padding` is (top, left, bottom, right), Relax's order. `bias` is a per-output-channel vector
    added before the residual; `relu` is applied last. The residual has the output's shape.
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
    bias: bool = False
    relu: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "stride", tuple(int(s) for s in self.stride))
        object.__setattr__(self, "padding", tuple(int(p) for p in self.padding))
        dims = {
            "batch": self.batch,
            "in_channels": self.in_channels,
            "in_height": self.in_height,
            "in_width": self.in_width,
            "out_channels": self.out_channels,
            "kernel_h": self.kernel_h,
            "kernel_w": self.kernel_w,
        }
        for name, value in dims.items():
            if not isinstance(value, int) or value < 1:
                raise UnsupportedWorkloadError(
                    f"{name}={value!r}: must be a static positive integer (dynamic shapes are "
                    "not supported; bind them before partitioning)"
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
    def data_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.in_height, self.in_width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, self.kernel_h, self.kernel_w)

    @property
    def bias_shape(self) -> tuple[int, int, int, int]:
        return (1, self.out_channels, 1, 1)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_height, self.out_width)

    @property
    def input_names(self) -> tuple[str, ...]:
        """Names of the fused function's inputs, in order: data, weight, [bias], residual."""
        return ("data", "weight", *(("bias",) if self.bias else ()), "residual")

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the fused function's inputs, in order: data, weight, [bias], residual."""
        shapes = [self.data_shape, self.weight_shape]
        if self.bias:
            shapes.append(self.bias_shape)
        return [*shapes, self.out_shape]

    @property
    def macs(self) -> int:
        out = self.batch * self.out_channels * self.out_height * self.out_width
        return out * self.in_channels * self.kernel_h * self.kernel_w

    @property
    def gemm(self) -> tuple[int, int, int]:
        """The conv as a matrix multiply (P, K, N): output pixels, reduction, output channels."""
        pixels = self.batch * self.out_height * self.out_width
        return pixels, self.in_channels * self.kernel_h * self.kernel_w, self.out_channels

    @property
    def epilogue(self) -> str:
        parts = ["bias"] * self.bias + ["residual"] + ["relu"] * self.relu
        return "+".join(parts)

    @property
    def key(self) -> str:
        """A stable, human-readable identity, used to look up tuning records."""
        pad = "_".join(map(str, self.padding))
        return (
            f"n{self.batch}_c{self.in_channels}_h{self.in_height}_w{self.in_width}"
            f"_k{self.out_channels}_r{self.kernel_h}x{self.kernel_w}"
            f"_s{self.stride[0]}x{self.stride[1]}_p{pad}_{self.dtype}_{self.epilogue}"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Workload:
        return cls(**{**data, "stride": tuple(data["stride"]), "padding": tuple(data["padding"])})

    def __str__(self) -> str:
        return (
            f"conv{self.kernel_h}x{self.kernel_w}/s{self.stride[0]} "
            f"{self.in_channels}->{self.out_channels} @ {self.in_height}x{self.in_width} "
            f"-> {self.out_height}x{self.out_width} [{self.epilogue}]"
        )
