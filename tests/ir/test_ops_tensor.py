"""Tensor ops (ir/ops/tensor.py) beyond ONNX's conformance cases: symbolic dims through
``infer``, older-opset forms upgraded on import (checked against onnxruntime running the
original model), runtime-only shapes, edge cases of the reference functions, and clear
errors for bad inputs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from effc.ir.errors import IndexOutOfRangeError, ModelError, UnsupportedOpError
from effc.ir.interpreter import run_module
from effc.ir.opdef import BY_ONNX, REGISTRY
from effc.ir.parser import parse_module
from effc.ir.printer import print_module
from effc.ir.verifier import verify_module
from effc.onnx_export import export_onnx
from effc.onnx_import import import_onnx
from tests.fixtures import ort_run

F32 = TensorProto.FLOAT
I64 = TensorProto.INT64


def _model(nodes, inputs, outputs, opset: int, inits=()) -> onnx.ModelProto:
    """A one-graph model; ``inputs``/``outputs`` are (name, elem_type, shape) triples."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    ir_version = next(v for limit, v in ((8, 3), (9, 4), (11, 5), (13, 6), (15, 7), (99, 8)) if opset < limit)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return list(ort_run(model, feeds, optimize=False).values())


def _check(model: onnx.ModelProto, feeds: dict, rtol: float = 1e-5, atol: float = 1e-6):
    """effc's import + interpreter, and its opset-21 export in onnxruntime, against
    onnxruntime running the original model."""
    module = import_onnx(model)
    verify_module(module)
    got = run_module(module, feeds)
    want = _ort(model, feeds)
    exported = _ort(export_onnx(module), feeds)
    for o, w, e in zip(model.graph.output, want, exported):
        g = got[o.name]
        assert g.dtype == w.dtype and g.shape == w.shape, (o.name, g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=o.name)
        np.testing.assert_allclose(e, w, rtol=rtol, atol=atol, err_msg=f"{o.name} (exported)")
    return module


def _out_shape(model: onnx.ModelProto, i: int = 0) -> tuple:
    return import_onnx(model).graph.outputs[i].type.shape


rng = np.random.default_rng(0)


def _rand(*shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- symbolic dims


@pytest.mark.parametrize("node, in_shape, inits, want", [
    (helper.make_node("Reshape", ["x", "s"], ["y"]), ["N", 3, 4], [("s", np.array([0, -1]))], ("N", 12)),
    (helper.make_node("Reshape", ["x", "s"], ["y"]), ["N", 3, 4], [("s", np.array([-1, 4]))], ("?", 4)),
    (helper.make_node("Flatten", ["x"], ["y"], axis=1), ["N", 3, 4, 5], [], ("N", 60)),
    (helper.make_node("Transpose", ["x"], ["y"], perm=[0, 2, 1]), ["N", 3, 4], [], ("N", 4, 3)),
    (helper.make_node("Squeeze", ["x", "a"], ["y"]), ["N", 1, 4], [("a", np.array([1]))], ("N", 4)),
    (helper.make_node("Unsqueeze", ["x", "a"], ["y"]), ["N", 4], [("a", np.array([0, -1]))], (1, "N", 4, 1)),
    (helper.make_node("Slice", ["x", "s", "e", "a"], ["y"]), ["N", 10],
     [("s", np.array([1])), ("e", np.array([5])), ("a", np.array([1]))], ("N", 4)),
    (helper.make_node("Slice", ["x", "s", "e"], ["y"]), ["N", 10],
     [("s", np.array([0, -3])), ("e", np.array([2**63 - 1, 2**63 - 1]))], ("N", 3)),
    (helper.make_node("Slice", ["x", "s", "e"], ["y"]), ["N", 10], [("s", np.array([1])), ("e", np.array([3]))],
     ("?", 10)),
    (helper.make_node("Gather", ["x", "i"], ["y"], axis=1), ["N", 10], [("i", np.array([[1, 2, 3]]))], ("N", 1, 3)),
    (helper.make_node("Shape", ["x"], ["y"], start=1), ["N", 3, 4], [], (2,)),
    (helper.make_node("Expand", ["x", "s"], ["y"]), ["N", 1, 4], [("s", np.array([1, 3, 1]))], ("N", 3, 4)),
    (helper.make_node("Tile", ["x", "r"], ["y"]), ["N", 2], [("r", np.array([1, 3]))], ("N", 6)),
    (helper.make_node("Pad", ["x", "p"], ["y"]), ["N", 3, 4], [("p", np.array([0, 1, 2, 0, 1, 2]))], ("N", 5, 8)),
    (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2), ["N", 8, 2, 3], [], ("N", 2, 4, 6)),
    (helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2), ["N", 2, 4, 6], [], ("N", 8, 2, 3)),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear"), ["N", 3, 8, 8],
     [("s", np.array([1, 1, 2, 1.5], np.float32))], ("N", 3, 16, 12)),
    (helper.make_node("Resize", ["x", "", "", "z"], ["y"], axes=[2, 3]), ["N", 3, 8, 8],
     [("z", np.array([5, 7]))], ("N", 3, 5, 7)),
    (helper.make_node("Resize", ["x", "", "", "z"], ["y"], axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
     ["N", 3, 8, 4], [("z", np.array([6, 6]))], ("N", 3, 6, 3)),
    (helper.make_node("Identity", ["x"], ["y"]), ["N", "C"], [], ("N", "C")),
    (helper.make_node("Trilu", ["x"], ["y"]), ["N", 3, 3], [], ("N", 3, 3)),
    (helper.make_node("TopK", ["x", "k"], ["v", "i"]), ["N", 10], [("k", np.array([3]))], ("N", 3)),
    (helper.make_node("CumSum", ["x", "a"], ["y"]), ["N", 10], [("a", np.array(1))], ("N", 10)),
    (helper.make_node("NonZero", ["x"], ["y"]), ["N", 10], [], (2, "?")),
])
def test_symbolic_dims(node, in_shape, inits, want):
    model = _model([node], [("x", F32, in_shape)], [], 21, inits)
    model.graph.output.extend([helper.make_empty_tensor_value_info(node.output[0])])
    assert _out_shape(model) == want


def test_symbolic_concat_and_split():
    nodes = [helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
             helper.make_node("Split", ["c"], ["p", "q"], axis=1, num_outputs=2)]
    model = _model(nodes, [("a", F32, ["N", 3]), ("b", F32, ["N", 5])], [("p", F32, None), ("q", F32, None)], 21)
    module = import_onnx(model)
    assert [v.type.shape for v in module.graph.outputs] == [("N", 4), ("N", 4)]
    got = run_module(module, {"a": _rand(2, 3), "b": _rand(2, 5)})
    assert got["p"].shape == (2, 4)


def test_symbolic_constant_of_shape_and_shape():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("ConstantOfShape", ["s"], ["y"],
                                                                      value=helper.make_tensor("v", I64, [1], [7]))]
    model = _model(nodes, [("x", F32, ["N", 3])], [("y", I64, None)], 21)
    module = import_onnx(model)
    assert module.graph.outputs[0].type.shape == ("?", "?")
    y = run_module(module, {"x": _rand(4, 3)})["y"]
    assert y.shape == (4, 3) and y.dtype == np.int64 and (y == 7).all()


def test_shape_arithmetic_is_evaluated_before_running():
    """Shape → Size → Sub → ConstantOfShape → Concat → Reshape (LayerNormalization's
    expansion): the target's values are known from types, so the output shape is exact,
    also with a symbolic batch dim."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Size", ["s"], ["rank"]),
             helper.make_node("Sub", ["rank", "one"], ["n"]),
             helper.make_node("ConstantOfShape", ["n"], ["ones"], value=helper.make_tensor("v", I64, [1], [1])),
             helper.make_node("Slice", ["s", "zero", "one"], ["head"]),
             helper.make_node("Concat", ["head", "ones"], ["target"], axis=0),
             helper.make_node("Flatten", ["x"], ["flat"], axis=1),
             helper.make_node("ReduceMean", ["flat", "one"], ["mean"]),
             helper.make_node("Reshape", ["mean", "target"], ["y"])]
    inits = [("one", np.array([1])), ("zero", np.array([0]))]
    for batch in (4, "N"):
        model = _model(nodes, [("x", F32, [batch, 3, 5])], [("y", F32, None)], 18, inits)
        module = import_onnx(model)
        want = (4, 1, 1) if batch == 4 else ("?", "?", "?")
        assert module.graph.outputs[0].type.shape == want
        assert run_module(module, {"x": _rand(4, 3, 5)})["y"].shape == (4, 1, 1)
    # the suffix of ones needs only the rank, which a symbolic batch does not hide
    model = _model(nodes[:4], [("x", F32, ["N", 3, 5])], [("ones", I64, None)], 18, inits)
    assert import_onnx(model).graph.outputs[0].type.shape == (2,)


# ----------------------------------------------------------------------------- older opset forms


def test_squeeze_unsqueeze_opset11_axes_attribute():
    nodes = [helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0, 3]),
             helper.make_node("Squeeze", ["u"], ["y"], axes=[0]),
             helper.make_node("Squeeze", ["x1"], ["z"])]
    model = _model(nodes, [("x", F32, [2, 3]), ("x1", F32, [1, 3, 1])], [("y", F32, None), ("z", F32, None)], 11)
    module = _check(model, {"x": _rand(2, 3), "x1": _rand(1, 3, 1)})
    assert module.graph.outputs[0].type.shape == (2, 3, 1)


def test_split_opset11_attribute_and_opset13_equal_parts():
    m11 = _model([helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[1, 3])],
                 [("x", F32, [2, 4])], [("a", F32, None), ("b", F32, None)], 11)
    _check(m11, {"x": _rand(2, 4)})
    m13 = _model([helper.make_node("Split", ["x"], ["a", "b", "c"], axis=-1)],
                 [("x", F32, [2, 6])], [("a", F32, None), ("b", F32, None), ("c", F32, None)], 13)
    module = _check(m13, {"x": _rand(2, 6)})
    assert [v.type.shape for v in module.graph.outputs] == [(2, 2)] * 3


def test_split_uneven_num_outputs():
    model = _model([helper.make_node("Split", ["x"], ["a", "b", "c"], num_outputs=3)],
                   [("x", F32, [7])], [("a", F32, None), ("b", F32, None), ("c", F32, None)], 18)
    module = _check(model, {"x": _rand(7)})
    assert [v.type.shape for v in module.graph.outputs] == [(3,), (3,), (1,)]


def test_slice_opset9_attributes():
    model = _model([helper.make_node("Slice", ["x"], ["y"], starts=[1, -3], ends=[100, -1], axes=[0, 2])],
                   [("x", F32, [4, 3, 6])], [("y", F32, None)], 9)
    module = _check(model, {"x": _rand(4, 3, 6)})
    assert module.graph.outputs[0].type.shape == (3, 3, 2)


@pytest.mark.parametrize("starts, ends, steps", [
    ([-1], [-100], [-1]), ([10], [0], [-2]), ([5], [-7], [-3]), ([-100], [100], [3]), ([3], [3], [1]),
    ([-2], [2**63 - 1], [1]), ([2**63 - 1], [-2**63], [-1]),
])
def test_slice_clamping_and_negative_steps(starts, ends, steps):
    inits = [("s", np.array(starts)), ("e", np.array(ends)), ("a", np.array([1])), ("t", np.array(steps))]
    model = _model([helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"])],
                   [("x", F32, [2, 6])], [("y", F32, None)], 13, inits)
    _check(model, {"x": _rand(2, 6)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_opset10_attributes(mode):
    attrs = {"value": 1.5} if mode == "constant" else {}
    model = _model([helper.make_node("Pad", ["x"], ["y"], mode=mode, pads=[0, 2, 1, 0, 1, 2], **attrs)],
                   [("x", F32, [2, 4, 5])], [("y", F32, None)], 10)
    module = _check(model, {"x": _rand(2, 4, 5)})
    assert module.graph.outputs[0].type.shape == (2, 7, 8)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_negative_pads_and_axes(mode):
    inits = [("p", np.array([-1, 2, 1, -2])), ("v", np.array(3.0, np.float32)), ("a", np.array([-2, 2]))]
    model = _model([helper.make_node("Pad", ["x", "p", "v", "a"], ["y"], mode=mode)],
                   [("x", F32, [2, 5, 6])], [("y", F32, None)], 19, inits)
    module = _check(model, {"x": _rand(2, 5, 6)})
    assert module.graph.outputs[0].type.shape == (2, 5, 6)


def test_pad_int_constant_value():
    inits = [("p", np.array([1, 1])), ("v", np.array(-4, np.int32))]
    model = _model([helper.make_node("Pad", ["x", "p", "v"], ["y"])],
                   [("x", TensorProto.INT32, [3])], [("y", TensorProto.INT32, None)], 13, inits)
    _check(model, {"x": np.array([1, 2, 3], np.int32)})


@pytest.mark.parametrize("mode, scales", [
    ("nearest", [1, 1, 2, 3]), ("nearest", [1, 1, 0.6, 0.5]), ("linear", [1, 1, 2, 1.5]), ("linear", [1, 1, 0.5, 0.6]),
])
def test_resize_opset10(mode, scales):
    model = _model([helper.make_node("Resize", ["x", "s"], ["y"], mode=mode)],
                   [("x", F32, [1, 2, 5, 4])], [("y", F32, None)], 10, [("s", np.array(scales, np.float32))])
    module = _check(model, {"x": _rand(1, 2, 5, 4)})
    resize = next(n for n in module.graph.nodes if n.op == "resize")
    assert resize.attrs["coordinate_transformation_mode"] == "asymmetric"


def test_resize_opset11_empty_placeholders_and_sizes():
    inits = [("roi", np.zeros(0, np.float32)), ("s", np.zeros(0, np.float32)), ("z", np.array([1, 2, 7, 3]))]
    model = _model([helper.make_node("Resize", ["x", "roi", "s", "z"], ["y"], mode="cubic",
                                     coordinate_transformation_mode="pytorch_half_pixel")],
                   [("x", F32, [1, 2, 5, 4])], [("y", F32, None)], 11, inits)
    module = _check(model, {"x": _rand(1, 2, 5, 4)}, rtol=1e-4, atol=1e-5)
    resize = next(n for n in module.graph.nodes if n.op == "resize")
    assert resize.inputs[1] is None and resize.inputs[2] is None
    assert module.graph.outputs[0].type.shape == (1, 2, 7, 3)


def test_resize_opset11_tf_crop_and_resize_keeps_roi():
    inits = [("roi", np.array([0, 0, 0.1, 0.2, 1, 1, 0.9, 0.7], np.float32)), ("s", np.zeros(0, np.float32)),
             ("z", np.array([1, 1, 4, 4]))]
    model = _model([helper.make_node("Resize", ["x", "roi", "s", "z"], ["y"], mode="linear",
                                     coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=9.0)],
                   [("x", F32, [1, 1, 5, 6])], [("y", F32, None)], 11, inits)
    _check(model, {"x": _rand(1, 1, 5, 6)})


def test_resize_tf_half_pixel_for_nn_is_unsupported():
    inits = [("roi", np.zeros(0, np.float32)), ("s", np.array([1, 1, 2, 2], np.float32))]
    model = _model([helper.make_node("Resize", ["x", "roi", "s"], ["y"],
                                     coordinate_transformation_mode="tf_half_pixel_for_nn")],
                   [("x", F32, [1, 1, 2, 2])], [("y", F32, None)], 11, inits)
    with pytest.raises(UnsupportedOpError, match="tf_half_pixel_for_nn"):
        import_onnx(model)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "pytorch_half_pixel", "align_corners",
                                 "half_pixel_symmetric"])
def test_resize_opset13_and_21_against_onnxruntime(mode, ctm):
    for opset in (13, 21):
        if ctm == "half_pixel_symmetric" and opset < 19:
            continue
        node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode=mode, coordinate_transformation_mode=ctm)
        model = _model([node], [("x", F32, [1, 2, 6, 5])], [("y", F32, None)], opset,
                       [("s", np.array([1, 1, 2, 1.6], np.float32))])
        _check(model, {"x": _rand(1, 2, 6, 5)}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
def test_resize_nearest_modes_with_axes(nearest_mode):
    model = _model([helper.make_node("Resize", ["x", "", "", "z"], ["y"], axes=[3, 2], nearest_mode=nearest_mode)],
                   [("x", F32, [1, 2, 5, 4])], [("y", F32, None)], 19, [("z", np.array([7, 3]))])
    module = _check(model, {"x": _rand(1, 2, 5, 4)})
    assert module.graph.outputs[0].type.shape == (1, 2, 3, 7)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32])
def test_resize_integer_rounds_and_saturates(dtype):
    x = np.array([[[[0, 100, 0], [50, 127, 0]]]], dtype=dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for mode in ("linear", "cubic"):
        model = _model([helper.make_node("Resize", ["x", "", "s"], ["y"], mode=mode)], [("x", elem, [1, 1, 2, 3])],
                       [("y", elem, None)], 19, [("s", np.array([1, 1, 2, 2], np.float32))])
        y = run_module(import_onnx(model), {"x": x})["y"]
        assert y.dtype == dtype and y.shape == (1, 1, 4, 6)
        resize = REGISTRY["resize"]
        yf = resize.ref([x.astype(np.float64), None, np.array([1, 1, 2, 2], np.float32), None],
                        resize.with_defaults({"mode": mode}), 1)[0]
        info = np.iinfo(dtype)
        np.testing.assert_array_equal(y, np.clip(np.round(yf), info.min, info.max).astype(dtype))
        if mode == "linear":  # onnxruntime has no integer cubic kernel
            np.testing.assert_allclose(y.astype(np.int64), _ort(model, {"x": x})[0].astype(np.int64), atol=1)


def test_resize_runtime_scales_give_unknown_dims_and_run():
    model = _model([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")],
                   [("x", F32, [1, 2, 3, 3]), ("s", F32, [4])], [("y", F32, None)], 19)
    module = import_onnx(model)
    assert module.graph.outputs[0].type.shape == ("?",) * 4
    feeds = {"x": _rand(1, 2, 3, 3), "s": np.array([1, 1, 2, 3], np.float32)}
    np.testing.assert_array_equal(run_module(module, feeds)["y"], _ort(model, feeds)[0])


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_opset7_attribute(mode):
    model = _model([helper.make_node("Upsample", ["x"], ["y"], mode=mode, scales=[1.0, 1.0, 2.0, 3.0])],
                   [("x", F32, [1, 2, 3, 4])], [("y", F32, None)], 7)
    module = _check(model, {"x": _rand(1, 2, 3, 4)})
    assert [n.op for n in module.graph.nodes if n.op != "const"] == ["resize"]
    assert module.graph.outputs[0].type.shape == (1, 2, 6, 12)
    assert "Resize" in {n.op_type for n in export_onnx(module).graph.node}


@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.5, 2.5]])
def test_upsample_opset9_input(scales):
    model = _model([helper.make_node("Upsample", ["x", "s"], ["y"], mode="nearest")],
                   [("x", F32, [1, 2, 3, 4])], [("y", F32, None)], 9, [("s", np.array(scales, np.float32))])
    _check(model, {"x": _rand(1, 2, 3, 4)})


def test_upsample_is_resize_in_the_registry():
    assert BY_ONNX["Upsample"] is REGISTRY["resize"]
    assert BY_ONNX["Scatter"] is REGISTRY["scatter_elements"]


@pytest.mark.parametrize("opset", [7, 9, 10])
def test_dropout_old_opsets_are_identity(opset):
    """The mask: all true, as ONNX's reference gives (onnxruntime gives all false before opset 12;
    before opset 10 the mask was a float tensor, which the opset-21 form cannot hold)."""
    model = _model([helper.make_node("Dropout", ["x"], ["y", "m"], ratio=0.3)], [("x", F32, [3, 4])],
                   [("y", F32, None)], opset)
    module = _check(model, {"x": _rand(3, 4)})
    mask = next(n for n in module.graph.nodes if n.op == "dropout").outputs[1]
    assert mask.type.dtype.value == "bool"


def test_dropout_training_mode_constant_is_unsupported():
    inits = [("r", np.array(0.5, np.float32)), ("t", np.array(True))]
    model = _model([helper.make_node("Dropout", ["x", "r", "t"], ["y"])], [("x", F32, [3])], [("y", F32, None)], 13,
                   inits)
    with pytest.raises(UnsupportedOpError, match="training-mode Dropout"):
        import_onnx(model)


def test_dropout_training_mode_zero_ratio_is_identity():
    inits = [("r", np.array(0.0, np.float32)), ("t", np.array(True))]
    model = _model([helper.make_node("Dropout", ["x", "r", "t"], ["y", "m"])], [("x", F32, [3])],
                   [("y", F32, None), ("m", TensorProto.BOOL, None)], 13, inits)
    x = _rand(3)
    got = run_module(import_onnx(model), {"x": x})
    np.testing.assert_array_equal(got["y"], x)
    assert got["m"].dtype == bool and got["m"].all()


def test_top_k_opset9_attribute_and_ties():
    x = np.array([[3, 1, 3, 2, 3, 1]], np.float32)
    model = _model([helper.make_node("TopK", ["x"], ["v", "i"], k=4)], [("x", F32, [1, 6])],
                   [("v", F32, None), ("i", I64, None)], 9)
    _check(model, {"x": x})
    smallest = _model([helper.make_node("TopK", ["x", "k"], ["v", "i"], largest=0, axis=1)], [("x", F32, [1, 6])],
                      [("v", F32, None), ("i", I64, None)], 11, [("k", np.array([3]))])
    _check(smallest, {"x": x})


def test_scatter_opset10_is_scatter_elements():
    inits = [("i", np.array([[1, 0, 2]])), ("u", np.array([[1.0, 2.0, 3.0]], np.float32))]
    model = _model([helper.make_node("Scatter", ["x", "i", "u"], ["y"], axis=1)], [("x", F32, [1, 3])],
                   [("y", F32, None)], 10, inits)
    module = _check(model, {"x": _rand(1, 3)})
    assert [n.op for n in module.graph.nodes if n.op != "const"] == ["scatter_elements"]


def test_newer_opset_attributes_at_their_defaults_are_dropped():
    m = _model([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode="DCR")],
               [("x", F32, [1, 1, 4, 4])], [("y", F32, None)], 28)
    module = import_onnx(m)
    node = next(n for n in module.graph.nodes if n.op == "space_to_depth")
    assert "mode" not in node.attrs
    r = _model([helper.make_node("Range", ["a", "b", "c"], ["y"], stash_type=1)],
               [("a", F32, []), ("b", F32, []), ("c", F32, [])], [("y", F32, None)], 27)
    import_onnx(r)
    r.graph.node[0].attribute[0].i = 11
    with pytest.raises(UnsupportedOpError, match="stash_type"):
        import_onnx(r)


def test_range_constant_inputs_give_exact_length():
    inits = [("a", np.array(10, np.int64)), ("b", np.array(1, np.int64)), ("c", np.array(-3, np.int64))]
    model = _model([helper.make_node("Range", ["a", "b", "c"], ["y"])], [], [("y", I64, None)], 11, inits)
    module = import_onnx(model)
    assert module.graph.outputs[0].type.shape == (3,)
    np.testing.assert_array_equal(run_module(module, {})["y"], [10, 7, 4])


def test_reshape_runtime_shape_gives_rank_only():
    model = _model([helper.make_node("Reshape", ["x", "s"], ["y"])], [("x", F32, [2, 6]), ("s", I64, [3])],
                   [("y", F32, None)], 14)
    module = import_onnx(model)
    assert module.graph.outputs[0].type.shape == ("?", "?", "?")
    feeds = {"x": _rand(2, 6), "s": np.array([3, -1, 2])}
    assert run_module(module, feeds)["y"].shape == (3, 2, 2)


def test_reshape_allowzero():
    inits = [("s", np.array([0, 4]))]
    model = _model([helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1)], [("x", F32, [0, 4])],
                   [("y", F32, None)], 14, inits)
    module = _check(model, {"x": np.zeros((0, 4), np.float32)})
    assert module.graph.outputs[0].type.shape == (0, 4)


def test_one_hot_and_gather_elements_and_cumsum_against_onnxruntime():
    nodes = [helper.make_node("OneHot", ["i", "d", "v"], ["o"], axis=0),
             helper.make_node("GatherElements", ["x", "gi"], ["g"], axis=1),
             helper.make_node("CumSum", ["x", "ax"], ["c"], exclusive=1, reverse=1)]
    inits = [("d", np.array(4, np.int64)), ("v", np.array([-1.0, 5.0], np.float32)),
             ("gi", np.array([[0, -1], [2, 1]])), ("ax", np.array(1, np.int32))]
    model = _model(nodes, [("i", I64, [3]), ("x", F32, [2, 3])],
                   [("o", F32, None), ("g", F32, None), ("c", F32, None)], 13, inits)
    module = _check(model, {"i": np.array([1, -1, 7]), "x": _rand(2, 3)})
    assert module.graph.outputs[0].type.shape == (4, 3)


def test_text_form_round_trip():
    inits = [("s", np.array([1, 1, 2, 2], np.float32)), ("z", np.array([2, 3]))]
    nodes = [helper.make_node("Resize", ["x", "", "s"], ["r"], mode="cubic", axes=[0, 1, 2, 3]),
             helper.make_node("Split", ["r", "z"], ["a", "b"], axis=1),
             helper.make_node("Shape", ["a"], ["sh"], start=-2),
             helper.make_node("ConstantOfShape", ["sh"], ["c"], value=helper.make_tensor("v", F32, [1], [2.5]))]
    model = _model(nodes, [("x", F32, ["N", 5, 2, 2])], [("b", F32, None), ("c", F32, None)], 21, inits)
    module = import_onnx(model)
    text = print_module(module)
    again = parse_module(text, module.weights)
    verify_module(again)
    assert print_module(again) == text


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("node, in_shape, inits, fragment", [
    (helper.make_node("Reshape", ["x", "s"], ["y"]), [2, 3], [("s", np.array([4, 2]))], "cannot reshape"),
    (helper.make_node("Reshape", ["x", "s"], ["y"], allowzero=1), [2, 3], [("s", np.array([0, -1]))], "allowzero"),
    (helper.make_node("Transpose", ["x"], ["y"], perm=[0, 0]), [2, 3], [], "not a permutation"),
    (helper.make_node("Squeeze", ["x", "a"], ["y"]), [2, 3], [("a", np.array([1]))], "not 1"),
    (helper.make_node("Unsqueeze", ["x", "a"], ["y"]), [2, 3], [("a", np.array([5]))], "out of range"),
    (helper.make_node("Split", ["x", "s"], ["a", "b"]), [5], [("s", np.array([2, 2]))], "sums to 4"),
    (helper.make_node("Split", ["x"], ["a", "b", "c", "d"], num_outputs=4), [5], [], "cannot be split"),
    (helper.make_node("Slice", ["x", "s", "e", "a", "t"], ["y"]), [5],
     [("s", np.array([0])), ("e", np.array([2])), ("a", np.array([0])), ("t", np.array([0]))], "step is 0"),
    (helper.make_node("Gather", ["x", "i"], ["y"], axis=2), [2, 3], [("i", np.array([0]))], "out of range"),
    (helper.make_node("Tile", ["x", "r"], ["y"]), [2, 3], [("r", np.array([2]))], "one entry per axis"),
    (helper.make_node("Pad", ["x", "p"], ["y"]), [2, 3], [("p", np.array([1, 1]))], "2 entries per padded axis"),
    (helper.make_node("Pad", ["x", "p"], ["y"], mode="mirror"), [2], [("p", np.array([1, 1]))], "mode 'mirror'"),
    (helper.make_node("Expand", ["x", "s"], ["y"]), [2, 3], [("s", np.array([4, 3]))], "cannot expand"),
    (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2), [1, 6, 2, 2], [], "not divisible"),
    (helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2), [1, 1, 3, 4], [], "not divisible"),
    (helper.make_node("Resize", ["x", "", "s", "z"], ["y"]), [1, 1, 2, 2],
     [("s", np.array([1, 1, 2, 2], np.float32)), ("z", np.array([1, 1, 4, 4]))], "not both"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], mode="area"), [1, 1, 2, 2],
     [("s", np.array([1, 1, 2, 2], np.float32))], "mode 'area'"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"]), [1, 1, 2, 2], [("s", np.array([2, 2], np.float32))],
     "2 entries for 4 axes"),
    (helper.make_node("TopK", ["x", "k"], ["v", "i"]), [2, 3], [("k", np.array([4]))], "K=4"),
])
def test_bad_inputs_give_clear_model_errors(node, in_shape, inits, fragment):
    model = _model([node], [("x", F32, in_shape)], [], 21, inits)
    model.graph.output.extend([helper.make_empty_tensor_value_info(node.output[0])])
    with pytest.raises(ModelError) as info:
        import_onnx(model)
    assert fragment in str(info.value)
    assert node.op_type in str(info.value)


def test_concat_mismatched_dims_names_the_inputs():
    model = _model([helper.make_node("Concat", ["a", "b"], ["y"], axis=0)], [("a", F32, [2, 3]), ("b", F32, [2, 4])],
                   [("y", F32, None)], 13)
    with pytest.raises(ModelError, match="input 1 has shape"):
        import_onnx(model)


def test_gather_index_out_of_range_at_run_time():
    model = _model([helper.make_node("Gather", ["x", "i"], ["y"])], [("x", F32, [3]), ("i", I64, [1])],
                   [("y", F32, None)], 13)
    module = import_onnx(model)
    with pytest.raises(IndexOutOfRangeError, match="index 3 is out of range for an axis of length 3"):
        run_module(module, {"x": _rand(3), "i": np.array([3])})


def test_squeeze_without_axes_on_symbolic_dims_is_unsupported():
    model = _model([helper.make_node("Squeeze", ["x"], ["y"])], [("x", F32, ["N", 1, 3])], [("y", F32, None)], 13)
    with pytest.raises(UnsupportedOpError, match="symbolic"):
        import_onnx(model)
