"""qdq-to-integer: float ops between DequantizeLinear and QuantizeLinear become integer ops.

A QDQ model (what ``onnxruntime.quantization.quantize_static`` writes by default, and
what ``effc quantize`` will write) keeps every op in float, between a DequantizeLinear of
each 8-bit input and a QuantizeLinear of the output. Where the quantized values alone
determine the result, this pass computes it on them:

- ``Q(conv(DQ(x), DQ(w), DQ(b)?))`` -> ``qlinear_conv(x, .., w, .., y_scale, y_zp, b)``
- ``Q(gemm(DQ(a), DQ(w), DQ(c)?))`` (2-D, alpha 1, beta 1 or no C) -> ``qgemm`` (C int32)
- ``Q(mat_mul(DQ(a), DQ(w)))`` -> ``qlinear_mat_mul``; ``mat_mul(DQ(a), DQ(w))`` with a
  float result -> ``qgemm`` without an output scale (the int32 sum scaled to float, as
  onnxruntime's MatMulIntegerToFloat; equal up to float32 rounding): a transformer's
  projections and MLPs run integer sums;
- with a ``relu`` before the Q: the same, then ``max(y, y_zp)`` on the 8-bit result
  (``Q(relu(v)) = max(Q(v), Q(0))``, Q being monotonic and ``Q(0) = y_zp``); with a
  ``clip`` of constant bounds (ReLU6), ``clip(y, Q(lo), Q(hi))`` the same way;
- ``Q(max_pool(DQ(q)))`` with the same parameters on both sides -> ``max_pool(q)`` (exact);
- ``Q([relu](add|mul(DQ(a), DQ(b))))`` -> ``qlinear_add|mul`` (exact: onnxruntime's contrib
  ops are defined as that), ``Q(global_average_pool(DQ(x)))`` ->
  ``qlinear_global_average_pool`` (its integer sum requantized once, as onnxruntime's
  kernel: within one step of the float pool): MobileNetV2's residual adds and the pool
  before a classifier stay integer.

The integer ops sum exact int32 products and requantize with the multiplier
``x_scale * w_scale / y_scale``: as a float, rounded half to even (``rounding=onnx``,
ONNX's QLinearConv, what onnxruntime computes when it fuses the same pattern), or as a
31-bit fixed-point multiplier and shift with one rounding (``rounding=fixed_point``,
TFLite's and CMSIS-NN's, for the targets whose ``quant_rounding`` says so). Either differs
from the float path by at most one quantization step, where rounding the float sum and
rounding the exact sum disagree.

A pattern is rewritten only when it means the same thing in integers: constant scales and
zero points, per-tensor for activations (per output channel allowed for weights), a
weight of 8 bits, and a bias quantized to int32 with zero point 0 and scale
``x_scale * w_scale`` (as onnxruntime writes it); anything else stays in float. Run it
before ``fold-constants``, which would fold the weights' DequantizeLinear into float.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Module, Value
from effc.ir.opdef import node_attrs
from effc.ir.errors import InputError
from effc.ir.ops.quant import EIGHT_BIT, ROUNDINGS
from effc.ir.types import DType

from .base import Pass, PassContext, register_pass
from .rewrite import Any, Const, Match, Op, Rule, apply_rules



def _dq(prefix: str, data: object, shared: bool = False) -> Op:
    return Op("dequantize_linear", data, Const(f"{prefix}s"), Const(f"{prefix}z"), name=f"{prefix}dq", shared=shared)


def _scalar(a: np.ndarray) -> bool:
    return a.size == 1


def _per_tensor(m: Match, prefix: str) -> bool:
    return _scalar(m.const(f"{prefix}s")) and _scalar(m.const(f"{prefix}z"))


def _eight_bit(v: Value) -> bool:
    return v.type.dtype in EIGHT_BIT


def _bias_ok(m: Match, xs: np.ndarray, ws: np.ndarray, channels: int) -> bool:
    """The bias is int32, zero point 0, scale ``x_scale * w_scale`` (per channel when the
    weight is), one element per output channel."""
    bq = m.const("bq")
    if bq.dtype != np.int32 or bq.ndim != 1 or bq.size != channels or np.any(m.const("bz") != 0):
        return False
    want = (np.float32(xs.reshape(-1)[0]) * ws.astype(np.float32).reshape(-1)).astype(np.float32)
    got = m.const("bs").astype(np.float32).reshape(-1)
    return got.size in (1, channels) and bool(np.all(np.broadcast_to(got, (channels,)) == np.broadcast_to(want, (channels,))))


def _weight_ok(m: Match, channels: int, axis: int) -> bool:
    """An 8-bit constant weight, per tensor or per output channel along ``axis``."""
    ws, wz = m.const("ws"), m.const("wz")
    if not _eight_bit(m["wq"]) or ws.size != wz.size or ws.size not in (1, channels):
        return False
    return ws.size == 1 or node_attrs(m.node("wdq"))["axis"] % m["wq"].type.rank == axis


def _y(m: Match) -> tuple[Value, Value]:
    return m.value("ys"), m.value("yz")


def _common(m: Match) -> bool:
    return (_eight_bit(m["xq"]) and _per_tensor(m, "x") and _per_tensor(m, "y")
            and m.const("yz").dtype in (np.uint8, np.int8) and m.root is not None and len(m.root.outputs) == 1
            and not node_attrs(m.root)["block_size"])


def _relu_clamp(b: Builder, y: Value, yz: Value) -> Value:
    """``max(y, y_zp)``: a relu before the output Q, on the quantized result."""
    return b.max(y, b.const(np.asarray(yz.const_value).reshape(()), name_hint="relu_floor"))


def _quantized_bound(v: np.ndarray, ys: np.ndarray, yz: np.ndarray) -> np.ndarray:
    """QuantizeLinear of one float bound (float32 division, half to even, saturated)."""
    info = np.iinfo(yz.dtype)
    q = np.rint(np.float32(np.asarray(v).reshape(())) / np.float32(np.asarray(ys).reshape(()))) + int(yz.reshape(()))
    return np.asarray(np.clip(q, info.min, info.max), dtype=yz.dtype)


def _activation(act: str, m: Match, b: Builder, y: Value) -> Value:
    """The activation between the op and the output Q, on the quantized result: Q is
    monotonic, so ``Q(relu(v)) = max(Q(v), Q(0))`` and
    ``Q(clip(v, lo, hi)) = clip(Q(v), Q(lo), Q(hi))`` (ReLU6)."""
    ys, yz = _y(m)
    if act == "relu":
        return _relu_clamp(b, y, yz)
    if act == "clip":
        s, z = m.const("ys"), np.asarray(m.const("yz"))
        return b.clip(y, b.const(_quantized_bound(m.const("lo"), s, z), name_hint="clip_lo"),
                      b.const(_quantized_bound(m.const("hi"), s, z), name_hint="clip_hi"))
    return y


_DECLINE = object()


def _integer_bias(m: Match, channels: object, axis: int) -> Value | None | object:
    """The int32 bias to pass on (None when the pattern has none), or ``_DECLINE`` when the
    pattern's integers would not mean what its floats do."""
    if not (_common(m) and isinstance(channels, int) and _weight_ok(m, channels, axis)):
        return _DECLINE
    if "bq" not in m:
        return None
    return m["bq"] if _bias_ok(m, m.const("xs"), m.const("ws"), channels) else _DECLINE


def _conv(act: str):
    def rewrite(m: Match, b: Builder) -> Value | None:
        conv = m.node("conv")
        bias = _integer_bias(m, m["wq"].type.shape[0], 0)
        if bias is _DECLINE:
            return None
        ys, yz = _y(m)
        y = b.qlinear_conv(m["xq"], m.value("xs"), m.value("xz"), m["wq"], m.value("ws"), m.value("wz"), ys, yz,
                           bias, **conv.attrs)
        return _activation(act, m, b, y)
    return rewrite


def _gemm(act: str):
    def rewrite(m: Match, b: Builder) -> Value | None:
        a = node_attrs(m.node("gemm"))
        if a["alpha"] != 1.0 or ("bq" in m and a["beta"] != 1.0) or a["transA"]:
            return None
        w = m["wq"].type
        if w.rank != 2 or m["xq"].type.rank != 2:
            return None
        bias = _integer_bias(m, w.shape[0] if a["transB"] else w.shape[1], 0 if a["transB"] else 1)
        if bias is _DECLINE:
            return None
        ys, yz = _y(m)
        y = b.qgemm(m["xq"], m.value("xs"), m.value("xz"), m["wq"], m.value("ws"), m.value("wz"), bias, ys, yz,
                    transB=a["transB"])
        return _activation(act, m, b, y)
    return rewrite


def _matmul(m: Match, b: Builder) -> Value | None:
    w = m["wq"].type
    if w.rank != 2 or not isinstance(w.shape[1], int) or not (_common(m) and _weight_ok(m, w.shape[1], 1)):
        return None
    ys, yz = _y(m)
    return b.qlinear_mat_mul(m["xq"], m.value("xs"), m.value("xz"), m["wq"], m.value("ws"), m.value("wz"), ys, yz)


def _matmul_to_float(m: Match, b: Builder) -> Value | None:
    """``mat_mul(DQ(a), DQ(w))`` whose result stays float (effc's quantizer leaves matmul
    outputs unquantized) -> ``qgemm`` without an output scale: the exact int32 sum times
    ``a_scale * w_scale`` per column, onnxruntime's MatMulIntegerToFloat; it differs from
    the float product of the dequantized operands only by float32 rounding. An ``a`` of
    rank 3 or more is viewed as ``[M, K]`` around it; one of its dims may be symbolic (a
    dynamic batch). Not where a QuantizeLinear reads the
    result (``qdq-matmul`` makes that a ``qlinear_mat_mul``)."""
    w, x = m["wq"].type, m["xq"].type
    if (w.rank != 2 or not all(isinstance(d, int) for d in (*w.shape, x.shape[-1])) or x.rank < 2
            or sum(not isinstance(d, int) for d in x.shape) > 1
            or not (_float_result_ok(m, m.root.outputs[0]) and _weight_ok(m, w.shape[1], 1))):
        return None
    k, n = w.shape
    a = m["xq"] if x.rank == 2 else b.reshape(m["xq"], b.const(np.asarray([-1, k], np.int64)))
    y = b.qgemm(a, m.value("xs"), m.value("xz"), m["wq"], m.value("ws"), m.value("wz"))
    if x.rank == 2:
        return y
    # one symbolic dim (a dynamic batch) at most: it is the -1 the reshape infers, and the
    # result keeps the product's type (its symbolic dim's name)
    y = b.reshape(y, b.const(np.asarray([d if isinstance(d, int) else -1 for d in x.shape[:-1]] + [n], np.int64)))
    y.type = m.root.outputs[0].type
    return y


def _float_result_ok(m: Match, out: Value) -> bool:
    """A product whose float result stays float (no QuantizeLinear reads it) can be a
    ``qgemm`` without an output scale: an 8-bit per-tensor activation, a symmetric weight,
    float32 scales."""
    return (not any(u.op == "quantize_linear" for u in out.users()) and _eight_bit(m["xq"]) and _per_tensor(m, "x")
            and not m.const("wz").any() and m.const("ws").dtype == np.float32 and m.const("xs").dtype == np.float32)


def _gemm_to_float(m: Match, b: Builder) -> Value | None:
    """``gemm(DQ(a), DQ(w), DQ(bias))`` whose result stays float (a classifier whose logits
    are the model's output) -> ``qgemm`` without an output scale, as ``_matmul_to_float``:
    the int8 weight stays int8 (``fold-constants`` would otherwise expand it to float)."""
    gemm = m.node("gemm")
    a = node_attrs(gemm)
    w, x = m["wq"].type, m["xq"].type
    if (a["alpha"] != 1.0 or ("bq" in m and a["beta"] != 1.0) or a["transA"] or w.rank != 2 or x.rank != 2
            or not _float_result_ok(m, gemm.outputs[0])):
        return None
    channels, axis = (w.shape[0], 0) if a["transB"] else (w.shape[1], 1)
    if not isinstance(channels, int) or not _weight_ok(m, channels, axis):
        return None
    if "bq" in m and not _bias_ok(m, m.const("xs"), m.const("ws"), channels):
        return None
    bias = [m["bq"]] if "bq" in m else []
    return b.qgemm(m["xq"], m.value("xs"), m.value("xz"), m["wq"], m.value("ws"), m.value("wz"), *bias,
                   transB=a["transB"])


def _q(inner: Op) -> Op:
    return Op("quantize_linear", inner, Const("ys"), Const("yz"))


_ACTIVATIONS = {"": lambda p: p, "relu": lambda p: Op("relu", p), "clip": lambda p: Op("clip", p, Const("lo"), Const("hi"))}
RULES = []
for _act, _wrap_act in _ACTIVATIONS.items():
    for _with_bias in (True, False):
        _bias = [Op("dequantize_linear", Const("bq"), Const("bs"), Const("bz"), name="bdq")] if _with_bias else []
        _conv_op = Op("conv", _dq("x", Any("xq"), shared=True), _dq("w", Const("wq")), *_bias, name="conv")
        _gemm_op = Op("gemm", _dq("x", Any("xq"), shared=True), _dq("w", Const("wq")), *_bias, name="gemm")
        _suffix = f"{'-bias' if _with_bias else ''}{'-' + _act if _act else ''}"
        RULES.append(Rule(f"qdq-conv{_suffix}", _q(_wrap_act(_conv_op)), _conv(_act)))
        RULES.append(Rule(f"qdq-gemm{_suffix}", _q(_wrap_act(_gemm_op)), _gemm(_act)))
        if not _act:
            RULES.append(Rule(f"qdq-gemm-float{_suffix}", _gemm_op, _gemm_to_float))


def _max_pool(m: Match, b: Builder) -> Value | None:
    """``Q(max_pool(DQ(q)))`` is ``Q(DQ(max_pool(q)))``: DequantizeLinear is increasing, so
    the largest dequantized value of a window is the dequantized largest, exactly. With the
    same scale and zero point on both sides that is the max pool of ``q`` itself; otherwise
    the requantization runs on the pooled values only (a model's float tensor before the
    pool, often its largest, is gone)."""
    if not (_scalar(m.const("xs")) and _scalar(m.const("xz")) and m.const("xs").reshape(()) > 0
            and m.root is not None and not node_attrs(m.root)["block_size"] and len(m.node("pool").outputs) == 1):
        return None
    pooled = _flattened(m, b, b.max_pool(m["xq"], **m.node("pool").attrs))
    if np.array_equal(m.const("ys").reshape(-1), m.const("xs").reshape(-1)) \
            and np.array_equal(m.const("yz").reshape(-1), m.const("xz").reshape(-1)):
        return pooled
    return b.quantize_linear(b.dequantize_linear(pooled, m.value("xs"), m.value("xz")), m.value("ys"), m.value("yz"),
                             **m.root.attrs)


def _elementwise(op: str, relu: bool):
    """``Q([relu](add|mul(DQ(a), DQ(b))))`` -> ``qlinear_add|mul`` (onnxruntime's contrib ops,
    defined as exactly this: dequantize, the float op, quantize), every parameter per
    tensor and the three 8-bit types the same."""
    def rewrite(m: Match, b: Builder) -> Value | None:
        if not (_common(m) and _eight_bit(m["bq"]) and _per_tensor(m, "b")
                and m["xq"].type.dtype == m["bq"].type.dtype == DType.from_numpy(m.const("yz").dtype)):
            return None
        ys, yz = _y(m)
        y = getattr(b, f"qlinear_{op}")(m["xq"], m.value("xs"), m.value("xz"), m["bq"], m.value("bs"), m.value("bz"),
                                         ys, yz)
        return _relu_clamp(b, y, yz) if relu else y
    return rewrite


def _global_pool(m: Match, b: Builder) -> Value | None:
    """``Q([reshape](global_average_pool(DQ(x))))`` -> ``qlinear_global_average_pool`` (an
    integer sum and one requantization: within one step of the float pool), the flatten
    after it on the 8-bit result."""
    if not (_common(m) and m["xq"].type.dtype == DType.from_numpy(m.const("yz").dtype)):
        return None
    ys, yz = _y(m)
    return _flattened(m, b, b.qlinear_global_average_pool(m["xq"], m.value("xs"), m.value("xz"), ys, yz))


_FLATTENS = ("flatten", "reshape")
"""Ops between a pool and the QuantizeLinear of its result that the pool rules look
through (a classifier's flatten); they move onto the 8-bit values."""


def _flattened(m: Match, b: Builder, y: Value) -> Value:
    """``y`` through the match's flatten (or reshape), if it has one."""
    if "flatten" not in m:
        return y
    f = m.node("flatten")
    return getattr(b, f.op)(y, *f.inputs[1:], **f.attrs)


for _relu in (False, True):
    for _op in ("add", "mul"):
        _inner = Op(_op, _dq("x", Any("xq"), shared=True), _dq("b", Any("bq"), shared=True), name="op")
        RULES.append(Rule(f"qdq-{_op}{'-relu' if _relu else ''}", _q(Op("relu", _inner)) if _relu else _q(_inner),
                          _elementwise(_op, _relu)))
RULES.append(Rule("qdq-global-average-pool", _q(Op("global_average_pool", _dq("x", Any("xq"), shared=True),
                                                    name="pool")), _global_pool))
RULES.append(Rule("qdq-global-average-pool-flatten", _q(Op(_FLATTENS, Op(
    "global_average_pool", _dq("x", Any("xq"), shared=True), name="pool"), exact_arity=False, name="flatten")),
    _global_pool))
RULES.append(Rule("qdq-max-pool", _q(Op("max_pool", _dq("x", Any("xq"), shared=True), name="pool")), _max_pool))
RULES.append(Rule("qdq-max-pool-flatten", _q(Op(_FLATTENS, Op("max_pool", _dq("x", Any("xq"), shared=True), name="pool"),
                                                exact_arity=False, name="flatten")), _max_pool))
RULES.append(Rule("qdq-matmul", _q(Op("mat_mul", _dq("x", Any("xq"), shared=True), _dq("w", Const("wq")))), _matmul))
RULES.append(Rule("qdq-matmul-float", Op("mat_mul", _dq("x", Any("xq"), shared=True), _dq("w", Const("wq"))),
                  _matmul_to_float))


INTEGER_OPS = ("qlinear_conv", "qgemm", "qlinear_mat_mul")
"""The integer ops that requantize an int32 sum (and so take a ``rounding``)."""


@register_pass
@dataclass(frozen=True)
class QdqToInteger(Pass):
    """``rounding``: how the integer ops it writes requantize (``ir/ops/quant.py``):
    ``onnx`` or ``fixed_point``; empty (the default): the target's ``quant_rounding``
    (``ctx.options``), else ``onnx``."""

    name = "qdq-to-integer"
    rounding: str = ""

    def run(self, module: Module, ctx: PassContext) -> bool:
        rounding = self.rounding or ctx.options.get("quant_rounding", "onnx")
        if rounding not in ROUNDINGS:
            raise InputError(f"qdq-to-integer: rounding must be one of {', '.join(ROUNDINGS)}, got '{rounding}'")
        before = {id(n) for n in module.graph.nodes if n.op in INTEGER_OPS}
        changed = apply_rules(module, RULES).total > 0
        if rounding != "onnx":
            for n in module.graph.nodes:
                if n.op in INTEGER_OPS and id(n) not in before:
                    n.attrs["rounding"] = rounding
        return changed
