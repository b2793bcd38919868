"""Checked instructions: lowering reads each stage's meaning from its TIR and rejects a block
that does not compute what its annotation claims (Exo's idea)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tests.test_lower import torch_convadd
from tvm_convadd import TileConfig, Workload
from tvm_convadd.errors import ProgramError
from tvm_convadd.schedules.convadd import schedule_convadd
from tvm_convadd.target.annotations import BUFFER_ATTR, STAGE_ROOT_ATTR, UNIT_ATTR
from tvm_convadd.target.isa import Add, Conv
from tvm_convadd.target.lower import lower_module, lower_tir, lower_to_program

MODES = ("none", "software", "vthread")


def workload(stride, bias, relu) -> Workload:
    return Workload(1, 3, 9, 10, 4, 3, 3, stride, (1, 1, 1, 1), bias=bias, relu=relu)


CASES = [
    workload(stride, bias, relu)
    for stride in ((1, 1), (2, 1), (1, 2), (2, 2))
    for bias, relu in ((False, False), (True, True), (True, False), (False, True))
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
def test_stride_relu_and_bias_come_from_the_tir(wl, mode):
    for axis in ("height", "width", "channel"):
        config = TileConfig(2, axis, mode)  # every tile keeps >= 2 rows and columns
        program = lower_module(schedule_convadd(wl, config).mod)  # no workload: TIR only
        convs, adds = program.streams["conv"], program.streams["add"]
        assert convs and all(isinstance(c, Conv) and c.stride == wl.stride for c in convs)
        assert adds and all(isinstance(a, Add) and a.relu == wl.relu for a in adds)
        assert all((a.bias is not None) == wl.bias for a in adds)
        # the convenience wrapper, which also checks the module against the workload
        assert lower_to_program(wl, config).listing() == program.listing()


def test_module_lowering_names_tensors_after_the_primfunc_params():
    wl = workload((2, 1), True, True)
    program = lower_module(schedule_convadd(wl, TileConfig(2)).mod)
    assert program.tensors == dict(
        zip([*wl.input_names, "output"], [*wl.input_shapes, wl.out_shape])
    )
    assert program.meta == {}


def test_a_one_row_tile_shows_no_stride_and_computes_the_same():
    """With one output row per tile any stride gives the same CONV; the TIR shows none, so
    the instruction says 1 along that axis, and the numbers still match torch."""
    from tvm_convadd.target.hardware import load_config
    from tvm_convadd.target.simulator import simulate

    wl, hardware = workload((2, 2), True, True), load_config("ideal")
    config = TileConfig(wl.out_height, "height", "software")
    program = lower_to_program(wl, config, hardware)
    assert {c.stride for c in program.streams["conv"]} == {(1, 2)}
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(s).astype("float32") for s in wl.input_shapes]
    result = simulate(program, hardware, dict(zip(wl.input_names, inputs)))
    expected = torch_convadd(wl, inputs)
    np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_padding_conditions_tvm_folds_still_read_as_bounds(mode):
    """On a 1-wide input under a 2-wide kernel TVM folds `1 <= w and w < 2` into `w == 1`;
    it still reads as the padding it is (the vthread folds are in test_lower's padding-only
    cases)."""
    from tvm_convadd.target.hardware import load_config
    from tvm_convadd.target.simulator import simulate

    wl = Workload(1, 2, 5, 1, 3, 3, 2, (2, 1), (1, 1, 1, 0), bias=True)
    hardware = load_config("ideal")
    scheduled = schedule_convadd(wl, TileConfig(3, "height", mode)).mod
    assert "ax3 == 1" in lower_tir(scheduled).script()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(s).astype("float32") for s in wl.input_shapes]
    expected = torch_convadd(wl, inputs)
    for config in (TileConfig(1, "height", mode), TileConfig(3, "height", mode)):
        program = lower_to_program(wl, config, hardware)
        result = simulate(program, hardware, dict(zip(wl.input_names, inputs)))
        np.testing.assert_allclose(result.outputs["output"], expected, rtol=1e-5, atol=1e-5)


# -- negative tests: a block whose body computes something other than its claim -------------
BASE = workload((2, 1), True, True)
CONFIG = TileConfig(2, "height", "software")


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
    mod = tvm.script.from_source(scheduled_text())
    assert lower_module(mod, BASE, CONFIG).listing() == lower_to_program(BASE, CONFIG).listing()


def test_conv_with_another_stride_than_claimed():
    mod = mutate("v_h * 2 + v_ry", "v_h + v_ry")
    assert {c.stride for c in lower_module(mod).streams["conv"]} == {(1, 1)}  # what it computes
    rejects(mod, "stage block 'conv'", "stride 1 along h", "claims 2")


def test_epilogue_that_multiplies_instead_of_adding():
    mod = mutate(
        "conv_local_acc[v_n, v_k, v_h, v_w] + bias", "conv_local_acc[v_n, v_k, v_h, v_w] * bias"
    )
    message = rejects(mod, "stage block 'add' (add unit)", "acc [+ bias[k]] + res", "a multiply")
    assert "conv_local_acc" in message and "bias_local_bias" in message


def test_epilogue_that_subtracts():
    mod = mutate("+ residual_local_res[v_n", "- residual_local_res[v_n")
    rejects(mod, "stage block 'add'", "a subtract")


def test_relu_against_a_nonzero_floor():
    mod = mutate(
        "residual_local_res[v_n, v_k, v_h, v_w], T.float32(0.0))",
        "residual_local_res[v_n, v_k, v_h, v_w], T.float32(1.0))",
    )
    rejects(mod, "stage block 'add'", "it takes max(., 1.0) (relu is max(., 0))")


def test_bias_that_does_not_broadcast_over_channels():
    mod = mutate("bias_local_bias[0, v_k, 0, 0] +", "bias_local_bias[0, 0, 0, 0] +")
    rejects(mod, "stage block 'add'", "no per-channel bias")


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
    rejects(mod, "stage block 'conv'", "groups")


def test_conv_that_adds_instead_of_multiplying():
    mod = mutate("v_w + v_rx] * weight_local_wgt", "v_w + v_rx] + weight_local_wgt")
    rejects(mod, "stage block 'conv' (conv unit)", "+= inp[n, c, y*sh + r, x*sw + s]")


def test_conv_without_an_init():
    text = scheduled_text()
    init = "                            with T.init():\n"
    store = "                                conv_local_acc[v_n, v_k, v_h, v_w] = T.float32(0.0)\n"
    assert init + store in text
    mod = tvm.script.from_source(text.replace(init + store, ""))
    rejects(mod, "stage block 'conv'", "not an init and an update")


def test_conv_over_part_of_the_input_channels():
    mod = mutate("T.grid(4, 3, 10, 3, 3, 3)", "T.grid(4, 3, 10, 2, 3, 3)")
    rejects(mod, "stage block 'conv'", "C x R x S = (2, 3, 3)", "(3, 3, 3)")


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


def test_a_schedule_of_another_workload_than_claimed():
    plain = Workload(1, 3, 9, 10, 4, 3, 3, (2, 1), (1, 1, 1, 1), bias=True, relu=False)
    mod = schedule_convadd(plain, CONFIG).mod
    rejects(mod, "stage block 'add' has no relu", "claims relu=True")
    other = workload((1, 1), True, True)  # other shapes: the tensors differ already
    rejects(mod, "the module's tensors", wl=other)
