"""Declarative rewrites: patterns with captures, a check, a rewrite through a builder, and a
worklist driver that applies a rule set to a fixpoint.

    rule = Rule("relu-of-relu",
                Op("relu", Op("relu", Any("x"), name="inner")),
                rewrite=lambda m, b: m["inner"].output)

- ``Op(op, *inputs, name=, attrs=)``: a node of that op (or one of a tuple of ops) whose
  inputs match the sub-patterns. Ops with the ``commutative`` trait also try their two
  inputs swapped. ``name`` captures the node (``m.node(name)``); ``attrs`` must match exactly.
- ``Any(name)``: any value (or a missing optional input with ``optional=True``).
- ``Const(name)``: a value produced by a ``const`` node (``m.const(name)`` gives the array).
- The same capture name used twice must bind the same value.
- Nodes matched below the root must have no other users (their work would otherwise be
  duplicated) unless the pattern says ``shared=True``.

The rewrite gets the match and a ``Builder`` that inserts before the root node; it returns
the replacement value(s) for the root's outputs, or None to decline. The driver then
redirects uses, removes nodes that became dead, and revisits the new nodes and users."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import typing
from typing import Callable, Iterable, Sequence, Union

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Module, Node, Value
from effc.ir.opdef import REGISTRY


@dataclass(frozen=True)
class Any_:
    name: str | None = None
    optional: bool = False


def Any(name: str | None = None, *, optional: bool = False) -> Any_:  # noqa: N802 - pattern constructor
    return Any_(name, optional)


@dataclass(frozen=True)
class Const:
    name: str | None = None


@dataclass(frozen=True)
class Op:
    op: str | tuple[str, ...]
    inputs: tuple["Pattern", ...] = ()
    name: str | None = None
    attrs: tuple[tuple[str, typing.Any], ...] = ()
    shared: bool = False
    exact_arity: bool = True

    def __init__(self, op: str | tuple[str, ...], *inputs: "Pattern", name: str | None = None,
                 attrs: dict[str, typing.Any] | None = None, shared: bool = False, exact_arity: bool = True):
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "attrs", tuple(sorted((attrs or {}).items())))
        object.__setattr__(self, "shared", shared)
        object.__setattr__(self, "exact_arity", exact_arity)

    def ops(self) -> tuple[str, ...]:
        return self.op if isinstance(self.op, tuple) else (self.op,)


Pattern = Union[Op, Any_, Const]


class Match:
    def __init__(self) -> None:
        self.values: dict[str, Value | None] = {}
        self.nodes: dict[str, Node] = {}
        self.matched: list[Node] = []
        self.root: Node | None = None

    def copy(self) -> "Match":
        m = Match()
        m.values, m.nodes, m.matched, m.root = dict(self.values), dict(self.nodes), list(self.matched), self.root
        return m

    def __getitem__(self, name: str) -> typing.Any:
        if name in self.nodes:
            return self.nodes[name]
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values or name in self.nodes

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def value(self, name: str) -> Value | None:
        return self.values[name]

    def const(self, name: str) -> np.ndarray:
        v = self.values[name]
        assert v is not None and v.const_value is not None
        return v.const_value


def _bind(m: Match, name: str | None, v: Value | None) -> bool:
    if name is None:
        return True
    if name in m.values:
        return m.values[name] is v
    m.values[name] = v
    return True


def match_value(p: Pattern, v: Value | None, m: Match, root: bool = False) -> list[Match]:
    """All ways ``p`` matches the value ``v`` (extending ``m``)."""
    if isinstance(p, Any_):
        if v is None and not p.optional:
            return []
        m = m.copy()
        return [m] if _bind(m, p.name, v) else []
    if v is None:
        return []
    if isinstance(p, Const):
        if not v.is_const:
            return []
        m = m.copy()
        return [m] if _bind(m, p.name, v) else []
    node = v.producer
    if node is None or node.op not in p.ops() or v.index != 0 and len(node.outputs) == 1:
        return []
    if not root and not p.shared and (v.num_uses != 1 or v.is_graph_output or len(node.outputs) != 1):
        return []
    return match_node(p, node, m)


def match_node(p: Op, node: Node, m: Match) -> list[Match]:
    if node.op not in p.ops():
        return []
    for k, want in p.attrs:
        have = node.attrs.get(k, REGISTRY[node.op].attrs[k].default if k in REGISTRY[node.op].attrs else None)
        if have != want:
            return []
    ins = list(node.inputs)
    if p.exact_arity:
        pats = list(p.inputs)
        while len(ins) < len(pats) and isinstance(pats[len(ins)], Any_) and pats[len(ins)].optional:
            ins.append(None)
        if len(ins) != len(pats):
            return []
    elif len(ins) < len(p.inputs):
        return []
    orders = [ins[: len(p.inputs)]]
    if len(p.inputs) == 2 and "commutative" in REGISTRY[node.op].traits:
        orders.append([ins[1], ins[0]])
    results: list[Match] = []
    for order in orders:
        partial = [m.copy()]
        partial[0].matched.append(node)
        if p.name is not None:
            if p.name in partial[0].nodes and partial[0].nodes[p.name] is not node:
                continue
            partial[0].nodes[p.name] = node
        for sub, val in zip(p.inputs, order):
            partial = [r for pm in partial for r in match_value(sub, val, pm)]
            if not partial:
                break
        results.extend(partial)
    return results


RewriteFn = Callable[[Match, Builder], Union[Value, Sequence[Value], None]]


@dataclass
class Rule:
    name: str
    pattern: Op
    rewrite: RewriteFn
    check: Callable[[Match], bool] | None = None


@dataclass
class RewriteStats:
    applied: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.applied.values())


def apply_rules(module: Module, rules: Iterable[Rule], *, max_rewrites: int = 100_000) -> RewriteStats:
    """Apply ``rules`` over the main graph until none fires (a worklist fixpoint)."""
    rules = list(rules)
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        for op in r.pattern.ops():
            by_op.setdefault(op, []).append(r)
    g = module.graph
    work: deque[Node] = deque(g.nodes)
    queued = {id(n) for n in work}
    stats = RewriteStats()

    def push(n: Node) -> None:
        if id(n) not in queued and n.graph is g:
            queued.add(id(n))
            work.append(n)

    while work:
        node = work.popleft()
        queued.discard(id(node))
        if node.graph is not g:
            continue
        for rule in by_op.get(node.op, ()):
            applied = _try_rule(module, rule, node, push)
            if applied:
                stats.applied[rule.name] = stats.applied.get(rule.name, 0) + 1
                if stats.total > max_rewrites:
                    raise RuntimeError(f"rewrite rules did not converge after {max_rewrites} rewrites "
                                       f"(last rule: {rule.name})")
                break
    return stats


def _try_rule(module: Module, rule: Rule, node: Node, push: Callable[[Node], None]) -> bool:
    for m in match_node(rule.pattern, node, Match()):
        m.root = node
        if rule.check is not None and not rule.check(m):
            continue
        g = module.graph
        before = node.prev
        b = Builder(module, insert_before=node, loc=node.loc)
        result = rule.rewrite(m, b)
        if result is None:
            _remove_new(g, before, node)
            continue
        new_values = [result] if isinstance(result, Value) else list(result)
        if len(new_values) != len(node.outputs):
            raise RuntimeError(f"rule {rule.name} gave {len(new_values)} values for {len(node.outputs)} outputs")
        if not all(_can_take_output_name(o, n) for o, n in zip(node.outputs, new_values) if o is not n):
            _remove_new(g, before, node)
            continue
        old_names = [o.name for o in node.outputs]
        for old, new in zip(node.outputs, new_values):
            if old is new:
                continue
            if old.is_graph_output:
                _move_graph_output(old, new)
            for u in old.uses():
                push(u.node)
            old.replace_all_uses_with(new)
            if new.producer is not None:
                push(new.producer)
                for u in new.uses():
                    push(u.node)
        # visit what was created, then drop what died
        created: list[Node] = []
        n = before.next if before is not None else g.first
        while n is not None and n is not node:
            created.append(n)
            push(n)
            n = n.next
        for dead in [node] + list(reversed(m.matched)):
            _remove_if_dead(g, dead, push)
        # a value made by this rewrite takes over the replaced value's name, so dumps stay readable
        made = {id(c) for c in created}
        for name, new in zip(old_names, new_values):
            if new.producer is not None and id(new.producer) in made and name not in g.names and not new.is_graph_output:
                g.rename(new, name)
        return True
    return False


def _can_take_output_name(old: Value, new: Value) -> bool:
    """A graph output keeps its name, so its replacement must be renamable: a fresh node
    output, not a graph input or another graph output."""
    return not old.is_graph_output or (new.producer is not None and not new.is_graph_output)


def _move_graph_output(old: Value, new: Value) -> None:
    g = old.graph
    assert g is not None
    old_name, new_name = old.name, new.name
    g.names.release(old_name)
    g.names.release(new_name)
    old.name, new.name = new_name, old_name
    g.names.claim(new.name)
    g.names.claim(old.name)
    old.replace_all_uses_with(new, replace_graph_outputs=True)


def _remove_if_dead(g: typing.Any, n: Node, push: Callable[[Node], None]) -> None:
    if n.graph is not g:
        return
    if any(v.num_uses or v.is_graph_output for v in n.outputs):
        return
    producers = [v.producer for v in n.inputs if v is not None and v.producer is not None]
    g.remove(n)
    for p in producers:
        if p.graph is g and all(v.num_uses == 0 and not v.is_graph_output for v in p.outputs):
            _remove_if_dead(g, p, push)
        else:
            push(p)


def _remove_new(g: typing.Any, before: Node | None, node: Node) -> None:
    """Undo nodes a declined rewrite inserted before ``node``."""
    n = node.prev
    while n is not None and n is not before:
        prev = n.prev
        if all(v.num_uses == 0 for v in n.outputs):
            g.remove(n)
        n = prev
