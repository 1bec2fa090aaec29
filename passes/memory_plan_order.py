"""Execution order that minimizes peak live memory, for the memory planner.

The cost of an order is its largest step: the bytes live before a node runs plus what the
node allocates (outputs not written over an input, its workspace). Bytes are counted
with the planner's sharing: a view costs nothing while its base lives, a concat slice
is part of the concat's buffer, an in-place output reuses its input.

Everything live at a step is a function of the set of nodes already run, so:
- the graph is cut at *chain points* (nodes that every other node precedes or follows;
  every topological order runs them in the same place) into independent segments;
- a segment whose downsets number at most ``max_states`` gets the exact optimum: dynamic
  programming over downsets, value = the smallest peak over the orders reaching it;
- a larger segment gets a greedy rule: run the ready node that frees the most memory
  (smallest growth of live bytes), then the smallest step, then the original order. The
  original order is kept where the rule does not beat it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .arena import ArenaProblem, Groups
from .memory_plan_offsets import covered


class OrderProblem:
    """An arena problem's steps 0..N-1 (in a topological order) and tensors, as the search
    needs them: producers, users as bitmasks, static groups (views and slices) and each
    step's in-place candidates."""

    def __init__(self, p: ArenaProblem):
        groups, n = Groups(p), len(p.sizes)
        self.n_nodes, self.size, self.offset = len(p.steps), p.sizes, groups.offset
        self.producer = [-1] * n
        for k, s in enumerate(p.steps):
            for t in s.writes:
                self.producer[t] = k
        self.node_inputs = [sorted(set(s.reads)) for s in p.steps]
        self.node_outputs = [list(s.writes) for s in p.steps]
        self.preds = [sorted({self.producer[t] for t in ins if self.producer[t] >= 0}) for ins in self.node_inputs]
        self.user_mask = [0] * n
        for k, ins in enumerate(self.node_inputs):
            for t in ins:
                self.user_mask[t] |= 1 << k
        self.is_output = [t in p.live_out for t in range(n)]
        roots = sorted(groups.members)
        gid = {r: i for i, r in enumerate(roots)}
        self.group = [gid[groups.root[t]] for t in range(n)]
        self.members = [groups.members[r] for r in roots]
        self.inplace = [groups.candidates(s) for s in p.steps]
        """Step -> (input tensor, output tensor, extra workspace bytes) it may write in place."""
        self.workspace = [s.workspace for s in p.steps]


class _Cost:
    """Live bytes as a function of the set of nodes run (a bitmask)."""

    def __init__(self, p: OrderProblem):
        self.p = p

    def _live(self, t: int, done: int) -> bool:
        p = self.p
        produced = p.producer[t] < 0 or done >> p.producer[t] & 1
        return bool(produced) and (p.is_output[t] or p.user_mask[t] & ~done != 0)

    def _group_bytes(self, g: int, done: int, extra: int = -1) -> int:
        p = self.p
        return covered([(p.offset[t], p.offset[t] + p.size[t]) for t in p.members[g] if t == extra or self._live(t, done)])

    def live(self, done: int, groups: list[int]) -> int:
        return sum(self._group_bytes(g, done) for g in groups)

    def inplace_of(self, n: int, done: int) -> tuple[int, int] | None:
        """(output, scratch bytes) if ``n`` can write an output over a dying input after ``done``."""
        p = self.p
        for x, o, scratch in p.inplace[n]:
            if p.is_output[x] or p.producer[x] < 0 or p.user_mask[x] & ~(done | 1 << n):
                continue
            others = [m for m in p.members[p.group[x]] if m != x]
            if all(not p.is_output[m] and p.producer[m] >= 0 and (done >> p.producer[m] & 1)
                   and p.user_mask[m] & ~done == 0 for m in others):
                return o, scratch
        return None

    def step(self, n: int, done: int) -> int:
        """Bytes in use while ``n`` runs, relative to the live bytes of ``done``."""
        p = self.p
        grow = p.workspace[n]
        shared = self.inplace_of(n, done)
        for o in p.node_outputs[n]:
            if shared is not None and shared[0] == o:
                grow += shared[1]
                continue
            g = p.group[o]
            grow += self._group_bytes(g, done, extra=o) - self._group_bytes(g, done)
        return grow


def chain_points(p: OrderProblem) -> list[int]:
    """Nodes that every other node precedes or follows."""
    anc = [0] * p.n_nodes
    for n in range(p.n_nodes):
        for q in p.preds[n]:
            anc[n] |= anc[q] | 1 << q
    desc = [0] * p.n_nodes
    succs: list[list[int]] = [[] for _ in range(p.n_nodes)]
    for n in range(p.n_nodes):
        for q in p.preds[n]:
            succs[q].append(n)
    for n in reversed(range(p.n_nodes)):
        for s in succs[n]:
            desc[n] |= desc[s] | 1 << s
    return [n for n in range(p.n_nodes) if (anc[n] | desc[n]).bit_count() == p.n_nodes - 1]


@dataclass
class OrderResult:
    order: list[int]
    exact_segments: int = 0
    greedy_segments: int = 0
    peak: int = 0
    """The cost model's peak (touched groups only, per segment); for comparisons."""

    def describe(self) -> str:
        if not self.exact_segments and not self.greedy_segments:
            return "forced (a chain)"
        text = f"exact in {self.exact_segments} segments" if self.exact_segments else ""
        if self.greedy_segments:
            text += (", " if text else "") + f"greedy in {self.greedy_segments} segments"
        return text


def best_order(p: OrderProblem, max_states: int = 20000) -> OrderResult:
    """A topological order of minimal peak (exact per segment where the state count allows)."""
    cuts = set(chain_points(p))
    result = OrderResult([])
    segment: list[int] = []
    cost = _Cost(p)
    for n in range(p.n_nodes):
        if n in cuts:
            _order_segment(p, cost, segment, result, max_states)
            result.order.append(n)
            segment = []
        else:
            segment.append(n)
    _order_segment(p, cost, segment, result, max_states)
    return result


def _order_segment(p: OrderProblem, cost: _Cost, seg: list[int], result: OrderResult, max_states: int) -> None:
    if len(seg) <= 1:
        result.order.extend(seg)
        return
    before = sum(1 << n for n in range(seg[0]))  # every node before the segment has run
    groups = sorted({p.group[t] for n in seg for t in p.node_inputs[n] + p.node_outputs[n]})
    found = _exact(p, cost, seg, before, groups, max_states)
    if found is not None:
        result.exact_segments += 1
    else:
        found = _greedy(p, cost, seg, before, groups)
        result.greedy_segments += 1
    keep = _peak(cost, seg, before, groups) <= _peak(cost, found, before, groups)  # no needless reordering
    result.order.extend(seg if keep else found)


def _peak(cost: _Cost, order: list[int], done: int, groups: list[int]) -> int:
    peak = 0
    for n in order:
        peak = max(peak, cost.live(done, groups) + cost.step(n, done))
        done |= 1 << n
    return peak


def _exact(p: OrderProblem, cost: _Cost, seg: list[int], before: int, groups: list[int],
           max_states: int) -> list[int] | None:
    """Dynamic programming over the segment's downsets; None when they exceed ``max_states``."""
    local_preds = {n: sum(1 << q for q in p.preds[n] if not before >> q & 1) for n in seg}
    best: dict[int, tuple[int, int, int]] = {0: (0, -1, -1)}  # ran -> (peak, previous ran, node)
    layer = [0]
    states = 1
    for _ in seg:
        nxt: dict[int, tuple[int, int, int]] = {}
        for ran in layer:
            done = before | ran
            live = cost.live(done, groups)
            peak = best[ran][0]
            for n in seg:
                if ran >> n & 1 or local_preds[n] & ~ran:
                    continue
                value = max(peak, live + cost.step(n, done))
                key = ran | 1 << n
                if key not in nxt or value < nxt[key][0]:
                    nxt[key] = (value, ran, n)
        states += len(nxt)
        if states > max_states:
            return None
        best.update(nxt)
        layer = list(nxt)
    ran, order = layer[0], []
    while ran:
        _, prev, n = best[ran]
        order.append(n)
        ran = prev
    return order[::-1]


def _greedy(p: OrderProblem, cost: _Cost, seg: list[int], before: int, groups: list[int]) -> list[int]:
    """Run the ready node that grows live memory least; then smallest step; then original order."""
    local_preds = {n: sum(1 << q for q in p.preds[n] if not before >> q & 1) for n in seg}
    ran, order = 0, []
    for _ in seg:
        done = before | ran
        live = cost.live(done, groups)
        choice = None
        for n in seg:
            if ran >> n & 1 or local_preds[n] & ~ran:
                continue
            key = (cost.live(done | 1 << n, groups) - live, cost.step(n, done), n)
            if choice is None or key < choice:
                choice = key
        assert choice is not None
        order.append(choice[2])
        ran |= 1 << choice[2]
    return order
