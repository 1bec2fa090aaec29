"""Ahead-of-time C programs: an effc module as kernels plus a plain C driver, every
activation (inputs and outputs too, by default) in one arena and the weights in ``const``
arrays; no TVM runtime, no malloc. Shared by the runtime-free Linux builds (``native.py``)
and the microcontroller flow (``cortex_m.py``). Stages (``aot_c.emit``):

1. ``lower_for_aot``: ``lower_to_relax``, effc's fusion (one kernel per ``fused`` node),
   reshapes as views, and Relax's explicit-memory form: ``main`` becomes a straight list
   of ``alloc_tensor`` and kernel calls with explicit output buffers.
2. ``read_schedule``: that list as steps (kernel, DLTensor arguments) over storages:
   graph inputs, graph outputs, weights and arena tensors. A tensor that becomes a graph
   output is written straight into the output; an output that is a graph input, a weight
   or a second name of the same tensor is copied at the end.
3. ``aot_inplace``: the op rules of ``passes/memory_plan_rules.py`` applied to the calls
   (concat and pad slices, TinyEngine's channel-by-channel in-place layers, element-wise
   writes over a dying input).
4. ``aot_kernels.build_kernels``: the kernels, compiled by TVM, without full-size scratch.
5. ``arena_problem``/``plan_program``: the calls as effc's one arena problem, planned and
   verified by ``passes.arena``, the planner ``plan-memory`` uses, so the arena equals the
   plan wherever the deployed kernels honour every rule the plan used (one effc node is
   not always one kernel; LRN and transpose in place need kernels of effc's own).
6. ``aot_c``: the C files (``model.h``/``model.c``/``model_weights.c``/runtime/harness).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tvm
from tvm import relax, tirx

from effc.ir.core import Module
from effc.ir.errors import EffcError, IndexOutOfRangeError
from effc.ir.types import TensorType
from effc.passes.arena import ArenaProblem, ArenaStep, MemoryPlan, plan_arena, verify_arena
from effc.passes.fuse import fuse_pools
from effc.passes.memory_plan import order_nodes
from effc.passes.memory_plan_offsets import align_up

from .aot_kernels import Kernels
from .build import Signature
from .relax import INDEX_CHECKS, VALUE_NAMES, lower_to_relax

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


def lower_for_aot(module: Module, target: Mapping[str, Any], pools: bool = True, lanes: int | None = None,
                  int8_dot: str | None = None) -> tvm.IRModule:
    """``module`` in the explicit-memory form of Relax. ``module`` itself changes first: with
    ``pools``, each pool whose windows tile its input joins the conv before it
    (``fuse{pools=true}``: less memory; tuned builds leave it, as MetaSchedule tunes the
    fused kernel slower: digits_cnn 0.023 against 0.019 ms, mnist_conv 0.049 against 0.029),
    and the nodes take the order ``plan-memory`` chooses. ``lanes``: blocked layouts for a
    CPU with that many f32 vector lanes (``codegen/layout.py``; None: NCHW throughout);
    ``int8_dot``: integer kernels on that dot product (``schedules.Cpu.int8_dot``)."""
    _check_static(module)
    if pools:
        fuse_pools(module)
    order_nodes(module, align=ALIGN)
    mod = lower_to_relax(module, labels_in_result=False, lanes=lanes, int8_dot=int8_dot if lanes else None)
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
    elided: bool = False
    """No call: a concat whose inputs their producers wrote into their slices of its output."""


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
    io_in_arena: bool = True
    """Inputs and outputs live in the arena (the C API hands out pointers into it), as in
    TFLite Micro; False: the caller's own buffers, outside it."""
    splits: dict[int, Any] = field(default_factory=dict)
    """Steps run in place channel by channel (``aot_inplace.ChannelSplit`` by step index)."""
    own: dict[int, Any] = field(default_factory=dict)
    """Steps the driver computes itself instead of calling a TVM kernel: in place, transposes
    block by block (``aot_inplace.BlockPermute``), LRN through a ring of channels
    (``aot_inplace.LrnRing``); effc's own int8 convolutions (``kernels.Int8Conv``, in place
    where it may). Each says ``requires_in_place``."""
    inplace: dict[int, list[int]] = field(default_factory=dict)
    """Arena tensor -> the arena tensors it may take over at the step that writes it, if
    one dies there (split steps, and kernels that read that input element by element)."""
    slices: dict[tuple[str, int], tuple[tuple[str, int], int]] = field(default_factory=dict)
    """Concat input storage -> (the concat's output storage, byte offset in it)."""
    checks: list[tuple[TensorArg, str]] = field(default_factory=list)
    """Index checks: (int64[3] status ``[bad, first bad index, axis length]`` in a
    ``status`` storage of its own, the checked node's description), in graph order. The
    driver reads them after the last kernel call and fails the run on the first bad one."""

    def kernel_at(self, t: int) -> str:
        """The kernel step ``t`` calls (the one-channel kernel of a split step; "" when it calls
        none: elided, or computed by the driver itself)."""
        if self.steps[t].elided or t in self.own:
            return ""
        return self.splits[t].kernel if t in self.splits else self.steps[t].kernel

    @property
    def calls(self) -> list[int]:
        """The steps that call a kernel."""
        return [t for t, s in enumerate(self.steps) if not s.elided]

    def prune_kernels(self) -> None:
        """Forget the PrimFuncs no step calls any more."""
        used = {self.kernel_at(t) for t in self.calls} - {""}
        self.prim_funcs = {n: f for n, f in self.prim_funcs.items() if n in used}

    def prune_weights(self) -> None:
        """Drop the weights no step, copy or driver-computed step reads any more, and
        renumber the rest in order."""
        args = [a for s in self.steps for a in s.args] + [c.source for c in self.copies]
        used = sorted({a.storage_key[1] for a in args if a.storage_key[0] == "weight"}
                      | {k for o in self.own.values() for k in getattr(o, "weights", ())})
        new = {old: k for k, old in enumerate(used)}
        if len(new) == len(self.weights):
            return

        def renumber(a: TensorArg) -> TensorArg:
            return TensorArg(("weight", new[a.storage_key[1]]), a.shape, a.dtype) if a.storage_key[0] == "weight" else a

        for s in self.steps:
            s.args = [renumber(a) for a in s.args]
        for c in self.copies:
            c.source = renumber(c.source)
        for o in self.own.values():
            if hasattr(o, "weights"):  # (effc's kernels read weights of their own)
                o.weights = [new[k] for k in o.weights]
        self.weights = [self.weights[old] for old in used]
        self.storages = {k: v for k, v in self.storages.items() if k[0] != "weight"}
        for k, array in enumerate(self.weights):
            self.storages[("weight", k)] = Storage("weight", k, array.nbytes)


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
        reader.labels[("input", i)] = iface.inputs[i][0]
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


def storage_name(key: tuple[str, int]) -> str:
    """How the arena plan names a storage: ``arena3``, ``input0``, ``output1``."""
    return f"{key[0]}{key[1]}"


def arena_problem(schedule: Schedule, kernels: Kernels) -> ArenaProblem:
    """The program's kernel calls as the planner's problem (``passes.arena``): every arena
    tensor (and, with ``schedule.io_in_arena``, every input and output) sized to the alignment; each
    call with its kernel's workspace plus a split step's scratch; in-place candidates from
    ``schedule.inplace``; concat and pad slices from ``schedule.slices``; the output copies
    as a last step."""
    kinds = ("arena", "input", "output") if schedule.io_in_arena else ("arena",)
    keys = sorted((k for k in schedule.storages if k[0] in kinds), key=lambda k: (kinds.index(k[0]), k[1]))
    index = {k: t for t, k in enumerate(keys)}
    written = {k for k in keys if k[0] == "input"}
    steps = []

    def step_of(key: str, args: list[TensorArg], workspace: int = 0, inplace=()) -> ArenaStep:
        uses = list(dict.fromkeys(index[a.storage_key] for a in args if a.storage_key in index))
        writes = tuple(t for t in uses if keys[t] not in written)
        written.update(keys[t] for t in writes)
        return ArenaStep(key, tuple(t for t in uses if t not in writes), writes, workspace, inplace)

    for t, step in enumerate(schedule.steps):
        out = step.args[-1].storage_key
        cand = tuple((index[("arena", x)], index[out], 0) for x in schedule.inplace.get(out[1], ())) \
            if out[0] == "arena" else ()
        ws = 0 if step.elided else align_up(kernels.workspace_bytes(schedule.kernel_at(t)), ALIGN)
        if t in schedule.splits:
            ws += schedule.splits[t].scratch_layout(ALIGN)[1]
        if t in schedule.own:
            ws += schedule.own[t].scratch_bytes(ALIGN)
        steps.append(step_of(f"step{t + 1}", step.args, ws, cand))
    if schedule.copies:
        steps.append(step_of("copies", [c.source for c in schedule.copies]
                             + [TensorArg(("output", c.output), c.source.shape, c.source.dtype) for c in schedule.copies]))
    shares = [("slice", index[x], index[o], at) for x, (o, at) in schedule.slices.items()]
    return ArenaProblem([storage_name(k) for k in keys], [align_up(schedule.storages[k].nbytes, ALIGN) for k in keys],
                        steps, {t for t, k in enumerate(keys) if k[0] == "input"},
                        {t for t, k in enumerate(keys) if k[0] == "output"}, shares, ALIGN)


def plan_program(schedule: Schedule, kernels: Kernels) -> MemoryPlan:
    """The deployed arena: ``arena_problem`` planned by effc's one planner and checked by its
    verifier; every slice an elided concat relies on, and every step the driver computes in
    place, must have been taken."""
    problem = arena_problem(schedule, kernels)
    plan = plan_arena(problem)
    verify_arena(problem, plan, "the AOT program")
    for x, (o, _) in schedule.slices.items():
        if plan.tensor(storage_name(x)).alias != "slice":
            raise AotError(f"internal: the arena plan did not put {storage_name(x)} inside {storage_name(o)}")
    for t, own in schedule.own.items():
        out = plan.tensor(storage_name(schedule.steps[t].args[-1].storage_key))
        if own.requires_in_place and out.alias != "inplace":
            raise AotError(f"internal: the arena plan did not write step {t + 1} over its input")
    return plan


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
    kernel_source: str = ""
    """Name of the kernels' C file (C flavour), else empty."""
    effc_sources: list[str] = field(default_factory=list)
    """effc's own C files, which must compile with -Wall -Wextra -Werror."""
    own_kernels: tuple[str, ...] = ()
    """The files of effc's own kernels (``codegen/kernels``) among ``files``."""
    notes: dict[str, Any] = field(default_factory=dict)

    def write_sources(self, folder: str | Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in self.files.items():
            (folder / name).write_bytes(data)
            paths.append(folder / name)
        return paths
