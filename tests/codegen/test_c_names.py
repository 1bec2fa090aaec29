"""The AOT C program (x86 ``--runtime=aot``, Cortex-M) compiles and runs whatever the
model's value names are: C keywords, standard typedefs and macros, TVM's own type names,
names equal after they are made identifiers, non-ASCII and comment-breaking names."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import effc
from effc.codegen.aot import Interface, c_identifier
from effc.codegen.aot_c import ABI_H_TEXT, RUNTIME_H_TEXT, header, param_names
from effc.ir.types import DType, TensorType

HOSTILE = ["uint8_t", "NULL", "DLTensor", "int", "memcpy", "stdin", "EOF", "errno", "a.b", "a/b", "a_b", "effc_a",
           "1x", "linux", "TVMFFIAny", "kDLFloat", "\u00e9t\u00e9", "main", "arena", "input0", "x*/y", "??/", "_Bool",
           "size_t", "INT8_MAX", "bool", "true", "v_NULL"]
"""Input names; each one broke the generated C (or would have) before names were checked
against C's reserved names."""
OUTPUTS = ["uint16_t", "a_b_1", "EFFC_INT_ARENA_BYTES", "DLDevice"]


def _model() -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in HOSTILE]
    nodes = [helper.make_node("Sum", HOSTILE, [OUTPUTS[0]], name="total"),
             helper.make_node("Neg", ["a.b"], [OUTPUTS[1]], name="neg"),
             helper.make_node("Relu", ["NULL"], [OUTPUTS[2]], name="relu"),
             helper.make_node("Mul", ["DLTensor", "main"], [OUTPUTS[3]], name="mul")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in OUTPUTS]
    return helper.make_model(helper.make_graph(nodes, "int", ins, outs), opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8)


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {n: rng.standard_normal(4).astype(np.float32) for n in HOSTILE}


def _want(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {OUTPUTS[0]: np.sum([feeds[n] for n in HOSTILE], axis=0, dtype=np.float32), OUTPUTS[1]: -feeds["a.b"],
            OUTPUTS[2]: np.maximum(feeds["NULL"], 0), OUTPUTS[3]: feeds["DLTensor"] * feeds["main"]}


def _check(cm) -> None:
    feeds = _feeds()
    got = cm.run(feeds)
    for name, want in _want(feeds).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-6, err_msg=name)


def test_x86_aot_compiles_and_runs_with_hostile_names():
    _check(effc.compile(_model(), target="x86", runtime="aot", pipeline="O0"))


def test_cortex_m_compiles_and_runs_with_hostile_names():
    _check(effc.compile(_model(), target="cortex-m4", pipeline="O0"))


def test_param_names_are_distinct_identifiers():
    iface = Interface(tuple((n, TensorType(DType.f32, (4,))) for n in HOSTILE),
                      tuple((n, TensorType(DType.f32, (4,))) for n in OUTPUTS))
    ins, outs = param_names(iface)
    names = ins + outs
    assert len(set(names)) == len(names)
    assert ins[:3] == ["v_uint8_t", "v_NULL", "v_DLTensor"] and names.count("a_b") == 1
    assert all(n.isascii() and n.isidentifier() for n in names)


_C_USER = """#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <stdbool.h>
#include "effc_tvm_abi.h"
#include "effc_runtime.h"
#include "model.h"
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs the host C compiler")
@settings(derandomize=True, deadline=None, max_examples=30)
@given(st.lists(st.one_of(st.sampled_from(HOSTILE + OUTPUTS + ["FILE", "clock_t", "NDEBUG", "assert", "offsetof",
                                                               "static_assert", "EINVAL", "TVM_DLL", "unix"]),
                          st.text(min_size=0, max_size=8)), min_size=2, max_size=6, unique=True))
def test_model_h_compiles_for_any_names(tmp_path_factory, names):
    """model.h, after the usual C headers, declares effc_<name>_run for any value names
    (gcc -std=gnu11 -Wall -Werror, where ``linux`` and ``unix`` are macros), and a call
    to it with the driver's own helpers in scope compiles."""
    from effc.passes.arena import MemoryPlan, PlanEntry

    tmp = tmp_path_factory.mktemp("h")
    half = len(names) // 2
    iface = Interface(tuple((n, TensorType(DType.u8, (2,))) for n in names[:half]),
                      tuple((n, TensorType(DType.f32, (2,))) for n in names[half:]))
    name = c_identifier(names[0])
    entries = tuple(PlanEntry(f"{kind}{i}", 64 * k, 2, 0, 0) for k, (kind, i) in enumerate(
        [("input", i) for i in range(half)] + [("output", i) for i in range(len(names) - half)]))
    (tmp / "model.h").write_text(header(name, iface, MemoryPlan(64 * len(names), 64, (), entries, (), 0, 0), 0,
                                        {"kind": "c"}, 0))
    (tmp / "effc_tvm_abi.h").write_text(ABI_H_TEXT)
    (tmp / "effc_runtime.h").write_text(RUNTIME_H_TEXT)
    ins, outs = param_names(iface)
    params = [f"const uint8_t* {c}" for c in ins] + [f"float* {c}" for c in outs]
    body = "".join(f"  memcpy({c}, {ins[0] if ins else 'NULL'}, 0u);\n" for c in outs)
    (tmp / "use.c").write_text(_C_USER + f"int effc_{name}_run({', '.join(params + ['void* arena'])}) {{\n"
                               + "  DLTensor t;\n  size_t n = sizeof t;\n  (void)n;\n  (void)arena;\n" + body
                               + "".join(f"  (void){c};\n" for c in ins + outs) + "  return 0;\n}\n")
    proc = subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-c", "use.c", "-o", "use.o"],
                          cwd=tmp, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
