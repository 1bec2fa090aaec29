"""Integer convolutions in the layouts of CPU dot-product instructions (``Dot``).

- ``avx512-vnni``: ``vpdpbusd`` multiplies 64 unsigned bytes by 64 signed bytes and adds
  each four products into one of 16 int32 lanes, with no intermediate saturation;
- ``avx2``: AVX2 has no exact byte dot product (``vpmaddubsw`` saturates its int16 pair
  sums with full-range weights, which is why onnxruntime quantizes weights to 7 bits
  there); ``vpmaddwd`` on int16 operands is exact (``(x - zp) * w`` pairs fit int32): 8 int32
  lanes of two products each, twice an f32 FMA's multiply-adds, every weight bit kept;
- ``neon-sdot``: Armv8.2's ``sdot`` (``+dotprod``) adds four products of signed bytes
  into each of 4 int32 lanes: int8 activations as they are, uint8 shifted by -128.

A ``qlinear_conv`` over int8 or uint8 activations and symmetric int8 weights becomes one
kernel (``qconv2d_dot``) of three stages:

1. ``pack``: the input, padded, as ``[N, H, W, C']`` (``depth`` channels of a pixel
   contiguous, channels padded to a multiple of ``depth``) of the instruction's operand
   type, shifted: ``x + 128`` for int8 into uint8 on VNNI (the sign bit flipped), ``x - zp``
   into int16 on AVX2. Padding holds the zero point (shifted), which is what a real 0.0
   quantizes to, as in the definition;
2. the dot block (``Dot.block``): ``acc[n, y, x, k] = sum packed * w`` over taps and channel
   groups, weights packed at compile time as ``[K'/lanes, KH, KW, C'/depth, lanes, depth]``
   (one instruction operand per tap and channel group, contiguous);
3. the requantization: ``acc + corr[k]`` is the definition's int32 sum exactly, with
   ``corr = bias - (zp + shift) * sum(w[k])`` (the shifted zero point multiplies every
   weight of the window, padding included, so it folds into one constant per channel),
   then requantized as ``relax_quant._requantize`` does (the same operations, so the same
   bits), in NCHW or a blocked layout.

``schedules/int8.py`` tensorizes stage 2 and computes stage 3 per register tile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tvm import te, tirx

from effc.ir.ops.quant import quantized_multiplier

from .layout import DEPTHWISE_BLOCK, _out_size, _padded

@dataclass(frozen=True)
class Dot:
    """An integer dot-product instruction a convolution is tensorized with."""

    name: str
    """``schedules.Cpu.int8_dot``."""
    lanes: int
    """int32 sums per instruction: the output-channel block of the sums."""
    depth: int
    """Products per int32 sum: the input-channel group."""
    operand: str
    """The packed activations' type."""
    weight: str
    """The packed weights' type."""
    block: str
    """The name of the convolution stage (``schedules/int8.py`` finds it by it)."""


DOTS = {"avx512-vnni": Dot("avx512-vnni", 16, 4, "uint8", "int8", "conv2d_u8s8"),
        "avx2": Dot("avx2", 8, 2, "int16", "int16", "conv2d_s16s16"),
        "neon-sdot": Dot("neon-sdot", 4, 4, "int8", "int8", "conv2d_s8s8")}
INT8_CONV_BLOCKS = {d.block: d for d in DOTS.values()}


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def pack_weight(w: np.ndarray, dot: Dot) -> np.ndarray:
    """OIHW int8 → ``[K'/lanes, KH, KW, C'/depth, lanes, depth]`` of ``dot.weight``, zeros in
    the padded channels."""
    k, c, kh, kw = w.shape
    kp, cp = _ceil_to(k, dot.lanes), _ceil_to(c, dot.depth)
    full = np.zeros((kp, cp, kh, kw), dot.weight)
    full[:k, :c] = w
    return np.ascontiguousarray(full.reshape(kp // dot.lanes, dot.lanes, cp // dot.depth, dot.depth, kh, kw)
                                .transpose(0, 4, 5, 2, 1, 3))


def correction(w: np.ndarray, bias: np.ndarray | None, zero: int) -> np.ndarray:
    """``bias - zero * sum(w[k])`` per output channel (int32), ``zero`` the input's zero
    point as packed (the zero point plus the shift)."""
    k = w.shape[0]
    corr = -np.int64(zero) * w.reshape(k, -1).astype(np.int64).sum(axis=1)
    if bias is not None:
        corr = corr + np.asarray(bias, np.int64).reshape(-1)
    return corr.astype(np.int32)


def requant_params(multiplier: np.ndarray, channels: int, rounding: str) -> list[np.ndarray]:
    """The per-channel constants of the requantization: the float64 multiplier (``onnx``)
    or ``q``, the right shift and the rounding term (``fixed_point``), each ``[K]``."""
    m = np.broadcast_to(np.asarray(multiplier, np.float64).reshape(-1), (channels,))
    return fixed_point_constants(m) if rounding == "fixed_point" else [np.ascontiguousarray(m)]


def fixed_point_constants(multiplier: np.ndarray) -> list[np.ndarray]:
    """``(q, r, 2^(r - 1))`` (int64, the multiplier's shape) with ``(acc * q + 2^(r - 1)) >> r``
    the interpreter's ``_fixed_point``: a multiplier under ``2^-31`` gets ``q = 0`` (so 0);
    one of ``2^30`` or more is refused (ValueError)."""
    q, shift = quantized_multiplier(np.asarray(multiplier, np.float64))
    r = 31 - shift
    if (r < 1).any():
        raise ValueError("fixed_point requantization of a multiplier of 2^30 or more")
    q = np.where(r > 62, 0, q)
    r = np.minimum(r, 62)
    return [q.astype(np.int64), r.astype(np.int64), np.left_shift(np.int64(1), r - 1).astype(np.int64)]


def _requant(s: Any, k: Any, params: tuple[te.Tensor, ...], zp_out: int, out_dtype: str,
             bounds: tuple[int, int], rounding: str) -> Any:
    """The int32 sum ``s`` of output channel ``k`` requantized as ``relax_quant._requantize``
    does (the same operations in the same order: the same bits); ``rounding="float"``:
    ``float32(s) * scale[k]``, a float output."""
    lo, hi = bounds
    if rounding == "float":  # (no requantization: the sum scaled to float32, qgemm without y_scale)
        (scale,) = params
        return s.astype("float32") * scale[k]
    if rounding == "fixed_point":
        q, r, half = params
        v = tirx.shift_right(s.astype("int64") * q[k] + half[k], r[k]) + tirx.const(zp_out, "int64")
        return tirx.max(tirx.min(v, tirx.const(hi, "int64")), tirx.const(lo, "int64")).astype(out_dtype)
    (m,) = params
    # (half to even; aot_kernels.vector_roundeven makes it a vector roundeven on LLVM)
    v = tirx.nearbyint(s.astype("float64") * m[k] + tirx.const(float(zp_out), "float64"))
    return tirx.max(tirx.min(v, tirx.const(float(hi), "float64")), tirx.const(float(lo), "float64")).astype(out_dtype)


SUM_TILE = 8
"""Output columns per register tile where a row has no divisor that makes a good tile."""


def _sum_columns(ow: int) -> int:
    """Columns of the sums for an output row of ``ow``: ``ow`` when a tile of 4 to 14
    columns divides it (``schedules/conv.py``'s ``_reg_width`` then splits it evenly), else
    ``ow`` rounded up to ``SUM_TILE`` (squeezenet's 109-column first conv: a guarded tile in
    every tensorized step, 3.8 ms against the float conv's 0.4); the extra columns are
    summed over padding and never read."""
    return ow if any(ow % t == 0 for t in range(4, 15)) or ow < 4 else _ceil_to(ow, SUM_TILE)


def _reader(data: te.Tensor) -> tuple[Any, int, int, int, int]:
    """``(read(n, c, y, x), N, C, H, W)`` of an NCHW or ``[N, C/b, H, W, b]`` tensor."""
    n = data.shape[0]  # (the batch may be symbolic)
    if len(data.shape) == 4:
        c, h, w = (int(d) for d in data.shape[1:])
        return (lambda a, ch, y, x: data[a, ch, y, x]), n, c, h, w
    co, h, w, b = (int(d) for d in data.shape[1:])
    return (lambda a, ch, y, x: data[a, ch // b, y, x, ch % b]), n, co * b, h, w


def qconv2d_dot(data: te.Tensor, weight: te.Tensor, corr: te.Tensor, *params: te.Tensor, pads: tuple[int, ...],
                strides: list[int], dilations: list[int], channels: int, shift: int, zero: int, zp_out: int,
                out_dtype: str, bounds: tuple[int, int], rounding: str, block: int | None, dot: str) -> te.Tensor:
    """``data`` (NCHW or channel-blocked, int8 or uint8) convolved with the packed
    ``weight`` and requantized to ``out_dtype``: ``[N, channels, OH, OW]``, or with a
    ``block`` ``[N, channels/block, OH, OW, block]`` (see the module docstring)."""
    d = DOTS[dot]
    read, n, c, h, w = _reader(data)
    ko_, kh, kw, co_, _, _ = (int(v) for v in weight.shape)
    top, left, bottom, right = pads
    sh, sw = strides
    dh, dw = dilations
    hp, wp = h + top + bottom, w + left + right
    oh, ow = _out_size((h, w), (kh, kw), pads, strides, dilations)
    pad = tirx.const(zero, d.operand)
    ows = _sum_columns(ow)
    wp = max(wp, (ows - 1) * sw + dw * (kw - 1) + 1)  # (the extra columns read padding)

    def packed(a, y, x, ch):
        inside = tirx.all(y >= top, y < h + top, x >= left, x < w + left, ch < c)
        v = read(a, tirx.min(ch, c - 1), y - top, x - left)
        u = tirx.Cast(d.operand, tirx.Cast("int32", v) + shift) if shift or str(v.dtype) != d.operand else v
        return tirx.if_then_else(inside, u, pad)

    p = te.compute((n, hp, wp, co_ * d.depth), packed, name="pack" if len(data.shape) == 5 else "pack_nchw")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    rc = te.reduce_axis((0, co_), "rc")
    ri = te.reduce_axis((0, d.depth), "ri")
    acc = te.compute(
        (n, oh, ows, ko_ * d.lanes),
        lambda a, y, x, k: te.sum(
            p[a, y * sh + ry * dh, x * sw + rx * dw, rc * d.depth + ri].astype("int32")
            * weight[k // d.lanes, ry, rx, rc, k % d.lanes, ri].astype("int32"), axis=[ry, rx, rc, ri]),
        name=d.block)
    args = (params, zp_out, out_dtype, bounds, rounding)
    if block:
        return te.compute((n, channels // block, oh, ow, block),
                          lambda a, ko, y, x, j: _requant(acc[a, y, x, ko * block + j] + corr[ko * block + j],
                                                          ko * block + j, *args), name="requant")
    return te.compute((n, channels, oh, ow), lambda a, k, y, x: _requant(acc[a, y, x, k] + corr[k], k, *args),
                      name="requant")


def qdepthwise_nchwc(data: te.Tensor, weight: te.Tensor, corr: te.Tensor, *params: te.Tensor,
                     pads: tuple[int, ...], strides: list[int], dilations: list[int], zero: int, zp_out: int,
                     out_dtype: str, bounds: tuple[int, int], rounding: str) -> te.Tensor:
    """An integer depthwise convolution in ``[N, C/b, H, W, b]``: int32 sums of the 8-bit
    input (padded with its zero point) times the int8 ``weight [C/b, KH, KW, b]``, plus
    ``corr = bias - zp * sum(w)``, requantized. Its block is ``DEPTHWISE_BLOCK``, so the float
    depthwise schedule (``schedules/conv.py``) tiles it and computes the requantization
    per tile."""
    n = data.shape[0]
    cc, h, w, b = (int(d) for d in data.shape[1:])
    _, kh, kw, _ = (int(d) for d in weight.shape)
    sh, sw = strides
    dh, dw = dilations
    oh, ow = _out_size((h, w), (kh, kw), pads, strides, dilations)
    p = _padded(data, pads, zero)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    acc = te.compute(
        (n, cc, oh, ow, b),
        lambda a, c, y, x, j: te.sum(p[a, c, y * sh + ry * dh, x * sw + rx * dw, j].astype("int32")
                                     * weight[c, ry, rx, j].astype("int32"), axis=[ry, rx]),
        name=DEPTHWISE_BLOCK)
    args = (params, zp_out, out_dtype, bounds, rounding)
    return te.compute((n, cc, oh, ow, b),
                      lambda a, c, y, x, j: _requant(acc[a, c, y, x, j] + corr[c * b + j], c * b + j, *args),
                      name="requant")


def dot_conv_ok(x_dtype: str, w: np.ndarray, w_zp: np.ndarray, group: int, rank: int) -> bool:
    """Whether ``qconv2d_dot`` computes this ``qlinear_conv``: 2-D, one group, 8-bit
    activations, symmetric int8 weights."""
    return (rank == 4 and group == 1 and x_dtype in ("int8", "uint8") and w.dtype == np.int8
            and not np.asarray(w_zp).any())


def emit_args(w: np.ndarray, bias: np.ndarray | None, x_zp: int, x_dtype: str, dot: Dot) -> dict[str, Any]:
    """The packed weight, the correction, the shift and the packed zero point for
    ``qconv2d_dot``: VNNI shifts int8 by 128 into uint8; AVX2 subtracts the zero point (its
    int16 operands hold ``x - zp``, padding 0, no correction but the bias); Arm's ``sdot``
    multiplies signed bytes: int8 as it is, uint8 shifted by -128."""
    if dot.operand == "uint8":
        shift = 128 if x_dtype == "int8" else 0
    elif dot.operand == "int8":
        shift = -128 if x_dtype == "uint8" else 0
    else:
        shift = -x_zp
    zero = x_zp + shift
    return {"weight": pack_weight(w, dot), "corr": correction(w, bias, zero), "shift": shift, "zero": zero}
