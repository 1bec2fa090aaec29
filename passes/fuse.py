"""fuse: recognizes decomposed activations and normalizations, then groups each compute
op with the elementwise ops that follow it into one ``fused`` node.

Recognition rules (run first):
- Gelu, erf form: ``0.5 * x * (1 + erf(x / sqrt(2)))`` (any operand order) → ``gelu(x)``
- Gelu, tanh form: ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`` → ``gelu(x, approximate="tanh")``
- LayerNormalization: ``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) * gamma + beta``
  over trailing axes → ``layer_normalization(x, gamma, beta)``
- HardSwish: ``x * hard_sigmoid(x, 1/6, 0.5)`` and ``x * clip(x + 3, 0, 6) / 6`` → ``hard_swish(x)``
- SiLU/Swish: ``x * sigmoid(x)`` → a ``fused{kind="silu"}`` node

Grouping rules (to a fixpoint): an elementwise op whose input comes from a conv,
conv_transpose, gemm, mat_mul (or their integer forms: qlinear_conv, qlinear_mat_mul,
qgemm), elementwise op or fused node, used only there, joins that
producer's group: Conv/Gemm/MatMul + bias + activation, residual Add + activation into the
producing conv, and chains of elementwise ops each become one node of at most ``max-ops`` ops.
With ``pools`` (``fuse{pools=true}``; every AOT build runs it, ``codegen.aot.lower_for_aot``),
a max or average pool whose windows tile its input joins the conv group that feeds it
(``_pool_input``), so that conv's output is computed a row of windows at a time, never
whole: TinyEngine's fused pooling, which halves the arena of small CNNs. Off by default: a
tuned x86 VM build of the fused kernel was 17-28% slower than the two kernels (digits_cnn).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Graph, Module, Node, Value
from effc.ir.opdef import REGISTRY, node_attrs

from .base import Pass, PassContext, register_pass
from .rewrite import Any, Const, Match, Op, Rule, apply_rules

# ----------------------------------------------------------------------------- recognition


def _scalar(m: Match, name: str, want: float, rel: float = 1e-5) -> bool:
    """The constant ``name`` is ``want`` up to rounding in its dtype (f32 exports carry
    these constants to ~1e-7; a looser match would rewrite patterns that compute
    something measurably different, e.g. 0.5004 * x * ...)."""
    v = m.value(name)
    arr = None if v is None else v.const_value
    if arr is None or arr.size != 1 or arr.dtype.kind != "f":
        return False
    tol = max(rel, 4 * float(np.finfo(arr.dtype).eps))
    return abs(float(arr.reshape(-1)[0]) - want) <= tol * max(1.0, abs(want))


def _gelu_roots(inner: Op) -> list[Op]:
    """The three ways exporters order ``0.5 * x * inner``."""
    return [
        Op("mul", Op("mul", Any("x"), inner), Const("half")),
        Op("mul", Op("mul", Any("x"), Const("half")), inner),
        Op("mul", Any("x"), Op("mul", inner, Const("half"))),
    ]


_ERF_INNER = Op("add", Op("erf", Op(("div", "mul"), Any("x"), Const("k"), name="scale")), Const("one"))
_TANH_INNER = Op("add", Op("tanh", Op("mul", Op("add", Any("x"), Op("mul", Op("pow", Any("x"), Const("three")),
                                                                     Const("c1"))), Const("c2"))), Const("one"))


def _erf_gelu_check(m: Match) -> bool:
    k = np.sqrt(2.0) if m.node("scale").op == "div" else 1 / np.sqrt(2.0)
    return _scalar(m, "half", 0.5) and _scalar(m, "one", 1.0) and _scalar(m, "k", float(k))


def _tanh_gelu_check(m: Match) -> bool:
    return (_scalar(m, "half", 0.5) and _scalar(m, "one", 1.0) and _scalar(m, "three", 3.0)
            and _scalar(m, "c1", 0.044715) and _scalar(m, "c2", float(np.sqrt(2 / np.pi))))


def _is_float(m: Match) -> bool:
    return m["x"].type.dtype.is_float


_D = Op("sub", Any("x"), Op("reduce_mean", Any("x"), Const("axes1"), name="mean"), name="d", shared=True)
_LAYER_NORM = Op("add", Op("mul", Op("div", _D, Op("sqrt", Op("add", Op("reduce_mean", Op("pow", _D, Const("two")),
                                                                     Const("axes2"), name="var"), Const("eps")))),
                         Const("gamma")), Const("beta"))


def _layer_norm_axis(m: Match) -> int | None:
    x: Value = m["x"]
    rank = x.type.rank
    axes = [sorted(int(a) % rank for a in np.asarray(m.const(k)).reshape(-1)) for k in ("axes1", "axes2")]
    if axes[0] != axes[1] or not axes[0] or axes[0] != list(range(axes[0][0], rank)):
        return None
    for red in ("mean", "var"):
        if not node_attrs(m.node(red))["keepdims"]:
            return None
    axis = axes[0][0]
    norm_shape = tuple(x.type.shape[axis:])
    for k in ("gamma", "beta"):
        shape = m.const(k).shape
        if len(shape) > len(norm_shape) or tuple(norm_shape[len(norm_shape) - len(shape):]) != shape:
            return None
    return axis


def _layer_norm_check(m: Match) -> bool:
    eps = m.value("eps")
    return (_is_float(m) and _scalar(m, "two", 2.0) and eps is not None and eps.const_value is not None
            and eps.const_value.size == 1 and _layer_norm_axis(m) is not None)


def _layer_norm(m: Match, b: Builder) -> Value:
    axis = _layer_norm_axis(m)
    assert axis is not None
    x = m["x"]
    norm_shape = tuple(x.type.shape[axis:])
    gamma = np.broadcast_to(m.const("gamma"), norm_shape).astype(x.type.dtype.np)
    beta = np.broadcast_to(m.const("beta"), norm_shape).astype(x.type.dtype.np)
    eps = float(np.asarray(m.const("eps")).reshape(-1)[0])
    return b.layer_normalization(x, b.const(gamma, name_hint="ln_scale"), b.const(beta, name_hint="ln_bias"),
                                 axis=axis, epsilon=eps)


def _hard_sigmoid_is_sixth(m: Match) -> bool:
    a = node_attrs(m.node("hs"))
    return abs(a["alpha"] - 1 / 6) < 1e-4 and abs(a["beta"] - 0.5) < 1e-6


_RELU6_OF_X_PLUS_3 = Op("clip", Op("add", Any("x"), Const("three")), Const("lo"), Const("hi"))


def _hard_swish_clip_check(m: Match) -> bool:
    return _scalar(m, "three", 3.0) and _scalar(m, "lo", 0.0) and _scalar(m, "hi", 6.0) and _scalar(m, "six", 6.0)


def _silu(m: Match, b: Builder) -> Value:
    x: Value = m["x"]
    body = Graph("silu")
    bx = body.add_input("x", x.type)
    s = body.append(Node("sigmoid", [bx], [x.type], output_names=["sig"]))
    y = body.append(Node("mul", [bx, s.output], [x.type], output_names=["y"]))
    body.set_outputs([y.output])
    return b.insert(Node("fused", [x], [x.type], {"kind": "silu"}, body=body, loc=b.loc)).output


RECOGNIZE = (
    [Rule("gelu-erf", root, lambda m, b: b.gelu(m["x"]), check=lambda m: _is_float(m) and _erf_gelu_check(m))
     for root in _gelu_roots(_ERF_INNER)]
    + [Rule("gelu-tanh", root, lambda m, b: b.gelu(m["x"], approximate="tanh"),
            check=lambda m: _is_float(m) and _tanh_gelu_check(m)) for root in _gelu_roots(_TANH_INNER)]
    + [Rule("layer-norm", _LAYER_NORM, _layer_norm, check=_layer_norm_check),
       Rule("hard-swish", Op("mul", Any("x"), Op("hard_sigmoid", Any("x"), name="hs")),
            lambda m, b: b.hard_swish(m["x"]), check=_hard_sigmoid_is_sixth),
       Rule("hard-swish-clip", Op("div", Op("mul", Any("x"), _RELU6_OF_X_PLUS_3), Const("six")),
            lambda m, b: b.hard_swish(m["x"]), check=_hard_swish_clip_check),
       Rule("hard-swish-clip2", Op("mul", Any("x"), Op("div", _RELU6_OF_X_PLUS_3, Const("six"))),
            lambda m, b: b.hard_swish(m["x"]), check=_hard_swish_clip_check),
       Rule("silu", Op("mul", Any("x"), Op("sigmoid", Any("x"))), _silu, check=_is_float)]
)

# ----------------------------------------------------------------------------- grouping

ANCHORS = {"conv", "conv_transpose", "gemm", "mat_mul", "qlinear_conv", "qlinear_mat_mul", "qgemm"}
"""Compute ops the elementwise ops after them join (an integer op's clamp, ReLU6 as
``clip`` on its 8-bit output, is computed in its kernel's epilogue)."""


def _elementwise_ops() -> tuple[str, ...]:
    return tuple(sorted(n for n, o in REGISTRY.items() if "elementwise" in o.traits))


def _body_size(n: Node) -> int:
    return len(n.body) if n.body is not None else 1


def _fusable_input(root: Node, max_ops: int) -> Value | None:
    """The input whose producer ``root`` can join, if any."""
    for v in root.inputs:
        if v is None or v.producer is None:
            continue
        p = v.producer
        if len(p.outputs) != 1 or v.num_uses != 1 or v.is_graph_output:
            continue
        if p.op == "fused" or p.op in ANCHORS or "elementwise" in REGISTRY[p.op].traits:
            if _body_size(p) + 1 <= max_ops:
                return v
    return None


POOLS = {"max_pool", "average_pool"}


def _pool_input(root: Node, max_ops: int) -> Value | None:
    """The input of a pooling layer whose windows tile its input (no overlap, no padding):
    it joins the conv group before it, whose kernel then computes each window's conv
    outputs as it pools them (TinyEngine's fused pooling): the conv's output never exists
    whole. None when it cannot."""
    a, v = node_attrs(root), root.input(0)
    if root.op not in POOLS or len(root.outputs) != 1 or v is None or v.producer is None:
        return None
    if v.num_uses != 1 or v.is_graph_output or a["auto_pad"] != "NOTSET" or a["ceil_mode"] or any(a["pads"]):
        return None
    k = list(a["kernel_shape"])
    if list(a["strides"] or [1] * len(k)) != k or any(d != 1 for d in a["dilations"]):
        return None
    p = v.producer
    ops = [n.op for n in p.body.nodes] if p.body is not None else [p.op]
    if len(p.outputs) != 1 or "conv" not in ops or POOLS & set(ops) or _body_size(p) + 1 > max_ops:
        return None
    return v


def _clone_into(body: Graph, n: Node, ins: list[Value | None]) -> Node:
    return body.append(Node(n.op, ins, [o.type for o in n.outputs], n.attrs, output_names=[o.name for o in n.outputs],
                            loc=n.loc))


def _group(producer: Node, root: Node) -> Node:
    """A fused node computing ``root`` over ``producer`` (itself possibly fused)."""
    body = Graph(f"{root.outputs[0].name}_body")
    outer: list[Value] = []
    mapping: dict[int, Value] = {}

    def inner(v: Value | None) -> Value | None:
        if v is None:
            return None
        if id(v) not in mapping:
            mapping[id(v)] = body.add_input(v.name, v.type)
            outer.append(v)
        return mapping[id(v)]

    if producer.body is not None:
        inner_map: dict[int, Value | None] = {id(bi): inner(ov) for bi, ov in zip(producer.body.inputs, producer.inputs)}
        for n in producer.body.nodes:
            c = _clone_into(body, n, [None if v is None else inner_map[id(v)] for v in n.inputs])
            for o, co in zip(n.outputs, c.outputs):
                inner_map[id(o)] = co
        produced = inner_map[id(producer.body.outputs[0])]
        kind = producer.attrs.get("kind", "fused")
    else:
        produced = _clone_into(body, producer, [inner(v) for v in producer.inputs]).output
        kind = producer.op
    mapping[id(producer.outputs[0])] = produced
    top = _clone_into(body, root, [inner(v) for v in root.inputs])
    body.set_outputs([top.output])
    return Node("fused", outer, [root.outputs[0].type], {"kind": f"{kind}+{root.op}"}, body=body, loc=root.loc)


def _grouping_rules(max_ops: int, pools: bool) -> list[Rule]:
    def check(m: Match) -> bool:
        assert m.root is not None
        return len(m.root.outputs) == 1 and _fusable_input(m.root, max_ops) is not None

    def rewrite(m: Match, b: Builder) -> Value:
        root = m.root
        assert root is not None
        v = _fusable_input(root, max_ops)
        assert v is not None and v.producer is not None
        return b.insert(_group(v.producer, root)).output

    def rewrite_pool(m: Match, b: Builder) -> Value:
        v = _pool_input(m.root, max_ops)
        return b.insert(_group(v.producer, m.root)).output

    return [Rule("group-elementwise", Op(_elementwise_ops(), exact_arity=False), rewrite, check=check)] + [
        Rule("group-pool", Op(tuple(sorted(POOLS)), exact_arity=False), rewrite_pool,
             check=lambda m: _pool_input(m.root, max_ops) is not None)] * pools


def fuse_pools(module: Module, max_ops: int = 8) -> int:
    """Only the pool grouping of ``fuse{pools=true}``; how many pools joined a conv group."""
    return apply_rules(module, _grouping_rules(max_ops, True)[1:]).total


@register_pass
@dataclass(frozen=True)
class Fuse(Pass):
    name = "fuse"
    max_ops: int = 8
    recognize: bool = True
    pools: bool = False

    def __post_init__(self) -> None:
        if self.max_ops < 2:
            raise ValueError(f"max-ops must be at least 2 (a group has two ops or more), got {self.max_ops}")

    def run(self, module: Module, ctx: PassContext) -> bool:
        changed = apply_rules(module, RECOGNIZE).total if self.recognize else 0
        changed += apply_rules(module, _grouping_rules(self.max_ops, self.pools)).total
        return changed > 0
