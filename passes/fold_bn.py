"""fold-bn: folds inference-mode BatchNormalization into the producer's weights.

With s = scale / sqrt(var + eps) per channel:
- ``batch_normalization(conv(x, W, b))`` → ``conv(x, W * s[:,None..], (b - mean) * s + beta)``
- ``batch_normalization(conv_transpose(x, W, b))`` → the same on ConvTranspose's
  ``[Cin, Cout/group, k...]`` weight, per group
- ``batch_normalization(gemm(a, B, c))`` (2-D, channels on axis 1) → gemm with B's output
  columns scaled and ``C' = (beta_g * c - mean) * s + beta``, ``beta_g = 1``
- ``batch_normalization(mat_mul(a, W))`` (2-D result, W constant 2-D) → ``add(mat_mul(a, W * s), shift)``
- a lone ``batch_normalization(x)`` → ``add(mul(x, s), beta - mean * s)`` with s broadcast on axis 1

The rules do not fire when the BN is in training mode, when the producer has other
users, or when the weight or any BN parameter is not a constant."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Module, Value
from effc.ir.opdef import node_attrs

from .base import Pass, PassContext, register_pass
from .rewrite import Any, Const, Match, Op, Rule, apply_rules


def _bn_params(m: Match) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel (s, shift) with y = x * s + shift, in float64."""
    bn = m.root
    assert bn is not None
    a = node_attrs(bn)
    if a.get("training_mode", 0) or len(bn.outputs) != 1:
        return None
    scale, beta, mean, var = (m.const(k).astype(np.float64) for k in ("scale", "beta", "mean", "var"))
    s = scale / np.sqrt(var + a["epsilon"])
    return s, beta - mean * s


def _is_inference_bn(m: Match) -> bool:
    bn = m.root
    assert bn is not None
    return not node_attrs(bn).get("training_mode", 0) and len(bn.outputs) == 1


def _bn(producer: Op) -> Op:
    return Op("batch_normalization", producer, Const("scale"), Const("beta"), Const("mean"), Const("var"))


def _cast(arr: np.ndarray, like: Value) -> np.ndarray:
    return arr.astype(like.type.dtype.np)


def _fold_conv(m: Match, b: Builder) -> Value | None:
    params = _bn_params(m)
    if params is None:
        return None
    s, shift = params
    conv = m.node("conv")
    w = m.const("w").astype(np.float64)
    if w.shape[0] != s.size:
        return None
    w2 = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    bias = m.value("b")
    b0 = bias.const_value.astype(np.float64) if bias is not None else 0.0
    new_b = b0 * s + shift
    return b.conv(m["x"], b.const(_cast(w2, m["w"]), name_hint="w_bn"), b.const(_cast(new_b, m["w"]), name_hint="b_bn"),
                  **conv.attrs)


def _fold_conv_transpose(m: Match, b: Builder) -> Value | None:
    params = _bn_params(m)
    if params is None:
        return None
    s, shift = params
    conv = m.node("conv")
    group = node_attrs(conv)["group"]
    w = m.const("w").astype(np.float64)
    cin, cout_g = w.shape[0], w.shape[1]
    if cout_g * group != s.size or cin % group:
        return None
    grouped = w.reshape((group, cin // group, cout_g) + w.shape[2:])
    grouped = grouped * s.reshape((group, 1, cout_g) + (1,) * (w.ndim - 2))
    bias = m.value("b")
    b0 = bias.const_value.astype(np.float64) if bias is not None else 0.0
    return b.conv_transpose(m["x"], b.const(_cast(grouped.reshape(w.shape), m["w"]), name_hint="w_bn"),
                            b.const(_cast(b0 * s + shift, m["w"]), name_hint="b_bn"), **conv.attrs)


def _fold_gemm(m: Match, b: Builder) -> Value | None:
    params = _bn_params(m)
    gemm = m.node("gemm")
    if params is None or gemm.outputs[0].type.rank != 2:
        return None
    s, shift = params
    a = node_attrs(gemm)
    w = m.const("w").astype(np.float64)
    w2 = w * s[:, None] if a["transB"] else w * s[None, :]
    c = m.value("c")
    if c is not None and c.const_value is None:
        return None
    c0 = c.const_value.astype(np.float64) * a["beta"] if c is not None else 0.0
    new_c = np.broadcast_to(c0 * s + shift, (s.size,)) if np.ndim(c0) <= 1 else (c0 * s + shift)
    attrs = dict(gemm.attrs)
    attrs["beta"] = 1.0
    return b.gemm(m["x"], b.const(_cast(w2, m["w"]), name_hint="w_bn"),
                  b.const(_cast(np.ascontiguousarray(new_c), m["w"]), name_hint="c_bn"), **attrs)


def _fold_matmul(m: Match, b: Builder) -> Value | None:
    params = _bn_params(m)
    mm = m.node("mm")
    w = m.const("w")
    if params is None or mm.outputs[0].type.rank != 2 or w.ndim != 2:
        return None
    s, shift = params
    y = b.mat_mul(m["x"], b.const(_cast(w.astype(np.float64) * s[None, :], m["w"]), name_hint="w_bn"))
    return b.add(y, b.const(_cast(shift, m["w"]), name_hint="b_bn"))


def _lone_bn(m: Match, b: Builder) -> Value | None:
    params = _bn_params(m)
    x = m["x"]
    if params is None or x.type.rank < 2:
        return None
    s, shift = params
    shape = (-1,) + (1,) * (x.type.rank - 2)
    scaled = b.mul(x, b.const(_cast(s.reshape(shape), x), name_hint="bn_scale"))
    return b.add(scaled, b.const(_cast(shift.reshape(shape), x), name_hint="bn_shift"))


RULES = [
    Rule("bn-into-conv", _bn(Op("conv", Any("x"), Const("w"), Any("b", optional=True), name="conv")), _fold_conv,
         check=lambda m: _is_inference_bn(m) and (m.value("b") is None or m.value("b").is_const)),
    Rule("bn-into-conv-transpose", _bn(Op("conv_transpose", Any("x"), Const("w"), Any("b", optional=True), name="conv")),
         _fold_conv_transpose, check=lambda m: _is_inference_bn(m) and (m.value("b") is None or m.value("b").is_const)),
    Rule("bn-into-gemm", _bn(Op("gemm", Any("x"), Const("w"), Any("c", optional=True), name="gemm")), _fold_gemm,
         check=_is_inference_bn),
    Rule("bn-into-matmul", _bn(Op("mat_mul", Any("x"), Const("w"), name="mm")), _fold_matmul, check=_is_inference_bn),
]
LONE_BN = [Rule("bn-to-scale-shift", _bn(Any("x")), _lone_bn, check=_is_inference_bn)]


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    name = "fold-bn"

    def run(self, module: Module, ctx: PassContext) -> bool:
        folded = apply_rules(module, RULES).total
        return folded + apply_rules(module, LONE_BN).total > 0
