"""Type refinement: after a pass makes values constant, shapes downstream may become known.
``refine_types`` re-runs every op's ``infer`` in order and fills in dims that were unknown.
``symbol_sizes`` reads what given input shapes bind each symbolic dim to, and refuses a
symbol bound to two sizes. ``bind_input_shapes`` (``--input-shape``) and ``bind_symbols``
(the memory planner's batch) give the inputs static shapes and re-infer every type: the one
place effc binds shapes."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .core import Graph, Module, Value
from .errors import EffcError, InputError, ShapeError
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


def bind_input_shapes(module: Module, shapes: Mapping[str, Sequence[int]]) -> None:
    """Give graph inputs concrete shapes and re-infer every type downstream (in place).

    Symbols (``N``) and unknown dims (``?``) in the named inputs take the given sizes, and
    the inputs not named take the sizes of the symbols they share; dims the model fixes must
    match. Afterwards run ``fold-constants`` (any -O pipeline does) so shape computations
    on now-static values collapse into constants."""
    g = module.graph
    by_name = {v.name: v for v in g.inputs}
    unknown = sorted(set(shapes) - set(by_name))
    if unknown:
        raise InputError(f"--input-shape names {unknown}, which are not inputs of @{g.name} "
                         f"(it takes {', '.join(f'{v.name}: {v.type}' for v in g.inputs)})")
    given = {name: _given_dims(by_name[name], dims) for name, dims in shapes.items()}
    sizes = symbol_sizes(g.inputs, given)  # InputError: one symbol, two sizes
    sub = _substitute(sizes)
    for v in g.inputs:
        v.type = v.type.with_shape(given.get(v.name, sub(v.type.shape)))
    try:
        _reinfer(g, sub)
    except ShapeError as e:  # the model cannot take these shapes: the user's shapes, not effc's bug
        given_text = " ".join(f"{n}={','.join(map(str, d))}" for n, d in given.items())
        raise InputError(f"--input-shape {given_text}: @{g.name} cannot take these shapes: {e}") from None


def _given_dims(v: Value, dims: Sequence[int]) -> tuple[int, ...]:
    """``dims`` for input ``v`` as ints, checked against its rank and the dims it fixes."""
    try:
        out = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise InputError(f"--input-shape {v.name}={dims!r}: dims must be whole numbers (the input is {v.type})") from None
    if len(out) != v.type.rank or any(d < 0 for d in out):
        raise InputError(f"--input-shape {v.name}={','.join(map(str, out))}: the input is {v.type} "
                         f"(rank {v.type.rank})")
    for want, got in zip(v.type.shape, out):
        if isinstance(want, int) and want != got:
            raise InputError(f"--input-shape {v.name}={','.join(map(str, out))}: the model fixes {v.type}")
    return out


def bind_symbols(module: Module, bindings: Mapping[str, int]) -> None:
    """Replace symbolic dims of the graph inputs by ints and re-infer every node's types."""
    sub = _substitute(bindings)
    for v in module.graph.inputs:
        v.type = v.type.with_shape(sub(v.type.shape))
    _reinfer(module.graph, sub)


def _substitute(bindings: Mapping[str, int]):
    def sub(shape: tuple) -> tuple:
        return tuple(bindings.get(d, d) if isinstance(d, str) else d for d in shape)
    return sub


def reinfer_types(module: Module) -> None:
    """Every type inferred again from the inputs (a pass that changed weight shapes, such
    as ``prune``)."""
    _reinfer(module.graph, lambda shape: shape)


def _reinfer(g: Graph, sub) -> None:
    """Every node's output types inferred again, in order (fused bodies too); a dim that
    inference leaves unknown keeps its recorded size, with bound symbols substituted."""
    for n in g.nodes:
        if n.op == "const":
            continue
        if n.body is not None:
            for inner, outer in zip(n.body.inputs, n.inputs):
                if outer is not None:
                    inner.type = outer.type
            _reinfer(n.body, sub)
        for v, t in zip(n.outputs, infer_types(n)):
            dims = tuple(r if i == UNKNOWN_DIM else i for r, i in zip(sub(v.type.shape), t.shape))
            v.type = TensorType(t.dtype, dims, v.type.quant)
