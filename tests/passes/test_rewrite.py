"""Direct tests of the declarative rewriter (passes/rewrite.py): the matcher (commutative
operands, shared captures, nested patterns and their single-use rule, attributes,
optional inputs, arity) and the worklist driver (check callbacks, declined rewrites,
rules that enable each other, graph outputs, non-convergence)."""
from __future__ import annotations

import numpy as np
import pytest

from effc.ir.core import Module, Node
from effc.ir.parser import parse_module
from effc.ir.printer import print_module
from effc.ir.verifier import verify_module
from effc.passes.rewrite import Any, Const, Match, Op, Rule, apply_rules, match_node

HEAD = "module {}\n\n"


def _module(body: str, sig: str = "(%x: f32[2,3], %y: f32[2,3]) -> (f32[2,3])") -> Module:
    m = parse_module(f"{HEAD}graph @g{sig} {{\n{body}}}\n")
    verify_module(m)
    return m


def _node(m: Module, name: str) -> Node:
    return m.graph.value_map()[name].producer


def _binds(matches: list[Match], *names: str) -> list[tuple[str, ...]]:
    """Each match as the names of the values its captures bound."""
    return [tuple(mt.value(n).name for n in names) for mt in matches]


# ----------------------------------------------------------------------------- matcher


ADD_CONST_FIRST = """  %c = const() {value=dense<f32[3] [1.0, 2.0, 3.0]>} : f32[3]
  %s = add(%c, %x) : f32[2,3]
  %d = sub(%c, %x) : f32[2,3]
  %o = add(%s, %d) : f32[2,3]
  return %o
"""


def test_commutative_op_matches_its_operands_swapped() -> None:
    m = _module(ADD_CONST_FIRST)
    found = match_node(Op("add", Any("v"), Const("k")), _node(m, "s"), Match())
    assert _binds(found, "v", "k") == [("x", "c")]
    np.testing.assert_array_equal(found[0].const("k"), np.array([1.0, 2.0, 3.0], np.float32))


def test_non_commutative_op_keeps_its_operand_order() -> None:
    m = _module(ADD_CONST_FIRST)
    assert match_node(Op("sub", Any("v"), Const("k")), _node(m, "d"), Match()) == []
    assert _binds(match_node(Op("sub", Const("k"), Any("v")), _node(m, "d"), Match()), "v", "k") == [("x", "c")]


def test_commutative_op_gives_both_orders_when_both_match() -> None:
    m = _module("  %s = add(%x, %y) : f32[2,3]\n  return %s\n")
    found = match_node(Op("add", Any("a"), Any("b")), _node(m, "s"), Match())
    assert _binds(found, "a", "b") == [("x", "y"), ("y", "x")]


def test_const_matches_only_constants() -> None:
    m = _module("  %s = add(%x, %y) : f32[2,3]\n  return %s\n")
    assert match_node(Op("add", Any("a"), Const("k")), _node(m, "s"), Match()) == []


def test_shared_capture_binds_one_value() -> None:
    m = _module("  %s = add(%x, %x) : f32[2,3]\n  %t = add(%x, %y) : f32[2,3]\n"
                "  %o = mul(%s, %t) : f32[2,3]\n  return %o\n")
    pat = Op("add", Any("v"), Any("v"))
    assert _binds(match_node(pat, _node(m, "s"), Match()), "v") == [("x",), ("x",)]  # once per operand order
    assert match_node(pat, _node(m, "t"), Match()) == []  # neither order binds v to one value


def test_shared_capture_across_nesting_levels() -> None:
    m = _module("""  %r = relu(%x) : f32[2,3]
  %p = mul(%x, %r) : f32[2,3]
  %r2 = relu(%x) : f32[2,3]
  %q = mul(%r2, %y) : f32[2,3]
  %o = add(%p, %q) : f32[2,3]
  return %o
""")
    pat = Op("mul", Op("relu", Any("v"), name="act"), Any("v"))
    found = match_node(pat, _node(m, "p"), Match())  # mul is commutative: relu(x) found as the 2nd operand
    assert _binds(found, "v") == [("x",)]
    assert found[0].node("act") is _node(m, "r")
    assert [n.output.name for n in found[0].matched] == ["p", "r"]
    assert match_node(pat, _node(m, "q"), Match()) == []  # relu's input x is not mul's other input y


def test_a_capture_name_bound_before_the_match_must_agree() -> None:
    m = _module("  %s = relu(%x) : f32[2,3]\n  return %s\n")
    g = m.graph.value_map()
    pre = Match()
    pre.values["v"] = g["y"]
    assert match_node(Op("relu", Any("v")), _node(m, "s"), pre) == []
    pre.values["v"] = g["x"]
    assert _binds(match_node(Op("relu", Any("v")), _node(m, "s"), pre), "v") == [("x",)]


NESTED = """  %a = relu(%x) : f32[2,3]
  %b = relu(%a) : f32[2,3]
  %c = relu(%b) : f32[2,3]
  %d = tanh(%b) : f32[2,3]
  %o = add(%c, %d) : f32[2,3]
  return %o
"""


def test_nested_patterns_match_through_single_use_values_only() -> None:
    m = _module(NESTED)
    pat = Op("relu", Op("relu", Any("v"), name="inner"))
    found = match_node(pat, _node(m, "b"), Match())  # a has one user
    assert _binds(found, "v") == [("x",)] and found[0].node("inner") is _node(m, "a")
    assert match_node(pat, _node(m, "c"), Match()) == []  # b has two users: c and d
    shared = Op("relu", Op("relu", Any("v"), name="inner", shared=True))
    found = match_node(shared, _node(m, "c"), Match())
    assert _binds(found, "v") == [("a",)] and found[0].node("inner") is _node(m, "b")


def test_deeper_nesting() -> None:
    m = _module(NESTED)
    pat = Op("relu", Op("relu", Op("relu", Any("v"), name="n1"), name="n2", shared=True))
    found = match_node(pat, _node(m, "c"), Match())
    assert _binds(found, "v") == [("x",)]
    assert [n.output.name for n in found[0].matched] == ["c", "b", "a"]


def test_a_graph_output_is_not_matched_below_the_root() -> None:
    m = _module("  %a = relu(%x) : f32[2,3]\n  %b = relu(%a) : f32[2,3]\n  return %a\n")
    m.graph.set_outputs([m.graph.value_map()["a"], m.graph.value_map()["b"]])
    assert match_node(Op("relu", Op("relu", Any("v"))), _node(m, "b"), Match()) == []
    assert len(match_node(Op("relu", Op("relu", Any("v"), shared=True)), _node(m, "b"), Match())) == 1


def test_attributes_match_exactly_with_defaults() -> None:
    m = _module("  %a = leaky_relu(%x) : f32[2,3]\n  %b = leaky_relu(%a) {alpha=0.5} : f32[2,3]\n  return %b\n")
    default = Op("leaky_relu", Any("v"), attrs={"alpha": 0.01})
    half = Op("leaky_relu", Any("v"), attrs={"alpha": 0.5})
    assert len(match_node(default, _node(m, "a"), Match())) == 1  # the schema default fills the gap
    assert match_node(default, _node(m, "b"), Match()) == []
    assert len(match_node(half, _node(m, "b"), Match())) == 1
    assert match_node(half, _node(m, "a"), Match()) == []


def test_op_alternatives_and_arity() -> None:
    m = _module("""  %s = const() {value=dense<i64[2] [3, 2]>} : i64[2]
  %r = reshape(%x, %s) : f32[3,2]
  %t = tanh(%x) : f32[2,3]
  return %t
""")
    r, t = _node(m, "r"), _node(m, "t")
    assert match_node(Op(("reshape", "flatten"), Any("v")), r, Match()) == []  # two inputs, pattern has one
    assert _binds(match_node(Op(("reshape", "flatten"), Any("v"), exact_arity=False), r, Match()), "v") == [("x",)]
    assert match_node(Op(("reshape", "flatten"), Any("v"), exact_arity=False), t, Match()) == []
    assert match_node(Op("tanh", Any("v"), Any("w")), t, Match()) == []
    found = match_node(Op("tanh", Any("v"), Any("w", optional=True)), t, Match())  # a missing optional input
    assert len(found) == 1 and found[0].value("w") is None


# ----------------------------------------------------------------------------- driver


NEG_NEG = Rule("neg-neg", Op("neg", Op("neg", Any("v"))), lambda mt, b: mt["v"])
RELU_RELU = Rule("relu-relu", Op("relu", Op("relu", Any("v"), name="inner")), lambda mt, b: mt["inner"].output)


def test_rules_that_enable_each_other_reach_a_fixpoint() -> None:
    m = _module("""  %r0 = relu(%x) : f32[2,3]
  %n1 = neg(%r0) : f32[2,3]
  %n2 = neg(%n1) : f32[2,3]
  %z = relu(%n2) : f32[2,3]
  return %z
""", "(%x: f32[2,3]) -> (f32[2,3])")
    # relu-relu cannot fire on %z until neg-neg has removed the negations between the relus;
    # the inner relu then becomes the graph output and takes its name
    stats = apply_rules(m, [RELU_RELU, NEG_NEG])
    assert stats.applied == {"neg-neg": 1, "relu-relu": 1} and stats.total == 2
    assert print_module(m) == HEAD + "graph @g(%x: f32[2,3]) -> (f32[2,3]) {\n  %z = relu(%x) : f32[2,3]\n  return %z\n}\n"
    verify_module(m)
    assert apply_rules(m, [RELU_RELU, NEG_NEG]).total == 0  # a fixpoint: nothing more fires


def test_a_long_chain_collapses() -> None:
    body = "".join(f"  %r{k} = relu(%{'x' if k == 0 else f'r{k - 1}'}) : f32[2,3]\n" for k in range(6))
    m = _module(body + "  return %r5\n", "(%x: f32[2,3]) -> (f32[2,3])")
    stats = apply_rules(m, [RELU_RELU])
    assert stats.applied == {"relu-relu": 5}
    assert print_module(m) == HEAD + "graph @g(%x: f32[2,3]) -> (f32[2,3]) {\n  %r5 = relu(%x) : f32[2,3]\n  return %r5\n}\n"


def test_the_check_callback_refuses_a_match() -> None:
    src = "  %s = add(%x, %y) : f32[2,3]\n  %o = relu(%s) : f32[2,3]\n  return %o\n"
    seen: list[tuple[str, str]] = []

    def check(mt: Match) -> bool:
        seen.append((mt.value("a").name, mt.value("b").name))
        return mt.value("a").name == "y"  # refuses the first operand order, takes the swapped one

    def rewrite(mt, b):
        return b.sub(mt["a"], mt["b"])

    m = _module(src)
    stats = apply_rules(m, [Rule("add-to-sub", Op("add", Any("a"), Any("b")), rewrite, check=check)])
    assert seen == [("x", "y"), ("y", "x")]
    assert stats.applied == {"add-to-sub": 1}
    assert print_module(m) == HEAD + ("graph @g(%x: f32[2,3], %y: f32[2,3]) -> (f32[2,3]) {\n"
                                      "  %s = sub(%y, %x) : f32[2,3]\n  %o = relu(%s) : f32[2,3]\n  return %o\n}\n")
    m = _module(src)
    stats = apply_rules(m, [Rule("never", Op("add", Any("a"), Any("b")), rewrite, check=lambda mt: False)])
    assert stats.total == 0 and stats.applied == {}
    assert print_module(m) == print_module(_module(src))


def test_a_declined_rewrite_leaves_no_trace() -> None:
    src = "  %s = add(%x, %y) : f32[2,3]\n  return %s\n"
    m = _module(src)

    def build_then_decline(mt, b):
        b.neg(b.sub(mt["a"], mt["b"]))
        return None

    stats = apply_rules(m, [Rule("declines", Op("add", Any("a"), Any("b")), build_then_decline)])
    assert stats.total == 0
    assert print_module(m) == print_module(_module(src))
    assert "sub" not in m.graph.names and "neg" not in m.graph.names
    verify_module(m)


def test_a_new_node_takes_the_replaced_value_name() -> None:
    m = _module("  %c = const() {value=dense<f32[] [2.0]>} : f32[]\n  %p = mul(%c, %x) : f32[2,3]\n"
                "  %o = relu(%p) : f32[2,3]\n  return %o\n", "(%x: f32[2,3]) -> (f32[2,3])")

    def twice(mt, b):
        return b.add(mt["v"], mt["v"]) if float(mt.const("k")) == 2.0 else None

    stats = apply_rules(m, [Rule("mul2", Op("mul", Any("v"), Const("k")), twice)])
    assert stats.applied == {"mul2": 1}
    # the constant died with the mul; the add is called %p, not %add
    assert print_module(m) == HEAD + ("graph @g(%x: f32[2,3]) -> (f32[2,3]) {\n"
                                      "  %p = add(%x, %x) : f32[2,3]\n  %o = relu(%p) : f32[2,3]\n  return %o\n}\n")


def test_a_graph_output_is_not_replaced_by_a_graph_input() -> None:
    src = "  %n1 = neg(%x) : f32[2,3]\n  %n2 = neg(%n1) : f32[2,3]\n  return %n2\n"
    m = _module(src, "(%x: f32[2,3]) -> (f32[2,3])")
    assert apply_rules(m, [NEG_NEG]).total == 0  # the output would lose its name
    assert print_module(m) == print_module(_module(src, "(%x: f32[2,3]) -> (f32[2,3])"))


def test_a_rule_must_give_one_value_per_output() -> None:
    m = _module("  %s = add(%x, %y) : f32[2,3]\n  return %s\n")
    with pytest.raises(RuntimeError) as e:
        apply_rules(m, [Rule("two", Op("add", Any("a"), Any("b")), lambda mt, b: [mt["a"], mt["b"]])])
    assert str(e.value) == "rule two gave 2 values for 1 outputs"


def test_rules_that_never_converge_are_stopped() -> None:
    m = _module("  %r = relu(%x) : f32[2,3]\n  %o = tanh(%r) : f32[2,3]\n  return %o\n")
    again = Rule("again", Op("relu", Any("v")), lambda mt, b: b.relu(mt["v"]))  # replaces relu by a new relu
    with pytest.raises(RuntimeError) as e:
        apply_rules(m, [again], max_rewrites=7)
    assert str(e.value) == "rewrite rules did not converge after 7 rewrites (last rule: again)"
