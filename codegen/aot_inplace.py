"""The sharing rules of ``passes/memory_plan_rules.py`` applied to an AOT program's kernel
calls (``program_schedule``): concat and pad slices (``slices_in_place``), element-wise
writes over a dying input (``pointwise_inplace``), transposes and LRN the driver computes
in place itself (``driver_in_place``), and, below, TinyEngine's in-place channel-wise
layers: a depthwise convolution (channel multiplier 1) or a pooling layer whose input dies
at its step writes its output over that input, one channel at a time, through a scratch
of one output channel.

This is the planner's ``channel-wise`` sharing rule (``passes/memory_plan_rules.py``) made
real with TVM's kernels. TVM compiles a kernel for the whole tensor, so the driver calls a
kernel compiled for ONE channel instead, ``C`` times:

    for c in 0..C-1:
        kernel_c1(x + c * x_channel, w + c * w_channel, ..., scratch)
        memcpy(y + c * y_channel, scratch, y_channel)

with ``y`` at the same arena offset as ``x``. Output channel ``c`` ends at
``(c + 1) * y_channel <= (c + 1) * x_channel``: it only covers input channels already
consumed, so no channel is read after it is overwritten.

The one-channel kernel comes from effc itself: the node is copied into a one-node module
with channel count 1 (``group`` 1, every per-channel constant sliced to channel 0), lowered
the same way, and its arguments are matched one by one with the full kernel's: the data
and every per-channel weight advance by one channel per call (a weight slice must be
contiguous, and the sliced bytes must equal the one-channel module's weight), a shared
weight stays. Anything that does not match keeps the whole-tensor kernel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from effc.ir.core import Graph, Module, Node, Value
from effc.ir.opdef import REGISTRY, infer_types, node_attrs
from effc.ir.shapes import transpose_perm
from effc.ir.types import TensorType
from effc.passes.memory_plan_rules import CHANNELWISE_POOLS, pointwise_inputs, scratch_inplace, slice_offsets, view_input

from .aot import ALIGN, Interface, Schedule, Step, dtype_bytes, lower_for_aot, read_schedule


SLICED_INPUTS = {"conv": (1, 2)}
"""Inputs of a channel-wise op that hold one slice per channel along axis 0 (conv weight, bias)."""


@dataclass
class ChannelSplit:
    """How the driver runs one step channel by channel."""

    kernel: str
    """The one-channel kernel (a PrimFunc of the schedule)."""
    channels: int
    strides: list[int]
    """Per argument: bytes its pointer advances per channel (0: the same bytes every call);
    the last is the output's."""
    source: str
    """The effc value read in place (the data input)."""
    staged: list[int] = field(default_factory=list)
    """Arguments whose per-channel slices do not start on the kernels' alignment (a 3x3
    weight slice is 36 bytes): the driver copies each slice into the scratch first, since
    TVM compiles kernels for aligned buffers (vector loads that fault otherwise)."""

    @property
    def out_channel_bytes(self) -> int:
        return self.strides[-1]

    def scratch_layout(self, align: int) -> tuple[list[int], int]:
        """Offsets in the scratch of the output channel, then of each staged slice; total bytes."""
        at, offsets = 0, []
        for size in [self.out_channel_bytes] + [self.strides[k] for k in self.staged]:
            offsets.append(at)
            at += (size + align - 1) // align * align
        return offsets, at


@dataclass(frozen=True)
class BlockPermute:
    """A transpose the driver runs in place (``memory_plan_rules``' block permutation): the
    axes after the last moved one form blocks of ``block`` bytes that move whole; output
    block ``j`` (row-major over ``dims``, the output's leading axes) is input block
    ``sum(index_k * strides[k])``. The driver follows each cycle through a one-block scratch
    and a bit per block marking those moved."""

    dims: tuple[int, ...]
    strides: tuple[int, ...]
    block: int
    requires_in_place = True
    """(``schedule.own`` entries say whether the arena plan must put the output over the input.)"""

    @property
    def blocks(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64))

    def scratch_bytes(self, align: int) -> int:
        return (self.block + align - 1) // align * align + (self.blocks + 7) // 8

    @staticmethod
    def of(perm: tuple[int, ...], shape: tuple[int, ...], itemsize: int) -> "BlockPermute":
        moved = max((i for i, p in enumerate(perm) if p != i), default=-1) + 1
        in_stride = [int(np.prod(shape[a + 1:moved], dtype=np.int64)) for a in range(moved)]
        return BlockPermute(tuple(int(shape[p]) for p in perm[:moved]), tuple(in_stride[p] for p in perm[:moved]),
                            int(np.prod(shape[moved:], dtype=np.int64)) * itemsize)


@dataclass(frozen=True)
class LrnRing:
    """An ``lrn`` the driver runs in place (``memory_plan_rules``' channel window): before
    writing output channel ``c`` over input channel ``c`` it copies that channel into a ring
    of ``below + 1`` channels, from which it reads the channels below ``c``."""

    batch: int
    channels: int
    spatial: int
    """Elements per channel."""
    below: int
    above: int
    alpha: float
    beta: float
    bias: float
    size: int
    requires_in_place = True

    def scratch_bytes(self, align: int) -> int:
        return (self.below + 1) * self.spatial * 4


# ----------------------------------------------------------------------------- one-channel module


def _one_channel(t: TensorType) -> TensorType:
    return TensorType(t.dtype, (t.shape[0], 1, *t.shape[2:]))


def _slice_axis(value: Value, users: list[tuple[Node, int]], out_rank: int, channels: int) -> int | None:
    """The axis along which a constant holds one slice per channel; -1: shared by all
    channels; None: cannot tell (no split)."""
    shape = value.type.shape
    axes = set()
    for user, index in users:
        if index in SLICED_INPUTS.get(user.op, ()):
            axes.add(0)
        elif "elementwise" in REGISTRY[user.op].traits:
            axis = len(shape) - (out_rank - 1)  # numpy broadcasting against N,C,...
            axes.add(axis if 0 <= axis < len(shape) and shape[axis] != 1 else -1)
        else:
            return None
    if len(axes) != 1:
        return None
    axis = axes.pop()
    if axis >= 0 and (shape[axis] != channels or any(int(d) != 1 for d in shape[:axis])):
        return None
    return axis


def _users(graph: Graph, value: Value) -> list[tuple[Node, int]]:
    return [(n, i) for n in graph.nodes for i, v in enumerate(n.inputs) if v is value]


def _copy_node(graph: Graph, node: Node, inputs: list[Value | None]) -> Node:
    attrs = dict(node.attrs)
    if node.op == "conv":
        attrs["group"] = 1
    copy = Node(node.op, inputs, [o.type for o in node.outputs], attrs, output_names=[o.name for o in node.outputs],
                body=node.body)
    for v, t in zip(copy.outputs, infer_types(copy)):
        v.type = t
    return graph.append(copy)


def _sliced_const(module: Module, node: Node, axis: int) -> Node:
    array = node.output.const_value
    if axis >= 0:
        array = np.ascontiguousarray(np.take(array, [0], axis=axis))
    return module.const(array, name=node.output.name)


def channel_module(node: Node, data_index: int) -> Module | None:
    """``node`` for one channel: a module whose input is channel 0 of input ``data_index``."""
    x = node.input(data_index)
    out_rank = node.outputs[0].type.rank
    channels = int(x.type.shape[1])
    g = Graph(f"{node.outputs[0].name}_c1")
    m = Module(g)
    x1 = g.add_input(x.name, _one_channel(x.type))
    body_input = {i: k for k, i in enumerate(i for i, v in enumerate(node.inputs) if v is not None)}
    ins: list[Value | None] = []
    for i, v in enumerate(node.inputs):
        if i == data_index or v is None:
            ins.append(x1 if i == data_index else None)
            continue
        if v.producer is None or v.producer.op != "const":
            return None
        users = [(node, i)] if node.body is None else _users(node.body, node.body.inputs[body_input[i]])
        axis = _slice_axis(v, users, out_rank, channels)
        if axis is None:
            return None
        ins.append(g.append(_sliced_const(m, v.producer, axis)).output)
    if node.body is None:
        top = _copy_node(g, node, ins)
    else:
        body = Graph(node.body.name)
        mapping: dict[int, Value | None] = {}
        for bi, v in zip(node.body.inputs, [v for v in ins if v is not None]):
            mapping[id(bi)] = body.add_input(bi.name, v.type)
        for n in node.body.nodes:
            if n.op == "const":
                axis = _slice_axis(n.output, _users(node.body, n.output), out_rank, channels)
                if axis is None:
                    return None
                c = body.append(_sliced_const(m, n, axis))
            else:
                c = _copy_node(body, n, [None if v is None else mapping[id(v)] for v in n.inputs])
            mapping.update({id(o): co for o, co in zip(n.outputs, c.outputs)})
        body.set_outputs([mapping[id(o)] for o in node.body.outputs])
        top = g.append(Node("fused", ins, [o.type for o in body.outputs], node.attrs,
                            output_names=[node.outputs[0].name], body=body))
    if top.outputs[0].type != _one_channel(node.outputs[0].type):
        return None
    g.set_outputs([top.outputs[0]])
    return m


# ----------------------------------------------------------------------------- matching


def channelwise_node(node: Node) -> int | None:
    """The data input index of a node the driver may run in place channel by channel."""
    found = scratch_inplace(node)
    if found is None:
        return None
    first = node.body.first if node.body is not None else node
    if first.op != "conv" and first.op not in CHANNELWISE_POOLS:
        return None  # lrn and transpose need effc's own kernels
    return found[0]


def match_channel_kernel(full: Step, one: Step, full_weights: list[np.ndarray],
                         one_weights: list[np.ndarray], channels: int) -> list[int] | None:
    """Per argument of ``full``, the bytes its pointer advances per channel, when the
    one-channel step ``one`` takes the same arguments sliced to one channel; else None."""
    if len(full.args) != len(one.args):
        return None
    strides = []
    for a, b in zip(full.args, one.args):
        if a.dtype != b.dtype or len(a.shape) != len(b.shape):
            return None
        kind = b.storage_key[0]
        if kind in ("input", "output"):
            if a.storage_key[0] != "arena" or a.shape != (b.shape[0], channels, *b.shape[2:]):
                return None
            strides.append(b.nbytes)
            continue
        if kind != "weight" or a.storage_key[0] != "weight":
            return None
        wa, wb = full_weights[a.storage_key[1]], one_weights[b.storage_key[1]]
        if a.shape == b.shape and channels > 1:
            if not np.array_equal(wa, wb):
                return None
            strides.append(0)
            continue
        axes = [i for i, (p, q) in enumerate(zip(a.shape, b.shape)) if p != q]
        if len(axes) != 1 or a.shape[axes[0]] != channels or b.shape[axes[0]] != 1 \
                or any(d != 1 for d in a.shape[:axes[0]]):
            return None
        if not np.array_equal(np.take(wa.reshape(a.shape), [0], axis=axes[0]).reshape(wb.shape), wb):
            return None
        strides.append(b.nbytes)
    return strides


class Steps:
    """What the sharing rules need to know of a schedule: the effc node behind each step
    (by the value it writes), where each effc value lives, and when each storage is last read."""

    def __init__(self, schedule: Schedule, module: Module):
        self.values = module.graph.value_map()
        self.by_label = {label: key for key, label in schedule.labels.items()}
        self.last_read: dict[tuple[str, int], int] = {}
        for t, step in enumerate(schedule.steps):
            for a in step.args[:-1]:
                self.last_read[a.storage_key] = t
        for c in schedule.copies:
            self.last_read[c.source.storage_key] = len(schedule.steps)

    def node(self, step: Step) -> Node | None:
        value = self.values.get(step.writes)
        return value.producer if value is not None else None

    def storage(self, v: Value | None) -> tuple[str, int] | None:
        """Where ``v`` lives; a view (reshape ...) lives where its input does."""
        while v is not None and v.name not in self.by_label and v.producer is not None \
                and view_input(v.producer) is not None:
            v = v.producer.input(0)
        return None if v is None else self.by_label.get(v.name)

    def dies_at(self, key: tuple[str, int] | None, t: int, step: Step) -> bool:
        """``key`` is an arena tensor read by step ``t`` once and never after."""
        return (key is not None and key[0] == "arena" and self.last_read.get(key) == t
                and sum(a.storage_key == key for a in step.args) == 1)


def slices_in_place(schedule: Schedule, module: Module) -> int:
    """Copy-free ``concat`` and ``pad`` (``slice_offsets``): when an input is a contiguous
    byte range of the output, its producer writes straight into that range
    (``schedule.slices``). A concat's call is then elided; a pad's kernel still runs, but
    its copy of each input element lands on the element itself, so only the padding is
    new. Each input must be an arena tensor of its own, written by an earlier step, at an
    aligned offset. Returns the number of elided calls."""
    info = Steps(schedule, module)
    first_write: dict[tuple[str, int], int] = {}
    for t, step in enumerate(schedule.steps):
        first_write.setdefault(step.args[-1].storage_key, t)
    elided = 0
    for t, step in enumerate(schedule.steps):
        node = info.node(step)
        offsets = slice_offsets(node) if node is not None else None
        out = step.args[-1].storage_key
        if offsets is None or out[0] != "arena":
            continue
        keys = {j: info.storage(node.input(j)) for j in offsets}
        if len(set(keys.values())) != len(keys) or any(
                k is None or k[0] != "arena" or k in schedule.slices or k == out or first_write.get(k, t) >= t
                or offsets[j] % ALIGN for j, k in keys.items()):
            continue
        concat = node.op == "concat"
        if concat and (len(step.args) != len(node.inputs) + 1 or any(
                a.storage_key != k or a.nbytes != schedule.storages[k].nbytes for a, k in zip(step.args, keys.values()))):
            continue
        for j, k in keys.items():
            schedule.slices[k] = (out, offsets[j])
        step.elided = concat
        elided += concat
    return elided


def pointwise_inplace(schedule: Schedule, module: Module) -> int:
    """In-place candidates (``schedule.inplace``: output arena tensor -> the arena tensors it
    may be written over; the planner takes the first that dies at the step): the inputs the
    step's effc node reads element by element only (``pointwise_inputs``: elementwise ops, a
    conv's residual add) with the output's shape, dtype and size, where every arena tensor
    the kernel reads is an input of that node (one node, one kernel). Returns how many outputs."""
    info = Steps(schedule, module)
    found = 0
    for t in schedule.calls:
        step, node = schedule.steps[t], info.node(schedule.steps[t])
        out = step.args[-1]
        if node is None or out.storage_key[0] != "arena" or t in schedule.splits:
            continue
        inputs = {info.storage(v) for v in node.inputs if v is not None}
        if any(a.storage_key[0] == "arena" and a.storage_key not in inputs for a in step.args[:-1]):
            continue
        keys = [info.storage(node.input(i)) for i in pointwise_inputs(node)]
        same = [k[1] for k in keys if any(a.storage_key == k and (a.shape, a.dtype) == (out.shape, out.dtype)
                                          for a in step.args[:-1]) and k[0] == "arena"
                and schedule.storages[k].nbytes == schedule.storages[out.storage_key].nbytes]
        if same:
            schedule.inplace[out.storage_key[1]] = same
            found += 1
    return found


def split_channels(schedule: Schedule, module: Module, target: Mapping[str, Any]) -> int:
    """Steps to run in place channel by channel (``schedule.splits``); adds their one-channel
    kernels to ``schedule.prim_funcs`` and their outputs to ``schedule.inplace``. Returns how
    many."""
    info = Steps(schedule, module)
    found = 0
    for t, step in enumerate(schedule.steps):
        node = info.node(step)
        index = channelwise_node(node) if node is not None else None
        if index is None or step.args[-1].storage_key[0] != "arena" or not _plain_layout(step, node):
            continue
        x = node.input(index)
        key = info.storage(x)
        if not info.dies_at(key, t, step) or key in schedule.slices:
            continue  # the input must die here, read once by this kernel
        one = channel_module(node, index)
        if one is None:
            continue
        one_schedule = read_schedule(lower_for_aot(one, target), Interface.of(one))
        if len(one_schedule.steps) != 1 or one_schedule.copies:
            continue
        channels = int(x.type.shape[1])
        one_step = one_schedule.steps[0]
        strides = match_channel_kernel(step, one_step, schedule.weights, one_schedule.weights, channels)
        if strides is None or [a.storage_key for a, b in zip(step.args, one_step.args)
                               if b.storage_key[0] == "input"] != [key]:
            continue
        name = f"{step.kernel}_c1"
        schedule.prim_funcs.setdefault(name, one_schedule.prim_funcs[one_step.kernel])
        staged = [k for k, stride in enumerate(strides[:-1]) if stride % ALIGN]
        schedule.splits[t] = ChannelSplit(name, channels, strides, x.name, staged)
        schedule.inplace[step.args[-1].storage_key[1]] = [key[1]]
        found += 1
    return found


def _plain_layout(step: Step, node: Node) -> bool:
    """The step reads and writes its node's values in their own (NCHW) shapes, not in a
    blocked layout (``codegen/layout.py``), where channel ``c`` is not the ``c``-th slice."""
    shapes = {tuple(v.type.shape) for v in [*node.inputs, *node.outputs] if v is not None}
    return step.args[-1].shape == tuple(node.outputs[0].type.shape) and all(
        a.shape in shapes for a in step.args if a.storage_key[0] != "weight")


def driver_in_place(schedule: Schedule, module: Module) -> int:
    """Transposes and float32 LRNs whose input dies at their step run in place, computed by
    the driver itself (``schedule.own``; no kernel). Returns how many."""
    info = Steps(schedule, module)
    for t in schedule.calls:
        step, node = schedule.steps[t], info.node(schedule.steps[t])
        if node is None or node.op not in ("transpose", "lrn") or scratch_inplace(node) is None \
                or any(a.storage_key[0] != "weight" for a in step.args[1:-1]) \
                or not _plain_layout(step, node):  # LRN's kernel takes constants
            continue
        x, out, key = step.args[0], step.args[-1], step.args[0].storage_key
        if out.storage_key[0] != "arena" or not info.dies_at(key, t, step) or key in schedule.slices \
                or schedule.storages[key].nbytes != schedule.storages[out.storage_key].nbytes:
            continue
        a = node_attrs(node)
        if node.op == "transpose":
            schedule.own[t] = BlockPermute.of(transpose_perm(a.get("perm"), len(x.shape)), x.shape, dtype_bytes(x.dtype))
        elif x.dtype == "float32":
            size = int(a["size"])
            schedule.own[t] = LrnRing(x.shape[0], x.shape[1], int(np.prod(x.shape[2:], dtype=np.int64)),
                                      (size - 1) // 2, size // 2, float(a["alpha"]), float(a["beta"]),
                                      float(a["bias"]), size)
        else:
            continue
        schedule.inplace[out.storage_key[1]] = [key[1]]
    return len(schedule.own)


def program_schedule(module: Module, target: Mapping[str, Any], io_in_arena: bool = True,
                     pools: bool = True, lanes: int | None = None, int8_dot: str | None = None) -> Schedule:
    """The kernel calls of ``module``'s AOT program, with the sharing rules applied (the
    stages before the kernels are compiled); ``lanes``, ``int8_dot``: in the blocked
    layouts and integer kernels of a CPU with that many f32 vector lanes and that dot
    product (``lower_for_aot``)."""
    schedule = read_schedule(lower_for_aot(module, target, pools, lanes, int8_dot), Interface.of(module))
    schedule.io_in_arena = io_in_arena
    slices_in_place(schedule, module)
    split_channels(schedule, module, target)
    driver_in_place(schedule, module)
    pointwise_inplace(schedule, module)
    schedule.prune_kernels()
    return schedule
