"""substitute: cost-guided substitution search over verified rewrite rules (part of ``-O3``).

``substitute{objective=latency|memory budget=10s}``

- **Rules** are data: pairs of IR text graphs in ``rules/*.rules`` (``rules.py`` reads them,
  ``effc info --rules`` lists them). The families:
  ``merge.rules`` (parallel convolutions and matrix products of one input, kernel enlarging,
  split of a split), ``movement.rules`` (elementwise ops and biases exchanged with split and
  concat, split against concat, transposes and reshapes composed and cancelled),
  ``distribute.rules`` (convolution and matrix product over add and concat, scales through
  concat), ``memory.rules`` (convolutions split by output channels, for a lower peak on
  microcontrollers).
- **Verification** (``verify.py``): every rule is run through the reference interpreter on
  random shapes and proved with z3 when loaded; a wrong rule is refused with the reason.
- **Search** (``search.py``): TASO's cost-guided backtracking, bounded by ``budget`` seconds
  (kernel measurements excepted: they are cached per target) and ``max-graphs``.
- **Cost** (``cost.py``): ``latency``: the kernels' measured prices on the target summed
  (the measuring callable comes from ``ctx.options["substitute_cost"]``, which the compiler
  sets for targets it can measure; otherwise an estimate from MACs and bytes);
  ``memory``: the peak arena bytes of the microcontroller flow.
- **Never worse**: when the best graph is not cheaper, or a whole-graph measurement
  (``ctx.options["substitute_check"]``: both graphs built and measured side by side) finds
  it not at least 1% faster (``MIN_MEASURED_GAIN``), the input graph is kept.

``ctx.options["substitute_log"]`` (a function of one line), when set, hears the progress:
kernels being measured, graphs searched.

The pass leaves its report (``SubstituteReport``: the rules on the chosen path, the predicted
and measured costs, the search's time) in ``ctx.options["substitute_report"]``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from effc.ir.core import Module

from ..base import Pass, PassContext, register_pass
from .cost import ArenaCost, KernelCost, cleanup
from .rules import OBJECTIVES, Rule, RuleError, bundled_rules, load_rules
from .search import SearchResult, search


MIN_MEASURED_GAIN = 1.01
"""The searched graph replaces the input graph only when it measures at least this much
faster whole: a smaller gain is within the noise of timing, and the pass must never make a
model slower."""


@dataclass
class SubstituteReport:
    objective: str
    unit: str
    result: SearchResult
    kept: bool
    """Whether the searched graph replaced the input graph."""
    why: str
    measured: tuple[float, float] | None = None
    """The input and the searched graph measured whole, side by side (when checked)."""
    rules: int = 0
    measured_kernels: int = 0

    @property
    def rules_applied(self) -> str:
        """The rules on the chosen path, each with its count (``merge-conv-conv x3, ...``)."""
        counts: dict[str, int] = {}
        for name in self.result.applied:
            counts[name] = counts.get(name, 0) + 1
        return ", ".join(f"{k} x{v}" for k, v in counts.items())

    def format(self) -> str:
        r = self.result
        gain = r.cost_before / r.cost if r.cost > 0 else float("inf")
        head = (f"substitute ({self.objective}): {self.rules} rules, {r.explored} graphs in {r.seconds:.1f} s "
                f"of search ({r.stopped})")
        if self.objective == "latency":
            how = "estimated" if "estimated" in self.unit else f"measured on the target in {r.measure_seconds:.1f} s"
            head += f", {self.measured_kernels} new kernels priced ({how})"
        lines = [head]
        if r.applied:
            lines.append("  rules applied: " + self.rules_applied)
        lines.append(f"  predicted: {fmt(r.cost_before, self.unit)} -> {fmt(r.cost, self.unit)} ({gain:.2f}x)")
        if self.measured is not None:
            a, b = self.measured
            lines.append(f"  measured: {fmt(a, self.unit)} -> {fmt(b, self.unit)} ({a / b:.2f}x)")
        lines.append(f"  {'kept the searched graph' if self.kept else 'kept the input graph'}: {self.why}")
        return "\n".join(lines)


def fmt(value: float, unit: str) -> str:
    if "bytes" in unit:
        return f"{int(value):,} {unit}"
    if "ms" in unit:
        return f"{value:.3f} {unit}"
    return f"{value:,.0f} {unit}"


def parse_budget(text: str) -> float:
    """``10s``, ``2.5s``, ``1m`` or plain seconds."""
    t = text.strip().lower()
    scale = 60.0 if t.endswith("m") else 1.0
    try:
        value = float(t.rstrip("sm")) * scale
    except ValueError:
        raise ValueError(f"option 'budget' is a time such as 10s or 1m, got '{text}'") from None
    if value <= 0:
        raise ValueError(f"option 'budget' must be positive, got '{text}'")
    return value


@register_pass
@dataclass(frozen=True)
class Substitute(Pass):
    name = "substitute"
    objective: str = "latency"
    budget: str = "10s"
    max_graphs: int = 400
    alpha: float = 1.05
    rules: str = ""
    """Extra rules files (``:``-separated paths), verified and added to the bundled ones."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"option 'objective' must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        parse_budget(self.budget)
        if self.max_graphs < 1:
            raise ValueError(f"option 'max-graphs' must be positive, got {self.max_graphs}")
        if self.alpha < 1:
            raise ValueError(f"option 'alpha' must be at least 1, got {self.alpha}")

    def rule_set(self) -> list[Rule]:
        from pathlib import Path

        extra = load_rules([Path(p) for p in self.rules.split(":") if p]) if self.rules else []
        return [r for r in bundled_rules() + extra if r.serves(self.objective)]

    def run(self, module: Module, ctx: PassContext) -> bool:
        rules = self.rule_set()
        log = ctx.options.get("substitute_log")
        cost = self._cost(ctx, log)

        def progress(explored: int, best: float, seconds: float) -> None:
            if log is not None and explored % 25 == 0:
                log(f"substitute: {explored} graphs, best {fmt(best, cost.unit)}, {seconds:.1f} s")

        result = search(module, rules, cost, budget_s=parse_budget(self.budget), max_graphs=self.max_graphs,
                        alpha=self.alpha, cleanup=cleanup, progress=progress)
        report = SubstituteReport(self.objective, cost.unit, result, False, "", rules=len(rules),
                                  measured_kernels=getattr(cost, "measured", 0))
        ctx.options["substitute_report"] = report
        if not result.applied or result.cost >= result.cost_before:
            report.why = "no substitution lowers the cost"
            return False
        check = ctx.options.get("substitute_check") if self.objective == "latency" else None
        if check is not None:
            before, after = check([module, result.module])
            report.measured = (before, after)
            if after * MIN_MEASURED_GAIN >= before:
                report.why = (f"measured whole, the searched graph is not {100 * (MIN_MEASURED_GAIN - 1):.0f}% "
                              "faster (timing noise on a loaded machine is about that)")
                return False
        _replace(module, result.module)
        report.kept = True
        report.why = "measured faster" if report.measured else f"cheaper by the cost model ({cost.unit})"
        return True

    def _cost(self, ctx: PassContext, log: Any) -> Any:
        if self.objective == "memory":
            return ArenaCost()
        make = ctx.options.get("substitute_cost")
        cost = make() if make is not None else KernelCost()
        if log is not None and cost.measure is not None:
            cost.progress = lambda n: log(f"substitute: measuring {n} kernels on the target")
        return cost


def _replace(module: Module, result: Module) -> None:
    """Make ``module`` hold ``result``'s graph and weights (in place, as passes edit)."""
    module.graph = result.graph
    module.weights = result.weights
    module.memory_plan = None


__all__ = ["Substitute", "SubstituteReport", "RuleError", "parse_budget", "bundled_rules", "load_rules"]
