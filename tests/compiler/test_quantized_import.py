"""Models quantized by onnxruntime's own quantizer (``onnxruntime.quantization``) import
into effc and match onnxruntime.

The quantized model is the digits CNN (examples/digits_cnn.onnx) quantized with
``quantize_static`` in QDQ format, calibrated on its 16 test images. onnxruntime
runs the quantized model with its QDQ fusions (integer kernels where it has them); effc's
interpreter and its x86 build run the QDQ graph as written (float compute between the
Q/DQ pairs). The two may round an activation differently at a Q node, so outputs are
compared within one quantization step of the output (the scale of the DequantizeLinear
that produces it), and the predicted classes must agree.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from effc.codegen import build
from effc.ir.interpreter import run_module
from effc.models import load_model
from effc.optimize import optimize
from tests.fixtures import REPO, ort_run

DIGITS = REPO / "examples" / "digits_cnn.onnx"


def _images() -> np.ndarray:
    return np.load(REPO / "examples" / "digits_test.npz")["x"]


def _quantized(tmp_path, per_channel: bool, activation: str) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    images = _images()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": images[i:i + 1]} for i in range(len(images))])

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / f"digits_q_{per_channel}_{activation}.onnx"
    quantize_static(str(DIGITS), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return onnx.load(str(out))


def _output_step(model: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that writes the graph's output."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = model.graph.output[0].name
    dq = next(n for n in model.graph.node if out in n.output)
    assert dq.op_type == "DequantizeLinear", dq.op_type
    return float(inits[dq.input[1]].reshape(-1)[0])


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_onnxruntime_qdq_model_imports_and_matches(tmp_path, per_channel, activation):
    model = _quantized(tmp_path, per_channel, activation)
    dq_shapes = {(n.input[1], len(n.input)) for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert dq_shapes  # the quantizer wrote a QDQ model
    x = _images()
    want = ort_run(model, {"x": x})["logits"]
    step = _output_step(model)
    module = load_model(model)
    got = run_module(module, {"x": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.01, err_msg="interpreter")
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    optimize(module, "O2")
    built = build(module).run({"x": x})["logits"]
    np.testing.assert_allclose(built, want, rtol=0, atol=step * 1.01, err_msg="x86 build")
