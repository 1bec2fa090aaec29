"""Deployed arenas: what an AOT build really reserves, against effc's plan and TFLite Micro.

For each fixture model (batch 1, -O2):
- TFLM-style and effc plan: as in ``memory_plans.py`` (``plan-memory``, graph input in the arena);
- deployed: the static arena of the AOT C program (``EFFC_<NAME>_ARENA_BYTES``; graph inputs
  and outputs live in it, as in the plan). For the microcontroller models it is read from
  the linked Cortex-M4 ELF, with its flash and total SRAM; for the light models (which fit no
  board) from the x86 ``--runtime=aot`` program;
- in place: layers the driver runs channel by channel over their dying input.

    python bench/deployed_arena.py          # prints the table and updates bench/RESULTS.md
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import effc  # noqa: E402
from bench import node_counts  # noqa: E402
from effc.codegen.aot import CToolchain  # noqa: E402
from effc.codegen.aot_c import emit  # noqa: E402
from effc.onnx_import import import_onnx  # noqa: E402
from effc.optimize import OptimizeOptions, optimize  # noqa: E402
from effc.ir.refine import bind_symbols  # noqa: E402
from effc.passes.memory_plan import plan_memory, tflm_style_bytes  # noqa: E402
from effc.targets import get_target  # noqa: E402
from tests.fixtures import FIXTURES  # noqa: E402

SECTION = "## Deployed arenas: AOT programs vs effc's plan vs TFLite-Micro-style"
MCU_MODELS = ["mnist_conv", "digits_cnn", "mobilenet_tiny"]
MODELS = MCU_MODELS + [f.name for f in FIXTURES if f.name.startswith("light_")]
BIND = {"N": 1}


def measure(name: str) -> dict:
    fx = next(f for f in FIXTURES if f.name == name)
    path = fx.path()
    tflm = tflm_style_bytes(import_onnx(path), BIND)
    module = import_onnx(path)
    bind_symbols(module, BIND)
    optimize(module, "O2,fuse{pools=true}", OptimizeOptions(reproducer_dir=None))  # as AOT builds
    plan = plan_memory(module, tflm_bytes=tflm)
    start = time.perf_counter()
    row = {"model": name, "tflm": tflm, "plan": plan.arena_bytes}
    if name in MCU_MODELS:
        cm = effc.compile(path, target="cortex-m4", input_shapes={v.name: [1 if isinstance(d, str) else d
                                                                          for d in v.type.shape]
                                                                  for v in module.graph.inputs})
        mem = cm.report().memory
        program = cm._built.program
        row.update(deployed=mem.arena, flash=mem.flash, sram=mem.sram, where="Cortex-M4 ELF",
                   in_place=len(program.notes["in_place"]), calls=program.notes["kernel_calls"])
    else:
        program, schedule, arena = emit(module, get_target("x86").tvm, CToolchain(cc="gcc"), name)
        row.update(deployed=arena.arena_bytes, flash=None, sram=None, where="x86 --runtime=aot",
                   in_place=len(schedule.splits), calls=len(schedule.calls))
    row["secs"] = time.perf_counter() - start
    print(f"{name}: deployed {row['deployed']:,} B, plan {row['plan']:,} B, TFLM-style {tflm:,} B "
          f"({row['secs']:.1f} s)", file=sys.stderr)
    return row


def table(rows: list[dict]) -> str:
    def b(n: int | None) -> str:
        return "" if n is None else f"{n:,}"

    lines = [SECTION, "",
             "Bytes of activation arena at batch 1, -O2. TFLM-style and effc plan as in the table above (the graph "
             "input counts in the arena). Deployed: the static arena the AOT C program asks its caller for "
             "(`EFFC_<NAME>_ARENA_BYTES`; it holds the inputs and outputs, as the plan does, and kernel scratch; "
             "the program has no other buffers): read from the linked ELF for the Cortex-M4 builds, from the x86 `--runtime=aot` program "
             "for the light models. In place: depthwise convolutions and pools the driver runs channel by channel "
             "over their dying input (TinyEngine's rule); pools whose windows tile their input are computed inside "
             "the conv kernel before them (fused pooling), so that conv's output never exists whole. `python bench/deployed_arena.py` regenerates this section.",
             "",
             "| model | built as | TFLM-style | effc plan | deployed | deployed/plan | deployed/TFLM | in place | "
             "kernel calls | flash | SRAM total |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['where']} | {b(r['tflm'])} | {b(r['plan'])} | {b(r['deployed'])} | "
                     f"{r['deployed'] / r['plan']:.2f} | {r['deployed'] / r['tflm']:.2f} | {r['in_place']} | "
                     f"{r['calls']} | {b(r['flash'])} | {b(r['sram'])} |")
    over = [r["model"] for r in rows if r["deployed"] > r["plan"]]
    lines += ["", "Deployed above the plan: " + (", ".join(over) if over else "none") + ". Why, where it is: "
              "the light vgg19 and zfnet512 build their fully connected weights at run time "
              "(ConstantOfShape of 100-400 MB, which fold-constants leaves unfolded): the plan counts values "
              "computed from constants alone as flash, the AOT program computes them into its arena.", ""]
    return "\n".join(lines)


def main() -> None:
    rows = [measure(name) for name in MODELS]
    text = table(rows)
    print(text)
    node_counts.write_section(text, SECTION)


if __name__ == "__main__":
    main()
