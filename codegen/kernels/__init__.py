"""effc's own C kernels for AOT programs, used in place of TVM's where they are faster.

``effc_int8.c``/``.h`` (package data, copied into each program that uses them and built
with effc's own files, ``-Wall -Wextra -Werror``): int8 convolutions for Cortex-M, on the
Armv7E-M DSP instructions (SMLAD on int16 pairs, SXTB16 to unpack four int8 weights), with
plain C equivalents on cores without them, and on Helium (VMLADAVA on bytes) where the core
has it.

``effc_gemm_s8_f32``: a ``qgemm`` whose result stays float (no output scale: the
projections and classifiers ``qdq-to-integer`` makes of matmuls and gemms whose outputs are
not quantized), on the same SMLAD/SXTB16 sums, two rows by two columns at a time, each
int32 sum times its column's float32 scale as the interpreter computes it (bit for bit).
``int8_gemms(schedule, module)`` gives such steps an ``Int8Gemm``: on the M4 the digits
transformer's 14 products take 0.27x the instructions of TVM's C kernel for them.

``int8_convolutions(schedule, module, mve)`` finds the AOT program's steps that compute a
``qlinear_conv`` these kernels can run (2-D, batch 1, one group or depthwise, int8 weights
with zero point 0, ``fixed_point`` rounding), alone or fused with clamps and a residual
``qlinear_add``, and gives each an ``Int8Conv``: the driver then calls ``effc_conv_s8``,
``effc_conv_s8_mve`` or ``effc_dwconv_s8`` instead of TVM's kernel, on weights packed at
compile time (the rows padded to the kernel's step; every four bytes in the order SXTB16
unpacks for the DSP kernel, the shifted zero point folded into the bias for Helium's), the
bias, and the requantization as an int32 multiplier and an int8 shift per channel (TVM's
kernel keeps three int64 constants per channel). A depthwise step
whose input dies there writes its output over it (``schedule.inplace``), TinyEngine's
in-place depthwise: the kernel reads each channel into its scratch before writing it.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable

import numpy as np

from effc.ir.core import Module, Node, Value
from effc.ir.opdef import node_attrs
from effc.ir.ops.nn import window_geometry
from effc.ir.ops.quant import _channel_multiplier
from effc.passes.memory_plan_offsets import align_up

from ..layout_int8 import fixed_point_constants

KERNEL_H = "effc_int8.h"
KERNEL_C = "effc_int8.c"
SOURCES = (KERNEL_H, KERNEL_C)
"""The files a program that calls these kernels carries (the ``.c`` ones compiled)."""

DW_MAX_WORDS = 32
"""Depthwise taps per channel the kernel holds, in int16 pairs (``EFFC_DW_MAX_WORDS``)."""

PARAMS = (("in_c", "u16"), ("in_h", "u16"), ("in_w", "u16"), ("out_c", "u16"), ("out_h", "u16"), ("out_w", "u16"),
          ("k_h", "u8"), ("k_w", "u8"), ("stride_h", "u8"), ("stride_w", "u8"), ("dil_h", "u8"), ("dil_w", "u8"),
          ("x_unsigned", "u8"), ("r_unsigned", "u8"), ("pad_t", "i16"), ("pad_l", "i16"),
          ("k4", "u16"), ("x_zp", "i32"), ("y_zp", "i32"), ("y_min", "i32"), ("y_max", "i32"), ("r_zp", "i32"),
          ("c_zp", "i32"), ("c_min", "i32"), ("c_max", "i32"), ("a_scale", "f32"), ("r_scale", "f32"),
          ("c_scale", "f32"))
"""``effc_conv_s8_params``: its fields and their C types, in declaration order."""
_LIMITS = {"in_c": 0xFFFF, "in_h": 0xFFFF, "in_w": 0xFFFF, "out_c": 0xFFFF, "out_h": 0xFFFF, "out_w": 0xFFFF,
           "k_h": 0xFF, "k_w": 0xFF, "stride_h": 0xFF, "stride_w": 0xFF, "dil_h": 0xFF, "dil_w": 0xFF,
           "pad_t": 0x7FFF, "pad_l": 0x7FFF, "k4": 0xFFFF}


def source(name: str) -> bytes:
    """The text of one of ``SOURCES``."""
    return resources.files(__package__).joinpath(name).read_bytes()


@dataclass
class Int8Conv:
    """A step the driver computes with ``effc_conv_s8`` (or ``effc_dwconv_s8``): the
    kernel's parameters and the numbers of its four weights (packed weight, bias,
    multiplier, shift) in ``schedule.weights``."""

    depthwise: bool
    params: dict[str, int | float]
    weights: list[int]
    scratch: int
    """Bytes of scratch: two im2col columns (int16; int8 on Helium), or one padded int16 plane."""
    residual: bool = False
    """The step's second argument is the residual its ``qlinear_add`` adds."""
    mve: bool = False
    """On Helium (``effc_conv_s8_mve``, int8 columns and weights in natural order)."""
    sparse: bool = False
    """On compressed sparse weights (``effc_conv_s8_sparse``, ``sparse_rows``)."""
    requires_in_place = False

    @property
    def function(self) -> str:
        return "effc_dwconv_s8" if self.depthwise else "effc_conv_s8_mve" if self.mve else \
            "effc_conv_s8_sparse" if self.sparse else "effc_conv_s8"

    def scratch_bytes(self, align: int) -> int:
        return align_up(self.scratch, align)

    def c_lines(self, label: str, x: str, y: str, weight: Callable[[int], str], scratch: str,
                residual: str | None = None) -> list[str]:
        """The call, as C statements in a block of their own (``residual``: the pointer to the
        added tensor, for a convolution fused with a ``qlinear_add``)."""
        w, bias, mult, shift = (weight(k) for k in self.weights)
        values = ", ".join(_c_value(self.params.get(f, 0), t) for f, t in PARAMS)
        residual = "" if self.depthwise else f"{residual or 'NULL'}, "
        return [f"  {{ /* {label}: {self.function}, effc's int8 kernel */",
                f"    static const effc_conv_s8_params effc_p = {{{values}}};",
                f"    {self.function}(&effc_p, {x}, (const {'uint8_t' if self.sparse else 'int8_t'}*){w}, "
                f"(const int32_t*){bias}, "
                f"(const int32_t*){mult}, (const int8_t*){shift}, {residual}{y}, "
                f"({'int8_t' if self.mve else 'int16_t'}*){scratch});",
                "  }"]


GEMM_PARAMS = (("rows", "u16"), ("cols", "u16"), ("depth", "u16"), ("k4", "u16"), ("a_unsigned", "u8"),
               ("a_zp", "i32"))
"""``effc_gemm_s8_params``: its fields and their C types, in declaration order."""


@dataclass
class Int8Gemm:
    """A step the driver computes with ``effc_gemm_s8_f32``: a ``qgemm`` with a float result
    (no output scale), its parameters and the numbers of its three weights (packed weight,
    int32 bias, float32 scale per column) in ``schedule.weights``."""

    params: dict[str, int]
    weights: list[int]
    scratch: int
    requires_in_place = False
    function = "effc_gemm_s8_f32"

    def scratch_bytes(self, align: int) -> int:
        return align_up(self.scratch, align)

    def c_lines(self, label: str, x: str, y: str, weight: Callable[[int], str], scratch: str,
                residual: str | None = None) -> list[str]:
        w, bias, scale = (weight(k) for k in self.weights)
        values = ", ".join(_c_value(self.params[f], t) for f, t in GEMM_PARAMS)
        return [f"  {{ /* {label}: {self.function}, effc's int8 kernel */",
                f"    static const effc_gemm_s8_params effc_p = {{{values}}};",
                f"    {self.function}(&effc_p, {x}, (const int8_t*){w}, (const int32_t*){bias}, "
                f"(const float*){scale}, (float*){y}, (int16_t*){scratch});",
                "  }"]


def gemm_plan(node: Node) -> tuple[dict[str, int], list[np.ndarray], Value] | None:
    """A ``qgemm`` step (alone, or the one node of a fused body) ``effc_gemm_s8_f32`` can
    compute: a float result (no output scale), ``a`` a static 2-D 8-bit tensor, an int8
    constant weight with zero point 0, an int32 constant bias or none, constant float32
    scales. Returns its parameters, weights (packed weight, bias, scale) and input, or None."""
    outer: dict[int, Value] = {}
    if node.body is not None:
        inner = [n for n in node.body.nodes if n.op != "const"]
        if len(inner) != 1 or len(node.body.outputs) != 1 or node.body.outputs[0] is not inner[0].outputs[0]:
            return None
        outer = {id(b): o for b, o in zip(node.body.inputs, node.inputs)}
        node = inner[0]
    if node.op != "qgemm":
        return None

    def value(i: int) -> Value | None:
        v = node.input(i) if i < len(node.inputs) else None
        return None if v is None else outer.get(id(v), v)

    def const(i: int) -> np.ndarray | None:
        v = value(i)
        return None if v is None else v.const_value

    a = node_attrs(node)
    at, yt = value(0).type, node.outputs[0].type
    if value(7) is not None or a["transA"] or at.rank != 2 or not at.is_static or at.dtype.name not in ("i8", "u8") \
            or yt.dtype.name != "f32" or not yt.is_static:
        return None
    w, a_scale, w_scale = const(3), const(1), const(4)
    if w is None or a_scale is None or w_scale is None or w.dtype != np.int8 or w.ndim != 2:
        return None
    if value(2) is not None and const(2) is None or value(5) is not None and (const(5) is None or np.any(const(5))):
        return None
    if value(6) is not None and (const(6) is None or const(6).dtype != np.int32):
        return None
    rows, depth = (int(d) for d in at.shape)
    wt = np.asarray(w if a["transB"] else w.T)  # [cols, depth]
    if wt.shape[1] != depth:
        return None
    cols = wt.shape[0]
    bias = np.broadcast_to(np.asarray(const(6) if value(6) is not None else np.zeros(1, np.int32),
                                      np.int64).reshape(-1), (cols,))
    # the same float32 operations as the interpreter (``_ref_qgemm``), so the same bits
    scale = (np.float32(a["alpha"]) * np.float32(np.asarray(a_scale).reshape(-1)[0])
             * np.asarray(w_scale, np.float32).reshape(-1)).astype(np.float32)
    scale = np.broadcast_to(scale, (cols,))
    # |sum| stays within int32: depth * 255 * 128 plus the bias
    if max(rows, cols, depth) > 0xFFFF or np.abs(bias).max(initial=0) + depth * 255 * 128 >= 2 ** 31:
        return None
    k4 = -(-depth // 4) * 4
    packed = np.zeros((cols, k4), np.int8)
    packed[:, :depth] = wt
    packed = packed.reshape(cols, k4 // 4, 4)[:, :, [0, 2, 1, 3]]
    zp = int(_scalar(const(2))) if value(2) is not None else 0
    params = dict(rows=rows, cols=cols, depth=depth, k4=k4, a_unsigned=int(at.dtype.name == "u8"), a_zp=zp)
    weights = [np.ascontiguousarray(packed).reshape(-1), bias.astype(np.int32), np.ascontiguousarray(scale)]
    return params, weights, value(0)


def _c_value(v: int | float, ctype: str) -> str:
    return repr(float(np.float32(v))) + "f" if ctype == "f32" else str(int(v))


@dataclass
class _Chain:
    """A step's node as these kernels see it: a ``qlinear_conv``, the clamps after it, and
    optionally a ``qlinear_add`` of the result and a residual (and the clamps after that),
    each reading the one before; ``outer`` maps a fused body's values to the step's."""

    conv: Node
    clips: list[Node]
    add: Node | None
    add_clips: list[Node]
    outer: dict[int, Value]

    def value(self, v: Value | None) -> Value | None:
        return None if v is None else self.outer.get(id(v), v)

    def const(self, v: Value | None) -> np.ndarray | None:
        v = self.value(v)
        return None if v is None else v.const_value


def _chain(node: Node) -> _Chain | None:
    if node.op == "qlinear_conv":
        return _Chain(node, [], None, [], {})
    if node.body is None:
        return None
    nodes = list(node.body.nodes)
    if not nodes or nodes[0].op != "qlinear_conv" or len(node.body.outputs) != 1 \
            or node.body.outputs[0] is not nodes[-1].outputs[0]:
        return None
    ops = [n.op for n in nodes[1:]]
    k = ops.index("qlinear_add") + 1 if "qlinear_add" in ops else len(nodes)
    if any(op not in CLAMPS for i, op in enumerate(ops, 1) if i != k):
        return None
    for prev, n in zip(nodes, nodes[1:]):
        if prev.outputs[0] not in n.inputs or len(prev.outputs[0].uses()) != 1 \
                or (n.op == "clip" and n.input(0) is not prev.outputs[0]):
            return None
    outer = {id(b): o for b, o in zip(node.body.inputs, node.inputs)}
    return _Chain(nodes[0], nodes[1:k], nodes[k] if k < len(nodes) else None, nodes[k + 1:], outer)


CLAMPS = ("clip", "max", "min")
"""Ops after a convolution the kernels apply as bounds: ``clip`` with constant bounds, and
``max``/``min`` of the value and a constant scalar (ReLU on 8-bit values: ``max(x, zp)``)."""


def _clamped(bounds: tuple[int, int], clips: list[Node], chain: _Chain) -> tuple[int, int] | None:
    """``bounds`` narrowed by each clamp's constant bounds (None: one is not a constant scalar)."""
    lo, hi = bounds
    for clip in clips:
        if clip.op == "clip":
            cmin, cmax = chain.const(clip.input(1)), chain.const(clip.input(2))
            if (clip.input(1) is not None and cmin is None) or (clip.input(2) is not None and cmax is None):
                return None
        else:
            if len(clip.inputs) != 2:
                return None
            consts = [chain.const(v) for v in clip.inputs]
            scalar = [c for c in consts if c is not None and np.asarray(c).size == 1]
            if len(scalar) != 1 or consts.count(None) != 1:
                return None
            cmin, cmax = (scalar[0], None) if clip.op == "max" else (None, scalar[0])
        lo = max(lo, int(np.asarray(cmin).reshape(()))) if cmin is not None else lo
        hi = min(hi, int(np.asarray(cmax).reshape(()))) if cmax is not None else hi
    return (lo, hi) if lo <= hi else None


def _scalar(a: np.ndarray | None, default: float = 0) -> float:
    return default if a is None else np.asarray(a).reshape(-1)[0].item()


def _residual(chain: _Chain, conv_out: Value, p: dict[str, int | float]) -> Value | None:
    """The residual of the chain's ``qlinear_add`` (the operand that is not the convolution's
    result) with its parameters set in ``p``; None where the kernel cannot add it."""
    add, const = chain.add, chain.const
    assert add is not None
    mine = 0 if add.input(0) is conv_out else 3 if add.input(3) is conv_out else None
    if mine is None:
        return None
    other = 3 - mine
    r = add.input(other)
    scales = [const(add.input(i)) for i in (mine + 1, other + 1, 6)]
    zps = [const(add.input(i)) for i in (mine + 2, other + 2, 7)]
    if any(s is None or np.asarray(s).size != 1 or np.asarray(s).dtype != np.float32 for s in scales) \
            or any(add.input(i) is not None and z is None for i, z in zip((mine + 2, other + 2, 7), zps)) \
            or tuple(r.type.shape) != tuple(conv_out.type.shape) or r.type.dtype != conv_out.type.dtype:
        return None
    if _scalar(zps[0]) != p["y_zp"]:
        return None
    bounds = _clamped(add.outputs[0].type.dtype.int_range, chain.add_clips, chain)
    if bounds is None:
        return None
    p.update(r_unsigned=int(r.type.dtype.name == "u8"), r_zp=int(_scalar(zps[1])), c_zp=int(_scalar(zps[2])),
             c_min=bounds[0], c_max=bounds[1], a_scale=_scalar(scales[0]), r_scale=_scalar(scales[1]),
             c_scale=_scalar(scales[2]))
    return chain.value(r)


@dataclass
class ConvPlan:
    """What a step's node becomes: the kernel (depthwise or not), its parameters, its
    weights (packed weight, bias, multiplier, shift), and its effc values: the input and,
    for a convolution fused with a ``qlinear_add``, the residual."""

    depthwise: bool
    params: dict[str, int | float]
    weights: list[np.ndarray]
    x: Value
    residual: Value | None
    mve: bool = False
    sparse: bool = False


SPARSE_DENSITY = {"speed": 0.25, "flash": 0.75, "off": 0.0}
"""``build_cortex_m(sparse_weights=...)``: a one-group convolution whose int8 weights are at
most this share nonzero takes ``effc_conv_s8_sparse`` (a bitmask and the nonzero values per
output channel). ``speed``: where it is also no slower (on digits_cnn's M4 build, 0.94x the
dense kernel's instructions at 25% nonzero, 1.46x at 50%: bench/RESULTS.md); ``flash``:
wherever it saves a useful share of flash; ``off``: never."""


def sparse_rows(w: np.ndarray) -> np.ndarray:
    """``effc_conv_s8_sparse``'s weight blob for ``w`` ``[out_c, K]`` int8: the row offsets,
    then per row its bitmask words and its nonzero values padded to a word."""
    m, k = w.shape
    words = -(-k // 32)
    rows = []
    for row in w:
        bits = np.zeros(words * 32, np.uint8)
        bits[:k] = row != 0
        mask = np.packbits(bits, bitorder="little").view("<u4")
        values = row[row != 0].astype(np.int8).tobytes()
        values += bytes(-len(values) % 4)
        rows.append(mask.tobytes() + values)
    offsets = np.cumsum([4 * m] + [len(r) for r in rows[:-1]]).astype("<u4")
    return np.frombuffer(offsets.tobytes() + b"".join(rows), np.uint8).copy()


def conv_plan(node: Node, mve: bool = False, sparse_density: float = SPARSE_DENSITY["speed"]) -> ConvPlan | None:
    """The plan for a step's node, or None where these kernels do not apply (TVM's kernel
    stays). ``mve``: a one-group convolution takes the Helium kernel (its weights in
    natural order, rows padded to 16, the shifted zero point folded into the bias).
    ``sparse_density``: a one-group convolution with at most this share of nonzero weights
    takes the sparse kernel (``SPARSE_DENSITY``)."""
    chain = _chain(node)
    if chain is None:
        return None
    conv, const = chain.conv, chain.const
    a = dict(conv.attrs)
    if a.get("rounding", "onnx") != "fixed_point":
        return None
    xt, wt, ct, yt = conv.input(0).type, conv.input(3).type, conv.outputs[0].type, node.outputs[0].type
    if xt.rank != 4 or not xt.is_static or not yt.is_static or xt.shape[0] != 1 or wt.dtype.name != "i8":
        return None
    if any(t.dtype.name not in ("i8", "u8") for t in (xt, ct, yt)):
        return None
    w = const(conv.input(3))
    xs, xz, ws, wz, ys, yz = (const(conv.input(i)) for i in (1, 2, 4, 5, 6, 7))
    if w is None or xs is None or ws is None or ys is None or any(
            conv.input(i) is not None and z is None for i, z in zip((2, 5, 7), (xz, wz, yz))):
        return None
    if wz is not None and np.any(np.asarray(wz) != 0):
        return None
    bias = const(conv.input(8)) if conv.input(8) is not None else np.zeros(wt.shape[0], np.int32)
    if bias is None:
        return None
    _, c, h, wd = (int(d) for d in xt.shape)
    m, cg, kh, kw = (int(d) for d in w.shape)
    group = int(a.get("group", 1))
    depthwise = group == c == m and cg == 1 and group > 1
    if group != 1 and not depthwise:
        return None
    try:
        sizes, begins, _ = window_geometry([h, wd], [kh, kw], a, ValueError)
    except ValueError:
        return None
    strides = list(a.get("strides") or [1, 1])
    dilations = list(a.get("dilations") or [1, 1])
    bounds = _clamped(ct.dtype.int_range, chain.clips, chain)
    if bounds is None:
        return None
    mult = np.broadcast_to(np.asarray(_channel_multiplier(xs, ws, ys, 4)).reshape(-1), (m,))
    try:
        q, r, _ = fixed_point_constants(mult)
    except ValueError:
        return None
    mve = mve and not depthwise
    step = 2 if depthwise else 16 if mve else 4  # (a depthwise row of taps: pairs; else words or Helium vectors)
    k4 = -(-(kw if depthwise else c * kh * kw) // step) * step
    p: dict[str, int | float] = dict(
        in_c=c, in_h=h, in_w=wd, out_c=m, out_h=int(yt.shape[2]), out_w=int(yt.shape[3]), k_h=kh, k_w=kw,
        stride_h=strides[0], stride_w=strides[1], dil_h=dilations[0], dil_w=dilations[1],
        x_unsigned=int(xt.dtype.name == "u8"),
        pad_t=int(begins[0]), pad_l=int(begins[1]), k4=k4, x_zp=int(_scalar(xz)), y_zp=int(_scalar(yz)),
        y_min=bounds[0], y_max=bounds[1])
    residual = None
    if chain.add is not None:
        last = chain.clips[-1].outputs[0] if chain.clips else conv.outputs[0]
        residual = None if depthwise else _residual(chain, last, p)
        if residual is None:
            return None
    if [int(d) for d in sizes] != [p["out_h"], p["out_w"]] \
            or any(not 0 <= p[f] <= limit for f, limit in _LIMITS.items()) \
            or (depthwise and kh * (k4 // 2) > DW_MAX_WORDS):
        return None
    w = np.asarray(w, np.int8)
    bias = np.asarray(bias, np.int64).reshape(-1)
    if not depthwise and not mve and np.count_nonzero(w) <= sparse_density * w.size:
        weights = [sparse_rows(w.reshape(m, -1)), bias.astype(np.int32), q.astype(np.int32), r.astype(np.int8)]
        return ConvPlan(False, p, weights, chain.value(conv.input(0)), residual, False, True)
    if depthwise:
        packed = np.zeros((m, kh, k4), np.int8)
        packed[:, :, :kw] = w[:, 0]
    else:
        packed = np.zeros((m, k4), np.int8)
        packed[:, :c * kh * kw] = w.reshape(m, -1)
        if mve:  # (the columns hold x + shift, padding x_zp + shift: that times sum(w) comes off)
            zero = p["x_zp"] - 128 * p["x_unsigned"]
            bias = bias - zero * w.reshape(m, -1).astype(np.int64).sum(axis=1)
            if np.abs(bias).max(initial=0) >= 2 ** 31:
                return None
        else:
            packed = packed.reshape(m, k4 // 4, 4)[:, :, [0, 2, 1, 3]]
    weights = [np.ascontiguousarray(packed).reshape(-1), bias.astype(np.int32), q.astype(np.int32), r.astype(np.int8)]
    return ConvPlan(depthwise, p, weights, chain.value(conv.input(0)), residual, mve)


def int8_convolutions(schedule: Any, module: Module, mve: bool = False,
                      sparse_density: float = SPARSE_DENSITY["speed"]) -> int:
    """Give each step these kernels can compute an ``Int8Conv`` (``schedule.own``), its
    weights appended to ``schedule.weights``; returns how many. A depthwise step the
    sharing rules run in place channel by channel (``schedule.splits``) becomes one call
    of the depthwise kernel, in place as well. ``mve``: the core has Helium (M55), and the
    one-group convolutions take its kernel."""
    from effc.codegen.aot import TensorArg
    from effc.codegen.aot_inplace import Steps

    info = Steps(schedule, module)
    count = 0
    for t in schedule.calls:
        step = schedule.steps[t]
        node = info.node(step)
        if node is None or t in schedule.own:
            continue
        plan = conv_plan(node, mve, sparse_density)
        if plan is None or (t in schedule.splits and not plan.depthwise):
            continue
        data = {a.storage_key: a for a in step.args[:-1] if a.storage_key[0] != "weight"}
        x = data.get(info.storage(plan.x))
        r = data.get(info.storage(plan.residual)) if plan.residual is not None else None
        y = step.args[-1]
        if x is None or x.shape != tuple(plan.x.type.shape) or y.shape != tuple(node.outputs[0].type.shape) \
                or (plan.residual is not None and (r is None or r.shape != y.shape)) \
                or len(data) != 1 + (plan.residual is not None):
            continue
        schedule.splits.pop(t, None)
        numbers = _add_weights(schedule, plan.weights)
        step.args = [x, *([r] if r is not None else []),
                     *(TensorArg(("weight", k), a.shape, str(a.dtype)) for k, a in zip(numbers, plan.weights)), y]
        schedule.own[t] = Int8Conv(plan.depthwise, plan.params, numbers,
                                   _scratch_bytes(plan.depthwise, plan.params, plan.mve), r is not None, plan.mve,
                                   plan.sparse)
        if plan.depthwise and y.storage_key[0] == "arena" and info.dies_at(x.storage_key, t, step) \
                and x.storage_key not in schedule.slices and y.nbytes <= x.nbytes:
            schedule.inplace[y.storage_key[1]] = [x.storage_key[1]]
        count += 1
    return count


def _add_weights(schedule: Any, arrays: list[np.ndarray]) -> list[int]:
    """Append a kernel's packed weights to ``schedule.weights`` (each its own storage);
    their numbers."""
    from effc.codegen.aot import Storage

    numbers = []
    for array in arrays:
        k = len(schedule.weights)
        schedule.weights.append(array)
        schedule.storages[("weight", k)] = Storage("weight", k, array.nbytes)
        numbers.append(k)
    return numbers


def int8_gemms(schedule: Any, module: Module) -> int:
    """Give each ``qgemm`` step with a float result that ``effc_gemm_s8_f32`` can compute an
    ``Int8Gemm`` (``schedule.own``), its weights appended to ``schedule.weights``; returns
    how many."""
    from effc.codegen.aot import TensorArg
    from effc.codegen.aot_inplace import Steps

    info = Steps(schedule, module)
    count = 0
    for t in schedule.calls:
        step = schedule.steps[t]
        node = info.node(step)
        if node is None or t in schedule.own or t in schedule.splits:
            continue
        plan = gemm_plan(node)
        if plan is None:
            continue
        params, arrays, a = plan
        data = [arg for arg in step.args[:-1] if arg.storage_key[0] != "weight"]
        y = step.args[-1]
        if len(data) != 1 or data[0].storage_key != info.storage(a) \
                or int(np.prod(data[0].shape)) != params["rows"] * params["depth"] \
                or int(np.prod(y.shape)) != params["rows"] * params["cols"]:
            continue
        numbers = _add_weights(schedule, arrays)
        step.args = [data[0], *(TensorArg(("weight", k), arr.shape, str(arr.dtype)) for k, arr in zip(numbers, arrays)),
                     y]
        schedule.own[t] = Int8Gemm(params, numbers, 2 * params["k4"] * 2)
        count += 1
    return count


def _scratch_bytes(depthwise: bool, p: dict[str, int], mve: bool = False) -> int:
    """``effc_dwconv_s8_scratch`` / ``effc_conv_s8_scratch`` / ``effc_conv_s8_mve_scratch``."""
    if mve:
        return 2 * p["k4"]
    if depthwise:
        ph = (p["out_h"] - 1) * p["stride_h"] + (p["k_h"] - 1) * p["dil_h"] + 1
        pw = (p["out_w"] - 1) * p["stride_w"] + (p["k_w"] - 1) * p["dil_w"] + 1
        return (ph * pw + 2) * 2
    return 2 * p["k4"] * 2
