"""The kernels of an AOT C program: the PrimFuncs of a lowered module, compiled by TVM
for a target that links without the TVM runtime.

Two flavours, chosen by the TVM target's kind (see targets/*.toml):
- ``llvm`` (aarch64 Linux, x86): one relocatable object. It calls the workspace allocator
  through the function pointers ``__TVMBackendAllocWorkspace`` / ``__TVMBackendFreeWorkspace``
  (weak data symbols in the object) that the driver sets before the first kernel runs.
- ``c`` (Cortex-M): one C source, compiled by the board's gcc. It calls
  ``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` directly; TVM's runtime headers
  are replaced by effc's ``effc_tvm_abi.h``.

Both use TVM's packed calling convention, ``int32_t __tvm_ffi_<symbol>(void* self,
void* args, int32_t num_args, void* result)`` with ``args`` an array of ``TVMFFIAny`` that
hold ``DLTensor*`` (type index 7). Asserts are compiled out (``tirx.disable_assert``), so a
kernel reports nothing but an allocation failure (-1), and needs no error symbols.

Workspace: TVM turns each kernel-internal buffer above 1 KiB into an ``AllocWorkspace``
call with a constant size; smaller ones go on the stack. Legalized kernels have two kinds:
a padded copy of the input (``pad_temp``) and the full result of a reduction (a conv's or a
matmul's accumulators) that an epilogue (bias, activation) then reads. ``fold_scratch``
removes both before lowering: padding and other elementwise stages are inlined into their
readers (the kernel tests the bounds instead of reading a padded copy), and each epilogue
moves inside the reduction's loop nest, right after the reduction of one output element,
so its accumulator shrinks to one element on the stack; a conv whose group ends in a pool
(``passes/fuse.py``) moves under the pool's loops and computes one window at a time
(``_compute_in_windows``). What remains is read from the
lowered TIR, so the driver can place each kernel's workspace in the arena for its step.

NaN and infinities: every kernel goes through ``ieee_minmax`` (float max/min propagate
NaN; max/min reductions start from -inf/+inf), so Relu, Clip, pools and reductions keep a
NaN as onnxruntime and numpy do; ``ieee_minmax_pass`` does the same for the Relax VM.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.tirx.build import split_host_device_mods, tir_to_runtime

from .relax import LoweringError

WORKSPACE_ALIGN = 64
"""Each workspace allocation starts on this boundary (TVM's own allocation alignment)."""

_ALLOC = re.compile(r"TVMBackendAllocWorkspace\(([^()]*(?:\([^()]*\))?[^()]*)\)")
_SIZE = re.compile(r"^\s*\d+\s*,\s*[\w.]+\s*,\s*T\.uint64\((\d+)\)")
_RUNTIME_SYMBOLS = {"__TVMBackendAllocWorkspace", "__TVMBackendFreeWorkspace", "__TVMBackendParallelLaunch",
                    "__TVMBackendParallelBarrier"}
"""Runtime entry points of an LLVM object that the driver provides (parallel loops run
serially)."""
_HELPER_SYMBOLS = {"__extendhfsf2", "__truncsfhf2", "__gnu_h2f_ieee", "__gnu_f2h_ieee",
                   "__truncdfhf2", "__truncsfbf2", "__extendbfsf2"}
"""Half-float helpers LLVM defines weakly in the object itself."""


@dataclass
class Kernels:
    """The compiled kernels of one program."""

    flavor: str
    """``llvm`` (an object file) or ``c`` (a C source)."""
    symbols: dict[str, str]
    """PrimFunc name in the Relax module -> C symbol of its packed entry (``__tvm_ffi_...``)."""
    workspace: dict[str, list[int]]
    """PrimFunc name -> the sizes of its workspace allocations, in bytes."""
    object_bytes: bytes = b""
    c_source: str = ""
    pointer_symbols: list[str] = field(default_factory=list)
    """Runtime function pointers the object declares (the driver sets them)."""
    tuned: list[str] = field(default_factory=list)
    """Kernels compiled with a schedule from a tuning database (the rest: ``fold_scratch``)."""

    def workspace_bytes(self, func: str) -> int:
        """Bytes a call of ``func`` needs: every allocation aligned, all live at once."""
        return sum(_align(s) for s in self.workspace.get(func, []))


def _align(n: int) -> int:
    return (n + WORKSPACE_ALIGN - 1) // WORKSPACE_ALIGN * WORKSPACE_ALIGN


def kernel_flavor(target: Mapping[str, Any]) -> str:
    kind = target.get("kind")
    if kind in ("llvm", "c"):
        return str(kind)
    raise LoweringError(f"AOT C programs take kernels from TVM targets of kind 'llvm' or 'c'; got '{kind}'")


def fold_scratch(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` without its full-size intermediate buffers where TIR's schedule primitives
    allow (see the module docstring); a stage that cannot move stays as it was, so the
    result computes the same values in the same order per output element."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    scratch = {b.name for b in sch.get(sch.get_sblock("root")).alloc_buffers}

    def stages() -> list[Any]:
        return sch.get_child_blocks(sch.get_sblock("root"))

    def writes_scratch(block: Any) -> bool:
        return all(w.source.name in scratch for w in sch.get(block).writes)

    for block in stages():
        if writes_scratch(block):
            try:
                sch.compute_inline(block)  # spatial stages only: reductions raise and stay
            except s_tir.ScheduleError:
                pass
    for block in stages():
        if not writes_scratch(block):
            continue
        kinds = [int(iv.iter_type) for iv in sch.get(block).iter_vars]
        spatial = next((i for i, k in enumerate(kinds) if k != _DATA_PAR), len(kinds))
        loops = sch.get_loops(block)
        if spatial == 0 or len(loops) != len(kinds):
            continue
        for consumer in sch.get_consumers(block):
            if _compute_in_windows(sch, block, consumer):
                break
            try:
                sch.reverse_compute_at(consumer, loops[spatial - 1])
            except s_tir.ScheduleError:
                pass
    return sch.mod["main"]


def _compute_in_windows(sch: Any, block: Any, consumer: Any) -> bool:
    """A reduction that reads a window of ``block``'s output per output element (a pool after
    its conv): ``block`` moves under the consumer's loop over output rows, computing the rows
    of windows each row of the pool needs, so its buffer shrinks to those rows (under the
    innermost loop, one window: 4% slower on digits_cnn, the same memory). False (nothing
    changed) for a spatial consumer or where TIR refuses. Never the other way round: TVM
    0.27's reverse_compute_at of a strided pool under its conv drops window elements."""
    kinds = [int(iv.iter_type) for iv in sch.get(consumer).iter_vars]
    spatial = next((i for i, k in enumerate(kinds) if k != _DATA_PAR), len(kinds))
    loops = sch.get_loops(consumer)
    if not 0 < spatial < len(kinds) == len(loops):
        return False
    try:
        sch.compute_at(block, loops[spatial - 2 if spatial > 1 else 0])
    except s_tir.ScheduleError:
        return False
    return True


_DATA_PAR = 0
"""``IterVar.iter_type`` of a spatial (data-parallel) block axis."""


# ----------------------------------------------------------------------------- IEEE max/min


def _is_ieee_float(dtype: Any) -> bool:
    """float16/32/64: the types whose max/min ``ieee_minmax`` rewrites (bfloat16 is left
    as TVM lowers it: not tested here)."""
    return str(dtype) in ("float16", "float32", "float64")


def _nan_propagating(e: Any) -> Any:
    """``max(a, b)`` / ``min(a, b)`` on floats as a select that gives NaN when either
    operand is NaN (IEEE 754-2019 ``maximum``/``minimum``, numpy's ``np.maximum``, and what
    onnxruntime's Relu, Clip, Max and Min give).

    TVM emits ``Max(a, b)`` as ``a > b ? a : b`` (LLVM and C alike), so NaN survives only
    when it is ``a``: ``relu(NaN) = max(NaN, 0)`` gave 0, ``clip(NaN, 0, 6)`` gave 6, and a
    max-reduction or max-pool kept NaN only when it came last. This form reads NaN from
    either side: ``b`` when ``b`` is NaN or wins, else ``a`` (NaN itself when ``a`` is NaN).
    """
    if not _is_ieee_float(e.ty.dtype):
        return e
    a, b = e.a, e.b
    b_wins = tirx.LT(a, b) if isinstance(e, tirx.Max) else tirx.LT(b, a)
    return tirx.Select(tirx.Or(tirx.isnan(b), b_wins), b, a)


def _infinite_identity(block: Any) -> Any:
    """A float max- (min-) reduction starts from -inf (+inf), the identity of max (min),
    instead of TVM's lowest (highest) finite value: a max over values that are all -inf is
    -inf (numpy, onnxruntime's MaxPool and ReduceMax), not -3.4e38. A max-pool's padding
    keeps TVM's lowest finite value, as effc's reference does."""
    init, body = block.init, block.body
    if not (isinstance(init, tirx.BufferStore) and isinstance(body, tirx.BufferStore)
            and isinstance(init.value, tirx.FloatImm) and isinstance(body.value, (tirx.Max, tirx.Min))
            and _is_ieee_float(init.value.ty.dtype)):
        return block
    info = np.finfo(str(init.value.ty.dtype))
    want_max = isinstance(body.value, tirx.Max)
    if init.value.value != float(info.min if want_max else info.max):
        return block
    inf = tirx.FloatImm(str(init.value.ty.dtype), -np.inf if want_max else np.inf)
    new_init = tirx.BufferStore(init.buffer, inf, init.indices)
    return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, block.body, new_init,
                        block.alloc_buffers, block.match_buffers, block.annotations)


def ieee_minmax(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with IEEE NaN and infinity semantics for float max/min: every ``Max``/``Min``
    propagates NaN, and max/min reductions start from -inf/+inf (see ``_nan_propagating``,
    ``_infinite_identity``). Covers everything TVM lowers to max/min: Relu, Clip,
    HardSigmoid/HardSwish, Max/Min, MaxPool, ReduceMax/Min, Softmax's row maximum and the
    activation epilogues of fused conv/gemm kernels. Run it on scheduled (or unscheduled)
    kernels, after a tuning database was applied (its keys are the kernels before it).
    Integer max/min (index arithmetic) are left alone."""
    func = tvm_ffi.structural_map(func, [(s_tir.SBlock, _infinite_identity)])
    return tvm_ffi.structural_map(func, [(tirx.Max, _nan_propagating), (tirx.Min, _nan_propagating)])


def _elementwise_nan_propagating(block: Any) -> Any:
    """A leaf block that is not a reduction (no ``init``) with its float max/min made
    NaN-propagating; reduction blocks are returned as they are."""
    if block.init is not None or not isinstance(block.body, tirx.BufferStore):
        return block
    body = tvm_ffi.structural_map(block.body, [(tirx.Max, _nan_propagating), (tirx.Min, _nan_propagating)])
    return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, body, block.init,
                        block.alloc_buffers, block.match_buffers, block.annotations)


def ieee_minmax_elementwise(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``ieee_minmax`` for GPU kernels: only blocks that are not reductions (Relu, Clip,
    HardSigmoid/HardSwish, Max/Min, the epilogues after a conv or matmul). A GPU reduction
    whose threads combine partial results must keep a max/min TVM recognizes as a reducer
    (its cross-thread lowering refuses any other combiner), so max-pool, ReduceMax/Min,
    ArgMax/ArgMin and softmax's row maximum keep TVM's semantics on CUDA: a NaN among
    other values may be dropped there."""
    return tvm_ffi.structural_map(func, [(s_tir.SBlock, _elementwise_nan_propagating)])


_NEARBYINT = tvm.ir.Op.get("tirx.nearbyint")


def _roundeven(e: Any) -> Any:
    if isinstance(e.op, tvm.ir.Op) and e.op.same_as(_NEARBYINT):
        return tirx.call_llvm_pure_intrin(e.ty.dtype, "llvm.roundeven", e.args[0])
    return e


def vector_roundeven(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` with ``nearbyint`` (Relax's round, QuantizeLinear's and the requantizations'
    half-to-even rounding) as LLVM's ``roundeven``: the same value (ties to even; nearbyint
    rounds in the current mode, which is to nearest-even), but TVM's vectorizer leaves a
    ``nearbyint`` loop scalar, a libm call per element (a 50176-element QuantizeLinear ran
    157 us), and vectorizes ``roundeven`` (``vrndscaleps``). For LLVM targets only."""
    return tvm_ffi.structural_map(func, [(tvm.ir.Call, _roundeven)])


@tvm.transform.module_pass(opt_level=0, name="effc.IeeeMinMax")
def ieee_minmax_pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """IEEE max/min on every PrimFunc of ``mod``: ``ieee_minmax`` when the current target
    is a CPU (``llvm``, ``c``) or none (and ``vector_roundeven`` on ``llvm``),
    ``ieee_minmax_elementwise`` on a GPU target (run
    before dlight schedules the kernels). The Relax VM and CUDA builds run it after effc's
    Relax pipeline, after any tuning database was applied."""
    target = tvm.target.Target.current(allow_none=True)
    rewrite = ieee_minmax if target is None or target.kind.name in ("llvm", "c") else ieee_minmax_elementwise
    if target is not None and target.kind.name == "llvm":
        rewrite = lambda f: vector_roundeven(ieee_minmax(f))  # noqa: E731
    funcs = {gv: rewrite(f) if isinstance(f, tirx.PrimFunc) else f for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)


def apply_database(prim_funcs: Mapping[str, tirx.PrimFunc], target: Mapping[str, Any],
                   database: Any) -> dict[str, tirx.PrimFunc]:
    """The kernels a MetaSchedule database holds a schedule for, scheduled by it."""
    from tvm import relax

    mod = tvm.IRModule(dict(prim_funcs))
    with tvm.transform.PassContext(opt_level=3), tvm.target.Target(dict(target)), database:
        mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    out = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tirx.PrimFunc) and f.attrs is not None and bool(f.attrs.get("tirx.is_scheduled", False)):
            out[gv.name_hint] = f
    return out


def build_kernels(prim_funcs: Mapping[str, tirx.PrimFunc], target: Mapping[str, Any], prefix: str, *,
                  lean: bool = True, database: Any = None, cpu: Any = None) -> Kernels:
    """Compile ``prim_funcs`` (name -> PrimFunc) for ``target``; each gets the C symbol
    ``<prefix>_<name>``, so two programs link into one binary. A kernel ``database`` (a
    MetaSchedule database) holds a schedule for is compiled with it; the others get effc's
    default schedule for ``cpu`` (a ``schedules.Cpu``) where one applies, else
    ``fold_scratch`` first when ``lean``."""
    flavor = kernel_flavor(target)
    tvm_target = tvm.target.Target(dict(target))
    tuned = apply_database(prim_funcs, target, database) if database is not None else {}

    def untuned(func: tirx.PrimFunc) -> tirx.PrimFunc:
        if cpu is not None:
            from .schedules import default_schedule

            sch = default_schedule(ieee_minmax(func).with_attr("global_symbol", "main"), cpu)
            if sch is not None:
                return sch.mod["main"]
        return fold_scratch(func) if lean else func

    finish = ieee_minmax if flavor == "c" else (lambda f: vector_roundeven(ieee_minmax(f)))
    mod = tvm.IRModule({name: finish(tuned.get(name) or untuned(f)).with_attr(
        "global_symbol", f"{prefix}_{name}") for name, f in sorted(prim_funcs.items())})
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        mod = tirx.transform.BindTarget(tvm_target.with_host(tvm_target))(mod)
        pipeline, finalize_host, _finalize_device = tirx.get_default_tir_pipeline(tvm_target)
        mod = pipeline(mod)
        host, devices = split_host_device_mods(mod)
        if any(len(d.functions) for d in devices.values()):
            raise LoweringError("AOT C programs run on the CPU; a kernel was split off for another device")
        host = finalize_host()(host)
        workspace = {gv.name_hint: _workspace_sizes(gv.name_hint, f) for gv, f in host.functions.items()}
        runtime = tir_to_runtime(host, devices, tvm_target)
    symbols = {name: f"__tvm_ffi_{prefix}_{name}" for name in prim_funcs}
    if flavor == "c":
        return Kernels("c", symbols, workspace, c_source=_standalone_c(runtime.inspect_source()), tuned=sorted(tuned))
    llvm_ir = runtime.inspect_source("ll")
    _check_llvm_symbols(llvm_ir, set(symbols.values()))
    with tempfile.TemporaryDirectory(prefix="effc-kernels-") as tmp:
        path = os.path.join(tmp, "kernels.o")
        runtime.write_to_file(path)
        with open(path, "rb") as f:
            data = f.read()
    pointers = sorted(s for s in _RUNTIME_SYMBOLS if re.search(rf"@{s}\b", llvm_ir))
    return Kernels("llvm", symbols, workspace, object_bytes=data, pointer_symbols=pointers, tuned=sorted(tuned))


def _workspace_sizes(name: str, func: tirx.PrimFunc) -> list[int]:
    sizes = []
    for args in _ALLOC.findall(str(func)):
        m = _SIZE.match(args)
        if m is None:
            raise LoweringError(f"kernel {name} allocates a workspace whose size is only known at run time "
                                f"({args}); AOT C programs need static shapes")
        sizes.append(int(m.group(1)))
    return sizes


def _check_llvm_symbols(llvm_ir: str, entries: set[str]) -> None:
    """The object may only need what the AOT runtime provides (libc and libm aside)."""
    declared = set(re.findall(r"^@(__\w+) = ", llvm_ir, re.M)) | set(re.findall(r"^declare [^@]*@(__\w+)\(", llvm_ir, re.M))
    extra = sorted(declared - _RUNTIME_SYMBOLS - _HELPER_SYMBOLS - entries)
    unknown = [s for s in extra if s.startswith(("__TVM", "__tvm"))]
    if unknown:
        raise LoweringError(f"the kernels need TVM runtime functions the AOT C runtime does not provide: {unknown}")


_INCLUDES = re.compile(r'^#include "tvm/[^"]+"\n', re.M)


def _standalone_c(source: str) -> str:
    """TVM's C source with its runtime headers replaced by effc's ABI header, and the
    library context (unused without the TVM runtime) made file-local so that two
    programs link together."""
    source = _INCLUDES.sub("", source)
    source = source.replace('#define TVM_EXPORTS\n', '#define TVM_EXPORTS\n#include "effc_tvm_abi.h"\n', 1)
    source = source.replace("void* __tvm_ffi__library_ctx = NULL;", "static void* __tvm_ffi__library_ctx = NULL;")
    if '#include "effc_tvm_abi.h"' not in source:
        source = '#include "effc_tvm_abi.h"\n' + source
    return _C_INFINITY + source


_C_INFINITY = """#include <math.h>
#ifndef inff
#define inff INFINITY /* TVM's C printer writes a float32 infinity as `inff` (`-inff`) */
#endif
"""
"""Lets the kernels' infinite constants compile: the -inf/+inf a max/min reduction or pool
starts from (``ieee_minmax``), ReduceMax of an all -inf set. Nothing here or in the
toolchains' flags may assume finite math (-ffast-math, -ffinite-math-only): NaN and the
infinities must pass through the kernels as IEEE 754 says."""
