"""Build and load by target family: one place that knows which builder serves which target.

| family | builder | artifact | runs |
|---|---|---|---|
| x86 | ``build.build`` (Relax VM executable) | ``model.so`` | in process |
| x86, ``--runtime=aot`` | ``native.build_native`` (AOT C driver + LLVM kernels) | ``libmodel.a``, ``model.h``, ``model.elf`` + ``src/`` | natively |
| arm (AOT only) | ``native.build_native`` (AOT C driver + LLVM kernels) | ``libmodel.a``, ``model.h``, ``model.elf`` + ``src/`` | qemu-aarch64-static, or natively |
| cuda | ``cuda.build_cuda`` | ``model.so``, ``kernels.cu``, ``kernels.ptx`` | on a GPU |
| cortex-m | ``cortex_m.build_cortex_m`` (AOT C driver + TVM C kernels, bare-metal ELF, budgets checked) | ``model.elf``, ``memory.json``, ``src/`` | qemu-system-arm with semihosting |
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.targets import Target

LIBRARY = "model.so"

RUNTIMES = {"x86": ("vm", "aot"), "arm": ("aot",), "cuda": ("vm",), "cortex-m": ("aot",)}
"""What runs a build, per family, the default first: ``vm`` (TVM's Relax VM in a shared
library) or ``aot`` (effc's runtime-free C driver, a static arena, no heap)."""


def runtime_for(target: Target, runtime: str | None) -> str:
    """The runtime a build of ``target`` uses: ``runtime``, or the family's default;
    InputError when the family has no such runtime."""
    allowed = RUNTIMES.get(target.family, ("vm",))
    if runtime is None:
        return allowed[0]
    if runtime not in allowed:
        why = {"cuda": "kernels on a GPU are launched by the TVM runtime",
               "arm": "arm builds are runtime-free static programs",
               "cortex-m": "microcontrollers have no TVM runtime"}.get(target.family, "")
        raise InputError(f"target '{target.name}' builds with --runtime={' or '.join(allowed)}, not '{runtime}'"
                         + (f" ({why})" if why else ""))
    return runtime


def needs_static_shapes(target: Target, runtime: str | None) -> bool:
    """AOT builds need every shape known (ahead-of-time memory and call plans)."""
    return runtime_for(target, runtime) == "aot"


class LibraryArtifact:
    """Adapts ``build.Built`` (x86) to the artifact interface: ``run`` and ``export_files``."""

    def __init__(self, built: Any):
        self.built = built

    def run(self, inputs: Any) -> dict:
        return self.built.run(inputs)

    def export_files(self, folder: Path) -> list[Path]:
        return [self.built.export(Path(folder) / LIBRARY)]


def build_for_target(module: Module, target: Target, *, name: str | None = None, sram: int | None = None,
                     flash: int | None = None, runtime: str | None = None) -> Any:
    """Build for ``target`` with ``runtime`` (default: the family's); ``sram``/``flash``
    (bytes) override a board's budgets."""
    if (sram is not None or flash is not None) and target.family != "cortex-m":
        raise InputError(f"--sram/--flash apply to microcontroller targets, not '{target.name}'")
    runtime = runtime_for(target, runtime)
    if target.family in ("x86", "arm") and runtime == "aot":
        from .native import build_native

        return build_native(module, target, name=name)
    if target.family == "x86":
        from .build import build

        return LibraryArtifact(build(module, target.tvm))
    if target.family == "cuda":
        from .cuda import build_cuda

        return build_cuda(module, target)
    if target.family == "cortex-m":
        from .cortex_m import build_cortex_m

        return build_cortex_m(module, target, name=name, sram=sram, flash=flash)
    raise InputError(f"target '{target.name}' (family {target.family}) has no builder yet")


def artifact_reads(folder: Path, target: Target, runtime: str | None = None) -> list[str]:
    """The files ``load_for_target`` reads or executes from ``folder`` for ``target`` and
    ``runtime``, as POSIX names relative to it: the required ones whether present or not,
    optional ones and every file of a sources folder when present. ``effc.load`` checks
    each against the manifest's hashes first, so nothing unlisted is ever opened."""
    folder = Path(folder)
    runtime = runtime_for(target, runtime)
    if target.family in ("x86", "arm") and runtime == "aot":
        from . import native

        required, optional, sources = [native.EXECUTABLE], [native.LIBRARY], native.SOURCES
    elif target.family == "x86":
        required, optional, sources = [LIBRARY], [], None
    elif target.family == "cuda":
        from . import cuda

        required, optional, sources = [cuda.LIBRARY, cuda.SOURCE], [cuda.PTX], None
    elif target.family == "cortex-m":
        from . import cortex_m

        required, optional, sources = [cortex_m.EXECUTABLE], [cortex_m.MEMORY], cortex_m.SOURCES
    else:
        raise InputError(f"target '{target.name}' (family {target.family}) has no loader yet")
    names = required + [n for n in optional if (folder / n).exists()]
    if sources is not None and (folder / sources).is_dir():  # the loaders read every file in it
        names += sorted(f"{sources}/{p.name}" for p in (folder / sources).iterdir() if p.is_file())
    return names


def load_for_target(folder: Path, target: Target, ir: Module, runtime: str | None = None) -> Any:
    """The built model in an artifact folder. The caller (``effc.load``) has checked every
    file ``artifact_reads`` names against the manifest."""
    folder = Path(folder)
    runtime = runtime_for(target, runtime)
    if target.family in ("x86", "arm") and runtime == "aot":
        from .native import load_native

        return load_native(folder, target, ir)
    if target.family == "x86":
        from .build import Built, Signature

        return LibraryArtifact(Built.load(folder / LIBRARY, Signature.of(ir)))
    if target.family == "cuda":
        from .cuda import load_cuda

        return load_cuda(folder, target, ir)
    if target.family == "cortex-m":
        from .cortex_m import load_cortex_m

        _check_memory_report(folder)
        return load_cortex_m(folder, target, ir)
    raise InputError(f"target '{target.name}' (family {target.family}) has no loader yet")


def _check_memory_report(folder: Path) -> None:
    """A Cortex-M artifact's ``memory.json`` (hashed, so only a hand-made or rewritten one
    fails) parses as the report ``export_files`` wrote; InputError naming the file if not."""
    import json

    from .cortex_m import MEMORY, MemoryReport

    path = folder / MEMORY
    if not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        MemoryReport.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # JSON, fields, their types
        raise InputError(f"{path}: not a memory report as effc writes it ({type(e).__name__}: {e}); "
                         "recompile the artifact with `effc compile`") from None
