"""ONNX's own node test suite through effc (see tests/conformance_suite.py)."""
from __future__ import annotations

import re

import pytest

from tests.conformance_suite import run_all, summary_table

_NO_KERNEL = "NOT_IMPLEMENTED"
_NO_BF16_IO = "Numpy"  # onnxruntime's Python API cannot feed or fetch bfloat16 arrays
# Cases where effc's interpreter matches ONNX's expected outputs but onnxruntime cannot run
# or disagrees with the export, each with the fragment its failure must show and why.
KNOWN_ORT_LIMITS: dict[str, tuple[str, str]] = {
    **{f"test_attention_{c}_bf16_expanded": (_NO_KERNEL, "onnxruntime has no bf16 kernel for Expand/Pad/Add")
       for c in ("4d_causal", "4d_padded_kv", "4d_causal_padded_kv", "4d_attn_mask_causal", "3d_causal")},
    **{name: (_NO_BF16_IO, "bfloat16 inputs/outputs cannot cross onnxruntime's Python API")
       for name in ("test_cast_FLOAT_to_BFLOAT16", "test_cast_BFLOAT16_to_FLOAT", "test_castlike_FLOAT_to_BFLOAT16",
                    "test_castlike_FLOAT_to_BFLOAT16_expanded", "test_castlike_BFLOAT16_to_FLOAT",
                    "test_castlike_BFLOAT16_to_FLOAT_expanded")},
    "test_celu_bfloat16_expanded": (_NO_KERNEL, "no bf16 Div kernel in onnxruntime"),
    **{f"test_{op}_{t}": (_NO_KERNEL, f"no {t} {op.capitalize()} kernel in onnxruntime")
       for op in ("max", "min") for t in ("int16", "uint16")},
    **{name: ("Mod node", "float Mod with fmod=0 is valid from opset 28; onnxruntime's Mod requires fmod=1 "
                          "for floats at the opset-21 export")
       for name in ("test_mod_float64_mixed_sign_fmod_0", "test_mod_float32_mixed_sign_fmod_0",
                    "test_mod_float16_mixed_sign_fmod_0", "test_mod_float_edge_cases_fmod_0_float16",
                    "test_mod_float_edge_cases_fmod_0_float32", "test_mod_float_edge_cases_fmod_0_float64")},
    "test_pow_types_float32_uint64": (_NO_KERNEL, "no Pow kernel with a uint64 exponent in onnxruntime"),
    "test_pow_types_float32_uint32": (_NO_KERNEL, "no Pow kernel with a uint32 exponent in onnxruntime"),
    "test_reduce_max_empty_set_bool": ("empty set", "onnxruntime refuses ReduceMax of an empty bool set"),
    "test_resize_downsample_scales_linear_align_corners": (
        "mismatch", "onnxruntime sizes align_corners by the integer output length; ONNX uses scale*length "
                    "(onnx/onnx#2462); effc follows ONNX"),
    "test_resize_downsample_scales_cubic_align_corners": ("mismatch", "as above, cubic"),
    "test_top_k_uint64": (_NO_KERNEL, "no uint64 TopK kernel in onnxruntime"),
    "test_convinteger_with_padding": ("ConvInteger::Compute",
                                      "onnxruntime's ConvInteger takes a per-tensor w_zero_point only; the case "
                                      "has one per output channel"),
}


def _int4_io(r) -> bool:
    """int4/uint4 arrays (ml_dtypes; numpy type numbers 272/273, onnxruntime's Int4x2) cannot
    cross onnxruntime's Python API as inputs or outputs: the interpreter's results were
    checked against ONNX's expected outputs, only the onnxruntime rerun of the export is not
    possible."""
    return "int4" in r.name.lower() and ("Numpy_type 27" in r.detail or "Int4x2" in r.detail)


@pytest.fixture(scope="module")
def results():
    return run_all()


@pytest.mark.slow
def test_conformance(results, capsys):
    with capsys.disabled():
        print("\n" + summary_table(results))
    wrong = [r for r in results if r.status in ("fail", "wrong-accept")]
    assert not wrong, "\n".join(f"{r.name}: {r.detail}" for r in wrong[:30])
    unexplained = [r for r in results if r.status == "ort-fail" and not _int4_io(r)
                   and (r.name not in KNOWN_ORT_LIMITS or KNOWN_ORT_LIMITS[r.name][0] not in r.detail)]
    assert not unexplained, "\n".join(f"{r.name}: {r.detail}" for r in unexplained[:30])


# The only forms of claimed ops effc may refuse: element types it has no DType for, values
# that are not tensors, training-mode Dropout (random), and forms ONNX added after opset 21.
ALLOWED_REFUSALS = re.compile(
    r"^dtype (FLOAT8E4M3FN|FLOAT8E4M3FNUZ|FLOAT8E5M2|FLOAT8E5M2FNUZ|FLOAT8E8M0|FLOAT4E2M1|INT2|UINT2|STRING) "
    r"|must be a tensor|training-mode Dropout|from opset 2[2-8]")


@pytest.mark.slow
def test_unsupported_forms_are_only_the_allowed_kinds(results):
    refused = [r for r in results if r.status == "unsupported-form"]
    odd = [f"{r.name}: {r.detail}" for r in refused if not ALLOWED_REFUSALS.search(r.detail)]
    assert not odd, "\n".join(odd)
