"""Direct tests of ir/verifier.py: a small valid module, broken one invariant at a time,
must give exactly the problem that invariant names."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from effc.ir.builder import Builder
from effc.ir.core import Graph, Module, Node, Use, Value
from effc.ir.errors import VerificationError
from effc.ir.parser import parse_module
from effc.ir.types import DType, TensorType
from effc.ir.verifier import types_agree, verify_graph, verify_module

T = TensorType(DType.f32, (2, 3))
HEAD = "graph @g is malformed:\n  "


class Small:
    """x[2,3], q[4,5] -> w = const; a = add(x, w); r = relu(a); return r"""

    def __init__(self) -> None:
        self.m = Module(Graph("g"))
        g = self.g = self.m.graph
        self.x = g.add_input("x", T)
        self.q = g.add_input("q", TensorType(DType.f32, (4, 5)))
        b = Builder(self.m)
        self.w = b.const(np.ones((2, 3), np.float32), name_hint="w")
        self.a = b.add(self.x, self.w)
        self.r = b.relu(self.a)
        g.set_outputs([self.r])


def test_the_small_module_is_valid() -> None:
    s = Small()
    verify_module(s.m)
    assert [n.output.name for n in s.g.nodes] == ["w", "add", "relu"]


def _insert_relu_before_add(s: Small) -> None:
    """A legal API call that breaks topological order: relu_1 = relu(add) placed before add."""
    s.g.insert_before(s.a.producer, Node("relu", [s.a], [T]))


def _foreign_input(s: Small) -> None:
    other = Graph("h").add_input("z", T)
    s.a.producer.set_input(0, other)


BREAKS: dict[str, tuple[Callable[[Small], object], str]] = {
    "input-has-producer": (lambda s: setattr(s.x, "producer", s.a.producer),
                           "graph input %x has a producer"),
    "duplicate-node-name": (lambda s: setattr(s.r, "name", "add"),
                            "relu node %add: name %add is used twice"),
    "node-name-clashes-with-input": (lambda s: setattr(s.a, "name", "x"),
                                     "add node %x: name %x is used twice"),
    "node-of-another-graph": (lambda s: setattr(s.r.producer, "graph", None),
                              "relu node %relu does not belong to graph @g"),
    "broken-links": (lambda s: setattr(s.r.producer, "_prev", None),
                     "relu node %relu: broken node links"),
    "output-does-not-point-back": (lambda s: setattr(s.r, "index", 1),
                                   "relu node %relu: output %relu does not point back at its node"),
    "output-of-another-node": (lambda s: setattr(s.r, "producer", s.a.producer),
                               "relu node %relu: output %relu does not point back at its node"),
    "node-count": (lambda s: setattr(s.g, "_count", 4),
                   "graph @g counts 4 nodes but links 3"),
    "undefined-graph-output": (lambda s: s.g.set_outputs([Value("z", T)]),
                               "graph output %z is not defined in the graph"),
    "stale-use-entry": (lambda s: s.x._uses.append(Use(s.r.producer, 0)),
                        "use list of %x names relu node %relu input 0, which is not it"),
    "missing-use-entry": (lambda s: s.x._uses.clear(),
                          "add node %add: %x does not list this node as a user"),
    "unknown-op": (lambda s: setattr(s.a.producer, "op", "frob"),
                   "frob node %add: unknown op 'frob'"),
    "use-before-definition": (_insert_relu_before_add,
                              "relu node %relu_1: input %add is used before it is defined (or not in this graph)"),
    "input-from-another-graph": (_foreign_input,
                                 "add node %add: input %z is used before it is defined (or not in this graph)"),
    "attribute-not-in-schema": (lambda s: s.r.producer.attrs.update(alpha=0.5),
                                "relu node %relu: attribute 'alpha' is not in the schema of relu"),
    "recorded-shape-disagrees": (lambda s: setattr(s.r, "type", TensorType(DType.f32, (3, 2))),
                                 "relu node %relu: %relu is recorded as f32[3,2] but infers as f32[2,3]"),
    "recorded-dtype-disagrees": (lambda s: setattr(s.r, "type", TensorType(DType.f16, (2, 3))),
                                 "relu node %relu: %relu is recorded as f16[2,3] but infers as f32[2,3]"),
    "recorded-rank-disagrees": (lambda s: setattr(s.r, "type", TensorType(DType.f32, (2, 3, 1))),
                                "relu node %relu: %relu is recorded as f32[2,3,1] but infers as f32[2,3]"),
    "output-count-disagrees": (lambda s: s.g.append(Node("relu", [s.x], [T, T])),
                               "relu node %relu_1: infers 1 outputs, has 2"),
    "shape-inference-fails": (lambda s: s.g.append(Node("split", [s.x], [T])),
                              "split node %split: shape inference failed: split node %split: needs a 'split' "
                              "input or the num_outputs attribute"),
}


@pytest.mark.parametrize("case", list(BREAKS), ids=list(BREAKS))
def test_each_broken_invariant_is_named(case: str) -> None:
    s = Small()
    brk, problem = BREAKS[case]
    brk(s)
    with pytest.raises(VerificationError) as e:
        verify_module(s.m)
    assert str(e.value) == HEAD + problem


def test_missing_required_attribute() -> None:
    s = Small()
    s.g.append(Node("concat", [s.x, s.x], [TensorType(DType.f32, (4, 3))]))
    with pytest.raises(VerificationError) as e:
        verify_module(s.m)
    # the missing attribute is named first; inference then fails on it too
    assert str(e.value) == (HEAD + "concat node %concat: required attribute 'axis' is missing\n  "
                            "concat node %concat: shape inference failed: concat node %concat: "
                            "cannot infer output type: 'axis'")


def test_inputs_that_do_not_broadcast() -> None:
    s = Small()
    s.a.producer.set_input(1, s.q)
    s.w.producer.graph.remove(s.w.producer)
    with pytest.raises(VerificationError) as e:
        verify_module(s.m)
    assert str(e.value) == (HEAD + "add node %add: shape inference failed: add node %add: "
                            "shapes [2, 3] and [4, 5] do not broadcast")


def test_a_node_is_named_by_its_onnx_name_when_it_has_one() -> None:
    s = Small()
    s.r.producer.loc = "/block/Relu"
    s.r.producer.attrs["alpha"] = 0.5
    with pytest.raises(VerificationError) as e:
        verify_module(s.m)
    assert str(e.value) == HEAD + "relu node '/block/Relu': attribute 'alpha' is not in the schema of relu"


FUSED = """module {opset=17}

graph @g(%x: f32[1,2,2,2]) -> (f32[1,2,2,2]) {
  %w1 = const() {value=dense<f32[2,2,1,1] [0.5, -1.0, 2.0, 0.25]>} : f32[2,2,1,1]
  %r1 = fused(%x, %w1) {kind="conv+relu"} : f32[1,2,2,2] body(%x: f32[1,2,2,2], %w1: f32[2,2,1,1]) {
    %c1 = conv(%x, %w1) {kernel_shape=[1, 1]} : f32[1,2,2,2]
    %r1 = relu(%c1) : f32[1,2,2,2]
    return %r1
  }
  return %r1
}
"""


def test_a_broken_body_is_reported_through_its_fused_node() -> None:
    m = parse_module(FUSED)
    verify_module(m)
    fused = next(n for n in m.graph.nodes if n.op == "fused")
    relu = next(n for n in fused.body.nodes if n.op == "relu")
    relu.attrs["alpha"] = 0.5
    with pytest.raises(VerificationError) as e:
        verify_module(m)
    assert str(e.value) == (HEAD + "fused node %r1 body: graph @body is malformed:\n  "
                            "relu node %r1: attribute 'alpha' is not in the schema of relu")


def test_every_problem_is_listed_up_to_twenty() -> None:
    s = Small()
    for _ in range(25):
        s.g.append(Node("relu", [s.x], [T], {"alpha": 0.5}))
    with pytest.raises(VerificationError) as e:
        verify_graph(s.g)
    lines = str(e.value).split("\n")
    assert lines[0] == "graph @g is malformed:"
    assert lines[1:] == [f"  relu node %relu_{k}: attribute 'alpha' is not in the schema of relu"
                         for k in range(1, 21)]


def test_recorded_types_may_know_more_than_inference() -> None:
    f32 = DType.f32
    assert types_agree(TensorType(f32, ("N", 3)), TensorType(f32, ("?", 3))) is True
    assert types_agree(TensorType(f32, (2, 3)), TensorType(f32, ("?", 3))) is True
    assert types_agree(TensorType(f32, ("?", 3)), TensorType(f32, (2, 3))) is False
    assert types_agree(TensorType(f32, ("N", 3)), TensorType(f32, ("M", 3))) is False
    assert types_agree(TensorType(f32, (2, 3)), TensorType(DType.i64, (2, 3))) is False
    assert types_agree(TensorType(f32, (2, 3)), TensorType(f32, (2, 3, 1))) is False
