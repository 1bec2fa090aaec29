"""Running a pass pipeline on a module with the instruments a user asked for.

The CLI (``effc opt``) and the library share this: ``optimize(module, "O2",
OptimizeOptions(check_numerics=True))``."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Mapping

import numpy as np

from effc.ir.core import Module
from effc.passes import PassContext, parse_pipeline
from effc.passes.instruments import (CheckNumerics, DumpIR, Instrument, PrintIR, Reproducer, TimePasses,
                                     VerifyEach)
from effc.passes.pipeline import PipelineRunner


@dataclass
class OptimizeOptions:
    print_ir_before: set[str] = field(default_factory=set)
    print_ir_after: set[str] = field(default_factory=set)
    print_ir_after_all: bool = False
    print_ir_after_change: bool = False
    dump_ir: str | Path | None = None
    time_passes: bool = False
    verify_each: bool = False
    check_numerics: bool = False
    numerics_inputs: Mapping[str, np.ndarray] | None = None
    rtol: float = 1e-3
    atol: float = 1e-4
    stop_after_pass: int | None = None
    reproducer_dir: str | Path | None = "effc-reproducer"
    stream: IO[str] | None = None
    target: str | None = None
    progress: bool = False
    """Long passes (``substitute``) report progress on ``stream``."""


def instruments_for(opts: OptimizeOptions) -> list[Instrument]:
    out: list[Instrument] = []
    stream = opts.stream or sys.stderr
    if opts.reproducer_dir:
        out.append(Reproducer(opts.reproducer_dir))
    if opts.print_ir_before or opts.print_ir_after or opts.print_ir_after_all or opts.print_ir_after_change:
        out.append(PrintIR(opts.print_ir_before, opts.print_ir_after, opts.print_ir_after_all,
                           opts.print_ir_after_change, stream))
    if opts.dump_ir:
        out.append(DumpIR(opts.dump_ir))
    if opts.verify_each:
        out.append(VerifyEach())
    if opts.check_numerics:
        out.append(CheckNumerics(opts.numerics_inputs, rtol=opts.rtol, atol=opts.atol))
    if opts.time_passes:
        out.append(TimePasses(stream))
    return out


def target_options(target: str | None) -> dict:
    """What passes read of the target: ``quant_rounding`` (``qdq-to-integer``), how
    ``substitute`` measures kernels and graphs on it (``effc.latency.substitute_costs``)."""
    if target is None:
        return {}
    from effc.latency import substitute_costs
    from effc.targets import get_target

    return {"quant_rounding": get_target(target).quant_rounding, **substitute_costs(target)}


def optimize(module: Module, pipeline: str, opts: OptimizeOptions | None = None) -> PipelineRunner:
    """Run ``pipeline`` on ``module`` in place; returns the runner (its ``history`` lists the passes run)."""
    opts = opts or OptimizeOptions()
    ctx = PassContext(target=opts.target, instruments=instruments_for(opts), options=target_options(opts.target))
    if opts.progress:
        stream = opts.stream or sys.stderr
        ctx.options["substitute_log"] = lambda line: print(line, file=stream, flush=True)
    runner = PipelineRunner(parse_pipeline(pipeline), ctx, opts.stop_after_pass)
    runner.run(module)
    return runner
