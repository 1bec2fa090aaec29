"""Cost-guided backtracking search over substitutions (TASO, Jia et al., SOSP'19, Algorithm 2).

A priority queue holds graphs by cost, cheapest first, starting with the input graph. Each
step takes the cheapest, applies every match of every rule to a copy of it (one match per
copy; the rules take turns, so a budget cut short has tried each; a rule whose match
lowers the cost is also applied at all its matches at once, one more graph), folds what
the substitution left computable, and queues each new graph whose cost is
below ``alpha`` times the best cost so far: with ``alpha`` above 1 the search walks through
graphs slightly worse than the best, which is how two rules that only pay together (kernel
enlarging, then merging) are found. Graphs already seen (same operations on the same
inputs, whatever their names) are not queued twice.

The search ends when the queue is empty, when ``budget_s`` seconds have passed, or when
``max_graphs`` graphs have been costed, and returns the cheapest graph found with the rules
applied on the way to it. Measuring kernels (the cost's ``measure_seconds``) does not
count against the time budget: a kernel is measured once per target and cached, so a
second search of the same model is bounded by the budget alone."""
from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from effc.ir.core import Graph, Module, Value, clone_module
from effc.ir.errors import EffcError

from .rules import Match, Rule, apply_match, find_matches


@dataclass
class SearchResult:
    module: Module
    cost_before: float
    cost: float
    applied: list[str]
    """Rules on the path from the input graph to the result, in order."""
    explored: int
    seconds: float
    measure_seconds: float
    stopped: str
    """``done`` (nothing left to try), ``time`` or ``size``."""


def graph_hash(g: Graph, digests: dict[int, tuple] | None = None, weights: bool = True) -> str:
    """A hash of what ``g`` computes, blind to value names: each value is named by its op,
    attributes and inputs' names in this scheme (constants by dtype, shape and a digest).
    ``digests`` remembers the digests of arrays by identity (copies of a module share their
    weight arrays; the entry keeps the array alive, so its identity stays its own).
    ``weights=False``: blind to the values of every constant but int64 ones (shapes, axes,
    indices): graphs that run the same kernels on other weights hash alike."""
    digests = {} if digests is None else digests
    names: dict[int, str] = {id(v): f"in{i}" for i, v in enumerate(g.inputs)}
    for n in g.nodes:
        if n.op == "const" and not weights and n.output.const_value.dtype != np.int64:
            arr = n.output.const_value
            body = f"const {arr.dtype}{arr.shape}"
        elif n.op == "const":
            arr = n.output.const_value
            known = digests.get(id(arr))
            if known is None:
                known = digests[id(arr)] = (arr, hashlib.sha1(arr.tobytes()).hexdigest()[:16])
            body = f"const {arr.dtype}{arr.shape} {known[1]}"
        else:
            ins = ",".join("_" if v is None else names[id(v)] for v in n.inputs)
            body = f"{n.op}({ins}){sorted(n.attrs.items())!r}{id(n.body) if n.body is not None else ''}"
        digest = hashlib.sha1(body.encode()).hexdigest()[:20]
        for i, v in enumerate(n.outputs):
            names[id(v)] = f"{digest}.{i}"
    return hashlib.sha1("|".join(names[id(v)] for v in g.outputs).encode()).hexdigest()


def search(module: Module, rules: Sequence[Rule], cost: Callable[[Module], float], *, budget_s: float = 10.0,
           max_graphs: int = 400, alpha: float = 1.05, cleanup: Callable[[Module], None] | None = None,
           progress: Callable[[int, float, float], None] | None = None) -> SearchResult:
    """See the module docstring. ``cleanup`` runs on every new graph (constant folding);
    ``progress(explored, best_cost, seconds)`` after every costed graph."""
    start = time.perf_counter()
    measured0 = getattr(cost, "measure_seconds", 0.0)

    def measure_seconds() -> float:
        return getattr(cost, "measure_seconds", 0.0) - measured0

    def elapsed() -> float:
        return time.perf_counter() - start - measure_seconds()

    cost0 = cost(module)
    best = (cost0, module, [])
    digests: dict[int, tuple] = {}
    seen = {graph_hash(module.graph, digests)}
    queue: list[tuple[float, int, Module, list[str]]] = [(cost0, 0, module, [])]
    counter, explored, stopped = 1, 1, "done"
    def consider(candidate: Module | None, path: list[str]) -> float | None:
        """Cost a new graph and queue it; None when it is not new (or did not build)."""
        nonlocal best, counter, explored
        if candidate is None:
            return None
        h = graph_hash(candidate.graph, digests)
        if h in seen:
            return None
        seen.add(h)
        cc = cost(candidate)
        explored += 1
        if cc < best[0]:
            best = (cc, candidate, path)
        if cc < alpha * best[0]:
            heapq.heappush(queue, (cc, counter, candidate, path))
            counter += 1
        if progress is not None:
            progress(explored, best[0], elapsed())
        return cc

    while queue and stopped == "done":
        c, _, current, path = heapq.heappop(queue)
        if c > alpha * best[0]:
            continue
        everywhere: set[str] = set()
        for rule, match in _round_robin(rules, current):
            if elapsed() > budget_s:
                stopped = "time"
                break
            if explored >= max_graphs:
                stopped = "size"
                break
            cc = consider(_apply_copy(current, match, cleanup), path + [rule.name])
            if cc is not None and cc < c and rule.name not in everywhere:
                # a rule that pays once is tried at all its matches at once: a model repeats its
                # blocks, and one step per block would take the budget many times over
                everywhere.add(rule.name)
                many = _apply_everywhere(current, rule, cleanup)
                if many is not None:
                    consider(many[0], path + [rule.name] * many[1])
    return SearchResult(best[1], cost0, best[0], best[2], explored, elapsed(), measure_seconds(), stopped)


def _round_robin(rules: Sequence[Rule], module: Module) -> list[tuple[Rule, Match]]:
    """Every (rule, match) of ``module``, the first match of each rule, then the second of
    each, ...: a search cut short by its budget has tried every rule, not one rule's many
    matches."""
    found = [(rule, find_matches(rule, module.graph)) for rule in rules]
    most = max((len(ms) for _, ms in found), default=0)
    return [(rule, ms[i]) for i in range(most) for rule, ms in found if i < len(ms)]


def _apply_copy(module: Module, match: Match, cleanup: Callable[[Module], None] | None) -> Module | None:
    """A copy of ``module`` with ``match`` (found in ``module``) applied to it (None when the
    target does not build there)."""
    copy = clone_module(module)
    try:
        apply_match(copy, _transfer(match, module.graph, copy.graph))
    except EffcError:
        return None
    if cleanup is not None:
        cleanup(copy)
    return copy


def _apply_everywhere(module: Module, rule: Rule, cleanup: Callable[[Module], None] | None,
                      limit: int = 1000) -> tuple[Module, int] | None:
    """A copy of ``module`` with ``rule`` applied wherever it matches (again after each
    application, until it matches nowhere it builds), and how many times; None below two."""
    copy = clone_module(module)
    applied, failed = 0, set()
    while applied < limit:
        pending = [m for m in find_matches(rule, copy.graph) if m.key() not in failed]
        if not pending:
            break
        try:
            apply_match(copy, pending[0])
            applied += 1
        except EffcError:
            failed.add(pending[0].key())
    if applied < 2:
        return None
    if cleanup is not None:
        cleanup(copy)
    return copy, applied


def _transfer(match: Match, g: Graph, copy: Graph) -> Match:
    """``match`` on ``copy``, a copy of ``g`` (``clone_module`` keeps the node order): nodes by
    position, values by their producer's position and output index, or input index."""
    nodes = {id(a): b for a, b in zip(g.nodes, copy.nodes)}
    inputs = {id(a): b for a, b in zip(g.inputs, copy.inputs)}

    def value(v: Value) -> Value:
        return inputs[id(v)] if v.producer is None else nodes[id(v.producer)].outputs[v.index]

    return Match(match.rule, {k: nodes[id(n)] for k, n in match.nodes.items()},
                 {k: value(v) for k, v in match.values.items()}, dict(match.attrs), dict(match.dims))


__all__ = ["search", "SearchResult", "graph_hash"]
