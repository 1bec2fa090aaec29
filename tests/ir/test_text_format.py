"""The IR text form: printer, parser, weights sidecar, and their error reporting."""
from __future__ import annotations

import random

import ml_dtypes
import numpy as np
import pytest

import effc.ir.ops  # noqa: F401  (fills the op registry)
from effc.ir.core import Graph, Module, Node, Resource, Value, WeightStore
from effc.ir.errors import ParseError
from effc.ir.opdef import BY_ONNX, REGISTRY, OpDef, attr, register
from effc.ir.parser import load_module, parse_module
from effc.ir.printer import format_attr, print_module, save_module
from effc.ir.types import DType, QuantParams, TensorType, format_type

# ----------------------------------------------------------------------------- test ops


def _unused(*args):
    raise AssertionError("the text form never runs inference or reference code")


_KIND_ATTRS = {
    "i": attr("int", 0), "f": attr("float", 0.0), "s": attr("str", ""), "ii": attr("ints", ()),
    "ff": attr("floats", ()), "ss": attr("strs", ()), "d": attr("dtype", DType.f32), "t": attr("tensor", None),
}
_TEST_OPS = [
    OpDef("t_relu", None, ("X",), ("Y",), _unused, _unused),
    OpDef("t_conv", None, ("X", "W", "B?"), ("Y",), _unused, _unused,
          attrs={"pads": attr("ints", ()), "strides": attr("ints", ())}),
    OpDef("t_clip", None, ("X", "min?", "max?"), ("Y",), _unused, _unused),
    OpDef("t_split", None, ("X", "split?"), ("Y*",), _unused, _unused, attrs={"axis": attr("int", 0)}),
    OpDef("t_kinds", None, ("X*",), ("Y*",), _unused, _unused, attrs=_KIND_ATTRS),
    OpDef("t_fused", None, ("X*",), ("Y*",), _unused, _unused, attrs={"kind": attr("str")}),
    OpDef("t_sink", None, ("X*",), (), _unused, _unused),
]


@pytest.fixture(scope="module", autouse=True)
def test_ops():
    for op in _TEST_OPS:
        register(op)
    yield
    for op in _TEST_OPS:
        REGISTRY.pop(op.name, None)
        BY_ONNX.pop(op.onnx_name, None)


# ----------------------------------------------------------------------------- helpers


def ty(dtype: str, *shape, quant: QuantParams | None = None) -> TensorType:
    return TensorType(DType(dtype), tuple(shape), quant)


def add(g: Graph, op: str, inputs: list[Value | None], types: list[TensorType], names: list[str],
        attrs: dict | None = None, **kw) -> Node:
    return g.append(Node(op, inputs, types, attrs, output_names=names, **kw))


def const(g: Graph, name: str, value) -> Value:
    array = value.get() if isinstance(value, Resource) else value
    return add(g, "const", [], [TensorType.of(array)], [name], {"value": value}).output


def roundtrip(m: Module) -> str:
    """Print, parse, print again: the two texts must be identical."""
    text = print_module(m)
    again = parse_module(text, m.weights)
    assert print_module(again) == text
    return text


def module_of(g: Graph, **kw) -> Module:
    return Module(g, kw.pop("weights", WeightStore()), **kw)


def digits_module() -> Module:
    """The example of the design brief, on the test ops."""
    store = WeightStore()
    store.add("conv1.weight", np.arange(144, dtype=np.float32).reshape(16, 1, 3, 3) / 7)
    g = Graph("digits")
    x = g.add_input("x", ty("f32", "N", 1, 8, 8))
    g.add_input("mask", ty("bool", 3))
    w1 = const(g, "w1", Resource("conv1.weight", store))
    b1 = const(g, "b1", np.array([0.5, -1.25], dtype=np.float32))
    c1 = add(g, "t_conv", [x, w1, b1], [ty("f32", "N", 16, 8, 8)], ["c1"],
             {"pads": (1, 1, 1, 1), "strides": (1, 1)}, loc="/conv1/Conv").output
    r1 = add(g, "t_relu", [c1], [ty("f32", "N", 16, 8, 8)], ["r1"]).output
    split = const(g, "s", np.array([8, 8], dtype=np.int64))
    a, b = add(g, "t_split", [r1, split], [ty("f32", "N", 8, 8, 8)] * 2, ["a", "b"], {"axis": 1}).outputs
    add(g, "t_clip", [a, None, b], [ty("f32", "N", 8, 8, 8)], ["cl"])
    body = Graph("body")
    p, q = body.add_input("p", ty("f32", "N", 1, 8, 8)), body.add_input("q", ty("f32", 16, 1, 3, 3))
    t = add(body, "t_conv", [p, q], [ty("f32", "N", 16, 8, 8)], ["t"], {"pads": (1, 1, 1, 1)}).output
    body.set_outputs([add(body, "t_relu", [t], [ty("f32", "N", 16, 8, 8)], ["u"]).output])
    add(g, "t_fused", [x, w1], [ty("f32", "N", 16, 8, 8)], ["f"], {"kind": "conv_relu"}, body=body)
    g.set_outputs([r1, b])
    return Module(g, store, opset=17, producer="pytorch 2.13")


DIGITS_TEXT = """\
module {opset=17, producer="pytorch 2.13"}

graph @digits(%x: f32[N,1,8,8], %mask: bool[3]) -> (f32[N,16,8,8], f32[N,8,8,8]) {
  %w1 = const() {value=resource<"conv1.weight">} : f32[16,1,3,3]
  %b1 = const() {value=dense<f32[2] [0.5, -1.25]>} : f32[2]
  %c1 = t_conv(%x, %w1, %b1) {pads=[1, 1, 1, 1], strides=[1, 1]} : f32[N,16,8,8] loc("/conv1/Conv")
  %r1 = t_relu(%c1) : f32[N,16,8,8]
  %s = const() {value=dense<i64[2] [8, 8]>} : i64[2]
  %a, %b = t_split(%r1, %s) {axis=1} : f32[N,8,8,8], f32[N,8,8,8]
  %cl = t_clip(%a, _, %b) : f32[N,8,8,8]
  %f = t_fused(%x, %w1) {kind="conv_relu"} : f32[N,16,8,8] body(%p: f32[N,1,8,8], %q: f32[16,1,3,3]) {
    %t = t_conv(%p, %q) {pads=[1, 1, 1, 1]} : f32[N,16,8,8]
    %u = t_relu(%t) : f32[N,16,8,8]
    return %u
  }
  return %r1, %b
}
"""


# ----------------------------------------------------------------------------- printing


def test_prints_the_documented_layout():
    m = digits_module()
    assert print_module(m) == DIGITS_TEXT
    assert roundtrip(m) == DIGITS_TEXT


def test_parsed_module_has_the_same_structure():
    m = parse_module(DIGITS_TEXT, digits_module().weights)
    g = m.graph
    assert (m.opset, m.producer, m.metadata, m.target) == (17, "pytorch 2.13", {}, None)
    assert [v.name for v in g.inputs] == ["x", "mask"] and [v.name for v in g.outputs] == ["r1", "b"]
    nodes = {n.outputs[0].name: n for n in g.nodes}
    assert nodes["c1"].loc == "/conv1/Conv" and nodes["c1"].attrs == {"pads": (1, 1, 1, 1), "strides": (1, 1)}
    assert nodes["cl"].inputs[1] is None and nodes["cl"].inputs[2] is nodes["a"].outputs[1]
    assert nodes["w1"].attrs["value"].get().shape == (16, 1, 3, 3)
    body = nodes["f"].body
    assert [v.name for v in body.inputs] == ["p", "q"] and body.outputs[0].name == "u"
    assert g.inputs[0].num_uses == 2  # t_conv, t_fused: the body has its own scope


def test_format_type():
    assert format_type(ty("f32", "N", 16, 8, 8)) == "f32[N,16,8,8]"
    assert str(ty("i64")) == "i64[]"
    assert str(ty("f32", "batch size", "?", "2*N", 3)) == 'f32["batch size",?,"2*N",3]'
    q = QuantParams((0.5, 0.25), (3, 0), axis=1, bits=8)
    assert str(ty("u8", 2, 4, quant=q)) == "u8[2,4] quant<scale=[0.5, 0.25], zero_point=[3, 0], axis=1, bits=8>"
    q4 = QuantParams((0.1,), (0,), bits=4)
    assert str(ty("i8", 4, quant=q4)) == "i8[4] quant<scale=[0.1], zero_point=[0], bits=4>"


def test_format_attr_kinds():
    assert format_attr(3, "int") == "3" and format_attr(3, "float") == "3.0"
    assert format_attr(1e-5, "float") == "1e-05" and format_attr(float("-inf")) == "-inf"
    assert format_attr('a "b"', "str") == '"a \\"b\\""'
    assert format_attr((1, 2), "ints") == "[1, 2]" and format_attr((1.0, 2.5)) == "[1.0, 2.5]"
    assert format_attr(("a", "b")) == '["a", "b"]' and format_attr(DType.bf16) == "bf16"
    assert format_attr(np.array(5, dtype=np.int64)) == "dense<i64[] [5]>"
    assert format_attr(np.zeros((0,), np.float32)) == "dense<f32[0] []>"
    assert format_attr(np.array([[True], [False]])) == "dense<bool[2,1] [true, false]>"


# ----------------------------------------------------------------------------- round trips


def kinds_module(attrs: dict, dtype: str = "f32") -> Module:
    g = Graph("kinds")
    x = g.add_input("x", ty(dtype, 2))
    g.set_outputs([add(g, "t_kinds", [x], [ty(dtype, 2)], ["y"], attrs).output])
    return module_of(g)


SPECIAL_FLOATS = (0.1, -0.0, 1e-300, 5e-324, 1.7976931348623157e308, float("inf"), float("-inf"), 1e16, 3.0)


def test_roundtrip_every_attr_kind():
    attrs = {
        "i": -(2**63), "f": 0.1, "s": 'quote " backslash \\ newline \n tab \t unicode \u00e9 \U0001f600',
        "ii": (0, -1, 2**40), "ff": SPECIAL_FLOATS, "ss": ("", "a,b", "]"), "d": DType.bf16,
        "t": np.array([[1.5, -2.0]], dtype=np.float32),
    }
    m = kinds_module(attrs)
    text = roundtrip(m)
    back = next(parse_module(text).graph.nodes).attrs
    for key in ("i", "f", "s", "ii", "ff", "ss", "d"):
        assert back[key] == attrs[key] and type(back[key]) is type(attrs[key]), key
    assert back["t"].dtype == np.float32 and np.array_equal(back["t"], attrs["t"])


def test_schema_kind_coerces_literals():
    m = kinds_module({"f": 2, "ff": (1, 2), "ii": ()})
    text = print_module(m)
    assert "f=2.0" in text and "ff=[1.0, 2.0]" in text and "ii=[]" in text
    back = next(parse_module(text).graph.nodes).attrs
    assert back == {"f": 2.0, "ff": (1.0, 2.0), "ii": ()} and type(back["f"]) is float


def test_nan_attrs_roundtrip():
    text = roundtrip(kinds_module({"f": float("nan"), "ff": (float("nan"), 1.0)}))
    back = next(parse_module(text).graph.nodes).attrs
    assert np.isnan(back["f"]) and np.isnan(back["ff"][0])


def test_attrs_outside_the_schema_keep_their_python_type():
    extra = {"n": 7, "x": 0.5, "name": "s", "shape": (1, 2), "scales": (0.5, 2.0), "labels": ("a",),
             "to": DType.i8, "table": np.arange(4, dtype=np.int32).reshape(2, 2), "empty": (),
             "odd key!": 1, "flag": True, "loc": 2, "inf": 1.5, "true": "t", "return": (1,), "_": 0}
    text = roundtrip(kinds_module(extra))
    assert '"odd key!"=1' in text and "flag=1" in text
    back = next(parse_module(text).graph.nodes).attrs
    for key in ("n", "x", "name", "shape", "scales", "labels", "to", "empty", "loc", "inf", "true", "return"):
        assert back[key] == extra[key] and type(back[key]) is type(extra[key]), key
    assert np.array_equal(back["table"], extra["table"]) and back["table"].dtype == np.int32


def test_quoted_names_and_metadata():
    g = Graph("torch-jit export")
    x = g.add_input("onnx::Conv_12", ty("f32", "batch_size", 3))
    one = add(g, "t_relu", [x], [ty("f32", "batch_size", 3)], ["input.1"], loc='node "q"\n').output
    two = add(g, "t_relu", [one], [ty("f32", "batch_size", 3)], ["545"]).output
    out = add(g, "t_relu", [two], [ty("f32", "batch_size", 3)], ["/conv1/Conv_output_0"], loc="").output
    g.set_outputs([out])
    m = module_of(g, opset=13, target="arm", metadata={"author": "me", "opset": "x", "key with space": "v", "_": ""})
    text = roundtrip(m)
    assert text.startswith('module {_="", author="me", "key with space"="v", opset=13, "opset"="x", target="arm"}')
    assert 'graph @"torch-jit export"(%"onnx::Conv_12": f32[batch_size,3])' in text
    assert '%input.1 = t_relu(%"onnx::Conv_12")' in text and "%545 = t_relu(%input.1)" in text
    assert 'loc("node \\"q\\"\\n")' in text and 'loc("")' in text
    back = parse_module(text)
    assert back.metadata == m.metadata and (back.opset, back.target, back.producer) == (13, "arm", "")
    assert back.graph.name == "torch-jit export" and [n.loc for n in back.graph.nodes][0] == 'node "q"\n'


def test_empty_header_and_headerless_text():
    g = Graph("g")
    g.set_outputs([g.add_input("x", ty("f32", 2))])
    text = roundtrip(module_of(g))
    assert text == "module {}\n\ngraph @g(%x: f32[2]) -> (f32[2]) {\n  return %x\n}\n"
    assert print_module(parse_module(text.split("\n", 2)[2])) == text


def test_symbolic_dims_and_quant_types():
    q_axis = QuantParams((0.5, 0.125), (3, -1), axis=0, bits=8)
    q_tensor = QuantParams((0.003921568859368563,), (128,), None, 4)
    dims = ("N", "batch size", "?", "2*N", "inf", "true", "quant", "")
    g = Graph("q")
    x = g.add_input("x", ty("f32", *dims))
    y = add(g, "t_relu", [x], [ty("u8", 2, 0, quant=q_axis)], ["y"]).output
    z = add(g, "t_relu", [y], [ty("i8", quant=q_tensor)], ["z"]).output
    g.set_outputs([z, y])
    text = roundtrip(module_of(g))
    back = parse_module(text).graph
    assert back.inputs[0].type.shape == dims
    assert back.outputs[1].type.quant == q_axis and back.outputs[0].type.quant == q_tensor


def _special_values(dtype: DType) -> np.ndarray:
    rng = np.random.default_rng(1)
    if dtype is DType.bool:
        return rng.integers(0, 2, 10).astype(bool)
    if dtype.is_int:
        lo, hi = dtype.int_range
        randoms = rng.integers(lo, hi, 8, endpoint=True, dtype=np.int64 if lo < 0 else np.uint64).astype(dtype.np)
        return np.concatenate([np.array([lo, hi, 0, 1]).astype(dtype.np), randoms])
    info = ml_dtypes.finfo(dtype.np)
    specials = [np.nan, np.inf, -np.inf, -0.0, 0.0, 0.1, 1 / 3, float(info.max), float(info.tiny),
                float(info.smallest_subnormal), float(-info.max)]
    randoms = rng.integers(0, 256, 40 * dtype.itemsize, dtype=np.uint8).view(dtype.np)  # every bit pattern
    return np.concatenate([np.array(specials).astype(dtype.np), rng.standard_normal(20).astype(dtype.np), randoms])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    nan_a, nan_b = a != a, b != b  # NaN payloads and signs are not kept: all print as nan
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(nan_a, nan_b) and \
        a[~nan_a].tobytes() == b[~nan_b].tobytes()


@pytest.mark.parametrize("dtype", list(DType), ids=lambda d: d.value)
def test_inline_tensors_of_every_dtype(dtype: DType):
    g = Graph("dense")
    values = _special_values(dtype)
    arrays = [values, values[:6].reshape(2, 3), values[:1].reshape(()), values[:0], values[:0].reshape(2, 0)]
    outs = [const(g, f"c{i}", a) for i, a in enumerate(arrays)]
    g.set_outputs(outs)
    text = roundtrip(module_of(g))
    back = [n.attrs["value"] for n in parse_module(text).graph.nodes]
    for a, b in zip(arrays, back):
        assert _same_bits(a, b), (a, b)


def test_float_elements_print_shortest():
    assert format_attr(np.array([0.1, 1e20, -0.0], np.float32)) == "dense<f32[3] [0.1, 1e+20, -0.0]>"
    assert format_attr(np.array([0.1, 65504], np.float16)) == "dense<f16[2] [0.1, 6.55e+04]>"
    bf16 = np.array([0.1, 3.14159, 1e30, np.nan], dtype=DType.bf16.np)
    assert format_attr(bf16) == "dense<bf16[4] [0.1, 3.14, 1e+30, nan]>"


def test_graph_returning_inputs_nothing_and_zero_output_nodes():
    g = Graph("passthrough")
    x = g.add_input("x", ty("f32", 2))
    add(g, "t_sink", [x, None], [], [])
    g.set_outputs([x, x])
    text = roundtrip(module_of(g))
    assert "  () = t_sink(%x, _)\n  return %x, %x\n" in text
    g2 = Graph("nothing")
    g2.add_input("x", ty("f32", 2))
    assert "-> () {\n  return\n}" in roundtrip(module_of(g2))


def test_nested_bodies():
    inner = Graph("inner")
    a = inner.add_input("a", ty("f32", 4))
    inner.set_outputs([add(inner, "t_relu", [a], [ty("f32", 4)], ["x"]).output])
    outer = Graph("outer")
    p = outer.add_input("x", ty("f32", 4))  # shadows nothing: each body has its own scope
    y = add(outer, "t_fused", [p], [ty("f32", 4)], ["x2"], {"kind": "inner"}, body=inner).output
    outer.set_outputs([y, p])
    g = Graph("main")
    x = g.add_input("x", ty("f32", 4))
    f = add(g, "t_fused", [x], [ty("f32", 4), ty("f32", 4)], ["y", "z"], {"kind": "outer"}, body=outer)
    g.set_outputs(f.outputs)
    text = roundtrip(module_of(g))
    assert "\n    %x2 = t_fused(%x) {kind=\"inner\"} : f32[4] body(%a: f32[4]) {\n      %x = t_relu(%a)" in text
    assert "\n      return %x\n    }\n    return %x2, %x\n  }\n  return %y, %z\n}\n" in text


def test_comments_and_whitespace_are_free():
    text = "// -----// IR Dump After fold-bn //----- //\n" + DIGITS_TEXT.replace("\n  %r1", "\n\n  // note\n%r1 ")
    assert print_module(parse_module(text)) == DIGITS_TEXT


# ----------------------------------------------------------------------------- files


def test_save_and_load_with_weights(tmp_path):
    store = WeightStore()
    keys = ["conv1.weight", "a/b:c", "file", "__effc_index__", "weird key /x", "onnx::Gemm_5", ""]
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal((3, 2)).astype(np.float32) for k in keys}
    arrays["bf"] = rng.standard_normal(5).astype(DType.bf16.np)
    arrays["ints"] = np.arange(6, dtype=np.int8).reshape(2, 3)
    g = Graph("w")
    outs = [const(g, f"c{i}", Resource(store.add(k, a), store)) for i, (k, a) in enumerate(arrays.items())]
    g.set_outputs(outs)
    m = module_of(g, weights=store, opset=18)
    save_module(m, tmp_path / "m.effc")
    assert (tmp_path / "m.npz").exists()
    back = load_module(tmp_path / "m.effc")
    assert print_module(back) == print_module(m)
    for key, array in arrays.items():
        loaded = back.weights[key]
        assert loaded.dtype == array.dtype and np.array_equal(loaded.view(np.uint8), array.view(np.uint8)), key


def test_module_without_resources_writes_no_sidecar(tmp_path):
    save_module(digits_module_inline(), tmp_path / "m.effc")
    assert not (tmp_path / "m.npz").exists()
    assert print_module(load_module(tmp_path / "m.effc")) == print_module(digits_module_inline())


def digits_module_inline() -> Module:
    g = Graph("g")
    g.set_outputs([const(g, "c", np.ones(2, np.float32))])
    return module_of(g)


def test_missing_weight_is_a_parse_error(tmp_path):
    save_module(digits_module(), tmp_path / "m.effc")
    (tmp_path / "m.npz").unlink()
    with pytest.raises(ParseError, match='conv1.weight') as e:
        load_module(tmp_path / "m.effc")
    assert (e.value.line, e.value.column) == (4, 33)
    with pytest.raises(ParseError, match='resource "conv1.weight"'):
        parse_module(DIGITS_TEXT, {})


# ----------------------------------------------------------------------------- errors


def parse_error(text: str) -> ParseError:
    with pytest.raises(ParseError) as e:
        parse_module(text)
    return e.value


def test_syntax_error_says_what_was_expected():
    text = DIGITS_TEXT.replace("%b1 = const()", "%b1 = const(")
    e = parse_error(text)
    assert (e.line, e.column) == (5, 16)
    assert str(e) == "<text>:5:16: unexpected '{'; expected one of: ')', '_', a value (%name)"


def test_missing_close_paren_on_line_3():
    text = "module {}\n\ngraph @g(%x: f32[2] -> (f32[2]) {\n  return %x\n}\n"
    e = parse_error(text)
    assert (e.line, e.column) == (3, 21) and "expected one of: ')', ','" in str(e)


def test_unexpected_character_and_end_of_input():
    e = parse_error("graph @g() -> () {\n  return # \n}")
    assert (e.line, e.column) == (2, 10) and "unexpected character '#'" in str(e)
    e = parse_error("graph @g() -> () {\n  return")
    assert "unexpected end of input" in str(e) and "expected" in str(e) and e.line == 2


@pytest.mark.parametrize("edit, line, needle", [
    (("%r1 = t_relu(%c1)", "%r1 = t_relu(%zz)"), 7, "undefined value %zz"),
    (("%r1 = t_relu(", "%r1 = t_nope("), 7, "unknown op 't_nope'"),
    (("%s = const()", "%a = const()"), 9, "value %a is defined twice"),
    (("{axis=1}", '{axis="1"}'), 9, "attribute 'axis' of t_split must be an integer"),
    (("{axis=1}", "{axis=1.0}"), 9, "must be an integer"),
    (("{axis=1}", "{axis=1, axis=2}"), 9, "given twice"),
    (("strides=[1, 1]", "strides=[1, 1.5]"), 6, "must be an integer"),
    (("strides=[1, 1]", "strides=1"), 6, "must be a list"),
    (("%r1 = t_relu(%c1) : f32[N,16,8,8]", "%r1 = t_relu(%c1) : f33[N,16,8,8]"), 7, "unknown dtype 'f33'"),
    (("%a, %b = t_split(%r1, %s) {axis=1} : f32[N,8,8,8], f32[N,8,8,8]",
      "%a, %b = t_split(%r1, %s) {axis=1} : f32[N,8,8,8]"), 9, "2 result(s) but gives 1 type(s)"),
    (("dense<f32[2] [0.5, -1.25]>", "dense<f32[3] [0.5, -1.25]>"), 5, "needs 3 elements, got 2"),
    (("dense<i64[2] [8, 8]>", "dense<i8[2] [8, 800]>"), 8, "800 does not fit i8"),
    (("dense<i64[2] [8, 8]>", "dense<i64[2] [8, 8.0]>"), 8, "must be an integer"),
    (("dense<i64[2] [8, 8]>", "dense<i64[N] [8, 8]>"), 8, "static shape"),
    (("%p: f32[N,1,8,8]", "%p: f32[N,-1,8,8]"), 11, "must not be negative"),
    (("%p: f32[N,1,8,8]", "%p: f32[N,1.5,8,8]"), 11, "a dimension must be an integer"),
    (("dense<i64[2] [8, 8]>", "dense<bool[2] [true, 1]>"), 8, "must be true or false"),
    (("dense<i64[2] [8, 8]>", "dense<i64[2] [true, 1]>"), 8, "must be an integer"),
    (("dense<f32[2] [0.5, -1.25]>", "dense<f32[2] [0.5, false]>"), 5, "must be a number"),
    (("{axis=1}", "{axis=1, extra=[1, \"a\"]}"), 9, "mixes strings and numbers"),
    (("{axis=1}", "{axis=f32}"), 9, "must be an integer"),
    (("{kind=\"conv_relu\"}", "{kind=conv_relu}"), 11, "must be a string"),
    (("resource<\"conv1.weight\">", "[1]"), 4, "must be a tensor"),
    ((": f32[N,16,8,8] loc", ": f32[N,16,8,8] quant<scale=[0.5, 1.0], zero_point=[1], bits=8> loc"), 6,
     "scale and zero_point lengths differ"),
    (("return %r1, %b\n}", "return %r1\n}"), 16, "returns 1 value(s) but its signature declares 2"),
    (("return %r1, %b\n}", "return %r1, %c1\n}"), 16, "%c1 has type f32[N,16,8,8] but the signature declares"),
    (("(%x, %w1) {kind", "(%x, %t) {kind"), 11, "undefined value %t"),
    (("module {opset=17,", "module {opset=\"17\","), 1, "opset must be an integer"),
    (("producer=\"pytorch 2.13\"", "producer=2"), 1, "takes a string"),
    (("%x: f32[N,1,8,8], %mask", '%"": f32[N,1,8,8], %mask'), 3, "empty name"),
    (("loc(\"/conv1/Conv\")", "loc(\"\\q\")"), 6, "bad string literal"),
])
def test_semantic_errors_name_the_token(edit, line, needle):
    old, new = edit
    assert old in DIGITS_TEXT
    e = parse_error(DIGITS_TEXT.replace(old, new, 1))
    assert needle in str(e) and e.line == line, str(e)


def test_undefined_value_position():
    e = parse_error(DIGITS_TEXT.replace("%r1 = t_relu(%c1)", "%r1 = t_relu(%zz)"))
    assert (e.line, e.column) == (7, 16) and str(e) == "<text>:7:16: undefined value %zz"


def test_source_name_in_errors():
    with pytest.raises(ParseError, match=r"^model\.effc:1:1: "):
        parse_module("nonsense", source="model.effc")


def _mutate(text: str, rng: random.Random) -> str:
    alphabet = "%@(){}[]<>,:=_\"\\-.0123456789eE ?\nabcfinrstuz/"
    i = rng.randrange(len(text))
    choice = rng.randrange(4)
    if choice == 0:
        return text[:i] + rng.choice(alphabet) + text[i + 1:]
    if choice == 1:
        return text[:i] + text[i + 1:]
    if choice == 2:
        return text[:i] + rng.choice(alphabet) + text[i:]
    lines = text.split("\n")
    j, k = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[j], lines[k] = lines[k], lines[j]
    return "\n".join(lines)


def test_fuzzed_text_parses_or_raises_parse_error():
    m = digits_module()
    text = print_module(m)
    rng = random.Random(0)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        mutated = _mutate(text, rng)
        try:
            back = parse_module(mutated, m.weights)
        except ParseError as e:
            assert e.line is None or e.line >= 1
            outcomes["error"] += 1
        else:
            print_module(back)  # whatever parses must print
            outcomes["ok"] += 1
    assert outcomes["error"] > 100


# ----------------------------------------------------------------------------- the grammar is the spec

def _spec_parser():
    import lark

    from tests.fixtures import REPO

    return lark.Lark((REPO / "ir" / "grammar.lark").read_text(), parser="lalr")


def _golden_texts():
    from tests.fixtures import REPO

    for path in sorted((REPO / "tests" / "passes").glob("*/*.effc")):
        text = "\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("// RUN"))
        for k, part in enumerate(text.split("// EXPECT:")):
            yield f"{path.parent.name}/{path.name}#{k}", part


def test_grammar_accepts_what_the_printer_writes_and_the_parser_reads():
    """ir/grammar.lark is the reference syntax that the hand-written parser follows: lark
    (LALR) accepts every golden input and expectation and a real model's dump, each of which
    the hand-written parser also reads back to the same text."""
    from effc.models import load_model
    from tests.fixtures import REPO

    spec = _spec_parser()
    texts = list(_golden_texts()) + [("digits_cnn", print_module(load_model(REPO / "examples" / "digits_cnn.onnx")))]
    assert len(texts) > 60
    for name, text in texts:
        spec.parse(text)
        module = parse_module(text)
        assert parse_module(print_module(module)) is not None, name


@pytest.mark.parametrize("text", [
    "graph @g(%x: f32[2]) -> (f32[2]) { %y = relu(%x) : f32[2] }",  # no return
    "graph @g(%x: f32[2]) -> (f32[2]) { %y = relu(%x : f32[2]\n return %y }",  # unclosed call
    "graph @g(%x f32[2]) -> (f32[2]) { return %x }",  # no colon
])
def test_grammar_and_parser_both_refuse_malformed_text(text):
    import lark

    with pytest.raises(lark.exceptions.LarkError):
        _spec_parser().parse(text)
    with pytest.raises(ParseError):
        parse_module(text)
