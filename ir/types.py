"""Tensor types: element dtypes, shapes with symbolic dims, quantization parameters."""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

import numpy as np

from .lexical import format_float, format_int, format_key, format_list

Dim = Union[int, str]
"""A dimension: a non-negative int, or a symbol name (``"N"``); ``"?"`` means unknown."""

UNKNOWN_DIM = "?"

MAX_ADDRESSABLE_BYTES = 2**63 - 1
"""No tensor can be larger: byte sizes and offsets are int64 in ONNX, numpy and every runtime."""


def tensor_nbytes(shape: "tuple[int, ...] | list[int]", itemsize: int) -> int:
    """The exact byte size of a static shape, in Python ints (``np.prod`` with int64 wraps:
    2**32 x 2**32 gives 0). ValueError for a negative dim or a size over MAX_ADDRESSABLE_BYTES,
    so a corrupted shape is refused instead of turning into a small or negative size."""
    n = itemsize
    for d in shape:
        if d < 0:
            raise ValueError(f"negative dimension {d} in shape {list(shape)}")
        n *= d
    if n > MAX_ADDRESSABLE_BYTES:
        raise ValueError(f"shape {list(shape)} of {itemsize}-byte elements is {n} bytes, "
                         f"more than any machine can address (2**63)")
    return n


class DType(enum.Enum):
    """Element types. The value is the short name used in the text form."""

    f16 = "f16"
    bf16 = "bf16"
    f32 = "f32"
    f64 = "f64"
    i4 = "i4"
    i8 = "i8"
    i16 = "i16"
    i32 = "i32"
    i64 = "i64"
    u4 = "u4"
    u8 = "u8"
    u16 = "u16"
    u32 = "u32"
    u64 = "u64"
    bool = "bool"

    def __str__(self) -> str:
        return self.value

    @property
    def np(self) -> np.dtype:
        return _TO_NUMPY[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.f16, DType.bf16, DType.f32, DType.f64)

    @property
    def is_int(self) -> bool:
        return not self.is_float and self is not DType.bool

    @property
    def is_signed(self) -> bool:
        return self.is_float or self in (DType.i4, DType.i8, DType.i16, DType.i32, DType.i64)

    @property
    def int_range(self) -> tuple[int, int]:
        """The smallest and largest value of an integer dtype (numpy's ``iinfo`` does not
        know ml_dtypes' int4)."""
        if self in (DType.i4, DType.u4):
            return (-8, 7) if self is DType.i4 else (0, 15)
        info = np.iinfo(self.np)
        return int(info.min), int(info.max)

    @property
    def bits(self) -> int:
        """Bits per element (4 for the int4 types, whose numpy arrays still take a byte each;
        ONNX packs two to a byte)."""
        return 4 if self in (DType.i4, DType.u4) else 8 * self.itemsize

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    @staticmethod
    def from_numpy(dt: np.dtype | type) -> "DType":
        dt = np.dtype(dt)
        for k, v in _TO_NUMPY.items():
            if v == dt:
                return k
        raise ValueError(f"numpy dtype {dt} has no effc dtype")

    @staticmethod
    def parse(name: str) -> "DType":
        try:
            return DType(name)
        except ValueError:
            raise ValueError(f"unknown dtype '{name}' (known: {', '.join(d.value for d in DType)})") from None


def _ml_dtype(name: str) -> np.dtype:
    import ml_dtypes  # installed with onnx

    return np.dtype(getattr(ml_dtypes, name))


_TO_NUMPY: dict[DType, np.dtype] = {
    DType.f16: np.dtype(np.float16),
    DType.bf16: _ml_dtype("bfloat16"),
    DType.f32: np.dtype(np.float32),
    DType.f64: np.dtype(np.float64),
    DType.i4: _ml_dtype("int4"),
    DType.i8: np.dtype(np.int8),
    DType.i16: np.dtype(np.int16),
    DType.i32: np.dtype(np.int32),
    DType.i64: np.dtype(np.int64),
    DType.u4: _ml_dtype("uint4"),
    DType.u8: np.dtype(np.uint8),
    DType.u16: np.dtype(np.uint16),
    DType.u32: np.dtype(np.uint32),
    DType.u64: np.dtype(np.uint64),
    DType.bool: np.dtype(np.bool_),
}


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization: real = scale * (q - zero_point). Per-tensor when axis is None."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    bits: int = 8

    def __post_init__(self) -> None:
        if len(self.scale) != len(self.zero_point):
            raise ValueError("QuantParams: scale and zero_point lengths differ")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError("QuantParams: per-tensor quantization takes one scale")


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple[Dim, ...]
    quant: QuantParams | None = None

    def __post_init__(self) -> None:
        for d in self.shape:
            if isinstance(d, bool) or not isinstance(d, (int, str)) or (isinstance(d, int) and d < 0):
                raise ValueError(f"bad dimension {d!r} in shape {self.shape!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        """Element count, or None when a dim is symbolic."""
        n = 1
        for d in self.shape:
            if not isinstance(d, int):
                return None
            n *= d
        return n

    def nbytes(self) -> int | None:
        n = self.numel()
        return None if n is None else n * self.dtype.itemsize

    def with_shape(self, shape: tuple[Dim, ...]) -> "TensorType":
        return TensorType(self.dtype, tuple(shape), self.quant)

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape, None)

    def __str__(self) -> str:
        return format_type(self)

    @staticmethod
    def of(array: np.ndarray) -> "TensorType":
        return TensorType(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))


def _format_dim(d: Dim) -> str:
    if isinstance(d, int):
        return str(d)
    return d if d == UNKNOWN_DIM else format_key(d)


def _format_quant(q: QuantParams) -> str:
    parts = [f"scale={format_list(q.scale, format_float)}", f"zero_point={format_list(q.zero_point, format_int)}"]
    if q.axis is not None:
        parts.append(f"axis={q.axis}")
    parts.append(f"bits={q.bits}")
    return f"quant<{', '.join(parts)}>"


def format_type(t: TensorType) -> str:
    """The text form of a type (``str(t)``): ``f32[N,16,8,8]``, ``i64[]``,
    ``u8[4] quant<scale=[0.5], zero_point=[3], bits=8>``."""
    text = f"{t.dtype.value}[{','.join(_format_dim(d) for d in t.shape)}]"
    return text if t.quant is None else f"{text} {_format_quant(t.quant)}"


def shape_matches(declared: tuple[Dim, ...], actual: tuple[int, ...], bindings: dict[str, int]) -> bool:
    """Does a concrete shape fit a declared one? Binds symbols consistently in ``bindings``."""
    if len(declared) != len(actual):
        return False
    for d, a in zip(declared, actual):
        if isinstance(d, int):
            if d != a:
                return False
        elif d != UNKNOWN_DIM:
            if bindings.setdefault(d, a) != a:
                return False
    return True
