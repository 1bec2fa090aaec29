"""Opsets and attributes are read by the ONNX checker's rules (issue 9, class 10): an opset
effc cannot know, a missing opset_import, and an attribute without a type (or with a
type its value contradicts) end in a ModelError that says what effc reads and what to
do, instead of being accepted without a word."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper

from effc.ir.errors import EffcError, ModelError, UnsupportedOpError
from effc.ir.interpreter import run_module
from effc.onnx_import import NEWEST_OPSET, import_onnx
from tests.fixtures import ort_run

X = np.array([-2.0, -0.5, 0.0, 3.0], np.float32)


def _model(node: onnx.NodeProto | None = None, opsets=(("", 17),), ir_version: int = 8) -> onnx.ModelProto:
    node = node if node is not None else helper.make_node("Relu", ["x"], ["y"], name="act")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=ir_version)


def _checker_refuses(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return True
    return False


def test_opsets_outside_what_effc_reads_are_refused():
    """Before: opsets 0, -1, 29 and 99 all imported silently. The checker refuses 0 and -1
    (no op exists there); it takes 29 and 99 as "the newest schema", which effc cannot do:
    an op may have changed its meaning after NEWEST_OPSET."""
    assert NEWEST_OPSET <= onnx.defs.onnx_opset_version()
    for opset in (0, -1, NEWEST_OPSET + 1, 99):
        with pytest.raises(ModelError) as info:
            import_onnx(_model(opsets=[("", opset)]))
        msg = str(info.value)
        assert f"opset {opset}" in msg and f"effc reads opsets 1 to {NEWEST_OPSET}" in msg, msg
        assert ("re-export" in msg) if opset > NEWEST_OPSET else ("set its opset_import" in msg), msg
    assert _checker_refuses(_model(opsets=[("", 0)]))
    for opset in (1, NEWEST_OPSET):  # the ends of the range still import
        y = run_module(import_onnx(_model(opsets=[("", opset)])), {"x": X})["y"]
        np.testing.assert_array_equal(y, np.maximum(X, 0))


def test_missing_opset_import_follows_the_checker():
    """From IR version 3 the ONNX domain must be imported (the checker's rule); before, a
    model without one imported as opset 0. IR versions 1 and 2 had no imports and mean
    opset 1 (before: 0). A model of custom-domain ops only still reports those ops."""
    m = _model(opsets=[])
    assert _checker_refuses(m)
    with pytest.raises(ModelError, match=r"no opset_import for the ONNX domain .*make_opsetid\('', 17\)"):
        import_onnx(m)
    legacy = _model(opsets=[], ir_version=2)
    assert not _checker_refuses(legacy)
    module = import_onnx(legacy)
    assert module.opset == 1
    np.testing.assert_array_equal(run_module(module, {"x": X})["y"], np.maximum(X, 0))
    custom = _model(helper.make_node("Fancy", ["x"], ["y"], domain="com.example"), opsets=[("com.example", 1)])
    with pytest.raises(UnsupportedOpError, match="com.example::Fancy"):
        import_onnx(custom)


def test_two_different_onnx_opsets_are_refused():
    """'' and 'ai.onnx' are one domain; before, the first entry won silently."""
    with pytest.raises(ModelError, match=r"imports the ONNX operator set twice, as opsets \[13, 17\]"):
        import_onnx(_model(opsets=[("", 17), ("ai.onnx", 13)]))
    assert import_onnx(_model(opsets=[("", 17), ("ai.onnx", 17)])).opset == 17


def _leaky(*attrs: AttributeProto) -> onnx.NodeProto:
    n = helper.make_node("LeakyRelu", ["x"], ["y"], name="leaky")
    n.attribute.extend(attrs)
    return n


MALFORMED = {
    # name: (attributes, what effc's message says); the checker refuses each one too
    "no type": ([AttributeProto(name="alpha", f=0.5)], "attribute 'alpha' has no type"),
    "no type, no value": ([AttributeProto(name="alpha")], "attribute 'alpha' has no type"),
    "type and value disagree": ([AttributeProto(name="alpha", type=AttributeProto.FLOAT, i=2)],
                                "attribute 'alpha' is declared FLOAT but holds a INT"),
    "two values": ([AttributeProto(name="alpha", type=AttributeProto.FLOAT, f=0.5, i=2)],
                   "attribute 'alpha' holds more than one value (FLOAT, INT)"),
    "given twice": ([helper.make_attribute("alpha", 0.5), helper.make_attribute("alpha", 0.25)],
                    "attribute 'alpha' is given twice"),
    "no name": ([AttributeProto(type=AttributeProto.FLOAT, f=0.5)], "has an attribute without a name"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_attributes_are_refused_like_the_checker_does(case):
    """Before: an untyped attribute was dropped (LeakyRelu ran with its default alpha), a
    FLOAT with an int in it read as 0.0, a repeated attribute kept the last value, and an
    unnamed one was called "unknown attribute ''"."""
    attrs, fragment = MALFORMED[case]
    m = _model(_leaky(*attrs))
    assert _checker_refuses(m)
    with pytest.raises(ModelError, match="node 'leaky' \\(LeakyRelu\\)") as info:
        import_onnx(m)
    assert fragment in str(info.value)


def test_reference_to_a_function_attribute_outside_a_function_is_refused():
    """ref_attr_name only means something inside a function body; before, the message was
    "attribute 'alpha' must be a float, got AttributeRef" (onnx-graphsurgeon's class)."""
    m = _model(_leaky(AttributeProto(name="alpha", type=AttributeProto.FLOAT, ref_attr_name="beta")))
    with pytest.raises(ModelError, match="refers to the function attribute 'beta'"):
        import_onnx(m)


def _attribute(kind: int, fields: dict) -> AttributeProto:
    a = AttributeProto(name="alpha", type=kind)
    for f, v in fields.items():
        if isinstance(v, list):
            getattr(a, f).extend(v)
        else:
            setattr(a, f, v)
    return a


FIELDS = {"f": 0.25, "i": 3, "s": b"x", "floats": [0.5], "ints": [1]}


@settings(derandomize=True, deadline=None, max_examples=40)
@given(kind=st.sampled_from([AttributeProto.UNDEFINED, AttributeProto.FLOAT]),
       fields=st.sets(st.sampled_from(sorted(FIELDS)), max_size=2))
def test_effc_accepts_an_attribute_exactly_when_the_checker_does(kind, fields):
    """LeakyRelu's alpha with a declared type of FLOAT or none and any mix of value fields:
    effc imports it exactly when the ONNX checker accepts it, and then agrees with
    onnxruntime (exactly: one multiply)."""
    m = _model(_leaky(_attribute(kind, {f: FIELDS[f] for f in fields})))
    try:
        module = import_onnx(m)
    except ModelError as e:
        assert _checker_refuses(m), f"effc refused a model the checker accepts: {e}"
        return
    except EffcError as e:  # anything else is not an attribute-form refusal
        raise AssertionError(f"{type(e).__name__}: {e}") from None
    assert not _checker_refuses(m), "effc accepted an attribute the ONNX checker refuses"
    got = run_module(module, {"x": X})["y"]
    np.testing.assert_array_equal(got, ort_run(m, {"x": X})["y"])
