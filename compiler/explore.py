"""``effc explore`` (first part): a sweep of compression configurations of one model for one
target, each built and measured, and the pareto front of quality against latency, size and
memory.

A configuration (``Config``) is a float model, or int8 quantization (per tensor or per
channel, with or without DFQ's equalization and bias correction), or structured pruning at
a ratio with the least-squares refit, or pruning then int8. Each is applied to the model
(``fold`` first; int8 lowered to the integer ops the target runs), its quality scored by the reference interpreter on the evaluation samples
(top-1 against labels, or top-1 agreement with the float model without them; or a metric
callable), then built for the target and measured:

- latency: x86 timed, Cortex-M instructions per inference under qemu (``LatencyMeter``);
- size: weight bytes of the optimized model (int8 weights count one byte);
- Cortex-M: flash, SRAM and arena of the ELF.

Every configuration's figures are written to ``DIR/configs/<name>.json`` as it finishes, so
a rerun reuses them (resumable). ``DIR/pareto.json`` holds every configuration and whether
it is on the front; ``DIR/report.md`` the table. A configuration is on the front when no
other is at least as good on every axis and better on one.

``effc explore`` (cli.py) runs it. Not built yet (issue 16): mixed precision and
substitution objectives in the grid, the pictures, parallel and RPC runs, and choosing an
artifact under constraints."""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from effc.ir.core import Module
from effc.ir.parser import copy_module

AXES = {"quality": "max", "latency": "min", "size": "min", "sram": "min"}
"""The pareto axes and their direction; ``sram`` only where the target reports it."""


@dataclass(frozen=True)
class Config:
    name: str
    quantize: str | None = None
    """``per-tensor`` or ``per-channel`` int8, or None (float)."""
    dfq: bool = True
    prune: float = 0.0
    """Ratio of each group of coupled channels removed (with the refit), 0: none."""


def default_configs() -> list[Config]:
    return [
        Config("float"),
        Config("int8-per-tensor", "per-tensor"),
        Config("int8-per-tensor-no-dfq", "per-tensor", dfq=False),
        Config("int8-per-channel", "per-channel"),
        Config("int8-per-channel-no-dfq", "per-channel", dfq=False),
        Config("prune-25", prune=0.25),
        Config("prune-50", prune=0.5),
        Config("prune-25+int8", "per-channel", prune=0.25),
        Config("prune-50+int8", "per-channel", prune=0.5),
    ]


@dataclass
class Point:
    config: Config
    quality: float
    latency: float
    latency_unit: str
    size: int
    flash: int | None = None
    sram: int | None = None
    arena: int | None = None
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


def apply_config(model: Module, config: Config, calib: Mapping[str, np.ndarray], target: str) -> Module:
    """A copy of ``model`` (already folded) with ``config`` applied; int8 as the target's
    integer kernels compute it (``qdq-to-integer`` in the target's rounding)."""
    from effc.passes.pipeline import run_pipeline
    from effc.passes.prune import prune
    from effc.passes.quantize import QuantizeOptions, quantize
    from effc.targets import get_target

    m = copy_module(model)
    if config.prune:
        prune(m, config.prune, samples=dict(calib))
    if config.quantize is not None:
        quantize(m, calib, QuantizeOptions(per_channel=config.quantize == "per-channel", equalize=config.dfq,
                                           bias_correction=config.dfq), measure=False)
        run_pipeline(m, f"qdq-to-integer{{rounding={get_target(target).quant_rounding}}},dce")
    return m


def measure(module: Module, config: Config, target: str, quality: float, feeds: Mapping[str, np.ndarray]) -> Point:
    import effc
    from effc.latency import LatencyMeter
    from effc.passes.pipeline import run_pipeline

    meter = LatencyMeter(target, feeds, reps=100, max_seconds=3.0)
    cost = meter([module])[0]
    optimized = copy_module(module)
    run_pipeline(optimized, "O2")
    point = Point(config, quality, cost, meter.unit, optimized.weight_bytes())
    if meter.unit == "instructions":  # a microcontroller: the ELF's memory
        built = effc.compile(copy_module(module), target=target, input_shapes={k: v.shape for k, v in feeds.items()},
                             flash=1 << 30, sram=1 << 30)._built
        point.flash, point.sram, point.arena = built.memory.flash, built.memory.sram, built.arena_bytes
    return point


def explore(model: Module, target: str, calib: Mapping[str, np.ndarray], evaluate: Mapping[str, np.ndarray],
            out_dir: str | Path, *, labels: np.ndarray | None = None, output: str | None = None,
            metric: Callable[[Module], float] | None = None, configs: Sequence[Config] | None = None,
            log: Callable[[str], None] | None = None) -> list[Point]:
    """Sweep ``configs`` (default: ``default_configs()``) of ``model`` for ``target``; see the
    module docstring. Returns every configuration's point, the front marked."""
    from effc.passes.pipeline import run_pipeline
    from effc.passes.quantize_search import top1_metric

    out = Path(out_dir)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    base = copy_module(model)
    run_pipeline(base, "fold")
    score = metric or top1_metric(base, evaluate, output, labels)
    one = {k: np.ascontiguousarray(v[:1]) for k, v in evaluate.items()}
    points = []
    for config in configs or default_configs():
        saved = out / "configs" / f"{config.name}.json"
        if saved.exists():
            point = Point.from_json(json.loads(saved.read_text()))
            if point.config == config:
                points.append(point)
                if log:
                    log(f"{config.name}: reused {saved}")
                continue
        module = apply_config(base, config, calib, target)
        point = measure(module, config, target, float(score(module)), one)
        saved.write_text(json.dumps(point.to_json(), indent=1))
        points.append(point)
        if log:
            log(f"{config.name}: quality {point.quality:.2f}, {point.latency:,.4g} {point.latency_unit}, "
                f"{point.size:,} weight bytes")
    axes = [a for a in AXES if all(p.axis(a) is not None for p in points)]
    mark_front(points, axes)
    (out / "pareto.json").write_text(json.dumps({"target": target, "axes": axes,
                                                 "points": [p.to_json() for p in points]}, indent=1))
    (out / "report.md").write_text(report(points, target, axes))
    return points


def report(points: Sequence[Point], target: str, axes: Sequence[str]) -> str:
    unit = points[0].latency_unit if points else ""
    mcu = any(p.sram is not None for p in points)
    head = ["configuration", "quality", f"latency ({unit})", "weight bytes"] + (
        ["flash", "SRAM", "arena"] if mcu else []) + ["on the front"]
    lines = [f"# effc explore: {target}", "", f"Pareto axes: {', '.join(axes)}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        row = [p.config.name, f"{p.quality:.2f}", f"{p.latency:,.4g}", f"{p.size:,}"]
        if mcu:
            row += [f"{p.flash:,}", f"{p.sram:,}", f"{p.arena:,}"]
        lines.append("| " + " | ".join(row + ["yes" if p.on_front else ""]) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["Config", "Point", "default_configs", "apply_config", "dominates", "mark_front", "explore", "report"]
