"""Ahead-of-time C programs: an effc module as kernels plus a plain C driver, with every
activation in one caller-provided arena and the weights in ``const`` arrays. No TVM
runtime, no malloc. Shared by the runtime-free Linux builds (``native.py``: LLVM kernels,
``libmodel.a`` and a static executable for aarch64, run under qemu-aarch64, or x86-64)
and the microcontroller flow (kernels from TVM's C target, built by arm-none-eabi-gcc).

Stages (``emit_program``):
1. ``lower_for_aot``: ``lower_to_relax``, then effc's fusion passes (``FuseTIR`` on
   effc's groups; each ``fused`` node becomes one kernel), then ``RewriteDataflowReshape``
   (reshapes become views, not copies) and the explicit-memory form of Relax
   (``ToNonDataflow``, ``RemovePurityChecking``, ``CallTIRRewrite``): ``main`` is now a
   straight list of ``alloc_tensor`` and kernel calls with explicit output buffers.
2. ``read_schedule``: that list as steps (kernel, DLTensor arguments) over storages:
   graph inputs, graph outputs, weights and arena tensors. A tensor that becomes a graph
   output is written straight into the caller's output buffer; an output that is a graph
   input, a weight or a second name of the same tensor is copied at the end.
3. ``aot_inplace``: a concat along an axis with only 1s before it copies nothing (each
   producer writes into its slice of the output; the call is dropped); depthwise
   convolutions and pools whose input dies at their step run in place, channel by channel
   (TinyEngine's rule, with one-channel kernels); a kernel that reads a dying input element
   by element (a residual add) writes its output over it.
4. ``aot_kernels.build_kernels``: the kernels, compiled by TVM (asserts off), with no
   full-size scratch buffers (``fold_scratch``).
5. ``plan_arena``: each arena tensor lives from the step that writes it to the last step
   that reads it (a concat input as long as the concat's output); an in-place output shares
   its input's block, a concat input sits inside its output's; each kernel's workspace and
   each split step's one-channel scratch live for their step. ``check_arena`` then checks
   the result on its own terms. Offsets come from effc's
   planner (``passes.memory_plan_offsets.assign_offsets``: greedy by size, best fit,
   breadth, hill climbing; the smallest arena wins).
6. ``aot_c``: the C files (``model.h``/``model.c``/``model_weights.c``/runtime/harness).

Why Relax's call list and not effc's memory plan (``plan_memory``) itself: after lowering,
one effc node is not always one kernel (a reshape is no kernel at all; some emitters emit
several Relax ops, and so several kernels). The sharing rules the deployed kernels honour
(views, pointwise and channel-wise in place, concat slices) are applied to that call list
and the offsets algorithm is effc's, so the arena equals the plan's where every rule the
plan used is one of these (``bench/deployed_arena.py``); LRN and transpose in place need
kernels of effc's own and are not used here.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tvm
from tvm import relax, tirx

from effc.ir.core import Module
from effc.ir.errors import EffcError, IndexOutOfRangeError
from effc.ir.types import TensorType
from effc.passes.memory_plan_offsets import Block, align_up, assign_offsets

from .aot_kernels import Kernels, build_kernels, kernel_flavor
from .build import Signature
from .relax import INDEX_CHECKS, lower_to_relax

ALIGN = 64
"""Alignment of the arena, of every tensor in it and of every weight. TVM's kernels are
compiled assuming 64-byte aligned buffers."""


class AotError(EffcError):
    """A module cannot become an AOT C program (other than an unsupported op)."""


class ToolchainError(EffcError):
    """A tool a build or a run needs is missing or failed; the message says what to install."""


@dataclass(frozen=True)
class Interface:
    """The program's inputs and outputs, names and types, in calling order."""

    inputs: tuple[tuple[str, TensorType], ...]
    outputs: tuple[tuple[str, TensorType], ...]

    @staticmethod
    def of(module: Module) -> "Interface":
        g = module.graph
        return Interface(tuple((v.name, v.type) for v in g.inputs), tuple((v.name, v.type) for v in g.outputs))

    @property
    def signature(self) -> Signature:
        return Signature(self.inputs, tuple(n for n, _ in self.outputs))


# ----------------------------------------------------------------------------- lowering


def aot_relax_passes() -> tvm.transform.Pass:
    """effc's fusion passes (as in ``build.relax_pipeline``), then Relax's own lowering up to
    explicit output buffers; no VM-specific stage runs."""
    return tvm.transform.Sequential([
        relax.transform.DeadCodeElimination(),
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseTIR(),
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.DeadCodeElimination(),
    ], name="effc_aot_relax")


def lower_for_aot(module: Module, target: Mapping[str, Any]) -> tvm.IRModule:
    _check_static(module)
    mod = lower_to_relax(module, labels_in_result=False)
    with tvm.transform.PassContext(opt_level=3), tvm.target.Target(dict(target)):
        return aot_relax_passes()(mod)


def _check_static(module: Module) -> None:
    bad = [v for v in module.graph.inputs if not v.type.is_static]
    if bad:
        fix = " ".join(f"--input-shape {v.name}=" + ",".join(str(d) if isinstance(d, int) else "1" for d in v.type.shape)
                       for v in module.graph.inputs)
        raise AotError("AOT C programs need static shapes; " + ", ".join(f"%{v.name} is {v.type}" for v in bad)
                       + f". Compile with `{fix}` (library: input_shapes={{...}}), before optimizing")


# ----------------------------------------------------------------------------- schedule


@dataclass
class Storage:
    """Bytes a DLTensor points into."""

    kind: str
    """``input``, ``output``, ``weight``, ``arena`` or ``status`` (an index check's result)."""
    index: int
    """Input/output position, weight number, or arena tensor number."""
    nbytes: int


@dataclass(frozen=True)
class TensorArg:
    """One DLTensor: a storage seen with a shape and dtype (a view shares the storage)."""

    storage_key: tuple[str, int]
    shape: tuple[int, ...]
    dtype: str
    """Relax dtype name (``float32``)."""

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * dtype_bytes(self.dtype)


@dataclass
class Step:
    kernel: str
    """The PrimFunc's name in the lowered module."""
    args: list[TensorArg]
    writes: str
    """The name of the effc value the step produces (its last output), for comments."""


@dataclass
class Copy:
    """An output copied at the end: from a storage into graph output ``output``."""

    output: int
    source: TensorArg


@dataclass
class Schedule:
    steps: list[Step]
    copies: list[Copy]
    storages: dict[tuple[str, int], Storage]
    weights: list[np.ndarray]
    prim_funcs: dict[str, tirx.PrimFunc]
    labels: dict[tuple[str, int], str] = field(default_factory=dict)
    """The effc value an arena or output storage holds, by name (for comments, and for the
    sharing rules, which look the value's node up)."""
    splits: dict[int, Any] = field(default_factory=dict)
    """Steps run in place channel by channel (``aot_inplace.ChannelSplit`` by step index)."""
    inplace: dict[int, int] = field(default_factory=dict)
    """Arena tensor -> the arena tensor whose bytes it takes over at the step that writes it
    (split steps, and kernels that read that input element by element)."""
    slices: dict[tuple[str, int], tuple[tuple[str, int], int]] = field(default_factory=dict)
    """Concat input storage -> (the concat's output storage, byte offset in it)."""
    checks: list[tuple[TensorArg, str]] = field(default_factory=list)
    """Index checks: (int64[3] status ``[bad, first bad index, axis length]`` in a
    ``status`` storage of its own, the checked node's description), in graph order. The
    driver reads them after the last kernel call and fails the run on the first bad one."""

    def kernel_at(self, t: int) -> str:
        """The kernel step ``t`` calls (the one-channel kernel of a split step)."""
        return self.splits[t].kernel if t in self.splits else self.steps[t].kernel

    def prune_kernels(self) -> None:
        """Forget the PrimFuncs no step calls any more."""
        used = {self.kernel_at(t) for t in range(len(self.steps))}
        self.prim_funcs = {n: f for n, f in self.prim_funcs.items() if n in used}


def dtype_bytes(dtype: str) -> int:
    t = tvm.runtime.DataType(dtype)
    return max(1, (t.bits * t.lanes + 7) // 8)


def _static_shape(ty: Any, what: str) -> tuple[int, ...]:
    shape = getattr(ty, "shape", None)
    if not isinstance(ty, relax.TensorType) or shape is None or not isinstance(shape, relax.ShapeExpr):
        raise AotError(f"internal: {what} has no static tensor type ({ty})")
    dims = []
    for d in shape.values:
        if not isinstance(d, tvm.tirx.IntImm):
            raise AotError(f"{what} has the symbolic shape {ty}; AOT C programs need static shapes")
        dims.append(int(d.value))
    return tuple(dims)


class _Reader:
    """Walks ``main`` once, binding each Relax var to a TensorArg (or a tuple of them)."""

    def __init__(self, mod: tvm.IRModule):
        from .relax import VALUE_NAMES

        self.mod = mod
        names = mod.attrs[VALUE_NAMES] if mod.attrs is not None and VALUE_NAMES in mod.attrs else {}
        self.names: dict[str, str] = {str(k): str(v) for k, v in names.items()}
        """Relax var name -> effc value name (from ``lower_to_relax``)."""
        self.env: dict[Any, Any] = {}
        self.storages: dict[tuple[str, int], Storage] = {}
        self.weights: list[np.ndarray] = []
        self._weight_keys: dict[Any, int] = {}
        self.steps: list[Step] = []
        self.n_arena = 0
        self.labels: dict[tuple[str, int], str] = {}

    def arg_of_var(self, var: relax.Var, kind: str, index: int) -> TensorArg:
        shape = _static_shape(var.ty, f"%{var.name}")
        arg = TensorArg((kind, index), shape, str(var.ty.dtype))
        self.storages[arg.storage_key] = Storage(kind, index, arg.nbytes)
        return arg

    def constant(self, c: tvm.ir.expr.Constant) -> TensorArg:
        array = c.value.numpy()
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._weight_keys:
            self._weight_keys[key] = len(self.weights)
            self.weights.append(np.ascontiguousarray(array))
            self.storages[("weight", self._weight_keys[key])] = Storage("weight", self._weight_keys[key], array.nbytes)
        dtype = str(c.ty.dtype)
        return TensorArg(("weight", self._weight_keys[key]), tuple(array.shape), dtype)

    def value(self, expr: Any) -> Any:
        if isinstance(expr, tvm.ir.expr.Constant):
            return self.constant(expr)
        if isinstance(expr, relax.Var):
            if expr not in self.env:
                raise AotError(f"internal: %{expr.name} used before it is bound")
            return self.env[expr]
        if isinstance(expr, relax.Tuple):
            return tuple(self.value(f) for f in expr.fields)
        raise AotError(f"AOT C programs cannot pass {type(expr).__name__} values ({expr}) between kernels")

    def bind(self, var: relax.Var, value: Any) -> None:
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            self.env[var] = self.call_op(var, value)
        elif isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar):
            self.call_kernel(value)
        elif isinstance(value, relax.TupleGetItem):
            self.env[var] = self.value(value.tuple_value)[value.index]
        else:
            self.env[var] = self.value(value)
            if isinstance(value, relax.Var) and isinstance(self.env[var], TensorArg) and var.name in self.names:
                self.labels.setdefault(self.env[var].storage_key, self.names[var.name])  # the effc value's name

    def call_op(self, var: relax.Var, call: relax.Call) -> TensorArg:
        name = call.op.name
        if name == "relax.builtin.alloc_tensor":
            arg = self.arg_of_var(var, "arena", self.n_arena)
            self.n_arena += 1
            return arg
        if name == "relax.reshape":
            src = self.value(call.args[0])
            view = TensorArg(src.storage_key, _static_shape(var.ty, f"%{var.name}"), str(var.ty.dtype))
            if view.nbytes != src.nbytes:
                raise AotError(f"internal: reshape %{var.name} changes the byte size")
            return view
        raise AotError(f"the lowered model calls {name}, which has no AOT C equivalent (only TVM kernels, "
                       "reshapes and tensor allocations do); build for x86 to run it with the Relax VM")

    def call_kernel(self, call: relax.Call) -> None:
        name = call.op.name_hint
        func = self.mod[call.op]
        if not isinstance(func, tirx.PrimFunc):
            raise AotError(f"internal: main calls the Relax function {name}; only TIR kernels are expected")
        args: list[TensorArg] = []
        for a in call.args:
            v = self.value(a)
            if not isinstance(v, TensorArg):
                raise AotError(f"kernel {name} takes a tuple or a non-tensor argument ({a}); not supported in AOT C")
            args.append(v)
        self.steps.append(Step(name, args, ""))


def read_schedule(mod: tvm.IRModule, iface: Interface) -> Schedule:
    """The steps of ``main`` (after ``lower_for_aot``) over explicit storages."""
    main = mod["main"]
    reader = _Reader(mod)
    for i, p in enumerate(main.params):
        reader.env[p] = reader.arg_of_var(p, "input", i)
    body = main.body
    for block in body.blocks:
        for b in block.bindings:
            if not isinstance(b, relax.VarBinding):
                raise AotError(f"internal: unexpected binding {type(b).__name__} in main")
            reader.bind(b.var, b.value)
    result = reader.value(body.body)
    if isinstance(result, TensorArg):
        result = (result,)
    n_out = len(iface.outputs)
    labels = [str(x) for x in mod.attrs[INDEX_CHECKS]] if mod.attrs is not None and INDEX_CHECKS in mod.attrs else []
    if len(result) != n_out + len(labels):
        raise AotError(f"internal: main returns {len(result)} values, the graph has {n_out} outputs "
                       f"and {len(labels)} index checks")
    for step in reader.steps:
        step.writes = reader.labels.get(step.args[-1].storage_key, "")
    checks = _home_checks(reader, list(result[n_out:]), labels)
    copies = _home_outputs(reader, list(result[:n_out]))
    used = {s.kernel for s in reader.steps}
    prims = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc) and gv.name_hint in used}
    return Schedule(reader.steps, copies, reader.storages, reader.weights, prims, reader.labels, checks=checks)


def _home_checks(reader: _Reader, statuses: list[TensorArg], labels: list[str]) -> list[tuple[TensorArg, str]]:
    """Move each index check's status out of the arena into a ``status`` storage of its
    own (the driver keeps it in a static buffer), so no later tensor reuses its bytes
    before the driver reads it."""
    checks = []
    for k, (arg, label) in enumerate(zip(statuses, labels)):
        key, home = arg.storage_key, ("status", k)
        if key[0] != "arena" or any(a is not arg and a.storage_key == key for a in statuses):
            raise AotError(f"internal: the status of index check {k} ({label}) is not a tensor of its own")
        reader.storages[home] = Storage("status", k, arg.nbytes)
        del reader.storages[key]
        for step in reader.steps:
            step.args = [TensorArg(home, a.shape, a.dtype) if a.storage_key == key else a for a in step.args]
        reader.labels.pop(key, None)
        checks.append((TensorArg(home, arg.shape, arg.dtype), label))
    return checks


def _home_outputs(reader: _Reader, results: list[TensorArg]) -> list[Copy]:
    """Write each output's arena tensor straight into the caller's buffer where possible."""
    moved: dict[tuple[str, int], tuple[str, int]] = {}
    copies = []
    for j, arg in enumerate(results):
        key = arg.storage_key
        reader.storages[("output", j)] = Storage("output", j, arg.nbytes)
        if key[0] == "arena" and key not in moved and reader.storages[key].nbytes == arg.nbytes:
            moved[key] = ("output", j)
            continue
        copies.append(Copy(j, TensorArg(moved.get(key, key), arg.shape, arg.dtype)))
    if not moved:
        return copies

    def rehome(a: TensorArg) -> TensorArg:
        return TensorArg(moved[a.storage_key], a.shape, a.dtype) if a.storage_key in moved else a

    for step in reader.steps:
        step.args = [rehome(a) for a in step.args]
    for key, home in moved.items():
        del reader.storages[key]
        if key in reader.labels:
            reader.labels[home] = reader.labels.pop(key)
    return copies


# ----------------------------------------------------------------------------- arena


@dataclass
class ArenaPlan:
    arena_bytes: int
    offsets: dict[int, int]
    """Arena tensor number -> byte offset."""
    workspace: list[tuple[int, int]]
    """Per step: (offset, bytes) of the kernel's workspace; bytes 0 when it needs none."""
    lifetimes: dict[int, tuple[int, int]]
    algorithm: str
    live_peak: int
    scratch: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Split steps: (offset, bytes) of the one-channel scratch the driver copies from."""


def plan_arena(schedule: Schedule, kernels: Kernels) -> ArenaPlan:
    """Offsets for the arena tensors, the kernels' workspaces and the split steps' scratch
    (see the module docstring). A split step's output shares its input's block: same base,
    the input up to the step, the output from it."""
    n_steps = len(schedule.steps)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for t, step in enumerate(schedule.steps):
        for a in step.args:
            kind, index = a.storage_key
            if kind == "arena":
                first.setdefault(index, t)
                last[index] = t
    for c in schedule.copies:
        if c.source.storage_key[0] == "arena":
            last[c.source.storage_key[1]] = n_steps  # read by the copies after the last step
    inplace = schedule.inplace

    def place(i: int) -> tuple[int, int]:
        """(the tensor whose block holds ``i``, ``i``'s byte offset in that block)."""
        if ("arena", i) in schedule.slices:
            (_, owner), at = schedule.slices[("arena", i)]
            r, o = place(owner)
            return r, o + at
        return place(inplace[i]) if i in inplace else (i, 0)

    def end(i: int) -> int:
        """A concat input lives as long as the concat's output (and its owners) does."""
        key = ("arena", i)
        return max(last[i], end(schedule.slices[key][0][1])) if key in schedule.slices else last[i]

    last = {i: end(i) for i in last}
    root = {i: place(i)[0] for i in first}
    rel = {i: place(i)[1] for i in first}
    groups: dict[int, list[int]] = {}
    for i in sorted(first):
        groups.setdefault(root[i], []).append(i)
    size = {i: align_up(schedule.storages[("arena", i)].nbytes, ALIGN) for i in first}
    blocks = [Block([(first[i], last[i], rel[i], rel[i] + size[i]) for i in members]) for members in groups.values()]
    extra: list[tuple[str, int, int]] = []
    for t in range(n_steps):
        if kernels.workspace_bytes(schedule.kernel_at(t)):
            extra.append(("workspace", t, kernels.workspace_bytes(schedule.kernel_at(t))))
        if t in schedule.splits:
            extra.append(("scratch", t, schedule.splits[t].scratch_layout(ALIGN)[1]))
    blocks += [Block([(t, t, 0, align_up(n, ALIGN))]) for _, t, n in extra]
    live = [0] * (n_steps + 1)
    for b in blocks:
        for t in range(b.span[0], b.span[1] + 1):
            live[t] += max((hi for f, l, _, hi in b.rects if f <= t <= l), default=0)
    if not blocks:
        return ArenaPlan(0, {}, [(0, 0)] * n_steps, {}, "none", 0)
    placed = assign_offsets(blocks, ALIGN, floor=max(live))
    offsets = {i: placed.bases[g] + rel[i] for g, members in enumerate(groups.values()) for i in members}
    workspace = [(0, 0)] * n_steps
    scratch = {}
    for k, (what, t, n) in enumerate(extra):
        if what == "workspace":
            workspace[t] = (placed.bases[len(groups) + k], n)
        else:
            scratch[t] = (placed.bases[len(groups) + k], n)
    return ArenaPlan(placed.arena, offsets, workspace, {i: (first[i], last[i]) for i in first},
                     placed.algorithm, max(live), scratch)


def check_arena(schedule: Schedule, plan: ArenaPlan) -> None:
    """The deployed plan's invariants, checked apart from how it was made: every tensor,
    workspace and scratch lies inside the arena on an aligned offset, and no two of them
    that are live at the same step share a byte, except a concat input at its offset inside
    the concat's output, and an output written in place over its input (or over the concat
    the input is a slice of) from the step that does it, at that input's offset. AotError
    otherwise."""
    items = [(f"%{schedule.labels.get(('arena', i), i)}", i, f, l, plan.offsets[i],
              schedule.storages[("arena", i)].nbytes) for i, (f, l) in sorted(plan.lifetimes.items())]
    items += [(f"workspace of step {t + 1}", None, t, t, off, n) for t, (off, n) in enumerate(plan.workspace) if n]
    items += [(f"scratch of step {t + 1}", None, t, t, off, n) for t, (off, n) in sorted(plan.scratch.items())]
    for name, _, _, _, off, n in items:
        if off % ALIGN or off < 0 or off + n > plan.arena_bytes:
            raise AotError(f"arena plan: {name} at {off}..{off + n} is unaligned or outside the {plan.arena_bytes}-byte arena")

    for (_, x), ((_, y), at) in sorted(schedule.slices.items()):
        if plan.offsets[x] != plan.offsets[y] + at:
            raise AotError(f"arena plan: concat input %{schedule.labels.get(('arena', x), x)} is at {plan.offsets[x]}, "
                           f"not at {plan.offsets[y]} + {at} inside %{schedule.labels.get(('arena', y), y)}")

    def within(x: int | None, y: int | None) -> bool:
        """``x`` is a concat input (of a concat input ...) of ``y``, at its place inside it."""
        if x is None or y is None:
            return False
        at, cur = 0, x
        while ("arena", cur) in schedule.slices:
            (_, cur), step = schedule.slices[("arena", cur)]
            at += step
            if cur == y:
                return plan.offsets[x] == plan.offsets[y] + at
        return False

    def owner(x: int | None) -> int | None:
        """The outermost concat output ``x`` is a slice of (``x`` itself if none)."""
        while x is not None and ("arena", x) in schedule.slices:
            x = schedule.slices[("arena", x)][0][1]
        return x

    for k, (a, i, f1, l1, o1, n1) in enumerate(items):
        for b, j, f2, l2, o2, n2 in items[k + 1:]:
            if f1 > l2 or f2 > l1 or o1 + n1 <= o2 or o2 + n2 <= o1:
                continue
            if within(i, j) or within(j, i):
                continue
            # an in-place output over a tensor (or over the concat a slice belongs to), from its step on
            handover = i is not None and j is not None and (
                (schedule.inplace.get(j) == owner(i) and l1 == f2 and o2 == plan.offsets[owner(i)])
                or (schedule.inplace.get(i) == owner(j) and l2 == f1 and o1 == plan.offsets[owner(j)]))
            if not handover:
                raise AotError(f"arena plan: {a} ({o1}..{o1 + n1}, steps {f1 + 1}..{l1 + 1}) overlaps {b} "
                               f"({o2}..{o2 + n2}, steps {f2 + 1}..{l2 + 1})")


# ----------------------------------------------------------------------------- program


_INDEX_FAILURE = re.compile(r"effc: index out of range: (.*): index (-?\d+) is out of range for an axis of "
                            r"length (\d+)")


def index_failure(log: str) -> IndexOutOfRangeError | None:
    """The error a test harness reported with exit status 3 (``aot_c.harness_c``): the
    same IndexOutOfRangeError, naming the node, as the Relax VM build raises."""
    m = _INDEX_FAILURE.search(log)
    return None if m is None else IndexOutOfRangeError(m.group(1), int(m.group(2)), int(m.group(3)))


def c_identifier(name: str) -> str:
    """A model name as the ASCII C identifier in ``effc_<name>_run`` (always prefixed, so
    it cannot clash with C's own names)."""
    out = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_").lower() or "model"
    return out if not out[0].isdigit() else f"m_{out}"


@dataclass(frozen=True)
class CToolchain:
    """How a C compiler builds a program: effc's files with ``cflags`` plus ``warnings``
    (-Werror), TVM's kernel source with ``kernel_cflags``, the link with ``ldflags``."""

    cc: str
    cflags: tuple[str, ...] = ("-std=c11", "-O2")
    kernel_cflags: tuple[str, ...] = ("-std=c11", "-O2", "-w")
    ldflags: tuple[str, ...] = ()
    ldlibs: tuple[str, ...] = ("-lm",)
    packages: tuple[str, ...] = ()
    """Debian packages that provide ``cc`` (named when it is missing)."""
    warnings: tuple[str, ...] = ("-Wall", "-Wextra", "-Werror")

    @property
    def ar(self) -> str:
        """The archiver of the same toolchain (``aarch64-linux-gnu-gcc`` -> ``aarch64-linux-gnu-ar``)."""
        return self.cc[:-3] + "ar" if self.cc.endswith("gcc") else "ar"

    def objects(self, flavor: str) -> list[tuple[str, str]]:
        """(source, object) pairs of a program; the LLVM kernels come as an object already."""
        from . import aot_c

        pairs = [(aot_c.DRIVER, "model.o"), (aot_c.WEIGHTS, "model_weights.o"), (aot_c.RUNTIME_C, "effc_runtime.o"),
                 (aot_c.HARNESS, "main.o")]
        pairs.append(("", aot_c.KERNELS_O) if flavor == "llvm" else (aot_c.KERNELS_C, "model_kernels.c.o"))
        return pairs

    def require(self) -> str:
        """The compiler's path; ToolchainError naming the package when it is missing."""
        path = shutil.which(self.cc)
        if path is None:
            pkgs = " ".join(self.packages) or "a C compiler"
            raise ToolchainError(f"the C compiler {self.cc} is not on PATH; install it "
                                 f"(Debian/Ubuntu: apt-get install {pkgs})")
        return path


@dataclass
class AotProgram:
    """An AOT C program: its files (name -> bytes) and what a runner needs to know."""

    name: str
    """The C identifier in ``effc_<name>_run``."""
    interface: Interface
    flavor: str
    files: dict[str, bytes]
    arena_bytes: int
    steps: int
    kernel_object: str = ""
    """Name of the kernels' object file among ``files`` (LLVM flavour), else empty."""
    kernel_source: str = ""
    """Name of the kernels' C file (C flavour), else empty."""
    effc_sources: list[str] = field(default_factory=list)
    """effc's own C files, which must compile with -Wall -Wextra -Werror."""
    notes: dict[str, Any] = field(default_factory=dict)

    def write_sources(self, folder: str | Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in self.files.items():
            (folder / name).write_bytes(data)
            paths.append(folder / name)
        return paths


def program_schedule(module: Module, target: Mapping[str, Any]) -> Schedule:
    """The kernel calls of ``module``'s AOT program, with the sharing rules applied (the
    stages before the kernels are compiled)."""
    from .aot_inplace import concat_in_place, pointwise_inplace, split_channels

    schedule = read_schedule(lower_for_aot(module, target), Interface.of(module))
    concat_in_place(schedule, module)  # drops steps: before the rules that index them
    split_channels(schedule, module, target)
    pointwise_inplace(schedule, module)
    schedule.prune_kernels()
    return schedule


def emit(module: Module, target: Mapping[str, Any], toolchain: CToolchain, name: str | None = None,
         database: Any = None) -> tuple[AotProgram, Schedule, ArenaPlan]:
    """``emit_program``, also returning the schedule and the arena plan (for reports).
    ``database``: a MetaSchedule database whose schedules the kernels it holds get."""
    from . import aot_c

    kernel_flavor(target)
    name = c_identifier(name or module.name)
    iface = Interface.of(module)
    schedule = program_schedule(module, target)
    kernels = build_kernels(schedule.prim_funcs, target, f"effc_{name}", database=database)
    plan = plan_arena(schedule, kernels)
    check_arena(schedule, plan)
    return aot_c.write_program(name, iface, schedule, plan, kernels, dict(target), toolchain), schedule, plan


def emit_program(module: Module, target: Mapping[str, Any], toolchain: CToolchain, name: str | None = None) -> AotProgram:
    """``module`` (optimized, static shapes) as an AOT C program for ``target`` (a TVM target
    dict of kind ``llvm`` or ``c``); ``toolchain`` goes into its Makefile."""
    return emit(module, target, toolchain, name)[0]


def compile_program(program: AotProgram, toolchain: CToolchain, folder: str | Path, output: str = "model",
                    extra_files: Mapping[str, bytes] | None = None, library: str = "") -> Path:
    """Write the program's sources to ``folder`` and build ``folder/output`` with ``toolchain``
    (one compiler process per file, in parallel). ``extra_files`` (a board's startup code,
    its linker script) are written beside them; the ``.c`` ones are compiled like effc's
    own files and linked first. ``library``: also archive every object but the test
    harness into ``folder/library``. Returns the executable's path."""
    cc = toolchain.require()
    folder = Path(folder)
    program.write_sources(folder)
    extra = dict(sorted((extra_files or {}).items()))
    for name, data in extra.items():
        (folder / name).write_bytes(data)
    extra_objs = [(name, name[:-2] + ".o") for name in extra if name.endswith(".c")]
    pairs = extra_objs + toolchain.objects(program.flavor)
    jobs = []
    for src, obj in pairs:
        if not src:
            continue
        flags = toolchain.kernel_cflags if src == program.kernel_source else toolchain.cflags + toolchain.warnings
        jobs.append([cc, *flags, "-c", src, "-o", obj])
    with ThreadPoolExecutor(max_workers=4) as pool:
        for cmd, proc in zip(jobs, pool.map(lambda c: _run_tool(c, folder), jobs)):
            _check_tool(cmd, proc)
    link = [cc, *toolchain.ldflags, "-o", output, *[o for _, o in pairs], *toolchain.ldlibs]
    _check_tool(link, _run_tool(link, folder))
    if library:
        from .aot_c import library_objects

        archive = [toolchain.ar, "rcsD", library, *library_objects(toolchain, program.flavor)]
        _check_tool(archive, _run_tool(archive, folder))
    return folder / output


def _run_tool(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _check_tool(cmd: list[str], proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-30:]
        raise ToolchainError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n" + "\n".join(tail))
