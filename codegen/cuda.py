"""Building for NVIDIA GPUs (targets ``cuda``, ``cuda-sm75`` ... ``cuda-sm90``).

Stages of ``build_cuda``, in order:
1. ``lower_to_relax`` and effc's Relax pipeline (``relax_pipeline``), inside the target;
2. ``schedule_gpu_kernels``: TVM's dlight default GPU rules bind every kernel to blocks and
   threads (matmul-like and conv-like kernels, GEMV, reductions; ``Fallback`` for the
   rest). Unscheduled TIR does not build for CUDA;
3. ``tvm.compile``: an x86 host library (the Relax VM code and shape functions) that
   imports a CUDA module holding the kernels as CUDA *source*;
4. with ``nvcc`` on PATH, that source is compiled ahead of time to PTX for the target's
   architecture (``tvm.support.nvcc.compile_cuda``, TVM's own nvcc flags).

None of this needs a GPU. Running does: ``run`` raises ``NoCudaDeviceError`` with what to
do on a machine without one.

How TVM 0.27 ships the kernels: where no GPU driver is installed, the CUDA module inside
``model.so`` holds the source, and TVM's CUDA runtime compiles it when the library is
loaded, through the ``tvm_callback_cuda_compile`` hook (NVRTC from ``cuda-bindings`` by
default). On a GPU machine ``tvm.compile`` calls the same hook at once. effc installs its
own hook (``_serve_ptx``): it hands back the PTX effc compiled for that exact source, so
the GPU machine needs neither NVRTC nor nvcc to run an artifact; a source it has no PTX
for goes through nvcc where it exists, else to the hook TVM registered.

An exported folder holds ``model.so`` (host library + kernel source), ``kernels.cu`` and,
where nvcc exists, ``kernels.ptx``. All are byte-identical when the same module is built
twice.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm.support.nvcc  # registers TVM's tvm_callback_cuda_compile, which _serve_ptx falls back on
import tvm_ffi
from tvm import tirx
from tvm.s_tir import dlight

from effc.ir.core import Module
from effc.ir.errors import EffcError, InputError
from effc.targets import Target

from .build import Built, Signature, relax_pipeline
from .relax import LoweringError, lower_to_relax

LIBRARY = "model.so"
SOURCE = "kernels.cu"
PTX = "kernels.ptx"


class NoCudaDeviceError(EffcError):
    """A CUDA build was asked to run on a machine without a usable NVIDIA GPU."""


class CudaCompileError(EffcError):
    """nvcc rejected the kernels TVM generated."""


# ----------------------------------------------------------------------------- scheduling


def _is_device_kernel(func: Any) -> bool:
    """A PrimFunc that becomes GPU code: not a host-side shape function (VMShapeLower marks
    those ``tirx.is_host_func``), not already scheduled."""
    if not isinstance(func, tirx.PrimFunc):
        return False
    attrs = func.attrs or {}
    return "tirx.is_host_func" not in attrs and not attrs.get("tirx.is_scheduled", False)


def gpu_schedule_rules() -> list[Any]:
    """dlight's default GPU rules in TVM's own order (relax/backend/cuda/pipeline.py):
    the first rule that matches a kernel schedules it; ``Fallback`` matches anything."""
    return [dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(),
            dlight.gpu.Fallback()]


def schedule_kernel(name: str, func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc:
    """``func`` scheduled by the first of ``gpu_schedule_rules`` that matches and succeeds.

    A rule can match and then fail inside (dlight's Matmul asserts on conv + hard-swish
    groups, whose epilogue reads the conv result twice); the next, more general rule
    schedules such a kernel instead, as ``Fallback`` would have for an unmatched one."""
    failures = []
    for rule in gpu_schedule_rules():
        try:
            space = rule.apply(func, target, False)
        except Exception as err:  # TVM raises AssertionError, ValueError, ScheduleError...
            failures.append(f"{type(rule).__name__}: {type(err).__name__}: {str(err).strip()[:200]}")
            continue
        if space is None:
            continue
        sch = space[0] if isinstance(space, list) else space
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    raise LoweringError(f"no GPU schedule for kernel {name}:\n  " + "\n  ".join(failures))


@tvm.transform.module_pass(opt_level=0, name="effc.ScheduleGPUKernels")
def schedule_gpu_kernels(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Schedule every device kernel with ``schedule_kernel`` (needs the target in scope).

    effc's ``relax_pipeline`` ends with TVM's build pipeline, whose ``VMShapeLower`` adds
    host shape functions that dlight cannot parse; those stay as they are (they run on the
    CPU). Kernels are unchanged by the Relax passes that ran before, so scheduling them
    here is the same as scheduling them right after ``FuseTIR``."""
    target = tvm.target.Target.current(allow_none=False)
    out = mod.clone()
    for gv, func in mod.functions_items():
        if _is_device_kernel(func):
            out[gv] = schedule_kernel(gv.name_hint, func, (func.attrs or {}).get("target", target))
    return out


# ----------------------------------------------------------------------------- nvcc


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


_COMPILED: dict[tuple[str, str], tuple[str, float]] = {}
"""(source hash, arch) -> (PTX, nvcc seconds): each source goes through nvcc once per process."""


def _source_key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def compile_ptx(source: str, tvm_target: tvm.target.Target) -> tuple[str, float]:
    """The CUDA source as PTX for the target's ``arch`` (nvcc with TVM's flags), and the
    seconds nvcc took to make it."""
    arch = str(tvm_target.attrs["arch"])
    key = (_source_key(source), arch)
    if key not in _COMPILED:
        start = time.perf_counter()
        try:
            with tvm_target:  # compile_cuda reads the compute version from the current target
                ptx = tvm.support.nvcc.compile_cuda(source, target_format="ptx", arch=arch, compiler="nvcc")
        except RuntimeError as err:  # its message is the whole source, then nvcc's output
            log = str(err).split("\nCompilation error:\n", 1)[-1]
            raise CudaCompileError(f"nvcc could not compile the generated kernels for {arch}:\n{log[-4000:]}") from None
        _COMPILED[key] = (bytes(ptx).decode(), time.perf_counter() - start)
    return _COMPILED[key]


# ----------------------------------------------------------------------------- PTX for TVM's runtime

_SERVED: dict[str, bytes] = {}
"""source hash -> the PTX TVM's CUDA runtime gets for it (set just before a module loads)."""

_tvm_cuda_compile: Any = None
"""The hook TVM registered before effc's (False: none); None until effc's is installed."""


def _serve_ptx(code: str) -> bytes:
    """effc's ``tvm_callback_cuda_compile``: TVM's CUDA runtime calls it with a module's
    kernel source when it creates (``tvm.compile`` on a GPU machine) or loads the module,
    and reads a result starting with ``/`` as PTX.

    The answer is the PTX offered for that source; else, with nvcc, PTX for the current
    target's arch (or this GPU's); else whatever TVM's own hook makes (NVRTC)."""
    ptx = _SERVED.get(_source_key(code))
    if ptx is not None:
        return ptx
    if nvcc_path() is not None:
        target = tvm.target.Target.current(allow_none=True)
        if target is None or target.kind.name != "cuda" or "arch" not in target.attrs:
            sm = tvm.cuda(0).compute_version.replace(".", "")
            target = tvm.target.Target({"kind": "cuda", "arch": f"sm_{sm}"})
        return compile_ptx(code, target)[0].encode() + b"\0"
    if not _tvm_cuda_compile:
        raise RuntimeError("no PTX for these CUDA kernels: install nvcc, or cuda-bindings for NVRTC")
    return _tvm_cuda_compile(code)


def _install_ptx_hook() -> None:
    global _tvm_cuda_compile
    if _tvm_cuda_compile is None:
        _tvm_cuda_compile = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True) or False
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _serve_ptx, override=True)


def _offer_ptx(source: str, ptx: str) -> None:
    """Make TVM's CUDA runtime use ``ptx`` when it next loads a module holding ``source``."""
    _install_ptx_hook()
    _SERVED[_source_key(source)] = ptx.encode() + b"\0"  # cuModuleLoadData reads a C string


# ----------------------------------------------------------------------------- the build

_KERNEL = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(')


def kernel_names(source: str) -> list[str]:
    """The ``__global__`` functions defined or declared in CUDA source, each once, in order."""
    return list(dict.fromkeys(_KERNEL.findall(source)))


def cuda_source_of(executable: Any) -> str:
    """The CUDA source of the module ``tvm.compile`` imported into the host library."""
    pending = [executable.mod if hasattr(executable, "mod") else executable]
    while pending:
        m = pending.pop()
        if m.kind == "cuda":
            return m.inspect_source("cuda")
        pending.extend(m.imports)
    raise LoweringError("internal: the CUDA build has no CUDA module (no kernels were generated)")


class CudaBuilt(Built):
    """A CUDA build: the host library (with kernel source), the source, the PTX when nvcc
    exists. Runs through the Relax VM on ``cuda(0)``; exports as a folder."""

    def __init__(self, executable: Any, signature: Signature, target: Target, source: str, ptx: str | None,
                 relax_module: tvm.IRModule | None = None, seconds: Mapping[str, float] | None = None,
                 library: Path | None = None):
        super().__init__(executable, signature, target.tvm, relax_module)
        self.effc_target = target
        self.source = source
        """The CUDA source of every kernel (what TVM's runtime would otherwise compile on load)."""
        self.ptx = ptx
        """The kernels as PTX for ``arch`` (None where nvcc was not found)."""
        self.seconds = dict(seconds or {})
        """Build stages and their times: ``tvm`` (lowering to the host library), ``nvcc``."""
        self.library = library
        """The ``model.so`` this build was loaded from (None for a fresh build)."""
        self.folder = library.parent if library is not None else None
        """The folder this build was loaded from or last exported to (named in error messages)."""
        self.device = tvm.cuda(0)

    @property
    def arch(self) -> str:
        return str(self.effc_target.tvm.get("arch", "sm_80"))

    @property
    def kernels(self) -> list[str]:
        return kernel_names(self.source)

    # -- running

    def _require_gpu(self) -> None:
        if not gpu_present():
            if self.folder is not None:
                todo = f"copy {self.folder} to a machine with an NVIDIA GPU and run `effc run {self.folder}`"
            else:
                todo = ("export it (`effc compile MODEL --target=cuda -o DIR`), copy DIR to a machine with an NVIDIA "
                        "GPU and run `effc run DIR`")
            raise NoCudaDeviceError(f"no CUDA GPU on this machine: the artifact was built for {self.arch}; {todo}")
        have_sm = int(tvm.cuda(0).compute_version.replace(".", ""))  # "8.6" -> 86
        want_sm = int(re.sub(r"\D", "", self.arch) or 0)  # PTX runs on its arch and every later one
        if have_sm < want_sm:
            raise NoCudaDeviceError(
                f"this GPU ({tvm.cuda(0).device_name}, sm_{have_sm}) is older than the artifact's {self.arch}; "
                f"compile for it with --target=cuda-sm{have_sm} (`effc targets` lists the CUDA targets)")

    @property
    def vm(self):
        self._require_gpu()
        if self.ptx is not None:
            _offer_ptx(self.source, self.ptx)
        if self.executable is None:  # loaded from a folder: the CUDA runtime can read it only now
            self.executable = tvm.runtime.load_module(str(self.library))
        return super().vm

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._require_gpu()  # before the input checks: no GPU is the first thing to fix
        return super().run(inputs)

    # -- files

    def export_files(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``model.so``, ``kernels.cu`` and (with PTX) ``kernels.ptx`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        library = folder / LIBRARY
        if self.library is not None:  # loaded, not built: TVM cannot read the library without a GPU
            if self.library.resolve() != library.resolve():
                shutil.copyfile(self.library, library)
        else:
            self.export(library)
        files = [library, folder / SOURCE]
        files[1].write_text(self.source)
        if self.ptx is not None:
            files.append(folder / PTX)
            files[2].write_text(self.ptx)
        self.folder = folder
        return files


def gpu_present() -> bool:
    """Whether this machine has a CUDA GPU TVM can run on."""
    return bool(tvm.cuda(0).exist)


def build_cuda(module: Module, target: Target) -> CudaBuilt:
    """Lower ``module`` and compile it for a CUDA ``target``; PTX too where nvcc exists.

    Raises UnsupportedOpError or LoweringError before TVM starts when something cannot be
    lowered, CudaCompileError when nvcc rejects the kernels."""
    if target.tvm.get("kind") != "cuda":
        raise LoweringError(f"build_cuda() compiles for CUDA targets; '{target.name}' is a "
                            f"{target.tvm.get('kind')} target")
    _install_ptx_hook()  # on a GPU machine tvm.compile loads the kernels at once: through nvcc where it exists
    compiled_before = set(_COMPILED)
    start = time.perf_counter()
    mod = lower_to_relax(module)
    tvm_target = tvm.target.Target(target.tvm)
    with tvm.transform.PassContext(opt_level=3), tvm_target:
        mod = relax_pipeline()(mod)
        mod = schedule_gpu_kernels(mod)
        executable = tvm.compile(mod, target=tvm_target, relax_pipeline=None)
    source = cuda_source_of(executable)
    seconds = {"tvm": time.perf_counter() - start}
    ptx = None
    if nvcc_path() is not None:
        key = (_source_key(source), str(tvm_target.attrs["arch"]))
        ran_in_tvm = key in _COMPILED and key not in compiled_before  # the hook ran nvcc (GPU machine)
        ptx, seconds["nvcc"] = compile_ptx(source, tvm_target)
        if ran_in_tvm:
            seconds["tvm"] = max(0.0, seconds["tvm"] - seconds["nvcc"])
    return CudaBuilt(executable, Signature.of(module), target, source, ptx, mod, seconds)


def load_cuda(folder: str | os.PathLike, target: Target, ir_module: Module) -> CudaBuilt:
    """A folder written by ``CudaBuilt.export_files``. The library is opened on the first
    run: TVM can read its CUDA part only where a GPU driver is installed."""
    folder = Path(folder)
    library, source = folder / LIBRARY, folder / SOURCE
    for f in (library, source):
        if not f.is_file():
            raise InputError(f"{folder}: no {f.name}; this is not a CUDA artifact folder (make one with "
                             f"`effc compile MODEL --target={target.name}`)")
    ptx = (folder / PTX).read_text() if (folder / PTX).is_file() else None
    return CudaBuilt(None, Signature.of(ir_module), target, source.read_text(), ptx, library=library)
