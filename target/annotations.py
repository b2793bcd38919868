"""The annotations a schedule leaves in the IR for the target's lowering: their contract.

The lowering (`tvm_convadd.target.lower`) reads them; schedules write them. A stage block's
`UNIT_ATTR` says which unit runs it, its `BUFFER_ATTR` which on-chip buffer it fills; the loop
that opens its nest carries `STAGE_ROOT_ATTR`. The lowering does not trust them: it checks that
every stage block's body computes what the instruction it becomes computes.
"""

UNIT_ATTR = "convadd.unit"  # block annotation: which accelerator unit runs the block
BUFFER_ATTR = "convadd.buffer"  # block annotation: the on-chip buffer the block writes
STAGE_ROOT_ATTR = "convadd.stage"  # loop annotation on the outermost loop of a stage's nest
TILE_LOOP_ATTR = "convadd.tile_loop"  # loop annotation on the loop over tiles

# The buffers a stage of each unit may fill ("store" names the DRAM output a STORE writes).
UNIT_BUFFERS = {
    "load": ("inp", "wgt", "bias", "res"),
    "conv": ("acc",),
    "add": ("out",),
    "store": ("store",),
}
