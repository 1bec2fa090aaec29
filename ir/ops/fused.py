"""The ``fused`` op: a group of ops run as one kernel. Its body is a sub-graph whose
inputs bind to the node's inputs and whose outputs are the node's outputs. The
interpreter runs the body; export writes the body's nodes."""
from __future__ import annotations

from ..opdef import InferCtx, OpDef, attr, register
from ..types import TensorType


def _infer(ctx: InferCtx) -> list[TensorType]:
    body = ctx.node.body
    if body is None:
        raise ctx.fail("a fused node needs a body")
    if len(body.inputs) != len(ctx.types):
        raise ctx.fail(f"body takes {len(body.inputs)} inputs, node has {len(ctx.types)}")
    for i, (t, v) in enumerate(zip(ctx.types, body.inputs)):
        if t is None or t.dtype != v.type.dtype or t.rank != v.type.rank:
            raise ctx.fail(f"input {i} is {t}, the body expects {v.type}")
    return [v.type for v in body.outputs]


def _ref(ins: list, a: dict, n: int) -> list:
    raise RuntimeError("fused nodes are run through their body")


register(OpDef("fused", None, ("inputs*",), ("outputs*",), _infer, _ref, attrs={"kind": attr("str", "")},
               op_class="fused"))
