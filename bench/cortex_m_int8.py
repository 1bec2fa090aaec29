"""int8 on Cortex-M: footprint against float, work of effc's own int8 kernels against TVM's
C kernels (M4: DSP instructions; M55: Helium too), and the arena against TFLite Micro's
greedy-by-size plan of the same int8 graph.

Each model is compiled for `cortex-m4` three times: float, and int8 (`effc quantize`,
`qdq-to-integer` with the target's `fixed_point` rounding, -O2) on effc's kernels
(`codegen/kernels`, SMLAD/SXTB16) and on TVM's C kernels. Flash, SRAM, weights and arena
come from the ELF's memory report. Work is the instructions the model's run function
executes under `qemu-system-arm -icount shift=0`, counted by the firmware's SysTick (one
tick per 40 instructions on mps2-an386): a proxy for work, not cycles (qemu models no
pipeline, no flash wait states, no cache). Every int8 run is checked against effc's
interpreter. The last table builds for the nRF52840 (256 KB SRAM, 1 MB flash).

    python bench/cortex_m_int8.py                     # all MODELS, writes RESULTS.md
    python bench/cortex_m_int8.py --models digits_cnn --no-write
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "## Int8 on Cortex-M: footprint, effc's DSP and Helium kernels vs TVM's C kernels"
MODELS = ["digits_cnn", "digits_transformer", "mnist_conv", "mobilenet_tiny", "mobilenet_v2_mcu"]


def _case(name: str, folder: Path):
    if name == "digits_transformer":
        from tests import labelled
        from tests.fixtures import REPO

        d = labelled.digits(32)
        return REPO / "examples" / "digits_transformer.onnx", [{"x": d.calib[i:i + 1]} for i in range(32)], \
            {"x": d.x[:1]}
    if name == "mobilenet_v2_mcu":
        from tests.fixtures import MOBILENET_V2_MCU, mobilenet_v2_mcu

        calib = np.random.default_rng(0).random((8, *MOBILENET_V2_MCU[1:]), dtype=np.float32)
        return mobilenet_v2_mcu(folder), [{"input": calib[i:i + 1]} for i in range(8)], {"input": calib[:1]}
    from int8_latency import _case as x86_case

    return x86_case(name)


def measure(name: str, folder: Path) -> dict:
    import effc
    from effc.codegen.cortex_m import BudgetError, build_cortex_m
    from effc.ir.interpreter import run_module
    from effc.ir.parser import copy_module
    from effc.ir.refine import bind_input_shapes
    from effc.models import load_model
    from effc.passes import run_pipeline
    from effc.passes.memory_plan import tflm_style_bytes
    from effc.passes.quantize import quantize
    from effc.targets import get_target

    path, calib, feeds = _case(name, folder)
    shapes = {k: v.shape for k, v in feeds.items()}
    row: dict = {"model": name}
    fp32 = effc.compile(path, target="cortex-m4", input_shapes=shapes)._built
    fp32.run(feeds, count_instructions=True)
    row["float"] = (fp32.memory, fp32.last_run_instructions)
    module = load_model(path)
    bind_input_shapes(module, shapes)
    run_pipeline(module, "fold")
    quantize(module, calib)
    run_pipeline(module, "qdq-to-integer{rounding=fixed_point},dce,O2")
    row["tflm"] = tflm_style_bytes(copy_module(module))
    want = run_module(module, feeds)
    # what effc's kernels can take: convolutions, and products whose result stays float
    convs = sum(n.op == "qlinear_conv" or (n.op == "qgemm" and n.input(7) is None) for top in module.graph.nodes
                for n in (top.body.nodes if top.body is not None else [top]))
    for kernels in ("effc", "tvm"):
        built = build_cortex_m(module, "cortex-m4", int8_kernels=kernels)
        got = built.run(feeds, count_instructions=True)
        worst = max(float(np.max(np.abs(got[k].astype(np.float64) - w.astype(np.float64)))) for k, w in want.items())
        row[kernels] = (built.memory, built.last_run_instructions, worst)
        row[f"{kernels}_calls"] = built.program.notes["effc_kernels"]
    row["convs"] = convs
    for kernels in ("effc", "dsp", "tvm"):  # M55: Helium, the DSP kernels alone, TVM's
        try:
            built = build_cortex_m(module, "cortex-m55", int8_kernels=kernels)
        except BudgetError as e:  # (the board's 512 KiB of code memory)
            row[f"m55_{kernels}"] = "does not fit: " + str(e).split(": ", 1)[1].split(" (")[0]
            continue
        got = built.run(feeds, count_instructions=True)
        for k, w in want.items():
            np.testing.assert_array_equal(got[k], w, err_msg=f"{name} {k} on cortex-m55, {kernels} kernels")
        row[f"m55_{kernels}"] = built.last_run_instructions
    board = get_target("nrf52840")
    fits = {}
    for what, src in (("float", path), ("int8", module)):
        try:
            effc.compile(src, target=board.name, input_shapes=shapes if what == "float" else None)
            fits[what] = "fits"
        except BudgetError as e:
            fits[what] = "does not fit: " + str(e).split(": ", 1)[1].split(";")[0]
    row["nrf52840"] = fits
    print(name, {k: v for k, v in row.items() if k not in ("float", "effc", "tvm")},
          "insns float/effc/tvm", row["float"][1], row["effc"][1], row["tvm"][1], file=sys.stderr, flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = [SECTION, "",
             f"Measured {time.strftime('%Y-%m-%d')} by `python bench/cortex_m_int8.py` (target `cortex-m4`, qemu "
             "mps2-an386; int8: `effc quantize`, `qdq-to-integer{rounding=fixed_point}`, -O2). Bytes from the ELF. "
             "Instructions: executed by the model's run function under `qemu-system-arm -icount shift=0`, counted "
             "with SysTick in the firmware (resolution 40 instructions): a proxy for work, not cycles.",
             "", "Footprint, int8 (effc's kernels) against float:", "",
             "| model | flash float | flash int8 | ratio | SRAM float | SRAM int8 | ratio | weights float | "
             "weights int8 | arena int8 | TFLM-style arena int8 | arena / TFLM |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f, e = r["float"][0], r["effc"][0]
        lines.append(f"| {r['model']} | {f.flash:,} | {e.flash:,} | {e.flash / f.flash:.2f} | {f.sram:,} | {e.sram:,} | "
                     f"{e.sram / f.sram:.2f} | {f.weights:,} | {e.weights:,} | {e.arena:,} | {r['tflm']:,} | "
                     f"{e.arena / r['tflm']:.2f} |")
    lines += ["", "Work on the Cortex-M4, instructions per inference (millions); every int8 output checked against the "
              "interpreter (worst absolute difference of either build shown):",
              "", "| model | convs and float-result products on effc's kernels | float | int8, TVM's C kernels | "
              "int8, effc's kernels | "
              "TVM / effc | float / effc | flash int8 TVM | flash int8 effc | worst diff |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fl, tv, ef = r["float"][1], r["tvm"][1], r["effc"][1]
        lines.append(f"| {r['model']} | {r['effc_calls']} of {r['convs']} | {fl / 1e6:.2f} | {tv / 1e6:.2f} | "
                     f"{ef / 1e6:.2f} | {tv / ef:.2f} | {fl / ef:.2f} | {r['tvm'][0].flash:,} | {r['effc'][0].flash:,} | "
                     f"{max(r['effc'][2], r['tvm'][2]):.1e} |")
    lines += ["", "The same int8 programs on the Cortex-M55 (qemu mps3-an547, 31.25 instructions per SysTick tick): "
              "its one-group convolutions on Helium (`effc_conv_s8_mve`: VMLADAVA, 16 int8 products per "
              "instruction), against effc's DSP kernels alone and TVM's C kernels; outputs equal the interpreter's:",
              "", "| model | TVM's C kernels | effc, DSP | effc, Helium | TVM / effc Helium | DSP / Helium |",
              "|---|---:|---:|---:|---:|---:|"]
    def m(v: int | str) -> str:
        return f"{v / 1e6:.2f}" if isinstance(v, int) else v

    def ratio(a: int | str, b: int | str) -> str:
        return f"{a / b:.2f}" if isinstance(a, int) and isinstance(b, int) else "-"

    for r in rows:
        tv, ds, mv = r["m55_tvm"], r["m55_dsp"], r["m55_effc"]
        lines.append(f"| {r['model']} | {m(tv)} | {m(ds)} | {m(mv)} | {ratio(tv, mv)} | {ratio(ds, mv)} |")
    lines += ["", "nRF52840 (Cortex-M4F, 256 KB SRAM, 1 MB flash), `effc compile --target=nrf52840`:", "",
              "| model | float | int8 |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['nrf52840']['float']} | {r['nrf52840']['int8']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(m, Path(tmp)) for m in args.models.split(",")]
    from bench.node_counts import publish

    return publish(table(rows), SECTION, not args.no_write)


if __name__ == "__main__":
    sys.exit(main())
