"""Structured channel pruning over effc's IR: dependency groups, a criterion, physical removal.

**Channels as atoms.** Every value with a channel axis gets a list of channel *atoms*, one
per position along that axis: axis 1 of an NCHW activation or of a ``[N, features]``
matrix, the last axis of a transformer's ``[batch, tokens, features]``, the heads' axis of
an attention tensor. A convolution with one group, a gemm and a matmul on a constant
weight create fresh atoms for their outputs (they are the *sources*: their weight rows can
go); what passes channels through keeps its input's list (ReLU/Clip and other elementwise
ops, BatchNormalization, pools, a depthwise convolution, dropout, a transpose, which moves
the axis, a softmax or LayerNorm over another axis); a concat along the channels
concatenates its inputs' lists; a flatten of ``[N, C, H, W]`` repeats each channel's atom
``H*W`` times (the feature block the next gemm reads). Ops that tie two channel lists
together (a residual ``add`` or ``sum`` of activations, ``mul``, ``sub``; a matmul of two
activations on a batch axis, as attention's Q.K^T and P.V are on the heads) unite their
atoms pairwise (union-find): Torch-Pruning's dependency graph (DepGraph, CVPR 2023), on
the deployed graph. Attention heads: the reshape ``[..., H*d] -> [..., H, d]`` unites each
head's ``d`` atoms into one (its target may be computed at run time from the input's
Shape, as PyTorch exports it: the constant ``H`` changes), and the merge back repeats each
head's atom ``d`` times. A grouped convolution unites the atoms at the same position of
each group, on its input and on its output (every group keeps the same positions), and
ShuffleNet's channel shuffle (reshape, transpose, reshape) permutes its input's atoms.

A **class** of united atoms is removed whole, or not at all. Atoms that reach an op the
rules do not know, a graph output, or a normalization over the channels are **frozen**:
their classes stay. Graph inputs and what such ops produce carry no atoms: an op that
couples a tracked value with one of them freezes the tracked one. A **group** is the set
of sources a class's atoms come from; its classes compete with each other.

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

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from effc.ir.core import Module, Node, Value
from effc.ir.errors import InputError
from effc.ir.interpreter import run_node
from effc.ir.opdef import node_attrs
from effc.ir.ops.nn import window_geometry
from effc.ir.ops.tensor import shape_entries
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
    """id(value) -> its channel atoms, one per position along its channel axis."""
    axes: dict[int, int] = field(default_factory=dict)
    """id(value) -> its channel axis (1 in NCHW and ``[N, features]``; the last axis of a
    ``[batch, tokens, features]`` activation; the heads' axis of an attention tensor)."""
    parent: list[int] = field(default_factory=list)
    frozen: set[int] = field(default_factory=set)
    sources: list[_Source] = field(default_factory=list)
    source_of: dict[int, tuple[int, int]] = field(default_factory=dict)
    """atom -> (source number, row)."""
    why_frozen: dict[int, str] = field(default_factory=dict)
    shuffles: dict[int, int] = field(default_factory=dict)
    """id(the first reshape of a channel shuffle) -> its groups."""

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
                self.why_frozen.setdefault(ra, self.why_frozen.get(rb, ""))

    def unite_pairwise(self, a: list[int], b: list[int]) -> None:
        """Atom i of ``a`` with atom i of ``b``: two channel lists that must lose the same positions."""
        for p, q in zip(a, b):
            self.unite(p, q)

    def freeze(self, atoms: list[int], why: str) -> None:
        for a in atoms:
            r = self.find(a)
            self.frozen.add(r)
            self.why_frozen.setdefault(r, why)

    def of(self, v: Value | None) -> list[int] | None:
        return None if v is None else self.atoms.get(id(v))

    def axis_of(self, v: Value | None) -> int | None:
        return None if v is None else self.axes.get(id(v))

    def put(self, v: Value, atoms: list[int], axis: int) -> None:
        self.atoms[id(v)] = atoms
        self.axes[id(v)] = axis

    def groups(self, classes: dict[int, list[int]] | None = None) -> dict[frozenset[int], list[int]]:
        """Source numbers -> the roots of the classes whose atoms come from exactly them
        (the classes that compete with each other); ``classes``: ``self.classes()``."""
        out: dict[frozenset[int], list[int]] = {}
        for root, atoms in (self.classes() if classes is None else classes).items():
            out.setdefault(frozenset(self.source_of[a][0] for a in atoms), []).append(root)
        return out

    @staticmethod
    def unit(key: frozenset[int], class_atoms: list[int], round_to: int) -> int:
        """The fewest classes of group ``key`` (one of them: ``class_atoms``) whose channels
        make a multiple of ``round_to`` in each source: 1 for an attention head of 32 channels
        and ``round_to`` 16."""
        width = max(1, len(class_atoms) // max(1, len(key)))
        return round_to // math.gcd(round_to, width)

    def frozen_channels(self) -> dict[str, int]:
        """Why channels of the sources stay -> how many (the first reason their class met)."""
        out: dict[str, int] = {}
        for a in self.source_of:
            r = self.find(a)
            if r in self.frozen:
                why = self.why_frozen.get(r, "")
                out[why] = out.get(why, 0) + 1
        return out

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


def _dim(v: Value, axis: int) -> int | None:
    """The static size of axis ``axis`` of ``v``, or None."""
    t = v.type
    if not 0 <= axis < t.rank or not isinstance(t.shape[axis], int):
        return None
    return int(t.shape[axis])


def _aligned(c: np.ndarray, rank: int, axis: int, channels: int) -> str | None:
    """How a constant operand meets axis ``axis`` (of ``channels``) of a rank-``rank``
    value under broadcasting: ``"scalar"`` (one value for every channel, size 1 there),
    ``"sliced"`` (one value per channel along that axis: it loses the pruned ones), or
    None (it would change the result's rank)."""
    if c.ndim > rank:
        return None
    k = axis - (rank - c.ndim)
    if k < 0 or c.shape[k] == 1:
        return "scalar"
    return "sliced" if c.shape[k] == channels else None


def _shape_pieces(v: Value | None) -> list[tuple[int | None, int | None, Value | None]] | None:
    """``shape_entries`` of a reshape's target that prune may rewrite: a computed one only
    when that reshape is its one user."""
    if v is not None and v.const_value is None and len(v.users()) != 1:
        return None
    return shape_entries(v)


def _reads_dim(piece: Value | None, x: Value, axis: int) -> bool:
    """``piece`` is dim ``axis`` of ``x`` read at run time: unsqueeze(gather(shape(x), axis))."""
    n = piece.producer if piece is not None else None
    if n is not None and n.op == "unsqueeze":
        n = n.input(0).producer
    if n is None or n.op != "gather" or _const(n.input(1)) is None or np.asarray(_const(n.input(1))).size != 1:
        return False
    s = n.input(0).producer
    return s is not None and s.op == "shape" and s.input(0) is x and not node_attrs(s)["start"] \
        and int(np.asarray(_const(n.input(1))).reshape(-1)[0]) % x.type.rank == axis


def _keeps_leading(n: Node, x: Value, count: int) -> bool:
    """Reshape ``n`` keeps the first ``count`` dims of ``x`` as they are: each target entry
    is 0 (copy), the same static size, or that dim read from ``x``'s shape at run time."""
    pieces = _shape_pieces(n.input(1))
    if pieces is None or len(pieces) < count:
        return False
    zero_copies = not node_attrs(n)["allowzero"]
    for j, (value, _, piece) in enumerate(pieces[:count]):
        ok = (value == 0 and zero_copies) or (value is not None and value > 0 and value == _dim(x, j)) \
            or (value is None and _reads_dim(piece, x, j))
        if not ok:
            return False
    return True


def _unite_positions(g: ChannelGraph, atoms: list[int], groups: int) -> None:
    """Unite the atoms at the same position of each of ``groups`` equal blocks: removing a
    class removes the same positions from every group (a grouped conv, a channel shuffle)."""
    size = len(atoms) // groups
    for k in range(1, groups):
        g.unite_pairwise(atoms[:size], atoms[k * size:(k + 1) * size])


def _shuffle(g: ChannelGraph, n: Node) -> bool:
    """ShuffleNet's channel shuffle, reshape ``[N, C, H, W] -> [N, G, C/G, H, W]``, transpose
    (0, 2, 1, 3, 4), reshape back: the last value's channels are the input's permuted,
    ``y[p*G + k] = x[k*C/G + p]``; its groups keep the same positions. True when ``n``
    starts one (the last value's atoms are given now; ``apply`` resizes both reshapes)."""
    x, out = n.input(0), n.outputs[0]
    shape, oshape = tuple(x.type.shape), tuple(out.type.shape)
    if len(shape) != 4 or len(oshape) != 5 or not all(isinstance(d, int) for d in shape + oshape) \
            or oshape[0] != shape[0] or oshape[3:] != shape[2:] or oshape[1] * oshape[2] != shape[1] \
            or _const(n.input(1)) is None or out.num_uses != 1:
        return False
    t = out.users()[0]
    if t.op != "transpose" or list(node_attrs(t)["perm"] or ()) != [0, 2, 1, 3, 4] or t.outputs[0].num_uses != 1:
        return False
    back = t.outputs[0].users()[0]
    if back.op != "reshape" or tuple(back.outputs[0].type.shape) != shape or _const(back.input(1)) is None:
        return False
    groups, size, xa = oshape[1], oshape[2], g.of(x)
    _unite_positions(g, xa, groups)
    g.put(back.outputs[0], [xa[k * size + p] for p in range(size) for k in range(groups)], 1)
    g.shuffles[id(n)] = groups
    return True


def channel_graph(module: Module, exclude: tuple[str, ...] = ()) -> ChannelGraph:
    """The atoms and classes of ``module`` (unfused). ``exclude``: sources (by output name)
    whose output channels stay."""
    g = ChannelGraph(module)
    if any(n.body is not None for n in module.graph.nodes):
        raise InputError("prune works on an unfused model: run it before `fuse` (or -O2), e.g. after fold-bn")
    for n in module.graph.nodes:  # (graph inputs carry no atoms: nothing untracked is ever pruned)
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
    ax = g.axis_of(x)
    out = n.outputs[0] if len(n.outputs) == 1 else None
    a = node_attrs(n)

    def opaque(why: str) -> None:  # (its outputs carry no atoms: what reads them is not coupled to anything)
        for v in n.inputs:
            if g.of(v):
                g.freeze(g.of(v), why)

    def source(w: np.ndarray, axis: int) -> None:
        assert out is not None
        atoms = g.fresh(int(w.shape[axis]))
        g.put(out, atoms, out.type.rank - 1 if n.op == "mat_mul" else 1)
        k = len(g.sources)
        g.sources.append(_Source(n, w, axis, atoms))
        for row, atom in enumerate(atoms):
            g.source_of[atom] = (k, row)
        if out.name in exclude:
            g.freeze(atoms, f"--exclude {out.name}")

    def same(axis: int | None = ax) -> None:
        assert out is not None and xa is not None and axis is not None
        g.put(out, xa, axis)

    what = f"{n.op} -> %{out.name if out is not None else n.outputs[0].name}"
    if out is not None and g.of(out) is not None:  # (given by a pattern that starts earlier: a channel shuffle)
        return None
    if n.op == "reshape" and xa and ax == 1 and _shuffle(g, n):
        return None
    if n.op == "shape":  # only dims read by a gather that are not the channels': the rest are run-time sizes
        if not xa or all(u.op == "gather" and _const(u.input(1)) is not None and u.input(0) is n.outputs[0]
                         and all(int(i) % x.type.rank != ax for i in np.asarray(_const(u.input(1))).reshape(-1))
                         for u in n.outputs[0].users()):
            return None
        return opaque(f"{what}: reads the size of a pruned axis")
    if out is None:
        return opaque(f"{what}: several outputs")
    if n.op == "conv":
        w = _const(n.input(1))
        if w is None or x is None or x.type.rank != 4 or (n.input(2) is not None and _const(n.input(2)) is None) \
                or (xa and ax != 1):
            return opaque(f"{what}: not a 2-D conv with constant weights")
        group, cin = int(a["group"]), _dim(x, 1)
        if group == 1:
            return source(w, 0)
        if group == cin == w.shape[0] and w.shape[1] == 1 and xa:
            return same()  # depthwise: channel c in, channel c out
        if cin is not None and cin == group * w.shape[1] and w.shape[0] % group == 0 and w.shape[1] > 1:
            if xa:  # (every group keeps the same input positions: one class per position)
                _unite_positions(g, xa, group)
            source(w, 0)
            _unite_positions(g, g.of(out), group)  # (and the same output positions)
            return None
        return opaque(f"{what}: a grouped convolution with one input per group and more outputs")
    if n.op in ("gemm", "mat_mul") and _const(n.input(1)) is not None:
        w = _const(n.input(1))
        rank = x.type.rank if x is not None else 0
        if w.ndim != 2 or rank < 2 or (n.op == "gemm" and rank != 2) or (xa and ax != rank - 1):
            return opaque(f"{what}: not a product of the last axis with a constant 2-D weight")
        if n.op == "gemm" and (a["transA"] or (n.input(2) is not None and _const(n.input(2)) is None)):
            return opaque(f"{what}: transA or a computed bias")
        return source(w, 0 if n.op == "gemm" and a["transB"] else 1)
    if n.op == "mat_mul":  # two activations (attention): channels of a batch axis, the same in both
        y = n.input(1)
        ya, rank = g.of(y), out.type.rank
        if (xa or ya) and (not xa or not ya or ax != g.axis_of(y) or len(xa) != len(ya) or ax >= rank - 2
                           or x.type.rank != rank or y.type.rank != rank):
            return opaque(f"{what}: channels that are not a batch axis of both operands")
        if xa:
            g.unite_pairwise(xa, ya)
            same()
        return None
    if n.op == "batch_normalization":
        if any(_const(v) is None for v in n.inputs[1:]) or not xa or ax != 1:
            return opaque(f"{what}: computed parameters")
        return same()
    if n.op in ("softmax", "log_softmax", "layer_normalization"):
        if xa and (n.op != "layer_normalization" or all(_const(v) is not None for v in n.inputs[1:])):
            axis = int(a["axis"]) % x.type.rank
            if (n.op != "layer_normalization" and axis != ax) or (n.op == "layer_normalization" and ax < axis):
                return same()
        return opaque(f"{what}: normalizes over the channels")
    if n.op == "transpose":
        if xa:
            perm = list(a["perm"]) if a["perm"] is not None else list(range(x.type.rank))[::-1]
            return same(perm.index(ax))
        return None
    if n.op in _PASS_THROUGH:
        if not xa or out.type.rank != x.type.rank or any(
                v is not None and (_const(v) is None or _const(v).size != 1) for v in n.inputs[1:]):
            return opaque(f"{what}: not channel for channel")
        return same()
    if n.op in _BINARY and len(n.inputs) == 2:
        y = n.input(1)
        ya = g.of(y)
        rank = out.type.rank
        if xa and ya and ax == g.axis_of(y) and len(xa) == len(ya) and x.type.rank == y.type.rank == rank:
            g.unite_pairwise(xa, ya)
            return same()
        for act, other in ((0, 1), (1, 0)):
            av, ov = n.input(act), n.input(other)
            aa, axis = g.of(av), g.axis_of(av)
            if not aa or ov is None or av.type.rank != rank:
                continue
            c = _const(ov)
            how = _aligned(c, rank, axis, len(aa)) if c is not None else (
                "scalar" if ov.type.rank <= rank and _dim(ov, axis - (rank - ov.type.rank)) == 1 else None)
            if how is not None:  # (an attention mask [N, 1, 1, S] against the heads' scores)
                if g.of(ov):
                    g.freeze(g.of(ov), f"{what}: broadcast against other channels")
                g.put(out, aa, axis)
                return None
        return opaque(f"{what}: operands that do not match channel for channel")
    if n.op == "sum":  # (ONNX Sum: a residual join of any number of activations)
        if all(g.of(v) and g.axis_of(v) == ax and len(g.of(v)) == len(xa) and v.type.shape == out.type.shape
               for v in n.inputs):
            for v in n.inputs[1:]:
                g.unite_pairwise(xa, g.of(v))
            return same()
        return opaque(f"{what}: operands that do not match channel for channel")
    if n.op == "concat":
        axis = int(a["axis"]) % out.type.rank
        if any(g.of(v) and g.axis_of(v) != axis for v in n.inputs) or not any(g.of(v) for v in n.inputs):
            return opaque(f"{what}: not along the channels")
        atoms: list[int] = []
        for v in n.inputs:
            va = g.of(v)
            if va is None:
                if _dim(v, axis) is None:
                    return opaque(f"{what}: an input of unknown size")
                va = g.fresh(_dim(v, axis))
                g.freeze(va, f"{what}: an input without channels")
            atoms += va
        g.put(out, atoms, axis)
        return None
    if n.op in ("flatten", "reshape") and xa:
        shape, oshape = tuple(x.type.shape), tuple(out.type.shape)
        if n.op == "flatten" or _const(n.input(1)) is not None:
            if all(isinstance(d, int) for d in shape[1:] + oshape[1:]) and ax == 1:
                if len(oshape) == 2 and oshape[0] == shape[0] and (n.op == "reshape" or int(a["axis"]) == 1) \
                        and oshape[1] == int(np.prod(shape[1:])):
                    block = int(np.prod(shape[2:]))  # flatten -> gemm: each channel's block of features
                    g.put(out, [atom for atom in xa for _ in range(block)], 1)
                    return None
                if oshape[:2] == shape[:2]:
                    return same()
        rank = x.type.rank
        if n.op == "reshape" and ax == rank - 1 and len(oshape) == rank + 1 and _keeps_leading(n, x, rank - 1):
            heads, size = oshape[-2:]  # [..., H*d] -> [..., H, d]: attention heads, d channels each
            if isinstance(heads, int) and isinstance(size, int) and heads * size == len(xa):
                for h in range(heads):
                    for atom in xa[h * size + 1:(h + 1) * size]:
                        g.unite(xa[h * size], atom)
                g.put(out, [xa[h * size] for h in range(heads)], rank - 1)
                return None
        if n.op == "reshape" and ax == rank - 2 and len(oshape) == rank - 1 and _keeps_leading(n, x, rank - 2):
            size = _dim(x, rank - 1)  # [..., H, d] -> [..., H*d]: the heads merged again
            if size is not None and oshape[-1] == len(xa) * size:
                g.put(out, [atom for atom in xa for _ in range(size)], rank - 2)
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
        axes = tuple(i for i in range(a.ndim) if i != g.axis_of(v))
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
    ``round_to`` (uniform): each group keeps a multiple of it channels per source, the
    nearest (ties keep more; an attention head counts its d channels):
    channel counts a CPU's vector blocks divide (mnist_conv's first conv cut from 8 to 6
    channels leaves x86's blocked layout and ran 3x slower, bench/RESULTS.md)."""
    if round_to < 1:
        raise InputError(f"--round-to must be a positive number of channels, got {round_to}")
    if not 0.0 <= ratio < 1.0:
        raise InputError(f"--ratio must be at least 0 and below 1, got {ratio}")
    score = scores(g, criterion, samples)
    classes = g.classes()
    groups = g.groups(classes)
    removed: set[int] = set()
    if mode == "uniform":
        for key, roots in groups.items():
            n = min(int(round(ratio * len(roots))), len(roots) - 1)
            unit = g.unit(key, classes[roots[0]], round_to)
            if unit > 1 and len(roots) >= unit:
                n = len(roots) - min(len(roots), unit * max(1, int((len(roots) - n) / unit + 0.5)))
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


FROZEN_SHOWN = 3
"""Reasons for channels kept whole that the report lists (the most channels first)."""


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
    frozen: dict[str, int] = field(default_factory=dict)
    """Why source channels could not go -> how many (``ChannelGraph.frozen_channels``)."""
    speedup_steps: list = field(default_factory=list)
    """``prune_for_speedup``: every measured proposal (``SpeedupStep``), taken or not."""
    measured: tuple[float, float] | None = None
    """``prune_for_speedup``: the unpruned and the pruned model's cost, measured side by side."""
    unit: str = ""
    goal: float | None = None

    def table(self) -> str:
        lines = ["source | channels before | after", "---|---:|---:"]
        lines += [f"%{k} | {b} | {a}" for k, (b, a) in self.channels.items() if a != b]
        if self.speedup_steps:
            lines += ["", "proposal | classes | cost before | after | taken", "---|---|---:|---:|---"]
            lines += [f"{s.group} | {s.classes[0]} -> {s.classes[1]} | {fmt_cost(s.cost[0], self.unit)} | "
                      f"{fmt_cost(s.cost[1], self.unit)} | {'yes' if s.taken else s.note}" for s in self.speedup_steps]
        if self.measured is not None:
            before, after = self.measured
            verdict = "reached" if before / after >= (self.goal or 0) else "NOT reached: no cheaper proposal left"
            lines.append(f"measured side by side: {fmt_cost(before, self.unit)} -> {fmt_cost(after, self.unit)}, "
                         f"{before / after:.2f}x (goal {self.goal:g}x: {verdict})")
        if self.fits:
            lines += ["", "refitted | input channels | output error, pruned | after least squares", "---|---|---:|---:"]
            lines += [f"%{f.name} | {f.inputs[0]} -> {f.inputs[1]} | {f.error_before:.4f} | {f.error_after:.4f}"
                      for f in self.fits]
        for why, count in sorted(self.frozen.items(), key=lambda item: -item[1])[:FROZEN_SHOWN]:
            lines.append(f"kept whole: {count} channels ({why})")
        if len(self.frozen) > FROZEN_SHOWN:
            lines.append(f"kept whole: {sum(sorted(self.frozen.values())[:-FROZEN_SHOWN])} channels for "
                         f"{len(self.frozen) - FROZEN_SHOWN} other reasons")
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,} "
                     f"({self.params_after / max(1, self.params_before):.2f}x)")
        return "\n".join(lines)


def fmt_cost(cost: float, unit: str) -> str:
    """A measured cost as the report shows it: ``1.234 ms``, ``9.85M instructions``."""
    return f"{cost / 1e6:.2f}M instructions" if unit == "instructions" else f"{cost:.4g} {unit}".rstrip()


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
            group = int(a["group"])
            if group > 1 and w.shape[1] == 1 and len(g.of(out) or ()) == group:  # depthwise: in and out the same
                w = w[ko]
                n.attrs["group"] = len(ko)
            else:  # (grouped: every group keeps the same input positions, channel_graph united them)
                w = w[ko] if ko is not None else w
                if ki is not None:
                    cg = w.shape[1]
                    w = w[:, sorted({int(i) % cg for i in ki})] if group > 1 else w[:, ki]
            replace(n, 1, np.ascontiguousarray(w))
            if n.input(2) is not None and ko is not None:
                replace(n, 2, _const(n.input(2))[ko])
        elif n.op in ("gemm", "mat_mul") and _const(n.input(1)) is not None:
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
        elif n.op == "reshape" and id(n) in g.shuffles and ki is not None:  # [N, G, C/G, H, W]
            _resize_target(module, n, 2, len(ki) // g.shuffles[id(n)])
        elif n.op == "reshape" and ko is not None:
            _resize_target(module, n, g.axis_of(out), len(ko))
        elif n.op in _BINARY:
            axis, rank = g.axis_of(out), out.type.rank
            for i, v in enumerate(n.inputs):
                c = _const(v)
                if c is not None and _aligned(c, rank, axis, len(g.of(out))) == "sliced":
                    replace(n, i, np.ascontiguousarray(np.take(c, ko, axis=axis - (rank - c.ndim))))
    reinfer_types(module)
    DeadCodeElimination().run(module, None)
    channels = {s.node.outputs[0].name: (len(s.atoms), sum(g.find(a) not in removed for a in s.atoms))
                for s in g.sources}
    return PruneReport(channels, before, module.parameter_count(), kept_by_name, frozen=g.frozen_channels())


def check_exclude(g: ChannelGraph, exclude: tuple[str, ...]) -> None:
    """InputError for ``--exclude`` names that are no source's output."""
    unknown = set(exclude) - {s.node.outputs[0].name for s in g.sources}
    if unknown:
        raise InputError(f"--exclude names no conv, gemm or matmul output: {sorted(unknown)}")


def prune(module: Module, ratio: float, criterion: str = "l1", mode: str = "uniform",
          exclude: tuple[str, ...] = (), samples: dict[str, np.ndarray] | None = None,
          round_to: int = 1) -> PruneReport:
    """Prune ``module`` in place (see the module docstring); returns what was removed.
    ``samples`` (calibration inputs stacked on axis 0, as for ``quantize``): then refit the
    consumers of pruned channels by least squares (``reconstruct``)."""
    g = channel_graph(module, exclude)
    check_exclude(g, exclude)
    original = copy_module(module) if samples is not None else None
    report = apply(g, choose(g, ratio, criterion, mode, round_to, samples))
    if original is not None:
        report.fits = reconstruct(original, module, samples, report.kept)
    return report


# ----------------------------------------------------------------------------- reconstruction


MAX_ROWS = 8192
"""Rows (output pixels or tokens over all samples) a refit solves over; more are subsampled."""
HELD_OUT = 0.2
"""The share of calibration samples whose rows a refit does not fit on: the ridge is
chosen, and the refit kept or not, by the error on them (with fewer rows than inputs, as
with a transformer's wide layers on a few sequences, an unchecked fit only memorizes)."""
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


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


def reconstruct(original: Module, pruned: Module, samples: dict[str, np.ndarray],
                kept: dict[str, np.ndarray]) -> list[LayerFit]:
    """He et al. (ICCV 2017) without training: each convolution (one group) or gemm/matmul
    that lost input channels, in graph order, gets the weights and bias that best map its
    inputs *in the pruned model* (earlier layers already refitted) to its outputs *in the
    unpruned one* over the calibration samples: ridge least squares with an intercept (the
    removed channels' mean contribution moves into the bias). Returns each layer's error."""
    by_name = original.graph.value_map()
    consumers = []
    for n in pruned.graph.nodes:
        if n.op not in ("conv", "gemm", "mat_mul") or len(n.outputs) != 1 or n.input(0) is None \
                or n.input(0).name not in kept or (n.op == "conv" and int(node_attrs(n)["group"]) != 1) \
                or (n.op == "gemm" and node_attrs(n)["transA"]) or n.outputs[0].name not in by_name \
                or _const(n.input(1)) is None:
            continue
        consumers.append(n)
    fits = []
    for n, x, y, held in fit_data(original, pruned, samples, consumers, kept):
        name = n.outputs[0].name
        w = n.input(1).const_value
        rows = weight_rows(n, w).astype(np.float64)
        bias = _bias(n, rows.shape[0])
        design = np.concatenate([x, np.ones((len(x), 1))], axis=1) if bias is not None else x
        norm = max(float(np.linalg.norm(y[held])), 1e-30)
        before = float(np.linalg.norm(x[held] @ rows.T + _bias_value(n, bias, rows.shape[0]) - y[held])) / norm
        k = x.shape[1]
        fitting = (design[~held].T @ design[~held], design[~held].T @ y[~held])
        after, ridge = min((float(np.linalg.norm(design[held] @ _solve(*fitting, r, k) - y[held])) / norm, r)
                           for r in RIDGES)
        axis = 1 if n.op == "conv" else -1
        inputs = (int(by_name[n.input(0).name].type.shape[axis]), int(n.input(0).type.shape[axis]))
        if not after < before:  # (the pruned weights stay where a refit does not help)
            fits.append(LayerFit(name, inputs, before, before))
            continue
        theta = _solve(design.T @ design, design.T @ y, ridge, k)  # (all the rows, at the held-out ones' ridge)
        _set_const(pruned, n, 1, from_weight_rows(n, theta[:k].T.astype(w.dtype), w.shape))
        if bias is not None:
            set_bias(pruned, n, bias, theta[k])
        fits.append(LayerFit(name, inputs, before, after))
    DeadCodeElimination().run(pruned, None)
    return fits


def fit_data(original: Module, current: Module, samples: dict[str, np.ndarray], layers: list[Node],
             kept: dict[str, np.ndarray] | None = None) -> Iterator[tuple[Node, np.ndarray, np.ndarray, np.ndarray]]:
    """For each of ``layers`` (nodes of ``current``, in graph order): what a refit solves
    over, ``(node, rows, targets, held)``: its input rows in ``current`` (``_rows``), its
    output in ``original`` (the channels ``kept`` of it), at most ``MAX_ROWS`` of them, and
    which rows are held out (the samples' ``HELD_OUT`` share). Lazily: a layer refitted
    before the next is asked for changes that one's inputs."""
    n_samples = check_samples(original, samples)
    by_name = original.graph.value_map()
    want: dict[str, list[np.ndarray]] = {n.outputs[0].name: [] for n in layers}
    for feeds in iterate(samples, n_samples):
        run_watching(original, feeds, {id(by_name[k]) for k in want}, lambda v, a: want[v.name].append(a))
    rng = np.random.default_rng(0)
    runs = _Runs(current, samples, n_samples)
    for n in layers:
        name = n.outputs[0].name
        per_sample = [_rows(n, x) for x in runs.value(n.input(0))]
        rows = np.concatenate(per_sample)
        sample = np.repeat(np.arange(len(per_sample)), [len(r) for r in per_sample])
        y = np.concatenate([_targets(n, t) for t in want[name]])
        if kept and name in kept:
            y = y[:, kept[name]]
        if len(rows) > MAX_ROWS:
            pick = rng.choice(len(rows), MAX_ROWS, replace=False)
            rows, y, sample = rows[pick], y[pick], sample[pick]
        held = np.isin(sample, rng.permutation(len(per_sample))[:max(1, int(HELD_OUT * len(per_sample)))])
        if held.all():  # (one sample: hold out some of its rows)
            held = np.arange(len(rows)) % 5 == 0
        yield n, rows, y, held


class _Runs:
    """The pruned module run on every calibration sample node by node, only as far as
    asked: refitting a layer changes nothing before it, so the layers' inputs, asked for in
    graph order, come from one pass (a refit's new constants, inserted before its node, run
    when the pass gets there)."""

    def __init__(self, module: Module, samples: dict[str, np.ndarray], n: int):
        self.graph = module.graph
        self.envs = [{id(v): np.asarray(feeds[v.name]) for v in module.graph.inputs}
                     for feeds in iterate(samples, n)]
        self.last: Node | None = None

    def value(self, v: Value) -> list[np.ndarray]:
        node = self.last.next if self.last is not None else self.graph.first
        while id(v) not in self.envs[0]:
            assert node is not None, v.name
            for env in self.envs:
                outs = run_node(node, [None if x is None else env[id(x)] for x in node.inputs])
                env.update((id(o), r) for o, r in zip(node.outputs, outs))
            self.last, node = node, node.next
        return [env[id(v)] for env in self.envs]


def _solve(gram: np.ndarray, rhs: np.ndarray, ridge: float, k: int, scale: float | None = None) -> np.ndarray:
    """Ridge least squares from the normal equations ``gram @ theta = rhs``: ``ridge`` times
    ``scale`` (default: the mean of the gram's first ``k`` diagonal entries) added to those
    entries; the rest (the intercept, when there is one) is not penalized."""
    g = gram.copy()
    if scale is None:
        scale = float(np.mean(np.diag(gram)[:k])) if k else 0.0
    g[np.arange(k), np.arange(k)] += ridge * max(scale, 1e-30)
    return np.linalg.solve(g, rhs)


def weight_rows(n: Node, w: np.ndarray) -> np.ndarray:
    """A conv's, gemm's or matmul's constant weight as ``[outputs, reduction]``."""
    if n.op == "conv" or (n.op == "gemm" and node_attrs(n)["transB"]):
        return w.reshape(w.shape[0], -1)
    return w.T


def from_weight_rows(n: Node, rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``weight_rows`` undone: the weight of ``shape`` for ``n``."""
    if n.op == "conv" or (n.op == "gemm" and node_attrs(n)["transB"]):
        return np.ascontiguousarray(rows.reshape(shape))
    return np.ascontiguousarray(rows.T)


def _bias(n: Node, channels: int) -> tuple[Node, int] | None:
    """Where ``n``'s bias is: (``n``, 2) for a conv or gemm with one; (the add, its input)
    for a matmul whose only use is an add of a constant vector (PyTorch's Linear export)."""
    if n.op in ("conv", "gemm"):
        return (n, 2) if n.input(2) is not None and np.asarray(_const(n.input(2))).size == channels else None
    users = n.outputs[0].users()
    if len(users) != 1 or users[0].op != "add" or n.outputs[0].num_uses != 1:
        return None
    add = users[0]
    i = 1 if add.input(0) is n.outputs[0] else 0
    c = _const(add.input(i))
    return (add, i) if c is not None and c.shape == (channels,) else None


def _bias_value(n: Node, bias: tuple[Node, int] | None, channels: int) -> np.ndarray:
    """The bias ``n``'s own output includes (0 where it comes after, in an add)."""
    if bias is not None and bias[0] is n:
        return np.asarray(_const(n.input(2)), np.float64).reshape(-1)
    return np.zeros(channels)


def set_bias(module: Module, n: Node, bias: tuple[Node, int], intercept: np.ndarray) -> None:
    """A refit's intercept as ``n``'s bias (``_bias``): it replaces a bias ``n`` adds itself
    (its targets include it) and adds to one in the add after it (they do not)."""
    owner, i = bias
    old = np.asarray(_const(owner.input(i)))
    value = intercept + (0 if owner is n else old.reshape(-1))
    _set_const(module, owner, i, value.astype(old.dtype).reshape(old.shape))


def _resize_target(module: Module, n: Node, axis: int, size: int) -> None:
    """Reshape ``n`` makes ``size`` positions along ``axis``: its target entry there changes
    (in the constant shape, or in the constant piece of a computed one); 0 and -1 stay."""
    pieces = _shape_pieces(n.input(1))
    assert pieces is not None  # (channel_graph only looks through reshapes it can read)
    value, index, _ = pieces[axis]
    if value is None or value <= 0:
        return
    if index is None:
        shape = np.array(_const(n.input(1)), np.int64).reshape(-1)
        shape[axis] = size
        _set_const(module, n, 1, shape)
        return
    concat = n.input(1).producer
    piece = np.array(_const(concat.input(index)), np.int64)
    flat = piece.reshape(-1)
    flat[axis - next(j for j, p in enumerate(pieces) if p[1] == index)] = size
    _set_const(module, concat, index, piece)


def _set_const(module: Module, n: Node, i: int, array: np.ndarray) -> None:
    """Input ``i`` of ``n`` becomes a new constant ``array`` (named after the old one)."""
    old = n.input(i)
    assert old is not None
    node = module.graph.insert_before(n, module.const(array, name=module.graph.names.suggest(old.name)))
    n.set_input(i, node.output)


__all__ = ["CRITERIA", "ChannelGraph", "PruneReport", "apply", "channel_graph", "choose", "prune", "scores"]
