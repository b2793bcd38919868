"""What the accelerator takes from a Relax graph: a conv2d and the longest elementwise epilogue
chain after it, planned here and outlined by `FuseOpsByPattern` with one exact pattern per plan.

Why plan first and match after: a generic pattern (conv, then any of add/multiply/relu/clip in
either operand order) is ambiguous when both operands of an add are conv chains (a projection
shortcut, a MobileNet block input), and the matcher does not come back to try the other order
once the check refuses. So `plan_chains` walks each dataflow block and grows each conv's chain
itself: while the current value has exactly one user and that user is an op the Add unit has
(`epilogue_step`) with an operand it can take, the chain goes on. Convs are planned in program
order and a binding belongs to one chain at most. `pattern_table` then gives one pattern per
planned chain shape (ops and operand positions fixed, no alternation) whose check accepts a
match only when its bindings are exactly a planned chain's, so the outlined functions, their
Codegen/Composite attributes and their parameter order are the ones `FuseOpsByPattern` always
makes (see `partition`), and `describe` reads them as before.

A chain stops at a value other ops use too (the fused function returns it; they run on the
CPU), at an op the Add unit lacks, and at an operand it cannot take; the conv always fuses with
what comes before. `conv_rejection` is the one place that refuses a conv itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.dpl import DFPattern, is_op, wildcard
from tvm.relax.transform import FusionPattern, PatternCheckContext

from tvm_convadd.errors import ConvAddError
from tvm_convadd.schedules.workload import RELU, EpilogueOp

CODEGEN = "convadd"
ACCEPTED_DTYPE = "float32"
CONV2D = "relax.nn.conv2d"
ADD, MULTIPLY, RELU_OP, CLIP = "relax.add", "relax.multiply", "relax.nn.relu", "relax.clip"
MAXIMUM, MINIMUM = "relax.maximum", "relax.minimum"
# Elementwise ops the Add unit lacks: they end a chain, and explain says so.
OTHER_ELEMENTWISE = frozenset(
    f"relax.{name}"
    for name in (
        "subtract", "divide", "power", "exp", "log", "sqrt", "rsqrt", "negative", "abs",
        "sigmoid", "tanh", "erf", "floor", "round", "where", "nn.silu", "nn.gelu",
        "nn.gelu_tanh", "nn.leakyrelu", "nn.prelu", "nn.softplus", "nn.selu",
    )
)  # fmt: skip
ALU_TEXT = "the Add unit has add tensor/per-channel, mul per-channel, max/min const"


def static_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The tensor's shape as ints, or None when it is unknown or symbolic."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = getattr(ty.shape, "values", None)
    if dims is None or not all(isinstance(dim, tvm.tirx.IntImm) for dim in dims):
        return None
    return tuple(int(dim.value) for dim in dims)


def dtype_of(expr: relax.Expr) -> str:
    ty = expr.ty
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else "unknown"


def format_dim(dim: tvm.ir.PrimExpr) -> str:
    return str(int(dim.value)) if isinstance(dim, tvm.tirx.IntImm) else str(dim)


def format_shape(expr: relax.Expr) -> str:
    ty = expr.ty
    if isinstance(ty, relax.TensorType) and ty.shape is not None:
        return "(" + ", ".join(format_dim(dim) for dim in ty.shape.values) + ")"
    return "(unknown)"


def is_op_call(expr: relax.Expr | None, op_name: str) -> bool:
    return isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get(op_name))


def op_name(expr: relax.Expr | None) -> str | None:
    """The Relax op a call applies ("relax.add"), None for anything else."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


def is_constant(expr: relax.Expr) -> bool:
    return isinstance(expr, tvm.ir.expr.Constant)


def conv_rejection(conv: relax.Call) -> str | None:
    """Why the accelerator cannot run this conv2d (layout, dilation, dtype, shape), or None."""
    attrs = conv.attrs
    layouts = (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout))
    if layouts != ("NCHW", "OIHW", "NCHW"):
        shown = "/".join(dict.fromkeys(layouts))
        return f"layout {shown} (the accelerator takes NCHW/OIHW)"
    dilation = tuple(int(d) for d in attrs.dilation)
    if dilation != (1, 1):
        shown = dilation[0] if dilation[0] == dilation[1] else "x".join(map(str, dilation))
        return f"dilation {shown} (the accelerator takes dilation 1)"
    data, weight = conv.args
    out_dtype = "" if attrs.out_dtype is None else str(attrs.out_dtype)
    for role, dtype in (("data", dtype_of(data)), ("weight", dtype_of(weight))):
        if dtype != ACCEPTED_DTYPE:
            return f"{role} dtype {dtype} (the accelerator takes {ACCEPTED_DTYPE})"
    if out_dtype not in ("", "void", ACCEPTED_DTYPE):
        return f"out_dtype {out_dtype} (the accelerator takes {ACCEPTED_DTYPE})"
    for role, expr in (("data", data), ("weight", weight), ("output", conv)):
        if static_shape(expr) is None:
            return f"dynamic {role} shape {format_shape(expr)} (bind the shape to constants first)"
    return None


# --- one step of the epilogue -------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One op of a planned chain: the binding, what the Add unit does for it, its DRAM operand.

    `label` names the step in the composite's name (bias, residual, scale, relu, clip, and max
    and min before `PartitionConvAdd` turns them into clips); `position` is where the chain's
    value sits among a binary op's arguments (None for relu and clip).
    """

    var: relax.Var
    op: str
    label: str
    ops: tuple[EpilogueOp, ...]
    operand: relax.Expr | None = None
    position: int | None = None


STEP_LABELS = {"bias", "residual", "scale", "relu", "clip", "max", "min"}


def scalar_bound(expr: relax.Expr) -> float | None:
    """A clip bound (an IntImm/FloatImm argument) as a float, None if it is not one."""
    if isinstance(expr, (tvm.ir.prim.expr.FloatImm, tvm.ir.prim.expr.IntImm)):
        return float(expr.value)
    return None


def clip_ops(low: float, high: float) -> tuple[EpilogueOp, ...]:
    """clip(a, b) is max a then min b; an infinite bound is no op."""
    ops = []
    if low != -math.inf:
        ops.append(EpilogueOp("max", "const", low))
    if high != math.inf:
        ops.append(EpilogueOp("min", "const", high))
    return tuple(ops)


def scalar_constant(expr: relax.Expr) -> float | None:
    """The value of a one-element constant (0-d, (1,), (1, 1, 1, 1)...), None otherwise."""
    if not is_constant(expr):
        return None
    value = expr.value.numpy()
    return float(value.reshape(())) if value.size == 1 else None


def epilogue_step(var: relax.Var, value: relax.Expr, current: relax.Var) -> Step | str | None:
    """`value` (bound to `var`) as the next step after `current`, the chain's value so far.

    A Step when the Add unit runs it; a reason when it is an elementwise op the unit cannot
    take; None when it is no elementwise op at all (a conv, a pool, a reshape...).
    """
    name = op_name(value)
    if name not in (ADD, MULTIPLY, MAXIMUM, MINIMUM, RELU_OP, CLIP):
        if name in OTHER_ELEMENTWISE:
            return f"not an ALU op ({ALU_TEXT})"
        return None
    out_shape = static_shape(current)
    if dtype_of(value) != ACCEPTED_DTYPE or static_shape(value) != out_shape:
        return f"its result {format_shape(value)} {dtype_of(value)} is not the chain's shape"
    if name == RELU_OP:
        return Step(var, name, "relu", (RELU,))
    if name == CLIP:
        low, high = (scalar_bound(arg) for arg in value.args[1:])
        if low is None or high is None:
            return "clip bounds that are not constants"
        if math.isnan(low) or math.isnan(high) or low == math.inf or high == -math.inf:
            return f"clip bounds ({low:g}, {high:g}) (the ALU takes finite constants)"
        return Step(var, name, "clip", clip_ops(low, high))
    lhs, rhs = value.args
    if lhs.same_as(rhs):
        return "both its operands are the chain's value"
    position = 0 if lhs.same_as(current) else 1
    other = value.args[1 - position]
    verb = name.removeprefix("relax.")
    if dtype_of(other) != ACCEPTED_DTYPE:
        return f"{verb} operand dtype {dtype_of(other)} (the accelerator takes {ACCEPTED_DTYPE})"
    shape = static_shape(other)
    channel = (1, out_shape[1], 1, 1)
    if name in (MAXIMUM, MINIMUM):
        constant = scalar_constant(other)
        if constant is None:
            return f"{verb} with a tensor operand {format_shape(other)} (the ALU takes a constant)"
        if not math.isfinite(constant):
            return f"{verb} with {constant:g} (the ALU takes finite constants)"
        op = "max" if name == MAXIMUM else "min"
        return Step(var, name, op, (EpilogueOp(op, "const", constant),), None, position)
    if name == MULTIPLY:
        if shape == channel:
            return Step(var, name, "scale", (EpilogueOp("mul", "channel"),), other, position)
        return (
            f"multiply by {format_shape(other)}: the ALU multiplies by a per-channel "
            f"{channel} vector"
        )
    # A constant (1, K, 1, 1) is a bias even when the output is (1, K, 1, 1) too.
    if shape == channel and (is_constant(other) or shape != out_shape):
        return Step(var, name, "bias", (EpilogueOp("add", "channel"),), other, position)
    if shape == out_shape:
        return Step(var, name, "residual", (EpilogueOp("add", "tensor"),), other, position)
    return (
        f"add of {format_shape(other)}: the ALU adds the output's shape {format_shape(current)} "
        f"or a per-channel {channel} vector (it does not broadcast)"
    )


# --- planning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chain:
    """A conv2d and the steps planned after it; `note` says why it stops, when that matters."""

    conv: relax.Var
    steps: tuple[Step, ...]
    note: str | None = None

    @property
    def root(self) -> relax.Var:
        return self.steps[-1].var if self.steps else self.conv

    @property
    def region(self) -> frozenset[relax.Var]:
        return frozenset((self.conv, *(step.var for step in self.steps)))

    @property
    def shape_key(self) -> tuple:
        """What the pattern must fix: each step's op, label and operand position."""
        return tuple((step.op, step.label, step.position) for step in self.steps)

    @property
    def epilogue(self) -> tuple[EpilogueOp, ...]:
        return tuple(op for step in self.steps for op in step.ops)


def bindings_of(func: relax.Function) -> list[relax.Binding]:
    body = func.body
    if not isinstance(body, relax.SeqExpr):
        return []
    return [binding for block in body.blocks for binding in block.bindings]


def var_users(func: relax.Function) -> dict[relax.Var, list[relax.Var | None]]:
    """Each variable's users: the variables bound to expressions using it (None: the output)."""
    users: dict[relax.Var, list[relax.Var | None]] = {}
    for binding in bindings_of(func):
        for var in relax.analysis.free_vars(binding.value):
            users.setdefault(var, []).append(binding.var)
    if isinstance(func.body, relax.SeqExpr):
        for var in relax.analysis.free_vars(func.body.body):
            users.setdefault(var, []).append(None)
    return users


def user_name(user: relax.Var | None, var2val: dict) -> str:
    """What uses a value, for a reason: its op, the function it calls, or the result."""
    if user is None:
        return "the result"
    value = var2val.get(user)
    name = op_name(value)
    if name is not None:
        return name.removeprefix("relax.")
    if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar):
        return f"a call of {value.op.name_hint}"
    return "a tuple" if isinstance(value, relax.Tuple) else type(value).__name__


def plan_chains(func: relax.Function) -> dict[relax.Var, Chain]:
    """Every offloadable conv2d of `func`'s dataflow blocks and its chain, in program order."""
    users = var_users(func)
    var2val = relax.analysis.get_var2val(func)
    claimed: set[relax.Var] = set()
    chains: dict[relax.Var, Chain] = {}
    for block in func.body.blocks if isinstance(func.body, relax.SeqExpr) else ():
        if not isinstance(block, relax.DataflowBlock):
            continue
        in_block = {binding.var for binding in block.bindings}
        for binding in block.bindings:
            if not is_op_call(binding.value, CONV2D) or conv_rejection(binding.value) is not None:
                continue
            data, weight = binding.value.args
            taken = [data, weight]
            steps: list[Step] = []
            current = binding.var
            while True:
                consumers = users.get(current, [])
                if len(consumers) != 1 or consumers[0] not in in_block or consumers[0] in claimed:
                    break
                step = epilogue_step(consumers[0], var2val[consumers[0]], current)
                if not isinstance(step, Step) or _operand_clash(step, taken) is not None:
                    break
                steps.append(step)
                if step.operand is not None:
                    taken.append(step.operand)
                current = step.var
            chain = Chain(binding.var, tuple(steps))
            claimed |= chain.region
            chains[binding.var] = chain
    return {
        conv: Chain(conv, chain.steps, _stop_note(chain, users, var2val, claimed))
        for conv, chain in chains.items()
    }


def _operand_clash(step: Step, taken: list[relax.Expr]) -> str | None:
    """A tensor the fused function already takes: one parameter cannot have two roles."""
    if step.operand is None:
        return None
    roles = ["the conv's input", "the conv's weight"] + ["an earlier operand"] * (len(taken) - 2)
    for role, expr in zip(roles, taken):
        if step.operand.same_as(expr):
            return (
                f"its operand is also {role} (the fused function takes a tensor for one role only)"
            )
    return None


def _stop_note(chain: Chain, users: dict, var2val: dict, claimed: set[relax.Var]) -> str | None:
    """Why the chain ends at its root, if something there runs on the CPU that could matter."""
    consumers = users.get(chain.root, [])
    if len(consumers) > 1:
        on_cpu = [user for user in consumers if user is not None and user not in claimed]
        if on_cpu:
            shown = ", ".join(user_name(user, var2val) for user in consumers)
            return (
                f"chain cut at a shared value: its output has {len(consumers)} users ({shown}), "
                "so the fused function returns it and the ops after it run on the CPU"
            )
        return None
    if len(consumers) != 1 or consumers[0] is None or consumers[0] in claimed:
        return None
    step = epilogue_step(consumers[0], var2val[consumers[0]], chain.root)
    if isinstance(step, Step):
        data, weight = var2val[chain.conv].args
        operands = [s.operand for s in chain.steps if s.operand is not None]
        step = _operand_clash(step, [data, weight, *operands])
    if step is None:
        return None
    return f"{user_name(consumers[0], var2val)} after it runs on the CPU: {step}"


def graph_functions(mod: tvm.IRModule) -> list[tuple[tvm.ir.GlobalVar, relax.Function]]:
    """The Relax functions of `mod` that are not themselves fused functions."""
    found = []
    for gvar, func in mod.functions.items():
        attrs = (func.attrs or {}) if isinstance(func, relax.Function) else None
        if attrs is not None and "Codegen" not in attrs and "Composite" not in attrs:
            found.append((gvar, func))
    return found


def with_functions(mod: tvm.IRModule, updates: dict) -> tvm.IRModule:
    """`mod` with some functions replaced (the same module when there are none)."""
    if not updates:
        return mod
    functions = dict(mod.functions.items())
    functions.update(updates)
    return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)


@relax.expr_functor.mutator
class _Rebind(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, values: dict) -> None:
        super().__init__(mod)
        self.values = values

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.values:
            super().visit_var_binding_(binding)
        elif self.values[binding.var] is not None:
            value = self.builder_.normalize(self.visit_expr(self.values[binding.var]))
            self.builder_.emit_normalized(relax.VarBinding(binding.var, value))


def rebind(mod: tvm.IRModule, func: relax.Function, values: dict) -> relax.Function:
    """`func` with the listed bindings given new values (None: dropped), each keeping its
    variable, so the uses, plans and names stay as they were."""
    return _Rebind(mod, values).visit_expr(func)


def plan_module(mod: tvm.IRModule) -> list[Chain]:
    """The chains of every graph function of `mod`."""
    return [chain for _, func in graph_functions(mod) for chain in plan_chains(func).values()]


# --- the patterns -------------------------------------------------------------------------------


def pattern_name(labels: Iterable[str]) -> str:
    """convadd.conv2d, convadd.conv2d_bias_residual_relu: the composite names its steps."""
    return f"{CODEGEN}.conv2d" + "".join(f"_{label}" for label in labels)


def composite_labels(name: str) -> list[str] | None:
    """The step labels of a composite name, None if `pattern_name` did not make it."""
    prefix = f"{CODEGEN}.conv2d"
    if not name.startswith(prefix):
        return None
    labels = [label for label in name[len(prefix) :].split("_") if label]
    return labels if set(labels) <= STEP_LABELS else None


def chain_pattern(shape_key: tuple) -> tuple[DFPattern, dict[str, DFPattern]]:
    """The exact pattern of one chain shape: conv2d, then each step with its operand in place."""
    conv = is_op(CONV2D)(wildcard(), wildcard())
    out = conv
    for op, _label, position in shape_key:
        if position is None:
            out = is_op(op)(out, wildcard(), wildcard()) if op == CLIP else is_op(op)(out)
        else:
            args = [wildcard(), wildcard()]
            args[position] = out
            out = is_op(op)(*args)
    return out, {"conv": conv, "root": out}


def pattern_table(mod: tvm.IRModule) -> list[FusionPattern]:
    """The table for `relax.transform.FuseOpsByPattern`: one pattern per chain shape planned in
    `mod`, longest first, each accepting exactly the planned chains of its shape.

    The check knows the chains by their bindings' variables, which FuseOpsByPattern keeps while
    it outlines one pattern after another, so the table fits `mod` and nothing else.
    """
    regions: dict[tuple, set[frozenset]] = {}
    for chain in plan_module(mod):
        scalar = [step.var.name for step in chain.steps if step.op in (MAXIMUM, MINIMUM)]
        if scalar:
            raise ConvAddError(
                f"{scalar[0]} is a maximum/minimum with a constant, which FuseOpsByPattern "
                "would pass as a parameter: run partition.clip_scalar_bounds on the module "
                "first (PartitionConvAdd does)"
            )
        regions.setdefault(chain.shape_key, set()).add(chain.region)
    table = []
    for shape_key in sorted(regions, key=lambda key: (-len(key), pattern_name(_labels(key)))):
        pattern, annotations = chain_pattern(shape_key)
        check = _planned_check(frozenset(regions[shape_key]))
        table.append(FusionPattern(pattern_name(_labels(shape_key)), pattern, annotations, check))
    return table


def _labels(shape_key: tuple) -> list[str]:
    return [label for _op, label, _position in shape_key]


def _planned_check(regions: frozenset[frozenset]):
    def check(context: PatternCheckContext) -> bool:
        return frozenset(context.matched_bindings.keys()) in regions

    return check
