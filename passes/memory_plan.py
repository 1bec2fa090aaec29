"""plan-memory: the ahead-of-time memory plan of the microcontroller flow.

All activations live in one arena (constants stay in flash); the plan says where each
tensor sits and how large the arena is. Steps:

1. Order: the execution order that minimizes peak live memory (``memory_plan_order``:
   exact per segment between chain points when small enough, a stated greedy rule
   beyond). The graph's node list is rearranged to it; constants go first.
2. Sharing (``memory_plan_rules``): views share their input's bytes; concat inputs are
   written straight into their slice of the concat output; an elementwise/activation
   output, or the output of a kernel that works through a small scratch buffer
   (depthwise conv and pooling channel by channel, LRN through a ring of channels,
   transpose block by block; the scratch is workspace), is written over an input that
   dies at that node.
3. Offsets (``memory_plan_offsets``): greedy by size as TFLite Micro does, best fit,
   greedy by breadth and hill climbing; the smallest arena is kept.
4. Kernel workspace: per-node bytes (``workspace={node: bytes}``, keyed by the node's
   first output name) planned into the same arena for the node's step.

The plan is stored as ``module.memory_plan``, prints as ``//`` comment lines
(``format_plan``; an IR dump with them still parses) and is checked by
``memory_plan_verify.verify_plan``, which shares only the op rules with the planner.

``lower_bound`` is the largest total of simultaneously live tensors under the chosen
order with no sharing at all (each tensor rounded up to the alignment); ``live_peak`` is
the same with the plan's sharing, a floor for the arena of this order and sharing.
``tflm_style_bytes`` gives what TFLite Micro's planner would need for the imported model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from effc.ir.core import Graph, Module, Node, Value
from effc.ir.errors import EffcError
from effc.ir.printer import format_name, print_module
from effc.ir.refine import bind_symbols

from .base import Pass, PassContext, PreconditionError, register_pass
from .fold_constants import FoldConstants
from .memory_plan_offsets import Block, align_up, assign_offsets
from .memory_plan_order import OrderProblem, OrderResult, best_order
from .memory_plan_rules import (arena_values, compute_nodes, concat_slice_offsets, nbytes, node_key, pointwise_inputs,
                                scratch_inplace, view_input)

ORDERS = ("auto", "keep", "greedy")


class PlanError(EffcError):
    """A memory plan is wrong, or a module cannot be planned."""


@dataclass(frozen=True)
class PlanEntry:
    """Where one tensor (or one node's workspace) sits, and for which steps."""

    name: str
    """The value's name; for a workspace, the node's key (its first output's name)."""
    offset: int
    size: int
    first: int
    last: int
    alias: str = ""
    """``view``, ``slice`` or ``inplace`` when the bytes are shared with ``of``."""
    of: str = ""
    at: int = 0
    """For a slice: the byte offset inside ``of``."""
    kind: str = "tensor"
    """``tensor`` or ``workspace``."""

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class MemoryPlan:
    arena_bytes: int
    align: int
    order: tuple[str, ...]
    """Node keys in execution order; step ``t`` runs ``order[t]``."""
    entries: tuple[PlanEntry, ...]
    step_bytes: tuple[int, ...]
    """Arena bytes in use while each step runs (for a per-layer report)."""
    lower_bound: int
    live_peak: int
    tflm_bytes: int | None = None
    order_algorithm: str = ""
    offset_algorithm: str = ""
    candidates: dict[str, int] = field(default_factory=dict)
    """Arena bytes each offset algorithm reached."""

    def tensor(self, name: str) -> PlanEntry:
        for e in self.entries:
            if e.kind == "tensor" and e.name == name:
                return e
        raise KeyError(name)

    def format(self) -> str:
        return format_plan(self)


# ----------------------------------------------------------------------------- symbols


# ----------------------------------------------------------------------------- analysis


@dataclass
class _Tensors:
    """Arena tensors by index, and their static sharing (views, concat slices)."""

    values: list[Value]
    index: dict[int, int]
    size: list[int]
    root: list[int]
    offset: list[int]
    members: dict[int, list[int]]
    alias: dict[int, tuple[str, int, int]]
    """tensor -> (kind, other tensor, byte offset in it)."""

    @classmethod
    def of(cls, g: Graph) -> "_Tensors":
        values = arena_values(g)
        n = len(values)
        for v in values:
            if not v.type.is_static:
                raise PreconditionError(
                    f"plan-memory: %{v.name} has the symbolic shape {v.type}; bind the symbols first "
                    "(effc.ir.refine.bind_symbols(module, {'N': 1}))")
        return cls(values, {id(v): i for i, v in enumerate(values)}, [nbytes(v) for v in values], list(range(n)),
                   [0] * n, {i: [i] for i in range(n)}, {})

    def get(self, v: Value | None) -> int | None:
        return None if v is None else self.index.get(id(v))

    def extent(self, r: int) -> int:
        return max(self.offset[m] + self.size[m] for m in self.members[r])

    def move(self, t: int, into: int, at: int) -> None:
        """Put ``t``'s whole group inside ``into``'s group, ``t`` at byte ``at`` of it."""
        r, target = self.root[t], self.root[into]
        delta = self.offset[into] + at - self.offset[t]
        for m in self.members.pop(r):
            self.root[m] = target
            self.offset[m] += delta
            self.members[target].append(m)

    def pinned(self, t: int) -> bool:
        """A graph input or output: the caller owns it."""
        v = self.values[t]
        return v.producer is None or v.is_graph_output


def _static_sharing(ts: _Tensors, nodes: list[Node], align: int, views: bool, concat: bool) -> None:
    for n in nodes:
        i = view_input(n) if views else None
        o = ts.get(n.outputs[0])
        if i is not None and o is not None and ts.get(n.input(i)) is not None:
            x = ts.get(n.input(i))
            ts.move(o, x, 0)
            ts.alias[o] = ("view", x, 0)
            continue
        offsets = concat_slice_offsets(n) if concat else None
        if offsets is None or o is None:
            continue
        for j, (v, at) in enumerate(zip(n.inputs, offsets)):
            x = ts.get(v)
            if x is None or at % align or ts.pinned(x) or any(n.input(k) is v for k in range(len(n.inputs)) if k != j):
                continue
            if ts.root[x] != x or ts.extent(x) != ts.size[x] or any(ts.pinned(m) for m in ts.members[x]):
                continue  # only a whole group, free of caller-owned tensors, moves into the concat
            ts.move(x, o, at)
            ts.alias[x] = ("slice", o, at)


def _inplace_candidates(ts: _Tensors, n: Node, inplace: bool, scratch: bool) -> list[tuple[int, int, int]]:
    """(input, output, scratch bytes) for each input ``n`` may write its output over; a
    scratch as large as the output would gain nothing."""
    o = ts.get(n.outputs[0])
    if o is None or ts.root[o] != o or ts.extent(o) != ts.size[o]:
        return []
    found = []
    if inplace:
        found += [(ts.get(n.input(i)), o, 0) for i in pointwise_inputs(n)]
    with_scratch = scratch_inplace(n) if scratch else None
    if with_scratch is not None:
        found.append((ts.get(n.input(with_scratch[0])), o, with_scratch[1]))
    return [(x, o, s) for x, o, s in found if x is not None and ts.size[o] <= ts.size[x] and s < ts.size[o]]


def _order_problem(ts: _Tensors, nodes: list[Node], cands: list[list], ws: list[int]) -> OrderProblem:
    pos = {id(n): k for k, n in enumerate(nodes)}
    node_inputs = [sorted({t for t in map(ts.get, n.inputs) if t is not None}) for n in nodes]
    producer = [pos.get(id(v.producer), -1) if v.producer is not None else -1 for v in ts.values]
    users: list[list[int]] = [[] for _ in ts.values]
    for k, ins in enumerate(node_inputs):
        for t in ins:
            users[t].append(k)
    groups = sorted(ts.members)
    gid = {r: i for i, r in enumerate(groups)}
    return OrderProblem(
        n_nodes=len(nodes), preds=[sorted({producer[t] for t in ins if producer[t] >= 0}) for ins in node_inputs],
        node_inputs=node_inputs, node_outputs=[[t for t in map(ts.get, n.outputs) if t is not None] for n in nodes],
        producer=producer, users=users, is_output=[v.is_graph_output for v in ts.values], size=ts.size,
        group=[gid[r] for r in ts.root], offset=ts.offset, members=[ts.members[r] for r in groups], inplace=cands,
        workspace=ws)


def _apply_order(g: Graph, order: list[Node]) -> bool:
    """Rearrange the node list: non-kernel nodes (constants) first in their order, then ``order``."""
    kernels = {id(n) for n in order}
    return g.reorder([n for n in g.nodes if id(n) not in kernels] + order)


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
    g = module.graph
    ts = _Tensors.of(g)
    nodes = compute_nodes(g)
    _static_sharing(ts, nodes, align, views, concat)
    cands = [_inplace_candidates(ts, n, inplace, inplace_scratch) for n in nodes]
    ws = [int((workspace or {}).get(node_key(n), 0)) for n in nodes]
    problem = _order_problem(ts, nodes, cands, ws)
    if order == "keep":
        result = OrderResult(list(range(len(nodes))))
        how = "kept"
    else:
        result = best_order(problem, max_states if order == "auto" else 0)
        how = result.describe()
    nodes = [nodes[k] for k in result.order]
    cands = [cands[k] for k in result.order]
    ws = [ws[k] for k in result.order]
    _apply_order(g, nodes)
    plan = _layout(ts, nodes, cands, ws, align, algorithms)
    plan.order_algorithm, plan.tflm_bytes = how, tflm_bytes
    module.memory_plan = plan
    return plan


def _lifetimes(ts: _Tensors, nodes: list[Node]) -> tuple[list[int], list[int]]:
    step = {id(n): t for t, n in enumerate(nodes)}
    end = max(0, len(nodes) - 1)
    first = [step[id(v.producer)] if v.producer is not None else 0 for v in ts.values]
    last = list(first)
    for t, n in enumerate(nodes):
        for v in n.inputs:
            k = ts.get(v)
            if k is not None:
                last[k] = max(last[k], t)
    for k, v in enumerate(ts.values):
        if v.is_graph_output:
            last[k] = end
    return first, last


def _decide_inplace(ts: _Tensors, cands: list, ws: list[int], first: list[int], last: list[int]) -> list[int]:
    """Take each in-place write the order allows; returns the workspace per step."""
    ws = list(ws)
    for t, options in enumerate(cands):
        for x, o, scratch in options:
            if ts.pinned(x) or last[x] != t:
                continue
            others = [m for m in ts.members[ts.root[x]] if m != x]
            if all(not ts.pinned(m) and last[m] < t for m in others):
                ts.move(o, x, 0)
                ts.alias[o] = ("inplace", x, 0)
                ws[t] += scratch
                break
    return ws


def _layout(ts: _Tensors, nodes: list[Node], cands: list, ws: list[int], align: int,
            algorithms: tuple[str, ...] | None) -> MemoryPlan:
    first, last = _lifetimes(ts, nodes)
    ws = _decide_inplace(ts, cands, ws, first, last)
    roots = sorted(ts.members)
    blocks = [Block([(first[m], last[m], ts.offset[m], ts.offset[m] + ts.size[m]) for m in ts.members[r]])
              for r in roots]
    work = [t for t, b in enumerate(ws) if b > 0]
    blocks += [Block([(t, t, 0, ws[t])]) for t in work]
    steps = _step_bytes(blocks, len(nodes))
    placed = assign_offsets(blocks, align, floor=max(steps, default=0), algorithms=algorithms)
    base = {r: placed.bases[i] for i, r in enumerate(roots)}
    entries = []
    for k, v in enumerate(ts.values):
        kind, other, at = ts.alias.get(k, ("", -1, 0))
        entries.append(PlanEntry(v.name, base[ts.root[k]] + ts.offset[k], ts.size[k], first[k], last[k], kind,
                                 ts.values[other].name if other >= 0 else "", at))
    for i, t in enumerate(work):
        entries.append(PlanEntry(node_key(nodes[t]), placed.bases[len(roots) + i], ws[t], t, t, kind="workspace"))
    lower = max((sum(align_up(ts.size[k], align) for k in range(len(ts.values)) if first[k] <= t <= last[k])
                 for t in range(len(nodes))), default=0)
    return MemoryPlan(placed.arena, align, tuple(node_key(n) for n in nodes), tuple(entries), tuple(steps), lower,
                      max(steps, default=0), offset_algorithm=placed.algorithm, candidates=placed.candidates)


def _step_bytes(blocks: list[Block], n_steps: int) -> list[int]:
    """Bytes in use at each step: per block, the union of its live rectangles."""
    steps = [0] * n_steps
    for b in blocks:
        lo, hi = b.span
        for t in range(lo, min(hi, n_steps - 1) + 1):
            spans = sorted((r[2], r[3]) for r in b.rects if r[0] <= t <= r[1])
            end = -1
            for a, z in spans:
                if z > end:
                    steps[t] += z - max(a, end)
                    end = z
    return steps


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


# ----------------------------------------------------------------------------- text


def _b(n: int) -> str:
    return f"{n:,} B"


def format_plan(plan: MemoryPlan) -> str:
    """The plan as ``//`` comment lines: an IR dump followed by them still parses."""
    head = (f"// memory plan: arena {_b(plan.arena_bytes)}; lower bound {_b(plan.lower_bound)} (no sharing); "
            f"live peak {_b(plan.live_peak)}")
    if plan.tflm_bytes is not None:
        head += f"; TFLM-style {_b(plan.tflm_bytes)}"
    tried = ", ".join(f"{k} {v:,}" for k, v in plan.candidates.items())
    lines = [head + f"; align {plan.align}",
             f"// order: {plan.order_algorithm}; offsets: {plan.offset_algorithm} ({tried})"]
    rows = sorted(plan.entries, key=lambda e: (e.first, e.kind != "workspace", e.offset))
    labels = [(f"workspace of {format_name('%', e.name)}" if e.kind == "workspace" else format_name("%", e.name))
              for e in rows]
    width = max(map(len, labels), default=0)
    for e, label in zip(rows, labels):
        text = f"//   {label:<{width}}  @{e.offset:<11,} {_b(e.size):>13}  steps {e.first}..{e.last}"
        if e.alias == "slice":
            text += f"  slice of {format_name('%', e.of)} +{e.at:,}"
        elif e.alias:
            text += f"  {'in-place' if e.alias == 'inplace' else e.alias} of {format_name('%', e.of)}"
        lines.append(text)
    return "\n".join(lines) + "\n"


def print_module_with_plan(module: Module) -> str:
    """``print_module``, which appends the module's memory plan when it has one."""
    return print_module(module)


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
