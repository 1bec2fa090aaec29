"""``effc bench``: one model's median latency against onnxruntime and plain TVM, in one
process, with the same thread count for every system; also what ``bench/run.py`` builds its
tables from. Part of the package, so it works from an installed effc (no source checkout);
it needs onnxruntime (``pip install onnxruntime``), the reference every output is checked
against.

Systems, in this order: onnxruntime (default session options, CPU provider,
``intra_op_num_threads=THREADS``, ``inter_op_num_threads=1``); plain TVM
(``tvm.relax.frontend.onnx.from_onnx`` + ``tvm.compile``, TVM's default pipeline, "n/a"
with the reason when the frontend fails); effc untuned (import, ``-O2``, build); effc tuned
(MetaSchedule with a budget of ``trials``, into a tuning database shared across models).
The pieces that need TVM itself (the plain-TVM build, the VM timing loop) live in
``effc.codegen.baseline``.

Latency: warm-up runs, then timed runs in which the systems take turns
(``interleaved_ms``), median in milliseconds; every output is compared with
onnxruntime's (rtol 1e-3, atol 1e-4 x the output's largest magnitude)."""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from effc.ir.errors import InputError

DEFAULT_THREADS = 2


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
    """Inputs for any model: normal floats; integers and booleans all 1, the one value that
    is both an index into any table of two or more rows and a meaningful mask (random
    small ints made attention masks of 6 and NaN outputs); symbolic dims are 1."""
    import onnx

    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in _declared_inputs(proto):
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dt) if dt.kind == "f" else np.ones(shape, dt)
    return feeds


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
    rounds = max(1, min(rounds, reps))  # few reps: fewer blocks, not more runs
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
    device: Any = None
    """``effc.codegen.rpc.RpcDevice``: effc's builds (and tuning) run on a device of a TVM
    RPC tracker, timed there by the VM's ``time_evaluator``; None: here, with the others."""


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
            scale = max(1.0, float(np.nanmax(np.abs(w), initial=0)))
            if not np.allclose(g, w, rtol=1e-3, atol=1e-4 * scale, equal_nan=True):  # NaN where ORT has NaN
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


def bench_plain_tvm(case: Case, s: Settings, want: list[np.ndarray]) -> tuple[Result, Callable[[], Any] | None]:
    import onnx

    from effc.codegen.baseline import library_size, plain_tvm_build, vm_runner

    t = time.perf_counter()
    try:
        executable = plain_tvm_build(case.path, case.shapes, s.target)
    except Exception as e:  # the frontend or the build does not handle this model
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return Result(note=f"n/a: {type(e).__name__}: {lines[-1][:120] if lines else ''}"), None
    compile_s = time.perf_counter() - t
    # main's parameters are the graph inputs in order, their names sanitized
    order = [vi.name for vi in _declared_inputs(onnx.load(str(case.path)))]
    run, outputs = vm_runner(executable, case.feeds, order)
    return Result(None, 0, compile_s, library_size(executable), _matches(outputs(), want)), run


def _effc_module(case: Case):
    from effc.ir.refine import bind_input_shapes
    from effc.models import load_model
    from effc.optimize import OptimizeOptions, optimize

    module = load_model(case.path)
    bind_input_shapes(module, case.shapes)
    optimize(module, "O2", OptimizeOptions(reproducer_dir=None))
    return module


def _effc_result(built: Any, case: Case, want: list[np.ndarray], compile_s: float,
                 s: Settings | None = None) -> tuple[Result, Callable[[], Any] | None]:
    """The build checked against ORT, and its run for ``interleaved_ms``; on an RPC device
    (``s.device``) it is run, checked and timed there now, and there is no local run."""
    from effc.codegen.baseline import library_size, vm_runner

    order = [n for n, _ in built.signature.inputs]
    if s is not None and s.device is not None:
        from effc.codegen.rpc import run_remote

        r = run_remote(built.executable, case.feeds, order, s.device, reps=s.reps, max_seconds=s.max_seconds)
        got = r.outputs[:len(built.signature.outputs)]
        return Result(r.ms, r.reps, compile_s, library_size(built.executable), _matches(got, want),
                      note=f"{s.device.label} at {s.device.address}"), None
    run, outputs = vm_runner(built.executable, case.feeds, order)
    got = outputs()[:len(built.signature.outputs)]  # main may return more values; Built.run reads these
    return Result(None, 0, compile_s, library_size(built.executable), _matches(got, want)), run


def bench_effc(case: Case, s: Settings, want: list[np.ndarray]) -> list[tuple[Result, Callable[[], Any]]]:
    """effc untuned, and tuned when ``s.trials`` > 0: (result, run) each."""
    from effc.codegen import build
    from effc.codegen.tune import build_tuned, tune

    t = time.perf_counter()
    module = _effc_module(case)
    out = [_effc_result(build(module, s.target), case, want, time.perf_counter() - t, s)]
    if s.trials <= 0:
        return out
    t = time.perf_counter()
    module = _effc_module(case)
    report = tune(module, s.target, s.trials, s.db_dir, progress=s.progress, rpc=s.device)
    tune_s = time.perf_counter() - t
    t = time.perf_counter()
    tuned, run = _effc_result(build_tuned(module, s.target, s.db_dir), case, want, time.perf_counter() - t, s)
    tuned.extra = {"tune_s": tune_s, "trials": report.trials, "kernels": len(report.kernels),
                   "reused": report.count("reused"), "tuned": report.count("tuned"),
                   "untuned": report.count("no budget") + report.count("failed") + report.count("skipped"),
                   "db_trials": sum(k.trials_total for k in report.kernels),
                   "failed": report.count("failed")}
    return out + [(tuned, run)]


def bench_case(case: Case, s: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """All four systems on one model: build each, check it against ORT, then time them in
    turns. The row of the results table."""
    from effc.codegen.baseline import runtime_threads

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
    where = f" ({s.device.label})" if s.device is not None else ""
    labels = {"ort": "onnxruntime", "tvm": "plain TVM", "effc": "effc untuned" + where, "effc_tuned": "effc tuned" + where}
    width = max(13, *(len(v) for v in labels.values()))
    for key, label in labels.items():
        r = results[key]
        if r is not None:
            extra = (f", tuning {r.extra['tune_s']:.1f} s, {r.extra['trials']} trials, "
                     f"{r.extra['reused']} kernels reused"
                     if r.extra else "")
            log(f"   {label:<{width}} {_fmt_ms(r):>12} ms  ({r.reps} runs; compile {_fmt_s(r.compile_s)} s{extra})")
    remote = (f"{s.device.key} at {s.device.address}" if s.device is not None else None)
    return {"model": case.name, "shapes": case.shapes, "threads": s.threads, "tvm_threads": runtime_threads(),
            "remote": remote,
            "trials_budget": s.trials, "load": (load_before, os.getloadavg()[0]), **results}


def bench_model(path: str | os.PathLike, target: str = "x86", trials: int = 0, threads: int = DEFAULT_THREADS,
                db_dir: str | os.PathLike | None = None, progress: bool = True, *, warmup: int = 3,
                reps: int = 50, max_seconds: float = 15.0,
                log: Callable[[str], None] = print, rpc: str | None = None,
                device_key: str | None = None) -> dict[str, Any]:
    """``effc bench MODEL``: one ``.onnx`` model (random inputs, symbolic dims 1) on an x86
    ``target`` against onnxruntime and plain TVM; with ``trials`` > 0 also tuned, into the
    tuning database ``db_dir`` (default ``.effc-tuning``, as ``effc compile --tune``).
    Returns the row as a dict of plain values (``plain_row``: latencies in ms, ratios
    effc/ORT and effc/TVM, compile seconds, bytes, whether outputs match onnxruntime).
    Bad arguments and models are InputErrors. Sets ``TVM_NUM_THREADS``: call it before
    anything in the process has run a TVM kernel (TVM sizes its thread pool once); the
    row's ``tvm_threads`` says what TVM used.
    ``rpc`` (``HOST:PORT`` of a TVM RPC tracker) and ``device_key``: effc's builds are
    uploaded to a device registered there under the key, run and timed there (the VM's
    ``time_evaluator``), their outputs checked here; tuning measures there too.
    onnxruntime and plain TVM stay here; the row's ``remote`` names the device."""
    from effc.api import DEFAULT_TUNING_DB
    from effc.targets import get_target

    _check_counts(trials=(trials, 0), threads=(threads, 1), warmup=(warmup, 0), reps=(reps, 1))
    if not max_seconds > 0:
        raise InputError(f"effc bench: the time limit per system must be > 0 s, got {max_seconds}")
    tgt = get_target(target)
    if tgt.family != "x86":
        raise InputError(f"effc bench measures in this process on x86; target '{target}' is {tgt.family} "
                         "(compile it with `effc compile` and time it on its device)")
    path = Path(path)
    proto = _onnx_model(path)
    device = None
    if rpc is not None or device_key is not None:
        from effc.codegen.rpc import connect

        device = connect(rpc, device_key)
    set_threads(threads)
    case = Case(path.stem, path, random_feeds(proto))
    s = Settings(tgt.tvm, threads, trials, Path(db_dir if db_dir is not None else DEFAULT_TUNING_DB),
                 warmup=warmup, reps=reps, max_seconds=max_seconds, progress=progress, device=device)
    return plain_row(bench_case(case, s, log))


def _check_counts(**given: tuple[int, int]) -> None:
    """Each option ``name=(value, least)`` is at least ``least``, else an InputError naming it."""
    for name, (value, least) in given.items():
        if value < least:
            raise InputError(f"effc bench: --{name} must be at least {least}, got {value}")


def _onnx_model(path: Path):
    """The ONNX model at ``path``, checked by effc's importer first (so a broken model is
    effc's error naming the node, not onnxruntime's); onnxruntime must be installed."""
    import importlib.util

    import onnx

    from effc.models import load_model

    if path.suffix.lower() != ".onnx":
        raise InputError(f"{path}: effc bench compares against onnxruntime, so it needs an .onnx model "
                         "(export an .effc dump with `effc dump MODEL.effc -o MODEL.onnx`)")
    if importlib.util.find_spec("onnxruntime") is None:
        raise InputError("effc bench measures against onnxruntime, which is not installed "
                         "(pip install onnxruntime)")
    load_model(path)  # InputError/ModelError for a missing or malformed model
    return onnx.load(str(path))


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    """A table row as JSON-friendly values, with the ratios."""
    out = {k: row[k] for k in ("model", "threads", "tvm_threads", "trials_budget", "load")}
    out["remote"] = row.get("remote")
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




def format_row(row: dict[str, Any]) -> str:
    """``effc bench``'s printout of a ``plain_row``: one line per system, then the ratios."""
    remote = row.get("remote")
    where = f" (rpc {remote.split(' at ')[0]})" if remote else ""
    labels = {"ort": "onnxruntime", "tvm": "plain TVM", "effc": "effc" + where, "effc_tuned": "effc tuned" + where}
    width = max(14, *(len(v) + 2 for v in labels.values()))
    lines = [f"model {row['model']} {row['shapes']}, {row['threads']} threads (TVM uses {row['tvm_threads']})"]
    if remote:
        lines.append(f"effc rows: run and timed over TVM RPC on device key {remote} (time_evaluator); "
                     "onnxruntime and plain TVM: here")
    lines.append(f"{'system':<{width}}{'median ms':>12}{'runs':>6}{'compile s':>11}{'bytes':>12}  matches onnxruntime")
    for key, label in labels.items():
        r = row[key]
        if r is None:
            continue
        ms = f"{r['ms']:.4f}" if r["ms"] is not None else (r["note"] or "n/a")
        compile_s = "–" if r["compile_s"] is None else f"{r['compile_s']:.2f}"
        size = "–" if r["bytes"] is None else f"{r['bytes']:,}"
        ok = {True: "yes", False: "NO", None: "–"}[r["matches_ort"]]
        lines.append(f"{label:<{width}}{ms:>12}{r['reps']:>6}{compile_s:>11}{size:>12}  {ok}")
    names = {"effc_vs_ort": "effc/onnxruntime", "effc_vs_tvm": "effc/plain TVM",
             "effc_tuned_vs_ort": "effc tuned/onnxruntime", "effc_tuned_vs_tvm": "effc tuned/plain TVM"}
    ratios = [f"{name} {row[key]:.2f}" for key, name in names.items() if row.get(key) is not None]
    if ratios:
        lines.append("latency ratios (below 1: effc is faster): " + ", ".join(ratios))
    return "\n".join(lines)
