"""The reference interpreter: runs a module on numpy inputs through each op's ``ref``.

It is the oracle for passes. Each node dispatches to its OpDef's reference function; a
node with a ``body`` (a fused group) runs its body graph. Inputs are checked against the
graph's declared types (symbols bound consistently), and every result is checked against
its node's declared type, so a wrong shape rule or reference function is caught here."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .core import Graph, Module, Node
from .errors import EffcError, IndexOutOfRangeError, InputError, InterpreterError
from .opdef import get_op
from .types import TensorType, shape_matches


def run_module(module: Module, inputs: Mapping[str, np.ndarray], *, check_types: bool = True) -> dict[str, np.ndarray]:
    """Run the module's main graph; returns outputs keyed by graph output name."""
    results = run_graph(module.graph, [_take_input(module.graph, inputs, i) for i in range(len(module.graph.inputs))],
                        check_types=check_types)
    extra = set(inputs) - {v.name for v in module.graph.inputs}
    if extra:
        raise InputError(f"inputs {sorted(extra)} are not inputs of the model "
                               f"(it takes {[v.name for v in module.graph.inputs]})")
    return {v.name: r for v, r in zip(module.graph.outputs, results)}


def _take_input(g: Graph, inputs: Mapping[str, np.ndarray], i: int) -> np.ndarray:
    v = g.inputs[i]
    if v.name not in inputs:
        raise InputError(f"missing input '{v.name}' ({v.type}); inputs given: {sorted(inputs)}")
    return np.asarray(inputs[v.name])


def run_graph(g: Graph, args: list[np.ndarray], *, check_types: bool = True) -> list[np.ndarray]:
    env: dict[int, np.ndarray] = {}
    bindings: dict[str, int] = {}
    for v, a in zip(g.inputs, args):
        if a.dtype != v.type.dtype.np:
            raise InputError(f"input '{v.name}' has dtype {a.dtype}, the model wants {v.type.dtype} ({v.type})")
        if not shape_matches(v.type.shape, a.shape, bindings):
            raise InputError(f"input '{v.name}' has shape {list(a.shape)}, the model wants {v.type}")
        env[id(v)] = a
    for node in g.nodes:
        ins = [None if v is None else env[id(v)] for v in node.inputs]
        outs = run_node(node, ins)
        for v, r in zip(node.outputs, outs):
            if check_types:
                _check_result(node, v.type, r)
            env[id(v)] = r
    return [env[id(v)] for v in g.outputs]


def run_node(node: Node, ins: list[np.ndarray | None]) -> list[np.ndarray]:
    if node.body is not None:
        return run_graph(node.body, [x for x in ins if x is not None])
    op = get_op(node.op)
    try:
        with np.errstate(all="ignore"):
            outs = op.ref(ins, op.with_defaults(node.attrs), len(node.outputs))
    except IndexOutOfRangeError as e:
        raise IndexOutOfRangeError(node.describe(), e.index, e.axis_len) from None
    except EffcError:
        raise
    except Exception as e:
        raise InterpreterError(f"{node.describe()} failed in the reference interpreter: {type(e).__name__}: {e}") from e
    if len(outs) != len(node.outputs):
        raise InterpreterError(f"{node.describe()}: reference gave {len(outs)} results for {len(node.outputs)} outputs")
    return [np.asarray(o) for o in outs]


def _check_result(node: Node, t: TensorType, r: np.ndarray) -> None:
    if r.dtype != t.dtype.np or not shape_matches(t.shape, r.shape, {}):
        raise InterpreterError(f"{node.describe()}: reference result {r.dtype}{list(r.shape)} "
                               f"does not fit the declared type {t}")
