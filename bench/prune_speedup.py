"""Latency-aware pruning (``effc prune --speedup S --target T``): what it reaches, at what
quality, and the proposals it measured that did not speed up.

Each case runs ``effc.passes.prune_latency.prune_for_speedup`` with
``effc.latency.LatencyMeter`` (x86: timed builds, one thread; Cortex-M4: instructions per
inference under qemu), steps rounded to the target's vector block (x86) as the CLI does,
refitted on calibration samples where the case has them. Quality: top-1 on labelled data
(digits_cnn, mnist_conv), else top-1 agreement with the unpruned model on 32 random inputs.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "## Latency-aware pruning: effc prune --speedup"
CASES = ["digits_cnn:cortex-m4:1.5", "mnist_conv:x86:1.3", "mobilenet_tiny:x86:1.5", "mobilenet_tiny:cortex-m4:1.5"]


def run_case(spec: str) -> dict:
    from bench.prune import FOLD, _data, _outputs

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
    run_pipeline(base, FOLD)
    ref = _outputs(base, evals)

    def top1(module) -> float:
        got = _outputs(module, evals)
        want = labels if labels is not None else ref.reshape(len(ref), -1).argmax(1)
        return float((got.reshape(len(got), -1).argmax(1) == want).mean())

    meter = LatencyMeter(target, {k: v[:1] for k, v in evals.items()})
    m = copy_module(base)
    t = time.perf_counter()
    report = prune_for_speedup(m, float(speedup), meter, samples=calib if labels is not None else None,
                               round_to=meter.block, unit=meter.unit, log=lambda s: print(s, file=sys.stderr))
    row = {"case": spec, "model": name, "target": target, "goal": float(speedup), "unit": meter.unit,
           "measured": report.measured, "top1": (top1(base), top1(m)), "refit": labels is not None,
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
             "rounded to the vector block; Cortex-M4: instructions per inference under qemu). Refit: least squares "
             "on the calibration samples at the end (labelled models). Top-1: on 360 held-out digits (digits_cnn, "
             "mnist_conv), else agreement with the unpruned model on 32 random inputs. Measured: the final "
             "side-by-side measurement of the unpruned and pruned model.", "",
             "| model | target | goal | measured (unpruned -> pruned) | speedup | top-1 (unpruned -> pruned) | params "
             "| steps taken | proposals not faster | builds | time s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        before, after = r["measured"]
        verdict = f"**{before / after:.2f}x**" + ("" if before / after >= r["goal"] else " (not reached)")
        lines.append(f"| {r['model']} | {r['target']} | {r['goal']:g}x | {fmt_cost(before, r['unit'])} -> "
                     f"{fmt_cost(after, r['unit'])} | {verdict} | {100 * r['top1'][0]:.1f}% -> "
                     f"{100 * r['top1'][1]:.1f}%{' (refit)' if r['refit'] else ''} | {r['params'][0]:,} -> "
                     f"{r['params'][1]:,} | {r['taken']} | {len(r['refused'])} | {r['builds']} | {r['seconds']:.0f} |")
    lines += ["", "Proposals measured as not faster (each reported by `effc prune` and not taken):", ""]
    for r in rows:
        for s in r["refused"]:
            lines.append(f"- {r['model']} on {r['target']}: {s.group} {s.classes[0]} -> {s.classes[1]} channels: "
                         f"{fmt_cost(s.cost[0], r['unit'])} -> {fmt_cost(s.cost[1], r['unit'])}")
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
