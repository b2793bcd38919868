"""Registers one TVM target tag per shipped hardware configuration (placeholder, see hardware)."""


def register_targets() -> None:
    """Register the `convadd-*` target tags (kind ext_dev)."""
