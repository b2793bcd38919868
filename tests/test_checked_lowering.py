"""Checked instructions: lowering reads each stage's meaning from its TIR and rejects a block
that does not compute what its annotation claims (Exo's idea)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tests.test_lower import simulate_against_torch, torch_convadd
from tvm_convadd import TileConfig, Workload
from tvm_convadd.errors import ProgramError
from tvm_convadd.schedules.convadd import schedule_convadd
from tvm_convadd.schedules.workload import (
    BIAS,
    RELU,
    RESIDUAL,
    SCALE,
    EpilogueOp,
    standard_epilogue,
)
from tvm_convadd.target.annotations import BUFFER_ATTR, STAGE_ROOT_ATTR, UNIT_ATTR
from tvm_convadd.target.isa import Add, Conv
from tvm_convadd.target.lower import lower_module, lower_tir, lower_to_program

MODES = ("none", "software", "vthread")


def workload(stride, epilogue, groups: int = 1, channels: int = 3) -> Workload:
    return Workload(
        1, channels, 9, 10, 4, 3, 3, stride, (1, 1, 1, 1), groups=groups, epilogue=epilogue
    )


EPILOGUES = [
    (),
    standard_epilogue(bias=True, relu=True),
    (SCALE, BIAS, RELU, EpilogueOp("min", "const", 6.0)),
    (RESIDUAL, RESIDUAL, EpilogueOp("max", "const", -1.0)),
]
CASES = [
    workload(stride, epilogue, groups, channels)
    for stride in ((1, 1), (2, 1), (1, 2), (2, 2))
    for epilogue, (groups, channels) in zip(EPILOGUES, [(1, 3), (2, 2), (4, 4), (1, 3)])
]


def test_the_schedule_imports_the_targets_annotation_names():
    from tvm_convadd.schedules import convadd

    assert (convadd.UNIT_ATTR, convadd.BUFFER_ATTR, convadd.STAGE_ROOT_ATTR) == (
        UNIT_ATTR,
        BUFFER_ATTR,
        STAGE_ROOT_ATTR,
    )
    assert (UNIT_ATTR, BUFFER_ATTR, STAGE_ROOT_ATTR) == (
        "convadd.unit",
        "convadd.buffer",
        "convadd.stage",
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wl", CASES, ids=str)
def test_stride_groups_and_epilogue_come_from_the_tir(wl, mode):
    chain = [(op.op, op.kind, op.value) for op in wl.epilogue]
    for config in (TileConfig(2, "height", mode), TileConfig(2, "width", mode, channel_tiles=2)):
        program = lower_module(schedule_convadd(wl, config).mod)  # no workload: TIR only
        convs, adds = program.streams["conv"], program.streams["add"]
        assert convs and all(isinstance(c, Conv) and c.stride == wl.stride for c in convs)
        groups = wl.groups // config.channel_tiles if wl.groups > 1 else 1
        assert all(c.groups == groups for c in convs)
        assert adds and all(isinstance(a, Add) for a in adds)
        assert all([(op.op, op.kind, op.value) for op in a.ops] == chain for a in adds)
        # the convenience wrapper, which also checks the module against the workload
        assert lower_to_program(wl, config).listing() == program.listing()


def test_module_lowering_names_tensors_after_the_primfunc_params():
    wl = workload((2, 1), (SCALE, RESIDUAL, BIAS, RESIDUAL))
    program = lower_module(schedule_convadd(wl, TileConfig(2)).mod)
    assert program.tensors == dict(
        zip([*wl.input_names, "output"], [*wl.input_shapes, wl.out_shape])
    )
    assert [*program.tensors] == [
        "data",
        "weight",
        "scale",
        "residual",
        "bias",
        "residual_2",
        "output",
    ]
    assert {"scale", "res", "bias", "res_2"} <= set(program.buffers)
    assert program.meta == {}


def test_a_one_row_tile_shows_no_stride_and_computes_the_same():
    """With one output row per tile any stride gives the same CONV; the TIR shows none, so
    the instruction says 1 along that axis, and the numbers still match torch."""
    wl = workload((2, 2), standard_epilogue(bias=True, relu=True))
    program = simulate_against_torch(wl, TileConfig(wl.out_height, "height", "software"))
    assert {c.stride for c in program.streams["conv"]} == {(1, 2)}


def test_a_channel_tile_within_one_group_is_a_dense_conv():
    """A tile of the output channels of one group reads that group's inputs alone: the TIR's
    input channel no longer moves with k, and the CONV has groups 1."""
    wl = Workload(1, 4, 6, 5, 8, 3, 3, (1, 1), (1, 1, 1, 1), groups=2, epilogue=(BIAS,))
    for channel_tiles, groups in ((1, 2), (2, 1), (4, 1)):
        config = TileConfig(2, "height", "software", channel_tiles=channel_tiles)
        program = simulate_against_torch(wl, config)
        assert {c.groups for c in program.streams["conv"]} == {groups}


@pytest.mark.parametrize("mode", MODES)
def test_padding_conditions_tvm_folds_still_read_as_bounds(mode):
    """On a 1-wide input under a 2-wide kernel TVM folds `1 <= w and w < 2` into `w == 1`;
    it still reads as the padding it is (the vthread folds are in test_lower's padding-only
    cases)."""
    wl = Workload(1, 2, 5, 1, 3, 3, 2, (2, 1), (1, 1, 1, 0), epilogue=(BIAS, RESIDUAL))
    scheduled = schedule_convadd(wl, TileConfig(3, "height", mode)).mod
    assert "ax3 == 1" in lower_tir(scheduled).script()
    for config in (TileConfig(1, "height", mode), TileConfig(3, "height", mode)):
        simulate_against_torch(wl, config, seed=1)


# -- negative tests: a block whose body computes something other than its claim -------------
BASE = workload((2, 1), standard_epilogue(bias=True, relu=True))
CONFIG = TileConfig(2, "height", "software")
# groups of 2 output channels over 1 input channel each, a chain with two residuals
GROUPED = Workload(
    1, 4, 9, 10, 8, 3, 3, (2, 1), (1, 1, 1, 1), groups=4, epilogue=(SCALE, BIAS, RESIDUAL, RESIDUAL)
)
ACC = "conv_local_acc[v_n, v_k, v_h, v_w]"


def scheduled_text(wl: Workload = BASE, config: TileConfig = CONFIG) -> str:
    return schedule_convadd(wl, config).mod.script()


def mutate(old: str, new: str, wl: Workload = BASE, config: TileConfig = CONFIG) -> tvm.IRModule:
    """The scheduled module with `old` replaced by `new` in its TVMScript, parsed again."""
    text = scheduled_text(wl, config)
    assert old in text, f"{old!r} is not in the schedule's TVMScript"
    return tvm.script.from_source(text.replace(old, new))


def rejects(mod: tvm.IRModule, *fragments: str, wl: Workload | None = BASE) -> str:
    with pytest.raises(ProgramError) as info:
        lower_module(mod, wl, CONFIG)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_the_unmutated_text_round_trips():
    for wl in (BASE, GROUPED):
        mod = tvm.script.from_source(scheduled_text(wl))
        assert lower_module(mod, wl, CONFIG).listing() == lower_to_program(wl, CONFIG).listing()


def test_conv_with_another_stride_than_claimed():
    mod = mutate("v_h * 2 + v_ry", "v_h + v_ry")
    assert {c.stride for c in lower_module(mod).streams["conv"]} == {(1, 1)}  # what it computes
    rejects(mod, "stage block 'conv'", "stride 1 along h", "claims 2")


def test_epilogue_operands_in_any_order():
    mod = mutate(f"{ACC} + bias_local_bias[0, v_k, 0, 0]", f"bias_local_bias[0, v_k, 0, 0] + {ACC}")
    assert lower_module(mod, BASE, CONFIG).listing() == lower_to_program(BASE, CONFIG).listing()


def test_epilogue_that_multiplies_instead_of_adding():
    mod = mutate(f"{ACC} + bias", f"{ACC} * bias")
    adds = lower_module(mod).streams["add"]  # a valid ADD: it computes a scale
    assert {(a.ops[0].op, a.ops[0].kind, a.ops[0].src.buffer) for a in adds} == {
        ("mul", "channel", "bias")
    }
    rejects(
        mod,
        "stage block 'add' computes the epilogue [mul channel, add tensor, max 0]",
        "claims [add channel, add tensor, max 0]",
    )


def test_epilogue_that_subtracts():
    mod = mutate("+ residual_local_res[v_n", "- residual_local_res[v_n")
    rejects(mod, "stage block 'add' (add unit)", "out = a chain v = op(v, x)", "a subtract")


def test_relu_against_a_nonzero_floor():
    mod = mutate(
        "residual_local_res[v_n, v_k, v_h, v_w], T.float32(0.0))",
        "residual_local_res[v_n, v_k, v_h, v_w], T.float32(1.0))",
    )
    assert lower_module(mod).streams["add"][0].ops[-1].value == 1.0
    rejects(mod, "stage block 'add' computes the epilogue [add channel, add tensor, max 1]")


def test_bias_that_does_not_broadcast_over_channels():
    mod = mutate("bias_local_bias[0, v_k, 0, 0] +", "bias_local_bias[0, 0, 0, 0] +")
    rejects(mod, "stage block 'add'", "bias_local_bias[0, 0, 0, 0] is neither", "[0, k, 0, 0]")


def test_residual_read_as_a_channel_vector():
    mod = mutate("residual_local_res[v_n, v_k, v_h, v_w]", "residual_local_res[0, v_k, 0, 0]")
    rejects(mod, "stage block 'add'", "as a channel; res holds a tensor")


def test_epilogue_that_adds_the_accumulator_twice():
    mod = mutate(
        "residual_local_res[v_n, v_k, v_h, v_w], T.float32(0.0))",
        f"residual_local_res[v_n, v_k, v_h, v_w], {ACC})",
    )
    rejects(mod, "stage block 'add'", "both sides of T.max(", "read acc")


def test_epilogue_ops_in_another_order_than_claimed():
    old = f"{ACC} * scale_local_scale[0, v_k, 0, 0] + bias_local_bias[0, v_k, 0, 0]"
    new = f"({ACC} + bias_local_bias[0, v_k, 0, 0]) * scale_local_scale[0, v_k, 0, 0]"
    rejects(
        mutate(old, new, GROUPED),
        "computes the epilogue [add channel, mul channel, add tensor, add tensor]",
        "claims [mul channel, add channel, add tensor, add tensor]",
        wl=GROUPED,
    )


def test_epilogue_operands_swapped_between_residuals():
    old = "residual_local_res[v_n, v_k, v_h, v_w] + residual_2_local_res_2[v_n, v_k, v_h, v_w]"
    new = "residual_2_local_res_2[v_n, v_k, v_h, v_w] + residual_local_res[v_n, v_k, v_h, v_w]"
    mod = mutate(old, new, GROUPED)
    rejects(mod, "its add tensor reads res_2, loaded from residual_2", "from residual", wl=GROUPED)


def test_store_that_adds_something():
    mod = mutate(
        "add[v0, v1, v2, v3] = add_local_out[v0, v1, v2, v3]",
        "add[v0, v1, v2, v3] = add_local_out[v0, v1, v2, v3] + T.float32(1.0)",
    )
    rejects(mod, "stage block 'add_local.out' (store unit)", "a copy dram[i + o] = out[i]")


def test_residual_load_that_scales():
    mod = mutate("= residual[v0, v1, v2, v3]", "= residual[v0, v1, v2, v3] * T.float32(2.0)")
    rejects(mod, "stage block 'residual_local.res' (load unit)", "it stores")


def test_conv_with_dilation():
    rejects(mutate("v_w + v_rx]", "v_w + v_rx * 2]"), "stage block 'conv'", "dilation")


def test_conv_whose_input_channel_follows_the_output_channel():
    mod = mutate("pad_local_inp[v_n, v_rc,", "pad_local_inp[v_n, v_k,")
    rejects(mod, "stage block 'conv'", "is not (k // ng) * 3 + c of acc's k and wgt's c")


def test_grouped_conv_with_another_group_size_than_claimed():
    mod = mutate(
        "pad_local_inp[v_n, v_k // 2 + v_rc,", "pad_local_inp[v_n, v_k // 4 + v_rc,", GROUPED
    )
    assert {c.groups for c in lower_module(mod).streams["conv"]} == {2}  # what it computes
    rejects(
        mod,
        "stage block 'conv' computes a grouped conv with 4 output channel(s) per group",
        "claims 2 (4 groups)",
        wl=GROUPED,
    )


def test_grouped_conv_whose_groups_start_mid_tile():
    mod = mutate(
        "pad_local_inp[v_n, v_k // 2 + v_rc,", "pad_local_inp[v_n, (v_k + 1) // 3 + v_rc,", GROUPED
    )
    rejects(
        mod, "stage block 'conv'", "start 1 into a group of 3: a CONV's groups are whole", wl=None
    )


def test_grouped_conv_with_a_wrong_group_index():
    mod = mutate(
        "pad_local_inp[v_n, v_k // 2 + v_rc,", "pad_local_inp[v_n, v_k % 4 + v_rc,", GROUPED
    )
    rejects(mod, "stage block 'conv' (conv unit)", "is not (k // ng) * 1 + c", wl=GROUPED)


def test_conv_that_adds_instead_of_multiplying():
    mod = mutate("v_w + v_rx] * weight_local_wgt", "v_w + v_rx] + weight_local_wgt")
    rejects(mod, "stage block 'conv' (conv unit)", "+= inp[n, (k // ng) * cg + c, y*sh + r")


def test_conv_without_an_init():
    text = scheduled_text()
    init = "                            with T.init():\n"
    store = f"                                {ACC} = T.float32(0.0)\n"
    assert init + store in text
    mod = tvm.script.from_source(text.replace(init + store, ""))
    rejects(mod, "stage block 'conv'", "not an init and an update")


def test_conv_over_part_of_the_input_channels():
    # a CONV may sum a chunk of the channels (a reduction split), but the ADD must not read
    # the accumulator before every channel is in
    mod = mutate("T.grid(4, 3, 10, 3, 3, 3)", "T.grid(4, 3, 10, 2, 3, 3)")
    rejects(mod, "stage block 'add'", "summed input channels [0, 2) of 3")


def test_padding_condition_off_by_one():
    mod = mutate("T.if_then_else(1 <= v_h and", "T.if_then_else(2 <= v_h and")
    rejects(mod, "stage block 'pad' (load unit)", "tests 2 <= ax2_0 * 6 + ax2, which is no bound")


def test_padding_with_a_nonzero_value():
    mod = mutate(
        "data[v_n, v_c, v_h - 1, v_w - 1], T.float32(0.0))",
        "data[v_n, v_c, v_h - 1, v_w - 1], T.float32(1.0))",
    )
    rejects(mod, "stage block 'pad'", "pads with T.float32(1.0)")


def test_input_load_that_reads_outside_the_tensor_unguarded():
    text = scheduled_text()
    start = text.index("T.if_then_else(1 <= v_h")
    end = text.index("T.float32(0.0))", start) + len("T.float32(0.0))")
    mod = tvm.script.from_source(text[:start] + "data[v_n, v_c, v_h - 1, v_w - 1]" + text[end:])
    rejects(mod, "stage block 'pad'", "outside the tensor", "without a padding condition")


def test_a_stage_that_claims_another_unit():
    mod = mutate(
        '"convadd.buffer": "out", "convadd.unit": "add"',
        '"convadd.buffer": "out", "convadd.unit": "conv"',
    )
    rejects(mod, "stage block 'add' (conv unit) fills 'out'", "['acc']")


def test_a_load_that_fills_no_known_buffer():
    mod = mutate('"convadd.buffer": "res"', '"convadd.buffer": "res_1"')
    rejects(mod, "fills 'res_1': a vload stage fills res, bias, scale (res_2, ...)")


def test_a_schedule_of_another_workload_than_claimed():
    plain = workload((2, 1), standard_epilogue(bias=True, relu=False))
    mod = schedule_convadd(plain, CONFIG).mod
    rejects(
        mod,
        "stage block 'add' computes the epilogue [add channel, add tensor]",
        "claims [add channel, add tensor, max 0]",
    )
    other = workload((1, 1), standard_epilogue(bias=True, relu=True))  # the tensors differ
    rejects(mod, "the module's tensors", wl=other)


def test_torch_reference_is_the_tests_own():
    """The reference chain in torch agrees with numpy on a hand-made case."""
    wl = Workload(1, 1, 1, 1, 2, 1, 1, groups=1, epilogue=(SCALE, EpilogueOp("min", "const", 1)))
    data, weight, scale = np.ones((1, 1, 1, 1)), np.array([1, 2.0]).reshape(2, 1, 1, 1), None
    scale = np.array([3.0, 0.25]).reshape(1, 2, 1, 1)
    got = torch_convadd(wl, [data, weight, scale])
    np.testing.assert_allclose(got.ravel(), [1.0, 0.5])
