"""Runs ONNX's node conformance cases through effc.

For each case of ``onnx.backend.test.case.node.collect_testcases()``:
- if every op in it is in effc's registry ("claimed"), it is imported, run in the
  reference interpreter and compared with ONNX's expected outputs (the case's rtol/atol,
  as ONNX's backend test does), then exported to ONNX and run in onnxruntime;
- otherwise import must fail with ``UnsupportedOpError``.

Run as ``python -m tests.conformance_suite [OpType ...]`` for a table while working."""
from __future__ import annotations

import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import onnx

from effc.ir.errors import EffcError, UnsupportedOpError
from effc.ir.interpreter import run_module
from effc.ir.opdef import BY_ONNX
from effc.onnx_export import export_onnx
from effc.onnx_import import import_onnx


@dataclass
class CaseResult:
    name: str
    ops: tuple[str, ...]
    status: str  # pass | fail | unsupported | unsupported-form | wrong-accept | ort-fail
    detail: str = ""


def load_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return collect_testcases()


def case_ops(case) -> tuple[str, ...]:
    return tuple(sorted({n.op_type for n in case.model.graph.node} - {"Constant"}) or ("Constant",))


def main_op(case) -> str:
    """The op a case is about: the only one, or the one the case is named after."""
    return _named_op(case.name, case_ops(case))


def _named_op(name: str, ops: tuple[str, ...]) -> str:
    if len(ops) == 1:
        return ops[0]
    flat = name.replace("_", "").lower()
    for op in sorted(ops, key=len, reverse=True):
        if flat.startswith("test" + op.lower()):
            return op
    return ops[0]


def is_claimed(case) -> bool:
    return all(n.domain in ("", "ai.onnx") and (n.op_type == "Constant" or n.op_type in BY_ONNX)
               for n in case.model.graph.node)


def _compare(expected: np.ndarray, got: np.ndarray, rtol: float, atol: float, what: str) -> str:
    expected = np.asarray(expected)
    if got.dtype != expected.dtype:
        return f"{what}: dtype {got.dtype}, expected {expected.dtype}"
    if got.shape != expected.shape:
        return f"{what}: shape {got.shape}, expected {expected.shape}"
    if expected.dtype.kind in "fc" or expected.dtype == np.dtype("V2") or str(expected.dtype) == "bfloat16":
        e, g = expected.astype(np.float64), got.astype(np.float64)
        ok = np.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
        if not ok.all():
            i = np.flatnonzero(~ok)[0]
            return f"{what}: mismatch at flat index {i}: got {g.flat[i]!r}, expected {e.flat[i]!r}"
        return ""
    if not np.array_equal(got, expected):
        i = np.flatnonzero(got != expected)[0] if got.size else 0
        return f"{what}: mismatch at flat index {i}: got {got.flat[i]!r}, expected {expected.flat[i]!r}"
    return ""


def _as_array(a) -> np.ndarray:
    """Test data comes as numpy arrays or, for dtypes numpy lacks, as TensorProto."""
    if isinstance(a, onnx.TensorProto):
        from onnx import numpy_helper

        return numpy_helper.to_array(a)
    return np.asarray(a)


def _inputs(case, module, data) -> dict[str, np.ndarray]:
    names = [vi.name for vi in case.model.graph.input]
    return {n: _as_array(a) for n, a in zip(names, data) if n}


def run_case(case, *, with_ort: bool = True) -> CaseResult:
    ops = case_ops(case)
    if not is_claimed(case):
        try:
            import_onnx(case.model)
        except UnsupportedOpError:
            return CaseResult(case.name, ops, "unsupported")
        except EffcError as e:
            return CaseResult(case.name, ops, "fail", f"expected an unsupported-op error, got {type(e).__name__}: {e}")
        return CaseResult(case.name, ops, "wrong-accept", "imported a model with an unsupported op")
    try:
        module = import_onnx(case.model)
    except UnsupportedOpError as e:
        return CaseResult(case.name, ops, "unsupported-form", str(e).splitlines()[1].strip())
    except EffcError as e:
        return CaseResult(case.name, ops, "fail", f"import: {type(e).__name__}: {e}")
    out_names = [vi.name for vi in case.model.graph.output]
    for k, (ins, outs) in enumerate(case.data_sets or []):
        feeds = _inputs(case, module, ins)
        try:
            got = run_module(module, feeds)
        except UnsupportedOpError as e:
            return CaseResult(case.name, ops, "unsupported-form", str(e).splitlines()[1].strip())
        except EffcError as e:
            return CaseResult(case.name, ops, "fail", f"interpreter: {e}")
        outs = [_as_array(o) for o in outs]
        for name, exp in zip(out_names, outs):
            msg = _compare(exp, got[name], case.rtol, case.atol, f"interpreter output '{name}'")
            if msg:
                return CaseResult(case.name, ops, "fail", msg)
        if with_ort:
            msg = _run_ort(case, module, feeds, out_names, outs)
            if msg:
                return CaseResult(case.name, ops, "ort-fail" if msg.startswith("onnxruntime") else "fail", msg)
    return CaseResult(case.name, ops, "pass")


def _run_ort(case, module, feeds, out_names, outs) -> str:
    import onnxruntime as ort

    try:
        proto = export_onnx(module)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        return f"export: {type(e).__name__}: {e}"
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        res = sess.run(out_names, feeds)
    except Exception as e:
        return f"onnxruntime could not run the export: {str(e).splitlines()[0][:300]}"
    for name, exp, got in zip(out_names, outs, res):
        msg = _compare(exp, np.asarray(got), case.rtol, case.atol, f"onnxruntime output '{name}'")
        if msg:
            return msg
    return ""


def run_all(op_filter: set[str] | None = None, *, with_ort: bool = True) -> list[CaseResult]:
    results = []
    for case in load_cases():
        if op_filter and main_op(case) not in op_filter:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(run_case(case, with_ort=with_ort))
    return results


def summary_table(results: list[CaseResult], cases_by_name: dict | None = None) -> str:
    totals = Counter(r.status for r in results)
    claimed = sorted(BY_ONNX)
    by_main: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        if r.status != "unsupported":
            by_main[_main_of(r)][r.status] += 1
    lines = [f"{'op':<24}{'pass':>6}{'fail':>6}{'ort':>6}{'form':>6}"]
    for op in sorted(by_main):
        c = by_main[op]
        lines.append(f"{op:<24}{c['pass']:>6}{c['fail']:>6}{c['ort-fail']:>6}{c['unsupported-form']:>6}")
    lines.append(f"ops claimed: {len(claimed)}; cases: {len(results)}; " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
    return "\n".join(lines)


def _main_of(r: CaseResult) -> str:
    return _named_op(r.name, r.ops)


if __name__ == "__main__":
    only = set(sys.argv[1:]) or None
    res = run_all(only)
    for r in res:
        if r.status not in ("pass", "unsupported"):
            print(f"{r.status:<17} {r.name}: {r.detail}")
    print(summary_table(res))
