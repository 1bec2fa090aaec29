"""Target descriptions as data: ``targets/*.toml``, one file per family with named variants.

A variant's ``tvm`` table is merged over the family's. ``mcpu = "host"`` is replaced by the
CPU detected on this machine. ``runtimes`` lists what may run a build, the default first
(``codegen/dispatch.py`` has a backend for each), and ``runtime_refused`` says why the others
are not offered. Only codegen/ turns these dicts into TVM targets."""
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
    runtimes: tuple[str, ...]
    """What may run a build, the default first: ``vm`` (TVM's Relax VM) or ``aot`` (effc's C driver)."""
    runtime_refused: str = ""
    """Why the other runtimes are not offered (said when one is asked for)."""
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
    quant_rounding: str = "onnx"
    """How ``qdq-to-integer``'s integer ops requantize on this target: ``onnx`` (float
    multiplier, half to even: onnxruntime's) or ``fixed_point`` (31-bit multiplier and
    shift, one rounding: TFLite's and CMSIS-NN's); ``ir/ops/quant.py``."""
    hardware: dict[str, int | str] = field(default_factory=dict)
    """CPU targets: what effc's default schedules are made for (``vector_bits``,
    ``vector_registers``, ``l1d_kib``; ``codegen/schedules.Cpu``); a key left out is
    detected (the host) or derived from the LLVM CPU. Core counts are the TVM target's
    ``num-cores``."""

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
        return "cascadelake" if "avx512_vnni" in flags else "skylake-avx512"  # (cascadelake: + VNNI)
    if {"avx2", "fma", "bmi2"} <= flags:
        return "haswell"
    if "sse4_2" in flags:
        return "nehalem"
    return "x86-64"


def check_family(file: str, data: dict[str, Any]) -> dict[str, Any]:
    """``data``, a family file's contents, when it has the fields effc relies on; else an
    InputError naming ``targets/<file>`` and the field."""
    def field_error(key: str, want: str) -> InputError:
        return InputError(f"targets/{file}: '{key}' must be {want}, got {data.get(key)!r}")

    for key in ("family", "description", "runner"):
        if not isinstance(data.get(key), str):
            raise field_error(key, "a string")
    if not isinstance(data.get("tvm"), dict):
        raise field_error("tvm", "a table (the TVM target)")
    runtimes = data.get("runtimes")
    if not (isinstance(runtimes, list) and runtimes and all(isinstance(r, str) for r in runtimes)
            and len(set(runtimes)) == len(runtimes)):
        raise field_error("runtimes", 'a list of the runtimes the target allows, the default first (e.g. ["vm", "aot"])')
    if data.get("quant_rounding", "onnx") not in QUANT_ROUNDINGS:
        raise field_error("quant_rounding", " or ".join(f'"{r}"' for r in QUANT_ROUNDINGS))
    if not isinstance(data.get("runtime_refused", ""), str):
        raise field_error("runtime_refused", "a string (why the other runtimes are not offered)")
    for where, table in [("hardware", data.get("hardware", {}))] + [
            (f"variants.{n}.hardware", v.get("hardware", {})) for n, v in data.get("variants", {}).items()]:
        bad = {k: v for k, v in table.items()
               if not (k in HARDWARE_KEYS and isinstance(v, int) and v > 0 or k == "int8_dot" and v in INT8_DOTS)} \
            if isinstance(table, dict) else {where: table}
        if bad:
            raise InputError(f"targets/{file}: '{where}' takes positive integers for {', '.join(HARDWARE_KEYS)} and "
                             f"int8_dot = {' or '.join(repr(d) for d in INT8_DOTS)}; got {bad}")
    return data


HARDWARE_KEYS = ("vector_bits", "vector_registers", "l1d_kib")
"""The integer keys of a family's (or variant's) ``hardware`` table."""
INT8_DOTS = ("", "avx512-vnni", "avx2", "neon-sdot")
"""A ``hardware`` table's ``int8_dot``: the integer dot product effc's int8 kernels use
("": none; codegen/schedules/__init__.py's ``INT8_DOTS``, a test checks the two agree)."""
QUANT_ROUNDINGS = ("onnx", "fixed_point")
"""``ir.ops.quant.ROUNDINGS`` (a test checks the two agree; targets/ does not import ir/ops)."""


def _families() -> dict[str, dict[str, Any]]:
    out = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            try:
                data = check_family(entry.name, tomllib.loads(entry.read_text()))
            except tomllib.TOMLDecodeError as e:
                raise InputError(f"targets/{entry.name}: not valid TOML ({e})") from None
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
                  tvm=tvm, runner=family["runner"], runtimes=tuple(family["runtimes"]),
                  runtime_refused=family.get("runtime_refused", ""), requires=tuple(family.get("requires", ())),
                  debian_packages=tuple(family.get("debian_packages", ())),
                  toolchain=dict(family.get("toolchain", {})), fast_dtypes=tuple(family.get("fast_dtypes", ())),
                  cpu=tuple(pick("cpu", ())), qemu_machine=pick("qemu_machine", ""),
                  sram_bytes=pick("sram_bytes", None), flash_bytes=pick("flash_bytes", None),
                  memory={**family.get("memory", {}), **variant.get("memory", {})},
                  quant_rounding=family.get("quant_rounding", "onnx"),
                  hardware={**family.get("hardware", {}), **variant.get("hardware", {})})


def list_targets() -> list[Target]:
    return [_make(name, fam, var) for fam in _families().values() for name, var in fam.get("variants", {}).items()]


def get_target(name: str) -> Target:
    for t in list_targets():
        if t.name == name:
            return t
    known = ", ".join(t.name for t in list_targets())
    raise InputError(f"unknown target '{name}' (known: {known}; `effc targets` lists them)")
