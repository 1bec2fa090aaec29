"""nn ops (ir/ops/nn.py): what ONNX's conformance cases leave out.

Random attribute combinations checked against onnxruntime, symbolic dims through infer,
older-opset forms through the importer's upgrade hooks, bad inputs, MAC counts, and the
chunked im2col path."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import effc.ir.ops.nn as nn
from effc.ir.core import Graph, Node
from effc.ir.errors import ModelError, ShapeError, UnsupportedOpError
from effc.ir.interpreter import run_module
from effc.ir.opdef import REGISTRY, infer_types
from effc.ir.types import DType, TensorType
from effc.onnx_export import export_onnx
from effc.onnx_import import import_onnx

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- helpers


def make_model(op: str, inputs: list[tuple[str, np.ndarray | tuple]], outputs: list[str] | int = 1, *,
               opset: int = 21, consts: dict[str, np.ndarray] | None = None, **attrs) -> onnx.ModelProto:
    """One-node model. ``inputs``: (name, array) for a graph input fed that array, or
    (name, (elem_type, shape)) for a symbolic declaration; ``consts`` become initializers."""
    consts = consts or {}
    names = [n for n, _ in inputs]
    vis = []
    for name, spec in inputs:
        if name in consts or not name:
            continue
        if isinstance(spec, np.ndarray):
            vis.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(spec.dtype), spec.shape))
        else:
            vis.append(helper.make_tensor_value_info(name, spec[0], spec[1]))
    outs = [f"y{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
    node = helper.make_node(op, names, outs, **attrs)
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph([node], "g", vis, [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    ir_version = 10 if opset >= 21 else 7
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def feeds_of(inputs, consts=None) -> dict[str, np.ndarray]:
    consts = consts or {}
    return {n: a for n, a in inputs if n and n not in consts and isinstance(a, np.ndarray)}


def run_effc(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    module = import_onnx(model)
    got = run_module(module, feeds)
    return [got[o.name] for o in model.graph.output]


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check_vs_ort(op: str, inputs, outputs=1, *, opset=21, consts=None, rtol=1e-4, atol=1e-5, export=True, **attrs):
    """effc's interpreter, and onnxruntime on effc's export, agree with onnxruntime."""
    model = make_model(op, inputs, outputs, opset=opset, consts=consts, **attrs)
    feeds = feeds_of(inputs, consts)
    want = run_ort(model, feeds)
    got = run_effc(model, feeds)
    for w, g in zip(want, got):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    if export:
        proto = export_onnx(import_onnx(model))
        onnx.checker.check_model(proto, full_check=True)
        again = run_ort(proto, feeds)
        for w, g in zip(want, again):
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return got


def rand(*shape, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def infer_node(op: str, types: list[TensorType | None], n_outputs: int = 1, **attrs) -> list[TensorType]:
    g = Graph("t")
    ins = [None if t is None else g.add_input(f"x{i}", t) for i, t in enumerate(types)]
    node = Node(op, ins, [TensorType(DType.f32, ())] * n_outputs, attrs)
    return infer_types(node)


F32 = DType.f32


# ----------------------------------------------------------------------------- Conv


CONV_CASES = [
    dict(x=(2, 4, 9, 11), w=(6, 4, 3, 3), pads=[1, 1, 1, 1]),
    dict(x=(1, 3, 10, 10), w=(5, 3, 3, 2), strides=[2, 3], pads=[0, 1, 2, 0]),
    dict(x=(1, 4, 12, 12), w=(4, 2, 3, 3), group=2, dilations=[2, 1], pads=[2, 1, 2, 1]),
    dict(x=(2, 6, 8, 8), w=(6, 1, 3, 3), group=6, pads=[1, 1, 1, 1]),          # depthwise
    dict(x=(1, 4, 8, 8), w=(8, 1, 3, 3), group=4, strides=[2, 2]),             # channel multiplier 2
    dict(x=(1, 3, 7, 9), w=(4, 3, 3, 3), auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(x=(1, 3, 7, 9), w=(4, 3, 4, 4), auto_pad="SAME_LOWER", strides=[2, 1]),
    dict(x=(1, 3, 7, 9), w=(4, 3, 3, 3), auto_pad="VALID", strides=[2, 2], dilations=[1, 2]),
    dict(x=(2, 3, 17), w=(5, 3, 4), strides=[3], pads=[2, 1], dilations=[2]),   # 1-D
    dict(x=(1, 2, 5, 6, 7), w=(3, 2, 2, 3, 2), pads=[1, 0, 1, 0, 1, 1], strides=[1, 2, 2]),  # 3-D
    dict(x=(1, 8, 5, 5), w=(4, 8, 1, 1)),                                       # pointwise
    dict(x=(0, 3, 5, 5), w=(2, 3, 3, 3)),                                       # empty batch
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x" + "x".join(map(str, c["x"])) + "_" + "_".join(
    f"{k}{v}" for k, v in c.items() if k not in ("x", "w")))
@pytest.mark.parametrize("bias", [False, True])
def test_conv_matches_onnxruntime(case, bias):
    case = dict(case)
    x, w = rand(*case.pop("x")), rand(*case.pop("w"))
    inputs = [("x", x), ("w", w)] + ([("b", rand(w.shape[0]))] if bias else [])
    check_vs_ort("Conv", inputs, consts={"w": w}, **case)


def test_conv_f64_and_f16():
    x, w = rand(1, 3, 6, 6), rand(4, 3, 3, 3)
    (y32,) = check_vs_ort("Conv", [("x", x), ("w", w)], pads=[1, 1, 1, 1])
    # onnxruntime has no float64 Conv kernel: compare with the float32 result
    for dt, tol in ((np.float64, 1e-5), (np.float16, 2e-2)):
        model = make_model("Conv", [("x", x.astype(dt)), ("w", w.astype(dt))], pads=[1, 1, 1, 1])
        (y,) = run_effc(model, {"x": x.astype(dt), "w": w.astype(dt)})
        assert y.dtype == dt
        np.testing.assert_allclose(y.astype(np.float32), y32, rtol=tol, atol=tol)


@pytest.mark.parametrize("chunk", [1, 300, 5000])
def test_conv_im2col_chunks_match_unchunked(monkeypatch, chunk):
    x, w = rand(3, 4, 9, 8), rand(6, 2, 3, 3)
    attrs = REGISTRY["conv"].with_defaults({"group": 2, "pads": (1, 0, 2, 1), "strides": (2, 1)})
    (want,) = REGISTRY["conv"].ref([x, w], attrs, 1)
    monkeypatch.setattr(nn, "IM2COL_CHUNK", chunk)
    (got,) = REGISTRY["conv"].ref([x, w], attrs, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    wt = rand(4, 3, 3, 3)
    tattrs = REGISTRY["conv_transpose"].with_defaults({"strides": (2, 2), "pads": (1, 0, 0, 1)})
    monkeypatch.setattr(nn, "IM2COL_CHUNK", 1 << 25)
    (want_t,) = REGISTRY["conv_transpose"].ref([x, wt], tattrs, 1)
    monkeypatch.setattr(nn, "IM2COL_CHUNK", chunk)
    (got_t,) = REGISTRY["conv_transpose"].ref([x, wt], tattrs, 1)
    np.testing.assert_allclose(got_t, want_t, rtol=1e-5, atol=1e-5)


def test_conv_infer_keeps_symbols():
    x = TensorType(F32, ("N", 3, "H", "W"))
    w = TensorType(F32, (8, 3, 3, 3))
    (y,) = infer_node("conv", [x, w], pads=(1, 1, 1, 1))
    assert y.shape == ("N", 8, "H", "W")
    (y,) = infer_node("conv", [x, w], auto_pad="SAME_UPPER")
    assert y.shape == ("N", 8, "H", "W")
    (y,) = infer_node("conv", [x, w], strides=(2, 2), pads=(1, 1, 1, 1))
    assert y.shape == ("N", 8, "?", "?")
    (y,) = infer_node("conv", [TensorType(F32, ("N", 3, 32, 32)), w], strides=(2, 2), auto_pad="SAME_LOWER")
    assert y.shape == ("N", 8, 16, 16)


def test_conv_bad_inputs_name_the_problem():
    with pytest.raises(ShapeError, match="channels"):
        infer_node("conv", [TensorType(F32, (1, 4, 8, 8)), TensorType(F32, (8, 3, 3, 3))])
    with pytest.raises(ShapeError, match="group"):
        infer_node("conv", [TensorType(F32, (1, 6, 8, 8)), TensorType(F32, (5, 3, 3, 3))], group=2)
    with pytest.raises(ShapeError, match="B"):
        infer_node("conv", [TensorType(F32, (1, 3, 8, 8)), TensorType(F32, (8, 3, 3, 3)), TensorType(F32, (4,))])
    with pytest.raises(ShapeError, match="pads"):
        infer_node("conv", [TensorType(F32, (1, 3, 8, 8)), TensorType(F32, (8, 3, 3, 3))], pads=(1, 1))
    with pytest.raises(ShapeError, match="larger than the padded input"):
        infer_node("conv", [TensorType(F32, (1, 3, 2, 2)), TensorType(F32, (8, 3, 3, 3))])
    with pytest.raises(ShapeError, match="dtype"):
        infer_node("conv", [TensorType(DType.i32, (1, 3, 8, 8)), TensorType(DType.i32, (8, 3, 3, 3))])
    model = make_model("Conv", [("x", (TensorProto.FLOAT, ["N", 4, 8, 8])), ("w", rand(8, 3, 3, 3))],
                       consts={"w": rand(8, 3, 3, 3)})
    with pytest.raises(ModelError, match=r"X has 4 channels"):
        import_onnx(model)


def test_conv_macs():
    m = import_onnx(make_model("Conv", [("x", (TensorProto.FLOAT, ["N", 4, 16, 16])), ("w", rand(8, 2, 3, 3))],
                               consts={"w": rand(8, 2, 3, 3)}, group=2, pads=[1, 1, 1, 1]))
    node = next(n for n in m.graph.nodes if n.op == "conv")
    assert REGISTRY["conv"].macs(node) == 1 * 8 * 16 * 16 * 2 * 9
    assert REGISTRY["conv"].op_class == "conv"


# ----------------------------------------------------------------------------- ConvTranspose


CONVT_CASES = [
    dict(x=(2, 3, 5, 4), w=(3, 4, 3, 3)),
    dict(x=(1, 3, 5, 4), w=(3, 2, 3, 3), strides=[2, 3], pads=[1, 0, 1, 2]),
    dict(x=(1, 3, 5, 4), w=(3, 2, 3, 3), strides=[2, 2], output_padding=[1, 1]),
    dict(x=(1, 4, 5, 4), w=(4, 3, 2, 3), group=2, strides=[2, 1], dilations=[2, 2]),
    dict(x=(1, 4, 4, 4), w=(4, 1, 3, 3), group=4, strides=[2, 2], pads=[1, 1, 1, 1]),  # depthwise
    dict(x=(1, 3, 5, 4), w=(3, 2, 3, 3), strides=[2, 2], output_shape=[10, 9]),
    dict(x=(1, 3, 5, 4), w=(3, 2, 3, 3), strides=[2, 2], output_shape=[12, 10]),        # larger than full
    dict(x=(1, 3, 5, 4), w=(3, 2, 4, 4), strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(x=(1, 3, 5, 4), w=(3, 2, 3, 3), strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(x=(1, 3, 5, 4), w=(3, 2, 3, 3), strides=[2, 2], auto_pad="VALID"),
    dict(x=(2, 2, 7), w=(2, 3, 3), strides=[3], pads=[1, 2]),                             # 1-D
    dict(x=(1, 2, 3, 4, 3), w=(2, 2, 2, 3, 2), strides=[2, 1, 2], output_padding=[1, 0, 0]),  # 3-D
]


@pytest.mark.parametrize("case", CONVT_CASES, ids=lambda c: "_".join(f"{k}{v}" for k, v in c.items() if k != "w"))
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose_matches_onnxruntime(case, bias):
    case = dict(case)
    x, w = rand(*case.pop("x")), rand(*case.pop("w"))
    m = w.shape[1] * case.get("group", 1)
    inputs = [("x", x), ("w", w)] + ([("b", rand(m))] if bias else [])
    check_vs_ort("ConvTranspose", inputs, consts={"w": w}, **case)


def test_conv_transpose_forms_onnx_sizes_differently_become_explicit_pads():
    """SAME with output_padding, and an output_shape below the input size, are sized one
    way by the runtimes and another by onnx's shape rule: import makes them explicit pads."""
    x, w = rand(1, 2, 5, 4), rand(2, 3, 3, 3)
    for attrs in (dict(strides=[3, 2], auto_pad="SAME_UPPER", output_padding=[1, 0]),
                  dict(strides=[3, 2], auto_pad="SAME_LOWER", output_padding=[2, 1]),
                  dict(strides=[1, 1], output_shape=[4, 3])):
        check_vs_ort("ConvTranspose", [("x", x), ("w", w)], consts={"w": w}, **attrs)
        node = next(n for n in import_onnx(make_model("ConvTranspose", [("x", x), ("w", w)], **attrs)).graph.nodes
                    if n.op == "conv_transpose")
        assert "pads" in node.attrs and "auto_pad" not in node.attrs and "output_shape" not in node.attrs


def test_conv_transpose_infer_and_macs():
    x = TensorType(F32, ("N", 4, "H", 7))
    w = TensorType(F32, (4, 3, 3, 3))
    (y,) = infer_node("conv_transpose", [x, w], group=2, strides=(1, 2), pads=(1, 1, 1, 1))
    assert y.shape == ("N", 6, "H", 13)
    (y,) = infer_node("conv_transpose", [x, w], strides=(2, 2), auto_pad="SAME_UPPER")
    assert y.shape == ("N", 3, "?", 14)
    with pytest.raises(ShapeError, match="expects 4"):
        infer_node("conv_transpose", [TensorType(F32, (1, 5, 4, 4)), w])
    model = make_model("ConvTranspose", [("x", (TensorProto.FLOAT, ["N", 4, 5, 5])), ("w", rand(4, 3, 3, 3))],
                       consts={"w": rand(4, 3, 3, 3)}, group=2, strides=[2, 2])
    node = next(n for n in import_onnx(model).graph.nodes if n.op == "conv_transpose")
    assert REGISTRY["conv_transpose"].macs(node) == 4 * 25 * 3 * 9


def test_conv_transpose_full_output_shape_attr():
    """Some exporters give output_shape with N and C; upgrade keeps the spatial part."""
    x, w = rand(1, 3, 5, 4), rand(3, 2, 3, 3)
    model = make_model("ConvTranspose", [("x", x), ("w", w)], strides=[2, 2], output_shape=[1, 2, 10, 9])
    (y,) = run_effc(model, {"x": x, "w": w})
    ref = make_model("ConvTranspose", [("x", x), ("w", w)], strides=[2, 2], output_shape=[10, 9])
    np.testing.assert_allclose(y, run_ort(ref, {"x": x, "w": w})[0], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- Gemm, MatMul


@pytest.mark.parametrize("ta,tb", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (3, 1), (3, 5)])
def test_gemm_matches_onnxruntime(ta, tb, c_shape):
    a = rand(4, 3) if ta else rand(3, 4)
    b = rand(5, 4) if tb else rand(4, 5)
    inputs = [("a", a), ("b", b)]
    if c_shape is not None:
        inputs.append(("c", rand(*c_shape)))
    check_vs_ort("Gemm", inputs, transA=ta, transB=tb, alpha=0.5, beta=2.0)


def test_gemm_ints_and_old_opset():
    a = RNG.integers(-5, 5, (3, 4)).astype(np.int64)
    b = RNG.integers(-5, 5, (4, 2)).astype(np.int64)
    c = RNG.integers(-5, 5, (2,)).astype(np.int64)
    (y,) = run_effc(make_model("Gemm", [("a", a), ("b", b), ("c", c)]), {"a": a, "b": b, "c": c})
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, a @ b + c)
    # opset 7: C required, broadcasts unidirectionally
    a, b, c = rand(3, 4), rand(4, 2), rand(1, 2)
    check_vs_ort("Gemm", [("a", a), ("b", b), ("c", c)], opset=7, transA=0)


def test_gemm_bad_inputs():
    with pytest.raises(ShapeError, match="inner dims"):
        infer_node("gemm", [TensorType(F32, (3, 4)), TensorType(F32, (5, 2))])
    with pytest.raises(ShapeError, match="does not broadcast"):
        infer_node("gemm", [TensorType(F32, (3, 4)), TensorType(F32, (4, 2)), TensorType(F32, (4, 2))])
    with pytest.raises(ShapeError, match="2-D"):
        infer_node("gemm", [TensorType(F32, (2, 3, 4)), TensorType(F32, (4, 2))])
    (y,) = infer_node("gemm", [TensorType(F32, (4, "N")), TensorType(F32, (4, 7))], transA=1)
    assert y.shape == ("N", 7)


MATMUL_SHAPES = [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4,)),
                 ((4,), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((1, 3, 4), (2, 4, 5)), ((0, 3, 4), (4, 2))]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_matches_numpy_and_onnxruntime(sa, sb):
    a, b = rand(*sa), rand(*sb)
    got = check_vs_ort("MatMul", [("a", a), ("b", b)])
    np.testing.assert_allclose(got[0], np.matmul(a, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32, np.uint64, np.float64, np.float16])
def test_matmul_dtypes(dtype):
    a = RNG.integers(0, 7, (2, 3, 4)).astype(dtype)
    b = RNG.integers(0, 7, (4, 5)).astype(dtype)
    (y,) = run_effc(make_model("MatMul", [("a", a), ("b", b)]), {"a": a, "b": b})
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, np.matmul(a, b))


def test_matmul_infer_and_macs():
    (y,) = infer_node("mat_mul", [TensorType(F32, ("B", "S", 64)), TensorType(F32, (64, 32))])
    assert y.shape == ("B", "S", 32)
    (y,) = infer_node("mat_mul", [TensorType(F32, ("B", 1, "S", 64)), TensorType(F32, (8, 64, 32))])
    assert y.shape == ("B", 8, "S", 32)
    with pytest.raises(ShapeError, match="inner dims"):
        infer_node("mat_mul", [TensorType(F32, (3, 4)), TensorType(F32, (5, 2))])
    with pytest.raises(ShapeError, match="batch dims"):
        infer_node("mat_mul", [TensorType(F32, (2, 3, 4)), TensorType(F32, (3, 4, 2))])
    with pytest.raises(ShapeError, match="dtype"):
        infer_node("mat_mul", [TensorType(DType.i8, (3, 4)), TensorType(DType.i8, (4, 2))])
    model = make_model("MatMul", [("a", (TensorProto.FLOAT, ["B", 2, 3, 4])), ("b", rand(4, 5))], consts={"b": rand(4, 5)})
    node = next(n for n in import_onnx(model).graph.nodes if n.op == "mat_mul")
    assert REGISTRY["mat_mul"].macs(node) == 2 * 3 * 5 * 4
    model = make_model("Gemm", [("a", rand(3, 4)), ("b", rand(5, 4))], transB=1)
    node = next(n for n in import_onnx(model).graph.nodes if n.op == "gemm")
    assert REGISTRY["gemm"].macs(node) == 3 * 5 * 4


# ----------------------------------------------------------------------------- normalizations


def test_batch_norm_inference_and_symbols():
    x = rand(2, 3, 4, 5)
    s, b, m, v = rand(3), rand(3), rand(3), np.abs(rand(3)) + 0.5
    check_vs_ort("BatchNormalization", [("x", x), ("s", s), ("b", b), ("m", m), ("v", v)], epsilon=1e-3)
    (y,) = infer_node("batch_normalization", [TensorType(F32, ("N", 3, "H", "W"))] + [TensorType(F32, (3,))] * 4)
    assert y.shape == ("N", 3, "H", "W")
    with pytest.raises(ShapeError, match="scale has 4 elements, expected 3"):
        infer_node("batch_normalization", [TensorType(F32, ("N", 3, 2))] + [TensorType(F32, (4,))] * 4)
    with pytest.raises(ShapeError, match="training_mode=1"):
        infer_node("batch_normalization", [TensorType(F32, ("N", 3, 2))] + [TensorType(F32, (3,))] * 4, n_outputs=3)


def test_batch_norm_training_mode_follows_spec():
    x = rand(4, 3, 5, 2)
    s, b, m, v = rand(3), rand(3), rand(3), np.abs(rand(3)) + 0.5
    model = make_model("BatchNormalization", [("x", x), ("s", s), ("b", b), ("m", m), ("v", v)], 3,
                       training_mode=1, momentum=0.8, epsilon=1e-4)
    y, rm, rv = run_effc(model, {"x": x, "s": s, "b": b, "m": m, "v": v})
    cm, cv = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    want = (x - cm.reshape(1, 3, 1, 1)) / np.sqrt(cv.reshape(1, 3, 1, 1) + 1e-4) * s.reshape(1, 3, 1, 1) + b.reshape(1, 3, 1, 1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rm, m * 0.8 + cm * 0.2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, v * 0.8 + cv * 0.2, rtol=1e-5, atol=1e-6)
    # mixed dtypes (T, T1, T2 may differ from opset 15)
    model = make_model("BatchNormalization", [("x", x.astype(np.float16)), ("s", s), ("b", b),
                                              ("m", m.astype(np.float64)), ("v", v.astype(np.float64))], 3,
                       training_mode=1)
    y, rm, rv = run_effc(model, {"x": x.astype(np.float16), "s": s, "b": b, "m": m.astype(np.float64),
                                 "v": v.astype(np.float64)})
    assert (y.dtype, rm.dtype, rv.dtype) == (np.float16, np.float64, np.float64)


def test_batch_norm_opset7_spatial_upgrade():
    x = rand(2, 3, 4, 4)
    s, b, m, v = rand(3), rand(3), rand(3), np.abs(rand(3)) + 0.5
    inputs = [("x", x), ("s", s), ("b", b), ("m", m), ("v", v)]
    check_vs_ort("BatchNormalization", inputs, opset=7, spatial=1)
    model = make_model("BatchNormalization", inputs, opset=7, spatial=0)
    with pytest.raises(UnsupportedOpError, match="spatial=0"):
        import_onnx(model)
    node = import_onnx(make_model("BatchNormalization", inputs, opset=9))
    bn = next(n for n in node.graph.nodes if n.op == "batch_normalization")
    assert "spatial" not in bn.attrs and REGISTRY["batch_normalization"].op_class == "norm"


def test_instance_norm():
    x = rand(2, 3, 5, 4)
    check_vs_ort("InstanceNormalization", [("x", x), ("s", rand(3)), ("b", rand(3))], epsilon=1e-3)
    check_vs_ort("InstanceNormalization", [("x", rand(2, 3, 7)), ("s", rand(3)), ("b", rand(3))], opset=7)
    (y,) = infer_node("instance_normalization", [TensorType(F32, ("N", 3, "L")), TensorType(F32, (3,)), TensorType(F32, (3,))])
    assert y.shape == ("N", 3, "L")
    with pytest.raises(ShapeError, match="B has 2 elements"):
        infer_node("instance_normalization", [TensorType(F32, ("N", 3, "L")), TensorType(F32, (3,)), TensorType(F32, (2,))])


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
def test_layer_norm_outputs(axis):
    x = rand(2, 3, 4)
    r = axis % 3
    scale, bias = rand(*x.shape[r:]), rand(*x.shape[r:])
    check_vs_ort("LayerNormalization", [("x", x), ("s", scale), ("b", bias)], 3, opset=17, axis=axis)
    check_vs_ort("LayerNormalization", [("x", x), ("s", scale)], 1, opset=17, axis=axis)


def test_layer_norm_f16_stats_are_float32():
    x = rand(2, 5, 8).astype(np.float16)
    s, b = rand(8).astype(np.float16), rand(8).astype(np.float16)
    got = check_vs_ort("LayerNormalization", [("x", x), ("s", s), ("b", b)], 3, opset=17, rtol=1e-2, atol=1e-2)
    assert [g.dtype for g in got] == [np.float16, np.float32, np.float32]
    types = infer_node("layer_normalization", [TensorType(DType.f16, ("B", "S", 8)), TensorType(DType.f16, (8,))],
                       n_outputs=3, axis=-1)
    assert [t.shape for t in types] == [("B", "S", 8), ("B", "S", 1), ("B", "S", 1)]
    assert types[1].dtype == DType.f32
    with pytest.raises(ShapeError, match="does not broadcast"):
        infer_node("layer_normalization", [TensorType(F32, (2, 8)), TensorType(F32, (7,))])
    with pytest.raises(ShapeError, match="out of range"):
        infer_node("layer_normalization", [TensorType(F32, (2, 8)), TensorType(F32, (8,))], axis=2)
    with pytest.raises(UnsupportedOpError, match="stash_type"):
        infer_node("layer_normalization", [TensorType(F32, (2, 8)), TensorType(F32, (8,))], stash_type=DType.bf16)


# ----------------------------------------------------------------------------- pools


POOL_CASES = [
    dict(x=(2, 3, 9, 8), kernel_shape=[3, 3]),
    dict(x=(1, 2, 9, 8), kernel_shape=[3, 2], strides=[2, 3], pads=[1, 0, 1, 1]),
    dict(x=(1, 2, 9, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(x=(1, 2, 10, 7), kernel_shape=[2, 3], strides=[3, 2], ceil_mode=1),
    dict(x=(1, 2, 10, 9), kernel_shape=[3, 3], dilations=[2, 3], pads=[2, 1, 0, 2]),
    dict(x=(1, 2, 10, 9), kernel_shape=[3, 3], dilations=[2, 2], strides=[2, 2], ceil_mode=1),
    dict(x=(1, 2, 9, 8), kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(x=(1, 2, 9, 8), kernel_shape=[4, 4], strides=[2, 3], auto_pad="SAME_LOWER"),
    dict(x=(1, 2, 9, 8), kernel_shape=[3, 2], strides=[2, 2], auto_pad="VALID"),
    dict(x=(2, 3, 11), kernel_shape=[4], strides=[3], pads=[1, 2], ceil_mode=1),
    dict(x=(1, 2, 5, 6, 7), kernel_shape=[2, 3, 2], strides=[2, 1, 2], pads=[0, 1, 1, 1, 1, 0]),
]


def _pool_id(c):
    return "_".join(f"{k}{v}" for k, v in c.items())


@pytest.mark.parametrize("case", POOL_CASES, ids=_pool_id)
def test_max_pool_matches_onnxruntime(case):
    case = dict(case)
    x = rand(*case.pop("x"))
    check_vs_ort("MaxPool", [("x", x)], **case)


@pytest.mark.parametrize("case", [c for c in POOL_CASES if len(c["x"]) == 4], ids=_pool_id)
@pytest.mark.parametrize("order", [0, 1])
def test_max_pool_indices(case, order):
    case = dict(case)
    x = rand(*case.pop("x"))
    check_vs_ort("MaxPool", [("x", x)], 2, storage_order=order, **case)


def test_max_pool_int8_and_ties():
    x = RNG.integers(-128, 127, (1, 2, 7, 7)).astype(np.int8)
    check_vs_ort("MaxPool", [("x", x)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    x = np.zeros((1, 1, 4, 4), np.float32)  # ties: the first maximum wins
    check_vs_ort("MaxPool", [("x", x)], 2, kernel_shape=[2, 2], strides=[1, 1])


@pytest.mark.parametrize("case", POOL_CASES, ids=_pool_id)
@pytest.mark.parametrize("include", [0, 1])
def test_average_pool_matches_onnxruntime(case, include):
    case = dict(case)
    x = rand(*case.pop("x"))
    check_vs_ort("AveragePool", [("x", x)], count_include_pad=include, **case)


def test_max_pool_window_wholly_in_padding():
    """A dilated window that skips over the input gives the lowest value and index -1
    (onnxruntime's max starts from the lowest value; its index there is undefined)."""
    x = rand(1, 1, 1, 5)
    attrs = dict(kernel_shape=[4, 2], dilations=[2, 1], pads=[3, 0, 3, 1])
    check_vs_ort("MaxPool", [("x", x)], **attrs)
    y, idx = run_effc(make_model("MaxPool", [("x", x)], 2, **attrs), {"x": x})
    assert (y == np.finfo(np.float32).min).all() and (idx == -1).all()


def test_same_padding_never_negative():
    """SAME padding is clamped at 0 when the strided windows miss the input's tail (as
    TensorFlow, ONNX's reference Conv and onnxruntime's Conv do)."""
    x = np.arange(7, dtype=np.float32).reshape(1, 1, 7, 1)
    w = np.ones((1, 1, 1, 1), np.float32)
    for mode in ("SAME_UPPER", "SAME_LOWER"):
        (y,) = check_vs_ort("Conv", [("x", x), ("w", w)], auto_pad=mode, strides=[4, 1])
        np.testing.assert_array_equal(y.ravel(), [0, 4])
        (y,) = run_effc(make_model("MaxPool", [("x", x)], auto_pad=mode, strides=[4, 1], kernel_shape=[1, 1]), {"x": x})
        np.testing.assert_array_equal(y.ravel(), [0, 4])


def test_pool_old_opsets():
    x = rand(1, 2, 7, 7)
    check_vs_ort("MaxPool", [("x", x)], opset=8, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    check_vs_ort("MaxPool", [("x", x)], 2, opset=8, kernel_shape=[3, 3], strides=[2, 2], storage_order=1)
    check_vs_ort("AveragePool", [("x", x)], opset=7, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)
    check_vs_ort("AveragePool", [("x", x)], opset=10, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)


def test_pool_ceil_window_starting_in_padding_exports_cleanly():
    """A dropped last ceil window is rewritten to floor mode so onnx's opset-21 shape rule
    (which keeps such windows) agrees with the runtimes (which drop them)."""
    x = rand(1, 2, 2, 6)
    # axis 0 drops its last ceil window, axis 1 keeps an extra one
    attrs = dict(kernel_shape=[3, 3], strides=[3, 2], pads=[1, 0, 1, 0], ceil_mode=1)
    got = check_vs_ort("MaxPool", [("x", x)], 2, opset=22, **attrs)
    assert got[0].shape == (1, 2, 1, 3)
    node = next(n for n in import_onnx(make_model("MaxPool", [("x", x)], opset=22, **attrs)).graph.nodes)
    assert node.attrs["ceil_mode"] == 0 and node.attrs["pads"] == (1, 0, 1, 1)
    check_vs_ort("AveragePool", [("x", x)], opset=22, **attrs)
    # with count_include_pad the grown pad would count: the node keeps ceil_mode
    check_vs_ort("AveragePool", [("x", x)], opset=22, count_include_pad=1, export=False, **attrs)


def test_pool_infer_symbols_and_errors():
    (y,) = infer_node("max_pool", [TensorType(F32, ("N", 3, "H", "W"))], kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    assert y.shape == ("N", 3, "H", "W")
    y, idx = infer_node("max_pool", [TensorType(F32, ("N", 3, 32, 32))], 2, kernel_shape=(2, 2), strides=(2, 2))
    assert y.shape == idx.shape == ("N", 3, 16, 16) and idx.dtype == DType.i64
    (y,) = infer_node("average_pool", [TensorType(F32, ("N", 3, "H", 8))], kernel_shape=(2, 2), strides=(2, 2))
    assert y.shape == ("N", 3, "?", 4)
    with pytest.raises(ShapeError, match="kernel_shape"):
        infer_node("max_pool", [TensorType(F32, ("N", 3, 8, 8))], kernel_shape=(2,))
    with pytest.raises(ShapeError, match="strides"):
        infer_node("max_pool", [TensorType(F32, ("N", 3, 8, 8))], kernel_shape=(2, 2), strides=(0, 1))
    with pytest.raises(ShapeError, match="dtype"):
        infer_node("average_pool", [TensorType(DType.i8, ("N", 3, 8, 8))], kernel_shape=(2, 2))
    with pytest.raises(ModelError, match="kernel_shape"):
        import_onnx(make_model("MaxPool", [("x", rand(1, 1, 4, 4))]))


def test_global_pools():
    x = rand(2, 3, 5, 4)
    check_vs_ort("GlobalAveragePool", [("x", x)])
    check_vs_ort("GlobalMaxPool", [("x", x)])
    check_vs_ort("GlobalAveragePool", [("x", rand(2, 3, 6))])
    (y,) = infer_node("global_average_pool", [TensorType(F32, ("N", 3, "H", "W"))])
    assert y.shape == ("N", 3, 1, 1)
    assert REGISTRY["global_max_pool"].op_class == "pool"


# ----------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_opset13(op):
    x = rand(2, 3, 4) * 10
    for axis in (0, 1, -1):
        check_vs_ort(op, [("x", x)], opset=13, axis=axis)
    check_vs_ort(op, [("x", np.zeros((2, 0, 3), np.float32))], opset=13, axis=1)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_old_opsets(op):
    # default axis 1 on a rank-2 input: the last dim in both semantics
    check_vs_ort(op, [("x", rand(3, 5))], opset=11)
    # axis 1 on (N, C, 1, 1): normalizing over C*1*1 is normalizing over C
    m = import_onnx(make_model(op, [("x", rand(2, 5, 1, 1))], opset=11))
    node = next(n for n in m.graph.nodes if n.op in ("softmax", "log_softmax"))
    assert node.attrs["axis"] == 1
    check_vs_ort(op, [("x", rand(2, 5, 1, 1))], opset=11)
    check_vs_ort(op, [("x", rand(2, 3, 4))], opset=11, axis=2)
    check_vs_ort(op, [("x", rand(2, 3, 4))], opset=7, axis=-1)
    # axis 1 on (2, 3, 4) flattens 3*4: no one-axis form
    with pytest.raises(UnsupportedOpError, match="flattened dims 1..2"):
        import_onnx(make_model(op, [("x", rand(2, 3, 4))], opset=11))


def test_softmax_infer():
    (y,) = infer_node("softmax", [TensorType(DType.f16, ("B", "S", 10))])
    assert y == TensorType(DType.f16, ("B", "S", 10))
    with pytest.raises(ShapeError, match="out of range"):
        infer_node("softmax", [TensorType(F32, (2, 3))], axis=2)
    with pytest.raises(ShapeError, match="dtype"):
        infer_node("log_softmax", [TensorType(DType.i32, (2, 3))])
    assert REGISTRY["softmax"].op_class == "activation"
