"""The memory plan verifier. It trusts nothing the planner computed: it re-derives the
kernel order, every tensor's size and lifetime from the module, and checks

- the plan's order is the graph's kernel order, and every arena tensor has one entry of
  its size and lifetime;
- every offset is aligned and every entry lies inside the arena;
- every declared sharing holds: a view has its input's offset and size and comes from a
  view op; a slice sits at its concat input's byte offset inside the concat output of a
  concat along a contiguous axis; an in-place output sits at an input of its producer,
  which may overwrite it (``memory_plan_rules``), and that input dies at that step;
  a kernel that works in place through a scratch buffer has that much workspace;
- no two entries overlap in bytes while both are live, except tensors of one content
  (joined by views and slices) and an in-place output with its input at the hand-over step.

Only the op rules (``memory_plan_rules``) are shared with the planner.
"""
from __future__ import annotations

from effc.ir.core import Module

from .memory_plan import MemoryPlan, PlanEntry, PlanError
from .memory_plan_rules import (arena_values, compute_nodes, concat_slice_offsets, node_key, pointwise_inputs,
                                scratch_inplace, view_input)


def verify_plan(module: Module, plan: MemoryPlan) -> None:
    """Raise ``PlanError`` listing what is wrong with ``plan`` for ``module``."""
    problems = check_plan(module, plan)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PlanError(f"memory plan of @{module.graph.name} is wrong:\n  {shown}{more}")


def check_plan(module: Module, plan: MemoryPlan) -> list[str]:
    """Everything wrong with ``plan`` for ``module`` (empty when it is right)."""
    g = module.graph
    nodes = compute_nodes(g)
    order = tuple(node_key(n) for n in nodes)
    if order != tuple(plan.order):
        return [f"the plan's order ({len(plan.order)} steps) is not the graph's kernel order ({len(order)} nodes)"]
    step = {id(n): t for t, n in enumerate(nodes)}
    values = {v.name: v for v in arena_values(g)}
    tensors: dict[str, PlanEntry] = {}
    problems: list[str] = []
    for e in plan.entries:
        if e.kind not in ("tensor", "workspace"):
            problems.append(f"%{e.name}: unknown entry kind '{e.kind}'")
        if e.kind == "tensor":
            if e.name in tensors:
                problems.append(f"%{e.name} has two entries")
            tensors[e.name] = e
    for name in values.keys() - tensors.keys():
        problems.append(f"%{name} is an arena tensor without an entry")
    for name in tensors.keys() - values.keys():
        problems.append(f"%{name} has an entry but is no arena tensor")
    end = max(0, len(nodes) - 1)
    for name, v in values.items():
        e = tensors.get(name)
        if e is None:
            continue
        first = step[id(v.producer)] if v.producer is not None else 0
        last = max([first] + [step[id(u.node)] for u in v.uses() if id(u.node) in step])
        last = end if v.is_graph_output else last
        if (e.first, e.last) != (first, last):
            problems.append(f"%{name} lives over steps {first}..{last}, the plan says {e.first}..{e.last}")
        if e.size != v.type.nbytes():
            problems.append(f"%{name} has {v.type.nbytes()} bytes, the plan says {e.size}")
    for e in plan.entries:
        if e.offset < 0 or e.offset % plan.align:
            problems.append(f"{_who(e)} at offset {e.offset} is not aligned to {plan.align}")
        if e.end > plan.arena_bytes:
            problems.append(f"{_who(e)} ends at {e.end}, past the arena of {plan.arena_bytes} bytes")
        if e.kind == "workspace" and (e.first != e.last or not 0 <= e.first < len(order) or e.name != order[e.first]):
            problems.append(f"{_who(e)} must live at its node's step only")
    problems += _check_aliases(plan, tensors, values, step)
    problems += _check_overlaps(plan, tensors)
    return problems


def _who(e: PlanEntry) -> str:
    return f"workspace of %{e.name}" if e.kind == "workspace" else f"%{e.name}"


def _check_aliases(plan: MemoryPlan, tensors: dict[str, PlanEntry], values: dict, step: dict) -> list[str]:
    problems = []
    scratch = {e.first: e.size for e in plan.entries if e.kind == "workspace"}
    for e in tensors.values():
        if not e.alias:
            continue
        v, base = values.get(e.name), tensors.get(e.of)
        if v is None or base is None:
            problems.append(f"%{e.name} shares %{e.of}, which is no planned tensor")
            continue
        x = values[e.of]
        node = v.producer
        if e.alias == "view":
            ok = node is not None and view_input(node) is not None and node.input(0) is x
            if not ok or (e.offset, e.size) != (base.offset, base.size):
                problems.append(f"%{e.name} is no view of %{e.of} at the same offset and size")
        elif e.alias == "slice":
            cat = x.producer
            offsets = concat_slice_offsets(cat) if cat is not None else None
            slots = [k for k, w in enumerate(cat.inputs) if w is v] if cat is not None else []
            if offsets is None or len(slots) != 1:
                problems.append(f"%{e.name} is no single input of the concat %{e.of} along a contiguous axis")
            elif e.at != offsets[slots[0]] or e.offset != base.offset + e.at:
                problems.append(f"%{e.name} must sit at byte {offsets[slots[0]]} of %{e.of} "
                                f"(offset {base.offset + offsets[slots[0]]}), the plan says {e.offset}")
        elif e.alias == "inplace":
            problems += _check_inplace(e, base, v, x, node, step, scratch)
        else:
            problems.append(f"%{e.name}: unknown sharing '{e.alias}'")
    return problems


def _check_inplace(e: PlanEntry, base: PlanEntry, v, x, node, step: dict, scratch: dict) -> list[str]:
    if node is None or not any(w is x for w in node.inputs):
        return [f"%{e.name} is in place of %{e.of}, which its node does not read"]
    index = next(k for k, w in enumerate(node.inputs) if w is x)
    rule = scratch_inplace(node)
    needs = rule[1] if rule is not None and rule[0] == index else None
    if needs is None and index not in pointwise_inputs(node):
        return [f"%{e.name}: {node.op} may not write over its input %{e.of}"]
    problems = []
    if e.offset != base.offset or e.size > base.size:
        problems.append(f"%{e.name} must sit at %{e.of}'s offset within its size")
    if base.last != step[id(node)] or x.producer is None or x.is_graph_output:
        problems.append(f"%{e.name} overwrites %{e.of}, which is still needed after step {step[id(node)]}")
    if needs is not None and index not in pointwise_inputs(node) and scratch.get(step[id(node)], 0) < needs:
        problems.append(f"%{e.name}: writing over %{e.of} needs {needs:,} bytes of workspace at its step")
    return problems


def _check_overlaps(plan: MemoryPlan, tensors: dict[str, PlanEntry]) -> list[str]:
    content: dict[str, str] = {}

    def find(name: str) -> str:
        while content.get(name, name) != name:
            name = content[name]
        return name

    for e in tensors.values():
        if e.alias in ("view", "slice") and e.of in tensors:
            a, b = find(e.name), find(e.of)
            if a != b:
                content[a] = b
    problems = []
    entries = sorted((e for e in plan.entries if e.size > 0), key=lambda e: e.offset)
    for i, a in enumerate(entries):
        for b in entries[i + 1:]:
            if b.offset >= a.end:
                break
            if a.last < b.first or b.last < a.first:
                continue
            if a.kind == b.kind == "tensor" and (find(a.name) == find(b.name) or _handover(a, b) or _handover(b, a)):
                continue
            problems.append(f"{_who(a)} [{a.offset}, {a.end}) steps {a.first}..{a.last} overlaps "
                            f"{_who(b)} [{b.offset}, {b.end}) steps {b.first}..{b.last}")
    return problems


def _handover(x: PlanEntry, y: PlanEntry) -> bool:
    """``y`` is written over ``x`` at the step where ``x`` dies."""
    return y.alias == "inplace" and y.of == x.name and x.last == y.first
