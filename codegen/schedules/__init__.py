"""effc's default CPU schedules: what every kernel without a tuning record runs.

TVM 0.27's default CPU pipeline schedules nothing: a kernel is a serial scalar loop nest.
``default_schedules`` is a module pass, run after ``FuseTIR`` (and after a tuning database
was applied), that schedules each PrimFunc not scheduled yet:

- convolutions (``conv.py``): blocked NCHW[b]c convolutions (dense, depthwise, grouped)
  in a register-tiled, vectorized, parallel schedule; NCHW ones with vectors along rows;
- every other kernel (``generic.py``): matmul and batch matmul (a register tile in a
  local accumulator, epilogue per tile), reductions, pools, elementwise.

What a schedule is made for is a ``Cpu``: f32 vector lanes (16 with AVX-512, 8 with AVX2,
4 on Neon; the layout plan, ``codegen/layout.py``, uses the same number), vector registers
(the register tiles), the L1 data cache (the matmul's K block) and cores (what runs in
parallel). ``cpu_for`` reads them from the target's ``hardware`` table in
``targets/*.toml`` and its TVM target's ``num-cores``; what a table leaves out is derived
from the LLVM CPU or detected on this machine. A rule that does not apply leaves the
kernel as it was (never wrong, only slower).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import tvm
from tvm import s_tir, tirx

from ..aot_kernels import ieee_minmax
from .conv import schedule_conv, schedule_plain_conv
from .generic import SCHEDULE_ERRORS, schedule_generic
from .int8 import schedule_int8_conv

log = logging.getLogger("effc.schedule")

SCHEDULED = "tirx.is_scheduled"
"""The PrimFunc attribute of a scheduled kernel (effc's default schedules skip it)."""


@dataclass(frozen=True)
class Cpu:
    """The CPU a build's layouts and default schedules are made for."""

    lanes: int
    """f32 lanes of a vector register (the channel block of blocked layouts)."""
    vector_registers: int
    l1d_bytes: int
    cores: int
    """Cores a parallel loop may use (the TVM target's ``num-cores``)."""
    int8_dot: str | None = None
    """Integer dot-product instructions the integer kernels use: ``avx512-vnni``
    (``vpdpbusd``), ``avx2`` (``vpmaddwd`` on int16) or ``neon-sdot`` (Arm's ``sdot``),
    ``int8.py``; None: plain int32 arithmetic."""


def cpu_for(target: Mapping[str, Any], hardware: Mapping[str, int] | None = None) -> Cpu:
    """The ``Cpu`` of an LLVM CPU target (a TVM target dict) with ``hardware`` (a
    ``targets/*.toml`` ``hardware`` table; None or a key left out: derived from the LLVM
    CPU, the L1 size detected on this machine)."""
    hw = dict(hardware or {})
    lanes = hw["vector_bits"] // 32 if "vector_bits" in hw else target_lanes(target)
    triple = str(target.get("mtriple", ""))
    registers = hw.get("vector_registers") or (32 if lanes >= 16 or triple.startswith("aarch64") else 16)
    l1d = hw["l1d_kib"] * 1024 if "l1d_kib" in hw else _host_l1d_bytes()
    cores = int(target.get("num-cores") or os.cpu_count() or 1)
    int8_dot = hw["int8_dot"] if "int8_dot" in hw else target_int8_dot(target)
    if int8_dot not in INT8_DOTS:
        raise ValueError(f"hardware int8_dot = '{int8_dot}': effc knows {sorted(d for d in INT8_DOTS if d)}")
    return Cpu(lanes, registers, l1d, cores, int8_dot or None)


def _host_l1d_bytes(default: int = 32 * 1024) -> int:
    """This machine's L1 data cache per core, from Linux's sysfs (``default`` elsewhere)."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "1" and (index / "type").read_text().strip() == "Data":
                size = (index / "size").read_text().strip().upper()
                return int(size[:-1]) * 1024 if size.endswith("K") else int(size)
        except (OSError, ValueError):
            continue
    return default


def default_schedule(func: tirx.PrimFunc, cpu: Cpu) -> s_tir.Schedule | None:
    """effc's default schedule of ``func`` (a kernel named ``main``) for ``cpu``, or None
    when no rule applies. ``.mod["main"]`` is the scheduled kernel, ``.trace`` how it was
    scheduled (tuning starts from it: ``tune.seed_record``)."""
    for rule in (lambda sch: schedule_int8_conv(sch, cpu.vector_registers),
                 lambda sch: schedule_conv(sch, cpu.vector_registers),
                 lambda sch: schedule_plain_conv(sch, cpu.lanes)):
        sch = s_tir.Schedule(func)
        try:
            if rule(sch):
                return sch
        except SCHEDULE_ERRORS as err:  # a rule that did not fit: the next one, or none
            log.debug("conv schedule failed: %s", err)
    return schedule_generic(func, cpu.lanes, cpu.cores, cpu.l1d_bytes, cpu.vector_registers)


def default_schedules(cpu: Cpu) -> tvm.transform.Pass:
    """Schedule every static PrimFunc of the module that is not scheduled yet, for ``cpu``."""

    @tvm.transform.module_pass(opt_level=0, name="effc.DefaultSchedules")
    def apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get(SCHEDULED)):
                continue
            # IEEE max/min first: a schedule may split a reduction's init off, and ieee_minmax
            # finds a max reduction's starting value in its init
            func = ieee_minmax(func)
            sch = default_schedule(func.with_attr("global_symbol", "main"), cpu)
            if sch is not None:
                scheduled = sch.mod["main"].with_attr(SCHEDULED, True)
                symbol = func.attrs.get("global_symbol") if func.attrs else None
                mod[gv] = (scheduled.with_attr("global_symbol", symbol) if symbol
                           else scheduled.without_attr("global_symbol"))
        return mod

    return apply


INT8_DOTS = ("", None, "avx512-vnni", "avx2", "neon-sdot")
"""Values of a ``hardware`` table's ``int8_dot`` ("": none, plain int32 kernels)."""


def target_int8_dot(target: dict[str, Any]) -> str | None:
    """The integer dot-product instructions of an LLVM CPU target: ``avx512-vnni`` where
    its CPU has AVX-512 VNNI, ``avx2`` where it has AVX2 (``-mattr`` turning them off
    respected), ``neon-sdot`` on AArch64 with ``+dotprod`` in ``-mattr``, else None."""
    mattr = [str(a) for a in target.get("mattr") or []]
    if str(target.get("mtriple", "")).startswith("aarch64"):
        return "neon-sdot" if "+dotprod" in mattr else None
    if not str(target.get("mtriple", "")).startswith("x86_64"):
        return None
    from tvm.target import codegen

    t = tvm.target.Target(dict(target))
    if "-avx512vnni" not in mattr and "-avx512f" not in mattr and codegen.llvm_cpu_has_features(
            ["avx512vnni", "avx512bw"], t):
        return "avx512-vnni"
    return "avx2" if "-avx2" not in mattr and codegen.llvm_cpu_has_features("avx2", t) else None


def target_lanes(target: dict[str, Any]) -> int:
    """f32 vector lanes of an LLVM CPU target: 16 with AVX-512 on, 8 with AVX2, 4 on
    AArch64 (Neon) and otherwise."""
    mattr = [str(a) for a in target.get("mattr") or []]
    triple = str(target.get("mtriple", ""))
    if triple.startswith("aarch64") or triple.startswith("arm"):
        return 4
    t = tvm.target.Target(dict(target))
    from tvm.target import codegen

    if codegen.llvm_cpu_has_features("avx512f", t) and "-avx512f" not in mattr:
        return 16
    if codegen.llvm_cpu_has_features("avx2", t):
        return 8
    return 4
