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

FOLD = "fixpoint(fold-constants,eliminate-identity,cse,dce),fold-bn,dce"


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
    got = run_module(m, feeds)
    assert got[m.graph.outputs[0].name].shape == (1, 4, 8, 8)


def _model(name: str):
    fx = next(f for f in FIXTURES if f.name == name)
    m = load_model(fx.path())
    feeds = fx.inputs(onnx.load(str(fx.path()), load_external_data=False))
    bind_input_shapes(m, {k: v.shape for k, v in feeds.items()})
    run_pipeline(m, FOLD)
    return m, feeds


@pytest.mark.parametrize("name, ratio, shrink", [
    ("mobilenet_tiny", 0.5, 0.35),   # residual adds across bottlenecks, depthwise
    ("digits_cnn", 0.25, 0.65),      # global pool -> gemm
    ("mnist_conv", 0.5, 0.45),       # flatten (reshape) -> matmul: one block of 16 features per channel
    ("light_squeezenet", 0.5, 0.4),  # fire modules: concat of expand 1x1 and 3x3
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
    run_pipeline(m, FOLD)

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
