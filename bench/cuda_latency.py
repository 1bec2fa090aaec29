"""CUDA latency: effc's CUDA build against plain TVM and onnxruntime, on a machine with a GPU.

For each model, in one process:
- onnxruntime, CPU provider, every core of the machine (``intra_op_num_threads`` = cores);
- onnxruntime, CUDA provider, where the installed onnxruntime has it ("n/a" otherwise);
- plain TVM: ``tvm.relax.frontend.onnx.from_onnx`` + ``tvm.compile`` for the same CUDA target
  (TVM's default CUDA pipeline: dlight's default GPU rules, like effc);
- effc: import, ``-O2``, ``build_cuda`` (``effc.codegen.cuda``).

Every output is checked against onnxruntime's CPU provider (rtol 1e-3, atol 1e-4 x the
output's largest magnitude). GPU latency is one ``main`` call on device tensors made once,
then ``Device.sync()``: inputs and outputs stay on the GPU, as a serving loop would keep
them. Runs interleave as in ``run.py`` (``interleaved_ms``); the median is reported.

    python bench/cuda_latency.py --models digits_cnn,mnist_conv -o results.json
    python bench/cuda_latency.py --markdown results.json   # the RESULTS.md table from a run

On a machine without a GPU it says so and exits 2 (CI never runs it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from run import _declared_inputs, _matches, fixture_cases, interleaved_ms  # noqa: E402

DEFAULT_MODELS = ["digits_cnn", "mnist_conv", "mobilenet_tiny", "light_squeezenet", "light_resnet50",
                  "light_inception_v1", "light_densenet121"]
SECTION = "## Latency on CUDA: effc vs plain TVM vs onnxruntime"


def _gpu_target_name() -> str:
    import tvm

    sm = tvm.cuda(0).compute_version.replace(".", "")
    return f"cuda-sm{sm}"


def _ort(case, providers: list[str]) -> tuple[Callable[[], Any], list[np.ndarray], float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.log_severity_level = 3
    t = time.perf_counter()
    sess = ort.InferenceSession(str(case.path), opts, providers=providers)
    compile_s = time.perf_counter() - t
    names = [o.name for o in sess.get_outputs()]
    return (lambda: sess.run(names, case.feeds)), sess.run(names, case.feeds), compile_s


def bench_case(case, target_name: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    from effc.codegen.baseline import plain_tvm_build, vm_runner
    from effc.codegen.cuda import build_cuda
    from effc.targets import get_target

    from run import _effc_module

    row: dict[str, Any] = {"model": case.name, "shapes": {k: list(v) for k, v in case.shapes.items()}}
    runs: dict[str, Callable[[], Any]] = {}
    ort_run, want, row["ort_cpu_compile_s"] = _ort(case, ["CPUExecutionProvider"])
    runs["ort_cpu"] = ort_run
    if "CUDAExecutionProvider" in ort.get_available_providers():
        ort_gpu, got, row["ort_cuda_compile_s"] = _ort(case, ["CUDAExecutionProvider"])
        runs["ort_cuda"], row["ort_cuda_ok"] = ort_gpu, _matches(got, want)

    target = get_target(target_name)
    order = [vi.name for vi in _declared_inputs(onnx.load(str(case.path)))]
    t = time.perf_counter()
    try:
        executable = plain_tvm_build(case.path, case.shapes, target.tvm)
        row["tvm_compile_s"] = time.perf_counter() - t
        runs["tvm"], outputs = vm_runner(executable, case.feeds, order, device="cuda")
        got = outputs()
        row["tvm_ok"] = _matches(got, want)
    except Exception as e:  # the frontend or TVM's CUDA pipeline does not handle this model
        row["tvm_note"] = f"n/a: {type(e).__name__}: {str(e).strip().splitlines()[-1][:120] if str(e).strip() else ''}"

    t = time.perf_counter()
    module = _effc_module(case)
    built = build_cuda(module, target)
    row["effc_compile_s"] = time.perf_counter() - t
    row["effc_kernels"] = len(built.kernels)
    runs["effc"], outputs = vm_runner(built.executable, case.feeds, [n for n, _ in built.signature.inputs], "cuda")
    got = outputs()[:len(built.signature.outputs)]  # main also returns its index checks
    row["effc_ok"] = _matches(got, want)
    log(f"== {case.name}: built (effc {row['effc_compile_s']:.1f} s, {row['effc_kernels']} kernels); "
        f"matches ORT: effc {row['effc_ok']}, TVM {row.get('tvm_ok', row.get('tvm_note'))}")

    for key, (ms, reps) in interleaved_ms(runs, warmup=10, reps=200, max_seconds=8.0).items():
        row[f"{key}_ms"], row[f"{key}_reps"] = ms, reps
    log("   " + ", ".join(f"{k} {row[f'{k}_ms']:.3f} ms" for k in runs))
    return row


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def _ratio(row: dict[str, Any], a: str, b: str) -> str:
    x, y = row.get(f"{a}_ms"), row.get(f"{b}_ms")
    return "–" if x is None or y is None else f"{x / y:.2f}"


def markdown(run: dict[str, Any]) -> str:
    lines = [SECTION, "",
             f"{run['gpu']} ({run['target']}), {run['cpus']} CPU cores for onnxruntime's CPU provider; onnxruntime "
             f"{run['ort_version']} ({'with' if run['ort_cuda'] else 'without'} its CUDA provider), TVM "
             f"{run['tvm_version']}. Batch 1; GPU latency is one `main` call on GPU-resident tensors plus a "
             "device sync; median of up to 200 runs per system, the systems taking turns. effc and plain TVM are "
             "untuned (dlight's default GPU schedules). Ratios below 1 mean effc is faster. "
             "`python bench/cuda_latency.py` on a GPU machine regenerates this table.", "",
             "| model | ORT CPU ms | ORT CUDA ms | plain TVM ms | effc ms | effc/ORT CPU | effc/ORT CUDA | effc/TVM "
             "| effc build s | outputs match ORT |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in run["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | | | | | | | | | failed: {r['error']} |")
            continue
        ok = f"effc {'yes' if r['effc_ok'] else 'NO'}, TVM " + (
            ("yes" if r["tvm_ok"] else "NO") if "tvm_ok" in r else r.get("tvm_note", "?"))
        lines.append(f"| {r['model']} | {_fmt(r.get('ort_cpu_ms'))} | {_fmt(r.get('ort_cuda_ms'))} | "
                     f"{_fmt(r.get('tvm_ms'))} | {_fmt(r.get('effc_ms'))} | {_ratio(r, 'effc', 'ort_cpu')} | "
                     f"{_ratio(r, 'effc', 'ort_cuda')} | {_ratio(r, 'effc', 'tvm')} | "
                     f"{_fmt(r.get('effc_compile_s'), '.1f')} | {ok} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="fixture names, comma-separated")
    ap.add_argument("-o", "--output", default=None, help="write the run as JSON here (after every model)")
    ap.add_argument("--markdown", metavar="JSON", help="print the RESULTS.md table of an earlier run and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0

    import onnxruntime as ort
    import tvm

    from effc.codegen.cuda import gpu_present

    if not gpu_present():
        print("no CUDA GPU on this machine: run bench/cuda_latency.py where one is", file=sys.stderr)
        return 2
    run = {"gpu": tvm.cuda(0).device_name, "target": _gpu_target_name(), "cpus": os.cpu_count(),
           "ort_version": ort.__version__, "ort_cuda": "CUDAExecutionProvider" in ort.get_available_providers(),
           "tvm_version": tvm.__version__, "rows": []}
    for case in fixture_cases(args.models.split(",")):
        try:
            run["rows"].append(bench_case(case, run["target"]))
        except Exception as e:  # one model failing must not lose the others' figures
            print(f"== {case.name}: FAILED {type(e).__name__}: {e}", flush=True)
            run["rows"].append({"model": case.name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
        if args.output:
            Path(args.output).write_text(json.dumps(run, indent=1))
    print(markdown(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
