"""Real models: import, interpreter vs onnxruntime, exact text round trip, export vs onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from effc.ir.interpreter import run_module
from effc.ir.parser import load_module, parse_module
from effc.ir.printer import print_module, save_module
from effc.ir.verifier import verify_module
from effc.onnx_export import export_onnx
from effc.onnx_import import import_onnx
from tests.fixtures import FIXTURES, assert_close, ort_run

PARAMS = [pytest.param(f, id=f.name, marks=[pytest.mark.slow] if f.slow else []) for f in FIXTURES]


@pytest.fixture(scope="module", params=PARAMS)
def loaded(request):
    fx = request.param
    path = fx.path()
    proto = onnx.load(str(path))
    module = import_onnx(path)
    feeds = fx.inputs(proto)
    return fx, path, proto, module, feeds


def test_imports_and_verifies(loaded):
    fx, path, proto, module, feeds = loaded
    verify_module(module)
    assert [v.name for v in module.graph.inputs] == list(feeds)
    assert [v.name for v in module.graph.outputs] == [o.name for o in proto.graph.output]


def test_interpreter_matches_onnxruntime(loaded):
    fx, path, proto, module, feeds = loaded
    want = ort_run(path, feeds)
    got = run_module(module, feeds)
    assert list(got) == list(want)
    for name in want:
        assert_close(got[name], want[name], f"{fx.name} output {name}")


def test_text_round_trip_is_exact(loaded, tmp_path):
    fx, path, proto, module, feeds = loaded
    text = print_module(module)
    again = parse_module(text, module.weights)
    assert print_module(again) == text
    save_module(module, tmp_path / "m.effc")
    reloaded = load_module(tmp_path / "m.effc")
    assert print_module(reloaded) == text
    verify_module(reloaded)
    got = run_module(reloaded, feeds)
    want = run_module(module, feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_export_matches_onnxruntime(loaded):
    fx, path, proto, module, feeds = loaded
    exported = export_onnx(module)
    onnx.checker.check_model(exported, full_check=True)
    want = ort_run(path, feeds)
    got = ort_run(exported, feeds)
    for name in want:
        assert_close(got[name], want[name], f"{fx.name} exported output {name}")


def test_O2_keeps_outputs_under_check_numerics(loaded):
    """Every pass of -O2 leaves outputs within tolerance, and the verifier passes after each."""
    from effc.optimize import OptimizeOptions, optimize

    fx, path, proto, module, feeds = loaded
    m = import_onnx(path)
    before = len(m.graph)
    runner = optimize(m, "O2", OptimizeOptions(check_numerics=True, verify_each=True, numerics_inputs=feeds,
                                               rtol=1e-3, atol=1e-4, reproducer_dir=None))
    assert runner.history, "O2 ran no pass"
    assert len(m.graph) <= before
    want = ort_run(path, feeds)
    got = run_module(m, feeds)
    for name in want:
        assert_close(got[name], want[name], f"{fx.name} -O2 output {name}")
    exported = export_onnx(m)
    onnx.checker.check_model(exported, full_check=True)
    for name, arr in ort_run(exported, feeds).items():
        assert_close(arr, want[name], f"{fx.name} -O2 exported output {name}")


def test_dump_ir_steps_parse_and_run(tmp_path):
    """--dump-ir on a real model: every numbered file parses back and runs."""
    from effc.optimize import OptimizeOptions, optimize
    from tests.fixtures import REPO

    path = REPO / "examples" / "mobilenet_tiny.onnx"
    m = import_onnx(path)
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    want = run_module(m, feeds)
    runner = optimize(m, "O2", OptimizeOptions(dump_ir=tmp_path, reproducer_dir=None))
    files = sorted(tmp_path.glob("*.effc"))
    assert [f.name for f in files][0] == "000_input.effc"
    assert len(files) == len(runner.history) + 1
    for f in files:
        assert f.read_text().startswith("// -----// IR Dump")
        step = load_module(f)
        verify_module(step)
        got = run_module(step, feeds)
        assert_close(got["logits"], want["logits"], f.name)
