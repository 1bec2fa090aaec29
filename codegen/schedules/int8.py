"""effc's default schedules for integer convolutions and matmuls on CPU dot products.

AVX-512 VNNI's ``vpdpbusd`` multiplies 64 unsigned bytes by 64 signed bytes and adds each
group of four products into one of 16 int32 lanes, with no intermediate saturation: 64
exact multiply-adds per instruction, four times an f32 FMA's 16. AVX2's ``vpmaddwd`` on
int16 operands adds pairs of exact products into 8 int32 lanes: 16 per instruction, twice
an AVX2 FMA's 8. Arm's ``sdot`` adds four signed byte products into each of 4 int32
lanes. ``layout_int8.py`` writes convolutions whose reduction ends in ``depth``
input channels (``[..., C'/depth, lanes, depth]`` weights, activations with ``depth``
channels contiguous per pixel), so the two innermost loops, ``lanes`` output channels by
``depth`` input channels, are one instruction (``INTRINSICS``).

The schedule is the float blocked convolution's (``conv.py``): a row of output pixels
split into a register tile, one accumulator vector per pixel and 16 output channels, the
reduction outside the tile, the requantization epilogue computed per tile while it is in
registers, rows in parallel when the convolution is big enough.
"""
from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx
from tvm.script import tirx as T

from ..layout_int8 import INT8_CONV_BLOCKS
from .conv import TILE_REGISTERS, _block_named, _parallel_rows, _reg_width
from .generic import SCHEDULE_ERRORS

DOT_U8S8_16X4 = "effc_dot_u8s8_16x4_vnni"
"""16 int32 sums += 4 u8 (one broadcast) x [16, 4] s8 with ``vpdpbusd`` (AVX-512 VNNI).
TVM ships one (``dot_16x4_vnni``) written for older LLVMs: LLVM 22 types the instruction's
operands as bytes (``<64 x i8>``), and TVM's fails to build; this one passes bytes."""


def _dot_description(lanes: int, depth: int, operand: str, weight: str) -> tirx.PrimFunc:
    """What a dot-product intrinsic computes: ``lanes`` int32 sums, each plus ``depth``
    products of one broadcast operand group and a ``[lanes, depth]`` weight tile."""

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((depth,), operand, offset_factor=1), b: T.Buffer((lanes, depth), weight, offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:depth], b[0:lanes, 0:depth])
            T.writes(c[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    return desc


@T.prim_func(s_tir=True)
def _dot_vnni(a: T.Buffer((4,), "uint8", offset_factor=1), b: T.Buffer((16, 4), "int8", offset_factor=1),
              c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:4], b[0:16, 0:4])
        T.writes(c[0:16])
        a4 = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
        c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), c.vload([0], dtype="int32x16"),
            T.reinterpret(T.broadcast(a4, 16), dtype="int8x64"), b.vload([0, 0], dtype="int8x64"),
            dtype="int32x16")


s_tir.TensorIntrin.register(DOT_U8S8_16X4, _dot_description(16, 4, "uint8", "int8"), _dot_vnni, override=True)

DOT_S16_8X2 = "effc_dot_s16_8x2_avx2"
"""8 int32 sums += 2 int16 (one broadcast) x [8, 2] int16 with ``vpmaddwd`` (AVX2): the
pair sums are exact (``|x - zp| <= 255``, ``|w| <= 128``)."""


@T.prim_func(s_tir=True)
def _pair_avx2(a: T.Buffer((2,), "int16", offset_factor=1), b: T.Buffer((8, 2), "int16", offset_factor=1),
               c: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:8], a[0:2], b[0:8, 0:2])
        T.writes(c[0:8])
        a2 = T.reinterpret(a.vload([0], "int16x2"), dtype="int32")
        c[T.ramp(T.int32(0), 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), T.reinterpret(T.broadcast(a2, 8), dtype="int16x16"),
            b.vload([0, 0], dtype="int16x16"), dtype="int32x8")


s_tir.TensorIntrin.register(DOT_S16_8X2, _dot_description(8, 2, "int16", "int16"), _pair_avx2, override=True)

DOT_S8S8_4X4 = "effc_dot_s8s8_4x4_sdot"
"""4 int32 sums += 4 s8 (one broadcast) x [4, 4] s8 with Arm's ``sdot`` (Armv8.2 dot
product, ``+dotprod``): 16 exact multiply-adds per instruction, four times a Neon f32 FMA's."""


@T.prim_func(s_tir=True)
def _dot_sdot(a: T.Buffer((4,), "int8", offset_factor=1), b: T.Buffer((4, 4), "int8", offset_factor=1),
              c: T.Buffer((4,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:4], a[0:4], b[0:4, 0:4])
        T.writes(c[0:4])
        a4 = T.reinterpret(a.vload([0], "int8x4"), dtype="int32")
        c[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), c.vload([0], dtype="int32x4"),
            b.vload([0, 0], dtype="int8x16"), T.reinterpret(T.broadcast(a4, 4), dtype="int8x16"), dtype="int32x4")


s_tir.TensorIntrin.register(DOT_S8S8_4X4, _dot_description(4, 4, "int8", "int8"), _dot_sdot, override=True)

INTRINSICS = {"avx512-vnni": DOT_U8S8_16X4, "avx2": DOT_S16_8X2, "neon-sdot": DOT_S8S8_4X4}
"""``layout_int8.Dot.name`` -> its tensor intrinsic."""


def schedule_int8_conv(sch: s_tir.Schedule, vector_registers: int = TILE_REGISTERS) -> bool:
    """Schedule the dot-product convolution (``layout_int8.INT8_CONV_BLOCKS``) of ``sch``'s
    kernel and its epilogue (the requantization and the clamps fused after it); False when
    the kernel holds none."""
    conv = next((b for b in sch.get_child_blocks(sch.get_sblock("root"))
                 if sch.get(b).name_hint in INT8_CONV_BLOCKS), None)
    if conv is None:
        return False
    dot = INT8_CONV_BLOCKS[sch.get(conv).name_hint]
    n, y, x, k, ry, rx, rc, ri = sch.get_loops(conv)
    width = sch.get(x).extent
    if not isinstance(width, tirx.IntImm):
        return False
    ko, ki = sch.split(k, [None, dot.lanes])
    xo, xi = sch.split(x, [None, _reg_width(int(width), min(vector_registers, TILE_REGISTERS))])
    sch.reorder(n, ko, y, xo, ry, rx, rc, xi, ki, ri)
    _epilogue_per_tile(sch, conv, xo)
    _parallel_rows(sch, conv, sch.fuse(n, ko, y))
    _vectorize_pack(sch)
    init = sch.decompose_reduction(conv, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(xi)
    sch.tensorize(ki, INTRINSICS[dot.name])
    return True


def _vectorize_pack(sch: s_tir.Schedule) -> None:
    """The packing stage of a blocked input (shifted to the operand type and padded,
    ``[N, H, W, C']``): per pixel, each channel block of the input is a contiguous run of
    the output, copied as one vector (splitting a fused row of pixels and channels instead
    leaves LLVM a gather with a division per byte)."""
    pack = _block_named(sch, "pack")
    if pack is None or sch.get(pack).name_hint != "pack":  # (from NCHW: a gather, left scalar)
        return
    block = int(sch.get(pack).reads[0].source.ty.shape[-1])  # (the blocked input [N, C/b, H, W, b])
    n, y, x, c = sch.get_loops(pack)
    extent = sch.get(c).extent
    if not isinstance(extent, tirx.IntImm) or int(extent) % block or block < 4:
        return
    _, inner = sch.split(c, [None, block])
    sch.vectorize(inner)


def _epilogue_per_tile(sch: s_tir.Schedule, conv: Any, at: Any) -> None:
    """The blocks after ``conv`` (the requantization, then any clamp) in one block computed
    under loop ``at``, on the tile ``conv`` just summed: its int32 sums never leave the
    tile buffer (compacted to the tile, which LLVM keeps in registers). Not
    ``conv._fold_epilogue``: its write-back spans the sums' 16 channels, and inlining an
    epilogue of fewer (8 output channels) into it wrote past the output."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    *inner, last = blocks[names.index(sch.get(conv).name_hint) + 1:]
    for b in inner:
        sch.compute_inline(b)
    sch.reverse_compute_at(last, at)
    loops = sch.get_loops(last)
    try:
        sch.vectorize(loops[-1])
    except SCHEDULE_ERRORS:
        pass
