"""Latency-aware structured pruning: NetAdapt (Yang et al., ECCV 2018) without the
fine-tuning, on the deployed graph and the target's own builds.

Each round proposes, for every group of coupled channels (``ChannelGraph.groups``), a
step: its ``step`` share of lowest-scoring classes removed (at least one), rounded down to
a multiple of ``round_to`` channels (or of the largest share of it that leaves a step),
and also unrounded where that differs. Every proposal is built for the target and
measured together with the current model (``meter``: ``effc.latency.LatencyMeter``, or
any callable giving one cost per module). A proposal that is not measurably cheaper is
reported as such; a group none of whose proposals is cheaper is not proposed again. Of
the others, the one that loses the least quality per unit of cost saved is taken:
quality lost is the relative error of
the outputs on (up to 8) calibration samples against the unpruned model's, or without
samples the share of its group's criterion score removed. Rounds go on until the measured
cost is ``speedup`` times lower; then the unpruned and the pruned model are measured once
more, side by side, and only that measurement is reported as the speedup. With
``samples``, the consumers are refitted by least squares at the end (``reconstruct``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.ir.interpreter import run_module
from effc.ir.parser import copy_module

from .prune import PruneReport, apply, channel_graph, check_exclude, fmt_cost, reconstruct, scores
from .quantize_calibrate import check_samples, iterate

STEP = 0.125
"""The share of a group's classes one proposal removes."""
QUALITY_SAMPLES = 8
"""Calibration samples a proposal's output error is measured on."""
MAX_CHECKS = 3
"""Times the rounds resume when the final side-by-side measurement falls short of the goal."""


@dataclass
class SpeedupStep:
    """One measured proposal: a group's classes before and after, the current model's cost
    and the proposal's, measured together; taken, or why not."""

    group: str
    classes: tuple[int, int]
    cost: tuple[float, float]
    taken: bool
    note: str = ""


def _label(g, key: frozenset[int]) -> str:
    names = sorted(g.sources[k].node.outputs[0].name for k in key)
    return f"%{names[0]}" + (f" (+{len(names) - 1} coupled)" if len(names) > 1 else "")


def _step_size(n: int, step: float, unit: int) -> int:
    """Classes a proposal removes from a group of ``n`` that keeps multiples of ``unit``
    classes (0: none can go)."""
    keep = n - max(1, int(round(step * n)))
    keep = keep // unit * unit
    return n - keep if keep >= 1 else 0


def _step_sizes(n: int, step: float, unit: int) -> list[int]:
    """The proposals for a group of ``n`` classes: the step rounded to the largest share of
    ``unit`` that leaves one (channel counts the target's vector blocks divide), and the
    plain step; the measurements choose."""
    sizes, u = [], unit
    while u > 1 and not sizes:
        sizes += [k for k in [_step_size(n, step, u)] if k]
        u //= 2
    return sizes + [k for k in [_step_size(n, step, 1)] if k and k not in sizes]


def _compose(kept: dict[str, np.ndarray], step: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Positions kept since the unpruned model, after one more removal."""
    out = dict(kept)
    for name, k in step.items():
        out[name] = kept[name][k] if name in kept else k
    return out


def _outputs(module: Module, samples: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
    got = [run_module(module, feeds) for feeds in iterate(samples, n)]
    return [np.concatenate([g[o.name] for g in got]).astype(np.float64) for o in module.graph.outputs]


def prune_for_speedup(module: Module, speedup: float, meter: Callable[[Sequence[Module]], list[float]],
                      criterion: str = "l1", exclude: tuple[str, ...] = (),
                      samples: dict[str, np.ndarray] | None = None, round_to: int = 1, step: float = STEP,
                      unit: str = "", log: Callable[[str], None] = lambda s: None) -> PruneReport:
    """Prune ``module`` in place until ``meter`` says it costs ``speedup`` times less (see the
    module docstring), or no proposal is cheaper; the report says which, with every step."""
    if not speedup > 1.0:
        raise InputError(f"--speedup must be above 1 (the unpruned model's cost over the pruned one's), got {speedup}")
    if not 0.0 < step < 1.0:
        raise InputError(f"the pruning step must be a share of a group's channels in (0, 1), got {step}")
    check_exclude(channel_graph(module, exclude), exclude)
    original, current = copy_module(module), copy_module(module)
    n_quality = min(QUALITY_SAMPLES, check_samples(module, samples)) if samples is not None else 0
    want = _outputs(original, samples, n_quality) if n_quality else None
    kept: dict[str, np.ndarray] = {}
    steps: list[SpeedupStep] = []
    stalled: set[str] = set()
    first, = meter([current])
    goal, cost = first / speedup, first
    log(f"unpruned: {fmt_cost(first, unit)}; goal {fmt_cost(goal, unit)} ({speedup:g}x)")
    for _ in range(MAX_CHECKS):
        while cost > goal:
            g = channel_graph(current, exclude)
            score = scores(g, criterion, samples)
            proposals = []
            classes = g.classes()
            for key, roots in g.groups(classes).items():
                label = _label(g, key)
                if label in stalled:
                    continue
                ranked = sorted(roots, key=lambda r: (score[r], r))
                for n in _step_sizes(len(roots), step, g.unit(key, classes[roots[0]], round_to)):
                    cand = copy_module(current)
                    report = apply(channel_graph(cand, exclude), set(ranked[:n]))
                    loss = sum(score[r] for r in ranked[:n]) / max(sum(score[r] for r in roots), 1e-30)
                    proposals.append((label, len(roots), n, loss, cand, report.kept))
            if not proposals:
                break
            log(f"measuring {len(proposals)} proposals")
            costs = meter([current] + [p[4] for p in proposals])
            ref, useful, faster = costs[0], [], set()
            for (label, total, n, loss, cand, step_kept), c in zip(proposals, costs[1:]):
                if not c < ref * (0.995 if unit == "ms" else 1.0):  # (timing noise: half a percent)
                    steps.append(SpeedupStep(label, (total, total - n), (ref, c), False, "no speedup"))
                    log(f"  {label}: {total} -> {total - n} classes: {fmt_cost(ref, unit)} -> {fmt_cost(c, unit)}, "
                        "no speedup")
                    continue
                faster.add(label)
                if want is not None:
                    got = _outputs(cand, samples, n_quality)
                    loss = sum(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)) for a, b in zip(got, want))
                useful.append((loss / (ref - c), label, total, n, cand, step_kept, c))
            stalled |= {p[0] for p in proposals} - faster  # (no step of theirs is faster: not proposed again)
            if not useful:
                break
            _, label, total, n, cand, step_kept, c = min(useful, key=lambda u: (u[0], u[1]))
            steps.append(SpeedupStep(label, (total, total - n), (ref, c), True))
            log(f"  took {label}: {total} -> {total - n} classes: {fmt_cost(ref, unit)} -> {fmt_cost(c, unit)}")
            current, kept = cand, _compose(kept, step_kept)
            cost = c
        base_cost, now = meter([original, current])
        measured = (base_cost, now)
        log(f"side by side: unpruned {fmt_cost(base_cost, unit)}, pruned {fmt_cost(now, unit)} "
            f"({base_cost / now:.2f}x)")
        if base_cost / now >= speedup or cost > goal:  # (reached, or nothing more to take)
            break
        goal, cost = base_cost / speedup, now
    fits = reconstruct(original, current, samples, kept) if samples is not None else []
    g = channel_graph(original, exclude)  # (the unpruned model's sources, and what stays whole in it)
    channels = {}
    for s in g.sources:
        name = s.node.outputs[0].name
        channels[name] = (len(s.atoms), len(kept[name]) if name in kept else len(s.atoms))
    module.graph, module.weights, module.memory_plan = current.graph, current.weights, None
    return PruneReport(channels, original.parameter_count(), module.parameter_count(), kept, fits,
                       frozen=g.frozen_channels(), speedup_steps=steps, measured=measured, unit=unit, goal=speedup)


__all__ = ["SpeedupStep", "prune_for_speedup"]
