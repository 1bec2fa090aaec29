"""The effc command line: dump, info, run, exit codes."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from effc.cli import main
from tests.fixtures import REPO, light_dir, ort_run

DIGITS = REPO / "examples" / "digits_cnn.onnx"


def test_dump_writes_text_and_weights_and_parses_back(tmp_path, capsys):
    out = tmp_path / "digits.effc"
    assert main(["dump", str(DIGITS), "-o", str(out)]) == 0
    assert out.exists() and out.with_suffix(".npz").exists()
    text = out.read_text()
    assert text.startswith("module {") and "graph @" in text and "conv(" in text
    capsys.readouterr()
    assert main(["dump", str(out)]) == 0
    assert capsys.readouterr().out == text


def test_dump_to_onnx_runs_in_onnxruntime(tmp_path):
    ir_path = tmp_path / "d.effc"
    onnx_path = tmp_path / "d.onnx"
    assert main(["dump", str(DIGITS), "-o", str(ir_path)]) == 0
    assert main(["dump", str(ir_path), "-o", str(onnx_path)]) == 0
    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    x = np.load(REPO / "examples" / "digits_test.npz")["x"]
    np.testing.assert_allclose(ort_run(onnx_path, {"x": x})["logits"], ort_run(DIGITS, {"x": x})["logits"],
                               rtol=1e-5, atol=1e-5)


def test_run_with_inputs_file(tmp_path):
    data = np.load(REPO / "examples" / "digits_test.npz")
    inp = tmp_path / "in.npz"
    np.savez(inp, x=data["x"])
    out = tmp_path / "out.npz"
    assert main(["run", str(DIGITS), "--inputs", str(inp), "-o", str(out)]) == 0
    with np.load(out) as z:
        assert z.files == ["logits"]
        logits = z["logits"]
    np.testing.assert_allclose(logits, ort_run(DIGITS, {"x": data["x"]})["logits"], rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == data["labels"]).mean() >= 0.9


def test_run_rejects_wrong_input_names(tmp_path, capsys):
    inp = tmp_path / "in.npz"
    np.savez(inp, y=np.zeros((1, 1, 8, 8), np.float32))
    assert main(["run", str(DIGITS), "--inputs", str(inp)]) == 2
    err = capsys.readouterr().err
    assert "missing input 'x'" in err


def test_info_reports_params_and_macs(capsys):
    assert main(["info", str(DIGITS)]) == 0
    out = capsys.readouterr().out
    m = onnx.load(str(DIGITS))
    params = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    assert f"parameters: {params:,}" in out
    # conv 1->16 @8x8, 16->32 @8x8, 32->32 @4x4 (3x3 kernels) + fc 32->10
    macs = 8 * 8 * 16 * 9 + 8 * 8 * 32 * 16 * 9 + 4 * 4 * 32 * 32 * 9 + 32 * 10
    assert f"MACs: {macs:,}" in out
    assert "conv" in out and "batch_normalization" in out


def test_info_ops_lists_supported_operators(capsys):
    assert main(["info", "--ops"]) == 0
    out = capsys.readouterr().out
    for op in ("Conv", "Resize", "QuantizeLinear", "LayerNormalization", "DepthToSpace"):
        assert op in out


@pytest.mark.slow
@pytest.mark.parametrize("name, side, published", [("resnet50", 224, 4.1e9), ("vgg19", 224, 19.6e9),
                                                   ("bvlc_alexnet", 227, 0.72e9)])
def test_macs_match_published_figures(name, side, published):
    """Published figures: ResNet-50 and VGG-19 at 224x224; BVLC AlexNet at its native 227x227
    (the light model declares 224x224, where it does 654.6 M MACs)."""
    from effc.onnx_import import import_onnx
    from effc.report import model_info

    model = onnx.load(str(light_dir() / f"light_{name}.onnx"))
    dims = model.graph.input[[i.name for i in model.graph.input].index(_data_input(model))].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = side
    macs = model_info(import_onnx(model)).macs
    assert abs(macs - published) / published < 0.02, f"{name}: {macs:,} MACs vs published {published:,.0f}"


def _data_input(model: onnx.ModelProto) -> str:
    inits = {t.name for t in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def test_bad_model_exits_2_without_traceback(tmp_path):
    p = tmp_path / "x.onnx"
    p.write_text("not a model")
    r = subprocess.run([sys.executable, "-m", "effc.cli", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(p) in r.stderr


def test_default_model_is_the_bundled_example(capsys):
    assert main(["info"]) == 0
    default = capsys.readouterr().out
    assert main(["info", str(DIGITS)]) == 0
    assert capsys.readouterr().out == default


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_sets_the_kernels_thread_pool(tmp_path, threads):
    """``--threads N`` on compile and run: TVM's thread pool (sized once per process) has
    N threads when the compiled model runs, and the outputs are the same."""
    art = tmp_path / "art"
    script = (
        "import sys, numpy as np\n"
        "from effc.cli import main\n"
        "from effc.codegen.baseline import runtime_threads\n"
        f"assert main(['compile', {str(DIGITS)!r}, '--target=x86', '--input-shape', 'x=2,1,8,8', "
        f"'--threads', '{threads}', '-o', {str(art)!r}]) == 0\n"
        f"assert main(['run', {str(art)!r}, '--threads', '{threads}', '-o', {str(tmp_path / 'out.npz')!r}]) == 0\n"
        "print('threads', runtime_threads())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env={**__import__("os").environ, "TVM_NUM_THREADS": "7"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"threads {threads}" in done.stdout
    with np.load(tmp_path / "out.npz") as z:
        assert z["logits"].shape == (2, 10)


def test_threads_must_be_positive(capsys):
    assert main(["run", str(DIGITS), "--threads", "0"]) == 2
    assert "effc run: --threads must be at least 1, got 0" in capsys.readouterr().err
