"""The graph level: clean the graph up, cut out every conv2d with its epilogue chain, describe
each cut, and say per conv what was offloaded and why.

`patterns` plans the chains (see there why they are planned, not matched); `PartitionConvAdd`
outlines them with `FuseOpsByPattern(annotate_codegen=True, bind_constants=False)`. Facts about
that pass in TVM 0.27 that `describe` relies on: each match becomes a public function with attrs
Codegen="convadd" and a global_symbol equal to its name (`fused_<ops>_convadd[N]`), whose body
binds a local function (Composite="convadd.conv2d_<steps>", the pattern's name) and calls it
with the outer parameters in the same order. The parameters are the matched region's free
inputs in order of first use, constants included (named `param_<i>`): data, weight, then the
epilogue's operands in chain order, which is `Workload.input_names`. A tensor used twice would
become one parameter, so the plan ends a chain before an operand the function already takes. A
scalar constant would become a parameter too, so `PartitionConvAdd` first rewrites a planned
maximum/minimum with a constant into the clip it is (`clip_scalar_bounds`): a clip's bounds are
attributes-like arguments that stay inside. With bind_constants=True the constants stay inside
the composite instead; `describe` reports those roles as `bound`. Structurally equal matches
share one function (count call sites with `fused_calls`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from tvm_convadd.errors import ConvAddError, UnsupportedWorkloadError
from tvm_convadd.patterns import (
    CLIP,
    CODEGEN,
    CONV2D,
    MAXIMUM,
    MINIMUM,
    bindings_of,
    clip_ops,
    composite_labels,
    conv_rejection,
    dtype_of,
    format_dim,
    format_shape,
    graph_functions,
    is_op_call,
    pattern_table,
    plan_chains,
    rebind,
    scalar_bound,
    static_shape,
    var_users,
    with_functions,
)
from tvm_convadd.schedules.workload import RELU, EpilogueOp, Workload


def clip_scalar_bounds(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with each planned maximum/minimum with a constant c written as clip(x, c, inf) /
    clip(x, -inf, c): the same values, and no constant for FuseOpsByPattern to lift."""
    updates = {}
    for gvar, func in graph_functions(mod):
        values = {}
        for chain in plan_chains(func).values():
            previous = chain.conv
            for step in chain.steps:
                if step.op in (MAXIMUM, MINIMUM):
                    (op,) = step.ops
                    low, high = (op.value, math.inf) if op.op == "max" else (-math.inf, op.value)
                    values[step.var] = relax.op.clip(previous, low, high)
                previous = step.var
        if values:
            updates[gvar] = rebind(mod, func, values)
    return with_functions(mod, updates)


@tvm.transform.module_pass(opt_level=0, name="PartitionConvAdd")
class PartitionConvAdd:
    """Cut every offloadable conv2d and its epilogue chain into a function for the convadd
    codegen.

    `offload=False` keeps the cuts as plain composite functions, which the llvm build runs as is:
    the way to check the partition numerically without the accelerator.
    """

    def __init__(self, offload: bool = True) -> None:
        self.offload = offload

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod = clip_scalar_bounds(mod)
        table = pattern_table(mod)
        if not table:
            return mod
        fuse = relax.transform.FuseOpsByPattern(
            table, bind_constants=False, annotate_codegen=self.offload
        )
        return fuse(mod)


# --- reading a fused function ------------------------------------------------------------------


@dataclass(frozen=True)
class FusedConvAdd:
    """One fused function: its workload, the role of each parameter in order, and its symbol.

    The roles are `workload.input_names` (data, weight, then residual, bias, scale, residual_2
    ... in chain order); `bound` lists those whose tensors are constants inside the function,
    not parameters.
    """

    workload: Workload
    roles: tuple[str, ...]
    symbol: str
    bound: tuple[str, ...] = ()

    def operand_indices(self) -> tuple[int, ...]:
        """Parameter positions in `Workload.input_names` order."""
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


def _composite(func: relax.Function, name: str) -> tuple[relax.Function, list[relax.Expr]]:
    """The composite function inside `func` and the arguments the outer function passes it."""
    attrs = func.attrs or {}
    if "Composite" in attrs:
        return func, list(func.params)
    local_functions = {}
    for binding in bindings_of(func):
        value = binding.value
        if isinstance(value, relax.Function) and "Composite" in (value.attrs or {}):
            local_functions[binding.var] = value
        elif isinstance(value, relax.Call):
            callee = local_functions.get(value.op, value.op)
            if isinstance(callee, relax.Function) and "Composite" in (callee.attrs or {}):
                return callee, list(value.args)
    return func, list(func.params)


def _read_steps(
    name: str, bindings: list[relax.Binding], labels: list[str]
) -> tuple[list[EpilogueOp], list[relax.Expr]]:
    """The epilogue ops and the DRAM operands (chain order) of a composite's bindings after its
    conv, each binding a use of the one before, as its composite name says."""
    ops: list[EpilogueOp] = []
    operands: list[relax.Expr] = []
    current = bindings[0].var
    steps = [b for b in bindings[1:] if not isinstance(b.value, relax.Var)]
    if len(steps) != len(labels):
        raise UnsupportedWorkloadError(
            f"function {name}: its composite names {len(labels)} epilogue steps, its body has "
            f"{len(steps)}"
        )
    for binding, label in zip(steps, labels):
        value = binding.value
        args = list(value.args) if isinstance(value, relax.Call) else []
        if not any(arg.same_as(current) for arg in args):
            raise UnsupportedWorkloadError(
                f"function {name}: step {label} ({binding.var.name}) does not use the chain's value"
            )
        if label == "relu":
            ops.append(RELU)
        elif label == "clip" and is_op_call(value, CLIP):
            ops.extend(clip_ops(*(scalar_bound(arg) for arg in args[1:])))
        elif label in ("bias", "residual", "scale") and len(args) == 2:
            operands.append(args[1] if args[0].same_as(current) else args[0])
            kind = "tensor" if label == "residual" else "channel"
            ops.append(EpilogueOp("mul" if label == "scale" else "add", kind))
        else:
            raise UnsupportedWorkloadError(
                f"function {name}: step {label} ({binding.var.name}) is not an op the Add unit runs"
            )
        current = binding.var
    return ops, operands


def describe(func: relax.Function, name: str | None = None) -> FusedConvAdd:
    """Read the workload and parameter roles from a function made by `PartitionConvAdd`."""
    name = _function_name(func, name)
    expected = "a conv2d + epilogue function made by PartitionConvAdd"
    composite, call_args = _composite(func, name)
    bindings = bindings_of(composite)
    convs = [i for i, binding in enumerate(bindings) if is_op_call(binding.value, CONV2D)]
    if len(convs) != 1:
        raise UnsupportedWorkloadError(
            f"function {name}: expected {expected}, found {len(convs)} conv2d calls"
        )
    conv = bindings[convs[0]].value
    reason = conv_rejection(conv)
    if reason is not None:
        raise UnsupportedWorkloadError(f"function {name}: {reason}")
    labels = composite_labels(str((composite.attrs or {}).get("Composite", "")))
    if convs[0] != 0 or labels is None:
        raise UnsupportedWorkloadError(
            f"function {name}: expected {expected} (Composite convadd.conv2d_<steps>), found "
            f"ops {[str(b.value.op.name) for b in bindings if isinstance(b.value, relax.Call)]}"
        )
    ops, operands = _read_steps(name, bindings, labels)
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
        dtype=dtype_of(bindings[0].var),
        groups=int(conv.attrs.groups),
        epilogue=tuple(ops),
    )
    operand_shapes = workload.operand_shapes
    by_role = {"data": conv.args[0], "weight": conv.args[1]}
    for role, expr in zip(operand_shapes, operands):
        if static_shape(expr) != operand_shapes[role] or dtype_of(expr) != workload.dtype:
            raise UnsupportedWorkloadError(
                f"function {name}: {role} is {format_shape(expr)} {dtype_of(expr)}, the "
                f"accelerator takes {operand_shapes[role]} {workload.dtype}"
            )
        by_role[role] = expr
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
                f"function {name}: parameter {param.name} has no role "
                f"({'/'.join(workload.input_names)})"
            )
        roles.append(role)
    bound = tuple(role for role, expr in by_role.items() if isinstance(expr, tvm.ir.expr.Constant))
    symbol = str((func.attrs or {}).get("global_symbol", name))
    return FusedConvAdd(workload, tuple(roles), symbol, bound)


def fused_functions(mod: tvm.IRModule) -> dict[str, FusedConvAdd]:
    """Every conv + epilogue function `PartitionConvAdd` made in `mod`, by function name."""
    found = {}
    for gvar, func in mod.functions.items():
        if _is_fused_function(func):
            found[gvar.name_hint] = describe(func, gvar.name_hint)
    return dict(sorted(found.items()))


def fused_calls(mod: tvm.IRModule, func_name: str = "main") -> list[str]:
    """The fused function called at each call site of `func_name`, in program order.

    FuseOpsByPattern shares one function between structurally equal matches (same shapes and
    epilogue), so count call sites, not functions, to count the offloaded convs.
    """
    fused = fused_functions(mod)
    return [
        binding.value.op.name_hint
        for binding in bindings_of(mod[func_name])
        if isinstance(binding.value, relax.Call)
        and isinstance(binding.value.op, tvm.ir.GlobalVar)
        and binding.value.op.name_hint in fused
    ]


def _is_fused_function(func: relax.BaseFunc) -> bool:
    """Made by PartitionConvAdd: offloaded (Codegen) or, with offload=False, a composite."""
    attrs = (func.attrs or {}) if isinstance(func, relax.Function) else {}
    composite = str(attrs.get("Composite", ""))
    return str(attrs.get("Codegen", "")) == CODEGEN or composite.startswith(f"{CODEGEN}.")


# --- explain: why each conv2d was or was not fused --------------------------------------------
#
# The verdicts are the partition's own: `explain` runs PartitionConvAdd (or takes its result),
# finds each call of a fused function and maps the conv2d inside it back to a conv2d of the
# module before partitioning. FuseOpsByPattern keeps every Var and Constant outside the cut as
# the same object, so a call site's arguments are the original operands; the one new Var is each
# call's result, which stands for the last binding of its region. The module explain walks is
# `clip_scalar_bounds(mod)`, as the partition saw it: the same variables, a clip where a planned
# maximum/minimum with a constant was. The chain notes (where a chain was cut, and why) and the
# reasons for a conv left alone come from `patterns`.

FUSED = "fused: "
NOT_FUSED = "not fused: "
# What a refusal says when none of the known causes applies: a gap the tests rule out.
UNEXPLAINED = "PartitionConvAdd left it alone for a reason explain cannot name"
NOT_DATAFLOW = "not in a dataflow block (run relax.transform.ConvertToDataflow first)"


@dataclass(frozen=True)
class ConvDecision:
    """One conv2d of the module before partitioning: fused or not, why, and its MACs (0 when
    its shapes are dynamic)."""

    name: str
    description: str
    fused: bool
    reason: str
    macs: int = 0


@dataclass(frozen=True)
class _FusedSite:
    """A call of a fused function, mapped back: the original bindings it replaced, conv first."""

    region: tuple[relax.Var, ...]
    label: str  # conv2d+bias+residual+relu


def conv_macs(conv: relax.Call) -> int:
    """Multiply-accumulates of a conv2d (NCHW/OIHW), 0 when a shape is not static."""
    out_shape, weight_shape = static_shape(conv), static_shape(conv.args[1])
    if out_shape is None or weight_shape is None or len(out_shape) != 4:
        return 0
    return math.prod(out_shape) * math.prod(weight_shape[1:])


def _conv_description(conv: relax.Call) -> str:
    data, weight = conv.args
    kernel_h, kernel_w = (format_dim(dim) for dim in weight.ty.shape.values[2:])
    stride = "x".join(dict.fromkeys(str(int(s)) for s in conv.attrs.strides))
    groups = int(conv.attrs.groups)
    text = f"conv{kernel_h}x{kernel_w}/s{stride} {format_shape(data)} -> {format_shape(conv)}"
    return text + (f" groups={groups}" if groups != 1 else "")


def _same_arg(arg: relax.Expr, wanted: relax.Expr) -> bool:
    """The same operand: the same object, or for a clip bound the same number."""
    if arg.same_as(wanted):
        return True
    return scalar_bound(arg) is not None and tvm_ffi.structural_equal(arg, wanted)


def _same_call(value: relax.Expr | None, like: relax.Call, args: list[relax.Expr]) -> bool:
    return (
        isinstance(value, relax.Call)
        and value.op.same_as(like.op)
        and len(value.args) == len(args)
        and all(_same_arg(arg, wanted) for arg, wanted in zip(value.args, args))
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
        args = [
            inner[arg] if isinstance(arg, relax.Var) and arg in inner else site.original(arg)
            for arg in value.args
        ]
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
    func: relax.Function,
    func_name: str,
    partitioned: tvm.IRModule,
    var2val: dict,
    users: dict,
    chains: dict,
) -> dict[relax.Var, _FusedSite]:
    """Each conv2d of `func` that the partition put into a fused function, by its variable."""
    if func_name not in [gvar.name_hint for gvar in partitioned.functions]:
        raise ConvAddError(f"the partitioned module has no function {func_name}")
    convs = [b.var for b in bindings_of(func) if is_op_call(b.value, CONV2D)]
    sites: dict[relax.Var, _FusedSite] = {}
    renamed: dict[relax.Var, relax.Expr] = {}
    for binding in bindings_of(partitioned[func_name]):
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
        inner = bindings_of(site.composite)
        if not inner or not is_op_call(inner[0].value, CONV2D):
            raise ConvAddError(f"fused function {name} does not start with a conv2d")
        conv = inner[0].value
        operands = [site.original(arg) for arg in conv.args]
        # Twin convs (same operands and attributes) differ only in their chains; a shorter
        # region fits a longer chain's start, so a region that is a whole planned chain wins.
        regions = [
            region
            for conv_var in convs
            if conv_var not in sites and _same_call(var2val[conv_var], conv, operands)
            for region in [_follow_region(conv_var, inner, site, users, var2val)]
            if region is not None
        ]
        planned = [r for r in regions if r[0] in chains and chains[r[0]].region == frozenset(r)]
        region = (planned or regions or [None])[0]
        if region is None:
            raise ConvAddError(
                f"{func_name}/{binding.var.name} calls {name}, whose conv2d and epilogue are "
                f"not one of {func_name}'s: pass explain the module `partitioned` was made from"
            )
        epilogue = describe(fused_func, name).workload.epilogue_label
        label = "conv2d" if epilogue == "none" else f"conv2d+{epilogue}"
        sites[region[0]] = _FusedSite(region, label)
        renamed[binding.var] = region[-1]
    return sites


def _explain_function(
    func: relax.Function, func_name: str, partitioned: tvm.IRModule
) -> list[ConvDecision]:
    var2val = relax.analysis.get_var2val(func)
    users = var_users(func)
    chains = plan_chains(func)
    sites = _fused_sites(func, func_name, partitioned, var2val, users, chains)
    dataflow = {
        binding.var
        for block in func.body.blocks
        if isinstance(block, relax.DataflowBlock)
        for binding in block.bindings
    }
    decisions = []
    for binding in bindings_of(func):
        if not is_op_call(binding.value, CONV2D):
            continue
        conv_var, conv = binding.var, binding.value
        if conv_var in sites:
            site, chain = sites[conv_var], chains.get(conv_var)
            reason = FUSED + site.label
            if chain is not None and chain.note and chain.region == frozenset(site.region):
                reason += f"; {chain.note}"
            fused = True
        else:
            why = (
                conv_rejection(conv)
                or (NOT_DATAFLOW if conv_var not in dataflow else None)
                or UNEXPLAINED
            )
            fused, reason = False, NOT_FUSED + why
        name = f"{func_name}/{conv_var.name}"
        decisions.append(
            ConvDecision(name, _conv_description(conv), fused, reason, conv_macs(conv))
        )
    return decisions


def explain(mod: tvm.IRModule, partitioned: tvm.IRModule | None = None) -> list[ConvDecision]:
    """For each conv2d in `mod` (before partitioning), whether PartitionConvAdd fuses it and why.

    The verdicts come from the partition itself: `partitioned` is `PartitionConvAdd()(mod)`
    unless given (pass the one you already have, made from this very `mod`: offloaded or not).
    A fused conv reads "fused: conv2d+<epilogue>", then where its chain was cut when an op
    after it runs on the CPU (a value other ops share, an op or operand the Add unit lacks).
    A conv left alone gets what the accelerator refuses in the conv itself (layout, dilation,
    dtype, dynamic shape), or that it is outside a dataflow block.
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
    canonical = clip_scalar_bounds(mod)
    decisions = []
    for gvar, func in graph_functions(canonical):
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


@dataclass(frozen=True)
class OffloadSummary:
    """The conv MACs of one module and the share the accelerator runs; `not_offloaded` are the
    convs left on the CPU, each with its reason. Convs with dynamic shapes count 0 MACs."""

    total_macs: int
    offloaded_macs: int
    convs: int
    offloaded: int
    not_offloaded: tuple[ConvDecision, ...]

    @property
    def share(self) -> float:
        """Offloaded conv MACs over all conv MACs (1.0 for a module without convs)."""
        return self.offloaded_macs / self.total_macs if self.total_macs else 1.0

    def __str__(self) -> str:
        lines = [
            f"conv MACs offloaded: {self.share:.1%} ({self.offloaded_macs:,} of "
            f"{self.total_macs:,}); {self.offloaded} of {self.convs} conv2d"
        ]
        lines += [f"  {d.name} {d.description}: {d.reason}" for d in self.not_offloaded]
        return "\n".join(lines)


def offload_summary(mod: tvm.IRModule, partitioned: tvm.IRModule | None = None) -> OffloadSummary:
    """Total and offloaded conv MACs of `mod` (before partitioning), from `explain`'s verdicts;
    `partitioned` as for `explain`."""
    decisions = explain(mod, partitioned)
    return OffloadSummary(
        total_macs=sum(d.macs for d in decisions),
        offloaded_macs=sum(d.macs for d in decisions if d.fused),
        convs=len(decisions),
        offloaded=sum(d.fused for d in decisions),
        not_offloaded=tuple(d for d in decisions if not d.fused),
    )


# --- graph clean-up -----------------------------------------------------------------------------


def _weight_params(func: relax.Function) -> list[relax.Var]:
    """Parameters holding weights: those after `num_input`, else those conv2d uses as weights."""
    num_input = (func.attrs or {}).get("num_input")
    if num_input is not None:
        return list(func.params[int(num_input) :])
    conv_weights = [b.value.args[1] for b in bindings_of(func) if is_op_call(b.value, CONV2D)]
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
    """Bind the weights, fold batch-norm into the convs (so the chains see conv + bias), write
    what is left in ops the chains take (`canonical`: other batch-norms as scale and bias,
    ONNX's clips as maximum/minimum) and turn dense layers into 1x1 convs (`dense`)."""
    from tvm_convadd.canonical import BatchNormToScaleBias, TirMaxMinToRelax
    from tvm_convadd.dense import DenseToConv2D
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
        # After the folding, which leaves each operand below as one constant:
        BatchNormToScaleBias(),  # the batch-norms not right after a conv
        TirMaxMinToRelax(),  # ONNX's Clip (relu6)
        DenseToConv2D(),  # a dense's transposed weight
    ]
    return tvm.transform.Sequential(passes, name="PrepareConvAdd")(mod)
