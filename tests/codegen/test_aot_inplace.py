"""The AOT driver's in-place rules (``codegen/aot_inplace.py``), checked on small graphs:
the one-channel module really is one channel of the layer, a layer whose weights cannot
be sliced per channel keeps its whole-tensor kernel, and the compiled program (channel
loop, in-place residual add, copy-free concat) matches the reference interpreter."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from effc.codegen.aot import CToolchain
from effc.codegen.aot_c import compile_program, emit
from effc.codegen.aot_inplace import channel_module, channelwise_node
from effc.codegen.native import build_native
from effc.ir.builder import Builder
from effc.ir.core import Graph, Module
from effc.ir.interpreter import run_module
from effc.ir.types import DType, TensorType
from effc.optimize import optimize

RNG = np.random.default_rng(0)


def _depthwise(channels: int = 4, epilogue_scale: tuple[int, ...] = (4, 1, 1)) -> Module:
    """x -> depthwise conv (bias) * per-channel scale -> clip: one fused node after -O2."""
    g = Graph("dw")
    m = Module(g)
    x = g.add_input("x", TensorType(DType.f32, (1, channels, 6, 6)))
    b = Builder(m)
    w = b.const(RNG.standard_normal((channels, 1, 3, 3)).astype(np.float32), name_hint="w")
    bias = b.const(RNG.standard_normal(channels).astype(np.float32), name_hint="b")
    y = b.conv(x, w, bias, group=channels, pads=(1, 1, 1, 1))
    s = b.const(RNG.standard_normal(epilogue_scale).astype(np.float32), name_hint="s")
    g.set_outputs([b.clip(b.mul(y, s), b.const(np.float32(0)), b.const(np.float32(6)))])
    optimize(m, "O2")
    return m


def test_one_channel_module_is_channel_zero_of_the_layer():
    m = _depthwise()
    node = next(n for n in m.graph.nodes if n.op == "fused")
    assert channelwise_node(node) == 0
    one = channel_module(node, 0)
    assert one is not None and one.graph.outputs[0].type.shape == (1, 1, 6, 6)
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    full = run_module(m, {"x": x})[m.graph.outputs[0].name]
    part = run_module(one, {"x": x[:, :1]})[one.graph.outputs[0].name]
    np.testing.assert_allclose(part, full[:, :1], rtol=1e-6, atol=1e-6)


def test_a_scale_along_width_is_shared_not_sliced():
    """A [6] constant broadcasts along W: every channel uses all of it."""
    m = _depthwise(epilogue_scale=(6,))
    node = next(n for n in m.graph.nodes if n.op == "fused")
    one = channel_module(node, 0)
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    full = run_module(m, {"x": x})[m.graph.outputs[0].name]
    np.testing.assert_allclose(run_module(one, {"x": x[:, :1]})[one.graph.outputs[0].name], full[:, :1],
                               rtol=1e-6, atol=1e-6)


def _network() -> Module:
    """Each rule once: a depthwise conv and a max pool over their dying inputs (channel by
    channel), a concat of two convs (slices), a conv + residual add over the dying residual."""
    g = Graph("net")
    m = Module(g)
    x = g.add_input("x", TensorType(DType.f32, (1, 3, 8, 8)))
    b = Builder(m)

    def w(*shape):
        return b.const((RNG.standard_normal(shape) * 0.3).astype(np.float32), name_hint="w")

    r = b.conv(x, w(16, 3, 1, 1), w(16))  # the residual
    h = b.relu(b.conv(x, w(32, 3, 3, 3), w(32), pads=(1, 1, 1, 1)))
    d = b.clip(b.conv(h, w(32, 1, 3, 3), w(32), group=32, pads=(1, 1, 1, 1)), b.const(np.float32(0)),
               b.const(np.float32(6)))
    p = b.max_pool(b.relu(b.conv(x, w(8, 3, 1, 1), w(8))), kernel_shape=(3, 3), pads=(1, 1, 1, 1))
    c = b.concat(b.conv(d, w(8, 32, 1, 1), w(8)), b.conv(p, w(8, 8, 1, 1), w(8)), axis=1)
    y = b.relu(b.add(b.conv(c, w(16, 16, 1, 1), w(16)), r))
    g.set_outputs([b.global_average_pool(y)])
    optimize(m, "O2")
    return m


def test_program_with_every_rule_matches_the_interpreter(tmp_path):
    m = _network()
    toolchain = CToolchain(cc="cc")
    program, schedule, plan = emit(m, {"kind": "c"}, toolchain, "net")
    assert schedule.splits and schedule.slices and set(schedule.inplace) - {
        schedule.steps[t].args[-1].storage_key[1] for t in schedule.splits}  # all three rules fire
    # TVM's kernels assume 64-byte aligned buffers: 36-byte 3x3 weight slices are staged
    assert "staged: 36-byte slices are not 64-byte aligned" in program.files["model.c"].decode()
    _assert_runs(m, program, toolchain, tmp_path)


def _two_convs(combine) -> Module:
    """``combine(builder, conv(x), conv(x))`` (32 channels each), then a global pool."""
    g = Graph("two")
    m = Module(g)
    x = g.add_input("x", TensorType(DType.f32, (1, 3, 8, 8)))
    b = Builder(m)
    c1, c2 = (b.conv(x, b.const(RNG.standard_normal((32, 3, 1, 1)).astype(np.float32))) for _ in range(2))
    g.set_outputs([b.global_average_pool(combine(b, c1, c2))])
    optimize(m, "O2")
    return m


def _residual() -> Module:
    """relu(conv(x) + r) with r = conv(x): the output can take over r's bytes."""
    return _two_convs(lambda b, r, y: b.relu(b.add(y, r)))


def _concat() -> Module:
    """concat(conv(x), conv(x)): both convs can write into the concat's output."""
    return _two_convs(lambda b, c1, c2: b.concat(c1, c2, axis=1))


@pytest.mark.parametrize("rule, make, saved", [("split_channels", _network, 6144),
                                               ("pointwise_inplace", _residual, 8192),
                                               ("slices_in_place", _concat, 16384)])
def test_each_rule_shrinks_the_arena(rule, make, saved, monkeypatch):
    """Switched off, each rule costs the network built for it a tensor's worth of arena
    (less the one-channel scratch a split needs); inputs and outputs in the caller's buffers."""
    from effc.codegen import aot_inplace

    _, _, plan = emit(make(), {"kind": "c"}, CToolchain(cc="cc"), "net", io_in_arena=False)
    monkeypatch.setattr(aot_inplace, rule, lambda *a, **k: 0)
    _, _, without = emit(make(), {"kind": "c"}, CToolchain(cc="cc"), "net", io_in_arena=False)
    assert without.arena_bytes - plan.arena_bytes == saved


def _assert_runs(m: Module, program, toolchain: CToolchain, tmp_path) -> None:
    """The program (C kernels, built here by the host compiler) and an x86 build of ``m``
    (LLVM kernels, vectorized) match the reference interpreter on a random input."""
    exe = compile_program(program, toolchain, tmp_path, "model")
    (name, t), = program.interface.inputs
    x = RNG.standard_normal(t.shape).astype(np.float32)
    (tmp_path / "in0.bin").write_bytes(x.tobytes())
    subprocess.run([str(exe), "in0.bin", "out0.bin"], cwd=tmp_path, check=True, timeout=60)
    want = run_module(m, {name: x})[m.graph.outputs[0].name]
    got = np.frombuffer((tmp_path / "out0.bin").read_bytes(), np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    native = build_native(m, "x86", name=program.name)
    np.testing.assert_allclose(native.run({name: x})[m.graph.outputs[0].name], want, rtol=1e-4, atol=1e-5)


def _shuffle() -> Module:
    """ShuffleNet's channel shuffle between two convs: reshape to (1, 3, 4, 5, 5), swap the
    group axes, reshape back; the transpose's input dies there."""
    g = Graph("shuffle")
    m = Module(g)
    x = g.add_input("x", TensorType(DType.f32, (1, 3, 5, 5)))
    b = Builder(m)
    c = b.relu(b.conv(x, b.const(RNG.standard_normal((12, 3, 1, 1)).astype(np.float32))))
    s = b.reshape(c, b.const(np.array([1, 3, 4, 5, 5], np.int64)))
    t = b.transpose(s, perm=(0, 2, 1, 3, 4))
    y = b.reshape(t, b.const(np.array([1, 12, 5, 5], np.int64)))
    g.set_outputs([b.conv(y, b.const(RNG.standard_normal((2, 12, 1, 1)).astype(np.float32)))])
    optimize(m, "O2")
    return m


def test_transpose_runs_in_place_block_by_block(tmp_path):
    """The driver permutes the channel shuffle's 12 blocks of 100 bytes over its dying input
    (no kernel): the arena is the plan's, and the program (C kernels on this host, LLVM
    kernels for x86) matches the interpreter."""
    from effc.passes.memory_plan import plan_memory

    m = _shuffle()
    toolchain = CToolchain(cc="cc")
    program, schedule, plan = emit(m, {"kind": "c"}, toolchain, "shuffle")
    (p,) = schedule.own.values()
    assert (p.dims, p.strides, p.block, p.blocks) == ((1, 4, 3), (12, 1, 4), 100, 12)
    assert program.notes["driver_in_place"] == 1 and "transpose" not in program.notes["kernel_names"]
    assert program.arena_bytes == plan_memory(_shuffle(), align=64).arena_bytes
    _assert_runs(m, program, toolchain, tmp_path)


def _lrn() -> Module:
    """conv -> LRN (size 5: two channels below, two above) -> conv, as in AlexNet and Inception."""
    g = Graph("lrn")
    m = Module(g)
    x = g.add_input("x", TensorType(DType.f32, (1, 3, 6, 6)))
    b = Builder(m)
    c = b.relu(b.conv(x, b.const(RNG.standard_normal((8, 3, 1, 1)).astype(np.float32))))
    n = b.op("lrn", c, size=5, alpha=1e-2, beta=0.75, bias=2.0, name_hint="n").output
    g.set_outputs([b.conv(n, b.const(RNG.standard_normal((2, 8, 1, 1)).astype(np.float32)))])
    optimize(m, "O2")
    return m


def test_lrn_runs_in_place_through_a_ring_of_channels(tmp_path):
    """The driver computes the LRN over its dying input channel by channel, keeping the two
    channels below in a ring of three (no kernel): the arena is the plan's and the program
    (C kernels on this host, LLVM kernels for x86) matches the interpreter."""
    from effc.passes.memory_plan import plan_memory

    m = _lrn()
    toolchain = CToolchain(cc="cc")
    program, schedule, plan = emit(m, {"kind": "c"}, toolchain, "lrn")
    (r,) = schedule.own.values()
    assert (r.channels, r.spatial, r.below, r.above, r.scratch_bytes(64)) == (8, 36, 2, 2, 3 * 36 * 4)
    assert program.arena_bytes == plan_memory(_lrn(), align=64).arena_bytes
    _assert_runs(m, program, toolchain, tmp_path)
