"""Reductions (ReduceSum, ReduceMean, ReduceMax, ... and ArgMax/ArgMin).

The IR holds the opset-18 form (ReduceSum: opset 13; ReduceMax/ReduceMin: opset 20, which
adds bool): ``axes`` is an optional int64 input. Older models carry ``axes`` as an attribute;
the upgrade hook turns it into a constant input. With no axes (or an empty axes tensor) every
axis is reduced, unless ``noop_with_empty_axes`` is set, which makes the op an identity.

Reducing over an empty set gives the reduction's identity: 0 for sums, 1 for products, -inf
(or the dtype's minimum, or False) for max, +inf (maximum, True) for min, -inf for the log
sums. Float16/bfloat16 accumulate in float32."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..opdef import InferCtx, OpDef, UpgradeCtx, attr, register
from ..shapes import as_ints, is_known, norm_axes, norm_axis
from ..types import UNKNOWN_DIM, DType, TensorType
from ._common import FLOATS

_INTS = (DType.i32, DType.i64, DType.u32, DType.u64)
NUMERIC = FLOATS + _INTS
"""The dtypes of the opset-18 reductions."""
MINMAX = NUMERIC + (DType.i8, DType.u8, DType.bool)
"""ReduceMax/ReduceMin (opset 20) also take int8, uint8 and bool."""
ARG = FLOATS + (DType.i8, DType.i16, DType.i32, DType.i64, DType.u8, DType.u16, DType.u32, DType.u64)


def _axes_to_input(ctx: UpgradeCtx) -> None:
    """Older opsets: ``axes`` attribute → constant int64 input."""
    if "axes" not in ctx.attrs:
        return
    axes = np.asarray(ctx.attrs.pop("axes"), dtype=np.int64).reshape(-1)
    if len(ctx.inputs) > 1 and ctx.inputs[1] is not None:
        raise ctx.fail("axes given both as an attribute and as an input")
    ctx.inputs = [ctx.inputs[0], ctx.add_const(axes)]


def _check_dtype(ctx: InferCtx, allowed: Sequence[DType]) -> TensorType:
    t = ctx.type(0)
    if t.dtype not in allowed:
        raise ctx.fail(f"data has dtype {t.dtype}; this op takes {', '.join(str(d) for d in allowed)}")
    return t


def _norm(ctx: InferCtx, axes: Sequence[int], rank: int) -> list[int]:
    try:
        return norm_axes(axes, rank)
    except Exception as e:
        raise ctx.fail(str(e)) from None


def _reduce_infer_shape(ctx: InferCtx, x: TensorType) -> tuple:
    keep, noop = ctx.attrs["keepdims"], ctx.attrs["noop_with_empty_axes"]
    axes_const = None
    if ctx.has(1):
        t = ctx.type(1)
        if t.dtype is not DType.i64 or t.rank != 1:
            raise ctx.fail(f"axes must be a 1-D int64 tensor, got {t}")
        axes_const = ctx.const(1)
        if axes_const is None:
            return _runtime_axes_shape(ctx, x, t.shape[0], keep, noop)
        axes = as_ints(axes_const)
    else:
        axes = []
    if not axes:
        if noop:
            return x.shape
        axes = list(range(x.rank))
    axes = _norm(ctx, axes, x.rank)
    if keep:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


def _runtime_axes_shape(ctx: InferCtx, x: TensorType, n_axes: object, keep: int, noop: int) -> tuple:
    """Output shape when the axes are only known at run time: which dims go is unknown, but
    the rank follows from the number of axes (axes may not repeat)."""
    if n_axes == 0:
        return x.shape if noop else (tuple(1 for _ in x.shape) if keep else ())
    if keep:
        return tuple(d if d == 1 else UNKNOWN_DIM for d in x.shape)
    if not isinstance(n_axes, int):
        raise ctx.unsupported("axes of unknown length computed at run time with keepdims=0 (the output rank is unknown)")
    if n_axes > x.rank:
        raise ctx.fail(f"{n_axes} axes for a rank-{x.rank} input")
    same = len(set(x.shape)) == 1 and x.rank and is_known(x.shape[0])
    return tuple(x.shape[0] if same else UNKNOWN_DIM for _ in range(x.rank - n_axes))


def _ref_axes(x: np.ndarray, axes_arr: np.ndarray | None, noop: int) -> tuple[int, ...] | None:
    """The axes a reduction works on at run time; None means identity."""
    axes = [] if axes_arr is None else as_ints(axes_arr)
    if not axes:
        return None if noop else tuple(range(x.ndim))
    return tuple(norm_axes(axes, x.ndim))


ReduceFn = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
"""fn(x, axes) -> the reduction with keepdims=True, in any dtype (cast back afterwards)."""


def _acc(x: np.ndarray) -> np.ndarray:
    """Accumulation dtype: float16/bfloat16 widen to float32, integers stay (numpy widens sums)."""
    if DType.from_numpy(x.dtype).is_float and x.dtype.itemsize < 4:
        return x.astype(np.float32)
    return x


def _reduction(name: str, onnx_name: str, fn: ReduceFn, allowed: Sequence[DType]) -> OpDef:
    def infer(ctx: InferCtx) -> list[TensorType]:
        x = _check_dtype(ctx, allowed)
        return [TensorType(x.dtype, _reduce_infer_shape(ctx, x))]

    def ref(ins: list, a: dict, n: int) -> list:
        x = ins[0]
        axes = _ref_axes(x, ins[1] if len(ins) > 1 else None, a["noop_with_empty_axes"])
        if axes is None:
            return [x.copy()]
        r = np.asarray(fn(x, axes))
        if not a["keepdims"]:
            r = r.reshape([d for i, d in enumerate(r.shape) if i not in axes])
        return [r.astype(x.dtype)]

    return register(OpDef(name, onnx_name, ("data", "axes?"), ("reduced",), infer, ref,
                          attrs={"keepdims": attr("int", 1), "noop_with_empty_axes": attr("int", 0)},
                          traits=frozenset(("reduce",)), op_class="reduce", upgrade=_axes_to_input))


def _sum(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.sum(_acc(x), axis=axes, keepdims=True)


def _extreme(f: Callable[..., np.ndarray], want_max: bool) -> ReduceFn:
    """np.max/np.min: any NaN in the set gives NaN; a set of only -inf (+inf) gives -inf
    (+inf). onnxruntime's ReduceMax/ReduceMin are not followed for NaN: they give NaN only
    when it is the set's first element and skip it elsewhere (measured with 1.31: [NaN, 1]
    -> NaN, [1, NaN] -> 1), an order dependence, i.e. a bug."""
    def run(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        if x.size:
            return f(x, axis=axes, keepdims=True)
        # An empty set: the identity of max (min) is the lowest (highest) value of the dtype.
        if x.dtype == np.bool_:
            init = not want_max
        elif DType.from_numpy(x.dtype).is_float:
            init = -np.inf if want_max else np.inf
        else:
            info = np.iinfo(x.dtype)
            init = info.min if want_max else info.max
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)]
        return np.full(shape, init, dtype=x.dtype)
    return run


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    w = _acc(x)
    if w.size == 0:
        return np.log(np.sum(np.exp(w), axis=axes, keepdims=True))
    m = np.max(w, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)  # all -inf (or an inf) stays exact without shifting
    return np.log(np.sum(np.exp(w - m), axis=axes, keepdims=True)) + m


_reduction("reduce_sum", "ReduceSum", _sum, NUMERIC)
_reduction("reduce_mean", "ReduceMean",
           lambda x, ax: np.mean(_acc(x), axis=ax, keepdims=True), NUMERIC)  # integer means truncate
_reduction("reduce_max", "ReduceMax", _extreme(np.max, True), MINMAX)
_reduction("reduce_min", "ReduceMin", _extreme(np.min, False), MINMAX)
_reduction("reduce_prod", "ReduceProd", lambda x, ax: np.prod(_acc(x), axis=ax, keepdims=True), NUMERIC)
_reduction("reduce_l1", "ReduceL1", lambda x, ax: np.sum(np.abs(_acc(x)), axis=ax, keepdims=True), NUMERIC)
_reduction("reduce_l2", "ReduceL2",
           lambda x, ax: np.sqrt(np.sum(np.square(_acc(x).astype(np.float64) if x.dtype.kind in "iu" else _acc(x)),
                                        axis=ax, keepdims=True)), NUMERIC)
_reduction("reduce_sum_square", "ReduceSumSquare",
           lambda x, ax: np.sum(np.square(_acc(x)), axis=ax, keepdims=True), NUMERIC)
_reduction("reduce_log_sum", "ReduceLogSum",
           lambda x, ax: np.log(np.sum(_acc(x).astype(np.float64) if x.dtype.kind in "iu" else _acc(x),
                                       axis=ax, keepdims=True)), NUMERIC)
_reduction("reduce_log_sum_exp", "ReduceLogSumExp",
           lambda x, ax: _log_sum_exp(x.astype(np.float64) if x.dtype.kind in "iu" else x, ax), NUMERIC)


# ----------------------------------------------------------------------------- ArgMax / ArgMin


def _arg_infer(ctx: InferCtx) -> list[TensorType]:
    x = _check_dtype(ctx, ARG)
    try:
        axis = norm_axis(ctx.attrs["axis"], x.rank)
    except Exception as e:
        raise ctx.fail(str(e)) from None
    if x.shape[axis] == 0:
        raise ctx.fail(f"axis {ctx.attrs['axis']} has size 0; there is no element to pick")
    if ctx.attrs["keepdims"]:
        shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i != axis)
    return [TensorType(DType.i64, shape)]


def _arg(f: Callable[..., np.ndarray]) -> Callable[[list, dict, int], list]:
    """np.argmax/np.argmin: the first NaN when there is one (so x[ArgMax(x)] is ReduceMax(x)),
    else the first extreme. onnxruntime points at a NaN only in first place (see _extreme)."""
    def ref(ins: list, a: dict, n: int) -> list:
        x = ins[0]
        if DType.from_numpy(x.dtype) is DType.bf16:
            x = x.astype(np.float32)
        axis = norm_axis(a["axis"], x.ndim)
        if a["select_last_index"]:
            last = x.shape[axis] - 1
            r = last - f(np.flip(x, axis=axis), axis=axis, keepdims=True)
        else:
            r = f(x, axis=axis, keepdims=True)
        if not a["keepdims"]:
            r = np.squeeze(r, axis=axis)
        return [np.asarray(r).astype(np.int64)]
    return ref


for _name, _onnx, _f in (("arg_max", "ArgMax", np.argmax), ("arg_min", "ArgMin", np.argmin)):
    register(OpDef(_name, _onnx, ("data",), ("reduced",), _arg_infer, _arg(_f),
                   attrs={"axis": attr("int", 0), "keepdims": attr("int", 1), "select_last_index": attr("int", 0)},
                   traits=frozenset(("reduce",)), op_class="reduce"))
