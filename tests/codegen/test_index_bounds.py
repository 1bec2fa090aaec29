"""Data-dependent indices (Gather, GatherElements, ScatterElements) are checked: an index
outside its axis ends in IndexOutOfRangeError naming the node and the index, on every
runtime (Relax VM, AOT C on x86, Cortex-M under qemu, CUDA), never in a read or write
outside a tensor; constant out-of-range indices are refused at compile time. In-range
indices, negative ones included, give onnxruntime's results."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import effc
from effc.codegen.cuda import gpu_present
from effc.ir.errors import IndexOutOfRangeError, InputError
from tests.fixtures import ort_run

needs_gpu = pytest.mark.skipif(not gpu_present(), reason="runs kernels on an NVIDIA GPU; this machine has none "
                               "(CI never does): run the suite on a GPU machine to check GPU outputs")

V, D = 50, 8
TABLE = np.random.default_rng(0).standard_normal((V, D)).astype(np.float32)


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _embedding(dtype=TensorProto.INT64) -> onnx.ModelProto:
    """A MiniLM-style embedding lookup: token ids -> rows of a table, then a Relu."""
    return _model([helper.make_node("Gather", ["table", "ids"], ["y"], name="embed"),
                   helper.make_node("Relu", ["y"], ["z"], name="act")],
                  [helper.make_tensor_value_info("ids", dtype, [1, 6])],
                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 6, D])],
                  [numpy_helper.from_array(TABLE, "table")])


def _elements(op: str) -> onnx.ModelProto:
    """GatherElements / ScatterElements along axis 1 of a [3, 4] input, indices [3, 2]."""
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
           helper.make_tensor_value_info("i", TensorProto.INT64, [3, 2])]
    names = ["x", "i"]
    if op == "ScatterElements":
        ins.append(helper.make_tensor_value_info("u", TensorProto.FLOAT, [3, 2]))
        names.append("u")
    shape = [3, 2] if op == "GatherElements" else [3, 4]
    return _model([helper.make_node(op, names, ["y"], name="pick", axis=1)], ins,
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])


def _ids(bad) -> np.ndarray:
    return np.array([[0, 1, bad, 2, 3, 4]], dtype=np.int64)


@pytest.fixture(scope="module")
def vm_embedding():
    return effc.compile(_embedding(), target="x86")


@pytest.mark.parametrize("bad", [V, -V - 1, 40000, -(2**62)])
def test_vm_gather_out_of_range_names_node_and_index(vm_embedding, bad):
    with pytest.raises(IndexOutOfRangeError) as info:
        vm_embedding.run({"ids": _ids(bad)})
    assert str(info.value).startswith(f"gather node 'embed': index {bad} is out of range for an axis of length {V} "
                                      f"(valid: -{V}..{V - 1})")
    assert info.value.index == bad and isinstance(info.value, InputError)


def test_vm_gather_in_range_matches_onnxruntime(vm_embedding):
    ids = np.array([[0, 1, -1, -V, V - 1, 7]], dtype=np.int64)
    np.testing.assert_array_equal(vm_embedding.run({"ids": ids})["z"], ort_run(_embedding(), {"ids": ids})["z"])


def test_vm_int32_ids_are_checked_without_overflow():
    """int32 ids are widened before the wrap: -2**31 is reported, not wrapped into range."""
    cm = effc.compile(_embedding(TensorProto.INT32), target="x86")
    with pytest.raises(IndexOutOfRangeError, match=r"index -2147483648 is out of range"):
        cm.run({"ids": _ids(-(2**31)).astype(np.int32)})


@pytest.mark.parametrize("op", ["GatherElements", "ScatterElements"])
def test_vm_element_ops_check_indices(op):
    model = _elements(op)
    cm = effc.compile(model, target="x86")
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32),
             "i": np.array([[0, -1], [3, -4], [2, 1]], dtype=np.int64)}
    if op == "ScatterElements":
        feeds["u"] = rng.standard_normal((3, 2)).astype(np.float32)
    np.testing.assert_array_equal(cm.run(feeds)["y"], ort_run(model, feeds)["y"])
    feeds["i"] = np.array([[0, 1], [2, 4], [-5, 1]], dtype=np.int64)
    with pytest.raises(IndexOutOfRangeError, match=r"node 'pick': index 4 is out of range for an axis of length 4"):
        cm.run(feeds)


@pytest.mark.parametrize("op", ["GatherElements", "ScatterElements"])
def test_element_ops_refuse_indices_longer_than_data(op):
    """Off the indexed axis the indices address data by position: [5, 2] indices over
    [3, 4] data would read (write) rows 3 and 4. onnxruntime refuses it at run time."""
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
           helper.make_tensor_value_info("i", TensorProto.INT64, [5, 2])]
    if op == "ScatterElements":
        ins.append(helper.make_tensor_value_info("u", TensorProto.FLOAT, [5, 2]))
    model = _model([helper.make_node(op, [v.name for v in ins], ["y"], name="pick", axis=1)], ins,
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(InputError, match=r"node 'pick' \(" + op + r"\): indices \[5, 2\] are longer than data "
                                         r"\[3, 4\] along axis 0"):
        effc.compile(model, target="x86")


@settings(derandomize=True, deadline=None, max_examples=25)
@given(st.lists(st.integers(-2 * V, 2 * V), min_size=6, max_size=6))
def test_vm_gather_agrees_with_onnxruntime(vm_embedding, ids):
    """Any ids: the same rows as onnxruntime, or an error where onnxruntime refuses too."""
    feeds = {"ids": np.array([ids], dtype=np.int64)}
    try:
        want = ort_run(_embedding(), feeds)["z"]
    except Exception:  # onnxruntime: "indices element out of data bounds"
        first = next(i for i in ids if not -V <= i < V)
        with pytest.raises(IndexOutOfRangeError, match=rf"index {first} is out"):
            vm_embedding.run(feeds)
        return
    np.testing.assert_array_equal(vm_embedding.run(feeds)["z"], want)


def test_constant_index_out_of_range_is_refused_at_compile_time():
    model = _model([helper.make_node("Gather", ["x", "k"], ["y"], name="take_row", axis=0)],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                   [numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "k")])
    with pytest.raises(IndexOutOfRangeError, match=r"constant indices of gather node 'take_row': index 4 is out of "
                                                   r"range for an axis of length 4"):
        effc.compile(model, target="x86")


def test_aot_x86_reports_the_node(tmp_path):
    """The AOT C API returns EFFC_<NAME>_INDEX_OUT_OF_RANGE with the node in
    effc_<name>_error(); the harness exits 3 and `effc run` turns it into the same error."""
    cm = effc.compile(_embedding(), target="x86", runtime="aot")
    ids = np.array([[5, 4, -2, 0, 1, 2]], dtype=np.int64)
    np.testing.assert_array_equal(cm.run({"ids": ids})["z"], ort_run(_embedding(), {"ids": ids})["z"])
    with pytest.raises(IndexOutOfRangeError, match=r"^gather node 'embed': index -51 is out of range for an axis "
                                                   r"of length 50"):
        cm.run({"ids": _ids(-51)})
    cm.export(tmp_path / "art")
    header = (tmp_path / "art" / "model.h").read_text()
    assert "#define EFFC_G_INDEX_OUT_OF_RANGE (-1)" in header
    assert "const char* effc_g_error(void);" in header and "int64_t effc_g_error_index(void);" in header
    np.savez(tmp_path / "bad.npz", ids=_ids(123))
    proc = subprocess.run([sys.executable, "-m", "effc.cli", "run", str(tmp_path / "art"), "--inputs",
                           str(tmp_path / "bad.npz"), "-o", str(tmp_path / "out.npz")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "gather node 'embed': index 123 is out of range for an axis of length 50" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_aot_arm_reports_the_node():
    """The aarch64 static executable (under qemu-aarch64 on other hosts) fails the same way."""
    cm = effc.compile(_embedding(TensorProto.INT32), target="arm")
    with pytest.raises(IndexOutOfRangeError, match=r"^gather node 'embed': index 2147483647 is out of range"):
        cm.run({"ids": _ids(2**31 - 1).astype(np.int32)})


def test_vm_library_loaded_from_a_folder_names_the_node(tmp_path, vm_embedding):
    """The node's name travels inside the library: a loaded artifact reports it too."""
    vm_embedding.export(tmp_path / "art")
    with pytest.raises(IndexOutOfRangeError, match=r"gather node 'embed': index 77 is out"):
        effc.load(tmp_path / "art").run({"ids": _ids(77)})


def test_cortex_m_reports_the_node():
    cm = effc.compile(_embedding(), target="cortex-m4")
    ids = np.array([[5, 4, -2, 0, 1, 2]], dtype=np.int64)
    np.testing.assert_array_equal(cm.run({"ids": ids})["z"], ort_run(_embedding(), {"ids": ids})["z"])
    with pytest.raises(IndexOutOfRangeError, match=r"gather node 'embed': index 50 is out of range"):
        cm.run({"ids": _ids(50)})


def _cuda_embedding():
    from effc.codegen import cuda
    from effc.models import load_model
    from effc.targets import get_target

    return cuda.build_cuda(load_model(_embedding()), get_target("cuda"))


def test_cuda_build_compiles_the_checks():
    """The CUDA lowering is the VM's: the clamped gather and the check kernels compile to
    CUDA on a machine without a GPU."""
    source = _cuda_embedding().source
    assert "index_check" in source and "checked_take" in source, "no index check kernels in the CUDA source"


@needs_gpu
def test_cuda_gpu_reports_the_node():
    built = _cuda_embedding()
    ids = np.array([[5, 4, -2, 0, 1, 2]], dtype=np.int64)
    np.testing.assert_array_equal(built.run({"ids": ids})["z"], ort_run(_embedding(), {"ids": ids})["z"])
    with pytest.raises(IndexOutOfRangeError, match=r"gather node 'embed': index 50 is out of range"):
        built.run({"ids": _ids(50)})


def test_interpreter_and_folding_name_the_node_with_exit_2(tmp_path):
    """The reference interpreter (and so fold-constants at -O2, which runs it) refuses an
    out-of-range index with the error the compiled code gives: exit 2, the node named."""
    from effc.ir.interpreter import run_module
    from effc.models import load_model

    with pytest.raises(IndexOutOfRangeError, match=r"^gather node 'embed': index 50 is out of range for an axis "
                                                   r"of length 50 \(valid: -50..49\)"):
        run_module(load_model(_embedding()), {"ids": _ids(V)})
    const_ids = numpy_helper.from_array(_ids(V), "ids")
    model = _model([helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")], [],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, D])],
                   [numpy_helper.from_array(TABLE, "table"), const_ids])
    onnx.save(model, tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-m", "effc.cli", "compile", str(tmp_path / "m.onnx"), "-O2",
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "gather node 'embed': index 50 is out of range for an axis of length 50" in proc.stderr
    assert "Traceback" not in proc.stderr
