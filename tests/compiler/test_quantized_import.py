"""Models quantized by onnxruntime's own quantizer (``onnxruntime.quantization``) import
into effc and match onnxruntime.

The quantized model is the digits CNN (examples/digits_cnn.onnx) quantized with
``quantize_static`` in QDQ format, calibrated on its 16 test images. onnxruntime
runs the quantized model with its QDQ fusions (integer kernels where it has them); effc's
interpreter and its x86 build run the QDQ graph as written (float compute between the
Q/DQ pairs). The two may round an activation differently at a Q node, so outputs are
compared within one quantization step of the output (the scale of the DequantizeLinear
that produces it), and the predicted classes must agree. QOperator models (integer ops)
build with effc's integer kernels (codegen/relax_quant.py).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from effc.codegen import build
from effc.ir.interpreter import run_module
from effc.ir.parser import parse_module
from effc.ir.printer import print_module
from effc.models import load_model
from effc.onnx_export import export_onnx
from effc.optimize import optimize
from tests.fixtures import REPO, ort_run

DIGITS = REPO / "examples" / "digits_cnn.onnx"


def _images() -> np.ndarray:
    return np.load(REPO / "examples" / "digits_test.npz")["x"]


def _quantized(tmp_path, per_channel: bool, activation: str, fmt: str = "QDQ", weight: str = "int8") -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images = _images()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.it, None)

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int16": QuantType.QInt16,
             "uint16": QuantType.QUInt16, "int4": QuantType.QInt4, "uint4": QuantType.QUInt4}
    out = tmp_path / f"digits_q_{per_channel}_{activation}_{weight}_{fmt}.onnx"
    quantize_static(str(DIGITS), str(out), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                    activation_type=types[activation], weight_type=types[weight])
    return onnx.load(str(out))


def _output_step(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that writes the graph's output."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = model.graph.output[0].name
    dq = next(n for n in model.graph.node if out in n.output)
    assert dq.op_type == "DequantizeLinear", dq.op_type
    return float(inits[dq.input[1]].reshape(-1)[0])


@pytest.mark.parametrize("fmt, ops", [("QDQ", {"QuantizeLinear", "DequantizeLinear"}),
                                      ("QOperator", {"QLinearConv", "QGemm"})])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_onnxruntime_quantize_static_model_imports_and_matches(tmp_path, per_channel, activation, fmt, ops):
    """QDQ: Q/DQ pairs around float ops. QOperator: QLinearConv and onnxruntime's
    com.microsoft QGemm (its quantized Gemm), with Q/DQ only where float ops remain."""
    model = _quantized(tmp_path, per_channel, activation, fmt)
    assert ops <= {n.op_type for n in model.graph.node}
    x = _images()
    want = ort_run(model, {"x": x})["logits"]
    step = _output_step(model)
    module = load_model(model)
    got = run_module(module, {"x": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.01, err_msg="interpreter")
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    optimize(module, "O2")
    built = build(module).run({"x": x})["logits"]  # QOperator: the integer ops' own kernels (relax_quant.py)
    np.testing.assert_allclose(built, want, rtol=0, atol=step * 1.01, err_msg="x86 build")
    np.testing.assert_allclose(built, run_module(module, {"x": x})["logits"], rtol=0, atol=1e-5 * np.abs(want).max())


def test_onnxruntime_quantize_dynamic_model_imports_and_matches(tmp_path):
    """``quantize_dynamic``: DynamicQuantizeLinear on the activations, ConvInteger and
    MatMulInteger on int8 weights, the int32 results scaled back to float (Cast, Mul):
    float outputs, which match onnxruntime's to float rounding."""
    from onnxruntime.quantization import quantize_dynamic

    out = tmp_path / "digits_dynamic.onnx"
    quantize_dynamic(str(DIGITS), str(out))
    model = onnx.load(str(out))
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    x = _images()
    want = ort_run(model, {"x": x})["logits"]
    got = run_module(load_model(model), {"x": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def _branchy_cnn(path) -> None:
    """A CNN with every op onnxruntime's QOperator quantizer turns into a com.microsoft
    QLinear* op: Add, Mul, Concat, AveragePool, GlobalAveragePool, LeakyRelu, Sigmoid."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["r1"], alpha=0.1),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["r1", "w3", "b3"], ["c3"]),
        helper.make_node("Add", ["c2", "c3"], ["s"]),
        helper.make_node("Sigmoid", ["c3"], ["g"]),
        helper.make_node("Mul", ["s", "g"], ["m"]),
        helper.make_node("Concat", ["m", "r1"], ["cat"], axis=1),
        helper.make_node("AveragePool", ["cat"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["ap"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8), w("w2", 8, 8, 3, 3), w("b2", 8), w("w3", 8, 8, 1, 1), w("b3", 8),
             w("wf", 5, 16), w("bf", 5)]
    graph = helper.make_graph(nodes, "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_onnxruntime_contrib_qlinear_ops_import_and_match(tmp_path, activation):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src, out = tmp_path / "branchy.onnx", tmp_path / "branchy_q.onnx"
    _branchy_cnn(src)
    rng = np.random.default_rng(4)
    samples = [rng.standard_normal((1, 3, 12, 12)).astype(np.float32) for _ in range(24)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": s} for s in samples[:16]])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8)
    model = onnx.load(str(out))
    contrib = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    assert {"QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
            "QLinearLeakyRelu", "QLinearSigmoid", "QGemm"} <= contrib, contrib
    module = load_model(model)
    step = _output_step(model)
    assert print_module(parse_module(print_module(module))) == print_module(module)  # the text form holds them
    exported = export_onnx(module)
    for x in samples[16:]:
        want = ort_run(model, {"x": x})["logits"]
        got = run_module(module, {"x": x})["logits"]
        np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.01)
        np.testing.assert_array_equal(ort_run(exported, {"x": x})["logits"], want)  # the same com.microsoft ops


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_qdq_to_integer_turns_onnxruntime_qdq_into_integer_ops(tmp_path, per_channel, activation):
    """``qdq-to-integer`` on the QDQ digits CNN: its three convs and its gemm become
    qlinear_conv and qgemm (exact int32 sums, one requantization each), no float conv or
    gemm remains, and the outputs still match onnxruntime (which fuses the same patterns
    into its integer kernels) within one output step, with the same classes."""
    from effc.passes import run_pipeline

    model = _quantized(tmp_path, per_channel, activation)
    module = load_model(model)
    run_pipeline(module, "qdq-to-integer,dce")
    ops = [n.op for n in module.graph.nodes]
    assert ops.count("qlinear_conv") == 3 and ops.count("qgemm") == 1
    assert "conv" not in ops and "gemm" not in ops
    x = _images()
    want = ort_run(model, {"x": x})["logits"]
    got = run_module(module, {"x": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=_output_step(model) * 1.01)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("activation, weight", [("int16", "int4"), ("uint16", "uint4"), ("uint8", "int4"),
                                                ("int16", "int8")])
def test_sixteen_and_four_bit_qdq_models_import_and_match(tmp_path, activation, weight):
    """``quantize_static`` with 16-bit activations and 4-bit weights (QDQ): the int4/uint4
    weights arrive packed two to a byte, unpack into effc's i4/u4 tensors, print and parse
    back, and the model matches onnxruntime within one output step."""
    model = _quantized(tmp_path, True, activation, "QDQ", weight)
    inits = {t.name: t for t in model.graph.initializer}
    want_elem = {"int4": onnx.TensorProto.INT4, "uint4": onnx.TensorProto.UINT4, "int8": onnx.TensorProto.INT8}[weight]
    assert any(t.data_type == want_elem for t in inits.values())
    x = _images()
    want = ort_run(model, {"x": x})["logits"]
    module = load_model(model)
    short = {"int4": "i4", "uint4": "u4", "int8": "i8"}[weight]
    assert any(n.op == "const" and n.outputs[0].type.dtype.value == short for n in module.graph.nodes)
    got = run_module(module, {"x": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=_output_step(model) * 1.01)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    from effc.ir.printer import referenced_resources

    text = print_module(module)
    again = parse_module(text, {k: r.get() for k, r in referenced_resources(module).items()})
    assert print_module(again) == text
    np.testing.assert_array_equal(run_module(again, {"x": x})["logits"], got)
    exported = export_onnx(module)  # int4 packs again; onnxruntime runs effc's export as the original
    np.testing.assert_allclose(ort_run(exported, {"x": x})["logits"], want, rtol=0, atol=_output_step(model) * 1.01)


@pytest.mark.slow
def test_quantize_dynamic_transformer_imports_and_matches(tmp_path):
    """``quantize_dynamic`` on MiniLM-L3: DynamicQuantizeLinear on each projection's input,
    MatMulInteger on int8 weights, the float rescale after. effc's interpreter against
    onnxruntime's unoptimized run of the same model (its optimizer fuses the pattern into
    kernels that round differently): the same to float32 rounding."""
    from onnxruntime.quantization import quantize_dynamic

    from tests.fixtures import _minilm_path

    out = tmp_path / "minilm_dyn.onnx"
    quantize_dynamic(str(_minilm_path()), str(out))
    model = onnx.load(str(out))
    assert sum(n.op_type == "MatMulInteger" for n in model.graph.node) == 18
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 30000, (2, 12)).astype(np.int64),
             "attention_mask": np.ones((2, 12), np.int64)}
    want = ort_run(model, feeds, optimize=False)
    got = run_module(load_model(model), feeds)
    for name, w in want.items():
        if w.dtype.kind == "f":
            np.testing.assert_allclose(got[name], w, rtol=0, atol=1e-4 * np.abs(w).max(), err_msg=name)
