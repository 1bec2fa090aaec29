"""Blocked channel layouts and effc's default CPU schedules (codegen/layout.py, codegen/schedules/).

Every case compares the compiled model with onnxruntime (``assert_close``: rtol 1e-3, atol
1e-4 x the output's largest magnitude), at several vector widths, so a wrong packing,
index map, group offset or epilogue shows as wrong numbers; the plan and the schedules are
checked by what the lowered module holds (exact counts of layout transforms).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from effc.codegen import build, lower_to_relax
from effc.codegen.build import relax_pipeline
from effc.codegen.schedules import SCHEDULED, Cpu
from effc.models import load_model
from effc.optimize import optimize
from tests.fixtures import FIXTURES, assert_close, ort_run

RNG = np.random.default_rng(7)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.3).astype(np.float32), name)


def _mixed_model() -> onnx.ModelProto:
    """A CNN holding every case the layout plan tells apart: a 3-channel input (read as one
    block of 3), a dense conv, a depthwise conv, a grouped conv whose groups hold whole
    blocks (8 channels each) and one whose groups do not (6 channels: stays NCHW, the
    plain schedule), a residual add with an NCHW operand, a channel concat, pools (max with
    ceil_mode, average counting padding, global average and max), an unfused batch norm,
    PRelu with a per-channel slope, a conv of 10 output channels (no block) and
    flatten → gemm (NCHW again)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),                 # 3 -> 16
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "wd"], ["dw"], pads=[1, 1, 1, 1], group=16),            # depthwise
        helper.make_node("Conv", ["dw", "wg"], ["g2"], group=2),                                  # 16 -> 16, 8 per group
        helper.make_node("Conv", ["r1", "wp"], ["p1"]),                                           # NCHW branch below
        helper.make_node("Add", ["g2", "xs"], ["res"]),                                           # + an NCHW input
        helper.make_node("BatchNormalization", ["res", "bs", "bb", "bm", "bv"], ["bn"]),
        helper.make_node("PRelu", ["bn", "slope"], ["pr"]),
        helper.make_node("Concat", ["pr", "p1"], ["cat"], axis=1),                                # 32 channels
        helper.make_node("MaxPool", ["cat"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
        helper.make_node("Conv", ["ap", "w6"], ["g6"], group=4, pads=[1, 1, 1, 1]),              # 32 -> 24, 6 per group
        helper.make_node("Conv", ["g6", "w10"], ["c10"]),                                         # 24 -> 10
        helper.make_node("GlobalMaxPool", ["g6"], ["gmax"]),
        helper.make_node("GlobalAveragePool", ["c10"], ["gavg"]),
        helper.make_node("Flatten", ["gmax"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    inits = [
        _w("w1", 16, 3, 3, 3), _w("b1", 16), _w("wd", 16, 1, 3, 3), _w("wg", 16, 8, 1, 1), _w("wp", 16, 16, 1, 1),
        _w("bs", 16), _w("bb", 16), _w("bm", 16), numpy_helper.from_array(np.abs(RNG.standard_normal(16)).astype(np.float32) + 0.5, "bv"),
        _w("slope", 16, 1, 1), _w("w6", 24, 8, 3, 3), _w("w10", 10, 24, 1, 1), _w("wf", 5, 24), _w("bf", 5),
    ]
    graph = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16, 16]),
         helper.make_tensor_value_info("xs", TensorProto.FLOAT, [2, 16, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("gavg", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("mp", TensorProto.FLOAT, None)],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("level", ["fold-constants,dce", "O2"])
@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_mixed_layouts_match_onnxruntime(level, lanes):
    model = _mixed_model()
    feeds = {"x": RNG.standard_normal((2, 3, 16, 16)).astype(np.float32),
             "xs": RNG.standard_normal((2, 16, 16, 16)).astype(np.float32)}
    module = load_model(model)
    optimize(module, level)
    got = build(module, lanes=lanes).run(feeds)
    want = ort_run(model, feeds)
    for name in want:
        assert_close(got[name], want[name], f"lanes={lanes} {level} {name}")


def _main_calls(mod: tvm.IRModule) -> list[str]:
    """The PrimFuncs ``main`` calls, in order."""
    names: list[str] = []

    def visit(expr):
        if isinstance(expr, tvm.relax.Call) and expr.op == tvm.ir.Op.get("relax.call_tir"):
            names.append(expr.args[0].name_hint)

    tvm.relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


def _fixture_module(name: str):
    fx = next(f for f in FIXTURES if f.name == name)
    module = load_model(fx.path())
    optimize(module, "O2")
    return module


def test_a_chain_of_convs_stays_blocked():
    """mobilenet_tiny (convs, depthwise convs, residual adds, global pool): the input is
    blocked inside the first conv's kernel, and the only transform back to NCHW is before
    the flatten; with no plan every value is NCHW."""
    module = _fixture_module("mobilenet_tiny")
    mod = lower_to_relax(module, lanes=8)
    calls = [c for c in _main_calls(mod) if c.startswith("to_nchw")]
    assert calls == ["to_nchw"]
    text = mod.script()
    assert text.count("R.Tensor((1, 56, 1, 1, 8)") >= 1  # the pooled features, blocked by 8
    assert "to_nchw" not in lower_to_relax(module).script()


def test_every_conv_kernel_is_scheduled():
    """After effc's pipeline every kernel of light_squeezenet is scheduled (none is left
    to TVM's serial loop nests) and each conv runs in parallel, vectorized."""
    module = _fixture_module("light_squeezenet")
    mod = lower_to_relax(module, lanes=8)
    passes = list(relax_pipeline(Cpu(lanes=8, vector_registers=16, l1d_bytes=32 * 1024, cores=2)).passes)
    cut = [p.info.name for p in passes].index("effc.DefaultSchedules") + 1
    with tvm.transform.PassContext(opt_level=3), tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}):
        kernels = tvm.transform.Sequential(passes[:cut])(mod)
    convs = 0
    for gv, func in kernels.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        if "conv" in gv.name_hint:
            convs += 1
            text = func.script()
            assert func.attrs.get(SCHEDULED), gv.name_hint
            assert "T.parallel" in text and "T.vectorized" in text, gv.name_hint
    assert convs >= 10


def _single(node: onnx.NodeProto, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node, helper.make_node("Relu", [node.output[0]], ["z"])], "one",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in inputs.items()],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("case", ["conv-1-channel", "conv-5-wide", "gemm-1x1", "gemm-transposed-1", "gemm-3-rows"])
def test_one_pixel_and_one_column_tiles(case):
    """Degenerate tiles: a conv with one output channel and rows of 5 pixels (a tile of one
    pixel: vectorizing the tile's loop once vectorized the whole conv, summing each row),
    and gemms with one output column or a weight read transposed."""
    x5 = RNG.standard_normal((1, 1, 5, 5)).astype(np.float32)
    w = RNG.standard_normal((1, 1, 3, 3)).astype(np.float32)
    if case == "conv-1-channel":  # the weight a run-time input: the NCHW conv schedule
        model = _single(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), {"x": x5, "w": w}, {})
        feeds = {"x": x5, "w": w}
    elif case == "conv-5-wide":
        model = _single(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), {"x": x5},
                        {"w": RNG.standard_normal((8, 1, 3, 3)).astype(np.float32)})
        feeds = {"x": x5}
    else:
        m, k, n, trans = {"gemm-1x1": (1, 8, 1, 0), "gemm-transposed-1": (1, 64, 1, 1),
                          "gemm-3-rows": (3, 64, 1, 0)}[case]
        b = RNG.standard_normal((n, k) if trans else (k, n)).astype(np.float32)
        x = RNG.standard_normal((m, k)).astype(np.float32)
        model = _single(helper.make_node("Gemm", ["x", "b"], ["y"], transB=trans), {"x": x, "b": b}, {})
        feeds = {"x": x, "b": b}
    module = load_model(model)
    optimize(module, "O2")
    assert_close(build(module).run(feeds)["z"], ort_run(model, feeds)["z"], case)


def _shuffle_unit() -> onnx.ModelProto:
    """A ShuffleNet unit (4 groups): grouped 1x1 convs of 34 and 68 channels per group (no
    block divides 34; 4 divides 68), the channel shuffle (reshape, transpose, reshape), a
    depthwise 3x3 conv and a residual add; batch 2."""
    def shuffle(x: str, y: str, c: int) -> list[onnx.NodeProto]:
        return [helper.make_node("Reshape", [x, f"{y}_s1"], [f"{y}_a"]),
                helper.make_node("Transpose", [f"{y}_a"], [f"{y}_b"], perm=[0, 2, 1, 3, 4]),
                helper.make_node("Reshape", [f"{y}_b", f"{y}_s2"], [y])]

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["g1"], group=4),                  # 136 -> 136, 34 per group
        helper.make_node("Relu", ["g1"], ["r1"]),
        *shuffle("r1", "sh", 136),
        helper.make_node("Conv", ["sh", "wd"], ["dw"], pads=[1, 1, 1, 1], group=136),  # depthwise
        helper.make_node("Conv", ["dw", "w2"], ["g2"], group=4),                       # 136 -> 272, 68 per group
        helper.make_node("Conv", ["x", "w3"], ["g3"], group=4),                        # 136 -> 272
        helper.make_node("Add", ["g2", "g3"], ["res"]),
        helper.make_node("Relu", ["res"], ["y"]),
    ]
    inits = [_w("w1", 136, 34, 1, 1), _w("b1", 136), _w("wd", 136, 1, 3, 3), _w("w2", 272, 34, 1, 1),
             _w("w3", 272, 34, 1, 1),
             numpy_helper.from_array(np.array([2, 4, 34, 14, 14], np.int64), "sh_s1"),
             numpy_helper.from_array(np.array([2, 136, 14, 14], np.int64), "sh_s2")]
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 136, 14, 14])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("lanes, registers, pointwise, rows", [(16, 32, 3, 17), (8, 16, 1, 2), (4, 32, 1, 17)])
def test_grouped_pointwise_convs_run_as_matmuls_per_group(lanes, registers, pointwise, rows):
    """A grouped 1x1 conv whose groups no block of at least half a vector divides stays
    NCHW and runs as a matmul per group (``pointwise_nchw``): its rows are output channels,
    its columns pixels, as many rows per tile as the registers allow (34 rows: 17 with 32
    registers, 2 with 16). With 16 lanes that is every conv here; with 8 or 4, the
    68-channel groups take blocks of 4 (half of 8, all of 4). Outputs match onnxruntime."""
    model = _shuffle_unit()
    x = RNG.standard_normal((2, 136, 14, 14)).astype(np.float32)
    module = load_model(model)
    optimize(module, "O2")
    want = ort_run(model, {"x": x})["y"]
    cpu = Cpu(lanes=lanes, vector_registers=registers, l1d_bytes=32 * 1024, cores=2)
    passes = list(relax_pipeline(cpu).passes)
    cut = [p.info.name for p in passes].index("effc.DefaultSchedules") + 1
    with tvm.transform.PassContext(opt_level=3), tvm.target.Target({"kind": "llvm", "mcpu": "haswell"}):
        kernels = tvm.transform.Sequential(passes[:cut])(lower_to_relax(module, lanes=lanes))
    scripts = [f.script() for f in kernels.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    matmuls = [s for s in scripts if 'T.sblock("pointwise_conv_update")' in s]
    assert len(matmuls) == pointwise
    narrow = [s for s in matmuls if "T.int64(2), T.int64(4), T.int64(34), T.int64(196)" in s]  # 34 rows per group
    assert narrow and all(f"T.unroll(T.int64({rows}))" in s for s in narrow)
    got = build(module, {"kind": "llvm", "mcpu": "haswell"}, lanes=lanes).run({"x": x})["y"]
    assert_close(got, want, f"shuffle unit, lanes={lanes}")
