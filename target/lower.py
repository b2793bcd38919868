"""LowerToProgram: scheduled TensorIR -> one instruction stream per accelerator unit.

The schedule marks every block with the unit that runs it (`convadd.unit`) and the on-chip
buffer it fills (`convadd.buffer`; the names live in `tvm_convadd.target.annotations`). We run
TVM's own lowering up to InjectSoftwarePipeline (which versions the stage-crossing buffers into
ping/pong slots), then walk the result in program order: loops over tiles are unrolled by
interpretation, and each stage block becomes one instruction whose operands are the exact
regions its loop nest touches (the predicate of a ragged last tile included). Why not
`tensorize`: a tensor intrinsic has one fixed shape and cannot match the predicated last tile
when N does not divide the axis; the region analysis below reads the same operands from the
same TIR and works for every tile.

Checked instructions (Exo's idea): the annotations are claims, and the lowering checks each
stage block's body against the semantics of the instruction it becomes before emitting it. A
CONV block must be the multiply-accumulate `acc[n, k, y, x] += inp[n, c, y*sh + r, x*sw + s] *
wgt[k, c, r, s]` after a zero init, reducing over the weight's whole C x R x S, with groups 1
and dilation 1; its stride is read off the input's index, never taken from the Workload (a
tile of one output row shows no stride along it, and any stride computes the same there: the
CONV says 1). An ADD block must be `acc [+ bias[k]] + res` in any operand order, optionally
under `max(., 0)`, which gives its relu. A LOAD must be a copy, possibly guarded by exactly
the bounds of the source (its padding: zeros outside the tensor), and a STORE a copy. A block
that computes anything else raises a one-line ProgramError naming the block, the expected form
and what it found. Each distinct block is checked once; per tile, a few integers are compared.

Dependency tokens are then derived from the operands alone: an instruction waits for the
last writer of every slot region it reads (RAW) and for the readers and writer of every slot
region it overwrites (WAR, WAW) on other units, keeping only the tokens not already implied.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import tvm
import tvm_ffi
from tvm import s_tir, sym, tirx

from tvm_convadd.errors import BufferOverflowError, ProgramError
from tvm_convadd.schedules.convadd import schedule_convadd
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.annotations import BUFFER_ATTR, STAGE_ROOT_ATTR, UNIT_ATTR, UNIT_BUFFERS
from tvm_convadd.target.isa import (
    UNITS,
    Add,
    BufferDecl,
    Conv,
    Dram,
    Instruction,
    Load,
    Program,
    Region,
    Slot,
    Store,
)
from tvm_convadd.target.simulator import overflowing

if TYPE_CHECKING:
    from tvm_convadd.target.hardware import HardwareConfig

_LOWER_PASSES = [
    s_tir.transform.CanonicalizeLoop(),
    s_tir.transform.LowerInitBlock(),
    s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
    s_tir.transform.ConvertBlocksToOpaque(),
    s_tir.transform.CompactBufferAllocation(),
    s_tir.transform.LowerMatchBuffer(),
    s_tir.transform.StmtSimplify(),
    s_tir.transform.InjectSoftwarePipeline(),
]


def lower_tir(mod: tvm.IRModule) -> tvm.IRModule:
    """TVM's lowering of the scheduled module, stopped where blocks and multi-dim buffers remain."""
    mod = tirx.transform.BindTarget(tvm.target.Target("llvm"))(mod)
    return tvm.transform.Sequential(_LOWER_PASSES)(mod)


def lower_to_program(
    workload: Workload, config: TileConfig, hardware: HardwareConfig | None = None
) -> Program:
    """Schedule, lower and walk: the Program that runs `workload` tiled as `config`.

    With `hardware`, buffers are checked against its capacities (BufferOverflowError names the
    smallest tile count that fits)."""
    program = lower_module(schedule_convadd(workload, config).mod, workload, config)
    if hardware is not None:
        check_fits(program, hardware, workload, config)
    return program


def lower_module(
    mod: tvm.IRModule, workload: Workload | None = None, config: TileConfig | None = None
) -> Program:
    """LowerToProgram proper: the Program a scheduled module's `main` computes, read from its TIR.

    Every stage block is checked against the instruction it becomes (ProgramError if it computes
    something else); CONV strides, ADD relu and bias come from the blocks' bodies. DRAM tensors
    are the PrimFunc's params, named after their buffers, the last one (the result) `output`.
    With `workload`, the module must compute it: the same tensors, and the strides, relu and
    bias the blocks compute are the workload's. `workload` and `config` go into the meta."""
    func = lower_tir(mod)["main"]
    params = list(func.params)
    names = [param.name for param in params[:-1]] + ["output"]
    if len(set(names)) != len(names):
        raise ProgramError(f"the PrimFunc's params {[p.name for p in params]} need unique names")
    tensors = {name: tuple(int(d) for d in p.shape) for name, p in zip(names, params)}
    walker = _Walker({param.name: name for param, name in zip(params, names)}, tensors)
    walker.visit(func.body, {})
    dtype = str(params[-1].dtype)
    if workload is not None:
        _check_claims(walker, tensors, dtype, workload)
    meta = {}
    if workload is not None:
        meta["workload"] = workload.to_dict()
    if config is not None:
        meta["config"] = config.to_dict()
    streams = derive_tokens(drop_dead(walker.instructions))
    return Program(streams, dict(walker.decls), tensors, dtype, meta)


def _check_claims(walker: _Walker, tensors: dict, dtype: str, workload: Workload) -> None:
    """The module computes `workload`: its tensors, and what its blocks compute (not assumed)."""
    names = [*workload.input_names, "output"]
    expected = dict(zip(names, [*workload.input_shapes, workload.out_shape]))
    if tensors != expected or dtype != workload.dtype:
        raise ProgramError(
            f"the module's tensors {_shapes(tensors)} ({dtype}) are not those of {workload}: "
            f"{_shapes(expected)} ({workload.dtype})"
        )
    for meaning in walker.meanings.values():
        where = f"stage block {meaning.block!r}"
        if meaning.unit == "conv":
            for axis, got, claimed in zip("hw", meaning.stride, workload.stride):
                if got is not None and got != claimed:
                    raise ProgramError(
                        f"{where} computes a conv with stride {got} along {axis}; the workload "
                        f"{workload} claims {claimed}"
                    )
        elif meaning.unit == "add":
            for what, got, claimed in (
                ("relu", meaning.relu, workload.relu),
                ("bias", meaning.bias, workload.bias),
            ):
                if got != claimed:
                    does = "applies" if got else "has no"
                    raise ProgramError(
                        f"{where} {does} {what}; the workload {workload} claims {what}={claimed}"
                    )


def _shapes(tensors: dict) -> str:
    return ", ".join(f"{name}{list(shape)}" for name, shape in tensors.items())


@dataclass
class _Access:
    buffer: tirx.Buffer
    indices: list  # one index per dimension (with `extents`: the start of each range)
    extents: list | None = None  # a declared region's extents, else one element per index


@dataclass
class _Walker:
    """Interprets the lowered PrimFunc's tile loops and emits one instruction per stage block."""

    dram: dict  # TIR buffer name -> DRAM tensor name (TIR buffer names are unique here)
    tensors: dict  # DRAM tensor name -> shape: a LOAD clips its window to it, the rest is padding
    analyzer: sym.Analyzer = field(default_factory=sym.Analyzer)
    onchip: dict = field(default_factory=dict)  # TIR buffer name -> on-chip buffer name
    decls: dict = field(default_factory=dict)  # on-chip name -> BufferDecl
    slot_vars: list = field(default_factory=list)  # vthread loops in scope: (var, extent)
    slot_scoped: dict = field(default_factory=dict)  # TIR buffer name -> vthread (var, extent)
    instructions: list = field(default_factory=list)
    meanings: dict = field(default_factory=dict)  # (block handle, loop ranges) -> _Meaning
    sources: dict = field(default_factory=dict)  # on-chip name -> DRAM tensor its LOADs read

    def visit(self, stmt, env: dict) -> None:
        if isinstance(stmt, tirx.SeqStmt):
            for child in stmt.seq:
                self.visit(child, env)
        elif isinstance(stmt, tirx.For):
            self._visit_for(stmt, env)
        elif isinstance(stmt, s_tir.SBlockRealize):
            if self._true(stmt.predicate, env):
                self._visit_block(stmt.block, env)
        elif isinstance(stmt, tirx.IfThenElse):
            if self._true(stmt.condition, env):
                self.visit(stmt.then_case, env)
            elif stmt.else_case is not None:
                self.visit(stmt.else_case, env)
        elif isinstance(stmt, tirx.LetStmt):
            self.visit(stmt.body, {**env, stmt.var: self._const(stmt.value, env)})
        elif hasattr(stmt, "body"):
            self.visit(stmt.body, env)

    def _visit_for(self, loop: tirx.For, env: dict) -> None:
        if STAGE_ROOT_ATTR in loop.annotations:
            self._emit_stage(loop, env)
            return
        is_slot = loop.thread_binding is not None and "vthread" in str(
            loop.thread_binding.thread_tag
        )
        if is_slot:
            self.slot_vars.append((loop.loop_var, self._const(loop.extent, env)))
        start = self._const(loop.min, env)
        for value in range(start, start + self._const(loop.extent, env)):
            self.visit(loop.body, {**env, loop.loop_var: value})
        if is_slot:
            self.slot_vars.pop()

    def _visit_block(self, block, env: dict) -> None:
        if self.slot_vars:  # one copy per virtual thread, as InjectVirtualThread makes
            self.slot_scoped.update({b.name: self.slot_vars[-1] for b in block.alloc_buffers})
        if UNIT_ATTR in block.annotations:
            raise ProgramError(f"stage block {block.name_hint!r} is not under a stage loop")
        self.visit(block.body, env)

    # -- one stage block -> one instruction ------------------------------------------------
    def _emit_stage(self, root: tirx.For, env: dict) -> None:
        loops, predicate, block = self._stage_nest(root, env)
        if block is None or not self._true(predicate, {**env, **{v: lo for v, lo, _ in loops}}):
            return
        domain = self._tighten(loops, predicate, env)
        if domain is None:
            return
        meaning = self._meaning(block, loops)
        store, loads = _accesses(block)
        if meaning.fill == "zero":
            # A window entirely in padding: StmtSimplify folded the body to a constant zero and
            # dropped the tensor read, but the block's declared read region still names it.
            loads = _declared_reads(block)
            if len(loads) != 1 or loads[0].buffer.name not in self.dram:
                raise _mismatch(block, "load", "it fills zeros and declares no one DRAM read")
        write = self._operand(store, env, domain, name=meaning.buffer)
        reads = {self._name(a.buffer): self._operand(a, env, domain) for a in loads}
        self.instructions.append(self._instruction(block, meaning, write, reads, env))

    def _meaning(self, block, loops) -> _Meaning:
        """What the block computes, checked against its annotations (once per distinct block)."""
        key = (block.__chandle__(), tuple((lo, extent) for _, lo, extent in loops))
        meaning = self.meanings.get(key)
        if meaning is None:
            meaning = _read_meaning(block, _Indexing(loops, self.analyzer, block.body), self)
            self.meanings[key] = meaning
        return meaning

    def _role(self, buf: tirx.Buffer) -> tuple[str, str]:
        """("dram", tensor) or ("chip", on-chip name) of a buffer a stage block reads."""
        if buf.name in self.dram:
            return "dram", self.dram[buf.name]
        return "chip", self._name(buf)

    def _stage_nest(self, root: tirx.For, env: dict):
        loops, conditions, stmt = [], [], root
        while True:
            if isinstance(stmt, tirx.For):
                loops.append((stmt.loop_var, self._const(stmt.min, env), stmt.extent))
                stmt = stmt.body
            elif isinstance(stmt, s_tir.SBlockRealize):
                conditions.append(stmt.predicate)
                if UNIT_ATTR in stmt.block.annotations:
                    break
                stmt = stmt.block.body
            elif isinstance(stmt, tirx.IfThenElse) and stmt.else_case is None:
                conditions.append(stmt.condition)
                stmt = stmt.then_case
            else:
                return loops, None, None
        loops = [(var, lo, self._const(ext, env)) for var, lo, ext in loops]
        predicate = tirx.all(*conditions) if conditions else tirx.const(True)
        return loops, predicate, stmt.block

    def _tighten(self, loops, predicate, env):
        """Shrink each loop's extent to where the (monotone) predicate holds: the ragged tile."""
        domain = {}
        lows = {var: lo for var, lo, _ in loops}
        for var, lo, extent in loops:
            hi = lo + extent - 1
            while hi >= lo and not self._true(predicate, {**env, **lows, var: hi}):
                hi -= 1
            if hi < lo:
                return None
            domain[var] = (lo, hi)
        return domain

    def _operand(self, access: _Access, env: dict, domain: dict, name: str | None = None):
        dom = {v: sym.IntervalSet(lo, hi) for v, (lo, hi) in domain.items()}
        bounds = []
        for dim, index in enumerate(access.indices):
            bound = self.analyzer.int_set(self.analyzer.simplify(_substitute(index, env)), dom)
            low, high = int(bound.min_value), int(bound.max_value)
            if access.extents is not None:  # a declared range: its last element bounds it
                last = self.analyzer.simplify(_substitute(index + access.extents[dim] - 1, env))
                high = int(self.analyzer.int_set(last, dom).max_value)
            bounds.append((low, high))
        if access.buffer.name in self.dram:
            region = tuple((lo, hi - lo + 1) for lo, hi in bounds)
            return Dram(self.dram[access.buffer.name], region)
        buffer_name = self._name(access.buffer, name)
        shape = [int(d) for d in access.buffer.shape]
        slot, slots = 0, 1
        if len(shape) == 5:  # versioned by InjectSoftwarePipeline: [slot, n, c, h, w]
            (slot, _), bounds, slots, shape = bounds[0], bounds[1:], shape[0], shape[1:]
        elif access.buffer.name in self.slot_scoped:
            var, slots = self.slot_scoped[access.buffer.name]
            slot = env[var]
        decl = BufferDecl(tuple(shape), slots, str(access.buffer.dtype))
        if self.decls.setdefault(buffer_name, decl) != decl:
            raise ProgramError(f"on-chip buffer {buffer_name!r} used with two shapes")
        return Slot(buffer_name, slot, tuple((lo, hi - lo + 1) for lo, hi in bounds))

    def _name(self, buf: tirx.Buffer, written_as: str | None = None) -> str:
        if buf.name in self.dram:
            return self.dram[buf.name]
        if written_as is not None:
            self.onchip[buf.name] = written_as
        name = self.onchip.get(buf.name)
        if name is None:
            raise ProgramError(f"buffer {buf.name!r} is read before any stage fills it")
        return name

    def _instruction(self, block, meaning: _Meaning, write, reads: dict, env) -> Instruction:
        """The instruction of one tile's instance of a checked block, its operands checked too."""
        if meaning.unit == "load":
            (src,) = reads.values()
            return self._load(block, meaning, write, src, env)
        if meaning.unit == "conv":
            conv = Conv(
                inp=reads["inp"],
                wgt=reads["wgt"],
                acc=write,
                stride=tuple(s or 1 for s in meaning.stride),  # any stride, for one row
            )
            weight = self.tensors.get(self.sources.get("wgt", ""))
            taps = tuple(extent for _, extent in conv.wgt.region[1:])
            if weight is not None and taps != tuple(weight[1:]):
                raise _mismatch(
                    block,
                    "conv",
                    f"it reduces over C x R x S = {taps} of wgt, the weight "
                    f"tensor has {tuple(weight[1:])}",
                )
            return conv
        if meaning.unit == "add":
            return Add(
                acc=reads["acc"],
                res=reads["res"],
                out=write,
                bias=reads.get("bias"),
                relu=meaning.relu,
            )
        (src,) = reads.values()
        return Store(src=src, dst=write)

    def _load(self, block, meaning: _Meaning, dst: Slot, src: Dram, env: dict) -> Load:
        """The LOAD of window `src`, zeros outside the tensor, if that is what the tile does."""
        shape = self.tensors[src.tensor]
        unguarded, zeros = set(meaning.unguarded), meaning.fill == "zero"
        ix = meaning.indexing
        for slack, atom in meaning.residual:
            slack = self.analyzer.simplify(_substitute(slack, env))
            if isinstance(slack, tirx.IntImm) and slack.value < 0:
                zeros = True  # the condition is false on this whole tile
                continue
            bounds = [(side, _substitute(bound, env), row) for side, bound, row in meaning.bounds]
            side = _bound_side(ix, slack, bounds)
            if side is None:
                raise _mismatch(
                    block,
                    "load",
                    f"its condition tests {_text(atom)}, which is no bound of its "
                    f"window {src} of {src.tensor} {list(shape)}",
                )
            unguarded.discard(side)
        for dim, side in () if zeros else unguarded:  # read without a bound check
            start, extent = src.region[dim]
            if (side == 0 and start < 0) or (side == 1 and start + extent > shape[dim]):
                raise _mismatch(
                    block,
                    "load",
                    f"it reads {src} outside the tensor {list(shape)} without a padding condition",
                )
        load = Load.padded(dst, src, shape)
        if zeros and all(extent for _, extent in load.src.region):
            raise _mismatch(block, "load", f"it fills zeros, but its window {src} holds data")
        self.sources[dst.buffer] = src.tensor
        return load

    # -- constant evaluation ---------------------------------------------------------------
    def _const(self, expr, env: dict) -> int:
        value = self.analyzer.simplify(_substitute(expr, env))
        if not isinstance(value, tvm.tirx.IntImm):
            raise ProgramError(f"expected a constant after unrolling the tiles, got {value}")
        return int(value.value)

    def _true(self, expr, env: dict) -> bool:
        return bool(self._const(expr, env))


def _substitute(expr, env: dict):
    if not env:
        return expr
    return tvm_ffi.structural_map(
        expr,
        (tvm.ir.Var, lambda var: tirx.const(env[var], str(var.ty)) if var in env else var),
        order="post",
    )


def _accesses(block) -> tuple[_Access, list[_Access]]:
    """The block's single store and its loads (init stores write the same region)."""
    stores, loads = [], []

    def on_store(node):
        stores.append(_Access(node.buffer, list(node.indices)))

    def on_load(node):
        if all(node.source.name != a.buffer.name for a in loads):
            loads.append(_Access(node.source, list(node.indices)))

    tvm_ffi.structural_walk(
        block.body, [(tirx.BufferStore, on_store), (tvm.ir.TensorLoad, on_load)], order="pre"
    )
    if not stores or len({s.buffer.name for s in stores}) != 1:
        raise ProgramError(f"stage block {block.name_hint!r} must store into exactly one buffer")
    store = stores[-1]
    return store, [a for a in loads if a.buffer.name != store.buffer.name]


def _declared_reads(block) -> list[_Access]:
    """The block's declared read regions (T.reads), for a body with no load left in it."""
    return [
        _Access(r.source, [rng.min for rng in r.region], [rng.extent for rng in r.region])
        for r in block.reads
    ]


# -- checked instructions: what a stage block computes, read from its body -------------------
_FORMS = {
    "load": "a copy dst[i] = src[i + o], zero outside src: if_then_else(bounds of src, src, 0)",
    "conv": "acc[n, k, y, x] = 0, then += inp[n, c, y*sh + r, x*sw + s] * wgt[k, c, r, s]",
    "add": "out = acc [+ bias[k]] + res, optionally max(., 0)",
    "store": "a copy dram[i + o] = out[i]",
}


@dataclass(frozen=True)
class _Meaning:
    """What one stage block computes: the instruction it becomes and that instruction's fields."""

    block: str
    unit: str
    buffer: str  # the on-chip buffer it fills ("store": the DRAM output)
    stride: tuple[int | None, int | None] = (None, None)  # conv; None: the tile has one row/col
    relu: bool = False  # add
    bias: bool = False  # add
    fill: str = ""  # load: "copy", "padded" or "zero" (a window wholly in padding)
    unguarded: tuple[tuple[int, int], ...] = ()  # load: (dim, 0 low / 1 high) read unchecked
    residual: tuple = ()  # load: (slack, atom) of comparisons no bound until the tile is known
    bounds: tuple = ()  # load: ((dim, side), expression >= 0) of each bound of the source
    indexing: _Indexing | None = None  # load: the loop nest, for the residual comparisons


def _mismatch(block, unit: str, found: str) -> ProgramError:
    return ProgramError(
        f"stage block {block.name_hint!r} ({unit} unit) must compute {_FORMS[unit]}, but {found}"
    )


def _text(node) -> str:
    """A TIR node (or a list of index expressions) on one line, cut short."""
    if isinstance(node, (list, tuple, tvm_ffi.Array)):
        text = "[" + ", ".join(_text(item) for item in node) + "]"
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
        return f"{buffer.name}{_text(access.indices)}"


class _Indexing:
    """Affine index analysis over a stage nest's loops; a loop of extent 1 is a constant."""

    def __init__(self, loops, analyzer: sym.Analyzer, body) -> None:
        self.loops = [(var, lo, extent) for var, lo, extent in loops if extent > 1]
        self.vars = [var for var, _, _ in self.loops]
        fixed = {var: lo for var, lo, extent in loops if extent == 1}
        if fixed:  # StmtSimplify has usually folded them already: skip substituting then
            used = {var.__chandle__() for var in _vars_in(body)}
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
        return _substitute(expr, self.fixed)

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


def _read_meaning(block, ix: _Indexing, walker: _Walker) -> _Meaning:
    """Match the block's body against the semantics of the instruction its annotations claim."""
    unit, buffer = str(block.annotations[UNIT_ATTR]), str(block.annotations[BUFFER_ATTR])
    if unit not in UNIT_BUFFERS:
        raise ProgramError(f"stage for unknown unit {unit!r}; units are {UNITS}")
    if buffer not in UNIT_BUFFERS[unit]:
        raise ProgramError(
            f"stage block {block.name_hint!r} ({unit} unit) fills {buffer!r}: a {unit} stage "
            f"fills one of {list(UNIT_BUFFERS[unit])}"
        )
    check = {"load": _load_meaning, "conv": _conv_meaning, "add": _add_meaning}
    meaning = _Meaning(block.name_hint, unit, buffer)
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


def _vars_in(expr) -> list:
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
    return f"{kind} {_text(expr)}"


def _single_store(block, unit: str):
    if not isinstance(block.body, tirx.BufferStore):
        raise _mismatch(block, unit, f"its body is {_text(block.body)}")
    return block.body


def _copy_rows(block, unit: str, ix: _Indexing, store):
    """The destination rows of an elementwise store: every loop indexes one dimension."""
    rows = ix.rows(store.indices)
    dims = ix.pure(rows)
    if dims is None or sorted(j for j in dims if j is not None) != list(range(len(ix.vars))):
        raise _mismatch(
            block,
            unit,
            f"it writes {_Shown(store)}, not one element per iteration",
        )
    return rows


def _load_meaning(block, ix: _Indexing, walker: _Walker, meaning: _Meaning) -> _Meaning:
    store = _single_store(block, "load")
    if store.buffer.name in walker.dram:
        raise _mismatch(block, "load", f"it writes the DRAM tensor {store.buffer.name}")
    dst = _copy_rows(block, "load", ix, store)
    value = store.value
    if _is_zero(value):
        return replace(meaning, fill="zero")
    guard = None
    if isinstance(value, tvm.ir.Call) and getattr(value.op, "name", "") == "prim.if_then_else":
        guard, value, other = value.args
        if not _is_zero(other):
            raise _mismatch(block, "load", f"it pads with {_text(other)}, not 0")
    if not isinstance(value, tvm.ir.TensorLoad) or walker._role(value.source)[0] != "dram":
        raise _mismatch(block, "load", f"it stores {_text(store.value)}")
    if ix.rows(value.indices) != dst:
        raise _mismatch(
            block,
            "load",
            f"{_Shown(value)} does not follow {_Shown(store)} element by element",
        )
    sides = {(dim, side) for dim in range(len(value.indices)) for side in (0, 1)}
    if guard is None:
        return replace(meaning, fill="copy", unguarded=tuple(sorted(sides)))
    bounds = []  # ((dim, side), the expression that side's bound says is >= 0, its row)
    for dim, (index, extent) in enumerate(zip(value.indices, value.source.shape)):
        index, row = ix.expr(index), dst[dim]
        bounds += [((dim, 0), index, row), ((dim, 1), int(extent) - 1 - index, _neg(row))]
    residual = []  # comparisons TVM rewrote knowing the outer loops' ranges: seen per tile
    for atom in _conjuncts(ix.expr(guard)):
        slacks = _slacks(atom)
        if slacks is None:
            raise _mismatch(
                block,
                "load",
                f"its condition tests {_text(atom)}, which is no bound of "
                f"{_Shown(value)} in {list(value.source.shape)}",
            )
        for slack in slacks:
            side = _bound_side(ix, slack, bounds)
            if side is None:
                residual.append((slack, atom))
            elif side != "always":
                sides.discard(side)
    return replace(
        meaning,
        fill="padded",
        unguarded=tuple(sorted(sides)),
        residual=tuple(residual),
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


def _bound_side(ix: _Indexing, slack, bounds):
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


def _store_meaning(block, ix: _Indexing, walker: _Walker, meaning: _Meaning) -> _Meaning:
    store = _single_store(block, "store")
    if store.buffer.name not in walker.dram:
        raise _mismatch(block, "store", f"it writes the on-chip {store.buffer.name}")
    dst = _copy_rows(block, "store", ix, store)
    value = store.value
    if not isinstance(value, tvm.ir.TensorLoad) or walker._role(value.source) != ("chip", "out"):
        raise _mismatch(block, "store", f"it stores {_text(value)}")
    if ix.rows(value.indices) != dst:
        raise _mismatch(
            block,
            "store",
            f"{_Shown(value)} does not follow {_Shown(store)} element by element",
        )
    return meaning


def _add_meaning(block, ix: _Indexing, walker: _Walker, meaning: _Meaning) -> _Meaning:
    store = _single_store(block, "add")
    out = _copy_rows(block, "add", ix, store)
    value, relu = store.value, False
    if isinstance(value, tirx.Max):
        floor, inner = (
            (value.b, value.a) if isinstance(value.b, tirx.FloatImm) else (value.a, value.b)
        )
        if not isinstance(floor, tirx.FloatImm):
            raise _mismatch(block, "add", f"it takes the max of two terms: {_text(value)}")
        if not _is_zero(floor):
            raise _mismatch(
                block,
                "add",
                f"it takes max(., {float(floor.value)}) (relu is max(., 0)) of {_text(inner)}",
            )
        value, relu = inner, True
    operands: dict[str, object] = {}
    for term in _terms(value):
        if not isinstance(term, tvm.ir.TensorLoad):
            raise _mismatch(block, "add", f"it computes {_describe(term)} in {_text(value)}")
        kind, name = walker._role(term.source)
        if kind != "chip" or name not in ("acc", "bias", "res") or name in operands:
            raise _mismatch(block, "add", f"it adds {_Shown(term)} in {_text(value)}")
        operands[name] = term
    missing = [name for name in ("acc", "res") if name not in operands]
    if missing:
        raise _mismatch(block, "add", f"{_text(value)} has no {' or '.join(missing)} term")
    for name in ("acc", "res"):
        term = operands[name]
        if ix.rows(term.indices) != out:
            raise _mismatch(
                block,
                "add",
                f"{_Shown(term)} does not follow {_Shown(store)} element by element",
            )
    bias = operands.get("bias")
    if bias is not None:
        rows = ix.rows(bias.indices)
        zero = ix.unit(None)
        if rows is None or len(rows) != 4 or rows != [zero, out[1], zero, zero]:
            raise _mismatch(
                block,
                "add",
                f"{_Shown(bias)} is no per-channel bias of {_Shown(store)}",
            )
    return replace(meaning, relu=relu, bias=bias is not None)


def _conv_meaning(block, ix: _Indexing, walker: _Walker, meaning: _Meaning) -> _Meaning:
    def fail(found: str) -> ProgramError:
        return _mismatch(block, "conv", found)

    body = block.body
    stmts = list(body.seq) if isinstance(body, tirx.SeqStmt) else [body]
    if len(stmts) != 2:
        raise fail(f"its body has {len(stmts)} statement(s), not an init and an update")
    init, update = stmts
    guard = None
    if isinstance(init, tirx.IfThenElse) and init.else_case is None:
        guard, init = init.condition, init.then_case
    if not isinstance(init, tirx.BufferStore) or not isinstance(update, tirx.BufferStore):
        raise fail(f"its body is {_text(body)}")
    acc_name = _Shown(update)
    same = init.buffer.name == update.buffer.name
    if not (same and tvm_ffi.structural_equal(init.indices, update.indices)) or not _is_zero(
        init.value
    ):
        raise fail(f"its init {_text(init)} does not zero {acc_name}")
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
        raise fail(f"its update stores {_text(value)}, which does not accumulate into {acc_name}")
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

    out = ix.pure(ix.rows(update.indices))
    if out is None or len(out) != 4:
        raise fail(f"it accumulates into {acc_name}, not acc[n, k, y, x] of its loops")
    reduction = [j for j in range(len(ix.vars)) if j not in out]
    wgt_rows, inp_rows = ix.rows(wgt.indices), ix.rows(inp.indices)
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
    if inp_rows[1] != ix.unit(taps[0]):
        if out[1] is not None and inp_rows[1][out[1]]:
            raise fail(f"the input channel in {inp_text} moves with the output channel: groups")
        raise fail(f"the input channel in {inp_text} is not the weight's in {wgt_text}")
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
    _check_init_guard(guard, [ix.loops[j] for j in reduction], ix, fail)
    return replace(meaning, stride=tuple(stride))


def _check_init_guard(guard, reduction: list, ix: _Indexing, fail) -> None:
    """The init must run exactly on the first step of the reduction loops."""
    loops = {var.__chandle__(): (var, lo, extent) for var, lo, extent in reduction}
    guarded = set()
    for atom in [] if guard is None else _conjuncts(ix.expr(guard)):
        handle = _first_step(atom, loops, ix)
        if handle is None:
            raise fail(f"its init runs under {_text(guard)}, not on the reduction's first step")
        guarded.add(handle)
    guarded.discard("always")
    if len(guarded) != len(loops):
        found = "on every step" if guard is None else f"under {_text(guard)}"
        raise fail(f"its init runs {found}, not only on the reduction's first step")


def _first_step(atom, loops: dict, ix: _Indexing):
    """The reduction loop (its handle) that `atom` holds on the first step of only, "always"
    for an atom that always holds, else None."""
    if isinstance(atom, tirx.EQ) and isinstance(atom.a, tvm.ir.Var):  # as LowerInitBlock says
        loop = loops.get(atom.a.__chandle__())
        if loop is not None and _is_int(atom.b, loop[1]):
            return atom.a.__chandle__()
    atom = ix.analyzer.simplify(atom)
    if _is_int(atom, 1):
        return "always"
    used = {var.__chandle__(): var for var in _vars_in(atom)}
    if len(used) != 1 or next(iter(used)) not in loops:
        return None
    var, lo, extent = loops[next(iter(used))]
    if not _is_int(ix.analyzer.simplify(_substitute(atom, {var: lo})), 1):
        return None
    with ix.analyzer.constraint_scope(tirx.all(var > lo, var < lo + extent)):
        return var.__chandle__() if ix.analyzer.can_prove(tirx.Not(atom)) else None


def _overlaps(a: Region, b: Region) -> bool:
    return all(s1 < s2 + e2 and s2 < s1 + e1 for (s1, e1), (s2, e2) in zip(a, b))


def _covers(outer: Region, inner: Region) -> bool:
    return all(s1 <= s2 and s2 + e2 <= s1 + e1 for (s1, e1), (s2, e2) in zip(outer, inner))


def drop_dead(instructions: list[Instruction]) -> list[Instruction]:
    """Remove instructions whose on-chip result is never read (e.g. the input halo a producer
    computes for an empty, predicated-off tile): the hardware should not pay for them."""
    while True:
        live = [
            not inst.writes() or _is_read(instructions, i) for i, inst in enumerate(instructions)
        ]
        if all(live):
            return instructions
        instructions = [inst for inst, keep in zip(instructions, live) if keep]


def _is_read(instructions: list[Instruction], index: int) -> bool:
    (written,) = instructions[index].writes()
    for later in instructions[index + 1 :]:
        for read in later.reads():
            same_slot = (read.buffer, read.slot) == (written.buffer, written.slot)
            if same_slot and _overlaps(read.region, written.region):
                return True
        for write in later.writes():
            same_slot = (write.buffer, write.slot) == (written.buffer, written.slot)
            if same_slot and _covers(write.region, written.region):
                return False
    return False


def derive_tokens(instructions: list[Instruction]) -> dict[str, tuple[Instruction, ...]]:
    """Split a sequential instruction list into unit streams with the fewest tokens that keep
    every on-chip read after its write and every overwrite after the reads it would clobber."""
    counts = dict.fromkeys(UNITS, 0)
    history: dict[tuple[str, int], list] = {}  # (buffer, slot) -> [(unit, pos, region, is_write)]
    last_synced: dict[tuple[str, str], int] = {}
    edges: list[tuple[int, int]] = []  # (producer index, consumer index)
    index_of: dict[tuple[str, int], int] = {}
    for index, inst in enumerate(instructions):
        unit, pos = inst.unit, counts[inst.unit]
        counts[unit] += 1
        index_of[(unit, pos)] = index
        needed: dict[str, int] = {}
        for operand, is_write in [(s, False) for s in inst.reads()] + [
            (s, True) for s in inst.writes()
        ]:
            events = history.setdefault((operand.buffer, operand.slot), [])
            for other_unit, other_pos, region, other_write in reversed(events):
                if not _overlaps(region, operand.region):
                    continue
                if other_unit != unit and (is_write or other_write):
                    needed[other_unit] = max(needed.get(other_unit, -1), other_pos)
                if other_write and not is_write:
                    break  # older events are ordered before this write already
        for other_unit, other_pos in needed.items():
            if other_pos > last_synced.get((other_unit, unit), -1):
                last_synced[(other_unit, unit)] = other_pos
                edges.append((index_of[(other_unit, other_pos)], index))
        for operand in inst.reads():
            history[(operand.buffer, operand.slot)].append((unit, pos, operand.region, False))
        for operand in inst.writes():
            history[(operand.buffer, operand.slot)].append((unit, pos, operand.region, True))
    waits: dict[int, list[str]] = {}
    signals: dict[int, list[str]] = {}
    for producer, consumer in edges:
        signals.setdefault(producer, []).append(instructions[consumer].unit)
        waits.setdefault(consumer, []).append(instructions[producer].unit)
    streams: dict[str, list[Instruction]] = {unit: [] for unit in UNITS}
    for index, inst in enumerate(instructions):
        inst = replace(
            inst,
            wait=tuple(sorted(set(waits.get(index, ())), key=UNITS.index)),
            signal=tuple(sorted(set(signals.get(index, ())), key=UNITS.index)),
        )
        streams[inst.unit].append(inst)
    return {unit: tuple(stream) for unit, stream in streams.items()}


def check_fits(
    program: Program, hardware: HardwareConfig, workload: Workload, config: TileConfig
) -> None:
    """Raise BufferOverflowError naming the buffer, the bytes, and the smallest N that fits."""
    over = overflowing(program, hardware)
    if not over:
        return
    details = "; ".join(f"{name} needs {need} B, has {cap} B" for name, (need, cap) in over.items())
    smallest = smallest_fitting_tiles(workload, config, hardware)
    if smallest is not None:
        fix = f"use at least {smallest} tiles along {config.axis}"
    else:
        fix = (
            f"no tile count along {config.axis} fits: tile another axis or pick a target "
            "with bigger buffers"
        )
    raise BufferOverflowError(
        f"{workload} with {config} does not fit {hardware.name}: {details}; {fix}"
    )


def smallest_fitting_tiles(
    workload: Workload, config: TileConfig, hardware: HardwareConfig
) -> int | None:
    """The smallest tile count >= config's whose program fits, trying each distinct tile size."""
    extent = config.axis_extent(workload)
    tried = set()
    for n_tiles in range(config.n_tiles + 1, extent + 1):
        tile = -(-extent // n_tiles)
        if tile in tried:
            continue
        tried.add(tile)
        candidate = replace(config, n_tiles=n_tiles)
        if not overflowing(lower_to_program(workload, candidate), hardware):
            return n_tiles
    return None
