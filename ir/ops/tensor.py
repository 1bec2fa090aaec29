"""Tensor ops: views, data movement, indexing, padding, resizing.

Each op holds its opset-21 ONNX form. Older forms are rewritten by ``upgrade`` hooks:
attributes that later became inputs (Squeeze/Unsqueeze axes, Split's ``split``, Slice's
starts/ends/axes, Pad's pads/value) turn into constant inputs; Resize's opset-10 form and
the deprecated Upsample op (opsets 7-9) become an opset-21 Resize.

Shapes are exact when the inputs that decide them are constants; otherwise the affected
dims are unknown (``"?"``) and the rank comes from the shape input's length."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import IndexOutOfRangeError, ShapeError, UnsupportedOpError
from ..core import Value
from ..opdef import BY_ONNX, REGISTRY, InferCtx, OpDef, UpgradeCtx, attr, register
from ..shapes import (as_ints, broadcast_shapes, dim_add, dim_mul, dim_prod, is_known, norm_axes, norm_axis,
                      reshape_target, transpose_perm)
from ..types import UNKNOWN_DIM, Dim, DType, TensorType

INDEX_DTYPES = (DType.i32, DType.i64)
I64 = DType.i64

# ----------------------------------------------------------------------------- helpers


def _axis(ctx: InferCtx, axis: int, rank: int, what: str = "axis") -> int:
    try:
        return norm_axis(int(axis), rank, what)
    except ShapeError as e:
        raise ctx.fail(str(e)) from None


def _axes(ctx: InferCtx, axes: Sequence[int], rank: int, what: str = "axes") -> list[int]:
    try:
        return norm_axes([int(a) for a in axes], rank, what)
    except ShapeError as e:
        raise ctx.fail(str(e)) from None


def _index_input(ctx: InferCtx, i: int, what: str, dtypes: tuple[DType, ...] = INDEX_DTYPES,
                 scalar: bool = False) -> TensorType:
    """Check an integer input that holds axes/sizes: its dtype and rank (1-D, or a scalar)."""
    t = ctx.type(i)
    if t.dtype not in dtypes:
        raise ctx.fail(f"input '{what}' must be {' or '.join(map(str, dtypes))}, got {t.dtype}")
    ranks = (0, 1) if scalar else (1,)
    if t.rank not in ranks:
        raise ctx.fail(f"input '{what}' must be {'a scalar or ' if scalar else ''}1-D, got shape {list(t.shape)}")
    return t


_STATIC_ELEMENTS = 64
"""Largest tensor ``_static_value`` computes: shape arithmetic, not data."""
_STATIC_DEPTH = 32
_NOT_STATIC_OPS = ("random_normal", "random_uniform", "random_normal_like", "random_uniform_like", "multinomial",
                   "bernoulli")


def _static_value(v: Value | None, depth: int = 0) -> np.ndarray | None:
    """The value of ``v`` when it is known before running: a constant, or shape arithmetic
    (Shape/Size of tensors with static shapes, then small ops on such values, evaluated with
    their reference functions). Lets a Reshape/Expand/ConstantOfShape/... fed by
    ``Shape → Slice → Concat`` chains get exact output shapes before constant folding ran."""
    if v is None:
        return None
    if v.const_value is not None:
        return np.asarray(v.const_value)
    node = v.producer
    if node is None or node.body is not None or depth > _STATIC_DEPTH or node.op in _NOT_STATIC_OPS:
        return None
    if node.op in ("shape", "size"):
        src = node.input(0)
        if src is None:
            return None
        if node.op == "size":
            n = src.type.numel()
            return None if n is None else np.array(n, dtype=np.int64)
        a = REGISTRY["shape"].with_defaults(node.attrs)
        s, e = _shape_range(src.type.rank, a["start"], a["end"])
        dims = src.type.shape[s:e]
        return np.array(dims, dtype=np.int64) if all(is_known(d) for d in dims) else None
    n_out = v.type.numel()
    if n_out is None or n_out > _STATIC_ELEMENTS:
        return None
    ins: list[np.ndarray | None] = []
    for x in node.inputs:
        if x is not None and (x.type.numel() is None or x.type.numel() > _STATIC_ELEMENTS):
            return None
        a = None if x is None else _static_value(x, depth + 1)
        if x is not None and a is None:
            return None
        ins.append(a)
    op = REGISTRY.get(node.op)
    if op is None:
        return None
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(op.ref(ins, op.with_defaults(node.attrs), len(node.outputs))[v.index])
    except Exception:  # noqa: BLE001 - a value we cannot compute here is simply not static
        return None
    if out.dtype != v.type.dtype.np or out.shape != tuple(v.type.shape):
        return None
    return out


def _static(ctx: InferCtx, i: int) -> np.ndarray | None:
    """Input ``i``'s value when known before running (see ``_static_value``)."""
    return _static_value(ctx.node.input(i)) if ctx.has(i) else None


def _const_ints(ctx: InferCtx, i: int) -> list[int] | None:
    c = _static(ctx, i)
    return None if c is None else as_ints(c)


def _input_len(ctx: InferCtx, i: int, what: str) -> int:
    """The length of a 1-D input whose values are unknown; its length must be static."""
    n = ctx.type(i).shape[0] if ctx.type(i).rank else 1
    if not is_known(n):
        raise ctx.unsupported(f"input '{what}' whose length is not known before running")
    return int(n)


def _merge_dims(a: Dim, b: Dim) -> Dim:
    """Two dims the op requires to be equal: the most precise of them."""
    if is_known(a) and is_known(b):
        if a != b:
            raise ShapeError(f"dims {a} and {b} differ")
        return a
    if is_known(a) or b == UNKNOWN_DIM:
        return a
    return b


def _pad_inputs(ins: list, n: int) -> list:
    return list(ins) + [None] * (n - len(ins))


def _scalar(a: np.ndarray | None, default=None):
    if a is None or np.asarray(a).size == 0:
        return default
    arr = np.asarray(a)
    if arr.size != 1:
        raise ValueError(f"expected one value, got shape {list(arr.shape)}")
    return arr.reshape(-1)[0]


def _attr_to_input(ctx: UpgradeCtx, name: str, index: int, dtype: np.dtype = np.dtype(np.int64)) -> None:
    """Move attribute ``name`` (if set) to constant input ``index`` (older opset forms)."""
    if name not in ctx.attrs:
        return
    value = np.asarray(ctx.attrs.pop(name), dtype=dtype)
    while len(ctx.inputs) <= index:
        ctx.inputs.append(None)
    ctx.inputs[index] = ctx.add_const(value)


def _drop_newer_attr(ctx: UpgradeCtx, name: str, default) -> None:
    """An attribute a newer opset (22-28) added: accepted only at its default value."""
    if name in ctx.attrs:
        v = ctx.attrs.pop(name)
        if v != default:
            raise ctx.unsupported(f"attribute {name}={v!r} (from opset {ctx.opset}; effc holds the opset-21 form, "
                                  f"which means {name}={default!r})")


def _needs_newer_opset(ctx: InferCtx, what: str, dtype: DType, opset: int) -> UnsupportedOpError:
    """A dtype ONNX allows only after opset 21: effc holds (and exports) the opset-21 form."""
    return ctx.unsupported(f"{what} of dtype {dtype} (ONNX allows it from opset {opset}; "
                           "effc holds and exports the opset-21 form)")


def _reg(name: str, onnx_name: str, inputs: tuple, outputs: tuple, infer, ref, *, attrs=None, traits=(),
         op_class: str = "shape", min_opset: int = 1, upgrade=None) -> OpDef:
    return register(OpDef(name, onnx_name, inputs, outputs, infer, ref, attrs=attrs or {},
                          traits=frozenset(traits), op_class=op_class, min_opset=min_opset, upgrade=upgrade))


# ----------------------------------------------------------------------------- reshape family


def _infer_reshape(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    _index_input(ctx, 1, "shape", (I64,))
    target = _const_ints(ctx, 1)
    allowzero = bool(ctx.attrs["allowzero"])
    if target is None:
        entries = shape_entries(ctx.node.input(1))
        if entries is None or len(entries) != _input_len(ctx, 1, "shape"):
            return [t.with_shape((UNKNOWN_DIM,) * _input_len(ctx, 1, "shape"))]
        return [t.with_shape(tuple(
            d if d is not None and d > 0 else t.shape[i] if d == 0 and not allowzero and i < t.rank else UNKNOWN_DIM
            for i, (d, _, _) in enumerate(entries)))]
    if allowzero and 0 in target and -1 in target:
        raise ctx.fail(f"shape {target} has both 0 and -1, which allowzero=1 forbids")
    try:
        return [t.with_shape(reshape_target(t.shape, target, allowzero))]
    except ShapeError as e:
        raise ctx.fail(str(e)) from None


def shape_entries(v: Value | None) -> list[tuple[int | None, int | None, Value | None]] | None:
    """The entries of a 1-D shape operand known before running, each as (its value or None,
    the ``concat`` input it comes from or None, the computed piece that gives it): a
    constant has every value; a ``concat`` of constants and computed pieces (``[B, S, 12,
    32]`` with B and S read from a Shape at run time, as PyTorch's attention exports build
    it) has the constants'. None for anything else."""
    c = None if v is None else v.const_value
    if c is not None:
        return [(int(d), None, None) for d in np.asarray(c).reshape(-1)]
    n = v.producer if v is not None else None
    if n is None or n.op != "concat":
        return None
    out: list[tuple[int | None, int | None, Value | None]] = []
    for i, x in enumerate(n.inputs):
        c = None if x is None else x.const_value
        if c is not None and c.ndim <= 1:
            out += [(int(d), i, None) for d in np.asarray(c).reshape(-1)]
        elif x is not None and x.type.rank == 1 and is_known(x.type.shape[0]):
            out += [(None, i, x)] * int(x.type.shape[0])
        else:
            return None
    return out


def _ref_reshape(ins: list, a: dict, n: int) -> list:
    x, shape = ins
    target = as_ints(shape)
    if not a["allowzero"]:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [x.reshape(target)]


_reg("reshape", "Reshape", ("data", "shape"), ("reshaped",), _infer_reshape, _ref_reshape,
     attrs={"allowzero": attr("int", 0)}, traits=("view",), min_opset=5)


def _infer_flatten(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    axis = ctx.attrs["axis"]
    if not -t.rank <= axis <= t.rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {t.rank} (allowed {-t.rank}..{t.rank})")
    axis = axis + t.rank if axis < 0 else axis
    return [t.with_shape((dim_prod(t.shape[:axis]), dim_prod(t.shape[axis:])))]


def _ref_flatten(ins: list, a: dict, n: int) -> list:
    x = ins[0]
    axis = a["axis"] + x.ndim if a["axis"] < 0 else a["axis"]
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


_reg("flatten", "Flatten", ("input",), ("output",), _infer_flatten, _ref_flatten,
     attrs={"axis": attr("int", 1)}, traits=("view",))


def _infer_transpose(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    try:
        perm = transpose_perm(ctx.attrs["perm"], t.rank)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    return [t.with_shape(tuple(t.shape[p] for p in perm))]


def _ref_transpose(ins: list, a: dict, n: int) -> list:
    x = ins[0]
    return [np.transpose(x, transpose_perm(a["perm"], x.ndim))]


_reg("transpose", "Transpose", ("data",), ("transposed",), _infer_transpose, _ref_transpose,
     attrs={"perm": attr("ints", None)})


def _upgrade_axes_attr(ctx: UpgradeCtx) -> None:
    """Squeeze/Unsqueeze before opset 13: ``axes`` attribute → input."""
    _attr_to_input(ctx, "axes", 1)


def _infer_squeeze(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    if ctx.has(1):
        _index_input(ctx, 1, "axes", (I64,), scalar=True)
        axes = _const_ints(ctx, 1)
        if axes is None:
            return [t.with_shape(_squeezed_unknown(ctx, t.shape, _input_len(ctx, 1, "axes")))]
        axes = _axes(ctx, axes, t.rank)
        for ax in axes:
            if is_known(t.shape[ax]) and t.shape[ax] != 1:
                raise ctx.fail(f"cannot squeeze axis {ax} of shape {list(t.shape)}: its size is {t.shape[ax]}, not 1")
    else:
        if not t.is_static:
            raise ctx.unsupported(f"Squeeze without axes on shape {list(t.shape)} with symbolic dims "
                                  "(which dims are 1 is only known when running)")
        axes = [i for i, d in enumerate(t.shape) if d == 1]
    return [t.with_shape(tuple(d for i, d in enumerate(t.shape) if i not in axes))]


def _squeezed_unknown(ctx: InferCtx, shape: tuple[Dim, ...], n_axes: int) -> tuple[Dim, ...]:
    """Squeeze by ``n_axes`` axes known only when running: the dims that may be 1 go when
    there are exactly that many of them; otherwise only the rank is known."""
    maybe_one = [i for i, d in enumerate(shape) if not is_known(d) or d == 1]
    if n_axes > len(maybe_one):
        raise ctx.fail(f"cannot squeeze {n_axes} axes of shape {list(shape)}: only {len(maybe_one)} can be 1")
    if n_axes == len(maybe_one):
        return tuple(d for i, d in enumerate(shape) if i not in maybe_one)
    return (UNKNOWN_DIM,) * (len(shape) - n_axes)


def _ref_squeeze(ins: list, a: dict, n: int) -> list:
    x = ins[0]
    if len(ins) > 1 and ins[1] is not None:
        axes = tuple(norm_axis(ax, x.ndim) for ax in as_ints(ins[1]))
        return [np.squeeze(x, axis=axes)]
    return [np.squeeze(x)]


_reg("squeeze", "Squeeze", ("data", "axes?"), ("squeezed",), _infer_squeeze, _ref_squeeze,
     traits=("view",), upgrade=_upgrade_axes_attr)


def _infer_unsqueeze(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    if not ctx.has(1):
        raise ctx.fail("Unsqueeze needs its 'axes' input")
    _index_input(ctx, 1, "axes", (I64,), scalar=True)
    axes = _const_ints(ctx, 1)
    if axes is None:  # known when running: only the rank is known now
        return [t.with_shape((UNKNOWN_DIM,) * (t.rank + _input_len(ctx, 1, "axes")))]
    rank = t.rank + len(axes)
    axes = _axes(ctx, axes, rank)
    dims = iter(t.shape)
    return [t.with_shape(tuple(1 if i in axes else next(dims) for i in range(rank)))]


def _unsqueezed_shape(shape: Sequence[int], axes: Sequence[int]) -> list[int]:
    rank = len(shape) + len(axes)
    axes = norm_axes(axes, rank)
    dims = iter(shape)
    return [1 if i in axes else next(dims) for i in range(rank)]


def _ref_unsqueeze(ins: list, a: dict, n: int) -> list:
    x, axes = ins
    return [x.reshape(_unsqueezed_shape(x.shape, as_ints(axes)))]


_reg("unsqueeze", "Unsqueeze", ("data", "axes"), ("expanded",), _infer_unsqueeze, _ref_unsqueeze,
     traits=("view",), upgrade=_upgrade_axes_attr)


def _infer_identity(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    return [TensorType(t.dtype, t.shape, t.quant)]


_reg("identity", "Identity", ("input",), ("output",), _infer_identity, lambda ins, a, n: [ins[0]],
     traits=("view",))


# ----------------------------------------------------------------------------- concat / split


def _infer_concat(ctx: InferCtx) -> list[TensorType]:
    types = [ctx.type(i) for i in range(len(ctx.types))]
    if not types:
        raise ctx.fail("Concat needs at least one input")
    first = types[0]
    if first.rank == 0:
        raise ctx.fail("cannot concatenate scalars (rank 0)")
    axis = _axis(ctx, ctx.attrs["axis"], first.rank)
    out = list(first.shape)
    for i, t in enumerate(types[1:], 1):
        if t.dtype != first.dtype:
            raise ctx.fail(f"input {i} has dtype {t.dtype}, input 0 has {first.dtype}")
        if t.rank != first.rank:
            raise ctx.fail(f"input {i} has shape {list(t.shape)} of rank {t.rank}, input 0 has rank {first.rank}")
        for d in range(first.rank):
            if d == axis:
                out[d] = dim_add(out[d], t.shape[d])
                continue
            try:
                out[d] = _merge_dims(out[d], t.shape[d])
            except ShapeError:
                raise ctx.fail(f"input {i} has shape {list(t.shape)}, which differs from {list(first.shape)} "
                               f"outside the concat axis {axis}") from None
    return [first.with_shape(tuple(out))]


def _ref_concat(ins: list, a: dict, n: int) -> list:
    return [np.concatenate(ins, axis=a["axis"])]


_reg("concat", "Concat", ("inputs*",), ("concat_result",), _infer_concat, _ref_concat,
     attrs={"axis": attr("int")})


def _upgrade_split(ctx: UpgradeCtx) -> None:
    """Before 13 ``split`` is an attribute; before 18 leaving it out means equal parts, one
    per output (opset 18+ says that with ``num_outputs``)."""
    _attr_to_input(ctx, "split", 1)
    has_split = len(ctx.inputs) > 1 and ctx.inputs[1] is not None
    if ctx.opset < 18 and not has_split and "num_outputs" not in ctx.attrs:
        n = ctx.n_outputs
        if n is None:
            raise ctx.fail("Split without 'split': cannot tell how many outputs the node has")
        ctx.attrs["num_outputs"] = n


def _split_sizes(dim: Dim, split: list[int] | None, num_outputs: int | None, n_out: int) -> list[Dim]:
    """Output lengths along the axis (raises ValueError with the reason)."""
    if split is not None:
        if num_outputs is not None:
            raise ValueError("both the 'split' input and the num_outputs attribute are given; ONNX allows one")
        if len(split) != n_out:
            raise ValueError(f"'split' has {len(split)} entries for {n_out} outputs")
        if any(s < 0 for s in split):
            raise ValueError(f"'split' {split} has negative lengths")
        if is_known(dim) and sum(split) != dim:
            raise ValueError(f"'split' {split} sums to {sum(split)}, but the axis has length {dim}")
        return list(split)
    if num_outputs is None:
        raise ValueError("needs a 'split' input or the num_outputs attribute")
    if num_outputs != n_out:
        raise ValueError(f"num_outputs={num_outputs} but the node has {n_out} outputs")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be at least 1, got {num_outputs}")
    if not is_known(dim):
        return [dim] if num_outputs == 1 else [UNKNOWN_DIM] * num_outputs
    chunk = -(-dim // num_outputs)
    last = dim - chunk * (num_outputs - 1)
    if last < 0 or (last == 0 and dim > 0):
        raise ValueError(f"an axis of length {dim} cannot be split into {num_outputs} parts "
                         f"of length {chunk} with a shorter last part")
    return [chunk] * (num_outputs - 1) + [last]


def _infer_split(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    if t.rank == 0:
        raise ctx.fail("cannot split a scalar")
    axis = _axis(ctx, ctx.attrs["axis"], t.rank)
    split = None
    if ctx.has(1):
        _index_input(ctx, 1, "split", (I64,))
        split = _const_ints(ctx, 1)
        if split is None:
            if ctx.attrs["num_outputs"] is not None:
                raise ctx.fail("both the 'split' input and the num_outputs attribute are given; ONNX allows one")
            sizes: list[Dim] = [UNKNOWN_DIM] * ctx.n_outputs
            return [t.with_shape(t.shape[:axis] + (s,) + t.shape[axis + 1:]) for s in sizes]
    try:
        sizes = _split_sizes(t.shape[axis], split, ctx.attrs["num_outputs"], ctx.n_outputs)
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    return [t.with_shape(t.shape[:axis] + (s,) + t.shape[axis + 1:]) for s in sizes]


def _ref_split(ins: list, a: dict, n: int) -> list:
    x, split = _pad_inputs(ins, 2)
    axis = norm_axis(a["axis"], x.ndim)
    sizes = _split_sizes(x.shape[axis], None if split is None else as_ints(split), a["num_outputs"], n)
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


_reg("split", "Split", ("input", "split?"), ("outputs*",), _infer_split, _ref_split,
     attrs={"axis": attr("int", 0), "num_outputs": attr("int", None)}, upgrade=_upgrade_split)


# ----------------------------------------------------------------------------- slice / gather


def _upgrade_slice(ctx: UpgradeCtx) -> None:
    """Before opset 10 starts/ends/axes are attributes."""
    if ctx.opset < 10:
        _attr_to_input(ctx, "starts", 1)
        _attr_to_input(ctx, "ends", 2)
        _attr_to_input(ctx, "axes", 3)


def _slice_params(shape: Sequence[Dim], starts: list[int], ends: list[int], axes: list[int] | None,
                  steps: list[int] | None) -> dict[int, tuple[int, int, int]]:
    """axis → (start, end, step) as ONNX gives them (not yet clamped). Raises ValueError."""
    rank = len(shape)
    if len(starts) != len(ends):
        raise ValueError(f"starts {starts} and ends {ends} differ in length")
    axes = list(range(len(starts))) if axes is None else norm_axes(axes, rank)
    steps = [1] * len(starts) if steps is None else steps
    if len(axes) != len(starts) or len(steps) != len(starts):
        raise ValueError(f"starts, ends, axes and steps must have the same length, got {len(starts)}, "
                         f"{len(ends)}, {len(axes)}, {len(steps)}")
    if len(axes) > rank:
        raise ValueError(f"{len(axes)} slice axes for rank {rank}")
    if 0 in steps:
        raise ValueError("a slice step is 0")
    return {ax: (s, e, st) for ax, s, e, st in zip(axes, starts, ends, steps)}


def _clamp_slice(dim: int, start: int, end: int, step: int) -> tuple[int, int | None, int]:
    """ONNX clamping: returns a Python slice's (start, stop, step) for one axis."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim), step
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return start, (None if end < 0 else end), step


def _slice_len(dim: int, start: int, end: int, step: int) -> int:
    return len(range(*slice(*_clamp_slice(dim, start, end, step)).indices(dim)))


_BIG = 2**31 - 1


def _sliced_dim(dim: Dim, start: int, end: int, step: int) -> Dim:
    if is_known(dim):
        return _slice_len(int(dim), start, end, step)
    if start == 0 and step == 1 and end >= _BIG:
        return dim  # the whole axis
    return UNKNOWN_DIM


def _infer_slice(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    names = ("starts", "ends", "axes", "steps")
    for i, name in enumerate(names, 1):
        if ctx.has(i):
            _index_input(ctx, i, name)
    vals = [_const_ints(ctx, i) for i in range(1, 5)]
    starts, ends, axes, steps = vals
    if ctx.has(3) and axes is None:
        return [t.with_shape((UNKNOWN_DIM,) * t.rank)]
    if starts is None or ends is None or (ctx.has(4) and steps is None):
        n = _input_len(ctx, 1, "starts")
        known_axes = _axes(ctx, axes if axes is not None else range(n), t.rank)
        return [t.with_shape(tuple(UNKNOWN_DIM if i in known_axes else d for i, d in enumerate(t.shape)))]
    try:
        params = _slice_params(t.shape, starts, ends, axes, steps)
    except (ValueError, ShapeError) as e:
        raise ctx.fail(str(e)) from None
    out = [(_sliced_dim(d, *params[i]) if i in params else d) for i, d in enumerate(t.shape)]
    return [t.with_shape(tuple(out))]


def _ref_slice(ins: list, a: dict, n: int) -> list:
    x, starts, ends, axes, steps = _pad_inputs(ins, 5)
    params = _slice_params(x.shape, as_ints(starts), as_ints(ends), None if axes is None else as_ints(axes),
                           None if steps is None else as_ints(steps))
    index = tuple(slice(*_clamp_slice(d, *params[i])) if i in params else slice(None) for i, d in enumerate(x.shape))
    return [x[index]]


_reg("slice", "Slice", ("data", "starts", "ends", "axes?", "steps?"), ("output",), _infer_slice, _ref_slice,
     upgrade=_upgrade_slice)


def _infer_gather(ctx: InferCtx) -> list[TensorType]:
    t, idx = ctx.type(0), ctx.type(1)
    if idx.dtype not in INDEX_DTYPES:
        raise ctx.fail(f"indices must be i32 or i64, got {idx.dtype}")
    if t.rank == 0:
        raise ctx.fail("cannot gather from a scalar")
    axis = _axis(ctx, ctx.attrs["axis"], t.rank)
    return [t.with_shape(t.shape[:axis] + idx.shape + t.shape[axis + 1:])]


def _norm_indices(idx: np.ndarray, dim: int) -> np.ndarray:
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        bad = idx[(idx < -dim) | (idx >= dim)].reshape(-1)[0]
        raise IndexOutOfRangeError("", int(bad), dim)  # run_node names the node
    return np.where(idx < 0, idx + dim, idx)


def _ref_gather(ins: list, a: dict, n: int) -> list:
    x, idx = ins
    axis = norm_axis(a["axis"], x.ndim)
    return [np.take(x, _norm_indices(idx, x.shape[axis]), axis=axis)]


_reg("gather", "Gather", ("data", "indices"), ("output",), _infer_gather, _ref_gather,
     attrs={"axis": attr("int", 0)})


def _infer_gather_elements(ctx: InferCtx) -> list[TensorType]:
    t, idx = ctx.type(0), ctx.type(1)
    if idx.dtype not in INDEX_DTYPES:
        raise ctx.fail(f"indices must be i32 or i64, got {idx.dtype}")
    if t.rank != idx.rank or t.rank == 0:
        raise ctx.fail(f"data {list(t.shape)} and indices {list(idx.shape)} must have the same rank (at least 1)")
    _within_data(ctx, t, idx, _axis(ctx, ctx.attrs["axis"], t.rank), "indices")
    return [t.with_shape(idx.shape)]


def _within_data(ctx: InferCtx, t: TensorType, idx: TensorType, axis: int, what: str) -> None:
    """Off the indexed axis, GatherElements/ScatterElements index data by position: an
    indices (updates) dim longer than data's would read or write past its end."""
    for d, (a, b) in enumerate(zip(t.shape, idx.shape)):
        if d != axis and is_known(a) and is_known(b) and b > a:
            raise ctx.fail(f"{what} {list(idx.shape)} are longer than data {list(t.shape)} along axis {d}; "
                           f"only axis {axis} (the indexed one) may differ")


def _ref_gather_elements(ins: list, a: dict, n: int) -> list:
    x, idx = ins
    axis = norm_axis(a["axis"], x.ndim)
    return [np.take_along_axis(x, _norm_indices(idx, x.shape[axis]), axis=axis)]


_reg("gather_elements", "GatherElements", ("data", "indices"), ("output",), _infer_gather_elements,
     _ref_gather_elements, attrs={"axis": attr("int", 0)}, min_opset=11)


_SCATTER_REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _infer_scatter_elements(ctx: InferCtx) -> list[TensorType]:
    t, idx, upd = ctx.type(0), ctx.type(1), ctx.type(2)
    if idx.dtype not in INDEX_DTYPES:
        raise ctx.fail(f"indices must be i32 or i64, got {idx.dtype}")
    if upd.dtype != t.dtype:
        raise ctx.fail(f"updates have dtype {upd.dtype}, data has {t.dtype}")
    if not t.rank == idx.rank == upd.rank or t.rank == 0:
        raise ctx.fail(f"data {list(t.shape)}, indices {list(idx.shape)} and updates {list(upd.shape)} "
                       "must have the same rank (at least 1)")
    try:
        for a, b in zip(idx.shape, upd.shape):
            _merge_dims(a, b)
    except ShapeError:
        raise ctx.fail(f"indices {list(idx.shape)} and updates {list(upd.shape)} must have the same shape") from None
    if ctx.attrs["reduction"] not in _SCATTER_REDUCTIONS:
        raise ctx.fail(f"reduction '{ctx.attrs['reduction']}' is not one of {', '.join(_SCATTER_REDUCTIONS)}")
    _within_data(ctx, t, idx, _axis(ctx, ctx.attrs["axis"], t.rank), "indices")
    return [TensorType(t.dtype, t.shape)]


def _ref_scatter_elements(ins: list, a: dict, n: int) -> list:
    x, idx, upd = ins
    axis = norm_axis(a["axis"], x.ndim)
    where = list(np.indices(idx.shape, sparse=True))
    where[axis] = _norm_indices(idx, x.shape[axis])
    out = x.copy()
    fn = _SCATTER_REDUCTIONS[a["reduction"]]
    if fn is None:
        out[tuple(where)] = upd
    else:
        fn.at(out, tuple(where), upd)
    return [out]


_SCATTER_ELEMENTS = _reg("scatter_elements", "ScatterElements", ("data", "indices", "updates"), ("output",),
                         _infer_scatter_elements, _ref_scatter_elements,
                         attrs={"axis": attr("int", 0), "reduction": attr("str", "none")}, min_opset=11)
# Scatter (opsets 9-10, deprecated in 11) is ScatterElements under its old name.
BY_ONNX["Scatter"] = _SCATTER_ELEMENTS


# ----------------------------------------------------------------------------- shape queries


def _shape_range(rank: int, start: int, end: int | None) -> tuple[int, int]:
    end = rank if end is None else end
    start, end = (s + rank if s < 0 else s for s in (start, end))
    return min(max(start, 0), rank), min(max(end, 0), rank)


def _infer_shape(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    s, e = _shape_range(t.rank, ctx.attrs["start"], ctx.attrs["end"])
    return [TensorType(I64, (max(e - s, 0),))]


def _ref_shape(ins: list, a: dict, n: int) -> list:
    x = ins[0]
    s, e = _shape_range(x.ndim, a["start"], a["end"])
    return [np.array(x.shape[s:e], dtype=np.int64)]


_reg("shape", "Shape", ("data",), ("shape",), _infer_shape, _ref_shape,
     attrs={"start": attr("int", 0), "end": attr("int", None)})


_reg("size", "Size", ("data",), ("size",), lambda ctx: [TensorType(I64, ())],
     lambda ins, a, n: [np.array(ins[0].size, dtype=np.int64)])


def _infer_non_zero(ctx: InferCtx) -> list[TensorType]:
    return [TensorType(I64, (ctx.type(0).rank, UNKNOWN_DIM))]


def _ref_non_zero(ins: list, a: dict, n: int) -> list:
    x = ins[0]
    if x.ndim == 0:
        return [np.zeros((0, int(bool(x))), dtype=np.int64)]
    return [np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)]


_reg("non_zero", "NonZero", ("X",), ("Y",), _infer_non_zero, _ref_non_zero, min_opset=9)


# ----------------------------------------------------------------------------- tensor creation


_DEFAULT_FILL = np.zeros(1, dtype=np.float32)


def _infer_constant_of_shape(ctx: InferCtx) -> list[TensorType]:
    _index_input(ctx, 0, "input", (I64,))
    value = np.asarray(ctx.attrs["value"])
    if value.size != 1:
        raise ctx.fail(f"attribute 'value' must hold one element, has shape {list(value.shape)}")
    dtype = DType.from_numpy(value.dtype)
    shape = _const_ints(ctx, 0)
    if shape is None:
        return [TensorType(dtype, (UNKNOWN_DIM,) * _input_len(ctx, 0, "input"))]
    if any(d < 0 for d in shape):
        raise ctx.fail(f"shape {shape} has negative dims")
    return [TensorType(dtype, tuple(shape))]


def _ref_constant_of_shape(ins: list, a: dict, n: int) -> list:
    value = np.asarray(a["value"])
    return [np.full(as_ints(ins[0]), value.reshape(-1)[0], dtype=value.dtype)]


_reg("constant_of_shape", "ConstantOfShape", ("input",), ("output",), _infer_constant_of_shape,
     _ref_constant_of_shape, attrs={"value": attr("tensor", _DEFAULT_FILL)}, min_opset=9)


def _upgrade_range(ctx: UpgradeCtx) -> None:
    _drop_newer_attr(ctx, "stash_type", 1)


def _range_len(start, limit, delta) -> int:
    if np.issubdtype(np.asarray(start).dtype, np.integer):
        start, limit, delta = int(start), int(limit), int(delta)
        if delta == 0:
            raise ValueError("delta is 0")
        return max(-((start - limit) // delta), 0)
    start, limit, delta = float(start), float(limit), float(delta)
    if delta == 0:
        raise ValueError("delta is 0")
    return max(int(math.ceil((limit - start) / delta)), 0)


def _infer_range(ctx: InferCtx) -> list[TensorType]:
    ts = [ctx.type(i) for i in range(3)]
    for i, t in enumerate(ts):
        if t.dtype != ts[0].dtype:
            raise ctx.fail(f"start, limit and delta must share a dtype, got {', '.join(str(x.dtype) for x in ts)}")
        if t.numel() not in (1, None) or t.rank > 1:
            raise ctx.fail(f"input {i} must be a scalar, got shape {list(t.shape)}")
    if ts[0].dtype in (DType.f16, DType.bf16):
        raise _needs_newer_opset(ctx, "Range", ts[0].dtype, 27)
    if ts[0].dtype not in (DType.f32, DType.f64, DType.i16, DType.i32, DType.i64):
        raise ctx.fail(f"dtype {ts[0].dtype} is not allowed for Range (f32, f64, i16, i32, i64)")
    consts = [_static(ctx, i) for i in range(3)]
    if any(c is None for c in consts):
        return [TensorType(ts[0].dtype, (UNKNOWN_DIM,))]
    try:
        n = _range_len(*(np.asarray(c).reshape(-1)[0] for c in consts))
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    return [TensorType(ts[0].dtype, (n,))]


def _ref_range(ins: list, a: dict, n: int) -> list:
    start, limit, delta = (np.asarray(x).reshape(-1)[0] for x in ins)
    dtype = np.asarray(ins[0]).dtype
    count = _range_len(start, limit, delta)
    if np.issubdtype(dtype, np.integer):
        return [(int(start) + np.arange(count, dtype=np.int64) * int(delta)).astype(dtype)]
    # f16/bf16 compute in f32 (stash_type=1, the opset-27 default); f32/f64 in their own precision
    work = np.float64 if dtype == np.float64 else np.float32
    values = work(start) + np.arange(count, dtype=work) * work(delta)
    return [values.astype(dtype)]


_reg("range", "Range", ("start", "limit", "delta"), ("output",), _infer_range, _ref_range, min_opset=11,
     upgrade=_upgrade_range)


def _infer_one_hot(ctx: InferCtx) -> list[TensorType]:
    idx, depth_t, values = ctx.type(0), ctx.type(1), ctx.type(2)
    for what, t in (("indices", idx), ("depth", depth_t)):
        if t.dtype in (DType.bool, DType.bf16):
            raise ctx.fail(f"{what} must be an int or f16/f32/f64 tensor, got {t.dtype}")
    if values.dtype == DType.bf16:
        raise _needs_newer_opset(ctx, "OneHot values", values.dtype, 28)
    if depth_t.numel() not in (1, None) or depth_t.rank > 1:
        raise ctx.fail(f"depth must be a scalar, got shape {list(depth_t.shape)}")
    if values.rank != 1 or (is_known(values.shape[0]) and values.shape[0] != 2):
        raise ctx.fail(f"values must be [off_value, on_value], got shape {list(values.shape)}")
    rank = idx.rank + 1
    axis = _axis(ctx, ctx.attrs["axis"], rank)
    depth = _static(ctx, 1)
    d: Dim = UNKNOWN_DIM
    if depth is not None:
        d = int(np.asarray(depth).reshape(-1)[0])
        if d < 1:
            raise ctx.fail(f"depth must be positive, got {d}")
    return [TensorType(values.dtype, idx.shape[:axis] + (d,) + idx.shape[axis:])]


def _ref_one_hot(ins: list, a: dict, n: int) -> list:
    idx, depth, values = ins
    d = int(np.asarray(depth).reshape(-1)[0])
    idx = np.asarray(idx).astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    hot = idx[..., None] == np.arange(d)
    out = np.where(hot, values[1], values[0]).astype(values.dtype)
    axis = norm_axis(a["axis"], idx.ndim + 1)
    return [np.moveaxis(out, -1, axis)]


_reg("one_hot", "OneHot", ("indices", "depth", "values"), ("output",), _infer_one_hot, _ref_one_hot,
     attrs={"axis": attr("int", -1)}, min_opset=9)


# ----------------------------------------------------------------------------- expand / tile / pad


def _infer_expand(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    _index_input(ctx, 1, "shape", (I64,))
    shape = _const_ints(ctx, 1)
    if shape is None:
        rank = max(_input_len(ctx, 1, "shape"), t.rank)
        padded = (1,) * (rank - t.rank) + t.shape
        return [t.with_shape(tuple(d if is_known(d) and d != 1 else UNKNOWN_DIM for d in padded))]
    try:
        return [t.with_shape(broadcast_shapes(t.shape, shape))]
    except ShapeError:
        raise ctx.fail(f"shape {list(t.shape)} cannot expand to {shape}") from None


def _ref_expand(ins: list, a: dict, n: int) -> list:
    x, shape = ins
    out = np.broadcast_shapes(x.shape, tuple(as_ints(shape)))
    return [np.array(np.broadcast_to(x, out))]


_reg("expand", "Expand", ("input", "shape"), ("output",), _infer_expand, _ref_expand, min_opset=8)


def _infer_tile(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    _index_input(ctx, 1, "repeats", (I64,))
    reps = _const_ints(ctx, 1)
    if reps is None:
        return [t.with_shape((UNKNOWN_DIM,) * t.rank)]
    if len(reps) != t.rank:
        raise ctx.fail(f"repeats {reps} must have one entry per axis of {list(t.shape)}")
    if any(r < 0 for r in reps):
        raise ctx.fail(f"repeats {reps} must not be negative")
    return [t.with_shape(tuple(dim_mul(d, r) for d, r in zip(t.shape, reps)))]


def _ref_tile(ins: list, a: dict, n: int) -> list:
    x, reps = ins
    return [np.tile(x, as_ints(reps))]


_reg("tile", "Tile", ("input", "repeats"), ("output",), _infer_tile, _ref_tile, min_opset=6)


_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _upgrade_pad(ctx: UpgradeCtx) -> None:
    """Before opset 11 ``pads`` and ``value`` are attributes."""
    if ctx.opset >= 11:
        return
    value = ctx.attrs.pop("value", 0.0)
    _attr_to_input(ctx, "pads", 1)
    data = ctx.inputs[0]
    if value != 0.0 and data is not None:
        ctx.inputs.append(ctx.add_const(np.array(value, dtype=data.type.dtype.np)))


def _pad_plan(rank: int, pads: list[int], axes: list[int] | None) -> list[tuple[int, int]]:
    axes = list(range(rank)) if axes is None else norm_axes(axes, rank)
    if len(pads) != 2 * len(axes):
        raise ValueError(f"pads {pads} must have 2 entries per padded axis ({2 * len(axes)})")
    plan = [(0, 0)] * rank
    for i, ax in enumerate(axes):
        plan[ax] = (pads[i], pads[i + len(axes)])
    return plan


def _infer_pad(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    if ctx.attrs["mode"] not in _PAD_MODES:
        raise ctx.fail(f"mode '{ctx.attrs['mode']}' is not one of {', '.join(_PAD_MODES)}")
    _index_input(ctx, 1, "pads", (I64,))
    if ctx.has(2):
        c = ctx.type(2)
        if c.dtype != t.dtype or (c.numel() not in (0, 1, None)):
            raise ctx.fail(f"constant_value must be one {t.dtype} value, got {c}")
    axes = None
    if ctx.has(3):
        _index_input(ctx, 3, "axes")
        axes = _const_ints(ctx, 3)
        if axes is None:
            return [t.with_shape((UNKNOWN_DIM,) * t.rank)]
    pads = _const_ints(ctx, 1)
    if pads is None:
        padded = range(t.rank) if axes is None else _axes(ctx, axes, t.rank)
        return [t.with_shape(tuple(UNKNOWN_DIM if i in padded else d for i, d in enumerate(t.shape)))]
    try:
        plan = _pad_plan(t.rank, pads, axes)
    except (ValueError, ShapeError) as e:
        raise ctx.fail(str(e)) from None
    out = [dim_add(dim_add(d, b), e) for d, (b, e) in zip(t.shape, plan)]
    if any(is_known(d) and d < 0 for d in out):
        raise ctx.fail(f"pads {pads} crop more than the input {list(t.shape)} has")
    return [t.with_shape(tuple(out))]


def _ref_pad(ins: list, a: dict, n: int) -> list:
    x, pads, value, axes = _pad_inputs(ins, 4)
    plan = _pad_plan(x.ndim, as_ints(pads), None if axes is None else as_ints(axes))
    # negative pads crop first; what remains is an ordinary pad
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for d, (b, e) in zip(x.shape, plan))
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in plan]
    if a["mode"] == "constant":
        fill = _scalar(value, 0)
        return [np.pad(x, width, mode="constant", constant_values=np.asarray(fill, dtype=x.dtype))]
    return [np.pad(x, width, mode=a["mode"])]


_reg("pad", "Pad", ("data", "pads", "constant_value?", "axes?"), ("output",), _infer_pad, _ref_pad,
     attrs={"mode": attr("str", "constant")}, upgrade=_upgrade_pad, min_opset=2)


# ----------------------------------------------------------------------------- depth/space


def _blocks(ctx: InferCtx) -> tuple[TensorType, int]:
    """The 4-D input and the positive blocksize of DepthToSpace/SpaceToDepth."""
    t = ctx.type(0)
    b = ctx.attrs["blocksize"]
    if t.rank != 4:
        raise ctx.fail(f"input must be 4-D [N,C,H,W], got {list(t.shape)}")
    if b < 1:
        raise ctx.fail(f"blocksize must be positive, got {b}")
    return t, b


def _infer_depth_to_space(ctx: InferCtx) -> list[TensorType]:
    t, b = _blocks(ctx)
    if ctx.attrs["mode"] not in ("DCR", "CRD"):
        raise ctx.fail(f"mode '{ctx.attrs['mode']}' is not DCR or CRD")
    n, c, h, w = t.shape
    if is_known(c) and c % (b * b):
        raise ctx.fail(f"channels {c} are not divisible by blocksize² = {b * b}")
    return [t.with_shape((n, c // (b * b) if is_known(c) else UNKNOWN_DIM, dim_mul(h, b), dim_mul(w, b)))]


def _ref_depth_to_space(ins: list, a: dict, n: int) -> list:
    x = ins[0]
    b = a["blocksize"]
    nb, c, h, w = x.shape
    if a["mode"] == "DCR":
        y = x.reshape(nb, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(nb, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(nb, c // (b * b), h * b, w * b)]


_reg("depth_to_space", "DepthToSpace", ("input",), ("output",), _infer_depth_to_space, _ref_depth_to_space,
     attrs={"blocksize": attr("int"), "mode": attr("str", "DCR")})


def _upgrade_space_to_depth(ctx: UpgradeCtx) -> None:
    _drop_newer_attr(ctx, "mode", "DCR")


def _infer_space_to_depth(ctx: InferCtx) -> list[TensorType]:
    t, b = _blocks(ctx)
    n, c, h, w = t.shape
    for name, d in (("height", h), ("width", w)):
        if is_known(d) and d % b:
            raise ctx.fail(f"{name} {d} is not divisible by blocksize {b}")
    return [t.with_shape((n, dim_mul(c, b * b), h // b if is_known(h) else UNKNOWN_DIM,
                          w // b if is_known(w) else UNKNOWN_DIM))]


def _ref_space_to_depth(ins: list, a: dict, n: int) -> list:
    x = ins[0]
    b = a["blocksize"]
    nb, c, h, w = x.shape
    y = x.reshape(nb, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return [y.reshape(nb, c * b * b, h // b, w // b)]


_reg("space_to_depth", "SpaceToDepth", ("input",), ("output",), _infer_space_to_depth, _ref_space_to_depth,
     attrs={"blocksize": attr("int")}, upgrade=_upgrade_space_to_depth)


# ----------------------------------------------------------------------------- trilu / cumsum / topk


def _infer_trilu(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    if t.rank < 2:
        raise ctx.fail(f"input must have rank 2 or more, got {list(t.shape)}")
    if ctx.has(1):
        _index_input(ctx, 1, "k", (I64,), scalar=True)
    return [TensorType(t.dtype, t.shape)]


def _ref_trilu(ins: list, a: dict, n: int) -> list:
    x, k = _pad_inputs(ins, 2)
    k = int(_scalar(k, 0))
    return [np.triu(x, k) if a["upper"] else np.tril(x, k)]


_reg("trilu", "Trilu", ("input", "k?"), ("output",), _infer_trilu, _ref_trilu,
     attrs={"upper": attr("int", 1)}, min_opset=14)


def _infer_cum_sum(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    if t.dtype not in (DType.f16, DType.bf16, DType.f32, DType.f64, DType.i32, DType.i64, DType.u32, DType.u64):
        raise ctx.fail(f"CumSum takes float, i32, i64, u32 or u64 tensors, got {t.dtype}")
    _index_input(ctx, 1, "axis", scalar=True)
    axis = _static(ctx, 1)
    if axis is not None:
        _axis(ctx, int(np.asarray(axis).reshape(-1)[0]), t.rank)
    return [TensorType(t.dtype, t.shape)]


def _ref_cum_sum(ins: list, a: dict, n: int) -> list:
    x, axis = ins
    axis = norm_axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim)
    y = np.flip(x, axis) if a["reverse"] else x
    out = np.cumsum(y, axis=axis, dtype=x.dtype)
    if a["exclusive"]:
        out = np.concatenate([np.zeros_like(np.take(out, [0], axis=axis)),
                              np.take(out, np.arange(out.shape[axis] - 1), axis=axis)], axis=axis)
    return [np.flip(out, axis) if a["reverse"] else out]


_reg("cum_sum", "CumSum", ("x", "axis"), ("y",), _infer_cum_sum, _ref_cum_sum,
     attrs={"exclusive": attr("int", 0), "reverse": attr("int", 0)}, op_class="other", min_opset=11)


def _infer_top_k(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    if t.rank == 0:
        raise ctx.fail("TopK needs an input of rank 1 or more")
    if t.dtype == DType.bool:
        raise ctx.fail("TopK does not take bool tensors")
    if t.dtype == DType.bf16:
        raise _needs_newer_opset(ctx, "TopK", t.dtype, 24)
    _index_input(ctx, 1, "K", (I64,), scalar=True)
    axis = _axis(ctx, ctx.attrs["axis"], t.rank)
    k_arr = _static(ctx, 1)
    k: Dim = UNKNOWN_DIM
    if k_arr is not None:
        k = int(np.asarray(k_arr).reshape(-1)[0])
        if k < 0 or (is_known(t.shape[axis]) and k > t.shape[axis]):
            raise ctx.fail(f"K={k} is out of range for an axis of length {t.shape[axis]}")
    shape = t.shape[:axis] + (k,) + t.shape[axis + 1:]
    return [TensorType(t.dtype, shape), TensorType(I64, shape)][:max(ctx.n_outputs, 1)]


def _ref_top_k(ins: list, a: dict, n: int) -> list:
    x, k_arr = ins
    k = int(np.asarray(k_arr).reshape(-1)[0])
    axis = norm_axis(a["axis"], x.ndim)
    if k > x.shape[axis]:
        raise ValueError(f"K={k} is larger than the axis length {x.shape[axis]}")
    if a["largest"]:
        # descending by value, ties by ascending index: a stable sort of the reversed axis, reversed
        length = x.shape[axis]
        order = length - 1 - np.flip(np.argsort(np.flip(x, axis), axis=axis, kind="stable"), axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis).astype(np.int64)
    return [np.take_along_axis(x, idx, axis=axis), idx][:n]


def _upgrade_top_k(ctx: UpgradeCtx) -> None:
    """Before opset 10 ``k`` is an attribute."""
    if "k" in ctx.attrs:
        ctx.attrs["k"] = [ctx.attrs["k"]]
        _attr_to_input(ctx, "k", 1)


_reg("top_k", "TopK", ("X", "K"), ("Values", "Indices"), _infer_top_k, _ref_top_k,
     attrs={"axis": attr("int", -1), "largest": attr("int", 1), "sorted": attr("int", 1)},
     op_class="other", upgrade=_upgrade_top_k)


# ----------------------------------------------------------------------------- dropout


def _upgrade_dropout(ctx: UpgradeCtx) -> None:
    """Before opset 12 Dropout is inference-only and ``ratio`` is an attribute that then
    changes nothing; the IR form has no training-mode input, so it stays the identity."""
    if ctx.opset < 12:
        ctx.attrs.pop("ratio", None)
        ctx.attrs.pop("is_test", None)


def _training_dropout() -> UnsupportedOpError:
    return UnsupportedOpError([("Dropout", "Dropout", "training-mode Dropout (training_mode=true with ratio > 0) "
                                                     "draws a random mask; effc runs inference only")])


def _infer_dropout(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    if not t.dtype.is_float:
        raise ctx.fail(f"data must be a float tensor, got {t.dtype}")
    if ctx.has(1) and not ctx.type(1).dtype.is_float:
        raise ctx.fail(f"ratio must be a float scalar, got {ctx.type(1).dtype}")
    if ctx.has(1) and ctx.type(1).dtype == DType.bf16:
        raise _needs_newer_opset(ctx, "Dropout ratio", DType.bf16, 22)
    if ctx.has(2):
        if ctx.type(2).dtype != DType.bool:
            raise ctx.fail(f"training_mode must be a bool scalar, got {ctx.type(2).dtype}")
        training, ratio = _static(ctx, 2), _static(ctx, 1) if ctx.has(1) else np.array(0.5)
        if training is not None and bool(_scalar(training, False)) and ratio is not None and _scalar(ratio, 0.5) > 0:
            raise ctx.unsupported("training-mode Dropout (training_mode=true with ratio > 0) draws a random mask; "
                                  "effc runs inference only")
    return [TensorType(t.dtype, t.shape), TensorType(DType.bool, t.shape)][:max(ctx.n_outputs, 1)]


def _ref_dropout(ins: list, a: dict, n: int) -> list:
    x, ratio, training = _pad_inputs(ins, 3)
    if bool(_scalar(training, False)) and float(_scalar(ratio, 0.5)) > 0:
        raise _training_dropout()
    return [x, np.ones(x.shape, dtype=bool)][:n]


_reg("dropout", "Dropout", ("data", "ratio?", "training_mode?"), ("output", "mask?"), _infer_dropout,
     _ref_dropout, attrs={"seed": attr("int", None)}, upgrade=_upgrade_dropout)


# ----------------------------------------------------------------------------- resize

_RESIZE_MODES = ("nearest", "linear", "cubic")
_COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                "tf_crop_and_resize")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_ASPECT_POLICIES = ("stretch", "not_larger", "not_smaller")


def _present(ctx: InferCtx, i: int) -> bool:
    """Is optional input ``i`` given? An empty tensor (older models' placeholder) is absent."""
    return ctx.has(i) and ctx.type(i).shape != (0,)


def _resize_axes(axes, rank: int) -> list[int]:
    return list(range(rank)) if axes is None else norm_axes(axes, rank)


def _resize_plan(in_shape: Sequence[Dim], axes: list[int], scales: np.ndarray | None, sizes: np.ndarray | None,
                 policy: str) -> tuple[list[Dim], list[float | None]]:
    """Output shape and the scale of each axis (``scales`` xor ``sizes`` given).

    Output lengths from scales are ``floor(in * scale)`` in float32 arithmetic, as ONNX's
    shape inference and onnxruntime compute them."""
    out, scale_of = list(in_shape), [1.0] * len(in_shape)
    if scales is not None:
        scales = np.asarray(scales, dtype=np.float32).reshape(-1)
        if len(scales) != len(axes):
            raise ValueError(f"scales has {len(scales)} entries for {len(axes)} axes")
        if (scales <= 0).any():
            raise ValueError(f"scales {scales.tolist()} must be positive")
        for ax, s in zip(axes, scales):
            d = in_shape[ax]
            scale_of[ax] = float(s)
            if is_known(d):
                out[ax] = int(np.floor(np.float32(s) * np.float32(d)))
            else:
                out[ax] = d if s == 1 else UNKNOWN_DIM
        return out, scale_of
    sizes_l = as_ints(sizes)
    if len(sizes_l) != len(axes):
        raise ValueError(f"sizes has {len(sizes_l)} entries for {len(axes)} axes")
    if any(n < 0 for n in sizes_l):
        raise ValueError(f"sizes {sizes_l} must not be negative")
    if policy == "stretch":
        for ax, n in zip(axes, sizes_l):
            d = in_shape[ax]
            out[ax] = n
            scale_of[ax] = n / d if is_known(d) and d > 0 else None
        return out, scale_of
    if not all(is_known(in_shape[ax]) and in_shape[ax] > 0 for ax in axes):
        for ax in axes:
            out[ax], scale_of[ax] = UNKNOWN_DIM, None
        return out, scale_of
    ratios = [n / in_shape[ax] for ax, n in zip(axes, sizes_l)]
    s = min(ratios) if policy == "not_larger" else max(ratios)
    for ax in axes:
        out[ax] = int(s * in_shape[ax] + 0.5)
        scale_of[ax] = s
    return out, scale_of


def _check_resize_attrs(a: dict) -> str | None:
    for key, allowed in (("mode", _RESIZE_MODES), ("coordinate_transformation_mode", _COORD_MODES),
                         ("nearest_mode", _NEAREST_MODES), ("keep_aspect_ratio_policy", _ASPECT_POLICIES)):
        if a[key] not in allowed:
            return f"{key} '{a[key]}' is not one of {', '.join(allowed)}"
    return None


def _infer_resize(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    a = ctx.attrs
    bad = _check_resize_attrs(a)
    if bad:
        raise ctx.fail(bad)
    if a["mode"] != "nearest" and t.dtype == DType.bool:
        raise ctx.fail(f"mode '{a['mode']}' cannot interpolate bool tensors")
    try:
        axes = _resize_axes(a["axes"], t.rank)
    except ShapeError as e:
        raise ctx.fail(str(e)) from None
    has_scales, has_sizes = _present(ctx, 2), _present(ctx, 3)
    if has_scales and has_sizes:
        raise ctx.fail("give either 'scales' or 'sizes', not both")
    if not has_scales and not has_sizes:
        raise ctx.fail("needs 'scales' or 'sizes'")
    if has_scales and ctx.type(2).dtype != DType.f32:
        raise ctx.fail(f"scales must be f32, got {ctx.type(2).dtype}")
    if has_sizes:
        _index_input(ctx, 3, "sizes", (I64,))
    if ctx.has(1) and ctx.type(1).dtype not in (DType.f16, DType.f32, DType.f64):
        raise ctx.fail(f"roi must be f16, f32 or f64, got {ctx.type(1).dtype}")
    scales = _static(ctx, 2) if has_scales else None
    sizes = _static(ctx, 3) if has_sizes else None
    if scales is None and sizes is None:
        return [t.with_shape(tuple(UNKNOWN_DIM if i in axes else d for i, d in enumerate(t.shape)))]
    try:
        out, _ = _resize_plan(t.shape, axes, scales, sizes, a["keep_aspect_ratio_policy"])
    except ValueError as e:
        raise ctx.fail(str(e)) from None
    return [t.with_shape(tuple(out))]


def _source_coords(mode: str, length: int, out_len: int, scale: float, roi: tuple[float, float]) -> np.ndarray:
    """x_original for every output index along one axis (float64).

    ``length_resized`` in the align_corners and tf_crop_and_resize formulas is
    ``scale * length``, fractional when the output length came from a scale, as ONNX's
    reference and its conformance data have it (onnx/onnx#2462); onnxruntime uses the
    integer output length there and so differs for such scales."""
    x = np.arange(out_len, dtype=np.float64)
    resized = scale * length
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        offset = length / 2 * (1 - out_len / resized)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":  # the spec's "length_resized > 1" with the integer length, as onnxruntime
        return (x + 0.5) / scale - 0.5 if out_len > 1 else np.zeros(out_len)
    if mode == "align_corners":
        return x * (length - 1) / (resized - 1) if resized != 1 else np.zeros(out_len)
    if mode == "asymmetric":
        return x / scale
    start, end = roi  # tf_crop_and_resize
    if resized != 1:
        return start * (length - 1) + x * (end - start) * (length - 1) / (resized - 1)
    return np.full(out_len, 0.5 * (start + end) * (length - 1))


def _nearest_index(xo: np.ndarray, nearest_mode: str) -> np.ndarray:
    if nearest_mode == "round_prefer_floor":
        idx = np.ceil(xo - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        idx = np.floor(xo + 0.5)
    elif nearest_mode == "floor":
        idx = np.floor(xo)
    else:
        idx = np.ceil(xo)
    return idx.astype(np.int64)


def _cubic_kernel(d: np.ndarray, A: float) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``d``."""
    d = np.abs(d)
    near = ((A + 2) * d - (A + 3)) * d * d + 1
    far = ((A * d - 5 * A) * d + 8 * A) * d - 4 * A
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _interp_taps(xo: np.ndarray, scale: float, a: dict) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (unclamped) and weights, each [out_len, taps], for linear/cubic.

    The window sits around x_original with ratio in (0, 1]: an integer x_original takes the
    pixel on its left as the lower neighbour, as ONNX's reference does. With antialias the
    kernel is stretched by 1/scale when downsampling and its weights are normalized."""
    base = np.ceil(xo) - 1  # the left neighbour
    ratio = xo - base  # in (0, 1]
    cubic = a["mode"] == "cubic"
    support = 2 if cubic else 1
    s = min(scale, 1.0) if a["antialias"] else 1.0
    first = int(math.floor(-support / s)) + 1
    offsets = np.arange(first, 2 - first)  # linear: [0, 1], cubic: [-1, 2]; wider with antialias
    idx = base[:, None].astype(np.int64) + offsets[None, :]
    dist = (offsets[None, :] - ratio[:, None]) * s
    if cubic:
        w = _cubic_kernel(dist, a["cubic_coeff_a"])
    else:
        w = np.clip(1 - np.abs(dist), 0, 1)
    if a["antialias"]:
        w = w / w.sum(axis=1, keepdims=True)
    return idx, w


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """Reshape a 1-D array so it broadcasts along ``axis`` of an ``ndim``-D tensor."""
    return v.reshape((1,) * axis + (-1,) + (1,) * (ndim - axis - 1))


def _resize_axis(y: np.ndarray, axis: int, out_len: int, scale: float, roi: tuple[float, float], a: dict,
                 work: np.dtype) -> np.ndarray:
    """Resize one axis (separable interpolation)."""
    length = y.shape[axis]
    if length == 0 and out_len > 0:
        raise ValueError(f"cannot resize an empty axis {axis} to length {out_len}")
    coord_mode = a["coordinate_transformation_mode"]
    xo = _source_coords(coord_mode, length, out_len, scale, roi)
    if a["mode"] == "nearest":
        idx = np.clip(_nearest_index(xo, a["nearest_mode"]), 0, max(length - 1, 0))
        out = np.take(y, idx, axis=axis)
    else:
        idx, w = _interp_taps(xo, scale, a)
        if a["exclude_outside"]:
            w = np.where((idx < 0) | (idx >= length), 0.0, w)
            total = w.sum(axis=1, keepdims=True)
            w = w / np.where(total == 0, 1.0, total)
        idx = np.clip(idx, 0, length - 1)
        w = w.astype(work)
        out = None
        for k in range(idx.shape[1]):  # one pass per kernel tap
            term = np.take(y, idx[:, k], axis=axis) * _along(w[:, k], axis, y.ndim)
            out = term if out is None else out + term
    if coord_mode == "tf_crop_and_resize":
        outside = (xo < 0) | (xo > length - 1)
        if outside.any():
            out = np.where(_along(outside, axis, y.ndim), np.asarray(a["extrapolation_value"]).astype(out.dtype), out)
    return out


def _ref_resize(ins: list, a: dict, n: int) -> list:
    x, roi, scales, sizes = _pad_inputs(ins, 4)
    bad = _check_resize_attrs(a)
    if bad:
        raise ValueError(bad)
    scales = None if scales is None or scales.size == 0 else scales
    sizes = None if sizes is None or sizes.size == 0 else sizes
    if (scales is None) == (sizes is None):
        raise ValueError("Resize needs exactly one of 'scales' and 'sizes'")
    axes = _resize_axes(a["axes"], x.ndim)
    out_shape, scale_of = _resize_plan(x.shape, axes, scales, sizes, a["keep_aspect_ratio_policy"])
    roi_pairs = {ax: (0.0, 1.0) for ax in axes}
    if roi is not None and roi.size and a["coordinate_transformation_mode"] == "tf_crop_and_resize":
        r = np.asarray(roi, dtype=np.float64).reshape(-1)
        if r.size != 2 * len(axes):
            raise ValueError(f"roi has {r.size} entries; expected {2 * len(axes)} (start and end per axis)")
        roi_pairs = {ax: (float(r[i]), float(r[i + len(axes)])) for i, ax in enumerate(axes)}
    nearest = a["mode"] == "nearest"
    # nearest only moves elements; interpolation runs in f32 (f64 for f64 and integer inputs)
    work = x.dtype if nearest else np.dtype(np.float64 if x.dtype == np.float64 or x.dtype.kind in "iu" else np.float32)
    y = x if nearest else x.astype(work)
    for ax in axes:
        scale = scale_of[ax] if scale_of[ax] is not None else out_shape[ax] / x.shape[ax]
        trivial_roi = a["coordinate_transformation_mode"] != "tf_crop_and_resize" or roi_pairs[ax] == (0.0, 1.0)
        if math.isclose(scale, 1.0) and out_shape[ax] == y.shape[ax] and trivial_roi:
            continue
        y = _resize_axis(y, ax, int(out_shape[ax]), scale, roi_pairs[ax], a, work)
    if y.dtype == x.dtype:
        return [y]
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return [np.clip(np.round(y), info.min, info.max).astype(x.dtype)]
    return [y.astype(x.dtype)]


def _empty_to_none(ctx: UpgradeCtx, i: int) -> None:
    v = ctx.inputs[i] if i < len(ctx.inputs) else None
    if v is not None and v.const_value is not None and np.asarray(v.const_value).size == 0:
        ctx.inputs[i] = None


def _upgrade_resize(ctx: UpgradeCtx) -> None:
    """Older forms → opset-21 Resize.

    - Upsample (opsets 7-9: ``scales`` attribute in 7-8, input in 9) and Resize-10 (``scales``
      input) use asymmetric coordinates; nearest picks ``floor`` (onnxruntime: ``ceil`` when
      Resize-10 downsamples).
    - Resize 11-13: empty ``roi``/``scales`` placeholders become absent inputs; ``roi`` is
      dropped unless the mode is tf_crop_and_resize. ``tf_half_pixel_for_nn`` (opset 11-12)
      has no opset-21 equivalent."""
    legacy = ctx.op_type == "Upsample" or ctx.opset < 11
    if legacy:
        if "scales" in ctx.attrs:  # Upsample-7
            scales = np.asarray(ctx.attrs.pop("scales"), dtype=np.float32)
            ctx.inputs = [ctx.inputs[0], None, ctx.add_const(scales)]
        else:
            ctx.inputs = [ctx.inputs[0], None, ctx.inputs[1] if len(ctx.inputs) > 1 else None]
        mode = ctx.attrs.get("mode", "nearest")
        if mode == "bilinear":  # Upsample-7 spelled linear this way in some exporters
            mode = ctx.attrs["mode"] = "linear"
        ctx.attrs["coordinate_transformation_mode"] = "asymmetric"
        if mode == "nearest":
            ctx.attrs["nearest_mode"] = _legacy_nearest_mode(ctx)
        return
    ctm = ctx.attrs.get("coordinate_transformation_mode", "half_pixel")
    if ctm == "tf_half_pixel_for_nn":
        raise ctx.unsupported("coordinate_transformation_mode tf_half_pixel_for_nn (removed in opset 13)")
    for i in (1, 2, 3):
        _empty_to_none(ctx, i)
    if ctm != "tf_crop_and_resize" and len(ctx.inputs) > 1:
        ctx.inputs[1] = None


def _legacy_nearest_mode(ctx: UpgradeCtx) -> str:
    """Upsample only enlarges: floor. Resize-10 in onnxruntime rounds down when it enlarges
    an axis and up when it shrinks one; a constant ``scales`` tells which."""
    scales_v = ctx.inputs[2]
    if ctx.op_type == "Upsample" or scales_v is None or scales_v.const_value is None:
        return "floor"
    s = np.asarray(scales_v.const_value, dtype=np.float64).reshape(-1)
    down, up = (s < 1).any(), (s > 1).any()
    if down and up:
        raise ctx.unsupported("opset-10 nearest Resize that enlarges some axes and shrinks others")
    return "ceil" if down else "floor"


_RESIZE = _reg("resize", "Resize", ("X", "roi?", "scales?", "sizes?"), ("Y",), _infer_resize, _ref_resize,
               attrs={"antialias": attr("int", 0), "axes": attr("ints", None),
                      "coordinate_transformation_mode": attr("str", "half_pixel"),
                      "cubic_coeff_a": attr("float", -0.75), "exclude_outside": attr("int", 0),
                      "extrapolation_value": attr("float", 0.0), "keep_aspect_ratio_policy": attr("str", "stretch"),
                      "mode": attr("str", "nearest"), "nearest_mode": attr("str", "round_prefer_floor")},
               op_class="other", min_opset=10, upgrade=_upgrade_resize)

# Upsample (deprecated in opset 10) imports as the Resize it means: its upgrade hook above
# rewrites it, so the IR and every export hold a Resize.
BY_ONNX["Upsample"] = _RESIZE
