"""effc's int8 dot-product fast paths (codegen/layout_int8.py, codegen/schedules/int8.py) against the
interpreter, bit for bit, on this machine (AVX-512 VNNI where it has it) and on AVX2
(Haswell: vpmaddwd on int16): dot-product convolutions (``qconv_dot``: NCHW and blocked
inputs, padding, strides, dilation, channels not a multiple of 4 or 16), integer depthwise
convolutions in the blocked layout (``qdwconv_nchwc``), fused ReLU6 clamps, residual
``qlinear_add``, a broadcasting ``qlinear_mul`` and ``qlinear_global_average_pool``, in
both requantization roundings; and no kernel writes outside its output. The AOT programs
run the same kernels, on x86 and on AArch64 (``sdot``, under qemu-aarch64)."""
from __future__ import annotations

import numpy as np
import pytest
import tvm

from effc.codegen import build
from effc.codegen.schedules import cpu_for
from effc.ir.builder import Builder
from effc.ir.core import Graph, Module
from effc.ir.interpreter import run_module
from effc.ir.types import DType, TensorType
from effc.passes import run_pipeline
from effc.targets import get_target

INTRINSIC = {"avx512-vnni": "llvm.x86.avx512.vpdpbusd.512", "avx2": "llvm.x86.avx2.pmadd.wd"}
TARGETS = ["x86", "x86-avx2"]
"""This machine (AVX-512 VNNI where it has it) and Haswell's AVX2 (vpmaddwd on int16)."""


def _build(module: Module, target: str):
    """The x86 build for ``target`` and the dot product its CPU has (None: plain kernels)."""
    t = get_target(target)
    return build(module, dict(t.tvm), hardware=t.hardware), cpu_for(dict(t.tvm), t.hardware).int8_dot


def _uses_dot(art, dot: str | None) -> bool:
    script = art.relax_module.script()
    return (INTRINSIC[dot] in script) if dot else not any(i in script for i in INTRINSIC.values())


def _chain(rounding: str, batch: int = 2) -> Module:
    """u8 input (5 channels: the NCHW packing, channels padded to 8) -> 3x3 conv to 16
    (int8 output, ReLU6 clamp) -> depthwise 3x3 stride 2 -> 1x1 to 32 -> 3x3 dilation 2 to
    16 -> + the depthwise output (qlinear_add) -> 1x1 to 8 (a block of 8) -> 1x1 to 10
    (NCHW, its sums padded to 16 channels) -> x the global pool of the 16-channel sum
    (a broadcasting qlinear_mul). Every integer value an output."""
    rng = np.random.default_rng(7)
    m = Module(Graph("g"))
    b = Builder(m)
    c = b.const
    f32 = lambda v: c(np.asarray(v, np.float32))  # noqa: E731
    extra = {} if rounding == "onnx" else {"rounding": rounding}
    x = m.graph.add_input("x", TensorType(DType.u8, (batch, 5, 12, 12)))

    def conv(v, scale, zp, k, ksize, out_scale, out_zp, group=1, **attrs):
        cin = v.type.shape[1] // group
        w = rng.integers(-128, 128, (k, cin, ksize, ksize)).astype(np.int8)
        return b.qlinear_conv(v, f32(scale), zp, c(w), f32(rng.uniform(0.001, 0.01, k)), c(np.zeros(k, np.int8)),
                              f32(out_scale), out_zp, c(rng.integers(-4000, 4000, k).astype(np.int32)),
                              kernel_shape=[ksize, ksize], group=group, **attrs, **extra)

    z = c(np.int8(-9))
    a = conv(x, 0.02, c(np.uint8(131)), 16, 3, 0.05, z, pads=[1, 1, 1, 1])
    a = b.clip(a, z, c(np.int8(100)))
    d = conv(a, 0.05, z, 16, 3, 0.04, c(np.int8(5)), group=16, pads=[1, 1, 1, 1], strides=[2, 2])
    p = conv(d, 0.04, c(np.int8(5)), 32, 1, 0.06, c(np.int8(-3)))
    q = conv(p, 0.06, c(np.int8(-3)), 16, 3, 0.05, c(np.int8(2)), pads=[2, 2, 2, 2], dilations=[2, 2])
    s = b.qlinear_add(q, f32(0.05), c(np.int8(2)), d, f32(0.04), c(np.int8(5)), f32(0.07), c(np.int8(-1)))
    e = conv(s, 0.07, c(np.int8(-1)), 8, 1, 0.05, c(np.int8(0)))
    t = conv(e, 0.05, c(np.int8(0)), 10, 1, 0.08, c(np.int8(4)))
    g = b.qlinear_global_average_pool(s, f32(0.07), c(np.int8(-1)), f32(0.03), c(np.int8(1)))
    g10 = conv(g, 0.03, c(np.int8(1)), 10, 1, 0.02, c(np.int8(-6)))
    y = b.qlinear_mul(t, f32(0.08), c(np.int8(4)), g10, f32(0.02), c(np.int8(-6)), f32(0.1), c(np.int8(3)))
    m.graph.set_outputs([a, d, p, q, s, e, t, g, y])
    return m


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rounding", ["onnx", "fixed_point"])
def test_int8_chain_bit_exact(rounding, target):
    module = _chain(rounding)
    run_pipeline(module, "fuse")  # (the clamp joins its conv's kernel, as -O2 does)
    rng = np.random.default_rng(1)
    feeds = {"x": rng.integers(0, 256, (2, 5, 12, 12)).astype(np.uint8)}
    want = run_module(module, feeds)
    art, dot = _build(module, target)
    got = art.run(feeds)
    for v in module.graph.outputs:
        np.testing.assert_array_equal(got[v.name], want[v.name], err_msg=f"{v.name} ({rounding}, {target})")
        assert len(np.unique(want[v.name])) > 5, v.name  # not saturated to a constant
    assert _uses_dot(art, dot)  # the fast path was taken: tensorized convs,
    assert (dot is None) or "dwconv2d_nchwc" in art.relax_module.script()  # a blocked depthwise


@pytest.mark.parametrize("target", TARGETS)
def test_int8_kernels_write_only_their_outputs(target):
    """Each integer kernel, called on its own with every output a view into a larger
    buffer filled with a sentinel: the bytes after the view stay untouched (an epilogue
    over the sums' 16 padded channels once wrote past an 8-channel output)."""
    module = _chain("onnx", batch=1)
    art, _ = _build(module, target)
    target = tvm.target.Target(art.target)
    dev = tvm.cpu()
    checked = 0
    for gv, f in art.relax_module.functions.items():
        if not isinstance(f, tvm.tirx.PrimFunc) or not any(k in gv.name_hint for k in ("qlinear", "qconv", "qdw")):
            continue
        lib = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=target)
        args, guards = [], []
        for i, buf in enumerate(f.params):
            shape = [int(d) for d in buf.shape]
            size = int(np.prod(shape))
            raw = np.full(size + 256 + 64, 0x5A, dtype=np.dtype(str(buf.dtype)))
            skip = (-raw.ctypes.data % 64) // raw.itemsize  # (TVM wants 64-byte aligned tensors)
            data = raw[skip:skip + size + 256]
            if i < len(f.params) - 1:
                data[:size] = np.random.default_rng(i).integers(-20, 20, size).astype(data.dtype)
            guards.append((data, size))
            args.append(tvm.runtime.from_dlpack(data[:size].reshape(shape)))
        lib["main"](*args)
        out, size = guards[-1]
        assert (out[size:] == np.full(256, 0x5A, out.dtype)).all(), f"{gv.name_hint} wrote past its output"
        checked += 1
    assert checked >= 8, checked


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("rounding", ["onnx", "fixed_point"])
def test_int8_matmul_and_gemm_bit_exact(rounding, target):
    """qlinear_mat_mul over a 3-D int8 activation and qgemm (transB, int32 bias) over a
    uint8 one, K not a multiple of 4: VNNI dense kernels (``qdense_u8s8``) on a VNNI CPU."""
    rng = np.random.default_rng(5)
    m = Module(Graph("g"))
    b = Builder(m)
    c = b.const
    f32 = lambda v: c(np.asarray(v, np.float32))  # noqa: E731
    extra = {} if rounding == "onnx" else {"rounding": rounding}
    a = m.graph.add_input("a", TensorType(DType.i8, (2, 7, 30)))
    u = m.graph.add_input("u", TensorType(DType.u8, (5, 30)))
    mm = b.qlinear_mat_mul(a, f32(0.1), c(np.int8(-5)), c(rng.integers(-128, 128, (30, 48)).astype(np.int8)),
                           f32(rng.uniform(0.001, 0.01, 48)), c(np.zeros(48, np.int8)), f32(0.3), c(np.int8(3)), **extra)
    gemm = b.qgemm(u, f32(0.05), c(np.uint8(120)), c(rng.integers(-128, 128, (20, 30)).astype(np.int8)),
                   f32(rng.uniform(0.001, 0.01, 20)), c(np.zeros(20, np.int8)),
                   c(rng.integers(-900, 900, 20).astype(np.int32)), f32(0.12), c(np.uint8(128)), transB=1, **extra)
    m.graph.set_outputs([mm, gemm])
    feeds = {"a": rng.integers(-128, 128, (2, 7, 30)).astype(np.int8), "u": rng.integers(0, 256, (5, 30)).astype(np.uint8)}
    want = run_module(m, feeds)
    art, dot = _build(m, target)
    got = art.run(feeds)
    for v in m.graph.outputs:
        np.testing.assert_array_equal(got[v.name], want[v.name], err_msg=f"{v.name} ({rounding}, {target})")
        assert len(np.unique(want[v.name])) > 10
    assert _uses_dot(art, dot)


@pytest.mark.parametrize("target", TARGETS)
def test_float_output_qgemm_bit_exact(target):
    """qgemm without an output scale (what ``qdq-to-integer`` makes of a matmul whose result
    stays float): the int32 sum (plus its int32 bias) times ``a_scale * b_scale`` per
    column, a float32 output equal to the interpreter's to the bit."""
    rng = np.random.default_rng(9)
    m = Module(Graph("g"))
    b = Builder(m)
    c = b.const
    a = m.graph.add_input("a", TensorType(DType.i8, (6, 40)))
    y = b.qgemm(a, c(np.float32(0.05)), c(np.int8(7)), c(rng.integers(-128, 128, (40, 32)).astype(np.int8)),
                c(rng.uniform(0.001, 0.01, 32).astype(np.float32)), c(np.zeros(32, np.int8)),
                c(rng.integers(-900, 900, 32).astype(np.int32)))
    m.graph.set_outputs([y])
    feeds = {"a": rng.integers(-128, 128, (6, 40)).astype(np.int8)}
    art, dot = _build(m, target)
    np.testing.assert_array_equal(art.run(feeds)[y.name], run_module(m, feeds)[y.name])
    assert _uses_dot(art, dot)


def test_target_tables_name_the_dot_product_their_cpu_has():
    """targets/x86.toml's variants declare ``int8_dot``; each is what effc derives from the
    variant's LLVM CPU, and the values the target loader accepts are codegen's; an Arm
    core has ``sdot`` where its ``-mattr`` says ``+dotprod``."""
    from effc.codegen.schedules import INT8_DOTS, target_int8_dot
    from effc.targets import INT8_DOTS as TABLE_DOTS

    assert set(TABLE_DOTS) == set(INT8_DOTS) - {None}
    for name, want in [("x86-avx2", "avx2"), ("x86-avx512", "avx2"), ("x86-vnni", "avx512-vnni")]:
        t = get_target(name)
        assert t.hardware["int8_dot"] == want == target_int8_dot(dict(t.tvm)), name
        assert cpu_for(dict(t.tvm), t.hardware).int8_dot == want
    for name, want in [("arm", None), ("arm-cortex-a53", None), ("arm-cortex-a76", "neon-sdot")]:
        t = get_target(name)  # (derived from -mattr's +dotprod)
        assert target_int8_dot(dict(t.tvm)) == want == cpu_for(dict(t.tvm), t.hardware).int8_dot, name


@pytest.mark.parametrize("target", TARGETS)
def test_int8_conv_on_a_prime_width_sums_padded_columns(target):
    """A 23-column output row (no tile of 4 to 14 divides it) is summed as 24 columns over
    padding, the last never written: still the interpreter's bits, from NCHW (3 channels)
    and from a blocked input."""
    rng = np.random.default_rng(2)
    m = Module(Graph("g"))
    b = Builder(m)
    c = b.const
    f32 = lambda v: c(np.asarray(v, np.float32))  # noqa: E731
    x = m.graph.add_input("x", TensorType(DType.i8, (1, 3, 23, 23)))
    v = x
    for k, cin in ((16, 3), (32, 16)):
        v = b.qlinear_conv(v, f32(0.03), c(np.int8(-4)), c(rng.integers(-128, 128, (k, cin, 3, 3)).astype(np.int8)),
                           f32(rng.uniform(0.001, 0.01, k)), c(np.zeros(k, np.int8)), f32(0.05), c(np.int8(-4)),
                           kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    m.graph.set_outputs([v])
    feeds = {"x": rng.integers(-128, 128, (1, 3, 23, 23)).astype(np.int8)}
    art, dot = _build(m, target)
    np.testing.assert_array_equal(art.run(feeds)[v.name], run_module(m, feeds)[v.name])
    assert _uses_dot(art, dot)


@pytest.mark.parametrize("target", TARGETS + ["arm-cortex-a76", "arm"])
def test_int8_chain_in_an_aot_program(target):
    """The runtime-free program (``--runtime=aot``) runs the same dot-product kernels in its
    planned arena: every output the interpreter's. On x86 (VNNI, AVX2) natively; on AArch64
    under qemu-aarch64, with Armv8.2's ``sdot`` where the core has ``+dotprod`` (Cortex-A76)
    and plain int32 kernels where it does not (Cortex-A72)."""
    import effc
    from effc.codegen.aot_inplace import program_schedule
    from effc.codegen.native import aot_cpu

    module = _chain("fixed_point", batch=1)
    run_pipeline(module, "fuse")
    feeds = {"x": np.random.default_rng(1).integers(0, 256, (1, 5, 12, 12)).astype(np.uint8)}
    want = run_module(module, feeds)
    got = effc.compile(module, target=target, runtime="aot").run(feeds)
    for v in module.graph.outputs:
        np.testing.assert_array_equal(got[v.name], want[v.name], err_msg=f"{v.name} ({target})")
    t = get_target(target)
    cpu = aot_cpu(dict(t.tvm), t.hardware)
    kernels = program_schedule(module, dict(t.tvm), lanes=cpu.lanes, int8_dot=cpu.int8_dot).prim_funcs
    from effc.codegen.layout_int8 import DOTS

    blocks = [DOTS[cpu.int8_dot].block in f.script() for f in kernels.values()] if cpu.int8_dot else [False]
    assert (sum(blocks) >= 4) == (cpu.int8_dot is not None), sorted(kernels)  # (the chain's dot-product convs)
