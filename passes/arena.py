"""The arena planning problem, its one planner and its one verifier.

Every activation of a program lives in one arena; a plan says where each tensor sits.
The same problem is built from the effc IR (the ``plan-memory`` pass, ``memory_plan``)
and from an AOT program's kernel calls (``codegen.aot``), and both are planned by
``plan_arena`` and checked by ``verify_arena``:

- **steps** in execution order, each with the tensors it reads and writes, its kernel
  workspace (bytes needed for that step only) and its in-place candidates: ``(x, o,
  scratch)``, output ``o`` may be written over input ``x`` if ``x`` dies at this step (the
  kernel then needs ``scratch`` more workspace bytes);
- **tensors** with their byte sizes; ``live_in`` ones exist before the first step (graph
  inputs), ``live_out`` ones are needed after the last (graph outputs). Both are the
  caller's data: never written over, never moved into another tensor;
- **shares**: static facts that put a tensor at a byte offset inside another: a ``view``
  (a reshape: the output is its input's bytes) or a ``slice`` (a concat or pad input,
  which its producer writes straight into its place in the output), in step order;
- the **alignment** of every offset.

A tensor lives from the step that writes it (0 for ``live_in``) to the last step that
reads it (the last step for ``live_out``). The planner joins views, then takes each slice
whose input is a whole group of its own, free of caller data and aligned; then each
in-place candidate whose input dies at its step; then places the groups (rigid blocks of
rectangles: steps by bytes) with ``memory_plan_offsets.assign_offsets``. The verifier
re-derives lifetimes from the problem and checks every entry's size, lifetime, alignment,
bounds, every declared sharing against the problem's facts, and that no two entries live
at one step share a byte (except tensors of one content and an in-place hand-over).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from effc.ir.errors import EffcError
from effc.ir.printer import format_name

from .memory_plan_offsets import Block, align_up, assign_offsets, covered


class PlanError(EffcError):
    """A memory plan is wrong, or a program cannot be planned."""


@dataclass(frozen=True)
class ArenaStep:
    key: str
    """How the plan names the step (an IR node's first output; ``step<k>`` in a program)."""
    reads: tuple[int, ...] = ()
    writes: tuple[int, ...] = ()
    workspace: int = 0
    inplace: tuple[tuple[int, int, int], ...] = ()
    """(input, output, scratch bytes): the output may be written over the input if it dies here."""


@dataclass
class ArenaProblem:
    names: list[str]
    sizes: list[int]
    steps: list[ArenaStep]
    live_in: set[int] = field(default_factory=set)
    live_out: set[int] = field(default_factory=set)
    shares: list[tuple[str, int, int, int]] = field(default_factory=list)
    """(``view`` or ``slice``, tensor, other tensor, byte offset of the tensor inside the other)."""
    align: int = 16

    def reordered(self, order: list[int]) -> "ArenaProblem":
        return replace(self, steps=[self.steps[k] for k in order])

    def lifetimes(self) -> tuple[list[int], list[int]]:
        """(first, last) step of every tensor."""
        n, end = len(self.sizes), max(0, len(self.steps) - 1)
        first, last, made = [0] * n, [0] * n, set(self.live_in)
        for k, s in enumerate(self.steps):
            for t in set(s.writes) - made:
                first[t] = k
            made.update(s.writes)
            for t in s.reads:
                last[t] = k
        return first, [end if t in self.live_out else max(last[t], first[t]) for t in range(n)]


@dataclass(frozen=True)
class PlanEntry:
    """Where one tensor (or one step's workspace) sits, and for which steps."""

    name: str
    """The tensor's name; for a workspace, the step's key."""
    offset: int
    size: int
    first: int
    last: int
    alias: str = ""
    """``view``, ``slice`` or ``inplace`` when the bytes are shared with ``of``."""
    of: str = ""
    at: int = 0
    """For a view or slice: the byte offset inside ``of``."""
    kind: str = "tensor"
    """``tensor`` or ``workspace``."""
    over: str = ""
    """A slice also written in place over this tensor (the step that writes it, where it dies)."""

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class MemoryPlan:
    arena_bytes: int
    align: int
    order: tuple[str, ...]
    """Step keys in execution order."""
    entries: tuple[PlanEntry, ...]
    step_bytes: tuple[int, ...]
    """Arena bytes in use while each step runs (for a per-layer report)."""
    lower_bound: int
    """The most bytes of tensors live at one step without any sharing (sizes aligned)."""
    live_peak: int
    """The same with the plan's sharing: a floor for the arena of this order and sharing."""
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

    def workspace(self, key: str) -> PlanEntry | None:
        return next((e for e in self.entries if e.kind == "workspace" and e.name == key), None)

    def format(self) -> str:
        return format_plan(self)


# ----------------------------------------------------------------------------- planner


class Groups:
    """Tensors tied together (views, slices, in-place writes) into rigid blocks."""

    def __init__(self, p: ArenaProblem):
        n = len(p.sizes)
        self.p, self.root, self.offset = p, list(range(n)), [0] * n
        self.members: dict[int, list[int]] = {i: [i] for i in range(n)}
        self.alias: dict[int, tuple[str, int, int]] = {}
        self.over: dict[int, int] = {}
        for kind, t, other, at in p.shares:
            if kind == "view" or self._may_slice(t, at):
                self.move(t, other, at)
                self.alias[t] = (kind, other, at)

    def pinned(self, t: int) -> bool:
        return t in self.p.live_in or t in self.p.live_out

    def extent(self, r: int) -> int:
        return max(self.offset[m] + self.p.sizes[m] for m in self.members[r])

    def alone(self, t: int) -> bool:
        return self.root[t] == t and self.extent(t) == self.p.sizes[t]

    def _may_slice(self, t: int, at: int) -> bool:
        """Only a whole group, free of caller data, moves into another tensor, aligned."""
        return (at % self.p.align == 0 and self.alone(t)
                and not any(self.pinned(m) for m in self.members[t]))

    def move(self, t: int, into: int, at: int) -> None:
        """Put ``t``'s whole group inside ``into``'s group, ``t`` at byte ``at`` of ``into``."""
        r, target = self.root[t], self.root[into]
        delta = self.offset[into] + at - self.offset[t]
        for m in self.members.pop(r):
            self.root[m] = target
            self.offset[m] += delta
            self.members[target].append(m)

    def worth(self, s: ArenaStep) -> list[tuple[int, int, int]]:
        """A step's in-place candidates worth taking: the output no larger than the input,
        the scratch smaller than the output."""
        sz = self.p.sizes
        return [(x, o, c) for x, o, c in s.inplace if sz[o] <= sz[x] and c < sz[o]]

    def candidates(self, s: ArenaStep) -> list[tuple[int, int, int]]:
        """``worth`` with the output in no group yet (what the order search counts on)."""
        return [(x, o, c) for x, o, c in self.worth(s) if self.alone(o)]

    def take_inplace(self, first: list[int], last: list[int]) -> list[int]:
        """Take each in-place write whose input dies at its step; the workspace per step. The
        output may already sit in a slice of a larger tensor (a pad or concat output) when
        everything else in that group is written later: the whole group moves then."""
        ws = [s.workspace for s in self.p.steps]
        for k, s in enumerate(self.p.steps):
            for x, o, scratch in self.worth(s):
                if self.pinned(x) or last[x] != k or first[o] != k:
                    continue
                if not all(first[m] > k for m in self.members[self.root[o]] if m != o):
                    continue
                if all(not self.pinned(m) and last[m] < k for m in self.members[self.root[x]] if m != x):
                    self.move(o, x, 0)
                    if o in self.alias:
                        self.over[o] = x
                    else:
                        self.alias[o] = ("inplace", x, 0)
                    ws[k] += scratch
                    break
        return ws


def plan_arena(p: ArenaProblem, algorithms: tuple[str, ...] | None = None) -> MemoryPlan:
    """Plan ``p`` in its step order (see the module docstring)."""
    groups = Groups(p)
    first, last = p.lifetimes()
    ws = groups.take_inplace(first, last)
    roots = sorted(groups.members)
    sizes, off = p.sizes, groups.offset
    blocks = [Block([(first[m], last[m], off[m], off[m] + sizes[m]) for m in groups.members[r]]) for r in roots]
    work = [k for k, b in enumerate(ws) if b > 0]
    blocks += [Block([(k, k, 0, ws[k])]) for k in work]
    steps = _step_bytes(blocks, len(p.steps))
    placed = assign_offsets(blocks, p.align, floor=max(steps, default=0), algorithms=algorithms)
    base = {r: placed.bases[i] for i, r in enumerate(roots)}
    entries = []
    for t, name in enumerate(p.names):
        kind, other, at = groups.alias.get(t, ("", -1, 0))
        entries.append(PlanEntry(name, base[groups.root[t]] + off[t], sizes[t], first[t], last[t], kind,
                                 p.names[other] if other >= 0 else "", at,
                                 over=p.names[groups.over[t]] if t in groups.over else ""))
    for i, k in enumerate(work):
        entries.append(PlanEntry(p.steps[k].key, placed.bases[len(roots) + i], ws[k], k, k, kind="workspace"))
    lower = max((sum(align_up(sizes[t], p.align) for t in range(len(sizes)) if first[t] <= k <= last[t])
                 for k in range(len(p.steps))), default=0)
    return MemoryPlan(placed.arena, p.align, tuple(s.key for s in p.steps), tuple(entries), tuple(steps), lower,
                      max(steps, default=0), offset_algorithm=placed.algorithm, candidates=placed.candidates)


def _step_bytes(blocks: list[Block], n_steps: int) -> list[int]:
    """Bytes in use at each step: per block, the union of its live rectangles."""
    steps = [0] * n_steps
    for b in blocks:
        for t in range(b.span[0], min(b.span[1], n_steps - 1) + 1):
            steps[t] += covered([(r[2], r[3]) for r in b.rects if r[0] <= t <= r[1]])
    return steps


# ----------------------------------------------------------------------------- verifier


def verify_arena(p: ArenaProblem, plan: MemoryPlan, what: str = "the program") -> None:
    """Raise ``PlanError`` listing what is wrong with ``plan`` for ``p``."""
    problems = check_arena(p, plan)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PlanError(f"memory plan of {what} is wrong:\n  {shown}{more}")


def check_arena(p: ArenaProblem, plan: MemoryPlan) -> list[str]:
    """Everything wrong with ``plan`` for ``p`` (empty when it is right). Trusts nothing
    the planner computed: lifetimes and sharing rules come from the problem."""
    if tuple(s.key for s in p.steps) != tuple(plan.order):
        return [f"the plan's order ({len(plan.order)} steps) is not the program's ({len(p.steps)} steps)"]
    index = {name: t for t, name in enumerate(p.names)}
    tensors: dict[str, PlanEntry] = {}
    problems: list[str] = []
    for e in plan.entries:
        if e.kind == "tensor":
            if e.name in tensors:
                problems.append(f"%{e.name} has two entries")
            tensors[e.name] = e
        elif e.kind != "workspace":
            problems.append(f"%{e.name}: unknown entry kind '{e.kind}'")
    problems += [f"%{n} is an arena tensor without an entry" for n in p.names if n not in tensors]
    problems += [f"%{n} has an entry but is no arena tensor" for n in tensors if n not in index]
    first, last = p.lifetimes()
    for name, e in tensors.items():
        t = index.get(name)
        if t is None:
            continue
        if (e.first, e.last) != (first[t], last[t]):
            problems.append(f"%{name} lives over steps {first[t]}..{last[t]}, the plan says {e.first}..{e.last}")
        if e.size != p.sizes[t]:
            problems.append(f"%{name} has {p.sizes[t]} bytes, the plan says {e.size}")
    for e in plan.entries:
        if e.offset < 0 or e.offset % p.align:
            problems.append(f"{_who(e)} at offset {e.offset} is not aligned to {p.align}")
        if e.end > plan.arena_bytes:
            problems.append(f"{_who(e)} ends at {e.end}, past the arena of {plan.arena_bytes} bytes")
        if e.kind == "workspace" and (e.first != e.last or not 0 <= e.first < len(p.steps)
                                      or e.name != p.steps[e.first].key):
            problems.append(f"{_who(e)} must live at its step only")
    problems += _check_aliases(p, plan, tensors, index, last)
    problems += _check_overlaps(plan, tensors)
    return problems


def _who(e: PlanEntry) -> str:
    return f"workspace of %{e.name}" if e.kind == "workspace" else f"%{e.name}"


def _check_aliases(p: ArenaProblem, plan: MemoryPlan, tensors: dict[str, PlanEntry], index: dict[str, int],
                   last: list[int]) -> list[str]:
    problems = []
    need = [s.workspace for s in p.steps]
    for e in tensors.values():
        base = tensors.get(e.of)
        if not e.alias or e.name not in index:
            continue
        if base is None or e.of not in index:
            problems.append(f"%{e.name} shares %{e.of}, which is no planned tensor")
            continue
        t, x = index[e.name], index[e.of]
        if e.alias in ("view", "slice"):
            facts = [at for kind, a, b, at in p.shares if (kind, a, b) == (e.alias, t, x)]
            if not facts:
                problems.append(f"%{e.name} is no {e.alias} of %{e.of}")
            elif e.at != facts[0] or e.offset != base.offset + e.at:
                problems.append(f"%{e.name} must sit at byte {facts[0]} of %{e.of} "
                                f"(offset {base.offset + facts[0]}), the plan says {e.offset}")
        elif e.alias != "inplace":
            problems.append(f"%{e.name}: unknown sharing '{e.alias}'")
        for src in [e.of] if e.alias == "inplace" else [e.over] if e.over else []:
            problems += _check_inplace(p, e, tensors.get(src), index.get(src), t, last, need)
    have = {e.first: e.size for e in plan.entries if e.kind == "workspace"}
    problems += [f"step {k} ({p.steps[k].key}) needs {n:,} bytes of workspace, the plan gives {have.get(k, 0):,}"
                 for k, n in enumerate(need) if have.get(k, 0) < n]
    return problems


def _check_inplace(p: ArenaProblem, e: PlanEntry, base: PlanEntry | None, x: int | None, t: int, last: list[int],
                   need: list[int]) -> list[str]:
    src = e.of if e.alias == "inplace" else e.over
    if base is None or x is None:
        return [f"%{e.name} is written over %{src}, which is no planned tensor"]
    k = e.first
    found = [c for x2, o2, c in (p.steps[k].inplace if 0 <= k < len(p.steps) else ()) if (x2, o2) == (x, t)]
    if not found:
        return [f"%{e.name}: step {k} may not write over its input %{src}"]
    need[k] += found[0]
    problems = []
    if e.offset != base.offset or e.size > base.size:
        problems.append(f"%{e.name} must sit at %{src}'s offset within its size")
    if last[x] != k or x in p.live_in or x in p.live_out:
        problems.append(f"%{e.name} overwrites %{src}, which is still needed after step {k}")
    return problems
    have = {e.first: e.size for e in plan.entries if e.kind == "workspace"}
    problems += [f"step {k} ({p.steps[k].key}) needs {n:,} bytes of workspace, the plan gives {have.get(k, 0):,}"
                 for k, n in enumerate(need) if have.get(k, 0) < n]
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
            if a.kind == b.kind == "tensor" and (find(a.name) == find(b.name) or _handover(a, b, find)
                                                 or _handover(b, a, find)):
                continue
            problems.append(f"{_who(a)} [{a.offset}, {a.end}) steps {a.first}..{a.last} overlaps "
                            f"{_who(b)} [{b.offset}, {b.end}) steps {b.first}..{b.last}")
    return problems


def _handover(x: PlanEntry, y: PlanEntry, find) -> bool:
    """``y`` is written over ``x`` (or over the content ``x`` belongs to) at the step where ``x`` dies."""
    src = y.of if y.alias == "inplace" else y.over
    return bool(src) and find(src) == find(x.name) and x.last == y.first


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
        if e.over:
            text += f", in-place of {format_name('%', e.over)}"
        lines.append(text)
    return "\n".join(lines) + "\n"
