"""Emitters for the integer ops (``ir/ops/quant.py``), bit-exact with the interpreter.

The int32 sum of a ``qlinear_conv``, ``qlinear_mat_mul`` or ``qgemm`` is exact: the 8-bit
operands less their zero points in int32 (a symmetric weight stays an 8-bit constant and
widens in the kernel; another's difference is formed at compile time), and
``conv2d``/``matmul`` with ``out_dtype="int32"``. Requantization follows the op's
``rounding``:

- ``onnx``: the multiplier formed as the interpreter forms it (``_channel_multiplier``,
  in the scales' type) and applied in float64, half to even, plus the zero point,
  saturated: the same IEEE operations in the same order, so the same bits;
- ``fixed_point``: ``(acc * q + 2^(r - 1)) >> r`` in int64 with the interpreter's
  ``quantized_multiplier`` (TFLite's single rounding).

``qlinear_add``/``qlinear_mul`` compose DequantizeLinear, the float op and QuantizeLinear
as their definition says (float32 arithmetic: the interpreter's, to the bit where TVM does
the same operations). Scales and zero points must be constants (they are in every model
a quantizer writes). These kernels are plain (int32 widening, no tensorized dot products):
correctness first; the fast paths are the integer-kernels issue's work.
"""
from __future__ import annotations

import numpy as np
from tvm import relax

from effc.ir.core import Node
from effc.ir.ops.quant import _channel_multiplier, global_pool_multiplier
from effc.ir.types import DType

from .layout import BlockedEmit, pack_depthwise
from .layout_int8 import (DOTS, correction, dot_conv_ok, emit_args, fixed_point_constants, qconv2d_dot,
                          qdepthwise_nchwc, requant_params)
from .relax_emit import Emit, relax_dtype
from .relax_ops import ConstOf, _conv_pads, _dequantize_linear_of, _quantize_linear_of, _round_half_even, emitter

R = relax.op

_PARAMS = {"qlinear_conv": (1, 2, 4, 5, 6, 7), "qlinear_mat_mul": (1, 2, 4, 5, 6, 7), "qgemm": (1, 2, 4, 5, 7, 8),
           "qlinear_add": (1, 2, 4, 5, 6, 7), "qlinear_mul": (1, 2, 4, 5, 6, 7),
           "qlinear_global_average_pool": (1, 2, 3, 4)}


def _check_params(node: Node, const: ConstOf) -> str | None:
    """Scales and zero points known at compile time (the weight too, for the sums)."""
    for i in _PARAMS[node.op]:
        v = node.input(i)
        if v is not None and const(v) is None:
            return f"a quantization parameter computed at run time (input {i})"
    if node.op in ("qlinear_conv", "qlinear_mat_mul", "qgemm") and const(node.input(3)) is None:
        return "a weight computed at run time"
    return None


def _zp(e: Emit, i: int) -> np.ndarray:
    c = e.const(i) if e.has(i) else None
    return np.zeros((), np.int64) if c is None else np.asarray(c).astype(np.int64)


def _minus_zp(e: Emit, i: int, zp: int) -> relax.Expr:
    x = R.astype(e.x(i), "int32")
    return R.subtract(x, e.scalar(zp, DType.i32)) if zp else x


def _requantize(e: Emit, acc: relax.Expr, multiplier: np.ndarray, zp: int) -> relax.Expr:
    out = e.out_type().dtype
    lo, hi = out.int_range
    if e.attrs.get("rounding", "onnx") == "fixed_point":
        try:
            q, r, half = fixed_point_constants(multiplier)
        except ValueError as err:
            raise e.fail(str(err)) from None
        y = R.right_shift(R.add(R.multiply(R.astype(acc, "int64"), e.constant(q, DType.i64)),
                                e.constant(half, DType.i64)), e.constant(r, DType.i64))
        y = R.add(y, e.scalar(int(zp), DType.i64))
        y = R.minimum(R.maximum(y, e.scalar(lo, DType.i64)), e.scalar(hi, DType.i64))
        return R.astype(y, relax_dtype(out))
    y = R.multiply(R.astype(acc, "float64"), e.constant(np.asarray(multiplier, np.float64), DType.f64))
    y = R.add(y, e.scalar(float(zp), DType.f64))
    y = _round_half_even(e, y, DType.f64)
    y = R.minimum(R.maximum(y, e.scalar(float(lo), DType.f64)), e.scalar(float(hi), DType.f64))
    return R.astype(y, relax_dtype(out))


@emitter("qlinear_conv", check=_check_params)
def _qlinear_conv(e: Emit):
    xt, wt = e.in_type(0), e.in_type(3)
    if xt.rank != 4:
        raise e.fail(f"{xt.rank - 2}-D integer convolution (2-D only)")
    kernel = [int(d) for d in wt.shape[2:]]
    begins, ends, strides, dilations = _conv_pads(e, kernel)
    if isinstance(e, BlockedEmit) or e.scope.int8_dot in DOTS and dot_conv_ok(relax_dtype(xt.dtype), np.asarray(e.const(3)), _zp(e, 5),
                                                           int(e.attrs["group"]), xt.rank):
        return _dot_conv(e, begins, ends, strides, dilations)
    acc = R.nn.conv2d(_minus_zp(e, 0, int(_zp(e, 2))), _weight(e, (-1, 1, 1, 1)), strides=strides,
                      padding=begins + ends, dilation=dilations, groups=e.attrs["group"], data_layout="NCHW",
                      kernel_layout="OIHW", out_dtype="int32")
    if e.has(8):
        acc = R.add(acc, e.constant(np.asarray(e.const(8), np.int32).reshape(1, -1, 1, 1), DType.i32))
    mult = _channel_multiplier(e.const(1), e.const(4), e.const(6), 4)
    return _requantize(e, acc, mult, int(_zp(e, 7)))


def _dot_conv(e: Emit, begins: list[int], ends: list[int], strides: list[int], dilations: list[int]) -> relax.Expr:
    """``qlinear_conv`` as one ``layout_int8`` kernel: ``qconv2d_dot`` (the CPU's dot product), or
    ``qdepthwise_nchwc`` where the layout plan made it a blocked depthwise convolution."""
    w = np.asarray(e.const(3))
    xv = e.node.input(0)
    x_dtype, out = relax_dtype(e.in_type(0).dtype), e.out_type().dtype
    rounding = e.attrs.get("rounding", "onnx")
    bias = e.const(8) if e.has(8) else None
    mult = _channel_multiplier(e.const(1), e.const(4), e.const(6), 4)
    try:
        params = requant_params(mult, int(w.shape[0]), rounding)
    except ValueError as err:
        raise e.fail(str(err)) from None
    const = e.scope.constant
    common = dict(pads=(begins[0], begins[1], ends[0], ends[1]), strides=strides, dilations=dilations,
                  zp_out=int(_zp(e, 7)), out_dtype=relax_dtype(out), bounds=out.int_range, rounding=rounding)
    block = e.block if isinstance(e, BlockedEmit) else None
    if block and e.scope.plan.convs[id(e.node)] == "int8_depthwise":
        zero = int(_zp(e, 2))
        return e.scope.root_bb.call_te(
            qdepthwise_nchwc, e.scope.value_in(xv, e.block), const(pack_depthwise(w, e.block)),
            const(correction(w, bias, zero)), *(const(p) for p in params), zero=zero, **common,
            primfunc_name_hint="qdwconv_nchwc")
    cb = e.scope.block_of(xv)
    x = e.scope.value_in(xv, cb) if cb is not None and cb % 4 == 0 else e.scope.value(xv)
    dot = DOTS[e.scope.int8_dot]
    packed = emit_args(w, bias, int(_zp(e, 2)), x_dtype, dot)
    return e.scope.root_bb.call_te(
        qconv2d_dot, x, const(packed["weight"]), const(packed["corr"]), *(const(p) for p in params),
        channels=int(w.shape[0]), shift=packed["shift"], zero=packed["zero"], block=block, dot=dot.name, **common,
        primfunc_name_hint="qconv_dot")


def _dot_dense(e: Emit, w: np.ndarray, bias: np.ndarray | None, multiplier: np.ndarray,
                zp_out: int, rounding: str | None = None) -> relax.Expr | None:
    """``a [..., K] x w [K, N]`` (an int8 constant, symmetric), requantized per column
    (``rounding="float"``: scaled to float32 by ``multiplier``, qgemm's float output), as
    ``qconv2d_dot`` over ``a`` viewed as a ``[1, 1, 1, M, K]`` blocked image (one block of K
    channels, M pixels; the weight a 1x1 convolution's), its output ``[1, 1, 1, M, N]`` a
    view of ``[..., N]``. None where no dot-product kernel applies."""
    at = e.in_type(0)
    x_dtype = relax_dtype(at.dtype)
    if (e.scope.int8_dot not in DOTS or isinstance(e, BlockedEmit) or at.rank < 2
            or not all(isinstance(d, int) for d in at.shape) or w.ndim != 2
            or not dot_conv_ok(x_dtype, w, _zp(e, 5), 1, 4)):
        return None
    k, n = (int(d) for d in w.shape)
    rows = int(np.prod(at.shape[:-1]))
    rounding = rounding or e.attrs.get("rounding", "onnx")
    try:
        params = [np.ascontiguousarray(np.broadcast_to(np.asarray(multiplier, np.float32).reshape(-1), (n,)))] \
            if rounding == "float" else requant_params(multiplier, n, rounding)
    except ValueError as err:
        raise e.fail(str(err)) from None
    dot = DOTS[e.scope.int8_dot]
    packed = emit_args(np.ascontiguousarray(w.T).reshape(n, k, 1, 1), bias, int(_zp(e, 2)), x_dtype, dot)
    out = e.out_type().dtype
    const = e.scope.constant
    x = e.emit(R.reshape(e.x(0), [1, 1, 1, rows, k]))
    y = e.emit(e.scope.root_bb.call_te(
        qconv2d_dot, x, const(packed["weight"]), const(packed["corr"]), *(const(p) for p in params),
        pads=(0, 0, 0, 0), strides=[1, 1], dilations=[1, 1], channels=n, shift=packed["shift"], zero=packed["zero"],
        zp_out=zp_out, out_dtype=relax_dtype(out), bounds=out.int_range if out.is_int else (0, 0),
        rounding=rounding, block=n, dot=dot.name, primfunc_name_hint="qdense_dot"))
    return R.reshape(y, [*at.shape[:-1], n])


def _weight(e: Emit, zp_shape: tuple[int, ...], transpose: bool = False) -> relax.Expr:
    """The 8-bit weight (input 3) less its zero point (input 5), as int32 for the sum. With
    zero points all 0 (symmetric weights: what effc and onnxruntime write) the constant
    stays 8-bit and widens inside the kernel, so a deployment stores one byte per weight;
    otherwise the difference is an int32 constant."""
    w = np.asarray(e.const(3))
    w = w.T if transpose else w
    zp = _zp(e, 5)
    if not zp.any():
        return R.astype(e.constant(w, DType.from_numpy(w.dtype)), "int32")
    return e.constant(w.astype(np.int32) - zp.astype(np.int32).reshape(zp_shape if zp.size > 1 else ()), DType.i32)


@emitter("qlinear_mat_mul", check=_check_params)
def _qlinear_mat_mul(e: Emit):
    at = e.in_type(0)
    if e.in_type(3).rank == 2:
        mult = _channel_multiplier(e.const(1), e.const(4), e.const(6), 2, 1)
        fast = _dot_dense(e, np.asarray(e.const(3)), None, mult, int(_zp(e, 7)))
        if fast is not None:
            return fast
    acc = R.matmul(_minus_zp(e, 0, int(_zp(e, 2))), _weight(e, (-1,)), out_dtype="int32")
    rank = max(at.rank, e.in_type(3).rank)
    mult = _channel_multiplier(e.const(1), e.const(4), e.const(6), rank, rank - 1)
    return _requantize(e, acc, mult, int(_zp(e, 7)))


@emitter("qgemm", check=_check_params)
def _qgemm(e: Emit):
    a = e.attrs
    if a["transA"]:
        raise e.fail("qgemm with transA=1")
    w = np.asarray(e.const(3))
    if e.has(7) and (not e.has(6) or e.const(6) is not None):
        mult = _channel_multiplier(np.asarray(e.const(1), np.float32) * np.float32(a["alpha"]), e.const(4), e.const(7), 2, 1)
        fast = _dot_dense(e, w.T if a["transB"] else w, e.const(6) if e.has(6) else None, mult, int(_zp(e, 8)))
        if fast is not None:
            return fast
    acc = R.matmul(_minus_zp(e, 0, int(_zp(e, 2))), _weight(e, (-1,), transpose=bool(a["transB"])), out_dtype="int32")
    if e.has(6):
        acc = R.add(acc, R.astype(e.x(6), "int32"))
    alpha = np.float32(a["alpha"])
    if not e.has(7):
        scale = (alpha * np.float32(np.asarray(e.const(1)).reshape(-1)[0]) * np.asarray(e.const(4), np.float32).reshape(-1))
        fast = _dot_dense(e, w.T if a["transB"] else w, e.const(6) if e.has(6) else None,
                           scale.astype(np.float32), 0, rounding="float") if e.const(6) is not None or not e.has(6) else None
        if fast is not None:
            return fast
        return R.multiply(R.astype(acc, "float32"), e.constant(scale.astype(np.float32), DType.f32))
    mult = _channel_multiplier(np.asarray(e.const(1), np.float32) * alpha, e.const(4), e.const(7), 2, 1)
    return _requantize(e, acc, mult, int(_zp(e, 8)))


@emitter("qlinear_global_average_pool", check=_check_params)
def _qlinear_global_average_pool(e: Emit):
    """The int32 sum over the pixels, less the zero point's, requantized once (the
    interpreter's definition, ``global_pool_multiplier``)."""
    xt = e.in_type(0)
    axes = list(range(2, xt.rank))
    if not all(isinstance(xt.shape[i], int) for i in axes):
        raise e.fail("an integer global pool over symbolic spatial dims")
    count = int(np.prod([xt.shape[i] for i in axes]))
    acc = R.sum(R.astype(e.x(0), "int32"), axis=axes, keepdims=True)
    zp = int(_zp(e, 2))
    if zp:
        acc = R.subtract(acc, e.scalar(zp * count, DType.i32))
    return _requantize(e, acc, global_pool_multiplier(e.const(1), e.const(3), count), int(_zp(e, 4)))


def _binary(fn):
    def emit(e: Emit):
        a = _dequantize_linear_of(e, 0, 1, 2)
        b = _dequantize_linear_of(e, 3, 4, 5)
        return _quantize_linear_of(e, fn(a, b), 6, 7)
    return emit


emitter("qlinear_add", check=_check_params)(_binary(R.add))
emitter("qlinear_mul", check=_check_params)(_binary(R.multiply))
