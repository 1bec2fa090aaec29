"""Offset assignment for the memory planner: place rigid blocks in one arena.

A block is a set of rectangles (steps ``first..last`` by bytes ``lo..hi`` relative to the
block's base): a lone tensor, or tensors tied together by views, concat slices and
in-place writes. Two blocks conflict where rectangles overlap in time; a block's base must
keep its rectangles off every placed, conflicting rectangle.

Algorithms (all deterministic; the smallest arena wins, earlier on ties):
- ``greedy-size``: TFLite Micro's GreedyMemoryPlanner: blocks by size, largest first,
  each at the lowest aligned base that fits (first fit).
- ``greedy-size-best-fit``: the same order, each in the tightest gap it fits (the largest
  gaps stay free for later blocks).
- ``greedy-breadth``: blocks by the largest total of live bytes (breadth) at any of their
  steps, then size (Pisarchyk & Lee, 2020), first fit.
- ``hill-climb``: from the best order above, moves a random block to the front or swaps two
  (fixed seed), keeps a move that does not grow the arena; stops at the live-bytes bound.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

Rect = tuple[int, int, int, int]
"""(first step, last step, lo byte, hi byte) relative to the block base."""


@dataclass
class Block:
    rects: list[Rect]

    @property
    def extent(self) -> int:
        return max((r[3] for r in self.rects), default=0)

    @property
    def span(self) -> tuple[int, int]:
        return min(r[0] for r in self.rects), max(r[1] for r in self.rects)


@dataclass
class Placement:
    bases: list[int]
    arena: int
    algorithm: str
    candidates: dict[str, int]


def align_up(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def covered(spans: list[tuple[int, int]]) -> int:
    """Bytes in the union of ``[lo, hi)`` spans."""
    total, end = 0, -1
    for lo, hi in sorted(spans):
        if hi > end:
            total, end = total + hi - max(lo, end), hi
    return total


def _conflicts(blocks: list[Block]) -> list[list[tuple[int, int, int]]]:
    """For each block g: (h, dlo, dhi) meaning base_g in (base_h + dlo, base_h + dhi) collides."""
    events = sorted(range(len(blocks)), key=lambda b: blocks[b].span)
    out: list[list[tuple[int, int, int]]] = [[] for _ in blocks]
    active: list[int] = []
    for g in events:
        start, _ = blocks[g].span
        active = [h for h in active if blocks[h].span[1] >= start]
        for h in active:
            for r in blocks[g].rects:
                for q in blocks[h].rects:
                    if r[0] <= q[1] and q[0] <= r[1] and r[3] > r[2] and q[3] > q[2]:
                        out[g].append((h, q[2] - r[3], q[3] - r[2]))
                        out[h].append((g, r[2] - q[3], r[3] - q[2]))
        active.append(g)
    return out


def _forbidden(g: int, conf: list[list[tuple[int, int, int]]], bases: list[int | None]) -> list[tuple[int, int]]:
    spans = []
    for h, dlo, dhi in conf[g]:
        base = bases[h]
        if base is not None:
            spans.append((base + dlo, base + dhi))
    spans.sort()
    return spans


def _first_fit(spans: list[tuple[int, int]], align: int) -> int:
    c = 0
    for a, b in spans:
        if a >= c:
            break
        if b > c:
            c = align_up(b, align)
    return c


def _best_fit(spans: list[tuple[int, int]], align: int) -> int:
    """The base in the tightest free gap of bases (the unbounded top gap last)."""
    best: tuple[int, int] | None = None
    c = 0
    for a, b in spans:
        if a >= c:  # bases c .. a are free (a itself is free: intervals are open)
            width = a - c
            if best is None or width < best[0]:
                best = (width, c)
        if b > c:
            c = align_up(b, align)
    return best[1] if best is not None else c


def _place(order: list[int], blocks: list[Block], conf, align: int, fit) -> tuple[list[int], int]:
    bases: list[int | None] = [None] * len(blocks)
    arena = 0
    for g in order:
        base = fit(_forbidden(g, conf, bases), align)
        bases[g] = base
        arena = max(arena, base + blocks[g].extent)
    return [b or 0 for b in bases], align_up(arena, align)


def _breadth_order(blocks: list[Block]) -> list[int]:
    steps = max((r[1] for b in blocks for r in b.rects), default=0) + 1
    breadth = [0] * steps
    for b in blocks:
        for r in b.rects:
            for t in range(r[0], r[1] + 1):
                breadth[t] += r[3] - r[2]
    widest = [max(breadth[t] for r in b.rects for t in range(r[0], r[1] + 1)) if b.rects else 0 for b in blocks]
    return sorted(range(len(blocks)), key=lambda g: (-widest[g], -blocks[g].extent, g))


def assign_offsets(blocks: list[Block], align: int, *, floor: int = 0, algorithms: tuple[str, ...] | None = None,
                   climb_budget: int = 4_000_000, seed: int = 0) -> Placement:
    """Run the algorithms and keep the smallest arena. ``floor`` (the live-bytes bound)
    ends the search early when reached."""
    algorithms = algorithms or ("greedy-size", "greedy-size-best-fit", "greedy-breadth", "hill-climb")
    conf = _conflicts(blocks)
    by_size = sorted(range(len(blocks)), key=lambda g: (-blocks[g].extent, g))
    orders = {"greedy-size": (by_size, _first_fit), "greedy-size-best-fit": (by_size, _best_fit),
              "greedy-breadth": (_breadth_order(blocks), _first_fit)}
    candidates: dict[str, int] = {}
    best: tuple[int, list[int], str, list[int]] | None = None
    for name in algorithms:
        if name not in orders:
            continue
        order, fit = orders[name]
        bases, arena = _place(order, blocks, conf, align, fit)
        candidates[name] = arena
        if best is None or arena < best[0]:
            best = (arena, bases, name, order)
    if best is None:
        raise ValueError(f"no known offset algorithm in {algorithms}")
    if "hill-climb" in algorithms and best[0] > align_up(floor, align) and len(blocks) > 1:
        arena, bases, order = _hill_climb(best[3], blocks, conf, align, best[0], floor, climb_budget, seed)
        candidates["hill-climb"] = arena
        if arena < best[0]:
            best = (arena, bases, f"hill-climb from {best[2]}", order)
    return Placement(best[1], best[0], best[2], candidates)


def _hill_climb(order: list[int], blocks: list[Block], conf, align: int, arena: int, floor: int, budget: int,
                seed: int) -> tuple[int, list[int], list[int]]:
    rng = random.Random(seed)
    work = max(1, sum(len(c) for c in conf) + len(blocks))
    rounds = max(20, min(400, budget // work))
    best_order, (best_bases, best_arena) = list(order), _place(order, blocks, conf, align, _first_fit)
    for _ in range(rounds):
        trial = list(best_order)
        i, j = rng.randrange(len(trial)), rng.randrange(len(trial))
        if rng.random() < 0.5:
            trial.insert(0, trial.pop(i))
        else:
            trial[i], trial[j] = trial[j], trial[i]
        bases, size = _place(trial, blocks, conf, align, _first_fit)
        if size <= best_arena:
            best_order, best_bases, best_arena = trial, bases, size
        if best_arena <= align_up(floor, align):
            break
    return best_arena, best_bases, best_order
