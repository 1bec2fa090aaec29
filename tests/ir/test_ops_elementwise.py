"""Elementwise, quantization and reduction ops (ir/ops/elementwise.py, ir/ops/reduce.py) beyond
ONNX's conformance cases: symbolic dims through ``infer``, older- and newer-opset forms
upgraded on import (checked against onnxruntime running the original model), numeric edge
cases of the reference functions, and clear errors for bad inputs."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effc.ir.errors import ModelError, UnsupportedOpError
from effc.ir.interpreter import run_module
from effc.ir.opdef import BY_ONNX, UpgradeCtx
from effc.ir.ops.elementwise import erf
from effc.ir.verifier import verify_module
from effc.onnx_export import export_onnx
from effc.onnx_import import import_onnx
from tests.fixtures import ort_run

F32, F16, F64 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE
I8, U8, I32, I64, BOOL = TensorProto.INT8, TensorProto.UINT8, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL


def _model(op: str, inputs, outputs, opset: int, inits=(), **attrs) -> onnx.ModelProto:
    """A one-node model; ``inputs``/``outputs`` are (name, elem_type, shape) triples, inputs
    named in ``inits`` are initializers instead of graph inputs."""
    init_names = {k for k, _ in inits}
    node = helper.make_node(op, [i[0] for i in inputs], [o[0] for o in outputs], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(*i) for i in inputs if i[0] not in init_names],
                          [helper.make_tensor_value_info(*o) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    ir_version = 3 if opset < 8 else 4 if opset < 9 else 5 if opset < 11 else 6 if opset < 13 else 7 if opset < 15 else 8
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return list(ort_run(model, feeds, optimize=False).values())


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    module = import_onnx(model)
    verify_module(module)
    got = run_module(module, feeds)
    return [got[o.name] for o in model.graph.output]


def _check(model: onnx.ModelProto, feeds: dict, rtol: float = 1e-6, atol: float = 1e-6) -> list[np.ndarray]:
    """effc's import + interpreter, and its opset-21 export in onnxruntime, against
    onnxruntime running the original model."""
    got = _run(model, feeds)
    exported = _ort(export_onnx(import_onnx(model)), feeds)
    for g, e, w in zip(got, exported, _ort(model, feeds)):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
        np.testing.assert_allclose(e.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol)
    return got


def _out_type(model: onnx.ModelProto, i: int = 0):
    return import_onnx(model).graph.outputs[i].type


RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- symbolic dims


@pytest.mark.parametrize("op, attrs", [("Relu", {}), ("Sigmoid", {}), ("Gelu", {}), ("LeakyRelu", {"alpha": 0.1}),
                                       ("Erf", {}), ("Neg", {}), ("Round", {})])
def test_unary_keeps_symbolic_dims(op, attrs):
    m = _model(op, [("x", F32, ["N", 3, "H"])], [("y", F32, None)], 21, **attrs)
    assert _out_type(m).shape == ("N", 3, "H")


def test_binary_broadcast_keeps_symbols():
    m = _model("Add", [("a", F32, ["N", 1, 4]), ("b", F32, [3, 1])], [("c", F32, None)], 21)
    assert _out_type(m).shape == ("N", 3, 4)
    m = _model("Less", [("a", F32, ["N", 4]), ("b", F32, [4])], [("c", BOOL, None)], 21)
    t = _out_type(m)
    assert t.shape == ("N", 4) and str(t.dtype) == "bool"


def test_variadic_and_where_keep_symbols():
    m = _model("Max", [("a", F32, ["N", 4]), ("b", F32, [1, 4]), ("c", F32, [4])], [("y", F32, None)], 21)
    assert _out_type(m).shape == ("N", 4)
    m = _model("Where", [("c", BOOL, ["N", 1]), ("x", F32, [5]), ("y", F32, [1])], [("z", F32, None)], 21)
    assert _out_type(m).shape == ("N", 5)


def test_reductions_keep_symbols():
    axes = ("axes", np.array([-1], np.int64))
    m = _model("ReduceMean", [("x", F32, ["N", 3, 8]), ("axes", I64, [1])], [("y", F32, None)], 21, inits=[axes])
    assert _out_type(m).shape == ("N", 3, 1)
    m = _model("ReduceSum", [("x", F32, ["N", 3, 8]), ("axes", I64, [1])], [("y", F32, None)], 21, inits=[axes],
               keepdims=0)
    assert _out_type(m).shape == ("N", 3)
    m = _model("ArgMax", [("x", F32, ["N", 10])], [("y", I64, None)], 21, axis=1, keepdims=0)
    t = _out_type(m)
    assert t.shape == ("N",) and str(t.dtype) == "i64"


def test_reduction_with_runtime_axes_knows_the_rank():
    m = _model("ReduceMax", [("x", F32, ["N", 3, 8]), ("axes", I64, [2])], [("y", F32, None)], 21, keepdims=0)
    assert _out_type(m).rank == 1
    m = _model("ReduceMax", [("x", F32, ["N", 1, 8]), ("axes", I64, [2])], [("y", F32, None)], 21)
    assert _out_type(m).shape == ("?", 1, "?")
    x = RNG.standard_normal((2, 1, 8)).astype(np.float32)
    (y,) = _run(m, {"x": x, "axes": np.array([0, 2], np.int64)})
    np.testing.assert_array_equal(y, x.max(axis=(0, 2), keepdims=True))


def test_quantize_keeps_symbols():
    m = _model("QuantizeLinear", [("x", F32, ["N", 3]), ("s", F32, [3]), ("z", I8, [3])], [("y", I8, None)], 21,
               inits=[("s", np.ones(3, np.float32)), ("z", np.zeros(3, np.int8))])
    t = _out_type(m)
    assert t.shape == ("N", 3) and str(t.dtype) == "i8"


# ----------------------------------------------------------------------------- older opsets


def test_clip_attributes_before_opset_11():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    m = _model("Clip", [("x", F32, [3, 4])], [("y", F32, [3, 4])], 7, min=-1.0, max=2.0)
    (y,) = _check(m, {"x": x})
    np.testing.assert_array_equal(y, np.clip(x, -1, 2))
    m = _model("Clip", [("x", F32, [3, 4])], [("y", F32, [3, 4])], 7, max=0.5)  # min stays unbounded
    _check(m, {"x": x})


@pytest.mark.parametrize("op, opset", [("ReduceMean", 13), ("ReduceSum", 11), ("ReduceMax", 12), ("ReduceMin", 13),
                                       ("ReduceProd", 13), ("ReduceL2", 11), ("ReduceLogSumExp", 13)])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_axes_attribute_becomes_input(op, opset, keepdims):
    x = RNG.uniform(0.5, 1.5, (2, 3, 4)).astype(np.float32)
    m = _model(op, [("x", F32, [2, 3, 4])], [("y", F32, None)], opset, axes=[0, -1], keepdims=keepdims)
    module = import_onnx(m)
    node = [n for n in module.graph.nodes if n.op != "const"][0]
    assert "axes" not in node.attrs and node.input(1).const_value.tolist() == [0, -1]
    (y,) = _check(m, {"x": x}, rtol=1e-5)
    assert y.shape == ((1, 3, 1) if keepdims else (3,))


def test_reduce_without_axes_reduces_everything_in_old_opsets():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    m = _model("ReduceMean", [("x", F32, [2, 3])], [("y", F32, None)], 11, keepdims=0)
    (y,) = _check(m, {"x": x})
    assert y.shape == ()


@pytest.mark.parametrize("opset, select_last", [(11, None), (13, 1)])
def test_argmax_older_opsets(opset, select_last):
    x = np.array([[1, 5, 5, 2], [7, 7, 0, 7]], np.float32)
    attrs = {"axis": -1, "keepdims": 0} | ({} if select_last is None else {"select_last_index": select_last})
    for op in ("ArgMax", "ArgMin"):
        m = _model(op, [("x", F32, [2, 4])], [("y", I64, None)], opset, **attrs)
        _check(m, {"x": x})


def test_quantize_linear_opset10_and_13():
    x = np.array([[-1.0, 0.0, 0.5, 1.5, 2.5, 300.0]], np.float32)
    m = _model("QuantizeLinear", [("x", F32, [1, 6]), ("s", F32, []), ("z", U8, [])], [("y", U8, [1, 6])], 10,
               inits=[("s", np.float32(1.0)), ("z", np.uint8(10))])
    (y,) = _check(m, {"x": x})
    np.testing.assert_array_equal(y, [[9, 10, 10, 12, 12, 255]])  # halves round to even, then saturate
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32) * 10
    scale, zp = np.array([0.1, 0.2, 0.3], np.float32), np.array([-5, 0, 5], np.int8)
    m = _model("QuantizeLinear", [("x", F32, [2, 3, 4]), ("s", F32, [3]), ("z", I8, [3])], [("y", I8, [2, 3, 4])], 13,
               inits=[("s", scale), ("z", zp)], axis=1)
    _check(m, {"x": x})
    m = _model("DequantizeLinear", [("q", I8, [2, 3, 4]), ("s", F32, [3]), ("z", I8, [3])], [("y", F32, [2, 3, 4])], 13,
               inits=[("s", scale), ("z", zp)], axis=-2)
    _check(m, {"q": RNG.integers(-128, 128, (2, 3, 4)).astype(np.int8)})


def test_blocked_quantization_with_a_partial_last_block():
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    scale = np.array([[0.01, 0.02], [0.03, 0.04]], np.float32)  # blocks of 3 over a dim of 5
    zp = np.array([[1, 2], [3, 4]], np.uint8)
    m = _model("QuantizeLinear", [("x", F32, [2, 5]), ("s", F32, [2, 2]), ("z", U8, [2, 2])], [("y", U8, [2, 5])], 21,
               inits=[("s", scale), ("z", zp)], axis=1, block_size=3)
    (q,) = _run(m, {"x": x})
    full_s, full_z = np.repeat(scale, 3, axis=1)[:, :5], np.repeat(zp, 3, axis=1)[:, :5].astype(np.float64)
    np.testing.assert_array_equal(q, np.clip(np.rint(x / full_s) + full_z, 0, 255).astype(np.uint8))
    m = _model("DequantizeLinear", [("q", U8, [2, 5]), ("s", F32, [2, 2]), ("z", U8, [2, 2])], [("y", F32, [2, 5])], 21,
               inits=[("s", scale), ("z", zp)], axis=1, block_size=3)
    (y,) = _run(m, {"q": q})
    np.testing.assert_allclose(y, (q - full_z) * full_s, rtol=1e-6)


def test_add_opset7_broadcast_and_int_pow_opset13():
    a, b = RNG.standard_normal((2, 3, 4)).astype(np.float32), RNG.standard_normal((4,)).astype(np.float32)
    _check(_model("Add", [("a", F32, [2, 3, 4]), ("b", F32, [4])], [("c", F32, [2, 3, 4])], 7), {"a": a, "b": b})
    x = np.array([2, -3, 1, -1, 5, 0], np.int64)
    e = np.array([3, 3, -2, -3, -1, 2], np.int64)
    m = _model("Pow", [("x", I64, [6]), ("e", I64, [6])], [("z", I64, [6])], 13)
    (z,) = _run(m, {"x": x, "e": e})
    np.testing.assert_array_equal(z, [8, -27, 1, -1, 0, 0])  # 1/x^n truncates toward zero


def test_legacy_broadcast_attributes():
    ctx = UpgradeCtx(6, "n", {"broadcast": 1}, [], lambda a: None, ModelError, "Add")
    BY_ONNX["Add"].upgrade(ctx)
    assert ctx.attrs == {}
    ctx = UpgradeCtx(6, "n", {"broadcast": 1, "axis": 1}, [], lambda a: None, ModelError, "Add")
    with pytest.raises(ModelError, match="legacy broadcast"):
        BY_ONNX["Add"].upgrade(ctx)


# ----------------------------------------------------------------------------- newer opsets


def test_cast_round_mode_from_opset_24_is_dropped():
    x = np.array([1.5, -2.25, 1e-3], np.float32)
    m = _model("Cast", [("x", F32, [3])], [("y", F16, [3])], 24, to=F16, round_mode="down")
    module = import_onnx(m)
    assert "round_mode" not in [n for n in module.graph.nodes][-1].attrs
    (y,) = _run(m, {"x": x})
    np.testing.assert_array_equal(y, x.astype(np.float16))


def test_quantize_precision_and_dequantize_output_dtype_from_opset_23():
    x = np.array([0.5, 1.5, 2.6], np.float32)
    ok = _model("QuantizeLinear", [("x", F32, [3]), ("s", F32, [])], [("y", U8, [3])], 23,
                inits=[("s", np.float32(1))], precision=F32)
    np.testing.assert_array_equal(_run(ok, {"x": x})[0], [0, 2, 3])
    bad = _model("QuantizeLinear", [("x", F32, [3]), ("s", F32, [])], [("y", U8, [3])], 23,
                 inits=[("s", np.float32(1))], precision=F16)
    with pytest.raises(UnsupportedOpError, match="precision"):
        import_onnx(bad)
    ok = _model("DequantizeLinear", [("q", U8, [3]), ("s", F32, [])], [("y", F32, [3])], 23,
                inits=[("s", np.float32(2))], output_dtype=F32)
    np.testing.assert_array_equal(_run(ok, {"q": np.array([1, 2, 3], np.uint8)})[0], [2, 4, 6])
    bad = _model("DequantizeLinear", [("q", U8, [3]), ("s", F32, [])], [("y", F16, [3])], 23,
                 inits=[("s", np.float32(2))], output_dtype=F16)
    with pytest.raises(UnsupportedOpError, match="output_dtype"):
        import_onnx(bad)


def test_quantize_to_int4_is_unsupported():
    m = _model("QuantizeLinear", [("x", F32, [3]), ("s", F32, [])], [("y", TensorProto.INT4, [3])], 21,
               inits=[("s", np.float32(1))], output_dtype=TensorProto.INT4)
    with pytest.raises(UnsupportedOpError, match="int4"):
        import_onnx(m)


# ----------------------------------------------------------------------------- numerics


def test_erf_matches_libm():
    xs = np.concatenate([np.linspace(-8, 8, 20001), [0.0, -0.0, np.inf, -np.inf, 1e-300, 2.9999999, 3.0]])
    want = np.array([math.erf(v) for v in xs])
    np.testing.assert_allclose(erf(xs), want, rtol=4e-15, atol=0)
    assert np.isnan(erf(np.array([np.nan])))[0]
    assert math.copysign(1, erf(np.array(-0.0))) == -1


def test_gelu_is_exact_in_float64():
    x = np.linspace(-6, 6, 101)
    m = _model("Gelu", [("x", F64, [101])], [("y", F64, [101])], 20)  # (onnxruntime has no float64 Erf)
    (y,) = _run(m, {"x": x})
    np.testing.assert_allclose(y, [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x], rtol=1e-13, atol=1e-14)
    m = _model("Gelu", [("x", F32, [101])], [("y", F32, [101])], 20, approximate="tanh")
    _check(m, {"x": x.astype(np.float32)}, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dt, np_dt", [(I8, np.int8), (I32, np.int32), (I64, np.int64)])
def test_integer_division_truncates_and_mod_follows_sign_rules(dt, np_dt):
    a = np.array([7, -7, 7, -7, 0, 6], np_dt)
    b = np.array([2, 2, -2, -2, 3, -4], np_dt)
    (q,) = _check(_model("Div", [("a", dt, [6]), ("b", dt, [6])], [("c", dt, [6])], 14), {"a": a, "b": b})
    np.testing.assert_array_equal(q, [3, -3, -3, 3, 0, -1])
    (r,) = _check(_model("Mod", [("a", dt, [6]), ("b", dt, [6])], [("c", dt, [6])], 13), {"a": a, "b": b})
    np.testing.assert_array_equal(r, [1, 1, -1, -1, 0, -2])  # divisor's sign
    (r,) = _check(_model("Mod", [("a", dt, [6]), ("b", dt, [6])], [("c", dt, [6])], 13, fmod=1), {"a": a, "b": b})
    np.testing.assert_array_equal(r, [1, -1, 1, -1, 0, 2])  # dividend's sign


def test_integer_arithmetic_wraps():
    a = np.array([120, -128], np.int8)
    (c,) = _check(_model("Add", [("a", I8, [2]), ("b", I8, [2])], [("c", I8, [2])], 14), {"a": a, "b": a})
    np.testing.assert_array_equal(c, [-16, 0])


def test_float16_math_keeps_dtype_and_precision():
    x = np.linspace(-4, 4, 33).astype(np.float16)
    for op in ("Sigmoid", "Tanh", "Exp", "Softplus", "Elu", "HardSwish"):
        m = _model(op, [("x", F16, [33])], [("y", F16, [33])], 21)
        (y,) = _check(m, {"x": x}, rtol=2e-3, atol=1e-3)
        assert y.dtype == np.float16


def test_reductions_over_empty_sets():
    x = np.zeros((2, 0, 3), np.int32)
    axes = ("axes", np.array([1], np.int64))
    want = {"ReduceSum": 0, "ReduceProd": 1, "ReduceMax": np.iinfo(np.int32).min, "ReduceMin": np.iinfo(np.int32).max,
            "ReduceL1": 0, "ReduceSumSquare": 0}
    for op, value in want.items():
        m = _model(op, [("x", I32, [2, 0, 3]), ("axes", I64, [1])], [("y", I32, None)], 21, inits=[axes])
        (y,) = _run(m, {"x": x})
        assert y.shape == (2, 1, 3) and (y == value).all(), op
    xf = np.zeros((0, 2), np.float32)
    for op, value in (("ReduceMax", -np.inf), ("ReduceMin", np.inf), ("ReduceLogSumExp", -np.inf)):
        m = _model(op, [("x", F32, [0, 2]), ("axes", I64, [1])], [("y", F32, None)], 21,
                   inits=[("axes", np.array([0], np.int64))], keepdims=0)
        (y,) = _run(m, {"x": xf})
        assert y.shape == (2,) and (y == value).all(), op


def test_noop_with_empty_axes_is_identity():
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    m = _model("ReduceSum", [("x", F32, [2, 3]), ("axes", I64, [0])], [("y", F32, None)], 13,
               inits=[("axes", np.zeros(0, np.int64))], noop_with_empty_axes=1)
    (y,) = _check(m, {"x": x})
    np.testing.assert_array_equal(y, x)


def test_reduce_log_sum_exp_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -np.inf]], np.float32)
    m = _model("ReduceLogSumExp", [("x", F32, [2, 2]), ("axes", I64, [1])], [("y", F32, None)], 18,
               inits=[("axes", np.array([1], np.int64))], keepdims=0)
    (y,) = _run(m, {"x": x})
    np.testing.assert_allclose(y, [1000 + math.log(2), -1000], rtol=1e-6)


def test_cast_edge_cases():
    x = np.array([0.0, -0.0, np.nan, 2.7, -2.7], np.float32)
    (b,) = _check(_model("Cast", [("x", F32, [5])], [("y", BOOL, [5])], 13, to=BOOL), {"x": x})
    np.testing.assert_array_equal(b, [False, False, True, True, True])
    xi = np.array([200, -56, 300], np.int32)
    (y,) = _check(_model("Cast", [("x", I32, [3])], [("y", I8, [3])], 13, to=I8), {"x": xi})
    np.testing.assert_array_equal(y, [-56, -56, 44])  # high bits dropped
    xf = np.array([0.0, 1.9, -1.9, 2.5, -2.5], np.float32)
    (z,) = _check(_model("Cast", [("x", F32, [5])], [("y", I32, [5])], 13, to=I32), {"x": xf})
    np.testing.assert_array_equal(z, [0, 1, -1, 2, -2])  # truncation toward zero


def test_clip_integers_and_min_above_max():
    x = np.array([-100, 0, 5, 100], np.int8)
    m = _model("Clip", [("x", I8, [4]), ("lo", I8, []), ("hi", I8, [])], [("y", I8, [4])], 13,
               inits=[("lo", np.int8(10)), ("hi", np.int8(3))])
    (y,) = _run(m, {"x": x})
    np.testing.assert_array_equal(y, [3, 3, 3, 3])


def test_prelu_unidirectional_slope():
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    slope = np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1)
    m = _model("PRelu", [("x", F32, [2, 3, 4, 4]), ("s", F32, [3, 1, 1])], [("y", F32, [2, 3, 4, 4])], 16,
               inits=[("s", slope)])
    _check(m, {"x": x})


def test_large_tensors_run_fast_enough():
    import time

    x = RNG.standard_normal((8, 64, 56, 56)).astype(np.float32)  # a ResNet-sized activation
    for op in ("Relu", "Sigmoid", "Erf"):
        m = _model(op, [("x", F32, list(x.shape))], [("y", F32, None)], 21)
        module = import_onnx(m)
        t = time.perf_counter()
        run_module(module, {"x": x})
        assert time.perf_counter() - t < 10, op  # generous: catches per-element Python loops


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("op, inputs, attrs, inits, match", [
    ("Add", [("a", F32, [2]), ("b", I64, [2])], {}, [], "dtypes differ"),
    ("Mul", [("a", F32, [2, 3]), ("b", F32, [4])], {}, [], "do not broadcast"),
    ("And", [("a", F32, [2]), ("b", F32, [2])], {}, [], "not supported"),
    ("Relu", [("a", U8, [2])], {}, [], "dtype u8"),
    ("Sqrt", [("a", I32, [2])], {}, [], "dtype i32; this op takes f16, bf16, f32, f64"),
    ("Where", [("c", F32, [2]), ("x", F32, [2]), ("y", F32, [2])], {}, [], "condition has dtype f32"),
    ("Where", [("c", BOOL, [2]), ("x", F32, [2]), ("y", F64, [2])], {}, [], "must match"),
    ("Max", [("a", F32, [2]), ("b", F64, [2])], {}, [], "input 1 has dtype f64"),
    ("Gelu", [("x", F32, [2])], {"approximate": "fast"}, [], "approximate='fast'"),
    ("Mod", [("a", I32, [2]), ("b", I32, [2])], {"fmod": 2}, [], "fmod must be 0 or 1"),
    ("PRelu", [("x", F32, [2, 3]), ("s", F32, [2])], {}, [], "does not broadcast to X"),
    ("Clip", [("x", F32, [4]), ("lo", F32, [2])], {}, [("lo", np.zeros(2, np.float32))], "must be a scalar"),
    ("Clip", [("x", F32, [4]), ("lo", F64, [])], {}, [("lo", np.float64(0))], "must match"),
    ("ReduceSum", [("x", F32, [2, 3]), ("axes", I64, [1])], {}, [("axes", np.array([2], np.int64))],
     "out of range"),
    ("ReduceMax", [("x", F32, [2, 3]), ("axes", I64, [2])], {}, [("axes", np.array([1, -1], np.int64))],
     "repeat an axis"),
    ("ReduceMean", [("x", BOOL, [2, 3])], {}, [], "data has dtype bool"),
    ("ArgMax", [("x", F32, [2, 3])], {"axis": 2}, [], "out of range"),
    ("ArgMin", [("x", F32, [2, 0])], {"axis": 1}, [], "size 0"),
    ("QuantizeLinear", [("x", F32, [2, 3]), ("s", F32, [4])], {}, [("s", np.ones(4, np.float32))],
     "per-axis y_scale has 4 elements"),
    ("QuantizeLinear", [("x", F32, [2, 3]), ("s", F32, [2, 2])], {"block_size": 1}, [("s", np.ones((2, 2), np.float32))],
     "dim 1 should be 3"),
    ("QuantizeLinear", [("x", F32, [2, 3]), ("s", F32, []), ("z", I32, [])], {},
     [("s", np.float32(1)), ("z", np.int32(0))], "cannot quantize to i32"),
    ("DequantizeLinear", [("x", I8, [3]), ("s", F32, []), ("z", U8, [])], {},
     [("s", np.float32(1)), ("z", np.uint8(0))], "x_zero_point has dtype u8"),
])
def test_bad_inputs_give_clear_errors(op, inputs, attrs, inits, match):
    m = _model(op, inputs, [("out", TensorProto.UNDEFINED, None)], 21, inits=inits, **attrs)
    with pytest.raises(ModelError, match=match) as e:
        import_onnx(m)
    assert op in str(e.value)


def test_min_with_no_inputs_is_rejected():
    m = _model("Min", [], [("y", F32, None)], 21)
    with pytest.raises(ModelError, match="at least one input"):
        import_onnx(m)


# ----------------------------------------------------------------------------- export


def test_export_round_trip_through_onnxruntime():
    """Upgraded forms export as opset-21 ops that onnxruntime runs with the same results."""
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    m = _model("ReduceMean", [("x", F32, [2, 3, 4])], [("y", F32, None)], 13, axes=[1], keepdims=0)
    module = import_onnx(m)
    (want,) = _ort(m, {"x": x})
    (got,) = _ort(export_onnx(module), {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-6)
