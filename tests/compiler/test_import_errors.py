"""Malformed protobufs end in effc's own error (exit 2), never in an exception from numpy,
onnx or pathlib (exit 70, "internal error"): issue 9, class 6, the import side.

The reproducers below each gave exit 70 before; the hypothesis tests mutate the fields
the importer reads (tensors, external data, attributes, opsets, declared types) and
require an effc error or a successful import, and that external data never comes from
outside the model's folder."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper

from effc.cli import main
from effc.ir.errors import EffcError
from effc.ir.interpreter import run_module
from effc.onnx_import import import_onnx


def _graph_model(nodes, inits=(), out_shape=(4,), opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _const_model(value: TensorProto) -> onnx.ModelProto:
    return _graph_model([helper.make_node("Constant", [], ["c"], value=value, name="k"),
                         helper.make_node("Add", ["x", "c"], ["y"])])


def _external(name: str, dims: list[int], **entries: str) -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    for k, v in {"location": "w.bin", **entries}.items():
        t.external_data.add(key=k, value=v)
    return t


def _constant_float_holding_a_string() -> onnx.ModelProto:
    node = helper.make_node("Constant", [], ["c"], name="k")
    node.attribute.append(AttributeProto(name="value_float", type=AttributeProto.STRING, s=b"s"))
    return _graph_model([node, helper.make_node("Add", ["x", "c"], ["y"])])


def _symbolic_relu(out_dim: int) -> onnx.ModelProto:
    """Relu of an ``[N]`` input whose output is declared ``[out_dim]``: nothing to compare
    the declared dim with, so it is taken as the output's dim."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [out_dim])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _f32(dims: list[int], **data) -> TensorProto:
    return TensorProto(name="c", data_type=TensorProto.FLOAT, dims=dims, **data)


def _add_initializer(t: TensorProto) -> onnx.ModelProto:
    return _graph_model([helper.make_node("Add", ["x", t.name], ["y"])], [t])


REPRODUCERS = {
    # name: (model, fragment of effc's message); each was exit 70 before
    "Constant dims 2**32 x 2**32": (_const_model(_f32([2**32, 2**32], raw_data=b"")), "more than any machine can address"),
    "Constant dims 2**62": (_const_model(_f32([2**62], raw_data=b"")), "more than any machine can address"),
    "Constant with fewer values than its shape": (_const_model(_f32([4], float_data=[1.0, 2.0])),
                                                  "needs 4 values in float_data, it holds 2"),
    "INT4 Constant without data": (_const_model(TensorProto(name="c", data_type=TensorProto.INT4, dims=[4])), "needs 2 values in int32_data, it holds 0"),
    "external offset -64": (_add_initializer(_external("w", [4], offset="-64")),
                            "offset '-64' is not a non-negative whole number"),
    "external offset abc": (_add_initializer(_external("w", [4], offset="abc")),
                            "offset 'abc' is not a non-negative whole number"),
    "external location with a NUL byte": (_const_model(_external("c", [4], location="w.bin\0x")),
                                          "not found in the model's folder"),
    "declared output dim -1": (_symbolic_relu(out_dim=-1), "declares a negative dimension -1"),
    "Constant value_float holding a string": (_constant_float_holding_a_string(), "must be FLOAT, is STRING"),
}


@pytest.mark.parametrize("case", list(REPRODUCERS))
def test_reproducers_exit_2_with_effcs_message(tmp_path, capsys, case):
    model, fragment = REPRODUCERS[case]
    np.arange(4, dtype=np.float32).tofile(tmp_path / "w.bin")
    p = tmp_path / "m.onnx"
    onnx.save(model, str(p))
    assert main(["info", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("effc: error: ") and "internal error" not in err, err
    assert fragment in err, err


# ----------------------------------------------------------------------------- structured mutations

BIG = [0, 1, 3, -1, -64, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]
DTYPES = [0, TensorProto.FLOAT, TensorProto.INT64, TensorProto.STRING, TensorProto.INT4, TensorProto.FLOAT8E4M3FN,
          TensorProto.BFLOAT16, TensorProto.BOOL, 30, 99]
LOCATIONS = ["w.bin", "", "../w.bin", "/etc/hostname", "missing.bin", ".", "sub/", "w.bin\0x", "C:w.bin", "\\\\srv\\x"]
COUNTS = ["0", "4", "16", "-1", "abc", "", "+4", " 4", str(2**70)]


def _base_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "w"], ["a"], name="add"),
             helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.FLOAT, [4], [0.5] * 4),
                              name="k"),
             helper.make_node("Mul", ["a", "c"], ["b"], name="mul"),
             helper.make_node("Reshape", ["b", "s"], ["r"], name="reshape"),
             helper.make_node("LeakyRelu", ["r"], ["y"], alpha=0.1, name="leaky")]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [4], [1, 2, 3, 4]),
             helper.make_tensor("s", TensorProto.INT64, [2], [2, 2])]
    return _graph_model(nodes, inits, out_shape=(2, 2))


def _tensors(m: onnx.ModelProto) -> list[TensorProto]:
    return list(m.graph.initializer) + [a.t for n in m.graph.node for a in n.attribute if a.HasField("t")]


def _mutate_tensor(data, t: TensorProto) -> None:
    k = data.draw(st.sampled_from(["dim", "add dim", "dtype", "raw", "external", "floats", "ints", "no dims"]))
    if k == "dim" and t.dims:
        t.dims[data.draw(st.integers(0, len(t.dims) - 1))] = data.draw(st.sampled_from(BIG))
    elif k == "add dim":
        t.dims.append(data.draw(st.sampled_from(BIG)))
    elif k == "dtype":
        t.data_type = data.draw(st.sampled_from(DTYPES))
    elif k == "raw":
        t.raw_data = data.draw(st.binary(max_size=20))
    elif k == "external":
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=data.draw(st.sampled_from(LOCATIONS)))
        for key in data.draw(st.sets(st.sampled_from(["offset", "length"]))):
            t.external_data.add(key=key, value=data.draw(st.sampled_from(COUNTS)))
        if data.draw(st.booleans()):
            for f in ("raw_data", "float_data", "int64_data"):
                t.ClearField(f)
    elif k == "floats":
        t.float_data.extend([1.0] * data.draw(st.integers(1, 3)))
    elif k == "ints":
        t.int64_data.extend([2**62] * data.draw(st.integers(1, 3)))
    else:
        t.ClearField("dims")


def _mutate_attribute(data, n: onnx.NodeProto) -> None:
    a = n.attribute.add(name="alpha") if not n.attribute else data.draw(st.sampled_from(list(n.attribute)))
    k = data.draw(st.sampled_from(["type", "f", "i", "s", "ints", "floats", "t", "g", "name", "ref"]))
    if k == "type":
        a.type = data.draw(st.integers(0, 14))
    elif k == "f":
        a.f = data.draw(st.sampled_from([0.0, float("nan"), float("inf"), -1e38]))
    elif k == "i":
        a.i = data.draw(st.sampled_from(BIG))
    elif k == "s":
        a.s = data.draw(st.sampled_from([b"", b"\xff\xfe", b"NOTSET", b"x" * 100]))
    elif k == "ints":
        a.ints.extend(data.draw(st.lists(st.sampled_from(BIG), max_size=3)))
    elif k == "floats":
        a.floats.extend([1.0] * data.draw(st.integers(0, 2)))
    elif k == "t":
        a.t.CopyFrom(helper.make_tensor("q", TensorProto.FLOAT, [1], [1.0]))
    elif k == "g":
        a.g.CopyFrom(helper.make_graph([], "sub", [], []))
    elif k == "name":
        a.name = data.draw(st.sampled_from(["", "alpha", "value", "axes", "to", "value_ints", "sparse_value"]))
    else:
        a.ref_attr_name = "outer"


def _mutate_model(data, m: onnx.ModelProto) -> None:
    g = m.graph
    k = data.draw(st.sampled_from(["tensor", "attribute", "opset", "declared", "op"]))
    if k == "tensor":
        _mutate_tensor(data, data.draw(st.sampled_from(_tensors(m))))
    elif k == "attribute":
        _mutate_attribute(data, data.draw(st.sampled_from(list(g.node))))
    elif k == "opset":
        del m.opset_import[:]
        for domain, version in data.draw(st.lists(st.tuples(st.sampled_from(["", "ai.onnx", "com.x"]),
                                                            st.sampled_from([-1, 0, 1, 7, 17, 28, 29, 2**40])), max_size=2)):
            m.opset_import.add(domain=domain, version=version)
        m.ir_version = data.draw(st.sampled_from([0, 1, 2, 3, 8, 99]))
    elif k == "declared":
        tt = data.draw(st.sampled_from(list(g.input) + list(g.output))).type.tensor_type
        what = data.draw(st.sampled_from(["elem", "dim", "sym", "no shape"]))
        if what == "elem":
            tt.elem_type = data.draw(st.sampled_from(DTYPES))
        elif what == "dim" and tt.shape.dim:
            tt.shape.dim[data.draw(st.integers(0, len(tt.shape.dim) - 1))].dim_value = data.draw(st.sampled_from(BIG))
        elif what == "sym":
            tt.shape.dim.add().dim_param = data.draw(st.sampled_from(["", "N", "?"]))
        else:
            tt.ClearField("shape")
    else:
        n = data.draw(st.sampled_from(list(g.node)))
        n.op_type = data.draw(st.sampled_from(["Constant", "ConstantOfShape", "Cast", "Reshape", "Expand", "Range"]))


_BASE = _base_model()


@settings(derandomize=True, deadline=None, max_examples=200,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_protobufs_import_or_raise_effc_errors(tmp_path_factory, data):
    """Before (same fixed corpus): ValueErrors from numpy's reshape, int() of an offset,
    pathlib's NUL-byte check, onnx's external-data loader and TensorType escaped."""
    folder = tmp_path_factory.mktemp("mut")
    np.arange(16, dtype=np.float32).tofile(folder / "w.bin")
    m = copy.deepcopy(_BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate_model(data, m)
    p = folder / "m.onnx"
    p.write_bytes(m.SerializeToString())
    try:
        import_onnx(p)
    except EffcError:
        pass


# ----------------------------------------------------------------------------- external data stays inside

SECRET = 7777.0


def _secret_layout(root: Path) -> Path:
    """root/secret.bin (outside) and root/model/ with w.bin (inside, all 1.0), a link out and
    a link in."""
    np.full(64, SECRET, np.float32).tofile(root / "secret.bin")
    model_dir = root / "model"
    (model_dir / "sub").mkdir(parents=True)
    np.ones(64, np.float32).tofile(model_dir / "w.bin")
    (model_dir / "out.bin").symlink_to(root / "secret.bin")
    (model_dir / "in.bin").symlink_to(model_dir / "w.bin")
    (model_dir / "sub" / "up").symlink_to(root)
    return model_dir


ESCAPING = ["w.bin", "in.bin", "out.bin", "../secret.bin", "sub/../../secret.bin", "sub/up/secret.bin",
            "secret.bin", "./w.bin", "sub/../w.bin", "model/../../secret.bin"]


@settings(derandomize=True, deadline=None, max_examples=60,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_external_data_never_comes_from_outside_the_folder(tmp_path_factory, monkeypatch, data):
    """Whatever the location, offset and length, and whichever field carries the tensor,
    the import fails with an effc error or every constant it made holds only the model
    folder's data (1.0), never the secret's (7777.0) beside the folder or in the working
    directory. Before: a Constant's location was read relative to the working directory."""
    root = tmp_path_factory.mktemp("ext")
    model_dir = _secret_layout(root)
    monkeypatch.chdir(root)
    loc = data.draw(st.sampled_from(ESCAPING))
    n = data.draw(st.sampled_from([1, 4, 16]))
    entries = {k: data.draw(st.sampled_from(["0", "4", "64", "abc", str(n * 4)]))
               for k in data.draw(st.sets(st.sampled_from(["offset", "length"])))}
    t = _external("w", [n], location=loc, **entries)
    carrier = data.draw(st.sampled_from(["initializer", "Constant", "ConstantOfShape"]))
    if carrier == "initializer":
        m = _graph_model([helper.make_node("Identity", ["w"], ["y"])], [t], out_shape=(n,))
    elif carrier == "Constant":
        m = _graph_model([helper.make_node("Constant", [], ["y"], value=t)], out_shape=(n,))
    else:
        t.dims[:] = [1]
        shape = helper.make_tensor("s", TensorProto.INT64, [1], [n])
        m = _graph_model([helper.make_node("Constant", [], ["s"], value=shape),
                          helper.make_node("ConstantOfShape", ["s"], ["y"], value=t)], out_shape=(n,))
    p = model_dir / "m.onnx"
    onnx.save(m, str(p))
    try:
        module = import_onnx(p)
        y = run_module(module, {"x": np.zeros(4, np.float32)})["y"]
    except EffcError:
        return
    assert not np.any(y == SECRET), f"{carrier} at {loc!r} {entries}: read the secret"
    np.testing.assert_array_equal(y, np.ones(n, np.float32))
