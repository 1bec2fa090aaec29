"""`effc run -o`: every output saved under its own name at exactly the path given, and
`--inputs` files that are not .npz archives refused with effc's error (issue 9, class 8)."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest

from effc.cli import main
from effc.tensors import load_npz, save_npz
from tests.fixtures import ort_run

# np.savez's own parameter names (``allow_pickle`` was dropped, ``file`` crashed), and names
# that must keep working: path-like, ending in .npy, non-ASCII.
SAVEZ_PARAMS = ["allow_pickle", "file"]
ODD_NAMES = SAVEZ_PARAMS + ["args", "kwds", "a/b", "../up", "x.npy", "é ü", "__effc_index__"]


def _relu_model(path, names: list[str]) -> None:
    """x -> one Relu/Neg output per name (different values, so a mix-up shows)."""
    nodes = [oh.make_node("Relu" if i % 2 == 0 else "Neg", ["x"], [n]) for i, n in enumerate(names)]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
                      [oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [3]) for n in names])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), str(path))


@pytest.fixture
def inputs(tmp_path):
    x = np.array([-1.5, 0.0, 2.25], np.float32)
    path = tmp_path / "in.npz"
    np.savez(path, x=x)
    return path, x


@pytest.mark.parametrize("name", SAVEZ_PARAMS)
def test_every_output_name_survives(tmp_path, inputs, capsys, name):
    model = tmp_path / "m.onnx"
    _relu_model(model, [name, "plain"])
    out = tmp_path / "out.npz"
    assert main(["run", str(model), "--inputs", str(inputs[0]), "-o", str(out)]) == 0
    want = ort_run(model, {"x": inputs[1]})
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == sorted([name, "plain"])
        for key in (name, "plain"):
            np.testing.assert_array_equal(z[key], want[key])  # the interpreter is exact on Relu/Neg


def test_output_goes_to_exactly_the_path_given(tmp_path, inputs, capsys):
    model = tmp_path / "m.onnx"
    _relu_model(model, ["y"])
    out = tmp_path / "out.bin"
    assert main(["run", str(model), "--inputs", str(inputs[0]), "-o", str(out)]) == 0
    assert out.is_file() and not (tmp_path / "out.bin.npz").exists()
    assert capsys.readouterr().err.strip() == f"wrote {out}"
    np.testing.assert_array_equal(load_npz(out)["y"], np.maximum(inputs[1], 0))


def test_save_npz_round_trips_through_load_npz(tmp_path):
    arrays = {n: np.arange(i + 1, dtype=np.int16) for i, n in enumerate(ODD_NAMES)}
    arrays["bool"] = np.array([[True], [False]])
    assert save_npz(tmp_path / "o", arrays) == tmp_path / "o"
    back = load_npz(tmp_path / "o")
    assert back.keys() == arrays.keys()
    for k in arrays:
        assert back[k].dtype == arrays[k].dtype and np.array_equal(back[k], arrays[k])


def test_a_name_an_npz_cannot_hold_is_an_input_error(tmp_path, inputs, capsys):
    model = tmp_path / "m.onnx"
    _relu_model(model, ["a\0b"])
    assert main(["run", str(model), "--inputs", str(inputs[0]), "-o", str(tmp_path / "o.npz")]) == 2
    assert "NUL character" in capsys.readouterr().err


def test_npy_given_as_inputs_says_npz(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    _relu_model(model, ["y"])
    np.save(tmp_path / "x.npy", np.zeros(3, np.float32))
    assert main(["run", str(model), "--inputs", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert "x.npy: this is a single .npy array" in err and "np.savez" in err and "internal error" not in err


def test_inputs_with_a_non_array_member_is_an_input_error(tmp_path, capsys):
    import zipfile

    model = tmp_path / "m.onnx"
    _relu_model(model, ["y"])
    bad = tmp_path / "in.npz"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("x", b"not an array")
    assert main(["run", str(model), "--inputs", str(bad)]) == 2
    assert "member 'x' is not an .npy array" in capsys.readouterr().err


def test_inputs_with_an_encrypted_member_is_an_input_error(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    _relu_model(model, ["y"])
    bad = tmp_path / "in.npz"
    np.savez(bad, x=np.zeros(3, np.float32))
    raw = bytearray(bad.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        raw[raw.index(signature) + flag_at] |= 0x1  # "encrypted": zipfile raises RuntimeError
    bad.write_bytes(bytes(raw))
    assert main(["run", str(model), "--inputs", str(bad)]) == 2  # was: exit 70
    assert "encrypted" in capsys.readouterr().err
