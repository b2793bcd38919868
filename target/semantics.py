"""What a stage block computes, read from its TIR body: the checked half of the lowering.

Each stage block becomes one instruction, so its body must compute exactly that instruction's
semantics (Exo's checked instructions). A CONV block must be a zero-initialised
multiply-accumulate whose input index is `y*stride + r` over the weight's whole C x R x S, its
input channel `(k // ng) * cg + c` for a grouped conv; an ADD block a chain of ALU ops over the
accumulator (add, mul, max, min; each with an out-shaped tensor, a per-channel vector or a
constant); a LOAD a copy from DRAM guarded by the bounds of its source; a STORE a copy to DRAM.
`read_meaning` returns the stride, groups, op list and padding sides it found, or raises a
one-line ProgramError naming the block, the expected form and what it found.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import tvm
import tvm_ffi
from tvm import sym, tirx

from tvm_convadd.errors import ProgramError
from tvm_convadd.target.annotations import (
    BUFFER_ATTR,
    EPILOGUE_KINDS,
    UNIT_ATTR,
    UNIT_BUFFERS,
    epilogue_family,
    unit_fills,
)
from tvm_convadd.target.isa import UNITS

if TYPE_CHECKING:
    from tvm_convadd.target.lower import _Walker


def substitute(expr, env: dict):
    if not env:
        return expr
    return tvm_ffi.structural_map(
        expr,
        (tvm.ir.Var, lambda var: tirx.const(env[var], str(var.ty)) if var in env else var),
        order="post",
    )


_FORMS = {
    "load": "a copy dst[i] = src[i + o], zero outside src: if_then_else(bounds of src, src, 0)",
    "conv": (
        "acc[n, k, y, x] = 0 (or, on a later chunk of a reduction split, nothing), then += "
        "inp[n, (k // ng) * cg + c, y*sh + r, x*sw + s] * wgt[k, c, r, s]"
    ),
    "add": (
        "out = a chain v = op(v, x) from v = acc, op add/mul/max/min, x a tensor res[n, k, y, x],"
        " a channel vector bias[0, k, 0, 0] or a constant"
    ),
    "store": "a copy dram[i + o] = out[i]",
}


@dataclass(frozen=True)
class Meaning:
    """What one stage block computes: the instruction it becomes and that instruction's fields."""

    block: str
    unit: str
    buffer: str  # the on-chip buffer it fills ("store": the DRAM output)
    stride: tuple[int | None, int | None] = (None, None)  # conv; None: the tile has one row/col
    group_size: int | None = None  # conv: ng, None when the input channel ignores k
    group_var: object = None  # conv: the loop over k that the group index divides
    group_offset: object = None  # conv: b in (k + b) // ng, an expression of the outer loops
    accumulate: bool | None = False  # conv: no init (a later chunk); None: the tile decides
    init_guard: object = None  # conv with accumulate None: the init's condition, outer loops in
    ops: tuple[tuple[str, str, str | None, float | None], ...] = ()  # add: (op, kind, buf, value)
    fill: str = ""  # load: "copy", "padded" or "zero" (a window wholly in padding)
    unguarded: tuple[tuple[int, int], ...] = ()  # load: (dim, 0 low / 1 high) read unchecked
    residual: tuple = ()  # load: (slack, atom) of comparisons no bound until the tile is known
    slacks: tuple = ()  # load: every comparison of the condition as an expression >= 0
    bounds: tuple = ()  # load: ((dim, side), expression >= 0) of each bound of the source
    indexing: Indexing | None = None  # load: the loop nest, for the residual comparisons


def mismatch(block, unit: str, found: str) -> ProgramError:
    return ProgramError(
        f"stage block {block.name_hint!r} ({unit} unit) must compute {_FORMS[unit]}, but {found}"
    )


def show_expr(node) -> str:
    """A TIR node (or a list of index expressions) on one line, cut short."""
    if isinstance(node, (list, tuple, tvm_ffi.Array)):
        text = "[" + ", ".join(show_expr(item) for item in node) + "]"
    else:
        text = " ".join(str(node).split())
    return text if len(text) <= 100 else text[:97] + "..."


class _Shown:
    """A buffer access (a load or a store) as text, printed only when a message needs it."""

    def __init__(self, access) -> None:
        self.access = access

    def __str__(self) -> str:
        access = self.access
        buffer = access.source if isinstance(access, tvm.ir.TensorLoad) else access.buffer
        return f"{buffer.name}{show_expr(access.indices)}"


class Indexing:
    """Affine index analysis over a stage nest's loops; a loop of extent 1 is a constant."""

    def __init__(self, loops, analyzer: sym.Analyzer, body) -> None:
        self.loops = [(var, lo, extent) for var, lo, extent in loops if extent > 1]
        self.vars = [var for var, _, _ in self.loops]
        fixed = {var: lo for var, lo, extent in loops if extent == 1}
        if fixed:  # StmtSimplify has usually folded them already: skip substituting then
            used = {var.__chandle__() for var in vars_in(body)}
            fixed = {var: lo for var, lo in fixed.items() if var.__chandle__() in used}
        self.fixed = fixed
        self.fixed_handles = {var.__chandle__() for var in fixed}
        self.position = {var.__chandle__(): j for j, var in enumerate(self.vars)}
        self.analyzer = analyzer

    @property
    def ranges(self):
        """The loop nest's domain as a condition."""
        return tirx.all(
            tirx.const(True), *(c for v, lo, e in self.loops for c in (v >= lo, v < lo + e))
        )

    def expr(self, expr):
        return substitute(expr, self.fixed)

    def coefficients(self, index) -> tuple[int, ...] | None:
        """The constant coefficient of each loop variable in `index`, None if not affine."""
        if not self.vars:
            return ()
        if isinstance(index, tirx.IntImm):  # the common cases, without a round trip to C++
            return self.unit(None)
        if isinstance(index, tvm.ir.Var) and index.__chandle__() not in self.fixed_handles:
            return self.unit(self.position.get(index.__chandle__()))
        found = sym.detect_linear_equation(self.expr(index), self.vars)
        if not found:
            return None
        values = []
        for coefficient in list(found)[:-1]:
            if not isinstance(coefficient, tirx.IntImm):
                coefficient = self.analyzer.simplify(coefficient)
            if not isinstance(coefficient, tirx.IntImm):
                return None
            values.append(int(coefficient.value))
        return tuple(values)

    def rows(self, indices) -> list[tuple[int, ...]] | None:
        """One coefficient row per dimension; a versioned buffer's slot index must be fixed."""
        rows = [self.coefficients(index) for index in indices]
        if any(row is None for row in rows):
            return None
        if len(rows) == 5:  # [slot, n, c, h, w]: the slot does not move within a stage
            if any(rows[0]):
                return None
            rows = rows[1:]
        return rows

    def unit(self, position: int | None, scale: int = 1) -> tuple[int, ...]:
        """The row of an index that moves with loop `position` (times `scale`), or not at all."""
        return tuple(scale * (j == position) for j in range(len(self.vars)))

    def pure(self, rows) -> list[int | None] | None:
        """The loop each dimension follows with coefficient 1 (or None), no loop twice."""
        if rows is None:
            return None
        dims = []
        for row in rows:
            moving = [j for j, c in enumerate(row) if c]
            if len(moving) > 1 or (moving and row[moving[0]] != 1):
                return None
            dims.append(moving[0] if moving else None)
        used = [j for j in dims if j is not None]
        return dims if len(used) == len(set(used)) else None

    def name(self, position: int) -> str:
        return str(self.vars[position])


def read_meaning(block, ix: Indexing, walker: _Walker) -> Meaning:
    """Match the block's body against the semantics of the instruction its annotations claim."""
    unit, buffer = str(block.annotations[UNIT_ATTR]), str(block.annotations[BUFFER_ATTR])
    if unit not in UNIT_BUFFERS:
        raise ProgramError(f"stage for unknown unit {unit!r}; units are {UNITS}")
    if not unit_fills(unit, buffer):
        also = "res, bias, scale (res_2, ...)" if unit == "vload" else ""
        raise ProgramError(
            f"stage block {block.name_hint!r} ({unit} unit) fills {buffer!r}: a {unit} stage "
            f"fills {also or 'one of ' + str(list(UNIT_BUFFERS[unit]))}"
        )
    check = {
        "load": _load_meaning,
        "vload": _load_meaning,
        "conv": _conv_meaning,
        "add": _add_meaning,
    }
    meaning = Meaning(block.name_hint, unit, buffer)
    return check.get(unit, _store_meaning)(block, ix, walker, meaning)


def _is_zero(expr) -> bool:
    return isinstance(expr, tirx.FloatImm) and float(expr.value) == 0.0


def _is_int(expr, value: int) -> bool:
    return isinstance(expr, tirx.IntImm) and int(expr.value) == value


def _conjuncts(expr) -> list:
    if isinstance(expr, tirx.And):
        return _conjuncts(expr.a) + _conjuncts(expr.b)
    return [expr]


def _terms(expr) -> list:
    if isinstance(expr, tirx.Add):
        return _terms(expr.a) + _terms(expr.b)
    return [expr]


def _slack(atom):
    """An integer comparison as the expression it says is >= 0, else None."""
    if isinstance(atom, tirx.LE):
        return atom.b - atom.a
    if isinstance(atom, tirx.LT):
        return atom.b - atom.a - 1
    if isinstance(atom, tirx.GE):
        return atom.a - atom.b
    if isinstance(atom, tirx.GT):
        return atom.a - atom.b - 1
    return None


def vars_in(expr) -> list:
    """The variables an expression reads (repeats included)."""
    found = []
    tvm_ffi.structural_walk(expr, (tvm.ir.Var, found.append), order="pre")
    return found


def _describe(expr) -> str:
    kinds = {
        tirx.Mul: "a multiply",
        tirx.Sub: "a subtract",
        tirx.Div: "a divide",
        tirx.Max: "a max",
        tirx.Min: "a min",
        tirx.FloatImm: "a constant",
        tirx.IntImm: "a constant",
        tirx.Cast: "a cast",
        tvm.ir.TensorLoad: "a load",
    }
    kind = next((name for cls, name in kinds.items() if isinstance(expr, cls)), "a term")
    return f"{kind} {show_expr(expr)}"


def _single_store(block, unit: str):
    if not isinstance(block.body, tirx.BufferStore):
        raise mismatch(block, unit, f"its body is {show_expr(block.body)}")
    return block.body


def _check_elementwise(block, unit: str, ix: Indexing, read, store, rows) -> None:
    """`read` must walk its buffer element by element with `store` (index rows `rows`)."""
    if ix.rows(read.indices) != rows:
        raise mismatch(
            block, unit, f"{_Shown(read)} does not follow {_Shown(store)} element by element"
        )


def _copy_rows(block, unit: str, ix: Indexing, store):
    """The destination rows of an elementwise store: every loop indexes one dimension."""
    rows = ix.rows(store.indices)
    dims = ix.pure(rows)
    if dims is None or sorted(j for j in dims if j is not None) != list(range(len(ix.vars))):
        raise mismatch(
            block,
            unit,
            f"it writes {_Shown(store)}, not one element per iteration",
        )
    return rows


def _load_meaning(block, ix: Indexing, walker: _Walker, meaning: Meaning) -> Meaning:
    store = _single_store(block, "load")
    if store.buffer.name in walker.dram:
        raise mismatch(block, "load", f"it writes the DRAM tensor {store.buffer.name}")
    dst = _copy_rows(block, "load", ix, store)
    value = store.value
    if _is_zero(value):
        return replace(meaning, fill="zero")
    guard = None
    if isinstance(value, tvm.ir.Call) and getattr(value.op, "name", "") == "prim.if_then_else":
        guard, value, other = value.args
        if not _is_zero(other):
            raise mismatch(block, "load", f"it pads with {show_expr(other)}, not 0")
    if not isinstance(value, tvm.ir.TensorLoad) or walker._role(value.source)[0] != "dram":
        raise mismatch(block, "load", f"it stores {show_expr(store.value)}")
    _check_elementwise(block, "load", ix, value, store, dst)
    sides = {(dim, side) for dim in range(len(value.indices)) for side in (0, 1)}
    if guard is None:
        return replace(meaning, fill="copy", unguarded=tuple(sorted(sides)))
    bounds = []  # ((dim, side), the expression that side's bound says is >= 0, its row)
    for dim, (index, extent) in enumerate(zip(value.indices, value.source.shape)):
        index, row = ix.expr(index), dst[dim]
        bounds += [((dim, 0), index, row), ((dim, 1), int(extent) - 1 - index, _neg(row))]
    residual = []  # comparisons TVM rewrote knowing the outer loops' ranges: seen per tile
    every = []
    for atom in _conjuncts(ix.expr(guard)):
        slacks = _slacks(atom)
        every += slacks or []
        if slacks is None:
            raise mismatch(
                block,
                "load",
                f"its condition tests {show_expr(atom)}, which is no bound of "
                f"{_Shown(value)} in {list(value.source.shape)}",
            )
        for slack in slacks:
            side = bound_side(ix, slack, bounds)
            if side is None:
                residual.append((slack, atom))
            elif side != "always":
                sides.discard(side)
    return replace(
        meaning,
        fill="padded",
        unguarded=tuple(sorted(sides)),
        residual=tuple(residual),
        slacks=tuple(every),
        bounds=tuple(bounds),
        indexing=ix,
    )


def _neg(row: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-c for c in row)


def _slacks(atom) -> list | None:
    """An integer comparison as the expressions it says are >= 0 (two for ==), else None."""
    if isinstance(atom, tirx.EQ):
        return [atom.a - atom.b, atom.b - atom.a]
    slack = _slack(atom)
    return None if slack is None else [slack]


def bound_side(ix: Indexing, slack, bounds):
    """The (dim, side) whose bound of the source index `slack >= 0` is, "always" if it holds
    on the whole loop nest (TVM folds bounds it knows into others, `1 <= i < 9` on i in 0..1
    into `i == 1`), else None."""
    slack = ix.analyzer.simplify(slack)
    moves = ix.coefficients(slack)
    for side, bound, row in bounds:
        if moves is not None and moves != row:
            continue  # it moves differently with the loops: it is not this bound
        if _is_int(ix.analyzer.simplify(slack - bound), 0):
            return side
    if isinstance(slack, tirx.IntImm):
        return "always" if slack.value >= 0 else None
    with ix.analyzer.constraint_scope(ix.ranges):
        return "always" if ix.analyzer.can_prove(slack >= 0) else None


def _store_meaning(block, ix: Indexing, walker: _Walker, meaning: Meaning) -> Meaning:
    store = _single_store(block, "store")
    if store.buffer.name not in walker.dram:
        raise mismatch(block, "store", f"it writes the on-chip {store.buffer.name}")
    dst = _copy_rows(block, "store", ix, store)
    value = store.value
    if not isinstance(value, tvm.ir.TensorLoad) or walker._role(value.source) != ("chip", "out"):
        raise mismatch(block, "store", f"it stores {show_expr(value)}")
    _check_elementwise(block, "store", ix, value, store, dst)
    return meaning


_ALU_NODES = {tirx.Add: "add", tirx.Mul: "mul", tirx.Max: "max", tirx.Min: "min"}


def _add_meaning(block, ix: Indexing, walker: _Walker, meaning: Meaning) -> Meaning:
    """Peel the epilogue expression from the outside in: each node is one ALU op whose one
    side is the chain so far (it reads acc) and whose other side is its operand."""
    store = _single_store(block, "add")
    out = _copy_rows(block, "add", ix, store)
    value, ops = store.value, []

    def reads_acc(expr) -> bool:
        found = []

        def visit(node):
            if walker._role(node.source) == ("chip", "acc"):
                found.append(node)

        tvm_ffi.structural_walk(expr, (tvm.ir.TensorLoad, visit), order="pre")
        return bool(found)

    while not (
        isinstance(value, tvm.ir.TensorLoad) and walker._role(value.source) == ("chip", "acc")
    ):
        op = _ALU_NODES.get(type(value))
        if op is None:
            raise mismatch(block, "add", f"it computes {_describe(value)} in {show_expr(store)}")
        left, right = reads_acc(value.a), reads_acc(value.b)
        if left == right:
            which = "both sides of {} read" if left else "neither side of {} reads"
            raise mismatch(block, "add", which.format(show_expr(value)) + " acc")
        chain, operand = (value.a, value.b) if left else (value.b, value.a)
        ops.append((op, *_alu_operand(block, ix, walker, store, out, op, operand)))
        value = chain
    _check_elementwise(block, "add", ix, value, store, out)
    return replace(meaning, ops=tuple(reversed(ops)))


def _alu_operand(block, ix: Indexing, walker: _Walker, store, out, op: str, operand):
    """(kind, buffer, value) of one ALU op's operand: a constant, an out-shaped tensor or a
    per-channel vector, from an epilogue operand's buffer that holds that kind."""
    if isinstance(operand, tirx.FloatImm):
        return "const", None, float(operand.value)
    if not isinstance(operand, tvm.ir.TensorLoad):
        raise mismatch(block, "add", f"it {op}s {_describe(operand)} in {show_expr(store)}")
    where, name = walker._role(operand.source)
    family = epilogue_family(name) if where == "chip" else None
    if family is None:
        raise mismatch(block, "add", f"it {op}s {_Shown(operand)}, no epilogue operand's buffer")
    rows, zero = ix.rows(operand.indices), ix.unit(None)
    kinds = {
        kind
        for kind, form in (("tensor", out), ("channel", [zero, out[1], zero, zero]))
        if rows == form
    }
    holds = EPILOGUE_KINDS[family]
    if not kinds:
        raise mismatch(
            block,
            "add",
            f"{_Shown(operand)} is neither {_Shown(store)} element by element nor its "
            "channel's [0, k, 0, 0]",
        )
    if holds not in kinds:  # both forms agree where n, y and x are fixed: the buffer decides
        raise mismatch(
            block, "add", f"it reads {_Shown(operand)} as a {kinds.pop()}; {name} holds a {holds}"
        )
    return holds, name, None


def _conv_meaning(block, ix: Indexing, walker: _Walker, meaning: Meaning) -> Meaning:
    def fail(found: str) -> ProgramError:
        return mismatch(block, "conv", found)

    body = block.body
    stmts = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
    if len(stmts) != 2:
        raise fail(f"its body has {len(stmts)} statement(s), not an init and an update")
    init, update = stmts
    guard = None
    if isinstance(init, tirx.IfThenElse) and init.else_case is None:
        guard, init = init.condition, init.then_case
    if not isinstance(init, tirx.BufferStore) or not isinstance(update, tirx.BufferStore):
        raise fail(f"its body is {show_expr(body)}")
    acc_name = _Shown(update)
    same = init.buffer.name == update.buffer.name
    if not (same and tvm_ffi.structural_equal(init.indices, update.indices)) or not _is_zero(
        init.value
    ):
        raise fail(f"its init {show_expr(init)} does not zero {acc_name}")
    value = update.value
    summands = _terms(value)
    mine = [
        t
        for t in summands
        if isinstance(t, tvm.ir.TensorLoad)
        and t.source.name == update.buffer.name
        and tvm_ffi.structural_equal(t.indices, update.indices)
    ]
    if len(mine) != 1:
        raise fail(
            f"its update stores {show_expr(value)}, which does not accumulate into {acc_name}"
        )
    others = [t for t in summands if not t.same_as(mine[0])]
    if len(others) != 1:
        found = " and ".join(_describe(t) for t in others)
        raise fail(f"it accumulates {found}, not one product inp * wgt")
    (product,) = others
    factors = [product.a, product.b] if isinstance(product, tirx.Mul) else []
    loads = {}
    for factor in factors:
        if isinstance(factor, tvm.ir.TensorLoad):
            loads[walker._role(factor.source)] = factor
    if set(loads) != {("chip", "inp"), ("chip", "wgt")}:
        raise fail(f"it accumulates {_describe(product)}, not inp * wgt")
    inp, wgt = loads[("chip", "inp")], loads[("chip", "wgt")]
    inp_text, wgt_text = _Shown(inp), _Shown(wgt)
    channel_dim = len(inp.indices) - 3  # [slot,] n, c, h, w
    inp_channel = inp.indices[channel_dim]
    inp_indices = list(inp.indices)
    inp_indices[channel_dim] = tirx.const(0, "int32")  # checked on its own: (k // ng) * cg + c

    out = ix.pure(ix.rows(update.indices))
    if out is None or len(out) != 4:
        raise fail(f"it accumulates into {acc_name}, not acc[n, k, y, x] of its loops")
    reduction = [j for j in range(len(ix.vars)) if j not in out]
    wgt_rows, inp_rows = ix.rows(wgt.indices), ix.rows(inp_indices)
    if wgt_rows is None or len(wgt_rows) != 4 or inp_rows is None or len(inp_rows) != 4:
        raise fail(f"{inp_text} * {wgt_text} is not indexed affinely by its loops")
    if wgt_rows[0] != ix.unit(out[1]):
        raise fail(f"the weight's output channel in {wgt_text} is not acc's in {acc_name}")
    taps = []  # the loop over c, r and s: each indexes one weight dimension, coefficient 1
    for dim, what in ((1, "c"), (2, "r"), (3, "s")):
        (tap,) = ix.pure([wgt_rows[dim]]) or [-1]
        if tap == -1 or (tap is not None and tap not in reduction):
            raise fail(f"the weight's {what} in {wgt_text} is not a reduction loop")
        taps.append(tap)
    if sorted(t for t in taps if t is not None) != reduction:
        names = [ix.name(j) for j in reduction]
        raise fail(f"its reduction loops {names} do not index wgt's c, r and s once each")
    if inp_rows[0] != ix.unit(out[0]):
        raise fail(f"the input's batch in {inp_text} is not acc's in {acc_name}")
    group_size, group_offset = _group_form(inp_channel, out[1], taps[0], ix, inp_text, fail)
    stride = []
    for dim, axis, pixel, tap in ((2, "h", out[2], taps[1]), (3, "w", out[3], taps[2])):
        row = inp_rows[dim]
        step = row[pixel] if pixel is not None else None
        if tap is not None and row[tap] != 1:
            raise fail(f"the input's {axis} in {inp_text} steps {row[tap]} per tap: dilation")
        if step is not None and step < 1:
            raise fail(f"the input's {axis} in {inp_text} moves {step} per output pixel")
        expected = tuple(a + b for a, b in zip(ix.unit(pixel, step or 0), ix.unit(tap)))
        if row != expected:
            raise fail(f"the input's {axis} in {inp_text} is not y*stride + r of acc and wgt")
        stride.append(step)
    reduction_loops = [ix.loops[j] for j in reduction]
    outer = guard is not None and any(
        var.__chandle__() not in ix.position and var.__chandle__() not in ix.fixed_handles
        for var in vars_in(guard)
    )
    accumulate = None if outer else init_mode(guard, reduction_loops, ix, fail)
    return replace(
        meaning,
        accumulate=accumulate,
        init_guard=(guard, reduction_loops, ix) if outer else None,
        stride=tuple(stride),
        group_size=group_size,
        group_var=None if group_size is None else ix.vars[out[1]],
        group_offset=group_offset,
    )


def _group_form(index, k: int | None, c: int | None, ix: Indexing, inp_text: str, fail):
    """(ng, b) of an input channel index `((k + b) // ng) * cg + c` (b: outer loops only), with
    cg the extent of the weight's c loop; (None, None) for plain `c` (no groups within the
    block), (1, 0) for `k * cg + c`."""
    cg = 1 if c is None else ix.loops[c][2]
    expected = ix.unit(c)
    index = ix.analyzer.simplify(ix.expr(index))
    row = ix.coefficients(index)
    if row == expected:
        return None, None
    if k is not None and row == tuple(a + b for a, b in zip(ix.unit(k, cg), expected)):
        return 1, tirx.const(0, "int32")
    divisions = []
    tvm_ffi.structural_walk(index, (tirx.FloorDiv, divisions.append), order="pre")
    shown = f"the input channel in {inp_text}"
    if row is not None or k is None or len(divisions) != 1:
        raise fail(f"{shown} is not (k // ng) * {cg} + c of acc's k and wgt's c")
    (division,) = divisions
    numerator, size = division.a, division.b
    by_size = isinstance(size, tirx.IntImm) and size.value >= 1
    if not by_size or ix.coefficients(numerator) != ix.unit(k):
        raise fail(f"{shown} divides {show_expr(division)}, not acc's k by a group size")
    group = tirx.Var("group", "int32")
    flat = tvm_ffi.structural_map(index, (tirx.FloorDiv, lambda _: group), order="post")
    found = sym.detect_linear_equation(flat, [*ix.vars, group])
    coefficients = [ix.analyzer.simplify(x) for x in list(found)[:-1]] if found else []
    wanted = [*expected, cg]
    if [int(x.value) if isinstance(x, tirx.IntImm) else None for x in coefficients] != wanted:
        raise fail(f"{shown} is not (k // {size.value}) * {cg} + c of acc's k and wgt's c")
    offset = ix.analyzer.simplify(numerator - ix.vars[k])
    return int(size.value), offset


def init_mode(guard, reduction: list, ix: Indexing, fail) -> bool:
    """Whether a CONV accumulates: its init never runs (a guard false on the whole nest, as on
    a reduction split's later chunks), else it must run exactly on the reduction's first step."""
    if guard is not None:
        with ix.analyzer.constraint_scope(ix.ranges):
            if ix.analyzer.can_prove(tirx.Not(ix.expr(guard))):
                return True
    _check_init_guard(guard, reduction, ix, fail)
    return False


def _check_init_guard(guard, reduction: list, ix: Indexing, fail) -> None:
    """The init must run exactly on the first step of the reduction loops."""
    loops = {var.__chandle__(): (var, lo, extent) for var, lo, extent in reduction}
    guarded = set()
    for atom in [] if guard is None else _conjuncts(ix.expr(guard)):
        handle = _first_step(atom, loops, ix)
        if handle is None:
            raise fail(f"its init runs under {show_expr(guard)}, not on the reduction's first step")
        guarded.add(handle)
    guarded.discard("always")
    if len(guarded) != len(loops):
        found = "on every step" if guard is None else f"under {show_expr(guard)}"
        raise fail(f"its init runs {found}, not only on the reduction's first step")


def _first_step(atom, loops: dict, ix: Indexing):
    """The reduction loop (its handle) that `atom` holds on the first step of only, "always"
    for an atom that always holds, else None."""
    if isinstance(atom, tirx.EQ) and isinstance(atom.a, tvm.ir.Var):  # as LowerInitBlock says
        loop = loops.get(atom.a.__chandle__())
        if loop is not None and _is_int(atom.b, loop[1]):
            return atom.a.__chandle__()
    atom = ix.analyzer.simplify(atom)
    if _is_int(atom, 1):
        return "always"
    used = {var.__chandle__(): var for var in vars_in(atom)}
    if len(used) != 1 or next(iter(used)) not in loops:
        return None
    var, lo, extent = loops[next(iter(used))]
    if not _is_int(ix.analyzer.simplify(substitute(atom, {var: lo})), 1):
        return None
    with ix.analyzer.constraint_scope(tirx.all(var > lo, var < lo + extent)):
        return var.__chandle__() if ix.analyzer.can_prove(tirx.Not(atom)) else None
