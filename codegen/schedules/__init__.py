"""effc's default CPU schedules: what every kernel without a tuning record runs.

TVM 0.27's default CPU pipeline schedules nothing: a kernel is a serial scalar loop nest.
``default_schedules`` is a module pass, run after ``FuseTIR`` (and after a tuning database
was applied), that schedules each PrimFunc not scheduled yet:

- convolutions (``conv.py``): blocked NCHW[b]c convolutions (dense, depthwise, grouped)
  in a register-tiled, vectorized, parallel schedule; NCHW ones with vectors along rows;
- every other kernel (``generic.py``): matmul and batch matmul (a register tile in a
  local accumulator, epilogue per tile), reductions, pools, elementwise.

Lanes (f32 per vector register) come from the target (``target_lanes``: 16 with AVX-512,
8 with AVX2, 4 on Neon); the layout plan (``codegen/layout.py``) uses the same number.
A rule that does not apply leaves the kernel as it was (never wrong, only slower).
"""
from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir, tirx

from ..aot_kernels import ieee_minmax
from .conv import schedule_conv, schedule_plain_conv
from .generic import SCHEDULE_ERRORS, schedule_generic

log = logging.getLogger("effc.schedule")

SCHEDULED = "tirx.is_scheduled"
"""The PrimFunc attribute of a scheduled kernel (effc's default schedules skip it)."""


def default_schedule(func: tirx.PrimFunc, lanes: int, cores: int) -> s_tir.Schedule | None:
    """effc's default schedule of ``func`` (a kernel named ``main``), or None when no rule
    applies. ``.mod["main"]`` is the scheduled kernel, ``.trace`` how it was scheduled
    (tuning starts from it: ``tune.seed_record``)."""
    for rule in (schedule_conv, lambda sch: schedule_plain_conv(sch, lanes)):
        sch = s_tir.Schedule(func)
        try:
            if rule(sch):
                return sch
        except SCHEDULE_ERRORS as err:  # a rule that did not fit: the next one, or none
            log.debug("conv schedule failed: %s", err)
    return schedule_generic(func, lanes, cores)


def default_schedules(lanes: int, cores: int) -> tvm.transform.Pass:
    """Schedule every static PrimFunc of the module that is not scheduled yet."""

    @tvm.transform.module_pass(opt_level=0, name="effc.DefaultSchedules")
    def apply(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions.items()):
            if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get(SCHEDULED)):
                continue
            # IEEE max/min first: a schedule may split a reduction's init off, and ieee_minmax
            # finds a max reduction's starting value in its init
            func = ieee_minmax(func)
            sch = default_schedule(func.with_attr("global_symbol", "main"), lanes, cores)
            if sch is not None:
                scheduled = sch.mod["main"].with_attr(SCHEDULED, True)
                symbol = func.attrs.get("global_symbol") if func.attrs else None
                mod[gv] = (scheduled.with_attr("global_symbol", symbol) if symbol
                           else scheduled.without_attr("global_symbol"))
        return mod

    return apply


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
