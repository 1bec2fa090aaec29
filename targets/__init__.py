"""Target descriptions as data: ``targets/*.toml``, one file per family with named variants.

A variant's ``tvm`` table is merged over the family's. ``mcpu = "host"`` is replaced by the
CPU detected on this machine. Only codegen/ turns these dicts into TVM targets."""
from __future__ import annotations

import os
import platform
import shutil
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from effc.ir.errors import InputError


@dataclass(frozen=True)
class Target:
    name: str
    family: str
    description: str
    tvm: dict[str, Any]
    runner: str
    """How effc runs a build: inprocess | qemu-aarch64 | gpu | qemu-system-arm."""
    requires: tuple[str, ...] = ()
    debian_packages: tuple[str, ...] = ()
    toolchain: dict[str, str] = field(default_factory=dict)
    fast_dtypes: tuple[str, ...] = ()
    cpu: tuple[str, ...] = ()
    """Compiler flags that select the CPU and its FPU (Cortex-M: ``-mcpu=cortex-m4 ...``)."""
    qemu_machine: str = ""
    """``qemu-system-arm -M`` machine that runs a build; empty: compiles, but has no runner."""
    sram_bytes: int | None = None
    """Boards: the SRAM budget (data, bss, arena, heap and stack must fit)."""
    flash_bytes: int | None = None
    """Boards: the flash budget (text, rodata and the initial values of data)."""
    memory: dict[str, int] = field(default_factory=dict)
    """Boards: the memory map (``flash_origin``, ``sram_origin``, ``stack_bytes``, ``heap_bytes``)."""

    def missing_tools(self) -> list[str]:
        """Required commands not found on PATH (entries with a note in parentheses are optional)."""
        return [r for r in self.requires if "(" not in r and shutil.which(r) is None]


def host_cpu() -> str:
    """An LLVM CPU name for this machine: the best x86 level its flags support."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "generic"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return "x86-64"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "skylake-avx512"
    if {"avx2", "fma", "bmi2"} <= flags:
        return "haswell"
    if "sse4_2" in flags:
        return "nehalem"
    return "x86-64"


def _families() -> dict[str, dict[str, Any]]:
    out = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text())
            out[data["family"]] = data
    return out


def _make(name: str, family: dict[str, Any], variant: dict[str, Any]) -> Target:
    tvm = dict(family["tvm"])
    tvm.update(variant.get("tvm", {}))
    if tvm.get("mcpu") == "host":
        tvm["mcpu"] = host_cpu()
    if tvm.get("kind") == "llvm" and "num-cores" not in tvm:
        tvm["num-cores"] = os.cpu_count() or 1

    def pick(key: str, default: Any) -> Any:  # a variant's value, else the family's
        return variant.get(key, family.get(key, default))

    return Target(name=name, family=family["family"], description=variant.get("description", family["description"]),
                  tvm=tvm, runner=family["runner"], requires=tuple(family.get("requires", ())),
                  debian_packages=tuple(family.get("debian_packages", ())),
                  toolchain=dict(family.get("toolchain", {})), fast_dtypes=tuple(family.get("fast_dtypes", ())),
                  cpu=tuple(pick("cpu", ())), qemu_machine=pick("qemu_machine", ""),
                  sram_bytes=pick("sram_bytes", None), flash_bytes=pick("flash_bytes", None),
                  memory={**family.get("memory", {}), **variant.get("memory", {})})


def list_targets() -> list[Target]:
    return [_make(name, fam, var) for fam in _families().values() for name, var in fam.get("variants", {}).items()]


def get_target(name: str) -> Target:
    for t in list_targets():
        if t.name == name:
            return t
    known = ", ".join(t.name for t in list_targets())
    raise InputError(f"unknown target '{name}' (known: {known}; `effc targets` lists them)")
