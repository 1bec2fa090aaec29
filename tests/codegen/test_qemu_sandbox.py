"""Cortex-M runs under qemu reach no host file (issue 9, class 5).

A guest program may be anything a model file makes effc build, so the emulator it runs in
must not hand it the host: effc runs qemu-system-arm with semihosting off, feeds the inputs
through qemu's loader (raw bytes at the input buffers' addresses) and reads the outputs
from the board's UART. The program below asks for a host file through semihosting
(SYS_OPEN/SYS_WRITE/SYS_CLOSE); with semihosting on (as effc ran qemu before) it creates
the file, under effc's runner it cannot.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import effc
from effc.codegen.aot import Interface
from effc.codegen.cortex_m import EXECUTABLE, CortexMBuilt, parse_uart, qemu_command
from effc.codegen.native import RunError
from effc.targets import get_target

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                                reason="needs qemu-system-arm and arm-none-eabi-gcc")

WRITER_C = r"""
#include <stdint.h>
static int semihost(int op, void* arg) {
  register int r0 __asm__("r0") = op;
  register void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}
static void stop(void) {
  *(volatile uint32_t*)0xE000ED0C = 0x05FA0004u; /* SYSRESETREQ: qemu -no-reboot exits */
  for (;;) {
  }
}
void reset(void) {
  static const char path[] = "@PATH@";
  static const char text[] = "written by the guest\n";
  uint32_t open_args[3] = {(uint32_t)path, 4 /* "w" */, sizeof(path) - 1};
  int fd = semihost(0x01 /* SYS_OPEN */, open_args);
  if (fd >= 0) {
    uint32_t write_args[3] = {(uint32_t)fd, (uint32_t)text, sizeof(text) - 1};
    uint32_t close_args[1] = {(uint32_t)fd};
    semihost(0x05 /* SYS_WRITE */, write_args);
    semihost(0x02 /* SYS_CLOSE */, close_args);
  }
  stop();
}
void fault(void) { stop(); }
extern uint32_t stack_top;
__attribute__((section(".vectors"), used)) void* const vectors[4] = {&stack_top, (void*)reset, (void*)fault,
                                                                     (void*)fault};
"""

LINK_LD = """
MEMORY { FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 64K  RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 64K }
ENTRY(reset)
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) *(.rodata*) } > FLASH
  .bss (NOLOAD) : { *(.bss*) *(COMMON) . = ALIGN(8); . += 4096; stack_top = .; } > RAM
}
"""


def _writer_elf(folder, target_file) -> bytes:
    """A bare-metal Cortex-M4 program that creates ``target_file`` through semihosting."""
    (folder / "writer.c").write_text(WRITER_C.replace("@PATH@", str(target_file)))
    (folder / "writer.ld").write_text(LINK_LD)
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-O1", "-nostdlib", "-nostartfiles",
                    "-T", "writer.ld", "writer.c", "-o", "writer.elf"], cwd=folder, check=True, capture_output=True)
    return (folder / "writer.elf").read_bytes()


def test_semihosting_guest_cannot_create_a_host_file(tmp_path):
    target = tmp_path / "created-by-guest.txt"
    elf = _writer_elf(tmp_path, target)
    # The program works: with semihosting on (qemu as effc ran it before) it creates the file.
    control = ["qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-nodefaults", "-no-reboot",
               "-semihosting-config", "enable=on,target=native", "-kernel", "writer.elf"]
    subprocess.run(control, cwd=tmp_path, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert target.read_text() == "written by the guest\n"
    target.unlink()
    # effc's runner: the same program gets no file; the run fails (it never says effc-exit).
    built = CortexMBuilt(elf, Interface((), ()), get_target("cortex-m4"), None)
    with pytest.raises(RunError, match=r"model\.elf failed under qemu-system-arm -M mps2-an386 \(exit 1\)"):
        built.run({}, timeout=60)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["writer.c", "writer.elf", "writer.ld"]


def test_qemu_command_turns_semihosting_off():
    cmd = qemu_command("mps2-an386")
    assert cmd[cmd.index("-semihosting-config") + 1] == "enable=off"
    assert "-nodefaults" in cmd and "-no-reboot" in cmd and cmd[-2:] == ["-kernel", EXECUTABLE]
    assert cmd[cmd.index("-nic") + 1] == "none"  # the boards' ethernet reaches no host network
    assert "enable=on" not in " ".join(cmd) and cmd.count("-semihosting-config") == 1


def _relu_model(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu8", [x], [y])
    path = tmp_path / "relu8.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_model_elf_has_no_semihosting_and_inputs_are_raw_bytes(tmp_path):
    """The linked harness carries no semihosting library (no rdimon), and an input whose bytes
    look like an ELF image is placed as data (qemu's loader with force-raw), not loaded."""
    cm = effc.compile(_relu_model(tmp_path), target="cortex-m4")
    cm.export(tmp_path / "out")
    nm = subprocess.run(["arm-none-eabi-nm", str(tmp_path / "out" / EXECUTABLE)], capture_output=True, text=True,
                        check=True).stdout
    symbols = {line.split()[-1] for line in nm.splitlines()}
    assert not symbols & {"initialise_monitor_handles", "_swiopen", "_swiwrite", "_open", "_unlink", "_system"}
    assert "effc_board_write" in symbols
    x = np.frombuffer(b"\x7fELF\x01\x01\x01\x00" + bytes(range(1, 25)), dtype=np.float32).reshape(1, 8).copy()
    x[0, 4:] = [-1.5, 2.25, -0.0, 7.0]
    got = cm.run({"x": x})["y"]
    np.testing.assert_array_equal(got, np.maximum(x, 0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "relu8.onnx"]


def test_uart_stream_splits_text_outputs_and_status():
    """An output's bytes are taken by count, even when they look like a marker."""
    payload = b"\neffc-exit 9\n\xff"
    stream = b"hello\n" + b"\neffc-out out0.bin %d\n" % len(payload) + payload + b"bye\neffc-exit 0\n"
    text, outputs, status = parse_uart(stream)
    assert (text, outputs, status) == ("hello\n\nbye\n", {"out0.bin": payload}, 0)
    assert parse_uart(b"effc: processor fault\n")[2] is None
