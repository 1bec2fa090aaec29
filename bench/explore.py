"""``effc explore`` on two trained fixture models (the digits CNN and the digits transformer),
each for x86 and for the Cortex-M4: the whole default grid, the pareto front, the pictures,
and the configuration chosen under each run's constraints (re-measured from its artifact).
The reports go to ``bench/explore/<model>-<target>/`` (report.md, pareto.json, the
pictures); the work folders (each configuration's module, the chosen artifact) to
``bench/_work/explore/``, where a rerun reuses them (``--fresh`` starts over).

On x86, the chosen build and the float build are timed again beside onnxruntime (float, and
int8 from its ``quantize_static`` on the same calibration samples: QDQ, per channel) and
plain TVM (float), taking turns in one process at one thread
(``effc.bench.interleaved_ms``); onnxruntime int8's top-1 is scored on the same samples.

Quality: top-1 on the 360 held-out digits (tests/labelled.py), calibration on 64 training
images. A third run, mobilenet_tiny on the Cortex-M4 (random weights, so quality is top-1
agreement with the float model on 64 seeded random inputs, 16 for calibration), shows the
memory objective of the substitution search choosing the deployment under an SRAM bound.

    python bench/explore.py                       # all four runs, RESULTS.md updated
    python bench/explore.py --runs digits_cnn-x86 --no-write
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SECTION = "## effc explore: pareto fronts and the chosen deployment"
MODELS = {"digits_cnn": ROOT / "examples" / "digits_cnn.onnx",
          "digits_transformer": ROOT / "examples" / "digits_transformer.onnx",
          "mobilenet_tiny": ROOT / "examples" / "mobilenet_tiny.onnx"}
KB = 1024
CONSTRAINTS = {
    # (model, target): the constraints a deployment of it asks for
    ("digits_cnn", "x86"): dict(max_drop=0.5, max_size=16 * KB, max_latency=0.05),
    ("digits_cnn", "cortex-m4"): dict(max_drop=0.5, max_flash=32 * KB, max_sram=16 * KB, max_latency=1_000_000),
    ("digits_transformer", "x86"): dict(max_drop=1.0, max_size=32 * KB, max_latency=0.08),
    ("digits_transformer", "cortex-m4"): dict(max_drop=1.0, max_flash=64 * KB, max_sram=24 * KB,
                                              max_latency=3_500_000),
    # random weights, no labels: quality is top-1 agreement with the float model on seeded
    # random inputs; the run shows the memory objective of the search in the grid
    ("mobilenet_tiny", "cortex-m4"): dict(max_drop=5.0, max_sram=200 * KB),
}
RUNS = [f"{m}-{t}" for m, t in CONSTRAINTS]


def run(name: str, jobs: int, fresh: bool, log) -> dict:
    from effc.explore import Constraints, explore_and_choose
    from effc.models import load_model
    from tests import labelled

    model, target = name.split("-", 1)
    d = labelled.digits(64) if model.startswith("digits") else None
    work = ROOT / "bench" / "_work" / "explore" / name
    if fresh and work.exists():
        shutil.rmtree(work)
    constraints = Constraints(**CONSTRAINTS[(model, target)])
    t = time.perf_counter()
    if d is not None:
        calib, evaluate, labels = {"x": d.calib}, {"x": d.x}, d.y
    else:
        rng = np.random.default_rng(0)
        calib = {"input": rng.standard_normal((16, 3, 64, 64)).astype(np.float32)}
        evaluate, labels = {"input": rng.standard_normal((64, 3, 64, 64)).astype(np.float32)}, None
    points, choice = explore_and_choose(load_model(MODELS[model]), target, calib, evaluate, work, constraints,
                                        labels=labels, jobs=jobs, log=log, name=model)
    seconds = time.perf_counter() - t
    out = ROOT / "bench" / "explore" / name
    out.mkdir(parents=True, exist_ok=True)
    for f in ["report.md", "pareto.json", *sorted(p.name for p in work.glob("quality-*.png"))]:
        shutil.copy(work / f, out / f)
    row = {"name": name, "model": model, "target": target, "seconds": seconds,
           "pareto": json.loads((work / "pareto.json").read_text())}
    if target == "x86":
        row["peers"] = peers(model, work, choice.point.config.name, d, log)
    return row


def peers(model: str, work: Path, chosen: str, d, log) -> dict:
    """effc float and chosen against onnxruntime float and int8 and plain TVM, taking turns."""
    import onnxruntime as ort

    import effc
    from effc.bench import interleaved_ms, set_threads
    from effc.codegen.baseline import plain_tvm_build, vm_runner
    from effc.models import load_model
    from effc.targets import get_target
    from int8_latency import _ort_quantized

    set_threads(1)
    one = {"x": np.ascontiguousarray(d.x[:1])}
    runs, top1 = {}, {}
    for label, config in (("effc float", "float"), (f"effc {chosen} (chosen)", chosen)):
        built = effc.compile(load_model(work / "configs" / f"{config}.effc"), target="x86",
                             input_shapes={"x": (1, 1, 8, 8)})._built
        runs[label], _ = vm_runner(built.executable, one, ["x"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    calib = [{"x": d.calib[i:i + 1]} for i in range(len(d.calib))]
    for label, source in (("onnxruntime float", str(MODELS[model])),
                          ("onnxruntime int8", _ort_quantized(MODELS[model], calib))):
        sess = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        runs[label] = lambda s=sess: s.run(None, one)
        logits = sess.run(None, {"x": d.x})[0]
        top1[label] = 100.0 * float(np.mean(logits.argmax(axis=1) == d.y))
    tvm_exe = plain_tvm_build(MODELS[model], {"x": (1, 1, 8, 8)}, get_target("x86").tvm)
    runs["plain TVM float"], _ = vm_runner(tvm_exe, one, ["x"])
    log(f"{model}: timing {', '.join(runs)} taking turns")
    ms = interleaved_ms(runs, warmup=20, reps=2000, max_seconds=6.0, rounds=50)
    return {"ms": {k: v[0] for k, v in ms.items()}, "top1": top1}


def _fmt_lat(v: float, unit: str) -> str:
    return f"{v:.4f} ms" if unit == "ms" else f"{int(v):,} instr."


def table(rows: list[dict]) -> str:
    from effc.explore import Config, Constraints, Point, why_nothing_fits

    lines = [SECTION, "",
             "`python bench/explore.py`: `effc explore` over the default grid (x86: 13 configurations; Cortex-M4: 15, "
             "with the memory-objective search), 2 worker processes. Quality: top-1 on the 360 held-out digits (64 "
             "calibration images); mobilenet_tiny (random weights): top-1 agreement with its float model on 64 "
             "seeded random inputs. The full reports with pictures are in `bench/explore/<model>-<target>/`.", ""]
    lines += ["| run | configurations | on the front | float | chosen (constraints) | chosen, re-measured | "
              "wall, this run (reused configurations cost nothing) |",
              "|---|---:|---|---|---|---|---:|"]
    for r in rows:
        doc = r["pareto"]
        pts = [Point.from_json(p) for p in doc["points"]]
        unit = pts[0].latency_unit
        front = ", ".join(p.config.name for p in pts if p.on_front)
        f = next(p for p in pts if p.config == Config("float"))
        fl = f"{f.quality:.2f}%, {_fmt_lat(f.latency, unit)}, {f.size:,} B" + (
            f", flash {f.flash:,}, SRAM {f.sram:,}" if f.flash else "")
        c = doc["chosen"]
        limits = ", ".join(f"{k.replace('_', '-')} {v:,.6g}" for k, v in c["constraints"].items() if v is not None)
        m = c["remeasured"]
        got = f"{m['quality']:.2f}%, {_fmt_lat(m['latency'], unit)}, {int(m['size']):,} B" + (
            f", flash {int(m['flash']):,}, SRAM {int(m['sram']):,}" if m.get("flash") else "")
        lines.append(f"| {r['name']} | {len(pts)} | {front} | {fl} | **{c['config']}** ({limits}) | {got} | "
                     f"{r['seconds']:.0f} s |")
    peer_rows = [r for r in rows if "peers" in r]
    if peer_rows:
        lines += ["", "x86, one thread, batch 1, taking turns in one process (`interleaved_ms`, 2000 runs each at "
                  "most): the chosen build against onnxruntime and plain TVM. Ratio: the system's time over effc's "
                  "chosen build's (above 1: effc is faster).", "",
                  "| model | system | ms | top-1 | vs effc chosen |", "|---|---|---:|---:|---:|"]
        for r in peer_rows:
            ms, top1 = r["peers"]["ms"], r["peers"]["top1"]
            chosen = next(k for k in ms if k.endswith("(chosen)"))
            q = {p["config"]["name"]: p["quality"] for p in r["pareto"]["points"]}
            for k, v in ms.items():
                acc = top1.get(k, q.get(k.split()[1] if k.startswith("effc") else "float"))
                lines.append(f"| {r['model']} | {k} | {v:.4f} | {acc:.2f}% | {v / ms[chosen]:.2f}x |")
    # what the command says when nothing fits (from the CNN's M4 sweep, no new measurement)
    m4 = next((r for r in rows if r["name"] == "digits_cnn-cortex-m4"), None)
    if m4:
        pts = [Point.from_json(p) for p in m4["pareto"]["points"]]
        limits = Constraints(max_latency=300_000, max_drop=0.5)
        lines += ["", "When nothing fits (`effc explore ... --target cortex-m4 --max-latency 300000 --max-drop 0.5`, "
                  "the CNN; exit status 1):", "", "```",
                  *why_nothing_fits(pts, limits, m4["pareto"]["float_quality"]).splitlines(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=RUNS, choices=RUNS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="measure every configuration again")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = ap.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows = [run(name, args.jobs, args.fresh, log) for name in args.runs]
    from bench.node_counts import publish

    return publish(table(rows), SECTION, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
