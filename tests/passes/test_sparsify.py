"""Weight sparsity (passes/sparsify.py): the masks are what they claim (each layer's
smallest share, or two of every four along the reduction axis), the refit keeps them and
recovers accuracy without training, and the CLI writes a model onnxruntime runs."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from effc.ir.errors import InputError
from effc.ir.interpreter import run_module
from effc.ir.parser import copy_module
from effc.ir.verifier import verify_module
from effc.models import load_model
from effc.passes import run_pipeline
from effc.passes.sparsify import sparsify
from tests import labelled
from tests.fixtures import REPO


def _digits():
    m = load_model(REPO / "examples" / "digits_cnn.onnx")
    run_pipeline(m, "fold")
    return m


def _weights(m) -> dict[str, np.ndarray]:
    return {n.outputs[0].name: n.input(1).const_value for n in m.graph.nodes
            if n.op in ("conv", "gemm", "mat_mul") and n.input(1).const_value is not None}


def test_unstructured_zeroes_each_layers_smallest_share():
    m = _digits()
    dense = _weights(m)
    report = sparsify(m, 0.75)
    verify_module(m)
    for name, w in _weights(m).items():
        zeros = w == 0
        assert zeros.sum() == round(0.75 * w.size), name
        assert np.abs(dense[name][~zeros]).min() >= np.abs(dense[name][zeros]).max()  # (the smallest went)
        assert np.array_equal(w[~zeros], dense[name][~zeros])  # (no refit: the rest unchanged)
    assert report.sparsity == pytest.approx(0.75, abs=1e-3)


def test_two_of_four_along_the_reduction_axis():
    """2:4 on a conv ([O, C*kh*kw] rows), on a gemm (transB: [N, K]) and on MatMul weights
    ([K, N]: groups down K) keeps exactly the two larger of every four; a conv whose 9
    inputs per output do not divide by 4 stays dense, and the report says so."""
    from tests.passes.test_prune import _attention_block

    m = _digits()
    dense = _weights(m)
    report = sparsify(m, 0.5, "2:4")
    got = _weights(m)
    first = next(iter(dense))
    assert np.array_equal(got[first], dense[first]) and first in report.skipped
    for name in list(dense)[1:]:
        w, d = got[name], dense[name]
        rows = (w.reshape(w.shape[0], -1), d.reshape(d.shape[0], -1))
        groups = [r.reshape(r.shape[0], -1, 4) for r in rows]
        assert ((groups[0] != 0).sum(-1) == 2).all(), name
        kept = np.sort(np.abs(groups[1]), -1)[..., 2:]
        assert np.allclose(np.sort(np.abs(groups[0]), -1)[..., 2:], kept), name
    t = load_model(_attention_block())
    before = _weights(t)
    sparsify(t, 0.5, "2:4")
    for name, w in _weights(t).items():  # MatMul weights [K, N]: each column's K in fours (dead heads: 0s)
        fours = lambda a: (a.T.reshape(a.shape[1], -1, 4) != 0).sum(-1)  # noqa: E731
        assert np.array_equal(fours(w), np.minimum(fours(before[name]), 2)), name


def test_refit_recovers_digits_accuracy_and_keeps_the_masks():
    """digits_cnn at 50% unstructured and at 2:4: masked alone it loses accuracy; refitted
    on 64 calibration images it is back above 98% (float: 99.7%), every zero still zero."""
    data = labelled.digits(64)

    def accuracy(module):
        return float((run_module(module, {"x": data.x})["logits"].argmax(1) == data.y).mean())

    for pattern in ("unstructured", "2:4"):
        plain, fitted = _digits(), _digits()
        sparsify(plain, 0.5, pattern)
        report = sparsify(fitted, 0.5, pattern, samples={"x": data.calib})
        verify_module(fitted)
        assert accuracy(plain) < 0.9 and accuracy(fitted) > 0.98, (pattern, accuracy(plain), accuracy(fitted))
        for name, w in _weights(fitted).items():
            assert np.array_equal(w == 0, _weights(plain)[name] == 0), name
        assert report.fits and all(f.error_after <= f.error_before for f in report.fits), report.table()


def test_bad_sparsity_is_refused():
    with pytest.raises(InputError, match="--sparsity must be"):
        sparsify(_digits(), 1.0)
    with pytest.raises(InputError, match="--pattern must be"):
        sparsify(_digits(), 0.5, "4:8")
    with pytest.raises(InputError, match="--exclude names no"):
        sparsify(_digits(), 0.5, exclude=("nope",))


def test_cli_sparsity_writes_a_model_onnxruntime_runs(tmp_path):
    out = tmp_path / "sparse.onnx"
    src = REPO / "examples" / "digits_cnn.onnx"
    proc = subprocess.run([sys.executable, "-m", "effc.cli", "prune", str(src), "--sparsity", "2:4", "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "weights zeroed: 50.00%" in proc.stderr, proc.stderr
    x = labelled.digits(8).x[:4]
    m = load_model(out)
    want = run_module(copy_module(m), {"x": x})["logits"]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    bad = subprocess.run([sys.executable, "-m", "effc.cli", "prune", str(src), "--sparsity", "half", "-o", str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--sparsity takes" in bad.stderr and "Traceback" not in bad.stderr
