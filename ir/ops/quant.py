"""Integer (quantized-operator) ops: ONNX's QOperator form, which onnxruntime's quantizer
writes with ``QuantFormat.QOperator`` and which the IR's integer lowering targets.

- ``conv_integer`` (ConvInteger) and ``mat_mul_integer`` (MatMulInteger): 8-bit inputs
  less their zero points, products summed exactly in int32.
- ``qlinear_conv`` (QLinearConv) and ``qlinear_mat_mul`` (QLinearMatMul): the same sums
  (plus an int32 bias), requantized to 8 bits with the float multiplier
  ``x_scale * w_scale / y_scale``, rounded half to even, plus the output zero point,
  saturated. This is ONNX's definition (and onnxruntime's); the multiplier is formed in
  the scales' type (f32; f16 scales from opset 21) and applied in float64, as ONNX's
  reference does, so the interpreter's results are the conformance suite's to the bit.
- ``dynamic_quantize_linear`` (DynamicQuantizeLinear): uint8 from a float tensor's own
  range (which always holds 0), with its scale and zero point.

Requantization has two roundings, the op's ``rounding`` attribute (effc's own; ONNX has
one rounding, and export refuses the other):

- ``onnx`` (the default): the float multiplier, rounded half to even, as above;
- ``fixed_point``: TFLite's (and TVM's ``q_multiply_shift``, CMSIS-NN's) integer-only
  form: the multiplier as a 31-bit fraction ``q`` and a power of two,
  ``m = q * 2^(shift - 31)``, ``q`` in ``[2^30, 2^31)``, and one rounding, half up:
  ``(acc * q + 2^(r - 1)) >> r`` with ``r = 31 - shift``. It differs from ``onnx`` by at
  most one step (where the two round a tie differently, or the 31-bit multiplier moves a
  value across a boundary). A target's ``quant_rounding`` (``targets/*.toml``) picks it
  for ``qdq-to-integer``: microcontrollers use ``fixed_point``.

Zero points and scales are per tensor, or per output channel for a weight
(``w_scale``/``w_zero_point`` of ``M`` elements), per row of A / per column of B for the
matmuls. Padding of an integer convolution is the input's zero point (a real 0).
"""
from __future__ import annotations

import numpy as np

from ..core import Node
from ..opdef import BY_ONNX, REGISTRY, InferCtx, OpDef, attr, onnx_key, register
from ..shapes import broadcast_shapes, is_known
from ..errors import ShapeError
from ..types import UNKNOWN_DIM, Dim, DType, TensorType
from .nn import (_CONV_ATTRS, _POOL_ATTRS, _conv_kernel, _conv_nd, _infer_pool, _macs_conv, _macs_matmul,
                 _prod_known, _strides_dilations, _value_error, window_geometry)

EIGHT_BIT = (DType.u8, DType.i8)


def _eight_bit(ctx: InferCtx, i: int, what: str) -> TensorType:
    t = ctx.type(i)
    if t.dtype not in EIGHT_BIT:
        raise ctx.fail(f"{what} has dtype {t.dtype}; expected u8 or i8")
    return t


def _zero_point(ctx: InferCtx, i: int, of: int, what: str, per: Dim | None = None) -> None:
    """Input ``i``, the zero point of input ``of``: its dtype, and a scalar (or one
    element), or ``per`` elements when given (per channel / row / column)."""
    if not ctx.has(i):
        return
    t, x = ctx.type(i), ctx.type(of)
    if t.dtype != x.dtype:
        raise ctx.fail(f"{what} has dtype {t.dtype}; it must be {x.dtype} like the tensor it belongs to")
    _param_shape(ctx, t, what, per)


def _scale(ctx: InferCtx, i: int, what: str, per: Dim | None = None, like: int | None = None) -> None:
    """A scale: f32 (or, from opset 21 for QLinearMatMul, f16), of input ``like``'s dtype."""
    t = ctx.type(i)
    if t.dtype not in (DType.f32, DType.f16):
        raise ctx.fail(f"{what} has dtype {t.dtype}; expected f32 or f16")
    if like is not None and ctx.type(like).dtype != t.dtype:
        raise ctx.fail(f"{what} has dtype {t.dtype}, the other scales {ctx.type(like).dtype}; they must match")
    _param_shape(ctx, t, what, per)


def _param_shape(ctx: InferCtx, t: TensorType, what: str, per: Dim | None) -> None:
    if t.rank == 0 or (t.rank == 1 and t.shape[0] == 1):
        return
    if per is not None and t.rank == 1 and (not is_known(t.shape[0]) or not is_known(per) or t.shape[0] == per):
        return
    want = "a scalar" + (f" or {per} elements" if per is not None else "")
    raise ctx.fail(f"{what} of shape {list(t.shape)} must be {want}")


def _qlinear_params(ctx: InferCtx, names: tuple[str, str], per: Dim) -> TensorType:
    """The scales and zero points of a QLinear op (inputs 1, 2, 4, 5, 6, 7: the first
    operand's, the second's, per tensor or ``per`` elements, and the output's); returns
    the output zero point's type."""
    first, second = names
    _scale(ctx, 1, f"{first}_scale")
    _zero_point(ctx, 2, 0, f"{first}_zero_point")
    _scale(ctx, 4, f"{second}_scale", per=per, like=1)
    _zero_point(ctx, 5, 3, f"{second}_zero_point", per=per)
    _scale(ctx, 6, "y_scale", like=1)
    y = _eight_bit(ctx, 7, "y_zero_point")
    _param_shape(ctx, y, "y_zero_point", None)
    return y


def _conv_output(ctx: InferCtx, x: TensorType, w: TensorType) -> tuple[Dim, list[Dim]]:
    """Output channels and spatial sizes of an integer convolution (Conv's geometry)."""
    if x.rank < 3 or w.rank != x.rank:
        raise ctx.fail(f"X (shape {list(x.shape)}) must have rank >= 3 and W (shape {list(w.shape)}) the same rank")
    group = ctx.attrs["group"]
    m, wc, c = w.shape[0], w.shape[1], x.shape[1]
    if group < 1:
        raise ctx.fail(f"group {group} must be >= 1")
    if is_known(c) and is_known(wc) and c != wc * group:
        raise ctx.fail(f"X has {c} channels but W {list(w.shape)} with group={group} expects {wc} x {group}")
    if is_known(m) and m % group:
        raise ctx.fail(f"{m} output channels do not split into {group} groups")
    kernel = _conv_kernel(ctx, w, x.rank - 2)
    out, _, _ = window_geometry(x.shape[2:], kernel, ctx.attrs, ctx.fail)
    return m, out


def _shifted(q: np.ndarray, zp: np.ndarray | None, axis: int = 0) -> np.ndarray:
    """``q - zp`` in int64; a zero point of several elements lies along ``axis``."""
    v = q.astype(np.int64)
    if zp is None:
        return v
    z = np.asarray(zp).astype(np.int64)
    if z.size == 1:
        return v - z.reshape(())
    shape = [1] * v.ndim
    shape[axis] = z.size
    return v - z.reshape(shape)


def _int_conv(x: np.ndarray, w: np.ndarray, a: dict) -> np.ndarray:
    """The exact integer correlation of int64 ``x`` and ``w`` (Conv's geometry, zero padding)."""
    out, begins, _ = window_geometry(x.shape[2:], w.shape[2:], a, _value_error)
    strides, dilations = _strides_dilations(a, x.ndim - 2)
    return _conv_nd(x, w, a["group"], out, begins, strides, dilations)


ROUNDINGS = ("onnx", "fixed_point")
_ROUNDING_ATTR = {"rounding": attr("str", "onnx")}


def _check_rounding(ctx: InferCtx) -> None:
    if ctx.attrs["rounding"] not in ROUNDINGS:
        raise ctx.fail(f"rounding must be one of {', '.join(ROUNDINGS)}, got '{ctx.attrs['rounding']}'")


def quantized_multiplier(multiplier: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each (positive) float multiplier as TFLite's ``(q, shift)``: ``q`` an int64 in
    ``[2^30, 2^31)`` (0 for a zero multiplier) with ``multiplier ~= q * 2^(shift - 31)``."""
    frac, exp = np.frexp(np.asarray(multiplier, np.float64))
    q = np.rint(frac * 2.0 ** 31).astype(np.int64)
    carry = q == 2 ** 31  # the fraction rounded up to 1.0
    q = np.where(carry, q // 2, q)
    return q, (exp + carry).astype(np.int64)


def _fixed_point(acc: np.ndarray, multiplier: np.ndarray) -> np.ndarray:
    """``(acc * q + 2^(r - 1)) >> r``, ``r = 31 - shift``, in int64 (``|acc * q| < 2^62``).
    A multiplier under ``2^-31`` gives 0 (as TFLite, which cannot shift further); one of
    ``2^30`` or more (``r < 1``) is no requantization anyone writes and is refused."""
    q, shift = quantized_multiplier(multiplier)
    r = np.broadcast_to(31 - shift, acc.shape)
    if (r < 1).any():
        raise ValueError("fixed_point requantization of a multiplier of 2^30 or more")
    tiny = r > 62
    r = np.where(tiny, 62, r)
    y = (acc.astype(np.int64) * np.broadcast_to(q, acc.shape) + (np.int64(1) << (r - 1))) >> r
    return np.where(tiny, 0, y)


def _requantize(acc: np.ndarray, multiplier: np.ndarray, zp: np.ndarray | None, dtype: np.dtype,
                rounding: str = "onnx") -> np.ndarray:
    """``round(acc * multiplier) + zp``, saturated to ``dtype``: ``onnx`` rounding (the
    multiplier formed in the scales' type, applied in float64, half to even, as ONNX's
    reference computes it) or ``fixed_point`` (see the module docstring)."""
    info = np.iinfo(dtype)
    if rounding == "fixed_point":
        y = _fixed_point(acc, multiplier) + (0 if zp is None else int(np.asarray(zp).reshape(())))
        return np.clip(y, info.min, info.max).astype(dtype)
    r = acc.astype(np.float64) * multiplier.astype(np.float64)
    if zp is not None:
        r = r + np.asarray(zp).astype(np.float64).reshape(())
    return np.clip(np.rint(r), info.min, info.max).astype(dtype)


def _channel_multiplier(x_scale: np.ndarray, w_scale: np.ndarray, y_scale: np.ndarray, rank: int,
                        axis: int = 1) -> np.ndarray:
    """``x_scale * w_scale / y_scale`` in the scales' float type, a per-channel one along
    ``axis``."""
    dt = np.asarray(x_scale).dtype
    xs, ys = np.asarray(x_scale).reshape(-1)[0], np.asarray(y_scale).reshape(-1)[0]
    m = (xs * np.asarray(w_scale).reshape(-1) / ys).astype(dt)
    if m.size == 1:
        return m.reshape(())
    shape = [1] * rank
    shape[axis] = m.size
    return m.reshape(shape)


# ----------------------------------------------------------------------------- ConvInteger


def _infer_conv_integer(ctx: InferCtx) -> list[TensorType]:
    x, w = _eight_bit(ctx, 0, "x"), _eight_bit(ctx, 1, "w")
    m, out = _conv_output(ctx, x, w)
    _zero_point(ctx, 2, 0, "x_zero_point")
    _zero_point(ctx, 3, 1, "w_zero_point", per=m)
    return [TensorType(DType.i32, (x.shape[0], m, *out))]


def _ref_conv_integer(ins: list, a: dict, n_out: int) -> list:
    x, w = ins[0], ins[1]
    xz = ins[2] if len(ins) > 2 else None
    wz = ins[3] if len(ins) > 3 else None
    y = _int_conv(_shifted(x, xz), _shifted(w, wz), a)
    return [y.astype(np.int32)]


register(OpDef("conv_integer", "ConvInteger", ("x", "w", "x_zero_point?", "w_zero_point?"), ("y",),
               _infer_conv_integer, _ref_conv_integer, attrs=dict(_CONV_ATTRS), macs=_macs_conv, op_class="conv",
               min_opset=10))


# ----------------------------------------------------------------------------- QLinearConv


def _infer_qlinear_conv(ctx: InferCtx) -> list[TensorType]:
    x, w = _eight_bit(ctx, 0, "x"), _eight_bit(ctx, 3, "w")
    m, out = _conv_output(ctx, x, w)
    _check_rounding(ctx)
    y = _qlinear_params(ctx, ("x", "w"), m)
    if ctx.has(8):
        b = ctx.type(8)
        if b.dtype != DType.i32 or b.rank != 1 or (is_known(b.shape[0]) and is_known(m) and b.shape[0] != m):
            raise ctx.fail(f"B must be i32 of {m} elements (one per output channel), got {b}")
    return [TensorType(y.dtype, (x.shape[0], m, *out))]


def _macs_qlinear_conv(node: Node) -> int:
    w, y = node.inputs[3].type.shape, node.outputs[0].type.shape
    return _prod_known(y) * _prod_known(w[1:])


def _ref_qlinear_conv(ins: list, a: dict, n_out: int) -> list:
    x, xs, xz, w, ws, wz, ys, yz = ins[:8]
    b = ins[8] if len(ins) > 8 else None
    acc = _int_conv(_shifted(x, xz), _shifted(w, wz), a)
    if b is not None:
        acc = acc + b.astype(np.int64).reshape((-1,) + (1,) * (acc.ndim - 2))
    return [_requantize(acc, _channel_multiplier(xs, ws, ys, acc.ndim), yz, yz.dtype, a["rounding"])]


register(OpDef("qlinear_conv", "QLinearConv",
               ("x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point", "B?"),
               ("y",), _infer_qlinear_conv, _ref_qlinear_conv, attrs={**_CONV_ATTRS, **_ROUNDING_ATTR},
               macs=_macs_qlinear_conv,
               op_class="conv", min_opset=10))


# ----------------------------------------------------------------------------- MatMulInteger, QLinearMatMul


def _matmul_shape(ctx: InferCtx, a: TensorType, b: TensorType) -> tuple[Dim, Dim, tuple[Dim, ...]]:
    """(M, N, output shape) of a matmul of ``a`` and ``b`` (MatMul's rules, rank >= 2)."""
    if a.rank < 2 or b.rank < 2:
        raise ctx.fail(f"integer matmuls take tensors of rank >= 2, got shapes {list(a.shape)} and {list(b.shape)}")
    ka, kb = a.shape[-1], b.shape[-2]
    if is_known(ka) and is_known(kb) and ka != kb:
        raise ctx.fail(f"inner dims differ: A {list(a.shape)} has K={ka}, B {list(b.shape)} has K={kb}")
    try:
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ShapeError:
        raise ctx.fail(f"batch dims of A {list(a.shape)} and B {list(b.shape)} do not broadcast") from None
    return a.shape[-2], b.shape[-1], (*batch, a.shape[-2], b.shape[-1])


def _infer_matmul_integer(ctx: InferCtx) -> list[TensorType]:
    a, b = _eight_bit(ctx, 0, "A"), _eight_bit(ctx, 1, "B")
    m, n, shape = _matmul_shape(ctx, a, b)
    _zero_point(ctx, 2, 0, "a_zero_point", per=m)
    _zero_point(ctx, 3, 1, "b_zero_point", per=n)
    return [TensorType(DType.i32, shape)]


def _ref_matmul_integer(ins: list, at: dict, n_out: int) -> list:
    a, b = ins[0], ins[1]
    az = ins[2] if len(ins) > 2 else None
    bz = ins[3] if len(ins) > 3 else None
    return [np.matmul(_shifted(a, az, a.ndim - 2), _shifted(b, bz, b.ndim - 1)).astype(np.int32)]


register(OpDef("mat_mul_integer", "MatMulInteger", ("A", "B", "a_zero_point?", "b_zero_point?"), ("Y",),
               _infer_matmul_integer, _ref_matmul_integer, macs=_macs_matmul, op_class="matmul", min_opset=10))


def _infer_qlinear_matmul(ctx: InferCtx) -> list[TensorType]:
    a, b = _eight_bit(ctx, 0, "a"), _eight_bit(ctx, 3, "b")
    _, n, shape = _matmul_shape(ctx, a, b)
    _check_rounding(ctx)
    y = _qlinear_params(ctx, ("a", "b"), n)
    return [TensorType(y.dtype, shape)]


def _ref_qlinear_matmul(ins: list, at: dict, n_out: int) -> list:
    a, as_, az, b, bs, bz, ys, yz = ins
    acc = np.matmul(_shifted(a, az), _shifted(b, bz, b.ndim - 1))
    return [_requantize(acc, _channel_multiplier(as_, bs, ys, acc.ndim, acc.ndim - 1), yz, yz.dtype, at["rounding"])]


register(OpDef("qlinear_mat_mul", "QLinearMatMul",
               ("a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point"), ("y",),
               _infer_qlinear_matmul, _ref_qlinear_matmul, attrs=dict(_ROUNDING_ATTR), macs=_macs_matmul,
               op_class="matmul", min_opset=10))


# ----------------------------------------------------------------------------- DynamicQuantizeLinear


def _infer_dynamic_quantize(ctx: InferCtx) -> list[TensorType]:
    x = ctx.type(0)
    if x.dtype != DType.f32:
        raise ctx.fail(f"x has dtype {x.dtype}; expected f32")
    return [TensorType(DType.u8, x.shape), TensorType(DType.f32, ()), TensorType(DType.u8, ())]


def _ref_dynamic_quantize(ins: list, a: dict, n_out: int) -> list:
    """ONNX's definition: the range [min(x, 0), max(x, 0)] onto 0..255, the scale in
    float32, the zero point rounded half to even."""
    x = ins[0]
    hi = np.float32(max(0.0, float(np.max(x)))) if x.size else np.float32(0)
    lo = np.float32(min(0.0, float(np.min(x)))) if x.size else np.float32(0)
    scale = np.float32(np.float32(1.0) if hi == lo else hi - lo) / np.float32(255)
    zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    y = np.clip(np.rint(x / scale) + zp, 0, 255)
    return [y.astype(np.uint8), np.array(scale, dtype=np.float32), np.array(zp, dtype=np.uint8)]


register(OpDef("dynamic_quantize_linear", "DynamicQuantizeLinear", ("x",), ("y", "y_scale", "y_zero_point"),
               _infer_dynamic_quantize, _ref_dynamic_quantize, op_class="quant", min_opset=11))


# ----------------------------------------------------------------------------- onnxruntime's contrib ops
# (domain com.microsoft), as ``onnxruntime.quantization`` writes them in QOperator form.
# Their definitions are onnxruntime's: QGemm's int32 sum requantized like QLinearMatMul
# (or scaled to float when it has no y_scale); the others dequantize their inputs, apply
# the float op (the IR's own reference) and quantize the result, rounding half to even.
# onnxruntime's kernels compute in float32 (or lookup tables), so the two may differ by
# one quantization step where a value falls on a rounding boundary.

CONTRIB = "com.microsoft"


def _dequantized(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None) -> np.ndarray:
    """DequantizeLinear's reference, per tensor."""
    op = REGISTRY["dequantize_linear"]
    return op.ref([q, np.asarray(scale).reshape(()), zp], op.with_defaults({}), 1)[0]


def _quantized(x: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, dtype: np.dtype) -> np.ndarray:
    """QuantizeLinear's reference, per tensor, to ``dtype`` when there is no zero point."""
    op = REGISTRY["quantize_linear"]
    zp = np.zeros((), dtype) if zp is None else np.asarray(zp).reshape(())
    return op.ref([x, np.asarray(scale).reshape(()), zp], op.with_defaults({}), 1)[0]


def _out_dtype(ctx: InferCtx, zp: int, default: int) -> DType:
    """A contrib op's output type: its output zero point's (input ``zp``), else input
    ``default``'s."""
    if ctx.has(zp):
        t = _eight_bit(ctx, zp, "the output zero point")
        _param_shape(ctx, t, "the output zero point", None)
        return t.dtype
    return ctx.type(default).dtype


def _infer_qgemm(ctx: InferCtx) -> list[TensorType]:
    a, b = _eight_bit(ctx, 0, "A"), _eight_bit(ctx, 3, "B")
    if a.rank != 2 or b.rank != 2:
        raise ctx.fail(f"A and B must be 2-D, got shapes {list(a.shape)} and {list(b.shape)}")
    m, k = (a.shape[1], a.shape[0]) if ctx.attrs["transA"] else a.shape
    kb, n = (b.shape[1], b.shape[0]) if ctx.attrs["transB"] else b.shape
    if is_known(k) and is_known(kb) and k != kb:
        raise ctx.fail(f"inner dims differ: A' has K={k}, B' has K={kb}")
    _scale(ctx, 1, "a_scale")
    _zero_point(ctx, 2, 0, "a_zero_point")
    _scale(ctx, 4, "b_scale", per=n, like=1)
    _zero_point(ctx, 5, 3, "b_zero_point", per=n)
    if ctx.has(6) and ctx.type(6).dtype != DType.i32:
        raise ctx.fail(f"C has dtype {ctx.type(6).dtype}; expected i32 (quantized with the scale a_scale * b_scale)")
    if ctx.has(8) and not ctx.has(7):
        raise ctx.fail("y_zero_point without y_scale")
    _check_rounding(ctx)
    if ctx.has(7):
        _scale(ctx, 7, "y_scale", like=1)
        return [TensorType(_out_dtype(ctx, 8, 0) if ctx.has(8) else DType.u8, (m, n))]
    return [TensorType(DType.f32, (m, n))]


def _ref_qgemm(ins: list, a: dict, n_out: int) -> list:
    A, as_, az, B, bs, bz = ins[:6]
    c = ins[6] if len(ins) > 6 else None
    ys = ins[7] if len(ins) > 7 else None
    yz = ins[8] if len(ins) > 8 else None
    A = A.T if a["transA"] else A
    B = B.T if a["transB"] else B
    acc = _shifted(A, az) @ _shifted(B, bz, 1)
    if c is not None:
        acc = acc + c.astype(np.int64)
    alpha = np.float32(a["alpha"])
    if ys is None:
        scale = (alpha * np.float32(np.asarray(as_).reshape(-1)[0]) * np.asarray(bs, np.float32).reshape(-1))
        return [(acc.astype(np.float32) * scale.astype(np.float32)).astype(np.float32)]
    mult = _channel_multiplier(np.asarray(as_, np.float32) * alpha, bs, ys, 2, 1)
    return [_requantize(acc, mult, yz, yz.dtype if yz is not None else np.dtype(np.uint8), a["rounding"])]


register(OpDef("qgemm", "QGemm",
               ("A", "a_scale", "a_zero_point", "B", "b_scale", "b_zero_point", "C?", "y_scale?", "y_zero_point?"),
               ("Y",), _infer_qgemm, _ref_qgemm,
               attrs={"alpha": attr("float", 1.0), "transA": attr("int", 0), "transB": attr("int", 0),
                      **_ROUNDING_ATTR},
               macs=_macs_matmul, op_class="matmul", domain=CONTRIB))


def _binary_q(name: str, onnx_name: str, fn) -> None:
    """QLinearAdd / QLinearMul: A, A_scale, A_zero_point?, B, B_scale, B_zero_point?,
    C_scale, C_zero_point? (broadcasting as Add and Mul)."""
    def infer(ctx: InferCtx) -> list[TensorType]:
        a, b = _eight_bit(ctx, 0, "A"), _eight_bit(ctx, 3, "B")
        if a.dtype != b.dtype:
            raise ctx.fail(f"A and B must have the same dtype, got {a.dtype} and {b.dtype}")
        for i, what in ((1, "A_scale"), (4, "B_scale"), (6, "C_scale")):
            _scale(ctx, i, what)
        _zero_point(ctx, 2, 0, "A_zero_point")
        _zero_point(ctx, 5, 3, "B_zero_point")
        try:
            shape = broadcast_shapes(a.shape, b.shape)
        except ShapeError:
            raise ctx.fail(f"A {list(a.shape)} and B {list(b.shape)} do not broadcast") from None
        return [TensorType(_out_dtype(ctx, 7, 0), shape)]

    def ref(ins: list, a: dict, n_out: int) -> list:
        A, As, Az, B, Bs, Bz, Cs = ins[:7]
        Cz = ins[7] if len(ins) > 7 else None
        y = fn(_dequantized(A, As, Az), _dequantized(B, Bs, Bz))
        return [_quantized(y, Cs, Cz, Cz.dtype if Cz is not None else A.dtype)]

    register(OpDef(name, onnx_name, ("A", "A_scale", "A_zero_point?", "B", "B_scale", "B_zero_point?", "C_scale",
                                     "C_zero_point?"), ("C",), infer, ref, traits=frozenset({"elementwise"}),
                   op_class="elementwise", domain=CONTRIB))


_binary_q("qlinear_add", "QLinearAdd", np.add)
_binary_q("qlinear_mul", "QLinearMul", np.multiply)


def _unary_q(name: str, onnx_name: str, float_op: str, attrs: dict, shape_of, integer_ref=None) -> None:
    """X, X_scale, X_zero_point?, Y_scale, Y_zero_point? around the IR's float op
    ``float_op`` (its reference, with the node's attributes; ``integer_ref``: a reference
    of its own instead)."""
    def infer(ctx: InferCtx) -> list[TensorType]:
        x = _eight_bit(ctx, 0, "X")
        _scale(ctx, 1, "X_scale")
        _zero_point(ctx, 2, 0, "X_zero_point")
        _scale(ctx, 3, "Y_scale")
        if ctx.attrs.get("channels_last", 0):
            raise ctx.unsupported("channels_last=1 (NHWC)")
        return [TensorType(_out_dtype(ctx, 4, 0), shape_of(ctx, x))]

    def ref(ins: list, a: dict, n_out: int) -> list:
        x, xs, xz, ys = ins[:4]
        yz = ins[4] if len(ins) > 4 else None
        op = REGISTRY[float_op]
        float_attrs = op.with_defaults({k: v for k, v in a.items() if k in op.attrs})
        y = op.ref([_dequantized(x, xs, xz)], float_attrs, 1)[0]
        return [_quantized(y, ys, yz, yz.dtype if yz is not None else x.dtype)]

    register(OpDef(name, onnx_name, ("X", "X_scale", "X_zero_point?", "Y_scale", "Y_zero_point?"), ("Y",), infer,
                   integer_ref or ref, attrs=attrs, op_class="pool" if "pool" in float_op else "activation", domain=CONTRIB))


def _same_shape(ctx: InferCtx, x: TensorType) -> tuple[Dim, ...]:
    return x.shape


def _global_pooled(ctx: InferCtx, x: TensorType) -> tuple[Dim, ...]:
    if x.rank < 3:
        raise ctx.fail(f"X must have rank >= 3 (N, C, spatial...), got shape {list(x.shape)}")
    return (x.shape[0], x.shape[1]) + (1,) * (x.rank - 2)


def _avg_pooled(ctx: InferCtx, x: TensorType) -> tuple[Dim, ...]:
    _, shape = _infer_pool(ctx, EIGHT_BIT)
    return tuple(shape)


def global_pool_multiplier(x_scale: np.ndarray, y_scale: np.ndarray, count: int) -> np.ndarray:
    """``x_scale / (y_scale * count)`` in the scales' type: the requantization of a global
    average pool's integer sum over ``count`` pixels."""
    xs, ys = np.asarray(x_scale).reshape(()), np.asarray(y_scale).reshape(())
    return np.asarray(xs / (ys * ys.dtype.type(count))).astype(xs.dtype)


def _qlinear_global_average_pool_ref(ins: list, a: dict, n_out: int) -> list:
    """The int32 sum of ``x - x_zp`` over the pixels, requantized once by
    ``global_pool_multiplier`` (half to even, plus ``y_zp``, saturated): onnxruntime's
    kernel computes the same integer sum and one requantization (in float32: it may
    differ by a step where the float64 product sits on a half). Integer sums, unlike a
    float mean, do not depend on the order a kernel adds in, so every target's result is
    this one to the bit."""
    x, xs, xz, ys = ins[:4]
    yz = ins[4] if len(ins) > 4 else None
    axes = tuple(range(2, x.ndim))
    count = int(np.prod([x.shape[i] for i in axes]))
    acc = x.astype(np.int64).sum(axis=axes, keepdims=True)
    if xz is not None:
        acc = acc - np.int64(np.asarray(xz).reshape(())) * count
    return [_requantize(acc, global_pool_multiplier(xs, ys, count), yz, yz.dtype if yz is not None else x.dtype)]


_unary_q("qlinear_global_average_pool", "QLinearGlobalAveragePool", "global_average_pool",
         {"channels_last": attr("int", 0)}, _global_pooled, _qlinear_global_average_pool_ref)
_unary_q("qlinear_average_pool", "QLinearAveragePool", "average_pool",
         {**_POOL_ATTRS, "count_include_pad": attr("int", 0), "channels_last": attr("int", 0)}, _avg_pooled)
_unary_q("qlinear_leaky_relu", "QLinearLeakyRelu", "leaky_relu", {"alpha": attr("float", 0.01)}, _same_shape)
_unary_q("qlinear_sigmoid", "QLinearSigmoid", "sigmoid", {}, _same_shape)


def _infer_qlinear_concat(ctx: InferCtx) -> list[TensorType]:
    """Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input; Concat's shape rule."""
    n = len(ctx.types)
    if n < 5 or (n - 2) % 3:
        raise ctx.fail(f"takes Y_scale, Y_zero_point and (X, X_scale, X_zero_point) triples; got {n} inputs")
    _scale(ctx, 0, "Y_scale")
    y = _eight_bit(ctx, 1, "Y_zero_point")
    xs = [_eight_bit(ctx, i, f"input {i}") for i in range(2, n, 3)]
    for i in range(2, n, 3):
        _scale(ctx, i + 1, f"input {i + 1} (a scale)")
        _zero_point(ctx, i + 2, i, f"input {i + 2} (a zero point)")
    rank = xs[0].rank
    axis = _concat_axis(ctx, ctx.attrs["axis"], rank)
    total: Dim = 0
    for x in xs:
        if x.rank != rank:
            raise ctx.fail(f"inputs have ranks {[t.rank for t in xs]}; they must agree")
        d = x.shape[axis]
        total = total + d if is_known(total) and is_known(d) else UNKNOWN_DIM
    shape = list(xs[0].shape)
    shape[axis] = total
    return [TensorType(y.dtype, tuple(shape))]


def _concat_axis(ctx: InferCtx, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _ref_qlinear_concat(ins: list, a: dict, n_out: int) -> list:
    ys, yz = ins[0], ins[1]
    parts = [_dequantized(ins[i], ins[i + 1], ins[i + 2]) for i in range(2, len(ins), 3)]
    return [_quantized(np.concatenate(parts, axis=a["axis"]), ys, yz, yz.dtype)]


register(OpDef("qlinear_concat", "QLinearConcat", ("Y_scale", "Y_zero_point", "inputs*"), ("Y",),
               _infer_qlinear_concat, _ref_qlinear_concat, attrs={"axis": attr("int")}, op_class="shape",
               domain=CONTRIB))


# onnxruntime's quantizer writes QuantizeLinear/DequantizeLinear in the com.microsoft domain
# for 16- and 4-bit types when the model's opset is under 21 (the standard ops took those
# types at 21): the same definitions (per-tensor or per-axis), read as the standard ops.
for _name in ("QuantizeLinear", "DequantizeLinear"):
    BY_ONNX[onnx_key(CONTRIB, _name)] = BY_ONNX[_name]
