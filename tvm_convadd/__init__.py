"""tvm-convadd: fuse conv2d with the add after it and hide the add behind the conv.

Importing the package registers the `convadd-*` target tags with TVM and the runtime function
`tvm_convadd.run_program` that every offloaded call of a built executable goes through.
"""

import sys


def _import_tvm_without_torch() -> None:
    """Import TVM with torch hidden: tvm_ffi imports torch whenever it is installed (0.9 s of
    a 2.7 s start), and only `frontends.from_torch` needs it, which imports it itself. A
    process that imported torch or TVM first keeps what it has."""
    if "torch" in sys.modules or "tvm_ffi" in sys.modules:
        return
    sys.modules["torch"] = None  # `import torch` raises ImportError while TVM loads
    try:
        import tvm  # noqa: F401
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]


_import_tvm_without_torch()

from tvm_convadd.build import OffloadedModule, build, build_reference  # noqa: E402
from tvm_convadd.codegen import RunRecorder, recording  # noqa: E402
from tvm_convadd.errors import ConvAddError  # noqa: E402
from tvm_convadd.report import network_report  # noqa: E402
from tvm_convadd.schedules.tile_config import TileConfig  # noqa: E402
from tvm_convadd.schedules.workload import Workload  # noqa: E402
from tvm_convadd.target import registry as _registry  # noqa: E402

__all__ = [
    "ConvAddError",
    "OffloadedModule",
    "RunRecorder",
    "TileConfig",
    "Workload",
    "build",
    "build_reference",
    "network_report",
    "recording",
]
_registry.register_targets()
