"""64-bit ARM Linux (aarch64, Neon): an effc module as a static executable, run under
``qemu-aarch64-static`` on other hosts.

``build_arm(module, target)`` emits the AOT C program (``aot.py``: LLVM kernels for the
target's ``mtriple``/``mcpu``, a C driver, a static arena), cross-compiles it with
``aarch64-linux-gnu-gcc -static -O2`` and returns an ``ArmBuilt``:
- ``run(inputs)`` writes the inputs as raw files, runs the executable (natively on an
  aarch64 host, else under qemu) with a timeout and reads the outputs back;
- ``export_files(folder)`` writes ``model.elf`` and the C project under ``src/``
  (``make -C src`` rebuilds it); the bytes depend only on the module and target.
``load_arm(folder, target, ir_module)`` reads an exported one back.

The kernels link without the TVM runtime, and the executable is static: it needs no
shared library on the device, only Linux.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from effc.ir.core import Module
from effc.ir.errors import EffcError, InputError
from effc.ir.types import shape_matches
from effc.targets import Target, get_target

from .aot import AotProgram, CToolchain, Interface, ToolchainError, compile_program, emit_program

EXECUTABLE = "model.elf"
SOURCES = "src"
DEFAULT_TIMEOUT = 600.0
"""Seconds a run may take under qemu (untuned kernels of a large model are slow)."""


class RunError(EffcError):
    """A compiled program failed or timed out when run."""


def arm_toolchain(target: Target) -> CToolchain:
    cc = target.toolchain.get("cc", "aarch64-linux-gnu-gcc")
    return CToolchain(cc=cc, ldflags=("-static", "-O2", "-Wl,--strip-debug"),
                      packages=tuple(p for p in target.debian_packages if "gcc" in p) or ("gcc-aarch64-linux-gnu",))


def _runner_prefix(target: Target) -> list[str]:
    """How to start an aarch64 executable here: directly on an aarch64 host, else qemu."""
    if platform.machine() in ("aarch64", "arm64"):
        return []
    for exe in ("qemu-aarch64-static", "qemu-aarch64"):
        path = shutil.which(exe)
        if path is not None:
            return [path]
    pkgs = " ".join(p for p in target.debian_packages if "qemu" in p) or "qemu-user-static"
    raise ToolchainError(f"running an aarch64 build on this {platform.machine()} host needs qemu-aarch64-static, "
                         f"which is not on PATH; install it (Debian/Ubuntu: apt-get install {pkgs})")


class ArmBuilt:
    """A model built as a static aarch64 executable (and the C project it was built from)."""

    def __init__(self, executable: bytes, interface: Interface, target: Target,
                 sources: Mapping[str, bytes] | None = None, program: AotProgram | None = None):
        self.executable = executable
        self.interface = interface
        self.target = target
        self.sources = dict(sources or {})
        self.program = program
        """The emitted program (None when loaded from a folder)."""
        self._dir: tempfile.TemporaryDirectory | None = None
        self.last_ms_per_run: float | None = None

    @property
    def signature(self):
        return self.interface.signature

    def _exe_path(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="effc-arm-")
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
                raise RunError(f"{EXECUTABLE} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
            m = re.search(r"([0-9.]+) ms per run", proc.stderr)
            self.last_ms_per_run = float(m.group(1)) if m else None
            return {name: np.frombuffer(p.read_bytes(), dtype=t.dtype.np).reshape([int(d) for d in t.shape]).copy()
                    for p, (name, t) in zip(outs, self.interface.outputs)}

    def export_files(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``model.elf`` and ``src/`` (the C project) into ``folder``; returns the paths."""
        folder = Path(folder)
        (folder / SOURCES).mkdir(parents=True, exist_ok=True)
        exe = folder / EXECUTABLE
        exe.write_bytes(self.executable)
        exe.chmod(0o755)
        paths = [exe]
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


def _target(target: Target | str | None) -> Target:
    if target is None:
        return get_target("arm")
    if isinstance(target, str):
        return get_target(target)
    return target


def build_arm(module: Module, target: Target | str | None = None, *, name: str | None = None) -> ArmBuilt:
    """Emit the AOT C program of ``module`` (optimized; static shapes) and cross-compile it
    into a static aarch64 executable. ``name`` goes into the C API (``effc_<name>_run``;
    default: the graph's name)."""
    tgt = _target(target)
    toolchain = arm_toolchain(tgt)
    toolchain.require()  # before the (slow) kernel build
    program = emit_program(module, tgt.tvm, toolchain, name)
    with tempfile.TemporaryDirectory(prefix="effc-arm-build-") as tmp:
        exe = compile_program(program, toolchain, tmp, output=EXECUTABLE)
        data = exe.read_bytes()
    return ArmBuilt(data, program.interface, tgt, program.files, program)


def load_arm(folder: str | os.PathLike, target: Target | str | None, ir_module: Module) -> ArmBuilt:
    """An ``ArmBuilt`` exported to ``folder``, for the module it was built from."""
    folder = Path(folder)
    exe = folder / EXECUTABLE
    if not exe.is_file():
        raise InputError(f"{folder}: no {EXECUTABLE}; recompile the artifact with `effc compile --target=arm`")
    src = folder / SOURCES
    sources = {p.name: p.read_bytes() for p in sorted(src.iterdir()) if p.is_file()} if src.is_dir() else {}
    return ArmBuilt(exe.read_bytes(), Interface.of(ir_module), _target(target), sources)


__all__ = ["ArmBuilt", "RunError", "arm_toolchain", "build_arm", "check_inputs", "load_arm"]
