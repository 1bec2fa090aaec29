"""Neural-network ops: convolutions, matrix products, normalizations, pooling, softmax.

Sliding-window ops (Conv, ConvTranspose, MaxPool, AveragePool) share one geometry rule
(``window_geometry``) for infer and ref, so the two cannot disagree. The references loop
over kernel taps, never over pixels: each tap is a strided view of the padded input.
Convolutions are im2col (a strided view copied once, in bounded chunks) plus one batched
matmul per chunk, so real CNNs run in seconds; ConvTranspose is the matmul plus a col2im
scatter per tap. float16/bfloat16 compute in float32 and cast back (softmax excepted).

Where runtimes disagree with each other or with the spec text, effc follows the spec and
onnxruntime's Conv: SAME padding is never negative (clamped at 0, as TensorFlow defines
it), and a ceil_mode window that would start in the end padding is dropped.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..core import Node
from ..errors import ShapeError
from ..opdef import InferCtx, OpDef, UpgradeCtx, attr, register
from ..shapes import (broadcast_shapes, is_known, norm_axis, pool_out_dim,
                      unidirectional_ok)
from ..types import UNKNOWN_DIM, Dim, DType, TensorType
from ._common import FLOATS

INTS_FOR_MATMUL = (DType.i32, DType.i64, DType.u32, DType.u64)
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")

Fail = Callable[[str], Exception]


# ----------------------------------------------------------------------------- helpers


def _compute_dtype(dt: np.dtype) -> np.dtype:
    """float16 and bfloat16 compute in float32 (ONNX Runtime does the same); others as is."""
    dt = np.dtype(dt)
    if dt == np.float16 or dt == DType.bf16.np:
        return np.dtype(np.float32)
    return dt


def _check_dtype(ctx: InferCtx, i: int, allowed: Sequence[DType], what: str = "") -> TensorType:
    t = ctx.type(i)
    if t.dtype not in allowed:
        name = what or f"input {i}"
        raise ctx.fail(f"{name} has dtype {t.dtype}; expected one of {', '.join(str(d) for d in allowed)}")
    return t


def _same_dtype(ctx: InferCtx, i: int, j: int, names: str) -> None:
    a, b = ctx.type(i), ctx.type(j)
    if a.dtype != b.dtype:
        raise ctx.fail(f"{names} must have the same dtype, got {a.dtype} and {b.dtype}")


def _vector_of(ctx: InferCtx, i: int, length: Dim, what: str) -> None:
    """Input ``i`` must be a 1-D tensor of ``length`` elements (when both are known)."""
    t = ctx.type(i)
    if t.rank != 1:
        raise ctx.fail(f"{what} must be 1-D of length {length}, got shape {list(t.shape)}")
    if is_known(t.shape[0]) and is_known(length) and t.shape[0] != length:
        raise ctx.fail(f"{what} has {t.shape[0]} elements, expected {length}")


def _dim_or_one(d: Dim) -> int:
    """For MAC counts: a symbolic dim counts as 1."""
    return d if isinstance(d, int) else 1


def _prod_known(dims: Sequence[Dim]) -> int:
    return math.prod(_dim_or_one(d) for d in dims)


def _value_error(msg: str) -> Exception:
    return ValueError(msg)


def _attr_list(a: dict, name: str, n: int, default: int, fail: Fail, *, minimum: int) -> list[int]:
    """An ``ints`` attribute with one entry per spatial axis (absent: ``default`` each)."""
    v = a.get(name) or ()
    if not v:
        return [default] * n
    if len(v) != n:
        raise fail(f"{name} {list(v)} must have {n} entries (one per spatial axis)")
    if any(x < minimum for x in v):
        raise fail(f"{name} {list(v)} must be >= {minimum}")
    return [int(x) for x in v]


def _auto_pad(a: dict, fail: Fail) -> str:
    mode = a.get("auto_pad") or "NOTSET"
    if mode not in AUTO_PADS:
        raise fail(f"auto_pad '{mode}' is not one of {', '.join(AUTO_PADS)}")
    return mode


def _explicit_pads(a: dict, n: int, fail: Fail) -> list[int]:
    pads = a.get("pads") or ()
    if not pads:
        return [0] * (2 * n)
    if len(pads) != 2 * n:
        raise fail(f"pads {list(pads)} must have {2 * n} entries (begins then ends of {n} spatial axes)")
    if any(p < 0 for p in pads):
        raise fail(f"pads {list(pads)} must be >= 0")
    return [int(p) for p in pads]


def window_geometry(sizes: Sequence[Dim], kernel: Sequence[Dim], a: dict, fail: Fail, *,
                     ceil_mode: bool = False) -> tuple[list[Dim], list[int | None], list[int | None]]:
    """Output sizes and begin/end pads of a sliding window (Conv, MaxPool, AveragePool).

    ``auto_pad`` SAME_* gives ``ceil(size / stride)`` outputs (ceil_mode changes nothing
    there, nor for VALID); explicit pads follow the floor/ceil rule of the spec. Pads are
    None where a size or kernel dim is symbolic. A symbolic size survives when the op
    keeps the length (stride 1 and the padding exactly covers the window)."""
    n = len(sizes)
    strides = _attr_list(a, "strides", n, 1, fail, minimum=1)
    dilations = _attr_list(a, "dilations", n, 1, fail, minimum=1)
    mode = _auto_pad(a, fail)
    pads = _explicit_pads(a, n, fail) if mode == "NOTSET" else [0] * (2 * n)
    outs: list[Dim] = []
    begins: list[int | None] = []
    ends: list[int | None] = []
    for i, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        if is_known(k) and k < 1:
            raise fail(f"kernel size {k} on spatial axis {i} must be >= 1")
        eff = d * (k - 1) + 1 if is_known(k) else None
        if mode in ("SAME_UPPER", "SAME_LOWER"):
            if is_known(size) and eff is not None:
                out = -(-size // s)
                total = max(0, (out - 1) * s + eff - size)
                small, big = total // 2, total - total // 2
                b, e = (small, big) if mode == "SAME_UPPER" else (big, small)
            else:
                out = size if s == 1 else (-(-size // s) if is_known(size) else UNKNOWN_DIM)
                b = e = None
        else:
            b, e = pads[i], pads[n + i]
            if eff is None:
                out = UNKNOWN_DIM
            elif not is_known(size):
                out = size if (s == 1 and b + e == eff - 1) else UNKNOWN_DIM
            else:
                try:
                    out = pool_out_dim(size, eff, s, 1, b, e, ceil_mode)
                except ShapeError as err:
                    raise fail(f"spatial axis {i}: {err}") from None
        outs.append(out)
        begins.append(b)
        ends.append(e)
    return outs, begins, ends


def _strides_dilations(a: dict, n: int) -> tuple[list[int], list[int]]:
    return (_attr_list(a, "strides", n, 1, _value_error, minimum=1),
            _attr_list(a, "dilations", n, 1, _value_error, minimum=1))


def _pad_for_windows(x: np.ndarray, out: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                     dilations: Sequence[int], begins: Sequence[int], value: Any) -> np.ndarray:
    """Pad the spatial axes (the trailing ``len(out)``) so every window of every tap fits:
    ``begins`` before, and after as much as the last window needs (explicit end pads
    beyond that are never read, so they need no memory)."""
    n = len(out)
    widths = [(0, 0)] * (x.ndim - n)
    for size, o, k, s, d, b in zip(x.shape[x.ndim - n:], out, kernel, strides, dilations, begins):
        need = (o - 1) * s + d * (k - 1) + 1 if o > 0 else 0
        widths.append((b, max(0, need - size - b)))
    if not any(b or e for b, e in widths):
        return x
    return np.pad(x, widths, mode="constant", constant_values=value)


def _tap_view(xp: np.ndarray, tap: Sequence[int], out: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> np.ndarray:
    """The input values that kernel tap ``tap`` meets at every output position: a strided
    view of shape ``xp.shape[:-n] + out``."""
    idx: list[slice] = [slice(None)] * (xp.ndim - len(tap))
    for t, o, s, d in zip(tap, out, strides, dilations):
        start = t * d
        idx.append(slice(start, start + (o - 1) * s + 1, s) if o > 0 else slice(0, 0))
    return xp[tuple(idx)]


def _taps(kernel: Sequence[int]):
    return itertools.product(*(range(k) for k in kernel))


def _tap_counts(out: int, k: int, s: int, d: int, lo: int, hi: int) -> np.ndarray:
    """Per output position along one axis: how many taps land in padded coords [lo, hi)."""
    pos = np.arange(out)[:, None] * s + np.arange(k)[None, :] * d
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


def _outer_counts(per_axis: list[np.ndarray]) -> np.ndarray:
    count = np.ones((), dtype=np.int64)
    for c in per_axis:
        count = np.multiply.outer(count, c)
    return count


# ----------------------------------------------------------------------------- Conv


def _conv_kernel(ctx: InferCtx, w: TensorType, n: int) -> list[Dim]:
    ks = ctx.attrs["kernel_shape"]
    wk = list(w.shape[2:])
    if not ks:
        return wk
    if len(ks) != n:
        raise ctx.fail(f"kernel_shape {list(ks)} must have {n} entries (one per spatial axis)")
    for i, (a, b) in enumerate(zip(ks, wk)):
        if is_known(b) and a != b:
            raise ctx.fail(f"kernel_shape {list(ks)} disagrees with the weight shape {list(w.shape)} on axis {i}")
    return list(ks)


def _infer_conv_common(ctx: InferCtx, transpose: bool) -> tuple[TensorType, TensorType, int, Dim]:
    """Checks shared by Conv and ConvTranspose; returns X, W, group and the output channels."""
    x = _check_dtype(ctx, 0, FLOATS, "X")
    _same_dtype(ctx, 0, 1, "X and W")
    w = ctx.type(1)
    if x.rank < 3:
        raise ctx.fail(f"X must have rank >= 3 (N, C, spatial...), got shape {list(x.shape)}")
    if w.rank != x.rank:
        raise ctx.fail(f"W must have rank {x.rank} like X, got shape {list(w.shape)}")
    group = ctx.attrs["group"]
    if group < 1:
        raise ctx.fail(f"group {group} must be >= 1")
    c = x.shape[1]
    if transpose:
        wc, mg = w.shape[0], w.shape[1]
        if is_known(c) and is_known(wc) and c != wc:
            raise ctx.fail(f"X has {c} channels but W {list(w.shape)} expects {wc} (W is C x M/group x k...)")
        if is_known(c) and c % group:
            raise ctx.fail(f"{c} input channels do not split into {group} groups")
        m: Dim = mg * group if is_known(mg) else (mg if group == 1 else UNKNOWN_DIM)
    else:
        m, wc = w.shape[0], w.shape[1]
        if is_known(c) and is_known(wc) and c != wc * group:
            raise ctx.fail(f"X has {c} channels but W {list(w.shape)} with group={group} expects {wc} x {group}")
        if is_known(m) and m % group:
            raise ctx.fail(f"{m} output channels do not split into {group} groups")
    if ctx.has(2):
        _same_dtype(ctx, 0, 2, "X and B")
        _vector_of(ctx, 2, m, "B")
    return x, w, group, m


def _infer_conv(ctx: InferCtx) -> list[TensorType]:
    x, w, _, m = _infer_conv_common(ctx, transpose=False)
    n = x.rank - 2
    kernel = _conv_kernel(ctx, w, n)
    out, _, _ = window_geometry(x.shape[2:], kernel, ctx.attrs, ctx.fail)
    return [TensorType(x.dtype, (x.shape[0], m, *out))]


IM2COL_CHUNK = 1 << 25
"""Most elements one im2col (or col2im) matrix may hold; larger problems run in chunks
of images, then of output rows."""


def _chunks(nb: int, per_image: int, rows: int) -> list[tuple[slice, slice]]:
    """(images, first-axis output rows) chunks that keep ``per_image``-sized buffers small."""
    if nb * per_image <= IM2COL_CHUNK or nb == 0:
        return [(slice(0, nb), slice(0, rows))]
    if per_image <= IM2COL_CHUNK:
        step = max(1, IM2COL_CHUNK // per_image)
        return [(slice(i, min(nb, i + step)), slice(0, rows)) for i in range(0, nb, step)]
    step = max(1, rows * IM2COL_CHUNK // per_image)
    return [(slice(i, i + 1), slice(r, min(rows, r + step))) for i in range(nb) for r in range(0, rows, step)]


def _conv_nd(x: np.ndarray, w: np.ndarray, group: int, out: list[int], begins: list[int],
             strides: list[int], dilations: list[int]) -> np.ndarray:
    """Grouped N-d correlation as im2col + one batched matmul (G, Mg, Cg*K) @ (N, G, Cg*K, P).
    The columns are a strided view of the padded input, copied once into matmul layout."""
    nb, c = x.shape[:2]
    m = w.shape[0]
    kernel = w.shape[2:]
    n = len(kernel)
    cg, mg = c // group, m // group
    k = math.prod(kernel)
    xp = _pad_for_windows(x, out, kernel, strides, dilations, begins, 0)
    wm = w.reshape(group, mg, cg * k)
    y = np.empty((nb, m, *out), dtype=x.dtype)
    st = xp.strides
    tap_steps = tuple(st[2 + i] * dilations[i] for i in range(n))
    out_steps = tuple(st[2 + i] * strides[i] for i in range(n))
    rest = math.prod(out[1:])
    for imgs, rows in _chunks(nb, c * k * math.prod(out), out[0] if n else 1):
        sub = xp[imgs]
        sub = sub[(slice(None), slice(None), slice(rows.start * strides[0], None))]
        r = rows.stop - rows.start
        view = np.lib.stride_tricks.as_strided(
            sub, (sub.shape[0], group, cg, *kernel, r, *out[1:]),
            (st[0], st[1] * cg, st[1], *tap_steps, *out_steps), writeable=False)
        cols = view.reshape(sub.shape[0], group, cg * k, r * rest)
        res = np.matmul(wm, cols).reshape(sub.shape[0], m, r, *out[1:])
        y[imgs, :, rows] = res
    return y


def _add_channel_bias(y: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is not None:
        y += b.astype(y.dtype).reshape((-1,) + (1,) * (y.ndim - 2))
    return y


def _ref_conv(ins: list, a: dict, n_out: int) -> list:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    n = x.ndim - 2
    ct = _compute_dtype(x.dtype)
    out, begins, _ = window_geometry(x.shape[2:], w.shape[2:], a, _value_error)
    strides, dilations = _strides_dilations(a, n)
    y = _conv_nd(x.astype(ct, copy=False), w.astype(ct, copy=False), a["group"], out, begins,
                 strides, dilations)
    return [_add_channel_bias(y, b).astype(x.dtype, copy=False)]


def _macs_conv(node: Node) -> int:
    w = node.inputs[1].type.shape
    y = node.outputs[0].type.shape
    # N * Cout * prod(out) * (Cin / group) * prod(kernel); W is Cout x Cin/group x k...
    return _prod_known(y) * _dim_or_one(w[1]) * _prod_known(w[2:])


_CONV_ATTRS = {
    "auto_pad": attr("str", "NOTSET"),
    "dilations": attr("ints", ()),
    "group": attr("int", 1),
    "kernel_shape": attr("ints", ()),
    "pads": attr("ints", ()),
    "strides": attr("ints", ()),
}

register(OpDef("conv", "Conv", ("X", "W", "B?"), ("Y",), _infer_conv, _ref_conv, attrs=dict(_CONV_ATTRS),
               macs=_macs_conv, op_class="conv"))


# ----------------------------------------------------------------------------- ConvTranspose


def transpose_geometry(sizes: Sequence[Dim], kernel: Sequence[Dim], a: dict, fail: Fail
                        ) -> tuple[list[Dim], list[int | None]]:
    """ConvTranspose output sizes and begin pads (what is cropped off the full result)."""
    n = len(sizes)
    strides = _attr_list(a, "strides", n, 1, fail, minimum=1)
    dilations = _attr_list(a, "dilations", n, 1, fail, minimum=1)
    out_pad = _attr_list(a, "output_padding", n, 0, fail, minimum=0)
    mode = _auto_pad(a, fail)
    out_shape = list(a.get("output_shape") or ())
    if out_shape and len(out_shape) != n:
        raise fail(f"output_shape {out_shape} must have {n} entries (the spatial dims only)")
    if any(x < 0 for x in out_shape):
        raise fail(f"output_shape {out_shape} must be >= 0")
    pads = _explicit_pads(a, n, fail) if mode == "NOTSET" and not out_shape else [0] * (2 * n)
    outs: list[Dim] = []
    begins: list[int | None] = []
    for i, (size, k, s, d, op) in enumerate(zip(sizes, kernel, strides, dilations, out_pad)):
        if is_known(k) and k < 1:
            raise fail(f"kernel size {k} on spatial axis {i} must be >= 1")
        full = s * (size - 1) + op + d * (k - 1) + 1 if is_known(size) and is_known(k) else None
        if out_shape or mode in ("SAME_UPPER", "SAME_LOWER"):
            if out_shape:
                out: Dim = out_shape[i]
            elif full is not None:
                # SAME: size * stride, but never past the full result (when the dilated
                # kernel is shorter than the stride), as onnxruntime does
                out = min(size * s, full)
            elif s == 1:  # the full result is never shorter than the input
                out = size
            else:
                out = UNKNOWN_DIM
            if full is None or not is_known(out):
                outs.append(out)
                begins.append(None)
                continue
            total = full - out
            # the spec: SAME_UPPER puts the odd pixel at the end, otherwise at the start
            begin = total // 2 if mode == "SAME_UPPER" else total - total // 2
            outs.append(out)
            begins.append(begin)
            continue
        b, e = pads[i], pads[n + i]
        if full is not None:
            out = full - b - e
            if out < 0:
                raise fail(f"spatial axis {i}: pads {b}+{e} are larger than the full output {full}")
        elif is_known(k) and s == 1 and op + d * (k - 1) - b - e == 0:
            out = size
        else:
            out = UNKNOWN_DIM
        outs.append(out)
        begins.append(b)
    return outs, begins


def _infer_conv_transpose(ctx: InferCtx) -> list[TensorType]:
    x, w, _, m = _infer_conv_common(ctx, transpose=True)
    n = x.rank - 2
    kernel = _conv_kernel(ctx, w, n)
    out, _ = transpose_geometry(x.shape[2:], kernel, ctx.attrs, ctx.fail)
    return [TensorType(x.dtype, (x.shape[0], m, *out))]


def _conv_transpose_nd(x: np.ndarray, w: np.ndarray, group: int, out: list[int], begins: list[int],
                       strides: list[int], dilations: list[int]) -> np.ndarray:
    """Col2im form: one batched matmul (G, Mg*K, Cg) @ (N, G, Cg, P) gives every tap's
    contribution; each tap's slab is added into a strided slice of the full output, which
    is then cropped (or zero-extended, for negative pads) to ``out``."""
    nb, c = x.shape[:2]
    sizes = x.shape[2:]
    mg = w.shape[1]
    kernel = w.shape[2:]
    cg, m = c // group, mg * group
    p = math.prod(sizes)
    k = math.prod(kernel)
    xg = np.ascontiguousarray(x).reshape(nb, group, cg, p)
    # W is (C, Mg, k...) = (G, Cg, Mg*K); the matmul wants (G, Mg*K, Cg)
    wt = np.ascontiguousarray(w.reshape(group, cg, mg * k).transpose(0, 2, 1))
    # the buffer covers the full result and the requested window (pads may be negative)
    offs, lens = [], []
    for size, o, kk, s, d, b in zip(sizes, out, kernel, strides, dilations, begins):
        full = s * (size - 1) + d * (kk - 1) + 1 if size > 0 else 0
        off = max(0, -b)
        offs.append(off)
        lens.append(off + max(full, b + o))
    buf = np.zeros((nb, m, *lens), dtype=x.dtype)
    if p == 0:
        return buf[(slice(None), slice(None)) + tuple(slice(f + b, f + b + o) for f, b, o in zip(offs, begins, out))]
    for imgs, _ in _chunks(nb, m * k * p, 1):
        z = np.matmul(wt, xg[imgs]).reshape(-1, group, mg, k, *sizes)
        for t, tap in enumerate(_taps(kernel)):
            idx = [imgs, slice(None)]
            for ti, size, s, d, off in zip(tap, sizes, strides, dilations, offs):
                start = off + ti * d
                idx.append(slice(start, start + (size - 1) * s + 1, s))
            buf[tuple(idx)] += z[:, :, :, t].reshape(-1, m, *sizes)
    crop = (slice(None), slice(None)) + tuple(slice(f + b, f + b + o) for f, b, o in zip(offs, begins, out))
    return buf[crop]


def _ref_conv_transpose(ins: list, a: dict, n_out: int) -> list:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    n = x.ndim - 2
    ct = _compute_dtype(x.dtype)
    out, begins = transpose_geometry(x.shape[2:], w.shape[2:], a, _value_error)
    strides, dilations = _strides_dilations(a, n)
    y = _conv_transpose_nd(x.astype(ct, copy=False), w.astype(ct, copy=False), a["group"], out, begins,
                           strides, dilations)
    return [_add_channel_bias(np.ascontiguousarray(y), b).astype(x.dtype, copy=False)]


def _macs_conv_transpose(node: Node) -> int:
    x = node.inputs[0].type.shape
    w = node.inputs[1].type.shape
    # every input pixel meets every tap: N * Cin * prod(in) * (Cout / group) * prod(kernel)
    return _prod_known(x) * _dim_or_one(w[1]) * _prod_known(w[2:])


def _upgrade_conv_transpose(ctx: UpgradeCtx) -> None:
    """Some exporters write output_shape with the N and C dims: keep the spatial part.

    Two forms that runtimes agree on are sized differently by onnx's own (opset <= 22)
    shape rule, so an exported model would fail ``onnx.checker``: SAME_* auto_pad with
    output_padding (onnx adds the output padding to ``size * stride``), and an
    output_shape smaller than the input. When the spatial sizes are known these become
    the explicit pads they stand for, which every reader sizes alike."""
    a = ctx.attrs
    x = ctx.inputs[0] if ctx.inputs else None
    w = ctx.inputs[1] if len(ctx.inputs) > 1 else None
    if x is None or w is None:
        return
    shape = a.get("output_shape")
    if shape is not None and len(shape) == x.type.rank and x.type.rank > 2:
        a["output_shape"] = shape = list(shape)[2:]
    sizes = x.type.shape[2:]
    mode = a.get("auto_pad") or "NOTSET"
    odd_same = mode.startswith("SAME") and any(a.get("output_padding") or ()) and not shape
    small_shape = bool(shape) and len(shape) == len(sizes) and any(
        is_known(z) and o < z for o, z in zip(shape, sizes))
    if not (odd_same or small_shape) or not all(is_known(z) for z in sizes):
        return
    kernel = list(a.get("kernel_shape") or w.type.shape[2:])
    if not all(is_known(k) for k in kernel):
        return
    raw = {k: tuple(v) if isinstance(v, list) else v for k, v in a.items()}
    try:
        out, begins = transpose_geometry(sizes, kernel, raw, _value_error)
    except ValueError:
        return  # infer reports it
    n = len(sizes)
    strides = list(a.get("strides") or [1] * n)
    dilations = list(a.get("dilations") or [1] * n)
    out_pad = list(a.get("output_padding") or [0] * n)
    ends = [s * (z - 1) + op + d * (k - 1) + 1 - b - o
            for z, k, s, d, op, b, o in zip(sizes, kernel, strides, dilations, out_pad, begins, out)]
    if min(begins + ends) < 0:
        return
    a.pop("output_shape", None)
    a.pop("auto_pad", None)
    a["pads"] = list(begins) + ends


register(OpDef("conv_transpose", "ConvTranspose", ("X", "W", "B?"), ("Y",), _infer_conv_transpose,
               _ref_conv_transpose,
               attrs={**_CONV_ATTRS, "output_padding": attr("ints", ()), "output_shape": attr("ints", ())},
               macs=_macs_conv_transpose, op_class="conv", upgrade=_upgrade_conv_transpose))


# ----------------------------------------------------------------------------- Gemm, MatMul

_MATMUL_DTYPES = FLOATS + INTS_FOR_MATMUL


def _infer_gemm(ctx: InferCtx) -> list[TensorType]:
    a = _check_dtype(ctx, 0, _MATMUL_DTYPES, "A")
    _same_dtype(ctx, 0, 1, "A and B")
    b = ctx.type(1)
    if a.rank != 2 or b.rank != 2:
        raise ctx.fail(f"A and B must be 2-D, got shapes {list(a.shape)} and {list(b.shape)}")
    m, k = (a.shape[1], a.shape[0]) if ctx.attrs["transA"] else a.shape
    k2, n = (b.shape[1], b.shape[0]) if ctx.attrs["transB"] else b.shape
    if is_known(k) and is_known(k2) and k != k2:
        raise ctx.fail(f"inner dims differ: A {list(a.shape)} (transA={ctx.attrs['transA']}) and "
                       f"B {list(b.shape)} (transB={ctx.attrs['transB']}) give K={k} and K={k2}")
    if ctx.has(2):
        _same_dtype(ctx, 0, 2, "A and C")
        c = ctx.type(2)
        if not unidirectional_ok((m, n), c.shape):
            raise ctx.fail(f"C of shape {list(c.shape)} does not broadcast to the result [{m}, {n}]")
    return [TensorType(a.dtype, (m, n))]


def _ref_gemm(ins: list, at: dict, n_out: int) -> list:
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = at["alpha"], at["beta"]
    a = a.T if at["transA"] else a
    b = b.T if at["transB"] else b
    dt = ins[0].dtype
    if dt.kind in "iu":
        y = np.matmul(a, b)
        if alpha == 1.0 and (c is None or beta == 1.0):
            if c is not None:
                y = y + c
            return [y.astype(dt, copy=False)]
        yf = alpha * y.astype(np.float64)
        if c is not None and beta != 0:
            yf = yf + beta * c.astype(np.float64)
        return [yf.astype(dt)]
    ct = _compute_dtype(dt)
    y = np.matmul(a.astype(ct, copy=False), b.astype(ct, copy=False))
    if alpha != 1.0:
        y *= ct.type(alpha)
    if c is not None and beta != 0:
        y = y + ct.type(beta) * c.astype(ct, copy=False)
    return [np.asarray(y).astype(dt, copy=False)]


def _macs_gemm(node: Node) -> int:
    a = node.inputs[0].type.shape
    y = node.outputs[0].type.shape
    k = a[0] if node.attrs.get("transA", 0) else a[1]
    return _prod_known(y) * _dim_or_one(k)


def _upgrade_gemm(ctx: UpgradeCtx) -> None:
    """Opsets < 7: ``broadcast`` flag; from 7 on C always broadcasts unidirectionally."""
    ctx.attrs.pop("broadcast", None)


register(OpDef("gemm", "Gemm", ("A", "B", "C?"), ("Y",), _infer_gemm, _ref_gemm,
               attrs={"alpha": attr("float", 1.0), "beta": attr("float", 1.0),
                      "transA": attr("int", 0), "transB": attr("int", 0)},
               macs=_macs_gemm, op_class="matmul", upgrade=_upgrade_gemm))


def _infer_matmul(ctx: InferCtx) -> list[TensorType]:
    a = _check_dtype(ctx, 0, _MATMUL_DTYPES, "A")
    _same_dtype(ctx, 0, 1, "A and B")
    b = ctx.type(1)
    if a.rank == 0 or b.rank == 0:
        raise ctx.fail(f"MatMul takes tensors of rank >= 1, got shapes {list(a.shape)} and {list(b.shape)}")
    ka = a.shape[-1]
    kb = b.shape[0] if b.rank == 1 else b.shape[-2]
    if is_known(ka) and is_known(kb) and ka != kb:
        raise ctx.fail(f"inner dims differ: A {list(a.shape)} has K={ka}, B {list(b.shape)} has K={kb}")
    batch_a = a.shape[:-2] if a.rank > 2 else ()
    batch_b = b.shape[:-2] if b.rank > 2 else ()
    try:
        batch = broadcast_shapes(batch_a, batch_b)
    except ShapeError:
        raise ctx.fail(f"batch dims of A {list(a.shape)} and B {list(b.shape)} do not broadcast") from None
    rows = (a.shape[-2],) if a.rank >= 2 else ()
    cols = (b.shape[-1],) if b.rank >= 2 else ()
    return [TensorType(a.dtype, (*batch, *rows, *cols))]


def _ref_matmul(ins: list, at: dict, n_out: int) -> list:
    a, b = ins
    ct = _compute_dtype(a.dtype)
    y = np.matmul(a.astype(ct, copy=False), b.astype(ct, copy=False))
    return [np.asarray(y).astype(a.dtype, copy=False)]


def _macs_matmul(node: Node) -> int:
    a = node.inputs[0].type.shape
    y = node.outputs[0].type.shape
    # batch * M * N * K = (elements of Y) * K
    return _prod_known(y) * _dim_or_one(a[-1])


register(OpDef("mat_mul", "MatMul", ("A", "B"), ("Y",), _infer_matmul, _ref_matmul,
               macs=_macs_matmul, op_class="matmul"))


# ----------------------------------------------------------------------------- BatchNormalization


def _channel_dim(t: TensorType) -> Dim:
    """BatchNormalization's channel count: dim 1, or 1 for a rank-1 input (N)."""
    return t.shape[1] if t.rank >= 2 else 1


def _infer_batch_norm(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, FLOATS, "X")
    if x.rank < 1:
        raise ctx.fail("X must have rank >= 1 (N, C, ...)")
    c = _channel_dim(x)
    for i, name in ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var")):
        _check_dtype(ctx, i, FLOATS, name)
        _vector_of(ctx, i, c, name)
    _same_dtype(ctx, 1, 2, "scale and B")
    _same_dtype(ctx, 3, 4, "input_mean and input_var")
    training = ctx.attrs["training_mode"]
    if training not in (0, 1):
        raise ctx.fail(f"training_mode must be 0 or 1, got {training}")
    if not training and ctx.n_outputs > 1:
        raise ctx.fail("outputs running_mean/running_var exist only with training_mode=1 "
                       "(before opset 14 extra outputs meant training mode; "
                       "set training_mode=1 or drop the extra outputs)")
    mean = ctx.type(3)
    stats = TensorType(mean.dtype, (c,))
    return [TensorType(x.dtype, x.shape), stats, stats][:ctx.n_outputs]


def _ref_batch_norm(ins: list, a: dict, n_out: int) -> list:
    x, scale, bias, mean, var = ins
    ct = _compute_dtype(x.dtype)
    shape = (-1,) + (1,) * (x.ndim - 2) if x.ndim >= 2 else (-1,)
    xc = x.astype(ct, copy=False)
    eps = a["epsilon"]

    def col(v: np.ndarray) -> np.ndarray:
        return v.astype(ct, copy=False).reshape(shape)

    if not a["training_mode"]:
        y = (xc - col(mean)) / np.sqrt(col(var) + ct.type(eps)) * col(scale) + col(bias)
        return [y.astype(x.dtype, copy=False)]
    axes = tuple(i for i in range(x.ndim) if i != 1) if x.ndim >= 2 else (0,)
    cur_mean = xc.mean(axis=axes)
    cur_var = xc.var(axis=axes)  # population variance, as the spec says
    y = (xc - cur_mean.reshape(shape)) / np.sqrt(cur_var.reshape(shape) + ct.type(eps)) * col(scale) + col(bias)
    momentum = a["momentum"]
    st = _compute_dtype(mean.dtype)
    run_mean = mean.astype(st) * st.type(momentum) + cur_mean.astype(st) * st.type(1 - momentum)
    run_var = var.astype(st) * st.type(momentum) + cur_var.astype(st) * st.type(1 - momentum)
    outs = [y.astype(x.dtype, copy=False), run_mean.astype(mean.dtype), run_var.astype(var.dtype)]
    return outs[:n_out]


def _upgrade_batch_norm(ctx: UpgradeCtx) -> None:
    """Opsets < 7 carry ``is_test``/``consumed_inputs`` (the mode came from the outputs),
    opsets 7-8 ``spatial``; spatial=0 (per-activation statistics) has no later form."""
    ctx.attrs.pop("consumed_inputs", None)
    ctx.attrs.pop("is_test", None)
    spatial = ctx.attrs.pop("spatial", 1)
    x = ctx.inputs[0] if ctx.inputs else None
    if spatial != 1 and x is not None and x.type.rank > 2:
        raise ctx.unsupported("spatial=0 (per-activation statistics, opsets 7-8); flatten X to "
                              "(N, C*D1*...) before the op or re-export with spatial=1")


register(OpDef("batch_normalization", "BatchNormalization", ("X", "scale", "B", "input_mean", "input_var"),
               ("Y", "running_mean?", "running_var?"), _infer_batch_norm, _ref_batch_norm,
               attrs={"epsilon": attr("float", 1e-5), "momentum": attr("float", 0.9),
                      "training_mode": attr("int", 0)},
               op_class="norm", upgrade=_upgrade_batch_norm))


# ----------------------------------------------------------------------------- Instance / Layer norm


def _infer_instance_norm(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, FLOATS, "input")
    if x.rank < 2:
        raise ctx.fail(f"input must have rank >= 2 (N, C, ...), got shape {list(x.shape)}")
    for i, name in ((1, "scale"), (2, "B")):
        _same_dtype(ctx, 0, i, f"input and {name}")
        _vector_of(ctx, i, x.shape[1], name)
    return [TensorType(x.dtype, x.shape)]


def _ref_instance_norm(ins: list, a: dict, n_out: int) -> list:
    x, scale, bias = ins
    ct = _compute_dtype(x.dtype)
    xc = x.astype(ct, copy=False)
    axes = tuple(range(2, x.ndim))
    shape = (-1,) + (1,) * (x.ndim - 2)
    mean = xc.mean(axis=axes, keepdims=True)
    var = ((xc - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (xc - mean) / np.sqrt(var + ct.type(a["epsilon"]))
    y = y * scale.astype(ct).reshape(shape) + bias.astype(ct).reshape(shape)
    return [y.astype(x.dtype, copy=False)]


def _drop_consumed_inputs(ctx: UpgradeCtx) -> None:
    ctx.attrs.pop("consumed_inputs", None)


register(OpDef("instance_normalization", "InstanceNormalization", ("input", "scale", "B"), ("output",),
               _infer_instance_norm, _ref_instance_norm, attrs={"epsilon": attr("float", 1e-5)},
               op_class="norm", upgrade=_drop_consumed_inputs))


def _infer_layer_norm(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, FLOATS, "X")
    try:
        axis = norm_axis(ctx.attrs["axis"], x.rank)
    except ShapeError as e:
        raise ctx.fail(str(e)) from None
    stash = ctx.attrs["stash_type"]
    if stash != DType.f32:
        raise ctx.unsupported(f"stash_type {stash} (only float32 statistics are implemented)")
    for i, name in ((1, "Scale"), (2, "B")):
        if i == 2 and not ctx.has(2):
            continue
        _same_dtype(ctx, 0, i, f"X and {name}")
        t = ctx.type(i)
        if not unidirectional_ok(x.shape, t.shape):
            raise ctx.fail(f"{name} of shape {list(t.shape)} does not broadcast to X {list(x.shape)}")
    stats = TensorType(stash, tuple(x.shape[:axis]) + (1,) * (x.rank - axis))
    return [TensorType(x.dtype, x.shape), stats, stats][:ctx.n_outputs]


def _ref_layer_norm(ins: list, a: dict, n_out: int) -> list:
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    axis = a["axis"] + x.ndim if a["axis"] < 0 else a["axis"]
    st = a["stash_type"].np
    xs = x.astype(st, copy=False)
    axes = tuple(range(axis, x.ndim))
    if xs.size == 0:
        mean = np.zeros(x.shape[:axis] + (1,) * len(axes), st)
        inv = mean.copy()
        normalized = xs
    else:
        mean = xs.mean(axis=axes, keepdims=True)
        d = xs - mean
        var = (d * d).mean(axis=axes, keepdims=True)
        inv = (1 / np.sqrt(var + st.type(a["epsilon"]))).astype(st, copy=False)
        normalized = d * inv
    # stage two runs in X's type, as the spec's function body does
    y = normalized.astype(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype, copy=False), mean, inv][:n_out]


register(OpDef("layer_normalization", "LayerNormalization", ("X", "Scale", "B?"), ("Y", "Mean?", "InvStdDev?"),
               _infer_layer_norm, _ref_layer_norm,
               attrs={"axis": attr("int", -1), "epsilon": attr("float", 1e-5),
                      "stash_type": attr("dtype", DType.f32)},
               op_class="norm", min_opset=17))


# ----------------------------------------------------------------------------- MaxPool, AveragePool

_MAXPOOL_DTYPES = FLOATS + (DType.i8, DType.u8)


def _infer_pool(ctx: InferCtx, allowed: tuple[DType, ...], ceil: bool = True) -> tuple[TensorType, list[Dim]]:
    x = _check_dtype(ctx, 0, allowed, "X")
    kernel = list(ctx.attrs["kernel_shape"])
    if x.rank < 3:
        raise ctx.fail(f"X must have rank >= 3 (N, C, spatial...), got shape {list(x.shape)}")
    if len(kernel) != x.rank - 2:
        raise ctx.fail(f"kernel_shape {kernel} must have {x.rank - 2} entries for X of shape {list(x.shape)}")
    if ctx.attrs["ceil_mode"] not in (0, 1):
        raise ctx.fail(f"ceil_mode must be 0 or 1, got {ctx.attrs['ceil_mode']}")
    out, _, _ = window_geometry(x.shape[2:], kernel, ctx.attrs, ctx.fail, ceil_mode=bool(ctx.attrs["ceil_mode"]))
    return x, [x.shape[0], x.shape[1], *out]


def _infer_max_pool(ctx: InferCtx) -> list[TensorType]:
    x, shape = _infer_pool(ctx, _MAXPOOL_DTYPES)
    if ctx.attrs["storage_order"] not in (0, 1):
        raise ctx.fail(f"storage_order must be 0 (row major) or 1 (column major), got {ctx.attrs['storage_order']}")
    out = [TensorType(x.dtype, tuple(shape))]
    if ctx.n_outputs > 1:
        out.append(TensorType(DType.i64, tuple(shape)))
    return out


def _pool_setup(x: np.ndarray, a: dict) -> tuple[list[int], list[int], list[int], list[int], list[int], list[int]]:
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    out, begins, ends = window_geometry(x.shape[2:], kernel, a, _value_error, ceil_mode=bool(a["ceil_mode"]))
    strides, dilations = _strides_dilations(a, n)
    return kernel, out, begins, ends, strides, dilations


def _axis_positions(out: int, tap: int, s: int, d: int, begin: int) -> np.ndarray:
    """Input coordinate (unpadded) that a tap reads at each output position along one axis."""
    return np.arange(out) * s + tap * d - begin


def _ref_max_pool(ins: list, a: dict, n_out: int) -> list:
    x = ins[0]
    kernel, out, begins, _, strides, dilations = _pool_setup(x, a)
    sizes = x.shape[2:]
    n = len(kernel)
    # windows that lie wholly in the padding give the lowest value (index -1), as
    # onnxruntime and TVM do (their max starts from it and never reads the padding)
    low = _lowest(x.dtype)
    xp = _pad_for_windows(x, out, kernel, strides, dilations, begins, low)
    if n_out == 1:
        # IEEE: a NaN anywhere in a window gives NaN (np.maximum propagates it), and a
        # window of only -inf gives -inf (the max starts from -inf, not the lowest finite
        # value). onnxruntime's MaxPool is not followed: its result depends on where the
        # NaN sits in the window (NaN only when it comes last; otherwise the largest
        # number, or even -3.4e38 from the padding), which is a bug, not a semantics.
        start = -np.inf if x.dtype.kind == "f" else low
        y = np.full(x.shape[:2] + tuple(out), start, dtype=x.dtype)
        for tap in _taps(kernel):
            np.maximum(y, _tap_view(xp, tap, out, strides, dilations), out=y)
        return [y]
    # with indices: a tap wins where it reads a real element greater than the best so far
    # (strictly, so the first maximum wins), tracked as a flat index into X
    order = "F" if a["storage_order"] else "C"
    steps = _flat_steps(sizes, order)
    y = np.full(x.shape[:2] + tuple(out), low, dtype=x.dtype)
    idx = np.full(y.shape, -1, dtype=np.int64)
    seen = np.zeros(tuple(out), dtype=bool)
    for tap in _taps(kernel):
        v = _tap_view(xp, tap, out, strides, dilations)
        valid = np.ones((), dtype=bool)
        flat = np.zeros((), dtype=np.int64)
        for ax in range(n):
            pos = _axis_positions(out[ax], tap[ax], strides[ax], dilations[ax], begins[ax])
            shape = [1] * n
            shape[ax] = out[ax]
            valid = valid & ((pos >= 0) & (pos < sizes[ax])).reshape(shape)
            flat = flat + (pos * steps[ax]).reshape(shape)
        greater = (v > y) | (np.isnan(v) & ~np.isnan(y)) if x.dtype.kind == "f" else v > y  # NaN wins, once
        win = valid & (greater | ~seen)
        y = np.where(win, v, y)
        idx = np.where(win, flat, idx)
        seen |= np.broadcast_to(valid, seen.shape)
    plane = math.prod(sizes)
    base = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape(x.shape[:2] + (1,) * n) * plane
    idx = np.where(idx >= 0, idx + base, -1)
    return [y.astype(x.dtype, copy=False), idx]


def _lowest(dt: np.dtype):
    if dt.kind in "iu":
        return np.iinfo(dt).min
    import ml_dtypes  # numpy's finfo does not know bfloat16

    return ml_dtypes.finfo(dt).min


def _flat_steps(sizes: Sequence[int], order: str) -> list[int]:
    """Element steps of each spatial axis in a row-major ("C") or column-major ("F") layout."""
    steps = [1] * len(sizes)
    axes = range(len(sizes) - 2, -1, -1) if order == "C" else range(1, len(sizes))
    for ax in axes:
        prev = ax + 1 if order == "C" else ax - 1
        steps[ax] = steps[prev] * sizes[prev]
    return steps


def _upgrade_pool(ctx: UpgradeCtx) -> None:
    """Canonicalize ceil_mode for export. Runtimes (ONNX Runtime, PyTorch, ONNX's opset-22
    spec) drop a last ceil_mode window that would start in the end padding; ONNX's opset
    <= 21 shape rule does not, so an exported opset-21 model with such a node fails
    ``onnx.checker``. When the input sizes are known and a window is dropped, rewrite to an
    equal floor-mode form (end pads grown where an axis needs the extra window; pads are
    ignored by MaxPool and by AveragePool without count_include_pad, and must stay smaller
    than the kernel)."""
    a = ctx.attrs
    x = ctx.inputs[0] if ctx.inputs else None
    if not a.get("ceil_mode") or (a.get("auto_pad") or "NOTSET") != "NOTSET" or x is None:
        return
    sizes = x.type.shape[2:]
    kernel = [int(k) for k in a.get("kernel_shape") or ()]
    n = len(kernel)
    strides = [int(v) for v in a.get("strides") or [1] * n]
    dilations = [int(v) for v in a.get("dilations") or [1] * n]
    pads = [int(v) for v in a.get("pads") or [0] * (2 * n)]
    if (len(sizes) != n or not all(is_known(d) for d in sizes) or len(strides) != n or len(dilations) != n
            or len(pads) != 2 * n or min(strides + dilations + kernel, default=1) < 1):
        return  # infer reports malformed attributes
    dropped, floors, ceils = False, [], []
    for i, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        eff = d * (k - 1) + 1
        span = size + pads[i] + pads[n + i] - eff
        if span < 0:
            return
        ceil = -(-span // s) + 1
        if (ceil - 1) * s >= size + pads[i]:
            ceil -= 1
            dropped = True
        floors.append(span // s + 1)
        ceils.append(ceil)
    if not dropped or any(c < f for c, f in zip(ceils, floors)):
        return
    if any(c > f for c, f in zip(ceils, floors)):
        if a.get("count_include_pad"):
            return  # growing the pads would change the divisor; keep the runtime form
        for i, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
            pads[n + i] = max(pads[n + i], (ceils[i] - 1) * s + d * (k - 1) + 1 - size - pads[i])
            if pads[n + i] >= k:
                return  # runtimes want pads smaller than the kernel; keep the runtime form
        a["pads"] = pads
    a["ceil_mode"] = 0


_POOL_ATTRS = {
    "auto_pad": attr("str", "NOTSET"),
    "ceil_mode": attr("int", 0),
    "dilations": attr("ints", ()),
    "kernel_shape": attr("ints"),
    "pads": attr("ints", ()),
    "strides": attr("ints", ()),
}

register(OpDef("max_pool", "MaxPool", ("X",), ("Y", "Indices?"), _infer_max_pool, _ref_max_pool,
               attrs={**_POOL_ATTRS, "storage_order": attr("int", 0)}, op_class="pool",
               upgrade=_upgrade_pool))


def _infer_average_pool(ctx: InferCtx) -> list[TensorType]:
    x, shape = _infer_pool(ctx, FLOATS)
    return [TensorType(x.dtype, tuple(shape))]


def _ref_average_pool(ins: list, a: dict, n_out: int) -> list:
    x = ins[0]
    kernel, out, begins, ends, strides, dilations = _pool_setup(x, a)
    sizes = x.shape[2:]
    ct = _compute_dtype(x.dtype)
    xp = _pad_for_windows(x.astype(ct, copy=False), out, kernel, strides, dilations, begins, 0)
    total = np.zeros(x.shape[:2] + tuple(out), dtype=ct)
    for tap in _taps(kernel):
        total += _tap_view(xp, tap, out, strides, dilations)
    # divisor: taps inside the input, or inside input + explicit/auto pads with
    # count_include_pad (never the extra room ceil_mode adds past the end pad)
    per_axis = []
    for sz, o, k, s, d, b, e in zip(sizes, out, kernel, strides, dilations, begins, ends):
        lo, hi = (0, b + sz + e) if a["count_include_pad"] else (b, b + sz)
        per_axis.append(_tap_counts(o, k, s, d, lo, hi))
    y = total / _outer_counts(per_axis).astype(ct)
    return [y.astype(x.dtype, copy=False)]


register(OpDef("average_pool", "AveragePool", ("X",), ("Y",), _infer_average_pool, _ref_average_pool,
               attrs={**_POOL_ATTRS, "count_include_pad": attr("int", 0)}, op_class="pool",
               upgrade=_upgrade_pool))


# ----------------------------------------------------------------------------- global pools


def _infer_global_pool(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, FLOATS, "X")
    if x.rank < 2:
        raise ctx.fail(f"X must have rank >= 2 (N, C, spatial...), got shape {list(x.shape)}")
    return [TensorType(x.dtype, (x.shape[0], x.shape[1]) + (1,) * (x.rank - 2))]


def _ref_global_average_pool(ins: list, a: dict, n_out: int) -> list:
    x = ins[0]
    ct = _compute_dtype(x.dtype)
    y = x.astype(ct, copy=False).mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    return [np.asarray(y).astype(x.dtype, copy=False)]


def _ref_global_max_pool(ins: list, a: dict, n_out: int) -> list:
    x = ins[0]
    return [np.asarray(x.max(axis=tuple(range(2, x.ndim)), keepdims=True))]


register(OpDef("global_average_pool", "GlobalAveragePool", ("X",), ("Y",), _infer_global_pool,
               _ref_global_average_pool, op_class="pool"))
register(OpDef("global_max_pool", "GlobalMaxPool", ("X",), ("Y",), _infer_global_pool,
               _ref_global_max_pool, op_class="pool"))


# ----------------------------------------------------------------------------- Softmax, LogSoftmax


def _infer_softmax(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, 0, FLOATS, "input")
    if x.rank == 0:
        raise ctx.fail("input must have rank >= 1")
    try:
        norm_axis(ctx.attrs["axis"], x.rank)
    except ShapeError as e:
        raise ctx.fail(str(e)) from None
    return [TensorType(x.dtype, x.shape)]


def _softmax_ref(log: bool) -> Callable[[list, dict, int], list]:
    def ref(ins: list, a: dict, n_out: int) -> list:
        x = ins[0]
        if x.size == 0:
            return [x.copy()]
        # in X's own precision, float16/bfloat16 included: ONNX's expected outputs (the
        # fp16/bf16 attention cases) are computed that way, and rtol 1e-3 is under one
        # bfloat16 ulp
        axis = a["axis"]
        # a NaN or +inf in a row, or a row of only -inf, makes the whole row NaN (x - max
        # is NaN somewhere, and the sum spreads it), as onnxruntime gives
        shifted = x - x.max(axis=axis, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=axis, keepdims=True)
        y = shifted - np.log(s) if log else e / s
        return [y.astype(x.dtype, copy=False)]

    return ref


def _upgrade_softmax(ctx: UpgradeCtx) -> None:
    """Before opset 13 (Log)Softmax flattened the input to 2-D at ``axis`` (default 1) and
    normalized over all dims from ``axis`` on; from 13 it normalizes over one axis (default
    -1). The old form maps onto the new when at most one of those dims is not 1 (always so
    for ``axis`` = last dim); otherwise it has no single-node form."""
    if ctx.opset >= 13:
        return
    axis = int(ctx.attrs.get("axis", 1))
    x = ctx.inputs[0] if ctx.inputs else None
    if x is None:
        return
    shape = x.type.shape
    rank = len(shape)
    if not -rank <= axis <= rank:
        raise ctx.fail(f"axis {axis} is out of range for an input of rank {rank}")
    first = axis + rank if axis < 0 else axis
    tail = list(range(first, rank))
    wide = [i for i in tail if shape[i] != 1]
    if len(wide) == 1:
        ctx.attrs["axis"] = wide[0]
    elif not wide and tail:
        ctx.attrs["axis"] = rank - 1  # every normalized dim is 1
    else:
        raise ctx.unsupported(
            f"opset-{ctx.opset} semantics with axis={axis} on input shape {list(shape)}: it normalizes over "
            f"the flattened dims {first}..{rank - 1} together, which the opset-13 form cannot express; "
            "re-export the model at opset 13 or newer, or flatten the input before the op")


register(OpDef("softmax", "Softmax", ("input",), ("output",), _infer_softmax, _softmax_ref(False),
               attrs={"axis": attr("int", -1)}, op_class="activation", upgrade=_upgrade_softmax))
register(OpDef("log_softmax", "LogSoftmax", ("input",), ("output",), _infer_softmax, _softmax_ref(True),
               attrs={"axis": attr("int", -1)}, op_class="activation", upgrade=_upgrade_softmax))
