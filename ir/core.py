"""Core IR: Value, Node, Graph, Module and the weight store.

Invariants (checked by ``ir.verifier``):
- a node's inputs change only through ``Node.set_input``/``Node.inputs = ...``, which keep
  every value's use list right;
- ``Value.replace_all_uses_with`` is the one way to redirect uses, and refuses to move a
  graph output silently;
- nodes sit in a doubly linked list in topological order; iterating ``graph.nodes`` while
  inserting or removing nodes is safe (the next node is taken before yielding);
- value names are unique in a graph and come from its namespace.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from .errors import VerificationError
from .types import DType, TensorType

# ----------------------------------------------------------------------------- weights


class WeightStore:
    """Named weight arrays, loaded lazily. Entries are arrays or zero-arg loaders."""

    def __init__(self) -> None:
        self._entries: dict[str, np.ndarray | Callable[[], np.ndarray]] = {}

    def add(self, key: str, value: np.ndarray | Callable[[], np.ndarray]) -> str:
        self._entries[key] = value
        return key

    def unique_key(self, hint: str) -> str:
        key, i = hint, 0
        while key in self._entries:
            i += 1
            key = f"{hint}_{i}"
        return key

    def __getitem__(self, key: str) -> np.ndarray:
        v = self._entries[key]
        if callable(v):
            v = v()
            self._entries[key] = v
        return v

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def remove(self, key: str) -> None:
        del self._entries[key]


@dataclass(frozen=True, eq=False)
class Resource:
    """A reference from a ``const`` node to an entry of the module's weight store."""

    key: str
    store: WeightStore = field(repr=False)

    def get(self) -> np.ndarray:
        return self.store[self.key]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resource) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


AttrValue = Union[int, float, str, DType, tuple, np.ndarray, Resource]

# ----------------------------------------------------------------------------- names

_SIMPLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


class Namespace:
    """Hands out unique names: ``add``, ``add_1``, ``add_2`` ..."""

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._next: dict[str, int] = {}

    def claim(self, name: str) -> str:
        """Reserve exactly ``name``; raises if taken."""
        if name in self._used:
            raise VerificationError(f"duplicate value name '%{name}'")
        self._used.add(name)
        return name

    def fresh(self, hint: str) -> str:
        hint = hint or "v"
        if hint not in self._used:
            self._used.add(hint)
            return hint
        i = self._next.get(hint, 1)
        while f"{hint}_{i}" in self._used:
            i += 1
        self._next[hint] = i + 1
        name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def suggest(self, hint: str) -> str:
        """An unused name for ``hint`` without reserving it (adding the node reserves it)."""
        hint = hint or "v"
        if hint not in self._used:
            return hint
        i = self._next.get(hint, 1)
        while f"{hint}_{i}" in self._used:
            i += 1
        return f"{hint}_{i}"

    def release(self, name: str) -> None:
        self._used.discard(name)

    def __contains__(self, name: str) -> bool:
        return name in self._used


# ----------------------------------------------------------------------------- values


@dataclass(eq=False)
class Use:
    node: "Node"
    index: int


class Value:
    """An SSA value: a graph input, or output ``index`` of its ``producer`` node."""

    __slots__ = ("name", "type", "producer", "index", "_uses", "meta", "graph")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None, index: int = 0):
        self.name = name
        self.type = type
        self.producer = producer
        self.index = index
        self._uses: list[Use] = []
        self.meta: dict[str, Any] = {}
        self.graph: Graph | None = None

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"

    def uses(self) -> list[Use]:
        """A snapshot of the uses: safe to rewrite while iterating."""
        return list(self._uses)

    @property
    def num_uses(self) -> int:
        return len(self._uses)

    def users(self) -> list["Node"]:
        seen: dict[int, Node] = {}
        for u in self._uses:
            seen.setdefault(id(u.node), u.node)
        return list(seen.values())

    @property
    def is_graph_output(self) -> bool:
        return self.graph is not None and any(o is self for o in self.graph.outputs)

    @property
    def is_graph_input(self) -> bool:
        return self.producer is None

    @property
    def const_value(self) -> np.ndarray | None:
        """The value's array if it is produced by a ``const`` node, else None."""
        p = self.producer
        if p is None or p.op != "const":
            return None
        v = p.attrs["value"]
        return v.get() if isinstance(v, Resource) else v

    @property
    def is_const(self) -> bool:
        return self.producer is not None and self.producer.op == "const"

    def replace_all_uses_with(self, other: "Value", *, replace_graph_outputs: bool = False) -> None:
        """Point every use of this value at ``other``.

        A graph output is moved only when ``replace_graph_outputs`` is set: moving it
        silently would rename the graph's result."""
        if other is self:
            return
        outs = self.graph.outputs if self.graph is not None else []
        if not replace_graph_outputs and any(o is self for o in outs):  # refuse before changing anything
            raise VerificationError(
                f"replace_all_uses_with: %{self.name} is a graph output; "
                "pass replace_graph_outputs=True to move it"
            )
        for use in self.uses():
            use.node.set_input(use.index, other)
        for i, o in enumerate(outs):
            if o is self:
                outs[i] = other


# ----------------------------------------------------------------------------- nodes


class Node:
    """One operation. ``op`` is a key of the op registry."""

    def __init__(
        self,
        op: str,
        inputs: list[Value | None],
        output_types: list[TensorType],
        attrs: Mapping[str, AttrValue] | None = None,
        *,
        output_names: list[str] | None = None,
        body: "Graph | None" = None,
        loc: str | None = None,
    ):
        self.op = op
        self.attrs: dict[str, AttrValue] = dict(attrs or {})
        self.body = body
        self.loc = loc
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self._inputs: list[Value | None] = []
        names = output_names or [""] * len(output_types)
        self.outputs: list[Value] = [Value(n, t, self, i) for i, (n, t) in enumerate(zip(names, output_types))]
        for v in inputs:
            self._append_input(v)

    def __repr__(self) -> str:
        outs = ", ".join(f"%{o.name}" for o in self.outputs)
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in self._inputs)
        return f"<Node {outs} = {self.op}({ins})>"

    # inputs: one setter keeps use lists right
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @inputs.setter
    def inputs(self, values: list[Value | None]) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                _drop_use(v, self, i)
        self._inputs = []
        for v in values:
            self._append_input(v)

    def _append_input(self, v: Value | None) -> None:
        self._inputs.append(v)
        if v is not None:
            v._uses.append(Use(self, len(self._inputs) - 1))

    def set_input(self, index: int, v: Value | None) -> None:
        old = self._inputs[index]
        if old is v:
            return
        if old is not None:
            _drop_use(old, self, index)
        self._inputs[index] = v
        if v is not None:
            v._uses.append(Use(self, index))

    def input(self, index: int) -> Value | None:
        return self._inputs[index] if index < len(self._inputs) else None

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise VerificationError(f"{self.op} has {len(self.outputs)} outputs; use .outputs")
        return self.outputs[0]

    def detach_inputs(self) -> None:
        self.inputs = []

    @property
    def next(self) -> "Node | None":
        return self._next

    @property
    def prev(self) -> "Node | None":
        return self._prev

    def describe(self) -> str:
        """How errors name a node: its ONNX name when known, else its first output."""
        who = f"'{self.loc}'" if self.loc else (f"%{self.outputs[0].name}" if self.outputs else "?")
        return f"{self.op} node {who}"


def _drop_use(v: Value, node: Node, index: int) -> None:
    for k, u in enumerate(v._uses):
        if u.node is node and u.index == index:
            del v._uses[k]
            return
    raise VerificationError(f"use list of %{v.name} lost its use by {node!r} at input {index}")


# ----------------------------------------------------------------------------- graphs


class Graph:
    """A DAG of nodes in topological order, with named inputs and outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.names = Namespace()
        self._head: Node | None = None
        self._tail: Node | None = None
        self._count = 0

    # -- inputs / outputs
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self.names.claim(name), type)
        v.graph = self
        self.inputs.append(v)
        return v

    def set_outputs(self, values: list[Value]) -> None:
        self.outputs = list(values)

    # -- node list
    @property
    def nodes(self) -> Iterator[Node]:
        """The nodes in order. The loop body may remove the current node or any later one;
        a node inserted right after the current one is not visited."""
        n = self._head
        while n is not None:
            nxt = n._next
            yield n
            if nxt is not None and nxt.graph is not self and n.graph is self:  # the next node was removed
                nxt = n._next
            n = nxt

    def reversed_nodes(self) -> Iterator[Node]:
        n = self._tail
        while n is not None:
            prv = n._prev
            yield n
            n = prv

    def __len__(self) -> int:
        return self._count

    @property
    def first(self) -> Node | None:
        return self._head

    @property
    def last(self) -> Node | None:
        return self._tail

    def _adopt(self, node: Node) -> None:
        if node.graph is not None:
            raise VerificationError(f"{node!r} already belongs to a graph")
        node.graph = self
        for v in node.outputs:
            v.name = self.names.claim(v.name) if v.name else self.names.fresh(node.op)
            v.graph = self
        self._count += 1

    def append(self, node: Node) -> Node:
        self._adopt(node)
        node._prev, node._next = self._tail, None
        if self._tail is None:
            self._head = node
        else:
            self._tail._next = node
        self._tail = node
        return node

    def insert_before(self, anchor: Node, node: Node) -> Node:
        self._adopt(node)
        node._prev, node._next = anchor._prev, anchor
        if anchor._prev is None:
            self._head = node
        else:
            anchor._prev._next = node
        anchor._prev = node
        return node

    def insert_after(self, anchor: Node, node: Node) -> Node:
        if anchor._next is None:
            return self.append(node)
        return self.insert_before(anchor._next, node)

    def remove(self, node: Node, *, force: bool = False) -> None:
        """Unlink a node whose outputs have no uses (``force`` skips that check)."""
        if node.graph is not self:
            raise VerificationError(f"{node!r} is not in graph @{self.name}")
        if not force:
            for v in node.outputs:
                if v.num_uses or v.is_graph_output:
                    raise VerificationError(f"cannot remove {node!r}: %{v.name} is still used")
        node.detach_inputs()
        if node._prev is None:
            self._head = node._next
        else:
            node._prev._next = node._next
        if node._next is None:
            self._tail = node._prev
        else:
            node._next._prev = node._prev
        node._prev = node._next = None
        node.graph = None
        for v in node.outputs:
            self.names.release(v.name)
        self._count -= 1

    def reorder(self, order: list[Node]) -> bool:
        """Relink the graph's nodes in ``order`` (a permutation of them that keeps every input
        defined before its use). Returns whether the order changed."""
        current = list(self.nodes)
        if len(order) != len(current) or {id(n) for n in order} != {id(n) for n in current}:
            raise VerificationError("reorder: the new order is not a permutation of the graph's nodes")
        if all(a is b for a, b in zip(order, current)):
            return False
        defined = {id(v) for v in self.inputs}
        for n in order:
            for v in n.inputs:
                if v is not None and id(v) not in defined:
                    raise VerificationError(f"reorder: {n.describe()} would run before %{v.name} is defined")
            defined.update(id(o) for o in n.outputs)
        prev: Node | None = None
        for n in order:
            n._prev = prev
            if prev is None:
                self._head = n
            else:
                prev._next = n
            prev = n
        if prev is not None:
            prev._next = None
        self._tail = prev
        return True

    def rename(self, value: Value, name: str) -> None:
        """Give ``value`` a name that is free in this graph."""
        if value.name == name:
            return
        self.names.claim(name)
        self.names.release(value.name)
        value.name = name

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for n in self.nodes:
            yield from n.outputs

    def value_map(self) -> dict[str, Value]:
        return {v.name: v for v in self.values()}

    def eliminate_dead_code(self) -> bool:
        """Remove nodes whose outputs reach no graph output. Returns whether any went."""
        changed = False
        for n in self.reversed_nodes():
            if all(v.num_uses == 0 and not v.is_graph_output for v in n.outputs):
                self.remove(n)
                changed = True
        return changed


# ----------------------------------------------------------------------------- modules


@dataclass
class Module:
    """A compilation unit: the main graph, its weights, and where it came from."""

    graph: Graph
    weights: WeightStore = field(default_factory=WeightStore)
    opset: int = 0
    """The ONNX opset the model was imported from (0 when built directly)."""
    producer: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    memory_plan: Any = field(default=None, repr=False, compare=False)
    """The arena plan of ``plan-memory`` (an object with ``format()``), dropped when a later
    pass changes the module."""

    @property
    def name(self) -> str:
        return self.graph.name

    def const(self, array: np.ndarray, *, name: str = "", inline_limit: int = 16) -> Node:
        """A detached ``const`` node for ``array``; large arrays go to the weight store."""
        array = np.asarray(array)
        value: AttrValue
        if array.size > inline_limit:
            value = Resource(self.weights.add(self.weights.unique_key(name or "w"), array), self.weights)
        else:
            value = array
        return Node("const", [], [TensorType.of(array)], {"value": value}, output_names=[name] if name else None)

    def parameter_count(self) -> int:
        return sum(int(n.output.const_value.size) for n in self.graph.nodes if n.op == "const")

    def weight_bytes(self) -> int:
        return sum(int(n.output.const_value.nbytes) for n in self.graph.nodes if n.op == "const")


def clone_module(module: Module) -> Module:
    """A structural copy of ``module``, as ``parser.copy_module`` makes through the text (the
    weight arrays shared, the stores not), without printing and parsing: what a search that
    copies a graph per candidate needs."""
    store = WeightStore()

    def attr(a: AttrValue) -> AttrValue:
        if not isinstance(a, Resource):
            return a
        if a.key not in store:
            store.add(a.key, a.get())
        return Resource(a.key, store)

    def clone(g: Graph) -> Graph:
        new = Graph(g.name)
        env: dict[int, Value] = {}
        for v in g.inputs:
            env[id(v)] = nv = new.add_input(v.name, v.type)
            nv.meta = dict(v.meta)
        for n in g.nodes:
            copy = Node(n.op, [None if v is None else env[id(v)] for v in n.inputs], [o.type for o in n.outputs],
                        {k: attr(a) for k, a in n.attrs.items()}, output_names=[o.name for o in n.outputs],
                        body=clone(n.body) if n.body is not None else None, loc=n.loc)
            new.append(copy)
            for o, c in zip(n.outputs, copy.outputs):
                env[id(o)] = c
                c.meta = dict(o.meta)
        new.set_outputs([env[id(v)] for v in g.outputs])
        return new

    return Module(clone(module.graph), store, module.opset, module.producer, dict(module.metadata), module.target)


def is_simple_name(name: str) -> bool:
    return _SIMPLE_NAME.fullmatch(name) is not None
