"""Malformed models and IR text must end in effc's own errors (clear message, exit 2),
never another exception."""
from __future__ import annotations

import copy
import os
import random
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from effc.ir.errors import EffcError, ModelError, UnsupportedOpError
from effc.ir.interpreter import run_module
from effc.ir.printer import print_module
from effc.models import load_model
from effc.onnx_import import import_onnx
from effc.tensors import random_inputs
from tests.fixtures import REPO

DIGITS = REPO / "examples" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits() -> onnx.ModelProto:
    return onnx.load(str(DIGITS))


def _expect(model: onnx.ModelProto, err: type, *fragments: str) -> str:
    with pytest.raises(err) as info:
        import_onnx(model)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in: {msg}"
    return msg


# ----------------------------------------------------------------------------- seed corpus


def test_truncated_file(tmp_path):
    p = tmp_path / "t.onnx"
    p.write_bytes(DIGITS.read_bytes()[:777])
    with pytest.raises(ModelError, match="truncated|not a readable ONNX"):
        import_onnx(p)


def test_not_protobuf(tmp_path):
    p = tmp_path / "t.onnx"
    p.write_text("graph @x() { return }\n")
    with pytest.raises(ModelError):
        import_onnx(p)


def test_undefined_value(digits):
    m = copy.deepcopy(digits)
    m.graph.node[2].input[0] = "nowhere"
    _expect(m, ModelError, "undefined value 'nowhere'", m.graph.node[2].name)


def test_duplicate_name(digits):
    m = copy.deepcopy(digits)
    m.graph.node[3].output[0] = m.graph.node[1].output[0]
    _expect(m, ModelError, "defined twice", m.graph.node[1].output[0])


def test_cycle(digits):
    m = copy.deepcopy(digits)
    first_conv = m.graph.node[0]
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    first_conv.input[0] = relu.output[0]
    _expect(m, ModelError, "cycle")


def test_wrong_attribute_type(digits):
    m = copy.deepcopy(digits)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    for a in conv.attribute:
        if a.name == "strides":
            conv.attribute.remove(a)
            break
    conv.attribute.append(helper.make_attribute("strides", 1.5))
    _expect(m, ModelError, "strides", conv.name, "must be a list")


def test_unknown_attribute(digits):
    m = copy.deepcopy(digits)
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    relu.attribute.append(helper.make_attribute("wobble", 3))
    _expect(m, ModelError, "unknown attribute 'wobble'", relu.name)


def test_contradicting_shapes(digits):
    m = copy.deepcopy(digits)
    relu = next(n for n in m.graph.node if n.op_type == "Relu")
    m.graph.value_info.append(helper.make_tensor_value_info(relu.output[0], onnx.TensorProto.FLOAT, ["N", 99, 8, 8]))
    _expect(m, ModelError, "declares shape", relu.name)


def test_shapes_that_do_not_fit_the_op(digits):
    m = copy.deepcopy(digits)
    w = next(t for t in m.graph.initializer if len(t.dims) == 4)
    w.dims[1] = 7  # conv weight now expects 7 input channels
    w.raw_data = np.zeros([d for d in w.dims], np.float32).tobytes()
    _expect(m, ModelError, "Conv")


def test_all_unsupported_ops_listed_in_one_error(digits):
    m = copy.deepcopy(digits)
    relus = [n for n in m.graph.node if n.op_type == "Relu"]
    relus[0].op_type = "FancyRelu"
    relus[2].op_type = "FancyRelu"
    relus[1].domain = "com.example"
    msg = _expect(m, UnsupportedOpError, "FancyRelu", "com.example::Relu", relus[0].name, relus[2].name)
    assert msg.count("FancyRelu (node") == 2


def test_external_data_escaping_the_folder_is_refused(tmp_path):
    outside = tmp_path / "secret.bin"
    np.arange(64, dtype=np.float32).tofile(outside)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    w = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[64])
    w.data_location = onnx.TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [64])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [64])], [w])
    p = model_dir / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    with pytest.raises(ModelError, match="escapes the model's folder"):
        import_onnx(p)


def test_external_data_over_2gb_loads_lazily(tmp_path):
    """A 2.4 GB weight in a sparse external file imports without being read, and runs."""
    rows, cols = 600_000, 1024  # 2.46e9 bytes of float32
    data = tmp_path / "weights.bin"
    with open(data, "wb") as f:
        f.truncate(rows * cols * 4)
        f.seek(7 * cols * 4)
        f.write(np.arange(cols, dtype=np.float32).tobytes())
    w = onnx.TensorProto(name="table", data_type=onnx.TensorProto.FLOAT, dims=[rows, cols])
    w.data_location = onnx.TensorProto.EXTERNAL
    w.external_data.add(key="location", value="weights.bin")
    g = helper.make_graph([helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)], "g",
                          [helper.make_tensor_value_info("idx", onnx.TensorProto.INT64, [2])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, cols])], [w])
    p = tmp_path / "big.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    m = import_onnx(p)
    y = run_module(m, {"idx": np.array([7, 3], np.int64)})["y"]
    np.testing.assert_array_equal(y[0], np.arange(cols, dtype=np.float32))
    np.testing.assert_array_equal(y[1], np.zeros(cols, np.float32))


def test_cli_bad_input_exit_code_and_no_traceback(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"\x08\x07garbage" * 10)
    r = subprocess.run([sys.executable, "-m", "effc.cli", "info", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "effc: error:" in r.stderr and "bad.onnx" in r.stderr
    r = subprocess.run([sys.executable, "-m", "effc.cli", "--debug", "info", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" in r.stderr


# ----------------------------------------------------------------------------- random mutation


def _import_and_run(model_or_path) -> None:
    """Either succeeds or raises an EffcError; any other exception fails the test."""
    try:
        m = load_model(model_or_path)
        run_module(m, random_inputs(m.graph.inputs, 0))
    except EffcError:
        pass


FUZZ = int(os.environ.get("EFFC_FUZZ", "0"))


@settings(max_examples=FUZZ or 120, deadline=None, derandomize=not FUZZ,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_byte_mutations_of_a_model(tmp_path_factory, data):
    """A fixed corpus (``derandomize``), so CI is reproducible; ``EFFC_FUZZ=N`` in the
    environment draws N fresh random examples instead."""
    raw = bytearray(DIGITS.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(raw) // 2, len(raw)))
    p = tmp_path_factory.mktemp("mut") / "m.onnx"
    p.write_bytes(bytes(raw[:cut]))
    _import_and_run(p)


@pytest.mark.parametrize("field, word", [("producer_name", b"pytorch"), ("graph", b"main_graph"),
                                         ("output", b"/features/features.0/Conv_output_0")])
def test_text_that_is_not_utf8_names_the_field(tmp_path, field, word):
    """protobuf hands back a string field holding invalid UTF-8 as bytes; found by the byte
    mutations above (a TypeError before)."""
    data = DIGITS.read_bytes()
    i = data.find(word)
    p = tmp_path / "m.onnx"
    p.write_bytes(data[:i] + b"\x80" + data[i + 1:])
    with pytest.raises(ModelError, match=rf"{field}.* is not valid UTF-8 text"):
        load_model(p)


def _mutate_proto(m: onnx.ModelProto, rng: random.Random) -> None:
    g = m.graph
    nodes = list(g.node)
    n = rng.choice(nodes)
    kind = rng.randrange(10)
    if kind == 0 and n.input:
        n.input[rng.randrange(len(n.input))] = rng.choice([o for x in nodes for o in x.output] + ["", "zz"])
    elif kind == 1:
        n.op_type = rng.choice(["Relu", "Conv", "Gemm", "Add", "Reshape", "Softmax", "Flatten", "MaxPool", "Slice"])
    elif kind == 2 and n.attribute:
        a = rng.choice(list(n.attribute))
        if a.type == onnx.AttributeProto.INTS and a.ints:
            a.ints[rng.randrange(len(a.ints))] = rng.choice([-3, -1, 0, 1, 2, 7, 1 << 40])
        elif a.type == onnx.AttributeProto.INT:
            a.i = rng.choice([-2, 0, 1, 5, 1 << 40])
        elif a.type == onnx.AttributeProto.FLOAT:
            a.f = rng.choice([0.0, -1.0, float("nan"), 1e30])
    elif kind == 3 and n.attribute:
        n.attribute.remove(rng.choice(list(n.attribute)))
    elif kind == 4 and n.input:
        del n.input[rng.randrange(len(n.input))]
    elif kind == 5:
        n.input.append(rng.choice([o for x in nodes for o in x.output]))
    elif kind == 6 and g.initializer:
        t = rng.choice(list(g.initializer))
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 3, 64])
    elif kind == 7:
        vi = g.input[0]
        vi.type.tensor_type.elem_type = rng.choice([1, 6, 7, 10, 11, 8, 16, 17])
    elif kind == 8:
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            d.dim_value = rng.choice([0, 1, 2, 9])
    else:
        n.output[0] = rng.choice([x.output[0] for x in nodes])


def test_proto_mutations_of_real_models(digits):
    rng = random.Random(1234)
    mobilenet = onnx.load(str(REPO / "examples" / "mobilenet_tiny.onnx"))
    for i in range(250):
        m = copy.deepcopy(digits if i % 3 else mobilenet)
        for _ in range(rng.randint(1, 3)):
            _mutate_proto(m, rng)
        _import_and_run(m)


def test_ir_text_mutations(tmp_path):
    module = load_model(DIGITS)
    text = print_module(module)
    lines = text.splitlines(keepends=True)
    rng = random.Random(99)
    from effc.ir.printer import save_module

    save_module(module, tmp_path / "m.effc")
    for _ in range(200):
        t = list(lines)
        k = rng.randrange(4)
        i = rng.randrange(len(t))
        if k == 0:
            del t[i]
        elif k == 1:
            j = rng.randrange(len(t))
            t[i], t[j] = t[j], t[i]
        elif k == 2:
            s = t[i]
            pos = rng.randrange(len(s))
            t[i] = s[:pos] + rng.choice("%@(){}[],:=0123456789xNf_ \"") + s[pos + 1:]
        else:
            s = t[i]
            tokens = ["f32", "i64", "[1, 1]", "relu", "conv", "%x", "N", "?", "-1", "0"]
            pos = rng.randrange(len(s))
            t[i] = s[:pos] + rng.choice(tokens) + s[pos:]
        p = tmp_path / "m.effc"
        p.write_text("".join(t))
        _import_and_run(p)
