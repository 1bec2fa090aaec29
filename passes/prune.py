"""Structured channel pruning over effc's IR: dependency groups, a criterion, physical removal.

**Channels as atoms.** Every value with a channel axis (axis 1 of an NCHW activation or of a
``[N, features]`` matrix) gets a list of channel *atoms*, one per channel. A convolution
with one group, a gemm and a matmul on a constant weight create fresh atoms for their
outputs (they are the *sources*: their weight rows can go); what passes channels through
keeps its input's list (ReLU/Clip and other elementwise ops, BatchNormalization, pools,
a depthwise convolution, dropout); a concat along the channels concatenates its inputs'
lists; a flatten of ``[N, C, H, W]`` repeats each channel's atom ``H*W`` times (the feature
block the next gemm reads). Ops that tie two channel lists together (a residual ``add`` of
two activations, ``mul``, ``sub``) unite their atoms pairwise (union-find): Torch-Pruning's
dependency graph (DepGraph, CVPR 2023), on the deployed graph.

A **class** of united atoms is removed whole, or not at all. Atoms that reach an op the
rules do not know, a graph output, or a grouped (not depthwise) convolution are
**frozen**: their classes stay. A **group** is the set of sources a class's atoms come
from; its classes compete with each other.

**Criterion.** The norm of a source's weight row (``l1``, ``l2``), or its channel's mean
absolute output on calibration samples (``activation``), for each atom, divided by the
mean over that source's channels (so layers compare), summed over the class.
``uniform`` removes ``round(ratio * n)`` of each group's ``n`` classes (keeping one);
``global`` ranks every class of every group together and removes ``ratio`` of all.

**Removal** slices every constant a pruned channel reaches: the sources' output rows (and
bias), the consumers' input columns (a gemm after a flatten loses each channel's block), a
depthwise convolution's weight, bias and ``group``, BatchNormalization's parameters, and
per-channel constants of elementwise ops; then every type is inferred again. The module
must be unfused (prune before ``fuse``/-O2; after ``fold-bn`` is best).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from effc.ir.core import Module, Node, Value
from effc.ir.errors import InputError
from effc.ir.opdef import node_attrs
from effc.ir.ops.nn import window_geometry
from effc.ir.parser import copy_module
from effc.ir.refine import reinfer_types

from .dce import DeadCodeElimination
from .quantize_calibrate import check_samples, iterate, run_watching

CRITERIA = ("l1", "l2", "activation")

_PASS_THROUGH = {"relu", "clip", "sigmoid", "tanh", "hard_sigmoid", "hard_swish", "leaky_relu", "elu", "selu",
                 "softplus", "identity", "dropout", "max_pool", "average_pool", "global_average_pool",
                 "global_max_pool", "gelu", "erf", "abs", "neg", "exp", "sqrt", "floor", "ceil", "round",
                 "sign", "cast"}
"""Ops whose output has their first input's channels, one for one (other inputs scalars)."""

_BINARY = {"add", "mul", "sub", "div", "max", "min"}


@dataclass
class _Source:
    """A node whose output channels are new atoms: its weight and the weight's output axis."""

    node: Node
    weight: np.ndarray
    axis: int
    atoms: list[int]


@dataclass
class ChannelGraph:
    """The atoms of a module's values and their classes (see the module docstring)."""

    module: Module
    atoms: dict[int, list[int]] = field(default_factory=dict)
    """id(value) -> its channel atoms."""
    parent: list[int] = field(default_factory=list)
    frozen: set[int] = field(default_factory=set)
    sources: list[_Source] = field(default_factory=list)
    source_of: dict[int, tuple[int, int]] = field(default_factory=dict)
    """atom -> (source number, row)."""
    why_frozen: dict[int, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ union-find
    def fresh(self, n: int) -> list[int]:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return list(range(start, start + n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def unite(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.frozen:
                self.frozen.add(ra)

    def freeze(self, atoms: list[int], why: str) -> None:
        for a in atoms:
            r = self.find(a)
            self.frozen.add(r)
            self.why_frozen.setdefault(r, why)

    def of(self, v: Value | None) -> list[int] | None:
        return None if v is None else self.atoms.get(id(v))

    def classes(self) -> dict[int, list[int]]:
        """Root -> atoms, for the classes that hold a source atom and are not frozen."""
        out: dict[int, list[int]] = {}
        for a in self.source_of:
            r = self.find(a)
            if r not in self.frozen:
                out.setdefault(r, []).append(a)
        return out


def _const(v: Value | None) -> np.ndarray | None:
    return None if v is None else v.const_value


def _channels(v: Value) -> int | None:
    """The channel count of a value (axis 1 of a rank-2..5 static tensor), or None."""
    t = v.type
    if t.rank < 2 or not isinstance(t.shape[1], int):
        return None
    return int(t.shape[1])


def _per_channel_const(c: np.ndarray, rank: int, channels: int) -> bool:
    """A constant operand that broadcasts one value per channel (axis 1) of a rank-``rank``
    value: ``[C, 1, 1]``, ``[1, C, 1, 1]`` (or ``[C]`` against a ``[N, C]`` matrix)."""
    shape = (1,) * (rank - c.ndim) + tuple(c.shape)
    return len(shape) == rank and shape[1] == channels and all(d == 1 for i, d in enumerate(shape) if i != 1)


def channel_graph(module: Module, exclude: tuple[str, ...] = ()) -> ChannelGraph:
    """The atoms and classes of ``module`` (unfused). ``exclude``: sources (by output name)
    whose output channels stay."""
    g = ChannelGraph(module)
    if any(n.body is not None for n in module.graph.nodes):
        raise InputError("prune works on an unfused model: run it before `fuse` (or -O2), e.g. after fold-bn")
    for v in module.graph.inputs:
        c = _channels(v)
        if c is not None:
            g.atoms[id(v)] = g.fresh(c)
            g.freeze(g.atoms[id(v)], f"graph input %{v.name}")
    for n in module.graph.nodes:
        if n.op == "const":
            continue
        _visit(g, n, exclude)
    for v in module.graph.outputs:
        if g.of(v):
            g.freeze(g.of(v), f"graph output %{v.name}")
    return g


def _visit(g: ChannelGraph, n: Node, exclude: tuple[str, ...]) -> None:
    x = n.input(0)
    xa = g.of(x)
    out = n.outputs[0] if len(n.outputs) == 1 else None
    a = node_attrs(n)

    def opaque(why: str) -> None:
        for v in n.inputs:
            if g.of(v):
                g.freeze(g.of(v), why)
        for o in n.outputs:
            c = _channels(o)
            if c is not None:
                g.atoms[id(o)] = g.fresh(c)
                g.freeze(g.atoms[id(o)], why)

    def source(w: np.ndarray, axis: int) -> None:
        assert out is not None
        atoms = g.fresh(int(w.shape[axis]))
        g.atoms[id(out)] = atoms
        k = len(g.sources)
        g.sources.append(_Source(n, w, axis, atoms))
        for row, atom in enumerate(atoms):
            g.source_of[atom] = (k, row)
        if out.name in exclude:
            g.freeze(atoms, f"--exclude {out.name}")

    what = f"{n.op} -> %{out.name if out is not None else n.outputs[0].name}"
    if out is None:
        return opaque(f"{what}: several outputs")
    if n.op == "conv":
        w = _const(n.input(1))
        if w is None or x is None or x.type.rank != 4 or (n.input(2) is not None and _const(n.input(2)) is None):
            return opaque(f"{what}: not a 2-D conv with constant weights")
        group, cin = int(a["group"]), _channels(x)
        if group == 1:
            return source(w, 0)
        if group == cin == w.shape[0] and w.shape[1] == 1 and xa:
            g.atoms[id(out)] = xa  # depthwise: channel c in, channel c out
            return None
        return opaque(f"{what}: a grouped convolution")
    if n.op in ("gemm", "mat_mul"):
        w = _const(n.input(1))
        if w is None or w.ndim != 2 or x is None or x.type.rank != 2:
            return opaque(f"{what}: not a 2-D product with a constant weight")
        if n.op == "gemm" and (a["transA"] or (n.input(2) is not None and _const(n.input(2)) is None)):
            return opaque(f"{what}: transA or a computed bias")
        return source(w, 0 if n.op == "gemm" and a["transB"] else 1)
    if n.op == "batch_normalization":
        if any(_const(v) is None for v in n.inputs[1:]) or not xa:
            return opaque(f"{what}: computed parameters")
        g.atoms[id(out)] = xa
        return None
    if n.op in _PASS_THROUGH:
        if not xa or out.type.rank != x.type.rank or any(
                v is not None and (_const(v) is None or _const(v).size != 1) for v in n.inputs[1:]):
            return opaque(f"{what}: not channel for channel")
        g.atoms[id(out)] = xa
        return None
    if n.op in _BINARY and len(n.inputs) == 2:
        ya = g.of(n.input(1))
        if xa and ya and x.type.shape == n.input(1).type.shape == out.type.shape:
            for p, q in zip(xa, ya):
                g.unite(p, q)
            g.atoms[id(out)] = xa
            return None
        for act, other in ((0, 1), (1, 0)):
            aa, c = g.of(n.input(act)), _const(n.input(other))
            if aa and c is not None and n.input(act).type.shape == out.type.shape and (
                    c.size == 1 or _per_channel_const(c, out.type.rank, len(aa))):
                g.atoms[id(out)] = aa
                return None
        return opaque(f"{what}: operands that do not match channel for channel")
    if n.op == "concat":
        if int(a["axis"]) % out.type.rank != 1:
            return opaque(f"{what}: not along the channels")
        atoms: list[int] = []
        for v in n.inputs:
            va = g.of(v)
            if va is None:
                va = g.fresh(_channels(v) or 0)
                g.freeze(va, f"{what}: an input without channels")
            atoms += va
        g.atoms[id(out)] = atoms
        return None
    shape, oshape = tuple(x.type.shape) if x is not None else (), tuple(out.type.shape)
    if n.op in ("flatten", "reshape") and xa and all(isinstance(d, int) for d in shape[1:] + oshape[1:]):
        if len(oshape) == 2 and oshape[0] == shape[0] and (n.op == "reshape" or int(a["axis"]) == 1) \
                and oshape[1] == int(np.prod(shape[1:])):
            block = int(np.prod(shape[2:]))
            g.atoms[id(out)] = [atom for atom in xa for _ in range(block)]
            return None
        if oshape[:2] == shape[:2]:
            g.atoms[id(out)] = xa
            return None
    return opaque(f"{what}: an op pruning does not look through")


# ----------------------------------------------------------------------------- choosing


def scores(g: ChannelGraph, criterion: str = "l1", samples: dict[str, np.ndarray] | None = None) -> dict[int, float]:
    """Class root -> its score (see the module docstring). ``activation``: a channel's mean
    absolute output over the calibration ``samples`` instead of its weight norm."""
    if criterion not in CRITERIA:
        raise InputError(f"--criterion must be one of {', '.join(CRITERIA)}, got '{criterion}'")
    mean_abs = _mean_activations(g, samples) if criterion == "activation" else {}
    norm: dict[int, float] = {}
    for k, s in enumerate(g.sources):
        rows = np.moveaxis(s.weight.astype(np.float64), s.axis, 0).reshape(len(s.atoms), -1)
        r = (mean_abs[k] if criterion == "activation" else
             np.abs(rows).sum(axis=1) if criterion == "l1" else np.sqrt((rows ** 2).sum(axis=1)))
        r = r / max(float(r.mean()), 1e-30)
        for atom, value in zip(s.atoms, r):
            norm[atom] = float(value)
    return {root: sum(norm[a] for a in atoms) for root, atoms in g.classes().items()}


def _mean_activations(g: ChannelGraph, samples: dict[str, np.ndarray] | None) -> dict[int, np.ndarray]:
    """Source number -> the mean absolute value of each of its output channels over the
    calibration samples (the unpruned module), read after the ReLU or BN that follows it."""
    if samples is None:
        raise InputError("--criterion activation ranks channels by their outputs on calibration samples: give --calib")

    def read(v: Value) -> Value:  # (past the ReLU, BN ... after it: what the consumers read)
        while len(v.uses()) == 1 and v.users()[0].op in _PASS_THROUGH | {"batch_normalization"} \
                and g.of(v.users()[0].outputs[0]) is g.of(v) and not v.is_graph_output:
            v = v.users()[0].outputs[0]
        return v

    number = {id(read(s.node.outputs[0])): k for k, s in enumerate(g.sources)}
    sums: dict[int, np.ndarray] = {}

    def see(v: Value, a: np.ndarray) -> None:
        axes = tuple(i for i in range(a.ndim) if i != 1)
        m = np.abs(a.astype(np.float64)).mean(axis=axes)
        k = number[id(v)]
        sums[k] = sums.get(k, 0) + m

    n = check_samples(g.module, samples)
    for feeds in iterate(samples, n):
        run_watching(g.module, feeds, set(number), see)
    return {k: v / n for k, v in sums.items()}


def choose(g: ChannelGraph, ratio: float, criterion: str = "l1", mode: str = "uniform", round_to: int = 1,
           samples: dict[str, np.ndarray] | None = None) -> set[int]:
    """The class roots to remove: ``ratio`` of each group's classes (``uniform``) or of all
    classes (``global``), lowest scores first, at least one class of each group kept.
    ``round_to`` (uniform): each group keeps a multiple of it, the nearest (ties keep more):
    channel counts a CPU's vector blocks divide (mnist_conv's first conv cut from 8 to 6
    channels leaves x86's blocked layout and ran 3x slower, bench/RESULTS.md)."""
    if round_to < 1:
        raise InputError(f"--round-to must be a positive number of channels, got {round_to}")
    if not 0.0 <= ratio < 1.0:
        raise InputError(f"--ratio must be at least 0 and below 1, got {ratio}")
    score = scores(g, criterion, samples)
    groups: dict[frozenset[int], list[int]] = {}
    for root, atoms in g.classes().items():
        groups.setdefault(frozenset(g.source_of[a][0] for a in atoms), []).append(root)
    removed: set[int] = set()
    if mode == "uniform":
        for roots in groups.values():
            n = min(int(round(ratio * len(roots))), len(roots) - 1)
            if round_to > 1 and len(roots) >= round_to:
                n = len(roots) - min(len(roots), round_to * max(1, int((len(roots) - n) / round_to + 0.5)))
            removed |= set(sorted(roots, key=lambda r: (score[r], r))[:n])
        return removed
    if mode != "global":
        raise InputError(f"pruning mode must be uniform or global, got '{mode}'")
    total = sum(len(r) for r in groups.values())
    left = {key: len(roots) for key, roots in groups.items()}
    key_of = {r: key for key, roots in groups.items() for r in roots}
    for root in sorted(score, key=lambda r: (score[r], r)):
        if len(removed) >= int(round(ratio * total)):
            break
        if left[key_of[root]] > 1:
            removed.add(root)
            left[key_of[root]] -= 1
    return removed


# ----------------------------------------------------------------------------- removal


@dataclass
class LayerFit:
    """A consumer refitted by ``reconstruct``: the relative error of its output on the
    calibration samples against the unpruned model's, before and after the refit."""

    name: str
    inputs: tuple[int, int]
    """Input channels before and after pruning."""
    error_before: float
    error_after: float


@dataclass
class PruneReport:
    """What ``prune`` removed: per source (by output name), channels before and after; and
    per refitted consumer (``reconstruct``), its output error."""

    channels: dict[str, tuple[int, int]]
    params_before: int
    params_after: int
    kept: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    """Value name -> the channels it keeps (values that lost some)."""
    fits: list[LayerFit] = field(default_factory=list)

    def table(self) -> str:
        lines = ["source | channels before | after", "---|---:|---:"]
        lines += [f"%{k} | {b} | {a}" for k, (b, a) in self.channels.items() if a != b]
        if self.fits:
            lines += ["", "refitted | input channels | output error, pruned | after least squares", "---|---|---:|---:"]
            lines += [f"%{f.name} | {f.inputs[0]} -> {f.inputs[1]} | {f.error_before:.4f} | {f.error_after:.4f}"
                      for f in self.fits]
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,} "
                     f"({self.params_after / max(1, self.params_before):.2f}x)")
        return "\n".join(lines)


def apply(g: ChannelGraph, removed: set[int]) -> PruneReport:
    """Remove the channels of the classes ``removed`` from ``g.module`` (in place)."""
    module = g.module
    before = module.parameter_count()

    def kept(v: Value | None) -> np.ndarray | None:
        atoms = g.of(v)
        if atoms is None:
            return None
        return np.asarray([i for i, a in enumerate(atoms) if g.find(a) not in removed], np.int64)

    def full(v: Value | None) -> bool:
        k = kept(v)
        return k is None or len(k) == len(g.of(v))

    def replace(n: Node, i: int, array: np.ndarray) -> None:
        _set_const(module, n, i, array)

    kept_by_name = {v.name: kept(v) for n in module.graph.nodes for v in n.outputs if not full(v)}
    for n in list(module.graph.nodes):
        if n.op == "const" or len(n.outputs) != 1:
            continue
        out, x = n.outputs[0], n.input(0)
        if full(out) and full(x):
            continue
        ko, ki = kept(out), kept(x)
        a = node_attrs(n)
        if n.op == "conv":
            w = _const(n.input(1))
            if int(a["group"]) == 1:
                w = w[ko] if ko is not None else w
                w = w[:, ki] if ki is not None else w
            else:  # depthwise: in and out channels are the same
                w = w[ko]
                n.attrs["group"] = len(ko)
            replace(n, 1, np.ascontiguousarray(w))
            if n.input(2) is not None and ko is not None:
                replace(n, 2, _const(n.input(2))[ko])
        elif n.op in ("gemm", "mat_mul"):
            w = _const(n.input(1))
            out_axis = 0 if n.op == "gemm" and a["transB"] else 1
            if ko is not None:
                w = np.take(w, ko, axis=out_axis)
            if ki is not None:
                w = np.take(w, ki, axis=1 - out_axis)
            replace(n, 1, np.ascontiguousarray(w))
            c = _const(n.input(2)) if n.op == "gemm" and n.input(2) is not None else None
            if c is not None and ko is not None and c.ndim >= 1 and c.shape[-1] == len(g.of(out)):
                replace(n, 2, np.ascontiguousarray(np.take(c, ko, axis=-1)))
        elif n.op == "batch_normalization":
            for i in range(1, 5):
                replace(n, i, _const(n.input(i))[ki])
        elif n.op == "reshape" and ko is not None:
            shape = np.array(_const(n.input(1)), np.int64)
            if shape[1] != -1:  # (channels, or a flattened block per channel)
                shape[1] = len(ko)
                replace(n, 1, shape)
        elif n.op in _BINARY:
            for i, v in enumerate(n.inputs):
                c = _const(v)
                if c is not None and c.size > 1:  # a per-channel constant (channel_graph checked)
                    rank = out.type.rank
                    sliced = np.take(c.reshape((1,) * (rank - c.ndim) + c.shape), ko, axis=1)
                    replace(n, i, np.ascontiguousarray(sliced.reshape(sliced.shape[rank - c.ndim:])))
    reinfer_types(module)
    DeadCodeElimination().run(module, None)
    channels = {s.node.outputs[0].name: (len(s.atoms), sum(g.find(a) not in removed for a in s.atoms))
                for s in g.sources}
    return PruneReport(channels, before, module.parameter_count(), kept_by_name)


def prune(module: Module, ratio: float, criterion: str = "l1", mode: str = "uniform",
          exclude: tuple[str, ...] = (), samples: dict[str, np.ndarray] | None = None,
          ridge: float = 1e-3, round_to: int = 1) -> PruneReport:
    """Prune ``module`` in place (see the module docstring); returns what was removed.
    ``samples`` (calibration inputs stacked on axis 0, as for ``quantize``): then refit the
    consumers of pruned channels by least squares (``reconstruct``)."""
    g = channel_graph(module, exclude)
    unknown = set(exclude) - {s.node.outputs[0].name for s in g.sources}
    if unknown:
        raise InputError(f"--exclude names no conv, gemm or matmul output: {sorted(unknown)}")
    original = copy_module(module) if samples is not None else None
    report = apply(g, choose(g, ratio, criterion, mode, round_to, samples))
    if original is not None:
        report.fits = reconstruct(original, module, samples, report.kept, ridge)
    return report


# ----------------------------------------------------------------------------- reconstruction


MAX_ROWS = 8192
"""Rows (output pixels over all samples) a refit solves over; more are subsampled."""


def _rows(n: Node, x: np.ndarray) -> np.ndarray:
    """The consumer's input as rows of what each output element reads: im2col patches
    ``[pixels, C*kh*kw]`` of a convolution (NCHW, batch 1), or the ``[N, K]`` matrix."""
    if n.op != "conv":
        return x.reshape(-1, x.shape[-1]).astype(np.float64)
    a = node_attrs(n)
    kh, kw = (int(d) for d in n.input(1).type.shape[2:])
    (sh, sw), (dh, dw) = (a.get("strides") or (1, 1)), (a.get("dilations") or (1, 1))
    sizes, begins, ends = window_geometry(x.shape[2:], [kh, kw], a, InputError)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (begins[0], ends[0]), (begins[1], ends[1])))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :sizes[0], :sizes[1]]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)


def _targets(n: Node, y: np.ndarray) -> np.ndarray:
    """The consumer's output as ``[rows, channels]`` matching ``_rows``."""
    return (y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1]) if n.op == "conv" else y.reshape(-1, y.shape[-1])).astype(
        np.float64)


def reconstruct(original: Module, pruned: Module, samples: dict[str, np.ndarray], kept: dict[str, np.ndarray],
                ridge: float = 1e-3) -> list[LayerFit]:
    """He et al. (ICCV 2017) without training: each convolution (one group) or gemm/matmul
    that lost input channels, in graph order, gets the weights and bias that best map its
    inputs *in the pruned model* (earlier layers already refitted) to its outputs *in the
    unpruned one* over the calibration samples: ridge least squares with an intercept (the
    removed channels' mean contribution moves into the bias). Returns each layer's error."""
    n_samples = check_samples(original, samples)
    by_name = original.graph.value_map()
    consumers = []
    for n in pruned.graph.nodes:
        if n.op not in ("conv", "gemm", "mat_mul") or len(n.outputs) != 1 or n.input(0) is None \
                or n.input(0).name not in kept or (n.op == "conv" and int(node_attrs(n)["group"]) != 1) \
                or (n.op == "gemm" and node_attrs(n)["transA"]) or n.outputs[0].name not in by_name:
            continue
        consumers.append(n)
    want: dict[str, list[np.ndarray]] = {n.outputs[0].name: [] for n in consumers}
    watched = {id(by_name[k]) for k in want}
    for feeds in iterate(samples, n_samples):
        run_watching(original, feeds, watched, lambda v, a: want[v.name].append(a))
    rng = np.random.default_rng(0)
    fits = []
    for n in consumers:
        name = n.outputs[0].name
        xs: list[np.ndarray] = []
        for feeds in iterate(samples, n_samples):
            run_watching(pruned, feeds, {id(n.input(0))}, lambda v, a: xs.append(a))
        rows = np.concatenate([_rows(n, x) for x in xs])
        y = np.concatenate([_targets(n, t) for t in want[name]])
        if name in kept:
            y = y[:, kept[name]]
        if len(rows) > MAX_ROWS:
            pick = rng.choice(len(rows), MAX_ROWS, replace=False)
            rows, y = rows[pick], y[pick]
        w = n.input(1).const_value
        trans = n.op == "gemm" and bool(node_attrs(n)["transB"])
        w_io = (w.reshape(w.shape[0], -1).T if n.op == "conv" or trans else w).astype(np.float64)  # [in, out]
        has_bias = n.op in ("conv", "gemm") and n.input(2) is not None \
            and np.asarray(n.input(2).const_value).size == w_io.shape[1]
        b0 = np.asarray(n.input(2).const_value, np.float64).reshape(-1) if has_bias else np.zeros(w_io.shape[1])
        norm = max(float(np.linalg.norm(y)), 1e-30)
        before = float(np.linalg.norm(rows @ w_io + b0 - y)) / norm
        design = np.concatenate([rows, np.ones((len(rows), 1))], axis=1) if has_bias else rows
        gram = design.T @ design
        k = rows.shape[1]  # (the intercept is not penalized)
        gram[np.arange(k), np.arange(k)] += ridge * max(float(np.mean(np.diag(gram)[:k])), 1e-30)
        theta = np.linalg.solve(gram, design.T @ y)
        after = float(np.linalg.norm(design @ theta - y)) / norm
        inputs = (int(by_name[n.input(0).name].type.shape[1]), int(n.input(0).type.shape[1]))
        if not after < before:  # (the pruned weights stay where a refit does not help)
            fits.append(LayerFit(name, inputs, before, before))
            continue
        new_w = theta[:k]
        weight = new_w.T.reshape(w.shape) if n.op == "conv" else (new_w.T if trans else new_w)
        _set_const(pruned, n, 1, np.ascontiguousarray(weight.astype(w.dtype)))
        if has_bias:
            _set_const(pruned, n, 2, theta[k].astype(w.dtype).reshape(np.shape(n.input(2).const_value)))
        fits.append(LayerFit(name, inputs, before, after))
    DeadCodeElimination().run(pruned, None)
    return fits


def _set_const(module: Module, n: Node, i: int, array: np.ndarray) -> None:
    """Input ``i`` of ``n`` becomes a new constant ``array`` (named after the old one)."""
    old = n.input(i)
    assert old is not None
    node = module.graph.insert_before(n, module.const(array, name=module.graph.names.suggest(old.name)))
    n.set_input(i, node.output)


__all__ = ["CRITERIA", "ChannelGraph", "PruneReport", "apply", "channel_graph", "choose", "prune", "scores"]
