"""eliminate-identity: removes ops that return their input unchanged.

Rules:
- ``identity(x)`` → x
- ``dropout(x)`` in inference (no training_mode, or a constant false) → x (mask unused)
- ``reshape(x, s)`` / ``flatten(x)`` / ``squeeze`` / ``unsqueeze`` / ``expand`` whose result
  type equals x's static type → x
- ``transpose(x)`` with the identity permutation → x
- ``transpose(transpose(x, p), q)`` → ``transpose(x, p∘q)`` (→ x when that is the identity)
- ``cast(x, to=dtype of x)`` → x
- ``pad(x, pads)`` with all pads zero → x
- ``slice(x, ...)`` whose result has x's static shape with steps of 1 → x
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Module, Value
from effc.ir.opdef import node_attrs
from effc.ir.shapes import transpose_perm

from .base import Pass, PassContext, register_pass
from .rewrite import Any, Match, Op, Rule, apply_rules


def _same_static_type(m: Match) -> bool:
    root = m.root
    assert root is not None
    x = root.input(0)
    out = root.outputs[0]
    return x is not None and x.type.is_static and out.type.shape == x.type.shape and out.type.dtype == x.type.dtype


def _take_input(m: Match, b: Builder) -> Value:
    return m["x"]


def _dropout_is_inference(m: Match) -> bool:
    root = m.root
    assert root is not None
    if len(root.outputs) > 1 and (root.outputs[1].num_uses or root.outputs[1].is_graph_output):
        return False
    mode = root.input(2)
    if mode is None:
        return True
    arr = mode.const_value
    return arr is not None and not bool(np.asarray(arr).reshape(-1)[0])


def _dropout_result(m: Match, b: Builder) -> list[Value]:
    root = m.root
    assert root is not None
    return [m["x"]] * len(root.outputs)  # the mask output is unused (checked)


def _perm(node) -> list[int]:
    return transpose_perm(node_attrs(node).get("perm"), node.inputs[0].type.rank)


def _identity_perm(m: Match) -> bool:
    root = m.root
    assert root is not None
    return _perm(root) == list(range(root.inputs[0].type.rank))


def _compose_transposes(m: Match, b: Builder) -> Value:
    p, q = _perm(m.node("inner")), _perm(m.root)
    composed = [p[i] for i in q]
    if composed == list(range(len(composed))):
        return m["x"]
    return b.transpose(m["x"], perm=tuple(composed))


def _cast_to_same(m: Match) -> bool:
    root = m.root
    assert root is not None
    return node_attrs(root)["to"] == root.inputs[0].type.dtype


def _zero_pads(m: Match) -> bool:
    root = m.root
    assert root is not None
    pads = root.input(1)
    arr = None if pads is None else pads.const_value
    return arr is not None and not np.any(arr)


def _full_slice(m: Match) -> bool:
    root = m.root
    assert root is not None
    steps = root.input(4)
    if steps is not None:
        arr = steps.const_value
        if arr is None or np.any(arr != 1):
            return False
    return _same_static_type(m)


RULES = [
    Rule("identity", Op("identity", Any("x")), _take_input),
    Rule("dropout-inference", Op("dropout", Any("x"), Any(optional=True), Any(optional=True)), _dropout_result,
         check=_dropout_is_inference),
    Rule("noop-view", Op(("reshape", "flatten", "squeeze", "unsqueeze", "expand"), Any("x"), exact_arity=False),
         _take_input, check=_same_static_type),
    Rule("identity-transpose", Op("transpose", Any("x")), _take_input, check=_identity_perm),
    Rule("transpose-pair", Op("transpose", Op("transpose", Any("x"), name="inner")), _compose_transposes),
    Rule("noop-cast", Op("cast", Any("x")), _take_input, check=_cast_to_same),
    Rule("zero-pad", Op("pad", Any("x"), exact_arity=False), _take_input, check=_zero_pads),
    Rule("full-slice", Op("slice", Any("x"), exact_arity=False), _take_input, check=_full_slice),
]


@register_pass
@dataclass(frozen=True)
class EliminateIdentity(Pass):
    name = "eliminate-identity"

    def run(self, module: Module, ctx: PassContext) -> bool:
        return apply_rules(module, RULES).total > 0
