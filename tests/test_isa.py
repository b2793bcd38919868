"""The ISA: lossless JSON round trip, a readable listing, clear errors for malformed programs."""

from __future__ import annotations

import json

import pytest

from tests.handmade_programs import ConvAddShape, tiled_convadd_program
from tvm_convadd.errors import ProgramError
from tvm_convadd.target.isa import (
    Add,
    AluOp,
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
    "depthwise_relu6": ConvAddShape(groups=16, scale=True, residual=False, relu=True, clip=6.0),
}
# The op list each shape's ADDs carry, written out by hand.
OPS = {
    "bias_relu": [("add", "channel"), ("add", "tensor"), ("max", 0.0)],
    "no_bias": [("add", "tensor")],
    "depthwise_relu6": [("mul", "channel"), ("add", "channel"), ("max", 0.0), ("min", 6.0)],
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_json_round_trip_is_lossless(name):
    program = tiled_convadd_program(SHAPES[name], tiles=3)
    again = Program.from_json(program.to_json())
    assert again == program
    assert again.to_json() == program.to_json()
    for add in again.streams["add"]:
        steps = [(op.op, op.kind if op.src is not None else op.value) for op in add.ops]
        assert steps == OPS[name]
    assert {conv.groups for conv in again.streams["conv"]} == {SHAPES[name].groups}


def test_listing_shows_opcodes_operands_and_flags():
    listing = str(tiled_convadd_program(SHAPES["bias_relu"], tiles=3))
    for text in ("LOAD", "CONV", "ADD", "STORE", "stride=2x2", "wait(conv)"):
        assert text in listing
    assert "groups=" not in listing  # groups 1 goes unsaid
    assert (
        "ADD   out[1][0:1, 0:16, 0:3, 0:8] = max(acc[1][0:1, 0:16, 0:3, 0:8] + "
        "bias[0][0:1, 0:16, 0:1, 0:1] + res[1][0:1, 0:16, 0:3, 0:8], 0)  ; wait(conv,vload)"
    ) in listing
    assert "signal(conv,vload,store)" in listing
    assert "acc[1]" in listing and ".buffer acc slots=2" in listing
    # the window's padding row and columns are zeros around the part inside the tensor
    assert "src=data[0:1, 0:16, 0:6, 0:16], pad=[0+0, 0+0, 1+0, 1+1]" in listing
    depthwise = str(tiled_convadd_program(SHAPES["depthwise_relu6"], tiles=2))
    assert "stride=1x1, groups=16" in depthwise
    assert (
        "= min(max(acc[0][0:1, 0:16, 0:8, 0:16] * scale[0][0:1, 0:16, 0:1, 0:1] + "
        "bias[0][0:1, 0:16, 0:1, 0:1], 0), 6)"
    ) in depthwise


@pytest.mark.parametrize(
    ("ops", "expression"),
    [
        ((), "acc"),
        ((("add", "c"),), "acc + c"),
        ((("add", "c"), ("mul", "s")), "(acc + c) * s"),
        ((("mul", "s"), ("add", "c")), "acc * s + c"),
        ((("max", 0.0), ("mul", "s")), "max(acc, 0) * s"),
        ((("add", "c"), ("max", 0.0), ("add", "r")), "max(acc + c, 0) + r"),
        ((("min", -1.5), ("max", 2.0)), "max(min(acc, -1.5), 2)"),
        ((("max", 0.0), ("add", "c"), ("mul", "s")), "(max(acc, 0) + c) * s"),
    ],
)
def test_add_expression_reads_as_the_op_list(ops, expression):
    """Parentheses exactly where a mul follows a sum; constants in short form."""
    whole = ((0, 1), (0, 2), (0, 1), (0, 1))
    steps = tuple(
        AluOp(op, "const", value=x)
        if isinstance(x, float)
        else AluOp(op, "tensor", Slot(x, 0, whole))
        for op, x in ops
    )
    shown = Add(acc=Slot("acc", 0, whole), out=Slot("out", 0, whole), ops=steps).expression()
    assert shown.replace("[0][0:1, 0:2, 0:1, 0:1]", "") == expression


def test_reads_writes_and_work():
    inp = Slot("inp", 0, ((0, 1), (0, 4), (0, 5), (0, 5)))
    wgt = Slot("wgt", 0, ((0, 8), (0, 4), (0, 3), (0, 3)))
    acc = Slot("acc", 1, ((0, 1), (0, 8), (0, 3), (0, 3)))
    conv = Conv(inp=inp, wgt=wgt, acc=acc)
    assert conv.reads() == (inp, wgt) and conv.writes() == (acc,)
    assert conv.groups == 1 and conv.macs == 1 * 8 * 3 * 3 * 4 * 3 * 3
    grouped = Conv(inp=inp, wgt=Slot("wgt", 0, ((0, 8), (0, 2), (0, 3), (0, 3))), acc=acc, groups=2)
    assert grouped.macs == 1 * 8 * 3 * 3 * 2 * 3 * 3  # each output reduces over its group's 2
    depthwise = Conv(
        inp=inp, wgt=Slot("wgt", 0, ((0, 4), (0, 1), (0, 3), (0, 3))), acc=acc, groups=4
    )
    assert depthwise.macs == 72 * 9
    bias = Slot("bias", 0, ((0, 1), (0, 8), (0, 1), (0, 1)))
    res = Slot("res", 1, acc.region)
    ops = (
        AluOp("add", "channel", bias),
        AluOp("max", "const", value=0),
        AluOp("add", "tensor", res),
    )
    add = Add(acc=acc, out=Slot("out", 0, acc.region), ops=ops)
    assert add.reads() == (acc, bias, res) and add.writes() == (Slot("out", 0, acc.region),)
    assert add.ops[1].value == 0.0 and isinstance(add.ops[1].value, float)
    assert Add(acc=acc, out=acc).reads() == (acc,)
    load = Load(dst=inp, src=Dram("data", ((0, 1), (0, 4), (0, 4), (0, 4))), pad=_HALO)
    assert load.writes() == (inp,) and load.reads() == ()
    assert load.padded_extents == (1, 4, 5, 5)
    store = Store(src=acc, dst=Dram("output", acc.region))
    assert store.reads() == (acc,) and store.writes() == ()
    assert region_size(acc.region) == 72


_HALO = ((0, 0), (0, 0), (1, 0), (1, 0))
TENSOR = (1, 4, 8, 8)
DST = Slot("inp", 0, ((0, 1), (0, 4), (0, 5), (0, 10)))


@pytest.mark.parametrize(
    ("window", "src", "pad"),
    [
        # inside the tensor: no padding at all
        (((0, 1), (0, 4), (2, 5), (0, 8)), ((0, 1), (0, 4), (2, 5), (0, 8)), ()),
        # top row and both side columns are padding
        (((0, 1), (0, 4), (-1, 5), (-1, 10)), ((0, 1), (0, 4), (0, 4), (0, 8)), (1, 0, 1, 1)),
        # past the bottom edge
        (((0, 1), (0, 4), (5, 5), (-1, 10)), ((0, 1), (0, 4), (5, 3), (0, 8)), (0, 2, 1, 1)),
        # wholly below the tensor: an empty src, a pure zero fill
        (((0, 1), (0, 4), (9, 5), (-1, 10)), ((0, 1), (0, 4), (8, 0), (0, 8)), (0, 5, 1, 1)),
        # wholly above it
        (((0, 1), (0, 4), (-6, 5), (-1, 10)), ((0, 1), (0, 4), (0, 0), (0, 8)), (5, 0, 1, 1)),
    ],
    ids=["inside", "halo", "bottom", "below", "above"],
)
def test_padded_load_clips_the_window_and_pads_the_rest(window, src, pad):
    dst = Slot("inp", 0, tuple((0, extent) for _, extent in window))
    load = Load.padded(dst, Dram("data", window), TENSOR, signal=("conv",))
    expected = ((0, 0), (0, 0), pad[:2], pad[2:]) if pad else ()
    assert load.src == Dram("data", src) and load.pad == expected
    assert load.padded_extents == tuple(extent for _, extent in window)
    assert load.signal == ("conv",)
    program = Program({"load": (load,)}, {"inp": BufferDecl(_extents(dst), 1)}, {"data": TENSOR})
    assert Program.from_json(program.to_json()) == program
    assert ("pad=[" in program.listing()) == bool(pad)


def _extents(slot: Slot) -> tuple[int, ...]:
    return tuple(extent for _, extent in slot.region)


def test_all_zero_pad_is_no_pad_and_a_rank_mismatch_is_refused():
    src = Dram("data", ((0, 1), (0, 4), (0, 5), (0, 8)))
    assert Load(dst=DST, src=src, pad=((0, 0),) * 4) == Load(dst=DST, src=src)
    with pytest.raises(ProgramError, match=r"region rank 2, the tensor has 4 dims"):
        Load.padded(DST, Dram("data", ((0, 1), (0, 4))), TENSOR)


@pytest.mark.parametrize(
    ("load", "message"),
    [
        (
            Load(dst=DST, src=Dram("data", ((0, 1), (0, 4), (-1, 5), (-1, 10)))),
            r"load#0 LOAD.src: region \[0:1, 0:4, -1:4, -1:9\] runs outside shape \[1, 4, 8, 8\]: "
            r"a LOAD's src lies inside the tensor, zeros outside it are its pad",
        ),
        (
            Load(dst=DST, src=Dram("data", ((0, 1), (0, 4), (0, 5), (0, 8))), pad=((1, 1),)),
            r"load#0 LOAD.pad \[1\+1\]: one \(before, after\) per dimension of dst, which has 4",
        ),
        (
            Load(
                dst=DST,
                src=Dram("data", ((0, 1), (0, 4), (0, 5), (0, 8))),
                pad=(*_HALO[:3], (-1, 3)),
            ),
            r"LOAD.pad .*: zero counts must be >= 0",
        ),
        (
            Load(dst=DST, src=Dram("data", ((0, 1), (0, 4), (0, 0), (0, 8)))),
            None,  # an empty src is allowed in a LOAD (the simulator checks dst = pad + src)
        ),
    ],
    ids=["outside", "pad_rank", "negative_pad", "empty_src"],
)
def test_load_src_must_lie_inside_the_tensor(load, message):
    buffers, tensors = {"inp": BufferDecl(_extents(DST), 1)}, {"data": TENSOR}
    if message is None:
        assert Program({"load": (load,)}, buffers, tensors).streams["load"] == (load,)
        return
    with pytest.raises(ProgramError, match=message):
        Program({"load": (load,)}, buffers, tensors)


def test_empty_store_region_is_refused():
    out = Slot("out", 0, ((0, 1), (0, 4), (0, 1), (0, 8)))
    store = Store(src=out, dst=Dram("output", ((0, 1), (0, 4), (0, 0), (0, 8))))
    with pytest.raises(ProgramError, match=r"store#0 STORE.dst: region .* has an empty dimension"):
        Program({"store": (store,)}, {"out": BufferDecl(_extents(out), 1)}, {"output": TENSOR})


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
        (
            _set(("streams", "conv", 0, "acc"), _DELETE),
            r"conv#0: CONV is missing a field: \['acc'\]; "
            r"it needs \['inp', 'wgt', 'acc', 'groups'\]",
        ),
        (_set(("streams", "load", 0, "src", "tensor"), _DELETE), r"load#0 LOAD.src: DRAM operand"),
        (_set(("streams", "add", 2, "acc", "slot"), 2), r"add#2 ADD.acc: slot 2 of 'acc'.*0\.\.1"),
        (
            _set(("streams", "add", 2, "acc", "slot"), "x"),
            r"add#2 ADD.acc.slot 'x': must be an int",
        ),
        (
            _set(("streams", "add", 2, "acc", "slot"), 0.5),
            r"add#2 ADD.acc.slot 0.5: must be an int",
        ),
        (
            _set(("streams", "add", 2, "acc", "slot"), True),
            r"ADD.acc.slot True: must be an integer",
        ),
        (
            _set(("streams", "add", 2, "acc", "slot"), -1),
            r"ADD.acc.slot -1: must be an integer >= 0",
        ),
        (_set(("streams", "add", 2, "acc", "buffer"), 3), r"add#2 ADD.acc.buffer 3: must be a str"),
        (
            _set(("streams", "add", 2, "acc"), "acc[0]"),
            r"add#2 ADD.acc: on-chip operand 'acc\[0\]'",
        ),
        (
            _set(("streams", "add", 2, "acc", "color"), 1),
            r"ADD.acc: on-chip .*unknown field.*color",
        ),
        (_set(("streams", "add", 0, "relu"), True), r"add#0: ADD has no field\(s\) \['relu'\]"),
        (_set(("streams", "add", 0, "res"), {}), r"add#0: ADD has no field\(s\) \['res'\]"),
        (
            _set(("streams", "add", 0, "ops"), _DELETE),
            r"add#0: ADD is missing a field: \['ops'\]; it needs \['acc', 'out', 'ops'\]",
        ),
        (_set(("streams", "add", 0, "ops"), {}), r"add#0 ADD.ops \{\}: must be a list"),
        (_set(("streams", "add", 0, "ops", 0), "bias"), r"add#0 ADD.ops\[0\]: ALU op 'bias': must"),
        (
            _set(("streams", "add", 0, "ops", 0, "op"), "sub"),
            r"ALU op 'sub': choose one of \['add', 'mul', 'max', 'min'\]",
        ),
        (_set(("streams", "add", 0, "ops", 0, "op"), 1), r"add#0 ADD.ops\[0\].op 1: must be a str"),
        (
            _set(("streams", "add", 0, "ops", 0, "kind"), "vector"),
            r"ALU operand kind 'vector': choose one of \['tensor', 'channel', 'const'\]",
        ),
        (
            _set(("streams", "add", 0, "ops", 0, "kind"), _DELETE),
            r"add#0 ADD.ops\[0\]: ALU op .*: missing \['kind'\]",
        ),
        (
            _set(("streams", "add", 0, "ops", 0, "scale"), 2),
            r"add#0 ADD.ops\[0\]: ALU op: unknown field\(s\) \['scale'\]",
        ),
        (
            _set(("streams", "add", 0, "ops", 0, "src"), _DELETE),
            r"add#0 ADD.ops\[0\]: channel ALU op: give a src \(an on-chip operand\), no value",
        ),
        (
            _set(("streams", "add", 0, "ops", 0, "value"), 1.0),
            r"add#0 ADD.ops\[0\]: channel ALU op: give a src",
        ),
        (
            _set(("streams", "add", 0, "ops", 0, "src", "slot"), "0"),
            r"add#0 ADD.ops\[0\].src.slot '0': must be an integer",
        ),
        (
            _set(("streams", "add", 0, "ops", 0, "src", "buffer"), "sram"),
            r"add#0 ADD.ops\[0\].src: unknown buffer 'sram'",
        ),
        (
            _set(("streams", "add", 0, "ops", 1, "src", "slot"), 2),
            r"add#0 ADD.ops\[1\].src: slot 2 of 'res', which has 2 slot\(s\)",
        ),
        (
            _set(("streams", "add", 0, "ops", 0, "src", "region", 1), [0, 17]),
            r"add#0 ADD.ops\[0\].src: region .* runs outside shape \[1, 16, 1, 1\]",
        ),
        (
            _set(("streams", "add", 0, "ops", 2, "value"), "0"),
            r"add#0 ADD.ops\[2\]: const ALU op value '0': give a finite number and no src",
        ),
        (_set(("streams", "add", 0, "ops", 2, "value"), True), r"const ALU op value True: give"),
        (_set(("streams", "add", 0, "ops", 2, "value"), None), r"const ALU op value None: give"),
        (_set(("streams", "add", 0, "ops", 2, "value"), 10**400), r"const ALU op value 1000"),
        (_set(("streams", "add", 0, "ops", 2, "value"), _DELETE), r"const ALU op value None"),
        (
            _set(("streams", "add", 0, "ops", 2, "src"), {}),
            r"add#0 ADD.ops\[2\]: const ALU op value 0.0: give a finite number and no src",
        ),
        (
            _set(("streams", "conv", 0, "groups"), _DELETE),
            r"conv#0: CONV is missing a field: \['groups'\]",
        ),
        (
            _set(("streams", "conv", 0, "groups"), 0),
            r"conv#0 CONV.groups 0: must be an integer >= 1",
        ),
        (
            _set(("streams", "conv", 0, "groups"), 2.0),
            r"conv#0 CONV.groups 2.0: must be an integer",
        ),
        (
            _set(("streams", "conv", 0, "groups"), "2"),
            r"conv#0 CONV.groups '2': must be an integer",
        ),
        (_set(("streams", "conv", 0, "groups"), True), r"conv#0 CONV.groups True: must be an int"),
        (_set(("streams", "add", 0, "groups"), 1), r"add#0: ADD has no field\(s\) \['groups'\]"),
        (
            _set(("streams", "add", 0, "stride"), [1, 1]),
            r"add#0: ADD has no field\(s\) \['stride'\]",
        ),
        (_set(("streams", "add", 0), "ADD"), r"add#0: unknown opcode 'ADD'"),
        (_set(("streams", "add"), {"0": {}}), r"stream 'add' \{'0': \{\}\}: must be a list"),
        (_set(("streams",), []), r"program streams \[\]: must be an object"),
        (_set(("streams", "conv", 0, "stride"), ["2", "2"]), r"CONV stride \['2', '2'\]: give two"),
        (_set(("streams", "conv", 0, "stride"), [True, 1]), r"CONV stride \[True, 1\]: give two"),
        (_set(("streams", "conv", 0, "stride"), 2), r"CONV stride 2: give two integers"),
        (_set(("streams", "conv", 0, "wait"), ["load", 1]), r"conv#0: wait must be a list of unit"),
        (
            _set(("streams", "conv", 0, "inp", "region", 1), [0, "16"]),
            r"conv#0 CONV.inp: .* is not a list of \[start, extent\] integer pairs",
        ),
        (
            _set(("streams", "conv", 0, "inp", "region", 1), [0.0, 16]),
            r"conv#0 CONV.inp: .* is not a list of \[start, extent\] integer pairs",
        ),
        (_set(("streams", "load", 2, "pad", 2), [1, "0"]), r"load#2 LOAD.pad: .*\[before, after\]"),
        (_set(("streams", "load", 2, "pad", 2), [-1, 2]), r"load#2 LOAD.pad .*: zero counts must"),
        (_set(("streams", "load", 0, "pad"), [[0, 0]]), r"load#0 LOAD.pad \[0\+0\]: one \(before"),
        (
            _set(("streams", "load", 0, "src", "tensor"), ["weight"]),
            r"LOAD.src.tensor \['weight'\]",
        ),
        (_set(("buffers", "acc", "dtype"), "int7"), r"buffer 'acc' dtype 'int7': choose one of"),
        (_set(("buffers", "acc", "shape"), [1, "16", 3, 8]), r"buffer 'acc' shape\[1\] '16': must"),
        (_set(("buffers", "acc", "shape"), [1, 16, 0, 8]), r"buffer 'acc' shape\[2\] 0: must be"),
        (
            _set(("buffers", "acc", "slots"), 1.5),
            r"buffer 'acc' slots 1.5: must be an integer >= 1",
        ),
        (_set(("buffers", "acc", "banks"), 2), r"buffer 'acc': unknown field\(s\) \['banks'\]"),
        (_set(("buffers", "acc"), [1, 2]), r"buffer 'acc' \[1, 2\]: must be an object"),
        (_set(("tensors", "data"), "1x16x16x16"), r"tensor 'data' shape '1x16x16x16': must be a"),
        (_set(("tensors", "data", 0), 1.0), r"tensor 'data' shape\[0\] 1.0: must be an integer"),
        (_set(("dtype",), "int7"), r"program dtype 'int7': choose one of \['float16', 'float32'"),
        (_set(("meta",), []), r"program meta \[\]: must be an object"),
        (_set(("version",), True), r"expected an object with version 1"),
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
        (_set(("buffers", "acc", "slots"), "two"), r"buffer 'acc' slots 'two': must be an integer"),
        (_set(("version",), 2), r"program version 2: this tvm-convadd reads 1"),
    ],
)
def test_malformed_programs_raise_clear_errors(edit, message):
    with pytest.raises(ProgramError, match=message) as info:
        Program.from_json(_mutated(BASE, edit))
    assert "\n" not in str(info.value)


_WRONG = ("x", "ADD", 0.5, True, None, -1, [], {}, [[0, 1]])


def _nodes(node, path=()):
    yield path
    if isinstance(node, (dict, list)):
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            yield from _nodes(child, (*path, key))


def test_any_wrong_value_anywhere_is_a_program_error_or_a_valid_program():
    """Replace every node of a program's JSON by values of the wrong type: from_json either
    accepts the result (a valid program) or raises ProgramError, never anything else."""
    small = tiled_convadd_program(ConvAddShape(height=4, width=4, in_channels=2), tiles=1)
    data = json.loads(small.to_json())
    refused = 0
    for path in _nodes(data):
        for wrong in _WRONG:
            if not path:
                continue
            try:
                Program.from_json(_mutated(small, _set(path, wrong)))
            except ProgramError as err:
                refused += 1
                assert "\n" not in str(err)
    assert refused > 500


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


def test_alu_ops_are_checked_when_built_in_code():
    vector = Slot("bias", 0, ((0, 1), (0, 4), (0, 1), (0, 1)))
    for op, kind, src, value, message in [
        ("sub", "tensor", vector, None, r"ALU op 'sub': choose one of"),
        ("add", "row", vector, None, r"ALU operand kind 'row': choose one of"),
        ("max", "const", None, None, r"ALU op max const: give a value and no src"),
        ("max", "const", vector, 0.0, r"ALU op max const: give a value and no src"),
        ("add", "channel", None, None, r"ALU op add channel: give a src and no value"),
        ("add", "tensor", vector, 1.0, r"ALU op add tensor: give a src and no value"),
        ("min", "const", None, float("nan"), r"ALU op min const nan: a finite number"),
        ("min", "const", None, float("inf"), r"ALU op min const inf: a finite number"),
        ("min", "const", None, "6", r"ALU op min const '6': a finite number"),
    ]:
        with pytest.raises(ProgramError, match=message):
            AluOp(op, kind, src, value)


def test_conv_groups_below_one_is_refused():
    inp = Slot("inp", 0, ((0, 1), (0, 4), (0, 3), (0, 3)))
    wgt = Slot("wgt", 0, ((0, 4), (0, 4), (0, 3), (0, 3)))
    acc = Slot("acc", 0, ((0, 1), (0, 4), (0, 1), (0, 1)))
    buffers = {"inp": BufferDecl((1, 4, 3, 3), 1), "wgt": BufferDecl((4, 4, 3, 3), 1)}
    buffers["acc"] = BufferDecl((1, 4, 1, 1), 1)
    with pytest.raises(ProgramError, match=r"conv#0 CONV.groups 0: an integer >= 1"):
        Program({"conv": (Conv(inp=inp, wgt=wgt, acc=acc, groups=0),)}, buffers, {})


def test_instruction_json_of_the_new_fields():
    """The JSON an engineer writes by hand: CONV's groups, ADD's op list."""
    whole = [[0, 1], [0, 4], [0, 2], [0, 2]]
    vector = [[0, 1], [0, 4], [0, 1], [0, 1]]
    text = {
        "version": 1,
        "tensors": {},
        "buffers": {
            name: {"shape": [dim for _, dim in region], "slots": 1}
            for name, region in [("acc", whole), ("res", whole), ("out", whole), ("bias", vector)]
        },
        "streams": {
            "add": [
                {
                    "op": "ADD",
                    "acc": {"buffer": "acc", "slot": 0, "region": whole},
                    "out": {"buffer": "out", "slot": 0, "region": whole},
                    "ops": [
                        {
                            "op": "mul",
                            "kind": "channel",
                            "src": {"buffer": "bias", "slot": 0, "region": vector},
                        },
                        {
                            "op": "add",
                            "kind": "tensor",
                            "src": {"buffer": "res", "slot": 0, "region": whole},
                        },
                        {"op": "max", "kind": "const", "value": 0},
                        {"op": "min", "kind": "const", "value": 6.5},
                    ],
                }
            ]
        },
    }
    program = Program.from_json(json.dumps(text))
    (add,) = program.streams["add"]
    region = tuple(tuple(pair) for pair in whole)
    assert add.ops == (
        AluOp("mul", "channel", Slot("bias", 0, tuple(tuple(p) for p in vector))),
        AluOp("add", "tensor", Slot("res", 0, region)),
        AluOp("max", "const", value=0.0),
        AluOp("min", "const", value=6.5),
    )
    written = json.loads(program.to_json())["streams"]["add"][0]
    assert written["ops"][2] == {"op": "max", "kind": "const", "value": 0.0}
    assert "bias" not in written and "relu" not in written and "res" not in written


def test_buffer_bytes():
    assert BufferDecl((2, 3), slots=2).slot_bytes == 24
    assert BufferDecl((2, 3), slots=1, dtype="float16").slot_bytes == 12
