"""Building a lowered module with TVM for an LLVM target and running it in process.

Stages: ``lower_to_relax`` → effc's Relax pipeline (``relax_pipeline``: TVM's dispatch
and legalization, then ``FuseTIR`` on effc's own fused groups, then TVM's default build
pipeline) → ``tvm.compile`` → a Relax VM executable. ``Built.export`` writes it as one
shared library; ``Built.load`` reads one back.

Untuned, kernels get effc's default schedules (``schedules/``) over its blocked layouts
(``layout.py``); TVM's own default pipeline schedules nothing on CPU. Builds are
deterministic: the same module and target give byte-identical libraries.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.ir.types import DType, TensorType, shape_matches
from effc.targets import get_target

from .aot_kernels import ieee_minmax_pass
from .relax import CHECK_FIELDS, LoweringError, index_check_failure, lower_to_relax
from .schedules import Cpu, cpu_for, default_schedules

TargetDict = Mapping[str, Any]


def host_x86_target() -> dict[str, Any]:
    """The TVM target dict for this x86-64 machine: the ``x86`` target, whose CPU
    ``effc.targets.host_cpu`` detects (the one source of truth for the host CPU; tuned code
    uses all cores)."""
    return dict(get_target("x86").tvm)


AVX512_LLVM_FIX = "-max-interleave-group-factor:uint=1"
"""The LLVM option that makes AVX-512 code right (``cl-opt``; see ``safe_target``)."""


def safe_target(target: TargetDict) -> dict[str, Any]:
    """``target`` with AVX-512 kept safe where its CPU has it.

    TVM 0.27's LLVM 22.1 miscompiles some loops for AVX-512 CPUs (skylake-avx512, znver4,
    x86-64-v4): ``tile`` of f32[3,4,5] by [6,4,2] returned garbage. Root cause: LLVM's loop
    vectorizer (``LoopVectorize``) turns the ten loads ``A[20*(i%3) + 5*(j&3) + {0..4}]``
    of the unrolled inner loop into one interleave group of stride 5 and drops the ``& 3``:
    lanes j >= 4 read past the row (and past the tensor). TVM's TIR and the LLVM IR it
    emits are right (optimization levels 0 and 1 are right); AVX-512's cost model is what
    makes the vectorizer choose such wide groups, AVX2's never does. Limiting interleave
    groups to one member (``-max-interleave-group-factor=1``) keeps the vectorizer and
    AVX-512 on and every case right (tests/codegen/test_codegen_x86.py keeps the
    reproducers). A target that names its own ``cl-opt`` is left as it is."""
    out = dict(target)
    if "cl-opt" in out or not str(out.get("mtriple", "x86_64")).startswith("x86_64"):
        return out
    from tvm.target import codegen

    if codegen.llvm_cpu_has_features("avx512f", tvm.target.Target(out)):
        out["cl-opt"] = [AVX512_LLVM_FIX]
    return out


_HEAP_LOAD = re.compile(r"\[T\.int64\((\d+)\)\]")


@tvm.transform.module_pass(opt_level=0, name="effc.SortShapeFuncStores")
def sort_shape_func_stores(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Make the build deterministic. VMShapeLower writes the computed symbolic dims
    (``H[5] = 40 * H[0]``) in hash-map order, which differs between two builds in one
    process; the stores are independent, so sort them by heap slot."""
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or not gv.name_hint.startswith("shape_func"):
            continue
        body = func.body
        if not isinstance(body, tirx.SeqStmt) or not all(isinstance(st, tirx.BufferStore) for st in body.seq):
            continue
        stores = list(body.seq)
        try:
            slots = [int(st.indices[0].value) for st in stores]
        except (AttributeError, IndexError, TypeError):
            continue
        reads = {int(i) for st in stores for i in _HEAP_LOAD.findall(str(st.value))}
        if reads & set(slots) or len(set(slots)) != len(slots) or len({st.buffer.name for st in stores}) != 1:
            continue  # a store reads another's result: keep TVM's order
        ordered = [st for _, st in sorted(zip(slots, stores), key=lambda p: p[0])]
        mod[gv] = func.with_body(tirx.SeqStmt(ordered))
    return mod


def relax_pipeline(cpu: Cpu | None = None) -> tvm.transform.Pass:
    """effc's Relax pipeline. effc already folded constants and chose the fusion groups, so
    TVM's FoldConstant and FuseOps do not run; FuseTIR turns each of effc's Primitive
    functions into one PrimFunc. ``cpu``: schedule every kernel not scheduled yet with
    effc's default CPU schedules for it (``schedules.default_schedules``), right after
    FuseTIR (and after a tuning database, which ``tune`` applies there)."""
    scheduling = [default_schedules(cpu)] if cpu is not None and cpu.lanes else []
    return tvm.transform.Sequential([
        relax.transform.DeadCodeElimination(),  # shape arithmetic whose result effc already knew
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseTIR(),
        *scheduling,
        relax.get_pipeline("default"),
        sort_shape_func_stores,
        ieee_minmax_pass,  # NaN kept through max/min (relu, clip, pools, reductions) on CPUs
    ], name="effc_relax_pipeline")


@dataclass(frozen=True)
class Signature:
    """The graph's inputs (names and types) and output names, in calling order."""

    inputs: tuple[tuple[str, TensorType], ...]
    outputs: tuple[str, ...]

    @staticmethod
    def of(module: Module) -> "Signature":
        g = module.graph
        return Signature(tuple((v.name, v.type) for v in g.inputs), tuple(v.name for v in g.outputs))

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [{"name": n, "dtype": str(t.dtype), "shape": list(t.shape)} for n, t in self.inputs],
                "outputs": list(self.outputs)}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> "Signature":
        inputs = tuple((d["name"], TensorType(DType.parse(d["dtype"]), tuple(d["shape"]))) for d in data["inputs"])
        return Signature(inputs, tuple(data["outputs"]))


class Built:
    """A compiled model: runs in process with the Relax VM, exports as a shared library."""

    memory = arena_bytes = None  # (``dispatch.Artifact``) no memory report, no static arena

    def __init__(self, executable: Any, signature: Signature, target: TargetDict | None = None,
                 relax_module: tvm.IRModule | None = None):
        self.executable = executable
        self.seconds: dict[str, float] = {}
        self.signature = signature
        self.target = dict(target) if target is not None else None
        self.relax_module = relax_module
        """The Relax IRModule after effc's pipeline (None when loaded from a library)."""
        self.device = tvm.cpu(0)
        self._vm: relax.VirtualMachine | None = None

    @property
    def vm(self) -> relax.VirtualMachine:
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, self.device)
        return self._vm

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs keyed by graph output name; inputs are checked against the signature."""
        args = [tvm.runtime.tensor(self._take(inputs, name, t), self.device) for name, t in self.signature.inputs]
        extra = set(inputs) - {n for n, _ in self.signature.inputs}
        if extra:
            raise InputError(f"inputs {sorted(extra)} are not inputs of the model "
                             f"(it takes {[n for n, _ in self.signature.inputs]})")
        result = self.vm["main"](*args)
        n = len(self.signature.outputs)
        _raise_index_failure(result, n)
        outs = [result[i].numpy() for i in range(n)]
        return dict(zip(self.signature.outputs, outs))

    def _take(self, inputs: Mapping[str, np.ndarray], name: str, t: TensorType) -> np.ndarray:
        if name not in inputs:
            raise InputError(f"missing input '{name}' ({t}); inputs given: {sorted(inputs)}")
        a = np.asarray(inputs[name], order="C")  # (ascontiguousarray would make a scalar 1-D)
        if a.dtype != t.dtype.np:
            raise InputError(f"input '{name}' has dtype {a.dtype}, the model wants {t.dtype} ({t})")
        if not shape_matches(t.shape, a.shape, {}):
            raise InputError(f"input '{name}' has shape {list(a.shape)}, the model wants {t}")
        return a

    def export(self, path: str | os.PathLike) -> Path:
        """Write the executable as one shared library (``.so``); returns its path. The
        bytes depend only on the module and target (no timestamps or temporary paths)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.executable.export_library(str(path))
        return path

    def export_files(self, folder: str | os.PathLike) -> list[Path]:
        return [self.export(Path(folder) / "model.so")]

    @staticmethod
    def load(path: str | os.PathLike, signature: Signature) -> "Built":
        """A library written by ``export``, with the signature it was built for."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        return Built(tvm.runtime.load_module(str(path)), signature)


def _raise_index_failure(result: Any, n_outputs: int) -> None:
    """Raise IndexOutOfRangeError for the first failed index check ``main`` returned after
    its ``n_outputs`` outputs (``relax.CHECK_FIELDS`` fields each, in graph order). The
    kernels clamped the indices, so nothing was read or written outside a tensor."""
    for k in range(n_outputs, len(result) - CHECK_FIELDS + 1, CHECK_FIELDS):
        status = _peek(result[k])
        if status[0]:  # the label is read only then
            raise index_check_failure(status, result[k + 1].numpy())


def _peek(t: Any) -> np.ndarray:
    """A small result tensor's values: a zero-copy view on the CPU (``.numpy()`` costs
    ~10 us a call, which would be most of what a check costs), a copy from a GPU."""
    try:
        return np.from_dlpack(t)
    except (BufferError, RuntimeError, TypeError, ValueError):
        return t.numpy()


def build(module: Module, target: TargetDict | None = None, *, index_checks: bool = True,
          lanes: int | None = None, hardware: Mapping[str, int] | None = None) -> Built:
    """Lower ``module`` to Relax and compile it for ``target`` (default: this x86 host).

    Raises UnsupportedOpError or LoweringError before TVM starts when something cannot
    be lowered. ``index_checks=False`` builds without the run-time index checks (only to
    measure what they cost: bench/bounds_checks.py). ``lanes``: the f32 vector lanes the
    layouts and default schedules are made for (default: the target's; 0: no blocked
    layouts and no default schedules, plain TVM's kernels). ``hardware``: the target's
    ``hardware`` table from ``targets/*.toml`` (``schedules.cpu_for``; None: detected)."""
    target = dict(target) if target is not None else host_x86_target()
    if target.get("kind") != "llvm":
        raise LoweringError(f"build() compiles for LLVM CPU targets; got target kind '{target.get('kind')}'")
    target = safe_target(target)
    cpu = cpu_for(target, hardware)
    if lanes is not None:
        cpu = replace(cpu, lanes=lanes)
    mod = lower_to_relax(module, index_checks=index_checks, lanes=cpu.lanes, int8_dot=cpu.int8_dot if cpu.lanes else None)
    tvm_target = tvm.target.Target(target)
    with tvm.transform.PassContext(opt_level=3):
        with tvm_target:
            mod = relax_pipeline(cpu)(mod)
        executable = tvm.compile(mod, target=tvm_target, relax_pipeline=None)
    return Built(executable, Signature.of(module), target, mod)

