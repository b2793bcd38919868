"""The ISA's meaning on numpy arrays: on-chip slots and DRAM tensors, one instruction at a time.

Kept apart from the timing simulator so that the numbers and the cycles are separate concerns:
the simulator decides when an instruction runs, this module what it computes.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from threadpoolctl import ThreadpoolController

from tvm_convadd.errors import ProgramError
from tvm_convadd.target.isa import Add, Conv, Load, Program, Slot, Store


class FunctionalMachine:
    """On-chip buffers (slots, *slot shape) and DRAM tensors as numpy arrays."""

    def __init__(self, program: Program, tensors: dict[str, np.ndarray] | None) -> None:
        tensors = dict(tensors or {})
        unknown = sorted(set(tensors) - set(program.tensors))
        if unknown:
            raise ProgramError(
                f"tensors {unknown} are not in the program; it uses {sorted(program.tensors)}"
            )
        inputs = sorted(
            {
                inst.src.tensor
                for stream in program.streams.values()
                for inst in stream
                if isinstance(inst, Load)
            }
        )
        missing = [name for name in inputs if tensors.get(name) is None]
        if missing:
            outputs = sorted(set(program.tensors) - set(inputs))
            raise ProgramError(
                f"tensors {missing} are read by the program's LOADs but not given: pass every "
                f"input {inputs} (outputs {outputs} may be left out: they start as zeros)"
            )
        self.dram = {
            name: _dram_array(name, tensors.get(name), shape, program.dtype)
            for name, shape in program.tensors.items()
        }
        self.chip = {
            name: np.zeros((decl.slots, *decl.shape), dtype=decl.dtype)
            for name, decl in program.buffers.items()
        }

    def view(self, operand: Slot) -> np.ndarray:
        return self.chip[operand.buffer][operand.slot][_slices(operand.region)]

    def execute(self, inst) -> None:
        if isinstance(inst, Conv):
            value = _conv2d(self.view(inst.inp), self.view(inst.wgt), inst.stride, inst.groups)
            if inst.accumulate:  # in float64 before the one cast, as a full reduction would
                value = value + self.view(inst.acc)
            self.view(inst.acc)[...] = value
        elif isinstance(inst, Add):
            value = self.view(inst.acc).astype(np.float64)
            for op in inst.ops:
                operand = op.value if op.src is None else self.view(op.src)
                value = _ALU[op.op](value, operand)  # float64: operands upcast, one final cast
            self.view(inst.out)[...] = value
        elif isinstance(inst, Load):
            data = self.dram[inst.src.tensor][_slices(inst.src.region)]
            dst = self.view(inst.dst)
            if inst.pad:
                dst[...] = 0
                dst = dst[_interior(inst)]
            dst[...] = data
        elif isinstance(inst, Store):
            self.dram[inst.dst.tensor][_slices(inst.dst.region)] = self.view(inst.src)


def _interior(load: Load) -> tuple[slice, ...]:
    """Where a padded LOAD's data lands in its dst: after `before` zeros, per dimension."""
    return tuple(slice(b, b + e) for (b, _), (_, e) in zip(load.pad, load.src.region))


def _dram_array(name: str, given, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """The simulator's own copy of a DRAM tensor (zeros if not given), checked against the
    program's declaration: a wrong shape would otherwise broadcast or fail mid-run."""
    if given is None:
        return np.zeros(shape, dtype=dtype)
    try:
        array = np.asarray(given)
    except (TypeError, ValueError) as err:  # ragged nested lists, for one
        raise ProgramError(f"tensor {name!r} is not an array ({err}): pass a numpy array") from err
    if array.shape != tuple(shape):
        raise ProgramError(
            f"tensor {name!r} has shape {list(array.shape)}, the program expects {list(shape)}"
        )
    if array.dtype.kind not in "biuf":
        raise ProgramError(f"tensor {name!r} holds {array.dtype} values: pass a numeric array")
    return array.astype(dtype, copy=True)


def _slices(region) -> tuple[slice, ...]:
    return tuple(slice(start, start + extent) for start, extent in region)


_ALU = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _conv2d(
    inp: np.ndarray, wgt: np.ndarray, stride: tuple[int, int], groups: int = 1
) -> np.ndarray:
    """Unpadded grouped NCHW x OIHW conv as one GEMM per group (im2col of a sliding-window
    view), accumulated in float64: output channel j of group j // ng sees that group's cg
    inputs. One BLAS thread: the GEMMs are small, and threads spinning against the VM's and
    other processes' cost several times the work on a loaded machine."""
    batch, _, height, width = inp.shape
    out_channels, group_channels, kernel_h, kernel_w = wgt.shape
    stride_h, stride_w = stride
    out_h = (height - kernel_h) // stride_h + 1
    out_w = (width - kernel_w) // stride_w + 1
    per_group = out_channels // groups
    grouped = inp.astype(np.float64).reshape(batch, groups, group_channels, height, width)
    windows = sliding_window_view(grouped, (kernel_h, kernel_w), axis=(3, 4))
    windows = windows[:, :, :, : out_h * stride_h : stride_h, : out_w * stride_w : stride_w]
    reduction = group_channels * kernel_h * kernel_w
    columns = windows.transpose(0, 1, 2, 5, 6, 3, 4).reshape(
        batch, groups, reduction, out_h * out_w
    )  # (c, ry, rx) order, as the weights flatten
    weights = wgt.astype(np.float64).reshape(groups, per_group, reduction)
    with _blas().limit(limits=1, user_api="blas"):
        out = np.matmul(weights, columns)  # (batch, groups, per_group, pixels)
    return out.reshape(batch, out_channels, out_h, out_w)


@cache
def _blas() -> ThreadpoolController:
    """The process's BLAS libraries, found once (a lookup per CONV would cost 0.2 ms)."""
    return ThreadpoolController()
