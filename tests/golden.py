"""Text-in/text-out pass tests (FileCheck style): reading, running and rewriting the case
files under ``tests/passes/<pass>/<case>.effc``.

A case file is::

    // RUN: fold-bn,dce
    // NUMERICS: off          (optional: skip the interpreter comparison)
    // any other comment lines say what the case checks
    module {...}

    graph @g(...) -> (...) { ... }
    // EXPECT:
    module {...}

    graph @g(...) -> (...) { ... }

Everything after the ``// EXPECT:`` line is the exact text ``print_module`` must give after
the pipeline ran (with the verifier after every pass)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effc import tensors

from effc.ir.core import Module, Value
from effc.ir.parser import parse_module

from effc.ir.verifier import verify_module
from effc.passes import PassContext, run_pipeline
from effc.passes.instruments import VerifyEach

CASES_DIR = Path(__file__).resolve().parent / "passes"
RUN = "// RUN:"
NUMERICS_OFF = "// NUMERICS: off"
EXPECT = "// EXPECT:"
SYMBOL_SIZE = 2
"""Symbolic dims (``N``) take this size in the random inputs."""


@dataclass
class Case:
    path: Path
    pipeline: str
    numerics: bool
    input_text: str
    expected: str | None
    """None when the file has no ``// EXPECT:`` section yet."""

    @property
    def id(self) -> str:
        return f"{self.path.parent.name}/{self.path.stem}"


def discover() -> list[Path]:
    return sorted(CASES_DIR.glob("*/*.effc"))


def load_case(path: Path) -> Case:
    text = path.read_text(encoding="utf-8")
    first, _, rest = text.partition("\n")
    if not first.startswith(RUN):
        raise ValueError(f"{path}: the first line must be '{RUN} <pipeline>'")
    numerics = not any(line.strip() == NUMERICS_OFF for line in rest.splitlines())
    lines = text.splitlines(keepends=True)
    marks = [i for i, line in enumerate(lines) if line.rstrip("\n") == EXPECT]
    if len(marks) > 1:
        raise ValueError(f"{path}: more than one '{EXPECT}' line")
    if not marks:
        return Case(path, first[len(RUN):].strip(), numerics, text, None)
    cut = marks[0]
    return Case(path, first[len(RUN):].strip(), numerics, "".join(lines[:cut]), "".join(lines[cut + 1:]))


def run_case(case: Case) -> tuple[Module, Module]:
    """(the parsed input, the module after the pipeline); the verifier runs after each pass."""
    before = parse_module(case.input_text, source=str(case.path))
    verify_module(before)
    after = parse_module(case.input_text, source=str(case.path))
    run_pipeline(after, case.pipeline, PassContext(instruments=[VerifyEach()]))
    verify_module(after)
    return before, after


def random_inputs(inputs: list[Value], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs (effc.tensors.random_inputs) with symbolic dims set to SYMBOL_SIZE."""
    return tensors.random_inputs(inputs, seed, SYMBOL_SIZE)


def write_expect(case: Case, output: str) -> bool:
    """Rewrite the case file's EXPECT section; returns whether the file changed."""
    body = case.input_text if case.input_text.endswith("\n") else case.input_text + "\n"
    new = f"{body}{EXPECT}\n{output}"
    if case.path.read_text(encoding="utf-8") == new:
        return False
    case.path.write_text(new, encoding="utf-8")
    return True


__all__ = ["Case", "discover", "load_case", "run_case", "random_inputs", "write_expect"]
