"""Golden text tests for every pass: each ``tests/passes/<pass>/<case>.effc`` gives a
pipeline, an input module and the exact printed module expected after it (see
tests/golden.py for the format). Unless the case says ``// NUMERICS: off``, the reference
interpreter must also give the same outputs before and after. Refresh the expectations
with ``python tests/update_golden.py`` and review them with ``git diff``."""
from __future__ import annotations

import difflib

import numpy as np
import pytest

from effc.ir.interpreter import run_module
from effc.ir.printer import print_module
from tests.golden import discover, load_case, random_inputs, run_case

CASES = discover()


def test_cases_exist() -> None:
    passes = {p.parent.name for p in CASES}
    assert {"dce", "cse", "fold-constants", "eliminate-identity", "fold-bn", "fuse", "pipeline"} <= passes


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_pass_golden(path) -> None:
    case = load_case(path)
    assert case.expected is not None, f"{path} has no '// EXPECT:' section (run python tests/update_golden.py)"
    before, after = run_case(case)
    got = print_module(after)
    if got != case.expected:
        diff = "".join(difflib.unified_diff(case.expected.splitlines(keepends=True), got.splitlines(keepends=True),
                                            "expected", "got"))
        pytest.fail(f"{case.id}: '{case.pipeline}' printed a different module:\n{diff}", pytrace=False)
    if case.numerics:
        inputs = random_inputs(before.graph.inputs, seed=0)
        want, have = run_module(before, inputs), run_module(after, inputs)
        assert list(have) == list(want), f"{case.id}: the outputs changed names"
        for name in want:
            np.testing.assert_allclose(have[name], want[name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{case.id}: output '{name}' moved")
