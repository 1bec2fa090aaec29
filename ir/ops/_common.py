"""Building blocks for op definitions: factories for the common shapes of ops."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..opdef import InferCtx, OpDef, attr, register
from ..shapes import broadcast_shapes
from ..types import DType, TensorType

FLOATS = (DType.f16, DType.bf16, DType.f32, DType.f64)


def same_as_input(ctx: InferCtx) -> list[TensorType]:
    t = ctx.type(0)
    return [TensorType(t.dtype, t.shape)]


def require_float(ctx: InferCtx, i: int = 0) -> TensorType:
    t = ctx.type(i)
    if not t.dtype.is_float:
        raise ctx.fail(f"input {i} must be a float tensor, got {t.dtype}")
    return t


def keep_dtype(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Wrap a numpy function so its result has the first input's dtype (no float64 creep)."""

    def wrapped(x: np.ndarray, *args: Any, **kw: Any) -> np.ndarray:
        return np.asarray(fn(x, *args, **kw)).astype(x.dtype, copy=False)

    return wrapped


def unary(name: str, onnx_name: str, fn: Callable[[np.ndarray, dict], np.ndarray], *,
          attrs: dict | None = None, float_only: bool = True, traits: tuple[str, ...] = (),
          op_class: str = "elementwise", min_opset: int = 1, upgrade=None,
          check: Callable[[InferCtx], Any] | None = None) -> OpDef:
    """An elementwise op of one input whose output has the input's type (``fn`` sees the
    input array; its result is cast back to the input dtype). ``check`` validates the input
    type (default: a float, unless ``float_only`` is off)."""

    def infer(ctx: InferCtx) -> list[TensorType]:
        if check is not None:
            check(ctx)
        elif float_only:
            require_float(ctx)
        return same_as_input(ctx)

    def ref(ins: list, a: dict, n: int) -> list:
        x = ins[0]
        return [np.asarray(fn(x, a)).astype(x.dtype, copy=False)]

    return register(OpDef(name, onnx_name, ("X",), ("Y",), infer, ref, attrs=attrs or {},
                          traits=frozenset(("elementwise",) + traits), op_class=op_class,
                          min_opset=min_opset, upgrade=upgrade))


def binary(name: str, onnx_name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
           out_dtype: DType | None = None, traits: tuple[str, ...] = (), allowed: tuple[DType, ...] | None = None,
           attrs: dict | None = None, upgrade=None, min_opset: int = 1) -> OpDef:
    """An elementwise op of two inputs with multidirectional broadcasting."""

    def infer(ctx: InferCtx) -> list[TensorType]:
        a, b = ctx.type(0), ctx.type(1)
        if a.dtype != b.dtype:
            raise ctx.fail(f"operand dtypes differ: {a.dtype} and {b.dtype}")
        if allowed is not None and a.dtype not in allowed:
            raise ctx.fail(f"dtype {a.dtype} is not supported")
        try:
            shape = broadcast_shapes(a.shape, b.shape)
        except Exception as e:
            raise ctx.fail(str(e)) from None
        return [TensorType(out_dtype or a.dtype, shape)]

    def ref(ins: list, a: dict, n: int) -> list:
        x, y = ins
        r = np.asarray(fn(x, y))
        return [r.astype(out_dtype.np if out_dtype else x.dtype, copy=False)]

    return register(OpDef(name, onnx_name, ("A", "B"), ("C",), infer, ref, attrs=attrs or {},
                          traits=frozenset(("elementwise",) + traits), op_class="elementwise",
                          upgrade=upgrade, min_opset=min_opset))


def drop_legacy_broadcast(ctx) -> None:
    """Opsets < 7: ``broadcast``/``axis`` attributes on binary ops. With axis given the
    second operand is aligned at ``axis``; reshape it so numpy broadcasting matches."""
    ctx.attrs.pop("consumed_inputs", None)
    bc = ctx.attrs.pop("broadcast", 0)
    axis = ctx.attrs.pop("axis", None)
    if bc and axis is not None:
        raise ctx.fail("legacy broadcast with an explicit axis (opset < 7) is not supported; "
                       "upgrade the model to opset 7 or newer")


__all__ = ["FLOATS", "same_as_input", "require_float", "keep_dtype", "unary", "binary", "attr", "register",
           "OpDef", "InferCtx", "TensorType", "DType", "drop_legacy_broadcast"]
