"""Runtime-free Linux builds (``--runtime=aot``): an effc module as a static library and a
static test executable, for 64-bit ARM (aarch64, Neon; the only runtime of the ``arm``
targets, run under ``qemu-aarch64-static`` on other hosts) and for x86-64.

``build_native(module, target)`` emits the AOT C program (``aot.py``: LLVM kernels for the
target's ``mtriple``/``mcpu``, a C driver, a static arena), compiles it with the target's
gcc (``aarch64-linux-gnu-gcc`` or the host's ``gcc``) and returns a ``NativeBuilt``:
- ``library``: ``libmodel.a``, everything but the test harness: link it with ``model.h``'s
  ``effc_<name>_run`` and ``-lm`` into any program, no TVM runtime, no heap;
- ``run(inputs)`` writes the inputs as raw files, runs the harness executable (natively
  when the host can, else under qemu) with a timeout and reads the outputs back;
- ``export_files(folder)`` writes ``model.elf``, ``libmodel.a``, ``model.h`` and the C
  project under ``src/`` (``make -C src`` rebuilds it); the bytes depend only on the
  module and target.
``load_native(folder, target, ir_module)`` reads an exported one back.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from effc.ir.core import Module
from effc.ir.errors import EffcError, InputError
from effc.ir.types import shape_matches
from effc.targets import Target, get_target

from .aot import AotProgram, CToolchain, Interface, ToolchainError, index_failure
from .aot_c import compile_program, emit
from .aot_c import HEADER
from .build import safe_target
from .schedules import Cpu, cpu_for

EXECUTABLE = "model.elf"
LIBRARY = "libmodel.a"
SOURCES = "src"
DEFAULT_TIMEOUT = 600.0
"""Seconds a run may take under qemu (untuned kernels of a large model are slow)."""


class RunError(EffcError):
    """A compiled program failed or timed out when run."""


HOST_MACHINES = {"arm": ("aarch64", "arm64"), "x86": ("x86_64", "AMD64")}
"""``platform.machine()`` names of hosts that run a family's executables directly."""


def native_toolchain(target: Target) -> CToolchain:
    """The target's C compiler (its TOML's ``toolchain.cc``, else the host's gcc)."""
    return CToolchain(cc=target.toolchain.get("cc", "gcc"), ldflags=("-static", "-O2", "-Wl,--strip-debug"),
                      packages=tuple(p for p in target.debian_packages if "gcc" in p) or ("gcc",))


def _runner_prefix(target: Target) -> list[str]:
    """How to start the target's executable here: directly on a host of its machine, else
    (aarch64 on another host) under qemu."""
    if platform.machine() in HOST_MACHINES.get(target.family, ()):
        return []
    if not target.runner.startswith("qemu"):
        raise ToolchainError(f"{target.name} executables run on {HOST_MACHINES.get(target.family, ('?',))[0]} hosts; "
                             f"this one is {platform.machine()}")
    for exe in ("qemu-aarch64-static", "qemu-aarch64"):
        path = shutil.which(exe)
        if path is not None:
            return [path]
    pkgs = " ".join(p for p in target.debian_packages if "qemu" in p) or "qemu-user-static"
    raise ToolchainError(f"running an aarch64 build on this {platform.machine()} host needs qemu-aarch64-static, "
                         f"which is not on PATH; install it (Debian/Ubuntu: apt-get install {pkgs})")


class NativeBuilt:
    """A model built as a static library and a static test executable (and the C project
    they were built from)."""

    def __init__(self, executable: bytes, interface: Interface, target: Target,
                 sources: Mapping[str, bytes] | None = None, program: AotProgram | None = None,
                 library: bytes = b""):
        self.executable = executable
        self.library = library
        self.interface = interface
        self.target = target
        self.sources = dict(sources or {})
        self.program = program
        """The emitted program (None when loaded from a folder)."""
        self.seconds: dict[str, float] = {}
        self.memory = None
        self.arena_bytes = program.arena_bytes if program is not None else None
        self._dir: tempfile.TemporaryDirectory | None = None
        self.last_ms_per_run: float | None = None

    @property
    def signature(self):
        return self.interface.signature

    def _exe_path(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="effc-native-")
            path = Path(self._dir.name) / EXECUTABLE
            path.write_bytes(self.executable)
            path.chmod(0o755)
        return Path(self._dir.name) / EXECUTABLE

    def run(self, inputs: Mapping[str, np.ndarray], *, runs: int = 1, timeout: float = DEFAULT_TIMEOUT
            ) -> dict[str, np.ndarray]:
        """Outputs keyed by graph output name. With ``runs`` > 1 the model runs that many times
        and ``last_ms_per_run`` holds the processor time per run (under qemu: emulated)."""
        arrays = check_inputs(self.interface, inputs)
        prefix = _runner_prefix(self.target)
        exe = self._exe_path()
        with tempfile.TemporaryDirectory(prefix="effc-run-") as tmp:
            ins = [Path(tmp) / f"in{i}.bin" for i in range(len(arrays))]
            outs = [Path(tmp) / f"out{i}.bin" for i in range(len(self.interface.outputs))]
            for path, a in zip(ins, arrays):
                path.write_bytes(a.tobytes())
            cmd = [*prefix, str(exe), *map(str, ins), *map(str, outs)] + ([str(runs)] if runs > 1 else [])
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise RunError(f"{EXECUTABLE} did not finish within {timeout:g} s ({' '.join(cmd[:2])} ...)") from None
            if proc.returncode != 0:
                failure = index_failure(proc.stderr) if proc.returncode == 3 else None
                if failure is not None:
                    raise failure
                raise RunError(f"{EXECUTABLE} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            m = re.search(r"([0-9.]+) ms per run", proc.stderr)
            self.last_ms_per_run = float(m.group(1)) if m else None
            return read_outputs(self.interface, outs)

    def export_files(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``model.elf``, ``libmodel.a`` with ``model.h``, and ``src/`` (the C project)
        into ``folder``; returns the paths."""
        folder = Path(folder)
        (folder / SOURCES).mkdir(parents=True, exist_ok=True)
        exe = folder / EXECUTABLE
        exe.write_bytes(self.executable)
        exe.chmod(0o755)
        paths = [exe]
        if self.library:
            (folder / LIBRARY).write_bytes(self.library)
            (folder / HEADER).write_bytes(self.sources[HEADER])
            paths += [folder / LIBRARY, folder / HEADER]
        for name, data in sorted(self.sources.items()):
            (folder / SOURCES / name).write_bytes(data)
            paths.append(folder / SOURCES / name)
        return paths


def check_inputs(iface: Interface, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The inputs in calling order, C-contiguous; InputError naming what is wrong."""
    extra = set(inputs) - {n for n, _ in iface.inputs}
    if extra:
        raise InputError(f"inputs {sorted(extra)} are not inputs of the model (it takes {[n for n, _ in iface.inputs]})")
    out = []
    for name, t in iface.inputs:
        if name not in inputs:
            raise InputError(f"missing input '{name}' ({t}); inputs given: {sorted(inputs)}")
        a = np.asarray(inputs[name], order="C")
        if a.dtype != t.dtype.np:
            raise InputError(f"input '{name}' has dtype {a.dtype}, the model wants {t.dtype} ({t})")
        if not shape_matches(t.shape, a.shape, {}):
            raise InputError(f"input '{name}' has shape {list(a.shape)}, the model wants {t}")
        out.append(np.ascontiguousarray(a))
    return out


def read_outputs(iface: Interface, paths: list[Path]) -> dict[str, np.ndarray]:
    """The raw output files a harness wrote, as arrays keyed by output name."""
    return {name: np.frombuffer(p.read_bytes(), dtype=t.dtype.np).reshape([int(d) for d in t.shape]).copy()
            for p, (name, t) in zip(paths, iface.outputs)}


def _target(target: Target | str | None) -> Target:
    tgt = get_target("arm") if target is None else get_target(target) if isinstance(target, str) else target
    if tgt.family not in HOST_MACHINES:
        raise InputError(f"runtime-free Linux builds are for the arm and x86 targets, not '{tgt.name}'")
    return tgt


def aot_cpu(tvm_target: Mapping[str, Any], hardware: Mapping[str, int] | None) -> Cpu:
    """What a runtime-free Linux program's kernels are made for: the target's ``Cpu`` on
    one core, as the AOT driver runs a parallel loop's chunks one after another."""
    return replace(cpu_for(tvm_target, hardware), cores=1)


def build_native(module: Module, target: Target | str | None = None, *, name: str | None = None,
                 tuning_db: str | os.PathLike | None = None, io_in_arena: bool = True) -> NativeBuilt:
    """Emit the AOT C program of ``module`` (optimized; static shapes) and compile it into
    ``libmodel.a`` and a static executable for ``target`` (default ``arm``). ``name`` goes
    into the C API (``effc_<name>_run``; default: the graph's name). ``tuning_db`` (x86):
    the kernels a MetaSchedule database under it holds get its schedules. ``io_in_arena``:
    the inputs and outputs live in the arena (False: in the caller's own buffers).
    Convolutions run in the target's blocked layouts and every kernel without a tuning
    record gets effc's default schedule for the target's ``hardware`` (Neon on arm), one
    core (``aot_cpu``)."""
    tgt = _target(target)
    toolchain = native_toolchain(tgt)
    toolchain.require()  # before the (slow) kernel build
    tvm_target, database = safe_target(tgt.tvm), None  # as the VM build: see build.safe_target
    if tuning_db is not None:  # the backend table offers tuning where it works (x86)
        from .tune import open_database, tuning_target

        tvm_target = tuning_target(tgt.tvm)
        database = open_database(tuning_db, tvm_target)
    program = emit(module, tvm_target, toolchain, name, database, io_in_arena, aot_cpu(tvm_target, tgt.hardware))[0]
    with tempfile.TemporaryDirectory(prefix="effc-native-build-") as tmp:
        exe = compile_program(program, toolchain, tmp, output=EXECUTABLE, library=LIBRARY)
        data, lib = exe.read_bytes(), (Path(tmp) / LIBRARY).read_bytes()
    return NativeBuilt(data, program.interface, tgt, program.files, program, lib)


def load_native(folder: str | os.PathLike, target: Target | str | None, ir_module: Module) -> NativeBuilt:
    """A ``NativeBuilt`` exported to ``folder``, for the module it was built from."""
    folder = Path(folder)
    tgt = _target(target)
    exe = folder / EXECUTABLE
    if not exe.is_file():
        raise InputError(f"{folder}: no {EXECUTABLE}; recompile the artifact with "
                         f"`effc compile --target={tgt.name} --runtime=aot`")
    src = folder / SOURCES
    sources = {p.name: p.read_bytes() for p in sorted(src.iterdir()) if p.is_file()} if src.is_dir() else {}
    lib = folder / LIBRARY
    return NativeBuilt(exe.read_bytes(), Interface.of(ir_module), tgt, sources,
                       library=lib.read_bytes() if lib.is_file() else b"")


__all__ = ["NativeBuilt", "RunError", "build_native", "check_inputs", "load_native", "native_toolchain",
           "read_outputs"]
