"""Target tags: one per shipped config, and the way back from a Target to its config."""

from __future__ import annotations

import pytest
import tvm

import tvm_convadd  # noqa: F401  (registers the tags)
from tvm_convadd.errors import ConvAddError
from tvm_convadd.target.registry import (
    describe_targets,
    hardware_for_target,
    register_targets,
    tag_for,
    target_tags,
)

TAGS = {
    "convadd-sim": "default",
    "convadd-sim-slow-add": "slow_add",
    "convadd-sim-big-array": "big_array",
    "convadd-sim-ideal": "ideal",
    "convadd-sim-output-stationary": "output_stationary",
    "convadd-sim-single-queue": "single_queue",
}


def test_one_tag_per_shipped_config():
    assert target_tags() == TAGS
    assert tag_for("default") == "convadd-sim"
    registered = tvm.target.tag.list_tags()
    assert set(TAGS) <= set(registered)


@pytest.mark.parametrize(("tag", "config"), sorted(TAGS.items()))
def test_tag_builds_an_ext_dev_target_that_maps_back(tag, config):
    target = tvm.target.Target(tag)
    assert target.kind.name == "ext_dev"
    assert {"convadd", "cpu"} <= set(target.keys)
    assert str(target.attrs["device"]) == "convadd_sim"
    assert str(target.attrs["model"]) == config
    assert hardware_for_target(tag).name == config
    assert hardware_for_target(target).name == config


def test_registration_is_idempotent():
    register_targets()
    register_targets()
    assert hardware_for_target("convadd-sim-ideal").name == "ideal"


@pytest.mark.parametrize("bad", ["nope", "convadd-sim-fast"])
def test_unknown_tag_lists_the_known_ones(bad):
    with pytest.raises(ConvAddError, match=rf"unknown target '{bad}'.*convadd-sim-ideal"):
        hardware_for_target(bad)


def test_other_targets_are_refused():
    with pytest.raises(ConvAddError, match=r"not a convadd accelerator.*convadd-sim"):
        hardware_for_target(tvm.target.Target("llvm"))
    foreign = tvm.target.Target({"kind": "ext_dev", "device": "convadd_sim", "model": "zzz"})
    with pytest.raises(ConvAddError, match="not a convadd accelerator"):
        hardware_for_target(foreign)
    with pytest.raises(ConvAddError, match="expected a target tag"):
        hardware_for_target(42)


def test_describe_targets_lists_every_tag():
    table = describe_targets()
    assert all(tag in table for tag in TAGS)
    assert table.splitlines()[2].startswith("convadd-sim ")
    default_row = table.splitlines()[2].split()
    assert default_row[1:4] == ["16x16", "ws", "yes"]  # the geometry and dataflow
    assert "add/mul/max/min" in table.splitlines()[0]
    assert default_row[4:6] == ["16", "1/1/1/1"]  # lanes, then ALU cycles per op
    assert "32x32" in table and " os " in table
