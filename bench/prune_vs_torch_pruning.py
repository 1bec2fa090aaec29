"""effc prune against Torch-Pruning on the same torch-trained CNN, both without fine-tuning.

The CNN is examples/train_digits_cnn.py's DigitsCNN, trained again here with its seeds
(deterministic: the same weights as the committed digits_cnn.onnx). At each ratio:

- **Torch-Pruning** (`torch_pruning.pruner.MagnitudePruner`, L1 `MagnitudeImportance`, its
  dependency graph, the classifier left alone), on the torch model; exported to ONNX;
- **effc** `prune --ratio R` (L1, uniform) on the unpruned model's ONNX export, without and
  with the least-squares refit on the 64 calibration images (`--calib`).

Accuracy: top-1 on the 360 held-out digits. Latency: each pruned ONNX built by effc for x86
(-O2, untuned, one thread), against the unpruned one, in turns. Needs `torch==2.13.0` and
`torch-pruning==1.6.1` (`pip install -e '.[train]'`).

    python bench/prune_vs_torch_pruning.py          # writes RESULTS.md
    python bench/prune_vs_torch_pruning.py --no-write
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

SECTION = "## Structured pruning: effc prune vs Torch-Pruning"
RATIOS = (0.25, 0.5)


def _trained():
    import torch

    import train_digits_cnn as t
    from digits_training import load_data, seed_everything

    seed_everything(t.SEED)
    x_tr, x_te, y_tr, y_te = load_data()
    model = t.DigitsCNN()
    t.train(model, x_tr, y_tr)
    model.eval()
    return model, torch


def _onnx(model, torch) -> bytes:
    buf = io.BytesIO()
    model.eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), buf, input_names=["x"], output_names=["logits"],
                      opset_version=17, do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
                      dynamo=False)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    import copy

    import torch_pruning as tp
    import tvm

    from effc.bench import interleaved_ms, set_threads
    from effc.codegen import build
    from effc.ir.interpreter import run_module
    from effc.ir.parser import copy_module
    from effc.ir.refine import bind_input_shapes
    from effc.models import load_model
    from effc.passes import run_pipeline
    from effc.passes.prune import prune
    from tests import labelled

    set_threads(1)
    data = labelled.digits(64)
    model, torch = _trained()

    def load(onnx_bytes: bytes):
        m = load_model(onnx_bytes)
        bind_input_shapes(m, {"x": (1, 1, 8, 8)})
        run_pipeline(m, "fixpoint(fold-constants,eliminate-identity,cse,dce),fold-bn,dce")
        return m

    def accuracy(m) -> float:
        got = np.concatenate([run_module(m, {"x": data.x[i:i + 1]})["logits"] for i in range(len(data.x))])
        return float((got.argmax(1) == data.y).mean())

    x1 = tvm.runtime.tensor(data.x[:1], tvm.cpu(0))

    def runner(m):
        m = copy_module(m)
        run_pipeline(m, "O2")
        art = build(m)
        return lambda: art.vm["main"](x1)

    base = load(_onnx(model, torch))
    rows = [("unpruned", 0.0, accuracy(base), base.parameter_count(), None)]
    base_run = runner(base)
    for ratio in RATIOS:
        tm = copy.deepcopy(model)
        pruner = tp.MagnitudePruner(tm, torch.zeros(1, 1, 8, 8), importance=tp.importance.MagnitudeImportance(p=1),
                                          pruning_ratio=ratio, ignored_layers=[tm.fc])
        pruner.step()
        tp_model = load(_onnx(tm, torch))
        tp_acc = float((tm(torch.from_numpy(data.x)).argmax(1).numpy() == data.y).mean())
        assert abs(tp_acc - accuracy(tp_model)) < 1e-9  # (its ONNX export computes what it computes)
        plain = copy_module(base)
        prune(plain, ratio)
        fitted = copy_module(base)
        prune(fitted, ratio, samples={"x": data.calib})
        systems = {"Torch-Pruning (magnitude, L1)": tp_model, "effc prune": plain, "effc prune --calib": fitted}
        ms = interleaved_ms({"base": base_run, **{k: runner(m) for k, m in systems.items()}}, warmup=10, reps=200,
                            max_seconds=20)
        for k, m in systems.items():
            rows.append((k, ratio, accuracy(m), m.parameter_count(), (ms["base"][0], ms[k][0])))
            print(rows[-1], file=sys.stderr, flush=True)
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python bench/prune_vs_torch_pruning.py` (torch {torch.__version__}, "
             f"torch-pruning {tp.__version__}): examples/train_digits_cnn.py's CNN trained again with its seeds; no "
             "fine-tuning after pruning. Accuracy: top-1 on the 360 held-out digits. Latency: effc's x86 build of "
             "each model (-O2, untuned, 1 thread), median ms against the unpruned model's, in turns.", "",
             "| system | ratio | top-1 | params | x86 ms (unpruned -> pruned) | speedup |", "|---|---:|---:|---:|---:|---:|"]
    for name, ratio, acc, params, ms in rows:
        lat = f"{ms[0]:.4f} -> {ms[1]:.4f} | {ms[0] / ms[1]:.2f}x" if ms else " | "
        lines.append(f"| {name} | {ratio:.2f} | {100 * acc:.1f}% | {params:,} | {lat} |")
    from bench.node_counts import publish

    return publish("\n".join(lines) + "\n", SECTION, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
