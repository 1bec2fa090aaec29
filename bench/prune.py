"""Structured pruning (``effc prune``): quality, size and measured latency at 25% and 50%,
without and with the least-squares refit on calibration samples.

For each model and ratio, the float model (constants and BN folded) is pruned with the L1
criterion, uniform per group: once as it is, once refitted (``--calib``: the model's
calibration samples from tests/labelled.py, MiniLM's random word-piece sequences, or 16
seeded random inputs). Quality is top-1 accuracy on labelled data (digits_cnn,
mnist_conv), MiniLM's sentence-embedding cosine similarity to the unpruned model's, or else
top-1 agreement with the unpruned model; and the relative error of that output. Latency:
the x86 build (Relax VM), one thread, pruned and unpruned taking turns
(``effc.bench.interleaved_ms``), untuned and (``--trials``) tuned. Cortex-M4: flash, SRAM
and arena of the float ELF. Every pruned model is also exported to ONNX and run in
onnxruntime (checked against effc's interpreter).

    python bench/prune.py --trials 32      # MODELS, writes RESULTS.md
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
MODELS = ["digits_cnn", "mnist_conv", "mobilenet_tiny", "mobilenet_v2_mcu", "minilm_l3", "light_squeezenet",
          "light_resnet50", "light_inception_v1", "light_densenet121"]
RATIOS = (0.25, 0.5)
MCU = ("digits_cnn", "mnist_conv", "mobilenet_tiny", "mobilenet_v2_mcu")
CONSTANT = ("light_squeezenet", "light_resnet50", "light_inception_v1", "light_densenet121")
"""onnx's light models give the same output for every input: no quality to measure, no refit."""
WORK = Path(__file__).resolve().parent / "_work"


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
    if name == "minilm_l3":  # random word pieces (bench/quant_accuracy.py's): 128 to refit on, 32 to compare
        from bench.quant_accuracy import _token_batch
        from tests.fixtures import _minilm_path

        return _minilm_path(), _token_batch(128, 1), _token_batch(32, 7), None
    rng = np.random.default_rng(0)
    if name == "mobilenet_v2_mcu":
        from tests.fixtures import MOBILENET_V2_MCU, mobilenet_v2_mcu

        stack = rng.random((16 + 32, *MOBILENET_V2_MCU[1:]), dtype=np.float32)
        return mobilenet_v2_mcu(WORK), {"input": stack[:16]}, {"input": stack[16:]}, None
    import onnx

    fx = next(f for f in FIXTURES if f.name == name)
    (inp, x), = fx.inputs(onnx.load(str(fx.path()), load_external_data=False)).items()
    stack = rng.random((16 + 32, *x.shape[1:]), dtype=np.float32)
    return fx.path(), {inp: stack[:16]}, {inp: stack[16:]}, None


def _outputs(module, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The output scored on each evaluation sample (batch 1 each: the models' static batch):
    the first, or MiniLM's sentence embedding."""
    from effc.ir.interpreter import run_module

    out = module.graph.outputs[3 if len(module.graph.outputs) == 4 else 0].name
    n = len(next(iter(feeds.values())))
    return np.concatenate([run_module(module, {k: v[i:i + 1] for k, v in feeds.items()})[out] for i in range(n)])


def measure(name: str, trials: int = 0, db: Path = WORK / "prune-tuning") -> list[dict]:
    import onnxruntime as ort

    import effc
    from effc.bench import interleaved_ms, set_threads
    from effc.codegen import build
    from effc.codegen.tune import build_tuned, tune
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
    run_pipeline(base, "fold")
    ref = _outputs(base, evals)

    def quality(module) -> tuple[float | None, float | None]:
        """(top-1, or MiniLM's mean cosine similarity to the unpruned embeddings; the output's
        relative error), None for the light models' constant outputs."""
        if name in CONSTANT:
            return None, None
        got = _outputs(module, evals)
        err = float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30))
        if name == "minilm_l3":
            cosine = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
            return float(cosine.mean()), err
        top1 = float((got.reshape(len(got), -1).argmax(1) == (labels if labels is not None
                                                               else ref.reshape(len(ref), -1).argmax(1))).mean())
        return top1, err

    x1 = {k: v[:1] for k, v in evals.items()}
    import tvm

    def runner(module, tuned: bool = False):
        run_pipeline(module, "O2")  # (as effc compile builds it)
        if tuned:
            tune(module, None, trials, db, progress=False)
            art = build_tuned(module, None, db)
        else:
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
             "params": base.parameter_count(), "mcu": mcu(copy_module(base)), "ms": None, "tuned": None}]
    base_run = runner(copy_module(base))
    base_tuned = runner(copy_module(base), True) if trials else None
    variants = ((1, False), (8, False)) if name in CONSTANT else ((1, False), (1, True)) if name == "minilm_l3" \
        else ((1, False), (1, True), (8, False), (8, True))
    for ratio in RATIOS:
        for round_to, refit in variants:
            m = copy_module(base)
            report = prune(m, ratio, samples=calib if refit else None, round_to=round_to)
            sess = ort.InferenceSession(export_onnx(m).SerializeToString(), providers=["CPUExecutionProvider"])
            from effc.ir.interpreter import run_module

            want = run_module(m, x1)
            for o, got in zip(sess.get_outputs(), sess.run(None, x1)):
                assert np.allclose(got, want[o.name], rtol=1e-3,
                                   atol=1e-4 * max(1.0, float(np.abs(want[o.name]).max()))), (name, o.name)
            row = {"model": name, "ratio": ratio, "refit": refit, "round_to": round_to, "quality": quality(m),
                   "params": report.params_after, "mcu": mcu(copy_module(m)), "ms": None, "tuned": None}
            if not refit:  # (the refit changes weights, not shapes: the same latency)
                ms = interleaved_ms({"base": base_run, "pruned": runner(copy_module(m))}, warmup=10, reps=200,
                                    max_seconds=10)
                row["ms"] = (ms["base"][0], ms["pruned"][0])
                if trials:
                    ms = interleaved_ms({"base": base_tuned, "pruned": runner(copy_module(m), True)}, warmup=10,
                                        reps=200, max_seconds=10)
                    row["tuned"] = (ms["base"][0], ms["pruned"][0])
            rows.append(row)
            print(name, ratio, round_to, refit, row["quality"], row["params"], row["ms"], row["mcu"], file=sys.stderr,
                  flush=True)
    return rows


def table(rows: list[dict], trials: int) -> str:
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python bench/prune.py --trials {trials}` (`effc prune --ratio "
             "R`, L1, uniform per group of coupled channels; refit: `--calib`, least squares per layer on the "
             "calibration samples, ridge and acceptance chosen on held-out samples, no training; round to 8: "
             "`--round-to 8`, each group keeps a multiple of 8 channels). Quality: top-1 accuracy on labelled data "
             "(digits_cnn, mnist_conv: 360 images); MiniLM-L3 (heads and FFN units; 128 random word-piece sequences "
             "to refit on): the mean cosine similarity of 32 other sequences' sentence embeddings to the unpruned "
             "model's; else top-1 agreement with the unpruned model on 32 random inputs (mobilenet_v2_mcu: "
             "tests/fixtures.py's MobileNetV2-0.35@96 with seeded weights); rel. error: of that output against the "
             "unpruned model. onnx's light models (squeezenet, resnet50, inception_v1, densenet121) give the same "
             "output for every input: no quality ('–'), no refit; they are here for the concats, Sum joins and "
             "latency. Latency: x86 Relax VM build after -O2, 1 thread, median ms, pruned and unpruned in turns: "
             f"untuned (effc's default schedules) and tuned ({trials} MetaSchedule trials per model, one shared "
             "database). Cortex-M4: the float ELF (flash, SRAM, arena bytes). Every pruned model's ONNX export runs "
             "in onnxruntime and matches effc's interpreter.", "",
             "| model | ratio | round to | refit | top-1 / cosine | rel. error | params | x86 ms (unpruned -> pruned) "
             "| speedup | tuned ms | tuned speedup | Cortex-M4 flash | SRAM | arena |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        q, err = r["quality"]
        score = "–" if q is None else f"{q:.3f}" if r["model"] == "minilm_l3" else f"{100 * q:.1f}%"
        lat = [f"{a:.3f} -> {b:.3f} | {a / b:.2f}x" if (a, b) != (None, None) else " | "
               for a, b in (r["ms"] or (None, None), r["tuned"] or (None, None))]
        mcu = [f"{v:,}" for v in r["mcu"]] if r["mcu"] else ["", "", ""]
        lines.append(f"| {r['model']} | {r['ratio']:.2f} | {r['round_to']} | {'yes' if r['refit'] else 'no'} | "
                     f"{score} | {'–' if err is None else f'{err:.3f}'} | {r['params']:,} | {lat[0]} | {lat[1]} | "
                     f"{' | '.join(mcu)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--trials", type=int, default=0, help="MetaSchedule trials per model for the tuned columns")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from bench.node_counts import publish

    rows = [r for m in args.models.split(",") for r in measure(m, args.trials)]
    return publish(table(rows, args.trials), SECTION, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
