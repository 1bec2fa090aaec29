"""The IR verifier: use lists, topological order, unique names, attribute schemas, and
agreement between every recorded type and what the op's ``infer`` rule computes."""
from __future__ import annotations

from .core import Graph, Module, Node, Value
from .errors import EffcError, VerificationError
from .opdef import REGISTRY, infer_types
from .types import UNKNOWN_DIM, TensorType


def verify_module(module: Module) -> None:
    verify_graph(module.graph)


def verify_graph(g: Graph) -> None:
    problems: list[str] = []
    seen: set[int] = set()
    names: dict[str, Value] = {}

    def define(v: Value, where: str) -> None:
        if v.name in names and names[v.name] is not v:
            problems.append(f"{where}: name %{v.name} is used twice")
        names[v.name] = v
        seen.add(id(v))

    for v in g.inputs:
        if v.producer is not None:
            problems.append(f"graph input %{v.name} has a producer")
        define(v, "graph input")
    count = 0
    prev = None
    for node in g.nodes:
        count += 1
        if node.graph is not g:
            problems.append(f"{node.describe()} does not belong to graph @{g.name}")
        if node.prev is not prev:
            problems.append(f"{node.describe()}: broken node links")
        prev = node
        _check_node(node, seen, problems)
        for i, v in enumerate(node.outputs):
            if v.producer is not node or v.index != i:
                problems.append(f"{node.describe()}: output %{v.name} does not point back at its node")
            define(v, node.describe())
    if count != len(g):
        problems.append(f"graph @{g.name} counts {len(g)} nodes but links {count}")
    for v in g.outputs:
        if id(v) not in seen:
            problems.append(f"graph output %{v.name} is not defined in the graph")
    for v in list(g.inputs) + [o for n in g.nodes for o in n.outputs]:
        for u in v.uses():
            if u.node.input(u.index) is not v:
                problems.append(f"use list of %{v.name} names {u.node.describe()} input {u.index}, which is not it")
    if problems:
        raise VerificationError(f"graph @{g.name} is malformed:\n  " + "\n  ".join(problems[:20]))


def _check_node(node: Node, seen: set[int], problems: list[str]) -> None:
    op = REGISTRY.get(node.op)
    if op is None:
        problems.append(f"{node.describe()}: unknown op '{node.op}'")
        return
    for i, v in enumerate(node.inputs):
        if v is None:
            continue
        if id(v) not in seen:
            problems.append(f"{node.describe()}: input %{v.name} is used before it is defined (or not in this graph)")
        if not any(u.node is node and u.index == i for u in v.uses()):
            problems.append(f"{node.describe()}: %{v.name} does not list this node as a user")
    for k in node.attrs:
        if k not in op.attrs:
            problems.append(f"{node.describe()}: attribute '{k}' is not in the schema of {node.op}")
    for k, spec in op.attrs.items():
        if spec.required and k not in node.attrs:
            problems.append(f"{node.describe()}: required attribute '{k}' is missing")
    if node.body is not None:
        try:
            verify_graph(node.body)
        except VerificationError as e:
            problems.append(f"{node.describe()} body: {e}")
    try:
        inferred = infer_types(node)
    except EffcError as e:
        problems.append(f"{node.describe()}: shape inference failed: {e}")
        return
    if len(inferred) != len(node.outputs):
        problems.append(f"{node.describe()}: infers {len(inferred)} outputs, has {len(node.outputs)}")
        return
    for v, t in zip(node.outputs, inferred):
        if not types_agree(v.type, t):
            problems.append(f"{node.describe()}: %{v.name} is recorded as {v.type} but infers as {t}")


def types_agree(recorded: TensorType, inferred: TensorType) -> bool:
    """Same dtype and rank; each dim equal, or the inferred one unknown (the recorded type
    may know more, e.g. a symbol the model declared)."""
    if recorded.dtype != inferred.dtype or recorded.rank != inferred.rank:
        return False
    return all(r == i or i == UNKNOWN_DIM for r, i in zip(recorded.shape, inferred.shape))
