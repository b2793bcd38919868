"""Networks from outside: ONNX files (relax.frontend.onnx) and PyTorch modules (torch.export).

Both frontends embed the weights as constants, so the result needs no params dict.
"""

from __future__ import annotations

from pathlib import Path

import tvm

from tvm_convadd.errors import ConvAddError


def from_onnx(model, shape_dict: dict[str, list[int]] | None = None) -> tuple[tvm.IRModule, None]:
    """Import an ONNX model (a path or a loaded ModelProto) into Relax."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx as relax_from_onnx

    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise ConvAddError(f"ONNX file {str(path)!r} does not exist")
        try:
            model = onnx.load(str(path))
            onnx.checker.check_model(model)
        except Exception as err:
            raise ConvAddError(
                f"{str(path)!r} is not a valid ONNX model ({type(err).__name__}: {err}); "
                "export it again, e.g. with torch.onnx.export"
            ) from err
    try:
        mod = relax_from_onnx(model, shape_dict=shape_dict)
    except Exception as err:
        raise ConvAddError(
            f"the ONNX model could not be imported into Relax: {type(err).__name__}: "
            f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        ) from err
    return mod, None


def from_torch(module, example_inputs: tuple) -> tuple[tvm.IRModule, None]:
    """Import a PyTorch module through torch.export (torch is an optional extra)."""
    try:
        import torch
    except ImportError as err:
        raise ConvAddError("PyTorch import needs torch: pip install 'tvm-convadd[torch]'") from err
    from tvm.relax.frontend.torch import from_exported_program

    exported = torch.export.export(module.eval(), example_inputs)
    mod = from_exported_program(exported, unwrap_unit_return_tuple=True)
    return mod, None
