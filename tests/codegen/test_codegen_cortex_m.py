"""Cortex-M: models compiled through ``effc.compile(..., target="cortex-m4")`` into bare-metal
ELFs (TVM's C kernels, effc's AOT driver, arm-none-eabi-gcc), run under qemu-system-arm
(semihosting off: inputs placed in RAM by qemu's loader, outputs over the UART) and compared
with onnxruntime; memory measured from the linked ELF and
checked against board budgets.

Every model is compiled at O2 for batch 1 and must match onnxruntime on the original model
(``assert_close``). Builds take seconds and qemu runs well under a second here.
"""
from __future__ import annotations

import re
import subprocess

import numpy as np
import onnx
import pytest

import effc
from effc.codegen.cortex_m import BudgetError, CortexMBuilt, build_cortex_m
from effc.codegen.native import RunError
from effc.ir.refine import bind_input_shapes
from effc.models import load_model
from effc.optimize import optimize
from effc.targets import get_target
from tests.fixtures import FIXTURES, assert_close, ort_run

BY_NAME = {f.name: f for f in FIXTURES}
MODELS = ["mnist_conv", "digits_cnn", "mobilenet_tiny"]

_COMPILED: dict[tuple[str, str], effc.CompiledModel] = {}


def _feeds(name: str) -> dict[str, np.ndarray]:
    fx = BY_NAME[name]
    return {k: np.ascontiguousarray(v[:1]) for k, v in fx.inputs(onnx.load(str(fx.path()))).items()}


def _compiled(name: str, target: str = "cortex-m4") -> effc.CompiledModel:
    """One build per model and target for the whole module."""
    key = (name, target)
    if key not in _COMPILED:
        feeds = _feeds(name)
        _COMPILED[key] = effc.compile(BY_NAME[name].path(), target=target,
                                      input_shapes={k: v.shape for k, v in feeds.items()})
    return _COMPILED[key]


def _built(cm: effc.CompiledModel) -> CortexMBuilt:
    return cm._built


def _module(name: str):
    module = load_model(BY_NAME[name].path())
    bind_input_shapes(module, {k: v.shape for k, v in _feeds(name).items()})
    optimize(module, "O2")
    return module


@pytest.mark.parametrize("name", MODELS)
def test_cortex_m4_matches_onnxruntime(name):
    cm = _compiled(name)
    feeds = _feeds(name)
    got = cm.run(feeds)
    want = ort_run(BY_NAME[name].path(), feeds)
    assert list(got) == list(want)
    for out in want:
        assert_close(got[out], want[out], f"{name} on cortex-m4 (qemu), output {out}")
    assert _built(cm).last_run_seconds is not None


@pytest.mark.parametrize("name", MODELS)
def test_memory_comes_from_the_elf_and_agrees_with_the_arena_plan(name):
    built = _built(_compiled(name))
    mem, program = built.memory, built.program
    assert mem.text > 0 and mem.rodata > 0 and mem.flash == mem.text + mem.rodata + mem.data
    assert program.notes["weight_bytes"] <= mem.weights <= mem.rodata
    assert mem.sram == mem.arena + mem.stack + mem.statics
    assert mem.arena == program.arena_bytes  # the harness's static arena, exactly the plan
    assert mem.stack == 8192 and mem.heap == 4096
    assert max(s.live_bytes for s in mem.steps) == program.notes["live_peak"] <= program.arena_bytes
    assert len(mem.steps) == program.steps
    assert mem.sram <= mem.sram_budget and mem.flash <= mem.flash_budget
    text = str(mem)
    assert f"flash {mem.flash:,} B" in text and "arena use per kernel call:" in text


def test_mobilenet_tiny_fits_nrf52840_only_with_its_input_in_the_arena():
    """With the input and output in the arena (the default, as in TFLite Micro) the model
    fits the board's 256 KB; in buffers of their own it does not."""
    built = build_cortex_m(_module("mobilenet_tiny"), "nrf52840")
    assert built.memory.sram == built.memory.arena + 8192 + built.memory.statics < 262_144
    with pytest.raises(BudgetError) as err:
        build_cortex_m(_module("mobilenet_tiny"), "nrf52840", io_in_arena=False)
    msg = str(err.value)
    m = re.search(r"does not fit nrf52840: needs ([\d,]+) B SRAM \(arena ([\d,]+) \+ stack 8,192 \+ statics ([\d,]+)\), "
                  r"the board has 262,144 B: ([\d,]+) B over; the arena peaks at step \d+ of \d+ \(\w+ -> %\S+\) "
                  r"with [\d,]+ B live: .*%\"[/\w.]+\" \([\d,]+ B\)", msg)
    assert m, msg
    need, arena, statics, over = (int(g.replace(",", "")) for g in m.groups())
    assert need == arena + 8192 + statics and over == need - 262144
    assert err.value.exit_code == 2


def test_sram_and_flash_overrides():
    module = _module("mnist_conv")
    with pytest.raises(BudgetError, match=r"needs [\d,]+ B SRAM .* the budget \(--sram/--flash\) is 16,384 B: "
                       r"[\d,]+ B over; the arena peaks at step 1 of 3 .*: %Pooling66_Output_0 \(6,272 B\), "
                       r"%Input3 \(3,136 B\)"):
        build_cortex_m(module, "cortex-m4", sram=16384)
    with pytest.raises(BudgetError, match=r"needs [\d,]+ B flash \(text .* weights [\d,]+ B in \d+ arrays.*"
                       r"is 16,384 B: [\d,]+ B over"):
        build_cortex_m(module, "cortex-m4", flash=16384)
    built = build_cortex_m(module, "nrf52840", sram=10**6)  # more than the board's 256 KB: fine
    assert built.memory.sram_budget == 10**6


def test_boards_compile_but_have_no_qemu_runner():
    module = _module("mnist_conv")
    built = build_cortex_m(module, "stm32f746-disco")
    assert "ORIGIN = 0x08000000" in built.sources["link.ld"].decode()
    assert built.memory.sram_budget == 320 * 1024 and built.memory.flash_budget == 1024 * 1024
    with pytest.raises(RunError, match="no qemu model"):
        built.run(_feeds("mnist_conv"))


@pytest.mark.parametrize("target", ["cortex-m7", "cortex-m55"])
def test_other_cores_run_under_qemu(target):
    feeds = _feeds("mnist_conv")
    got = _compiled("mnist_conv", target).run(feeds)["Plus214_Output_0"]
    assert_close(got, ort_run(BY_NAME["mnist_conv"].path(), feeds)["Plus214_Output_0"], f"mnist on {target}")


def test_targets_carry_budgets_and_cpu_flags():
    m4, h7, nrf = get_target("cortex-m4"), get_target("stm32h743"), get_target("nrf52840")
    assert m4.qemu_machine == "mps2-an386" and "-mfpu=fpv4-sp-d16" in m4.cpu and m4.tvm == {"kind": "c"}
    assert get_target("cortex-m7").qemu_machine == "mps2-an500"
    assert (h7.sram_bytes, h7.flash_bytes, h7.qemu_machine) == (512 * 1024, 2 * 1024 * 1024, "")
    assert (nrf.sram_bytes, nrf.flash_bytes) == (256 * 1024, 1024 * 1024)
    assert get_target("x86").sram_bytes is None and get_target("arm").cpu == ()


def test_sources_have_no_malloc_and_build_with_werror(tmp_path):
    """effc's C files (and the board port) use no heap; ``make -C src`` rebuilds the ELF
    from the exported project with -Wall -Wextra -Werror, and it runs the same."""
    built = _built(_compiled("digits_cnn"))
    for src in [*built.program.effc_sources, "model.h", "effc_runtime.h", "effc_tvm_abi.h", "link.ld"]:
        assert "malloc" not in built.sources[src].decode(), src
    assert "startup.c" in built.program.effc_sources
    built.export_files(tmp_path)
    makefile = (tmp_path / "src" / "Makefile").read_text()
    assert "-Wall -Wextra -Werror" in makefile and "--gc-sections" in makefile
    proc = subprocess.run(["make", "-C", str(tmp_path / "src")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    again = CortexMBuilt((tmp_path / "src" / "model.elf").read_bytes(), built.interface, built.target, None)
    feeds = _feeds("digits_cnn")
    np.testing.assert_array_equal(again.run(feeds)["logits"], built.run(feeds)["logits"])


def test_export_load_run(tmp_path):
    cm = _compiled("mnist_conv")
    cm.export(tmp_path)
    assert (tmp_path / "model.elf").read_bytes()[:4] == b"\x7fELF"
    again = effc.load(tmp_path)
    feeds = _feeds("mnist_conv")
    np.testing.assert_array_equal(again.run(feeds)["Plus214_Output_0"], cm.run(feeds)["Plus214_Output_0"])
    assert _built(again).memory.sram == _built(cm).memory.sram


@pytest.mark.parametrize("name, in_place, deployed, tflm", [("mnist_conv", 0, 9_408, 31_360),
                                                           ("digits_cnn", 1, 6_144, 12_288),
                                                           ("mobilenet_tiny", 9, 229_376, 418_560)])
def test_deployed_arena_is_effc_plan(name, in_place, deployed, tflm):
    """The ELF's arena, which holds the input and output too, is what ``plan-memory`` plans
    for the graph it runs (``fuse{pools=true}``: pools that tile their input are computed
    with the conv before them, whose output never exists whole), other pools and depthwise convolutions run in place
    channel by channel, kernels need no scratch, and the harness has no input or output
    buffers of its own.
    ``tflm``: TFLite Micro's activation arena for the same model, measured with the
    tflite-micro interpreter by ``bench/tflm_arena.py``; effc never needs more."""
    from effc.passes.fuse import fuse_pools
    from effc.passes.memory_plan import plan_memory

    built = _built(_compiled(name))
    module = _module(name)
    fuse_pools(module)  # as every AOT build does
    plan = plan_memory(module)
    assert built.memory.arena == built.program.arena_bytes == plan.arena_bytes == deployed <= tflm
    assert len(built.program.notes["in_place"]) == in_place


def test_fold_scratch_removes_every_kernel_workspace():
    """TVM's legalized kernels pad into a copy of the input and keep a conv's whole result
    before its epilogue; ``fold_scratch`` inlines the padding and moves each epilogue under
    the reduction, so no kernel of these models asks for a workspace any more."""
    from effc.codegen.aot import Interface, lower_for_aot, read_schedule
    from effc.codegen.aot_kernels import build_kernels

    module = _module("mobilenet_tiny")
    tgt = get_target("cortex-m4")
    prims = read_schedule(lower_for_aot(module, tgt.tvm), Interface.of(module)).prim_funcs
    plain = build_kernels(prims, tgt.tvm, "plain", lean=False)
    lean = build_kernels(prims, tgt.tvm, "lean")
    assert sum(plain.workspace_bytes(k) for k in prims) > 1_000_000  # pads and accumulators
    assert "fused_conv_clip" in {k for k in prims if plain.workspace_bytes(k)}
    assert {k: lean.workspace_bytes(k) for k in prims if lean.workspace_bytes(k)} == {}


def test_plan_picture_shows_every_tensor(tmp_path):
    """Depthwise outputs written over their inputs overlap them in the picture."""
    import xml.etree.ElementTree as ET

    cm = _compiled("mobilenet_tiny")
    cm.export(tmp_path)
    svg = ET.parse(tmp_path / "memory_plan.svg").getroot()
    rects = [e for e in svg.iter() if e.tag.endswith("rect")][1:]  # the first is the frame
    mem = _built(cm).memory
    tips = [next(c for c in r if c.tag.endswith("title")).text for r in rects]
    # fold_scratch left no kernel workspace: only the one-channel scratch of in-place layers
    assert {t.split(":")[0] for t in tips if t.startswith("workspace of ")} <= {
        f"workspace of {k}" for k in _built(cm).program.notes["kernel_names"] if k.endswith("_c1")}
    assert f"arena {mem.arena:,} B" in next(e.text for e in svg.iter() if e.tag.endswith("text"))
    live: dict[int, int] = {}
    for tip in tips:
        size, offset, first, last = (int(x.replace(",", "")) for x in
                                     re.findall(r"([\d,]+) B at offset ([\d,]+), steps (\d+)\.\.(\d+)", tip)[0])
        assert 0 <= offset and offset + size <= mem.arena  # inside the arena
        for step in range(first, last + 1):
            live.setdefault(step, set()).update(range(offset // 64, (offset + size + 63) // 64))
    # the picture holds exactly the planned tensors: per step, the 64-byte lines they cover
    assert max(len(lines) for lines in live.values()) * 64 == mem.live_peak
    assert sum(" (in place over " in t for t in tips) == 12  # 9 depthwise convolutions, 3 residual adds


def test_cli_compile_and_run(tmp_path):
    np.savez(tmp_path / "in.npz", **_feeds("mnist_conv"))
    out = tmp_path / "mnist-m4"
    subprocess.run(["effc", "compile", str(BY_NAME["mnist_conv"].path()), "--target=cortex-m4", "-o", str(out)],
                   check=True, capture_output=True, text=True, timeout=600)
    assert (out / "model.elf").is_file()
    proc = subprocess.run(["effc", "run", str(out), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "o.npz")["Plus214_Output_0"]
    assert_close(got, ort_run(BY_NAME["mnist_conv"].path(), _feeds("mnist_conv"))["Plus214_Output_0"], "effc run")
