"""Structured pruning (passes/prune.py): coupled channels found through residual adds,
concats, depthwise convolutions and flatten -> gemm; the lowest-norm classes removed from
every tensor and weight they reach; the pruned graph verifies, runs in the interpreter and
in onnxruntime (its ONNX export) with the same outputs; the CLI writes it."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from effc.ir.builder import Builder
from effc.ir.core import Graph, Module
from effc.ir.interpreter import run_module
from effc.ir.refine import bind_input_shapes
from effc.ir.types import DType, TensorType
from effc.ir.verifier import verify_module
from effc.models import load_model
from effc.onnx_export import export_onnx
from effc.passes import run_pipeline
from effc.passes.prune import channel_graph, choose, prune
from tests.fixtures import FIXTURES, REPO


def _residual_block() -> tuple[Module, dict[str, np.ndarray]]:
    """x -> conv a (6 ch) -> relu -> conv b (6 ch) -> + relu(a) -> conv c (4 ch, output).
    Channel i of a and of b are coupled by the add; a's rows have L1 norms 1..6 times 10,
    b's 6..1, so the classes score the same except where the norms are made to differ."""
    rng = np.random.default_rng(0)
    m = Module(Graph("g"))
    b = Builder(m)
    x = m.graph.add_input("x", TensorType(DType.f32, (1, 3, 8, 8)))
    wa = rng.choice([-1.0, 1.0], (6, 3, 3, 3)).astype(np.float32)
    wa *= (np.asarray([5, 1, 6, 2, 4, 3], np.float32) / 27)[:, None, None, None]  # row L1: 5 1 6 2 4 3
    wb = rng.choice([-1.0, 1.0], (6, 6, 1, 1)).astype(np.float32)
    wb *= (np.asarray([5, 1, 6, 2, 4, 3], np.float32) / 6)[:, None, None, None]
    a = b.relu(b.conv(x, b.const(wa), b.const(np.zeros(6, np.float32)), pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
    s = b.add(b.conv(a, b.const(wb), kernel_shape=[1, 1]), a)
    y = b.conv(b.relu(s), b.const(rng.standard_normal((4, 6, 1, 1)).astype(np.float32)), kernel_shape=[1, 1])
    m.graph.set_outputs([y])
    return m, {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_residual_channels_are_one_class_and_the_weakest_go():
    """The add makes channel i of both convs one class: 6 classes in one group, not 12; at
    a ratio of 1/2 the three of lowest summed norm (1, 2, 3: channels 1, 3, 5) go from both
    convs, the consumer loses the same input columns, and the block still computes what the
    unpruned one computes on the channels kept (the rest were exactly removed)."""
    m, feeds = _residual_block()
    g = channel_graph(m)
    assert len(g.sources) == 3 and len(g.classes()) == 6  # (conv c's output is the graph's: frozen)
    removed = choose(g, 0.5)
    gone = sorted({i for s in g.sources[:2] for i, a in enumerate(s.atoms) if g.find(a) in removed})
    assert gone == [1, 3, 5]
    report = prune(m, 0.5)
    verify_module(m)
    convs = [n for n in m.graph.nodes if n.op == "conv"]
    assert [tuple(n.input(1).type.shape) for n in convs] == [(3, 3, 3, 3), (3, 3, 1, 1), (4, 3, 1, 1)]
    assert report.channels[convs[0].outputs[0].name] == (6, 3)
    assert report.frozen == {f"graph output %{m.graph.outputs[0].name}": 4}  # (conv c's channels, and why)
    assert "kept whole: 4 channels (graph output" in report.table()
    got = run_module(m, feeds)
    assert got[m.graph.outputs[0].name].shape == (1, 4, 8, 8)


def _model(name: str):
    fx = next(f for f in FIXTURES if f.name == name)
    m = load_model(fx.path())
    feeds = fx.inputs(onnx.load(str(fx.path()), load_external_data=False))
    bind_input_shapes(m, {k: v.shape for k, v in feeds.items()})
    run_pipeline(m, "fold")
    return m, feeds


@pytest.mark.parametrize("name, ratio, shrink", [
    ("mobilenet_tiny", 0.5, 0.35),   # residual adds across bottlenecks, depthwise
    ("digits_cnn", 0.25, 0.65),      # global pool -> gemm
    ("mnist_conv", 0.5, 0.45),       # flatten (reshape) -> matmul: one block of 16 features per channel
    ("light_squeezenet", 0.5, 0.4),  # fire modules: concat of expand 1x1 and 3x3
    ("light_resnet50", 0.5, 0.3),    # bottlenecks joined by Sum
    ("light_inception_v1", 0.5, 0.35),  # four-branch concats; LRN freezes the channels it normalizes
    ("light_densenet121", 0.5, 0.35),   # every layer's output concatenated onto the block's
    ("light_shufflenet", 0.5, 0.45),    # grouped 1x1 convs and channel shuffles
])
def test_pruned_real_models_verify_and_run_in_onnxruntime(name, ratio, shrink):
    """Every group loses ``ratio`` of its classes; parameters shrink below ``shrink`` of the
    original; the module verifies; its ONNX export runs in onnxruntime and equals the
    interpreter on the pruned module; the outputs keep their shapes."""
    m, feeds = _model(name)
    before = {k: v.shape for k, v in run_module(m, feeds).items()} if name != "light_squeezenet" else None
    report = prune(m, ratio)
    verify_module(m)
    assert report.params_after < shrink * report.params_before, report.table()
    assert any(after < b for b, after in report.channels.values())
    want = run_module(m, feeds)
    sess = ort.InferenceSession(export_onnx(m).SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for k, w in want.items():
        assert before is None or w.shape == before[k]
        np.testing.assert_allclose(got[k], w, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(w).max())))


def test_exclude_and_global_mode():
    """An --exclude'd conv keeps its channels (and what they are coupled to); ``global``
    ranks every class together and removes the ratio of all of them."""
    m, _ = _model("mobilenet_tiny")
    first = next(n for n in m.graph.nodes if n.op == "conv").outputs[0].name
    report = prune(m, 0.5, exclude=(first,))
    assert report.channels[first][0] == report.channels[first][1]
    m, _ = _model("mobilenet_tiny")
    g = channel_graph(m)
    removed = choose(g, 0.3, mode="global")
    assert abs(len(removed) - round(0.3 * len(g.classes()))) <= 1


def test_reconstruction_recovers_accuracy_without_training():
    """digits_cnn at 50%: the pruned model without a refit guesses (~10%); refitting each
    layer that lost inputs by least squares on 64 calibration images brings it back above
    90% (the float model: 99.7%), each refit lowering its layer's output error."""
    from tests import labelled
    from effc.ir.parser import copy_module

    data = labelled.digits(64)
    m = load_model(REPO / "examples" / "digits_cnn.onnx")
    run_pipeline(m, "fold")

    def accuracy(module):
        return float((run_module(module, {"x": data.x})["logits"].argmax(1) == data.y).mean())

    plain, fitted = copy_module(m), copy_module(m)
    prune(plain, 0.5)
    report = prune(fitted, 0.5, samples={"x": data.calib})
    verify_module(fitted)
    assert accuracy(plain) < 0.5 < 0.9 < accuracy(fitted), (accuracy(plain), accuracy(fitted))
    assert len(report.fits) == 3 and all(f.error_after < 0.7 * f.error_before for f in report.fits), report.table()
    assert "refitted" in report.table()


def test_round_to_keeps_multiples_of_the_block():
    """``round_to=8``: every pruned group of mobilenet_tiny keeps a multiple of 8 channels."""
    m, _ = _model("mobilenet_tiny")
    report = prune(m, 0.4, round_to=8)
    verify_module(m)
    pruned = [(b, a) for b, a in report.channels.values() if a != b]
    assert pruned and all(a % 8 == 0 for b, a in pruned), report.channels


def test_activation_criterion_ranks_by_outputs_on_samples():
    """``activation``: a channel the ReLU always zeroes (the largest weights, but a bias of
    -100) is the first to go, though ``l1`` keeps it first; without samples the criterion
    is refused."""
    from effc.ir.errors import InputError

    rng = np.random.default_rng(1)
    m = Module(Graph("g"))
    b = Builder(m)
    x = m.graph.add_input("x", TensorType(DType.f32, (1, 2, 6, 6)))
    w = rng.choice([-1.0, 1.0], (4, 2, 3, 3)).astype(np.float32)
    w *= np.asarray([1, 2, 9, 3], np.float32)[:, None, None, None]
    bias = np.asarray([0, 0, -100, 0], np.float32)
    a = b.relu(b.conv(x, b.const(w), b.const(bias), kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    m.graph.set_outputs([b.conv(a, b.const(rng.standard_normal((3, 4, 1, 1)).astype(np.float32)), kernel_shape=[1, 1])])
    feeds = {"x": rng.standard_normal((4, 2, 6, 6)).astype(np.float32)}
    g = channel_graph(m)
    first = g.sources[0].atoms

    def gone(removed):
        return [i for i, atom in enumerate(first) if g.find(atom) in removed]

    assert gone(choose(g, 0.25)) == [0]  # (the smallest weights)
    assert gone(choose(g, 0.25, "activation", samples=feeds)) == [2]  # (always 0 after the ReLU)
    with pytest.raises(InputError, match="give --calib"):
        choose(g, 0.5, "activation")


def test_bad_ratio_and_unknown_exclude_are_refused():
    from effc.ir.errors import InputError

    m, _ = _residual_block()
    with pytest.raises(InputError, match="--ratio must be"):
        prune(m, 1.0)
    with pytest.raises(InputError, match="--exclude names no"):
        prune(m, 0.5, exclude=("nope",))


def test_cli_prune_writes_an_onnx_model(tmp_path):
    out = tmp_path / "pruned.onnx"
    proc = subprocess.run([sys.executable, "-m", "effc.cli", "prune", str(REPO / "examples" / "mobilenet_tiny.onnx"),
                           "--ratio", "0.25", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "parameters: 51,588 ->" in proc.stderr
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32))
    fitted = subprocess.run([sys.executable, "-m", "effc.cli", "prune", str(REPO / "examples" / "mobilenet_tiny.onnx"),
                             "--ratio", "0.25", "--calib", str(calib), "-o", str(tmp_path / "fitted.onnx")],
                            capture_output=True, text=True)
    assert fitted.returncode == 0 and "after least squares" in fitted.stderr, fitted.stderr
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"input": np.zeros((1, 3, 64, 64), np.float32)})[0]
    assert y.shape == (1, 10)
    bad = subprocess.run([sys.executable, "-m", "effc.cli", "prune", str(REPO / "examples" / "mobilenet_tiny.onnx"),
                          "--ratio", "1.5", "-o", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "--ratio must be" in bad.stderr and "Traceback" not in bad.stderr


def _attention_block(heads: int = 4, d: int = 4, ffn: int = 32, dead_heads=(1, 3)) -> onnx.ModelProto:
    """One encoder layer as PyTorch exports it, with a dynamic batch and sequence: Q/K/V
    MatMul + bias, the head split by a Reshape whose target concatenates dims read from a
    Shape at run time with the constants (heads, d), Transpose, scaled scores, Softmax,
    the heads merged again, the output projection, residual, LayerNorm, a ReLU FFN and a
    second residual. The ``dead_heads`` have zero Q/K/V columns, and the even FFN units
    zero input columns: removing exactly them leaves the output unchanged."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    hidden = heads * d
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    def proj(name, x, cols, zero_cols=()):
        w = rng.standard_normal((hidden if name != "w2" else ffn, cols)).astype(np.float32) * 0.3
        b = rng.standard_normal(cols).astype(np.float32) * 0.1
        w[:, list(zero_cols)], b[list(zero_cols)] = 0, 0
        return node("Add", [const(name + ".b", b), node("MatMul", [x, const(name + ".w", w)], name + ".mm")], name)

    dead = [h * d + i for h in dead_heads for i in range(d)]
    split = [const("i0", np.array(0)), const("i1", np.array(1)), const("ax0", np.array([0], np.int64))]

    def leading(v):  # [B, S] of v, read at run time
        shape = node("Shape", [v], v + ".shape")
        return [node("Unsqueeze", [node("Gather", [shape, split[i]], f"{v}.d{i}"), split[2]], f"{v}.u{i}")
                for i in (0, 1)]

    def heads_of(v, perm):
        dims = leading(v)
        shape = node("Concat", dims + [const(v + ".h", np.array([heads], np.int64)),
                                       const(v + ".dh", np.array([d], np.int64))], v + ".target", axis=0)
        return node("Transpose", [node("Reshape", [v, shape], v + ".split")], v + ".t", perm=perm)

    q, k, v = (heads_of(proj(n, "x", hidden, dead), p) for n, p in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]),
                                                                   ("v", [0, 2, 1, 3])))
    scores = node("Div", [node("MatMul", [q, k], "qk"), const("scale", np.array(2.0, np.float32))], "scaled")
    ctx = node("Transpose", [node("MatMul", [node("Softmax", [scores], "p", axis=-1), v], "pv")], "ctx.t",
               perm=[0, 2, 1, 3])
    target = node("Concat", leading(ctx) + [const("hid", np.array([hidden], np.int64))], "ctx.target", axis=0)
    merged = node("Reshape", [ctx, target], "merged")
    res = node("Add", [proj("o", merged, hidden), "x"], "res")
    ln = node("LayerNormalization", [res, const("g", np.ones(hidden, np.float32)),
                                     const("beta", np.zeros(hidden, np.float32))], "ln", axis=-1)
    hid = node("Relu", [proj("w1", ln, ffn, range(0, ffn, 2))], "act")
    node("Add", [proj("w2", hid, hidden), ln], "y")
    io = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "S", hidden]) for name in ("x", "y")]
    graph = helper.make_graph(nodes, "encoder", io[:1], io[1:], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_attention_heads_and_ffn_units_are_pruned_through_the_head_reshapes():
    """The head split/merge reshapes make each head's d columns of Q, K and V one class
    (4 classes of 12 atoms), the FFN's hidden units one class each; the hidden size is
    frozen (LayerNorm normalizes over it). At 1/2 the two dead heads and the 16 dead FFN
    units go: every weight shrinks, the computed reshape targets say 2 heads and 8
    features, and the output is unchanged; the ONNX export keeps the dynamic batch and
    sequence and runs in onnxruntime at another length."""
    m = load_model(_attention_block())
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)}
    want = run_module(m, feeds)["y"]
    g = channel_graph(m)
    sizes = sorted(len(atoms) for atoms in g.classes().values())
    assert sizes == [1] * 32 + [12] * 4, sizes
    report = prune(m, 0.5)
    verify_module(m)
    shapes = {n.outputs[0].name: tuple(n.input(1).type.shape)
              for n in m.graph.nodes if n.op == "mat_mul" and n.input(1).const_value is not None}
    assert shapes == {"q.mm": (16, 8), "k.mm": (16, 8), "v.mm": (16, 8), "o.mm": (8, 16), "w1.mm": (16, 16),
                      "w2.mm": (16, 16)}, shapes
    assert report.channels["q.mm"] == (16, 8) and report.channels["w1.mm"] == (32, 16)
    np.testing.assert_allclose(run_module(m, feeds)["y"], want, rtol=1e-5, atol=1e-5)
    split = next(n for n in m.graph.nodes if n.op == "reshape" and n.outputs[0].name.startswith("q"))
    assert str(split.outputs[0].type) == "f32[?,?,2,4]"
    longer = {"x": np.random.default_rng(1).standard_normal((1, 7, 16)).astype(np.float32)}
    sess = ort.InferenceSession(export_onnx(m).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, longer)[0], run_module(m, longer)["y"], rtol=1e-5, atol=1e-5)


def test_minilm_heads_and_ffn_pruned_and_refitted():
    """paraphrase-MiniLM-L3 (the fixture): 12 heads of 96 atoms (Q, K, V: 32 each) and 1536
    FFN units in each of its 3 layers, the 384 hidden features frozen by LayerNorm. At 1/2
    with a refit on 48 token sequences the sentence embeddings of 8 other sequences are
    closer to the unpruned model's than without it (a layer whose refit does not lower the
    error on held-out samples keeps its weights); the export runs in onnxruntime."""
    from bench.quant_accuracy import _token_batch
    from effc.ir.parser import copy_module
    from tests.fixtures import _minilm_path

    m = load_model(_minilm_path())
    run_pipeline(m, "fold")
    g = channel_graph(m)
    sizes = [len(atoms) for atoms in g.classes().values()]
    assert sizes.count(96) == 36 and sizes.count(1) == 3 * 1536 and len(sizes) == 36 + 3 * 1536
    static = load_model(_minilm_path())  # (shapes bound and folded: the head targets are constants)
    bind_input_shapes(static, {"input_ids": (1, 16), "attention_mask": (1, 16)})
    run_pipeline(static, "fold")
    assert sorted(len(atoms) for atoms in channel_graph(static).classes().values()) == sorted(sizes)
    evals, out = _token_batch(8, 7), m.graph.outputs[3].name

    def embeddings(module):
        return np.concatenate([run_module(module, {k: v[i:i + 1] for k, v in evals.items()})[out] for i in range(8)])

    def cosine(a, b):
        return float(np.mean((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)))

    want = embeddings(m)
    plain, fitted = copy_module(m), copy_module(m)
    prune(plain, 0.5)
    report = prune(fitted, 0.5, samples=_token_batch(48, 1))
    verify_module(fitted)
    assert report.channels[g.sources[0].node.outputs[0].name] == (384, 192)
    assert len(report.fits) == 6 and all(f.error_after <= f.error_before for f in report.fits), report.table()
    assert sum(report.frozen.values()) == 3 * 2 * 384  # (each layer's two projections back to the hidden size)
    assert sum(f.error_after < 0.9 * f.error_before for f in report.fits) >= 4, report.table()
    assert cosine(want, embeddings(plain)) + 0.05 < cosine(want, embeddings(fitted))
    sess = ort.InferenceSession(export_onnx(fitted).SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([out], evals)[0]
    np.testing.assert_allclose(got, run_module(fitted, evals)[out], rtol=1e-4, atol=1e-4)


def test_speedup_mode_takes_only_measured_gains():
    """``prune_for_speedup`` with a meter whose cost has a cliff (any conv with an odd
    number of output channels costs twice: a layout a CPU's vector blocks do not divide):
    every proposal that lands on the cliff is measured, reported as no speedup and not
    taken; the others are taken, cheapest quality per cost first, until the side-by-side
    measurement reaches the goal; the numbers reported are the meter's."""
    from effc.passes.prune_latency import prune_for_speedup

    def cost(module):
        convs = [n for n in module.graph.nodes if n.op == "conv"]
        odd = any(int(n.input(1).type.shape[0]) % 2 for n in convs)
        return float(module.parameter_count()) * (2.0 if odd else 1.0)

    calls = []

    def meter(modules):
        calls.append(len(modules))
        return [cost(m) for m in modules]

    m, feeds = _model("mobilenet_tiny")
    before = cost(m)
    report = prune_for_speedup(m, 1.3, meter, unit="params")
    verify_module(m)
    run_module(m, feeds)
    taken = [s for s in report.speedup_steps if s.taken]
    refused = [s for s in report.speedup_steps if not s.taken]
    assert taken and refused and all(s.classes[1] % 2 for s in refused) and not any(s.classes[1] % 2 for s in taken)
    assert all(s.note == "no speedup" and s.cost[1] >= s.cost[0] for s in refused)
    assert report.measured == (before, cost(m)) and before / cost(m) >= 1.3, report.table()
    assert "goal 1.3x: reached" in report.table()
    assert calls[0] == 1 and calls[-1] == 2 and max(calls) > 2  # (one, then rounds of proposals, then side by side)


def test_cli_speedup_on_cortex_m_counts_instructions(tmp_path):
    """``effc prune --speedup 1.3 --target cortex-m4``: every proposal built for the M4 and
    run under qemu; the pruned model's instruction count, measured again from the written
    file, is the one reported and at least 1.3x below the unpruned model's. Targets it
    cannot measure and speedups at or below 1 are refused without a traceback."""
    from effc.latency import LatencyMeter

    out = tmp_path / "fast.onnx"
    src = REPO / "examples" / "digits_cnn.onnx"
    proc = subprocess.run([sys.executable, "-m", "effc.cli", "prune", str(src), "--speedup", "1.3", "--target",
                           "cortex-m4", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    line = next(s for s in proc.stderr.splitlines() if s.startswith("measured side by side"))
    assert "reached" in line and "NOT" not in line, proc.stderr
    before, after = (float(x.split("M")[0]) for x in line.split(": ", 1)[1].split(", ")[0].split(" -> "))
    feeds = {"x": np.zeros((1, 1, 8, 8), np.float32)}
    meter = LatencyMeter("cortex-m4", feeds)
    m0, m1 = load_model(src), load_model(out)
    run_pipeline(m0, "fold")
    got = meter([m0, m1])
    assert abs(got[0] / 1e6 - before) < 0.01 and abs(got[1] / 1e6 - after) < 0.01 and got[0] / got[1] >= 1.3
    for args, say in ((["--target", "arm-cortex-a76", "--speedup", "2"], "cannot measure"),
                      (["--speedup", "1.0"], "--speedup must be above 1")):
        bad = subprocess.run([sys.executable, "-m", "effc.cli", "prune", str(src), *args, "-o", str(out)],
                             capture_output=True, text=True)
        assert bad.returncode == 2 and say in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


def _shuffle_block() -> onnx.ModelProto:
    """ShuffleNet's unit with seeded weights: conv 3->24, grouped 1x1 (4 groups, 24->32) +
    ReLU, the channel shuffle (reshape [1, 4, 8, H, W], transpose, reshape back), depthwise
    3x3, grouped 1x1 (4 groups, 32->32), Sum with the first grouped conv's output, ReLU,
    1x1 conv to 10 channels."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits, nodes = [], []

    def conv(name, x, cout, cin_per_group, k=1, group=1):
        inits.append(numpy_helper.from_array(rng.standard_normal((cout, cin_per_group, k, k)).astype(np.float32)
                                             * 0.5, name + ".w"))
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, name + ".b"))
        nodes.append(helper.make_node("Conv", [x, name + ".w", name + ".b"], [name], group=group,
                                      pads=[k // 2] * 4, kernel_shape=[k, k]))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    inits += [numpy_helper.from_array(np.array(s, np.int64), n) for n, s in (("split", [1, 4, 8, 6, 6]),
                                                                           ("merge", [1, 32, 6, 6]))]
    a = node("Relu", [conv("g1", conv("stem", "x", 24, 3, 3), 32, 6, group=4)], "a")
    s = node("Reshape", [node("Transpose", [node("Reshape", [a, "split"], "s1")], "s2", perm=[0, 2, 1, 3, 4]),
                         "merge"], "shuffled")
    b = conv("g2", conv("dw", s, 32, 1, 3, group=32), 32, 8, group=4)
    y = conv("head", node("Relu", [node("Sum", [b, a], "joined")], "r"), 10, 32)
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [1, 10, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_grouped_convs_and_channel_shuffles_prune_group_by_group():
    """A grouped conv keeps the same positions in every group and the shuffle permutes the
    classes with the channels: the unit prunes (each grouped conv's groups losing the same
    positions, the shuffle's reshape targets resized), and equals the unpruned unit whose
    removed channels were zeroed at their sources (weights and bias, and the depthwise
    conv's), so the removal is exact."""
    m = load_model(_shuffle_block())
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)}
    g = channel_graph(m)
    assert len(g.shuffles) == 1 and g.classes()
    removed = choose(g, 0.5)
    masked = load_model(_shuffle_block())
    gm = channel_graph(masked)
    for s in gm.sources + [None]:
        node = s.node if s is not None else next(n for n in masked.graph.nodes if n.outputs[0].name == "dw")
        atoms = s.atoms if s is not None else gm.of(node.outputs[0])
        rows = [i for i, atom in enumerate(atoms) if gm.find(atom) in removed]
        for k in (1, 2):
            v = node.input(k).const_value.copy()
            v[rows] = 0
            node.set_input(k, masked.graph.insert_before(node, masked.const(v)).output)
    want = run_module(masked, feeds)
    assert removed and not np.allclose(next(iter(run_module(m, feeds).values())), next(iter(want.values())))
    report = prune(m, 0.5)
    verify_module(m)
    assert report.params_after < 0.75 * report.params_before, report.table()
    groups = {n.outputs[0].name: (int(n.attrs.get("group", 1)), tuple(n.input(1).type.shape)) for n in m.graph.nodes
              if n.op == "conv"}
    assert groups["g1"][0] == groups["g2"][0] == 4 and groups["g1"][1][0] % 4 == 0, groups
    got = run_module(m, feeds)
    (k, w), = want.items()
    np.testing.assert_allclose(got[k], w, rtol=1e-4, atol=1e-5)
    sess = ort.InferenceSession(export_onnx(m).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, feeds)[0], w, rtol=1e-4, atol=1e-5)
