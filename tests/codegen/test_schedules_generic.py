"""Default schedules for non-convolution kernels (effc.codegen.schedules.generic).

Real kernels of the fast fixture models (digits_cnn, mobilenet_tiny, minilm_l3, shapes
bound) are scheduled for AVX2 (8 lanes, 2 cores), compiled, run on random inputs and
compared with the unscheduled kernel; each test also checks that its rule applied (the
scheduled kernel has the parallel / vectorized / unrolled loops the rule makes). Pools in
the blocked NCHW16c layout and with padding come from TOPI, as the lead's layout pass
will make them."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from tvm import te, topi

from effc.codegen.schedules.generic import schedule_generic
from effc.codegen.tune import kernel_module
from effc.ir.refine import bind_input_shapes
from effc.models import load_model
from effc.optimize import optimize
from tests.fixtures import FIXTURES

LANES, CORES = 8, 2
TARGET = {"kind": "llvm", "mcpu": "haswell", "num-cores": CORES}


def _kernels(name: str) -> dict[str, tvm.tirx.PrimFunc]:
    fixture = next(f for f in FIXTURES if f.name == name)
    module = load_model(fixture.path())
    feeds = fixture.inputs(onnx.load(fixture.path()))
    bind_input_shapes(module, {n: a.shape for n, a in feeds.items()})
    optimize(module, "O2")
    # kernels as an AVX-512 build makes them (16-lane blocks, 32-wide panels) on any host:
    # making them runs nothing; the checks run them built for TARGET
    mod = kernel_module(module, {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512"})
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


@pytest.fixture(scope="module")
def kernels() -> dict[str, dict[str, tvm.tirx.PrimFunc]]:
    return {name: _kernels(name) for name in ("digits_cnn", "mobilenet_tiny", "minilm_l3")}


def _run(func: tvm.tirx.PrimFunc, arrays: list[np.ndarray], target=TARGET) -> list[np.ndarray]:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=tvm.target.Target(target))
    tensors = [tvm.runtime.tensor(a.copy()) for a in arrays]
    lib["main"](*tensors)
    return [t.numpy() for t in tensors]


def _inputs(func: tvm.tirx.PrimFunc, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for p in func.params:
        shape, dtype = [int(d) for d in p.ty.shape], str(p.ty.dtype)
        out.append(rng.standard_normal(shape).astype(dtype) if dtype.startswith("float")
                   else rng.integers(0, 10, shape).astype(dtype))
    return out


def check(func: tvm.tirx.PrimFunc, *marks: str, lanes: int = LANES, target=TARGET, rtol: float = 1e-5) -> str:
    """Schedule ``func``, assert each of ``marks`` (e.g. ``T.parallel``) is in the result,
    and that it computes what the unscheduled kernel does; returns the scheduled script."""
    sch = schedule_generic(func, lanes, CORES)
    assert sch is not None, "no rule applied"
    scheduled = sch.mod["main"]
    script = scheduled.script()
    for mark in marks:
        assert mark in script, f"{mark} missing from the scheduled kernel:\n{script}"
    arrays = _inputs(func)
    for got, want in zip(_run(scheduled, arrays, target), _run(func, arrays, target)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    return script


@pytest.mark.parametrize("name", ["fused_mat_mul_add_gelu", "fused_mat_mul_add_add1"])
def test_dense_with_epilogue_is_tiled_vectorized_parallel(kernels, name):
    script = check(kernels["minilm_l3"][name], "T.parallel", "T.vectorized", "T.unroll", rtol=1e-4)
    assert 'scope="local"' in script  # the accumulator tile


@pytest.mark.parametrize("model,name", [("minilm_l3", "matmul"), ("minilm_l3", "fused_mat_mul_div_add"),
                                        ("digits_cnn", "gemm"), ("mobilenet_tiny", "gemm")])
def test_small_and_batch_matmuls(kernels, model, name):
    """The attention's batch matmul (the one kernel named ``matmul...``: its name's number
    depends on what else the model lowers to), Q.K^T with its scale and mask, and
    classifier gemms over weights packed in panels."""
    (func,) = [f for n, f in kernels[model].items() if n == name or name == "matmul" and n.startswith("matmul")]
    check(func, "T.vectorized", "T.unroll", rtol=1e-4)


def test_packed_weights_are_read_in_panels(kernels):
    """A constant matmul weight is packed ``[N/w, K, w]`` (``layout.pack_dense``) and the
    tile's columns are one panel: the vectorized loop reads it contiguously."""
    script = check(kernels["minilm_l3"]["fused_mat_mul_add_add1"], "T.vectorized(T.int64(32))", lanes=16, rtol=1e-4)
    assert "T.Buffer((T.int64(12), T.int64(1536), T.int64(32))" in script


def test_dense_for_avx512_lanes(kernels):
    # (built for AVX2, which every x86 machine running the tests has: a 32-wide vector is four)
    check(kernels["minilm_l3"]["fused_mat_mul_add"], "T.vectorized(T.int64(32))", lanes=16, rtol=1e-4)


@pytest.mark.parametrize("name", ["fused_add_add", "cast1", "multiply4"])
def test_elementwise_is_vectorized(kernels, name):
    check(kernels["minilm_l3"][name], "T.vectorized")


def test_transpose_stays_scalar_but_correct(kernels):
    scheduled = schedule_generic(kernels["minilm_l3"]["transpose1"], LANES, CORES)
    assert scheduled is None or "T.vectorized" not in scheduled.mod["main"].script()
    check(kernels["minilm_l3"]["fused_add_add"])


def test_big_elementwise_is_parallel():
    x = te.placeholder((64, 56, 56), "float32", name="x")
    y = te.compute(x.shape, lambda *i: te.max(x(*i) * 2.0, 0.0), name="y")
    check(te.create_prim_func([x, y]), "T.parallel", "T.vectorized")


def test_reduction_over_a_middle_axis(kernels):
    check(kernels["minilm_l3"]["sum"], "T.vectorized", rtol=1e-4)  # sum(x[b, k, j], k)


def test_big_softmax_and_layer_norm_are_parallel():
    x = te.placeholder((64, 12, 128), "float32", name="x")
    check(te.create_prim_func([x, topi.nn.softmax(x, axis=-1)]), "T.parallel", "T.vectorized", rtol=1e-4)
    gamma = te.placeholder((128,), "float32", name="gamma")
    beta = te.placeholder((128,), "float32", name="beta")
    norm = topi.nn.layer_norm(x, gamma, beta, axis=[2], epsilon=1e-5)
    check(te.create_prim_func([x, gamma, beta, norm]), "T.parallel", "T.vectorized", rtol=1e-4)


def test_small_reductions_are_left_to_llvm(kernels):
    for name in ("layer_norm", "softmax"):
        assert schedule_generic(kernels["minilm_l3"][name], LANES, CORES) is None, name


def test_global_average_pool():
    x = te.placeholder((1, 1024, 14, 14), "float32", name="x")
    total = topi.sum(x, axis=[2, 3], keepdims=True)
    y = te.compute(total.shape, lambda *i: total(*i) / 196.0, name="mean")
    check(te.create_prim_func([x, y]), "T.parallel", rtol=1e-4)


def test_max_pools_are_left_to_llvm(kernels):
    """Max pools (digits_cnn's 2x2/2 on its NCHW16c block, a TOPI 3x3/2 one) are left
    unscheduled: scheduled, they ran slower inside the models (``_schedule_pool``)."""
    assert len(kernels["digits_cnn"]["max_pool2d"].params[-1].ty.shape) == 5  # blocked by the layout plan
    assert schedule_generic(kernels["digits_cnn"]["max_pool2d"], LANES, CORES) is None
    x = te.placeholder((1, 8, 28, 28, 16), "float32", name="x")
    y = topi.nn.pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "max", layout="NCHW16c")
    assert schedule_generic(te.create_prim_func([x, y]), LANES, CORES) is None


def test_strided_nchw_pools_are_left_alone():
    x = te.placeholder((1, 64, 112, 112), "float32", name="x")  # resnet50's stem pool
    y = topi.nn.pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "max", layout="NCHW")
    assert schedule_generic(te.create_prim_func([x, y]), LANES, CORES) is None


def test_stride_one_nchw_pool_vectorizes_width():
    x = te.placeholder((1, 64, 28, 28), "float32", name="x")  # a 3x3/1 average pool
    y = topi.nn.pool2d(x, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), "avg", layout="NCHW")
    check(te.create_prim_func([x, y]), "T.parallel", "T.vectorized")


@pytest.mark.parametrize("pool_type", ["avg"])
def test_pool_nchw16c_vectorizes_channel_block(pool_type):
    x = te.placeholder((1, 8, 28, 28, 16), "float32", name="x")
    y = topi.nn.pool2d(x, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), pool_type, layout="NCHW16c")
    script = check(te.create_prim_func([x, y]), "T.vectorized(16)", "T.parallel", rtol=1e-5)
    assert "T.vectorized(16)" in script


def test_symbolic_and_unknown_kernels_are_left_alone(kernels):
    fixture = next(f for f in FIXTURES if f.name == "digits_cnn")
    module = load_model(fixture.path())
    optimize(module, "O2")
    symbolic = kernel_module(module)
    assert all(schedule_generic(f, LANES, CORES) is None
               for f in symbolic.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    for model in kernels.values():  # never raises, whatever the kernel (convolutions included)
        for func in model.values():
            schedule_generic(func, LANES, CORES)


def test_matmul_reading_b_transposed_is_dot_products():
    """``C[i, j] = sum_k A[i, k] * B[j, k]`` (a weight computed at run time, used
    transposed: the light ZFNet-512's fc6) runs as vector dot products along k through
    ``rfactor`` (vectorizing over j would gather B with a stride of K), with a relu after."""
    a = te.placeholder((2, 512), name="a")
    b = te.placeholder((96, 512), name="b")
    k = te.reduce_axis((0, 512), name="k")
    mm = te.compute((2, 96), lambda i, j: te.sum(a[i, k] * b[j, k], axis=k), name="matmul")
    out = te.compute((2, 96), lambda i, j: tvm.tirx.max(mm[i, j], tvm.tirx.const(0.0, "float32")), name="relu")
    script = check(te.create_prim_func([a, b, out]), "T.vectorized", "T.unroll", rtol=1e-4)
    assert "matmul_rf" in script
