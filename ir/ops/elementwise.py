"""Elementwise ops: activations, arithmetic, comparisons, logic, casts and linear (de)quantization.

Every op holds its opset-21 ONNX form. Float16/bfloat16 inputs of transcendental functions are
computed in float32 and rounded back once, like onnxruntime does; integer arithmetic wraps
like C (numpy's fixed-width integers do), and integer division truncates toward zero."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..opdef import InferCtx, OpDef, UpgradeCtx, attr, register
from ..shapes import broadcast_shapes, is_known, norm_axis, unidirectional_ok
from ..types import DType, TensorType
from ._common import FLOATS, binary, drop_legacy_broadcast, same_as_input, unary

# ----------------------------------------------------------------------------- dtype groups

SIGNED_INTS = (DType.i8, DType.i16, DType.i32, DType.i64)
UNSIGNED_INTS = (DType.u8, DType.u16, DType.u32, DType.u64)
INTS = SIGNED_INTS + UNSIGNED_INTS
NUMERIC = FLOATS + INTS
SIGNED = FLOATS + SIGNED_INTS
BOOL = (DType.bool,)
ALL = NUMERIC + BOOL

# ONNX TensorProto.DataType numbers of the dtypes effc has (for int-valued dtype attributes).
_ONNX_DTYPES = {1: DType.f32, 2: DType.u8, 3: DType.i8, 4: DType.u16, 5: DType.i16, 6: DType.i32,
                7: DType.i64, 9: DType.bool, 10: DType.f16, 11: DType.f64, 12: DType.u32, 13: DType.u64,
                16: DType.bf16}
_ONNX_DTYPE_NAMES = {8: "string", 14: "complex64", 15: "complex128", 17: "float8e4m3fn", 18: "float8e4m3fnuz",
                     19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1",
                     24: "float8e8m0", 25: "uint2", 26: "int2"}


def _check_dtype(ctx: InferCtx, i: int, allowed: Sequence[DType], what: str = "") -> TensorType:
    t = ctx.type(i)
    if t.dtype not in allowed:
        name = what or f"input {i}"
        raise ctx.fail(f"{name} has dtype {t.dtype}; this op takes {', '.join(str(d) for d in allowed)}")
    return t


def _broadcast(ctx: InferCtx, shapes: Sequence[Sequence]) -> tuple:
    try:
        return broadcast_shapes(*shapes)
    except Exception as e:
        raise ctx.fail(str(e)) from None


def _work(x: np.ndarray) -> np.ndarray:
    """The array to compute a float function in: float16/bfloat16 widen to float32."""
    if x.dtype.kind == "f" and x.dtype.itemsize >= 4:
        return x
    if DType.from_numpy(x.dtype).is_float:
        return x.astype(np.float32)
    return x.astype(np.float64)


def _drop_consumed_inputs(ctx: UpgradeCtx) -> None:
    """Opsets < 6 carried a ``consumed_inputs`` attribute on many ops; it has no meaning."""
    ctx.attrs.pop("consumed_inputs", None)


# ----------------------------------------------------------------------------- erf

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorized error function in float64, within a few ulp of libm.

    |x| < 3: the everywhere-positive series erf(x) = 2/sqrt(pi) e^{-x^2} sum (2x^2)^n x / (2n+1)!!
    (no cancellation); |x| >= 3: the continued fraction of erfc, evaluated from a fixed depth."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.ones_like(a)
    small = a < 3.0
    s = a[small]
    if s.size:
        x2 = s * s
        term, total = s.copy(), s.copy()
        n = 0
        while True:
            n += 1
            term *= 2.0 * x2 / (2 * n + 1)
            total += term
            if not (term > 1e-17 * total).any():
                break
        out[small] = _TWO_OVER_SQRT_PI * np.exp(-x2) * total
    big = ~small & (a < 7.0)  # erf(7) rounds to 1 in float64
    b = a[big]
    if b.size:
        t = b.copy()
        for k in range(60, 0, -1):
            t = b + (0.5 * k) / t
        out[big] = 1.0 - np.exp(-b * b) / (math.sqrt(math.pi) * t)
    out[np.isnan(x)] = np.nan
    return np.copysign(out, x)


# ----------------------------------------------------------------------------- unary helpers


def _unary(name: str, onnx_name: str, fn: Callable[[np.ndarray, dict], np.ndarray], allowed: Sequence[DType], *,
           attrs: dict | None = None, op_class: str = "elementwise", traits: tuple[str, ...] = (),
           min_opset: int = 1, upgrade: Callable[[UpgradeCtx], None] | None = _drop_consumed_inputs) -> OpDef:
    """``unary`` over the given dtypes, dropping inputs older opsets had."""
    return unary(name, onnx_name, fn, attrs=attrs, op_class=op_class, traits=traits, min_opset=min_opset,
                 upgrade=upgrade, check=lambda ctx: _check_dtype(ctx, 0, allowed))


def _float_fn(f: Callable[..., np.ndarray]) -> Callable[[np.ndarray, dict], np.ndarray]:
    """A float function applied in the working precision (see ``_work``)."""
    return lambda x, a: f(_work(x))


def _activation(name: str, onnx_name: str, f: Callable[[np.ndarray, dict], np.ndarray], *,
                attrs: dict | None = None, min_opset: int = 1) -> OpDef:
    return unary(name, onnx_name, lambda x, a: f(_work(x), a), attrs=attrs, op_class="activation",
                 traits=("activation",), min_opset=min_opset, upgrade=_drop_consumed_inputs)


def _c(a: np.ndarray, v: float) -> np.ndarray:
    """An attribute constant in the computing dtype of ``a``."""
    return np.asarray(v, dtype=a.dtype)


def _gelu(x: np.ndarray, a: dict) -> np.ndarray:
    mode = a["approximate"]
    if mode == "tanh":
        k = math.sqrt(2.0 / math.pi)
        return 0.5 * x * (1.0 + np.tanh(_c(x, k) * (x + _c(x, 0.044715) * x * x * x)))
    return (0.5 * x.astype(np.float64) * (1.0 + erf(x.astype(np.float64) / math.sqrt(2.0)))).astype(x.dtype)


def _gelu_infer_check(ctx: InferCtx) -> list[TensorType]:
    if ctx.attrs["approximate"] not in ("none", "tanh"):
        raise ctx.fail(f"approximate='{ctx.attrs['approximate']}' is not one of 'none', 'tanh'")
    _check_dtype(ctx, 0, FLOATS)
    return same_as_input(ctx)


# ----------------------------------------------------------------------------- activations

# NaN and infinities (issue 9): Relu, LeakyRelu, HardSigmoid, HardSwish, Clip, Max and Min
# propagate NaN (np.maximum/np.minimum, never np.fmax/np.fmin), as onnxruntime does and as
# IEEE 754-2019 maximum/minimum say; +-inf are ordinary values (Relu(-inf) = 0, Clip(inf,
# 0, 6) = 6). Compiled kernels get the same through codegen.aot_kernels.ieee_minmax.
# A NaN Clip bound makes every element NaN here (np.maximum(x, NaN)); onnxruntime ignores
# a NaN bound instead, a case no model has, left as it is.
_unary("relu", "Relu", lambda x, a: np.maximum(x, np.zeros((), x.dtype)), SIGNED, op_class="activation",
       traits=("activation",))
_activation("leaky_relu", "LeakyRelu", lambda x, a: np.where(x >= 0, x, _c(x, a["alpha"]) * x),
            attrs={"alpha": attr("float", 0.01)})
_activation("sigmoid", "Sigmoid", lambda x, a: _sigmoid(x))
_activation("hard_sigmoid", "HardSigmoid",
            lambda x, a: np.clip(_c(x, a["alpha"]) * x + _c(x, a["beta"]), 0, 1),
            attrs={"alpha": attr("float", 0.2), "beta": attr("float", 0.5)})
_activation("hard_swish", "HardSwish", lambda x, a: x * np.clip(x / _c(x, 6.0) + _c(x, 0.5), 0, 1), min_opset=14)
_activation("tanh", "Tanh", lambda x, a: np.tanh(x))
_activation("elu", "Elu", lambda x, a: np.where(x < 0, _c(x, a["alpha"]) * np.expm1(np.minimum(x, 0)), x),
            attrs={"alpha": attr("float", 1.0)})
_activation("selu", "Selu",
            lambda x, a: _c(x, a["gamma"]) * np.where(x > 0, x, _c(x, a["alpha"]) * np.expm1(np.minimum(x, 0))),
            attrs={"alpha": attr("float", 1.6732631921768188), "gamma": attr("float", 1.0507010221481323)})
_activation("softplus", "Softplus", lambda x, a: np.logaddexp(np.zeros((), x.dtype), x))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so exp never overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


register(OpDef("gelu", "Gelu", ("X",), ("Y",), _gelu_infer_check,
               lambda ins, a, n: [np.asarray(_gelu(_work(ins[0]), a)).astype(ins[0].dtype, copy=False)],
               attrs={"approximate": attr("str", "none")}, traits=frozenset(("elementwise", "activation")),
               op_class="activation", min_opset=20))


# PRelu: the slope broadcasts to X (unidirectional), the output has X's shape.

def _prelu_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, FLOATS + (DType.i32, DType.i64, DType.u32, DType.u64), "X")
    s = ctx.type(1)
    if s.dtype != x.dtype:
        raise ctx.fail(f"slope has dtype {s.dtype}, X has {x.dtype}; they must match")
    if not unidirectional_ok(x.shape, s.shape):
        raise ctx.fail(f"slope shape {list(s.shape)} does not broadcast to X's shape {list(x.shape)}")
    return [TensorType(x.dtype, x.shape)]


def _prelu_ref(ins: list, a: dict, n: int) -> list:
    x, slope = ins
    return [np.where(x < 0, x * slope, x).astype(x.dtype, copy=False)]


register(OpDef("prelu", "PRelu", ("X", "slope"), ("Y",), _prelu_infer, _prelu_ref,
               traits=frozenset(("elementwise", "activation")), op_class="activation",
               upgrade=_drop_consumed_inputs))


# Clip: min and max are optional scalar inputs (attributes before opset 11).

def _clip_upgrade(ctx: UpgradeCtx) -> None:
    _drop_consumed_inputs(ctx)
    if "min" not in ctx.attrs and "max" not in ctx.attrs:
        return
    x = ctx.inputs[0]
    dtype = x.type.dtype.np if x is not None else np.float32
    lo, hi = ctx.attrs.pop("min", None), ctx.attrs.pop("max", None)
    ctx.inputs = [x,
                  None if lo is None else ctx.add_const(np.array(lo, dtype=dtype)),
                  None if hi is None else ctx.add_const(np.array(hi, dtype=dtype))]


def _clip_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, NUMERIC, "input")
    for i, what in ((1, "min"), (2, "max")):
        if ctx.has(i):
            t = ctx.type(i)
            if t.dtype != x.dtype:
                raise ctx.fail(f"{what} has dtype {t.dtype}, the input has {x.dtype}; they must match")
            one_element = t.rank == 1 and (t.shape[0] == 1 or not is_known(t.shape[0]))
            if t.rank != 0 and not one_element:
                raise ctx.fail(f"{what} must be a scalar, got shape {list(t.shape)}")
    return [TensorType(x.dtype, x.shape)]


def _clip_ref(ins: list, a: dict, n: int) -> list:
    x = ins[0]
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    y = x
    if lo is not None:
        y = np.maximum(y, lo.reshape(()))
    if hi is not None:
        y = np.minimum(y, hi.reshape(()))  # min > max gives max everywhere, as ONNX says
    return [np.asarray(y).astype(x.dtype, copy=False)]


register(OpDef("clip", "Clip", ("input", "min?", "max?"), ("output",), _clip_infer, _clip_ref,
               traits=frozenset(("elementwise", "activation")), op_class="activation", upgrade=_clip_upgrade))


# ----------------------------------------------------------------------------- unary math

_unary("erf", "Erf", lambda x, a: erf(x), NUMERIC, min_opset=9)
_unary("sqrt", "Sqrt", _float_fn(np.sqrt), FLOATS)
_unary("exp", "Exp", _float_fn(np.exp), FLOATS)
_unary("log", "Log", _float_fn(np.log), FLOATS)
_unary("reciprocal", "Reciprocal", _float_fn(np.reciprocal), FLOATS)
_unary("sin", "Sin", _float_fn(np.sin), FLOATS, min_opset=7)
_unary("cos", "Cos", _float_fn(np.cos), FLOATS, min_opset=7)
_unary("floor", "Floor", _float_fn(np.floor), FLOATS)
_unary("ceil", "Ceil", _float_fn(np.ceil), FLOATS)
_unary("round", "Round", _float_fn(np.rint), FLOATS, min_opset=11)  # halves to even
_unary("neg", "Neg", lambda x, a: np.negative(x), SIGNED)
_unary("abs", "Abs", lambda x, a: x if x.dtype.kind == "u" else np.abs(x), NUMERIC)
_unary("sign", "Sign", lambda x, a: np.sign(_work(x) if x.dtype.kind not in "iu" else x), NUMERIC, min_opset=9)
_unary("not", "Not", lambda x, a: np.logical_not(x), BOOL)


def _is_nan_infer(ctx: InferCtx) -> list[TensorType]:
    t = _check_dtype(ctx, 0, FLOATS)
    return [TensorType(DType.bool, t.shape)]


def _is_inf_ref(ins: list, a: dict, n: int) -> list:
    x = _work(ins[0])
    pos = np.isposinf(x) if a["detect_positive"] else np.zeros(x.shape, bool)
    neg = np.isneginf(x) if a["detect_negative"] else np.zeros(x.shape, bool)
    return [pos | neg]


register(OpDef("is_nan", "IsNaN", ("X",), ("Y",), _is_nan_infer, lambda ins, a, n: [np.isnan(_work(ins[0]))],
               traits=frozenset(("elementwise",)), min_opset=9))
register(OpDef("is_inf", "IsInf", ("X",), ("Y",), _is_nan_infer, _is_inf_ref,
               attrs={"detect_negative": attr("int", 1), "detect_positive": attr("int", 1)},
               traits=frozenset(("elementwise",)), min_opset=10))


# ----------------------------------------------------------------------------- binary arithmetic

def _div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.dtype.kind in "iu":
        # C semantics: the quotient truncates toward zero (numpy's // floors). Division by
        # zero is undefined in ONNX; numpy gives 0.
        q = np.floor_divide(x, y)
        if x.dtype.kind == "i":
            r = np.remainder(x, y)
            q = q + ((r != 0) & ((x < 0) ^ (y < 0))).astype(q.dtype)
        return q
    return np.divide(x, y)


binary("add", "Add", np.add, traits=("commutative",), allowed=NUMERIC, upgrade=drop_legacy_broadcast)
binary("sub", "Sub", np.subtract, allowed=NUMERIC, upgrade=drop_legacy_broadcast)
binary("mul", "Mul", np.multiply, traits=("commutative",), allowed=NUMERIC, upgrade=drop_legacy_broadcast)
binary("div", "Div", _div, allowed=NUMERIC, upgrade=drop_legacy_broadcast)

binary("equal", "Equal", np.equal, out_dtype=DType.bool, traits=("commutative",), allowed=ALL,
       upgrade=drop_legacy_broadcast)
binary("less", "Less", np.less, out_dtype=DType.bool, allowed=NUMERIC, upgrade=drop_legacy_broadcast)
binary("greater", "Greater", np.greater, out_dtype=DType.bool, allowed=NUMERIC, upgrade=drop_legacy_broadcast)
binary("less_or_equal", "LessOrEqual", np.less_equal, out_dtype=DType.bool, allowed=NUMERIC, min_opset=12)
binary("greater_or_equal", "GreaterOrEqual", np.greater_equal, out_dtype=DType.bool, allowed=NUMERIC, min_opset=12)
binary("and", "And", np.logical_and, traits=("commutative",), allowed=BOOL, upgrade=drop_legacy_broadcast)
binary("or", "Or", np.logical_or, traits=("commutative",), allowed=BOOL, upgrade=drop_legacy_broadcast)
binary("xor", "Xor", np.logical_xor, traits=("commutative",), allowed=BOOL, upgrade=drop_legacy_broadcast)


# Mod: integer or float remainder; fmod=0 takes the divisor's sign (Python %), fmod=1 the
# dividend's (C fmod).

def _mod_infer(ctx: InferCtx) -> list[TensorType]:
    a, b = _check_dtype(ctx, 0, NUMERIC, "A"), ctx.type(1)
    if a.dtype != b.dtype:
        raise ctx.fail(f"operand dtypes differ: {a.dtype} and {b.dtype}")
    if ctx.attrs["fmod"] not in (0, 1):
        raise ctx.fail(f"fmod must be 0 or 1, got {ctx.attrs['fmod']}")
    return [TensorType(a.dtype, _broadcast(ctx, (a.shape, b.shape)))]


def _mod_ref(ins: list, a: dict, n: int) -> list:
    x, y = ins
    if a["fmod"]:
        r = np.fmod(x, y) if x.dtype.kind in "iu" else np.fmod(_work(x), _work(y))
    elif x.dtype.kind in "iu":
        r = np.mod(x, y)
    else:
        r = _float_mod(_work(x), _work(y))
    return [np.asarray(r).astype(x.dtype, copy=False)]


def _float_mod(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x - floor(x / y) * y with ONNX's special cases: the result takes y's sign, a finite x
    with an infinite y of the other sign gives y."""
    r = np.fmod(x, y)
    fix = (r != 0) & ((r < 0) != (y < 0))
    r = np.where(fix, r + y, r)
    r = np.where(r == 0, np.copysign(np.zeros((), r.dtype), y), r)
    return r


register(OpDef("mod", "Mod", ("A", "B"), ("C",), _mod_infer, _mod_ref, attrs={"fmod": attr("int", 0)},
               traits=frozenset(("elementwise",)), op_class="elementwise", min_opset=10))


# Pow: the exponent may have another dtype than the base; the result has the base's dtype.

_POW_BASE = FLOATS + (DType.i32, DType.i64)


def _pow_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, _POW_BASE, "base X")
    y = _check_dtype(ctx, 1, NUMERIC, "exponent Y")
    return [TensorType(x.dtype, _broadcast(ctx, (x.shape, y.shape)))]


def _pow_ref(ins: list, a: dict, n: int) -> list:
    x, y = ins
    if x.dtype.kind in "iu" and y.dtype.kind in "iu":
        # Integer power; a negative exponent gives 1/x^-y truncated: 0 unless |x| == 1.
        xi, yi = x.astype(np.int64), y.astype(np.int64)
        r = np.power(xi, np.maximum(yi, 0))
        neg = yi < 0
        if neg.any():
            r = np.where(neg, np.where(xi == 1, 1, np.where(xi == -1, np.where(yi % 2 == 0, 1, -1), 0)), r)
        return [r.astype(x.dtype)]
    base = _work(x)  # integer bases compute in float64 and truncate back
    exp = y.astype(base.dtype) if y.dtype.kind in "iu" else _work(y)
    common = np.promote_types(base.dtype, exp.dtype)
    r = np.power(base.astype(common, copy=False), exp.astype(common, copy=False))
    return [np.asarray(r).astype(x.dtype)]


register(OpDef("pow", "Pow", ("X", "Y"), ("Z",), _pow_infer, _pow_ref, traits=frozenset(("elementwise",)),
               op_class="elementwise", upgrade=drop_legacy_broadcast))


# ----------------------------------------------------------------------------- variadic


def _variadic(name: str, onnx_name: str, fn: Callable[[list[np.ndarray]], np.ndarray], allowed: Sequence[DType],
              traits: tuple[str, ...] = ("commutative",)) -> OpDef:
    """Min/Max/Sum/Mean: one or more inputs of one dtype, broadcast together."""

    def infer(ctx: InferCtx) -> list[TensorType]:
        if not ctx.types:
            raise ctx.fail("takes at least one input, got none")
        t0 = _check_dtype(ctx, 0, allowed)
        for i in range(1, len(ctx.types)):
            t = ctx.type(i)
            if t.dtype != t0.dtype:
                raise ctx.fail(f"input {i} has dtype {t.dtype}, input 0 has {t0.dtype}; they must match")
        return [TensorType(t0.dtype, _broadcast(ctx, [t.shape for t in ctx.types]))]

    def ref(ins: list, a: dict, n: int) -> list:
        xs = [x for x in ins if x is not None]
        out_shape = np.broadcast_shapes(*(x.shape for x in xs))
        return [np.broadcast_to(np.asarray(fn(xs)), out_shape).astype(xs[0].dtype)]

    return register(OpDef(name, onnx_name, ("data_0*",), ("output",), infer, ref,
                          traits=frozenset(("elementwise",) + traits), op_class="elementwise",
                          upgrade=_drop_consumed_inputs))


def _fold(f: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[list[np.ndarray]], np.ndarray]:
    def run(xs: list[np.ndarray]) -> np.ndarray:
        acc = xs[0]
        for x in xs[1:]:
            acc = f(acc, x)
        return acc
    return run


def _sum_all(xs: list[np.ndarray]) -> np.ndarray:
    return _fold(np.add)([_work(x) for x in xs])


_variadic("min", "Min", _fold(np.minimum), NUMERIC)
_variadic("max", "Max", _fold(np.maximum), NUMERIC)
_variadic("sum", "Sum", _sum_all, FLOATS)
_variadic("mean", "Mean", lambda xs: _sum_all(xs) / len(xs), FLOATS)


# ----------------------------------------------------------------------------- where


def _where_infer(ctx: InferCtx) -> list[TensorType]:
    _check_dtype(ctx, 0, BOOL, "condition")
    x, y = ctx.type(1), ctx.type(2)
    if x.dtype != y.dtype:
        raise ctx.fail(f"X has dtype {x.dtype} and Y has {y.dtype}; they must match")
    return [TensorType(x.dtype, _broadcast(ctx, (ctx.type(0).shape, x.shape, y.shape)))]


register(OpDef("where", "Where", ("condition", "X", "Y"), ("output",), _where_infer,
               lambda ins, a, n: [np.asarray(np.where(ins[0], ins[1], ins[2])).astype(ins[1].dtype, copy=False)],
               traits=frozenset(("elementwise",)), op_class="elementwise", min_opset=9))


# ----------------------------------------------------------------------------- casts


def _drop_round_mode(ctx: UpgradeCtx) -> None:
    """Opset 24 adds ``round_mode``; it only affects casts to float8e8m0, a dtype effc does
    not have, so every value of it means the same here."""
    mode = ctx.attrs.pop("round_mode", "up")
    if mode not in ("up", "down", "nearest"):
        raise ctx.fail(f"round_mode '{mode}' is not one of 'up', 'down', 'nearest'")


def _cast_array(x: np.ndarray, to: DType) -> np.ndarray:
    if x.dtype == to.np:
        return x
    if to is DType.bool:
        return x != 0  # NaN is nonzero: True
    if x.dtype == DType.bf16.np and not to.is_float:
        return x.astype(np.float32).astype(to.np)
    if to is DType.bf16 and x.dtype.kind in "iub":
        return x.astype(np.float64).astype(to.np)
    return x.astype(to.np)


def _cast_infer(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    return [TensorType(ctx.attrs["to"], t.shape)]


register(OpDef("cast", "Cast", ("input",), ("output",), _cast_infer,
               lambda ins, a, n: [_cast_array(ins[0], a["to"])],
               attrs={"to": attr("dtype"), "saturate": attr("int", 1)},
               traits=frozenset(("elementwise",)), op_class="elementwise", upgrade=_drop_round_mode))


def _cast_like_infer(ctx: InferCtx) -> list[TensorType]:
    return [TensorType(ctx.type(1).dtype, ctx.type(0).shape)]


register(OpDef("cast_like", "CastLike", ("input", "target_type"), ("output",), _cast_like_infer,
               lambda ins, a, n: [_cast_array(ins[0], DType.from_numpy(ins[1].dtype))],
               attrs={"saturate": attr("int", 1)}, traits=frozenset(("elementwise",)),
               op_class="elementwise", min_opset=15, upgrade=_drop_round_mode))


# ----------------------------------------------------------------------------- quantization
#
# Granularity follows the scale's shape (opset 21): a scalar (or one element) is per-tensor,
# a 1-D tensor of the axis' length is per-axis, a tensor of the input's rank whose `axis` dim
# is ceil(D / block_size) is blocked.

_Q_RANGES = {DType.u8: (0, 255), DType.i8: (-128, 127), DType.u16: (0, 65535), DType.i16: (-32768, 32767),
             DType.u4: (0, 15), DType.i4: (-8, 7)}
_DQ_INPUTS = (DType.u8, DType.i8, DType.u16, DType.i16, DType.i32, DType.u4, DType.i4)


def _quant_layout(ctx: InferCtx, x: TensorType, scale: TensorType, what: str) -> None:
    """Check the scale (and zero point) shape against x, axis and block_size."""
    axis, block = ctx.attrs["axis"], ctx.attrs["block_size"]
    if block < 0:
        raise ctx.fail(f"block_size must be >= 0, got {block}")
    if block == 0:
        if _per_tensor(scale):
            return
        if scale.rank != 1:
            raise ctx.fail(f"{what} of shape {list(scale.shape)} is neither a scalar nor 1-D (per-axis); "
                           "blocked quantization needs block_size > 0")
        ax = _axis(ctx, axis, x.rank)
        d, s = x.shape[ax], scale.shape[0]
        if is_known(d) and is_known(s) and d != s:
            raise ctx.fail(f"per-axis {what} has {s} elements but axis {axis} of the input has {d}")
        return
    if scale.rank != x.rank:
        raise ctx.fail(f"blocked quantization needs a {what} of the input's rank {x.rank}, got {list(scale.shape)}")
    ax = _axis(ctx, axis, x.rank)
    for i, (d, s) in enumerate(zip(x.shape, scale.shape)):
        if not (is_known(d) and is_known(s)):
            continue
        want = -(-d // block) if i == ax else d
        if s != want:
            raise ctx.fail(f"{what} shape {list(scale.shape)} does not fit input shape {list(x.shape)} with "
                           f"axis={axis}, block_size={block} (dim {i} should be {want})")


def _check_zero_point(ctx: InferCtx, zp: TensorType, scale: TensorType, what: str) -> None:
    """The zero point has the scale's shape; a scalar and a one-element 1-D tensor count as
    the same per-tensor shape (``onnxruntime.quantization`` writes a ``[1]`` scale beside a
    scalar zero point for biases, and onnxruntime runs it)."""
    if zp.shape == scale.shape or (_per_tensor(zp) and _per_tensor(scale)):
        return
    raise ctx.fail(f"{what}_zero_point shape {list(zp.shape)} differs from {what}_scale shape {list(scale.shape)}")


def _per_tensor(t: TensorType) -> bool:
    return t.rank == 0 or (t.rank == 1 and t.shape[0] == 1)


def _axis(ctx: InferCtx, axis: int, rank: int) -> int:
    try:
        return norm_axis(axis, rank)
    except Exception as e:
        raise ctx.fail(str(e)) from None


def _expand_param(p: np.ndarray, x_shape: tuple, axis: int, block: int) -> np.ndarray:
    """A scale or zero point reshaped/repeated so it broadcasts elementwise against x."""
    if p.ndim == 0 or p.size == 1:
        return p.reshape(())
    axis = axis + len(x_shape) if axis < 0 else axis
    if not block:
        shape = [1] * len(x_shape)
        shape[axis] = p.size
        return p.reshape(shape)
    return np.repeat(p, block, axis=axis).take(np.arange(x_shape[axis]), axis=axis)


def _quantize_upgrade(ctx: UpgradeCtx) -> None:
    precision = ctx.attrs.pop("precision", 0)
    if precision:
        scale = ctx.inputs[1] if len(ctx.inputs) > 1 else None
        if scale is None or _ONNX_DTYPES.get(int(precision)) is not scale.type.dtype:
            raise ctx.unsupported(f"precision={precision} (a division precision other than the scale's dtype)")


def _quantize_out_dtype(ctx: InferCtx) -> DType:
    code = ctx.attrs["output_dtype"]
    out = None
    if code:
        if code not in _ONNX_DTYPES:
            raise ctx.unsupported(f"output_dtype {_ONNX_DTYPE_NAMES.get(code, code)}")
        out = _ONNX_DTYPES[code]
    if ctx.has(2):
        zp = ctx.type(2).dtype
        if out is not None and out != zp:
            raise ctx.fail(f"output_dtype {out} differs from the zero point's dtype {zp}")
        out = zp
    out = out or DType.u8
    if out not in _Q_RANGES:
        raise ctx.fail(f"cannot quantize to {out}; QuantizeLinear produces uint8, int8, uint16, int16, uint4 or "
                       "int4 (or float8/int2, which effc does not support)")
    return out


def _quantize_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, FLOATS + (DType.i32,), "x")
    scale = ctx.type(1)
    if not scale.dtype.is_float:
        raise ctx.unsupported(f"an integer scale ({scale.dtype})")
    _quant_layout(ctx, x, scale, "y_scale")
    if ctx.has(2):
        _check_zero_point(ctx, ctx.type(2), scale, "y")
    return [TensorType(_quantize_out_dtype(ctx), x.shape)]


def _quantize_ref(ins: list, a: dict, n: int) -> list:
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    if zp is not None:
        out = zp.dtype
    elif a["output_dtype"]:
        out = _ONNX_DTYPES[a["output_dtype"]].np
    else:
        out = np.dtype(np.uint8)
    axis, block = a["axis"], a["block_size"]
    s = _expand_param(scale, x.shape, axis, block)
    if x.dtype == s.dtype and x.dtype.itemsize == 2:
        # float16/bfloat16: the division rounds to the scale's precision, as ONNX defines.
        q = np.rint((x / s).astype(np.float32)).astype(np.float64)
    else:
        work = np.float64 if np.float64 in (x.dtype, s.dtype) else np.float32
        q = np.rint(x.astype(work) / s.astype(work)).astype(np.float64)
    if zp is not None:
        q = q + _expand_param(zp, x.shape, axis, block).astype(np.float64)
    lo, hi = _Q_RANGES[DType.from_numpy(out)]
    return [np.clip(q, lo, hi).astype(out)]


register(OpDef("quantize_linear", "QuantizeLinear", ("x", "y_scale", "y_zero_point?"), ("y",), _quantize_infer,
               _quantize_ref, attrs={"axis": attr("int", 1), "block_size": attr("int", 0),
                                     "output_dtype": attr("int", 0), "saturate": attr("int", 1)},
               op_class="quant", min_opset=10, upgrade=_quantize_upgrade))


def _dequantize_upgrade(ctx: UpgradeCtx) -> None:
    code = ctx.attrs.pop("output_dtype", 0)
    if code:
        scale = ctx.inputs[1] if len(ctx.inputs) > 1 else None
        if scale is None or _ONNX_DTYPES.get(int(code)) is not scale.type.dtype:
            raise ctx.unsupported(f"output_dtype {_ONNX_DTYPE_NAMES.get(int(code), code)} other than the scale's dtype")


def _dequantize_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, _DQ_INPUTS, "x")
    scale = _check_dtype(ctx, 1, FLOATS, "x_scale")
    _quant_layout(ctx, x, scale, "x_scale")
    if ctx.has(2):
        zp = ctx.type(2)
        if zp.dtype != x.dtype:
            raise ctx.fail(f"x_zero_point has dtype {zp.dtype}, x has {x.dtype}; they must match")
        _check_zero_point(ctx, zp, scale, "x")
    return [TensorType(scale.dtype, x.shape)]


def _dequantize_ref(ins: list, a: dict, n: int) -> list:
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    axis, block = a["axis"], a["block_size"]
    d = x.astype(np.int64)
    if zp is not None:
        d = d - _expand_param(zp, x.shape, axis, block).astype(np.int64)
    work = np.float64 if scale.dtype == np.float64 else np.float32
    y = d.astype(work) * _expand_param(scale, x.shape, axis, block).astype(work)
    return [y.astype(scale.dtype)]


register(OpDef("dequantize_linear", "DequantizeLinear", ("x", "x_scale", "x_zero_point?"), ("y",),
               _dequantize_infer, _dequantize_ref, attrs={"axis": attr("int", 1), "block_size": attr("int", 0)},
               op_class="quant", min_opset=10, upgrade=_dequantize_upgrade))
