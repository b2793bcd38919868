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
CONV block must be the multiply-accumulate `acc[n, k, y, x] += inp[n, (k // ng) * cg + c,
y*sh + r, x*sw + s] * wgt[k, c, r, s]` after a zero init, reducing over the weight's whole
C x R x S with dilation 1; its stride and group size are read off the input's index, never
taken from the Workload (a tile of one output row shows no stride along it, and any stride
computes the same there: the CONV says 1; a tile within one group shows no k in the input
channel: the CONV has groups 1). An ADD block must be a chain of ALU ops over the accumulator,
read from the outside in (each node's one side reads acc, the other is its operand: a
tensor, a per-channel vector or a constant), which gives its op list. A LOAD must be a copy,
possibly guarded by exactly the bounds of the source (its padding: zeros outside the tensor),
and a STORE a copy. A block that computes anything else raises a one-line ProgramError naming
the block, the expected form and what it found. Each distinct block is checked once; per tile,
a few integers are compared.

A LOAD of a window its destination slot already holds is dropped (a 2-D grid reuses weights
across spatial tiles, or inputs across channel tiles, when the same slot comes round again).
Dependency tokens are then derived from the operands alone: an instruction waits for the
last writer of every slot region it reads (RAW) and for the readers and writer of every slot
region it overwrites (WAR, WAW) on other units, keeping only the tokens not already implied.
`lower_to_program` is pure and memoized: the tuner and the codegen never lower twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING

import tvm
import tvm_ffi
from tvm import s_tir, sym, tirx

from tvm_convadd.errors import BufferOverflowError, ProgramError, TileConfigError
from tvm_convadd.schedules.convadd import schedule_convadd
from tvm_convadd.schedules.tile_config import TileConfig
from tvm_convadd.schedules.workload import Workload
from tvm_convadd.target.annotations import STAGE_ROOT_ATTR, UNIT_ATTR
from tvm_convadd.target.evaluate import ConstCache
from tvm_convadd.target.isa import (
    UNITS,
    Add,
    AluOp,
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
from tvm_convadd.target.semantics import (
    Indexing,
    Meaning,
    bound_side,
    init_mode,
    mismatch,
    read_meaning,
    show_expr,
    substitute,
    vars_in,
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
    smallest tile count that fits). Memoized on (workload, config): the same Program object
    comes back for the same pair, so treat it as immutable."""
    program = _lowered(workload, config)
    if hardware is not None:
        check_fits(program, hardware, workload, config)
    return program


@lru_cache(maxsize=256)
def _lowered(workload: Workload, config: TileConfig) -> Program:
    return lower_module(schedule_convadd(workload, config).mod, workload, config)


def lower_module(
    mod: tvm.IRModule, workload: Workload | None = None, config: TileConfig | None = None
) -> Program:
    """LowerToProgram proper: the Program a scheduled module's `main` computes, read from its TIR.

    Every stage block is checked against the instruction it becomes (ProgramError if it computes
    something else); CONV strides and groups and the ADD op list come from the blocks' bodies.
    DRAM tensors are the PrimFunc's params, named after their buffers, the last one (the result)
    `output`. With `workload`, the module must compute it: the same tensors, and the strides,
    groups and epilogue chain the blocks compute are the workload's. `workload` and `config` go
    into the meta."""
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
    streams = derive_tokens(drop_reloads(drop_dead(walker.instructions)))
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
            size, claimed = meaning.group_size, workload.group_out_channels
            if size is not None and size != claimed:
                raise ProgramError(
                    f"{where} computes a grouped conv with {size} output channel(s) per group; "
                    f"the workload {workload} claims {claimed} ({workload.groups} groups)"
                )
        elif meaning.unit == "add":
            _check_epilogue(walker, where, meaning.ops, workload)
    for conv in walker.instructions:
        if not isinstance(conv, Conv):
            continue
        channels, per_group = conv.acc.region[1][1], workload.group_out_channels
        dense_within_group = conv.groups == 1 and channels <= per_group
        if not dense_within_group and channels != conv.groups * per_group:
            raise ProgramError(
                f"a CONV of {channels} output channels in {conv.groups} group(s) "
                f"({conv.acc}); the workload {workload} has {per_group} output channels a group"
            )


def _check_epilogue(walker: _Walker, where: str, ops: tuple, workload: Workload) -> None:
    """The ADD's op list is the workload's chain, each operand loaded from its DRAM tensor."""
    got = [(op, kind, value) for op, kind, _, value in ops]
    claimed = [(e.op, e.kind, e.value) for e in workload.epilogue]
    if got != claimed:
        raise ProgramError(
            f"{where} computes the epilogue {_chain(got)}; the workload {workload} claims "
            f"{_chain(claimed)}"
        )
    for (op, kind, buffer, _), name in zip(ops, workload.operand_names):
        source = walker.sources.get(buffer)
        if buffer is not None and source != name:
            raise ProgramError(
                f"{where}: its {op} {kind} reads {buffer}, loaded from {source}; the workload "
                f"{workload} takes that operand from {name}"
            )


def _chain(ops: list) -> str:
    steps = [f"{op} {value:g}" if kind == "const" else f"{op} {kind}" for op, kind, value in ops]
    return "[" + ", ".join(steps) + "]"


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
    meanings: dict = field(default_factory=dict)  # (block handle, loop ranges) -> Meaning
    sources: dict = field(default_factory=dict)  # on-chip name -> DRAM tensor its LOADs read
    consts: ConstCache = field(default_factory=ConstCache)  # compiled per-tile constants
    init_modes: dict = field(default_factory=dict)  # (meaning, outer values) -> accumulates
    filled: dict = field(default_factory=dict)  # (buffer, slot) -> [(dst, src, pad)] of LOADs
    reduced: dict = field(default_factory=dict)  # acc region -> n: channels [0, n) summed
    block_accesses: dict = field(default_factory=dict)  # block handle -> (store, loads)

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
        store, loads = self._accesses(block)
        if meaning.fill == "zero":
            # A window entirely in padding: StmtSimplify folded the body to a constant zero and
            # dropped the tensor read, but the block's declared read region still names it.
            loads = [self._declared_dram_read(block)]
        write = self._operand(store, env, domain, name=meaning.buffer)
        reads = {self._name(a.buffer): self._operand(a, env, domain) for a in loads}
        self.instructions.append(self._instruction(block, meaning, write, reads, env, domain))

    def _accesses(self, block) -> tuple[_Access, list[_Access]]:
        """The block's store and loads, walked once per distinct block (every tile and chunk
        emits the same block again)."""
        key = block.__chandle__()
        found = self.block_accesses.get(key)
        if found is None:
            found = self.block_accesses[key] = _accesses(block)
        return found

    def _range(self, index, extent, env: dict, domain: dict, ranged: dict, keys) -> tuple:
        """(first, last) element `index` reaches over the stage's loops, and with a declared
        `extent` the last element of the range it starts; compiled interval arithmetic where
        it is exact, TVM's int_set otherwise."""
        last = index if extent is None else self.consts.last(index, extent)
        low_of, high_of = self.consts.bounds(index, keys), self.consts.bounds(last, keys)
        if low_of is not None and high_of is not None:
            try:
                return low_of(env, ranged)[0], high_of(env, ranged)[1]
            except (KeyError, ZeroDivisionError):
                pass
        dom = {v: sym.IntervalSet(lo, hi) for v, (lo, hi) in domain.items()}
        bound = self.analyzer.int_set(self.analyzer.simplify(substitute(index, env)), dom)
        low, high = int(bound.min_value), int(bound.max_value)
        if extent is not None:  # a declared range: its last element bounds it
            tail = self.analyzer.simplify(substitute(last, env))
            high = int(self.analyzer.int_set(tail, dom).max_value)
        return low, high

    def _declared_dram_read(self, block) -> _Access:
        """A zero-filling LOAD block's one declared DRAM read: the window whose padding it is."""
        loads = _declared_reads(block)
        if len(loads) != 1 or loads[0].buffer.name not in self.dram:
            raise mismatch(block, "load", "it fills zeros and declares no one DRAM read")
        return loads[0]

    def _meaning(self, block, loops) -> Meaning:
        """What the block computes, checked against its annotations (once per distinct block)."""
        key = (block.__chandle__(), tuple((lo, extent) for _, lo, extent in loops))
        meaning = self.meanings.get(key)
        if meaning is None:
            meaning = read_meaning(block, Indexing(loops, self.analyzer, block.body), self)
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
        ranged = {v.__chandle__(): span for v, span in domain.items()}
        keys = frozenset(ranged)
        bounds = []
        for dim, index in enumerate(access.indices):
            extent = None if access.extents is None else access.extents[dim]
            bounds.append(self._range(index, extent, env, domain, ranged, keys))
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

    def _instruction(
        self, block, meaning: Meaning, write, reads: dict, env: dict, domain: dict
    ) -> Instruction:
        """The instruction of one tile's instance of a checked block, its operands checked too."""
        if meaning.unit in ("load", "vload"):
            (src,) = reads.values()
            return self._load(block, meaning, write, src, env, domain)
        if meaning.unit == "conv":
            conv = Conv(
                inp=reads["inp"],
                wgt=reads["wgt"],
                acc=write,
                stride=tuple(s or 1 for s in meaning.stride),  # any stride, for one row
                groups=self._groups(block, meaning, write, env, domain),
                accumulate=self._accumulates(block, meaning, env),
            )
            weight = self._weight_shape()
            taps = tuple(extent for _, extent in conv.wgt.region[1:])
            if weight is not None and (taps[1:] != tuple(weight[2:]) or taps[0] > weight[1]):
                raise mismatch(
                    block,
                    "conv",
                    f"it reduces over C x R x S = {taps} of wgt, the weight "
                    f"tensor has {tuple(weight[1:])}",
                )
            self._reduce(block, conv, weight)
            return conv
        if meaning.unit == "add":
            self._check_reduced(block, reads["acc"])
            ops = tuple(
                AluOp(op, kind, None if buffer is None else reads[buffer], value)
                for op, kind, buffer, value in meaning.ops
            )
            return Add(acc=reads["acc"], out=write, ops=ops)
        (src,) = reads.values()
        return Store(src=src, dst=write)

    def _reduce(self, block, conv: Conv, weight: tuple | None) -> None:
        """Follow the input channels each accumulator region has summed: a CONV that starts
        one must start at channel 0, one that accumulates must go on where the last stopped,
        and its input and weight chunks must be the same channels (read off their LOADs)."""
        if weight is None:
            return
        key = (conv.acc.buffer, conv.acc.slot, conv.acc.region)
        window = self._channels(conv.wgt)
        if conv.groups == 1 and conv.wgt.region[1][1] < weight[1]:
            inp = self._channels(conv.inp)
            if inp != window:
                raise mismatch(
                    block,
                    "conv",
                    f"its input chunk holds channels {_span(inp)} and its weight chunk "
                    f"{_span(window)}",
                )
        done = self.reduced.get(key)
        if conv.accumulate and done is None:
            raise mismatch(block, "conv", f"it accumulates into {conv.acc}, which no CONV started")
        start = done if conv.accumulate else 0
        if window is None or window[0] != start:
            what = "accumulates" if conv.accumulate else "starts"
            raise mismatch(
                block,
                "conv",
                f"it {what} {conv.acc} with input channels {_span(window)}, where channel "
                f"{start} comes next",
            )
        self.reduced[key] = window[1]

    def _check_reduced(self, block, acc: Slot) -> None:
        """An ADD reads an accumulator region only once every input channel is summed in."""
        done = self.reduced.get((acc.buffer, acc.slot, acc.region))
        weight = self._weight_shape()
        if done is not None and weight is not None and done != weight[1]:
            raise mismatch(
                block,
                "add",
                f"it reads {acc}, which has summed input channels {_span((0, done))} of "
                f"{weight[1]}",
            )

    def _weight_shape(self) -> tuple | None:
        """The DRAM weight tensor's shape, once a LOAD into wgt has named it."""
        return self.tensors.get(self.sources.get("wgt", ""))

    def _channels(self, operand: Slot) -> tuple[int, int] | None:
        """The DRAM channels [start, end) the LOAD that last filled `operand` put there."""
        for dst, src, pad in reversed(self.filled.get((operand.buffer, operand.slot), ())):
            if _covers(dst.region, operand.region):
                before = pad[1][0] if pad else 0
                start = src.region[1][0] + operand.region[1][0] - dst.region[1][0] - before
                return start, start + operand.region[1][1]
        return None

    def _accumulates(self, block, meaning: Meaning, env: dict) -> bool:
        """Whether this tile's CONV adds to acc: its init's guard, the outer loops known, never
        holds (a later chunk of a reduction split), or holds on its first step only."""
        if meaning.accumulate is not None:
            return meaning.accumulate
        guard, reduction, ix = meaning.init_guard
        outer = tuple(dict.fromkeys(v for v in vars_in(guard) if v in env))
        key = (id(meaning), tuple(env[v] for v in outer))
        found = self.init_modes.get(key)
        if found is None:
            guard = self.analyzer.simplify(substitute(guard, env))
            found = init_mode(guard, reduction, ix, lambda text: mismatch(block, "conv", text))
            self.init_modes[key] = found
        return found

    def _groups(self, block, meaning: Meaning, acc: Slot, env: dict, domain: dict) -> int:
        """The CONV's groups on this tile: its acc channels / ng when they span several groups of
        `((k + b) // ng) * cg + c`, 1 when they lie within one (or the input ignores k)."""
        size = meaning.group_size
        if size is None:
            return 1
        offset = self._const(meaning.group_offset, env)
        low, high = domain[meaning.group_var]
        if (low + offset) // size == (high + offset) // size:
            return 1
        channels = high - low + 1
        if (low + offset) % size or channels % size:
            raise mismatch(
                block,
                "conv",
                f"its {channels} output channels {acc} start {(low + offset) % size} into a "
                f"group of {size}: a CONV's groups are whole",
            )
        return channels // size

    def _load(self, block, meaning: Meaning, dst: Slot, src: Dram, env: dict, domain: dict) -> Load:
        """The LOAD of window `src`, zeros outside the tensor, if that is what the tile does."""
        shape = self.tensors[src.tensor]
        unguarded, ix = set(meaning.unguarded), meaning.indexing
        zeros = meaning.fill == "zero" or self._false_on_tile(meaning.slacks, env, domain)
        for slack, atom in () if zeros else meaning.residual:
            slack = self.analyzer.simplify(substitute(slack, env))
            bounds = [(side, substitute(bound, env), row) for side, bound, row in meaning.bounds]
            side = bound_side(ix, slack, bounds)
            if side is None:
                raise mismatch(
                    block,
                    "load",
                    f"its condition tests {show_expr(atom)}, which is no bound of its "
                    f"window {src} of {src.tensor} {list(shape)}",
                )
            unguarded.discard(side)
        for dim, side in () if zeros else unguarded:  # read without a bound check
            start, extent = src.region[dim]
            if (side == 0 and start < 0) or (side == 1 and start + extent > shape[dim]):
                raise mismatch(
                    block,
                    "load",
                    f"it reads {src} outside the tensor {list(shape)} without a padding condition",
                )
        if zeros and meaning.fill != "zero":
            # A condition false on this tile: TVM may have simplified the read's index knowing
            # the condition (`data[.., s*4 + x]` to `data[.., x]` under `s < 1`), so the
            # window is the block's declared read, as for a body folded to zero.
            src = self._operand(self._declared_dram_read(block), env, domain)
        load = Load.padded(dst, src, shape)
        if zeros and all(extent for _, extent in load.src.region):
            raise mismatch(block, "load", f"it fills zeros, but its window {src} holds data")
        self.sources[dst.buffer] = src.tensor
        key = (dst.buffer, dst.slot)
        kept = [f for f in self.filled.get(key, ()) if not _overlaps(f[0].region, dst.region)]
        self.filled[key] = [*kept, (load.dst, load.src, load.pad)]
        return load

    def _false_on_tile(self, slacks: tuple, env: dict, domain: dict) -> bool:
        """Whether some comparison `slack >= 0` of a LOAD's condition fails on the whole tile:
        the tile is a zero fill, whatever the (then meaningless) read says."""
        dom = {v: sym.IntervalSet(lo, hi) for v, (lo, hi) in domain.items()}
        for slack in slacks:
            bound = self.analyzer.int_set(self.analyzer.simplify(substitute(slack, env)), dom)
            high = bound.max_value
            if isinstance(high, tirx.IntImm) and high.value < 0:
                return True
        return False

    # -- constant evaluation ---------------------------------------------------------------
    def _const(self, expr, env: dict) -> int:
        compiled = self.consts.function(expr)
        if compiled is not None:
            try:
                return int(compiled(env))
            except (KeyError, ZeroDivisionError):
                pass  # a variable left free, or a division TVM may simplify away
        value = self.analyzer.simplify(substitute(expr, env))
        if not isinstance(value, tvm.tirx.IntImm):
            raise ProgramError(f"expected a constant after unrolling the tiles, got {value}")
        return int(value.value)

    def _true(self, expr, env: dict) -> bool:
        return bool(self._const(expr, env))


def _span(window: tuple[int, int] | None) -> str:
    return "unknown" if window is None else f"[{window[0]}, {window[1]})"


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


def drop_reloads(instructions: list[Instruction]) -> list[Instruction]:
    """Remove a LOAD whose destination region already holds exactly its window (the same
    tensor, src region and pad, in the same slot and region, not overwritten since): a 2-D
    grid's weights for a spatial tile, or inputs for a channel tile, when the slot comes round
    again. The earlier LOAD then stands as the writer its readers wait for."""
    holding: dict[tuple[str, int], list[Load]] = {}  # (buffer, slot) -> LOADs still intact
    kept = []
    for inst in instructions:
        if isinstance(inst, Load):
            held = holding.get((inst.dst.buffer, inst.dst.slot), ())
            if any(
                (h.dst.region, h.src, h.pad) == (inst.dst.region, inst.src, inst.pad) for h in held
            ):
                continue
        for written in inst.writes():
            key = (written.buffer, written.slot)
            intact = [
                h for h in holding.get(key, ()) if not _overlaps(h.dst.region, written.region)
            ]
            holding[key] = intact + [inst] * isinstance(inst, Load)
        kept.append(inst)
    return kept


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
            # what this write covers is ordered before it: a later reader stops at it, and a
            # later writer that orders itself after it is after them too
            key = (operand.buffer, operand.slot)
            kept = [e for e in history[key] if not _covers(operand.region, e[2])]
            history[key] = [*kept, (unit, pos, operand.region, True)]
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
    """Raise BufferOverflowError naming the buffer, the bytes, and the smallest tiling that fits:
    more tiles along the config's axis, else (a spatial axis) a grid with more channel tiles."""
    over = overflowing(program, hardware)
    if not over:
        return
    details = "; ".join(f"{name} needs {need} B, has {cap} B" for name, (need, cap) in over.items())
    smallest = smallest_fitting_tiles(workload, config, hardware)
    axis = config.axis
    if smallest is not None and smallest.channel_tiles == config.channel_tiles:
        fix = f"use at least {smallest.n_tiles} tiles along {axis}"
    elif smallest is not None:
        fix = (
            f"no tile count along {axis} alone fits: use channel_tiles={smallest.channel_tiles} "
            f"with {smallest.n_tiles} tile(s) along {axis}"
        )
    elif axis == "channel":
        fix = (
            "no tile count along channel fits: tile a spatial axis or pick a target with bigger "
            "buffers"
        )
    else:
        fix = (
            f"no tile count along {axis}, nor any with channel_tiles, fits: pick a target with "
            "bigger buffers"
        )
    raise BufferOverflowError(
        f"{workload} with {config} does not fit {hardware.name}: {details}; {fix}"
    )


def smallest_fitting_tiles(
    workload: Workload, config: TileConfig, hardware: HardwareConfig
) -> TileConfig | None:
    """The config with the fewest tiles that fits, more tiles than `config` along its axis;
    failing that, for a spatial axis, the grid of spatial x channel tiles (channel tiles more
    than config's) with the fewest tiles. Fitting is monotone in each count (tiles only shrink
    as a count grows), so each axis is a binary search over its distinct tile lengths."""

    def fits(candidate: TileConfig) -> bool:
        return not overflowing(lower_to_program(workload, candidate), hardware)

    extent = config.axis_extent(workload)
    more = [replace(config, n_tiles=n) for n in _counts(extent, config.n_tiles + 1)]
    found = _first_fit([c for c in more if _valid(c, workload)], fits)
    if found is not None or config.axis == "channel":
        return found
    best = None
    for channel_tiles in _counts(workload.out_channels, config.channel_tiles + 1):
        if best is not None and channel_tiles * config.n_tiles >= best.total_tiles:
            break
        grid = replace(config, channel_tiles=channel_tiles)
        if not _valid(grid, workload):
            continue  # its channel tiles would straddle groups
        counts = _counts(extent, config.n_tiles)
        candidates = [replace(grid, n_tiles=n) for n in counts]
        candidate = _first_fit([c for c in candidates if _valid(c, workload)], fits)
        if candidate is not None and (best is None or candidate.total_tiles < best.total_tiles):
            best = candidate
    return best


def _valid(config: TileConfig, workload: Workload) -> bool:
    """Whether `config` is a valid tiling of `workload` (channel tiles of whole groups)."""
    try:
        config.validate(workload)
    except TileConfigError:
        return False
    return True


def _counts(extent: int, start: int) -> list[int]:
    """Tile counts start..extent, the smallest of each distinct tile length."""
    counts, lengths = [], set()
    for count in range(start, extent + 1):
        length = -(-extent // count)
        if length not in lengths:
            lengths.add(length)
            counts.append(count)
    return counts


def _first_fit(candidates: list[TileConfig], fits) -> TileConfig | None:
    """The first candidate that fits, by bisection: fitting is monotone along the list."""
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high) // 2
        if fits(candidates[middle]):
            high = middle
        else:
            low = middle + 1
    return candidates[low] if low < len(candidates) else None
