"""Build and run a TIR module on TVM's own llvm backend (the independent reference path)."""

from __future__ import annotations

import numpy as np
import tvm


def run_llvm(mod: tvm.IRModule, inputs: list[np.ndarray], out_shape, dtype="float32") -> np.ndarray:
    """Build `mod` for llvm and run it destination-passing style."""
    lib = tvm.compile(mod, target="llvm")
    out = tvm.runtime.tensor(np.zeros(out_shape, dtype))
    lib(*[tvm.runtime.tensor(x) for x in inputs], out)
    return out.numpy()
