#!/usr/bin/env python3
"""SCALE-Sim 3.0.0 reference oracle: compute cycles of conv layers on an R x C systolic array.

Runs INSIDE the side venv (see benchmarks/SCALESIM.md); imports only scalesim + numpy:

    /tmp/scalesim-venv/bin/python benchmarks/scalesim_oracle.py < layers.json > cycles.json

Input: JSON list of {"name", "ifmap_h", "ifmap_w", "filter_h", "filter_w", "channels",
"num_filters", "stride_h", "stride_w", "rows", "cols", "dataflow": "ws"|"os"|"is"}.
ifmap_h/ifmap_w are the already padded input sizes (SCALE-Sim has no padding).

Output: the same list, each object gets
  scalesim_compute_cycles  -- the stall-free "Total Cycles" that SCALE-Sim writes in
                              COMPUTE_REPORT.csv (= demand-matrix rows - 1, see SCALESIM.md)
  scalesim_demand_rows     -- number of rows (cycles) of SCALE-Sim's demand matrices
  scalesim_ofmap_h/_w, scalesim_P, scalesim_K, scalesim_N, scalesim_folds, scalesim_seconds

This drives SCALE-Sim's own classes along the same path as
scalesim.single_layer_sim.single_layer_sim.run(): topologies -> operand_matrix ->
systolic_compute_{ws,os,is}.set_params -> get_demand_matrices().  The memory simulation
(double_buffered_scratchpad.service_memory_requests) is skipped: with no stalls it reports
total_cycles = max(serviced cycle) = (ofmap demand rows - 1).  The prefetch matrices are
skipped too: they do not influence the demand matrices (and WS's is a per-element Python loop).

Speed: systolic_compute_os / systolic_compute_is grow their demand matrices with
`X = np.concatenate((X, fold), axis=0)` once per fold, which is O(folds^2) (IS 8x8 on a
ResNet-50 56x56x64 3x3 layer has 28224 folds -> tens of minutes).  By default the oracle runs
those genuine, unmodified methods with the module's `np` temporarily swapped for a shim whose
concatenate() turns exactly that self-accumulation call into a list append, and materialises the
list with one np.concatenate at the end: the resulting matrices are element- and dtype-identical
(checked by --selfcheck).  --reference runs the untouched numpy path (slow, for auditing).

Options:
  --reference  do not install the accumulation shim (pure SCALE-Sim code path; O(folds^2)).
  --selfcheck  ignore stdin; compare shim vs --reference demand matrices on random small layers.
  --trim   crop ifmap_h/w to (floor((H-fh)/s))*s + fh before handing it to SCALE-Sim.
           SCALE-Sim computes ofmap = ceil((H - fh + s)/s), which is one more than the
           usual floor((H - fh)/s) + 1 whenever (H - fh) % s != 0; --trim makes SCALE-Sim's
           output size equal to the conventional (PyTorch/TVM) one.  Default: off (pure SCALE-Sim).
"""

import contextlib
import json
import random
import sys
import time

import numpy as np
import scalesim.compute.systolic_compute_is as _is_mod
import scalesim.compute.systolic_compute_os as _os_mod
from scalesim.compute.operand_matrix import operand_matrix
from scalesim.compute.systolic_compute_is import systolic_compute_is
from scalesim.compute.systolic_compute_os import systolic_compute_os
from scalesim.compute.systolic_compute_ws import systolic_compute_ws
from scalesim.layout_utils import layouts
from scalesim.scale_config import scale_config
from scalesim.topology_utils import topologies

COMPUTE = {"ws": systolic_compute_ws, "os": systolic_compute_os, "is": systolic_compute_is}


_DEMAND_ATTRS = ("ifmap_demand_matrix", "filter_demand_matrix", "ofmap_demand_matrix")


class _RowAccumulator:
    """Stand-in for a demand matrix being grown fold by fold (axis-0 concatenation)."""

    def __init__(self, first):
        self.parts = [first]

    @property
    def shape(self):  # used by create_demand_matrices()' asserts
        return (sum(p.shape[0] for p in self.parts), self.parts[0].shape[1])

    def materialize(self):
        return np.concatenate(self.parts, axis=0)


class _NumpyShim:
    """`np` replacement for one compute object: everything is numpy, except that
    np.concatenate((self.<x>_demand_matrix, fold), axis=0) appends to a list instead of copying."""

    def __init__(self, comp):
        self._comp = comp

    def __getattr__(self, name):
        return getattr(np, name)

    def concatenate(self, arrays, axis=0, **kw):
        if (
            axis == 0
            and not kw
            and len(arrays) == 2
            and any(arrays[0] is getattr(self._comp, a, None) for a in _DEMAND_ATTRS)
        ):
            acc = arrays[0]
            if not isinstance(acc, _RowAccumulator):
                acc = _RowAccumulator(acc)
            acc.parts.append(arrays[1])
            return acc
        return np.concatenate(arrays, axis=axis, **kw)


@contextlib.contextmanager
def _linear_accumulation(comp, enabled):
    mod = {systolic_compute_os: _os_mod, systolic_compute_is: _is_mod}.get(type(comp))
    if not enabled or mod is None:  # WS already accumulates in a list
        yield
        return
    saved = mod.np
    mod.np = _NumpyShim(comp)
    try:
        yield
    finally:
        mod.np = saved
        for a in _DEMAND_ATTRS:
            v = getattr(comp, a)
            if isinstance(v, _RowAccumulator):
                setattr(comp, a, v.materialize())


def _trim(h, f, s):
    return ((h - f) // s) * s + f


def scalesim_layer(layer, trim=False, fast=True, return_comp=False):
    """Return a dict of SCALE-Sim results for one layer description."""
    df = layer["dataflow"]
    if df not in COMPUTE:
        raise ValueError(f"dataflow must be ws/os/is, got {df!r}")
    H, W = int(layer["ifmap_h"]), int(layer["ifmap_w"])
    fh, fw = int(layer["filter_h"]), int(layer["filter_w"])
    sh, sw = int(layer["stride_h"]), int(layer["stride_w"])
    if trim:
        H, W = _trim(H, fh, sh), _trim(W, fw, sw)
    R, C = int(layer["rows"]), int(layer["cols"])

    t0 = time.perf_counter()
    cfg = scale_config()
    # [run_name, rows, cols, ifmap/filter/ofmap SRAM kB, offsets x3, dataflow, bw mode, bw]
    cfg.update_from_list(
        ["oracle", R, C, 1024, 1024, 1024, 0, 10000000, 20000000, df, "CALC", [10]]
    )
    topo = topologies()
    # Entries: name, ifmap h, ifmap w, filter h, filter w, channels, num filters,
    #          stride h, stride w, sparsity N, sparsity M  (API path keeps stride_h != stride_w;
    #          the CSV loader would copy the single "Strides" column into both)
    topo.load_layer_params_from_list(
        "L", ["L", H, W, fh, fw, int(layer["channels"]), int(layer["num_filters"]), sh, sw, 1, 1]
    )
    topo.topo_calc_hyperparams()

    op = operand_matrix()
    op.set_params(config_obj=cfg, topoutil_obj=topo, layoututil_obj=layouts(), layer_id=0)
    _, ifmap_op_mat = op.get_ifmap_matrix()
    _, filter_op_mat = op.get_filter_matrix()
    _, ofmap_op_mat = op.get_ofmap_matrix()

    comp = COMPUTE[df]()
    if df == "ws":
        comp.set_params(
            config_obj=cfg,
            ifmap_op_mat=ifmap_op_mat,
            filter_op_mat=filter_op_mat,
            ofmap_op_mat=ofmap_op_mat,
            sparsity_ratio_N=1,
            sparsity_ratio_M=1,
            ifmap_op_mat_original=op.ifmap_addr_matrix_original,
            sparsity_filter_array=op.sparse_filter_array,
        )
    else:
        comp.set_params(
            config_obj=cfg,
            ifmap_op_mat=ifmap_op_mat,
            filter_op_mat=filter_op_mat,
            ofmap_op_mat=ofmap_op_mat,
        )
    with _linear_accumulation(comp, fast):
        comp.get_demand_matrices()
    ifd, fid, ofd = comp.ifmap_demand_matrix, comp.filter_demand_matrix, comp.ofmap_demand_matrix
    rows = int(ofd.shape[0])
    assert ifd.shape[0] == rows and fid.shape[0] == rows, (ifd.shape, fid.shape, ofd.shape)
    ho, wo = topo.get_layer_ofmap_dims(0)
    res = {
        "scalesim_compute_cycles": rows - 1,
        "scalesim_demand_rows": rows,
        "scalesim_ofmap_h": int(ho),
        "scalesim_ofmap_w": int(wo),
        "scalesim_P": int(ifmap_op_mat.shape[0]),
        "scalesim_K": int(ifmap_op_mat.shape[1]),
        "scalesim_N": int(filter_op_mat.shape[1]),
        "scalesim_folds": int(comp.row_fold * comp.col_fold),
        "scalesim_seconds": round(time.perf_counter() - t0, 4),
    }
    return (res, comp) if return_comp else res


def selfcheck(n=60, seed=0):
    """Shim path must give identical demand matrices to the untouched SCALE-Sim path."""
    rng = random.Random(seed)
    for i in range(n):
        fh, fw, sh, sw = rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 3), rng.randint(1, 3)
        lay = dict(
            name=f"r{i}",
            ifmap_h=rng.randint(fh, 20),
            ifmap_w=rng.randint(fw, 20),
            filter_h=fh,
            filter_w=fw,
            channels=rng.randint(1, 16),
            num_filters=rng.randint(1, 40),
            stride_h=sh,
            stride_w=sw,
            rows=rng.choice([4, 8, 16]),
            cols=rng.choice([4, 8, 16]),
            dataflow=("os", "is", "ws")[i % 3],
        )
        (ra, a), (rb, b) = (scalesim_layer(lay, fast=f, return_comp=True) for f in (True, False))
        for att in _DEMAND_ATTRS:
            x, y = getattr(a, att), getattr(b, att)
            assert x.dtype == y.dtype and np.array_equal(x, y), (lay, att)
        assert ra["scalesim_compute_cycles"] == rb["scalesim_compute_cycles"]
    return n


def main(argv):
    trim = "--trim" in argv[1:]
    fast = "--reference" not in argv[1:]
    if "--selfcheck" in argv[1:]:
        with contextlib.redirect_stdout(sys.stderr):
            n = selfcheck()
        print(f"selfcheck OK: {n} random layers, shim == reference demand matrices")
        return
    layers = json.load(sys.stdin)
    out = []
    for layer in layers:
        # scalesim prints progress/debug text on stdout; keep our stdout pure JSON.
        with contextlib.redirect_stdout(sys.stderr):
            res = scalesim_layer(layer, trim=trim, fast=fast)
        out.append({**layer, **res})
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv)
