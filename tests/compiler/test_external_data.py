"""External data is read only from inside the model's folder, for every field that can
carry a tensor, and its offsets and lengths are checked before anything is read.

The threat (issue 9, class 3): a model that names a file outside its folder (``..``, an
absolute path, a symlink, or a bare name that used to be resolved against the current
directory) must not get that file's bytes into its outputs, its ``.effc`` dump or a
compiled artifact."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from effc.ir.errors import ModelError
from effc.ir.interpreter import run_module
from effc.models import load_model
from effc.onnx_import import import_onnx
from tests.fixtures import ort_run

SECRET = np.array([1111.0, 2222.0, 3333.0, 4444.0], np.float32)
DATA = np.array([0.5, -1.5, 2.5, -3.5], np.float32)


def _external(name: str, location: str, dims: list[int], **entries: str) -> TensorProto:
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)
    return t


def _model(nodes, inits=(), sparse=(), out_shape=(4,)) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))], list(inits))
    g.sparse_initializer.extend(sparse)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _add_initializer(t: TensorProto) -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", t.name], ["y"])], [t])


def _add_constant(t: TensorProto) -> onnx.ModelProto:
    return _model([helper.make_node("Constant", [], ["c"], value=t, name="the_const"),
                   helper.make_node("Add", ["x", "c"], ["y"])])


def _constant_of_shape(t: TensorProto) -> onnx.ModelProto:
    shape = helper.make_tensor("s", TensorProto.INT64, [1], [4])
    return _model([helper.make_node("Constant", [], ["s"], value=shape),
                   helper.make_node("ConstantOfShape", ["s"], ["c"], value=t, name="fill"),
                   helper.make_node("Add", ["x", "c"], ["y"])])


def _sparse_initializer(t: TensorProto) -> onnx.ModelProto:
    idx = helper.make_tensor("idx", TensorProto.INT64, [t.dims[0]], list(range(t.dims[0])))
    sp = helper.make_sparse_tensor(t, idx, [4])
    return _model([helper.make_node("Add", ["x", t.name], ["y"])], sparse=[sp])


def _sparse_constant(t: TensorProto) -> onnx.ModelProto:
    idx = helper.make_tensor("idx", TensorProto.INT64, [t.dims[0]], list(range(t.dims[0])))
    node = helper.make_node("Constant", [], ["c"], name="the_const")
    node.attribute.append(helper.make_attribute("sparse_value", helper.make_sparse_tensor(t, idx, [4])))
    return _model([node, helper.make_node("Add", ["x", "c"], ["y"])])


def _tensors_attribute(t: TensorProto) -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    node.attribute.append(helper.make_attribute("extra", [t]))
    return _model([node])


def _subgraph(t: TensorProto) -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node("Identity", [t.name], ["a"])], "then", [],
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])], [t])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "else", [],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    return _model([helper.make_node("Constant", [], ["k"], value=cond),
                   helper.make_node("If", ["k"], ["y"], then_branch=then, else_branch=other, name="branch")])


CARRIERS = {"initializer": _add_initializer, "Constant value": _add_constant, "ConstantOfShape value": _constant_of_shape,
            "sparse_initializer": _sparse_initializer, "Constant sparse_value": _sparse_constant,
            "TENSORS attribute": _tensors_attribute, "graph attribute": _subgraph}


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "m.onnx"
    onnx.save(model, str(p))
    return p


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """A secret file in the working directory and one beside the model's folder; the
    model's folder holds only the model (and whatever a test adds)."""
    work = tmp_path / "work"
    work.mkdir()
    SECRET.tofile(work / "secret.bin")
    SECRET.tofile(tmp_path / "secret.bin")
    monkeypatch.chdir(work)
    return tmp_path


def _escapes(layout: Path) -> dict[str, str]:
    """Locations that name a file outside ``layout/model``; the symlink is made here."""
    model_dir = layout / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "link.bin").symlink_to(layout / "secret.bin")
    (model_dir / "sub").mkdir()
    return {"parent": "../secret.bin", "absolute": str(layout / "secret.bin"), "symlink": "link.bin",
            "nested parent": "sub/../../secret.bin", "current directory": "secret.bin"}


@pytest.mark.parametrize("carrier", list(CARRIERS))
def test_every_tensor_field_refuses_data_outside_the_models_folder(layout, carrier):
    """Before: a Constant's or ConstantOfShape's value was read relative to the current
    directory (the secret came out in the output); sparse tensors, TENSORS attributes and
    subgraphs were never checked; and no message named the model."""
    for kind, loc in _escapes(layout).items():
        p = _save(CARRIERS[carrier](_external("w", loc, [4])), layout / "model")
        with pytest.raises(ModelError) as info:
            import_onnx(p)
        msg = str(info.value)
        assert f"'{loc}'" in msg and "tensor 'w'" in msg and str(p) in msg, f"{carrier}, {kind}: {msg}"
        want = "not found in the model's folder" if kind == "current directory" else "escapes the model's folder"
        assert want in msg, f"{carrier}, {kind}: {msg}"


def test_dump_does_not_copy_a_file_from_the_working_directory(layout):
    """The filed scenario end to end: ``effc dump`` run where a secret lies. Before: exit 0
    and the secret's values in the written .npz."""
    p = _save(_add_constant(_external("w", "secret.bin", [4])), layout / "model")
    out = layout / "work" / "dump.effc"
    r = subprocess.run([sys.executable, "-m", "effc.cli", "dump", str(p), "-o", str(out)],
                       capture_output=True, text=True, cwd=layout / "work")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "not found in the model's folder" in r.stderr
    assert not out.exists() and not out.with_suffix(".npz").exists()


def test_data_inside_the_folder_matches_onnxruntime(layout):
    """External data in the model's folder (in a subfolder, or through a symlink that stays
    inside, at an offset) gives onnxruntime's result, for an initializer, a Constant and a
    ConstantOfShape. Before: the Constant and ConstantOfShape forms looked in the working
    directory and failed with a FileNotFoundError (exit 70)."""
    model_dir = layout / "model"
    (model_dir / "data").mkdir(parents=True)
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    for carrier in ("initializer", "Constant value", "ConstantOfShape value"):
        values = DATA[:1] if carrier == "ConstantOfShape value" else DATA
        blob = np.concatenate([np.full(16, 7.0, np.float32), values])  # the tensor starts at byte 64
        blob.tofile(model_dir / "data" / "w.bin")
        (model_dir / "alias.bin").unlink(missing_ok=True)
        (model_dir / "alias.bin").symlink_to(model_dir / "data" / "w.bin")
        want = None
        for loc in ("data/w.bin", "alias.bin"):  # onnxruntime refuses every symlink in an attribute
            t = _external("w", loc, [len(values)], offset="64", length=str(values.nbytes))
            p = _save(CARRIERS[carrier](t), model_dir)
            want = ort_run(p, {"x": x})["y"] if want is None else want
            got = run_module(import_onnx(p), {"x": x})["y"]
            np.testing.assert_array_equal(got, want, err_msg=f"{carrier} at {loc}")  # exact: one float add
            np.testing.assert_array_equal(got, x + values, err_msg=f"{carrier} at {loc}")


BAD_ENTRIES = {
    "negative offset": ({"offset": "-64"}, "offset '-64' is not a non-negative whole number"),
    "word offset": ({"offset": "abc"}, "offset 'abc' is not a non-negative whole number"),
    "signed offset": ({"offset": "+4"}, "offset '+4' is not"),
    "underscore length": ({"length": "1_6"}, "length '1_6' is not"),
    "word length": ({"length": "abc"}, "length 'abc' is not"),
    "offset past the end": ({"offset": "8"}, "needs bytes 8 to 24 of 'w.bin', but the file has 16"),
    "huge offset": ({"offset": str(2**64)}, "but the file has 16"),
    "length too long": ({"length": "32"}, "length 32 does not match its shape [4] of f32 (16 bytes)"),
    "length too short": ({"length": "8"}, "length 8 does not match"),
}


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
@pytest.mark.parametrize("carrier", ["initializer", "Constant value"])
def test_bad_offsets_and_lengths_are_refused_at_import(tmp_path, case, carrier):
    """Before: '-64' imported and failed later in numpy's memmap; 'abc', '+4' and '1_6'
    escaped as ValueError (exit 70); a length longer than the tensor was accepted."""
    DATA.tofile(tmp_path / "w.bin")
    entries, fragment = BAD_ENTRIES[case]
    p = _save(CARRIERS[carrier](_external("w", "w.bin", [4], **entries)), tmp_path)
    with pytest.raises(ModelError, match="tensor 'w'") as info:
        import_onnx(p)
    assert fragment in str(info.value)


@pytest.mark.parametrize("carrier", ["initializer", "Constant value"])
def test_shape_whose_size_overflows_int64_is_refused(tmp_path, carrier):
    """2**32 x 2**32 floats: np.prod in int64 wrapped to 0 bytes, so before the size check
    passed and the import succeeded (failing later, or exit 70 for a Constant)."""
    DATA.tofile(tmp_path / "w.bin")
    p = _save(CARRIERS[carrier](_external("w", "w.bin", [2**32, 2**32])), tmp_path)
    with pytest.raises(ModelError, match=r"more than any machine can address"):
        import_onnx(p)


def test_in_memory_model_with_external_data_says_to_pass_the_path(tmp_path, monkeypatch):
    """Before: a Constant's external data in a ModelProto was read from the working
    directory; bytes were not accepted at all (TypeError)."""
    DATA.tofile(tmp_path / "w.bin")
    monkeypatch.chdir(tmp_path)
    model = _add_constant(_external("w", "w.bin", [4]))
    for given in (model, model.SerializeToString()):
        with pytest.raises(ModelError, match=r"given in memory .*pass the model's path"):
            load_model(given)


def test_in_memory_model_without_external_data_loads_from_bytes(tmp_path):
    model = _add_constant(helper.make_tensor("w", TensorProto.FLOAT, [4], DATA))
    x = np.ones(4, np.float32)
    got = run_module(load_model(model.SerializeToString()), {"x": x})["y"]
    np.testing.assert_array_equal(got, x + DATA)
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model(b"\x0a\xff\xff\xff")


def test_data_swapped_for_a_link_after_import_is_not_read(tmp_path):
    """The file is checked again when a lazily loaded weight is read. Before: a symlink
    put in place after import was followed out of the folder."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    big = np.arange(64, dtype=np.float32)
    big.tofile(model_dir / "w.bin")
    np.full(64, 9999.0, np.float32).tofile(tmp_path / "secret.bin")
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
                          [_external("w", "w.bin", [64])])
    p = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), model_dir)
    module = import_onnx(p)
    os.remove(model_dir / "w.bin")
    (model_dir / "w.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ModelError, match="escapes the model's folder"):
        run_module(module, {"x": np.zeros(64, np.float32)})
