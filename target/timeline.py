"""One accelerator timeline across layers, as VTA's runtime command queue runs a network.

Each offloaded call (one fused conv + epilogue, one Program) is enqueued after the ones before
it: `compose` concatenates the calls' unit streams into one Program, each call's buffers
renamed (`L3.wgt`), its own tokens kept, and adds the cross-layer tokens a real runtime needs:

- DRAM: a LOAD of a tensor an earlier call STOREd waits for the STOREs of the region it reads;
  a LOAD of a tensor the host wrote (a pool, a CPU op) waits for all accelerator work before
  the first call that read it, because the host had to sync before it could compute it; a
  STORE over storage an earlier call still reads or writes (the VM reuses memory) waits for
  those accesses.
- capacity: a call's first write into a buffer pool waits for the last access of that pool by
  the latest earlier call whose buffers would not fit beside its own. Weights thus get two
  slots across layers when two layers' weights fit the pool, and wait otherwise.
- queue order: each call's LOADs of constants that wait for nothing (its first weights, its
  biases) move to the front of their queue, since an in-order queue would hold them behind
  an input LOAD that waits for the previous layer.

So the next layer's weights and biases load while this layer computes. The simulator's hazard
checker runs on the combined program, and `check_timeline` proves from the events what the
renamed buffers hide from it: every pool's live bytes stay within the pool, and every
cross-layer DRAM access is ordered after the write it depends on.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from tvm_convadd.errors import BufferOverflowError, ConvAddError, HazardError, ProgramError
from tvm_convadd.target.hardware import buffer_pool
from tvm_convadd.target.isa import UNITS, AluOp, Dram, Instruction, Load, Program, Slot, Store
from tvm_convadd.target.simulator import SimResult, check_dtype, simulate

if TYPE_CHECKING:
    from tvm_convadd.target.hardware import HardwareConfig

Edge = tuple[str, int, str, int]  # (producer unit, index, consumer unit, index), combined streams


@dataclass(frozen=True, order=True)
class TensorRef:
    """One version of one DRAM buffer: its storage (the VM tensor's data pointer) and how many
    times it was (re)written before. The VM reuses memory, so a pointer alone is no tensor."""

    storage: int
    version: int = 0


def fingerprint(array: np.ndarray) -> int:
    """A cheap checksum of a strided sample of `array`: tells a rewritten storage (a CPU op's
    output in reused memory) from the accelerator's output it replaced."""
    flat = np.ascontiguousarray(array).reshape(-1)
    step = max(1, flat.size // 4096)
    return zlib.crc32(flat[::step].tobytes()) ^ flat.size


@dataclass(frozen=True)
class LayerCall:
    """One offloaded call as the timeline needs it: its Program, which DRAM buffers its tensors
    are (`reads`, `writes`: program tensor -> TensorRef), and which of its reads the host wrote
    during the run (`host_inputs`; a read no earlier call wrote and not listed is a constant)."""

    name: str
    program: Program
    reads: Mapping[str, TensorRef] = field(default_factory=dict)
    writes: Mapping[str, TensorRef] = field(default_factory=dict)
    host_inputs: frozenset[str] = frozenset()
    standalone_cycles: int | None = None  # the call simulated alone, if already known
    standalone_bound_cycles: int | None = None  # and its bound (`SimResult.bound_cycles`)


@dataclass(frozen=True)
class Composition:
    """The calls as one Program, and where each call went in it."""

    program: Program
    offsets: tuple[dict[str, int], ...]  # per call: unit -> index of its first instruction
    buffer_owner: dict[str, tuple[int, str]]  # combined buffer -> (call, pool)
    tensor_names: tuple[dict[str, str], ...]  # per call: its tensor -> combined tensor name
    producers: tuple[dict[str, int], ...]  # per call: read tensor -> the call that wrote it

    @cached_property
    def _starts(self) -> dict[str, list[int]]:
        return {unit: [offset[unit] for offset in self.offsets] for unit in UNITS}

    def call_of(self, unit: str, index: int) -> int:
        """The call whose instruction `index` of `unit`'s combined stream is."""
        return bisect.bisect_right(self._starts[unit], index) - 1


@dataclass(frozen=True)
class LayerSpan:
    """One call on the network timeline: when its first instruction started and its last
    ended, what it costs alone on an empty machine, and its bound there."""

    name: str
    start: int
    end: int
    standalone_cycles: int
    bound_cycles: int

    @property
    def cycles(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class NetworkTimeline:
    """The network's calls run as one accelerator timeline (SimResult of the combined run)."""

    result: SimResult
    layers: tuple[LayerSpan, ...]
    composition: Composition

    @property
    def total_cycles(self) -> int:
        return self.result.total_cycles

    @property
    def standalone_cycles(self) -> int:
        """Each call on its own empty machine, one after the other: the timeline without
        cross-layer overlap."""
        return sum(layer.standalone_cycles for layer in self.layers)

    @property
    def busy(self) -> dict[str, int]:
        return {unit: stats.busy_cycles for unit, stats in self.result.units.items()}

    @property
    def bound_cycles(self) -> int:
        """The network bound: the busiest unit (or shared DMA engine, or the DRAM channel),
        its busy cycles summed over all layers."""
        return self.result.bound_cycles

    @property
    def added_cycles(self) -> tuple[int, ...]:
        """Per call, the cycles it adds to the timeline: from the latest end of the calls
        before it to its own end (its head under the previous calls is free, its tail counts
        unless the next call hides it). They sum to the timeline's total."""
        added, latest = [], 0
        for layer in self.layers:
            added.append(max(0, layer.end - latest))
            latest = max(latest, layer.end)
        return tuple(added)

    @property
    def conv_idle_between_calls(self) -> int:
        """Of the Conv unit's stalls on the timeline (`result.idle("conv").stall`), the cycles
        between two CONVs of different calls; the rest fell between two CONVs of one call."""
        convs = sorted((e for e in self.result.events if e.unit == "conv"), key=lambda e: e.start)
        call = self.composition.call_of
        return sum(
            b.start - a.end
            for a, b in itertools.pairwise(convs)
            if call("conv", a.index) != call("conv", b.index)
        )

    def table(self) -> str:
        rows = [
            f"{'#':>3} {'layer':<44} {'start':>10} {'end':>10} {'span':>9} {'alone':>9} "
            f"{'bound':>9} {'alone/bnd':>9} {'adds':>9} {'adds/bnd':>8}"
        ]
        for index, (layer, added) in enumerate(zip(self.layers, self.added_cycles)):
            bound = max(1, layer.bound_cycles)
            rows.append(
                f"{index:>3} {layer.name[:44]:<44} {layer.start:>10} {layer.end:>10} "
                f"{layer.cycles:>9} {layer.standalone_cycles:>9} {layer.bound_cycles:>9} "
                f"{layer.standalone_cycles / bound:>9.3f} {added:>9} {added / bound:>8.3f}"
            )
        rows.append(self.summary())
        return "\n".join(rows)

    def summary(self) -> str:
        """The network on one line: the timeline against its layers alone and the bound."""
        return (
            f"network: {self.total_cycles} cycles on one timeline, {self.standalone_cycles} "
            f"layer by layer ({self.total_cycles / max(1, self.standalone_cycles):.3f}x), bound "
            f"{self.bound_cycles} (busiest: {self.result.bound_resource}; "
            f"{self.total_cycles / max(1, self.bound_cycles):.3f}x the bound)"
        )


# -- composition -----------------------------------------------------------------------------


def compose(
    calls: Sequence[LayerCall], hardware: HardwareConfig, *, _capacity_waits: bool = True
) -> Composition:
    """The calls as one Program with every cross-layer token (see the module docstring).

    `_capacity_waits=False` leaves the capacity tokens out: an unsafe composition that only
    exists to show `check_timeline` rejects it. Raises BufferOverflowError for a call that does
    not fit the hardware on its own, ProgramError for unpaired tokens or unknown tensors.
    """
    for call in calls:
        _check_call(call, hardware)
    producers = _producers(calls)
    tensor_names = _tensor_names(calls, producers)
    room = _room_waits(calls, hardware)
    calls = [
        _prefetch_first(call, set(producers[k]) | call.host_inputs, set(room[k]))
        for k, call in enumerate(calls)
    ]
    offsets = _offsets(calls)
    buffer_names = [
        {name: _buffer_name(k, name) for name in call.program.buffers}
        for k, call in enumerate(calls)
    ]
    buffer_owner = {
        renamed: (k, buffer_pool(name))
        for k, names in enumerate(buffer_names)
        for name, renamed in names.items()
    }
    streams: dict[str, list[Instruction]] = {unit: [] for unit in UNITS}
    edges: list[Edge] = []
    for k, call in enumerate(calls):
        buffers = buffer_names[k]
        for unit, stream in call.program.streams.items():
            streams[unit] += [_rename(inst, buffers, tensor_names[k]) for inst in stream]
        edges += [
            (src, offsets[k][src] + p, dst, offsets[k][dst] + c)
            for src, p, dst, c in _token_edges(call)
        ]
    edges += _dram_edges(calls, offsets, producers)
    if _capacity_waits:
        edges += _capacity_edges(calls, offsets, room)
    program = Program(
        _with_tokens(streams, edges),
        {
            buffer_names[k][name]: decl
            for k, call in enumerate(calls)
            for name, decl in call.program.buffers.items()
        },
        {
            tensor_names[k][name]: shape
            for k, call in enumerate(calls)
            for name, shape in call.program.tensors.items()
        },
        hardware.dtype,
        {"calls": [call.name for call in calls]},
    )
    return Composition(program, offsets, buffer_owner, tensor_names, producers)


def _buffer_name(k: int, name: str) -> str:
    """Call k's buffer `name` in the combined program: `L<k>.<name>`, unless the buffer's name
    picks the DMA queue of its LOADs (an epilogue operand's res, bias_2, ...): then the family
    form `<family>_<k+1><nn>` (res_2 of call 3 -> res_402), which keeps the queue."""
    renamed = f"L{k}.{name}"
    if _load_unit(renamed) == _load_unit(name):
        return renamed
    family, _, number = name.partition("_")
    return f"{family}_{k + 1}{int(number or 1):02d}"


def _load_unit(buffer: str) -> str:
    """The unit a LOAD into `buffer` runs on."""
    slot = Slot(buffer, 0, ((0, 1),))
    return Load(dst=slot, src=Dram("probe", ((0, 1),))).unit


def _check_call(call: LayerCall, hardware: HardwareConfig) -> None:
    """A call must fit the machine on its own and name only its program's tensors."""
    check_dtype(call.program, hardware)
    named = set(call.reads) | set(call.writes) | call.host_inputs
    unknown = sorted(named - set(call.program.tensors))
    if unknown:
        raise ProgramError(
            f"{call.name}: tensors {unknown} are not in its program; it has "
            f"{sorted(call.program.tensors)}"
        )
    unread = sorted(call.host_inputs - set(call.reads))
    if unread:
        raise ProgramError(
            f"{call.name}: host inputs {unread} have no TensorRef in reads: give each one"
        )
    for pool, need in _pool_bytes(call.program).items():
        available = hardware.pool_bytes(pool)
        if need > available:
            parts = ", ".join(
                f"{name} {decl.slots} slot(s) of {list(decl.shape)}"
                for name, decl in call.program.buffers.items()
                if buffer_pool(name) == pool
            )
            raise BufferOverflowError(
                f"{call.name}: buffer pool {pool!r} needs {need} bytes ({parts}) but "
                f"{hardware.name} has {available}: re-tile the layer (more tiles) or pick a "
                "configuration with a bigger buffer"
            )


def _pool_bytes(program: Program) -> dict[str, int]:
    need: dict[str, int] = {}
    for name, decl in program.buffers.items():
        pool = buffer_pool(name)
        need[pool] = need.get(pool, 0) + decl.slots * decl.slot_bytes
    return need


def _producers(calls: Sequence[LayerCall]) -> tuple[dict[str, int], ...]:
    """Per call: each read tensor that the latest earlier call wrote, -> that call."""
    writer: dict[TensorRef, int] = {}
    found = []
    for k, call in enumerate(calls):
        found.append({name: writer[ref] for name, ref in call.reads.items() if ref in writer})
        writer.update({ref: k for ref in call.writes.values()})
    return tuple(found)


def _written_name(call: LayerCall, ref: TensorRef) -> str:
    return next(name for name, written in call.writes.items() if written == ref)


def _tensor_names(
    calls: Sequence[LayerCall], producers: tuple[dict[str, int], ...]
) -> tuple[dict[str, str], ...]:
    """Per call, each tensor's name in the combined program: `L<k>.<name>`, except a read of an
    earlier call's output of the same shape, which is that output (the value flows in DRAM)."""
    names: list[dict[str, str]] = []
    for k, call in enumerate(calls):
        own = {name: f"L{k}.{name}" for name in call.program.tensors}
        for name, i in producers[k].items():
            written = _written_name(calls[i], call.reads[name])
            if calls[i].program.tensors[written] == call.program.tensors[name]:
                own[name] = names[i][written]
        names.append(own)
    return tuple(names)


def _offsets(calls: Sequence[LayerCall]) -> tuple[dict[str, int], ...]:
    """Per call, per unit: where its stream starts in the combined one."""
    total = dict.fromkeys(UNITS, 0)
    offsets = []
    for call in calls:
        offsets.append(dict(total))
        for unit, stream in call.program.streams.items():
            total[unit] += len(stream)
    return tuple(offsets)


def _rename(inst: Instruction, buffers: dict[str, str], tensors: dict[str, str]) -> Instruction:
    """`inst` with its on-chip buffers and DRAM tensors renamed, whatever its operand fields."""
    changes = {}
    for spec in dataclasses.fields(inst):
        value = getattr(inst, spec.name)
        if isinstance(value, Slot):
            changes[spec.name] = dataclasses.replace(value, buffer=buffers[value.buffer])
        elif isinstance(value, Dram):
            changes[spec.name] = dataclasses.replace(value, tensor=tensors[value.tensor])
        elif isinstance(value, tuple) and value and isinstance(value[0], AluOp):
            changes[spec.name] = tuple(
                op
                if op.src is None
                else dataclasses.replace(
                    op, src=dataclasses.replace(op.src, buffer=buffers[op.src.buffer])
                )
                for op in value
            )
    return dataclasses.replace(inst, **changes)


def _token_edges(call: LayerCall) -> list[Edge]:
    """The (producer, consumer) pairs the program's FIFO tokens make: the k-th wait on a queue
    takes its k-th signal. Unwaited signals are dropped (they would shift the next call's)."""
    pending: dict[tuple[str, str], deque[int]] = {}
    for unit, stream in call.program.streams.items():
        for index, inst in enumerate(stream):
            for dst in inst.signal:
                pending.setdefault((unit, dst), deque()).append(index)
    edges = []
    for unit, stream in call.program.streams.items():
        for index, inst in enumerate(stream):
            for src in inst.wait:
                queue = pending.get((src, unit))
                if not queue:
                    raise ProgramError(
                        f"{call.name}: {unit}#{index} {inst.opcode} waits for a {src} token that "
                        f"no {src} instruction signals: the program deadlocks on its own"
                    )
                edges.append((src, queue.popleft(), unit, index))
    return edges


def _prefetch_first(call: LayerCall, dependent: set[str], full: set[str]) -> LayerCall:
    """`call` with the LOADs its first tile needs moved to the front of their queue, if they
    read no `dependent` tensor (an earlier call's output, the host's) and fill no `full` pool
    (where the call waits for room): the units run in order, so the first weights behind an
    input LOAD that waits for the previous layer could not prefetch.

    A LOAD moves only from the part of its queue before the first instruction that waits:
    nothing orders it after an access on another unit (a later weight LOAD into a reused slot
    is ordered by the wait of the input LOAD before it), so moving it cannot deadlock nor
    overwrite data still to be read. Only what the first instruction of each unit reads moves
    (its weights, biases): that instruction needs it anyway, so the layer's own pipeline keeps
    its order. A token a moved LOAD signalled also stood for the instructions before it on its
    unit: that token now comes from the last of those."""
    first_reads = [
        slot for stream in call.program.streams.values() if stream for slot in stream[0].reads()
    ]
    edges = _token_edges(call)
    streams, moved, stood_for = {}, {}, {}
    for unit, stream in call.program.streams.items():
        free, jumped = [], []
        for i, inst in enumerate(stream):
            if inst.wait:
                break
            movable = isinstance(inst, Load) and inst.src.tensor not in dependent
            movable = movable and buffer_pool(inst.dst.buffer) not in full
            movable = movable and any(_same_data(inst.dst, s) for s in first_reads)
            movable = movable and not any(_same_data(inst.dst, w) for j in jumped for w in j)
            if movable:
                free.append(i)
            else:
                jumped.append(inst.writes())
        hoisted = set(free)
        order = free + [i for i in range(len(stream)) if i not in hoisted]
        moved |= {(unit, old): new for new, old in enumerate(order)}
        streams[unit] = [stream[i] for i in order]
        before = -1
        for i in range(len(stream)):
            if i in hoisted and before >= 0:
                stood_for[unit, i] = before
            elif i not in hoisted:
                before = i
    edges += [(src, stood_for[src, p], dst, c) for src, p, dst, c in edges if (src, p) in stood_for]
    edges = [(src, moved[src, p], dst, moved[dst, c]) for src, p, dst, c in edges]
    program = dataclasses.replace(call.program, streams=_with_tokens(streams, edges))
    return dataclasses.replace(call, program=program)


def _same_data(written: Slot, read: Slot) -> bool:
    """A read of `read` sees what was written to `written`."""
    same_slot = (written.buffer, written.slot) == (read.buffer, read.slot)
    return same_slot and _overlaps(written.region, read.region)


def _positions(call: LayerCall, offset: dict[str, int], matches) -> dict[str, list[int]]:
    """Per unit, the combined indices of the call's instructions for which `matches(inst)`."""
    found: dict[str, list[int]] = {}
    for unit, stream in call.program.streams.items():
        hits = [offset[unit] + i for i, inst in enumerate(stream) if matches(inst)]
        if hits:
            found[unit] = hits
    return found


def _loads_of(name: str):
    return lambda inst: isinstance(inst, Load) and inst.src.tensor == name


def _stores_of(name: str):
    return lambda inst: isinstance(inst, Store) and inst.dst.tensor == name


def _accesses_of(name: str):
    return lambda inst: _loads_of(name)(inst) or _stores_of(name)(inst)


def _after(sources: dict[str, list[int]], targets: dict[str, list[int]]) -> list[Edge]:
    """Edges making the first target on every unit wait for the last source on every unit."""
    return [
        (src, hits[-1], dst, firsts[0])
        for src, hits in sources.items()
        for dst, firsts in targets.items()
        if src != dst
    ]


def _host_syncs(calls: Sequence[LayerCall]) -> tuple[dict[str, int], ...]:
    """Per call, for each host input: the first call that read that same tensor. The host wrote
    it before enqueuing that call, so it synced with the calls before it, no later ones."""
    first: dict[TensorRef, int] = {}
    for k, call in enumerate(calls):
        for name in call.host_inputs:
            first.setdefault(call.reads[name], k)
    return tuple({name: first[call.reads[name]] for name in call.host_inputs} for call in calls)


def _before(offset: dict[str, int]) -> dict[str, list[int]]:
    """Per unit, the last instruction before `offset`: a host sync waits for all of it."""
    return {unit: [index - 1] for unit, index in offset.items() if index > 0}


def _dram_edges(
    calls: Sequence[LayerCall],
    offsets: tuple[dict[str, int], ...],
    producers: tuple[dict[str, int], ...],
) -> list[Edge]:
    """RAW through DRAM (the STOREs of what a LOAD reads, or the host's sync), and WAR / WAW
    on reused storage."""
    edges: list[Edge] = []
    synced = _host_syncs(calls)
    for k, call in enumerate(calls):
        for name, ref in call.reads.items():
            loads = _positions(call, offsets[k], _loads_of(name))
            if name in producers[k]:
                i = producers[k][name]
                written = _written_name(calls[i], ref)
                edges += _region_edges(calls[i], offsets[i], written, call, offsets[k], name)
            elif name in call.host_inputs:
                edges += _after(_before(offsets[synced[k][name]]), loads)
        for name, ref in call.writes.items():
            stores = _positions(call, offsets[k], _stores_of(name))
            for i in range(k):
                for old, old_ref in [*calls[i].reads.items(), *calls[i].writes.items()]:
                    if old_ref.storage == ref.storage and old_ref != ref:
                        edges += _after(_positions(calls[i], offsets[i], _accesses_of(old)), stores)
    return edges


def _region_edges(
    producer: LayerCall,
    produced_at: dict[str, int],
    written: str,
    consumer: LayerCall,
    consumed_at: dict[str, int],
    name: str,
) -> list[Edge]:
    """Each LOAD of `name` waits for the last STORE (on each unit) of `written` whose region
    overlaps what it reads: the next layer's first tiles need only the first rows stored."""
    same_shape = producer.program.tensors[written] == consumer.program.tensors[name]
    stores = [
        (unit, produced_at[unit] + p, inst.dst.region)
        for unit, stream in producer.program.streams.items()
        for p, inst in enumerate(stream)
        if isinstance(inst, Store) and inst.dst.tensor == written
    ]
    edges: list[Edge] = []
    for unit, stream in consumer.program.streams.items():
        for c, inst in enumerate(stream):
            if not (isinstance(inst, Load) and inst.src.tensor == name):
                continue
            last: dict[str, int] = {}
            for store_unit, p, region in stores:
                if _reads_from(region, inst.src.region, same_shape):
                    last[store_unit] = max(last.get(store_unit, p), p)
            edges += [(src, p, unit, consumed_at[unit] + c) for src, p in last.items()]
    return edges


def _reads_from(stored, loaded, same_shape: bool) -> bool:
    """A LOAD of region `loaded` reads what a STORE to `stored` wrote. Regions of a tensor seen
    in two shapes (a reshape between the calls) are not comparable: any non-empty ones are."""
    if same_shape:
        return _overlaps(stored, loaded)
    return all(extent > 0 for _, extent in (*stored, *loaded))


def _overlaps(a, b) -> bool:
    """Two regions share an element (an empty region, a pure zero fill's, shares none)."""
    return all(
        e1 > 0 and e2 > 0 and s1 < s2 + e2 and s2 < s1 + e1 for (s1, e1), (s2, e2) in zip(a, b)
    )


def _pool_accesses(call: LayerCall, offset: dict[str, int]) -> dict[str, tuple[dict, dict]]:
    """Per pool, per unit: the call's first instruction writing the pool and its last
    instruction touching it (combined indices)."""
    found: dict[str, tuple[dict, dict]] = {}
    for unit, stream in call.program.streams.items():
        for i, inst in enumerate(stream):
            for slot, is_write in [(s, False) for s in inst.reads()] + [
                (s, True) for s in inst.writes()
            ]:
                first, last = found.setdefault(buffer_pool(slot.buffer), ({}, {}))
                if is_write:
                    first.setdefault(unit, offset[unit] + i)
                last[unit] = offset[unit] + i
    return found


def _room_waits(calls: Sequence[LayerCall], hardware: HardwareConfig) -> list[dict[str, int]]:
    """Per call, per pool it must wait in: the latest earlier call that does not fit beside it
    (with the calls between) in that pool."""
    pools = [_pool_bytes(call.program) for call in calls]
    waits: list[dict[str, int]] = []
    for k in range(len(calls)):
        found = {}
        for pool, need in pools[k].items():
            live, i = need, k - 1
            while i >= 0:
                live += pools[i].get(pool, 0)
                if live > hardware.pool_bytes(pool):
                    found[pool] = i
                    break
                i -= 1
        waits.append(found)
    return waits


def _capacity_edges(
    calls: Sequence[LayerCall],
    offsets: tuple[dict[str, int], ...],
    room: list[dict[str, int]],
) -> list[Edge]:
    """Per pool, a call's first writes wait for the last access of that pool by the latest
    call that does not fit beside it (and every call before): calls live at once in a pool
    then always fit."""
    accesses = [_pool_accesses(call, offsets[k]) for k, call in enumerate(calls)]
    edges: list[Edge] = []
    for k in range(len(calls)):
        for pool, i in room[k].items():
            if pool not in accesses[k]:
                continue
            last: dict[str, list[int]] = {}
            for j in range(i + 1):  # later calls overwrite: each unit's last access up to i
                for unit, index in accesses[j].get(pool, ({}, {}))[1].items():
                    last[unit] = [index]
            firsts = {unit: [index] for unit, index in accesses[k][pool][0].items()}
            edges += _after(last, firsts)
    return edges


def _with_tokens(streams: dict[str, list[Instruction]], edges: list[Edge]) -> dict:
    """The streams with tokens for exactly the edges no other edge of the same queue implies.

    An edge p -> c is implied by p' -> c' on the same queue with p' >= p and c' <= c (units run
    in order). The edges left rise in both p and c, so FIFO order pairs each signal with its
    wait, and each instruction signals and waits at most once per queue.
    """
    by_queue: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for src, p, dst, c in edges:
        if src != dst:
            by_queue.setdefault((src, dst), []).append((c, -p))
    waits: dict[tuple[str, int], list[str]] = {}
    signals: dict[tuple[str, int], list[str]] = {}
    for (src, dst), pairs in by_queue.items():
        latest = -1
        for c, negative_p in sorted(pairs):
            if -negative_p > latest:
                latest = -negative_p
                waits.setdefault((dst, c), []).append(src)
                signals.setdefault((src, latest), []).append(dst)
    order = UNITS.index
    return {
        unit: tuple(
            dataclasses.replace(
                inst,
                wait=tuple(sorted(waits.get((unit, i), ()), key=order)),
                signal=tuple(sorted(signals.get((unit, i), ()), key=order)),
            )
            for i, inst in enumerate(stream)
        )
        for unit, stream in streams.items()
    }


# -- the independent proof: live bytes per pool, DRAM order across calls ----------------------


def check_timeline(
    composition: Composition,
    calls: Sequence[LayerCall],
    result: SimResult,
    hardware: HardwareConfig,
) -> None:
    """Prove from the simulated events alone what the renamed buffers hide from the simulator.

    A buffer is live from the start of its first write to the end of its last access; in every
    pool the live buffers' bytes must stay within `hardware.pool_bytes(pool)`
    (BufferOverflowError). A LOAD of a tensor an earlier call wrote starts after every STORE
    of that call that overlaps what it reads, a LOAD of a host-written tensor after the work
    of the calls the host synced with, and a STORE over reused storage after the earlier
    calls' accesses to it (HazardError).
    """
    program = composition.program
    first_write: dict[str, int] = {}
    last_access: dict[str, int] = {}
    dram: dict[
        tuple[int, str, str], list
    ] = {}  # (call, tensor, LOAD/STORE) -> [(start, end, region)]
    call_end = [0] * len(calls)
    for event in result.events:
        inst = program.streams[event.unit][event.index]
        for slot in inst.writes():
            first_write[slot.buffer] = min(first_write.get(slot.buffer, event.start), event.start)
        for slot in (*inst.reads(), *inst.writes()):
            last_access[slot.buffer] = max(last_access.get(slot.buffer, event.end), event.end)
        k = composition.call_of(event.unit, event.index)
        call_end[k] = max(call_end[k], event.end)
        for operand in inst.operands().values():
            if isinstance(operand, Dram):
                accesses = dram.setdefault((k, operand.tensor, inst.opcode), [])
                accesses.append((event.start, event.end, operand.region))
    _check_pools(composition, first_write, last_access, hardware)
    _check_dram(composition, calls, dram, call_end)


def _check_pools(composition: Composition, first_write, last_access, hardware) -> None:
    decls = composition.program.buffers
    by_pool: dict[str, list[tuple[int, int, str]]] = {}
    for name, start in first_write.items():
        _, pool = composition.buffer_owner[name]
        size = decls[name].slots * decls[name].slot_bytes
        by_pool.setdefault(pool, []).append((start, size, name))
        by_pool[pool].append((last_access[name], -size, name))
    for pool, points in by_pool.items():
        available, live, holding = hardware.pool_bytes(pool), 0, set()
        for time, size, name in sorted(points, key=lambda p: (p[0], p[1])):  # frees first
            live += size
            (holding.add if size > 0 else holding.discard)(name)
            if live > available:
                raise BufferOverflowError(
                    f"timeline: buffer pool {pool!r} holds {live} bytes at cycle {time} "
                    f"({', '.join(sorted(holding))}) but {hardware.name} has {available}: a "
                    "later call wrote the pool before an earlier one's last access of it; "
                    "compose with its capacity tokens"
                )


def _check_dram(composition: Composition, calls, dram, call_end) -> None:
    """The DRAM order, from the calls' own tensor identities (not from the composition's)."""
    names, producers, synced = composition.tensor_names, _producers(calls), _host_syncs(calls)

    def span(k: int, tensor: str, opcode: str) -> tuple[int, int] | None:
        accesses = dram.get((k, names[k][tensor], opcode))
        if not accesses:
            return None
        return min(a[0] for a in accesses), max(a[1] for a in accesses)

    for k, call in enumerate(calls):
        for name, ref in call.reads.items():
            loaded = span(k, name, "LOAD")
            if loaded is None:
                continue
            if name in producers[k]:
                i = producers[k][name]
                written = _written_name(calls[i], ref)
                shape = calls[i].program.tensors[written] == call.program.tensors[name]
                stores = dram.get((i, names[i][written], "STORE"), [])
                for start, _, region in dram[k, names[k][name], "LOAD"]:
                    late = [
                        end
                        for _, end, stored in stores
                        if _reads_from(stored, region, shape) and end > start
                    ]
                    if late:
                        raise HazardError(
                            f"timeline: {call.name} loads {name} at cycle {start}, before "
                            f"{calls[i].name} finished storing that region at {max(late)}: "
                            "wait for its STORE"
                        )
            elif name in call.host_inputs:
                sync = max(call_end[: synced[k][name]], default=0)
                if loaded[0] < sync:
                    raise HazardError(
                        f"timeline: {call.name} loads host-written {name} at cycle {loaded[0]}, "
                        f"before the calls the host waited for ended at {sync}: sync first"
                    )
        for name, ref in call.writes.items():
            stored = span(k, name, "STORE")
            for i in range(k):
                for old, old_ref in [*calls[i].reads.items(), *calls[i].writes.items()]:
                    if old_ref.storage != ref.storage or old_ref == ref or stored is None:
                        continue
                    for opcode in ("LOAD", "STORE"):
                        touched = span(i, old, opcode)
                        if touched is not None and stored[0] < touched[1]:
                            raise HazardError(
                                f"timeline: {call.name} stores {name} at cycle {stored[0]} over "
                                f"storage {calls[i].name} still accesses ({old}, until "
                                f"{touched[1]}): wait for that access"
                            )


# -- the timeline ---------------------------------------------------------------------------


def network_timeline(calls: Sequence[LayerCall], hardware: HardwareConfig) -> NetworkTimeline:
    """Run the calls as one accelerator timeline (timing only), prove it safe, and give each
    call's span on it beside its standalone cycles (simulated here if the call has none)."""
    if not calls:
        raise ConvAddError("no offloaded calls to put on a timeline: run the network first")
    composition = compose(calls, hardware)
    result = simulate(composition.program, hardware, functional=False, check_buffers=False)
    check_timeline(composition, calls, result, hardware)
    starts = [result.total_cycles] * len(calls)
    ends = [0] * len(calls)
    for event in result.events:
        k = composition.call_of(event.unit, event.index)
        starts[k], ends[k] = min(starts[k], event.start), max(ends[k], event.end)
    layers = tuple(
        LayerSpan(call.name, min(starts[k], ends[k]), ends[k], *_standalone(call, hardware))
        for k, call in enumerate(calls)
    )
    return NetworkTimeline(result, layers, composition)


def _standalone(call: LayerCall, hardware: HardwareConfig) -> tuple[int, int]:
    """The call alone on an empty machine: its cycles and its bound (simulated if not known)."""
    if call.standalone_cycles is not None and call.standalone_bound_cycles is not None:
        return call.standalone_cycles, call.standalone_bound_cycles
    alone = simulate(call.program, hardware, functional=False)
    return alone.total_cycles, alone.bound_cycles


def layer_calls(runs) -> list[LayerCall]:
    """The recorded offloaded calls (`codegen.LayerRun`s) as timeline calls: a read of the
    conv's input or of an output-shaped epilogue operand (a residual) that no earlier call
    wrote is host-written; weights and per-channel vectors are constants."""
    calls = []
    for k, run in enumerate(runs):
        layer = run.layer
        if run.output is None or len(run.inputs) != len(layer.roles):
            raise ConvAddError(
                f"call {k} ({layer.symbol}) was recorded without its tensors' identities: "
                "record the run inside tvm_convadd.recording() with this tvm-convadd"
            )
        shapes = layer.workload.operand_shapes
        activations = {
            role
            for role in layer.roles
            if role == "data" or shapes.get(role) == layer.workload.out_shape
        }
        calls.append(
            LayerCall(
                f"L{k} {layer.symbol}",
                layer.program,
                dict(zip(layer.roles, run.inputs)),
                {"output": run.output},
                frozenset(activations),
                run.result.total_cycles,
                run.result.bound_cycles,
            )
        )
    return calls


def network_timeline_of(session_or_recorder) -> NetworkTimeline:
    """The timeline of what an `OffloadSession`'s last run, or a `recording()` block, ran."""
    runs = list(session_or_recorder.runs)
    if not runs:
        raise ConvAddError("no offloaded calls recorded: run the network (net.run) first")
    hardware = {run.layer.hardware.name: run.layer.hardware for run in runs}
    if len(hardware) != 1:
        raise ConvAddError(
            f"the calls ran on several hardware configs {sorted(hardware)}: one timeline is "
            "one machine; record one network build at a time"
        )
    return network_timeline(layer_calls(runs), next(iter(hardware.values())))
