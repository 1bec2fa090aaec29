"""Shape arithmetic shared by the op definitions: broadcasting, axes, symbolic dims.

A symbolic dim (``"N"``) survives an op when the op passes it through unchanged; any
arithmetic on it gives the unknown dim ``"?"`` unless it is the identity (x*1, x+0)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import ShapeError
from .types import UNKNOWN_DIM, Dim


def is_known(d: Dim) -> bool:
    return isinstance(d, int)


def dim_add(a: Dim, b: Dim) -> Dim:
    if is_known(a) and is_known(b):
        return a + b
    if b == 0:
        return a
    if a == 0:
        return b
    return UNKNOWN_DIM


def dim_mul(a: Dim, b: Dim) -> Dim:
    if is_known(a) and is_known(b):
        return a * b
    if b == 1:
        return a
    if a == 1:
        return b
    if a == 0 or b == 0:
        return 0
    return UNKNOWN_DIM


def dim_prod(dims: Sequence[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def norm_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def norm_axes(axes: Sequence[int], rank: int, what: str = "axes") -> list[int]:
    out = [norm_axis(int(a), rank, what) for a in axes]
    if len(set(out)) != len(out):
        raise ShapeError(f"{what} {list(axes)} repeat an axis")
    return out


def transpose_perm(perm: Sequence[int] | None, rank: int) -> list[int]:
    """Transpose's permutation with negative axes normalized (default, ``None`` or empty:
    reverse the axes). Raises ValueError when it is not a permutation of ``rank`` axes."""
    if not perm:
        return list(range(rank))[::-1]
    out = [int(p) + rank if int(p) < 0 else int(p) for p in perm]
    if sorted(out) != list(range(rank)):
        raise ValueError(f"perm {list(perm)} is not a permutation of the {rank} axes")
    return out


def broadcast_dims(a: Dim, b: Dim) -> Dim:
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if is_known(a) and is_known(b):
        raise ShapeError(f"dims {a} and {b} do not broadcast")
    if is_known(a):
        return a  # the symbol must equal a (or be 1)
    if is_known(b):
        return b
    return UNKNOWN_DIM


def broadcast_shapes(*shapes: Sequence[Dim]) -> tuple[Dim, ...]:
    """Numpy-style multidirectional broadcasting over symbolic shapes."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for s in shapes:
        padded = [1] * (rank - len(s)) + list(s)
        try:
            out = [broadcast_dims(x, y) for x, y in zip(out, padded)]
        except ShapeError:
            raise ShapeError(
                "shapes " + " and ".join(str(list(x)) for x in shapes) + " do not broadcast"
            ) from None
    return tuple(out)


def unidirectional_ok(target: Sequence[Dim], shape: Sequence[Dim]) -> bool:
    """Can ``shape`` broadcast to ``target`` (ONNX unidirectional broadcasting)?"""
    if len(shape) > len(target):
        return False
    for t, s in zip(reversed(list(target)), reversed(list(shape))):
        if s != 1 and is_known(s) and is_known(t) and s != t:
            return False
    return True


def pool_out_dim(size: Dim, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int,
                 ceil_mode: bool = False) -> Dim:
    """Output length of a conv/pool window along one axis (explicit padding).

    With ceil_mode a last partial window is kept only if it starts inside the input or
    its left padding (the PyTorch rule ONNX follows)."""
    if not is_known(size):
        return UNKNOWN_DIM
    eff = dilation * (kernel - 1) + 1
    span = size + pad_begin + pad_end - eff
    if span < 0:
        raise ShapeError(f"window {eff} is larger than the padded input {size + pad_begin + pad_end}")
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + pad_begin:
            out -= 1
        return out
    return span // stride + 1


def auto_pads(auto_pad: str, sizes: Sequence[Dim], kernels: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> list[int] | None:
    """Explicit pads ``[b1, b2, ..., e1, e2, ...]`` for SAME_UPPER/SAME_LOWER/VALID, or None
    when a spatial size is symbolic (the caller then gives unknown output dims)."""
    n = len(kernels)
    if auto_pad == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernels, strides, dilations):
        if not is_known(size):
            return None
        out = -(-size // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        if auto_pad == "SAME_UPPER":
            begins.append(small)
            ends.append(big)
        elif auto_pad == "SAME_LOWER":
            begins.append(big)
            ends.append(small)
        else:
            raise ShapeError(f"unknown auto_pad '{auto_pad}'")
    return begins + ends


def reshape_target(in_shape: Sequence[Dim], target: Sequence[int], allowzero: bool) -> tuple[Dim, ...]:
    """ONNX Reshape output shape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    out: list[Dim] = []
    infer_at = None
    for i, t in enumerate(int(x) for x in target):
        if t == -1:
            if infer_at is not None:
                raise ShapeError("reshape: more than one -1 in the target shape")
            infer_at = i
            out.append(UNKNOWN_DIM)
        elif t == 0 and not allowzero:
            if i >= len(in_shape):
                raise ShapeError(f"reshape: 0 at position {i} but the input has rank {len(in_shape)}")
            out.append(in_shape[i])
        elif t < -1:
            raise ShapeError(f"reshape: bad target dim {t}")
        else:
            out.append(t)
    if infer_at is not None:
        known_in, sym_in = _split_factors(in_shape)
        known_out, sym_out = _split_factors([d for i, d in enumerate(out) if i != infer_at])
        for s in sym_out:
            if s in sym_in:
                sym_in.remove(s)
            else:
                return tuple(out)
        if known_out == 0:
            raise ShapeError("reshape: cannot infer -1 with a zero-sized dim")
        if not sym_in:
            if known_in % known_out:
                raise ShapeError(f"reshape: cannot reshape {list(in_shape)} into {list(target)}")
            out[infer_at] = known_in // known_out
        elif len(sym_in) == 1 and known_in == known_out:
            out[infer_at] = sym_in[0]
    else:
        ki, si = _split_factors(in_shape)
        ko, so = _split_factors(out)
        if not si and not so and ki != ko:
            raise ShapeError(f"reshape: cannot reshape {list(in_shape)} ({ki} elements) into {list(target)}")
    return tuple(out)


def _split_factors(shape: Sequence[Dim]) -> tuple[int, list[str]]:
    known, syms = 1, []
    for d in shape:
        if is_known(d):
            known *= d
        else:
            syms.append(d)
    return known, syms


def as_ints(a: np.ndarray | Sequence[int]) -> list[int]:
    return [int(x) for x in np.asarray(a).reshape(-1)]


def static_numel(shape: Sequence[Dim]) -> int | None:
    if all(is_known(d) for d in shape):
        return math.prod(shape)  # type: ignore[arg-type]
    return None
