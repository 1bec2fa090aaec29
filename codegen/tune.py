"""Tuning effc's kernels with TVM MetaSchedule, and building with the tuned schedules.

What is tuned: the PrimFuncs of the module after effc's Relax pipeline has run up to and
including ``FuseTIR`` (dispatch, ``LegalizeOps``, then one PrimFunc per effc ``fused``
node and one per remaining op), i.e. exactly the kernels that ``build()`` would hand to
TVM's default pipeline unscheduled. Kernels with symbolic shapes are not tuned (bind the
input shapes first: ``bind_input_shapes``); they keep the default schedule.

How the database is keyed: one MetaSchedule ``JSONDatabase`` per target, in
``DB_DIR/<target key>/`` (``database_workload.json`` + ``database_tuning_record.json``).
Inside it a kernel is the workload ``normalize_mod(prim_func)`` (the PrimFunc as the
``main`` of its own IRModule), found by TVM's structural hash and equality: the body, the
buffer shapes and dtypes and the attributes count; the names of the function, its
parameters and the model do not. TVM's own lookup ignores the target, so the target is
the folder (``target_key``: kind, CPU, core count and a hash of the whole target dict).
After a tune that measured anything the database is compacted to each kernel's best
record (loading parses every record); ``trials.json`` beside it counts the trials each
kernel has had, keyed by the same structural hash.

Reuse: a kernel whose workload the database already holds is not tuned again (its best
record is applied, or the default schedule if every candidate failed), so a second
``tune`` of the same model runs no trials, and a model that shares a kernel with one
tuned before (same conv shapes, say) reuses it.

The trial budget is split over the kernels the database lacks, largest estimated FLOPs x
calls first (``plan_budget``); kernels the budget does not reach stay untuned, and a later
``tune`` with budget continues with them. A kernel whose tuning fails is recorded as
attempted and skipped; the rest go on.

    report = tune(module, target, trials=64, db_dir="tuning-db")
    built = build_tuned(module, target, "tuning-db")
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

from effc.ir.core import Module

from .build import Built, Signature, TargetDict, build, host_x86_target, relax_pipeline, safe_target
from .relax import LoweringError, lower_to_relax
from .schedules import SCHEDULED, Cpu, cpu_for, default_schedule

if TYPE_CHECKING:
    from .rpc import RpcDevice

log = logging.getLogger("effc.tune")

BUILD_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 60.0
MIN_TRIALS_PER_KERNEL = 4
"""A kernel gets at least this many trials or none: fewer than a handful of candidates
measure little more than noise, and a MetaSchedule task costs seconds to set up."""


# ----------------------------------------------------------------------------- pipeline split


def _pipeline_halves(cpu: Cpu | None = None) -> tuple[tvm.transform.Pass, tvm.transform.Pass]:
    """effc's ``relax_pipeline`` cut after ``FuseTIR``: the half that makes the kernels, and
    the half that lowers them (effc's default schedules for ``cpu``, then TVM's default
    pipeline). Tuning reads the kernels between the two; ``build_tuned`` applies the
    database there, so the default schedules take only the kernels it lacks."""
    passes = list(relax_pipeline(cpu).passes)
    names = [p.info.name for p in passes]
    if "FuseTIR" not in names:
        raise LoweringError(f"internal: effc's relax pipeline has no FuseTIR to tune after ({names})")
    cut = names.index("FuseTIR") + 1
    return (tvm.transform.Sequential(passes[:cut], name="effc_make_kernels"),
            tvm.transform.Sequential(passes[cut:], name="effc_lower_kernels"))


def tuning_target(target: TargetDict | None) -> dict[str, Any]:
    """The target as ``build()`` compiles for it (AVX-512 made safe: ``build.safe_target``), with
    ``num-cores``, which MetaSchedule needs: tuning measures on it, tuned builds compile
    for it, and database records are kept and looked up per this dict."""
    target = dict(target) if target is not None else host_x86_target()
    if target.get("kind") != "llvm":
        raise LoweringError(f"tuning supports LLVM CPU targets; got target kind '{target.get('kind')}'")
    target.setdefault("num-cores", int(os.environ.get("TVM_NUM_THREADS") or os.cpu_count() or 1))
    return safe_target(target)


def kernel_module(module: Module, target: TargetDict | None = None,
                  hardware: Mapping[str, int] | None = None) -> tvm.IRModule:
    """The Relax module with its kernels as PrimFuncs (effc's pipeline up to ``FuseTIR``,
    in the blocked layouts the target's build uses; ``hardware`` as for ``build``)."""
    target = tuning_target(target)
    cpu = cpu_for(target, hardware)
    make_kernels, _ = _pipeline_halves(cpu)
    mod = lower_to_relax(module, lanes=cpu.lanes)
    with tvm.transform.PassContext(opt_level=3), tvm.target.Target(target):
        return make_kernels(mod)


# ----------------------------------------------------------------------------- database


def target_key(target: TargetDict) -> str:
    """The database folder name for ``target``: readable parts plus a hash of the dict."""
    t = tuning_target(target)
    digest = hashlib.sha256(json.dumps(t, sort_keys=True, default=str).encode()).hexdigest()[:10]
    cpu = t.get("mcpu") or t.get("mtriple", "cpu").split("-")[0]
    return f"{t['kind']}-{cpu}-{t['num-cores']}c-{digest}"


KEEP_RECORDS_PER_KERNEL = 1
"""After a tune that measured something, the database keeps only each kernel's best
record (and every kernel attempted, valid record or not). Loading a JSONDatabase parses
every record (~5 ms each here: 8 s for the ~1,700 of the benchmark's models); a kernel in
the database is never tuned again, so the rest would only slow every compile down."""

_OPEN: dict[Path, tuple[tuple[int, ...], ms.database.JSONDatabase]] = {}


def _stamp(path: Path) -> tuple[int, ...]:
    out: list[int] = []
    for name in ("database_workload.json", "database_tuning_record.json"):
        try:
            st = (path / name).stat()
            out += [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            out += [-1, -1]
    return tuple(out)


def database_path(db_dir: str | os.PathLike, target: TargetDict | None) -> Path:
    """The folder of ``target``'s database under ``db_dir``."""
    return Path(db_dir) / target_key(target)


def open_database(db_dir: str | os.PathLike, target: TargetDict | None) -> ms.database.JSONDatabase:
    """The tuning database for ``target`` under ``db_dir`` (created when missing). Opened
    once per process while its files do not change underneath (``tune`` then
    ``build_tuned`` share it)."""
    path = database_path(db_dir, target).resolve()
    path.mkdir(parents=True, exist_ok=True)
    cached = _OPEN.get(path)
    if cached is not None and cached[0] == _stamp(path):
        return cached[1]
    db = ms.database.JSONDatabase(work_dir=str(path), module_equality="structural")
    _OPEN[path] = (_stamp(path), db)
    return db


def _remember(path: Path, db: ms.database.JSONDatabase) -> None:
    """``db`` is up to date with its files (it wrote them itself)."""
    _OPEN[path.resolve()] = (_stamp(path), db)


def compact_database(db_dir: str | os.PathLike, target: TargetDict | None,
                     keep: int = KEEP_RECORDS_PER_KERNEL) -> ms.database.JSONDatabase:
    """Rewrite ``target``'s database with only the best ``keep`` valid records per kernel
    (every kernel stays, so failed ones still count as attempted); returns it reopened."""
    path = database_path(db_dir, target).resolve()
    old = open_database(db_dir, target)
    fresh = path.with_name(path.name + ".compacting")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(parents=True)
    new = ms.database.JSONDatabase(work_dir=str(fresh), module_equality="structural")
    with open(path / "database_workload.json") as f:
        for line in f:
            if not line.strip():
                continue
            mod = ms.database.Workload.from_json(json.loads(line)).mod
            workload = new.commit_workload(mod)
            for rec in old.get_top_k(old.commit_workload(mod), keep):
                new.commit_tuning_record(ms.database.TuningRecord(rec.trace, workload, rec.run_secs, rec.target,
                                                                  rec.args_info))
    for name in ("database_workload.json", "database_tuning_record.json"):
        os.replace(fresh / name, path / name)
    shutil.rmtree(fresh, ignore_errors=True)
    _OPEN.pop(path, None)
    return open_database(db_dir, target)


# ----------------------------------------------------------------------------- kernels


@dataclass
class Kernel:
    """One distinct kernel of a model (identical PrimFuncs are one kernel, ``calls`` > 1)."""

    name: str
    workload: tvm.IRModule
    calls: int
    flops: float
    status: str = "pending"
    """``reused`` (the database had it), ``tuned``, ``failed: why``, ``no budget``,
    ``skipped: why``."""
    trials: int = 0
    """Trials measured for it in this ``tune`` call."""
    best_us: float | None = None
    trials_total: int = 0
    """Trials measured for it by every ``tune`` into this database (``trials.json`` beside
    the database; MetaSchedule's own files keep only the best record, see
    ``KEEP_RECORDS_PER_KERNEL``)."""
    """The best measured latency in the database, in microseconds (None: none valid)."""


def _is_static(func: tirx.PrimFunc) -> bool:
    """Every parameter is a buffer of constant shape (a scalar parameter is a symbolic dim)."""
    for p in func.params:
        shape = getattr(p.ty, "shape", None)
        if shape is None or not all(isinstance(d, tirx.IntImm) for d in shape):
            return False
    return True


def _flops(workload: tvm.IRModule) -> float:
    try:
        from tvm.s_tir.analysis import estimate_tir_flops

        return float(estimate_tir_flops(workload))
    except Exception:  # an op the estimator does not know: rank it last
        return 0.0


def aot_kernels(module: Module, target: TargetDict | None = None,
                hardware: Mapping[str, int] | None = None) -> tuple[tvm.IRModule, dict[str, int]]:
    """The PrimFuncs the AOT program of ``module`` calls, and how often each is called (a
    one-channel kernel once per channel)."""
    from .aot_inplace import program_schedule
    from .native import aot_cpu

    target = tuning_target(target)  # as tuned builds lower it:
    schedule = program_schedule(module, target, pools=False, lanes=aot_cpu(target, hardware).lanes)
    calls: dict[str, int] = {}
    for t in (t for t in schedule.calls if schedule.kernel_at(t)):
        split = schedule.splits.get(t)
        name = schedule.kernel_at(t)
        calls[name] = calls.get(name, 0) + (split.channels if split is not None else 1)
    return tvm.IRModule(dict(schedule.prim_funcs)), calls


def kernels_of(mod: tvm.IRModule, calls: dict[str, int] | None = None) -> list[Kernel]:
    """The distinct PrimFuncs of a kernel module, heaviest (FLOPs x calls) first. ``calls``:
    how often each is called (default: counted from the module's Relax functions)."""
    if calls is None:
        calls = {}

        def count(expr: relax.Expr) -> None:
            if isinstance(expr, relax.Call) and expr.op == tvm.ir.Op.get("relax.call_tir"):
                calls[expr.args[0].name_hint] = calls.get(expr.args[0].name_hint, 0) + 1

        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func.body, count)
    found: dict[int, list[Kernel]] = {}
    out: list[Kernel] = []
    for gv, func in sorted(mod.functions.items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tirx.PrimFunc):
            continue
        workload = _normalize_mod(func)
        h = tvm_ffi.structural_hash(workload)
        same = next((k for k in found.get(h, []) if tvm_ffi.structural_equal(k.workload, workload)), None)
        if same is not None:
            same.calls += calls.get(gv.name_hint, 1)
            continue
        k = Kernel(gv.name_hint, workload, calls.get(gv.name_hint, 1), _flops(workload))
        if not _is_static(func):
            k.status = "skipped: symbolic shape (bind the input shapes to tune it)"
        found.setdefault(h, []).append(k)
        out.append(k)
    out.sort(key=lambda k: (-k.flops * k.calls, k.name))
    return out


def plan_budget(kernels: list[Kernel], trials: int, floor: int = MIN_TRIALS_PER_KERNEL) -> dict[str, int]:
    """Trials per kernel name: the heaviest kernels first get ``floor`` each while the budget
    lasts; what remains is shared in proportion to FLOPs x calls."""
    if trials <= 0 or not kernels:
        return {}
    floor = max(1, min(floor, trials))
    ranked = sorted(kernels, key=lambda k: (-k.flops * k.calls, k.name))
    chosen = ranked[:max(1, trials // floor)]
    plan = {k.name: floor for k in chosen}
    spare = trials - floor * len(chosen)
    weights = [max(k.flops * k.calls, 1.0) for k in chosen]
    total = sum(weights)
    extra = [int(spare * w / total) for w in weights]
    for k, e in zip(chosen, extra):
        plan[k.name] += e
    for k in chosen[:spare - sum(extra)]:  # rounding leftovers to the heaviest
        plan[k.name] += 1
    return plan


# ----------------------------------------------------------------------------- MetaSchedule pieces


def _register_tensor_intrinsics(target: Mapping[str, Any]) -> None:
    """Register only the tensor intrinsics this target can use, before MetaSchedule imports
    ``tvm.s_tir.tensor_intrin``: importing all of it (CUDA, ROCm, Hexagon, ...) takes ~30 s
    on this machine, in every process that tunes. The package is entered in
    ``sys.modules`` without running its ``__init__``; its submodules still import."""
    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return
        pkg = types.ModuleType(name)
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules[name] = pkg
    sub = "arm_cpu" if str(target.get("mtriple", "")).startswith(("aarch64", "arm")) else "x86"
    importlib.import_module(f"{name}.{sub}")


def _build_candidate(mod: tvm.IRModule, target: tvm.target.Target) -> str:
    """MetaSchedule's ``default_build`` + ``default_export``, but without the tensor-intrinsic
    import (the candidate is already scheduled; building it needs none) and linked to a
    shared library here, in the parallel builder, rather than in the one runner process."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    built = tvm_build(mod, target=target)
    path = os.path.join(tempfile.mkdtemp(prefix="effc-ms-"), "kernel.so")
    built.export_library(path)
    return path


def _build_candidate_args(args: tuple[tvm.IRModule, tvm.target.Target]) -> str:
    return _build_candidate(*args)


@derived_object
class WarmBuilder(PyBuilder):
    """MetaSchedule's LocalBuilder, but its worker processes live as long as the builder:
    LocalBuilder starts fresh workers for every batch, each importing TVM (seconds)."""

    def __init__(self, max_workers: int, timeout_s: float = BUILD_TIMEOUT_S):
        super().__init__()
        self.timeout_s = timeout_s
        self.pool = PopenPoolExecutor(max_workers=max_workers, timeout=timeout_s)

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        results = []
        for r in self.pool.map_with_error_catching(_build_candidate_args,
                                                   [(bi.mod, bi.target) for bi in build_inputs]):
            if r.status == StatusKind.COMPLETE:
                results.append(BuilderResult(r.value, None))
            elif r.status == StatusKind.TIMEOUT:
                results.append(BuilderResult(None, f"build timed out after {self.timeout_s} s"))
            else:
                results.append(BuilderResult(None, f"build failed: {r.value}"))
        return results

    def close(self) -> None:
        self.pool.shutdown()


@derived_object
class CountTrials(PyMeasureCallback):
    """Counts the candidates measured for the kernel being tuned and moves the progress bar."""

    def __init__(self, report: "TuneReport", bar: "_Progress"):
        super().__init__()
        self.report = report
        self.bar = bar
        self.kernel: Kernel | None = None

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        n = len(runner_results)
        self.report.trials += n
        if self.kernel is not None:
            self.kernel.trials += n
        self.bar.advance(n)


# ----------------------------------------------------------------------------- tune


@dataclass
class TuneReport:
    """What one ``tune`` call did."""

    kernels: list[Kernel]
    trials: int
    """Trials measured in this call (0 when the database had every kernel)."""
    budget: int
    seconds: float
    db_path: Path
    records_before: int
    records_after: int
    failures: list[str] = field(default_factory=list)
    kept_default: list[str] = field(default_factory=list)
    """Kernels kept at effc's default schedule because the tuned model ran slower than the
    untuned one (``check_in_model``)."""

    def count(self, status: str) -> int:
        return sum(1 for k in self.kernels if k.status.startswith(status))

    def __str__(self) -> str:
        return (f"{len(self.kernels)} kernels: {self.count('reused')} reused from the database, "
                f"{self.count('tuned')} tuned with {self.trials} trials (budget {self.budget}), "
                f"{self.count('no budget')} left for a larger budget, {self.count('failed')} failed, "
                f"{self.count('skipped')} skipped"
                + (f", all {len(self.kept_default)} kept at effc's schedules (the tuned model ran slower)"
                   if self.kept_default else "")
                + f"; {self.seconds:.1f} s; database {self.db_path}")


def _workload_key(workload: tvm.IRModule) -> str:
    return f"{tvm_ffi.structural_hash(workload) & 0xFFFFFFFFFFFFFFFF:016x}"


def _trial_totals(db_path: Path, tuned_now: list[Kernel]) -> dict[str, int]:
    """Trials measured per kernel over every run (``trials.json``), with ``tuned_now`` added."""
    path = db_path / "trials.json"
    try:
        totals = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
    except (FileNotFoundError, ValueError, AttributeError):
        totals = {}
    if tuned_now:
        for k in tuned_now:
            key = _workload_key(k.workload)
            totals[key] = totals.get(key, 0) + k.trials
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(totals, indent=0, sort_keys=True))
        os.replace(tmp, path)
    return totals


def _best_us(db: ms.database.Database, workload: tvm.IRModule, target: tvm.target.Target) -> float | None:
    rec = db.query_tuning_record(workload, target, "main")
    if rec is None or not rec.run_secs:
        return None
    secs = [float(s) for s in rec.run_secs]
    return 1e6 * sum(secs) / len(secs)


class _Progress:
    """A rich progress bar over trials, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled and total > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("tuning {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("trials"), TimeElapsedColumn(), transient=False)
            self.task = self.bar.add_task("", total=total)

    def __enter__(self) -> "_Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def kernel(self, name: str, i: int, n: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{name} ({i}/{n} kernels)")

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)


def tune(module: Module, target: TargetDict | None, trials: int, db_dir: str | os.PathLike, progress: bool = True,
         *, seed: int = 0, aot: bool = False, rpc: "RpcDevice | None" = None,
         hardware: Mapping[str, int] | None = None) -> TuneReport:
    """Tune the kernels of ``module`` that the database under ``db_dir`` lacks, with at most
    about ``trials`` measured candidates in all (see the module docstring for what is tuned
    and how the database is keyed). ``aot``: the kernels of its AOT program instead (the
    same, less the concats it drops, plus the one-channel kernels of in-place layers,
    weighted by their calls). ``rpc`` (``rpc.connect``): measure the candidates on the
    devices of a TVM RPC tracker instead of here (they are still built here; the database
    is the target's, as the device is that target). ``hardware``: the target's table from
    ``targets/*.toml``, what effc's schedules (the search's starting points) are made for.
    Returns a report; never raises for a kernel that fails to tune."""
    from .native import aot_cpu

    t0 = time.perf_counter()
    target = tuning_target(target)
    tvm_target = tvm.target.Target(target)
    cpu = aot_cpu(target, hardware) if aot else cpu_for(target, hardware)
    kernels = kernels_of(*aot_kernels(module, target, hardware)) if aot else kernels_of(kernel_module(module, target, hardware))
    db = open_database(db_dir, target)
    db_path = database_path(db_dir, target)
    records_before = len(db)
    for k in kernels:
        if k.status == "pending" and db.has_workload(k.workload):
            k.status = "reused"
    todo = [k for k in kernels if k.status == "pending"]
    plan = plan_budget(todo, trials)
    for k in todo:
        if k.name not in plan:
            k.status = "no budget"
    work = [k for k in todo if k.name in plan]
    report = TuneReport(kernels, 0, trials, 0.0, db_path, records_before, records_before)
    if work:
        try:
            _tune_kernels(work, plan, target, cpu, db, db_path, report, progress, seed, rpc)
        finally:
            _remember(db_path, db)
        if report.trials:
            db = compact_database(db_dir, target)
            if not aot and rpc is None:
                report.kept_default = check_in_model(module, target, db_dir, hardware)
    totals = _trial_totals(db_path, [k for k in kernels if k.trials])
    for k in kernels:
        k.best_us = _best_us(db, k.workload, tvm_target)
        k.trials_total = totals.get(_workload_key(k.workload), 0)
    report.records_after = len(db)
    report.seconds = time.perf_counter() - t0
    return report


def _tune_kernels(work: list[Kernel], plan: Mapping[str, int], target_dict: Mapping[str, Any], cpu: Cpu,
                  db: ms.database.Database, db_path: Path, report: TuneReport, progress: bool, seed: int,
                  rpc: "RpcDevice | None" = None) -> None:
    """Tune each kernel as its own MetaSchedule task (so one failure stops only that kernel),
    sharing the builder and runner processes, the cost model and the database. The runner
    measures here, or on ``rpc``'s devices (``rpc.make_runner``)."""
    _register_tensor_intrinsics(target_dict)
    target = tvm.target.Target(dict(target_dict))
    cores = int(target_dict["num-cores"])
    # candidates are measured with the threads the target is tuned for (TVM's own default
    # is half the cores); the runner process inherits this
    os.environ.setdefault("TVM_NUM_THREADS", str(cores))
    builder = WarmBuilder(max_workers=cores)
    if rpc is not None:
        from .rpc import make_runner

        runner = make_runner(rpc, RUN_TIMEOUT_S)
    else:
        runner = ms.runner.LocalRunner(timeout_sec=RUN_TIMEOUT_S)
    cost_model = ms.CostModel.create("xgb", num_tuning_cores=cores)
    bar = _Progress(progress, sum(plan[k.name] for k in work))
    counter = CountTrials(report, bar)
    callbacks = ms.MeasureCallback.create("default") + [counter]
    try:
        with bar:
            for i, kernel in enumerate(work, 1):
                bar.kernel(kernel.name, i, len(work))
                counter.kernel = kernel
                budget = plan[kernel.name]
                try:
                    seed_record(kernel, db, builder, runner, target, cpu)
                    with _task_logger(db_path / "logs", kernel) as logger:
                        ctx = ms.TuneContext(mod=kernel.workload, target=target, space_generator="post-order-apply",
                                             search_strategy=search_strategy(budget), task_name=kernel.name,
                                             rand_state=seed + i, num_threads=cores, logger=logger).clone()
                        ms.tune.tune_tasks(tasks=[ctx], task_weights=[float(kernel.calls)], work_dir=str(db_path),
                                           max_trials_global=budget, max_trials_per_task=budget,
                                           num_trials_per_iter=min(budget, 64), builder=builder, runner=runner,
                                           database=db, cost_model=cost_model, measure_callbacks=callbacks)
                    valid = db.query_tuning_record(kernel.workload, target, "main") is not None
                    kernel.status = "tuned" if valid else "failed: no candidate built and ran"
                except Exception as e:  # keep going: one kernel's failure must not stop the others
                    kernel.status = f"failed: {_last_line(e)}"
                    report.failures.append(f"{kernel.name}: {e}")
                    log.warning("tuning %s failed: %s", kernel.name, _last_line(e))
                if not db.has_workload(kernel.workload):
                    db.commit_workload(kernel.workload)  # attempted: a later tune does not retry it
    finally:
        builder.close()
        if rpc is not None:
            runner.pool.shutdown()


def seed_record(kernel: Kernel, db: ms.database.Database, builder: ms.Builder, runner: ms.Runner,
                target: tvm.target.Target, cpu: Cpu) -> float | None:
    """Measure effc's default schedule of ``kernel`` (``schedule.default_schedule``) with
    the tuning builder and runner and commit it to ``db`` as a tuning record, before
    MetaSchedule searches: the search starts from it (the evolutionary search seeds its
    population with the database's best records), and since a build takes each kernel's
    fastest record, a tuned build is never slower than the untuned one. Returns the
    measured seconds, or None when no rule applies or it did not build and run."""
    func = kernel.workload["main"]
    sch = default_schedule(func, cpu)
    if sch is None:
        return None
    built = builder.build([BuilderInput(sch.mod, target)])[0]
    if built.error_msg:
        log.warning("effc's schedule of %s did not build: %s", kernel.name, built.error_msg.splitlines()[-1:])
        return None
    args_info = ms.arg_info.ArgInfo.from_prim_func(func)
    device = "cpu" if target.kind.name in ("llvm", "c") else target.kind.name
    ran = runner.run([ms.runner.RunnerInput(built.artifact_path, device, args_info)])[0].result()
    if ran.error_msg or not ran.run_secs:
        log.warning("effc's schedule of %s did not run: %s", kernel.name, (ran.error_msg or "").splitlines()[-1:])
        return None
    secs = [float(x) for x in ran.run_secs]
    workload = db.commit_workload(kernel.workload)
    db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, secs, target, args_info))
    return min(secs)


def search_strategy(budget: int) -> ms.search_strategy.EvolutionarySearch:
    """MetaSchedule's evolutionary search, scaled to the kernel's budget. Its defaults
    (512 candidates evolved 4 times under the cost model) cost ~50 s per kernel on 2 cores
    before the first measurement; with a handful of trials that buys nothing, since the
    cost model has seen few measurements."""
    population = int(min(512, max(64, 8 * budget)))
    iters = 1 if budget <= 16 else 2 if budget <= 128 else 4
    return ms.search_strategy.EvolutionarySearch(population_size=population, genetic_num_iters=iters,
                                                 init_min_unmeasured=min(50, population // 2))


def _last_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1][:200] if lines else ''}"


@contextmanager
def _task_logger(folder: Path, kernel: Kernel) -> Iterator[logging.Logger]:
    """MetaSchedule's log for one kernel, written to ``<db>/logs/<kernel>-<hash>.log``
    rather than the console (the hash tells apart same-named kernels of different models)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = tvm_ffi.structural_hash(kernel.workload) & 0xFFFFFFFF
    logger = logging.getLogger(f"effc.tune.metaschedule.{kernel.name}-{digest:08x}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(folder / f"{kernel.name}-{digest:08x}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        handler.close()


# ----------------------------------------------------------------------------- build


def build_tuned(module: Module, target: TargetDict | None, db_dir: str | os.PathLike,
                hardware: Mapping[str, int] | None = None) -> Built:
    """``build()`` with the best schedules from the database applied to the kernels it holds
    (``MetaScheduleApplyDatabase`` between ``FuseTIR`` and TVM's default pipeline); kernels
    it lacks get effc's default schedules. The database is only read."""
    target = tuning_target(target)
    tvm_target = tvm.target.Target(target)
    cpu = cpu_for(target, hardware)
    make_kernels, lower_kernels = _pipeline_halves(cpu)
    mod = lower_to_relax(module, lanes=cpu.lanes)
    db = open_database(db_dir, target)
    with tvm.transform.PassContext(opt_level=3), tvm_target:
        mod = make_kernels(mod)
        with db:
            applied = relax.transform.MetaScheduleApplyDatabase()(mod)
        mod = _mark_scheduled(mod, applied, _prefer_default(db_dir, target))
        mod = lower_kernels(mod)
        executable = tvm.compile(mod, target=tvm_target, relax_pipeline=None)
    return Built(executable, Signature.of(module), target, mod)


PREFER_DEFAULT = "prefer_default.json"
"""Beside a database: the kernels (structural hashes) of models whose tuned build ran
slower than their untuned one (``check_in_model``); tuned builds keep effc's schedules
for them."""

IN_MODEL_MARGIN = 1.03
"""A tuned build is kept only when the model runs within this factor of its untuned time."""


def _kernel_hash(func: tirx.PrimFunc) -> str:
    return f"{tvm_ffi.structural_hash(func.without_attr('global_symbol')) & 0xFFFFFFFFFFFFFFFF:016x}"


def _prefer_default(db_dir: str | os.PathLike, target: TargetDict) -> set[str]:
    path = database_path(db_dir, target) / PREFER_DEFAULT
    return set(json.loads(path.read_text())) if path.is_file() else set()


def _model_ms(built: Built, other: Built, runs: int = 40) -> tuple[float, float]:
    """Median milliseconds of one ``main`` call of ``built`` and of ``other``, taking turns
    (ones and zeros as inputs: zero ids are in range for embeddings)."""
    def args_of(b: Built) -> list[Any]:
        return [tvm.runtime.tensor(np.ones([int(d) for d in t.shape], t.dtype.np) if t.dtype.is_float
                                   else np.zeros([int(d) for d in t.shape], t.dtype.np)) for _, t in b.signature.inputs]

    calls = []
    for b in (built, other):
        vm, args = relax.VirtualMachine(b.executable, tvm.cpu(0)), args_of(b)
        calls.append((vm["main"], args))
    times: list[list[float]] = [[], []]
    for _ in range(runs):
        for i, (fn, args) in enumerate(calls):
            t = time.perf_counter()
            fn(*args)
            times[i].append(time.perf_counter() - t)
    return 1e3 * float(np.median(times[0][3:])), 1e3 * float(np.median(times[1][3:]))


def check_in_model(module: Module, target: TargetDict | None, db_dir: str | os.PathLike,
                   hardware: Mapping[str, int] | None = None) -> list[str]:
    """Time ``module`` built untuned and tuned; when the tuned build is slower, record its
    kernels (``PREFER_DEFAULT``) so ``build_tuned`` keeps effc's schedules for them: tuning
    never ends slower than untuned. MetaSchedule times a kernel alone, run after run, with
    TVM's thread pool awake; in the model, kernels it parallelized pay the pool's wake-up
    and leave workers spinning beside the serial ones (mobilenet_tiny, 2 threads: tuned
    0.109 ms against 0.068 untuned before this check). Per model, not per kernel: the
    spinning slows the kernels after a parallel one, so per-kernel times do not add up.
    Returns the kernels kept at effc's schedule."""
    target = tuning_target(target)
    if any(not isinstance(d, int) for _, t in Signature.of(module).inputs for d in t.shape):
        return []
    untuned_ms, tuned_ms = _model_ms(build(module, target, hardware=hardware),
                                     build_tuned(module, target, db_dir, hardware))
    if tuned_ms <= IN_MODEL_MARGIN * untuned_ms:
        return []
    funcs = {gv.name_hint: f for gv, f in kernel_module(module, target, hardware).functions.items()
             if isinstance(f, tirx.PrimFunc)}
    prefer = _prefer_default(db_dir, target) | {_kernel_hash(f) for f in funcs.values()}
    (database_path(db_dir, target) / PREFER_DEFAULT).write_text(json.dumps(sorted(prefer)))
    log.info("tuned build %.3f ms, untuned %.3f ms: kept effc's schedules for the model's %d kernels",
             tuned_ms, untuned_ms, len(funcs))
    return sorted(funcs)


def _mark_scheduled(before: tvm.IRModule, after: tvm.IRModule, prefer_default: set[str] = frozenset()) -> tvm.IRModule:
    """``after`` with the PrimFuncs the database scheduled marked as scheduled, so effc's
    default schedules take only the others (MetaScheduleApplyDatabase marks nothing); a
    kernel in ``prefer_default`` goes back to its unscheduled form (effc's schedule)."""
    for gv, func in list(after.functions.items()):
        if isinstance(func, tirx.PrimFunc) and gv in before.functions and not tvm_ffi.structural_equal(
                func, before[gv]):
            after[gv] = before[gv] if _kernel_hash(before[gv]) in prefer_default else func.with_attr(SCHEDULED, True)
    return after


def clear_database(db_dir: str | os.PathLike, target: TargetDict | None = None) -> None:
    """Remove the database for ``target`` (or every target's) under ``db_dir``."""
    path = Path(db_dir) / target_key(target) if target is not None else Path(db_dir)
    shutil.rmtree(path, ignore_errors=True)
