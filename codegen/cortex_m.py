"""Arm Cortex-M microcontrollers: an effc module as a bare-metal ELF, checked against the
board's SRAM and flash, and run under ``qemu-system-arm`` with no way to the host's files.

``build_cortex_m(module, target, sram=None, flash=None)``:
1. emits the AOT C program (``aot.py``: TVM's C kernels, effc's driver with one static
   arena, ``const`` weights, the file-reading harness);
2. swaps in the board harness (no files: inputs placed before reset, outputs on the UART)
   and adds the board port (``cortex_m/startup.c``: vectors, reset, FPU and UART on, the
   system calls of newlib's stdio, the end of a run as a reset request; no semihosting;
   ``cortex_m/link.ld``: flash and SRAM at the board's addresses, heap and stack reserved)
   and a Makefile, and builds with ``arm-none-eabi-gcc -O2 -ffunction-sections
   -fdata-sections -Wl,--gc-sections`` (effc's files with -Wall -Wextra -Werror);
3. measures the linked ELF (``arm-none-eabi-size``, ``arm-none-eabi-nm``): flash = text +
   rodata + the initial values of data; SRAM = arena + stack + statics (data, the rest of
   bss, the heap newlib's stdio uses);
4. checks both against the budgets (the target's, or ``sram``/``flash`` in bytes, the
   CLI's ``--sram``/``--flash``): ``BudgetError`` says by how much it is over and, for
   SRAM, which step of the arena plan peaks with which tensors.

``CortexMBuilt.run(inputs)`` runs the ELF on the target's qemu machine and returns the
outputs: semihosting is off, qemu's loader writes each input (raw bytes) at its buffer's
address, read from the ELF's symbols, and the outputs and messages come back over the
board's UART on qemu's stdout, ending with ``effc-exit STATUS``; ``memory`` holds the numbers
above and the arena in use at every kernel call. ``export_files`` writes ``model.elf``,
``memory.json`` and the C project under ``src/`` (``make -C src`` rebuilds the ELF);
``load_cortex_m`` reads them back.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from effc.ir.core import Module
from effc.ir.errors import EffcError, InputError
from effc.ir.printer import format_name
from effc.targets import Target, get_target

from . import aot_c
from effc.passes.arena import MemoryPlan, PlanEntry

from .aot import AotProgram, CToolchain, Interface, Schedule, ToolchainError, c_identifier, index_failure, storage_name
from .aot_c import compile_program, emit
from .kernels import SPARSE_DENSITY
from .native import RunError, check_inputs, read_outputs

EXECUTABLE = "model.elf"
SOURCES = "src"
MEMORY = "memory.json"
STARTUP = "startup.c"
LINKER_SCRIPT = "link.ld"
DEFAULT_TIMEOUT = 600.0
"""Seconds a run may take under qemu (untuned C kernels of a larger model are slow)."""
PACKAGES = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi")


class BudgetError(EffcError):
    """The program does not fit the board's SRAM or flash (or the --sram/--flash budget)."""

    exit_code = 2


# ----------------------------------------------------------------------------- toolchain


def cortex_m_toolchain(target: Target) -> CToolchain:
    """arm-none-eabi-gcc for the target's core: sections per function and per object, so
    that the link drops what nothing calls; newlib-nano, whose system calls the board port
    (``cortex_m/startup.c``) supplies: no semihosting, so no host file is in reach."""
    cpu = target.cpu or ("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard")
    sections = ("-ffunction-sections", "-fdata-sections")
    return CToolchain(cc=target.toolchain.get("cc", "arm-none-eabi-gcc"),
                      cflags=("-std=c11", "-O2", *cpu, *sections),
                      kernel_cflags=("-std=c11", "-O2", "-w", *cpu, *sections),
                      ldflags=(*cpu, "--specs=nano.specs", "-nostartfiles",
                               "-Wl,--gc-sections", "-T", LINKER_SCRIPT),
                      packages=PACKAGES)


def _board_file(name: str) -> str:
    return resources.files(__package__).joinpath("cortex_m", name).read_text()


def _fill(text: str, values: Mapping[str, Any]) -> str:
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    return text


UART_BASES = {"mps2-an386": 0x40004000, "mps2-an500": 0x40004000, "mps3-an547": 0x59303000}
"""The CMSDK APB UART0 that qemu connects to its first ``-serial``, by qemu machine (mps3-an547:
its Secure alias, the core starts Secure). Boards not listed get no UART (their port brings
its own ``effc_board_write``)."""


def startup_c(iface: Interface, target: Target | None = None) -> str:
    """The board port, with the harness's labels (its argv) and the target's UART."""
    files = [f"in{i}.bin" for i in range(len(iface.inputs))] + [f"out{j}.bin" for j in range(len(iface.outputs))]
    uart = target.memory.get("uart_base", UART_BASES.get(target.qemu_machine, 0)) if target is not None else 0
    return _fill(_board_file(STARTUP), {"ARGV": ", ".join(f'"{f}"' for f in files), "UART_BASE": f"0x{uart:08X}"})


def linker_script(name: str, target: Target) -> str:
    mem = target.memory
    return _fill(_board_file(LINKER_SCRIPT), {
        "NAME": name, "TARGET": target.name,
        "FLASH_ORIGIN": f"0x{mem.get('flash_origin', 0):08X}", "SRAM_ORIGIN": f"0x{mem.get('sram_origin', 0x20000000):08X}",
        "FLASH_BUDGET": f"{target.flash_bytes or 0:,}", "SRAM_BUDGET": f"{target.sram_bytes or 0:,}",
        "HEAP_BYTES": mem.get("heap_bytes", 4096), "STACK_BYTES": mem.get("stack_bytes", 8192)})


def _shell(flags: tuple[str, ...]) -> str:
    """Flags for a Makefile variable that make hands to the shell (``-Dx=f()`` stays one word)."""
    return " ".join(shlex.quote(f) for f in flags)


def makefile(program: AotProgram, toolchain: CToolchain) -> str:
    tc = toolchain
    objs = [STARTUP[:-2] + ".o"] + [o for _, o in aot_c.program_objects(program.flavor, program.own_kernels)]
    return f"""# Builds {EXECUTABLE} of @{program.name} for a Cortex-M (generated by effc).
# effc's files build with -Werror; TVM's kernel source with its own flags.
CC = {tc.cc}
CFLAGS = {_shell(tc.cflags + tc.warnings)}
KERNEL_CFLAGS = {_shell(tc.kernel_cflags)}
LDFLAGS = {_shell(tc.ldflags)}
LDLIBS = {_shell(tc.ldlibs)}
OBJS = {" ".join(objs)}

{EXECUTABLE}: $(OBJS) {LINKER_SCRIPT}
\t$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

model_kernels.c.o: {aot_c.KERNELS_C} {aot_c.ABI_H}
\t$(CC) $(KERNEL_CFLAGS) -c {aot_c.KERNELS_C} -o $@

%.o: %.c {aot_c.HEADER} {aot_c.RUNTIME_H} {aot_c.ABI_H}{"".join(" " + f for f in program.own_kernels if f.endswith(".h"))}
\t$(CC) $(CFLAGS) -c $< -o $@

clean:
\trm -f $(OBJS) {EXECUTABLE}

.PHONY: clean
"""


# ----------------------------------------------------------------------------- memory


@dataclass
class StepUse:
    """The arena at one kernel call: the bytes of every tensor (and workspace) live then."""

    step: int
    """1-based, as in the driver's comments."""
    kernel: str
    writes: str
    live_bytes: int
    tensors: list[tuple[str, int]]
    """(name, bytes), largest first."""


@dataclass
class MemoryReport:
    """Flash and SRAM of a linked ELF (bytes), and the arena plan behind them."""

    target: str
    flash: int
    text: int
    rodata: int
    weights: int
    """Part of rodata."""
    data: int
    sram: int
    arena: int
    stack: int
    heap: int
    statics: int
    """data + bss other than the arena + heap."""
    flash_budget: int | None
    sram_budget: int | None
    live_peak: int = 0
    steps: list[StepUse] = field(default_factory=list)

    @property
    def peak(self) -> StepUse | None:
        return max(self.steps, key=lambda s: s.live_bytes) if self.steps else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["steps"] = [{"step": s.step, "kernel": s.kernel, "writes": s.writes, "live_bytes": s.live_bytes}
                        for s in self.steps]
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> "MemoryReport":
        if not isinstance(data, Mapping):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        steps = [StepUse(s["step"], s["kernel"], s["writes"], s["live_bytes"], []) for s in data.get("steps", [])]
        return MemoryReport(**{**data, "steps": steps})

    def __str__(self) -> str:
        def budget(n: int | None) -> str:
            return f" of {n:,}" if n else ""

        lines = [f"flash {self.flash:,} B{budget(self.flash_budget)} (text {self.text:,} + rodata {self.rodata:,} "
                 f"[weights {self.weights:,}] + data {self.data:,})",
                 f"SRAM {self.sram:,} B{budget(self.sram_budget)} (arena {self.arena:,} + stack {self.stack:,} "
                 f"+ statics {self.statics:,} [heap {self.heap:,}])"]
        if self.steps:
            lines.append("arena use per kernel call:")
            lines += [f"  {s.step:3d} {s.kernel}{' -> ' + format_name('%', s.writes) if s.writes else ''}: {s.live_bytes:,} B"
                      for s in self.steps]
        return "\n".join(lines)


def arena_use(schedule: Schedule, plan: MemoryPlan) -> list[StepUse]:
    """The arena at each kernel call: the plan's bytes in use then (``step_bytes``), and the
    tensors and workspace behind them; an output written in place over its input is listed
    with it, a slice inside its concat or pad output once that one is live."""
    out, names = [], _labels(schedule)
    for t in schedule.calls:
        live = {e.name: e for e in plan.entries if e.first <= t <= e.last}
        rows = []
        for e in live.values():
            if e.kind == "workspace":
                rows.append((f"workspace of {schedule.kernel_at(t) or schedule.steps[t].kernel}", e.size))
            elif e.alias == "inplace" and e.of in live:
                continue
            elif not (e.alias in ("view", "slice") and e.of in live):
                over = [o.name for o in live.values() if o.alias == "inplace" and o.of == e.name]
                text = names.get(e.name, e.name) + (f" -> {', '.join(names.get(o, o) for o in over)} in place"
                                                   if over else "")
                rows.append((text, max([e.size] + [live[o].size for o in over])))
        rows.sort(key=lambda x: -x[1])
        step = schedule.steps[t]
        out.append(StepUse(t + 1, schedule.kernel_at(t) or step.kernel, step.writes, plan.step_bytes[t], rows))
    return out


def _labels(schedule: Schedule) -> dict[str, str]:
    """Plan entry name (``arena3``) -> the effc value it holds, as IR text (``%conv1``)."""
    return {storage_name(k): format_name("%", v) for k, v in schedule.labels.items() if v}


def read_elf(elf: bytes) -> tuple[dict[str, int], dict[str, tuple[int, int, str]]]:
    """Section sizes (``size -A``) and symbols (``nm -S``: name -> (address, bytes, section))
    of a 32-bit little-endian ELF, read here (a board ELF rebuilt with ``make -C src`` reads
    the same). ValueError when the file is not such an ELF."""
    try:
        if elf[:6] != b"\x7fELF\x01\x01":
            raise ValueError("not a 32-bit little-endian ELF")
        shoff = struct.unpack_from("<I", elf, 0x20)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x2E)
        heads = [struct.unpack_from("<10I", elf, shoff + k * shentsize) for k in range(shnum)]

        def string(table: int, offset: int) -> str:
            start = heads[table][4] + offset
            return elf[start:elf.index(b"\0", start)].decode("ascii", "replace")

        names = [string(shstrndx, h[0]) for h in heads]
        symbols = {}
        for _, _, _, _, offset, size, link, *_ in (h for h in heads if h[1] == 2):  # SHT_SYMTAB
            for pos in range(offset, offset + size, 16):
                st_name, value, nbytes, _, _, shndx = struct.unpack_from("<IIIBBH", elf, pos)
                symbols[string(link, st_name)] = (value, nbytes, names[shndx] if shndx < shnum else "")
        return {n: h[5] for n, h in zip(names, heads) if n}, symbols
    except (IndexError, struct.error) as e:
        raise ValueError(str(e)) from None


def measure_elf(elf: bytes, program_name: str) -> dict[str, int]:
    """Flash and SRAM parts of a linked ELF by section, and the arena and weight symbols."""
    sections, symbols = read_elf(elf)
    flash_other = sum(sections.get(s, 0) for s in (".ARM.extab", ".ARM.exidx", ".init_array", ".fini_array"))
    return {"text": sections.get(".text", 0) + flash_other, "rodata": sections.get(".rodata", 0),
            "data": sections.get(".data", 0), "bss": sections.get(".bss", 0) + sections.get(INPUT_SECTION, 0),
            "heap": sections.get(".heap", 0), "stack": sections.get(".stack", 0),
            "arena": symbols.get("arena", (0, 0))[1], "weights": symbols.get(f"effc_{program_name}_weights", (0, 0))[1]}


def memory_report(sizes: Mapping[str, int], target: Target, schedule: Schedule, plan: MemoryPlan,
                  sram_budget: int | None, flash_budget: int | None) -> MemoryReport:
    statics = sizes["data"] + sizes["bss"] - sizes["arena"] + sizes["heap"]
    return MemoryReport(
        target=target.name, flash=sizes["text"] + sizes["rodata"] + sizes["data"], text=sizes["text"],
        rodata=sizes["rodata"], weights=sizes["weights"], data=sizes["data"],
        sram=sizes["arena"] + sizes["stack"] + statics, arena=sizes["arena"], stack=sizes["stack"],
        heap=sizes["heap"], statics=statics, flash_budget=flash_budget, sram_budget=sram_budget,
        live_peak=plan.live_peak, steps=arena_use(schedule, plan))


def check_budgets(mem: MemoryReport, schedule: Schedule, overridden: set[str] = frozenset()) -> None:
    """BudgetError when SRAM or flash is over budget: by how much, and what peaks."""
    problems = []
    if mem.sram_budget is not None and mem.sram > mem.sram_budget:
        msg = (f"needs {mem.sram:,} B SRAM (arena {mem.arena:,} + stack {mem.stack:,} + statics {mem.statics:,}), "
               f"{_has(mem.target, 'sram' in overridden)} {mem.sram_budget:,} B: {mem.sram - mem.sram_budget:,} B over")
        peak = mem.peak
        if peak is not None:
            what = peak.kernel + (f" -> {format_name('%', peak.writes)}" if peak.writes else "")
            tensors = ", ".join(f"{n} ({b:,} B)" for n, b in peak.tensors[:6])
            more = f" and {len(peak.tensors) - 6} more" if len(peak.tensors) > 6 else ""
            msg += (f"; the arena peaks at step {peak.step} of {len(mem.steps)} ({what}) with {peak.live_bytes:,} B "
                    f"live: {tensors}{more}")
        problems.append(msg)
    if mem.flash_budget is not None and mem.flash > mem.flash_budget:
        largest = max((w.nbytes for w in schedule.weights), default=0)
        problems.append(f"needs {mem.flash:,} B flash (text {mem.text:,} + rodata {mem.rodata:,} + data {mem.data:,}; "
                        f"weights {mem.weights:,} B in {len(schedule.weights)} arrays, the largest {largest:,} B), "
                        f"{_has(mem.target, 'flash' in overridden)} {mem.flash_budget:,} B: "
                        f"{mem.flash - mem.flash_budget:,} B over")
    if problems:
        raise BudgetError(f"does not fit {mem.target}: " + "; and it ".join(problems)
                          + ". Use a smaller model or input, or a board with more memory (or give the board's real sizes "
                          "with --sram/--flash)")


def _has(target: str, overridden: bool) -> str:
    return "the budget (--sram/--flash) is" if overridden else "the board has"


# ----------------------------------------------------------------------------- built


class CortexMBuilt:
    """A model built as a Cortex-M ELF (and the C project it was built from)."""

    def __init__(self, executable: bytes, interface: Interface, target: Target, memory: MemoryReport | None,
                 sources: Mapping[str, bytes] | None = None, program: AotProgram | None = None):
        self.executable = executable
        self.interface = interface
        self.target = target
        self.memory = memory
        self.sources = dict(sources or {})
        self.program = program
        """The emitted program (None when loaded from a folder)."""
        self.arena_bytes = program.arena_bytes if program is not None else None
        self.seconds: dict[str, float] = {}
        self.last_run_seconds: float | None = None
        """Wall time of the last qemu run (start-up included)."""
        self.last_run_instructions: int | None = None
        """Instructions the last ``run(..., count_instructions=True)`` executed in the model's
        run function, counted by the firmware's SysTick under ``-icount shift=0`` (one
        instruction per ns of virtual time): a proxy for work, not cycles, to a resolution of
        one SysTick tick (``INSTRUCTIONS_PER_TICK``)."""
        self.plan_svg: str | None = None
        """A picture of the arena plan (None when loaded from a folder)."""

    @property
    def signature(self):
        return self.interface.signature

    def run(self, inputs: Mapping[str, np.ndarray], *, timeout: float = DEFAULT_TIMEOUT,
            count_instructions: bool = False) -> dict[str, np.ndarray]:
        """Outputs keyed by graph output name, computed by the ELF under qemu-system-arm.
        ``count_instructions``: run qemu in its instruction-counting mode and set
        ``last_run_instructions``."""
        arrays = check_inputs(self.interface, inputs)
        cmd = self._qemu_command()
        if count_instructions:
            cmd[1:1] = ["-icount", "shift=0,align=off,sleep=off"]
        with tempfile.TemporaryDirectory(prefix="effc-cortex-m-") as tmp:
            folder = Path(tmp)
            (folder / EXECUTABLE).write_bytes(self.executable)
            buffers = input_buffers(self.executable)
            for i, a in enumerate(arrays):
                cmd += _load_input(folder, i, a.tobytes(), buffers)
            start = time.perf_counter()
            proc = run_qemu(cmd, folder, timeout)
            self.last_run_seconds = time.perf_counter() - start
            outs = []
            for j in range(len(self.interface.outputs)):
                if f"out{j}.bin" in proc.outputs:
                    (folder / f"out{j}.bin").write_bytes(proc.outputs[f"out{j}.bin"])
                outs.append(folder / f"out{j}.bin")
            log = proc.log.strip()
            failure = index_failure(log)
            if failure is not None:
                raise failure
            if proc.returncode != 0 or "effc:" in log or not _outputs_complete(self.interface, outs):
                raise RunError(f"{EXECUTABLE} failed under {' '.join(cmd[:3])} (exit {proc.returncode}): {log[-2000:]}")
            self.last_run_instructions = self._instructions(log) if count_instructions else None
            return read_outputs(self.interface, outs)

    def _instructions(self, log: str) -> int:
        """Instructions per run from the harness's ``effc-ticks HIGH LOW RUNS`` line."""
        m = _TICKS.search(log)
        per_tick = INSTRUCTIONS_PER_TICK.get(self.target.qemu_machine or "")
        if m is None or per_tick is None:
            raise RunError(f"{EXECUTABLE} reported no instruction count (machine {self.target.qemu_machine}); "
                           "recompile it with this effc")
        ticks = (int(m.group(1)) << 32) + int(m.group(2))
        return round(ticks * per_tick / max(1, int(m.group(3))))

    def _qemu_command(self) -> list[str]:
        machine = self.target.qemu_machine
        if not machine:
            raise RunError(f"target {self.target.name} is a board with no qemu model; flash {EXECUTABLE} to the board "
                           "(its harness prints to the board's UART; a board without a known UART needs its own "
                           "effc_board_write), or compile for cortex-m4/cortex-m7 to run in qemu")
        return qemu_command(machine)

    def export_files(self, folder: str | os.PathLike) -> list[Path]:
        """Write ``model.elf``, ``memory.json`` and ``src/`` (the C project); returns the paths."""
        folder = Path(folder)
        (folder / SOURCES).mkdir(parents=True, exist_ok=True)
        exe = folder / EXECUTABLE
        exe.write_bytes(self.executable)
        paths = [exe]
        if self.memory is not None:
            (folder / MEMORY).write_text(json.dumps(self.memory.to_json(), indent=2, sort_keys=True) + "\n")
            paths.append(folder / MEMORY)
        if self.plan_svg is not None:
            (folder / PLAN_PICTURE).write_text(self.plan_svg)
            paths.append(folder / PLAN_PICTURE)
        for name, data in sorted(self.sources.items()):
            (folder / SOURCES / name).write_bytes(data)
            paths.append(folder / SOURCES / name)
        return paths


# ----------------------------------------------------------------------------- qemu


INSTRUCTIONS_PER_TICK = {"mps2-an386": 40.0, "mps2-an500": 40.0, "mps3-an547": 31.25}
"""Instructions per SysTick tick under ``-icount shift=0``: qemu's core clock of the machine
(25 MHz on the MPS2 boards, 32 MHz on MPS3) against one instruction per ns."""
_TICKS = re.compile(r"effc-ticks (\d+) (\d+) (\d+)")

INPUT_SECTION = ".effc_inputs"
"""The section of the harness's input buffers: filled by qemu's loader, not cleared by reset."""


def qemu_command(machine: str) -> list[str]:
    """qemu-system-arm for ``machine``, with nothing of the host in the guest's reach:
    semihosting off (the guest cannot open, create or delete host files, nor run host
    commands), no network, no default devices or monitor, the first UART on qemu's stdout
    (the harness's only way out), and a guest reset request ends qemu (``-no-reboot``). The
    caller adds one ``-device loader`` per input (``_load_input``)."""
    if shutil.which("qemu-system-arm") is None:
        raise ToolchainError("running a Cortex-M build needs qemu-system-arm, which is not on PATH; install it "
                             "(Debian/Ubuntu: apt-get install qemu-system-arm)")
    return ["qemu-system-arm", "-M", machine, "-display", "none", "-nodefaults", "-nic", "none", "-monitor", "none",
            "-chardev", "stdio,id=effc-uart,signal=off", "-serial", "chardev:effc-uart",
            "-semihosting-config", "enable=off", "-no-reboot", "-kernel", EXECUTABLE]


def _load_input(folder: Path, index: int, data: bytes, buffers: Mapping[str, tuple[int, int]]) -> list[str]:
    """qemu arguments that place input ``index`` in its buffer before reset. ``force-raw``:
    the bytes are data, never an ELF or hex image qemu would load elsewhere."""
    name = f"input{index}"
    if name not in buffers:
        raise RunError(f"{EXECUTABLE} has no buffer {name} in {INPUT_SECTION}; it was built by an older effc: "
                       "recompile it (`effc compile --target=cortex-m4`)")
    addr, size = buffers[name]
    if len(data) > size:
        raise RunError(f"{EXECUTABLE}: input {index} has {len(data):,} bytes, its buffer {size:,}; recompile the model "
                       "for this input shape")
    if not data:
        return []
    (folder / f"in{index}.bin").write_bytes(data)
    return ["-device", f"loader,file=in{index}.bin,addr=0x{addr:08x},force-raw=on"]


def input_buffers(elf: bytes) -> dict[str, tuple[int, int]]:
    """``name -> (address, bytes)`` of the symbols in ``.effc_inputs`` (``read_elf``).
    RunError when the file is not a 32-bit little-endian ELF."""
    try:
        return {n: (a, size) for n, (a, size, sec) in read_elf(elf)[1].items() if sec == INPUT_SECTION}
    except ValueError as e:
        raise RunError(f"{EXECUTABLE} is not a Cortex-M ELF effc can run ({e}); recompile the model") from None


@dataclass
class QemuRun:
    """What a run under qemu said: the guest's exit status (``effc-exit``; qemu's own, or 1,
    when the guest never got there), its text, and each output's bytes by label."""

    returncode: int
    log: str
    outputs: dict[str, bytes]


def run_qemu(cmd: list[str], folder: Path, timeout: float) -> QemuRun:
    """Run ``cmd`` in ``folder`` and split what the UART carried into text and outputs."""
    try:
        proc = subprocess.run(cmd, cwd=folder, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunError(f"{EXECUTABLE} did not finish within {timeout:g} s under {' '.join(cmd[:3])}") from None
    text, outputs, status = parse_uart(proc.stdout)
    log = text + proc.stderr.decode("utf-8", "replace")
    return QemuRun(status if status is not None else (proc.returncode or 1), log, outputs)


def parse_uart(stream: bytes) -> tuple[str, dict[str, bytes], int | None]:
    """(text, outputs by label, exit status or None) of the harness's UART stream: text
    lines, each output as ``effc-out LABEL BYTES`` and exactly that many raw bytes, and
    ``effc-exit STATUS`` at the end."""
    text, outputs, pos = [], {}, 0
    while True:
        found = [(k, m) for m in (b"\neffc-out ", b"\neffc-exit ") if (k := stream.find(m, pos)) >= 0]
        if not found:
            text.append(stream[pos:])
            return b"".join(text).decode("utf-8", "replace"), outputs, None
        k, marker = min(found)
        text.append(stream[pos:k + 1])
        eol = stream.find(b"\n", k + len(marker))
        fields = stream[k + len(marker):eol if eol >= 0 else len(stream)].split()
        if marker == b"\neffc-exit ":
            status = int(fields[0]) if len(fields) == 1 and fields[0].isdigit() else None
            return b"".join(text).decode("utf-8", "replace"), outputs, status
        if eol < 0 or len(fields) != 2 or not fields[1].isdigit():
            text.append(stream[k + 1:])
            return b"".join(text).decode("utf-8", "replace"), outputs, None
        size = int(fields[1])
        outputs[fields[0].decode("ascii", "replace")] = stream[eol + 1:eol + 1 + size]
        pos = eol + 1 + size


def _outputs_complete(iface: Interface, paths: list[Path]) -> bool:
    """Every output came back whole: its file holds exactly its type's bytes."""
    return all(p.is_file() and p.stat().st_size == (t.nbytes() or 0) for p, (_, t) in zip(paths, iface.outputs))


# ----------------------------------------------------------------------------- build


PLAN_PICTURE = "memory_plan.svg"

MVE_CORES = ("cortex-m55", "cortex-m85")
"""Cores with Helium (the M-profile vector extension), by ``-mcpu``."""


def has_mve(target: Target) -> bool:
    """The target's core has Helium: an ``-mcpu`` of ``MVE_CORES`` and no ``+nomve``."""
    cpu = next((f.split("=", 1)[1] for f in target.cpu if f.startswith("-mcpu=")), "")
    core, *extensions = cpu.split("+")
    return core in MVE_CORES and "nomve" not in extensions


def _target(target: Target | str | None) -> Target:
    if target is None:
        return get_target("cortex-m4")
    return get_target(target) if isinstance(target, str) else target


def build_cortex_m(module: Module, target: Target | str | None = None, *, name: str | None = None,
                   sram: int | None = None, flash: int | None = None, io_in_arena: bool = True,
                   int8_kernels: str = "effc", sparse_weights: str = "speed") -> CortexMBuilt:
    """Build ``module`` (optimized, static shapes) into a Cortex-M ELF and check that it fits.
    ``sram``/``flash`` (bytes) replace the target's budgets; BudgetError when over.
    ``io_in_arena``: the inputs and outputs live in the arena (False: buffers of their own).
    ``int8_kernels``: ``effc`` runs the integer convolutions, and the integer matrix
    products with a float result, on effc's own kernels (``codegen/kernels``: SMLAD/SXTB16
    on cores with the DSP extension, Helium's VMLADAVA for convolutions on those with MVE),
    ``dsp`` on those kernels without Helium, ``tvm`` on TVM's C kernels (the last two for
    comparison). ``sparse_weights`` (effc's kernels): store the weights of a
    mostly-zero convolution compressed (``effc prune --sparsity``) where that is no slower
    (``speed``), wherever it saves flash (``flash``: slower below 75% zeros), or never (``off``)."""
    tgt = _target(target)
    if tgt.tvm.get("kind") != "c":
        raise InputError(f"target {tgt.name}: Cortex-M builds need TVM's C kernels (tvm kind 'c')")
    toolchain = cortex_m_toolchain(tgt)
    toolchain.require()  # before the (slow) kernel build
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    cname = c_identifier(name or module.name)
    if int8_kernels not in ("effc", "dsp", "tvm"):
        raise InputError(f"int8_kernels must be effc, dsp or tvm, got '{int8_kernels}'")
    mode = "tvm" if int8_kernels == "tvm" else "effc-mve" if int8_kernels == "effc" and has_mve(tgt) else "effc"
    if sparse_weights not in SPARSE_DENSITY:
        raise InputError(f"sparse_weights must be one of {', '.join(SPARSE_DENSITY)}, got '{sparse_weights}'")
    program, schedule, plan = emit(module, tgt.tvm, toolchain, cname, io_in_arena=io_in_arena, int8_kernels=mode,
                                   sparse_density=SPARSE_DENSITY[sparse_weights])
    seconds["emit"] = time.perf_counter() - t
    board = {STARTUP: startup_c(program.interface, tgt).encode(), LINKER_SCRIPT: linker_script(cname, tgt).encode(),
             aot_c.HARNESS: aot_c.harness_c(cname, program.interface, True, program.notes["input_offsets"]).encode()}
    program.files = dict(sorted({**program.files, **board, aot_c.MAKEFILE: makefile(program, toolchain).encode()}.items()))
    program.effc_sources = [*program.effc_sources, STARTUP]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="effc-cortex-m-build-") as tmp:
        exe = compile_program(program, toolchain, tmp, output=EXECUTABLE,
                              extra_files={STARTUP: board[STARTUP]})
        data = exe.read_bytes()
        sizes = measure_elf(data, cname)
    seconds["gcc"] = time.perf_counter() - t
    sram_budget = sram if sram is not None else tgt.sram_bytes
    flash_budget = flash if flash is not None else tgt.flash_bytes
    mem = memory_report(sizes, tgt, schedule, plan, sram_budget, flash_budget)
    overridden = {k for k, v in (("sram", sram), ("flash", flash)) if v is not None}
    check_budgets(mem, schedule, overridden)
    program.notes.update({"flash": mem.flash, "sram": mem.sram})
    built = CortexMBuilt(data, program.interface, tgt, mem, program.files, program)
    built.seconds = seconds
    built.plan_svg = _plan_picture(schedule, plan, cname, tgt)
    return built


def _plan_picture(schedule: Schedule, plan: MemoryPlan, name: str, target: Target) -> str:
    """The deployed arena plan: each tensor's lifetime against its offset, workspaces in grey."""
    from .plan_svg import Rect, arena_svg

    names = _labels(schedule)

    def label(e: PlanEntry) -> str:
        if e.kind == "workspace":
            return f"workspace of {schedule.kernel_at(e.first) or schedule.steps[e.first].kernel}"
        text = names.get(e.name, e.name)
        return f"{text} (in place over {names.get(e.of, e.of)})" if e.alias == "inplace" else text

    rects = [Rect(label(e), e.first, e.last, e.offset, e.size, workspace=e.kind == "workspace") for e in plan.entries]
    title = (f"effc_{name} on {target.name}: arena {plan.arena_bytes:,} B ({plan.offset_algorithm}), "
             f"live peak {plan.live_peak:,} B")
    return arena_svg(rects, plan.arena_bytes, len(plan.order), title)


def load_cortex_m(folder: str | os.PathLike, target: Target | str | None, ir_module: Module) -> CortexMBuilt:
    """A ``CortexMBuilt`` exported to ``folder``, for the module it was built from."""
    folder = Path(folder)
    exe = folder / EXECUTABLE
    if not exe.is_file():
        raise InputError(f"{folder}: no {EXECUTABLE}; recompile the artifact with `effc compile --target=cortex-m4`")
    path = folder / MEMORY
    try:  # hashed, so only a hand-made or rewritten report fails
        mem = MemoryReport.from_json(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # JSON, fields, their types
        raise InputError(f"{path}: not a memory report as effc writes it ({type(e).__name__}: {e}); "
                         "recompile the artifact with `effc compile`") from None
    src = folder / SOURCES
    sources = {p.name: p.read_bytes() for p in sorted(src.iterdir()) if p.is_file()} if src.is_dir() else {}
    return CortexMBuilt(exe.read_bytes(), Interface.of(ir_module), _target(target), mem, sources)


__all__ = ["BudgetError", "CortexMBuilt", "MemoryReport", "StepUse", "arena_use", "build_cortex_m",
           "check_budgets", "cortex_m_toolchain", "load_cortex_m", "measure_elf", "read_elf"]
