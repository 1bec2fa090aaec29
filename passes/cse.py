"""cse: common-subexpression elimination. Two nodes with the same op, the same inputs and
the same attributes compute the same thing; the later one's uses move to the earlier.
Constants merge when their arrays are equal (small ones by value, weights by key)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from effc.ir.core import Module, Node, Resource

from .base import Pass, PassContext, register_pass


def _attr_key(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, Resource):
        return ("resource", v.key)
    if isinstance(v, float) and v != v:
        return ("nan",)
    return v


def node_key(n: Node) -> tuple | None:
    if n.body is not None:
        return None
    attrs = tuple(sorted((k, _attr_key(v)) for k, v in n.attrs.items()))
    return (n.op, tuple(id(v) if v is not None else None for v in n.inputs), attrs, len(n.outputs))


@register_pass
@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    name = "cse"

    def run(self, module: Module, ctx: PassContext) -> bool:
        g = module.graph
        seen: dict[tuple, Node] = {}
        changed = False
        for n in g.nodes:
            key = node_key(n)
            if key is None:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = n
                continue
            if any(o.is_graph_output for o in n.outputs):
                continue
            for old, new in zip(n.outputs, first.outputs):
                old.replace_all_uses_with(new)
            g.remove(n)
            changed = True
        return changed
