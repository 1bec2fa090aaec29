"""plan-memory: the ahead-of-time memory plan of the microcontroller flow.

All activations, graph inputs and outputs included, live in one arena (constants stay in
flash). The pass chooses the execution order that minimizes peak live memory
(``memory_plan_order``: exact per segment between chain points when small enough, a
stated greedy rule beyond) and rearranges the node list to it, constants first. It then
states the module as an ``arena.ArenaProblem`` (``module_problem``: the sharing facts come
from the op rules of ``memory_plan_rules``: views, concat and channel-pad slices,
element-wise and scratch-assisted in-place writes; per-node workspace bytes from
``workspace={node key: bytes}``), which ``arena.plan_arena`` plans, the planner an AOT
program's kernel calls use too. The plan is stored as ``module.memory_plan``, prints as
``//`` comment lines (an IR dump with them still parses) and is checked by ``verify_plan``
(the problem re-derived from the module, and ``arena.check_arena``).
``tflm_style_bytes`` gives what TFLite Micro's planner would need for the imported model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from effc.ir.core import Module
from effc.ir.refine import bind_symbols

from .arena import (ArenaProblem, ArenaStep, MemoryPlan, PlanEntry, PlanError, check_arena, format_plan,
                    plan_arena, verify_arena)
from .base import Pass, PassContext, PreconditionError, register_pass
from .fold_constants import FoldConstants
from .memory_plan_order import OrderProblem, OrderResult, best_order
from .memory_plan_rules import (arena_values, compute_nodes, nbytes, node_key, pointwise_inputs, scratch_inplace,
                                slice_offsets, view_input)

__all__ = ["MemoryPlan", "PlanEntry", "PlanError", "PlanMemory", "check_plan", "format_plan", "module_problem",
           "order_nodes", "plan_memory", "tflm_style_bytes", "verify_plan"]

ORDERS = ("auto", "keep", "greedy")


# ----------------------------------------------------------------------------- the problem


def module_problem(module: Module, *, align: int = 16, inplace: bool = True, inplace_scratch: bool = True,
                   views: bool = True, concat: bool = True,
                   workspace: Mapping[str, int] | None = None) -> ArenaProblem:
    """``module``'s kernels in graph order as an arena problem; the flags turn sharing rules off."""
    g = module.graph
    values = arena_values(g)
    for v in values:
        if not v.type.is_static:
            raise PreconditionError(
                f"plan-memory: %{v.name} has the symbolic shape {v.type}; bind the symbols first "
                "(effc.ir.refine.bind_symbols(module, {'N': 1}))")
    index = {id(v): t for t, v in enumerate(values)}

    def get(v) -> int | None:
        return None if v is None else index.get(id(v))

    steps, shares = [], []
    for n in compute_nodes(g):
        o = get(n.outputs[0])
        cands = [(get(n.input(i)), o, 0) for i in pointwise_inputs(n)] if inplace else []
        with_scratch = scratch_inplace(n) if inplace_scratch else None
        if with_scratch is not None:
            cands.append((get(n.input(with_scratch[0])), o, with_scratch[1]))
        steps.append(ArenaStep(node_key(n), tuple(t for t in map(get, n.inputs) if t is not None),
                               tuple(t for t in map(get, n.outputs) if t is not None),
                               int((workspace or {}).get(node_key(n), 0)),
                               tuple(c for c in cands if c[0] is not None and o is not None)))
        i = view_input(n) if views else None
        if i is not None and o is not None and get(n.input(i)) is not None:
            shares.append(("view", o, get(n.input(i)), 0))
            continue
        offsets = slice_offsets(n) if concat and o is not None else None
        for j, at in (offsets or {}).items():
            x = get(n.input(j))
            if x is not None and not any(n.input(k) is n.input(j) for k in range(len(n.inputs)) if k != j):
                shares.append(("slice", x, o, at))
    return ArenaProblem([v.name for v in values], [nbytes(v) for v in values], steps,
                        {t for t, v in enumerate(values) if v.producer is None},
                        {t for t, v in enumerate(values) if v.is_graph_output}, shares, align)


# ----------------------------------------------------------------------------- planning


def plan_memory(module: Module, *, align: int = 16, order: str = "auto", inplace: bool = True,
                inplace_scratch: bool = True, views: bool = True, concat: bool = True, max_states: int = 20000,
                workspace: Mapping[str, int] | None = None, algorithms: tuple[str, ...] | None = None,
                tflm_bytes: int | None = None) -> MemoryPlan:
    """Plan the arena of ``module`` (reordering its nodes unless ``order="keep"``); the
    plan is returned and stored as ``module.memory_plan``."""
    if order not in ORDERS:
        raise PlanError(f"plan-memory: order must be one of {', '.join(ORDERS)}, got '{order}'")
    if align < 1:
        raise PlanError(f"plan-memory: align must be positive, got {align}")
    problem = module_problem(module, align=align, inplace=inplace, inplace_scratch=inplace_scratch, views=views,
                             concat=concat, workspace=workspace)
    result, how = order_nodes(module, problem, order, max_states)
    plan = plan_arena(problem.reordered(result.order), algorithms)
    plan.order_algorithm, plan.tflm_bytes = how, tflm_bytes
    module.memory_plan = plan
    return plan


def order_nodes(module: Module, problem: ArenaProblem | None = None, order: str = "auto", max_states: int = 20000,
                align: int = 16) -> tuple[OrderResult, str]:
    """Rearrange ``module``'s node list (constants first) to the order of least peak live
    bytes for ``problem`` (default: the module's, all sharing rules on); ``keep`` keeps it."""
    problem = problem or module_problem(module, align=align)
    if order == "keep":
        result, how = OrderResult(list(range(len(problem.steps)))), "kept"
    else:
        result = best_order(OrderProblem(problem), max_states if order == "auto" else 0)
        how = result.describe()
    nodes = compute_nodes(module.graph)
    kernels = {id(n) for n in nodes}
    module.graph.reorder([n for n in module.graph.nodes if id(n) not in kernels] + [nodes[k] for k in result.order])
    return result, how


def check_plan(module: Module, plan: MemoryPlan) -> list[str]:
    """Everything wrong with ``plan`` for ``module`` (empty when it is right): the problem
    is stated from the module anew (in its current order) and ``arena.check_arena`` checks it."""
    return check_arena(module_problem(module, align=plan.align), plan)


def verify_plan(module: Module, plan: MemoryPlan) -> None:
    """Raise ``PlanError`` listing what is wrong with ``plan`` for ``module``."""
    verify_arena(module_problem(module, align=plan.align), plan, f"@{module.graph.name}")


# ----------------------------------------------------------------------------- TFLite Micro


def tflm_style_bytes(module: Module, bindings: Mapping[str, int] | None = None, align: int = 16) -> int:
    """The arena TFLite Micro's GreedyMemoryPlanner would need for a freshly imported
    module (changed in place): symbols bound, constants folded (a converted flatbuffer
    holds them as constants) and nothing else, ONNX node order, no sharing, greedy by size."""
    if bindings:
        bind_symbols(module, bindings)
    FoldConstants().run(module, PassContext())
    plan = plan_memory(module, align=align, order="keep", inplace=False, inplace_scratch=False, views=False,
                       concat=False, algorithms=("greedy-size",))
    return plan.arena_bytes


# ----------------------------------------------------------------------------- pass


@register_pass
@dataclass(frozen=True)
class PlanMemory(Pass):
    """Plans the arena (see the module docstring). Returns whether the node order changed.
    Per-node workspace bytes come from ``ctx.options["workspace_bytes"]`` (node key -> bytes)."""

    name = "plan-memory"
    align: int = 16
    order: str = "auto"
    inplace: bool = True
    inplace_scratch: bool = True
    concat: bool = True
    max_states: int = 20000

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"option 'order' must be one of {', '.join(ORDERS)}, got '{self.order}'")
        if self.align < 1 or self.align & (self.align - 1):
            raise ValueError(f"option 'align' must be a power of two, got {self.align}")

    def run(self, module: Module, ctx: PassContext) -> bool:
        before = [id(n) for n in module.graph.nodes]
        plan_memory(module, align=self.align, order=self.order, inplace=self.inplace,
                    inplace_scratch=self.inplace_scratch, concat=self.concat, max_states=self.max_states,
                    workspace=ctx.options.get("workspace_bytes"))
        return before != [id(n) for n in module.graph.nodes]
