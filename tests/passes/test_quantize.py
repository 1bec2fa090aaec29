"""Static post-training quantization (passes/quantize.py, ``effc quantize``) on the digits
CNN, trained on scikit-learn's ``load_digits`` (examples/train_digits_cnn.py): calibrated
on 64 images of its training split, scored on its 360-image test split, against float
and against ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, MinMax) given
the same calibration images.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from effc.cli import main
from effc.ir.errors import InputError
from effc.ir.interpreter import run_module
from effc.models import load_model
from effc.onnx_export import export_onnx
from effc.passes import run_pipeline
from effc.passes.quantize import QuantizeOptions, quantize
from tests.fixtures import REPO, ort_run

DIGITS = REPO / "examples" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    x_tr, x_te, _, y_te = train_test_split(x, d.target, test_size=0.2, random_state=42, stratify=d.target)
    return x_tr[:64], x_te, y_te


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def _folded():
    module = load_model(DIGITS)
    run_pipeline(module, "fold")
    return module


def _ort_quantized(tmp_path, calib: np.ndarray) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / "ort_q.onnx"
    quantize_static(str(DIGITS), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return onnx.load(str(out))


def test_int8_keeps_float_accuracy_and_is_never_below_onnxruntime(digits, tmp_path):
    calib, x, y = digits
    module = _folded()
    float_acc = _accuracy(run_module(module, {"x": x})["logits"], y)
    report = quantize(module, {"x": calib})
    ops = [n.op for n in module.graph.nodes]
    # activations: the input, each conv's (relu'd) output, the max pool's, the flattened features
    assert ops.count("quantize_linear") == 6 and [n.op for n in module.graph.nodes if n.op == "conv"] == ["conv"] * 3
    effc_acc = _accuracy(run_module(module, {"x": x})["logits"], y)
    ort_acc = _accuracy(ort_run(_ort_quantized(tmp_path, calib), {"x": x})["logits"], y)
    exported_acc = _accuracy(ort_run(export_onnx(module), {"x": x})["logits"], y)  # onnxruntime runs effc's QDQ
    assert float_acc - effc_acc <= 0.01 and effc_acc >= ort_acc, (float_acc, effc_acc, ort_acc)
    assert abs(exported_acc - effc_acc) <= 1 / len(y)
    assert report.size_ratio >= 3.9 and report.weight_bytes_float == 57_152
    assert [r.op for r in report.layers] == ["conv", "conv", "conv", "gemm"]
    assert all(r.sqnr_db > 25 for r in report.layers), report.table()


@pytest.mark.parametrize("method, most_drop", [("percentile", 0.01), ("entropy", 0.01), ("mse", 0.01)])
def test_every_calibration_method_keeps_accuracy(digits, method, most_drop):
    """Each keeps float's 99.72% (entropy counting the relus' zeros picked the smallest
    threshold: 16.7% after equalization)."""
    calib, x, y = digits
    module = _folded()
    float_acc = _accuracy(run_module(module, {"x": x})["logits"], y)
    report = quantize(module, {"x": calib}, QuantizeOptions(method=method))
    assert float_acc - _accuracy(run_module(module, {"x": x})["logits"], y) <= most_drop
    ranges = [r.act_range for r in report.layers]
    assert all(lo <= 0 <= hi for lo, hi in ranges)  # 0 is exact


def test_options_shape_the_result(digits):
    calib, x, y = digits
    module = _folded()
    report = quantize(module, {"x": calib}, QuantizeOptions(per_channel=False, activations="uint8", exclude=("logits",)))
    assert [r.op for r in report.layers] == ["conv"] * 3
    assert all(r.weight_scales[0] == r.weight_scales[1] for r in report.layers)  # one scale per tensor
    assert {n.outputs[0].type.dtype.name for n in module.graph.nodes if n.op == "quantize_linear"} == {"u8"}
    assert any(n.op == "gemm" and n.input(1).is_const for n in module.graph.nodes)  # excluded: float weight
    weights_only = _folded()
    quantize(weights_only, {"x": calib}, QuantizeOptions(weights_only=True))
    assert not any(n.op == "quantize_linear" for n in weights_only.graph.nodes)
    assert sum(n.op == "dequantize_linear" for n in weights_only.graph.nodes) == 4  # the weights; biases stay float


def test_qdq_to_integer_takes_the_quantized_model(digits):
    """``qdq-to-integer`` turns the quantized conv chain into integer ops: the three convs
    with their relus (qlinear_conv, then max with the zero point) and the max pool between
    them (on int8, sharing its input's parameters); the global pool and the gemm, whose
    output is the graph's, stay float. The accuracy stays the int8 model's."""
    calib, x, y = digits
    module = _folded()
    quantize(module, {"x": calib})
    before = _accuracy(run_module(module, {"x": x})["logits"], y)
    run_pipeline(module, "qdq-to-integer,dce")
    ops = [n.op for n in module.graph.nodes if n.op != "const"]
    assert ops[:8] == ["quantize_linear", "qlinear_conv", "max", "qlinear_conv", "max", "max_pool", "qlinear_conv",
                       "max"], ops
    assert "conv" not in ops and next(n for n in module.graph.nodes if n.op == "max_pool").outputs[0].type.dtype.name == "i8"
    assert abs(_accuracy(run_module(module, {"x": x})["logits"], y) - before) <= 2 / len(y)


def test_cli_writes_a_model_onnxruntime_runs(digits, tmp_path, capsys):
    calib, x, y = digits
    np.savez(tmp_path / "calib.npz", x=calib)
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(DIGITS), "--calib", str(tmp_path / "calib.npz"), "-o", str(out),
                 "--method", "percentile", "--report", str(tmp_path / "report.txt")]) == 0
    err = capsys.readouterr().err
    assert "calibration: ranges" in err and "4 ops quantized (percentile" in err
    assert (tmp_path / "report.txt").read_text().splitlines()[0].startswith("layer")
    assert _accuracy(ort_run(onnx.load(str(out)), {"x": x})["logits"], y) >= 0.98


@pytest.mark.parametrize("calib, message", [
    ({"y": np.zeros((2, 1, 8, 8), np.float32)}, "calibration data has inputs ['y']; the model takes ['x']"),
    ({"x": np.zeros((2, 1, 8, 8), np.float64)}, "calibration input 'x' has dtype float64; the model wants f32"),
    ({"x": np.zeros((2, 8, 8), np.float32)}, "calibration input 'x' has shape [2, 8, 8]"),
    ({"x": np.zeros((2, 1, 8, 9), np.float32)}, "(axis 3 is 9, not 8)"),
    ({"x": np.zeros((0, 1, 8, 8), np.float32)}, "calibration data holds no sample"),
    ({"x": np.stack([np.zeros((1, 8, 8)), np.full((1, 8, 8), np.nan)]).astype(np.float32)},
     "calibration input 'x' holds NaN or infinity (samples [1])"),
])
def test_bad_calibration_data_names_the_input(calib, message, tmp_path, capsys):
    with pytest.raises(InputError) as e:
        quantize(_folded(), calib)
    assert message in str(e.value)
    np.savez(tmp_path / "c.npz", **calib)
    assert main(["quantize", str(DIGITS), "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "q.onnx")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cross_layer_equalization_keeps_the_float_function(digits):
    """DFQ's scaling of conv -> relu -> conv (the digits CNN's first pair; its other convs
    feed a max pool or the global pool) changes the weights, not the outputs, and gives
    both convs equal per-channel ranges: sqrt(r1 * r2) each."""
    from effc.passes.quantize_equalize import _input_channel_view, equalize

    _, x, _ = digits
    module = _folded()
    want = run_module(module, {"x": x})["logits"]
    convs = [n for n in module.graph.nodes if n.op == "conv"]
    r1 = np.abs(convs[0].input(1).const_value.reshape(convs[0].input(1).type.shape[0], -1)).max(axis=1)
    r2 = np.abs(_input_channel_view(convs[1].input(1).const_value, 1)).max(axis=1)
    assert equalize(module, rounds=1) == 1
    convs = [n for n in module.graph.nodes if n.op == "conv"]
    got_r1 = np.abs(convs[0].input(1).const_value.reshape(len(r1), -1)).max(axis=1)
    got_r2 = np.abs(_input_channel_view(convs[1].input(1).const_value, 1)).max(axis=1)
    np.testing.assert_allclose(got_r1, np.sqrt(r1 * r2), rtol=1e-5)
    np.testing.assert_allclose(got_r2, np.sqrt(r1 * r2), rtol=1e-5)
    np.testing.assert_allclose(run_module(module, {"x": x})["logits"], want, rtol=0, atol=1e-5 * np.abs(want).max())
