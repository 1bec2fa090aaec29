"""The requantization rounding of integer ops (``rounding`` attribute, ir/ops/quant.py):
``fixed_point`` against an independent big-integer reference of TFLite's single-rounding
formula, its distance from ``onnx`` rounding, and how ``qdq-to-integer`` takes it from the
target and records it in the IR."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from effc.ir.errors import EffcError
from effc.ir.interpreter import run_module
from effc.ir.ops.quant import ROUNDINGS, _requantize, quantized_multiplier
from effc.ir.parser import copy_module, parse_module
from effc.ir.printer import print_module, referenced_resources
from effc.models import load_model
from effc.onnx_export import export_onnx
from effc.optimize import OptimizeOptions, optimize
from effc.passes import run_pipeline
from effc.passes.quantize import quantize
from effc.passes.quantize_calibrate import run_watching
from effc.targets import QUANT_ROUNDINGS, get_target
from tests import labelled
from tests.fixtures import REPO


def _tflite_reference(acc: int, multiplier: float) -> int:
    """TFLite's single rounding, from its definition with exact rationals: the multiplier as
    a 31-bit fraction q/2^31 times 2^shift, then acc * q / 2^(31 - shift) rounded half up."""
    m = Fraction(float(multiplier))
    shift = 0
    while m >= 1:
        m, shift = m / 2, shift + 1
    while m < Fraction(1, 2):
        m, shift = m * 2, shift - 1
    q = round(m * 2 ** 31)  # half to even on exact ties, as np.rint
    if q == 2 ** 31:
        q, shift = q // 2, shift + 1
    value = Fraction(acc * q, 2 ** (31 - shift))
    return int(np.floor(value + Fraction(1, 2)))


def test_fixed_point_matches_the_big_integer_reference_and_stays_a_step_from_onnx():
    rng = np.random.default_rng(0)
    acc = rng.integers(-2 ** 20, 2 ** 20, 4000).astype(np.int64)
    for multiplier in np.float32([0.5, 0.0123, 3.7e-4, 1.9e-6, 0.99999994, 1.75]):
        got = _requantize(acc, np.asarray(multiplier), None, np.dtype(np.int32), "fixed_point")
        want = np.array([_tflite_reference(int(a), float(multiplier)) for a in acc])
        np.testing.assert_array_equal(got, np.clip(want, -2 ** 31, 2 ** 31 - 1), err_msg=str(multiplier))
        onnx = _requantize(acc, np.asarray(multiplier), None, np.dtype(np.int32), "onnx")
        assert np.abs(onnx.astype(np.int64) - got).max() <= 1
    q, shift = quantized_multiplier(np.float32([0.5, 0.75, 1.0]))
    assert q.tolist() == [2 ** 30, 3 * 2 ** 29, 2 ** 30] and shift.tolist() == [0, 0, 1]


def test_ties_round_half_up_in_fixed_point_and_half_even_in_onnx():
    acc = np.array([1, 3, 5, -1, -3, -5])
    half = np.asarray(np.float32(0.5))
    assert _requantize(acc, half, None, np.dtype(np.int8), "fixed_point").tolist() == [1, 2, 3, 0, -1, -2]
    assert _requantize(acc, half, None, np.dtype(np.int8), "onnx").tolist() == [0, 2, 2, 0, -2, -2]
    # zero point added after rounding, then saturation
    assert _requantize(np.array([300, -300]), np.asarray(np.float32(1.0)), np.int8(5), np.dtype(np.int8),
                       "fixed_point").tolist() == [127, -128]


def test_targets_and_ops_agree_on_the_roundings():
    assert tuple(QUANT_ROUNDINGS) == tuple(ROUNDINGS)
    assert get_target("cortex-m4").quant_rounding == "fixed_point"
    assert get_target("x86").quant_rounding == "onnx" and get_target("arm").quant_rounding == "onnx"


@pytest.fixture(scope="module")
def quantized_digits():
    data = labelled.digits(64)
    module = load_model(REPO / "examples" / "digits_cnn.onnx")
    run_pipeline(module, "fold")
    quantize(module, {"x": data.calib})
    return module, data


def _integer_ops(module):
    return [n for n in module.graph.nodes if n.op in ("qlinear_conv", "qgemm", "qlinear_mat_mul")]


def test_qdq_to_integer_takes_the_rounding_from_the_target_and_records_it(quantized_digits):
    module, data = quantized_digits
    by_target = {}
    for target in ("x86", "cortex-m4"):
        m = copy_module(module)
        optimize(m, "qdq-to-integer,dce", OptimizeOptions(target=target, reproducer_dir=None))
        by_target[target] = m
    assert {n.attrs.get("rounding") for n in _integer_ops(by_target["x86"])} == {None}
    fixed = by_target["cortex-m4"]
    # (three convolutions and the classifier, a qgemm with a float result)
    assert [n.attrs["rounding"] for n in _integer_ops(fixed)] == ["fixed_point"] * 4
    text = print_module(fixed)
    assert text.count('rounding="fixed_point"') == 4, text
    again = parse_module(text, {k: r.get() for k, r in referenced_resources(fixed).items()})
    assert print_module(again) == text
    # the explicit option wins over the target
    m = copy_module(module)
    optimize(m, "qdq-to-integer{rounding=onnx},dce", OptimizeOptions(target="cortex-m4", reproducer_dir=None))
    assert {n.attrs.get("rounding") for n in _integer_ops(m)} == {None}
    # the same model both ways: every int8 activation within one step, the same accuracy
    first = {}
    for t, m_ in by_target.items():
        conv = _integer_ops(m_)[0]  # reads the quantized model input: the same int8 values both ways
        run_watching(m_, {"x": data.x}, {id(conv.outputs[0])}, lambda v, a, t=t: first.setdefault(t, a))
    assert first["x86"].dtype == np.int8 and np.abs(first["x86"].astype(int) - first["cortex-m4"]).max() <= 1
    logits = {t: run_module(m_, {"x": data.x})["logits"] for t, m_ in by_target.items()}
    acc = {t: float((v.argmax(1) == data.y).mean()) for t, v in logits.items()}
    assert abs(acc["x86"] - acc["cortex-m4"]) <= 1 / len(data.y)


def test_export_refuses_fixed_point_rounding(quantized_digits):
    module, _ = quantized_digits
    m = copy_module(module)
    run_pipeline(m, "qdq-to-integer{rounding=fixed_point},dce")
    with pytest.raises(EffcError, match="rounding=fixed_point, which ONNX's QLinearConv cannot say"):
        export_onnx(m)
    bad = copy_module(module)
    with pytest.raises(EffcError, match="rounding must be one of onnx, fixed_point"):
        run_pipeline(bad, "qdq-to-integer{rounding=nearest}")
