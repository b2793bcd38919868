"""tvm-convadd: fuse conv2d with the add after it and hide the add behind the conv.

Importing the package registers the `convadd-*` target tags with TVM and the runtime function
`tvm_convadd.run_program` that every offloaded call of a built executable goes through.
"""

from tvm_convadd.build import OffloadedModule, build, build_reference
from tvm_convadd.codegen import RunRecorder, recording
from tvm_convadd.errors import ConvAddError
from tvm_convadd.report import network_report
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target import registry as _registry

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
