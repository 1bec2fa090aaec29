"""The ``effc`` command line.

Errors a user can meet (EffcError) print one clear message and exit with the error's code
(2 for bad input); ``--debug`` shows the Python traceback as well."""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path


from effc.ir.errors import EffcError, InputError

EXAMPLE_MODEL = Path(__file__).resolve().parent.parent / "examples" / "digits_cnn.onnx"


def _model_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help=f"{help_text} (default: the bundled example {EXAMPLE_MODEL.name})")


def _resolve_model(arg: str | None) -> Path:
    if arg is not None:
        return Path(arg)
    if not EXAMPLE_MODEL.exists():
        raise InputError("no model given and the bundled example is not installed; pass a model file")
    return EXAMPLE_MODEL


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="effc", description="effc: a graph compiler for trained neural networks")
    ap.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("dump", help="print a model as effc IR text (or write OUT.effc + OUT.npz)")
    _model_arg(p, "an .onnx model or .effc IR file")
    p.add_argument("-o", "--output", help="write the IR here (.effc; weights go to the .npz beside it) or as .onnx")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("info", help="inputs, outputs, op histogram, parameters, MACs, weight bytes")
    _model_arg(p, "an .onnx model, .effc IR file, or an artifact folder from `effc compile`")
    p.add_argument("--ops", action="store_true", help="list the ONNX operators effc supports instead")
    p.add_argument("--rules", action="store_true",
                   help="list the substitution rules (verified as they load) instead; with --rules-file, also those")
    p.add_argument("--rules-file", action="append", default=[], metavar="FILE",
                   help="a rules file to verify and list with --rules (repeatable)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("opt", help="run a pass pipeline and write the optimized model")
    _model_arg(p, "an .onnx model or .effc IR file")
    p.add_argument("-p", "--pipeline", help="pass pipeline, e.g. 'fold-constants,fold-bn,fuse{max-ops=8}' (default O2)")
    for level in ("O0", "O1", "O2", "O3"):
        p.add_argument(f"-{level}", dest="level", action="store_const", const=level, help=f"the {level} pipeline")
    p.add_argument("-o", "--output", help="write the result (.effc with .npz weights, or .onnx); default: print IR")
    add_instrument_flags(p)
    p.set_defaults(func=cmd_opt)

    p = sub.add_parser("quantize", help="static post-training int8 quantization (QDQ), calibrated on samples")
    _model_arg(p, "an .onnx model or .effc IR file (float)")
    p.add_argument("--calib", required=True, metavar="CALIB.npz",
                   help="calibration samples keyed by the model's input names, stacked on axis 0")
    p.add_argument("-o", "--output-file", dest="out_file", required=True, metavar="OUT",
                   help="the quantized model: .onnx (QDQ, runs in onnxruntime) or .effc")
    p.add_argument("--method", default="percentile", choices=["minmax", "percentile", "entropy", "mse"],
                   help="how activation ranges are chosen (default percentile, 99.99)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                   help="one weight scale per output channel (default)")
    g.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one weight scale per tensor")
    p.add_argument("--activations", default="int8", choices=["int8", "uint8"], help="activation type (default int8)")
    p.add_argument("--symmetric", action="store_true", help="symmetric activations (int8, zero point 0)")
    p.add_argument("--exclude", default="", metavar="NODE,...", help="nodes (by output name) to keep in float")
    p.add_argument("--weights-only", action="store_true", help="int8 weights only; activations and compute stay float")
    p.add_argument("--weight-bits", type=int, default=8, choices=[4, 8],
                   help="with --weights-only: 4 stores int4 weights (default 8)")
    p.add_argument("--block-size", type=int, default=0, metavar="B",
                   help="with --weights-only: matmul/gemm weights in blocks of B along the reduction axis, "
                        "one scale each (e.g. 32 with --weight-bits 4)")
    p.add_argument("--no-equalize", dest="equalize", action="store_false",
                   help="skip cross-layer equalization of conv chains (DFQ), on by default")
    p.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="skip the correction of each layer's bias for its weights' rounding (DFQ), on by default")
    p.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="accuracy-aware: put the most sensitive layers back in float until the score (top-1, percent) "
                        "is at most POINTS below float's; needs --eval")
    p.add_argument("--eval", metavar="EVAL.npz", help="evaluation samples for --max-drop, keyed like --calib")
    p.add_argument("--labels", metavar="LABELS.npy",
                   help="class index per evaluation sample; without it, top-1 agreement with the float model is the score")
    p.add_argument("--sensitivity", default="metric", choices=["metric", "sqnr"],
                   help="rank layers by the score with each in float (default; one evaluation per layer) or by the "
                        "output's SQNR on a few calibration samples (cheaper, a worse guide)")
    p.add_argument("--output", dest="score_output", metavar="NAME",
                   help="the model output scored and whose sensitivity is measured (default: the first)")
    p.add_argument("--report", metavar="FILE", help="also write the per-layer report here")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("explore", help="sweep compression configurations for a target; the pareto front of "
                                       "quality, latency, size and memory")
    _model_arg(p, "an .onnx model or .effc IR file (float)")
    p.add_argument("--target", default="x86", help="x86 (timed) or a Cortex-M target (instructions under qemu)")
    p.add_argument("--calib", required=True, metavar="CALIB.npz", help="calibration samples per input, stacked")
    p.add_argument("--eval", required=True, metavar="EVAL.npz", help="evaluation samples, keyed like --calib")
    p.add_argument("--labels", metavar="LABELS.npy",
                   help="class index per evaluation sample; without it, top-1 agreement with the float model")
    p.add_argument("--output", dest="score_output", metavar="NAME", help="the model output scored (default: the first)")
    p.add_argument("-o", "--out-dir", required=True, metavar="DIR",
                   help="where report.md, pareto.json, the pictures, each configuration's figures (a rerun reuses "
                        "them) and the chosen artifact (chosen/) go")
    p.add_argument("--configs", metavar="NAME,...",
                   help="only these configurations of the grid (default: all of it; an unknown name lists them)")
    p.add_argument("-j", "--jobs", type=int, metavar="N",
                   help="configurations prepared at once in worker processes (default: the cores, at most 4); "
                        "x86 latencies are then timed in one process, the builds taking turns")
    p.add_argument("--max-latency", type=float, metavar="T",
                   help="choose under this latency: ms (x86, --rpc) or instructions per inference (Cortex-M)")
    p.add_argument("--max-size", type=_byte_size, metavar="BYTES", help="choose under these weight bytes, e.g. 64K")
    p.add_argument("--max-flash", type=_byte_size, metavar="BYTES", help="choose under this flash (Cortex-M), e.g. 1M")
    p.add_argument("--max-sram", type=_byte_size, metavar="BYTES", help="choose under this SRAM (Cortex-M), e.g. 256K")
    p.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="choose within this quality drop from the float model (points of top-1)")
    _rpc_args(p, "latency is timed on a device registered under KEY (x86-built libraries)")
    p.set_defaults(func=cmd_explore)

    p = sub.add_parser("prune", help="structured channel pruning: coupled channels removed together, weights smaller")
    _model_arg(p, "an .onnx model or .effc IR file (float)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, metavar="R",
                     help="the share of channels to remove (0 <= R < 1), per group (--uniform) or overall (--global)")
    how.add_argument("--speedup", type=float, metavar="S",
                     help="latency-aware (NetAdapt): remove channels, group by group, where the --target's builds "
                          "measure cheaper, until the pruned model measures S times faster (x86: timed; Cortex-M: "
                          "instructions under qemu)")
    how.add_argument("--sparsity", metavar="S|2:4",
                     help="unstructured (S: the share of each layer's smallest weights zeroed) or 2:4 (two of every "
                          "four along the reduction axis) weight sparsity; shapes stay, the zeros are in the weights "
                          "(effc's Cortex-M int8 convolutions store them compressed); --calib refits the rest")
    p.add_argument("--target", "-t", default="x86", help="the target --speedup measures on (default x86)")
    p.add_argument("--tuning-db", metavar="DIR", help="--speedup on x86: build with this tuning database's schedules")
    p.add_argument("--criterion", default="l1", choices=["l1", "l2", "activation"],
                   help="rank channels by the norm of their weights (default l1), or by their mean absolute "
                        "output on the --calib samples (activation)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--uniform", dest="mode", action="store_const", const="uniform", default="uniform",
                   help="remove R of each group of coupled channels (default)")
    g.add_argument("--global", dest="mode", action="store_const", const="global",
                   help="rank every group's channels together (weight norms relative to their layer)")
    p.add_argument("--exclude", default="", metavar="NODE,...",
                   help="convolutions/gemms (by output name) whose output channels stay")
    p.add_argument("--calib", metavar="CALIB.npz",
                   help="calibration samples (as for `effc quantize`): refit each layer that lost input channels "
                        "by least squares on them, no training")
    p.add_argument("--round-to", type=int, metavar="N",
                   help="keep a multiple of N channels per group (e.g. 16: x86's channel blocks; default 1, with "
                        "--speedup the target's vector block)")
    p.add_argument("-o", "--output-file", dest="out_file", required=True, metavar="OUT",
                   help="the pruned model: .onnx (runs in onnxruntime) or .effc")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("compile", help="optimize and build a model for a target; writes an artifact folder")
    _model_arg(p, "an .onnx model or .effc IR file")
    p.add_argument("--target", "-t", default="x86", help="target name (default x86; `effc targets` lists them)")
    p.add_argument("-p", "--pipeline", help="pass pipeline (default O2)")
    for level in ("O0", "O1", "O2", "O3"):
        p.add_argument(f"-{level}", dest="level", action="store_const", const=level, help=f"the {level} pipeline")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="bind an input's shape, e.g. x=1,1,8,8 (needed for symbolic dims such as a batch N)")
    p.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                   help="MetaSchedule trials over the kernels the tuning database lacks (x86; default 0)")
    p.add_argument("--tuning-db", metavar="DIR", help="persistent tuning database, reused across models and runs "
                   "(default .effc-tuning when --tune is given)")
    p.add_argument("--sram", type=_byte_size, metavar="BYTES", help="SRAM budget for a board target, e.g. 256K")
    p.add_argument("--flash", type=_byte_size, metavar="BYTES", help="flash budget for a board target, e.g. 1M")
    p.add_argument("--runtime", metavar="RUNTIME",  # the target's TOML says which it allows
                   help="vm: TVM's runtime in a shared library (x86, cuda); aot: runtime-free C, libmodel.a + model.h "
                        "over a static arena (the only choice for arm and cortex-m; x86 on request)")
    p.add_argument("--io-buffers", choices=["arena", "caller"], default="arena",
                   help="AOT programs: the inputs and outputs live in the arena, as in TFLite Micro (default), or in "
                        "the caller's own buffers")
    p.add_argument("-o", "--output", help="artifact folder (default build/<model>-<target>)")
    _rpc_args(p, "--tune measures its trials on the devices registered under KEY (builds stay here)")
    _threads_arg(p, "threads the kernels run on while tuning measures them (default: every core)")
    add_instrument_flags(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("bench", help="median latency against onnxruntime and plain TVM (needs onnxruntime)")
    _model_arg(p, "an .onnx model")
    p.add_argument("--target", "-t", default="x86", help="an x86 target (default x86)")
    p.add_argument("--trials", type=int, default=0, help="also build tuned with this many trials (default 0)")
    p.add_argument("--tuning-db", metavar="DIR", help="tuning database for --trials (default .effc-tuning)")
    p.add_argument("--threads", type=int, default=2, help="threads for every system (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per system first (default 3)")
    p.add_argument("--reps", type=int, default=50, help="timed runs per system (default 50)")
    p.add_argument("--max-seconds", type=float, default=15.0,
                   help="stop timing a system after this many seconds, at least one run per block (default 15)")
    p.add_argument("--json", action="store_true", help="print the result row as JSON instead of a table")
    _rpc_args(p, "effc's builds run and are timed on a device registered under KEY (onnxruntime and plain TVM "
                 "stay here); --trials tunes on it too")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("targets", help="list the targets effc compiles for and what each needs installed")
    p.set_defaults(func=cmd_targets)

    p = sub.add_parser("run", help="run a model in the reference interpreter, or a compiled artifact folder")
    _model_arg(p, "an .onnx model, .effc IR file, or an artifact folder from `effc compile`")
    p.add_argument("--inputs", help=".npz keyed by the model's input names (default: seeded random inputs)")
    p.add_argument("-o", "--output", help=".npz to write, keyed by the model's output names")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    _threads_arg(p, "threads a compiled model runs on (default: every core)")
    p.set_defaults(func=cmd_run)
    return ap


def _rpc_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--rpc", metavar="HOST:PORT", help=f"a TVM RPC tracker (python -m tvm.exec.rpc_tracker): {what}")
    p.add_argument("--device-key", metavar="KEY", help="the key the device's rpc_server registered with (--rpc)")


def _threads_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--threads", type=int, metavar="N", help=what)


def add_instrument_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("instruments")
    g.add_argument("--print-ir-before", action="append", default=[], metavar="PASS", help="print IR before PASS")
    g.add_argument("--print-ir-after", action="append", default=[], metavar="PASS", help="print IR after PASS")
    g.add_argument("--print-ir-after-all", action="store_true", help="print IR after every pass")
    g.add_argument("--print-ir-after-change", action="store_true", help="print IR after passes that changed it")
    g.add_argument("--dump-ir", metavar="DIR", help="write every step as DIR/NNN_<pass>.effc")
    g.add_argument("--time-passes", action="store_true", help="print a table of time per pass")
    g.add_argument("--verify-each", action="store_true", help="run the IR verifier after every pass")
    g.add_argument("--check-numerics", action="store_true",
                   help="compare interpreter outputs after every pass; name the first pass that moves them")
    g.add_argument("--numerics-inputs", metavar="IN.npz", help="inputs for --check-numerics (default: seeded random)")
    g.add_argument("--rtol", type=float, default=1e-3, help="--check-numerics relative tolerance (default 1e-3)")
    g.add_argument("--atol", type=float, default=1e-4, help="--check-numerics absolute tolerance (default 1e-4)")
    g.add_argument("--stop-after-pass", type=int, metavar="N", help="bisection: run only the first N passes")
    g.add_argument("--reproducer-dir", default="effc-reproducer", metavar="DIR",
                   help="where a failing pass writes the IR before it and the pipeline (default effc-reproducer)")


def optimize_options(args: argparse.Namespace):
    from effc.optimize import OptimizeOptions
    from effc.tensors import load_npz

    return OptimizeOptions(
        print_ir_before=set(args.print_ir_before), print_ir_after=set(args.print_ir_after),
        print_ir_after_all=args.print_ir_after_all, print_ir_after_change=args.print_ir_after_change,
        dump_ir=args.dump_ir, time_passes=args.time_passes, verify_each=args.verify_each,
        check_numerics=args.check_numerics,
        numerics_inputs=load_npz(args.numerics_inputs) if args.numerics_inputs else None,
        rtol=args.rtol, atol=args.atol, stop_after_pass=args.stop_after_pass, reproducer_dir=args.reproducer_dir,
        progress=True)


def cmd_opt(args: argparse.Namespace) -> int:
    from effc.models import load_model
    from effc.optimize import optimize

    if args.pipeline and args.level:
        raise InputError("give either -p PIPELINE or -O<level>, not both")
    pipeline = args.pipeline if args.pipeline is not None else (args.level or "O2")
    module = load_model(_resolve_model(args.model))
    before = len(module.graph)
    runner = optimize(module, pipeline, optimize_options(args))
    print(f"effc: {runner.pipeline}: {len(runner.history)} pass runs, {before} -> {len(module.graph)} nodes",
          file=sys.stderr)
    if "substitute_report" in runner.ctx.options:
        print(runner.ctx.options["substitute_report"].format(), file=sys.stderr)
    return _write_or_print(module, args.output)


def _write_or_print(module, output: str | None) -> int:
    from effc.models import module_text, save_model

    if output:
        written = save_model(module, output)
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    else:
        sys.stdout.write(module_text(module))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    """Load, fold (constants, BN), calibrate with a progress bar, insert Q/DQ, write."""
    from effc.models import load_model, save_model
    from effc.passes import run_pipeline
    from effc.passes.quantize import QuantizeOptions, quantize
    from effc.passes.quantize_search import quantize_within, top1_metric
    from effc.tensors import load_labels, load_npz

    samples = load_npz(args.calib)
    module = load_model(_resolve_model(args.model))
    run_pipeline(module, "fold")
    options = QuantizeOptions(method=args.method, per_channel=args.per_channel, activations=args.activations,
                              symmetric=args.symmetric, weights_only=args.weights_only, equalize=args.equalize,
                              bias_correction=args.bias_correction, weight_bits=args.weight_bits,
                              block_size=args.block_size,
                              exclude=tuple(n for n in args.exclude.split(",") if n))
    if (args.eval or args.labels or args.score_output) and args.max_drop is None:
        raise InputError("--eval, --labels and --output score the model for --max-drop; give --max-drop POINTS too")
    search = None
    with _progress() as progress:
        if args.max_drop is None:
            report = quantize(module, samples, options, progress)
        else:
            if not args.eval:
                raise InputError("--max-drop needs --eval EVAL.npz (evaluation samples, keyed like --calib)")
            labels = load_labels(args.labels) if args.labels else None
            metric = top1_metric(module, load_npz(args.eval), args.score_output, labels)
            report, search = quantize_within(module, samples, metric, args.max_drop, options, args.score_output,
                                             progress, log=lambda s: print(s, file=sys.stderr),
                                             sensitivity=args.sensitivity)
    table = report.table() + ("\n" + search.table() if search else "")
    print(table, file=sys.stderr)
    if args.report:
        Path(args.report).write_text(table + "\n")
    written = save_model(module, args.out_file)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    """The sweep of ``effc.explore``; progress on stderr, the table on stdout."""
    from effc.explore import Constraints, NothingFits, default_jobs, explore_and_choose, select_configs
    from effc.models import load_model
    from effc.targets import get_target
    from effc.tensors import load_labels, load_npz

    get_target(args.target)  # an unknown target fails here, before any work
    if args.jobs is not None and args.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {args.jobs}")
    device = None
    if args.rpc is not None or args.device_key is not None:
        from effc.codegen.rpc import connect

        device = connect(args.rpc, args.device_key)
    configs = select_configs(args.target, args.configs) if args.configs is not None else None
    constraints = Constraints(args.max_latency, args.max_size, args.max_flash, args.max_sram, args.max_drop)
    labels = load_labels(args.labels) if args.labels else None
    out = Path(args.out_dir)
    model = _resolve_model(args.model)
    with _progress("configurations") as progress:
        try:
            _, choice = explore_and_choose(
                load_model(model), args.target, load_npz(args.calib), load_npz(args.eval), out, constraints,
                labels=labels, output=args.score_output, configs=configs, jobs=args.jobs or default_jobs(), rpc=device,
                progress=progress, log=lambda line: print(line, file=sys.stderr), name=Path(model).stem)
        except NothingFits as e:
            print((out / "report.md").read_text())
            print(f"effc: error: {e}", file=sys.stderr)
            return 1
    print((out / "report.md").read_text())
    print(f"wrote {out}/report.md, pareto.json and the pictures" + (f"; the chosen artifact: {out / choice.artifact}"
                                                                      if choice else ""), file=sys.stderr)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Load, fold (constants, BN), prune (and refit on --calib), write; the table to stderr."""
    from effc.models import load_model, save_model
    from effc.passes import run_pipeline
    from effc.passes.prune import prune
    from effc.tensors import load_npz

    samples = load_npz(args.calib) if args.calib else None
    module = load_model(_resolve_model(args.model))
    run_pipeline(module, "fold")
    exclude = tuple(n for n in args.exclude.split(",") if n)
    if args.sparsity is not None:
        from effc.passes.sparsify import sparsify

        pattern = "2:4" if args.sparsity == "2:4" else "unstructured"
        try:
            share = 0.5 if pattern == "2:4" else float(args.sparsity)
        except ValueError:
            raise InputError(f"--sparsity takes a share of weights (e.g. 0.5) or 2:4, got '{args.sparsity}'") from None
        report = sparsify(module, share, pattern, exclude, samples)
    elif args.speedup is None:
        report = prune(module, args.ratio, args.criterion, args.mode, exclude, samples, round_to=args.round_to or 1)
    else:
        from effc.latency import LatencyMeter
        from effc.passes.prune_latency import prune_for_speedup
        from effc.tensors import random_inputs

        feeds = ({k: v[:1] for k, v in samples.items()} if samples is not None
                 else random_inputs(module.graph.inputs))
        meter = LatencyMeter(args.target, feeds, tuning_db=args.tuning_db)
        round_to = args.round_to or meter.block
        report = prune_for_speedup(module, args.speedup, meter, args.criterion, exclude, samples, round_to,
                                   unit=meter.unit, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(report.table(), file=sys.stderr)
    written = save_model(module, args.out_file)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


class _progress:
    """A rich progress bar on stderr per task (a calibration pass, a sweep):
    ``progress(label, total)`` gives the function that advances it by one ``unit``."""

    def __init__(self, unit: str = "samples"):
        self.unit = unit

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn(self.unit), TimeElapsedColumn(), console=Console(stderr=True))
        self.bar.start()

        def start(label: str, total: int):
            task = self.bar.add_task(label, total=total)
            return lambda: self.bar.advance(task)

        return start

    def __exit__(self, *exc) -> None:
        self.bar.stop()


def cmd_dump(args: argparse.Namespace) -> int:
    from effc.models import load_model

    return _write_or_print(load_model(_resolve_model(args.model)), args.output)


def _print_rules(files: list[str]) -> None:
    import textwrap

    from effc.passes.substitute.rules import RULES_DIR, load_rules

    rules = load_rules(None) + (load_rules([Path(f) for f in files]) if files else [])
    for r in rules:
        where = r.where.split(":")[0]
        where = Path(where).name if Path(where).parent == RULES_DIR else where
        print(f"{r.name:<28}{'/'.join(r.objectives):<16}{r.proof:<34}{where}")
        if r.doc:
            print(textwrap.fill(r.doc, 110, initial_indent="    ", subsequent_indent="    "))
    print(f"{len(rules)} rules, each verified by the interpreter on random shapes (and by z3 where it says so)")


def cmd_info(args: argparse.Namespace) -> int:
    if args.rules or args.rules_file:
        _print_rules(args.rules_file)
        return 0
    if args.ops:
        from effc.ir.opdef import BY_ONNX

        for name in sorted(BY_ONNX):
            op = BY_ONNX[name]
            print(f"{name:<24}{op.name:<26}{op.op_class}")
        print(f"{len(BY_ONNX)} ONNX operators (plus Constant)")
        return 0
    from effc.models import load_model
    from effc.report import format_info, model_info

    path = _resolve_model(args.model)
    if path.is_dir():  # an artifact folder: its checked, optimized IR, and what it was built for
        import effc

        compiled = effc.load(path)
        print(format_info(model_info(compiled.ir)))
        print(f"artifact: target {compiled.target.name}, runtime {compiled.runtime}, "
              f"pipeline {compiled.pipeline or '(none)'}")
        return 0
    print(format_info(model_info(load_model(path))))
    return 0


def _byte_size(text: str) -> int:
    """``262144``, ``256K``, ``1M`` (K = 1024) → bytes."""
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale != 1 else text
    try:
        value = int(digits) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (use e.g. 262144, 256K or 1M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be positive")
    return value


def parse_input_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise InputError(f"--input-shape '{spec}': expected NAME=D0,D1,... (e.g. x=1,3,224,224)") from None
    return shapes


def cmd_compile(args: argparse.Namespace) -> int:
    import effc

    if args.pipeline and args.level:
        raise InputError("give either -p PIPELINE or -O<level>, not both")
    pipeline = args.pipeline if args.pipeline is not None else (args.level or "O2")
    model = _resolve_model(args.model)
    opts = optimize_options(args)
    compiled = effc.compile(model, target=args.target, pipeline=pipeline,
                            input_shapes=parse_input_shapes(args.input_shape), options=opts,
                            sram=args.sram, flash=args.flash, tune=args.tune, tuning_db=args.tuning_db,
                            runtime=args.runtime, io_buffers=args.io_buffers, rpc=args.rpc,
                            device_key=args.device_key)
    suffix = f"-{args.runtime}" if args.runtime else ""
    out = Path(args.output) if args.output else Path("build") / f"{model.stem}-{args.target}{suffix}"
    compiled.export(out)
    print(compiled.report())
    print(f"wrote {out}/", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """One model against onnxruntime and plain TVM (``effc.bench``); progress on stderr."""
    import json

    from effc.bench import bench_model, format_row

    row = bench_model(_resolve_model(args.model), target=args.target, trials=args.trials, threads=args.threads,
                      db_dir=args.tuning_db, progress=not args.json, warmup=args.warmup, reps=args.reps,
                      max_seconds=args.max_seconds, log=lambda line: print(line, file=sys.stderr),
                      rpc=args.rpc, device_key=args.device_key)
    print(json.dumps(row, indent=2) if args.json else format_row(row))
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from effc.targets import list_targets

    for t in list_targets():
        missing = t.missing_tools()
        needs = ", ".join(t.requires) or "nothing beyond effc"
        status = "ready" if not missing else "missing " + ", ".join(missing)
        if missing and t.debian_packages:
            status += f" (apt-get install {' '.join(t.debian_packages)})"
        print(f"{t.name:<16}{t.description:<48}needs: {needs}; {status}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from effc.ir.interpreter import run_module
    from effc.models import load_model
    from effc.tensors import load_npz, random_inputs, save_npz

    path = _resolve_model(args.model)
    if path.is_dir():  # a compiled artifact
        import effc

        compiled = effc.load(path)
        inputs = load_npz(args.inputs) if args.inputs else random_inputs(compiled.ir.graph.inputs, args.seed)
        outputs = compiled.run(inputs)
    else:
        module = load_model(path)
        inputs = load_npz(args.inputs) if args.inputs else random_inputs(module.graph.inputs, args.seed)
        outputs = run_module(module, inputs)
    if args.output:
        written = save_npz(args.output, outputs)  # exactly that path, every output under its name
        print(f"wrote {written}", file=sys.stderr)
    else:
        for name, arr in outputs.items():
            flat = ", ".join(f"{x:.6g}" if arr.dtype.kind == "f" else str(x) for x in arr.reshape(-1)[:8])
            more = ", ..." if arr.size > 8 else ""
            print(f"{name}: {arr.dtype}{list(arr.shape)} [{flat}{more}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    import os

    # TVM's thread pool uses half the cores unless told otherwise, and reads this once
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    threads = getattr(args, "threads", None)
    if threads is not None and args.command != "bench":  # (bench checks and sets its own)
        if threads < 1:
            print(f"effc: error: effc {args.command}: --threads must be at least 1, got {threads}", file=sys.stderr)
            return 2
        os.environ["TVM_NUM_THREADS"] = str(threads)  # before TVM's thread pool starts
    try:
        return args.func(args)
    except EffcError as e:
        if args.debug:
            traceback.print_exc()
        print(f"effc: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("effc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # a bug in effc: say so plainly
        if args.debug:
            traceback.print_exc()
        print(f"effc: internal error: {type(e).__name__}: {e}\n(this is a bug in effc; rerun with --debug "
              "for the traceback and report it)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
