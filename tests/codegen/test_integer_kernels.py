"""Integer ops compiled for x86 (codegen/relax_quant.py) against the reference interpreter,
bit for bit: the int32 sums and both requantization roundings (``onnx``: float multiplier,
half to even; ``fixed_point``: 31-bit multiplier and shift), on random 8-bit data with
per-channel weights, and on whole quantized models (digits CNN, mobilenet_tiny) after
``qdq-to-integer``."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from effc.codegen import build
from effc.ir.builder import Builder
from effc.ir.core import Graph, Module
from effc.ir.interpreter import run_module
from effc.ir.types import DType, TensorType
from effc.models import load_model
from effc.passes import run_pipeline
from effc.passes.quantize import quantize
from tests import labelled
from tests.fixtures import REPO


def _integer_module(rounding: str) -> Module:
    """qlinear_conv (per-channel weights, bias, padding, groups 1 and depthwise),
    qlinear_mat_mul, qgemm and qlinear_add on u8/i8 inputs, every output an integer tensor."""
    rng = np.random.default_rng(3)
    m = Module(Graph("g"))
    b = Builder(m)
    x = m.graph.add_input("x", TensorType(DType.u8, (2, 4, 9, 9)))
    a = m.graph.add_input("a", TensorType(DType.i8, (3, 16)))
    c = b.const
    f32 = lambda v: c(np.asarray(v, np.float32))  # noqa: E731
    extra = {} if rounding == "onnx" else {"rounding": rounding}
    w = rng.integers(-127, 128, (6, 4, 3, 3)).astype(np.int8)
    conv = b.qlinear_conv(x, f32(0.02), c(np.uint8(131)), c(w), f32(rng.uniform(0.001, 0.01, 6)),
                          c(np.zeros(6, np.int8)), f32(0.05), c(np.uint8(120)),
                          c(rng.integers(-3000, 3000, 6).astype(np.int32)), kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                          strides=[2, 2], **extra)
    dw = b.qlinear_conv(conv, f32(0.05), c(np.uint8(120)), c(rng.integers(-127, 128, (6, 1, 3, 3)).astype(np.int8)),
                        f32(rng.uniform(0.002, 0.02, 6)), c(np.zeros(6, np.int8)), f32(0.04), c(np.uint8(100)),
                        kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=6, **extra)
    mm = b.qlinear_mat_mul(a, f32(0.1), c(np.int8(-5)), c(rng.integers(-127, 128, (16, 8)).astype(np.int8)),
                           f32(rng.uniform(0.001, 0.01, 8)), c(np.zeros(8, np.int8)), f32(0.2), c(np.int8(3)), **extra)
    gemm = b.qgemm(a, f32(0.1), c(np.int8(-5)), c(rng.integers(-127, 128, (8, 16)).astype(np.int8)),
                   f32(rng.uniform(0.001, 0.01, 8)), c(np.zeros(8, np.int8)), c(rng.integers(-500, 500, 8).astype(np.int32)),
                   f32(0.15), c(np.int8(-2)), transB=1, **extra)
    add = b.qlinear_add(mm, f32(0.2), c(np.int8(3)), gemm, f32(0.15), c(np.int8(-2)), f32(0.3), c(np.int8(1)))
    m.graph.set_outputs([conv, dw, mm, gemm, add])
    return m


@pytest.mark.parametrize("rounding", ["onnx", "fixed_point"])
def test_integer_ops_compile_bit_exact(rounding):
    module = _integer_module(rounding)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.integers(0, 256, (2, 4, 9, 9)).astype(np.uint8),
             "a": rng.integers(-128, 128, (3, 16)).astype(np.int8)}
    want = run_module(module, feeds)
    got = build(module).run(feeds)
    for v in module.graph.outputs:
        assert got[v.name].dtype == want[v.name].dtype
        np.testing.assert_array_equal(got[v.name], want[v.name], err_msg=f"{v.name} ({rounding})")
        assert len(np.unique(want[v.name])) > 10  # not saturated to a constant


@pytest.mark.parametrize("model, rounding", [("digits_cnn", "onnx"), ("mobilenet_tiny", "onnx"),
                                             ("mobilenet_tiny", "fixed_point")])
def test_quantized_models_compile_as_integer_kernels(model, rounding):
    """The whole integer model: quantize, qdq-to-integer, -O2, x86 build. The convolutions
    (and MobileNetV2's ReLU6 clamps and residual adds) run as integer kernels; the float
    classifier at the end sums in another order, so logits agree to float32 rounding."""
    if model == "digits_cnn":
        data = labelled.digits(32)
        name, calib, x = "x", data.calib, data.x[:16]
    else:
        name = "input"
        calib = np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32)
        x = calib[:1]
    module = load_model(REPO / "examples" / f"{model}.onnx")
    run_pipeline(module, "fold")
    quantize(module, {name: calib})
    run_pipeline(module, f"qdq-to-integer{{rounding={rounding}}},dce,O2")
    ops = Counter(n.op for top in module.graph.nodes for n in (top.body.nodes if top.body is not None else [top]))
    assert ops["qlinear_conv"] == (3 if model == "digits_cnn" else 25) and ops["conv"] == 0
    want = run_module(module, {name: x})
    got = build(module).run({name: x})
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=0, atol=1e-5 * np.abs(w).max())


@pytest.mark.slow
@pytest.mark.parametrize("target, rounding", [("cortex-m4", "onnx"), ("cortex-m4", "fixed_point"),
                                              ("arm", "fixed_point"), ("x86-avx2", "onnx")])
def test_integer_ops_bit_exact_on_every_cpu_target(target, rounding):
    """The same integer ops compiled for Cortex-M4 (TVM's C kernels and effc's AOT driver,
    arm-none-eabi-gcc; run under qemu-system-arm), AArch64 (AOT, run under qemu-aarch64) and
    x86 AVX2: every integer output equal to the interpreter's."""
    import effc

    module = _integer_module(rounding)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.integers(0, 256, (2, 4, 9, 9)).astype(np.uint8),
             "a": rng.integers(-128, 128, (3, 16)).astype(np.int8)}
    want = run_module(module, feeds)
    got = effc.compile(module, target=target).run(feeds)
    for v in module.graph.outputs:
        np.testing.assert_array_equal(got[v.name], want[v.name], err_msg=f"{v.name} ({rounding})")


@pytest.mark.slow
def test_int8_mobilenet_on_cortex_m4_is_smaller_and_matches():
    """mobilenet_tiny as integer kernels on Cortex-M4, in the target's `fixed_point`
    rounding: its 25 convolutions and its classifier run on effc's own int8 kernels
    (codegen/kernels), the 8-bit weights stay one byte each in flash and the arena holds 8-bit activations, so
    weights and SRAM shrink against the float build; the logits under qemu match the
    interpreter."""
    import effc

    calib = np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32)
    module = load_model(REPO / "examples" / "mobilenet_tiny.onnx")
    run_pipeline(module, "fold")
    quantize(module, {"input": calib})
    run_pipeline(module, "qdq-to-integer{rounding=fixed_point},dce")
    want = run_module(module, {"input": calib[:1]})["logits"]
    int8 = effc.compile(module, target="cortex-m4")
    fp32 = effc.compile(REPO / "examples" / "mobilenet_tiny.onnx", target="cortex-m4")
    np.testing.assert_allclose(int8.run({"input": calib[:1]})["logits"], want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert int8._built.program.notes["effc_kernels"] == 26  # the 25 convolutions and the classifier
    mi, mf = int8._built.memory, fp32._built.memory
    assert mi.weights < 0.45 * mf.weights and mi.sram < 0.35 * mf.sram, (mi.weights, mf.weights, mi.sram, mf.sram)
