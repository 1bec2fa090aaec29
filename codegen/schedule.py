"""effc's default CPU schedules: what every kernel without a tuning record runs.

TVM 0.27's default CPU pipeline schedules nothing: a kernel is a serial scalar loop nest.
``default_schedules`` is a module pass, run after ``FuseTIR`` (and after a tuning database
was applied), that schedules each PrimFunc not scheduled yet:

- blocked convolutions (``layout.conv2d_nchwc``, ``layout.depthwise_nchwc``): the output
  row split into a register tile of ``REG_WIDTH`` pixels, each a vector of the channel
  block; the reduction (input blocks, taps, input channels) outside the tile, so the
  inner loop is one broadcast and ``REG_WIDTH`` vector FMAs; padding inlined; the
  epilogue (bias, activation, residual add) computed per tile while it is in cache; rows
  run in parallel (NeoCPU's schedule; measured at parity with onnxruntime's MLAS on
  ResNet-50's 3x3 and 1x1 layers, bench/RESULTS.md);
- NCHW convolutions (those the layout plan leaves unblocked): vectors along the row;
- every other kernel: ``schedule_generic`` (matmul, elementwise, reductions, pooling).

A rule that does not apply leaves the kernel as it was (never wrong, only slower).
"""
from __future__ import annotations

import logging
from typing import Any

import tvm
from tvm import s_tir, tirx

from .aot_kernels import ieee_minmax
from .layout import CONV_BLOCK, DEPTHWISE_BLOCK
from .schedule_generic import SCHEDULE_ERRORS, schedule_generic

log = logging.getLogger("effc.schedule")

REG_WIDTH = 8
"""Output pixels per register tile when the row length allows no better: with one vector
per pixel, 8 accumulators leave room for the input broadcast and the weight vectors."""

VECTOR_REGISTERS = 16
"""Vector registers of the ISA (AVX2: 16 ymm; AVX-512 and AArch64 have 32): a register
tile of up to this many minus two pixels fits (the two: a weight vector and a broadcast)."""

PARALLEL_MIN_MACS = 1 << 19
"""A convolution runs its rows in parallel only from this many multiply-adds (~25 us on
one core vectorized): below it, waking TVM's thread pool costs more than it saves."""

SCHEDULED = "tir.is_scheduled"

_SCHEDULE_ERRORS = SCHEDULE_ERRORS


def _block_named(sch: s_tir.Schedule, prefix: str) -> Any | None:
    for blk in sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []:
        if sch.get(blk).name_hint.startswith(prefix):
            return blk
    return None


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except (*_SCHEDULE_ERRORS, ValueError):
        return False


def _reg_width(extent: int, registers: int = VECTOR_REGISTERS) -> int:
    """Pixels per register tile for an output row of ``extent``: its largest divisor that
    fits the registers (a perfect split keeps the tile free of bounds checks), unless that
    is below 4 (a row of 37 pixels): then ``REG_WIDTH``, the last tile guarded."""
    most = registers - 2
    for d in range(min(most, extent), 0, -1):
        if extent % d == 0:
            return d if d >= 4 or extent <= most else REG_WIDTH
    return 1


def _fold_epilogue(sch: s_tir.Schedule, block: Any, at: Any) -> None:
    """Fold the chain of elementwise consumers of ``block`` into its first link and compute
    that under loop ``at``: the epilogue runs on the tile while it is in cache."""
    chain = []
    last = block
    while len(consumers := sch.get_consumers(last)) == 1:
        last = consumers[0]
        chain.append(last)
    for c in reversed(chain[1:]):
        try:
            sch.reverse_compute_inline(c)
        except _SCHEDULE_ERRORS:
            return
    if chain:
        try:
            sch.reverse_compute_at(chain[0], at)
            sch.vectorize(sch.get_loops(chain[0])[-1])
        except _SCHEDULE_ERRORS:
            pass


def _inline_producers(sch: s_tir.Schedule, block: Any) -> None:
    for p in sch.get_producers(block):
        if sch.get(p).name_hint.startswith("pad"):
            try:
                sch.compute_inline(p)
            except _SCHEDULE_ERRORS:
                pass


def _parallel_rows(sch: s_tir.Schedule, conv: Any, rows: Any) -> None:
    """Run ``rows`` in parallel when the convolution is big enough (``PARALLEL_MIN_MACS``);
    before the init is split off (``parallel`` wants a whole reduction under it)."""
    macs = 1
    for lp in sch.get_loops(conv):
        extent = sch.get(lp).extent
        if not isinstance(extent, tirx.IntImm):
            macs = PARALLEL_MIN_MACS  # a symbolic batch: assume a big one
            break
        macs *= int(extent)
    if macs >= PARALLEL_MIN_MACS:
        sch.parallel(rows)


def schedule_conv(sch: s_tir.Schedule) -> bool:
    """Schedule the blocked convolution of ``sch``'s kernel; False when it holds none."""
    conv = _block_named(sch, CONV_BLOCK)
    depthwise = conv is None
    if depthwise:
        conv = _block_named(sch, DEPTHWISE_BLOCK)
    if conv is None:
        return False
    loops = sch.get_loops(conv)
    if depthwise:
        n, c, h, w, j, ry, rx = loops
        reduction = [ry, rx]
    else:
        n, c, h, w, j, rc, ry, rx, ri = loops
        reduction = [rc, ry, rx, ri]
    width = sch.get(w).extent
    if not isinstance(width, tirx.IntImm):
        return False
    wo, wi = sch.split(w, [None, _reg_width(int(width))])
    sch.reorder(n, c, h, wo, *reduction, wi, j)
    sch.vectorize(j)
    sch.unroll(wi)
    _fold_epilogue(sch, conv, wo)
    _inline_producers(sch, conv)
    _parallel_rows(sch, conv, sch.fuse(n, c, h))
    sch.decompose_reduction(conv, reduction[0])
    return True


PLAIN_CONV_BLOCKS = ("conv2d_nchw", "group_conv2d_nchw")
"""TOPI's NCHW convolutions: what a conv the layout plan leaves in NCHW lowers to (its
output channels per group not a multiple of 4)."""


def _divisor(extent: int, options: tuple[int, ...]) -> int:
    return next((d for d in options if d <= extent and extent % d == 0), 1)


def schedule_plain_conv(sch: s_tir.Schedule, lanes: int) -> bool:
    """Schedule the NCHW convolution of ``sch``'s kernel: vectors along the output row
    (contiguous for stride 1), a register tile of output channels, the reduction outside
    the tile, rows in parallel. Slower than the blocked schedule, far faster than none.
    False when the kernel holds none."""
    conv = next((blk for prefix in PLAIN_CONV_BLOCKS if (blk := _block_named(sch, prefix)) is not None), None)
    if conv is None or sch.get(conv).name_hint not in PLAIN_CONV_BLOCKS:
        return False
    loops = sch.get_loops(conv)
    if len(loops) != 7:
        return False
    n, f, y, x, rc, ry, rx = loops
    extents = [sch.get(lp).extent for lp in (f, x)]
    if not all(isinstance(e, tirx.IntImm) for e in extents):
        return False
    fo, fi = sch.split(f, [None, _divisor(int(extents[0]), (4, 3, 2))])
    vx = _divisor(int(extents[1]), (lanes, lanes // 2, 4))
    xo, xi = sch.split(x, [None, vx])
    sch.reorder(n, fo, y, xo, rc, ry, rx, fi, xi)
    if vx > 1:
        sch.vectorize(xi)
    sch.unroll(fi)
    _fold_epilogue(sch, conv, xo)
    _inline_producers(sch, conv)
    _parallel_rows(sch, conv, sch.fuse(n, fo, y))
    sch.decompose_reduction(conv, rc)
    return True


def default_schedule(func: tirx.PrimFunc, lanes: int, cores: int) -> s_tir.Schedule | None:
    """effc's default schedule of ``func`` (a kernel named ``main``), or None when no rule
    applies. ``.mod["main"]`` is the scheduled kernel, ``.trace`` how it was scheduled
    (tuning starts from it: ``tune.seed_records``)."""
    for rule in (schedule_conv, lambda sch: schedule_plain_conv(sch, lanes)):
        sch = s_tir.Schedule(func)
        try:
            if rule(sch):
                return sch
        except _SCHEDULE_ERRORS as err:  # a rule that did not fit: the next one, or none
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
