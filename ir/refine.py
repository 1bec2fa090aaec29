"""Type refinement: after a pass makes values constant, shapes downstream may become known.
``refine_types`` re-runs every op's ``infer`` in order and fills in dims that were unknown."""
from __future__ import annotations

from .core import Graph
from .errors import EffcError
from .opdef import infer_types
from .types import UNKNOWN_DIM, TensorType


def refine_types(g: Graph) -> bool:
    """Replace unknown dims (``?``) with what inference now knows. Returns whether any changed."""
    changed = False
    for node in g.nodes:
        if node.op == "const":
            continue
        try:
            inferred = infer_types(node)
        except EffcError:
            continue  # the verifier reports it
        for v, t in zip(node.outputs, inferred):
            if t.dtype != v.type.dtype or t.rank != v.type.rank:
                continue
            dims = tuple(i if r == UNKNOWN_DIM and i != UNKNOWN_DIM else r for r, i in zip(v.type.shape, t.shape))
            if dims != v.type.shape:
                v.type = TensorType(v.type.dtype, dims, v.type.quant)
                changed = True
    return changed
