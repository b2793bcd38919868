"""Event-driven simulator of the accelerator: cycles per unit, numpy semantics, checked tokens.

The five units run concurrently, each in order through its stream. An instruction starts when
its unit (and, for a DMA, its engine) is free and every token it waits for has arrived, and
lasts `instruction_cycles`, except that a LOAD or STORE moves its bytes only when the one DRAM
channel, shared by every DMA queue, is free: transfers are served first come, first served.
Instructions are therefore run in order of start time.

Happens-before is tracked with vector clocks (a token carries its sender's clock), which
makes the hazard check O(units) per operand and valid in timing-only mode too. A read must
also be covered by the union of the slot's earlier writes: a LOAD that fills half of what a
CONV reads is a HazardError, not a silently wrong output.
"""

from __future__ import annotations

import gc
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from tvm_convadd.errors import BufferOverflowError, DeadlockError, HazardError, ProgramError
from tvm_convadd.target.functional import FunctionalMachine
from tvm_convadd.target.hardware import buffer_pool
from tvm_convadd.target.isa import (
    UNITS,
    Add,
    Conv,
    Load,
    Program,
    Slot,
    Store,
    format_pad,
    format_region,
)

if TYPE_CHECKING:
    from tvm_convadd.target.hardware import HardwareConfig

_UNIT_INDEX = {unit: index for index, unit in enumerate(UNITS)}
_NUM_UNITS = len(UNITS)


@dataclass(frozen=True)
class UnitStats:
    """What one unit did: cycles busy, instructions run, busy / total."""

    busy_cycles: int
    instructions: int
    utilization: float


@dataclass(frozen=True)
class UnitIdle:
    """When a compute unit waited: before its first instruction (`head`: the pipeline's fill),
    between instructions (`stall`: an operand late, no free slot) and after its last (`tail`:
    the drain). With the unit's busy cycles they add up to the run's total, so for the unit
    that bounds a layer they say where the gap to the bound went."""

    head: int
    stall: int
    tail: int

    @property
    def total(self) -> int:
        return self.head + self.stall + self.tail


class Event(NamedTuple):
    """One instruction's run (a NamedTuple: the simulator makes one per instruction, cheaply)."""

    unit: str
    index: int
    opcode: str
    start: int
    end: int


@dataclass(frozen=True)
class SimResult:
    """Outcome of a simulation; `outputs` holds every DRAM tensor in functional mode, else None.

    `leftover_tokens` counts tokens signalled but never waited for, per queue ("conv->add"):
    harmless for timing, but usually a sign of a missing `wait`.
    """

    total_cycles: int
    units: dict[str, UnitStats]
    events: tuple[Event, ...]
    outputs: dict[str, np.ndarray] | None
    hardware: str
    leftover_tokens: dict[str, int]
    dram_busy_cycles: int = 0  # cycles the shared DRAM channel spent transferring
    engine_busy_cycles: dict[str, int] = field(default_factory=dict)  # engines of 2+ queues

    @property
    def bound_cycles(self) -> int:
        """No schedule of these instructions beats this: the busy cycles of the busiest unit,
        DMA engine shared by several queues, or the shared DRAM channel."""
        shared = [self.dram_busy_cycles, *self.engine_busy_cycles.values()]
        return max([*shared, *(s.busy_cycles for s in self.units.values())])

    @property
    def bound_resource(self) -> str:
        """What sets `bound_cycles`: a unit's name, "dram", or an engine's "load+vload"."""
        busy = {name: s.busy_cycles for name, s in self.units.items()}
        busy |= {"dram": self.dram_busy_cycles, **self.engine_busy_cycles}
        return max(busy, key=busy.get)

    def idle(self, unit: str = "conv") -> UnitIdle:
        """Where `unit` (a compute unit: its events last exactly its busy cycles) waited."""
        spans = sorted((e.start, e.end) for e in self.events if e.unit == unit)
        if not spans:
            return UnitIdle(self.total_cycles, 0, 0)
        first, last = spans[0][0], spans[-1][1]
        busy = sum(end - start for start, end in spans)
        return UnitIdle(first, last - first - busy, self.total_cycles - last)

    def summary(self) -> str:
        lines = [f"{self.total_cycles} cycles on {self.hardware}"]
        for unit, stats in self.units.items():
            lines.append(
                f"  {unit:<5} {stats.instructions:6d} instructions  {stats.busy_cycles:10d} busy"
                f"  {100 * stats.utilization:5.1f}%"
            )
        return "\n".join(lines)


def simulate(
    program: Program,
    hardware: HardwareConfig,
    tensors: dict[str, np.ndarray] | None = None,
    functional: bool = True,
    check_buffers: bool = True,
) -> SimResult:
    """Run `program` on `hardware`; functional mode also computes every DRAM tensor with numpy.

    In functional mode `tensors` must give every tensor a LOAD reads, each in the program's
    shape; tensors only STOREd to (the outputs) may be left out and start as zeros. Names the
    program does not declare are refused. Timing-only mode ignores `tensors`.
    `check_buffers=False` skips the capacity check, for a caller that proves capacity itself
    (a network timeline whose layers' buffers are live at different times).
    Raises BufferOverflowError (before running), DeadlockError, HazardError, ProgramError.
    """
    if check_buffers:
        check_capacity(program, hardware)  # the dtype too
    else:
        check_dtype(program, hardware)
    collecting = gc.isenabled()
    gc.disable()  # the run allocates many small acyclic tuples: collection passes only cost time
    try:
        return _run(program, hardware, tensors, functional)
    finally:
        if collecting:
            gc.enable()


def _run(
    program: Program,
    hardware: HardwareConfig,
    tensors: dict[str, np.ndarray] | None,
    functional: bool,
) -> SimResult:
    """Run the instructions in order of start time, so that the shared DRAM channel serves
    transfers first come, first served: an instruction run later never starts earlier (it
    waits on a token of one not yet run, or its unit or engine is busy until later)."""
    slot_ids: dict[tuple[str, int], int] = {}
    steps = [_prepare(program, hardware, unit, slot_ids) for unit in UNITS]
    machine = FunctionalMachine(program, tensors) if functional else None
    engines = [hardware.dma_engine(unit) for unit in UNITS]
    engine_free = [0] * len(hardware.dma_queues)
    channel_free = 0

    queues = [deque() for _ in range(_NUM_UNITS * _NUM_UNITS)]  # index src * units + dst
    pcs = [0] * _NUM_UNITS
    free = [0] * _NUM_UNITS
    busy = [0] * _NUM_UNITS
    transferring = 0
    clocks = [[0] * _NUM_UNITS for _ in range(_NUM_UNITS)]
    # per slot id: the live (writes, reads), each access (region, unit, index + 1)
    accesses: list[tuple[list, list]] = [([], []) for _ in slot_ids]
    timeline: list[tuple[int, int, int, int]] = []
    remaining = sum(len(s) for s in steps)
    counts = [len(s) for s in steps]

    while remaining:
        unit, now = -1, 0
        for candidate in range(_NUM_UNITS):
            pc = pcs[candidate]
            if pc == counts[candidate]:
                continue
            start = free[candidate]
            engine = engines[candidate]
            if engine is not None and engine_free[engine] > start:
                start = engine_free[engine]
            for q, need in steps[candidate][pc][1]:
                queue = queues[q]
                if len(queue) < need:
                    break
                arrival = queue[need - 1][0]  # a queue's tokens arrive in order
                if arrival > start:
                    start = arrival
            else:
                if unit < 0 or start < now:
                    unit, now = candidate, start
        if unit < 0:
            raise DeadlockError(_deadlock_message(program, steps, pcs, queues))
        pc = pcs[unit]
        cost, waits, signals, reads, writes, inst, transfer = steps[unit][pc]
        clock = clocks[unit]
        for q, need in waits:
            queue = queues[q]
            for _ in range(need):
                token_clock = queue.popleft()[1]
                for other, value in enumerate(token_clock):
                    if value > clock[other]:
                        clock[other] = value
        stamp = pc + 1
        clock[unit] = stamp
        for key, region, slot in reads:
            _check_read(accesses, key, region, slot, unit, stamp, clock, program)
        for key, region, slot in writes:
            _check_write(accesses, key, region, slot, unit, stamp, clock, program)
        if machine is not None:
            machine.execute(inst)
        end = now + cost
        if transfer:  # setup on the queue, then the bytes when the DRAM channel is free
            begin = max(now + cost - transfer, channel_free)
            end = channel_free = begin + transfer
            transferring += transfer
        engine = engines[unit]
        if engine is not None:
            engine_free[engine] = end
        timeline.append((unit, pc, now, end))
        if signals:
            token = (end, tuple(clock))
            for q in signals:
                queues[q].append(token)
        busy[unit] += cost
        pcs[unit], free[unit] = stamp, end
        remaining -= 1

    total = max(free)
    stats = {
        name: UnitStats(busy[u], len(steps[u]), busy[u] / total if total else 0.0)
        for u, name in enumerate(UNITS)
    }
    timeline.sort()  # by unit, then index
    opcodes = [[inst.opcode for inst in program.streams[name]] for name in UNITS]
    events = tuple(
        Event(UNITS[u], index, opcodes[u][index], start, end) for u, index, start, end in timeline
    )
    leftover = {
        f"{UNITS[q // _NUM_UNITS]}->{UNITS[q % _NUM_UNITS]}": len(queue)
        for q, queue in enumerate(queues)
        if queue
    }
    outputs = machine.dram if machine is not None else None
    engine_busy = {
        "+".join(queue): sum(busy[UNITS.index(u)] for u in queue)
        for queue in hardware.dma_queues
        if len(queue) > 1
    }
    return SimResult(
        total, stats, events, outputs, hardware.name, leftover, transferring, engine_busy
    )


def overflowing(program: Program, hardware: HardwareConfig) -> dict[str, tuple[int, int]]:
    """Buffer pools whose buffers' slots together do not fit: label -> (bytes needed, available).

    The label is the pool's name, followed by its buffers when they are not just the pool's
    namesake: "res (res + res_2)", "bias (bias + scale)". The one definition of "fits": the
    lowering's advice and the tuner's filter use it too.
    """
    members: dict[str, list[str]] = {}
    need: dict[str, int] = {}
    for name, decl in program.buffers.items():
        pool = buffer_pool(name)
        members.setdefault(pool, []).append(name)
        need[pool] = need.get(pool, 0) + decl.slots * decl.slot_bytes
    over = {}
    for pool, names in members.items():
        available = hardware.pool_bytes(pool)
        if need[pool] > available:
            label = pool if names == [pool] else f"{pool} ({' + '.join(names)})"
            over[label] = (need[pool], available)
    return over


def check_dtype(program: Program, hardware: HardwareConfig) -> None:
    """Raise ProgramError if the program computes in another dtype than the hardware."""
    if program.dtype != hardware.dtype:
        raise ProgramError(
            f"program computes in {program.dtype}, {hardware.name} in {hardware.dtype}: "
            f"lower for a {program.dtype} target or pick a {program.dtype} configuration"
        )


def check_capacity(program: Program, hardware: HardwareConfig) -> None:
    """Raise BufferOverflowError if some buffer's slots do not fit the hardware's capacity."""
    check_dtype(program, hardware)
    over = overflowing(program, hardware)
    if over:
        label, (need, available) = next(iter(over.items()))
        pool = label.split(" ")[0]
        parts = ", ".join(
            f"{name} {decl.slots} slot(s) of {list(decl.shape)} {decl.dtype}"
            for name, decl in program.buffers.items()
            if buffer_pool(name) == pool
        )
        raise BufferOverflowError(
            f"buffer pool {pool!r} needs {need} bytes ({parts}) but {hardware.name} has "
            f"{available}: use more (smaller) tiles or a configuration with a bigger buffer"
        )


# -- preparation: everything per instruction that does not depend on time ------------------


def _prepare(
    program: Program, hardware: HardwareConfig, unit: str, slot_ids: dict[tuple[str, int], int]
) -> list[tuple]:
    """Per instruction: (cost, waits ((queue, count), ...), signal queues, reads, writes, inst,
    the part of the cost that holds the DRAM channel).

    Reads and writes are (slot id, region, operand); `slot_ids` numbers the (buffer, slot)s.
    Tiles repeat the same operand shapes, so shape checks and costs are memoised by them.
    """
    me = _UNIT_INDEX[unit]
    steps = []
    cost_of, transfer_of = hardware.instruction_cycles, hardware.transfer_cycles
    costs: dict[tuple, int] = {}
    token_queues: dict[tuple[tuple[str, ...], bool], tuple] = {}
    for index, inst in enumerate(program.streams[unit]):
        kind = type(inst)
        if kind is Load:  # DMA cost: bytes and runs of the DRAM region
            if _extents(inst.dst.region) != inst.padded_extents:
                _check_shapes(inst, f"{unit}#{index}")
            key = (kind, inst.dst.buffer, inst.dst.region, inst.src.tensor, inst.src.region)
        elif kind is Store:
            if _extents(inst.src.region) != _extents(inst.dst.region):
                _check_shapes(inst, f"{unit}#{index}")
            key = (kind, inst.src.buffer, inst.src.region, inst.dst.tensor, inst.dst.region)
        elif kind is Conv:
            key = (kind, inst.inp.region, inst.wgt.region, inst.acc.region, inst.stride)
            key += (inst.groups,)
        elif kind is Add:
            ops = tuple((op.op, op.src.region if op.src else op.value) for op in inst.ops)
            key = (kind, inst.acc.region, inst.out.region, ops)
        else:
            raise ProgramError(f"{unit}#{index}: unknown instruction {kind.__name__}")
        cached = costs.get(key)
        if cached is None:
            _check_shapes(inst, f"{unit}#{index}")
            cached = costs[key] = (cost_of(inst, program), transfer_of(inst, program))
        cost, transfer = cached
        waits = token_queues.get((inst.wait, True))
        if waits is None:
            waits = token_queues[inst.wait, True] = tuple(
                (_UNIT_INDEX[src] * _NUM_UNITS + me, inst.wait.count(src))
                for src in dict.fromkeys(inst.wait)
            )
        signals = token_queues.get((inst.signal, False))
        if signals is None:
            signals = token_queues[inst.signal, False] = tuple(
                me * _NUM_UNITS + _UNIT_INDEX[dst] for dst in inst.signal
            )
        reads = tuple([(_slot_id(slot_ids, s), s.region, s) for s in inst.reads()])
        writes = tuple([(_slot_id(slot_ids, s), s.region, s) for s in inst.writes()])
        steps.append((cost, waits, signals, reads, writes, inst, transfer))
    return steps


def _slot_id(slot_ids: dict[tuple[str, int], int], operand: Slot) -> int:
    key = (operand.buffer, operand.slot)
    found = slot_ids.get(key)
    if found is None:
        found = slot_ids[key] = len(slot_ids)
    return found


def _extents(region) -> tuple[int, ...]:
    return tuple(extent for _, extent in region)


def _check_shapes(inst, where: str) -> None:
    """The operand shapes each opcode's semantics need (the Program checks only bounds)."""
    if isinstance(inst, Load):
        dst, src = _extents(inst.dst.region), inst.padded_extents
        if dst != src:
            padding = f" plus pad {format_pad(inst.pad)}" if inst.pad else " (no pad)"
            raise ProgramError(
                f"{where} LOAD: dst extents {dst} differ from src extents "
                f"{_extents(inst.src.region)}{padding}: make dst = before + src + after per dim"
            )
        return
    if isinstance(inst, Store):
        pairs = [("src", inst.src.region), ("dst", inst.dst.region)]
    elif isinstance(inst, Add):
        pairs = [("acc", inst.acc.region), ("out", inst.out.region)]
        out = _extents(inst.out.region)
        for index, op in enumerate(inst.ops):
            if op.kind == "tensor":
                pairs.append((f"ops[{index}].src", op.src.region))
            elif op.kind == "channel":
                vector = (1, out[1], 1, 1) if len(out) == 4 else None
                if _extents(op.src.region) != vector:
                    raise ProgramError(
                        f"{where} ADD.ops[{index}]: {op.op} channel src extents "
                        f"{_extents(op.src.region)} must be {vector} to broadcast over out {out}"
                    )
    elif isinstance(inst, Conv):
        inp, wgt, acc = (_extents(s.region) for s in (inst.inp, inst.wgt, inst.acc))
        if len(inp) != 4 or len(wgt) != 4 or len(acc) != 4:
            raise ProgramError(f"{where} CONV: inp, wgt and acc regions must be 4-d (NCHW, OIHW)")
        if len(inst.stride) != 2 or min(inst.stride) < 1:
            raise ProgramError(f"{where} CONV: stride {inst.stride}: give two integers >= 1")
        groups = inst.groups
        if acc[1] % groups:
            raise ProgramError(
                f"{where} CONV: acc region has {acc[1]} channels, not a multiple of groups {groups}"
            )
        if inp[1] != groups * wgt[1]:
            raise ProgramError(
                f"{where} CONV: input region has {inp[1]} channels, groups {groups} x weight "
                f"region's {wgt[1]} = {groups * wgt[1]} expected"
            )
        (stride_h, stride_w), (_, _, kernel_h, kernel_w) = inst.stride, wgt
        if inp[2] < kernel_h or inp[3] < kernel_w:
            raise ProgramError(f"{where} CONV: input region {inp} smaller than the kernel {wgt}")
        expected = (
            inp[0],
            wgt[0],
            (inp[2] - kernel_h) // stride_h + 1,
            (inp[3] - kernel_w) // stride_w + 1,
        )
        if acc != expected:
            raise ProgramError(
                f"{where} CONV: acc region {acc} is not the conv output {expected} of input "
                f"{inp}, weight {wgt}, stride {inst.stride}"
            )
        return
    else:
        raise ProgramError(f"{where}: unknown instruction {type(inst).__name__}")
    shapes = {name: _extents(region) for name, region in pairs}
    if len(set(shapes.values())) != 1:
        raise ProgramError(f"{where} {inst.opcode}: operand shapes differ: {shapes}")


# -- hazards: vector clocks, slot granularity, overlapping regions only ---------------------


def _overlaps(a, b) -> bool:
    for (start_a, extent_a), (start_b, extent_b) in zip(a, b):
        if start_a >= start_b + extent_b or start_b >= start_a + extent_a:
            return False
    return True


def _covers(outer, inner) -> bool:
    for (start_o, extent_o), (start_i, extent_i) in zip(outer, inner):
        if start_i < start_o or start_i + extent_i > start_o + extent_o:
            return False
    return True


def _name(program: Program, unit: int, stamp: int) -> str:
    inst = program.streams[UNITS[unit]][stamp - 1]
    return f"{inst.opcode} {UNITS[unit]}#{stamp - 1}"


def _check_read(accesses, key, region, slot, unit, stamp, clock, program) -> None:
    """A read must happen after every overlapping write (through tokens if on another unit),
    and the slot's earlier writes together must cover the whole region read."""
    writes, reads = accesses[key]
    covered = False
    for old, writer, written in writes:
        if old == region:
            covered = True
        elif _overlaps(old, region):
            covered = covered or _covers(old, region)
        else:
            continue
        if writer != unit and clock[writer] < written:
            raise HazardError(
                f"read of {slot.buffer}[{slot.slot}] by {_name(program, unit, stamp)} before "
                f"{_name(program, writer, written)} signalled it (region {slot}): add a wait "
                f"on the {UNITS[writer]} unit's token"
            )
    if not covered:  # no single write covers the read: the slow path, box subtraction
        gap = _uncovered(region, [old for old, _, _ in writes])
        if gap == region:
            raise HazardError(
                f"read of {slot.buffer}[{slot.slot}] by {_name(program, unit, stamp)} before "
                f"anything wrote it (region {slot}): load or compute it first"
            )
        if gap is not None:
            raise HazardError(
                f"read of {slot} by {_name(program, unit, stamp)}: its part "
                f"{slot.buffer}[{slot.slot}]{format_region(gap)} was never written: "
                "load or compute the whole region first"
            )
    for index, (old, reader, _) in enumerate(reads):
        if reader == unit and old == region:  # a later read of the same region supersedes
            reads[index] = (region, unit, stamp)
            return
    reads.append((region, unit, stamp))


def _subtract(box, cut) -> list:
    """The parts of `box` outside `cut`, as disjoint boxes (at most two per dimension)."""
    if not _overlaps(box, cut):
        return [box]
    pieces, core = [], list(box)
    for dim, ((start, extent), (cut_start, cut_extent)) in enumerate(zip(box, cut)):
        low, high = max(start, cut_start), min(start + extent, cut_start + cut_extent)
        if low > start:
            pieces.append((*core[:dim], (start, low - start), *core[dim + 1 :]))
        if high < start + extent:
            pieces.append((*core[:dim], (high, start + extent - high), *core[dim + 1 :]))
        core[dim] = (low, high - low)
    return pieces


def _uncovered(region, written) -> tuple | None:
    """One box of `region` outside every region in `written`, or None if they cover it."""
    left = [region]
    for old in written:
        left = [piece for box in left for piece in _subtract(box, old)]
        if not left:
            return None
    return left[0]


def _check_write(accesses, key, region, slot, unit, stamp, clock, program) -> None:
    """A write must happen after every overlapping write and read on other units.

    Accesses the write covers are dropped: anything later that overlaps them overlaps this
    write too and must happen after it, hence (transitively) after them.
    """
    writes, reads = accesses[key]
    kept_reads = []
    for access in reads:
        old, reader, read = access
        same = old == region
        if same or _overlaps(old, region):
            if reader != unit and clock[reader] < read:
                raise HazardError(
                    f"write of {slot.buffer}[{slot.slot}] by {_name(program, unit, stamp)} "
                    f"while {_name(program, reader, read)} may still read it (region {slot}): "
                    f"wait for a token from the {UNITS[reader]} unit"
                )
            if same or _covers(region, old):
                continue
        kept_reads.append(access)
    kept_writes = []
    for access in writes:
        old, writer, written = access
        same = old == region
        if same or _overlaps(old, region):
            if writer != unit and clock[writer] < written:
                raise HazardError(
                    f"write of {slot.buffer}[{slot.slot}] by {_name(program, unit, stamp)} while "
                    f"{_name(program, writer, written)} may still write it (region {slot}): "
                    f"wait for a token from the {UNITS[writer]} unit"
                )
            if same or _covers(region, old):
                continue
        kept_writes.append(access)
    kept_writes.append((region, unit, stamp))
    accesses[key] = (kept_writes, kept_reads)


def _deadlock_message(program: Program, steps, pcs, queues) -> str:
    lines = ["deadlock: every unfinished unit waits on an empty token queue"]
    for unit, name in enumerate(UNITS):
        if pcs[unit] == len(steps[unit]):
            lines.append(f"  {name}: finished")
            continue
        inst = program.streams[name][pcs[unit]]
        empty = [
            f"{UNITS[q // _NUM_UNITS]}->{name}"
            for q, need in steps[unit][pcs[unit]][1]
            if len(queues[q]) < need
        ]
        ops = ", ".join(f"{k}={v}" for k, v in inst.operands().items() if v is not None)
        lines.append(
            f"  {name}#{pcs[unit]} {inst.opcode} {ops}  ; {inst.flags()}: blocked on empty "
            f"queue {' and '.join(empty)}"
        )
    lines.append("a signal is missing upstream, or a wait has no matching signal")
    return "\n".join(lines)
