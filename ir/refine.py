"""Type refinement: after a pass makes values constant, shapes downstream may become known.
``refine_types`` re-runs every op's ``infer`` in order and fills in dims that were unknown.
``symbol_sizes`` reads what given input shapes bind each symbolic dim to, and refuses a
symbol bound to two sizes."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .core import Graph, Value
from .errors import EffcError, InputError
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


def symbol_sizes(inputs: Sequence[Value], shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """The size each symbolic dim (``N``) of ``inputs`` takes from ``shapes`` (input name ->
    dims, as ``--input-shape`` gives them). A symbol names one size wherever it appears, so
    an InputError names the symbol and both sizes when two given dims of it differ (x=1,4
    and y=2,4 for x: [N,4], y: [N,4]); TVM would otherwise build for sizes the model says
    cannot occur together."""
    sizes: dict[str, tuple[int, str]] = {}
    for v in inputs:
        dims = shapes.get(v.name)
        if dims is None or len(dims) != v.type.rank:
            continue  # not given, or the wrong rank: the caller reports that
        for axis, (sym, size) in enumerate(zip(v.type.shape, dims)):
            if not isinstance(sym, str) or sym == UNKNOWN_DIM:
                continue
            where = f"dim {axis} of input '{v.name}' (given {','.join(str(int(d)) for d in dims)})"
            if sym in sizes and sizes[sym][0] != int(size):
                first, place = sizes[sym]
                raise InputError(f"symbol '{sym}' is bound to two sizes: {first} by {place} and {int(size)} by "
                                 f"{where}; every dim named {sym} must have the same size: give the same {sym} "
                                 "in each --input-shape (or input_shapes entry)")
            sizes.setdefault(sym, (int(size), where))
    return {sym: size for sym, (size, _) in sizes.items()}
