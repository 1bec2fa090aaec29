"""ONNX's own node test suite through effc (see tests/conformance_suite.py)."""
from __future__ import annotations

import pytest

from tests.conformance_suite import run_all, summary_table

# Cases that cannot pass for reasons outside effc, each with why. Keep this short and exact.
KNOWN_ORT_LIMITS: dict[str, str] = {}


@pytest.fixture(scope="module")
def results():
    return run_all()


@pytest.mark.slow
def test_conformance(results, capsys):
    with capsys.disabled():
        print("\n" + summary_table(results))
    wrong = [r for r in results if r.status in ("fail", "wrong-accept")]
    assert not wrong, "\n".join(f"{r.name}: {r.detail}" for r in wrong[:30])
    ort = [r for r in results if r.status == "ort-fail" and r.name not in KNOWN_ORT_LIMITS]
    assert not ort, "\n".join(f"{r.name}: {r.detail}" for r in ort[:30])
