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
