"""Build and load by target family: one place that knows which builder serves which target.

| family | builder | artifact | runs |
|---|---|---|---|
| x86 | ``build.build`` (Relax VM executable) | ``model.so`` | in process |
| arm | ``arm.build_arm`` (AOT C driver + LLVM kernels, static executable) | ``model`` + ``src/`` | qemu-aarch64-static, or natively |
| cuda | ``cuda.build_cuda`` | ``model.so``, ``kernels.cu``, ``kernels.ptx`` | on a GPU |
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.targets import Target

LIBRARY = "model.so"

STATIC_SHAPE_FAMILIES = frozenset({"arm"})
"""Families whose builds need every shape known (ahead-of-time memory and call plans)."""


class _LibraryArtifact:
    """Adapts ``build.Built`` (x86) to the artifact interface: ``run`` and ``export_files``."""

    def __init__(self, built: Any):
        self.built = built

    def run(self, inputs: Any) -> dict:
        return self.built.run(inputs)

    def export_files(self, folder: Path) -> list[Path]:
        return [self.built.export(Path(folder) / LIBRARY)]


def build_for_target(module: Module, target: Target, *, name: str | None = None) -> Any:
    if target.family == "x86":
        from .build import build

        return _LibraryArtifact(build(module, target.tvm))
    if target.family == "arm":
        from .arm import build_arm

        return build_arm(module, target, name=name)
    if target.family == "cuda":
        from .cuda import build_cuda

        return build_cuda(module, target)
    raise InputError(f"target '{target.name}' (family {target.family}) has no builder yet")


def load_for_target(folder: Path, target: Target, ir: Module) -> Any:
    folder = Path(folder)
    if target.family == "x86":
        from .build import Built, Signature

        return _LibraryArtifact(Built.load(folder / LIBRARY, Signature.of(ir)))
    if target.family == "arm":
        from .arm import load_arm

        return load_arm(folder, target, ir)
    if target.family == "cuda":
        from .cuda import load_cuda

        return load_cuda(folder, target, ir)
    raise InputError(f"target '{target.name}' (family {target.family}) has no loader yet")
