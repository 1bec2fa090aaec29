"""What the run-time index bounds checks cost: gather-heavy models built by effc (Relax VM,
x86, untuned) with the checks (the default) and without them (``build(...,
index_checks=False)``, the unchecked lowering kept only for this measurement), against
onnxruntime in the same process, the three timed in turns (median, ``interleaved_ms``).

Both effc builds are timed through ``Built.run`` (numpy in, numpy out), so the checked one
pays for reading its check results too. Models: ``embedding`` (a BERT-base-sized token
table, 30522 x 384, looked up for 128 token ids and summed with a position table looked
up the same way: all Gather), ``minilm_l3`` (the fixture, batch 1, 12 tokens) and
``gather_elements`` (GatherElements over a [256, 1024] tensor, indices [256, 1024]).

    python bench/bounds_checks.py          # prints the table and updates bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.node_counts import write_section  # noqa: E402
from bench.run import WORK, Case, _effc_module, fixture_cases, interleaved_ms, set_threads  # noqa: E402

SECTION = "## Cost of index bounds checks"


def _embedding_case() -> Case:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    words = numpy_helper.from_array(rng.standard_normal((30522, 384)).astype(np.float32), "words")
    positions = numpy_helper.from_array(rng.standard_normal((512, 384)).astype(np.float32), "positions")
    g = helper.make_graph(
        [helper.make_node("Gather", ["words", "ids"], ["w"], name="word_embeddings"),
         helper.make_node("Gather", ["positions", "pos"], ["p"], name="position_embeddings"),
         helper.make_node("Add", ["w", "p"], ["y"], name="sum")],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 128]),
         helper.make_tensor_value_info("pos", TensorProto.INT64, [1, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128, 384])], [words, positions])
    path = WORK / "bounds_embedding.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    feeds = {"ids": rng.integers(0, 30522, (1, 128)).astype(np.int64), "pos": np.arange(128, dtype=np.int64)[None]}
    return Case("embedding", path, feeds)


def _gather_elements_case() -> Case:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("GatherElements", ["x", "i"], ["y"], name="pick", axis=1)], "gather_elements",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 1024]),
         helper.make_tensor_value_info("i", TensorProto.INT64, [256, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 1024])])
    path = WORK / "bounds_gather_elements.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((256, 1024)).astype(np.float32),
             "i": rng.integers(-1024, 1024, (256, 1024)).astype(np.int64)}
    return Case("gather_elements", path, feeds)


def measure(case: Case, threads: int, reps: int) -> dict:
    import onnxruntime as ort

    from effc.codegen.build import build
    from effc.targets import get_target

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    sess = ort.InferenceSession(str(case.path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = sess.run(names, case.feeds)
    target = get_target("x86").tvm
    module = _effc_module(case)
    n_checks = sum(n.op in ("gather", "gather_elements", "scatter_elements") and not n.inputs[1].is_const
                   for n in module.graph.nodes)
    checked = build(module, target)
    unchecked = build(_effc_module(case), target, index_checks=False)
    ok = all(np.allclose(b.run(case.feeds)[n], w, rtol=1e-4, atol=1e-5)
             for b in (checked, unchecked) for n, w in zip(names, want))
    ms = interleaved_ms({"ort": lambda: sess.run(names, case.feeds),
                         "checked": lambda: checked.run(case.feeds),
                         "unchecked": lambda: unchecked.run(case.feeds)}, warmup=3, reps=reps, max_seconds=20)
    return {"model": case.name, "checks": n_checks, "ok": ok, **{k: v[0] for k, v in ms.items()}}


def table(rows: list[dict], threads: int, seconds: float) -> str:
    import onnxruntime
    import tvm

    lines = [SECTION, "",
             f"x86 Relax VM builds, untuned, {threads} thread(s) for every system; "
             f"onnxruntime {onnxruntime.__version__}, TVM {tvm.__version__}. Median ms of interleaved runs; effc timed through `Built.run` (numpy in and "
             "out), the checked build including reading its check results. `checks` = run-time index checks in the "
             "model; without checks = the unchecked lowering (`build(..., index_checks=False)`), which wraps (Gather) or "
             "reads out of bounds (GatherElements) on a bad index. Each check is one kernel, one pass over the indices, "
             "and the checked Gather/GatherElements clamp inside their own loop; on this shared 2-core machine "
             "differences of about 10% either way are noise. `python bench/bounds_checks.py` regenerates this "
             f"table ({seconds:.0f} s).", "",
             "| model | checks | ORT ms | effc without checks ms | effc with checks ms | checks cost | "
             "effc checked/ORT | outputs match ORT |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        cost = (r["checked"] / r["unchecked"] - 1) * 100
        lines.append(f"| {r['model']} | {r['checks']} | {r['ort']:.3f} | {r['unchecked']:.3f} | {r['checked']:.3f} | "
                     f"{cost:+.1f}% | {r['checked'] / r['ort']:.2f} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--models", default="embedding,gather_elements,minilm_l3")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    start = time.perf_counter()
    makers = {"embedding": _embedding_case, "gather_elements": _gather_elements_case,
              "minilm_l3": lambda: fixture_cases(["minilm_l3"])[0]}
    rows = []
    for name in args.models.split(","):
        rows.append(measure(makers[name](), args.threads, args.reps))
        print(rows[-1], file=sys.stderr)
    text = table(rows, args.threads, time.perf_counter() - start)
    print(text)
    if not args.no_write:
        write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
