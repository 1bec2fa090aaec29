"""effc prune against Torch-Pruning on the same torch-trained CNNs, both without fine-tuning.

Five CNNs trained on scikit-learn's digits (examples/digits_training.py: the same split,
seeds and loop as examples/train_digits_cnn.py), one per coupling pruning must respect:

- ``plain``: examples/train_digits_cnn.py's DigitsCNN (the committed digits_cnn.onnx's
  weights), Conv-BN-ReLU and a global pool into the classifier;
- ``residual``: ResNet basic blocks (identity adds couple the block's channels);
- ``inception``: four-branch modules (1x1, 1x1->3x3, 1x1->3x3->3x3, pool->1x1) concatenated;
- ``dense``: DenseNet blocks (every layer reads the concat of all before it, BN-ReLU-conv);
- ``mobile``: MobileNetV2 inverted residuals (expand 1x1, depthwise 3x3, project 1x1, add).

At each ratio:

- **Torch-Pruning** (``torch_pruning.pruner.MagnitudePruner``, L1 ``MagnitudeImportance``,
  its dependency graph, the classifier left alone), on the torch model; exported to ONNX;
- **effc** ``prune --ratio R`` (L1, uniform) on the unpruned model's ONNX export, without
  and with the least-squares refit on 64 calibration images (``--calib``).

Accuracy: top-1 on the 360 held-out digits. Latency: each model built by effc for x86
(-O2, one thread; untuned, and tuned with ``--trials`` MetaSchedule trials per model on
one shared database), against the unpruned one, in turns. Cortex-M4: flash, SRAM and arena
of effc's float build of the unpruned model and of ``effc prune`` at each ratio. Needs
``torch==2.13.0`` and ``torch-pruning==1.6.1`` (``pip install -e '.[train]'``).

    python bench/prune_vs_torch_pruning.py                 # writes RESULTS.md
    python bench/prune_vs_torch_pruning.py --archs residual --trials 0 --no-write
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

SECTION = "## Structured pruning: effc prune vs Torch-Pruning"
RATIOS = (0.25, 0.5)
ARCHS = ("plain", "residual", "inception", "dense", "mobile")


def _architectures(nn, torch):
    """name -> a function making the untrained torch model (input [N, 1, 8, 8], 10 logits)."""
    import train_digits_cnn

    def cbr(cin, cout, k=3, groups=1):
        return [nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    class Basic(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.body = nn.Sequential(*cbr(c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(self.body(x) + x)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*cbr(1, 32), Basic(32), Basic(32), nn.MaxPool2d(2), *cbr(32, 64),
                                          Basic(64), Basic(64), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(self.features(x))

    class Mixed(nn.Module):
        def __init__(self, cin, b1, b3r, b3, d3r, d3, pool):
            super().__init__()
            self.b1 = nn.Sequential(*cbr(cin, b1, 1))
            self.b3 = nn.Sequential(*cbr(cin, b3r, 1), *cbr(b3r, b3))
            self.d3 = nn.Sequential(*cbr(cin, d3r, 1), *cbr(d3r, d3), *cbr(d3, d3))
            self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), *cbr(cin, pool, 1))

        def forward(self, x):
            return torch.cat([self.b1(x), self.b3(x), self.d3(x), self.pool(x)], 1)

    class Inception(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*cbr(1, 32), Mixed(32, 16, 16, 24, 8, 12, 12), nn.MaxPool2d(2),
                                          Mixed(64, 32, 32, 48, 16, 24, 24), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            return self.fc(self.features(x))

    class DenseLayer(nn.Module):
        def __init__(self, cin, growth):
            super().__init__()
            self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 2 * growth, 1, bias=False),
                                      nn.BatchNorm2d(2 * growth), nn.ReLU(),
                                      nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))

        def forward(self, x):
            return torch.cat([x, self.body(x)], 1)

    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c = [nn.Conv2d(1, 24, 3, padding=1, bias=False)], 24
            for block in range(2):
                for _ in range(4):
                    layers.append(DenseLayer(c, 12))
                    c += 12
                if block == 0:  # transition: BN-ReLU-1x1 halving the channels, 2x2 average pool
                    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                    c //= 2
            self.features = nn.Sequential(*layers, nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                          nn.Flatten())
            self.fc = nn.Linear(c, 10)

        def forward(self, x):
            return self.fc(self.features(x))

    class Inverted(nn.Module):
        def __init__(self, cin, cout, expand, stride=1):
            super().__init__()
            mid = cin * expand
            self.body = nn.Sequential(*cbr(cin, mid, 1), nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
                                      nn.BatchNorm2d(mid), nn.ReLU(), nn.Conv2d(mid, cout, 1, bias=False),
                                      nn.BatchNorm2d(cout))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return y + x if self.residual else y

    class Mobile(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*cbr(1, 32), Inverted(32, 24, 4), Inverted(24, 24, 4),
                                          Inverted(24, 48, 4, 2), Inverted(48, 48, 4), *cbr(48, 192, 1),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(192, 10)

        def forward(self, x):
            return self.fc(self.features(x))

    return {"plain": train_digits_cnn.DigitsCNN, "residual": Residual, "inception": Inception, "dense": Dense,
            "mobile": Mobile}


def _trained(arch: str):
    import torch
    import torch.nn as nn

    import train_digits_cnn as t
    from digits_training import load_data, seed_everything

    seed_everything(t.SEED)
    x_tr, x_te, y_tr, y_te = load_data()
    model = _architectures(nn, torch)[arch]()
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


def measure(arch: str, trials: int, db: Path) -> list[dict]:
    import copy

    import torch_pruning as tp
    import tvm

    import effc
    from effc.bench import interleaved_ms, set_threads
    from effc.codegen import build
    from effc.codegen.tune import build_tuned, tune
    from effc.ir.interpreter import run_module
    from effc.ir.parser import copy_module
    from effc.ir.refine import bind_input_shapes
    from effc.models import load_model
    from effc.passes import run_pipeline
    from effc.passes.prune import prune
    from tests import labelled

    set_threads(1)
    data = labelled.digits(64)
    model, torch = _trained(arch)

    def load(onnx_bytes: bytes):
        m = load_model(onnx_bytes)
        bind_input_shapes(m, {"x": (1, 1, 8, 8)})
        run_pipeline(m, "fold")
        return m

    def accuracy(m) -> float:
        got = np.concatenate([run_module(m, {"x": data.x[i:i + 1]})["logits"] for i in range(len(data.x))])
        return float((got.argmax(1) == data.y).mean())

    x1 = tvm.runtime.tensor(data.x[:1], tvm.cpu(0))

    def runner(m, tuned: bool):
        m = copy_module(m)
        run_pipeline(m, "O2")
        if tuned:
            tune(m, None, trials, db, progress=False)
            art = build_tuned(m, None, db)
        else:
            art = build(m)
        return lambda: art.vm["main"](x1)

    def mcu(m) -> tuple[int, int, int]:
        mem = effc.compile(copy_module(m), target="cortex-m4")._built.memory
        return mem.flash, mem.sram, mem.arena

    base = load(_onnx(model, torch))
    torch_acc = float((model(torch.from_numpy(data.x)).argmax(1).numpy() == data.y).mean())
    rows = [{"arch": arch, "system": "unpruned", "ratio": 0.0, "top1": accuracy(base),
             "params": base.parameter_count(), "ms": None, "tuned": None, "mcu": mcu(base)}]
    assert abs(torch_acc - rows[0]["top1"]) < 1e-9, (torch_acc, rows[0]["top1"])
    runs = {"base": runner(base, False)}
    tuned_runs = {"base": runner(base, True)} if trials else {}
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
        systems = {"Torch-Pruning": tp_model, "effc": plain, "effc --calib": fitted}
        for name, m in systems.items():
            rows.append({"arch": arch, "system": name, "ratio": ratio, "top1": accuracy(m),
                         "params": m.parameter_count(), "mcu": mcu(m) if name == "effc" else None})
        ms = interleaved_ms({"base": runs["base"], "tp": runner(tp_model, False), "effc": runner(plain, False)},
                            warmup=10, reps=300, max_seconds=15)
        tuned = {}
        if trials:
            tuned = interleaved_ms({"base": tuned_runs["base"], "tp": runner(tp_model, True),
                                    "effc": runner(plain, True)}, warmup=10, reps=300, max_seconds=15)
        for r in rows[-3:]:
            key = "tp" if r["system"] == "Torch-Pruning" else "effc"  # (the refit changes no shape)
            r["ms"] = (ms["base"][0], ms[key][0])
            r["tuned"] = (tuned["base"][0], tuned[key][0]) if tuned else None
            print(r, file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], trials: int) -> str:
    import torch
    import torch_pruning as tp

    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python bench/prune_vs_torch_pruning.py --trials {trials}` "
             f"(torch {torch.__version__}, torch-pruning {tp.__version__}): five CNNs trained on the digits with "
             "examples/train_digits_cnn.py's seeds and loop (plain: its DigitsCNN; residual: ResNet basic blocks; "
             "inception: four-branch concats; dense: DenseNet blocks; mobile: MobileNetV2 inverted residuals with "
             "depthwise convs); no fine-tuning after pruning. Torch-Pruning: `MagnitudePruner`, L1, the classifier "
             "left alone; effc: `effc prune --ratio R` (L1, uniform) on the ONNX export, without and with the "
             "least-squares refit on 64 calibration images. Top-1 on the 360 held-out digits. x86: effc's build of "
             "each model, -O2, 1 thread, median ms against the unpruned model's in turns; tuned: "
             f"{trials} MetaSchedule trials per model on one shared database (the refit changes no shape: same "
             "latency as `effc`). Cortex-M4: effc's float build of the model `effc prune` gives (flash, SRAM, arena "
             "bytes), against the unpruned model's.", "",
             "| CNN | system | ratio | top-1 | params | x86 ms (unpruned -> pruned) | speedup | tuned ms "
             "| tuned speedup | M4 flash | SRAM | arena |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lat = f"{r['ms'][0]:.4f} -> {r['ms'][1]:.4f} | {r['ms'][0] / r['ms'][1]:.2f}x" if r["ms"] else " | "
        tun = (f"{r['tuned'][0]:.4f} -> {r['tuned'][1]:.4f} | {r['tuned'][0] / r['tuned'][1]:.2f}x" if r["tuned"]
               else " | ")
        mcu = " | ".join(f"{v:,}" for v in r["mcu"]) if r["mcu"] else " | | "
        top1 = f"**{100 * r['top1']:.1f}%**" if r["system"] == "effc --calib" else f"{100 * r['top1']:.1f}%"
        lines.append(f"| {r['arch']} | {r['system']} | {r['ratio']:.2f} | {top1} | {r['params']:,} | {lat} | "
                     f"{tun} | {mcu} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per model for the tuned columns")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from bench.node_counts import publish

    with tempfile.TemporaryDirectory() as d:
        rows = [r for a in args.archs.split(",") for r in measure(a, args.trials, Path(d))]
    return publish(table(rows, args.trials), SECTION, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
