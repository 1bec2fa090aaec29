"""dce: removes nodes whose results reach no graph output, and unused weights."""
from __future__ import annotations

from dataclasses import dataclass

from effc.ir.core import Module, Resource

from .base import Pass, PassContext, register_pass


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    name = "dce"

    def run(self, module: Module, ctx: PassContext) -> bool:
        changed = module.graph.eliminate_dead_code()
        used = {n.attrs["value"].key for n in module.graph.nodes
                if n.op == "const" and isinstance(n.attrs["value"], Resource)}
        for key in module.weights.keys():
            if key not in used:
                module.weights.remove(key)
        return changed
