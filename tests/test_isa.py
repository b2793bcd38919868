"""The ISA: lossless JSON round trip, a readable listing, clear errors for malformed programs."""

from __future__ import annotations

import json

import pytest

from tests.handmade_programs import ConvAddShape, tiled_convadd_program
from tvm_convadd.errors import ProgramError
from tvm_convadd.target.isa import (
    Add,
    BufferDecl,
    Conv,
    Dram,
    Load,
    Program,
    Slot,
    Store,
    region_size,
)

SHAPES = {
    "bias_relu": ConvAddShape(bias=True, relu=True, stride=2),
    "no_bias": ConvAddShape(bias=False, relu=False, kernel=1, padding=0),
}


@pytest.fixture(params=sorted(SHAPES))
def program(request) -> Program:
    return tiled_convadd_program(SHAPES[request.param], tiles=3)


def test_json_round_trip_is_lossless(program):
    again = Program.from_json(program.to_json())
    assert again == program
    assert again.to_json() == program.to_json()
    adds = again.streams["add"]
    shape = SHAPES["bias_relu"] if adds[0].relu else SHAPES["no_bias"]
    assert all((a.bias is None) != shape.bias and a.relu == shape.relu for a in adds)


def test_listing_shows_opcodes_operands_and_flags():
    listing = str(tiled_convadd_program(SHAPES["bias_relu"], tiles=3))
    for text in ("LOAD", "CONV", "ADD", "STORE", "stride=2x2", "relu", "wait(conv)"):
        assert text in listing
    assert "signal(conv,load,store)" in listing
    assert "acc[1]" in listing and ".buffer acc slots=2" in listing
    assert "src=data[0:1, 0:16, -1:" in listing  # the padding rows lie outside the tensor


def test_reads_writes_and_work():
    inp = Slot("inp", 0, ((0, 1), (0, 4), (0, 5), (0, 5)))
    wgt = Slot("wgt", 0, ((0, 8), (0, 4), (0, 3), (0, 3)))
    acc = Slot("acc", 1, ((0, 1), (0, 8), (0, 3), (0, 3)))
    conv = Conv(inp=inp, wgt=wgt, acc=acc)
    assert conv.reads() == (inp, wgt) and conv.writes() == (acc,)
    assert conv.macs == 1 * 8 * 3 * 3 * 4 * 3 * 3
    add = Add(acc=acc, res=acc, out=acc)
    assert add.reads() == (acc, acc) and add.bias is None
    load = Load(dst=inp, src=Dram("data", ((0, 1), (0, 4), (-1, 5), (-1, 5))))
    assert load.writes() == (inp,) and load.reads() == ()
    store = Store(src=acc, dst=Dram("output", acc.region))
    assert store.reads() == (acc,) and store.writes() == ()
    assert region_size(acc.region) == 72


def _mutated(program: Program, edit) -> str:
    data = json.loads(program.to_json())
    edit(data)
    return json.dumps(data)


def _set(path, value):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return edit


_DELETE = object()
BASE = tiled_convadd_program(SHAPES["bias_relu"], tiles=3)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set(("streams", "add", 0, "op"), "MUL"), r"add#0: unknown opcode 'MUL'; expected one of"),
        (_set(("streams", "add", 0, "op"), ["ADD"]), r"unknown opcode \['ADD'\]"),
        (_set(("streams", "conv", 1, "wait"), ["gemm"]), r"conv#1: wait names unknown units"),
        (_set(("streams", "conv", 1, "signal"), "add"), r"signal must be a list of unit names"),
        (_set(("streams", "conv", 0, "acc"), _DELETE), r"conv#0: CONV is missing an operand"),
        (_set(("streams", "load", 0, "src", "tensor"), _DELETE), r"load#0 LOAD.src: DRAM operand"),
        (_set(("streams", "add", 2, "acc", "slot"), 2), r"add#2 ADD.acc: slot 2 of 'acc'.*0\.\.1"),
        (_set(("streams", "add", 2, "acc", "slot"), "x"), r"add#2 ADD.acc: on-chip operand"),
        (_set(("streams", "add", 2, "res", "buffer"), "sram"), r"unknown buffer 'sram'"),
        (
            _set(("streams", "conv", 0, "acc", "region"), [[0, 1], [0, 99], [0, 1], [0, 1]]),
            r"conv#0 CONV.acc: region .* runs outside shape",
        ),
        (_set(("streams", "conv", 0, "acc", "region"), [[0, 1]]), r"has rank 1"),
        (_set(("streams", "conv", 0, "acc", "region"), [[0, 0]]), r"empty dimension"),
        (_set(("streams", "conv", 0, "acc", "region"), 5), r"is not a list of \[start, extent\]"),
        (_set(("streams", "conv", 0, "stride"), [0, 1]), r"CONV stride \[0, 1\]: give two"),
        (_set(("streams", "store", 0, "dst", "region", 2), [15, 4]), r"runs outside shape"),
        (_set(("streams", "store", 0, "dst", "tensor"), "out"), r"unknown tensor 'out'"),
        (_set(("streams", "vector"), []), r"streams for unknown units \['vector'\]"),
        (_set(("buffers",), _DELETE), r"missing a field: 'buffers'"),
        (_set(("buffers", "acc", "slots"), "two"), r"malformed buffer or tensor"),
        (_set(("version",), 2), r"expected an object with version 1"),
    ],
)
def test_malformed_programs_raise_clear_errors(edit, message):
    with pytest.raises(ProgramError, match=message):
        Program.from_json(_mutated(BASE, edit))


def test_unparsable_json_names_the_position():
    with pytest.raises(ProgramError, match=r"does not parse at line 1 column"):
        Program.from_json('{"version": 1,')
    with pytest.raises(ProgramError, match="expected an object"):
        Program.from_json("[1, 2]")


def test_instruction_on_the_wrong_unit_is_refused():
    streams = dict(BASE.streams)
    streams["conv"] = (*streams["conv"], streams["add"][0])
    with pytest.raises(ProgramError, match=r"conv#3: ADD runs on the add unit, not on conv"):
        Program(streams, BASE.buffers, BASE.tensors)


def test_buffer_bytes():
    assert BufferDecl((2, 3), slots=2).slot_bytes == 24
    assert BufferDecl((2, 3), slots=1, dtype="float16").slot_bytes == 12
