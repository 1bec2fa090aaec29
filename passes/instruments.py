"""Pass instruments: hooks around every pass (TVM's PassInstrument, LLVM's -print-ir-*).

- ``PrintIR``: ``--print-ir-before=P``, ``--print-ir-after=P``, ``--print-ir-after-all``,
  ``--print-ir-after-change``; each dump starts with a ``// -----// IR Dump After P //----- //``
  comment so it can be fed back to the parser.
- ``DumpIR``: every step to ``DIR/NNN_<pass>.effc`` (with its weights), each parseable and runnable.
- ``TimePasses``: a table of time per pass.
- ``VerifyEach``: the IR verifier after every pass.
- ``CheckNumerics``: reference-interpreter outputs before and after every pass; names the
  first pass that moves an output beyond tolerance.
- ``Reproducer``: when a pass fails, writes the IR before it and the pipeline that ran.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np

from effc.ir.core import Module
from effc.ir.errors import EffcError
from effc.ir.interpreter import run_module
from effc.ir.parser import parse_module
from effc.ir.printer import print_module, save_module
from effc.ir.verifier import verify_module

from .base import PassError, PostconditionError


class Instrument:
    def on_pipeline_start(self, module: Module, runner: Any) -> None: ...
    def before_pass(self, module: Module, run: Any, runner: Any) -> None: ...
    def after_pass(self, module: Module, run: Any, runner: Any) -> None: ...
    def on_pass_error(self, module: Module, run: Any, runner: Any, error: BaseException) -> None: ...
    def on_pipeline_end(self, module: Module, runner: Any) -> None: ...


def dump_header(when: str, pass_name: str) -> str:
    return f"// -----// IR Dump {when} {pass_name} //----- //\n"


class PrintIR(Instrument):
    def __init__(self, before: set[str] = frozenset(), after: set[str] = frozenset(), after_all: bool = False,
                 after_change: bool = False, stream: IO[str] | None = None):
        self.before, self.after = set(before), set(after)
        self.after_all, self.after_change = after_all, after_change
        self.stream = stream or sys.stderr

    def before_pass(self, module: Module, run: Any, runner: Any) -> None:
        if run.pass_.name in self.before:
            self.stream.write(dump_header("Before", run.pass_.spec()) + print_module(module))

    def after_pass(self, module: Module, run: Any, runner: Any) -> None:
        if self.after_all or run.pass_.name in self.after or (self.after_change and run.changed):
            self.stream.write(dump_header("After", run.pass_.spec()) + print_module(module))


class DumpIR(Instrument):
    """Writes ``000_input.effc`` and then one numbered file per pass run."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def on_pipeline_start(self, module: Module, runner: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write(module, "000_input.effc", "Before pipeline", str(runner.pipeline))

    def after_pass(self, module: Module, run: Any, runner: Any) -> None:
        self._write(module, f"{run.index:03d}_{run.pass_.name}.effc", "After", run.pass_.spec())

    def _write(self, module: Module, filename: str, when: str, what: str) -> None:
        path = self.folder / filename
        save_module(module, path)
        path.write_text(dump_header(when, what) + path.read_text())


class TimePasses(Instrument):
    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def after_pass(self, module: Module, run: Any, runner: Any) -> None:
        self.totals[run.pass_.spec()] += run.seconds
        self.counts[run.pass_.spec()] += 1

    def table(self) -> str:
        total = sum(self.totals.values()) or 1e-12
        lines = ["===-------------------------------------------------------------------------===",
                 "                         ... Pass execution timing report ...",
                 "===-------------------------------------------------------------------------===",
                 f"  {'wall (s)':>10} {'%':>7} {'runs':>5}  pass"]
        for name, secs in sorted(self.totals.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {secs:>10.4f} {100 * secs / total:>6.1f}% {self.counts[name]:>5}  {name}")
        lines.append(f"  {total:>10.4f} {100.0:>6.1f}% {sum(self.counts.values()):>5}  total")
        return "\n".join(lines) + "\n"

    def on_pipeline_end(self, module: Module, runner: Any) -> None:
        self.stream.write(self.table())


class VerifyEach(Instrument):
    def after_pass(self, module: Module, run: Any, runner: Any) -> None:
        try:
            verify_module(module)
        except EffcError as e:
            raise PostconditionError(f"the IR is invalid after pass #{run.index} '{run.pass_.spec()}': {e}") from None


class NumericsError(PassError):
    """A pass changed the model's outputs beyond tolerance."""


class CheckNumerics(Instrument):
    """Runs the reference interpreter on fixed inputs before the pipeline and after each
    pass; the first pass whose outputs move beyond ``rtol``/``atol`` is named, with the
    output, the element and both values."""

    def __init__(self, inputs: Mapping[str, np.ndarray] | None = None, *, rtol: float = 1e-4, atol: float = 1e-5,
                 seed: int = 0):
        self.inputs = dict(inputs) if inputs is not None else None
        self.rtol, self.atol, self.seed = rtol, atol, seed
        self.reference: dict[str, np.ndarray] = {}
        self.max_error: dict[str, float] = {}

    def on_pipeline_start(self, module: Module, runner: Any) -> None:
        if self.inputs is None:
            from effc.tensors import random_inputs

            self.inputs = random_inputs(module.graph.inputs, self.seed)
        self.reference = run_module(module, self.inputs)

    def after_pass(self, module: Module, run: Any, runner: Any) -> None:
        assert self.inputs is not None
        got = run_module(module, self.inputs)
        for name, want in self.reference.items():
            if name not in got:
                raise NumericsError(f"pass #{run.index} '{run.pass_.spec()}' removed model output '{name}'")
            problem = compare_outputs(want, got[name], self.rtol, self.atol)
            if problem:
                raise NumericsError(f"pass #{run.index} '{run.pass_.spec()}' changed output '{name}': {problem} "
                                    f"(rtol={self.rtol}, atol={self.atol})")
            if want.dtype.kind == "f" and want.size:
                err = float(np.max(np.abs(got[name].astype(np.float64) - want.astype(np.float64))))
                self.max_error[name] = max(self.max_error.get(name, 0.0), err)


def compare_outputs(want: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> str:
    """'' when ``got`` matches ``want`` within tolerance, else what moved."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"type {got.dtype}{list(got.shape)}, was {want.dtype}{list(want.shape)}"
    if want.dtype.kind in "fc":
        ok = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        ok = got == want
    if ok.all():
        return ""
    bad = np.flatnonzero(~ok)
    i = int(bad[0])
    idx = tuple(int(x) for x in np.unravel_index(i, want.shape)) if want.ndim else ()
    return (f"{bad.size} of {want.size} elements moved; first at index {list(idx)}: "
            f"{str(got.reshape(-1)[i])}, was {str(want.reshape(-1)[i])}")  # 0.5, not np.float32(0.5)


class Reproducer(Instrument):
    """Keeps the IR from before each pass; if the pass fails, writes it with the pipeline."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._before: tuple[str, dict[str, Any]] | None = None

    def before_pass(self, module: Module, run: Any, runner: Any) -> None:
        self._before = (print_module(module), dict(module.weights._entries))

    def on_pass_error(self, module: Module, run: Any, runner: Any, error: BaseException) -> None:
        if self._before is None:
            return
        text, entries = self._before
        self.folder.mkdir(parents=True, exist_ok=True)
        before = parse_module(text, {k: module.weights[k] if k in module.weights else v for k, v in entries.items()})
        ir_path = self.folder / "before.effc"
        save_module(before, ir_path)
        (self.folder / "pipeline.txt").write_text(
            f"pipeline: {runner.pipeline}\nfailed pass #{run.index}: {run.pass_.spec()}\n"
            f"error: {type(error).__name__}: {error}\n"
            f"reproduce: effc opt {ir_path} -p '{run.pass_.spec()}'\n")
        note = f"\nreproducer written to {self.folder}/ (before.effc, pipeline.txt)"
        if error.args and isinstance(error.args[0], str) and note not in error.args[0]:
            error.args = (error.args[0] + note,) + error.args[1:]
