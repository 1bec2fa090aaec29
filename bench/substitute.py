"""Substitution search (``substitute``, part of ``-O3``): latency of ``-O3`` against ``-O2``
on x86, both with tuned kernels, beside onnxruntime and plain TVM in the same run; and the
peak arena of Cortex-M4 builds under the memory objective.

**Latency** (models with parallel branches: onnx's light Inception v1/v2, SqueezeNet,
ShuffleNet, and MiniLM-L3 at one sequence of 16 tokens for its attention's Q/K/V
projections). Each model is optimized twice: ``-O2``, and ``-O3`` with the kernels
measured on this machine (``effc.latency.substitute_costs``; the per-kernel prices are
cached under ``~/.cache/effc/kernel-costs``, so the columns give the search's own time and
the measuring apart). Both graphs are tuned (``--trials`` MetaSchedule trials each, one
database per model) and timed one thread, taking turns with onnxruntime (one thread) and
plain TVM (``relax.frontend.onnx``, default pipeline). Every build's outputs are checked
against onnxruntime's.

**Memory** (Cortex-M4, float): the ELF of ``-O2`` against the one of ``fold``,
``substitute{objective=memory}``, ``fuse``: arena bytes (the deployed plan), flash, and
instructions per inference under qemu (what the lower peak costs in time). Both programs'
outputs are checked against effc's interpreter.

    python bench/substitute.py --trials 16 --cold-cache   # writes RESULTS.md
    python bench/substitute.py --latency light_squeezenet --memory '' --no-write
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECTION = "## Substitution search: -O3 against -O2"
LATENCY_MODELS = ["light_inception_v1", "light_inception_v2", "light_squeezenet", "light_shufflenet", "minilm_l3"]
MEMORY_MODELS = ["digits_cnn", "mobilenet_tiny", "mobilenet_v2_mcu"]
WORK = Path(__file__).resolve().parent / "_work"
BUDGET = "10s"


def _case(name: str):
    from effc.bench import Case, random_feeds
    from tests.fixtures import _minilm_path, light_dir

    if name == "minilm_l3":
        rng = np.random.default_rng(0)
        ids = np.concatenate([[101], rng.integers(2000, 20000, 14), [102]]).reshape(1, 16).astype(np.int64)
        return Case(name, _minilm_path(), {"input_ids": ids, "attention_mask": np.ones((1, 16), np.int64)})
    import onnx

    path = light_dir() / f"{name}.onnx"
    return Case(name, path, random_feeds(onnx.load(str(path))))


def latency(name: str, trials: int, log) -> dict:
    import tvm

    from effc.bench import Settings, _matches, bench_ort, bench_plain_tvm, interleaved_ms, set_threads
    from effc.codegen.tune import build_tuned, tune
    from effc.ir.parser import copy_module
    from effc.ir.printer import print_module
    from effc.ir.refine import bind_input_shapes
    from effc.latency import substitute_costs
    from effc.models import load_model
    from effc.passes import PassContext, run_pipeline
    from effc.targets import get_target

    set_threads(1)
    case = _case(name)
    s = Settings(target=get_target("x86").tvm, threads=1, trials=trials, db_dir=WORK / "substitute-tuning" / name)
    ort_result, want, ort_run = bench_ort(case, s)
    tvm_result, tvm_run = bench_plain_tvm(case, s, want)
    base = load_model(str(case.path))
    bind_input_shapes(base, case.shapes)
    o2, o3 = copy_module(base), copy_module(base)
    run_pipeline(o2, "O2")
    ctx = PassContext(target="x86", options={**substitute_costs("x86"), "substitute_log": log})
    t = time.perf_counter()
    run_pipeline(o3, "O3", ctx)
    o3_seconds = time.perf_counter() - t
    report = ctx.options["substitute_report"]
    runs, ok = {"ort": ort_run}, {}
    if tvm_run is not None:
        runs["tvm"] = tvm_run
    same = print_module(o2) == print_module(o3)
    for label, module in (("O2", o2),) if same else (("O2", o2), ("O3", o3)):
        if trials:
            tune(module, None, trials, s.db_dir, progress=False)
        art = build_tuned(module, None, s.db_dir)
        args = [tvm.runtime.tensor(case.feeds[n], tvm.cpu(0)) for n, _ in art.signature.inputs]
        out = art.vm["main"](*args)
        got = [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [x.numpy() for x in out]
        ok[label] = _matches(got[:len(want)], want)
        runs[label] = (lambda vm, a: lambda: vm["main"](*a))(art.vm, args)
    # one run of each in turn (rounds = reps): a machine whose speed drifts over seconds slows
    # both graphs alike; plain TVM, ~40x slower, is timed apart
    slow = {"tvm": runs.pop("tvm")} if "tvm" in runs else {}
    ms = {k: v[0] for k, v in interleaved_ms(runs, warmup=5, reps=100, max_seconds=60, rounds=100).items()}
    ms.update({k: v[0] for k, v in interleaved_ms(slow, warmup=1, reps=5, max_seconds=10).items()})
    if same:  # the search kept the input graph: -O3 builds what -O2 builds
        ms["O3"], ok["O3"] = ms["O2"], ok["O2"]
    r = report.result
    row = {"model": name, "ms": ms, "ok": ok, "same": same, "tvm_ok": tvm_result.ok,
           "tvm_note": tvm_result.note, "applied": r.applied, "kept": report.kept, "why": report.why,
           "predicted": r.cost_before / r.cost if r.cost else None, "measured": report.measured,
           "explored": r.explored, "search_s": r.seconds, "measure_s": r.measure_seconds,
           "kernels": report.measured_kernels, "o3_s": o3_seconds}
    log(f"{name}: O2 {row['ms']['O2']:.2f} ms, O3 {row['ms']['O3']:.2f} ms, ort {row['ms']['ort']:.2f} ms; "
        f"{report.format()}")
    return row


def memory(name: str, log) -> dict:
    import effc
    from effc.ir.interpreter import run_module
    from effc.models import load_model
    from effc.passes.pipeline import NAMED_PIPELINES
    from tests.fixtures import FIXTURES, mobilenet_v2_mcu

    if name == "mobilenet_v2_mcu":
        WORK.mkdir(parents=True, exist_ok=True)
        path = mobilenet_v2_mcu(WORK)
    else:
        path = next(f for f in FIXTURES if f.name == name).path()
    pipeline = NAMED_PIPELINES["fold"] + f",substitute{{objective=memory budget={BUDGET}}},fuse,dce"
    budgets = {"flash": 8_000_000, "sram": 4_000_000}  # float MobileNetV2 is over the M4 board's 1 MB flash
    module = load_model(str(path))
    feeds = {v.name: np.random.default_rng(0).standard_normal(
        [d if isinstance(d, int) else 1 for d in v.type.shape]).astype(np.float32) for v in module.graph.inputs}
    want = run_module(module, feeds)
    row = {"model": name}
    for label, pipe in (("O2", "O2"), ("mem", pipeline)):
        t = time.perf_counter()
        compiled = effc.compile(str(path), target="cortex-m4", pipeline=pipe,
                                input_shapes={k: v.shape for k, v in feeds.items()}, **budgets)
        seconds = time.perf_counter() - t
        built = compiled._built
        got = built.run(feeds, count_instructions=True)
        ok = all(np.allclose(got[k], want[k], rtol=1e-4, atol=1e-4) for k in want)
        row[label] = {"arena": built.arena_bytes, "flash": built.memory.flash, "instructions":
                      built.last_run_instructions, "ok": ok, "seconds": seconds,
                      "report": compiled.report().substitution}
    log(f"{name}: arena {row['O2']['arena']:,} -> {row['mem']['arena']:,}\n{row['mem']['report']}")
    return row


def _x(a: float | None, b: float | None) -> str:
    return "–" if not a or not b else f"{a / b:.2f}x"


def table(lat: list[dict], mem: list[dict], trials: int) -> str:
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python bench/substitute.py --trials {trials} --cold-cache` "
             "on this "
             f"machine ({time.strftime('%Y')}), x86 one thread. `-O3` = `-O2` plus `substitute` (search budget "
             f"{BUDGET}; each kernel priced by building it alone and timing it on this CPU, from an empty cache: "
             "the last column is what a first `-O3` compile adds, later ones reuse the cache). "
             f"Both effc graphs tuned with {trials} MetaSchedule "
             "trials (one database per model); ORT = onnxruntime, one thread; TVM = plain TVM (ONNX frontend, default "
             "pipeline). Ratios: the other system's time over effc's (above 1: effc is faster). `kept`: whether "
             "the searched graph replaced the input graph (the pass measures both whole and keeps the input graph "
             "unless the searched one is faster; where it kept it, -O3 builds the -O2 graph and the ratio is 1.00x by "
             "construction). All outputs match onnxruntime unless marked.", "",
             "| model | -O2 ms | -O3 ms | -O3 vs -O2 | vs ORT | vs TVM | rules on the path | predicted | "
             "pass's whole-graph check | kept | search s | kernels measured (s) |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|"]
    for r in lat:
        ms = r["ms"]
        counts: dict[str, int] = {}
        for a in r["applied"]:
            counts[a] = counts.get(a, 0) + 1
        rules = ", ".join(f"{k} x{v}" for k, v in counts.items()) or "none"
        check = f"{r['measured'][0]:.2f} -> {r['measured'][1]:.2f} ms" if r["measured"] else "–"
        bad = "" if all(r["ok"].values()) else " (outputs differ)"
        tvm = _x(ms.get("tvm"), ms["O3"]) if "tvm" in ms else "n/a"
        predicted = "–" if r["predicted"] is None else f"{r['predicted']:.2f}x"
        lines.append(f"| {r['model']}{bad} | {ms['O2']:.2f} | {ms['O3']:.2f} | {_x(ms['O2'], ms['O3'])} | "
                     f"{_x(ms['ort'], ms['O3'])} | {tvm} | {rules} | "
                     f"{predicted} | {check} | "
                     f"{'yes' if r['kept'] else 'no'} | {r['search_s']:.1f} | {r['kernels']} ({r['measure_s']:.0f}) |")
    if mem:
        lines += ["", "Cortex-M4 (float, qemu `mps2-an386`): `-O2` against `fold,substitute{objective=memory},fuse`. "
                  "Arena: the deployed static arena; instructions per inference counted by qemu. Both programs' "
                  "outputs match effc's interpreter unless marked.", "",
                  "| model | arena -O2 | arena memory objective | lower by | flash -O2 | flash | instructions -O2 | "
                  "instructions | rules on the path | compile s (search budget " + BUDGET + ") |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in mem:
            a, b = r["O2"], r["mem"]
            bad = "" if a["ok"] and b["ok"] else " (outputs differ)"
            applied = (b["report"] or "").split("rules applied: ")
            rules = applied[1].splitlines()[0] if len(applied) > 1 else "none"
            lines.append(f"| {r['model']}{bad} | {a['arena']:,} | {b['arena']:,} | {_x(a['arena'], b['arena'])} | "
                         f"{a['flash']:,} | {b['flash']:,} | {a['instructions']:,} | {b['instructions']:,} | {rules} | "
                         f"{b['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", default=",".join(LATENCY_MODELS))
    ap.add_argument("--memory", default=",".join(MEMORY_MODELS))
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="take the rows of models measured before from bench/_work")
    ap.add_argument("--reuse-only", default="", help="latency or memory: reuse that table's rows only")
    ap.add_argument("--cold-cache", action="store_true",
                    help="price every kernel anew (an empty kernel-cost cache), as a first -O3 compile does")
    args = ap.parse_args(argv)
    from bench.node_counts import publish

    if args.cold_cache:  # the cache lives under ~/.cache/effc: a fresh home for this run
        import os
        import tempfile

        os.environ["HOME"] = tempfile.mkdtemp(prefix="effc-cold-")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def rows(kind: str, names: str, measure) -> list[dict]:
        """Each model's row, measured or (``--reuse``) read back from an earlier run."""
        out = []
        for name in filter(None, names.split(",")):
            saved = WORK / "substitute" / f"{kind}-{name}.json"
            if (args.reuse or kind in args.reuse_only) and saved.exists():
                out.append(json.loads(saved.read_text()))
                continue
            out.append(measure(name))
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(out[-1]))
        return out

    lat = rows("latency", args.latency, lambda n: latency(n, args.trials, log))
    mem = rows("memory", args.memory, lambda n: memory(n, log))
    return publish(table(lat, mem, args.trials), SECTION, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
