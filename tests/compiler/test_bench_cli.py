"""``effc bench`` (issue 9): it measures the bundled model from the installed package, the
row's numbers agree with each other, and bad arguments are effc's errors. Before, every
``effc bench`` ended in ``AttributeError: 'NoneType' object has no attribute '__dict__'``
(exit 70) and needed a source checkout."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from effc.cli import main
from tests.fixtures import REPO

REPS = 5


@pytest.fixture(scope="module")
def row(tmp_path_factory) -> dict:
    """``effc bench --json`` on the bundled digits CNN, few runs, one thread. It runs in a
    folder outside the checkout with nothing of it on ``sys.path`` (as an installed effc
    would: ``bench/`` and ``tests/`` cannot be imported)."""
    cwd = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "TVM_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.remove(''); "
                           "from effc.cli import main; sys.exit(main())", "bench", "--reps", str(REPS),
                           "--warmup", "1", "--threads", "1", "--max-seconds", "10", "--json"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_bench_measures_the_bundled_model(row):
    assert row["model"] == "digits_cnn" and row["shapes"] == {"x": [1, 1, 8, 8]}  # symbolic batch bound to 1
    assert row["threads"] == 1 and row["tvm_threads"] == 1 and row["trials_budget"] == 0
    for system in ("ort", "tvm", "effc"):
        r = row[system]
        assert r["ms"] > 0 and r["reps"] == REPS and r["compile_s"] >= 0 and r["bytes"] > 0, (system, r)
        assert r["matches_ort"] is True, (system, r)  # outputs within rtol 1e-3 / atol 1e-4 x max|ORT|
    assert row["effc_tuned"] is None and row["effc_tuned_vs_ort"] is None


def test_bench_ratios_come_from_the_measured_latencies(row):
    assert row["effc_vs_ort"] == pytest.approx(row["effc"]["ms"] / row["ort"]["ms"], rel=1e-12)
    assert row["effc_vs_tvm"] == pytest.approx(row["effc"]["ms"] / row["tvm"]["ms"], rel=1e-12)


def test_bench_table_prints_the_row(row):
    from effc.bench import format_row

    text = format_row(row)
    lines = {line.split()[0]: line for line in text.splitlines()[2:5]}
    assert set(lines) == {"onnxruntime", "plain", "effc"}
    assert f"{row['effc']['ms']:.4f}" in lines["effc"] and lines["effc"].endswith("yes")
    assert f"{row['ort']['ms']:.4f}" in lines["onnxruntime"]
    assert text.splitlines()[-1] == (f"latency ratios (below 1: effc is faster): effc/onnxruntime {row['effc_vs_ort']:.2f}, "
                                     f"effc/plain TVM {row['effc_vs_tvm']:.2f}")


@pytest.mark.parametrize("args, message", [
    (["--target", "arm"], "effc bench measures in this process on x86; target 'arm' is arm (compile it with "
                         "`effc compile` and time it on its device)"),
    (["--reps", "0"], "effc bench: --reps must be at least 1, got 0"),
    (["--threads", "0"], "effc bench: --threads must be at least 1, got 0"),
    (["--trials", "-1"], "effc bench: --trials must be at least 0, got -1"),
])
def test_bench_bad_arguments_are_input_errors(args, message, capsys):
    assert main(["bench", *args]) == 2
    assert capsys.readouterr().err == f"effc: error: {message}\n"


def test_bench_bad_model_is_an_input_error(tmp_path, capsys):
    missing = tmp_path / "missing.onnx"
    assert main(["bench", str(missing)]) == 2
    assert f"effc: error: {missing}" in capsys.readouterr().err
    dump = tmp_path / "m.effc"
    assert main(["bench", str(dump)]) == 2
    assert "effc bench compares against onnxruntime, so it needs an .onnx model" in capsys.readouterr().err


def test_bench_script_keeps_its_helpers():
    """bench/aot_latency.py and bench/cuda_latency.py import these from bench/run.py."""
    sys.path.insert(0, str(REPO))
    import effc.bench
    from bench import run

    for name in ("_declared_inputs", "_matches", "interleaved_ms", "_effc_module", "_effc_result", "bench_ort",
                 "bench_plain_tvm", "Settings", "set_threads"):
        assert getattr(run, name) is getattr(effc.bench, name), name
    assert callable(run.fixture_cases) and run.DEFAULT_DB == REPO / "bench" / "_work" / "tuning-db"
