"""The backend table: for each (target family, runtime) a target's TOML allows (``runtimes``,
the default first), how to build, load and tune, and what the loader reads. Nothing else in
effc branches on a family or a runtime; the TOML's ``runtime_refused`` says why a runtime
it lacks is refused.

| family, runtime | builder | artifact | runs |
|---|---|---|---|
| x86, vm | ``build.build`` (Relax VM executable) | ``model.so`` | in process |
| x86 / arm, aot | ``native.build_native`` (AOT C driver + LLVM kernels) | ``libmodel.a``, ``model.h``, ``model.elf`` + ``src/`` | natively, arm under qemu-aarch64-static |
| cuda, vm | ``cuda.build_cuda`` | ``model.so``, ``kernels.cu``, ``kernels.ptx`` | on a GPU |
| cortex-m, aot | ``cortex_m.build_cortex_m`` (AOT C driver + TVM C kernels, bare-metal ELF, budgets checked) | ``model.elf``, ``memory.json``, ``src/`` | qemu-system-arm with semihosting |

``vm``: TVM's Relax VM in a shared library; ``aot``: effc's runtime-free C driver, a static
arena, no heap. Builders and loaders return an ``Artifact``; their modules import TVM, so
they are imported when an entry is first used.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.targets import Target


@runtime_checkable
class Artifact(Protocol):
    """A build, fresh or loaded: all ``effc.compile`` and ``effc.load`` use of it."""

    seconds: dict[str, float]
    """Build stages and their times (empty when loaded)."""
    memory: Any
    """Microcontroller builds: flash and SRAM use (``cortex_m.MemoryReport``); else None."""
    arena_bytes: int | None
    """AOT builds: the static arena the C API asks the caller for; else (and when loaded) None."""

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]: ...

    def export_files(self, folder: Path) -> list[Path]: ...


@dataclass(frozen=True)
class Backend:
    """How one (family, runtime) builds, loads and tunes, and what its loader reads."""

    build: Callable[..., Artifact]
    """``(module, target, name=, sram=, flash=, io_in_arena= for AOT programs)``: a fresh build."""
    load: Callable[[Path, Target, Module], Artifact]
    """``(folder, target, ir)``: what ``export_files`` wrote to ``folder``."""
    required: tuple[str, ...]
    """Files the loader reads or executes; ``optional`` ones and every file of the ``sources``
    folder too when present. ``effc.load`` checks each against the manifest's hashes first."""
    optional: tuple[str, ...] = ()
    sources: str | None = None
    tune: Callable[[Module, Target, Path, str], tuple[Artifact, str]] | None = None
    """``(module, target, database folder, C name, io_in_arena= for AOT programs)``: a build with
    the database's schedules and a note for the report; None: no tuning yet."""
    aot: bool = False
    """An AOT program: every shape static, kernels of its own (tuned as such), a static arena."""
    budgets: bool = False
    """Takes SRAM/flash budgets (``--sram``/``--flash``)."""

    def reads(self, folder: Path) -> list[str]:
        """The files ``load`` reads from ``folder``, as POSIX names relative to it."""
        folder = Path(folder)
        names = [*self.required, *(n for n in self.optional if (folder / n).exists())]
        if self.sources is not None and (folder / self.sources).is_dir():  # the loaders read every file in it
            names += sorted(f"{self.sources}/{p.name}" for p in (folder / self.sources).iterdir() if p.is_file())
        return names


def _m(name: str) -> Any:  # a backend module, imported on first use
    return import_module(f"{__package__}.{name}")


def _tuned_aot(module: Module, target: Target, db_dir: Path, name: str, **io: bool) -> tuple[Artifact, str]:
    built = _m("native").build_native(module, target, name=name, tuning_db=db_dir, **io)
    return built, f"{built.program.notes['tuned_kernels']} of the AOT program's kernels use tuned schedules"


_NATIVE = dict(build=lambda module, target, name=None, io_in_arena=True, **_:
               _m("native").build_native(module, target, name=name, io_in_arena=io_in_arena),
               load=lambda *a: _m("native").load_native(*a),
               required=("model.elf",), optional=("libmodel.a",), sources="src", aot=True)

BACKENDS: dict[tuple[str, str], Backend] = {
    ("x86", "vm"): Backend(
        build=lambda module, target, **_: _m("build").build(module, target.tvm, hardware=target.hardware),
        load=lambda folder, target, ir: _m("build").Built.load(Path(folder) / "model.so", _m("build").Signature.of(ir)),
        required=("model.so",),
        tune=lambda module, target, db_dir, name: (_m("tune").build_tuned(module, target.tvm, db_dir, target.hardware),
                                                   "")),
    ("x86", "aot"): Backend(**_NATIVE, tune=_tuned_aot),
    ("arm", "aot"): Backend(**_NATIVE),
    ("cuda", "vm"): Backend(
        build=lambda module, target, **_: _m("cuda").build_cuda(module, target),
        load=lambda *a: _m("cuda").load_cuda(*a),
        required=("model.so", "kernels.cu"), optional=("kernels.ptx",)),
    ("cortex-m", "aot"): Backend(
        build=lambda *a, **kw: _m("cortex_m").build_cortex_m(*a, **kw),  # name, sram, flash, io_in_arena
        load=lambda *a: _m("cortex_m").load_cortex_m(*a),
        required=("model.elf",), optional=("memory.json",), sources="src", aot=True, budgets=True),
}
"""One entry per (family, runtime) some target allows; tests/codegen/test_backends.py checks both ways."""

TUNABLE = " and ".join(sorted({family for (family, _), b in BACKENDS.items() if b.tune is not None}))
"""The families whose builds can be tuned, as an error message names them."""


def runtime_for(target: Target, runtime: str | None) -> str:
    """The runtime a build of ``target`` uses: ``runtime``, or the target's default;
    InputError (with the target's ``runtime_refused``) when the target does not allow it."""
    if runtime is None:
        return target.runtimes[0]
    if runtime not in target.runtimes:
        why = f" ({target.runtime_refused})" if target.runtime_refused else ""
        raise InputError(f"target '{target.name}' builds with --runtime={' or '.join(target.runtimes)}, "
                         f"not '{runtime}'{why}")
    return runtime


def backend_for(target: Target, runtime: str | None = None) -> Backend:
    """The table's entry for ``target`` with ``runtime`` (default: the target's first)."""
    return BACKENDS[target.family, runtime_for(target, runtime)]

