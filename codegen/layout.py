"""Blocked channel layouts (NCHW[b]c) for CPU builds: which values take them, how values
and constants are converted, and the blocked convolutions.

NeoCPU (Liu et al., USENIX ATC'19) and onnxruntime's MLAS run convolutions on a blocked
layout: ``[N, C/b, H, W, b]`` keeps ``b`` channels (one vector register) contiguous, so a
convolution's inner loop is one broadcast and one vector FMA per ``b`` output channels.

``plan_layouts`` chooses, for every 4-D float32 value of a graph, plain NCHW (absent from
the plan) or a block size. Convolutions with ``b | K/groups`` output channels produce
blocked values; the layout then flows forward through ops that do not
care about it (elementwise ops, pools, global pools, channel concat, batch norm), so a chain
conv → relu → pool → conv has no transform in it; a transform back to NCHW is made once per
value, where an op that needs NCHW (reshape, gemm, a graph output) reads it. Weights are
packed at compile time (constants), as are the constants an elementwise op broadcasts.

``codegen/relax.py`` lowers with the plan: ``Scope.value`` gives NCHW, ``Scope.value_in``
a blocked layout, converting once per value; ``BlockedEmit`` is the emitter's view of a
node whose output is blocked. ``codegen/schedules/conv.py`` schedules the blocked convolutions
(blocks ``conv2d_nchwc`` and ``dwconv2d_nchwc``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax, te, tirx

from effc.ir.core import Graph, Node, Value
from effc.ir.opdef import node_attrs
from effc.ir.types import DType, TensorType

from .relax_emit import Emit

R = relax.op

CONV_BLOCK = "conv2d_nchwc"
DEPTHWISE_BLOCK = "dwconv2d_nchwc"

ELEMENTWISE = frozenset({
    "abs", "ceil", "cos", "erf", "exp", "floor", "log", "neg", "relu", "sigmoid", "sign", "sin", "sqrt", "tanh",
    "round", "reciprocal", "softplus", "add", "sub", "mul", "div", "max", "min", "sum", "mean", "clip",
    "hard_sigmoid", "hard_swish", "elu", "selu", "leaky_relu", "prelu", "gelu", "batch_normalization",
    "identity", "dropout",
})
"""Ops applied element by element (with broadcast operands): any layout will do, if every
operand is in it."""

POOLS = frozenset({"max_pool", "average_pool", "global_average_pool", "global_max_pool"})


def block_for(channels: int | str, lanes: int) -> int | None:
    """The channel block for ``channels``: ``lanes`` when it divides them, else the
    largest power of two from lanes/2 down to 4 that does; None: stay NCHW."""
    if not isinstance(channels, int):
        return None
    b = lanes
    while b >= 4:
        if channels % b == 0:
            return b
        b //= 2
    return None


def input_block(channels: int, lanes: int) -> int:
    """The block a convolution reads a plain input in: ``block_for``, else all channels
    (a 3-channel image becomes ``[N, 1, H, W, 3]``), else 1."""
    b = block_for(channels, lanes)
    if b is not None:
        return b
    return channels if channels <= lanes else 1


def _is_nchw_f32(t: TensorType) -> bool:
    return t.rank == 4 and t.dtype == DType.f32 and isinstance(t.shape[1], int)


def _conv_kind(node: Node, const: dict[int, np.ndarray]) -> str | None:
    """``dense``, ``depthwise`` or ``grouped`` for a 2-D float convolution over constant
    weights (the ones effc blocks), else None."""
    x, w = node.input(0), node.input(1)
    if x is None or w is None or not _is_nchw_f32(x.type) or not _is_nchw_f32(node.outputs[0].type):
        return None
    if id(w) not in const and not w.is_const:
        return None
    if len(node.inputs) > 2 and node.input(2) is not None and id(node.input(2)) not in const and not node.input(2).is_const:
        return None
    if not all(isinstance(d, int) for d in x.type.shape[1:]):
        return None
    group = int(node_attrs(node)["group"])
    c, k = x.type.shape[1], node.outputs[0].type.shape[1]
    if group == 1:
        return "dense"
    if group == c == k:
        return "depthwise"
    return "grouped"


def _pointwise(node: Node) -> bool:
    """A 1x1 convolution with stride 1 and no padding (``emit_pointwise`` lowers it as a
    matmul per group when it stays NCHW: ShuffleNet's 272-channel 4-group conv at 14x14
    ran 0.086 ms against 0.175 in NCHW4c on AVX-512; 544 channels in NCHW8c, 0.092
    against 0.104 as a matmul)."""
    a = node_attrs(node)
    w = node.input(1)
    return (w is not None and list(w.type.shape[2:]) == [1, 1] and all(s == 1 for s in a.get("strides") or [1, 1])
            and not any(a.get("pads") or []) and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID"))


INT8_BLOCK = 16
"""The channel block of 8-bit values on a CPU with an integer dot product
(``layout_int8.py``); 8 or 4 where the channels are fewer (MobileNetV2's 8-channel
bottlenecks)."""


def int8_block(channels: int) -> int | None:
    """The block of an integer convolution's ``channels`` outputs (None: stay NCHW)."""
    return next((b for b in (INT8_BLOCK, 8, 4) if channels % b == 0), None)

INT8_ELEMENTWISE = frozenset({"clip", "relu", "max", "min", "identity", "qlinear_add", "qlinear_mul",
                              "quantize_linear", "dequantize_linear"})
"""Ops on (or to, or from) 8-bit values that any layout will do for, their scales and
zero points scalars (a per-channel QuantizeLinear stays NCHW)."""


def _per_tensor(node: Node, const: dict[int, np.ndarray]) -> bool:
    """Every constant operand of ``node`` a scalar (a per-tensor scale or zero point)."""
    return all(np.asarray(const.get(id(v), v.const_value)).size == 1
               for v in node.inputs if v is not None and _is_const(v, const))


def _int8_conv_kind(node: Node, const: dict[int, np.ndarray]) -> str | None:
    """``int8`` (one group: ``layout_int8.qconv2d_dot``) or ``int8_depthwise``
    (``qdepthwise_nchwc``) for a 2-D ``qlinear_conv`` of 8-bit activations, constant
    symmetric int8 weights and constant scales and zero points, whose output channels
    fill blocks (``int8_block``); else None."""
    x, w = node.input(0), node.input(3)
    if x is None or w is None or x.type.rank != 4 or x.type.dtype not in (DType.i8, DType.u8):
        return None
    params = [node.input(i) for i in (1, 2, 4, 5, 6, 7) if node.input(i) is not None]
    if not all(_is_const(v, const) for v in [w, *params]) or (node.input(8) is not None and not _is_const(node.input(8), const)):
        return None
    wv = const.get(id(w), w.const_value)
    zp = node.input(5)
    if wv is None or wv.dtype != np.int8 or (zp is not None and np.asarray(const.get(id(zp), zp.const_value)).any()):
        return None
    k, c = int(wv.shape[0]), x.type.shape[1]
    group = int(node_attrs(node)["group"])
    if int8_block(k) is None or not isinstance(c, int):
        return None
    if group == 1:
        return "int8"
    return "int8_depthwise" if group == c == k and wv.shape[1] == 1 else None


def _blockable(t: TensorType, plan: "LayoutPlan") -> bool:
    """A 4-D tensor of known channels that a layout plan may block: float32, or 8-bit
    integers where the plan blocks them."""
    return t.rank == 4 and isinstance(t.shape[1], int) and (
        t.dtype == DType.f32 or plan.int8 and t.dtype in (DType.i8, DType.u8))


class LayoutPlan:
    """Value id -> channel block, for the values held blocked; and the convs to block."""

    def __init__(self, lanes: int, int8: bool = False):
        self.lanes = lanes
        self.int8 = int8
        """Block 8-bit values too (``INT8_BLOCK``: the CPU has an integer dot product)."""
        self.block: dict[int, int] = {}
        self.convs: dict[int, str] = {}
        """Conv node id -> ``dense`` | ``depthwise`` | ``grouped``."""
        self.blocked_nodes: set[int] = set()

    def of(self, v: Value | None) -> int | None:
        return None if v is None else self.block.get(id(v))

    def __bool__(self) -> bool:
        return bool(self.block)


def plan_layouts(graph: Graph, lanes: int, int8: bool = False) -> LayoutPlan:
    """Blocked layouts for ``graph`` (fused bodies included) on a CPU with ``lanes`` f32
    vector lanes. Greedy and forward, as TVM's ConvertLayout: a conv blocks its output;
    an op that does not care about layout keeps the block of its blocked operands.
    ``int8``: integer convolutions (``qlinear_conv``) block theirs too (``int8_block``)."""
    plan = LayoutPlan(lanes, int8)
    _plan_graph(graph, plan, {})
    return plan


def _plan_graph(g: Graph, plan: LayoutPlan, const: dict[int, np.ndarray]) -> None:
    for node in g.nodes:
        if node.op == "const":
            continue
        if node.body is not None:
            for bv, ov in zip(node.body.inputs, [v for v in node.inputs if v is not None]):
                b = plan.of(ov)
                if b is not None:
                    plan.block[id(bv)] = b
                c = const.get(id(ov), ov.const_value)
                if c is not None:
                    const[id(bv)] = c
            _plan_graph(node.body, plan, const)
            for bo, o in zip(node.body.outputs, node.outputs):
                b = plan.of(bo)
                if b is not None and id(bo) not in const:
                    plan.block[id(o)] = b
            continue
        b = _node_block(node, plan, const)
        if b is not None:
            plan.blocked_nodes.add(id(node))
            for o in node.outputs[:1]:
                plan.block[id(o)] = b


def _is_const(v: Value, const: dict[int, np.ndarray]) -> bool:
    return id(v) in const or v.is_const


def _node_block(node: Node, plan: LayoutPlan, const: dict[int, np.ndarray]) -> int | None:
    out = node.outputs[0].type
    if node.op == "qlinear_conv":
        kind = _int8_conv_kind(node, const) if plan.int8 else None
        b = int8_block(int(out.shape[1]))
        if kind is None or kind == "int8_depthwise" and plan.of(node.input(0)) not in (None, b):
            return None
        plan.convs[id(node)] = kind
        return b
    if node.op == "conv":
        kind = _conv_kind(node, const)
        if kind is None:
            return None
        group = int(node_attrs(node)["group"]) if kind == "grouped" else 1
        b = block_for(out.shape[1] // group, plan.lanes)  # (a block never straddles two groups)
        if b is None or (kind == "grouped" and b < plan.lanes // 2 and _pointwise(node)):
            return None  # (a narrow block: a matmul per group in NCHW is faster, ``pointwise_nchw``)
        if kind == "depthwise" and plan.of(node.input(0)) not in (None, b):
            return None  # (a depthwise conv reads and writes one block)
        plan.convs[id(node)] = kind
        return b
    if not _blockable(out, plan):
        return None
    data = [v for v in node.inputs if v is not None and not _is_const(v, const)]
    blocks = {plan.of(v) for v in data} - {None}
    if len(blocks) != 1:
        return None
    (b,) = blocks
    if out.shape[1] % b:
        return None
    if out.dtype != DType.f32 and node.op not in INT8_ELEMENTWISE | {"max_pool", "global_max_pool", "concat"}:
        return None
    if node.op in INT8_ELEMENTWISE - ELEMENTWISE and not (plan.int8 and _per_tensor(node, const)):
        return None
    if node.op in POOLS:
        return b if node.input(0) is not None and plan.of(node.input(0)) == b and (
            node.op.startswith("global") or len(node_attrs(node)["kernel_shape"]) == 2) else None
    if node.op == "concat":
        rank = node.inputs[0].type.rank
        if node_attrs(node)["axis"] % rank != 1:
            return None
        return b if all(_blockable(v.type, plan) and v.type.shape[1] % b == 0 and not _is_const(v, const)
                        for v in node.inputs if v is not None) else None
    if node.op not in ELEMENTWISE | INT8_ELEMENTWISE or len(node.outputs) > 1 and node.op != "dropout":
        return None
    if node.op == "batch_normalization" and not all(
            node.input(i) is not None and _is_const(node.input(i), const) for i in range(1, 5)):
        return None
    for v in data:
        t = v.type
        if plan.of(v) == b and tuple(t.shape) == tuple(out.shape):
            continue
        if _blockable(t, plan) and t.shape[1] in (1, out.shape[1]) and plan.of(v) is None:
            continue  # converted when read
        return None
    return b


# ----------------------------------------------------------------------------- conversions


def blocked_shape(shape: tuple[Any, ...] | list[Any], b: int) -> list[Any]:
    n, c, h, w = shape
    return [n, c // b, h, w, b]


def block_array(array: np.ndarray, out_channels: int, b: int) -> np.ndarray:
    """A constant broadcast against an NCHW tensor of ``out_channels`` channels, as one
    broadcast against its ``[N, C/b, H, W, b]`` form."""
    a = np.asarray(array)
    if a.ndim == 0:
        return a
    a = a.reshape((1,) * (4 - a.ndim) + a.shape) if a.ndim < 4 else a
    n, c, h, w = a.shape
    if c == 1:
        return a.reshape(n, 1, h, w, 1)
    assert c == out_channels, (a.shape, out_channels)
    return np.ascontiguousarray(a.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2))


class BlockedEmit(Emit):
    """An emitter's view of a node whose output is blocked: its data operands come
    blocked (converted when they are not), constants are blocked to broadcast against
    the blocked output, and ``layout`` names the layout for ops that take one."""

    def __init__(self, scope, node: Node, b: int):
        super().__init__(scope, node)
        self.block = b
        self.layout = f"NCHW{b}c"
        self.channels = int(node.outputs[0].type.shape[1])

    def x(self, i: int) -> relax.Expr | None:
        v = self.node.input(i)
        if v is None:
            return None
        c = self.const(i)
        if c is not None:
            return self.scope.constant(block_array(c, self.channels, self.block))
        t = v.type
        if t.rank == 4 and t.shape[1] == 1 and self.scope.block_of(v) is None:
            return self.bb.emit(R.expand_dims(self.scope.value(v), [4]))
        return self.scope.value_in(v, self.block)

    def constant(self, array: Any, dtype: DType | np.dtype | None = None) -> relax.Expr:
        np_dtype = dtype.np if isinstance(dtype, DType) else dtype
        a = np.asarray(array, dtype=np_dtype)
        return self.scope.constant(block_array(a, self.channels, self.block) if a.ndim else a)


# ----------------------------------------------------------------------------- convolutions


def pack_weight(w: np.ndarray, cb: int, b: int) -> np.ndarray:
    """OIHW → ``[K/b, C/cb, KH, KW, cb, b]``: one vector of ``b`` output channels per
    input channel and tap, contiguous."""
    k, c, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(k // b, b, c // cb, cb, kh, kw).transpose(0, 2, 4, 5, 3, 1))


def pack_depthwise(w: np.ndarray, b: int) -> np.ndarray:
    """``[C, 1, KH, KW]`` → ``[C/b, KH, KW, b]``."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c // b, b, kh, kw).transpose(0, 2, 3, 1))


def _padded(data: te.Tensor, pads: tuple[int, int, int, int], fill: float | int = 0) -> te.Tensor:
    """``[N, C/b, H, W, b]`` padded with ``fill`` (an integer tensor's zero point)."""
    top, left, bottom, right = pads
    if not any(pads):
        return data
    n, c, h, w, i = data.shape
    zero = tirx.const(fill, data.dtype)
    return te.compute(
        (n, c, h + top + bottom, w + left + right, i),
        lambda a, b, y, x, j: tirx.if_then_else(
            tirx.all(y >= top, y < h + top, x >= left, x < w + left), data[a, b, y - top, x - left, j], zero),
        name="pad_nchwc")


def _out_size(size: tuple[Any, Any], kernel: tuple[Any, Any], pads: tuple[int, int, int, int], strides: list[int],
              dilations: list[int]) -> tuple[Any, Any]:
    """Output rows and columns of a 2-D window (pads: top, left, bottom, right)."""
    return tuple((size[i] + pads[i] + pads[i + 2] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                 for i in range(2))


def conv2d_nchwc(data: te.Tensor, weight: te.Tensor, strides: list[int], pads: tuple[int, int, int, int],
                 dilations: list[int], groups: int = 1) -> te.Tensor:
    """``data [N, C/cb, H, W, cb]`` * ``weight [K/b, C/groups/cb, KH, KW, cb, b]`` →
    ``[N, K/b, OH, OW, b]``; reduction loops in the order a register-tiled schedule
    keeps (input block outer, taps, input channel inner). With ``groups``, output block
    ``o`` reads the input blocks of its group (no block straddles two groups)."""
    n, _, h, w, cb = data.shape
    ko, cc, kh, kw, _, b = weight.shape
    per_group = ko // groups  # output blocks per group
    sh, sw = strides
    dh, dw = dilations
    oh, ow = _out_size((h, w), (kh, kw), pads, strides, dilations)
    p = _padded(data, pads)
    rc = te.reduce_axis((0, cc), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    ri = te.reduce_axis((0, cb), "ri")
    return te.compute(
        (n, ko, oh, ow, b),
        lambda a, o, y, x, j: te.sum(
            p[a, rc if groups == 1 else o // per_group * cc + rc, y * sh + ry * dh, x * sw + rx * dw, ri]
            * weight[o, rc, ry, rx, ri, j], axis=[rc, ry, rx, ri]),
        name=CONV_BLOCK)


def depthwise_nchwc(data: te.Tensor, weight: te.Tensor, strides: list[int], pads: tuple[int, int, int, int],
                    dilations: list[int]) -> te.Tensor:
    """``data [N, C/b, H, W, b]`` * ``weight [C/b, KH, KW, b]`` → ``[N, C/b, OH, OW, b]``."""
    n, cc, h, w, b = data.shape
    _, kh, kw, _ = weight.shape
    sh, sw = strides
    dh, dw = dilations
    oh, ow = _out_size((h, w), (kh, kw), pads, strides, dilations)
    p = _padded(data, pads)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    return te.compute(
        (n, cc, oh, ow, b),
        lambda a, c, y, x, j: te.sum(p[a, c, y * sh + ry * dh, x * sw + rx * dw, j] * weight[c, ry, rx, j],
                                     axis=[ry, rx]),
        name=DEPTHWISE_BLOCK)


def emit_conv(e: BlockedEmit, kind: str, begins: list[int], ends: list[int], strides: list[int],
              dilations: list[int]) -> relax.Expr:
    """A conv node as a blocked convolution plus its bias (the output blocked)."""
    b = e.block
    w = np.asarray(e.const(1), dtype=np.float32)
    pads = (begins[0], begins[1], ends[0], ends[1])
    if kind == "depthwise":
        x = e.scope.value_in(e.node.input(0), b)
        y = e.scope.root_bb.call_te(depthwise_nchwc, x, e.scope.constant(pack_depthwise(w, b)), strides, pads,
                                    dilations, primfunc_name_hint="dwconv2d_nchwc")
    else:
        v = e.node.input(0)
        group = int(e.attrs["group"])
        per_group = int(v.type.shape[1]) // group
        cb = e.scope.block_of(v)
        if cb is None or per_group % cb:  # (an input block never straddles two groups)
            cb = input_block(per_group, e.scope.plan.lanes)
        x = e.scope.value_in(v, cb)
        y = e.scope.root_bb.call_te(conv2d_nchwc, x, e.scope.constant(pack_weight(w, cb, b)), strides, pads,
                                    dilations, int(e.attrs["group"]), primfunc_name_hint="conv2d_nchwc")
    y = e.emit(y)
    if e.has(2):
        bias = np.asarray(e.const(2), dtype=np.float32).reshape(1, -1, 1, 1)
        y = R.add(y, e.scope.constant(block_array(bias, e.channels, b)))
    return y


# ----------------------------------------------------------------------------- packed matmul weights


DENSE_BLOCK = "dense_packed"


def panel_width(n: int, lanes: int) -> int | None:
    """Columns per panel of a packed weight with ``n`` columns: the largest multiple of
    ``lanes`` up to two vectors that divides ``n``, else the largest divisor from ``lanes``
    down to 4; None: too narrow to pack."""
    for width in range(2 * lanes, 0, -lanes):
        if n % width == 0:
            return width
    for width in range(lanes, 3, -1):
        if n % width == 0:
            return width
    return None


def pack_dense(b: np.ndarray, width: int) -> np.ndarray:
    """A ``[K, N]`` weight as ``[N/width, K, width]``: each panel of ``width`` columns
    contiguous, so a matmul streams it in order (read as ``[K, N]``, consecutive rows of a
    panel are N floats apart; packing took light AlexNet from 50 to 27 ms at 1 thread,
    its 9216 x 4096 layer from 22.6 to 7.4 ms)."""
    k, n = b.shape
    return np.ascontiguousarray(b.reshape(k, n // width, width).transpose(1, 0, 2))


def dense_packed(a: te.Tensor, bp: te.Tensor) -> te.Tensor:
    """``a [M, K]`` x packed ``bp [N/w, K, w]`` -> ``[M, N]`` (``schedules/generic.py``'s
    matmul rule tiles it with panels of ``w`` columns)."""
    m, k = a.shape
    panels, _, w = bp.shape
    r = te.reduce_axis((0, k), "k")
    return te.compute((m, panels * w), lambda i, j: te.sum(a[i, r] * bp[j // w, r, j % w], axis=r),
                      name=DENSE_BLOCK)


POINTWISE_BLOCK = "pointwise_conv"


def pointwise_nchw(x: te.Tensor, w: te.Tensor) -> te.Tensor:
    """A 1x1 convolution (stride 1, no padding) in NCHW as a matmul per group:
    ``x [N, G, C/G, H*W]`` (a view of the input) and ``w [G, K/G, C/G]`` ->
    ``[N, G, K/G, H*W]``. Its rows are output channels and its columns pixels, contiguous
    in the input and the output, so ``schedules/generic.py``'s matmul rule vectorizes
    along pixels."""
    n, g, c, p = x.shape
    _, k, _ = w.shape
    r = te.reduce_axis((0, c), "c")
    return te.compute((n, g, k, p), lambda b, j, i, q: te.sum(w[j, i, r] * x[b, j, r, q], axis=r),
                      name=POINTWISE_BLOCK)


def emit_pointwise(e: Emit, strides: list[int], pads: list[int], dilations: list[int]) -> relax.Expr | None:
    """An NCHW 2-D 1x1 convolution with stride 1 and no padding over a constant weight as
    ``pointwise_nchw`` between two reshapes (views), without its bias; None for any other
    conv, or where this is not a CPU build with effc's schedules."""
    xt, w = e.in_type(0), e.const(1)
    if not e.scope.lanes or w is None or xt.rank != 4 or not all(isinstance(d, int) for d in xt.shape) \
            or w.shape[2:] != (1, 1) or strides != [1, 1] or any(pads) or dilations != [1, 1] \
            or xt.dtype != DType.f32:
        return None
    groups = int(e.attrs["group"])
    n, c, h, wd = (int(d) for d in xt.shape)
    k = int(w.shape[0])
    x = e.emit(R.reshape(e.x(0), [n, groups, c // groups, h * wd]))
    wg = e.scope.constant(np.ascontiguousarray(np.asarray(w, dtype=np.float32).reshape(groups, k // groups, c // groups)))
    y = e.emit(e.scope.root_bb.call_te(pointwise_nchw, x, wg, primfunc_name_hint="conv"))
    return R.reshape(y, [n, k, h, wd])


def emit_dense(e: Emit, a: relax.Expr, b: np.ndarray) -> relax.Expr | None:
    """``a [..., K]`` x the constant ``b [K, N]`` as a matmul over ``b`` packed into panels,
    or None when this is not a CPU build with effc's schedules or ``b`` is too narrow."""
    lanes = e.scope.lanes
    width = panel_width(int(b.shape[1]), lanes) if lanes and b.ndim == 2 and b.dtype == np.float32 else None
    shape = e.in_type(0).shape
    if width is None or not all(isinstance(d, int) for d in shape):
        return None
    rows = int(np.prod(shape[:-1]))
    a2 = a if len(shape) == 2 else e.emit(R.reshape(a, [rows, int(shape[-1])]))
    if not isinstance(a2, relax.Var):
        a2 = e.emit(a2)
    y = e.emit(e.scope.root_bb.call_te(dense_packed, a2, e.scope.constant(pack_dense(b, width)),
                                       primfunc_name_hint="dense"))
    return y if len(shape) == 2 else R.reshape(y, [*shape[:-1], int(b.shape[1])])
