"""The library API and `effc compile`: compile → run → export → load → run, manifests,
byte-identical rebuilds, clear errors."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import effc
from effc.cli import main
from effc.ir.errors import InputError, UnsupportedOpError
from tests.fixtures import REPO, assert_close, ort_run

DIGITS = REPO / "examples" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    return np.load(REPO / "examples" / "digits_test.npz")["x"]


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compile_run_export_load(tmp_path, digits_x):
    cm = effc.compile(DIGITS, target="x86", pipeline="O2")
    want = ort_run(DIGITS, {"x": digits_x})["logits"]
    assert_close(cm.run({"x": digits_x})["logits"], want, "compiled digits")
    assert cm.input_names == ["x"] and cm.output_names == ["logits"]
    assert any(n.op == "fused" for n in cm.ir.graph.nodes)
    rep = cm.report()
    assert rep.nodes_after < rep.nodes_before and rep.model.macs == 451_904
    assert set(rep.seconds) >= {"import", "optimize", "build"}
    out = cm.export(tmp_path / "art")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["name"] == "x86" and manifest["pipeline"] == "O2"
    assert manifest["inputs"] == [{"name": "x", "dtype": "f32", "shape": ["N", 1, 8, 8]}]
    assert set(manifest["files"]) >= {"model.so", "model.effc", "report.json"}
    loaded = effc.load(out)
    assert_close(loaded.run({"x": digits_x})["logits"], want, "loaded digits")


def test_same_model_twice_gives_identical_artifacts(tmp_path):
    for name in ("a", "b"):
        effc.compile(DIGITS, target="x86").export(tmp_path / name)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert set(a) == set(b)
    differing = [name for name in a if a[name] != b[name]]
    assert differing == ["timings.json"]  # compile times are kept apart on purpose


def test_tampered_artifact_is_refused(tmp_path):
    out = effc.compile(DIGITS, target="x86").export(tmp_path / "art")
    (out / "model.effc").write_text((out / "model.effc").read_text() + "\n// edited\n")
    with pytest.raises(InputError, match="model.effc is missing or does not match its hash"):
        effc.load(out)
    with pytest.raises(InputError, match="not an effc artifact folder"):
        effc.load(tmp_path)


def test_unlowerable_op_is_named_before_any_build():
    """Every node whose op has no TVM emitter is listed, before TVM starts."""
    from effc.codegen.relax_ops import EMITTERS
    from effc.ir.builder import Builder
    from effc.ir.core import Graph, Module
    from effc.ir.types import DType, TensorType

    assert "non_zero" not in EMITTERS  # data-dependent output shape: no static lowering
    m = Module(Graph("g"))
    x = m.graph.add_input("x", TensorType(DType.f32, (2, 3)))
    b = Builder(m, loc="the_culprit")
    y = b.non_zero(b.relu(x))
    m.graph.set_outputs([y])
    with pytest.raises(UnsupportedOpError) as e:
        effc.compile(m, target="x86", pipeline="O0")
    assert "NonZero (node 'the_culprit'): its output shape depends on the data" in str(e.value)
    assert [op for op, _, _ in e.value.ops] == ["NonZero"]  # the relu lowers; only the culprit is listed


def test_cli_compile_then_run(tmp_path, digits_x):
    out = tmp_path / "art"
    assert main(["compile", str(DIGITS), "--target=x86", "-O2", "-o", str(out)]) == 0
    np.savez(tmp_path / "in.npz", x=digits_x[:3])
    assert main(["run", str(out), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")]) == 0
    got = np.load(tmp_path / "out.npz")["logits"]
    assert_close(got, ort_run(DIGITS, {"x": digits_x[:3]})["logits"], "effc run on the artifact")


def test_cli_runtime_aot_for_x86(tmp_path, digits_x, capsys):
    """``--runtime=aot`` on x86: a static library and header beside the test executable; the
    symbolic batch is bound to 1 (said on stderr); ``effc run`` and ``effc.load`` run it."""
    out = tmp_path / "aot"
    assert main(["compile", str(DIGITS), "--target=x86", "--runtime=aot", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "bound to [1, 1, 8, 8]" in captured.err and "runtime aot" in captured.out
    assert {"libmodel.a", "model.h", "model.elf"} <= {p.name for p in out.iterdir()}
    assert "int effc_digits_cnn_run(const float* x, float* logits, void* arena);" in (out / "model.h").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runtime"] == "aot" and "libmodel.a" in manifest["files"]
    np.savez(tmp_path / "in.npz", x=digits_x[:1])
    assert main(["run", str(out), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz")]) == 0
    want = ort_run(DIGITS, {"x": digits_x[:1]})["logits"]
    assert_close(np.load(tmp_path / "out.npz")["logits"], want, "effc run on the AOT artifact")
    again = effc.load(out)
    assert again.runtime == "aot" and again.report().arena_bytes == json.loads((out / "report.json").read_text())["arena_bytes"]
    assert_close(again.run({"x": digits_x[:1]})["logits"], want, "loaded AOT artifact")


@pytest.mark.parametrize("target, runtime, why", [("arm", "vm", "arm builds are runtime-free static programs"),
                                                  ("cuda", "aot", "kernels on a GPU are launched by the TVM runtime"),
                                                  ("cortex-m4", "vm", "microcontrollers have no TVM runtime")])
def test_cli_runtime_the_target_lacks_exits_2(target, runtime, why):
    r = subprocess.run([sys.executable, "-m", "effc.cli", "compile", str(DIGITS), f"--target={target}",
                        f"--runtime={runtime}"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"target '{target}' builds with --runtime=" in r.stderr and why in r.stderr


def test_cli_compile_bad_target_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "effc.cli", "compile", str(DIGITS), "--target=nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown target 'nope'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_tuning_database_is_reused_by_a_second_compile(tmp_path, digits_x):
    """--tune=N is N trials per model in all: compiling again runs none and adds no records."""
    from effc.codegen.tune import open_database
    from effc.targets import get_target

    db = tmp_path / "db"
    first = effc.compile(DIGITS, target="x86", input_shapes={"x": (1, 1, 8, 8)}, tune=6, tuning_db=db)
    assert "tuned with 6 trials" in first.report().tuning
    records = len(open_database(db, get_target("x86").tvm))
    assert records > 0
    second = effc.compile(DIGITS, target="x86", input_shapes={"x": (1, 1, 8, 8)}, tune=6, tuning_db=db)
    assert "no new trials" in second.report().tuning and "tune" not in second.report().seconds
    assert len(open_database(db, get_target("x86").tvm)) == records
    want = ort_run(DIGITS, {"x": digits_x[:1]})["logits"]
    assert_close(second.run({"x": digits_x[:1]})["logits"], want, "tuned digits")
    # the AOT program tunes its own kernels (the one-channel pools too), reusing the shared ones
    aot = effc.compile(DIGITS, target="x86", runtime="aot", tune=6, tuning_db=db)
    report = aot.report().tuning
    assert "tuned with 6 trials" in report and re.search(r"\d+ reused", report), report
    tuned = aot._built.program.notes["tuned_kernels"]
    assert tuned >= 1 and f"{tuned} of the AOT program's kernels use tuned schedules" in report
    assert_close(aot.run({"x": digits_x[:1]})["logits"], want, "tuned AOT digits")
    again = effc.compile(DIGITS, target="x86", runtime="aot", tune=6, tuning_db=db)
    assert "no new trials" in again.report().tuning and again._built.program.notes["tuned_kernels"] == tuned


def test_io_buffers_caller_or_arena(tmp_path, digits_x):
    """``--io-buffers``: the AOT program's inputs and outputs in the arena (default) or in the
    caller's buffers; both run right and reload; the option is refused where there is no
    AOT program, and an unknown value is named."""
    want = ort_run(DIGITS, {"x": digits_x[:1]})["logits"]
    sizes = {}
    for io in ("arena", "caller"):
        out = tmp_path / io
        assert main(["compile", str(DIGITS), "--target=x86", "--runtime=aot", f"--io-buffers={io}",
                     "--input-shape", "x=1,1,8,8", "-o", str(out)]) == 0
        header = (out / "src" / "model.h").read_text()
        assert ("effc_digits_cnn_invoke" in header) == (io == "arena")
        assert_close(effc.load(out).run({"x": digits_x[:1]})["logits"], want, f"digits, I/O in the {io}")
        sizes[io] = json.loads((out / "report.json").read_text())["arena_bytes"]
    # the 256-byte input fits beside the peak either way (the x86 program's kernels run in
    # blocked layouts with no pool fused into its conv: 12 KiB; lean NCHW kernels, 6 KiB)
    assert sizes == {"arena": 12_288, "caller": 12_288}
    with pytest.raises(InputError, match="--io-buffers applies to AOT programs"):
        effc.compile(DIGITS, target="x86", io_buffers="caller")
    with pytest.raises(InputError, match="'arena' or 'caller', not 'heap'"):
        effc.compile(DIGITS, target="x86", runtime="aot", io_buffers="heap")
