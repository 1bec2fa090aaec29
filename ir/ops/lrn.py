"""Local response normalization (ONNX LRN), used by AlexNet-era models."""
from __future__ import annotations

import numpy as np

from ._common import require_float, same_as_input
from ..opdef import InferCtx, OpDef, attr, register


def _infer(ctx: InferCtx) -> list:
    t = require_float(ctx)
    if t.rank < 3:
        raise ctx.fail(f"input must be at least 3-D (N,C,...), got {t}")
    if ctx.attrs["size"] < 1:
        raise ctx.fail(f"size must be positive, got {ctx.attrs['size']}")
    return same_as_input(ctx)


def _ref(ins: list, a: dict, n: int) -> list:
    x = ins[0]
    size = a["size"]
    sq = np.square(x.astype(np.float64))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    channels = x.shape[1]
    # windowed sum over channels via a cumulative sum along axis 1
    csum = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)], axis=1)
    idx = np.arange(channels)
    top = np.minimum(idx + hi + 1, channels)
    bottom = np.maximum(idx - lo, 0)
    square_sum = np.take(csum, top, axis=1) - np.take(csum, bottom, axis=1)
    y = x / (a["bias"] + a["alpha"] / size * square_sum) ** a["beta"]
    return [y.astype(x.dtype)]


register(OpDef("lrn", "LRN", ("X",), ("Y",), _infer, _ref,
               attrs={"size": attr("int"), "alpha": attr("float", 0.0001), "beta": attr("float", 0.75),
                      "bias": attr("float", 1.0)},
               op_class="norm"))
