"""plan-memory: exact plans on small graphs, the verifier against corrupted plans, real
models against the TFLite-Micro-style figure, and every plan run for real: each kernel
reads and writes one byte arena laid out by the plan (free bytes poisoned before each
step, in-place kernels with scratch simulated the way the rules say they work), and the
results must equal the reference interpreter's."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from effc.ir.builder import Builder
from effc.ir.core import Graph, Module, Value
from effc.ir.interpreter import run_module, run_node
from effc.ir.opdef import node_attrs
from effc.ir.parser import parse_module
from effc.ir.printer import print_module
from effc.ir.types import DType, TensorType
from effc.ir.verifier import verify_module
from effc.models import load_model
from effc.optimize import OptimizeOptions, optimize
from effc.passes import PipelineSpecError, parse_pipeline, run_pipeline
from effc.passes.base import PassContext, PreconditionError
from effc.ir.refine import bind_symbols
from effc.ir.printer import print_module
from effc.passes.memory_plan import (MemoryPlan, PlanError, check_plan, format_plan, plan_memory, tflm_style_bytes,
                                     verify_plan)
from effc.passes.memory_plan_rules import channel_bytes, constant_values, scratch_inplace
from tests.fixtures import LIGHT_MODELS, REPO, light_dir

RNG = np.random.default_rng(0)
F32 = DType.f32


def _module(name: str, *inputs: tuple[str, tuple[int, ...]]) -> tuple[Module, Builder, list[Value]]:
    m = Module(Graph(name))
    xs = [m.graph.add_input(n, TensorType(F32, shape)) for n, shape in inputs]
    return m, Builder(m), xs


def _op(b: Builder, op: str, *ins: Value, name: str, **attrs) -> Value:
    return b.op(op, *ins, name_hint=name, **attrs).output


def _w(b: Builder, *shape: int) -> Value:
    return b.const(RNG.standard_normal(shape).astype(np.float32), name_hint="w")


def chain() -> Module:
    """x[1,4,8,8] (1 KiB) -> conv 1x1 to 8 channels (2 KiB) -> relu -> conv to 4 -> sigmoid."""
    m, b, (x,) = _module("chain", ("x", (1, 4, 8, 8)))
    c1 = _op(b, "conv", x, _w(b, 8, 4, 1, 1), name="c1")
    r1 = _op(b, "relu", c1, name="r1")
    c2 = _op(b, "conv", r1, _w(b, 4, 8, 1, 1), name="c2")
    m.graph.set_outputs([_op(b, "sigmoid", c2, name="y")])
    return m


def residual() -> Module:
    """h = stem(x); y = relu(conv(relu(conv(h))) + h): 512 B at 8 channels, 1 KiB at 16."""
    m, b, (x,) = _module("residual", ("x", (1, 8, 4, 4)))
    h = _op(b, "conv", x, _w(b, 8, 8, 1, 1), name="h")
    a = _op(b, "relu", _op(b, "conv", h, _w(b, 16, 8, 1, 1), name="a"), name="ra")
    c = _op(b, "conv", a, _w(b, 8, 16, 1, 1), name="c")
    m.graph.set_outputs([_op(b, "relu", _op(b, "add", c, h, name="s"), name="y")])
    return m


def concat() -> Module:
    """Two convs of x[1,4,4,4] (256 B) give 256 B and 512 B, concatenated on channels."""
    m, b, (x,) = _module("concat", ("x", (1, 4, 4, 4)))
    p = _op(b, "conv", x, _w(b, 4, 4, 1, 1), name="p")
    q = _op(b, "conv", x, _w(b, 8, 4, 1, 1), name="q")
    cat = _op(b, "concat", p, q, name="cat", axis=1)
    m.graph.set_outputs([_op(b, "relu", cat, name="y")])
    return m


def branchy() -> Module:
    """Two branches x -> big (4 KiB) -> small (256 B), added. Written in the worst order:
    both big tensors first."""
    m, b, (x,) = _module("branchy", ("x", (1, 1, 8, 8)))
    big1 = _op(b, "conv", x, _w(b, 16, 1, 1, 1), name="big1")
    big2 = _op(b, "conv", x, _w(b, 16, 1, 1, 1), name="big2")
    small1 = _op(b, "conv", big1, _w(b, 1, 16, 1, 1), name="small1")
    small2 = _op(b, "conv", big2, _w(b, 1, 16, 1, 1), name="small2")
    m.graph.set_outputs([_op(b, "add", small1, small2, name="y")])
    return m


def _kernel_order(m: Module) -> list[str]:
    consts = constant_values(m.graph)
    return [n.outputs[0].name for n in m.graph.nodes if id(n.outputs[0]) not in consts]


# ----------------------------------------------------------------------------- running a plan


def _region(arena: np.ndarray, offset: int, size: int) -> np.ndarray:
    return arena[offset:offset + size]


def _read(arena: np.ndarray, plan_entries: dict, v: Value) -> np.ndarray:
    e = plan_entries[v.name]
    return np.frombuffer(_region(arena, e.offset, e.size).tobytes(), v.type.dtype.np).reshape(v.type.shape)


def _write_bytes(arena: np.ndarray, offset: int, array: np.ndarray) -> None:
    data = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)
    arena[offset:offset + data.size] = data


def run_in_arena(m: Module, plan: MemoryPlan, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute ``m`` with every arena tensor inside one byte array laid out by ``plan``."""
    g = m.graph
    tensors = {e.name: e for e in plan.entries if e.kind == "tensor"}
    workspace = {e.name: e for e in plan.entries if e.kind == "workspace"}
    arena = np.full(plan.arena_bytes, 0xFF, np.uint8)  # 0xFFFFFFFF is a NaN
    consts = constant_values(g)
    env: dict[int, np.ndarray] = {}
    for v in g.inputs:
        _write_bytes(arena, tensors[v.name].offset, inputs[v.name].astype(v.type.dtype.np))

    def value(v: Value | None) -> np.ndarray | None:
        if v is None:
            return None
        return env[id(v)] if id(v) in consts else _read(arena, tensors, v)

    step = 0
    for node in g.nodes:
        if all(id(o) in consts for o in node.outputs):
            for o, r in zip(node.outputs, run_node(node, [value(v) for v in node.inputs])):
                env[id(o)] = r
            continue
        _poison(arena, plan, step)
        out = node.outputs[0]
        entry = tensors[out.name]
        rule = scratch_inplace(node)
        if entry.alias == "view":
            pass  # the bytes are already there
        elif entry.alias == "inplace" and rule is not None and node.input(rule[0]).name == entry.of:
            _scratch_kernel(node, rule[0], arena, tensors, workspace[out.name], value)
        elif node.op == "concat":  # copies only the inputs that are not slices of the output
            at = entry.offset
            for v in node.inputs:
                e = tensors[v.name]
                if not (e.alias == "slice" and e.of == out.name):
                    _write_bytes(arena, at, _region(arena, e.offset, e.size).copy())
                at += e.size
        else:
            for o, r in zip(node.outputs, run_node(node, [value(v) for v in node.inputs])):
                _write_bytes(arena, tensors[o.name].offset, r.astype(o.type.dtype.np))
        step += 1
    return {v.name: _read(arena, tensors, v).copy() for v in g.outputs}


def _poison(arena: np.ndarray, plan: MemoryPlan, step: int) -> None:
    """Fill every byte no tensor live at ``step`` holds (workspace included) with 0xFF."""
    keep = np.zeros(arena.size, bool)
    for e in plan.entries:
        if e.kind == "tensor" and e.first <= step <= e.last:
            keep[e.offset:e.end] = True
    arena[~keep] = 0xFF


def _scratch_kernel(node, index: int, arena, tensors, ws, value) -> None:
    """Kernels that write over their input through a scratch buffer, as the rules describe."""
    x, out = node.input(index), node.outputs[0]
    xe, oe = tensors[x.name], tensors[out.name]
    first = node if node.body is None else node.body.first
    if first.op == "lrn":
        _lrn_in_place(node, x, out, arena, tensors, ws, value)
    elif first.op == "transpose":
        _transpose_in_place(node, x, out, arena, xe, ws)
    else:  # channel by channel: compute channel c from the arena as it is now, stage it in the scratch
        cb = channel_bytes(out)
        assert cb <= ws.size, "a channel does not fit the workspace"
        for k in range(int(np.prod(out.type.shape[:2]))):
            n, c = divmod(k, out.type.shape[1])
            full = run_node(node, [value(v) for v in node.inputs])[0]
            _write_bytes(arena, ws.offset, full[n, c].astype(out.type.dtype.np))
            _write_bytes(arena, oe.offset + k * cb, _region(arena, ws.offset, cb).copy())


def _lrn_in_place(node, x, out, arena, tensors, ws, value) -> None:
    lo = (int(node_attrs(node)["size"]) - 1) // 2
    cb, channels = channel_bytes(x), x.type.shape[1]
    assert (lo + 1) * cb <= ws.size, "the ring does not fit the workspace"
    dtype = x.type.dtype.np
    for c in range(channels):
        slot = ws.offset + (c % (lo + 1)) * cb
        _write_bytes(arena, slot, _region(arena, tensors[x.name].offset + c * cb, cb).copy())
        data = value(x).copy()
        for k in range(max(0, c - lo), c + 1):  # channels at or below c come from the ring
            ring = _region(arena, ws.offset + (k % (lo + 1)) * cb, cb)
            data[0, k] = np.frombuffer(ring.tobytes(), dtype).reshape(x.type.shape[2:])
        data[0, :max(0, c - lo)] = 0  # overwritten and out of the window (the reference sums all channels)
        y = run_node(node, [data] + [value(v) for v in node.inputs[1:]])[0]
        _write_bytes(arena, tensors[out.name].offset + c * cb, y[0, c])


def _transpose_in_place(node, x, out, arena, xe, ws) -> None:
    perm = [int(p) for p in node_attrs(node)["perm"]]
    moved = max(i for i, p in enumerate(perm) if p != i) + 1
    block = int(np.prod(x.type.shape[moved:])) * x.type.dtype.itemsize
    lead = x.type.shape[:moved]
    assert block <= ws.size, "a block does not fit the workspace"
    # out block b comes from in block src[b]
    src = np.transpose(np.arange(int(np.prod(lead))).reshape(lead), perm[:moved]).reshape(-1)
    done = np.zeros(src.size, bool)
    for s in range(src.size):
        if done[s]:
            continue
        _write_bytes(arena, ws.offset, _region(arena, xe.offset + s * block, block).copy())
        b = s
        while True:
            p = int(src[b])
            source = ws.offset if p == s else xe.offset + p * block
            _write_bytes(arena, xe.offset + b * block, _region(arena, source, block).copy())
            done[b] = True
            if p == s:
                break
            b = p


def _random_inputs(m: Module) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {v.name: rng.standard_normal(v.type.shape).astype(v.type.dtype.np) for v in m.graph.inputs}


def assert_runs(m: Module, plan: MemoryPlan) -> None:
    inputs = _random_inputs(m)
    want, got = run_module(m, inputs), run_in_arena(m, plan, inputs)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def planned(m: Module, **kw) -> MemoryPlan:
    plan = plan_memory(m, **kw)
    verify_module(m)
    verify_plan(m, plan)
    assert_runs(m, plan)
    return plan


# ----------------------------------------------------------------------------- small graphs


def test_chain_exact_sizes() -> None:
    plan = planned(chain())
    assert plan.arena_bytes == 3072  # conv steps: 1 KiB in + 2 KiB out; relu and sigmoid in place
    assert plan.lower_bound == 4096  # at relu: c1 and r1 both live without sharing
    assert plan.step_bytes == (3072, 2048, 3072, 1024)
    assert plan.tensor("r1").alias == "inplace" and plan.tensor("r1").of == "c1"
    assert plan.tensor("y").alias == "inplace" and plan.tensor("y").of == "c2"
    assert plan.arena_bytes == plan.live_peak
    assert planned(chain(), inplace=False).arena_bytes == 4096


def test_chain_tflm_style() -> None:
    assert tflm_style_bytes(chain()) == 4096


def test_residual_block() -> None:
    plan = planned(residual())
    # h stays live across the block: at conv c, h + a + c = 512 + 1024 + 512; add and relu in place
    assert plan.arena_bytes == 2048
    assert plan.tensor("s").alias == "inplace" and plan.tensor("s").of in ("c", "h")
    assert plan.lower_bound == 2560  # at relu(a): h + a + ra


def test_residual_block_fused_writes_over_the_skip() -> None:
    m = residual()
    optimize(m, "fuse", OptimizeOptions(reproducer_dir=None))
    plan = planned(m)
    fused = next(n for n in m.graph.nodes if n.op == "fused" and "add" in str(n.attrs["kind"]))
    entry = plan.tensor(fused.outputs[0].name)
    assert (entry.alias, entry.of) == ("inplace", "h")  # conv+add+relu overwrites its residual, never its conv input
    assert plan.arena_bytes == 1536  # h + ra; the fused conv+add+relu adds nothing


def test_concat_without_copies() -> None:
    plan = planned(concat())
    cat = plan.tensor("cat")
    assert (plan.tensor("p").alias, plan.tensor("p").of, plan.tensor("p").at) == ("slice", "cat", 0)
    assert (plan.tensor("q").alias, plan.tensor("q").at) == ("slice", 256)
    assert plan.tensor("p").offset == cat.offset and plan.tensor("q").offset == cat.offset + 256
    assert plan.arena_bytes == 1024  # x + p + q while q is computed; concat itself adds nothing
    assert plan.lower_bound == 1536
    assert planned(concat(), concat=False).arena_bytes == 1536


def test_concat_input_used_twice_is_copied() -> None:
    m, b, (x,) = _module("twice", ("x", (1, 4, 4, 4)))
    p = _op(b, "conv", x, _w(b, 4, 4, 1, 1), name="p")
    m.graph.set_outputs([_op(b, "concat", p, p, name="cat", axis=1)])
    plan = planned(m)
    assert plan.tensor("p").alias == ""


def test_branchy_graph_is_reordered() -> None:
    kept = planned(branchy(), order="keep")
    assert kept.arena_bytes == 8448  # x + big1 + big2
    m = branchy()
    plan = planned(m)
    assert _kernel_order(m) == ["big1", "small1", "big2", "small2", "y"]
    assert plan.order == ("big1", "small1", "big2", "small2", "y")
    assert plan.arena_bytes == 4608  # one big tensor at a time
    assert plan.order_algorithm.startswith("exact")


def test_greedy_order_rule() -> None:
    m = branchy()
    plan = planned(m, order="greedy")
    assert plan.arena_bytes == 4608 and "greedy" in plan.order_algorithm


def test_large_region_uses_the_greedy_rule() -> None:
    """12 parallel branches have 3^12 downsets: past max_states, the greedy rule (free the
    most memory first) still finds one big tensor at a time."""
    m, b, (x,) = _module("wide", ("x", (1, 1, 8, 8)))
    bigs = [_op(b, "conv", x, _w(b, 16, 1, 1, 1), name=f"big{i}") for i in range(12)]
    smalls = [_op(b, "conv", big, _w(b, 1, 16, 1, 1), name=f"small{i}") for i, big in enumerate(bigs)]
    m.graph.set_outputs([_op(b, "sum", *smalls, name="y")])
    plan = planned(m)
    assert plan.order_algorithm == "greedy in 1 segments"
    assert plan.order[:4] == ("big0", "small0", "big1", "small1")
    assert plan.arena_bytes == 256 + 4096 + 11 * 256  # at big11: x, one big tensor and 11 small ones


def test_order_kept_when_not_worse() -> None:
    m = chain()
    before = _kernel_order(m)
    planned(m)
    assert _kernel_order(m) == before


def test_workspace_is_planned_in_the_arena() -> None:
    plan = planned(chain(), workspace={"c1": 1000, "y": 64})
    ws = [e for e in plan.entries if e.kind == "workspace"]
    assert {(e.name, e.size, e.first) for e in ws} == {("c1", 1000, 0), ("y", 64, 3)}
    assert plan.arena_bytes == 3072 + 1008  # 1000 rounded up to the alignment at the peak step


def test_depthwise_conv_in_place_with_a_scratch_channel() -> None:
    m, b, (x,) = _module("dw", ("x", (1, 3, 8, 8)))
    h = _op(b, "conv", x, _w(b, 8, 3, 1, 1), name="h")  # 2 KiB
    d = _op(b, "conv", h, _w(b, 8, 1, 3, 3), name="d", group=8, pads=(1, 1, 1, 1))
    s2 = _op(b, "conv", d, _w(b, 8, 1, 3, 3), name="s2", group=8, pads=(1, 1, 1, 1), strides=(2, 2))
    m.graph.set_outputs([_op(b, "max_pool", s2, name="y", kernel_shape=(2, 2), strides=(2, 2))])
    plan = planned(m)
    for name, of, scratch in (("d", "h", 256), ("s2", "d", 64), ("y", "s2", 16)):
        assert (plan.tensor(name).alias, plan.tensor(name).of) == ("inplace", of)
        assert any(e.kind == "workspace" and e.name == name and e.size == scratch for e in plan.entries)
    assert plan.arena_bytes == 768 + 2048  # the first conv: x + h


def test_lrn_and_transpose_in_place() -> None:
    m, b, (x,) = _module("lrn", ("x", (1, 6, 4, 4)))
    h = _op(b, "conv", x, _w(b, 6, 6, 1, 1), name="h")
    n = _op(b, "lrn", h, name="n", size=5)
    r = _op(b, "reshape", n, b.const(np.array([1, 2, 3, 4, 4], np.int64), name_hint="shape"), name="r")
    t = _op(b, "transpose", r, name="t", perm=(0, 2, 1, 3, 4))
    m.graph.set_outputs([_op(b, "flatten", t, name="y")])
    plan = planned(m)
    assert (plan.tensor("n").alias, plan.tensor("t").alias, plan.tensor("t").of) == ("inplace", "inplace", "r")
    assert plan.tensor("r").alias == "view" and plan.tensor("y").alias == "view"
    ws = {e.name: e.size for e in plan.entries if e.kind == "workspace"}
    assert ws == {"n": 3 * 64, "t": 64 + 1}  # a ring of 3 channels; one 4x4 block and a bit per block


def test_graph_inputs_and_outputs_are_never_overwritten() -> None:
    m, b, (x,) = _module("io", ("x", (1, 4, 4, 4)))
    r = _op(b, "relu", x, name="r")
    m.graph.set_outputs([r, _op(b, "sigmoid", r, name="y")])
    plan = planned(m)
    assert plan.tensor("r").alias == "" and plan.tensor("y").alias == ""
    assert plan.arena_bytes == 512  # y may take x's bytes once x is read, never r's


# ----------------------------------------------------------------------------- the verifier


def _corrupt(plan: MemoryPlan, name: str, **changes) -> MemoryPlan:
    entries = tuple(dataclasses.replace(e, **changes) if e.kind == "tensor" and e.name == name else e
                    for e in plan.entries)
    return dataclasses.replace(plan, entries=entries)


def _problems(m: Module, plan: MemoryPlan) -> str:
    problems = check_plan(m, plan)
    assert problems, "the verifier accepted a corrupted plan"
    with pytest.raises(PlanError):
        verify_plan(m, plan)
    return "\n".join(problems)


def test_verifier_catches_overlap() -> None:
    m = chain()
    plan = plan_memory(m)
    assert check_plan(m, plan) == []
    assert "overlaps" in _problems(m, _corrupt(plan, "c1", offset=plan.tensor("x").offset))


def test_verifier_catches_out_of_arena_and_misalignment() -> None:
    m = chain()
    plan = plan_memory(m)
    assert "past the arena" in _problems(m, dataclasses.replace(plan, arena_bytes=plan.arena_bytes - 16))
    assert "not aligned" in _problems(m, _corrupt(plan, "c1", offset=plan.tensor("c1").offset + 4))


def test_verifier_catches_bad_aliases() -> None:
    m = chain()
    plan = plan_memory(m)
    # a conv may not write over its input
    assert "may not write over" in _problems(m, _corrupt(plan, "c2", alias="inplace", of="r1"))
    # in place of a tensor still needed later (a graph output)
    m2, b, (x,) = _module("io", ("x", (1, 4, 4, 4)))
    r = _op(b, "relu", x, name="r")
    m2.graph.set_outputs([r, _op(b, "sigmoid", r, name="y")])
    p2 = plan_memory(m2)
    assert "still needed" in _problems(m2, _corrupt(p2, "y", alias="inplace", of="r", offset=p2.tensor("r").offset))
    # a view of a tensor its node does not read
    assert "no view" in _problems(m, _corrupt(plan, "r1", alias="view", of="x", offset=plan.tensor("x").offset))
    # dropping a declared in-place makes the hand-over an overlap
    assert "overlaps" in _problems(m, _corrupt(plan, "r1", alias="", of=""))


def test_verifier_catches_bad_slices_and_lifetimes() -> None:
    m = concat()
    plan = plan_memory(m)
    assert "must sit at byte" in _problems(m, _corrupt(plan, "q", at=128, offset=plan.tensor("cat").offset + 128))
    assert "lives over steps" in _problems(m, _corrupt(plan, "p", last=plan.tensor("p").last + 1))
    assert "order" in _problems(m, dataclasses.replace(plan, order=plan.order[::-1]))


def test_verifier_catches_a_missing_workspace() -> None:
    m, b, (x,) = _module("dw", ("x", (1, 3, 8, 8)))
    h = _op(b, "conv", x, _w(b, 8, 3, 1, 1), name="h")
    m.graph.set_outputs([_op(b, "conv", h, _w(b, 8, 1, 3, 3), name="d", group=8, pads=(1, 1, 1, 1))])
    plan = plan_memory(m)
    stripped = dataclasses.replace(plan, entries=tuple(e for e in plan.entries if e.kind == "tensor"))
    assert "workspace" in _problems(m, stripped)


# ----------------------------------------------------------------------------- pass, text, symbols


def test_pass_in_a_pipeline() -> None:
    m = chain()
    pipeline = parse_pipeline("plan-memory{align=64 order=keep}")
    assert str(pipeline) == "plan-memory{align=64 order=keep}"
    run_pipeline(m, pipeline)
    plan = m.memory_plan
    assert plan.align == 64 and all(e.offset % 64 == 0 for e in plan.entries)
    verify_plan(m, plan)
    with pytest.raises(PipelineSpecError):
        parse_pipeline("plan-memory{order=sideways}")
    with pytest.raises(PipelineSpecError):
        parse_pipeline("plan-memory{align=24}")


def test_pass_with_workspace_reorders() -> None:
    m = branchy()
    runner = run_pipeline(m, "O2,plan-memory", PassContext(options={"workspace_bytes": {"y": 32}}))
    assert runner.history[-1].changed  # the order changed
    assert any(e.kind == "workspace" and e.name == "y" for e in m.memory_plan.entries)
    verify_plan(m, m.memory_plan)


def test_symbolic_shapes_need_binding() -> None:
    m = load_model(REPO / "examples" / "digits_cnn.onnx")
    with pytest.raises(PreconditionError, match="bind"):
        plan_memory(m)
    bind_symbols(m, {"N": 1})
    assert all(v.type.is_static for v in m.graph.values())
    verify_module(m)


def test_plan_prints_as_comments_and_parses_back() -> None:
    m = concat()
    plan = plan_memory(m, tflm_bytes=4096)
    text = print_module(m)
    assert format_plan(plan) in text
    assert "// memory plan: arena 1,024 B; lower bound 1,536 B (no sharing); live peak 1,024 B; " \
           "TFLM-style 4,096 B; align 16" in text
    assert any("%q" in line and "slice of %cat +256" in line for line in text.splitlines())
    assert all(line.startswith("//") for line in format_plan(plan).splitlines())
    parsed = parse_module(text, m.weights)  # the plan lines are comments: the IR parses back without it
    assert parsed.memory_plan is None
    assert print_module(parsed) + "\n" + format_plan(plan) == text


# ----------------------------------------------------------------------------- real models


@pytest.mark.parametrize("name", ["mobilenet_tiny.onnx", "digits_cnn.onnx"])
def test_real_model_below_tflm_style(name: str) -> None:
    path = REPO / "examples" / name
    tflm = tflm_style_bytes(load_model(path), {"N": 1})
    m = load_model(path)
    bind_symbols(m, {"N": 1})
    optimize(m, "O2", OptimizeOptions(reproducer_dir=None))
    plan = planned(m, tflm_bytes=tflm)
    assert plan.arena_bytes <= plan.lower_bound <= tflm
    assert plan.arena_bytes <= 0.8 * tflm
    assert plan.arena_bytes == plan.live_peak  # no fragmentation on these


PLANNED = {"bvlc_alexnet": 1_721_856, "densenet121": 7_225_344, "inception_v1": 3_813_376, "inception_v2": 3_813_376,
           "resnet50": 5_218_304, "shufflenet": 1_806_336, "squeezenet": 3_756_288, "vgg19": 25_690_112,
           "zfnet512": 5_164_416}
"""The effc arenas of bench/RESULTS.md's memory table (``bench/memory_plans.py``): a change may only lower them."""


@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_below_tflm_style(name: str) -> None:
    path = light_dir() / f"light_{name}.onnx"
    tflm = tflm_style_bytes(load_model(path))
    m = load_model(path)
    optimize(m, "O2", OptimizeOptions(reproducer_dir=None))
    plan = plan_memory(m, tflm_bytes=tflm)
    verify_plan(m, plan)
    assert plan.arena_bytes <= plan.lower_bound <= tflm
    assert plan.arena_bytes <= PLANNED[name]
    if name != "vgg19":  # its 400 MB fc6 weight is a constant_of_shape the simulation would build
        assert_runs(m, plan)


def test_a_pad_slice_is_also_written_in_place() -> None:
    """A residual block before a channel pad: the residual add writes its output over a
    dying input and, at once, into its slice of the pad's output, so the pad copies nothing new."""
    def block() -> Module:
        m, b, (x,) = _module("residual_pad", ("x", (1, 4, 4, 4)))
        a = _op(b, "relu", x, name="a")
        d = _op(b, "conv", a, _w(b, 4, 1, 3, 3), name="d", group=4, pads=(1, 1, 1, 1))
        r = _op(b, "add", d, a, name="r")
        p = _op(b, "pad", r, b.const(np.array([0, 0, 0, 0, 0, 4, 0, 0], np.int64)), name="p", mode="constant")
        m.graph.set_outputs([_op(b, "sigmoid", p, name="y")])
        return m

    plan = planned(block())
    r = plan.tensor("r")
    assert (r.alias, r.of, r.at, r.over) == ("slice", "p", 0, "d")
    assert "%r " in plan.format() and "slice of %p +0, in-place of %d" in plan.format()
    assert plan.arena_bytes == 512 < planned(block(), concat=False).arena_bytes
