"""``effc explore``: a sweep of compression configurations of one model for one target, each
built and measured; the pareto front of quality against latency, size and memory; and the
deployment chosen under constraints.

A configuration (``Config``) combines, in this order: structured pruning at a ratio (with
the least-squares refit), a substitution search (``substitute{objective=latency|memory}``),
and int8 quantization, per tensor or per channel, with or without DFQ's equalization and
bias correction, of every layer or of as many as keep the quality within a budget of the
float model's (mixed precision: ``quantize_within`` puts the most sensitive layers back in
float). int8 is lowered to the integer ops the target runs (``qdq-to-integer`` in the
target's rounding). ``default_configs(target)`` is the grid.

Each configuration is run in two phases:

1. **Prepare** (in ``jobs`` worker processes at once): applied to the folded model, its
   quality scored by the reference interpreter on the evaluation samples (top-1 against
   labels, or top-1 agreement with the float model without them, or a metric callable),
   its size counted (weight bytes of the ``-O2`` model: int8 weights count one byte). On
   a Cortex-M target it is also built and run under qemu: instructions per inference
   (``-icount``: deterministic, so workers running side by side do not disturb it) and the
   ELF's flash, SRAM and arena. The module is saved as ``configs/<name>.effc``.
2. **Time** (x86, or any target on a TVM RPC device): every configuration left without a
   latency is built and timed in one process, the builds taking turns
   (``LatencyMeter``: alternating blocks of runs, so the machine's drift falls on all
   alike); on an RPC device, there, on as many of its servers at once as are free.

Every configuration's figures are written to ``DIR/configs/<name>.json`` as they are
known, so a rerun reuses them (resumable). ``DIR/pareto.json`` holds every configuration
and whether it is on the front, ``DIR/report.md`` the table and the pictures
(``quality-latency.png``, ``quality-size.png``, ``quality-sram.png`` on microcontrollers;
matplotlib). A configuration is on the front when no other is at least as good on every
axis and better on one.

``choose`` picks the best quality among the configurations within ``Constraints``
(``--max-latency``, ``--max-size``, ``--max-flash``, ``--max-sram``, ``--max-drop``), builds
it for the target with the board's own budgets, exports it to ``DIR/chosen/`` and measures
it again; a configuration that fails a constraint when re-measured is set aside for the
next. When nothing meets the constraints, ``NothingFits`` says which failed and by how
much.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.ir.parser import copy_module

AXES = {"quality": "max", "latency": "min", "size": "min", "sram": "min"}
"""The pareto axes and their direction; ``sram`` only where the target reports it."""
HUGE = 1 << 30
"""Flash and SRAM budgets of the sweep's builds: every configuration gets its figures,
whether or not it fits the board (``choose`` builds the chosen one within the board's)."""

Progress = Callable[[str, int], Callable[[], None]]
"""``progress(label, total)`` -> the function that advances that task by one."""


@dataclass(frozen=True)
class Config:
    name: str
    quantize: str | None = None
    """``per-tensor`` or ``per-channel`` int8, or None (float)."""
    dfq: bool = True
    max_drop: float | None = None
    """Mixed precision: the quality (in the metric's units) int8 may lose against float;
    the most sensitive layers stay float until it holds. None: every layer int8."""
    prune: float = 0.0
    """Ratio of each group of coupled channels removed (with the refit), 0: none."""
    substitute: str | None = None
    """``latency`` or ``memory``: the substitution search's objective, None: no search."""


def default_configs(target: str = "x86") -> list[Config]:
    """The grid: float; int8 per tensor and per channel, with and without DFQ; mixed
    precision at 0, 0.5 and 1 point; pruning at 25 and 50%, alone and with int8; the
    substitution search (latency; memory too on microcontrollers, with int8 after it)."""
    grid = [
        Config("float"),
        Config("int8-per-tensor", "per-tensor"),
        Config("int8-per-tensor-no-dfq", "per-tensor", dfq=False),
        Config("int8-per-channel", "per-channel"),
        Config("int8-per-channel-no-dfq", "per-channel", dfq=False),
        Config("mixed-0", "per-tensor", max_drop=0.0),
        Config("mixed-0.5", "per-tensor", max_drop=0.5),
        Config("mixed-1", "per-tensor", max_drop=1.0),
        Config("prune-25", prune=0.25),
        Config("prune-50", prune=0.5),
        Config("prune-25+int8", "per-channel", prune=0.25),
        Config("prune-50+int8", "per-channel", prune=0.5),
        Config("substitute-latency", substitute="latency"),
    ]
    if _mcu(target):
        grid += [Config("substitute-memory", substitute="memory"),
                 Config("substitute-memory+int8", "per-channel", substitute="memory")]
    return grid


def select_configs(target: str, names: str | Sequence[str]) -> list[Config]:
    """The configurations of ``default_configs(target)`` named (a list, or comma-separated),
    in the order given; InputError naming the grid for an unknown name."""
    grid = {c.name: c for c in default_configs(target)}
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    unknown = [n for n in wanted if n not in grid]
    if unknown or not wanted:
        raise InputError(f"--configs: {', '.join(unknown) or 'none given'} is not in the grid for {target}; "
                         f"it has {', '.join(grid)}")
    return [grid[n] for n in dict.fromkeys(wanted)]


@dataclass
class Point:
    config: Config
    quality: float
    latency: float | None
    latency_unit: str
    size: int
    flash: int | None = None
    sram: int | None = None
    arena: int | None = None
    detail: str = ""
    """What the configuration did beyond its name (layers kept float, rules applied)."""
    on_front: bool = False

    def axis(self, name: str) -> float | None:
        return getattr(self, name)

    def to_json(self) -> dict:
        d = asdict(self)
        d["config"] = asdict(self.config)
        return d

    @staticmethod
    def from_json(d: Mapping) -> "Point":
        d = dict(d)
        d["config"] = Config(**d["config"])
        return Point(**d)


def dominates(a: Point, b: Point, axes: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` on every axis and better on one."""
    better = False
    for name in axes:
        x, y = a.axis(name), b.axis(name)
        if x is None or y is None:
            continue
        if AXES[name] == "min":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def mark_front(points: list[Point], axes: Sequence[str]) -> None:
    for p in points:
        p.on_front = not any(dominates(q, p, axes) for q in points if q is not p)


def _target_ctx(target: str):
    """What ``effc compile`` gives passes of the target: its rounding, how ``substitute``
    measures on it."""
    from effc.optimize import target_options
    from effc.passes.base import PassContext

    return PassContext(target=target, options=target_options(target))


def apply_config(model: Module, config: Config, calib: Mapping[str, np.ndarray], target: str,
                 metric: Callable[[Module], float] | None = None) -> tuple[Module, str]:
    """A copy of ``model`` (already folded) with ``config`` applied, and what was done beyond
    the name; int8 as the target's integer kernels compute it (``qdq-to-integer`` in the
    target's rounding). Mixed precision needs ``metric``."""
    from effc.passes.pipeline import run_pipeline
    from effc.passes.prune import prune
    from effc.passes.quantize import QuantizeOptions, quantize
    from effc.passes.quantize_search import quantize_within

    m = copy_module(model)
    notes = []
    if config.prune:
        prune(m, config.prune, samples=dict(calib))
    if config.substitute:
        ctx = _target_ctx(target)
        run_pipeline(m, f"substitute{{objective={config.substitute}}}", ctx)
        report = ctx.options.get("substitute_report")
        applied = report.rules_applied if report and report.kept else ""
        notes.append(f"rules: {applied}" if applied else "no rule kept")
    if config.quantize is not None:
        options = QuantizeOptions(per_channel=config.quantize == "per-channel", equalize=config.dfq,
                                  bias_correction=config.dfq)
        if config.max_drop is None:
            quantize(m, calib, options, measure=False)
        else:
            if metric is None:
                raise InputError(f"configuration {config.name}: mixed precision needs a quality metric")
            _, search = quantize_within(m, calib, metric, config.max_drop, options)
            kept = search.in_float
            shown = ", ".join(kept[:2]) + (f" and {len(kept) - 2} more" if len(kept) > 2 else "")
            notes.append(f"{len(kept)} layer{'s' * (len(kept) != 1)} float" + (f": {shown}" if kept else ""))
        run_pipeline(m, "qdq-to-integer,dce", _target_ctx(target))
    return m, "; ".join(notes)


def _optimized_size(module: Module) -> int:
    from effc.passes.pipeline import run_pipeline

    optimized = copy_module(module)
    run_pipeline(optimized, "O2")
    return optimized.weight_bytes()


def _mcu_figures(module: Module, target: str, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Instructions per inference under qemu, and the ELF's flash, SRAM and arena."""
    import effc

    built = effc.compile(copy_module(module), target=target, input_shapes={k: v.shape for k, v in feeds.items()},
                         flash=HUGE, sram=HUGE)._built
    built.run(feeds, count_instructions=True)
    return {"latency": int(built.last_run_instructions), "flash": built.memory.flash, "sram": built.memory.sram,
            "arena": built.arena_bytes}


@dataclass
class _Job:
    """One configuration's prepare phase, as a worker process receives it (cloudpickled)."""

    base: Module
    config: Config
    target: str
    calib: Mapping[str, np.ndarray]
    one: Mapping[str, np.ndarray]
    score: Callable[[Module], float]
    folder: Path
    mcu: bool
    fingerprint: str


def _prepare(job: _Job) -> Point:
    from effc.models import save_model

    module, detail = apply_config(job.base, job.config, job.calib, job.target, job.score)
    point = Point(job.config, float(job.score(module)), None, "instructions" if job.mcu else "ms",
                  _optimized_size(module), detail=detail)
    save_model(module, job.folder / f"{job.config.name}.effc")
    if job.mcu:
        for k, v in _mcu_figures(module, job.target, job.one).items():
            setattr(point, k, v)
    _save(point, job.folder, job.fingerprint)
    return point


def _save(point: Point, folder: Path, fingerprint: str) -> None:
    doc = {"fingerprint": fingerprint, **point.to_json()}
    (folder / f"{point.config.name}.json").write_text(json.dumps(doc, indent=1))


def _reused(folder: Path, config: Config, fingerprint: str) -> Point | None:
    """The saved point of ``config``, if it was measured on the same model, target and data."""
    saved = folder / f"{config.name}.json"
    if not saved.exists() or not (folder / f"{config.name}.effc").exists():
        return None
    doc = json.loads(saved.read_text())
    if doc.pop("fingerprint", None) != fingerprint:
        return None
    point = Point.from_json(doc)
    return point if point.config == config else None


def fingerprint(base: Module, target: str, *arrays: Mapping[str, np.ndarray] | np.ndarray | None) -> str:
    """What a saved configuration was measured on: the model (weights included), the target,
    the calibration and evaluation samples and the labels. A metric callable cannot be
    told apart: give another DIR when it changes."""
    import hashlib

    from effc.passes.substitute.search import graph_hash

    h = hashlib.sha1(f"{graph_hash(base.graph)} {target}".encode())
    for a in arrays:
        items = sorted(a.items()) if isinstance(a, Mapping) else [("", a)]
        for k, v in items:
            if v is not None:
                v = np.ascontiguousarray(v)
                h.update(f"{k}{v.dtype}{v.shape}".encode())
                h.update(v.tobytes())
    return h.hexdigest()[:16]


WORKER_MARK = "\x1eeffc-explore-worker:"
"""Starts the one line of a worker's stdout that is its reply (libraries may print too)."""


def _run_prepares(jobs: list[_Job], workers: int, done: Callable[[Point], None],
                  failed: Callable[[Config, str], None]) -> None:
    """Prepare every job: here, one after another, or in ``workers`` processes at once
    (``python -m effc.explore --worker``, each taking jobs until none is left). A job that
    fails with effc's error (a model the configuration cannot apply to) is reported to
    ``failed``; the others go on."""
    from effc.ir.errors import EffcError

    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                done(_prepare(job))
            except EffcError as e:
                failed(job.config, str(e))
        return
    import subprocess
    import sys
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import cloudpickle

    queue = list(jobs)
    lock = threading.Lock()

    def slot() -> None:
        # a process of its own, not multiprocessing's: a spawned child re-imports the
        # caller's __main__, which a script without a main guard cannot survive
        proc = subprocess.Popen([sys.executable, "-m", "effc.explore", "--worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    job = queue.pop(0)
                blob = cloudpickle.dumps(job)
                proc.stdin.write(len(blob).to_bytes(8, "little") + blob)
                proc.stdin.flush()
                reply = None
                for raw in proc.stdout:
                    line = raw.decode(errors="replace")
                    if line.startswith(WORKER_MARK):
                        reply = json.loads(line[len(WORKER_MARK):])
                        break
                with lock:
                    if reply is None:
                        failed(job.config, f"its worker process ended (exit code {proc.wait()})")
                        return
                    if "error" in reply:
                        failed(job.config, reply["error"])
                    else:
                        done(Point.from_json(reply["point"]))
        finally:
            if proc.stdin:
                proc.stdin.close()
            proc.wait()

    with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
        for f in [pool.submit(slot) for _ in range(min(workers, len(jobs)))]:
            f.result()


def _worker() -> None:
    """``python -m effc.explore --worker``: prepare the jobs read from stdin (length, then
    the cloudpickled ``_Job``), one reply line on stdout each."""
    import pickle
    import sys

    from effc.ir.errors import EffcError

    source = sys.stdin.buffer
    while head := source.read(8):
        job = pickle.loads(source.read(int.from_bytes(head, "little")))
        try:
            reply = {"point": _prepare(job).to_json()}
        except EffcError as e:
            reply = {"error": str(e)}
        sys.stdout.write(WORKER_MARK + json.dumps(reply) + "\n")
        sys.stdout.flush()


def explore(model: Module, target: str, calib: Mapping[str, np.ndarray], evaluate: Mapping[str, np.ndarray],
            out_dir: str | Path, *, labels: np.ndarray | None = None, output: str | None = None,
            metric: Callable[[Module], float] | None = None, configs: Sequence[Config] | None = None,
            jobs: int = 1, rpc: Any = None, progress: Progress | None = None,
            log: Callable[[str], None] | None = None, name: str = "") -> list[Point]:
    """Sweep ``configs`` (default: ``default_configs(target)``) of ``model`` for ``target``;
    see the module docstring. ``jobs``: configurations prepared at once in worker
    processes (``metric`` must then be picklable by cloudpickle). ``rpc``: an
    ``effc.codegen.rpc.RpcDevice`` running the target's libraries, where latency is timed.
    ``name``: the model's, in the pictures' titles and ``pareto.json``. Returns every
    configuration's point, the front marked."""
    points, fq, _ = _sweep(model, target, calib, evaluate, out_dir, labels, output, metric, configs, jobs, rpc,
                           progress, log)
    write_outputs(points, target, Path(out_dir), fq, name=name)
    return points


def _sweep(model: Module, target: str, calib: Mapping[str, np.ndarray], evaluate: Mapping[str, np.ndarray],
           out_dir: str | Path, labels: np.ndarray | None, output: str | None,
           metric: Callable[[Module], float] | None, configs: Sequence[Config] | None, jobs: int, rpc: Any,
           progress: Progress | None, log: Callable[[str], None] | None
           ) -> tuple[list[Point], float, Callable[[Module], float]]:
    """``explore`` but for writing its outputs: the points (front not yet marked), the
    float model's quality, and the score."""
    from effc.latency import LatencyMeter
    from effc.models import load_model
    from effc.passes.pipeline import run_pipeline
    from effc.passes.quantize_search import top1_metric
    from effc.passes.substitute.search import graph_hash

    say = log or (lambda s: None)
    if rpc is not None and _mcu(target):
        raise InputError(f"--rpc times the libraries a device loads (x86 builds); {target} programs are measured "
                         "under qemu here: leave out --rpc")
    configs = list(configs or default_configs(target))
    if len({c.name for c in configs}) != len(configs):
        raise InputError("configuration names must be unique")
    out = Path(out_dir)
    folder = out / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    base = copy_module(model)
    run_pipeline(base, "fold")
    score = metric or top1_metric(base, evaluate, output, labels)
    one = {k: np.ascontiguousarray(v[:1]) for k, v in evaluate.items()}
    meter = LatencyMeter(target, one, reps=400, max_seconds=2.0, rounds=40, device=rpc) if rpc or not _mcu(target) \
        else None
    mcu = meter is None
    fp = fingerprint(base, target, calib, evaluate, labels)
    points: dict[str, Point] = {}
    todo = []
    for config in configs:
        point = _reused(folder, config, fp)
        if point is not None:
            points[config.name] = point
            say(f"{config.name}: reused {folder / (config.name + '.json')}")
        else:
            todo.append(_Job(base, config, target, calib, one, score, folder, mcu, fp))
    advance = progress("prepare", len(todo)) if progress and todo else (lambda: None)

    def done(point: Point) -> None:
        points[point.config.name] = point
        say(f"{point.config.name}: quality {point.quality:.2f}, {point.size:,} weight bytes"
            + (f", {point.latency:,} instructions, flash {point.flash:,}, SRAM {point.sram:,}" if mcu else "")
            + (f" ({point.detail})" if point.detail else ""))
        advance()

    failures: dict[str, str] = {}

    def failed(config: Config, why: str) -> None:
        failures[config.name] = why.splitlines()[0] if why else "failed"
        say(f"{config.name}: not measured: {failures[config.name]}")
        advance()

    _run_prepares(todo, jobs, done, failed)
    configs = [c for c in configs if c.name in points]
    if not configs:
        raise InputError("no configuration could be applied to the model: " +
                         "; ".join(f"{k}: {v}" for k, v in failures.items()))
    untimed = [c.name for c in configs if points[c.name].latency is None]
    if untimed:
        how = f"on {rpc.label}, on up to {rpc.free or rpc.servers} servers at once" if rpc else \
            "here, the builds taking turns"
        say(f"timing {len(untimed)} configuration{'s' * (len(untimed) != 1)} {how}")
        tick = progress("build and time", len(untimed)) if progress else (lambda: None)
        # configurations that came out as the same kernels (a search that kept nothing, a
        # mixed precision that kept every layer int8, DFQ's other weights) are timed once: a
        # dense build's time does not depend on the values of its weights
        first: dict[str, str] = {}
        timed_as: dict[str, str] = {}
        modules: dict[str, Module] = {}
        for cname in untimed:
            module = load_model(folder / f"{cname}.effc")
            timed_as[cname] = first.setdefault(graph_hash(module.graph, weights=False), cname)
            if timed_as[cname] == cname:
                modules[cname] = module
            else:
                same = f"timed as {timed_as[cname]} (the same kernels)"
                points[cname].detail = "; ".join(filter(None, [points[cname].detail, same]))
                tick()
        costs = dict(zip(modules, meter(list(modules.values()), built=tick)))
        for cname in untimed:
            cost = costs[timed_as[cname]]
            points[cname].latency, points[cname].latency_unit = cost, meter.unit
            _save(points[cname], folder, fp)
            say(f"{cname}: {cost:.4g} {meter.unit}")
    result = [points[c.name] for c in configs]
    (out / "failures.json").write_text(json.dumps(failures, indent=1))
    return result, _float_quality(result, base, score), score


def _mcu(target: str) -> bool:
    from effc.targets import get_target

    return get_target(target).runner == "qemu-system-arm"


def _float_quality(points: Sequence[Point], base: Module, score: Callable[[Module], float]) -> float:
    for p in points:
        if p.config == Config(p.config.name):
            return p.quality
    return float(score(base))


def write_outputs(points: list[Point], target: str, out: Path, float_quality: float,
                  chosen: "Choice | None" = None, name: str = "") -> list[str]:
    """Mark the front; write ``pareto.json``, the pictures and ``report.md``; the axes used."""
    axes = [a for a in AXES if all(p.axis(a) is not None for p in points)]
    mark_front(points, axes)
    doc = {"model": name, "target": target, "axes": axes, "float_quality": float_quality,
           "points": [p.to_json() for p in points]}
    if chosen is not None:
        doc["chosen"] = chosen.to_json()
    (out / "pareto.json").write_text(json.dumps(doc, indent=1))
    failed = json.loads((out / "failures.json").read_text()) if (out / "failures.json").exists() else {}
    if failed:
        doc["not_measured"] = failed
        (out / "pareto.json").write_text(json.dumps(doc, indent=1))
    pictures = plot(points, axes, out, chosen.point.config.name if chosen and chosen.point else None,
                    title=f"{name}, {target}" if name else target)
    (out / "report.md").write_text(report(points, target, axes, float_quality, pictures, chosen, failed, name))
    return axes


AXIS_LABELS = {"latency": "latency", "size": "weight bytes", "sram": "SRAM (bytes)"}


def plot(points: Sequence[Point], axes: Sequence[str], out: Path, chosen: str | None = None,
         title: str = "") -> list[str]:
    """``quality-<axis>.png`` for each axis besides quality: every configuration a point
    named by its configuration; those on the front (over all axes) filled, the others
    hollow; the chosen one ringed. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for axis in [a for a in axes if a != "quality"]:
        fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
        unit = points[0].latency_unit if axis == "latency" else ""
        for front, style in ((False, dict(facecolors="none", edgecolors="0.55", s=36, label="dominated")),
                             (True, dict(color="tab:blue", s=46, label="on the pareto front"))):
            sel = [p for p in points if p.on_front == front]
            if sel:
                ax.scatter([p.axis(axis) for p in sel], [p.quality for p in sel], zorder=3, **style)
        front = sorted((p for p in points if p.on_front), key=lambda p: p.axis(axis))
        best = -math.inf
        steps = []
        for p in front:  # the 2-D front of this view: quality rising with cost
            if p.quality > best:
                steps.append(p)
                best = p.quality
        if len(steps) > 1:
            ax.step([p.axis(axis) for p in steps], [p.quality for p in steps], where="post", color="tab:blue",
                    alpha=0.35, zorder=2)
        spots: dict[tuple[float, float], list[Point]] = {}
        for p in points:  # configurations with the same figures share one label
            spots.setdefault((p.axis(axis), p.quality), []).append(p)
        low = min(p.axis(axis) for p in points)
        span = (max(p.axis(axis) for p in points) - low) or 1.0
        qs = [p.quality for p in points]
        qspan = (max(qs) - min(qs)) or 1.0
        placed: list[tuple[float, float, int]] = []
        for (x, y), group in sorted(spots.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
            # the first text line free of the labels of points close by
            used = {lv for px, py, lv in placed if abs(px - x) < 0.45 * span and abs(py - y) < 0.05 * qspan}
            level = min(set(range(len(used) + 1)) - used)
            placed.append((x, y, level))
            right = x - low > 0.55 * span  # labels of the right part go to the left of their point
            alike = [p.config.name for p in group]
            text = ", ".join(alike[:2]) + (f" +{len(alike) - 2} alike" if len(alike) > 2 else "")
            ax.annotate(text, (x, y), fontsize=7, ha="right" if right else "left",
                        xytext=(-4 if right else 4, 3 - 9 * level), textcoords="offset points",
                        color="black" if any(p.on_front for p in group) else "0.45")
        for p in points:
            if p.config.name == chosen:
                ax.scatter([p.axis(axis)], [p.quality], s=180, facecolors="none", edgecolors="tab:red",
                           linewidths=1.8, zorder=4, label="chosen")
        ax.set_xlabel(AXIS_LABELS[axis] + (f" ({unit})" if unit else ""))
        ax.set_ylabel("quality")
        ax.set_title(f"{title}: quality against {AXIS_LABELS[axis]}\n(filled: on the pareto front over "
                     f"{', '.join(axes)})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        name = f"quality-{axis}.png"
        fig.savefig(out / name)
        plt.close(fig)
        names.append(name)
    return names


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.4g}"
    return f"{int(value):,}"


def report(points: Sequence[Point], target: str, axes: Sequence[str], float_quality: float,
           pictures: Sequence[str] = (), chosen: "Choice | None" = None, failed: Mapping[str, str] = {},
           name: str = "") -> str:
    unit = points[0].latency_unit if points else ""
    mcu = any(p.sram is not None for p in points)
    head = ["configuration", "quality", "drop", f"latency ({unit})", "weight bytes"] + (
        ["flash", "SRAM", "arena"] if mcu else []) + ["on the front", "detail"]
    lines = [f"# effc explore: {name + ', ' if name else ''}{target}", "",
             f"Pareto axes: {', '.join(axes)} (quality higher is better, the others lower). "
             f"Float quality {float_quality:.2f}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        row = [p.config.name, f"{p.quality:.2f}", f"{float_quality - p.quality:+.2f}", _fmt(p.latency, unit),
               f"{p.size:,}"]
        if mcu:
            row += [_fmt(p.flash), _fmt(p.sram), _fmt(p.arena)]
        lines.append("| " + " | ".join(row + ["yes" if p.on_front else "", p.detail]) + " |")
    if failed:
        lines += ["", "Not measured (the configuration does not apply to this model):", "",
                  *[f"- {name}: {why}" for name, why in failed.items()]]
    if pictures:
        lines += ["", *[f"![{name}]({name})" for name in pictures]]
    if chosen is not None:
        lines += ["", "## Chosen", "", chosen.text()]
    return "\n".join(lines) + "\n"


# --- choosing under constraints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraints:
    max_latency: float | None = None
    """In the target's unit: ms (x86, RPC devices) or instructions (Cortex-M)."""
    max_size: int | None = None
    max_flash: int | None = None
    max_sram: int | None = None
    max_drop: float | None = None
    """Quality below the float model's, in the metric's units (points of top-1)."""

    def given(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def failures(self, figures: Mapping[str, float | None], float_quality: float) -> list["Failure"]:
        """Each constraint ``figures`` break (``latency``, ``size``, ``flash``, ``sram``, ``quality``)."""
        out = []
        for limit, key in (("max_latency", "latency"), ("max_size", "size"), ("max_flash", "flash"),
                           ("max_sram", "sram")):
            bound = getattr(self, limit)
            value = figures.get(key)
            if bound is not None and (value is None or value > bound):
                out.append(Failure(limit, value, bound))
        if self.max_drop is not None:
            drop = float_quality - figures["quality"]
            if drop > self.max_drop + 1e-9:
                out.append(Failure("max_drop", drop, self.max_drop))
        return out


@dataclass(frozen=True)
class Failure:
    constraint: str
    value: float | None
    bound: float

    def text(self, unit: str = "") -> str:
        flag = "--" + self.constraint.replace("_", "-")
        unit = f" {unit}" if self.constraint == "max_latency" and unit else (
            " points" if self.constraint == "max_drop" else (" bytes" if self.constraint != "max_latency" else ""))
        if self.value is None:
            return f"{flag} {self.bound:g}{unit}: the target reports no such figure"
        over = self.value - self.bound
        rel = f" ({100 * over / self.bound:.1f}%)" if self.bound and self.constraint != "max_drop" else ""
        return f"{flag} {self.bound:,.6g}{unit}: {self.value:,.6g}{unit}, {over:,.6g}{unit} over{rel}"


class NothingFits(InputError):
    """No configuration meets the constraints; the message says which failed by how much."""


@dataclass
class Choice:
    point: Point | None
    remeasured: dict[str, float | None] = field(default_factory=dict)
    artifact: str | None = None
    """The exported artifact's folder, relative to the sweep's DIR (``chosen``): reports
    that are moved or committed name no machine's paths."""
    set_aside: list[str] = field(default_factory=list)
    """Configurations within the constraints in the sweep that failed one when re-measured."""
    constraints: Constraints = field(default_factory=Constraints)
    unit: str = ""

    def to_json(self) -> dict:
        return {"config": self.point.config.name if self.point else None, "remeasured": self.remeasured,
                "artifact": self.artifact, "set_aside": self.set_aside, "constraints": asdict(self.constraints)}

    def text(self) -> str:
        c = self.constraints
        limits = ", ".join(f"--{f.name.replace('_', '-')} {getattr(c, f.name):,.6g}" for f in fields(c)
                           if getattr(c, f.name) is not None) or "none"
        if self.point is None:
            return f"Constraints: {limits}. Nothing chosen."
        r = self.remeasured
        lines = [f"Constraints: {limits}.", "",
                 f"Chosen: **{self.point.config.name}** (the best quality within them), re-measured from its "
                 f"artifact `{self.artifact}/`: quality {r['quality']:.2f}, latency {_fmt(r['latency'], self.unit)} "
                 f"{self.unit}, {int(r['size']):,} weight bytes"
                 + (f", flash {int(r['flash']):,}, SRAM {int(r['sram']):,}" if r.get("flash") is not None else "")
                 + ": every constraint holds."]
        for s in self.set_aside:
            lines.append(f"- set aside: {s}")
        return "\n".join(lines)


def _figures(p: Point) -> dict[str, float | None]:
    return {"quality": p.quality, "latency": p.latency, "size": p.size, "flash": p.flash, "sram": p.sram}


def why_nothing_fits(points: Sequence[Point], constraints: Constraints, float_quality: float) -> str:
    """Which constraints fail, each with the configuration that comes closest to it, and
    the configuration that fails the fewest (by the least) with its failures."""
    unit = points[0].latency_unit if points else ""
    lines = ["no configuration meets the constraints:"]
    for f in fields(constraints):
        if getattr(constraints, f.name) is None:
            continue
        single = Constraints(**{f.name: getattr(constraints, f.name)})
        fails = [(p, single.failures(_figures(p), float_quality)) for p in points]
        if all(fs for _, fs in fails):
            p, fs = min(fails, key=lambda pf: pf[1][0].value if pf[1][0].value is not None else math.inf)
            lines.append(f"  {fs[0].text(unit)} (the closest, {p.config.name}); no configuration meets it")

    def distance(pf):
        return (len(pf[1]), sum((x.value - x.bound) / (abs(x.bound) or 1.0) if x.value is not None else math.inf
                                for x in pf[1]))

    p, fs = min(((p, constraints.failures(_figures(p), float_quality)) for p in points), key=distance)
    lines.append(f"  closest: {p.config.name}, which fails " + "; ".join(x.text(unit) for x in fs))
    return "\n".join(lines)


def choose(points: list[Point], constraints: Constraints, model_dir: str | Path, target: str,
           score: Callable[[Module], float], feeds: Mapping[str, np.ndarray], float_quality: float,
           rpc: Any = None, log: Callable[[str], None] | None = None) -> Choice:
    """The best-quality configuration within ``constraints`` (ties: the faster, then the
    smaller), built for ``target`` within the board's budgets, exported to
    ``DIR/chosen`` and re-measured; NothingFits when none meets them (after re-measuring)."""
    import effc
    from effc.codegen.cortex_m import BudgetError
    from effc.latency import LatencyMeter
    from effc.models import load_model

    say = log or (lambda s: None)
    out = Path(model_dir)
    unit = points[0].latency_unit if points else ""
    fitting = [p for p in points if not constraints.failures(_figures(p), float_quality)]
    fitting.sort(key=lambda p: (-p.quality, p.latency if p.latency is not None else math.inf, p.size))
    aside = []
    for p in fitting:
        module = load_model(out / "configs" / f"{p.config.name}.effc")
        shapes = {k: v.shape for k, v in feeds.items()}
        try:
            built = effc.compile(copy_module(module), target=target, input_shapes=shapes)
        except BudgetError as e:
            aside.append(f"{p.config.name}: does not fit the board ({str(e).splitlines()[0]})")
            continue
        figures: dict[str, float | None] = {"quality": float(score(module)), "size": _optimized_size(module)}
        if unit == "instructions":
            built._built.run(feeds, count_instructions=True)
            figures.update(latency=float(built._built.last_run_instructions), flash=built._built.memory.flash,
                           sram=built._built.memory.sram)
        else:
            meter = LatencyMeter(target, feeds, reps=400, max_seconds=2.0, rounds=40, device=rpc)
            figures["latency"] = meter([module])[0]
        fails = constraints.failures(figures, float_quality)
        if fails:
            aside.append(f"{p.config.name}: re-measured, " + "; ".join(f.text(unit) for f in fails))
            say(aside[-1])
            continue
        artifact = out / "chosen"
        built.export(artifact)
        say(f"chosen: {p.config.name}, exported to {artifact}")
        return Choice(p, figures, artifact.name, aside, constraints, unit)
    message = why_nothing_fits(points, constraints, float_quality)
    if aside:
        message += "\n  set aside when re-measured: " + "; ".join(aside)
    raise NothingFits(message)


def explore_and_choose(model: Module, target: str, calib: Mapping[str, np.ndarray],
                       evaluate: Mapping[str, np.ndarray], out_dir: str | Path, constraints: Constraints, *,
                       labels: np.ndarray | None = None, output: str | None = None,
                       metric: Callable[[Module], float] | None = None, configs: Sequence[Config] | None = None,
                       jobs: int = 1, rpc: Any = None, progress: Progress | None = None,
                       log: Callable[[str], None] | None = None, name: str = ""
                       ) -> tuple[list[Point], Choice | None]:
    """``explore``, then ``choose`` under ``constraints`` (when any is given); the report and
    ``pareto.json`` say what was chosen. NothingFits (after writing them) when nothing does."""
    _check_constraints(constraints, target)
    points, fq, score = _sweep(model, target, calib, evaluate, out_dir, labels, output, metric, configs, jobs, rpc,
                               progress, log)
    out = Path(out_dir)
    if not constraints.given():
        write_outputs(points, target, out, fq, name=name)
        return points, None
    one = {k: np.ascontiguousarray(v[:1]) for k, v in evaluate.items()}
    try:
        choice = choose(points, constraints, out, target, score, one, fq, rpc, log)
    except NothingFits as e:
        write_outputs(points, target, out, fq, Choice(None, constraints=constraints), name)
        with open(out / "report.md", "a") as f:
            f.write("\n" + "\n".join("    " + line for line in str(e).splitlines()) + "\n")
        raise
    write_outputs(points, target, out, fq, choice, name)
    return points, choice


def _check_constraints(c: Constraints, target: str) -> None:
    """Constraints the target can be held to (before any work)."""
    if not _mcu(target) and (c.max_flash is not None or c.max_sram is not None):
        raise InputError("--max-flash and --max-sram apply to microcontroller targets (their ELF's flash and SRAM); "
                         "use --max-size for the weight bytes")
    for f in fields(c):
        v = getattr(c, f.name)
        if v is not None and v < 0:
            raise InputError(f"--{f.name.replace('_', '-')} must be >= 0, got {v}")


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


__all__ = ["Config", "Point", "Constraints", "Choice", "NothingFits", "default_configs", "select_configs",
           "apply_config", "dominates",
           "mark_front", "explore", "choose", "explore_and_choose", "why_nothing_fits", "report", "plot",
           "write_outputs", "default_jobs"]


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--worker"]:
        _worker()
