"""Node counts before and after optimization: effc -O2 against onnxruntime's own graph
optimizer (ORT_ENABLE_EXTENDED, saved with optimized_model_filepath), on the fixture models.

Constants are not counted on either side (ONNX initializers and Constant nodes; effc
``const`` nodes). A fused effc node counts as one node, as an ORT fused op does.

    python bench/node_counts.py            # prints the table and updates bench/RESULTS.md
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from effc.ir.core import Module  # noqa: E402
from effc.onnx_import import import_onnx  # noqa: E402
from effc.optimize import OptimizeOptions, optimize  # noqa: E402
from tests.fixtures import FIXTURES  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Graph optimization: node counts (effc -O2 vs onnxruntime ORT_ENABLE_EXTENDED)"


def onnx_ops(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type != "Constant")


def effc_ops(module: Module) -> int:
    return sum(1 for n in module.graph.nodes if n.op != "const")


def ort_optimized(path: Path) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "opt.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        t = time.perf_counter()
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        secs = time.perf_counter() - t
        return onnx_ops(onnx.load(str(out), load_external_data=False)), secs


def measure() -> list[dict]:
    rows = []
    for fx in FIXTURES:
        path = fx.path()
        proto = onnx.load(str(path))
        module = import_onnx(path)
        t = time.perf_counter()
        optimize(module, "O2", OptimizeOptions(reproducer_dir=None))
        effc_secs = time.perf_counter() - t
        ort_nodes, ort_secs = ort_optimized(path)
        rows.append({"model": fx.name, "onnx": onnx_ops(proto), "effc": effc_ops(module), "ort": ort_nodes,
                     "effc_s": effc_secs, "ort_s": ort_secs})
        print(f"{fx.name:<22} onnx {rows[-1]['onnx']:>5}  effc -O2 {rows[-1]['effc']:>5}  ort {ort_nodes:>5}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [SECTION, "",
             "Ops excluding constants. `effc -O2` counts a fused node as one. Times: effc's pipeline, "
             "and ORT session creation (which includes its optimizer).", "",
             "| model | ONNX nodes | effc -O2 | ORT extended | effc/ORT | effc -O2 time (s) | ORT session (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['onnx']} | {r['effc']} | {r['ort']} | {r['effc'] / max(1, r['ort']):.2f} "
                     f"| {r['effc_s']:.2f} | {r['ort_s']:.2f} |")
    return "\n".join(lines) + "\n"


def write_section(text: str, section: str = SECTION) -> None:
    """Replace (or add) the part of bench/RESULTS.md under the heading ``section``."""
    old = RESULTS.read_text() if RESULTS.exists() else "# effc benchmark results\n\n"
    if section in old:
        head, rest = old.split(section, 1)
        nxt = rest.find("\n## ")
        old = head + (rest[nxt + 1:] if nxt >= 0 else "")
    RESULTS.write_text(old.rstrip() + "\n\n" + text)


def publish(text: str, section: str, write: bool = True) -> int:
    """Print a table and, with ``write``, put it in RESULTS.md under ``section``; returns 0
    (a script's exit status)."""
    print(text)
    if write:
        write_section(text, section)
    return 0


if __name__ == "__main__":
    result = table(measure())
    print(result)
    write_section(result)
