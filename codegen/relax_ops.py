"""The emitter table: one function per effc op, building the op from Relax operators.

``EMITTERS[op]`` is an ``Emitter(fn, check)``: ``fn(e: Emit)`` returns the Relax
expression of each output (one expression, or a list for several outputs; ``None`` for
an output nothing uses); ``check(node, const)`` returns why a form of the op cannot be
lowered (None when it can), so every unsupported node is reported before a build starts.
Ops effc has but no emitter here (``non_zero``: data-dependent shape) are refused the
same way, with the reason from ``UNSUPPORTED_REASONS``.

Rules the emitters keep:
- constants come from ``e.constant``/``e.scalar``, never ``relax.const`` directly: inside a
  fused group's function a constant must be a parameter (FuseTIR rejects tensor constants);
- attribute-like inputs (axes, shapes, pads, clip bounds) are read at compile time with
  ``e.const``/``e.ints``; an op whose output shape effc inferred statically (reshape,
  expand, ...) takes that shape instead of recomputing it;
- ops TVM lacks are composed from Relax operators (LRN, HardSigmoid, Elu, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from tvm import relax, te, tirx, topi

from effc.ir.core import Node, Value
from effc.ir.errors import IndexOutOfRangeError
from effc.ir.opdef import node_attrs, run_ref
from effc.ir.ops.nn import transpose_geometry, window_geometry
from effc.ir.types import DType

from .layout import BlockedEmit, emit_conv, emit_dense, emit_pointwise
from .relax_emit import Emit, relax_dtype

R = relax.op


ConstOf = Callable[[Value], "np.ndarray | None"]
Check = Callable[[Node, ConstOf], "str | None"]


@dataclass(frozen=True)
class Emitter:
    fn: Callable[[Emit], object]
    check: Check | None = None
    """Why this node cannot be lowered (None when it can); ``const(v)`` gives a value
    known at compile time, also through a fused body's inputs."""
    half_in_f32: bool = True
    """float16/bfloat16 operands compute in float32 (False for ops that only move data)."""


EMITTERS: dict[str, Emitter] = {}


def emitter(*names: str, check: Check | None = None, moves_data: bool = False):
    """Register ``fn`` for ops ``names``; ``moves_data``: it only rearranges elements, so
    half-precision values need not widen to float32."""

    def register(fn: Callable[[Emit], object]) -> Callable[[Emit], object]:
        for name in names:
            if name in EMITTERS:
                raise ValueError(f"two emitters for {name}")
            EMITTERS[name] = Emitter(fn, check, half_in_f32=not moves_data)
        return fn

    return register


# ----------------------------------------------------------------------------- checks


def _needs_const(*inputs: int, what: str = "") -> Check:
    """Inputs that must be known at compile time (they decide shapes or attributes)."""

    def check(node: Node, const: ConstOf) -> str | None:
        for i in inputs:
            v = node.input(i)
            if v is not None and const(v) is None:
                return (f"{what or f'input {i}'} must be known at compile time, but it is computed at run time "
                        "(give the inputs static shapes, e.g. --input-shape, then fold constants)")
        return None

    return check


def _unused_outputs(*indices: int, what: str) -> Check:
    def check(node: Node, const: ConstOf) -> str | None:
        for i in indices:
            if i < len(node.outputs) and (node.outputs[i].num_uses or node.outputs[i].is_graph_output):
                return what
        return None

    return check


def _all(*checks: Check) -> Check:
    def check(node: Node, const: ConstOf) -> str | None:
        for c in checks:
            why = c(node, const)
            if why:
                return why
        return None

    return check


# ----------------------------------------------------------------------------- helpers


def _min_of(dtype: DType):
    return np.finfo(dtype.np).min if dtype.is_float else (False if dtype is DType.bool else np.iinfo(dtype.np).min)


def _max_of(dtype: DType):
    return np.finfo(dtype.np).max if dtype.is_float else (True if dtype is DType.bool else np.iinfo(dtype.np).max)


def _prim(value, dtype: DType) -> relax.Expr:
    """A scalar immediate (clip bounds, one_hot values): not a tensor, so no parameter."""
    v = value.item() if hasattr(value, "item") else value
    return relax.prim_value(float(v) if dtype.is_float else int(v), relax_dtype(dtype))


def _per_channel(e: Emit, i: int, rank: int) -> relax.Expr:
    """A per-channel vector (input ``i``) shaped [1, C, 1, ...] to broadcast over a rank-``rank`` tensor."""
    shape = [1, -1] + [1] * (rank - 2)
    c = e.const(i)
    if c is not None:
        return e.constant(np.asarray(c).reshape(shape))
    return R.reshape(e.x(i), [1, e.scope.dim(e.in_type(i).shape[0])] + [1] * (rank - 2))


def _axes(e: Emit, i: int, rank: int) -> list[int] | None:
    axes = e.ints(i)
    return None if axes is None else sorted(a % rank for a in axes)


# ----------------------------------------------------------------------------- elementwise


_UNARY = {
    "abs": R.abs, "ceil": R.ceil, "cos": R.cos, "erf": R.erf, "exp": R.exp, "floor": R.floor, "log": R.log,
    "neg": R.negative, "not": R.logical_not, "relu": R.nn.relu, "sigmoid": R.sigmoid, "sign": R.sign, "sin": R.sin,
    "sqrt": R.sqrt, "tanh": R.tanh, "is_nan": R.isnan,
}


def _erf(e: Emit, x: relax.Expr) -> relax.Expr:
    """erf as TVM's ``fast_erf`` (a rational approximation, within 4.2e-7 of erf over
    [-6, 6]: float32 rounding), vectorizable; Relax's erf lowers to a libm call per element
    (8 ns each: a third of MiniLM's FFN-up kernel). Saturates to +-1; NaN stays NaN."""
    if e.in_type(0).dtype != DType.f32:
        return R.erf(x)
    if not isinstance(x, relax.Var):
        x = e.emit(x)  # (call_te takes variables)
    return e.scope.root_bb.call_te(topi.fast_erf, x, primfunc_name_hint="erf")


@emitter(*_UNARY)
def _unary(e: Emit):
    if e.node.op == "erf":
        return _erf(e, e.x(0))
    return _UNARY[e.node.op](e.x(0))


@emitter("round")
def _round(e: Emit):
    return _round_half_even(e, e.x(0), e.out_type().dtype)


@emitter("reciprocal")
def _reciprocal(e: Emit):
    return R.divide(e.scalar(1), e.x(0))


def _log1p(e: Emit, u: relax.Expr) -> relax.Expr:
    """log(1 + u) accurate for small u (Relax has no log1p): log(w) * u / (w - 1), w = 1 + u."""
    w = e.emit(R.add(e.scalar(1), u))
    return R.where(R.equal(w, e.scalar(1)), u, R.divide(R.multiply(R.log(w), u), R.subtract(w, e.scalar(1))))


@emitter("softplus")
def _softplus(e: Emit):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow, no cancellation
    x = e.x(0)
    return R.add(R.maximum(x, e.scalar(0)), _log1p(e, R.exp(R.negative(R.abs(x)))))


_BINARY = {
    "add": R.add, "sub": R.subtract, "mul": R.multiply, "equal": R.equal, "greater": R.greater,
    "greater_or_equal": R.greater_equal, "less": R.less, "less_or_equal": R.less_equal, "and": R.logical_and,
    "or": R.logical_or, "xor": R.logical_xor,
}


@emitter(*_BINARY)
def _binary(e: Emit):
    return _BINARY[e.node.op](e.x(0), e.x(1))


@emitter("div")
def _div(e: Emit):
    # integer division truncates toward zero (C), as TVM's divide does for integers
    return R.divide(e.x(0), e.x(1))


@emitter("mod")
def _mod(e: Emit):
    # fmod=1: the dividend's sign (C fmod, TVM mod); fmod=0: the divisor's (floor_mod)
    return R.mod(e.x(0), e.x(1)) if e.attrs["fmod"] else R.floor_mod(e.x(0), e.x(1))


@emitter("pow")
def _pow(e: Emit):
    x, y = e.x(0), e.x(1)
    xt, yt = e.in_type(0), e.in_type(1)
    if not xt.dtype.is_float:
        # TVM's power is float-only: integer bases compute in float64 and truncate back,
        # as effc's reference does (exact below 2**53)
        y64 = R.astype(y, "float64") if yt.dtype != DType.f64 else y
        return R.astype(R.power(R.astype(x, "float64"), y64), relax_dtype(xt.dtype))
    if xt.dtype != yt.dtype:
        c = e.const(1)
        y = e.constant(c, xt.dtype) if c is not None else R.astype(y, relax_dtype(xt.dtype))
    return R.power(x, y)


@emitter("max", "min", "sum", "mean")
def _variadic(e: Emit):
    fold = {"max": R.maximum, "min": R.minimum, "sum": R.add, "mean": R.add}[e.node.op]
    xs = [e.x(i) for i in range(len(e.node.inputs))]
    acc = xs[0]
    for x in xs[1:]:
        acc = fold(acc, x)
    if e.node.op == "mean" and len(xs) > 1:
        acc = R.divide(acc, e.scalar(len(xs)))
    return acc


@emitter("clip")
def _clip(e: Emit):
    x = e.x(0)
    dt = e.out_type().dtype
    lo, hi = e.const(1), e.const(2)
    if (e.has(1) and lo is None) or (e.has(2) and hi is None):  # a bound computed at run time
        if e.has(1):
            x = R.maximum(x, e.x(1))
        if e.has(2):
            x = R.minimum(x, e.x(2))
        return x
    lo_v = np.asarray(lo).reshape(()) if lo is not None else _min_of(dt)
    hi_v = np.asarray(hi).reshape(()) if hi is not None else _max_of(dt)
    return R.clip(x, _prim(lo_v, dt), _prim(hi_v, dt))


@emitter("hard_sigmoid")
def _hard_sigmoid(e: Emit):
    dt = e.out_type().dtype
    lin = R.add(R.multiply(e.x(0), e.scalar(e.attrs["alpha"])), e.scalar(e.attrs["beta"]))
    return R.clip(lin, _prim(0.0, dt), _prim(1.0, dt))


@emitter("hard_swish")
def _hard_swish(e: Emit):
    dt = e.out_type().dtype
    x = e.x(0)
    gate = R.clip(R.add(R.multiply(x, e.scalar(1 / 6)), e.scalar(0.5)), _prim(0.0, dt), _prim(1.0, dt))
    return R.multiply(x, gate)


def _elu_part(e: Emit, x: relax.Expr, alpha: float) -> relax.Expr:
    neg = R.multiply(e.scalar(alpha), R.subtract(R.exp(x), e.scalar(1)))
    return R.where(R.greater(x, e.scalar(0)), x, neg)


@emitter("elu")
def _elu(e: Emit):
    return _elu_part(e, e.x(0), e.attrs["alpha"])


@emitter("selu")
def _selu(e: Emit):
    return R.multiply(e.scalar(e.attrs["gamma"]), _elu_part(e, e.x(0), e.attrs["alpha"]))


@emitter("leaky_relu")
def _leaky_relu(e: Emit):
    x = e.x(0)
    return R.where(R.greater_equal(x, e.scalar(0)), x, R.multiply(x, e.scalar(e.attrs["alpha"])))


@emitter("prelu")
def _prelu(e: Emit):
    x = e.x(0)
    return R.where(R.less(x, e.scalar(0)), R.multiply(x, e.x(1)), x)


@emitter("gelu")
def _gelu(e: Emit):
    if e.attrs["approximate"] == "tanh":
        return R.nn.gelu_tanh(e.x(0))
    if e.in_type(0).dtype != DType.f32:
        return R.nn.gelu(e.x(0))
    x = e.emit(e.x(0))  # x * (0.5 + 0.5 * erf(x / sqrt 2)), as TVM's gelu, with _erf
    half = e.scalar(0.5)
    return R.multiply(x, R.add(half, R.multiply(half, _erf(e, R.multiply(x, e.scalar(2 ** -0.5))))))


@emitter("softmax")
def _softmax(e: Emit):
    # NaN/inf: a row holding NaN or +inf, or only -inf, comes out all NaN, as onnxruntime's
    # does, once the row maximum propagates NaN (aot_kernels.ieee_minmax)
    return R.nn.softmax(e.x(0), axis=e.attrs["axis"])


@emitter("log_softmax")
def _log_softmax(e: Emit):
    return R.nn.log_softmax(e.x(0), axis=e.attrs["axis"])


@emitter("is_inf")
def _is_inf(e: Emit):
    x = e.x(0)
    pos, neg = e.attrs["detect_positive"], e.attrs["detect_negative"]
    inf = R.isinf(x)
    if pos and neg:
        return inf
    if pos:
        return R.logical_and(inf, R.greater(x, e.scalar(0, e.in_type(0).dtype)))
    if neg:
        return R.logical_and(inf, R.less(x, e.scalar(0, e.in_type(0).dtype)))
    return R.zeros(e.out_shape(), "bool")


@emitter("where", moves_data=True)
def _where(e: Emit):
    return R.where(e.x(0), e.x(1), e.x(2))


def _cast_to(e: Emit, x: relax.Expr, src: DType, dst: DType) -> relax.Expr:
    if src == dst:
        return x
    if dst is DType.bool:  # nonzero, not a truncating conversion
        return R.not_equal(x, e.scalar(0, src))
    return R.astype(x, relax_dtype(dst))


@emitter("cast", moves_data=True)
def _cast(e: Emit):
    return _cast_to(e, e.x(0), e.in_type(0).dtype, e.out_type().dtype)


@emitter("cast_like", moves_data=True)
def _cast_like(e: Emit):
    return _cast_to(e, e.x(0), e.in_type(0).dtype, e.out_type().dtype)


def _param_shape(rank: int, axis: int, n: int) -> list[int]:
    shape = [1] * rank
    shape[axis] = n
    return shape


def _quant_param(e: Emit, i: int, target: DType, like: int = 0) -> relax.Expr:
    """A scale or zero point shaped to broadcast over input ``like`` (per tensor, or along
    ``axis``)."""
    xt, pt = e.in_type(like), e.in_type(i)
    c = e.const(i)
    if pt.rank == 0 or (pt.rank == 1 and pt.shape[0] == 1 and xt.rank != 1):
        if c is not None:
            return e.constant(np.asarray(c).reshape(()).astype(target.np))
        return _cast_to(e, R.reshape(e.x(i), []), pt.dtype, target)
    axis = e.attrs["axis"] % xt.rank
    shape = _param_shape(xt.rank, axis, pt.shape[0])
    if c is not None:
        return e.constant(np.asarray(c).reshape(shape).astype(target.np))
    return _cast_to(e, R.reshape(e.x(i), shape), pt.dtype, target)


_Q_RANGES = {DType.u8: (0, 255), DType.i8: (-128, 127), DType.u16: (0, 65535), DType.i16: (-32768, 32767)}


def _check_quant(node: Node, const: ConstOf) -> str | None:
    if node_attrs(node)["block_size"]:
        return "blocked quantization (block_size > 0)"
    return None


@emitter("quantize_linear", check=_check_quant)
def _quantize_linear(e: Emit):
    return _quantize_linear_of(e, e.x(0), 1, 2 if e.has(2) else None, e.in_type(0).dtype)


def _quantize_linear_of(e: Emit, x: relax.Expr, scale: int, zero_point: int | None,
                        src: DType = DType.f32) -> relax.Expr:
    """QuantizeLinear of ``x`` (of dtype ``src``) with the node's inputs ``scale`` and
    ``zero_point`` (per tensor, or along the node's ``axis``) into output 0's dtype; the
    integer ops' emitters (``relax_quant.py``) use it for their float parts."""
    work = DType.f32 if src != DType.f64 else DType.f64
    xf = _cast_to(e, x, src, work)
    q = _round_half_even(e, R.divide(xf, _quant_param(e, scale, work)), work)
    if zero_point is not None and e.has(zero_point):
        q = R.add(q, _quant_param(e, zero_point, work))
    out = e.out_type().dtype
    lo, hi = _Q_RANGES[out]
    return R.astype(R.clip(q, _prim(float(lo), work), _prim(float(hi), work)), relax_dtype(out))


def _round_half_even(e: Emit, x: relax.Expr, dt: DType) -> relax.Expr:
    """ONNX (and numpy's rint) round halves to even; TVM's round takes them away from zero."""
    r = R.round(x)
    is_half = R.equal(R.subtract(x, R.floor(x)), e.scalar(0.5, dt))
    even = R.multiply(R.round(R.multiply(x, e.scalar(0.5, dt))), e.scalar(2.0, dt))
    return R.where(is_half, even, r)


@emitter("dequantize_linear", check=_check_quant)
def _dequantize_linear(e: Emit):
    return _dequantize_linear_of(e, 0, 1, 2)


def _dequantize_linear_of(e: Emit, x: int, scale: int, zero_point: int) -> relax.Expr:
    """DequantizeLinear of the node's input ``x`` with inputs ``scale`` and ``zero_point``
    (absent or not), in the scale's dtype."""
    xt = e.in_type(x)
    out = e.in_type(scale).dtype
    if e.has(zero_point):
        # subtract in int32 (exact for 8/16-bit data), then scale in float
        d = R.subtract(R.astype(e.x(x), "int32"), _quant_param(e, zero_point, DType.i32, x))
        xf = R.astype(d, relax_dtype(out))
    else:
        xf = _cast_to(e, e.x(x), xt.dtype, out)
    return R.multiply(xf, _quant_param(e, scale, out, x))


# ----------------------------------------------------------------------------- nn


def _conv_pads(e: Emit, kernel: list[int]) -> tuple[list[int], list[int], list[int], list[int]]:
    a = e.attrs
    sizes = e.in_type(0).shape[2:]
    _, begins, ends = window_geometry(sizes, kernel, a, e.fail)
    if any(b is None for b in begins) or any(x is None for x in ends):
        raise e.fail("auto_pad over symbolic spatial dims; give the input a static shape")
    n = len(kernel)
    strides = list(a.get("strides") or [1] * n)
    dilations = list(a.get("dilations") or [1] * n)
    return list(begins), list(ends), strides, dilations


_CONV = {1: (R.nn.conv1d, "NCW", "OIW"), 2: (R.nn.conv2d, "NCHW", "OIHW"), 3: (R.nn.conv3d, "NCDHW", "OIDHW")}
_CONV_T = {1: R.nn.conv1d_transpose, 2: R.nn.conv2d_transpose, 3: getattr(R.nn, "conv3d_transpose", None)}


def _check_conv(node: Node, const: ConstOf) -> str | None:
    x = node.input(0)
    if x is not None and x.type.rank - 2 not in (1, 2, 3):
        return f"{x.type.rank - 2}-D convolution"
    w = node.input(1)
    if w is not None and not all(isinstance(d, int) for d in w.type.shape):
        return "a weight of symbolic shape"
    return None


def _add_bias(e: Emit, y: relax.Expr, i: int, rank: int) -> relax.Expr:
    if not e.has(i):
        return y
    return R.add(y, _per_channel(e, i, rank))


@emitter("conv", check=_check_conv)
def _conv(e: Emit):
    xt, wt = e.in_type(0), e.in_type(1)
    n = xt.rank - 2
    kernel = [int(d) for d in wt.shape[2:]]
    begins, ends, strides, dilations = _conv_pads(e, kernel)
    if isinstance(e, BlockedEmit):
        return emit_conv(e, e.scope.plan.convs[id(e.node)], begins, ends, strides, dilations)
    y = emit_pointwise(e, strides, begins + ends, dilations)
    if y is not None:
        return _add_bias(e, y, 2, xt.rank)
    fn, layout, klayout = _CONV[n]
    y = fn(e.x(0), e.x(1), strides=strides, padding=begins + ends, dilation=dilations, groups=e.attrs["group"],
           data_layout=layout, kernel_layout=klayout)
    return _add_bias(e, y, 2, xt.rank)


def _check_conv_transpose(node: Node, const: ConstOf) -> str | None:
    why = _check_conv(node, const)
    if why:
        return why
    x = node.input(0)
    if x is not None and _CONV_T.get(x.type.rank - 2) is None:
        return f"{x.type.rank - 2}-D transposed convolution"
    return None


@emitter("conv_transpose", check=_check_conv_transpose)
def _conv_transpose(e: Emit):
    xt, wt = e.in_type(0), e.in_type(1)
    n = xt.rank - 2
    kernel = [int(d) for d in wt.shape[2:]]
    a = e.attrs
    outs, begins = transpose_geometry(xt.shape[2:], kernel, a, e.fail)
    sizes = xt.shape[2:]
    if any(b is None for b in begins) or not all(isinstance(s, int) for s in sizes):
        raise e.fail("transposed convolution over symbolic spatial dims; give the input a static shape")
    strides = list(a.get("strides") or [1] * n)
    dilations = list(a.get("dilations") or [1] * n)
    pad_end, out_pad = [], []
    for size, k, s, d, b, out in zip(sizes, kernel, strides, dilations, begins, outs):
        full = s * (size - 1) + d * (k - 1) + 1  # without output_padding
        pe = full - b - int(out)
        pad_end.append(max(pe, 0))
        out_pad.append(max(-pe, 0))
    layout = {1: ("NCW", "IOW"), 2: ("NCHW", "IOHW"), 3: ("NCDHW", "IODHW")}[n]
    y = _CONV_T[n](e.x(0), e.x(1), strides=strides, padding=list(begins) + pad_end, output_padding=out_pad,
                   dilation=dilations, groups=a["group"], data_layout=layout[0], kernel_layout=layout[1])
    return _add_bias(e, y, 2, xt.rank)


@emitter("gemm")
def _gemm(e: Emit):
    a = e.attrs
    A = R.permute_dims(e.x(0), [1, 0]) if a["transA"] else e.x(0)
    b = e.const(1)
    y = None
    if b is not None and not a["transA"]:
        y = emit_dense(e, A, np.asarray(b).T if a["transB"] else np.asarray(b))
    if y is None:
        if a["transB"]:
            B = e.constant(np.asarray(b).T) if b is not None else R.permute_dims(e.x(1), [1, 0])
        else:
            B = e.x(1)
        y = R.matmul(A, B)
    if a["alpha"] != 1.0:
        y = R.multiply(y, e.scalar(a["alpha"]))
    if e.has(2) and a["beta"] != 0.0:
        c = e.const(2)
        if c is not None:
            C = e.constant(np.asarray(c) * np.asarray(a["beta"], dtype=c.dtype)) if a["beta"] != 1.0 else e.x(2)
        else:
            C = e.x(2) if a["beta"] == 1.0 else R.multiply(e.x(2), e.scalar(a["beta"]))
        y = R.add(y, C)
    return y


@emitter("mat_mul")
def _mat_mul(e: Emit):
    b = e.const(1)
    if b is not None and e.in_type(0).rank >= 2:
        y = emit_dense(e, e.x(0), np.asarray(b))
        if y is not None:
            return y
    return R.matmul(e.x(0), e.x(1))


def _check_batch_norm(node: Node, const: ConstOf) -> str | None:
    if node_attrs(node)["training_mode"]:
        return "training mode"
    return _unused_outputs(1, 2, what="running mean/var outputs")(node, const)


@emitter("batch_normalization", check=_check_batch_norm)
def _batch_norm(e: Emit):
    rank = e.in_type(0).rank
    eps = e.attrs["epsilon"]
    consts = [e.const(i) for i in range(1, 5)]
    if all(c is not None for c in consts):
        scale, bias, mean, var = (np.asarray(c, dtype=np.float64) for c in consts)
        k = scale / np.sqrt(var + eps)
        shift = bias - mean * k
        dt = e.out_type().dtype.np
        shape = [1, -1] + [1] * (rank - 2)
        return R.add(R.multiply(e.x(0), e.constant(k.astype(dt).reshape(shape))),
                     e.constant(shift.astype(dt).reshape(shape)))
    out = R.nn.batch_norm(e.x(0), e.x(1), e.x(2), e.x(3), e.x(4), axis=1, epsilon=eps, training=False)
    return relax.TupleGetItem(e.emit(out), 0)


@emitter("instance_normalization")
def _instance_norm(e: Emit):
    rank = e.in_type(0).rank
    return R.nn.instance_norm(e.x(0), e.x(1), e.x(2), channel_axis=1, axes=list(range(2, rank)),
                              epsilon=e.attrs["epsilon"])


@emitter("layer_normalization")
def _layer_norm(e: Emit):
    xt = e.in_type(0)
    axis = e.attrs["axis"] % xt.rank
    axes = list(range(axis, xt.rank))
    norm_shape = xt.shape[axis:]
    dt = xt.dtype

    def param(i: int, default: float) -> relax.Expr:
        if not e.has(i):
            return e.constant(np.full([int(d) for d in norm_shape], default, dt.np))
        if tuple(e.in_type(i).shape) == tuple(norm_shape):
            return e.x(i)
        c = e.const(i)
        if c is not None:
            return e.constant(np.broadcast_to(c, [int(d) for d in norm_shape]))
        return R.broadcast_to(e.x(i), [e.scope.dim(d) for d in norm_shape])

    y = R.nn.layer_norm(e.x(0), param(1, 1.0), param(2, 0.0), axes=axes, epsilon=e.attrs["epsilon"])
    used = [i for i in (1, 2) if i < len(e.node.outputs)
            and (e.node.outputs[i].num_uses or e.node.outputs[i].is_graph_output)]
    if not used:
        return y
    # the statistics, in the stash type (f32), as [..., 1, 1] like ONNX's
    st = e.attrs["stash_type"]
    x = _cast_to(e, e.x(0), dt, st)
    mean = e.emit(R.mean(x, axes, keepdims=True))
    var = R.mean(R.multiply(R.subtract(x, mean), R.subtract(x, mean)), axes, keepdims=True)
    inv = R.divide(e.scalar(1, st), R.sqrt(R.add(var, e.scalar(e.attrs["epsilon"], st))))
    outs = [y, mean, inv][: len(e.node.outputs)]
    return [o if i == 0 else _cast_to(e, o, st, e.out_type(i).dtype) for i, o in enumerate(outs)]


_POOLS = {
    ("max", 1): R.nn.max_pool1d, ("max", 2): R.nn.max_pool2d, ("max", 3): R.nn.max_pool3d,
    ("avg", 1): R.nn.avg_pool1d, ("avg", 2): R.nn.avg_pool2d, ("avg", 3): R.nn.avg_pool3d,
}


def _check_pool(node: Node, const: ConstOf) -> str | None:
    x = node.input(0)
    if x is not None and x.type.rank - 2 not in (1, 2, 3):
        return f"{x.type.rank - 2}-D pooling"
    if x is not None and not all(isinstance(d, int) for d in x.type.shape[2:]):
        return "pooling over symbolic spatial dims"
    return None


def _pool(e: Emit, kind: str):
    a = e.attrs
    xt = e.in_type(0)
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    ceil = bool(a["ceil_mode"])
    outs, begins, ends = window_geometry(xt.shape[2:], kernel, a, e.fail, ceil_mode=ceil)
    strides = list(a.get("strides") or [1] * n)
    dilations = list(a.get("dilations") or [1] * n)
    count_pad = bool(a.get("count_include_pad", 0))
    # ceil_mode: extend the end padding so the floor rule gives effc's (ONNX's) output
    # length; padded taps never win a max and are not counted by an average that
    # excludes padding. Averages that count padding keep TVM's ceil_mode.
    ends_ceil = list(ends)
    for i, (size, o, k, s, d, b) in enumerate(zip(xt.shape[2:], outs, kernel, strides, dilations, begins)):
        need = (int(o) - 1) * s + d * (k - 1) + 1 - (int(size) + b)
        ends_ceil[i] = max(ends[i], need)
    use_tvm_ceil = ceil and count_pad and ends_ceil != list(ends)
    pads = list(begins) + (list(ends) if use_tvm_ceil else ends_ceil)
    kwargs = dict(pool_size=kernel, strides=strides, padding=pads, dilation=dilations, ceil_mode=use_tvm_ceil)
    if kind == "avg":
        kwargs["count_include_pad"] = count_pad
    if isinstance(e, BlockedEmit):
        kwargs["layout"] = e.layout
    return _POOLS[(kind, n)](e.x(0), **kwargs)


@emitter("max_pool", check=_all(_check_pool, _unused_outputs(1, what="the Indices output")))
def _max_pool(e: Emit):
    return _pool(e, "max")


@emitter("average_pool", check=_check_pool)
def _average_pool(e: Emit):
    return _pool(e, "avg")


@emitter("global_average_pool")
def _global_average_pool(e: Emit):
    return R.mean(e.x(0), axis=list(range(2, e.in_type(0).rank)), keepdims=True)


@emitter("global_max_pool")
def _global_max_pool(e: Emit):
    # a channel of only -inf pools to -inf (onnxruntime gives -3.4e38 there, its max's
    # starting value: not a value of the input); NaN propagates (see aot_kernels.ieee_minmax)
    return _extremum(e, e.x(0), list(range(2, e.in_type(0).rank)), True, R.max, -np.inf)


@emitter("lrn")
def _lrn(e: Emit):
    """x / (bias + alpha/size * sum of x^2 over a window of ``size`` channels)^beta: the
    window sum is an average pool (padding counted, so sum = size * average) over a
    [N, 1, C, rest] view of x^2. TVM has no LRN operator in Relax. beta 0.75 (AlexNet,
    GoogLeNet) and 0.5 take reciprocal square roots instead of pow: Inception v1's LRN
    layers 2.1x faster, within 2e-7 relative."""
    a = e.attrs
    xt = e.in_type(0)
    x = e.x(0)
    size = int(a["size"])
    dims = [e.scope.dim(d) for d in xt.shape]
    rest = 1
    for d in dims[2:]:
        rest = rest * d
    sq = R.reshape(R.multiply(x, x), [dims[0], 1, dims[1], rest])
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    avg = R.nn.avg_pool2d(sq, pool_size=[size, 1], strides=[1, 1], padding=[before, 0, after, 0],
                          count_include_pad=True)
    base = R.add(e.scalar(a["bias"]), R.multiply(e.scalar(a["alpha"]), avg))
    beta = float(a["beta"])
    if beta in (0.5, 0.75):  # the usual betas: square roots, not pow (exp and log per element, 5x slower)
        inv = R.rsqrt(base)
        scale = inv if beta == 0.5 else R.multiply(inv, R.sqrt(inv))
        return R.multiply(x, R.reshape(scale, dims))
    return R.divide(x, R.reshape(R.power(base, e.scalar(beta)), dims))


def _check_dropout(node: Node, const: ConstOf) -> str | None:
    why = _needs_const(2, what="training_mode")(node, const)
    if why:
        return why
    t = const(node.input(2)) if node.input(2) is not None else None
    if t is not None and bool(np.asarray(t).reshape(-1)[0]):
        return "training mode (random; compile the model for inference)"
    return None


@emitter("dropout", check=_check_dropout, moves_data=True)
def _dropout(e: Emit):
    outs = [e.x(0)]
    if len(e.node.outputs) > 1:
        outs.append(R.ones(e.out_shape(1), "bool"))
    return outs


# ----------------------------------------------------------------------------- reductions


def _reduce_axes(e: Emit) -> list[int] | None:
    """Axes to reduce; None means 'no reduction' (noop_with_empty_axes)."""
    rank = e.in_type(0).rank
    axes = _axes(e, 1, rank) if e.has(1) else []
    if not axes:
        return None if e.attrs["noop_with_empty_axes"] else list(range(rank))
    return axes


def _reduction(fn: Callable[[Emit, relax.Expr, list[int], bool], relax.Expr]):
    def emit(e: Emit):
        axes = _reduce_axes(e)
        if axes is None:
            return e.x(0)
        xt = e.in_type(0)
        if any(xt.shape[a] == 0 for a in axes):
            # an empty set reduces to the identity (0, 1, -inf, ...): known without the data
            return e.constant(run_ref(e.node, [np.zeros([int(d) for d in xt.shape], xt.dtype.np), e.const(1)])[0])
        if xt.dtype is DType.bool:  # max = any, min = all
            y = fn(e, R.astype(e.x(0), "int8"), axes, bool(e.attrs["keepdims"]))
            return R.not_equal(y, e.scalar(0, DType.i8))
        return fn(e, e.x(0), axes, bool(e.attrs["keepdims"]))

    return emit


def _square(x: relax.Expr) -> relax.Expr:
    return R.multiply(x, x)


def _extremum(e: Emit, x: relax.Expr, axes: list[int], keep: bool, fn, inf: float) -> relax.Expr:
    """TVM's max (min) starts from the lowest (highest) finite value, so a set of only
    -inf (+inf) gives that value instead of the infinity; ONNX and numpy give the infinity."""
    r = fn(x, axes, keep)
    dt = e.in_type(0).dtype
    if not dt.is_float:
        return r
    # not `x != inf`: TVM compiles != on floats as an ordered compare, false for NaN
    finite_seen = R.max(R.astype(R.logical_not(R.equal(x, e.scalar(inf, dt))), "int8"), axes, keep)
    return R.where(R.equal(finite_seen, e.scalar(0, DType.i8)), e.scalar(inf, dt), r)


def _log_sum_exp(e: Emit, x: relax.Expr, axes: list[int], keep: bool) -> relax.Expr:
    """log(sum(exp(x - m))) + m with m the maximum, or 0 where the maximum is infinite:
    +inf in the set gives +inf and an all -inf set -inf (as onnxruntime and effc's
    reference), where shifting by an infinite m would give inf - inf = NaN."""
    m = e.emit(R.max(x, axes, True))
    dt = e.in_type(0).dtype
    if dt.is_float:  # finite: m - m == 0 (R.isfinite does not compile for C targets: fabs)
        m = e.emit(R.where(R.equal(R.subtract(m, m), e.scalar(0, dt)), m, e.scalar(0, dt)))
    s = R.log(R.sum(R.exp(R.subtract(x, m)), axes, keep))
    return R.add(s, m if keep else R.squeeze(m, axes))


_REDUCE = {
    "reduce_sum": lambda e, x, ax, k: R.sum(x, ax, k),
    "reduce_mean": lambda e, x, ax, k: R.mean(x, ax, k),
    "reduce_max": lambda e, x, ax, k: _extremum(e, x, ax, k, R.max, -np.inf),
    "reduce_min": lambda e, x, ax, k: _extremum(e, x, ax, k, R.min, np.inf),
    "reduce_prod": lambda e, x, ax, k: R.prod(x, ax, k),
    "reduce_l1": lambda e, x, ax, k: R.sum(R.abs(x), ax, k),
    "reduce_l2": lambda e, x, ax, k: R.sqrt(R.sum(_square(x), ax, k)),
    "reduce_sum_square": lambda e, x, ax, k: R.sum(_square(x), ax, k),
    "reduce_log_sum": lambda e, x, ax, k: R.log(R.sum(x, ax, k)),
    "reduce_log_sum_exp": _log_sum_exp,
}

for _name, _fn in _REDUCE.items():
    EMITTERS[_name] = Emitter(_reduction(_fn), _needs_const(1, what="axes"))


def _nan_first(e: Emit, x: relax.Expr, fn, axis: int, keep: bool) -> relax.Expr:
    """``fn`` (argmax/argmin) that points at the first NaN along ``axis`` when there is one,
    as numpy and effc's reference do, so ``x[ArgMax(x)]`` is ``ReduceMax(x)`` (NaN).

    onnxruntime is not followed here: its ArgMax/ArgMin (and its ReduceMax/Min) give the
    NaN only when it is the first element and skip it anywhere else (``[1, NaN, 3]`` ->
    2, ``[NaN, 1, 3]`` -> 0), so its answer depends on where the NaN sits: a bug, not a
    semantics. TVM's argmax compares with ``>`` and is order-dependent the same way."""
    dt = e.in_type(0).dtype
    if not dt.is_float:
        return fn(x, axis, keep)
    nan = e.emit(R.astype(R.isnan(x), "int8"))
    has_nan = R.greater(R.max(nan, [axis], keep), e.scalar(0, DType.i8))
    idx = e.emit(fn(x, axis, keep))
    # TVM's argmax (argmin) starts from (-1, lowest (highest) finite value) and keeps it on
    # ties: a set of only -inf (+inf) gave index -1. Then the answer is the first element
    # that is not that infinity, or 0 when there is none.
    inf = -np.inf if fn is R.argmax else np.inf
    not_inf = R.astype(R.logical_not(R.equal(x, e.scalar(inf, dt))), "int8")
    idx = R.where(R.less(idx, e.scalar(0, DType.i64)), R.argmax(not_inf, axis, keep), idx)
    return R.where(has_nan, R.argmax(nan, axis, keep), idx)


def _arg_reduce(e: Emit):
    a = e.attrs
    xt = e.in_type(0)
    axis = a["axis"] % xt.rank
    argf = R.argmax if e.node.op == "arg_max" else R.argmin

    def fn(v, ax, keep):
        return _nan_first(e, v, argf, ax, keep)

    x = e.x(0)
    if a["select_last_index"]:
        idx = fn(R.flip(x, axis), axis, bool(a["keepdims"]))
        dim = xt.shape[axis]
        return R.subtract(e.scalar(e.scope.dim(dim) - 1 if not isinstance(dim, int) else dim - 1, DType.i64),
                          R.astype(idx, "int64"))
    return R.astype(fn(x, axis, bool(a["keepdims"])), "int64")


def _check_arg_reduce(node: Node, const: ConstOf) -> str | None:
    x = node.input(0)
    a = node_attrs(node)
    if a["select_last_index"] and x is not None and not isinstance(x.type.shape[a["axis"] % x.type.rank], int):
        return "select_last_index over a symbolic axis"
    return None


EMITTERS["arg_max"] = Emitter(_arg_reduce, _check_arg_reduce)
EMITTERS["arg_min"] = Emitter(_arg_reduce, _check_arg_reduce)


# ----------------------------------------------------------------------------- tensor


def _check_reshape(node: Node, const: ConstOf) -> str | None:
    if 0 in node.outputs[0].type.shape:
        return "a zero-sized result (TVM's reshape reads a 0 dim as 'copy the input dim')"
    return None


@emitter("reshape", "flatten", "squeeze", "unsqueeze", check=_check_reshape, moves_data=True)
def _reshape(e: Emit):
    # effc inferred the result shape (from the constant shape/axes inputs): use it
    return R.reshape(e.x(0), e.out_shape())


@emitter("identity", moves_data=True)
def _identity(e: Emit):
    return e.x(0)


@emitter("transpose", moves_data=True)
def _transpose(e: Emit):
    perm = e.attrs["perm"]
    rank = e.in_type(0).rank
    return R.permute_dims(e.x(0), list(perm) if perm else list(range(rank))[::-1])


@emitter("concat", moves_data=True)
def _concat(e: Emit):
    xs = [e.x(i) for i in range(len(e.node.inputs))]
    return R.concat(xs, axis=e.attrs["axis"] % e.in_type(0).rank) if len(xs) > 1 else xs[0]


def _check_split(node: Node, const: ConstOf) -> str | None:
    x = node.input(0)
    if x is None:
        return None
    axis = node_attrs(node)["axis"] % max(x.type.rank, 1)
    if not all(isinstance(o.type.shape[axis], int) for o in node.outputs):
        return "split sizes along a symbolic axis"
    return None


@emitter("split", check=_check_split, moves_data=True)
def _split(e: Emit):
    axis = e.attrs["axis"] % e.in_type(0).rank
    sizes = [int(o.type.shape[axis]) for o in e.node.outputs]
    if len(sizes) == 1:
        return [e.x(0)]
    cuts = [int(c) for c in np.cumsum(sizes)[:-1]]
    if 0 in sizes:  # TVM's split wants strictly increasing cut points
        begins = [0] + cuts
        return [R.strided_slice(e.x(0), [axis], [b], [b + n]) for b, n in zip(begins, sizes)]
    parts = e.emit(R.split(e.x(0), cuts, axis=axis))
    return [relax.TupleGetItem(parts, i) for i in range(len(sizes))]


_INT64_MAX = 2**63 - 1


@emitter("slice", check=_needs_const(1, 2, 3, 4, what="starts/ends/axes/steps"), moves_data=True)
def _slice(e: Emit):
    xt = e.in_type(0)
    rank = xt.rank
    starts, ends = e.ints(1), e.ints(2)
    axes = e.ints(3) if e.has(3) else list(range(len(starts)))
    steps = e.ints(4) if e.has(4) else [1] * len(starts)
    b_axes, begins, stops, strides = [], [], [], []
    for ax, s, en, st in zip(axes, starts, ends, steps):
        ax %= rank
        dim = xt.shape[ax]
        if isinstance(dim, int):
            start, stop, step = slice(s, en, st).indices(dim)
            if step < 0 and stop < 0:
                stop = -dim - 1  # TVM: an end before the first element
            s, en = start, stop
        else:
            s = max(min(s, _INT64_MAX), -_INT64_MAX)
            en = max(min(en, _INT64_MAX), -_INT64_MAX)
        b_axes.append(ax)
        begins.append(s)
        stops.append(en)
        strides.append(st)
    return R.strided_slice(e.x(0), b_axes, begins, stops, strides)


def _const_indices(e: Emit, i: int, dim: int) -> relax.Expr | None:
    """Input ``i``'s indices when known at compile time, negatives wrapped; an index out of
    range is refused here, naming the node (onnxruntime refuses it too), so none is
    checked at run time."""
    c = e.const(i)
    if c is None or not isinstance(dim, int):
        return None
    idx = np.asarray(c).astype(np.int64)
    bad = idx[(idx < -dim) | (idx >= dim)]
    if bad.size:
        raise IndexOutOfRangeError(e.node.describe(), int(bad.reshape(-1)[0]), dim, where="constant indices of ",
                                   fix="the model itself is wrong (onnxruntime refuses it too): fix its indices")
    idx = np.where(idx < 0, idx + dim, idx)
    return e.constant(idx.astype(e.in_type(i).dtype.np))


def _safe(v: tirx.PrimExpr, n: tirx.PrimExpr) -> tirx.PrimExpr:
    """One index made safe: widened to int64, a negative one wrapped (ONNX), then clamped
    into [0, n), so a kernel that uses it stays inside the axis whatever the input holds
    (the check kernel reports the bad ones)."""
    v, n = v.astype("int64"), n.astype("int64")
    w = tirx.Select(v < 0, v + n, v)
    return tirx.max(tirx.min(w, n - 1), tirx.const(0, "int64"))


def _check_kernel(idx: te.Tensor, n: int | te.Tensor) -> te.Tensor:
    """One kernel: int64[3] ``[bad, first bad index, n]`` over all of ``idx`` (row-major
    first). A min-reduction finds the first bad position (``numel`` when none, also for
    empty indices); the value is read only when there is one."""
    dims = list(idx.shape)
    length = (n[0] if isinstance(n, te.Tensor) else tirx.const(n, "int64")).astype("int64")
    numel = tirx.const(1, "int64")
    for d in dims:
        numel = numel * d.astype("int64")
    axes = [te.reduce_axis((0, d), name=f"k{j}") for j, d in enumerate(dims)]
    pos = tirx.const(0, "int64")
    for d, k in zip(dims, axes):
        pos = pos * d.astype("int64") + k.var.astype("int64")
    if axes:
        v = idx(*[k.var for k in axes]).astype("int64")
        bad = tirx.Or(v < -length, v >= length)
        first = te.compute((1,), lambda _: te.min(tirx.Select(bad, pos, numel), axis=axes), name="first_bad")
    else:
        v = idx().astype("int64")
        bad = tirx.Or(v < -length, v >= length)
        first = te.compute((1,), lambda _: tirx.Select(bad, tirx.const(0, "int64"), numel), name="first_bad")

    def at(p: tirx.PrimExpr) -> tirx.PrimExpr:
        """``idx`` at row-major position ``p``."""
        ix = []
        for d in reversed(dims):
            ix.append(tirx.floormod(p, d.astype("int64")))
            p = tirx.floordiv(p, d.astype("int64"))
        return idx(*reversed(ix)).astype("int64")

    def status(k):
        found = first[0] < numel
        value = tirx.if_then_else(found, at(tirx.min(first[0], numel - 1)), tirx.const(0, "int64"))
        return tirx.Select(k == 0, found.astype("int64"), tirx.Select(k == 1, value, length))

    return te.compute((3,), status, name="index_status")


def _record_check(e: Emit, i: int, axis: int) -> None:
    """Adds the check of input ``i``'s indices against data's ``axis`` to the function's
    checks (``Scope.checks``), which ``main`` returns for the runtime to raise from."""
    if e.scope.checks is None:
        return
    dim = e.in_type(0).shape[axis]
    if isinstance(dim, int):
        status = e.bb.emit_te(lambda t: _check_kernel(t, dim), e.x(i), primfunc_name_hint="index_check")
    else:
        n = R.strided_slice(R.shape_to_tensor(R.shape_of(e.x(0))), [0], [axis], [axis + 1])
        status = e.bb.emit_te(_check_kernel, e.x(i), e.emit(n), primfunc_name_hint="index_check")
    e.scope.checks.append((status, e.node.describe()))


def _checked_take(x: te.Tensor, idx: te.Tensor, axis: int) -> te.Tensor:
    """Gather along ``axis`` with every index made safe inside the same loop (one kernel)."""
    r = len(idx.shape)
    shape = list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:])

    def f(*i):
        return x(*i[:axis], _safe(idx(*i[axis:axis + r]), x.shape[axis]), *i[axis + r:])

    return te.compute(shape, f, name="checked_take")


def _checked_gather_elements(x: te.Tensor, idx: te.Tensor, axis: int) -> te.Tensor:
    def f(*i):
        return x(*i[:axis], _safe(idx(*i), x.shape[axis]), *i[axis + 1:])

    return te.compute(list(idx.shape), f, name="checked_gather_elements")


def _safe_indices(idx: te.Tensor, n: int) -> te.Tensor:
    return te.compute(list(idx.shape), lambda *i: _safe(idx(*i), tirx.const(n, "int64")), name="safe_indices")


@emitter("gather", moves_data=True)
def _gather(e: Emit):
    xt = e.in_type(0)
    axis = e.attrs["axis"] % xt.rank
    idx = _const_indices(e, 1, xt.shape[axis])
    if idx is not None:
        return R.take(e.x(0), idx, axis=axis, mode="fast")
    if not e.scope.index_checks:  # the unchecked lowering (bench/bounds_checks.py)
        return R.take(e.x(0), e.x(1), axis=axis, mode="wrap")
    _record_check(e, 1, axis)
    return e.bb.emit_te(_checked_take, e.x(0), e.x(1), axis, primfunc_name_hint="checked_take")


def _wrap_negative(e: Emit, idx: relax.Expr, dim, dtype: DType) -> relax.Expr:
    d = e.scalar(dim, dtype) if isinstance(dim, int) else R.astype(
        R.strided_slice(R.shape_to_tensor(R.shape_of(idx)), [0], [0], [1]), relax_dtype(dtype))
    return R.where(R.less(idx, e.scalar(0, dtype)), R.add(idx, d), idx)


def _check_static_axis(node: Node, const: ConstOf) -> str | None:
    x = node.input(0)
    if x is None:
        return None
    axis = node_attrs(node)["axis"] % max(x.type.rank, 1)
    if not isinstance(x.type.shape[axis], int):
        return "indexing along a symbolic axis"
    return None


def _element_indices(e: Emit) -> tuple[int, relax.Expr]:
    """(axis, indices with negatives wrapped, run-time ones clamped and checked) of
    ScatterElements (and GatherElements with constant indices): TVM's kernels for them do
    no bounds checks."""
    xt = e.in_type(0)
    axis = e.attrs["axis"] % xt.rank
    idx = _const_indices(e, 1, xt.shape[axis])
    if idx is not None:
        return axis, idx
    if not e.scope.index_checks:  # the unchecked lowering (bench/bounds_checks.py)
        return axis, _wrap_negative(e, e.x(1), xt.shape[axis], e.in_type(1).dtype)
    _record_check(e, 1, axis)
    return axis, e.bb.emit_te(_safe_indices, e.x(1), int(xt.shape[axis]), primfunc_name_hint="safe_indices")


@emitter("gather_elements", check=_check_static_axis, moves_data=True)
def _gather_elements(e: Emit):
    xt = e.in_type(0)
    axis = e.attrs["axis"] % xt.rank
    if e.const(1) is None and e.scope.index_checks:
        _record_check(e, 1, axis)
        return e.bb.emit_te(_checked_gather_elements, e.x(0), e.x(1), axis,
                            primfunc_name_hint="checked_gather_elements")
    axis, idx = _element_indices(e)
    return R.gather_elements(e.x(0), idx, axis=axis)


_SCATTER_REDUCTIONS = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


@emitter("scatter_elements", check=_check_static_axis, moves_data=True)
def _scatter_elements(e: Emit):
    axis, idx = _element_indices(e)
    return R.scatter_elements(e.x(0), idx, e.x(2), axis=axis, reduction=_SCATTER_REDUCTIONS[e.attrs["reduction"]])


@emitter("shape", moves_data=True)
def _shape(e: Emit):
    xt = e.in_type(0)
    rank = xt.rank
    start, end = e.attrs["start"], e.attrs["end"]
    end = rank if end is None else end
    start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
    dims = xt.shape[start:end]
    if all(isinstance(d, int) for d in dims):
        return e.constant(np.array(dims, dtype=np.int64))
    full = R.shape_to_tensor(R.shape_of(e.x(0)))
    return full if (start, end) == (0, rank) else R.strided_slice(full, [0], [start], [end])


@emitter("size", moves_data=True)
def _size(e: Emit):
    n = e.in_type(0).numel()
    if n is not None:
        return e.constant(np.array(n, dtype=np.int64))
    return R.prod(R.shape_to_tensor(R.shape_of(e.x(0))))


@emitter("constant_of_shape", moves_data=True)
def _constant_of_shape(e: Emit):
    value = np.asarray(e.attrs["value"]).reshape(-1)[0]
    dt = e.out_type().dtype
    return R.full(e.out_shape(), e.constant(np.array(value, dtype=dt.np)), relax_dtype(dt))


@emitter("expand", moves_data=True)
def _expand(e: Emit):
    return R.broadcast_to(e.x(0), e.out_shape())


@emitter("tile", check=_needs_const(1, what="repeats"), moves_data=True)
def _tile(e: Emit):
    return R.tile(e.x(0), e.ints(1))


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _check_pad(node: Node, const: ConstOf) -> str | None:
    why = _needs_const(1, 2, 3, what="pads/constant_value/axes")(node, const)
    if why:
        return why
    pads = const(node.input(1))
    if pads is not None and (np.asarray(pads) < 0).any():
        return "negative pads (cropping)"
    return None


@emitter("pad", check=_check_pad, moves_data=True)
def _pad(e: Emit):
    xt = e.in_type(0)
    rank = xt.rank
    pads = e.ints(1)
    axes = [a % rank for a in e.ints(3)] if e.has(3) else list(range(rank))
    n = len(axes)
    width = [0] * (2 * rank)
    for k, ax in enumerate(axes):
        width[2 * ax], width[2 * ax + 1] = pads[k], pads[n + k]
    value = e.const(2)
    fill = float(np.asarray(value).reshape(-1)[0]) if value is not None and np.asarray(value).size else 0.0
    mode = _PAD_MODES[e.attrs["mode"]]
    if mode == "constant":
        return R.nn.pad(e.x(0), width, "constant", fill)
    return R.nn.pad(e.x(0), width, mode)


def _check_static_4d(node: Node, const: ConstOf) -> str | None:
    x = node.input(0)
    if x is not None and (x.type.rank != 4 or not all(isinstance(d, int) for d in x.type.shape[1:])):
        return "needs a 4-D input with static C, H, W"
    return None


@emitter("depth_to_space", check=_check_static_4d, moves_data=True)
def _depth_to_space(e: Emit):
    n, c, h, w = (e.scope.dim(d) for d in e.in_type(0).shape)
    b = int(e.attrs["blocksize"])
    if e.attrs["mode"] == "DCR":
        y = R.reshape(e.x(0), [n, b, b, c // (b * b), h, w])
        y = R.permute_dims(y, [0, 3, 4, 1, 5, 2])
    else:
        y = R.reshape(e.x(0), [n, c // (b * b), b, b, h, w])
        y = R.permute_dims(y, [0, 1, 4, 2, 5, 3])
    return R.reshape(y, e.out_shape())


@emitter("space_to_depth", check=_check_static_4d, moves_data=True)
def _space_to_depth(e: Emit):
    n, c, h, w = (e.scope.dim(d) for d in e.in_type(0).shape)
    b = int(e.attrs["blocksize"])
    y = R.reshape(e.x(0), [n, c, h // b, b, w // b, b])
    y = R.permute_dims(y, [0, 3, 5, 1, 2, 4])
    return R.reshape(y, e.out_shape())


@emitter("trilu", check=_needs_const(1, what="k"), moves_data=True)
def _trilu(e: Emit):
    k = e.ints(1)[0] if e.has(1) else 0
    return R.triu(e.x(0), k) if e.attrs["upper"] else R.tril(e.x(0), k)


@emitter("cum_sum", check=_needs_const(1, what="axis"))
def _cum_sum(e: Emit):
    axis = e.ints(1)[0] % e.in_type(0).rank
    x = e.x(0)
    if e.attrs["reverse"]:
        x = R.flip(x, axis)
    y = R.cumsum(x, axis=axis, exclusive=bool(e.attrs["exclusive"]))
    return R.flip(e.emit(y), axis) if e.attrs["reverse"] else y


@emitter("range", check=_needs_const(0, 1, 2, what="start/limit/delta"), moves_data=True)
def _range(e: Emit):
    start, limit, delta = (np.asarray(e.const(i)).reshape(()) for i in range(3))
    return e.constant(np.arange(start, limit, delta).astype(e.out_type().dtype.np))


@emitter("one_hot", check=_needs_const(1, 2, what="depth/values"))
def _one_hot(e: Emit):
    depth = int(np.asarray(e.const(1)).reshape(-1)[0])
    off, on = np.asarray(e.const(2)).reshape(-1)[:2]
    dt = e.out_type().dtype
    it = e.in_type(0).dtype
    idx = e.x(0)
    if it.is_float:
        idx = R.astype(idx, "int64")
        it = DType.i64
    idx = _wrap_negative(e, idx, depth, it)
    return R.one_hot(idx, _prim(on, dt), _prim(off, dt), depth, axis=e.attrs["axis"] % (e.in_type(0).rank + 1))


def _check_top_k(node: Node, const: ConstOf) -> str | None:
    if node.input(0) is not None and node.input(0).type.dtype is DType.u64:
        return "uint64 input (TVM's topk has no uint64 kernel)"
    return _needs_const(1, what="K")(node, const)


@emitter("top_k", check=_check_top_k)
def _top_k(e: Emit):
    k = int(np.asarray(e.const(1)).reshape(-1)[0])
    out = e.emit(R.topk(e.x(0), k=k, axis=e.attrs["axis"], ret_type="both", largest=bool(e.attrs["largest"]),
                        dtype="int64"))
    return [relax.TupleGetItem(out, 0), relax.TupleGetItem(out, 1)]


_RESIZE_METHODS = {"nearest": "nearest_neighbor", "linear": "linear", "cubic": "cubic"}
_RESIZE_COORDS = ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel", "tf_crop_and_resize")


def _resize_scales(node: Node, const: ConstOf) -> list[float] | None:
    """The per-axis scales ONNX uses for the coordinate transform: the ``scales`` input,
    else output/input length (``sizes`` with the stretch policy)."""
    x, out = node.input(0).type, node.outputs[0].type
    scales = const(node.input(2)) if node.input(2) is not None else None
    if scales is not None and np.asarray(scales).size:
        axes = node_attrs(node)["axes"] or tuple(range(x.rank))
        full = [1.0] * x.rank
        for a, sc in zip(axes, np.asarray(scales, dtype=np.float64).reshape(-1)):
            full[a % x.rank] = float(sc)
        return full
    if not all(isinstance(d, int) for d in (*x.shape, *out.shape)):
        return None
    return [o / i if i else 1.0 for i, o in zip(x.shape, out.shape)]


def _check_resize(node: Node, const: ConstOf) -> str | None:
    a = node_attrs(node)
    x, out = node.input(0).type, node.outputs[0].type
    if x.rank != 4 or not all(isinstance(d, int) for d in (*x.shape[2:], *out.shape[2:])):
        return "only 4-D NCHW inputs with static H, W"
    if tuple(x.shape[:2]) != tuple(out.shape[:2]):
        return "resizing N or C"
    for i, name in ((1, "roi"), (2, "scales"), (3, "sizes")):
        if node.input(i) is not None and const(node.input(i)) is None:
            return f"{name} must be known at compile time"
    if a["antialias"]:
        return "antialias"
    if a["mode"] not in _RESIZE_METHODS or a["coordinate_transformation_mode"] not in _RESIZE_COORDS:
        return f"mode {a['mode']} with coordinate_transformation_mode {a['coordinate_transformation_mode']}"
    scales = _resize_scales(node, const)
    pairs = zip(scales[2:], x.shape[2:], out.shape[2:]) if scales is not None else ()
    if scales is None or any(abs(sc * i - o) > 1e-6 * max(o, 1) for sc, i, o in pairs):
        # TVM maps coordinates with output/input; ONNX with the given scale
        return "a scale that does not give a whole output length (scale * length != output length)"
    return None


@emitter("resize", check=_check_resize)
def _resize(e: Emit):
    a = e.attrs
    ctm = a["coordinate_transformation_mode"]
    roi = None
    if ctm == "tf_crop_and_resize":
        r = np.asarray(e.const(1), dtype=np.float64).reshape(-1)
        rank = e.in_type(0).rank
        axes = list(a["axes"] or range(rank))
        starts, ends = [0.0] * rank, [1.0] * rank
        for k, ax in enumerate(axes):
            starts[ax % rank], ends[ax % rank] = float(r[k]), float(r[len(axes) + k])
        roi = (starts[2], starts[3], ends[2], ends[3])
    rounding = a["nearest_mode"] if a["mode"] == "nearest" else ""
    size = [int(d) for d in e.out_type().shape[2:]]
    return R.image.resize2d(e.x(0), size, roi=roi, method=_RESIZE_METHODS[a["mode"]],
                            coordinate_transformation_mode=ctm, rounding_method=rounding,
                            cubic_alpha=a["cubic_coeff_a"], cubic_exclude=a["exclude_outside"],
                            extrapolation_value=a["extrapolation_value"])


UNSUPPORTED_REASONS = {
    "non_zero": "its output shape depends on the data",
}


from . import relax_quant  # noqa: E402,F401  (the integer ops' emitters register themselves)
