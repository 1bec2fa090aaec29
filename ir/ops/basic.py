"""The ``const`` op: a constant tensor (inline or in the weight store)."""
from __future__ import annotations

import numpy as np

from ..core import Resource
from ..opdef import InferCtx, OpDef, attr, register
from ..types import TensorType


def _infer_const(ctx: InferCtx) -> list[TensorType]:
    v = ctx.attrs["value"]
    arr = v.get() if isinstance(v, Resource) else np.asarray(v)
    return [TensorType.of(arr)]


def _ref_const(ins: list, a: dict, n: int) -> list:
    v = a["value"]
    return [v.get() if isinstance(v, Resource) else np.asarray(v)]


register(OpDef("const", None, (), ("output",), _infer_const, _ref_const,
               attrs={"value": attr("tensor")}, traits=frozenset({"constant"}), op_class="constant"))
