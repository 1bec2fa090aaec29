"""What the memory planner and its verifier agree on: which values live in the arena and
which op may share memory between an input and its output.

Arena tensors are activations: graph inputs and every output of a node that is not
computable from constants alone (constants live in flash, and so do values computed from
them only, e.g. a ``constant_of_shape`` too large for fold-constants). A ``fused`` node is
one kernel: only its outputs are tensors.

Sharing rules (each names the op semantics that makes it safe):
- view: ``reshape``/``flatten``/``squeeze``/``unsqueeze``/``identity`` (trait ``view``)
  leave the bytes as they are, so the output is the input's memory.
- pointwise: an output may be written over input ``i`` when every output element depends
  on input ``i`` only at the same index, with the same shape and element size: elementwise
  ops without broadcasting of that input, fused chains of them, and a fused
  conv/gemm + elementwise epilogue over an input the epilogue alone reads (the residual
  of ``conv+add``). Element ``k`` is read before it is written, and no other element
  reads it.
- in place with scratch (the kernel gets the scratch as workspace at its step; all need
  the NC... layout the IR has, and an output no larger than the input):
  - channel-wise (TinyEngine's in-place depthwise convolution, extended to pooling): a
    depthwise conv with channel multiplier 1, or a max/average/global pool, with a fused
    pointwise epilogue or none, computes output channel ``c`` from input channel ``c``
    only. The kernel computes one output channel into the scratch (one output channel)
    and copies it to output offset ``c * out_channel_bytes``; that range ends before
    ``(c + 1) * in_channel_bytes``, so it covers input channels already consumed.
  - channel window (``lrn``): output channel ``c`` reads input channels ``c - lo .. c + hi``
    (``lo = (size - 1) // 2``). Before writing output channel ``c`` over input channel ``c``
    the kernel copies input channel ``c`` into a ring of ``lo + 1`` channels (the scratch),
    from which it reads the channels below ``c``; those above are still in place.
  - block permutation (``transpose``): the axes after the last moved one form contiguous
    blocks that move whole; the kernel permutes blocks cycle by cycle through a one-block
    scratch, with one bit per block marking those moved.
- slices: when ``concat`` joins along an axis with only 1s before it, input ``j`` is the
  contiguous byte range ``[k_j, k_j + bytes_j)`` of the output, so a producer can write
  straight into it and the concat copies nothing for that input. The same holds for a
  constant ``pad`` along one axis with only 1s before it (a channel pad of an N=1
  tensor): the input is the range after the leading padding; the pad kernel then only
  writes the padding (a copy of an element onto itself changes nothing).
"""
from __future__ import annotations

import numpy as np

from effc.ir.core import Graph, Node, Value
from effc.ir.opdef import REGISTRY, node_attrs
from effc.ir.shapes import transpose_perm

CHANNELWISE_POOLS = {"max_pool", "average_pool", "global_average_pool", "global_max_pool"}
SCRATCH_OPS = {"conv", "lrn", "transpose"} | CHANNELWISE_POOLS

# ----------------------------------------------------------------------------- arena values


def constant_values(graph: Graph) -> set[int]:
    """Ids of values computable from constants alone (``const`` outputs and everything
    computed only from them)."""
    const: set[int] = set()
    for n in graph.nodes:
        ins = [v for v in n.inputs if v is not None]
        if n.op == "const" or (ins and all(id(v) in const for v in ins)):
            const.update(id(o) for o in n.outputs)
    return const


def compute_nodes(graph: Graph) -> list[Node]:
    """The nodes that run as kernels, in graph order: every node with a non-constant output."""
    const = constant_values(graph)
    return [n for n in graph.nodes if any(id(o) not in const for o in n.outputs)]


def arena_values(graph: Graph) -> list[Value]:
    """Graph inputs, then the outputs of every kernel, in graph order."""
    const = constant_values(graph)
    out = list(graph.inputs)
    for n in graph.nodes:
        out.extend(o for o in n.outputs if id(o) not in const)
    return out


def node_key(node: Node) -> str:
    """How a plan names a node: its first output (unique in the graph)."""
    return node.outputs[0].name


def nbytes(v: Value) -> int:
    size = v.type.nbytes()
    if size is None:
        raise ValueError(f"%{v.name} has a symbolic shape {v.type}")
    return size


# ----------------------------------------------------------------------------- views


def view_input(node: Node) -> int | None:
    """Input index whose bytes a view op's output is (None if ``node`` is no view)."""
    op = REGISTRY.get(node.op)
    if op is None or "view" not in op.traits or len(node.outputs) != 1:
        return None
    x = node.input(0)
    if x is None or x.type.nbytes() != node.outputs[0].type.nbytes():
        return None
    return 0


# ----------------------------------------------------------------------------- pointwise


def _same_elements(a: Value, b: Value) -> bool:
    return a.type.shape == b.type.shape and a.type.dtype.itemsize == b.type.dtype.itemsize


def _pointwise_from(body: Graph, source: Value) -> bool:
    """Does the body's single output depend on ``source`` only element by element?"""
    dep: dict[int, str] = {id(source): "pointwise"}
    for n in body.nodes:
        seen = {dep.get(id(v)) for v in n.inputs if v is not None} - {None}
        if not seen:
            continue
        op = REGISTRY.get(n.op)
        pointwise = (op is not None and "elementwise" in op.traits and len(n.outputs) == 1 and seen == {"pointwise"}
                     and all(_same_elements(v, n.outputs[0]) for v in n.inputs
                             if v is not None and dep.get(id(v)) == "pointwise"))
        for o in n.outputs:
            dep[id(o)] = "pointwise" if pointwise else "any"
    return len(body.outputs) == 1 and dep.get(id(body.outputs[0])) == "pointwise"


def pointwise_inputs(node: Node) -> list[int]:
    """Input indices the (single) output may overwrite because it reads them element by element."""
    if len(node.outputs) != 1:
        return []
    out = node.outputs[0]
    found = []
    for i, v in enumerate(node.inputs):
        if v is None or not _same_elements(v, out) or any(node.input(j) is v for j in range(i)):
            continue
        if node.body is not None:
            ok = _pointwise_from(node.body, node.body.inputs[i])
        else:
            op = REGISTRY.get(node.op)
            ok = op is not None and "elementwise" in op.traits
        if ok:
            found.append(i)
    return found


# ----------------------------------------------------------------------------- with scratch


def channel_bytes(v: Value) -> int:
    """Bytes of one channel of an N,C,... tensor."""
    n = 1
    for d in v.type.shape[2:]:
        n *= int(d)
    return n * v.type.dtype.itemsize


def _scratch_plain(node: Node) -> int | None:
    """Scratch bytes with which ``node`` may write its output over input 0, or None."""
    x, out = node.input(0), node.outputs[0] if node.outputs else None
    if x is None or out is None or x.type.rank < 3 or x.type.rank != out.type.rank:
        return None
    if x.type.dtype.itemsize != out.type.dtype.itemsize or not x.type.is_static or not out.type.is_static:
        return None
    if any(o.num_uses or o.is_graph_output for o in node.outputs[1:]) or nbytes(x) < nbytes(out):
        return None
    same_nc = x.type.shape[:2] == out.type.shape[:2]
    if node.op == "conv" and same_nc and node_attrs(node)["group"] == x.type.shape[1]:
        return channel_bytes(out)
    if node.op in CHANNELWISE_POOLS and same_nc:
        return channel_bytes(out)
    if node.op == "lrn" and x.type.shape == out.type.shape:
        below = (int(node_attrs(node)["size"]) - 1) // 2
        return (below + 1) * channel_bytes(x)
    if node.op == "transpose":
        perm = transpose_perm(node_attrs(node).get("perm"), x.type.rank)
        moved = max((i for i, p in enumerate(perm) if p != i), default=-1) + 1
        block, blocks = 1, 1
        for i, d in enumerate(x.type.shape):
            block, blocks = (block * int(d), blocks) if i >= moved else (block, blocks * int(d))
        return block * x.type.dtype.itemsize + (blocks + 7) // 8
    return None


def scratch_inplace(node: Node) -> tuple[int, int] | None:
    """(input index, scratch bytes) when ``node``'s kernel may write its output over that
    input with the help of a scratch buffer; None otherwise."""
    if node.body is None:
        scratch = _scratch_plain(node)
        return None if scratch is None else (0, scratch)
    if len(node.outputs) != 1 or len(node.body.outputs) != 1:
        return None
    first = node.body.first
    scratch = _scratch_plain(first) if first is not None and first.op in SCRATCH_OPS else None
    data = first.input(0) if first is not None else None
    if scratch is None or data is None or data.producer is not None or data.num_uses != 1:
        return None  # the data input must be a body input read by this op alone
    if first.outputs[0] is not node.body.outputs[0] and not _pointwise_from(node.body, first.outputs[0]):
        return None
    index = next(i for i, b in enumerate(node.body.inputs) if b is data)
    x, out = node.input(index), node.outputs[0]
    if x is None or x.type.shape[:2] != out.type.shape[:2] or nbytes(x) < nbytes(out):
        return None
    return index, scratch


# ----------------------------------------------------------------------------- slices


def _contiguous_axis(out: Value, axis: int) -> bool:
    return out.type.is_static and all(int(d) == 1 for d in out.type.shape[:axis])


def slice_offsets(node: Node) -> dict[int, int] | None:
    """Input index -> byte offset inside the output, for inputs that are a contiguous byte
    range of a ``concat`` or ``pad`` output (see the module docstring); None otherwise."""
    if len(node.outputs) != 1 or not node.outputs[0].type.is_static:
        return None
    out = node.outputs[0]
    if node.op == "concat":
        axis = int(node_attrs(node)["axis"]) % max(1, out.type.rank)
        if not _contiguous_axis(out, axis) or any(v is None or not v.type.is_static for v in node.inputs):
            return None
        offsets, at = {}, 0
        for i, v in enumerate(node.inputs):
            offsets[i] = at
            at += nbytes(v)
        return offsets
    if node.op == "pad" and node_attrs(node)["mode"] == "constant":
        return _pad_offset(node, out)
    return None


def _pad_offset(node: Node, out: Value) -> dict[int, int] | None:
    """A constant pad along one axis with only 1s before it: the input is one contiguous range."""
    pads, axes_v = node.input(1).const_value if node.input(1) is not None else None, node.input(3)
    axes = axes_v.const_value if axes_v is not None else None
    if pads is None or (axes_v is not None and axes is None):
        return None
    rank, pads = out.type.rank, [int(p) for p in pads.reshape(-1)]
    axes = [int(a) % rank for a in (range(rank) if axes is None else axes.reshape(-1))]
    padded = {a: pads[i] for i, a in enumerate(axes) if pads[i] or pads[i + len(axes)]}
    if len(pads) != 2 * len(axes) or min(pads, default=0) < 0 or len(padded) > 1:
        return None
    axis, before = next(iter(padded.items()), (0, 0))
    if not _contiguous_axis(out, axis):
        return None
    return {0: before * int(np.prod([int(d) for d in out.type.shape[axis + 1:]])) * out.type.dtype.itemsize}
