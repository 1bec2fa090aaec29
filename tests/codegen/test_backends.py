"""The backend table (``effc.codegen.dispatch``) against the targets' TOML files and the
artifact classes: every (family, runtime) a TOML allows has an entry and every entry is
allowed somewhere; a runtime a target lacks is refused with the TOML's reason; each entry's
file list is what its artifact writes and its loader reads; every artifact class has the
members ``effc.compile`` and ``effc.load`` use."""
from __future__ import annotations

import json
import os
import re
import tomllib
from importlib import resources

import numpy as np
import pytest

import effc
from effc.codegen.dispatch import BACKENDS, TUNABLE, Artifact, backend_for, runtime_for
from effc.ir.errors import InputError
from effc.ir.parser import parse_module
from effc.targets import check_family, get_target, list_targets

ALLOWED = {(t.family, r) for t in list_targets() for r in t.runtimes}
RUNTIMES = sorted({r for _, r in ALLOWED})
ONE_PER_FAMILY = {t.family: t for t in reversed(list_targets())}  # each family's first target

TINY = """module {opset=17}

graph @tiny(%x: f32[1,4]) -> (f32[1,4]) {
  %y = relu(%x) : f32[1,4]
  return %y
}
"""


def test_every_runtime_a_toml_allows_has_a_backend_and_no_other():
    assert set(BACKENDS) == ALLOWED
    assert TUNABLE == "x86"


@pytest.mark.parametrize("target", sorted(ONE_PER_FAMILY.values(), key=lambda t: t.name), ids=lambda t: t.name)
def test_default_runtime_is_the_tomls_first(target):
    assert runtime_for(target, None) == target.runtimes[0]
    assert backend_for(target) is BACKENDS[target.family, target.runtimes[0]]
    for r in target.runtimes:
        assert backend_for(target, r) is BACKENDS[target.family, r]


@pytest.mark.parametrize("name, runtime, why", [("arm", "vm", "arm builds are runtime-free static programs"),
                                               ("cuda", "aot", "kernels on a GPU are launched by the TVM runtime"),
                                               ("cortex-m4", "vm", "microcontrollers have no TVM runtime"),
                                               ("x86", "jit", None)])
def test_refused_runtime_names_the_allowed_ones_and_why(name, runtime, why):
    target = get_target(name)
    allowed = " or ".join(target.runtimes)
    with pytest.raises(InputError) as e:
        backend_for(target, runtime)
    assert str(e.value) == (f"target '{name}' builds with --runtime={allowed}, not '{runtime}'"
                            + (f" ({why})" if why else ""))
    assert target.runtime_refused == (why or "")


def test_every_refused_runtime_of_every_target_is_an_input_error():
    for target in list_targets():
        for r in set(RUNTIMES) - set(target.runtimes):
            with pytest.raises(InputError, match=re.escape(f"not '{r}' ({target.runtime_refused})")):
                runtime_for(target, r)


def _x86_toml() -> dict:
    return tomllib.loads((resources.files("effc.targets") / "x86.toml").read_text())


@pytest.mark.parametrize("key, value, want", [
    ("runtimes", None, "'runtimes' must be a list of the runtimes the target allows, the default first"),
    ("runtimes", [], "'runtimes' must be a list"), ("runtimes", "vm", "'runtimes' must be a list"),
    ("runtimes", ["vm", "vm"], "'runtimes' must be a list"), ("runtimes", ["vm", 1], "'runtimes' must be a list"),
    ("runtime_refused", 3, "'runtime_refused' must be a string"), ("family", None, "'family' must be a string")])
def test_family_file_fields_are_checked_and_the_error_names_the_file(key, value, want):
    data = {k: v for k, v in _x86_toml().items() if k != key}
    if value is not None:
        data[key] = value
    with pytest.raises(InputError, match="^" + re.escape(f"targets/x86.toml: {want}")):
        check_family("x86.toml", data)
    assert check_family("x86.toml", _x86_toml())["runtimes"] == ["vm", "aot"]


@pytest.mark.parametrize("table", [{"vector_bits": "wide"}, {"vector_bits": 0}, {"l2_kib": 1024}, "fast"])
def test_hardware_table_is_checked_and_the_error_names_file_and_keys(table):
    data = _x86_toml()
    data["variants"]["x86-avx2"]["hardware"] = table
    with pytest.raises(InputError, match="^" + re.escape("targets/x86.toml: 'variants.x86-avx2.hardware' takes "
                                                         "positive integers for vector_bits, vector_registers, l1d_kib")):
        check_family("x86.toml", data)


@pytest.mark.parametrize("name, want", [
    ("arm", (4, 32, 32 * 1024, 4, None)), ("arm-cortex-a76", (4, 32, 64 * 1024, 4, "neon-sdot")),
    ("x86-avx2", (8, 16, 32 * 1024, None, "avx2")), ("x86-avx512", (16, 32, 32 * 1024, None, "avx2")),
    ("x86-vnni", (16, 32, 32 * 1024, None, "avx512-vnni"))])
def test_schedules_are_made_for_the_targets_hardware_table(name, want):
    """Vector width, registers, L1 and the int8 dot product come from targets/*.toml;
    cores from the TVM target's num-cores (the arm boards': 4; x86: this machine's)."""
    from effc.codegen.schedules import Cpu, cpu_for

    target = get_target(name)
    lanes, registers, l1d, cores, dot = want
    assert cpu_for(target.tvm, target.hardware) == Cpu(lanes, registers, l1d, cores or os.cpu_count(), dot)


def test_matmul_k_block_follows_the_l1_size():
    """A panel of B (K block x tile columns, f32) takes at most a quarter of L1: 64 rows of
    AVX-512's 32-column tile in 32 KiB, 128 of AVX2's 16 columns, twice that in 64 KiB;
    all of K when the block does not divide it."""
    from effc.codegen.schedules.generic import _k_block

    assert [_k_block(384, 32, 32 * 1024), _k_block(384, 16, 32 * 1024), _k_block(384, 16, 64 * 1024)] == [64, 128, 384]
    assert [_k_block(1024, 16, 64 * 1024), _k_block(1536, 8, 32 * 1024), _k_block(100, 32, 32 * 1024)] == [256, 256, 100]


NATIVE = (["model.elf"], ["model.elf", "libmodel.a", "model.h", "src/model.c", "src/Makefile"],
          ["model.elf", "libmodel.a", "src/Makefile", "src/model.c"])
READS = {  # (family, runtime): (what the loader reads of an empty folder, files of an artifact, what it reads of them)
    ("x86", "vm"): (["model.so"], ["model.so", "kernels.cu"], ["model.so"]),
    ("x86", "aot"): NATIVE,
    ("arm", "aot"): NATIVE,
    ("cuda", "vm"): (["model.so", "kernels.cu"], ["model.so", "kernels.cu", "kernels.ptx", "src/x.c"],
                     ["model.so", "kernels.cu", "kernels.ptx"]),
    ("cortex-m", "aot"): (["model.elf"], ["model.elf", "memory.json", "plan.svg", "src/model.c"],
                          ["model.elf", "memory.json", "src/model.c"]),
}


@pytest.mark.parametrize("key", sorted(READS), ids="-".join)
def test_artifact_reads_lists_required_optional_and_sources(key, tmp_path):
    empty, files, reads = READS[key]
    backend = BACKENDS[key]
    assert backend.reads(tmp_path) == empty  # the required ones even when missing
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert backend.reads(tmp_path) == reads


def test_file_names_are_the_backend_modules():
    from effc.codegen import cortex_m, cuda, native

    for key in [("x86", "aot"), ("arm", "aot")]:
        b = BACKENDS[key]
        assert (b.required, b.optional, b.sources) == ((native.EXECUTABLE,), (native.LIBRARY,), native.SOURCES)
    b = BACKENDS["cuda", "vm"]
    assert (b.required, b.optional, b.sources) == ((cuda.LIBRARY, cuda.SOURCE), (cuda.PTX,), None)
    b = BACKENDS["cortex-m", "aot"]
    assert (b.required, b.optional, b.sources) == ((cortex_m.EXECUTABLE,), (cortex_m.MEMORY,), cortex_m.SOURCES)
    assert [k for k, b in BACKENDS.items() if b.aot] == [(f, r) for f, r in BACKENDS if r == "aot"]
    assert [k for k, b in BACKENDS.items() if b.budgets] == [("cortex-m", "aot")]


def test_artifact_classes_have_the_protocols_members():
    from effc.codegen.build import Built, Signature
    from effc.codegen.cortex_m import CortexMBuilt
    from effc.codegen.cuda import CudaBuilt
    from effc.codegen.native import NativeBuilt

    sig = Signature((), ())
    for artifact in [Built(None, sig), CudaBuilt(None, sig, get_target("cuda"), "", None),
                     NativeBuilt(b"", None, get_target("arm")), CortexMBuilt(b"", None, get_target("cortex-m4"), None)]:
        assert isinstance(artifact, Artifact), type(artifact).__name__
        assert (artifact.seconds, artifact.memory, artifact.arena_bytes) == ({}, None, None)


def test_tuning_and_budgets_are_refused_where_the_table_lacks_them():
    module = parse_module(TINY)
    with pytest.raises(InputError, match=r"^--tune/--tuning-db work for x86 targets so far, not 'arm'$"):
        effc.compile(module, target="arm", pipeline="", tune=1)
    with pytest.raises(InputError, match=r"^--sram/--flash apply to microcontroller targets, not 'x86'$"):
        effc.compile(parse_module(TINY), target="x86", pipeline="", sram=1024)


@pytest.mark.parametrize("target, runtime", [("x86", "vm"), ("x86", "aot"), ("arm", "aot"), ("cortex-m4", "aot")])
def test_each_backend_builds_exports_what_it_loads(target, runtime, tmp_path):
    """Every file the loader reads is one ``export_files`` wrote (so the manifest lists it),
    the compile report takes the artifact's members, and the loaded artifact runs (arm under
    qemu-aarch64, Cortex-M under qemu-system-arm: ``.ci/setup`` installs both)."""
    cm = effc.compile(parse_module(TINY), target=target, pipeline="", runtime=runtime)
    out = cm.export(tmp_path / "art")
    backend = backend_for(get_target(target), runtime)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(backend.reads(out)) <= set(manifest["files"])
    report = cm.report()
    assert (report.arena_bytes is not None) == backend.aot and (report.memory is not None) == backend.budgets
    again = effc.load(out)
    assert type(again._built) is type(cm._built) and isinstance(again._built, Artifact)
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(again.run({"x": x})["y"], np.maximum(x, 0))
