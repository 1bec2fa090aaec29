"""effc's own int8 convolution and matrix-product kernels (codegen/kernels/effc_int8.c)
against the reference interpreter, bit for bit: on the host (the portable C path, through
ctypes, over many geometries), and in whole Cortex-M programs under qemu (the SMLAD/SXTB16 path), where they
replace TVM's C kernels; plus what selects them and the depthwise kernel's in-place arena."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from effc.codegen import kernels
from effc.codegen.aot import storage_name
from effc.codegen.aot_c import emit
from effc.codegen.cortex_m import build_cortex_m, cortex_m_toolchain
from effc.ir.builder import Builder
from effc.ir.core import Graph, Module
from effc.ir.errors import InputError
from effc.ir.interpreter import run_module
from effc.ir.types import DType, TensorType
from effc.passes import run_pipeline
from effc.targets import get_target


def _conv_module(shape, w_shape, *, group=1, x_dtype=DType.i8, y_dtype=DType.i8, rounding="fixed_point",
                 clip=None, w_zero=0, seed=0, residual=False, w_scales=(0.001, 0.01), density=1.0,
                 **attrs) -> Module:
    """One qlinear_conv (per-channel weights, bias), optionally clamped, optionally added to
    a second input (``qlinear_add``, the conv's result second), fused into one node."""
    rng = np.random.default_rng(seed)
    m = Module(Graph("g"))
    b = Builder(m)
    c = b.const
    x = m.graph.add_input("x", TensorType(x_dtype, shape))
    f32 = lambda v: c(np.asarray(v, np.float32))  # noqa: E731
    xz = c(np.asarray(131 if x_dtype == DType.u8 else -7, x_dtype.np))
    yz = c(np.asarray(120 if y_dtype == DType.u8 else 5, y_dtype.np))
    m_out = w_shape[0]
    w = rng.integers(-128, 128, w_shape).astype(np.int8)
    if density < 1.0:  # (the draw only where asked: the other tests keep their numbers)
        w[np.random.default_rng(seed + 100).random(w_shape) >= density] = 0
    y = b.qlinear_conv(x, f32(0.02), xz, c(w), f32(rng.uniform(*w_scales, m_out)),
                       c(np.full(m_out, w_zero, np.int8)), f32(0.05), yz,
                       c(rng.integers(-3000, 3000, m_out).astype(np.int32)), group=group, rounding=rounding,
                       kernel_shape=list(w_shape[2:]), **attrs)
    if clip is not None:
        y = b.clip(y, c(np.asarray(clip[0], y_dtype.np)), c(np.asarray(clip[1], y_dtype.np)))
    if residual:
        r = m.graph.add_input("r", TensorType(y_dtype, y.type.shape))
        y = b.qlinear_add(r, f32(0.07), c(np.asarray(-3 if y_dtype == DType.i8 else 140, y_dtype.np)), y, f32(0.05), yz,
                          f32(0.09), c(np.asarray(2 if y_dtype == DType.i8 else 125, y_dtype.np)))
    m.graph.set_outputs([y])
    run_pipeline(m, "fuse")
    return m


def _the_node(module: Module):
    """The one node of ``_conv_module`` that is not a constant."""
    (node,) = [n for n in module.graph.nodes if n.op != "const"]
    return node


def _feeds(module: Module, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.integers(*v.type.dtype.int_range, v.type.shape, endpoint=True).astype(v.type.dtype.np)
            for v in module.graph.inputs}


# ----------------------------------------------------------------------------- host (portable C)


_CTYPES = {"u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "i16": ctypes.c_int16, "i32": ctypes.c_int32,
           "f32": ctypes.c_float}


class _Params(ctypes.Structure):
    _fields_ = [(f, _CTYPES[t]) for f, t in kernels.PARAMS]


@pytest.fixture(scope="module")
def host_library(tmp_path_factory):
    """effc_int8.c built for the host (no DSP extension: the plain C equivalents)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    assert cc is not None, "the tests need a host C compiler (apt-get install gcc)"
    folder = tmp_path_factory.mktemp("effc_int8")
    for name in kernels.SOURCES:
        (folder / name).write_bytes(kernels.source(name))
    lib = folder / "libeffc_int8.so"
    subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", kernels.KERNEL_C,
                    "-o", str(lib)], cwd=folder, check=True)
    return ctypes.CDLL(str(lib))


GEOMETRIES = [
    # (input shape, weight shape, group, attributes)
    ((1, 5, 11, 9), (7, 5, 3, 3), 1, dict(pads=[1, 2, 0, 1], strides=[2, 1])),
    ((1, 3, 12, 12), (4, 3, 5, 5), 1, dict(pads=[2, 2, 2, 2], dilations=[2, 2], strides=[3, 3])),
    ((1, 6, 7, 10), (9, 6, 1, 1), 1, dict(strides=[2, 2])),
    ((1, 16, 5, 5), (8, 16, 1, 1), 1, {}),
    ((1, 7, 9, 8), (7, 1, 3, 5), 7, dict(pads=[1, 2, 1, 2])),
    ((1, 6, 12, 11), (6, 1, 3, 3), 6, dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    ((1, 4, 13, 13), (4, 1, 3, 3), 4, dict(pads=[2, 2, 2, 2], dilations=[2, 2])),
    ((1, 5, 6, 6), (5, 1, 2, 4), 5, dict(pads=[0, 1, 1, 2], dilations=[1, 2])),
]


def _host_run(lib, plan, feeds: dict[str, np.ndarray], out: np.ndarray) -> np.ndarray:
    p = _Params(**plan.params)
    name = "effc_dwconv_s8" if plan.depthwise else "effc_conv_s8_sparse" if plan.sparse else "effc_conv_s8"
    scratch_size = getattr(lib, name.replace("_sparse", "") + "_scratch")
    scratch_size.restype = ctypes.c_uint32
    assert scratch_size(ctypes.byref(p)) == kernels._scratch_bytes(plan.depthwise, plan.params)
    scratch = np.zeros(kernels._scratch_bytes(plan.depthwise, plan.params) // 2, np.int16)
    x, y = np.ascontiguousarray(feeds[plan.x.name]), np.zeros_like(out)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    w, bias, mult, shift = plan.weights
    residual = [] if plan.depthwise else [ptr(feeds[plan.residual.name]) if plan.residual is not None else None]
    getattr(lib, name)(ctypes.byref(p), ptr(x), ptr(w), ptr(bias), ptr(mult), ptr(shift), *residual, ptr(y), ptr(scratch))
    return y


@pytest.mark.parametrize("x_dtype", [DType.i8, DType.u8])
@pytest.mark.parametrize("shape, w_shape, group, attrs", GEOMETRIES)
def test_int8_kernels_portable_c_bit_exact(host_library, shape, w_shape, group, attrs, x_dtype):
    """Each geometry (padding on every side, strides, dilations, odd widths and channel
    counts, 1x1 fast path, depthwise with even and odd tap rows) through the kernel's
    portable path equals the interpreter, with a clamp in the epilogue (and for one-group
    convolutions, a residual add after it)."""
    y_dtype = DType.u8 if x_dtype == DType.u8 else DType.i8
    clip = (110, 250) if y_dtype == DType.u8 else (-20, 100)
    for residual in [False] if group > 1 else [False, True]:
        module = _conv_module(shape, w_shape, group=group, x_dtype=x_dtype, y_dtype=y_dtype, clip=clip,
                              residual=residual, **attrs)
        feeds = _feeds(module)
        want = run_module(module, feeds)[module.graph.outputs[0].name]
        plan = kernels.conv_plan(_the_node(module))
        assert plan is not None and plan.depthwise == (group > 1) and (plan.residual is not None) == residual
        np.testing.assert_array_equal(_host_run(host_library, plan, feeds, want), want, err_msg=f"residual={residual}")
        assert len(np.unique(want)) > 20  # not saturated to a few values


@pytest.mark.parametrize("group", [1, 6])
def test_int8_kernels_requantize_any_multiplier(host_library, group):
    """Multipliers from about 2^-38 to 8 (shifts above 32, the kernel's one-word path, and
    below, its 64-bit path) round and saturate as the interpreter does."""
    shifts = set()
    for scales in ((2.0 ** -36, 2.0 ** -30), (2.0 ** -12, 2.0 ** -4), (0.2, 20.0)):
        module = _conv_module((1, 6, 9, 9), (6, 6 // group, 3, 3), group=group, pads=[1, 1, 1, 1], seed=5,
                              w_scales=scales)
        feeds = _feeds(module)
        want = run_module(module, feeds)[module.graph.outputs[0].name]
        plan = kernels.conv_plan(_the_node(module))
        shifts |= {int(r >= 33) for r in plan.weights[3]}
        np.testing.assert_array_equal(_host_run(host_library, plan, feeds, want), want, err_msg=str(scales))
    assert shifts == {0, 1}


@pytest.mark.parametrize("density", [0.35, 0.2, 0.03, 0.0])
@pytest.mark.parametrize("shape, w_shape, attrs", [g[:2] + g[3:] for g in GEOMETRIES if g[2] == 1])
def test_sparse_weights_kernel_bit_exact(host_library, shape, w_shape, attrs, density):
    """Mostly-zero weights take ``effc_conv_s8_sparse`` (bitmask + nonzero values per output
    channel; at most 75% nonzero for ``flash``, 25% for ``speed``): bit-exact through the
    portable path for every one-group geometry, with and without a residual, down to
    all-zero rows; its blob costs about a byte per nonzero and 1/8 per weight; denser
    weights keep the dense kernel."""
    for residual in (False, True):
        module = _conv_module(shape, w_shape, clip=(-20, 100), residual=residual, density=density, seed=3, **attrs)
        feeds = _feeds(module)
        want = run_module(module, feeds)[module.graph.outputs[0].name]
        plan = kernels.conv_plan(_the_node(module), sparse_density=kernels.SPARSE_DENSITY["flash"])
        assert plan.sparse and not plan.depthwise
        np.testing.assert_array_equal(_host_run(host_library, plan, feeds, want), want, err_msg=f"residual={residual}")
        k = int(np.prod(w_shape[1:]))
        nonzero = sum(int(np.count_nonzero(n.output.const_value)) for n in module.graph.nodes
                      if n.op == "const" and n.output.const_value.dtype == np.int8 and n.output.const_value.ndim == 4)
        words = -(-k // 32)
        assert plan.weights[0].nbytes <= w_shape[0] * (4 + 4 * words + 3) + nonzero
    dense = _conv_module(shape, w_shape, density=0.9, seed=3, **attrs)
    assert not kernels.conv_plan(_the_node(dense), sparse_density=kernels.SPARSE_DENSITY["flash"]).sparse
    share = nonzero / (w_shape[0] * k)
    assert kernels.conv_plan(_the_node(module)).sparse == (share <= kernels.SPARSE_DENSITY["speed"])


def test_int8_kernels_refuse_what_they_cannot_compute():
    """TVM's kernel stays for `onnx` rounding (float64 on a core without a double FPU), a
    weight zero point other than 0, and a grouped (not depthwise) convolution."""
    conv = _the_node
    assert kernels.conv_plan(conv(_conv_module((1, 4, 6, 6), (4, 4, 3, 3)))) is not None
    assert kernels.conv_plan(conv(_conv_module((1, 4, 6, 6), (4, 4, 3, 3), rounding="onnx"))) is None
    assert kernels.conv_plan(conv(_conv_module((1, 4, 6, 6), (4, 4, 3, 3), w_zero=3))) is None
    assert kernels.conv_plan(conv(_conv_module((1, 4, 6, 6), (4, 2, 3, 3), group=2))) is None


# ----------------------------------------------------------------------------- Cortex-M


def _chain_module(residual: bool = True) -> Module:
    """conv 3x3 (stride 2, uneven pads) + ReLU-style clamp, depthwise 3x3 + clamp, 1x1
    projection (+ the residual add of the first conv's result): MobileNetV2's block, on int8
    activations, fused."""
    rng = np.random.default_rng(3)
    m = Module(Graph("g"))
    b = Builder(m)
    c = b.const
    f32 = lambda v: c(np.asarray(v, np.float32))  # noqa: E731
    x = m.graph.add_input("x", TensorType(DType.i8, (1, 5, 17, 15)))
    common = dict(rounding="fixed_point")

    def qconv(v, zp_in, w_shape, group=1, **attrs):
        n = w_shape[0]
        return b.qlinear_conv(v, f32(0.05), c(np.int8(zp_in)), c(rng.integers(-128, 128, w_shape).astype(np.int8)),
                              f32(rng.uniform(0.002, 0.02, n)), c(np.zeros(n, np.int8)), f32(0.05), c(np.int8(-9)),
                              c(rng.integers(-3000, 3000, n).astype(np.int32)), kernel_shape=list(w_shape[2:]),
                              group=group, **common, **attrs)

    h = b.max(qconv(x, -7, (24, 5, 3, 3), pads=[1, 0, 1, 2], strides=[2, 2]), c(np.int8(-9)))  # ReLU, as imported
    d = b.clip(qconv(h, -9, (24, 1, 3, 3), group=24, pads=[1, 1, 1, 1]), c(np.int8(-9)), c(np.int8(110)))
    if residual:
        y = b.qlinear_add(qconv(d, -9, (24, 24, 1, 1)), f32(0.05), c(np.int8(-9)), h, f32(0.05), c(np.int8(-9)),
                          f32(0.08), c(np.int8(4)))
    else:
        y = qconv(d, -9, (8, 24, 1, 1))
    m.graph.set_outputs([y])
    run_pipeline(m, "fuse")
    return m


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_int8_kernels_on_cortex_m_bit_exact_and_fewer_instructions(target):
    """The block on the core's DSP instructions (M55: its one-group convolutions on Helium,
    and on the DSP kernels too) under qemu equals the interpreter; the three convolutions
    (the last with its residual add) run on effc's kernels, and take fewer instructions (qemu -icount, counted
    by the firmware's SysTick) than on TVM's C kernels."""
    module = _chain_module()
    assert [n.op for n in module.graph.nodes if n.op != "const"] == ["fused"] * 3
    feeds = _feeds(module)
    want = run_module(module, feeds)
    counts = {}
    for which in ("effc", "dsp", "tvm"):
        built = build_cortex_m(module, target, int8_kernels=which)
        got = built.run(feeds, count_instructions=True)
        for k, w in want.items():
            np.testing.assert_array_equal(got[k], w, err_msg=f"{k} ({which} kernels on {target})")
        assert built.program.notes["effc_kernels"] == (0 if which == "tvm" else 3)
        assert (kernels.KERNEL_C in built.program.files) == (which != "tvm")
        assert ("effc_conv_s8_mve(" in built.program.files["model.c"].decode()) == (
            which == "effc" and target == "cortex-m55")
        counts[which] = built.last_run_instructions
    assert 0 < counts["effc"] <= counts["dsp"] < counts["tvm"], counts


def test_sparse_weights_on_cortex_m4_smaller_flash_and_fewer_instructions():
    """digits_cnn with 90% of its weights zeroed (``effc prune --sparsity 0.9``, refitted),
    quantized: under qemu on the M4 it equals the interpreter with the compressed weights
    (``sparse_weights="speed"``) and with the dense ones (``off``), and the compressed build
    has less flash and runs fewer instructions; ``flash`` compresses a 50% sparse model the
    speed mode leaves dense. Unknown modes are refused."""
    from effc.ir.refine import bind_input_shapes
    from effc.models import load_model
    from effc.passes.quantize import quantize
    from effc.passes.sparsify import sparsify
    from tests import labelled
    from tests.fixtures import REPO

    data = labelled.digits(64)
    builds = {}
    for share in (0.9, 0.5):
        m = load_model(REPO / "examples" / "digits_cnn.onnx")
        bind_input_shapes(m, {"x": (1, 1, 8, 8)})
        run_pipeline(m, "fold")
        sparsify(m, share, samples={"x": data.calib})
        quantize(m, [{"x": data.calib[i:i + 1]} for i in range(8)])
        run_pipeline(m, "qdq-to-integer{rounding=fixed_point},dce,O2")
        feeds = {"x": data.x[:1]}
        want = run_module(m, feeds)
        for mode in ("speed", "off", "flash"):
            if share == 0.9 and mode == "flash":
                continue
            built = build_cortex_m(m, "cortex-m4", sparse_weights=mode)
            got = built.run(feeds, count_instructions=True)
            for k, w in want.items():
                np.testing.assert_array_equal(got[k], w, err_msg=f"{share} {mode}")
            builds[share, mode] = (built.memory.flash, built.last_run_instructions)
    assert builds[0.9, "speed"][0] < 0.7 * builds[0.9, "off"][0], builds
    assert builds[0.9, "speed"][1] < 0.8 * builds[0.9, "off"][1], builds
    assert builds[0.5, "speed"][0] == builds[0.5, "off"][0] and builds[0.5, "flash"][0] < 0.85 * builds[0.5, "off"][0]
    with pytest.raises(InputError, match="sparse_weights must be"):
        build_cortex_m(m, "cortex-m4", sparse_weights="fast")


def test_int8_depthwise_kernel_writes_over_its_input():
    """The depthwise step's output takes its dying input's place in the arena (TinyEngine's
    in-place depthwise), with the kernel's one-plane scratch as its workspace."""
    module = _chain_module(residual=False)
    tgt = get_target("cortex-m4")
    _, schedule, plan = emit(module, tgt.tvm, cortex_m_toolchain(tgt), int8_kernels="effc")
    dw = [t for t, o in schedule.own.items() if isinstance(o, kernels.Int8Conv) and o.depthwise]
    assert len(dw) == 1
    t = dw[0]
    out = plan.tensor(storage_name(schedule.steps[t].args[-1].storage_key))
    assert out.alias == "inplace" and out.of == storage_name(schedule.steps[t].args[0].storage_key)
    ws = plan.workspace(f"step{t + 1}")
    assert ws is not None and ws.size >= schedule.own[t].scratch == (11 * 10 + 2) * 2


@pytest.mark.slow
def test_int8_mobilenet_v2_fits_nrf52840_where_float_does_not(tmp_path):
    """MobileNetV2 (width 0.35, 96x96): in float it needs more SRAM and flash than the
    nRF52840 has (the build says by how much); quantized to int8 it fits, every convolution
    and the classifier on effc's kernels, and the same program on the board's core (Cortex-M4F under qemu,
    with the board's budgets) gives the interpreter's logits."""
    import effc
    from effc.codegen.cortex_m import BudgetError
    from effc.models import load_model
    from effc.passes.quantize import quantize
    from tests.fixtures import MOBILENET_V2_MCU, mobilenet_v2_mcu

    path = mobilenet_v2_mcu(tmp_path)
    with pytest.raises(BudgetError, match=r"does not fit nrf52840: needs [\d,]+ B SRAM.*needs [\d,]+ B flash"):
        effc.compile(path, target="nrf52840")
    calib = np.random.default_rng(0).random((8, *MOBILENET_V2_MCU[1:]), dtype=np.float32)
    module = load_model(path)
    run_pipeline(module, "fold")
    quantize(module, {"input": calib})
    run_pipeline(module, "qdq-to-integer{rounding=fixed_point},dce,O2")
    board = get_target("nrf52840")
    fits = build_cortex_m(module, board)
    assert fits.memory.sram <= board.sram_bytes and fits.memory.flash <= board.flash_bytes
    assert fits.program.notes["effc_kernels"] == 53  # the 52 convolutions and the classifier's qgemm
    on_qemu = build_cortex_m(module, "cortex-m4", sram=board.sram_bytes, flash=board.flash_bytes)
    want = run_module(module, {"input": calib[:1]})["logits"]
    got = on_qemu.run({"input": calib[:1]})["logits"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("x_dtype", [DType.u8, DType.i8])
def test_helium_kernel_bit_exact_on_cortex_m55(x_dtype):
    """The Helium kernel (M55, under qemu) on uint8 (shifted to signed bytes) and int8
    activations, padding on every side, stride, dilation and a residual add: the
    interpreter's bits."""
    y_dtype = DType.u8 if x_dtype == DType.u8 else DType.i8
    module = _conv_module((1, 3, 12, 12), (5, 3, 5, 5), x_dtype=x_dtype, y_dtype=y_dtype, residual=True,
                          pads=[2, 1, 2, 3], dilations=[2, 1], strides=[1, 2])
    feeds = _feeds(module)
    built = build_cortex_m(module, "cortex-m55")
    assert "effc_conv_s8_mve(" in built.program.files["model.c"].decode()
    got = built.run(feeds)
    want = run_module(module, feeds)
    for k, w in want.items():
        np.testing.assert_array_equal(got[k], w)
        assert len(np.unique(w)) > 20


# ----------------------------------------------------------------------------- matrix product, float result


def _gemm_module(rows: int, depth: int, cols: int, *, x_dtype=DType.i8, trans_b=False, bias=False, alpha=1.0,
                 seed=0) -> Module:
    """One qgemm without an output scale (what ``qdq-to-integer`` makes of a transformer's
    projection): int8 weights with zero point 0, per-column scales."""
    rng = np.random.default_rng(seed)
    m = Module(Graph("g"))
    b = Builder(m)
    c = b.const
    x = m.graph.add_input("x", TensorType(x_dtype, (rows, depth)))
    w = rng.integers(-128, 128, (cols, depth) if trans_b else (depth, cols)).astype(np.int8)
    extra = [c(rng.integers(-30000, 30000, cols).astype(np.int32))] if bias else []
    y = b.qgemm(x, c(np.asarray(0.037, np.float32)), c(np.asarray(131 if x_dtype == DType.u8 else -7, x_dtype.np)),
                c(w), c(rng.uniform(0.001, 0.02, cols).astype(np.float32)), c(np.zeros(cols, np.int8)), *extra,
                transB=int(trans_b), alpha=alpha)
    m.graph.set_outputs([y])
    return m


class _GemmParams(ctypes.Structure):
    _fields_ = [(f, _CTYPES[t]) for f, t in kernels.GEMM_PARAMS]


GEMMS = [(1, 3, 1), (2, 4, 2), (7, 37, 9), (16, 32, 32), (5, 64, 3)]


@pytest.mark.parametrize("rows, depth, cols", GEMMS)
@pytest.mark.parametrize("x_dtype, trans_b, bias, alpha", [(DType.i8, False, False, 1.0), (DType.u8, True, True, 0.5)])
def test_int8_gemm_kernel_portable_c_bit_exact(host_library, rows, depth, cols, x_dtype, trans_b, bias, alpha):
    """``effc_gemm_s8_f32``'s portable path equals the interpreter's float32 result bit for
    bit: odd rows and columns, depths that are not a multiple of 4, uint8 inputs with a zero
    point, a transposed weight with an int32 bias, alpha."""
    module = _gemm_module(rows, depth, cols, x_dtype=x_dtype, trans_b=trans_b, bias=bias, alpha=alpha)
    feeds = _feeds(module)
    want = run_module(module, feeds)[module.graph.outputs[0].name]
    plan = kernels.gemm_plan(_the_node(module))
    assert plan is not None
    params, (w, b, scale), x = plan
    p = _GemmParams(**params)
    size = host_library.effc_gemm_s8_scratch
    size.restype = ctypes.c_uint32
    assert size(ctypes.byref(p)) == 2 * params["k4"] * 2
    scratch = np.zeros(2 * params["k4"], np.int16)
    got = np.zeros_like(want)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    host_library.effc_gemm_s8_f32(ctypes.byref(p), ptr(np.ascontiguousarray(feeds[x.name])), ptr(w), ptr(b),
                                  ptr(scale), ptr(got), ptr(scratch))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > min(rows * cols // 2, 20)


def test_int8_gemm_kernel_refuses_what_it_cannot_compute():
    """An output scale (an 8-bit result), weights with a zero point, a symbolic row count."""
    m = _gemm_module(4, 8, 3)
    assert kernels.gemm_plan(_the_node(m)) is not None
    node = _the_node(m)
    node.inputs[5].producer.attrs["value"] = np.ones(3, np.int8)
    assert kernels.gemm_plan(node) is None
    b = Builder(m := Module(Graph("g")))
    x = m.graph.add_input("x", TensorType(DType.i8, (4, 8)))
    c = b.const
    y = b.qgemm(x, c(np.asarray(0.1, np.float32)), c(np.asarray(0, np.int8)), c(np.ones((8, 3), np.int8)),
                c(np.asarray(0.1, np.float32)), c(np.asarray(0, np.int8)), None, c(np.asarray(0.2, np.float32)),
                c(np.asarray(0, np.int8)))
    m.graph.set_outputs([y])
    assert kernels.gemm_plan(_the_node(m)) is None


def test_int8_gemm_on_cortex_m4_bit_exact_and_fewer_instructions():
    """On the M4 (SMLAD/SXTB16) a 16x32x32 projection under qemu equals the interpreter and
    takes fewer instructions than TVM's C kernel; the digits transformer quantized to int8
    runs its 13 projections and its classifier on it, bit for bit, in under 3/4 of its
    float build's instructions (TVM's C kernels took more than float)."""
    module = _gemm_module(16, 32, 32, x_dtype=DType.u8, trans_b=True, bias=True)
    feeds = _feeds(module)
    want = run_module(module, feeds)
    counts = {}
    for which in ("effc", "tvm"):
        built = build_cortex_m(module, "cortex-m4", int8_kernels=which)
        got = built.run(feeds, count_instructions=True)
        np.testing.assert_array_equal(got["qgemm"] if "qgemm" in got else next(iter(got.values())),
                                      next(iter(want.values())), err_msg=which)
        assert built.program.notes["effc_kernels"] == (1 if which == "effc" else 0)
        assert ("effc_gemm_s8_f32(" in built.program.files["model.c"].decode()) == (which == "effc")
        counts[which] = built.last_run_instructions
    assert counts["effc"] < counts["tvm"] / 2, counts

    import effc
    from effc.explore import Config, apply_config
    from effc.ir.parser import copy_module
    from effc.models import load_model
    from tests import labelled
    from tests.fixtures import REPO

    d = labelled.digits(32)
    model = load_model(REPO / "examples" / "digits_transformer.onnx")
    run_pipeline(model, "fold")
    int8, _ = apply_config(model, Config("int8", "per-channel"), {"x": d.calib}, "cortex-m4")
    x = {"x": d.x[:1]}
    instructions = {}
    for name, m in (("int8", int8), ("float", model)):
        built = effc.compile(copy_module(m), target="cortex-m4", input_shapes={"x": (1, 1, 8, 8)})._built
        got = built.run(x, count_instructions=True)["logits"]
        want = run_module(m, x)["logits"]
        if name == "int8":
            np.testing.assert_array_equal(got, want)
            assert built.program.files["model.c"].decode().count("effc_gemm_s8_f32(") == 14
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        instructions[name] = built.last_run_instructions
    assert instructions["int8"] < 0.75 * instructions["float"], instructions
