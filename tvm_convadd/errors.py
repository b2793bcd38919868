"""The project's own exception types: each names the bad value, the valid range and the way out."""


class ConvAddError(ValueError):
    """Base of every error tvm-convadd raises on bad input."""


class UnsupportedWorkloadError(ConvAddError):
    """A conv2d or function the accelerator cannot take: layout, groups, dilation, dtype, shape."""


class TileConfigError(ConvAddError):
    """A tile configuration that cannot work for the workload (tile count, axis, pipeline mode)."""


class HardwareConfigError(ConvAddError):
    """A hardware description that is missing, malformed or inconsistent."""


class ProgramError(ConvAddError):
    """A malformed instruction stream: unknown opcode, bad operand, unparsable JSON."""


class BufferOverflowError(ProgramError):
    """A tile that does not fit its on-chip buffer."""


class HazardError(ProgramError):
    """A read of a buffer slot before its producer signalled, or a write of a slot still in use."""


class DeadlockError(ProgramError):
    """Every unfinished unit waits on a token that nobody will signal."""


class RecordsError(ConvAddError):
    """A tuning-records file that cannot be read."""


class RpcError(ConvAddError):
    """Remote measurement that cannot go on: no tracker at the address, no server for the key,
    or every server lost."""
