"""Weight sparsity (``effc prune --sparsity``): accuracy with and without the refit, and what
the zeros buy on the Cortex-M4 with effc's compressed int8 kernel.

For each labelled model and sparsity (unstructured 50/75/90%, 2:4): the float model
(constants and BN folded) gets magnitude masks, once as they are and once refitted on 64
calibration images (masked least squares); top-1 on the 360 held-out digits. The refitted
model is then quantized (int8 per channel, 8 calibration images, ``qdq-to-integer`` with
``fixed_point`` rounding) and built for the M4 three ways: ``sparse_weights="off"`` (the
dense kernels), ``"speed"`` (compressed where no slower) and ``"flash"`` (compressed
wherever it saves flash); each build's flash and instructions per inference under qemu,
its output checked against the interpreter. x86 has no kernel that skips zeros: its
latency does not change (not measured here).

    python bench/sparsity.py                  # writes RESULTS.md
    python bench/sparsity.py --models digits_cnn --no-write
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "## Weight sparsity: accuracy, and Cortex-M flash and instructions with compressed weights"
MODELS = ["digits_cnn", "mnist_conv"]
CASES = [("dense", 0.0), ("unstructured", 0.5), ("unstructured", 0.75), ("unstructured", 0.9), ("2:4", 0.5)]
MODES = ("off", "speed", "flash")


def measure(name: str) -> list[dict]:
    from bench.prune import _data, _outputs
    from effc.codegen.cortex_m import build_cortex_m
    from effc.ir.interpreter import run_module
    from effc.ir.parser import copy_module
    from effc.ir.refine import bind_input_shapes
    from effc.models import load_model
    from effc.passes import run_pipeline
    from effc.passes.quantize import quantize
    from effc.passes.sparsify import sparsify

    path, calib, evals, labels = _data(name)
    base = load_model(path)
    bind_input_shapes(base, {k: (1, *v.shape[1:]) for k, v in evals.items()})
    run_pipeline(base, "fold")
    (inp, stack), = calib.items()
    feeds = {k: v[:1] for k, v in evals.items()}

    def top1(module) -> float:
        return float((_outputs(module, evals).argmax(1) == labels).mean())

    rows = []
    for pattern, share in CASES:
        row = {"model": name, "pattern": pattern, "share": share}
        plain, fitted = copy_module(base), copy_module(base)
        if pattern != "dense":
            report = sparsify(plain, share, pattern)
            sparsify(fitted, share, pattern, samples=calib)
            row["zeros"] = report.sparsity
        else:
            row["zeros"] = 0.0
        row["top1"] = (top1(plain), top1(fitted))
        quantize(fitted, [{inp: stack[i:i + 1]} for i in range(8)])
        run_pipeline(fitted, "qdq-to-integer{rounding=fixed_point},dce,O2")
        row["int8_top1"] = top1(fitted)
        want = run_module(fitted, feeds)
        for mode in MODES:
            built = build_cortex_m(fitted, "cortex-m4", sparse_weights=mode)
            got = built.run(feeds, count_instructions=True)
            assert all(np.array_equal(got[k], w) for k, w in want.items()), (name, pattern, share, mode)
            row[mode] = (built.memory.flash, built.last_run_instructions)
        print(row, file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python bench/sparsity.py`: `effc prune --sparsity S` "
             "(unstructured: each layer's smallest S of weights; 2:4: two of every four along the reduction axis, "
             "layers whose inputs per output are not a multiple of 4 left dense) without and with `--calib` "
             "(masked least squares on 64 images); top-1 on the 360 held-out digits. The refitted model in int8 "
             "(per channel, 8 calibration images, fixed-point requantization) on the Cortex-M4: effc's kernels "
             "with dense weights (`sparse_weights=\"off\"`) and with compressed ones where no slower (`speed`, at "
             "most 25% nonzero) or wherever they save flash (`flash`, at most 75% nonzero); flash bytes and "
             "instructions per inference (qemu -icount); every build's output equals the interpreter's. x86 and "
             "the other targets have no kernel that skips zeros: sparsity does not change their latency.", "",
             "| model | sparsity | zeros | top-1 masked | top-1 refit | int8 top-1 | M4 flash dense | speed | flash "
             "| instructions dense | speed | flash |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = "dense" if r["pattern"] == "dense" else "2:4" if r["pattern"] == "2:4" else f"{r['share']:.0%}"
        (f0, i0), (f1, i1), (f2, i2) = r["off"], r["speed"], r["flash"]
        lines.append(f"| {r['model']} | {label} | {r['zeros']:.1%} | {100 * r['top1'][0]:.1f}% | "
                     f"{100 * r['top1'][1]:.1f}% | {100 * r['int8_top1']:.1f}% | {f0:,} | {f1:,} ({f1 / f0:.2f}x) | "
                     f"{f2:,} ({f2 / f0:.2f}x) | {i0 / 1e6:.2f}M | {i1 / 1e6:.2f}M ({i1 / i0:.2f}x) | "
                     f"{i2 / 1e6:.2f}M ({i2 / i0:.2f}x) |")
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
