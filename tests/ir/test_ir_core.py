"""Direct tests of the IR core (ir/core.py): use lists through the input setter and
``Value.replace_all_uses_with``, graph outputs, editing while iterating, the name namespace
and ``Value.uses()`` snapshots."""
from __future__ import annotations

import numpy as np
import pytest

from effc.ir.builder import Builder
from effc.ir.core import Graph, Module, Namespace, Node, Value
from effc.ir.errors import VerificationError
from effc.ir.types import DType, TensorType
from effc.ir.verifier import verify_module

T = TensorType(DType.f32, (2, 3))


def _uses(v: Value) -> list[tuple[str, int]]:
    """The use list as (first output name of the user, input index), in list order."""
    return [(u.node.outputs[0].name, u.index) for u in v.uses()]


def _module(*names: str) -> tuple[Module, Builder, list[Value]]:
    m = Module(Graph("g"))
    return m, Builder(m), [m.graph.add_input(n, T) for n in names]


# ----------------------------------------------------------------------------- use lists


def test_builder_records_one_use_per_input_slot() -> None:
    m, b, (x, y) = _module("x", "y")
    s = b.add(x, x)
    t = b.mul(s, y)
    m.graph.set_outputs([t])
    assert _uses(x) == [("add", 0), ("add", 1)]
    assert _uses(y) == [("mul", 1)]
    assert _uses(s) == [("mul", 0)]
    assert x.num_uses == 2
    assert x.users() == [s.producer]  # one user, listed once
    verify_module(m)


def test_set_input_moves_the_use() -> None:
    m, b, (x, y) = _module("x", "y")
    s = b.add(x, x)
    m.graph.set_outputs([s])
    s.producer.set_input(1, y)
    assert s.producer.inputs == (x, y)
    assert _uses(x) == [("add", 0)]
    assert _uses(y) == [("add", 1)]
    verify_module(m)


def test_set_input_to_the_same_value_changes_nothing() -> None:
    m, b, (x,) = _module("x")
    s = b.relu(x)
    m.graph.set_outputs([s])
    s.producer.set_input(0, x)
    assert _uses(x) == [("relu", 0)]


def test_set_input_to_none_drops_the_use() -> None:
    m, b, (x,) = _module("x")
    s = b.relu(x)
    s.producer.set_input(0, None)
    assert s.producer.inputs == (None,)
    assert x.num_uses == 0


def test_inputs_setter_replaces_every_use() -> None:
    m, b, (x, y, z) = _module("x", "y", "z")
    s = b.add(x, y)
    m.graph.set_outputs([s])
    s.producer.inputs = [z, z, x]  # arity is not the setter's business
    assert _uses(x) == [("add", 2)]
    assert _uses(y) == []
    assert _uses(z) == [("add", 0), ("add", 1)]
    s.producer.inputs = [y, x]
    assert _uses(x) == [("add", 1)] and _uses(y) == [("add", 0)] and _uses(z) == []
    verify_module(m)


def test_detach_inputs_empties_the_uses() -> None:
    m, b, (x,) = _module("x")
    s = b.add(x, x)
    s.producer.detach_inputs()
    assert s.producer.inputs == ()
    assert x.num_uses == 0


def test_replace_all_uses_with_moves_every_use() -> None:
    m, b, (x, y) = _module("x", "y")
    r = b.relu(x)
    s = b.add(x, r)
    t = b.mul(s, x)
    m.graph.set_outputs([t])
    x.replace_all_uses_with(y)
    assert x.num_uses == 0
    assert _uses(y) == [("relu", 0), ("add", 0), ("mul", 1)]
    assert r.producer.inputs == (y,) and s.producer.inputs == (y, r) and t.producer.inputs == (s, y)
    verify_module(m)


def test_replace_all_uses_with_itself_is_a_no_op() -> None:
    m, b, (x,) = _module("x")
    s = b.add(x, x)
    m.graph.set_outputs([s])
    x.replace_all_uses_with(x)
    s.replace_all_uses_with(s)  # a graph output too: no error, nothing moves
    assert _uses(x) == [("add", 0), ("add", 1)]
    assert m.graph.outputs == [s]


def test_replace_all_uses_with_refuses_a_graph_output() -> None:
    m, b, (x,) = _module("x")
    r = b.relu(x)
    n = b.neg(x)
    m.graph.set_outputs([r])
    with pytest.raises(VerificationError) as e:
        r.replace_all_uses_with(n)
    assert str(e.value) == ("replace_all_uses_with: %relu is a graph output; "
                            "pass replace_graph_outputs=True to move it")
    assert m.graph.outputs == [r]


def test_refused_replace_all_uses_with_leaves_the_uses_alone() -> None:
    m, b, (x,) = _module("x")
    r = b.relu(x)
    n = b.neg(x)
    t = b.tanh(r)
    m.graph.set_outputs([r, t])
    with pytest.raises(VerificationError):
        r.replace_all_uses_with(n)
    assert _uses(r) == [("tanh", 0)]
    assert t.producer.inputs == (r,)


def test_replace_all_uses_with_moves_graph_outputs_when_asked() -> None:
    m, b, (x,) = _module("x")
    r = b.relu(x)
    n = b.neg(x)
    t = b.tanh(r)
    m.graph.set_outputs([r, t, r])
    r.replace_all_uses_with(n, replace_graph_outputs=True)
    assert m.graph.outputs == [n, t, n]
    assert _uses(n) == [("tanh", 0)] and r.num_uses == 0
    assert not r.is_graph_output and n.is_graph_output
    m.graph.remove(r.producer)
    verify_module(m)


def test_uses_is_a_snapshot() -> None:
    m, b, (x, y) = _module("x", "y")
    b.relu(x)
    b.neg(x)
    snap = x.uses()
    snap.clear()
    assert x.num_uses == 2  # clearing the copy leaves the use list alone
    moved = []
    for u in x.uses():  # redirecting while iterating visits every original use
        moved.append(u.node.outputs[0].name)
        u.node.set_input(u.index, y)
    assert moved == ["relu", "neg"]
    assert x.num_uses == 0 and _uses(y) == [("relu", 0), ("neg", 0)]


def test_graph_remove_refuses_a_used_node_and_detaches_a_dead_one() -> None:
    m, b, (x,) = _module("x")
    r = b.relu(x)
    t = b.tanh(r)
    m.graph.set_outputs([t])
    with pytest.raises(VerificationError) as e:
        m.graph.remove(r.producer)
    assert str(e.value) == "cannot remove <Node %relu = relu(%x)>: %relu is still used"
    with pytest.raises(VerificationError) as e:
        m.graph.remove(t.producer)
    assert str(e.value) == "cannot remove <Node %tanh = tanh(%relu)>: %tanh is still used"
    d = b.neg(x)
    m.graph.remove(d.producer)
    assert d.producer.graph is None and _uses(x) == [("relu", 0)] and len(m.graph) == 2
    verify_module(m)


# ----------------------------------------------------------------------------- iteration


def _chain(k: int) -> tuple[Module, Builder, Value, list[Value]]:
    m, b, (x,) = _module("x")
    vals, v = [], x
    for _ in range(k):
        v = b.relu(v)
        vals.append(v)
    m.graph.set_outputs([v])
    return m, b, x, vals


def test_removing_the_current_node_while_iterating_visits_the_rest() -> None:
    m, b, x, vals = _chain(4)  # relu, relu_1, relu_2, relu_3
    seen = []
    for n in m.graph.nodes:
        seen.append(n.output.name)
        if n.output.name in ("relu", "relu_2"):
            n.output.replace_all_uses_with(n.input(0))
            m.graph.remove(n)
    assert seen == ["relu", "relu_1", "relu_2", "relu_3"]
    assert [n.output.name for n in m.graph.nodes] == ["relu_1", "relu_3"]
    assert len(m.graph) == 2
    verify_module(m)


def test_removing_while_iterating_in_reverse_visits_the_rest() -> None:
    m, b, x, vals = _chain(3)
    m.graph.set_outputs([vals[0]])  # relu_1 and relu_2 are dead
    seen = []
    for n in m.graph.reversed_nodes():
        seen.append(n.output.name)
        if n.output.num_uses == 0 and not n.output.is_graph_output:
            m.graph.remove(n)
    assert seen == ["relu_2", "relu_1", "relu"]
    assert [n.output.name for n in m.graph.nodes] == ["relu"]


def test_inserting_before_the_current_node_while_iterating() -> None:
    m, b, x, vals = _chain(3)
    seen = []
    for n in m.graph.nodes:
        seen.append(n.output.name)
        if n.op == "relu":
            nb = Builder(m, insert_before=n)
            neg = nb.neg(n.input(0))
            n.set_input(0, neg)
    # nodes inserted before the current one are not visited; every original node is, once
    assert seen == ["relu", "relu_1", "relu_2"]
    assert [n.output.name for n in m.graph.nodes] == ["neg", "relu", "neg_1", "relu_1", "neg_2", "relu_2"]
    assert len(m.graph) == 6
    verify_module(m)


def test_inserting_after_the_current_node_is_not_visited() -> None:
    m, b, x, vals = _chain(2)
    seen = []
    for n in m.graph.nodes:
        seen.append(n.output.name)
        if n.output.name == "relu":
            m.graph.insert_after(n, Node("neg", [n.output], [T]))
    # the next node was taken before the insertion: what goes right after the current node is skipped
    assert seen == ["relu", "relu_1"]
    assert [n.output.name for n in m.graph.nodes] == ["relu", "neg", "relu_1"]


def test_removing_the_next_node_while_iterating_visits_the_rest() -> None:
    m, b, x, vals = _chain(4)
    seen = []
    for n in m.graph.nodes:
        seen.append(n.output.name)
        if n.output.name == "relu":
            nxt = n.next
            nxt.output.replace_all_uses_with(n.output)
            m.graph.remove(nxt)
    assert seen == ["relu", "relu_2", "relu_3"]


def test_reorder_checks_the_order() -> None:
    m, b, (x,) = _module("x")
    r = b.relu(x)
    n = b.neg(x)
    s = b.add(r, n)
    m.graph.set_outputs([s])
    rn, nn, sn = r.producer, n.producer, s.producer
    with pytest.raises(VerificationError) as e:
        m.graph.reorder([sn, rn, nn])
    assert str(e.value) == "reorder: add node %add would run before %relu is defined"
    with pytest.raises(VerificationError) as e:
        m.graph.reorder([rn, nn])
    assert str(e.value) == "reorder: the new order is not a permutation of the graph's nodes"
    assert m.graph.reorder([rn, nn, sn]) is False
    assert m.graph.reorder([nn, rn, sn]) is True
    assert [k.output.name for k in m.graph.nodes] == ["neg", "relu", "add"]
    assert [k.output.name for k in m.graph.reversed_nodes()] == ["add", "relu", "neg"]
    assert m.graph.first is nn and m.graph.last is sn
    verify_module(m)


# ----------------------------------------------------------------------------- names


def test_namespace_fresh_names() -> None:
    ns = Namespace()
    assert [ns.fresh("add") for _ in range(3)] == ["add", "add_1", "add_2"]
    assert ns.fresh("") == "v" and ns.fresh("") == "v_1"
    ns.claim("mul_1")
    assert ns.fresh("mul") == "mul"
    assert ns.fresh("mul") == "mul_2"  # mul_1 was claimed: skipped
    assert ns.fresh("add_1") == "add_1_1"


def test_namespace_claim_clash() -> None:
    ns = Namespace()
    ns.claim("x")
    with pytest.raises(VerificationError) as e:
        ns.claim("x")
    assert str(e.value) == "duplicate value name '%x'"
    ns.release("x")
    assert "x" not in ns
    assert ns.claim("x") == "x"


def test_namespace_suggest_does_not_reserve() -> None:
    ns = Namespace()
    assert ns.suggest("a") == "a"
    assert ns.suggest("a") == "a"
    ns.fresh("a")
    assert ns.suggest("a") == "a_1"
    assert ns.suggest("a") == "a_1"
    assert "a_1" not in ns
    assert ns.fresh("a") == "a_1"


def test_graph_names_unnamed_outputs_from_the_op_and_resolves_clashes() -> None:
    m, b, (x,) = _module("x")
    g = m.graph
    a0 = b.add(x, x)
    a1 = b.add(a0, x)
    named = b.op("add", a1, x, name_hint="add").output  # a hint that is taken gets a suffix
    assert [a0.name, a1.name, named.name] == ["add", "add_1", "add_2"]
    assert b.op("neg", x, name_hint="x").output.name == "x_1"  # clashes with the graph input
    g.append(Node("relu", [x], [T], output_names=["add_3"]))  # claimed explicitly
    assert b.add(x, x).name == "add_4"
    with pytest.raises(VerificationError) as e:
        g.append(Node("relu", [x], [T], output_names=["add"]))
    assert str(e.value) == "duplicate value name '%add'"
    with pytest.raises(VerificationError) as e:
        g.add_input("x", T)
    assert str(e.value) == "duplicate value name '%x'"


def test_removed_names_are_free_again_and_rename_checks_clashes() -> None:
    m, b, (x,) = _module("x")
    g = m.graph
    r = b.relu(x)
    t = b.tanh(r)
    g.set_outputs([t])
    with pytest.raises(VerificationError) as e:
        g.rename(t, "relu")
    assert str(e.value) == "duplicate value name '%relu'"
    assert t.name == "tanh" and "tanh" in g.names
    g.rename(t, "y")
    assert t.name == "y" and "tanh" not in g.names and "y" in g.names
    g.rename(t, "y")  # its own name: nothing to do
    d = b.neg(x)
    assert d.name == "neg"
    g.remove(d.producer)
    assert "neg" not in g.names
    assert b.neg(x).name == "neg"
    verify_module(m)


def test_a_node_joins_one_graph_only() -> None:
    m, b, (x,) = _module("x")
    n = Node("relu", [x], [T])
    m.graph.append(n)
    with pytest.raises(VerificationError) as e:
        Graph("h").append(n)
    assert str(e.value) == "<Node %relu = relu(%x)> already belongs to a graph"
    with pytest.raises(VerificationError) as e:
        Graph("h").remove(n)
    assert str(e.value) == "<Node %relu = relu(%x)> is not in graph @h"


def test_clone_module_prints_the_same_and_shares_nothing_but_weight_arrays():
    from effc.ir.core import clone_module
    from effc.ir.parser import parse_module
    from effc.ir.printer import print_module

    text = """module {opset=17}

graph @g(%x: f32[N,4]) -> (f32[N,3]) {
  %w = const() {value=resource<"w">} : f32[4,3]
  %y = fused(%x, %w) {kind="mat_mul+relu"} : f32[N,3] body(%a: f32[N,4], %b: f32[4,3]) {
    %p = mat_mul(%a, %b) : f32[N,3]
    %r = relu(%p) : f32[N,3]
    return %r
  }
  return %y
}
"""
    m = parse_module(text, {"w": np.arange(12, dtype=np.float32).reshape(4, 3)})
    c = clone_module(m)
    assert print_module(c) == print_module(m)
    fused = next(n for n in c.graph.nodes if n.op == "fused")
    assert fused.body is not next(n for n in m.graph.nodes if n.op == "fused").body
    w_m, w_c = (next(n for n in mod.graph.nodes if n.op == "const").attrs["value"] for mod in (m, c))
    assert w_c.store is c.weights and w_m.store is m.weights and w_c.get() is w_m.get()
    c.graph.remove(fused, force=True)
    assert print_module(m) == text
