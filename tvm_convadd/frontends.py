"""Networks from outside: ONNX files (relax.frontend.onnx) and PyTorch modules (torch.export).

Both frontends embed the weights as constants, so the result needs no params dict.
"""

from __future__ import annotations

import copy
import numbers
from pathlib import Path

import tvm

from tvm_convadd.errors import ConvAddError

# cast= values from_torch accepts: the accelerator (and TVM's torch importer) compute in float32
CASTS = ("float32",)


def from_onnx(
    model,
    shape_dict: dict[str, list[int]] | None = None,
    *,
    require_static: bool = False,
) -> tuple[tvm.IRModule, None]:
    """Import an ONNX model (a path or a loaded ModelProto) into Relax.

    `shape_dict` binds the dynamic dims of named inputs (e.g. {"x": [1, 3, 224, 224]}); it
    must name real inputs, keep their rank and agree with their static dims. With
    `require_static`, an input dim left dynamic is an error naming the input and its dims."""
    from tvm.relax.frontend.onnx import from_onnx as relax_from_onnx

    if isinstance(model, (str, Path)):
        model = _load_onnx(Path(model))
    if not hasattr(model, "graph"):
        raise ConvAddError(
            f"from_onnx takes a path or an onnx.ModelProto, got {type(model).__name__}"
        )
    shape_dict = _check_shape_dict(model, shape_dict)
    if require_static:
        _check_static(model, shape_dict)
    try:
        mod = relax_from_onnx(model, shape_dict=shape_dict)
    except Exception as err:
        raise ConvAddError(
            f"the ONNX model could not be imported into Relax: {type(err).__name__}: "
            f"{_last_line(err)}"
        ) from err
    return mod, None


def _load_onnx(path: Path):
    import onnx

    if path.is_dir():
        raise ConvAddError(f"ONNX model {str(path)!r} is a directory: give the .onnx file in it")
    if not path.is_file():
        raise ConvAddError(f"ONNX file {str(path)!r} does not exist")
    try:
        model = onnx.load(str(path))
    except OSError as err:
        raise ConvAddError(
            f"cannot read ONNX file {str(path)!r}: {err.strerror or err}; check its permissions"
        ) from err
    except Exception as err:
        raise ConvAddError(
            f"{str(path)!r} is not a valid ONNX model ({type(err).__name__}: {_last_line(err)}); "
            "export it again, e.g. with torch.onnx.export"
        ) from err
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise ConvAddError(
            f"{str(path)!r} is not a valid ONNX model ({type(err).__name__}: {_last_line(err)}); "
            "export it again, e.g. with torch.onnx.export"
        ) from err
    return model


def onnx_inputs(model) -> dict[str, list | None]:
    """The graph's real inputs (initializers excluded): name -> dims, each an int or, when
    dynamic, the dim's symbolic name (or "?" when it has none); None when it has no shape."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = None
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = []
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    dims.append(int(dim.dim_value))
                else:
                    dims.append(dim.dim_param or "?")
        inputs[value.name] = dims
    return inputs


def _shape_text(dims) -> str:
    return "x".join(str(d) for d in dims)


def _dims_text(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _iter(value) -> list:
    try:
        return list(value)
    except TypeError:
        return [None]


def _check_shape_dict(model, shape_dict) -> dict[str, list[int]] | None:
    if shape_dict is None:
        return None
    inputs = onnx_inputs(model)
    checked = {}
    for name, dims in shape_dict.items():
        if name not in inputs:
            raise ConvAddError(
                f"input shape for {name!r}: the model has no such input; its inputs are "
                f"{sorted(inputs)}"
            )
        if isinstance(dims, (str, bytes)) or not all(_is_int(d) for d in _iter(dims)):
            raise ConvAddError(
                f"input shape for {name!r}: {dims!r} is not a list of ints like [1, 3, 224, 224]"
            )
        dims = [int(d) for d in dims]
        if not dims or any(d < 1 for d in dims):
            raise ConvAddError(f"input shape for {name!r}: {dims}: give dims that are all >= 1")
        model_dims = inputs[name]
        if model_dims is not None and len(dims) != len(model_dims):
            raise ConvAddError(
                f"input shape {_shape_text(dims)} for {name!r}: the input has "
                f"{len(model_dims)} dims {_dims_text(model_dims)}; give {len(model_dims)}"
            )
        fixed = [
            (i, m)
            for i, (m, d) in enumerate(zip(model_dims or [], dims))
            if isinstance(m, int) and m != d
        ]
        if fixed:
            i, m = fixed[0]
            raise ConvAddError(
                f"input shape {_shape_text(dims)} for {name!r}: dim {i} is fixed at {m} in the "
                f"model {_dims_text(model_dims)}; only its dynamic dims can be bound"
            )
        checked[name] = dims
    return checked


def _check_static(model, shape_dict) -> None:
    for name, dims in onnx_inputs(model).items():
        if (shape_dict and name in shape_dict) or (
            dims is not None and all(isinstance(d, int) for d in dims)
        ):
            continue
        if dims is None:
            problem, example = "has no shape", f"{name}:1x3x224x224"
        else:
            shown = [
                d if isinstance(d, int) else (1 if i == 0 else f"<{d}>") for i, d in enumerate(dims)
            ]
            problem, example = (
                f"has dynamic dims {_dims_text(dims)}",
                f"{name}:{_shape_text(shown)}",
            )
        raise ConvAddError(
            f"ONNX input {name!r} {problem}: give it a static shape with --input-shape {example} "
            f"(from Python: from_onnx(..., shape_dict={{{name!r}: [...]}}))"
        )


def _last_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else ""


def from_torch(
    module, example_inputs: tuple, *, cast: str | None = None
) -> tuple[tvm.IRModule, None]:
    """Import a PyTorch module through torch.export (torch is an optional extra).

    The module must be in eval mode (`module.eval()`): from_torch never changes the caller's
    module. The accelerator computes in float32: a float16/bfloat16/float64 module or input is
    refused unless `cast="float32"`, which converts a copy (the caller's module is untouched)."""
    try:
        import torch
    except ImportError as err:
        raise ConvAddError("PyTorch import needs torch: pip install 'tvm-convadd[torch]'") from err
    from tvm.relax.frontend.torch import from_exported_program

    if not isinstance(module, torch.nn.Module):
        raise ConvAddError(f"from_torch takes a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_inputs, tuple):
        raise ConvAddError(
            f"example_inputs must be a tuple of tensors, e.g. (x,); got "
            f"{type(example_inputs).__name__}"
        )
    training = [name for name, sub in module.named_modules() if sub.training]
    if training:
        which = "the module" if "" in training else f"submodule {training[0]!r}"
        raise ConvAddError(
            f"{which} is in training mode: batch-norm and dropout would not be compiled as "
            "at inference; call module.eval() first (from_torch does not change your module)"
        )
    if cast is not None:
        if cast not in CASTS:
            raise ConvAddError(f"cast={cast!r}: choose one of {list(CASTS)} (or None)")
        module, example_inputs = _cast_copy(torch, module, example_inputs, getattr(torch, cast))
    else:
        _check_float32(torch, module, example_inputs)
    try:
        exported = torch.export.export(module, example_inputs)
    except Exception as err:
        raise ConvAddError(
            f"torch.export could not export the module: {type(err).__name__}: {_first_line(err)}"
        ) from err
    try:
        mod = from_exported_program(exported, unwrap_unit_return_tuple=True)
    except Exception as err:
        raise ConvAddError(
            f"the exported module could not be imported into Relax: {type(err).__name__}: "
            f"{_last_line(err)}"
        ) from err
    return mod, None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _check_float32(torch, module, example_inputs: tuple) -> None:
    tensors = [
        *(("parameter", name, p) for name, p in module.named_parameters()),
        *(("buffer", name, b) for name, b in module.named_buffers()),
        *(("input", str(i), x) for i, x in enumerate(example_inputs)),
    ]
    for kind, name, tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            if tensor.dtype != torch.float32:
                dtype = str(tensor.dtype).removeprefix("torch.")
                raise ConvAddError(
                    f"{kind} {name!r} is {dtype}: the accelerator computes in float32; pass "
                    "cast='float32' to from_torch (it converts a copy) or call .float() first"
                )


def _cast_copy(torch, module, example_inputs: tuple, dtype):
    """A converted copy of the module and inputs: floating tensors become `dtype`."""
    module = copy.deepcopy(module).to(dtype)
    inputs = tuple(
        x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        for x in example_inputs
    )
    return module, inputs
