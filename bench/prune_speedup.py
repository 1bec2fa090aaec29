"""Latency-aware pruning (``effc prune --speedup S --target T``): what it reaches, at what
quality, and the proposals it measured that did not speed up.

Each case runs ``effc.passes.prune_latency.prune_for_speedup`` with
``effc.latency.LatencyMeter`` (x86: timed builds, one thread; Cortex-M4: instructions per
inference under qemu), steps rounded to the target's vector block (x86) as the CLI does,
proposals judged and the result refitted on the model's calibration samples (bench/prune.py's).
Quality: top-1 on labelled data (digits_cnn, mnist_conv), else top-1 agreement with the
unpruned model on 32 random inputs, and the output's relative error.
The speedup column is the final side-by-side measurement of the unpruned and the pruned
model, not a sum of steps.

    python bench/prune_speedup.py                   # writes RESULTS.md
    python bench/prune_speedup.py --cases digits_cnn:cortex-m4 --no-write
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "## Latency-aware pruning: effc prune --speedup"
SHOWN = 8
"""Refused proposals listed per case."""
CASES = ["digits_cnn:cortex-m4:1.5", "mnist_conv:x86:1.3", "mobilenet_tiny:x86:1.5", "mobilenet_tiny:cortex-m4:1.5"]


def _error(base, pruned, evals) -> float:
    """The relative error of the pruned model's output against the unpruned one's."""
    from bench.prune import _outputs

    want, got = _outputs(base, evals), _outputs(pruned, evals)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def run_case(spec: str) -> dict:
    from bench.prune import _data, _outputs

    from effc.ir.parser import copy_module
    from effc.ir.refine import bind_input_shapes
    from effc.latency import LatencyMeter
    from effc.models import load_model
    from effc.passes import run_pipeline
    from effc.passes.prune_latency import prune_for_speedup

    name, target, speedup = spec.split(":")
    path, calib, evals, labels = _data(name)
    base = load_model(path)
    bind_input_shapes(base, {k: (1, *v.shape[1:]) for k, v in evals.items()})
    run_pipeline(base, "fold")
    ref = _outputs(base, evals)

    def top1(module) -> float:
        got = _outputs(module, evals)
        want = labels if labels is not None else ref.reshape(len(ref), -1).argmax(1)
        return float((got.reshape(len(got), -1).argmax(1) == want).mean())

    meter = LatencyMeter(target, {k: v[:1] for k, v in evals.items()})
    m = copy_module(base)
    t = time.perf_counter()
    report = prune_for_speedup(m, float(speedup), meter, samples=calib,
                               round_to=meter.block, unit=meter.unit, log=lambda s: print(s, file=sys.stderr))
    row = {"case": spec, "model": name, "target": target, "goal": float(speedup), "unit": meter.unit,
           "measured": report.measured, "top1": (top1(base), top1(m)), "error": _error(base, m, evals),
           "params": (report.params_before, report.params_after), "builds": meter.builds,
           "seconds": time.perf_counter() - t,
           "taken": sum(s.taken for s in report.speedup_steps),
           "refused": [s for s in report.speedup_steps if not s.taken]}
    print(row, file=sys.stderr, flush=True)
    return row


def table(rows: list[dict]) -> str:
    from effc.passes.prune import fmt_cost

    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python bench/prune_speedup.py`: `effc prune --speedup S "
             "--target T` (L1 criterion; each round one proposal per group of coupled channels, built for the "
             "target and measured against the current model; x86: one thread, median of interleaved runs, steps "
             "rounded to the vector block and unrounded; Cortex-M4: instructions per inference under qemu; the "
             "proposal losing least output error on 8 calibration samples per cost saved taken). Refit: least "
             "squares on the calibration samples at the end. Top-1: on 360 held-out digits (digits_cnn, "
             "mnist_conv), else agreement with the unpruned model on 32 random inputs; rel. error: of the output "
             "against the unpruned model's. Measured: the final side-by-side measurement of the unpruned and "
             "pruned model.", "",
             "| model | target | goal | measured (unpruned -> pruned) | speedup | top-1 (unpruned -> pruned) | "
             "rel. error | params | steps taken | proposals not faster | builds | time s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        before, after = r["measured"]
        verdict = f"**{before / after:.2f}x**" + ("" if before / after >= r["goal"] else " (not reached)")
        lines.append(f"| {r['model']} | {r['target']} | {r['goal']:g}x | {fmt_cost(before, r['unit'])} -> "
                     f"{fmt_cost(after, r['unit'])} | {verdict} | {100 * r['top1'][0]:.1f}% -> "
                     f"{100 * r['top1'][1]:.1f}% | {r['error']:.3f} | {r['params'][0]:,} -> "
                     f"{r['params'][1]:,} | {r['taken']} | {len(r['refused'])} | {r['builds']} | {r['seconds']:.0f} |")
    lines += ["", f"Proposals measured as not faster (each reported by `effc prune` and not taken; the first {SHOWN} "
                  "of each case):", ""]
    for r in rows:
        for s in r["refused"][:SHOWN]:
            lines.append(f"- {r['model']} on {r['target']}: {s.group} {s.classes[0]} -> {s.classes[1]} channels: "
                         f"{fmt_cost(s.cost[0], r['unit'])} -> {fmt_cost(s.cost[1], r['unit'])}")
        if len(r["refused"]) > SHOWN:
            lines.append(f"- {r['model']} on {r['target']}: {len(r['refused']) - SHOWN} more")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help="MODEL:TARGET:SPEEDUP,...")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from bench.node_counts import publish

    return publish(table([run_case(c) for c in args.cases.split(",")]), SECTION, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
