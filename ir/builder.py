"""The builder: makes nodes through the op registry (types inferred, attributes checked)
and inserts them at an insertion point. Passes and tests build IR through it."""
from __future__ import annotations

from typing import Any

import numpy as np

from .core import Graph, Module, Node, Value
from .errors import ShapeError
from .opdef import get_op, infer_types
from .types import DType, TensorType


class Builder:
    """``b = Builder(module); y = b.relu(b.conv(x, w, pads=(1, 1, 1, 1)))``.

    New nodes go before ``insert_before`` when set, else at the end of the graph."""

    def __init__(self, module: Module, graph: Graph | None = None, *, insert_before: Node | None = None,
                 loc: str | None = None):
        self.module = module
        self.graph = graph or module.graph
        self.insert_before = insert_before
        self.loc = loc

    def insert(self, node: Node) -> Node:
        """Insert a node built by hand (e.g. one with a body) at the insertion point."""
        return self._insert(node)

    def _insert(self, node: Node) -> Node:
        if self.insert_before is not None:
            return self.graph.insert_before(self.insert_before, node)
        return self.graph.append(node)

    def op(self, name: str, *inputs: Value | None, n_outputs: int | None = None, name_hint: str = "",
           **attrs: Any) -> Node:
        """Create and insert a node of op ``name``; output types come from its ``infer``."""
        opdef = get_op(name)
        for k in attrs:
            if k not in opdef.attrs:
                raise ShapeError(f"op {name} has no attribute '{k}' (it takes: {', '.join(sorted(opdef.attrs))})")
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}
        count = n_outputs if n_outputs is not None else max(1, opdef.min_outputs())
        placeholder = [TensorType(DType.f32, ())] * count
        node = Node(name, list(inputs), placeholder, clean, loc=self.loc)
        for v, t in zip(node.outputs, infer_types(node)):
            v.type = t
        # unnamed outputs get fresh names from the graph's namespace when inserted
        for v in node.outputs:
            v.name = ""
        if name_hint:
            node.outputs[0].name = self.graph.names.suggest(name_hint)
        return self._insert(node)

    def const(self, array: np.ndarray | float | int, *, dtype: DType | None = None, name_hint: str = "c") -> Value:
        arr = np.asarray(array, dtype=dtype.np if dtype else None)
        node = self.module.const(arr, name=self.graph.names.suggest(name_hint))
        return self._insert(node).output

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        get_op(name)

        def make(*inputs: Value | None, **attrs: Any) -> Value:
            return self.op(name, *inputs, **attrs).output

        return make
