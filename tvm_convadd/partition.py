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
import tvm_ffi
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
#
# The verdicts are the partition's own: `explain` runs PartitionConvAdd (or takes its result),
# finds each call of a fused function and maps the conv2d inside it back to a conv2d of the
# module before partitioning. FuseOpsByPattern keeps every Var and Constant outside the cut as
# the same object, so a call site's arguments are the original operands; the one new Var is each
# call's result, which stands for the last binding of its region. The code below only words the
# reasons for the convs the partition left alone, from the graph around them.

FUSED = "fused: "
NOT_FUSED = "not fused: "
# What a refusal says when none of the known causes applies (the pattern takes the conv, yet
# PartitionConvAdd left it alone): a gap in this explanation, which the tests rule out.
UNEXPLAINED = "PartitionConvAdd left it alone for a reason explain cannot name"
NOT_DATAFLOW = "not in a dataflow block (run relax.transform.ConvertToDataflow first)"


@dataclass(frozen=True)
class ConvDecision:
    """One conv2d of the module before partitioning: fused or not, and why."""

    name: str
    description: str
    fused: bool
    reason: str


@dataclass(frozen=True)
class _FusedSite:
    """A call of a fused function, mapped back: the original bindings it replaced, conv first."""

    region: tuple[relax.Var, ...]
    label: str  # conv2d+bias+residual+relu


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


def _is_fused_function(func: relax.BaseFunc) -> bool:
    """Made by PartitionConvAdd: offloaded (Codegen) or, with offload=False, a composite."""
    attrs = (func.attrs or {}) if isinstance(func, relax.Function) else {}
    composite = str(attrs.get("Composite", ""))
    return str(attrs.get("Codegen", "")) == CODEGEN or composite.startswith(f"{CODEGEN}.")


def _same_call(value: relax.Expr | None, like: relax.Call, args: list[relax.Expr]) -> bool:
    return (
        isinstance(value, relax.Call)
        and value.op.same_as(like.op)
        and len(value.args) == len(args)
        and all(arg.same_as(wanted) for arg, wanted in zip(value.args, args))
        and tvm_ffi.structural_equal(value.attrs, like.attrs)
    )


class _CallSite:
    """Maps an expression of a fused function to the original expression its call site passes."""

    def __init__(self, func: relax.Function, call: relax.Call, renamed: dict, name: str):
        self.composite, inner_args = _composite(func, name)
        self.inner = dict(zip(self.composite.params, inner_args))
        self.outer = dict(zip(func.params, call.args))
        self.renamed = renamed

    def original(self, expr: relax.Expr) -> relax.Expr:
        expr = self.inner.get(expr, expr)  # a composite parameter: what the function passes it
        expr = self.outer.get(expr, expr)  # a parameter of the function: the call's argument
        return self.renamed.get(expr, expr)  # an earlier fused call's result: its region's root


def _follow_region(
    conv_var: relax.Var, bindings: list[relax.Binding], site: _CallSite, users: dict, var2val: dict
) -> tuple[relax.Var, ...] | None:
    """The original bindings the composite's bindings (its conv2d first) stand for, or None.

    Each binding after the conv must be an original user of an earlier one, with the same op
    and attributes and the same operands (the composite's own bindings mapped as found so far).
    """
    inner = {bindings[0].var: conv_var}
    region = [conv_var]
    for binding in bindings[1:]:
        value = binding.value
        if isinstance(value, relax.Var) and value in inner:  # an alias such as the output
            inner[binding.var] = inner[value]
            continue
        if not isinstance(value, relax.Call):
            return None
        args = [inner[arg] if arg in inner else site.original(arg) for arg in value.args]
        produced = [arg for arg in args if any(arg.same_as(var) for var in region)]
        if not produced:
            return None
        found = next(
            (
                user
                for user in users.get(produced[0], [])
                if user is not None and _same_call(var2val.get(user), value, args)
            ),
            None,
        )
        if found is None:
            return None
        inner[binding.var] = found
        region.append(found)
    return tuple(region)


def _fused_sites(
    func: relax.Function, func_name: str, partitioned: tvm.IRModule, var2val: dict, users: dict
) -> dict[relax.Var, _FusedSite]:
    """Each conv2d of `func` that the partition put into a fused function, by its variable."""
    if func_name not in [gvar.name_hint for gvar in partitioned.functions]:
        raise ConvAddError(f"the partitioned module has no function {func_name}")
    convs = [b.var for b in _bindings(func) if _is_op(b.value, CONV2D)]
    sites: dict[relax.Var, _FusedSite] = {}
    renamed: dict[relax.Var, relax.Expr] = {}
    for binding in _bindings(partitioned[func_name]):
        value = binding.value
        if isinstance(value, relax.Var):
            if value in renamed:
                renamed[binding.var] = renamed[value]
            continue
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.GlobalVar):
            continue
        name = value.op.name_hint
        fused_func = partitioned[value.op]
        if not _is_fused_function(fused_func):
            continue
        site = _CallSite(fused_func, value, renamed, name)
        inner = _bindings(site.composite)
        if not inner or not _is_op(inner[0].value, CONV2D):
            raise ConvAddError(f"fused function {name} does not start with a conv2d")
        conv = inner[0].value
        operands = [site.original(arg) for arg in conv.args]
        region = None
        for conv_var in convs:
            if conv_var in sites or not _same_call(var2val[conv_var], conv, operands):
                continue
            region = _follow_region(conv_var, inner, site, users, var2val)
            if region is not None:
                break
        if region is None:
            raise ConvAddError(
                f"{func_name}/{binding.var.name} calls {name}, whose conv2d [+ bias] + add is "
                f"not one of {func_name}'s: pass explain the module `partitioned` was made from"
            )
        label = f"conv2d+{describe(fused_func, name).workload.epilogue}"
        sites[region[0]] = _FusedSite(region, label)
        renamed[binding.var] = region[-1]
    return sites


def _matched_bindings(matched: dict[str, relax.Expr], var2val: dict) -> set[relax.Var]:
    """The variables bound to the matched ops (the operands are outside the region)."""
    ops = [matched[key] for key in ("conv", "bias_add", "add", "root") if key in matched]
    return {var for var, value in var2val.items() if any(value.same_as(op) for op in ops)}


def _pattern_refusals(
    func: relax.Function, var2val: dict, users: dict, claimed: dict
) -> dict[relax.Var, str]:
    """Why the pattern check refuses each conv a pattern matches outside the partition's cuts.

    The first refusal in table order wins, as it is the one FuseOpsByPattern met first. A match
    whose "residual" is a constant is left to `_why_unmatched`: that constant is a bias.
    """
    convs = [b.var for b in _bindings(func) if _is_op(b.value, CONV2D)]
    bindings = [
        binding
        for block in func.body.blocks
        if isinstance(block, relax.DataflowBlock)
        for binding in block.bindings
    ]
    refused: dict[relax.Var, str] = {}
    for bias, relu, residual_first in VARIANTS:
        pattern, annotations = make_pattern(bias, relu, residual_first)
        for binding in bindings:
            if binding.var in claimed or not pattern.match(binding.value, var2val):
                continue
            extracted = pattern.extract_matched_expr(binding.value, var2val)
            matched = {key: extracted[pat] for key, pat in annotations.items() if pat in extracted}
            conv_var = next(v for v in convs if var2val[v].same_as(matched["conv"]))
            region = _matched_bindings(matched, var2val)
            if region & claimed.keys() or isinstance(matched["residual"], tvm.ir.expr.Constant):
                continue
            inner = region - {binding.var}
            leaks = any(user not in region for var in inner for user in users.get(var, []))
            reason = LEAK_REASON if leaks else rejection(matched)
            if reason is not None:
                refused.setdefault(conv_var, reason)
    return refused


def _is_bias_shaped(expr: relax.Expr, out_channels: int) -> bool:
    return static_shape(expr) == (1, out_channels, 1, 1)


def _what(value: relax.Expr | None) -> str:
    """An expression named for a reason: its op, the function it calls, or its kind."""
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
        return str(value.op.name).removeprefix("relax.")
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
        return f"a call of {value.op.name_hint}"
    if isinstance(value, relax.Tuple):
        return "a tuple"
    return "a binding" if value is None else type(value).__name__


def _user_name(user: relax.Var | None, var2val: dict, claimed: dict) -> str:
    """What a user of a conv's output is, for a reason: fused regions by their conv's name."""
    if user is None:
        return "the result"
    value = var2val.get(user)
    if user not in claimed:
        return _what(value)
    if _is_op(value, CONV2D):
        return f"the input of fused {claimed[user]}"
    return f"the add fused with {claimed[user]}"


def _why_unmatched(conv_var: relax.Var, users: dict, var2val: dict, claimed: dict) -> str | None:
    """The reason no pattern took a conv, read from what follows it; None if none is found.

    `claimed` maps each binding inside a fused region to the fused conv's name.
    """
    out_channels = static_shape(conv_var)[1]
    current, biases = conv_var, 0
    while True:
        no_add = "no add follows"
        if biases:
            only = "a per-channel bias" if biases == 1 else "per-channel biases"
            no_add = f"no residual add follows (only {only})"
        consumers = users.get(current, [])
        if not consumers:
            return f"{no_add}: its output is unused"
        if consumers == [None]:
            return f"{no_add}: its output is the result"
        if len(consumers) != 1:
            shown = [_user_name(user, var2val, claimed) for user in consumers]
            return (
                f"its output has {len(consumers)} users ({', '.join(shown)}); a fused conv's "
                "output goes to its add alone"
            )
        consumer = consumers[0]
        value = var2val.get(consumer)
        if consumer in claimed:
            if _is_op(value, CONV2D):
                return f"{no_add}: it is the input of {claimed[consumer]}, which is fused"
            return f"its add is fused with {claimed[consumer]} (it is that conv's residual)"
        if isinstance(value, relax.Var):
            return f"{no_add}: its output is the result"
        if not _is_op(value, "relax.add"):
            return f"{no_add}; next comes {_what(value)}"
        other = value.args[1] if value.args[0].same_as(current) else value.args[0]
        if _is_bias_shaped(other, out_channels) and (
            biases == 0 or isinstance(other, tvm.ir.expr.Constant)
        ):
            current, biases = consumer, biases + 1
            continue
        if isinstance(other, tvm.ir.expr.Constant):
            return "the added tensor is a constant: a bias, not a residual"
        return None


def _explain_function(
    func: relax.Function, func_name: str, partitioned: tvm.IRModule
) -> list[ConvDecision]:
    var2val = relax.analysis.get_var2val(func)
    users = _users(func)
    sites = _fused_sites(func, func_name, partitioned, var2val, users)
    claimed = {
        var: f"{func_name}/{conv_var.name}"
        for conv_var, site in sites.items()
        for var in site.region
    }
    refused = _pattern_refusals(func, var2val, users, claimed)
    dataflow = {
        binding.var
        for block in func.body.blocks
        if isinstance(block, relax.DataflowBlock)
        for binding in block.bindings
    }
    decisions = []
    for binding in _bindings(func):
        if not _is_op(binding.value, CONV2D):
            continue
        conv_var, conv = binding.var, binding.value
        if conv_var in sites:
            fused, reason = True, FUSED + sites[conv_var].label
        else:
            why = (
                conv_rejection(conv)
                or (NOT_DATAFLOW if conv_var not in dataflow else None)
                or refused.get(conv_var)
                or _why_unmatched(conv_var, users, var2val, claimed)
                or UNEXPLAINED
            )
            fused, reason = False, NOT_FUSED + why
        name = f"{func_name}/{conv_var.name}"
        decisions.append(ConvDecision(name, _conv_description(conv), fused, reason))
    return decisions


def explain(mod: tvm.IRModule, partitioned: tvm.IRModule | None = None) -> list[ConvDecision]:
    """For each conv2d in `mod` (before partitioning), whether PartitionConvAdd fuses it and why.

    The verdicts come from the partition itself: `partitioned` is `PartitionConvAdd()(mod)`
    unless given (pass the one you already have, made from this very `mod`: offloaded or not).
    Each conv left unfused gets the reason: what the accelerator refuses in the conv itself
    (layout, groups, dilation, dtype, dynamic shape), then what the pattern check refuses in
    its epilogue (broadcast residual, a residual that is the conv's input, an output that
    other ops use too), then what follows it (no add, only a bias, an add fused with another
    conv).
    """
    fused_already = sorted(
        gvar.name_hint for gvar, func in mod.functions.items() if _is_fused_function(func)
    )
    if fused_already:
        raise ConvAddError(
            f"explain takes the module before partitioning, and this one has fused functions "
            f"{_some(fused_already)}: pass the original as mod and this one as partitioned"
        )
    if partitioned is None:
        partitioned = PartitionConvAdd()(mod)
    decisions = []
    for gvar, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        attrs = func.attrs or {}
        if "Codegen" in attrs or "Composite" in attrs:
            continue
        decisions.extend(_explain_function(func, gvar.name_hint, partitioned))
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
