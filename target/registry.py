"""TVM target tags for the shipped hardware configurations, and the way back from a target.

TVM cannot make a new target kind from Python and `ext_dev` refuses extra attributes, so a
tag carries only the configuration's name (as `model`); the numbers stay in the JSON config.
"""

from __future__ import annotations

import tvm

from tvm_convadd.errors import ConvAddError
from tvm_convadd.target.hardware import HardwareConfig, list_configs, load_config
from tvm_convadd.target.isa import ALU_OPS

DEVICE = "convadd_sim"
TAG_PREFIX = "convadd-sim"


def tag_for(config_name: str) -> str:
    """Tag of a shipped config: `default` -> `convadd-sim`, `slow_add` -> `convadd-sim-slow-add`."""
    if config_name == "default":
        return TAG_PREFIX
    return f"{TAG_PREFIX}-{config_name.replace('_', '-')}"


def target_tags() -> dict[str, str]:
    """Every tag this package registers, mapped to its configuration's name."""
    names = sorted(list_configs(), key=lambda name: (name != "default", name))
    return {tag_for(name): name for name in names}


def register_targets() -> None:
    """Register the `convadd-*` target tags (kind ext_dev); idempotent across imports."""
    for tag, name in target_tags().items():
        config = {"kind": "ext_dev", "keys": ["convadd", "cpu"], "device": DEVICE, "model": name}
        tvm.target.tag.register_tag(tag, config, override=True)


def hardware_for_target(target: str | tvm.target.Target) -> HardwareConfig:
    """The hardware configuration behind a convadd target, given as a tag or a Target."""
    tags = target_tags()
    if isinstance(target, str):
        if target in tags:
            return load_config(tags[target])
        try:
            target = tvm.target.Target(target)
        except Exception as err:  # TVM raises its own error kinds for unknown strings
            raise ConvAddError(
                f"unknown target {target!r}: convadd targets are {sorted(tags)}"
            ) from err
    if not isinstance(target, tvm.target.Target):
        raise ConvAddError(f"expected a target tag or tvm.target.Target, got {target!r}")
    if target.tag in tags:
        return load_config(tags[target.tag])
    model = str(target.attrs.get("model", ""))
    device = str(target.attrs.get("device", ""))
    if target.kind.name != "ext_dev" or device != DEVICE or model not in tags.values():
        raise ConvAddError(
            f"target {target} is not a convadd accelerator: use one of {sorted(tags)}"
        )
    return load_config(model)


def describe_targets() -> str:
    """A table of the registered tags and the numbers behind them (for `tvm-convadd targets`)."""
    head = (
        f"{'tag':<32} {'array':>6} {'flow':>4} {'fill':>4} {'lanes':>5} {'add/mul/max/min':>15} "
        f"{'DMA B/cyc':>9} "
        f"{'lat':>4} {'/run':>4} {'acc KiB':>7}  description"
    )
    rows = [head, "-" * len(head)]
    for tag, name in target_tags().items():
        hw = load_config(name)
        bandwidth = "inf" if hw.dma_bytes_per_cycle is None else str(hw.dma_bytes_per_cycle)
        array = f"{hw.array_rows}x{hw.array_cols}"
        alu = "/".join(str(hw.alu_op_cycles[op]) for op in ALU_OPS)
        rows.append(
            f"{tag:<32} {array:>6} {hw.dataflow:>4} {'yes' if hw.fill_drain else 'no':>4} "
            f"{hw.add_lanes:>5} {alu:>15} {bandwidth:>9} {hw.dma_latency_cycles:>4} "
            f"{hw.dma_run_cycles:>4} {hw.capacity('acc') // 1024:>7}  {hw.description}"
        )
    return "\n".join(rows)
