"""The annotations a schedule leaves in the IR for the target's lowering: their contract.

The lowering (`tvm_convadd.target.lower`) reads them; schedules write them. A stage block's
`UNIT_ATTR` says which unit runs it, its `BUFFER_ATTR` which on-chip buffer it fills; the loop
that opens its nest carries `STAGE_ROOT_ATTR`. The lowering does not trust them: it checks that
every stage block's body computes what the instruction it becomes computes.
"""

from __future__ import annotations

UNIT_ATTR = "convadd.unit"  # block annotation: which accelerator unit runs the block
BUFFER_ATTR = "convadd.buffer"  # block annotation: the on-chip buffer the block writes
STAGE_ROOT_ATTR = "convadd.stage"  # loop annotation on the outermost loop of a stage's nest
TILE_LOOP_ATTR = "convadd.tile_loop"  # loop annotation on the loop over tiles

# The buffers a stage of each unit may fill ("store" names the DRAM output a STORE writes);
# the vload queue fills the epilogue operands' buffers (`epilogue_family`).
UNIT_BUFFERS = {
    "load": ("inp", "wgt"),
    "vload": (),
    "conv": ("acc",),
    "add": ("out",),
    "store": ("store",),
}

# An epilogue DRAM operand's on-chip buffer, by the operand's name in the Workload: residual
# -> res, residual_2 -> res_2, bias -> bias, scale_2 -> scale_2.
EPILOGUE_BUFFERS = {"residual": "res", "bias": "bias", "scale": "scale"}
# What each family of epilogue buffers holds: an out-shaped tensor or a per-channel vector.
EPILOGUE_KINDS = {"res": "tensor", "bias": "channel", "scale": "channel"}


def operand_buffer(operand: str) -> str:
    """The on-chip buffer of the epilogue DRAM operand named `operand` ("residual_2" ->
    "res_2")."""
    base, _, number = operand.partition("_")
    buffer = EPILOGUE_BUFFERS[base]
    return f"{buffer}_{number}" if number else buffer


def epilogue_family(buffer: str) -> str | None:
    """The family (res, bias or scale) of an epilogue operand's buffer (res_2, ...), else None."""
    base, separator, number = buffer.partition("_")
    numbered = number.isascii() and number.isdigit() and int(number) >= 2
    if base in EPILOGUE_KINDS and (numbered or not separator):
        return base
    return None


def unit_fills(unit: str, buffer: str) -> bool:
    """Whether a stage of `unit` may fill `buffer`."""
    return buffer in UNIT_BUFFERS[unit] or (unit == "vload" and epilogue_family(buffer) is not None)
