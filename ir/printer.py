"""The IR's text form, printing side. ``ir/parser.py`` reads back exactly what this writes.

Layout (see ``ir/grammar.lark``)::

    module {opset=17, producer="pytorch 2.13"}

    graph @digits(%x: f32[N,1,8,8]) -> (f32[N,10]) {
      %w1 = const() {value=resource<"conv1.weight">} : f32[16,1,3,3]
      %c1 = conv(%x, %w1, _) {pads=[1, 1, 1, 1]} : f32[N,16,8,8] loc("/conv1/Conv")
      return %c1
    }

Attributes print sorted, in the kind the op's schema gives them; floats print so they
parse back to the same bits. Weights referenced by ``resource<"key">`` go to a ``.npz``
sidecar written by ``save_module``.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .core import AttrValue, Graph, Module, Node, Resource
from .errors import VerificationError
from .lexical import format_float, format_int, format_key, format_list, format_name, quote
from .opdef import REGISTRY
from .sidecar import write_sidecar
from .types import DType, TensorType, format_type

MODULE_KEYS = ("opset", "producer", "target")
"""Header keys that are Module fields; metadata keys spelled the same print quoted."""

INDENT = "  "

# ----------------------------------------------------------------------------- attributes


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise TypeError(f"expected a string, got {x!r}")
    return quote(x)


def _dtype(x: Any) -> str:
    if not isinstance(x, DType):
        raise TypeError(f"expected a DType, got {x!r}")
    return x.value


def _shortest_bf16(x: float) -> str:
    """The shortest decimal that parses back (via float64) to the same bfloat16."""
    bf16 = DType.bf16.np
    target = np.array(x, dtype=np.float64).astype(bf16)
    for digits in range(1, 10):
        text = repr(float(f"{x:.{digits}g}"))
        if np.array(float(text), dtype=np.float64).astype(bf16).tobytes() == target.tobytes():
            return text
    return repr(x)  # exact: every bfloat16 is a float64


def format_elements(array: np.ndarray, dtype: DType) -> list[str]:
    """Each element of ``array`` as the text a ``dense<...>`` literal holds."""
    flat = array.ravel()
    if dtype is DType.bool:
        return ["true" if b else "false" for b in flat.tolist()]
    if dtype.is_int:
        return [str(v) for v in flat.tolist()]
    if dtype is DType.bf16:
        return [_shortest_bf16(v) for v in flat.astype(np.float64).tolist()]
    # numpy's str of a float scalar is the shortest text that round-trips in its width.
    return ["nan" if np.isnan(v) else str(v) for v in flat]


def format_dense(array: np.ndarray) -> str:
    """``dense<f32[2,2] [1.0, 2.0, 3.0, 4.0]>``."""
    array = np.asarray(array)
    dtype = DType.from_numpy(array.dtype)
    head = format_type(TensorType(dtype, tuple(int(d) for d in array.shape)))
    return f"dense<{head} [{', '.join(format_elements(array, dtype))}]>"


def _tensor(x: Any) -> str:
    if isinstance(x, Resource):
        return f"resource<{quote(x.key)}>"
    if isinstance(x, (np.ndarray, np.generic)):
        return format_dense(np.asarray(x))
    raise TypeError(f"expected an array or a resource, got {type(x).__name__}")


_FORMATTERS = {
    "int": format_int,
    "float": format_float,
    "str": _str,
    "ints": lambda xs: format_list(xs, format_int),
    "floats": lambda xs: format_list(xs, format_float),
    "strs": lambda xs: format_list(xs, _str),
    "dtype": _dtype,
    "tensor": _tensor,
}


def attr_kind_of(value: AttrValue) -> str:
    """The attribute kind a value has by its Python type (for attrs outside a schema)."""
    if isinstance(value, (bool, int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, DType):
        return "dtype"
    if isinstance(value, (np.ndarray, Resource)):
        return "tensor"
    if isinstance(value, (tuple, list)):
        if all(isinstance(x, (int, np.integer)) for x in value):
            return "ints"
        if all(isinstance(x, str) for x in value):
            return "strs"
        return "floats"
    raise TypeError(f"attribute value of type {type(value).__name__} has no text form")


def format_attr(value: AttrValue, kind: str | None = None) -> str:
    """One attribute value in the given schema kind (or the kind its Python type implies)."""
    return _FORMATTERS[kind or attr_kind_of(value)](value)


def attr_kind(op: str, name: str) -> str | None:
    """The schema kind of ``op``'s attribute ``name``; None for unknown ops and extra attrs."""
    opdef = REGISTRY.get(op)
    spec = opdef.attrs.get(name) if opdef is not None else None
    return spec.kind if spec is not None else None


def _format_attrs(node: Node) -> str:
    parts = []
    for name in sorted(node.attrs):
        try:
            text = format_attr(node.attrs[name], attr_kind(node.op, name))
        except (TypeError, ValueError) as e:
            raise VerificationError(f"{node.describe()}: attribute '{name}' cannot be printed: {e}") from None
        parts.append(f"{format_key(name)}={text}")
    return "{" + ", ".join(parts) + "}"


# ----------------------------------------------------------------------------- graphs


def _params(g: Graph) -> str:
    return ", ".join(f"{format_name('%', v.name)}: {format_type(v.type)}" for v in g.inputs)


def _return(g: Graph) -> str:
    names = ", ".join(format_name("%", v.name) for v in g.outputs)
    return f"return {names}" if names else "return"


def _node_head(node: Node) -> str:
    outs = ", ".join(format_name("%", v.name) for v in node.outputs) or "()"
    args = ", ".join("_" if v is None else format_name("%", v.name) for v in node.inputs)
    text = f"{outs} = {node.op}({args})"
    if node.attrs:
        text += " " + _format_attrs(node)
    if node.outputs:
        text += " : " + ", ".join(format_type(v.type) for v in node.outputs)
    if node.loc is not None:
        text += f" loc({quote(node.loc)})"
    return text


def _body_lines(g: Graph, level: int) -> Iterator[str]:
    """The nodes and the ``return`` of a graph, indented ``level`` steps."""
    pad = INDENT * level
    for node in g.nodes:
        if node.body is None:
            yield pad + _node_head(node)
            continue
        yield f"{pad}{_node_head(node)} body({_params(node.body)}) {{"
        yield from _body_lines(node.body, level + 1)
        yield pad + "}"
    yield pad + _return(g)


def print_graph(g: Graph, indent: int = 0) -> str:
    """A graph as ``graph @name(...) -> (...) { ... }`` (no trailing newline)."""
    pad = INDENT * indent
    outs = ", ".join(format_type(v.type) for v in g.outputs)
    lines = [f"{pad}graph {format_name('@', g.name)}({_params(g)}) -> ({outs}) {{"]
    lines.extend(_body_lines(g, indent + 1))
    lines.append(pad + "}")
    return "\n".join(lines)


def _header(m: Module) -> str:
    entries: list[tuple[tuple[str, int], str]] = []
    if m.opset:
        entries.append((("opset", 0), f"opset={int(m.opset)}"))
    if m.producer:
        entries.append((("producer", 0), f"producer={quote(m.producer)}"))
    if m.target is not None:
        entries.append((("target", 0), f"target={quote(m.target)}"))
    for key, value in m.metadata.items():
        shown = quote(key) if key in MODULE_KEYS else format_key(key)
        entries.append(((key, 1), f"{shown}={quote(str(value))}"))
    return "module {" + ", ".join(text for _, text in sorted(entries)) + "}"


def print_module(m: Module) -> str:
    """The whole module: header line, blank line, main graph, final newline; then the memory
    plan as ``//`` comment lines when the module has one (comments parse as nothing)."""
    text = f"{_header(m)}\n\n{print_graph(m.graph)}\n"
    if m.memory_plan is not None:
        text += "\n" + m.memory_plan.format()
    return text


# ----------------------------------------------------------------------------- files


def _graphs(g: Graph) -> Iterator[Graph]:
    yield g
    for node in g.nodes:
        if node.body is not None:
            yield from _graphs(node.body)


def referenced_resources(m: Module) -> dict[str, Resource]:
    """Every ``Resource`` an attribute of the module refers to, by key, in print order."""
    found: dict[str, Resource] = {}
    for g in _graphs(m.graph):
        for node in g.nodes:
            for value in node.attrs.values():
                if isinstance(value, Resource):
                    found.setdefault(value.key, value)
    return found


def save_module(m: Module, path: str | Path) -> None:
    """Write ``path`` (the text form) and, when weights are referenced, ``path.npz``."""
    path = Path(path)
    sidecar = path.with_suffix(".npz")
    if sidecar == path:
        raise ValueError(f"{path}: the IR text cannot use the weights file's suffix .npz")
    resources = referenced_resources(m)
    arrays = {}
    for key, res in resources.items():
        if key not in res.store:
            raise VerificationError(f"resource '{key}' is not in the module's weight store")
        arrays[key] = np.asarray(res.get())
    path.write_text(print_module(m), encoding="utf-8")
    if arrays:
        write_sidecar(sidecar, arrays)


__all__ = [
    "format_type", "format_attr", "format_dense", "format_name", "print_graph", "print_module",
    "save_module", "referenced_resources", "attr_kind",
]
