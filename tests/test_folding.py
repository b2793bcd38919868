"""prepare folds batch-norm in numpy: the same module as TVM's FoldConstant, without llvm builds."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax

from tvm_convadd.canonical import BatchNormToScaleBias, TirMaxMinToRelax
from tvm_convadd.dense import DenseToConv2D
from tvm_convadd.folding import FoldConstantNumpy
from tvm_convadd.networks import mobilenet_v2, resnet18, resnet50
from tvm_convadd.partition import prepare

SMALL = {"image_size": 32, "width": 0.125, "num_classes": 10}


def tvm_only_prepare(mod: tvm.IRModule, params: dict | None = None) -> tvm.IRModule:
    """`prepare` as it was before the numpy folding: every constant op is an llvm build. The
    rewrites after the folding are prepare's own, so only the folding differs."""
    passes = []
    if params:
        bound = {key: tvm.runtime.tensor(np.asarray(value)) for key, value in params.items()}
        passes.append(relax.transform.BindParams("main", bound))
    passes += [
        relax.transform.ConvertToDataflow(),
        relax.transform.FoldBatchnormToConv2D(),
        relax.transform.FoldConstant(),
        relax.transform.CanonicalizeBindings(),
        BatchNormToScaleBias(),
        TirMaxMinToRelax(),
        DenseToConv2D(),
    ]
    return tvm.transform.Sequential(passes)(mod)


@pytest.fixture
def builds():
    """Count the TIR builds (FoldConstant compiles each op it folds through `tirx.build`)."""
    name = "tirx.build"
    original = tvm_ffi.get_global_func(name)
    count = [0]

    def counting(*args):
        count[0] += 1
        return original(*args)

    tvm_ffi.register_global_func(name, counting, override=True)
    yield count
    tvm_ffi.register_global_func(name, original, override=True)


def assert_same_module(new: tvm.IRModule, old: tvm.IRModule) -> None:
    """Structurally equal, constants included: `structural_equal` compares the tensor bytes."""
    mismatch = tvm_ffi.get_first_structural_mismatch(new, old, map_free_vars=True)
    assert mismatch is None, f"first mismatch at {mismatch}"


def ops_in(mod: tvm.IRModule) -> list[str]:
    return [
        str(binding.value.op.name)
        for block in mod["main"].body.blocks
        for binding in block.bindings
        if isinstance(binding.value, relax.Call) and isinstance(binding.value.op, tvm.ir.Op)
    ]


def run(mod: tvm.IRModule, image: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(image)).numpy()


@pytest.mark.parametrize("network", [resnet50, resnet18, mobilenet_v2], ids=lambda n: n.__name__)
def test_prepare_equals_the_tvm_only_pipeline_without_builds(network, builds):
    mod, params = network(**SMALL)
    new = prepare(mod, params)
    assert builds[0] == 0, "prepare compiled constant ops for llvm"
    old = tvm_only_prepare(mod, params)
    assert builds[0] > 100  # the old pipeline really did fold through llvm
    assert "relax.nn.batch_norm" not in ops_in(new)
    assert "relax.matmul" not in ops_in(new)  # the classifier is a 1x1 conv
    assert ops_in(new) == ops_in(old)
    assert_same_module(new, old)
    image = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype("float32")
    np.testing.assert_array_equal(run(new, image), run(old, image))


def test_the_module_comparison_sees_one_ulp_in_a_constant():
    """`assert_same_module` is bitwise: one ulp in one weight makes the modules differ."""
    mod, params = resnet18(**SMALL)
    nudged = dict(params)
    weight = np.array(nudged["stem_weight"], dtype="float32")
    weight.flat[0] = np.nextafter(weight.flat[0], np.float32(np.inf))
    nudged["stem_weight"] = weight

    def numpy_folded(weights):
        bound = {key: tvm.runtime.tensor(np.asarray(value)) for key, value in weights.items()}
        passes = [
            relax.transform.BindParams("main", bound),
            relax.transform.ConvertToDataflow(),
            relax.transform.FoldBatchnormToConv2D(),
            FoldConstantNumpy(),
        ]
        return tvm.transform.Sequential(passes)(mod)

    assert tvm_ffi.structural_equal(numpy_folded(params), numpy_folded(params), True)
    assert not tvm_ffi.structural_equal(numpy_folded(params), numpy_folded(nudged), True)


def constant_ops_module() -> tvm.IRModule:
    """Constant calls numpy folds, calls it leaves to FoldConstant, and calls on the input."""
    rng = np.random.default_rng(0)
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    c32 = relax.const(rng.standard_normal((2, 3)).astype("float32"))
    row = relax.const(rng.standard_normal((3,)).astype("float32"))
    var = relax.const(rng.uniform(0.5, 2.0, (3,)).astype("float32"))
    zeros = relax.const(np.zeros((3,), "float32"))
    c64 = relax.const(rng.standard_normal((3, 2)), "float64")
    ints = relax.const(np.arange(-6, 6, dtype="int64").reshape(3, 4), "int64")
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        eps = bb.emit(relax.op.add(var, tvm.tirx.FloatImm("float32", 1e-5)))
        root = bb.emit(relax.op.sqrt(eps))
        scale = bb.emit(relax.op.divide(c32, root))  # broadcast (2, 3) / (3,)
        inf = bb.emit(relax.op.divide(row, zeros))  # +-inf
        shifted = bb.emit(relax.op.subtract(scale, relax.op.multiply(row, inf)))
        wide = bb.emit(relax.op.permute_dims(relax.op.multiply(c64, c64), [1, 0]))
        flat = bb.emit(relax.op.reshape(ints, (2, 6)))
        halved = bb.emit(relax.op.divide(ints, relax.const(np.int64(5), "int64")))  # int: TVM's
        expo = bb.emit(relax.op.exp(row))  # not in numpy's table: FoldConstant folds it
        after = bb.emit(relax.op.multiply(expo, row))  # known op, operand numpy did not fold
        out = bb.emit(relax.op.add(relax.op.multiply(x, shifted), relax.op.add(after, eps)))
        bb.emit_func_output(relax.Tuple([out, wide, flat, halved]))
    return bb.finalize()


def test_numpy_folds_its_table_and_leaves_the_rest(builds):
    mod = relax.transform.Normalize()(constant_ops_module())
    assert FoldConstantNumpy()(mod).same_as(mod)  # no dataflow block: FoldConstant folds none
    mod = relax.transform.ConvertToDataflow()(mod)
    folded = FoldConstantNumpy()(mod)
    assert ops_in(folded) == [
        *["relax.divide"],  # int64
        *["relax.exp", "relax.multiply"],  # exp is not in numpy's table, so neither is its user
        *["relax.multiply", "relax.add", "relax.add"],  # the calls on x and the exp's
    ]
    assert builds[0] == 0
    left = relax.transform.CanonicalizeBindings()(relax.transform.FoldConstant()(folded))
    assert builds[0] == 4  # the int64 divide, exp, its multiply and the add of that
    assert ops_in(left) == ["relax.multiply", "relax.add"]  # on x


def test_prepare_equals_fold_constant_on_mixed_constant_ops(builds):
    mod = constant_ops_module()
    new = prepare(mod)
    assert builds[0] == 4
    old = tvm_only_prepare(mod)
    assert_same_module(new, old)
