"""Memory plans: effc's arena after -O2 against the layer-wise lower bound and against what
TFLite Micro's planner would need, on the fixture models (batch 1).

- TFLM-style: the imported graph, symbols bound, constants folded (a converted flatbuffer
  holds them as constants) and no other pass, ONNX node order, every tensor its own
  buffer, greedy by size (TFLite Micro's GreedyMemoryPlanner), 16-byte alignment.
- lower bound: under effc's chosen order after -O2, the largest total of tensors live at
  one step without any sharing (the layer-wise bound plain greedy-by-size lands on).
- -O2 + TFLM planner: greedy by size on the -O2 graph, its order, no sharing (fusion alone).
- effc: ``plan-memory`` after -O2 (order, in-place, copy-free concat, best offsets),
  checked by the plan verifier.

    python bench/memory_plans.py            # prints the table and updates bench/RESULTS.md
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import node_counts  # noqa: E402
from effc.ir.opdef import REGISTRY  # noqa: E402
from effc.onnx_import import import_onnx  # noqa: E402
from effc.optimize import OptimizeOptions, optimize  # noqa: E402
from effc.ir.refine import bind_symbols  # noqa: E402
from effc.passes.memory_plan import plan_memory, tflm_style_bytes  # noqa: E402
from effc.passes.memory_plan import verify_plan  # noqa: E402
from tests.fixtures import FIXTURES  # noqa: E402

SECTION = "## Memory plans: effc arena vs lower bound vs TFLite-Micro-style"
MODELS = ["mnist_conv", "digits_cnn", "mobilenet_tiny"] + [f.name for f in FIXTURES if f.name.startswith("light_")]
BIND = {"N": 1}


def fusable_ops(module) -> list[str]:
    """Ops whose separate buffers fusion removes: Pad, BatchNormalization, activations."""
    found = {n.op for n in module.graph.nodes
             if n.op in ("pad", "batch_normalization") or "activation" in REGISTRY[n.op].traits}
    return sorted(found)


def measure() -> list[dict]:
    rows = []
    for name in MODELS:
        fx = next(f for f in FIXTURES if f.name == name)
        path = fx.path()
        imported = import_onnx(path)
        fusable = fusable_ops(imported)
        tflm = tflm_style_bytes(imported, BIND)
        module = import_onnx(path)
        bind_symbols(module, BIND)
        optimize(module, "O2,fuse{pools=true}", OptimizeOptions(reproducer_dir=None))  # as AOT builds
        fused_only = plan_memory(module, order="keep", inplace=False, inplace_scratch=False, views=False,
                                 concat=False, algorithms=("greedy-size",)).arena_bytes
        start = time.perf_counter()
        plan = plan_memory(module, tflm_bytes=tflm)
        secs = time.perf_counter() - start
        verify_plan(module, plan)
        rows.append({"model": name, "tflm": tflm, "fused": fused_only, "lower": plan.lower_bound,
                     "effc": plan.arena_bytes, "fusable": fusable, "order": plan.order_algorithm,
                     "offsets": plan.offset_algorithm, "secs": secs})
        print(f"{name:<20} TFLM-style {tflm:>12,}  lower bound {plan.lower_bound:>12,}  effc {plan.arena_bytes:>12,}"
              f"  effc/TFLM {plan.arena_bytes / tflm:.2f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [SECTION, "",
             "Bytes of activation arena at batch 1 (weights stay in flash). TFLM-style: the imported graph with "
             "constants folded and nothing else, ONNX node order, greedy by size (TFLite Micro's planner). "
             "Lower bound: the most bytes of tensors live at one step of effc's order after -O2, without "
             "sharing. effc: `-O2,fuse{pools=true},plan-memory` (what AOT builds run: pools that tile their input "
             "fused into the conv before them; reordering, in-place writes, copy-free concat and pad, best of four "
             "offset algorithms), verified by the plan verifier. -O2 + TFLM planner: the same greedy by size "
             "on the -O2 graph in its order without sharing, to tell fusion's share from the planner's.", "",
             "| model | TFLM-style | -O2 + TFLM planner | lower bound | effc arena | effc/TFLM | effc/lower bound "
             "| fusable ops | order | offsets | plan (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['tflm']:,} | {r['fused']:,} | {r['lower']:,} | {r['effc']:,} "
                     f"| {r['effc'] / r['tflm']:.2f} | {r['effc'] / r['lower']:.2f} | {', '.join(r['fusable']) or '-'} "
                     f"| {r['order']} | {r['offsets']} | {r['secs']:.2f} |")
    with_ops = [r for r in rows if r["fusable"]]
    mean = sum(r["effc"] / r["tflm"] for r in with_ops) / max(1, len(with_ops))
    worst = max(rows, key=lambda r: r["effc"] / r["tflm"])
    lines += ["", f"Mean effc/TFLM over the {len(with_ops)} models with fusable ops: **{mean:.2f}**; "
              f"highest: {worst['model']} {worst['effc'] / worst['tflm']:.2f}."]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    node_counts.write_section(text, SECTION)


if __name__ == "__main__":
    result = table(measure())
    print(result)
    write_section(result)
