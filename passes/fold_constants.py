"""fold-constants: evaluates, with the ops' numpy reference, every node whose inputs are
all constants, and every ``shape``/``size`` of a statically shaped value. Whole shape
subgraphs (Shape → Gather → Unsqueeze → Concat → Reshape) collapse this way, one node at
a time in order. Results larger than ``max-elements`` elements or ``max-bytes`` bytes stay
unfolded (the limits bound what folding allocates: a ``ConstantOfShape`` of 10^12 elements
is left to the size check before lowering, which says what is too large), and so does a
node whose evaluation runs out of memory anyway. Afterwards, unknown dims that the folded
values now determine are filled in."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from effc.ir.core import Module, Node
from effc.ir.errors import InterpreterError
from effc.ir.interpreter import run_node
from effc.ir.opdef import REGISTRY
from effc.ir.refine import refine_types

from .base import Pass, PassContext, register_pass

NEVER_FOLD = {"const"}


def _static_shape_value(n: Node) -> np.ndarray | None:
    """shape(x)/size(x) where x has a static shape: known without x's data."""
    x = n.input(0)
    if x is None or not x.type.is_static:
        return None
    dims = np.array(x.type.shape, dtype=np.int64)
    if n.op == "size":
        return np.array(int(np.prod(dims)), dtype=np.int64)
    start, end = int(n.attrs.get("start", 0)), n.attrs.get("end")
    rank = len(dims)
    start = max(0, min(rank, start + rank if start < 0 else start))
    stop = rank if end is None else int(end)
    stop = max(0, min(rank, stop + rank if stop < 0 else stop))
    return dims[start:stop]


@register_pass
@dataclass(frozen=True)
class FoldConstants(Pass):
    name = "fold-constants"
    max_elements: int = 1 << 26
    max_bytes: int = 1 << 28

    def __post_init__(self) -> None:
        if self.max_elements < 0:
            raise ValueError(f"max-elements must not be negative, got {self.max_elements}")
        if self.max_bytes < 0:
            raise ValueError(f"max-bytes must not be negative, got {self.max_bytes}")

    def run(self, module: Module, ctx: PassContext) -> bool:
        g = module.graph
        changed = False
        for n in g.nodes:
            if n.op in NEVER_FOLD or n.body is not None:
                continue
            results = self._evaluate(n)
            if results is None:
                continue
            folded = []
            for v, arr in zip(n.outputs, results):
                if v.num_uses == 0 and not v.is_graph_output:
                    continue
                c = module.const(np.asarray(arr).astype(v.type.dtype.np, copy=False), name=g.names.suggest(v.name))
                g.insert_before(n, c)
                v.replace_all_uses_with(c.output, replace_graph_outputs=True)
                folded.append((c.output, v.name))
            g.remove(n)
            for value, name in folded:  # the constant takes over the folded value's name
                g.rename(value, name)
            changed = True
        if changed:
            refine_types(g)  # shapes that depended on the folded values may now be known
        return changed

    def _evaluate(self, n: Node) -> list[np.ndarray] | None:
        if n.op in ("shape", "size"):
            v = _static_shape_value(n)
            if v is not None:
                return [v]
        if not all(v is None or v.is_const for v in n.inputs) or not n.inputs:
            return None
        op = REGISTRY.get(n.op)
        if op is None or "no_fold" in op.traits:
            return None
        for v in n.outputs:
            count, nbytes = v.type.numel(), v.type.nbytes()
            if count is None or count > self.max_elements or nbytes > self.max_bytes:
                return None
        try:
            return run_node(n, [None if v is None else v.const_value for v in n.inputs])
        except MemoryError:
            return None
        except InterpreterError as e:
            if isinstance(e.__cause__, MemoryError):  # a temporary larger than the result: leave it to run time
                return None
            raise
