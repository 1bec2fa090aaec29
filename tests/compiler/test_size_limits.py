"""Sizes a model cannot have (issue 9, class 6): a tensor too large to fold or build, and one
symbolic dim bound to two sizes, end in effc's own errors (exit 2) that say what is wrong
and what to do, not in numpy's MemoryError or TVM's std::bad_alloc (exit 70)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

import effc
from effc.codegen import lower_to_relax
from effc.ir.refine import bind_input_shapes
from effc.ir.limits import (DEFAULT_MAX_TENSOR_BYTES, ENV_VAR, TensorTooLargeError, check_tensor_sizes,
                                 max_tensor_bytes, set_max_tensor_bytes)
from effc.ir.errors import InputError
from effc.models import load_model
from effc.passes.base import PassContext
from effc.passes.fold_constants import FoldConstants
from tests.fixtures import ort_run

OPSET = [helper.make_opsetid("", 17)]


def _constant_of_shape(dims: list[int]) -> onnx.ModelProto:
    """o = ConstantOfShape(dims) * a: a tensor of ``dims`` from a constant shape."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])
    o = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c"]), helper.make_node("Mul", ["c", "a"], ["o"])]
    g = helper.make_graph(nodes, "huge", [a], [o], initializer=[nh.from_array(np.array(dims, dtype=np.int64), "shape")])
    return helper.make_model(g, opset_imports=OPSET)


def _two_inputs(y_dims=("N", 4)) -> onnx.ModelProto:
    """z = x + y with x: [N,4] and y: ``y_dims`` (the same symbol N)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_dims))
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "two_n", [x, y], [z])
    return helper.make_model(g, opset_imports=OPSET, ir_version=8)


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    set_max_tensor_bytes(None)
    yield
    set_max_tensor_bytes(None)


# ----------------------------------------------------------------------------- too large


HUGE_MESSAGE = (r"@huge: tensor %c \(f32\[1000000,1000000\], output of constant_of_shape node %c\) needs "
                r"4,000,000,000,000 bytes, more than the limit of 4,294,967,296 bytes per tensor\. .*"
                r"EFFC_MAX_TENSOR_BYTES=<bytes> \(library: effc\.ir\.limits\.set_max_tensor_bytes\)")


def test_huge_tensor_is_refused_before_lowering():
    """Before: lowered and built; running it ended in TVM's std::bad_alloc (exit 70)."""
    module = load_model(_constant_of_shape([10**6, 10**6]))
    with pytest.raises(TensorTooLargeError, match=HUGE_MESSAGE) as err:
        lower_to_relax(module)
    assert err.value.exit_code == 2 and DEFAULT_MAX_TENSOR_BYTES == 4 << 30


def test_cli_refuses_huge_tensor_with_exit_2(tmp_path):
    path = tmp_path / "huge.onnx"
    onnx.save(_constant_of_shape([10**6, 10**6]), path)
    proc = subprocess.run(["effc", "compile", str(path), "--target=x86", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("effc: error: @huge: tensor %c (f32[1000000,1000000]")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_limit_is_raised_by_env_var_or_api(monkeypatch):
    module = load_model(_constant_of_shape([10**6, 10**6]))
    monkeypatch.setenv(ENV_VAR, "4T")
    assert max_tensor_bytes() == 4 << 40
    check_tensor_sizes(module)  # 4e12 B <= 4 TiB: allowed
    monkeypatch.setenv(ENV_VAR, "1000")
    small = load_model(_constant_of_shape([16, 16]))  # 1,024 B
    with pytest.raises(TensorTooLargeError, match=r"needs 1,024 bytes, more than the limit of 1,000 bytes"):
        check_tensor_sizes(small)
    set_max_tensor_bytes(1 << 42)  # the API overrides the variable
    check_tensor_sizes(module)
    set_max_tensor_bytes(None)
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(InputError, match=r"EFFC_MAX_TENSOR_BYTES='lots': expected a positive number of bytes"):
        max_tensor_bytes()
    with pytest.raises(InputError, match="positive number of bytes"):
        set_max_tensor_bytes(0)


@pytest.mark.parametrize("limits", [dict(max_elements=10**17), dict(max_elements=10**17, max_bytes=10**18)])
def test_folding_never_builds_a_huge_array(limits):
    """A 10^16-element ConstantOfShape (40 PB) stays unfolded even with the element limit
    raised: the byte limit skips it, and with that raised too the allocation's MemoryError
    leaves the node as it is. Before: the reference op's MemoryError (as InterpreterError)."""
    module = load_model(_constant_of_shape([10**8, 10**8]))
    before = [n.op for n in module.graph.nodes]
    changed = FoldConstants(**limits).run(module, PassContext())
    assert not changed and [n.op for n in module.graph.nodes] == before
    assert str(module.graph.outputs[0].type) == "f32[100000000,100000000]"


def test_folding_still_folds_what_fits():
    module = load_model(_constant_of_shape([2, 3]))
    assert FoldConstants(max_bytes=24).run(module, PassContext())
    nodes = list(module.graph.nodes)
    assert [n.op for n in nodes] == ["const", "const", "mul"]
    np.testing.assert_array_equal(nodes[1].output.const_value, np.zeros((2, 3), np.float32))
    module = load_model(_constant_of_shape([2, 3]))
    assert not FoldConstants(max_bytes=23).run(module, PassContext())  # 24 bytes: over
    assert [n.op for n in module.graph.nodes] == ["const", "constant_of_shape", "mul"]


# ----------------------------------------------------------------------------- symbols


def test_one_symbol_bound_to_two_sizes_is_an_input_error():
    """Before: x became [1,4], y [2,4], and the build broadcast them into [2,4]."""
    module = load_model(_two_inputs())
    with pytest.raises(InputError) as err:
        bind_input_shapes(module, {"x": (1, 4), "y": (2, 4)})
    assert str(err.value) == ("symbol 'N' is bound to two sizes: 1 by dim 0 of input 'x' (given 1,4) and 2 by dim 0 "
                              "of input 'y' (given 2,4); every dim named N must have the same size: give the same N "
                              "in each --input-shape (or input_shapes entry)")
    square = load_model(_two_inputs(y_dims=("N", "N")))
    with pytest.raises(InputError, match=r"'N' is bound to two sizes: 3 by dim 0 of input 'y' \(given 3,4\) "
                                         r"and 4 by dim 1 of input 'y'"):
        bind_input_shapes(square, {"y": (3, 4)})


def test_cli_reports_two_sizes_with_exit_2(tmp_path):
    path = tmp_path / "two_n.onnx"
    onnx.save(_two_inputs(), path)
    proc = subprocess.run(["effc", "compile", str(path), "--target=x86", "--input-shape", "x=1,4", "--input-shape",
                           "y=2,4", "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "effc: error: symbol 'N' is bound to two sizes: 1 by dim 0 of input 'x'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_bound_symbol_reaches_every_input_and_matches_onnxruntime():
    """x=3,4 alone binds N for y too (before: y stayed [N,4])."""
    model = _two_inputs()
    module = load_model(model)
    bind_input_shapes(module, {"x": (3, 4)})
    assert [str(v.type) for v in module.graph.inputs] == ["f32[3,4]", "f32[3,4]"]
    cm = effc.compile(model, target="x86", input_shapes={"x": (3, 4)})
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((3, 4)).astype(np.float32) for k in ("x", "y")}
    np.testing.assert_allclose(cm.run(feeds)["z"], ort_run(model, feeds)["z"], rtol=1e-6, atol=0)


def test_static_targets_bind_the_other_inputs_to_the_given_symbol():
    """Targets that need static shapes (here x86 --runtime=aot) fill the inputs not given:
    y takes the N that x=3,4 bound, not 1 (before: 'N is bound to two sizes: 3 ... 1')."""
    model = _two_inputs()
    cm = effc.compile(model, target="x86", runtime="aot", input_shapes={"x": (3, 4)})
    rng = np.random.default_rng(1)
    feeds = {k: rng.standard_normal((3, 4)).astype(np.float32) for k in ("x", "y")}
    np.testing.assert_allclose(cm.run(feeds)["z"], ort_run(model, feeds)["z"], rtol=1e-6, atol=0)


@settings(derandomize=True, deadline=None, max_examples=25)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))
def test_bindings_agree_or_fail(nx, ny, k):
    """Any sizes: equal ones bind both inputs, different ones name both; a K that does not
    broadcast with 4 is an InputError too (before: ShapeError, exit 1)."""
    module = load_model(_two_inputs(y_dims=("N", "K")))
    shapes = {"x": (nx, 4), "y": (ny, k)}
    if nx == ny and k in (1, 4):
        bind_input_shapes(module, shapes)
        assert [v.type.shape for v in module.graph.inputs] == [(nx, 4), (nx, k)]
    elif nx == ny:
        with pytest.raises(InputError, match=rf"--input-shape x={nx},4 y={ny},{k}: @two_n cannot take these shapes: "
                                             rf"add node %z: shapes \[{nx}, 4\] and \[{nx}, {k}\] do not broadcast"):
            bind_input_shapes(module, shapes)
    else:
        with pytest.raises(InputError, match=f"'N' is bound to two sizes: {nx} by dim 0 of input 'x'.* {ny} by dim 0"):
            bind_input_shapes(module, shapes)


def test_random_inputs_too_large_are_refused(tmp_path):
    """`effc run` without --inputs makes random inputs of the declared shapes: a declared
    [1, 1, 2**32, 8] would need 128 GiB (before: MemoryError, exit 70)."""
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "big_input",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2**32, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "big.onnx")
    proc = subprocess.run([sys.executable, "-m", "effc.cli", "run", str(tmp_path / "big.onnx")], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert ("input 'x' [1, 1, 4294967296, 8] needs 137,438,953,472 bytes of random data, more than the limit of "
            "4,294,967,296 bytes per tensor; pass real inputs with --inputs IN.npz") in proc.stderr
