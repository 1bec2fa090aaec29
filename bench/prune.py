"""Structured pruning (``effc prune``): quality, size and measured latency at 25% and 50%,
without and with the least-squares refit on calibration samples.

For each model and ratio, the float model (constants and BN folded) is pruned with the L1
criterion, uniform per group: once as it is, once refitted (``--calib``: the model's
calibration samples from tests/labelled.py, or 16 seeded random inputs). Quality is top-1
accuracy on labelled data (digits_cnn, mnist_conv) or, without labels, top-1 agreement with
the unpruned model and the relative error of its output. Latency: the x86 build (Relax VM,
effc's default schedules, untuned), one thread, pruned and unpruned taking turns
(``effc.bench.interleaved_ms``). Cortex-M4: flash, SRAM and arena of the float ELF. Every
pruned model is also exported to ONNX and run in onnxruntime (checked against effc's
interpreter).

    python bench/prune.py                  # MODELS, writes RESULTS.md
    python bench/prune.py --models digits_cnn --no-write
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "## Structured pruning: quality, size and latency"
MODELS = ["digits_cnn", "mnist_conv", "mobilenet_tiny", "light_squeezenet"]
RATIOS = (0.25, 0.5)
FOLD = "fixpoint(fold-constants,eliminate-identity,cse,dce),fold-bn,dce"
MCU = ("digits_cnn", "mnist_conv", "mobilenet_tiny")


def _data(name: str):
    """(model path, calibration stack, evaluation feeds, labels or None)."""
    from tests import labelled
    from tests.fixtures import FIXTURES

    if name == "digits_cnn":
        d = labelled.digits(64)
        return next(f for f in FIXTURES if f.name == name).path(), {"x": d.calib}, {"x": d.x}, d.y
    if name == "mnist_conv":
        d = labelled.digits_as_mnist(64)
        fx = next(f for f in FIXTURES if f.name == name)
        return fx.path(), {"Input3": d.calib}, {"Input3": d.x}, d.y
    import onnx

    fx = next(f for f in FIXTURES if f.name == name)
    (inp, x), = fx.inputs(onnx.load(str(fx.path()), load_external_data=False)).items()
    rng = np.random.default_rng(0)
    stack = rng.random((16 + 32, *x.shape[1:]), dtype=np.float32)
    return fx.path(), {inp: stack[:16]}, {inp: stack[16:]}, None


def _outputs(module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output on each evaluation sample (batch 1 each: the models' static batch)."""
    from effc.ir.interpreter import run_module

    (k, v), = feeds.items()
    out = module.graph.outputs[0].name
    return np.concatenate([run_module(module, {k: v[i:i + 1]})[out] for i in range(len(v))])


def measure(name: str) -> list[dict]:
    import onnxruntime as ort

    import effc
    from effc.bench import interleaved_ms, set_threads
    from effc.codegen import build
    from effc.ir.parser import copy_module
    from effc.ir.refine import bind_input_shapes
    from effc.models import load_model
    from effc.onnx_export import export_onnx
    from effc.passes import run_pipeline
    from effc.passes.prune import prune

    set_threads(1)
    path, calib, evals, labels = _data(name)
    base = load_model(path)
    bind_input_shapes(base, {k: (1, *v.shape[1:]) for k, v in evals.items()})
    run_pipeline(base, FOLD)
    ref = _outputs(base, evals)

    def quality(module) -> tuple[float, float]:
        got = _outputs(module, evals)
        top1 = float((got.reshape(len(got), -1).argmax(1) == (labels if labels is not None
                                                               else ref.reshape(len(ref), -1).argmax(1))).mean())
        return top1, float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))

    (k, v), = evals.items()
    x1 = {k: v[:1]}
    import tvm

    def runner(module):
        run_pipeline(module, "O2")  # (as effc compile builds it)
        art = build(module)
        args = [tvm.runtime.tensor(x1[n], tvm.cpu(0)) for n, _ in art.signature.inputs]
        return lambda: art.vm["main"](*args)

    def mcu(module) -> tuple[int, int, int] | None:
        if name not in MCU:
            return None
        mem = effc.compile(module, target="cortex-m4")._built.memory
        return mem.flash, mem.sram, mem.arena

    q0 = quality(base)
    rows = [{"model": name, "ratio": 0.0, "refit": False, "round_to": 1, "quality": q0,
             "params": base.parameter_count(),
             "mcu": mcu(copy_module(base)), "ms": None}]
    base_run = runner(copy_module(base))
    for ratio in RATIOS:
        for round_to, refit in ((1, False), (1, True), (8, False), (8, True)):
            m = copy_module(base)
            report = prune(m, ratio, samples=calib if refit else None, round_to=round_to)
            sess = ort.InferenceSession(export_onnx(m).SerializeToString(), providers=["CPUExecutionProvider"])
            got = sess.run(None, x1)[0]
            from effc.ir.interpreter import run_module

            want = run_module(m, x1)[m.graph.outputs[0].name]
            assert np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(want).max()))), name
            row = {"model": name, "ratio": ratio, "refit": refit, "round_to": round_to, "quality": quality(m),
                   "params": report.params_after, "mcu": mcu(copy_module(m)), "ms": None}
            if not refit:  # (the refit changes weights, not shapes: the same latency)
                ms = interleaved_ms({"base": base_run, "pruned": runner(copy_module(m))}, warmup=10, reps=200,
                                    max_seconds=10)
                row["ms"] = (ms["base"][0], ms["pruned"][0])
            rows.append(row)
            print(name, ratio, round_to, refit, row["quality"], row["params"], row["ms"], row["mcu"], file=sys.stderr,
                  flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python bench/prune.py` (`effc prune --ratio R`, L1, "
             "uniform per group of coupled channels; refit: `--calib`, least squares per layer on the calibration "
             "samples, no training; round to 8: `--round-to 8`, each group keeps a multiple of 8 channels). "
             "Quality: top-1 accuracy on labelled data (digits_cnn, mnist_conv: 360 images), else top-1 agreement "
             "with the unpruned model on 32 random inputs; rel. error: of the output against the unpruned model. "
             "Latency: x86 Relax VM build after -O2, effc's default schedules (untuned), 1 thread, median ms, "
             "pruned and unpruned in turns. Cortex-M4: the float ELF. Every pruned model's ONNX export runs in "
             "onnxruntime and matches effc's interpreter. light_squeezenet (onnx's test model) gives the same output "
             "for every input, so its quality columns say nothing; it is here for the concats and the latency.", "",
             "| model | ratio | round to | refit | top-1 | rel. error | params | x86 ms (unpruned -> pruned) | speedup | "
             "Cortex-M4 flash | SRAM | arena |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        top1, err = r["quality"]
        ms = f"{r['ms'][0]:.3f} -> {r['ms'][1]:.3f}" if r["ms"] else ""
        speed = f"{r['ms'][0] / r['ms'][1]:.2f}x" if r["ms"] else ""
        mcu = [f"{v:,}" for v in r["mcu"]] if r["mcu"] else ["", "", ""]
        lines.append(f"| {r['model']} | {r['ratio']:.2f} | {r['round_to']} | {'yes' if r['refit'] else 'no'} | "
                     f"{100 * top1:.1f}% | "
                     f"{err:.3f} | {r['params']:,} | {ms} | {speed} | {' | '.join(mcu)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from bench.node_counts import publish

    return publish(table([r for m in args.models.split(",") for r in measure(m)]), SECTION, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
