"""The graph level: clean the graph up, cut out conv2d [+ bias] + add [+ relu], describe each cut.

Facts about `FuseOpsByPattern(annotate_codegen=True, bind_constants=False)` in TVM 0.27 that
`describe` relies on: each match becomes a public function with attrs Codegen="convadd" and a
global_symbol equal to its name (`fused_<ops>_convadd[N]`), whose body binds a local function
(Composite="convadd.<pattern>") and calls it with the outer parameters in the same order. The
parameters are the matched region's free inputs in order of first use, constants included
(named `param_<i>`), and a tensor used twice (a residual that is also the conv input) becomes a
single parameter, which is why the pattern check refuses that case. With bind_constants=True the
constants stay inside the composite instead; `describe` reports those roles as `bound`.
Structurally equal matches share one function (count call sites with `fused_calls`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from tvm_convadd.errors import ConvAddError, UnsupportedWorkloadError
from tvm_convadd.patterns import (
    CODEGEN,
    CONV2D,
    VARIANTS,
    conv_rejection,
    dtype_of,
    format_dim,
    format_shape,
    make_pattern,
    pattern_table,
    rejection,
    static_shape,
)
from tvm_convadd.schedules.workload import Workload

ROLES = ("data", "weight", "bias", "residual")
LEAK_REASON = "its output also feeds other ops, so it cannot disappear into the add"


@tvm.transform.module_pass(opt_level=0, name="PartitionConvAdd")
class PartitionConvAdd:
    """Cut every offloadable conv2d [+ bias] + add [+ relu] into a function for the convadd codegen.

    `offload=False` keeps the cuts as plain composite functions, which the llvm build runs as is:
    the way to check the partition numerically without the accelerator.
    """

    def __init__(self, offload: bool = True) -> None:
        self.offload = offload

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        fuse = relax.transform.FuseOpsByPattern(
            pattern_table(), bind_constants=False, annotate_codegen=self.offload
        )
        return fuse(mod)


@dataclass(frozen=True)
class FusedConvAdd:
    """One fused function: its workload, the role of each parameter in order, and its symbol.

    `bound` lists the roles whose tensors are constants inside the function, not parameters.
    """

    workload: Workload
    roles: tuple[str, ...]
    symbol: str
    bound: tuple[str, ...] = ()

    def operand_indices(self) -> tuple[int, ...]:
        """Parameter positions in `Workload.input_shapes` order (data, weight, [bias], residual)."""
        wanted = self.workload.input_names
        return tuple(self.roles.index(role) for role in wanted if role in self.roles)


def _function_name(func: relax.Function, name: str | None) -> str:
    if name is not None:
        return name
    attrs = func.attrs or {}
    for key in ("global_symbol", "Composite"):
        if key in attrs:
            return str(attrs[key])
    return "<anonymous function>"


def _bindings(func: relax.Function) -> list[relax.Binding]:
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return []
    return [binding for block in body.blocks for binding in block.bindings]


def _is_op(expr: relax.Expr, op_name: str) -> bool:
    return isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get(op_name))


def _composite(func: relax.Function, name: str) -> tuple[relax.Function, list[relax.Expr]]:
    """The composite function inside `func` and the arguments the outer function passes it."""
    attrs = func.attrs or {}
    if "Composite" in attrs:
        return func, list(func.params)
    local_functions = {}
    for binding in _bindings(func):
        value = binding.value
        if isinstance(value, relax.Function) and "Composite" in (value.attrs or {}):
            local_functions[binding.var] = value
        elif isinstance(value, relax.Call):
            callee = local_functions.get(value.op, value.op)
            if isinstance(callee, relax.Function) and "Composite" in (callee.attrs or {}):
                return callee, list(value.args)
    return func, list(func.params)


def _epilogue(bindings: list[relax.Binding], conv_var: relax.Var, has_bias: bool):
    """Walk the bindings after the conv: the bias and residual operands and whether relu ends it.

    The bias is the first add's operand when the pattern has one: with a 1x1 output a bias and a
    residual have the same shape, so the shape cannot tell them apart.
    """
    operands: dict[str, relax.Expr] = {}
    relu = False
    current = conv_var
    for binding in bindings:
        value = binding.value
        if _is_op(value, "relax.add") and any(arg.same_as(current) for arg in value.args):
            other = value.args[1] if value.args[0].same_as(current) else value.args[0]
            role = "bias" if has_bias and not operands else "residual"
            if role in operands or relu:
                return None
            operands[role] = other
        elif _is_op(value, "relax.nn.relu") and value.args[0].same_as(current) and not relu:
            relu = True
        else:
            return None
        current = binding.var
    if "residual" not in operands:
        return None
    return operands, relu


def describe(func: relax.Function, name: str | None = None) -> FusedConvAdd:
    """Read the workload and parameter roles from a function made by `PartitionConvAdd`."""
    name = _function_name(func, name)
    expected = "a conv2d [+ bias] + residual add [+ relu] function made by PartitionConvAdd"
    composite, call_args = _composite(func, name)
    bindings = _bindings(composite)
    convs = [i for i, binding in enumerate(bindings) if _is_op(binding.value, CONV2D)]
    if len(convs) != 1:
        raise UnsupportedWorkloadError(
            f"function {name}: expected {expected}, found {len(convs)} conv2d calls"
        )
    conv_binding = bindings[convs[0]]
    conv = conv_binding.value
    reason = conv_rejection(conv)
    if reason is not None:
        raise UnsupportedWorkloadError(f"function {name}: {reason}")
    composite_name = str((composite.attrs or {}).get("Composite", ""))
    if composite_name:
        has_bias = "_bias" in composite_name
    else:
        following = bindings[convs[0] + 1 : convs[0] + 2]
        has_bias = len(following) == 1 and any(
            isinstance(arg, tvm.ir.expr.Constant) for arg in following[0].value.args
        )
    epilogue = _epilogue(bindings[convs[0] + 1 :], conv_binding.var, has_bias)
    if convs[0] != 0 or epilogue is None:
        raise UnsupportedWorkloadError(
            f"function {name}: expected {expected}, found ops "
            f"{[str(b.value.op.name) for b in bindings if isinstance(b.value, relax.Call)]}"
        )
    operands, relu = epilogue
    reason = rejection({"conv": conv, "data": conv.args[0], **operands})
    if reason is not None:
        raise UnsupportedWorkloadError(f"function {name}: {reason}")
    by_role = {"data": conv.args[0], "weight": conv.args[1], **operands}
    inner_roles = {}
    for role, expr in by_role.items():
        if isinstance(expr, relax.Var):
            if expr in inner_roles:
                raise UnsupportedWorkloadError(
                    f"function {name}: parameter {expr.name} is both {inner_roles[expr]} and "
                    f"{role}; the accelerator needs a separate tensor for each"
                )
            inner_roles[expr] = role
    roles = []
    for param in func.params:
        positions = [i for i, arg in enumerate(call_args) if arg.same_as(param)]
        role = inner_roles.get(composite.params[positions[0]]) if positions else None
        if role is None:
            raise UnsupportedWorkloadError(
                f"function {name}: parameter {param.name} has no role ({'/'.join(ROLES)})"
            )
        roles.append(role)
    bound = tuple(role for role, expr in by_role.items() if isinstance(expr, tvm.ir.expr.Constant))
    batch, in_channels, in_height, in_width = static_shape(conv.args[0])
    out_channels, _, kernel_h, kernel_w = static_shape(conv.args[1])
    workload = Workload(
        batch=batch,
        in_channels=in_channels,
        in_height=in_height,
        in_width=in_width,
        out_channels=out_channels,
        kernel_h=kernel_h,
        kernel_w=kernel_w,
        stride=tuple(int(s) for s in conv.attrs.strides),
        padding=tuple(int(p) for p in conv.attrs.padding),
        dtype=dtype_of(conv_binding.var),
        bias="bias" in operands,
        relu=relu,
    )
    symbol = str((func.attrs or {}).get("global_symbol", name))
    return FusedConvAdd(workload, tuple(roles), symbol, bound)


def fused_functions(mod: tvm.IRModule) -> dict[str, FusedConvAdd]:
    """Every conv+add function `PartitionConvAdd` made in `mod`, by function name."""
    found = {}
    for gvar, func in mod.functions.items():
        attrs = (func.attrs or {}) if isinstance(func, relax.Function) else {}
        codegen = str(attrs.get("Codegen", ""))
        composite = str(attrs.get("Composite", ""))
        if codegen == CODEGEN or composite.startswith(f"{CODEGEN}."):
            found[gvar.name_hint] = describe(func, gvar.name_hint)
    return dict(sorted(found.items()))


def fused_calls(mod: tvm.IRModule, func_name: str = "main") -> list[str]:
    """The fused function called at each call site of `func_name`, in program order.

    FuseOpsByPattern shares one function between structurally equal matches (same shapes and
    epilogue), so count call sites, not functions, to count the fused adds.
    """
    fused = fused_functions(mod)
    return [
        binding.value.op.name_hint
        for binding in _bindings(mod[func_name])
        if isinstance(binding.value, relax.Call)
        and isinstance(binding.value.op, tvm.ir.GlobalVar)
        and binding.value.op.name_hint in fused
    ]


# --- explain: why each conv2d was or was not fused --------------------------------------------


@dataclass(frozen=True)
class ConvDecision:
    """One conv2d of the module before partitioning: fused or not, and why."""

    name: str
    description: str
    fused: bool
    reason: str


def _conv_description(conv: relax.Call) -> str:
    data, weight = conv.args
    kernel_h, kernel_w = (format_dim(dim) for dim in weight.ty.shape.values[2:])
    stride = "x".join(dict.fromkeys(str(int(s)) for s in conv.attrs.strides))
    groups = int(conv.attrs.groups)
    text = f"conv{kernel_h}x{kernel_w}/s{stride} {format_shape(data)} -> {format_shape(conv)}"
    return text + (f" groups={groups}" if groups != 1 else "")


def _users(func: relax.Function) -> dict[relax.Var, list[relax.Var | None]]:
    """Each variable's users: the variables bound to expressions using it (None: the output)."""
    users: dict[relax.Var, list[relax.Var | None]] = {}
    for binding in _bindings(func):
        for var in relax.analysis.free_vars(binding.value):
            users.setdefault(var, []).append(binding.var)
    for var in relax.analysis.free_vars(func.body.body):
        users.setdefault(var, []).append(None)
    return users


def _matched_bindings(matched: dict[str, relax.Expr], var2val: dict) -> set[relax.Var]:
    """The variables bound to the matched ops (the operands are outside the region)."""
    ops = [matched[key] for key in ("conv", "bias_add", "add", "root") if key in matched]
    return {var for var, value in var2val.items() if any(value.same_as(op) for op in ops)}


def _why_unmatched(conv_var: relax.Var, users: dict, var2val: dict, fused_by: dict) -> str:
    """The reason a conv that no pattern matched stays alone, read from what follows it."""
    current, saw_bias = conv_var, False
    while True:
        consumers = users.get(current, [])
        if len(consumers) != 1 or consumers[0] is None:
            return "no add follows" if not consumers else "its output has other users too"
        consumer = consumers[0]
        if consumer in fused_by:
            return f"its add is fused with {fused_by[consumer]} (it is that conv's residual)"
        value = var2val[consumer]
        if not _is_op(value, "relax.add"):
            return (
                "no residual add follows (only a per-channel bias)"
                if saw_bias
                else "no add follows"
            )
        other = value.args[1] if value.args[0].same_as(current) else value.args[0]
        out_channels = static_shape(conv_var)[1] if static_shape(conv_var) else None
        if saw_bias or static_shape(other) != (1, out_channels, 1, 1):
            return "no fusable residual add follows"
        current, saw_bias = consumer, True


def _explain_function(func: relax.Function, func_name: str) -> list[ConvDecision]:
    var2val = relax.analysis.get_var2val(func)
    users = _users(func)
    dataflow = {
        binding.var
        for block in func.body.blocks
        if isinstance(block, relax.DataflowBlock)
        for binding in block.bindings
    }
    bindings = _bindings(func)
    convs = [b.var for b in bindings if _is_op(b.value, CONV2D)]
    claimed: dict[relax.Var, str] = {}
    fused: dict[relax.Var, str] = {}
    first_reason: dict[relax.Var, str] = {}
    for bias, relu, residual_first in VARIANTS:
        pattern, annotations = make_pattern(bias, relu, residual_first)
        for binding in bindings:
            if binding.var in claimed or binding.var not in dataflow:
                continue
            if not pattern.match(binding.value, var2val):
                continue
            extracted = pattern.extract_matched_expr(binding.value, var2val)
            matched = {key: extracted[pat] for key, pat in annotations.items() if pat in extracted}
            conv_var = next(v for v in convs if var2val[v].same_as(matched["conv"]))
            region = _matched_bindings(matched, var2val)
            if region & claimed.keys():
                continue
            inner = region - {binding.var}
            leaks = any(user not in region for var in inner for user in users.get(var, []))
            reason = LEAK_REASON if leaks else rejection(matched)
            if reason is None:
                label = "+".join(["conv2d", *["bias"] * bias, "residual", *["relu"] * relu])
                fused[conv_var] = label
                claimed.update(dict.fromkeys(region, f"{func_name}/{conv_var.name}"))
            elif not isinstance(matched["residual"], tvm.ir.expr.Constant):
                # A constant "residual" is the conv's bias: `_why_unmatched` words that better.
                first_reason.setdefault(conv_var, reason)
    decisions = []
    for conv_var in convs:
        conv = var2val[conv_var]
        if conv_var in fused:
            fused_flag, reason = True, f"fused: {fused[conv_var]}"
        else:
            why = conv_rejection(conv) or first_reason.get(conv_var)
            if why is None and conv_var not in dataflow:
                why = "not in a dataflow block (run relax.transform.ConvertToDataflow first)"
            why = why or _why_unmatched(conv_var, users, var2val, claimed)
            fused_flag, reason = False, f"not fused: {why}"
        name = f"{func_name}/{conv_var.name}"
        decisions.append(ConvDecision(name, _conv_description(conv), fused_flag, reason))
    return decisions


def explain(mod: tvm.IRModule) -> list[ConvDecision]:
    """For each conv2d in `mod` (before partitioning), whether PartitionConvAdd fuses it and why."""
    decisions = []
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        attrs = func.attrs or {}
        if "Codegen" in attrs or "Composite" in attrs:
            continue
        decisions.extend(_explain_function(func, gvar.name_hint))
    return decisions


def format_explanation(decisions: list[ConvDecision]) -> str:
    """A table: one conv per row with its shape and the decision, then a count."""
    header = ("conv", "shape", "decision")
    rows = [(d.name, d.description, d.reason) for d in decisions]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in [header, *rows]]
    fused_count = sum(d.fused for d in decisions)
    lines.append(f"{fused_count} of {len(decisions)} conv2d fused")
    return "\n".join(lines)


# --- graph clean-up -----------------------------------------------------------------------------


def _weight_params(func: relax.Function) -> list[relax.Var]:
    """Parameters holding weights: those after `num_input`, else those conv2d uses as weights."""
    num_input = (func.attrs or {}).get("num_input")
    if num_input is not None:
        return list(func.params[int(num_input) :])
    conv_weights = [b.value.args[1] for b in _bindings(func) if _is_op(b.value, CONV2D)]
    return [param for param in func.params if any(param.same_as(w) for w in conv_weights)]


def _some(names: list[str], shown: int = 6) -> str:
    """A list of names short enough for an error message."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{names[:shown]}{more}"


def prepare(
    mod: tvm.IRModule,
    params: dict[str, np.ndarray] | None = None,
    require_bound: bool = True,
    func_name: str = "main",
) -> tvm.IRModule:
    """Bind the weights and fold batch-norm into the convs, so the patterns see conv + bias."""
    from tvm_convadd.folding import FoldConstantNumpy

    params = params or {}
    unbound = [var.name for var in _weight_params(mod[func_name]) if var.name not in params]
    if require_bound and unbound:
        raise ConvAddError(
            f"{func_name} takes weights {_some(unbound)} as parameters and params does not bind "
            "them, "
            "so batch-norm cannot fold and weights would stay runtime inputs: pass them as "
            "prepare(mod, params={name: array}) or set require_bound=False"
        )
    passes = []
    if params:
        known = {param.name for param in mod[func_name].params}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ConvAddError(
                f"params {_some(unknown)} are not parameters of {func_name}, which takes "
                f"{_some(sorted(known))}"
            )
        bound = {key: tvm.runtime.tensor(np.asarray(value)) for key, value in params.items()}
        passes.append(relax.transform.BindParams(func_name, bound))
    passes += [
        relax.transform.ConvertToDataflow(),
        relax.transform.FoldBatchnormToConv2D(),
        # The batch-norm arithmetic on the weights, in numpy: FoldConstant would compile each
        # op for llvm (425 builds for ResNet-50). FoldConstant then inlines the results and
        # folds whatever numpy did not, so the module is the same either way.
        FoldConstantNumpy(),
        relax.transform.FoldConstant(),
        relax.transform.CanonicalizeBindings(),
    ]
    return tvm.transform.Sequential(passes, name="PrepareConvAdd")(mod)
