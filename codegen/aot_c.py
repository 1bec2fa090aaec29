"""The C text of an AOT program (see ``aot.py``). Files, all generated, all deterministic:

- ``model.h``: the C API, ``int effc_<name>_invoke(void* arena)`` over the inputs and
  outputs in the arena (``effc_<name>_input/_output``) and ``effc_<name>_run(const T* in...,
  T* out..., void* arena)`` over the caller's buffers, with ``EFFC_<NAME>_ARENA_BYTES`` /
  ``EFFC_<NAME>_ALIGN``, per-tensor byte counts and arena offsets;
- ``model.c``: the driver: one block per kernel call (DLTensor descriptors pointing into
  the arena and weights) or per step it computes itself in place (transpose, LRN);
- ``model_weights.c``: every constant in one ``const`` array of 32-bit words (the bytes in
  little-endian order; each constant starts on a 64-byte boundary);
- ``effc_runtime.h`` / ``effc_runtime.c``: the workspace allocator over the arena slice
  the driver hands each kernel, a serial ``TVMBackendParallelLaunch`` and the call helper
  (the same for every model: link one copy when several models share a binary);
- ``effc_tvm_abi.h``: the few DLPack / TVM FFI types and functions the kernels use;
- ``main.c``: a test harness that reads raw input bytes from files and writes raw outputs;
- ``Makefile``: how these build (``CC``/``CFLAGS``/``LDFLAGS`` chosen by the target).

effc's own files compile with ``-std=c11 -Wall -Wextra -Werror``; TVM's kernel source
(C flavour) gets ``-w``.
"""
from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from effc.version import __version__

from effc.ir.core import Module
from effc.passes.arena import MemoryPlan

from .aot import (ALIGN, AotProgram, CToolchain, Interface, Schedule, Step, TensorArg, ToolchainError, c_identifier,
                  plan_program, storage_name)
from . import kernels as own_kernels
from .aot_inplace import BlockPermute, LrnRing, program_schedule
from .aot_kernels import Kernels, build_kernels, kernel_flavor
from .relax_emit import c_reserved, relax_dtype

OWN_C = (own_kernels.Int8Conv, own_kernels.Int8Gemm)
"""The ``schedule.own`` entries that call effc's own C kernels (``codegen/kernels``)."""

HEADER = "model.h"
DRIVER = "model.c"
WEIGHTS = "model_weights.c"
RUNTIME_H = "effc_runtime.h"
RUNTIME_C = "effc_runtime.c"
ABI_H = "effc_tvm_abi.h"
HARNESS = "main.c"
MAKEFILE = "Makefile"
KERNELS_O = "model_kernels.o"
KERNELS_C = "model_kernels.c"

C_TYPES = {
    "float32": "float", "float64": "double", "float16": "uint16_t", "bfloat16": "uint16_t",
    "int8": "int8_t", "int16": "int16_t", "int32": "int32_t", "int64": "int64_t",
    "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t", "uint64": "uint64_t", "bool": "uint8_t",
}
"""C element type of a tensor in the API (half floats and bools as their storage bits)."""

_DL_CODES = {"int": "kDLInt", "uint": "kDLUInt", "float": "kDLFloat", "bfloat": "kDLBfloat", "bool": "kDLBool"}

def c_type(dtype: str) -> str:
    if dtype not in C_TYPES:
        raise ValueError(f"no C type for tensors of {dtype}")
    return C_TYPES[dtype]


def dl_dtype(dtype: str) -> tuple[str, int]:
    """(DLDataTypeCode name, bits) as TVM describes ``dtype``."""
    if dtype == "bool":
        return "kDLBool", 8
    for prefix in ("bfloat", "float", "uint", "int"):
        if dtype.startswith(prefix):
            return _DL_CODES[prefix], int(dtype[len(prefix):])
    raise ValueError(f"no DLPack code for {dtype}")


def param_names(iface: Interface) -> tuple[list[str], list[str]]:
    """C parameter names for the inputs and outputs: the value names made ASCII
    identifiers, clear of C's reserved names (``relax.c_reserved``: prefixed ``v_``), and unique
    (names equal after that get ``_1``, ``_2``, ...)."""
    seen: set[str] = set()
    out: list[list[str]] = [[], []]
    for k, names in enumerate(([n for n, _ in iface.inputs], [n for n, _ in iface.outputs])):
        for i, name in enumerate(names):
            c = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or f"{'in' if k == 0 else 'out'}{i}"
            if c[0].isdigit() or c_reserved(c):
                c = f"v_{c}"
            base, n = c, 1
            while c in seen:
                c, n = f"{base}_{n}", n + 1
            seen.add(c)
            out[k].append(c)
    return out[0], out[1]


def _comment(text: str) -> str:
    return text.replace("*/", "* /").replace("??", "? ?").replace("\n", " ").replace("\\", "/")


_C_STRING_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                           b" _-.,:;/'()[]{}<>=+*&^%$#@!~|")


def _c_string(text: str) -> str:
    """``text`` as a C string literal: its UTF-8 bytes, every byte outside a plain safe
    set as an octal escape (so no quote, backslash, trigraph or newline in a node name
    can end the literal)."""
    return '"' + "".join(chr(b) if b in _C_STRING_SAFE else f"\\{b:03o}" for b in text.encode()) + '"'


# ----------------------------------------------------------------------------- weights


def weight_layout(weights: list[np.ndarray]) -> tuple[list[int], int]:
    """Byte offset of each constant in the weights array, and the array's size."""
    offsets, at = [], 0
    for w in weights:
        offsets.append(at)
        at += (w.nbytes + ALIGN - 1) // ALIGN * ALIGN
    return offsets, at


_ESCAPES = np.array([f"\\x{b:02x}".encode() for b in range(256)], dtype="S4")
_BYTES_PER_LINE = 32


def weights_c(name: str, weights: list[np.ndarray]) -> str:
    """One byte array; a string literal, which C compilers read ten times faster than a
    list of numbers (every byte is a two-digit hex escape, so none runs into the next)."""
    offsets, total = weight_layout(weights)
    blob = np.zeros(max(total, 1), dtype=np.uint8)
    for w, off in zip(weights, offsets):
        blob[off:off + w.nbytes] = np.frombuffer(np.ascontiguousarray(w).tobytes(), dtype=np.uint8)
    escaped = _ESCAPES[blob].tobytes().decode()
    step = 4 * _BYTES_PER_LINE
    lines = "\n".join(f'  "{escaped[i:i + step]}"' for i in range(0, len(escaped), step))
    index = "\n".join(f" *   {off:>10}  {w.dtype}{list(w.shape)}" for w, off in zip(weights, offsets))
    return (f"/* Weights of @{name}, generated by effc {__version__}: {len(weights)} constants, {total:,} bytes.\n"
            f" * Each constant starts on a {ALIGN}-byte boundary, its bytes in the target's order\n"
            f" * (little-endian). Byte offset, type and shape of each:\n{_comment(index)}\n */\n"
            f"#include <stdint.h>\n\n#include \"{RUNTIME_H}\"\n\n"
            f"EFFC_ALIGNED({ALIGN}) const uint8_t effc_{name}_weights[{len(blob)}] =\n{lines};\n")


# ----------------------------------------------------------------------------- header


def header(name: str, iface: Interface, plan: MemoryPlan, weight_bytes: int, target: dict[str, Any],
           n_calls: int, io_in_arena: bool = True) -> str:
    up = name.upper()
    ins, outs = param_names(iface)
    params = [f"const {c_type(_relax_dtype(t))}* {c}" for c, (_, t) in zip(ins, iface.inputs)]
    params += [f"{c_type(_relax_dtype(t))}* {c}" for c, (_, t) in zip(outs, iface.outputs)]
    sizes, docs = [], {"INPUT": [], "OUTPUT": []}
    for kind, names, values in (("INPUT", ins, iface.inputs), ("OUTPUT", outs, iface.outputs)):
        for i, (c, (_, t)) in enumerate(zip(names, values)):
            sizes.append(f"#define EFFC_{up}_{kind}{i}_BYTES {_nbytes_of(t)}u  /* {c} */")
            docs[kind].append(f" *   {i}: {c}: {t} ({_nbytes_of(t)} bytes)")
            if io_in_arena:
                sizes.append(f"#define EFFC_{up}_{kind}{i}_OFFSET {plan.tensor(f'{kind.lower()}{i}').offset}u")
    run = f"""int effc_{name}_run({", ".join(params + ["void* arena"])})"""
    arena = (f"The arena (EFFC_{up}_ARENA_BYTES bytes aligned to EFFC_{up}_ALIGN, for which the kernels are\n"
             " *   compiled) holds every intermediate tensor and kernel workspace")
    api = f""" * int effc_{name}_invoke(void* arena)
 *   Runs the model once on the inputs in the arena, leaving the outputs there (as TFLite
 *   Micro does). {arena}, the inputs and outputs. Write input i at effc_{name}_input(arena, i)
 *   (EFFC_{up}_INPUT<i>_OFFSET) before each call, read output i at effc_{name}_output(arena, i)
 *   after it; an input's bytes are reused once it is consumed. NULL for no such i.
 * {run}
 *   The same over the caller's own buffers (inputs read only), copied in and out.""" if io_in_arena else f""" * {run}
 *   Runs the model once; the inputs (read only), the outputs (written) and the arena are the
 *   caller's. {arena}. Buffers aligned to EFFC_{up}_ALIGN, not overlapping."""
    decls = [f"int effc_{name}_invoke(void* arena);", f"void* effc_{name}_input(void* arena, int index);",
             f"void* effc_{name}_output(void* arena, int index);"] * io_in_arena + [f"{run};"]
    return f"""/* @{name} as an ahead-of-time C program, generated by effc {__version__}. Do not edit.
 * Kernels: TVM, target {_comment(json.dumps(target, sort_keys=True))}; {n_calls} kernel calls.
 * Every tensor is dense and row-major (C order).
 *
{api}
 *   Returns 0, or k > 0 when kernel call k failed (it found no room for its workspace:
 *   an arena too small, i.e. an effc bug), or EFFC_{up}_INDEX_OUT_OF_RANGE when an index
 *   input (Gather, GatherElements, ScatterElements) held an index outside its axis: the
 *   kernels clamp every index, so nothing was read or written outside a tensor, but the
 *   outputs are not the model's; effc_{name}_error() says which node and which index.
 *   Not reentrant: the workspace allocator (effc_runtime.c) keeps state while a kernel runs.
 *
 * const char* effc_{name}_error(void)
 *   After a run that failed: what failed, e.g. "Gather node 'embed': index 50 is out of
 *   range for an axis of length 50"; "" after a run that succeeded.
 * int64_t effc_{name}_error_index(void)
 *   After EFFC_{up}_INDEX_OUT_OF_RANGE: the offending index value.
 *
 * Inputs:
{chr(10).join(docs["INPUT"])}
 * Outputs:
{chr(10).join(docs["OUTPUT"])}
 * Weights: {weight_bytes:,} bytes of const data (model_weights.c).
 */
#ifndef EFFC_{up}_H
#define EFFC_{up}_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define EFFC_{up}_ARENA_BYTES {plan.arena_bytes}u
#define EFFC_{up}_ALIGN {ALIGN}u
#define EFFC_{up}_WEIGHT_BYTES {weight_bytes}u
#define EFFC_{up}_NUM_INPUTS {len(ins)}
#define EFFC_{up}_NUM_OUTPUTS {len(outs)}
#define EFFC_{up}_INDEX_OUT_OF_RANGE (-1)
{chr(10).join(sizes)}

{chr(10).join(decls)}
const char* effc_{name}_error(void);
int64_t effc_{name}_error_index(void);

#ifdef __cplusplus
}}
#endif

#endif /* EFFC_{up}_H */
"""


def _relax_dtype(t: Any) -> str:
    return relax_dtype(t.dtype)


def _nbytes_of(t: Any) -> int:
    return int(np.prod([int(d) for d in t.shape], dtype=np.int64)) * t.dtype.itemsize


# ----------------------------------------------------------------------------- driver


class _Driver:
    def __init__(self, name: str, iface: Interface, schedule: Schedule, plan: MemoryPlan, kernels: Kernels):
        self.name = name
        self.iface = iface
        self.schedule = schedule
        self.plan = plan
        self.kernels = kernels
        self.ins, self.outs = param_names(iface)
        self.weight_offsets, self.weight_bytes = weight_layout(schedule.weights)
        self.shapes: dict[tuple[int, ...], str] = {}

    def shape(self, dims: tuple[int, ...]) -> str:
        if dims not in self.shapes:
            self.shapes[dims] = f"effc_shape{len(self.shapes)}"
        return self.shapes[dims]

    def where(self, arg: TensorArg) -> tuple[str, str]:
        """(C pointer expression, comment) for the bytes ``arg`` points at."""
        kind, index = arg.storage_key
        if kind == "input" and not self.schedule.io_in_arena:
            return f"(void*){self.ins[index]}", f"input {self.iface.inputs[index][0]}"
        if kind == "output" and not self.schedule.io_in_arena:
            return f"(void*){self.outs[index]}", f"output {self.iface.outputs[index][0]}"
        if kind == "weight":
            off = self.weight_offsets[index]
            return f"(void*)(effc_w + {off})", f"weight {index}"
        if kind == "status":
            return f"(void*)effc_status[{index}]", f"index check {index}"
        off = self.plan.tensor(storage_name(arg.storage_key)).offset
        label = self.schedule.labels.get(arg.storage_key)
        label = label or (self.iface.inputs[index][0] if kind == "input" else
                          self.iface.outputs[index][0] if kind == "output" else None)
        where = f"arena {off}..{off + self.schedule.storages[arg.storage_key].nbytes}"
        return f"(void*)(effc_a + {off})", f"%{label} {where}" if label else where

    def tensor(self, arg: TensorArg) -> tuple[str, str]:
        ptr, what = self.where(arg)
        code, bits = dl_dtype(arg.dtype)
        shape = self.shape(arg.shape) if arg.shape else "NULL"
        return (f"EFFC_TENSOR({ptr}, {shape}, {len(arg.shape)}, {code}, {bits})",
                f"{what}: {arg.dtype}{list(arg.shape)}")

    def workspace(self, t: int) -> tuple[int, int, int]:
        """(offset, kernel workspace bytes, offset of a split step's scratch) of step ``t``."""
        e = self.plan.workspace(f"step{t + 1}")
        kernel = self.kernels.workspace_bytes(self.schedule.kernel_at(t))
        off = e.offset if e is not None else 0
        return off, kernel, off + (kernel + ALIGN - 1) // ALIGN * ALIGN

    def step(self, t: int, step: Step) -> list[str]:
        n = len(step.args)
        if step.elided:
            return [f"  /* {t + 1}: {step.kernel} -> %{_comment(step.writes)}: no call, its producers wrote every "
                    "input into its place */"]
        if t in self.schedule.own:
            own = self.schedule.own[t]
            if isinstance(own, own_kernels.Int8Gemm):
                ws, _, _ = self.workspace(t)
                return own.c_lines(f"{t + 1}: -> %{_comment(step.writes)}", self.where(step.args[0])[0],
                                   self.where(step.args[-1])[0],
                                   lambda k: self.where(TensorArg(("weight", k), (), "int8"))[0], f"(effc_a + {ws})")
            if isinstance(own, own_kernels.Int8Conv):
                ws, _, _ = self.workspace(t)
                return own.c_lines(f"{t + 1}: -> %{_comment(step.writes)}", self.where(step.args[0])[0],
                                   self.where(step.args[-1])[0],
                                   lambda k: self.where(TensorArg(("weight", k), (), "int8"))[0], f"(effc_a + {ws})",
                                   self.where(step.args[1])[0] if own.residual else None)
            return self.permute(t, step, own) if isinstance(own, BlockPermute) else self.lrn(t, step, own)
        split = self.schedule.splits.get(t)
        kernel = self.schedule.kernel_at(t)
        sym = self.kernels.symbols[kernel]
        args = step.args if split is None else [
            TensorArg(a.storage_key, (a.shape[0], 1, *a.shape[2:]) if stride and a.storage_key[0] == "arena" else
                      _one_channel_weight(a, stride), a.dtype) for a, stride in zip(step.args, split.strides)]
        tensors = [self.tensor(a) for a in args]
        ws_off, ws_bytes, s_off = self.workspace(t)
        writes = f" -> %{_comment(step.writes)}" if step.writes else ""
        how = "" if split is None else f", in place over %{_comment(split.source)}, {split.channels} channels one by one"
        lines = [f"  {{ /* {t + 1}: {kernel}{writes}{how} */",
                 f"    DLTensor effc_t[{n}] = {{"]
        lines += [f"      {code},{' ' * max(1, 60 - len(code))}/* {_comment(what)} */" for code, what in tensors]
        lines += ["    };", f"    TVMFFIAny effc_v[{n}];"]
        lines.append(f"    effc_workspace_set(effc_a + {ws_off}, {ws_bytes}u);" if ws_bytes else
                     "    effc_workspace_set(NULL, 0u);")
        if split is None:
            lines += [f"    if (effc_call({sym}, effc_t, effc_v, {n}) != 0) return {t + 1};", "  }"]
            return lines
        at, _ = split.scratch_layout(ALIGN)
        out = self.where(step.args[-1])[0]
        lines += [f"    uint8_t* effc_y = (uint8_t*){out};",
                  f"    effc_t[{n - 1}].data = effc_a + {s_off};  /* one output channel, copied below */"]
        for k, off in zip(split.staged, at[1:]):
            lines.append(f"    const uint8_t* effc_s{k} = (const uint8_t*)effc_t[{k}].data;  /* staged: "
                         f"{split.strides[k]}-byte slices are not {ALIGN}-byte aligned */")
            lines.append(f"    effc_t[{k}].data = effc_a + {s_off + off};")
        lines += [f"    for (int64_t effc_c = 0; effc_c < {split.channels}; ++effc_c) {{"]
        lines += [f"      memcpy(effc_a + {s_off + off}, effc_s{k} + effc_c * {split.strides[k]}, {split.strides[k]}u);"
                  for k, off in zip(split.staged, at[1:])]
        lines += [f"      if (effc_call({sym}, effc_t, effc_v, {n}) != 0) return {t + 1};",
                  f"      memcpy(effc_y + effc_c * {split.out_channel_bytes}, effc_a + {s_off}, {split.out_channel_bytes}u);"]
        lines += [f"      effc_t[{k}].data = (uint8_t*)effc_t[{k}].data + {stride};"
                  for k, stride in enumerate(split.strides[:-1]) if stride and k not in split.staged]
        lines += ["    }", "  }"]
        return lines

    def permute(self, t: int, step: Step, p: BlockPermute) -> list[str]:
        """A transpose in place: each cycle of blocks moved through a one-block scratch, a bit
        per block marking those moved (``aot_inplace.BlockPermute``)."""
        ptr, what = self.where(step.args[0])
        ws, _, _ = self.workspace(t)
        bits, n, r = ws + (p.block + ALIGN - 1) // ALIGN * ALIGN, p.blocks, len(p.dims)
        return [
            f"  {{ /* {t + 1}: {step.kernel} -> %{_comment(step.writes)}, in place over {_comment(what)}: "
            f"{n} blocks of {p.block} bytes */",
            f"    static const int64_t effc_dims[{r}] = {{{', '.join(map(str, p.dims))}}};",
            f"    static const int64_t effc_from[{r}] = {{{', '.join(map(str, p.strides))}}};",
            f"    uint8_t* effc_p = (uint8_t*){ptr};",
            f"    uint8_t* effc_m = effc_a + {bits};",
            f"    memset(effc_m, 0, {(n + 7) // 8}u);",
            f"    for (int64_t effc_i = 0; effc_i < {n}; ++effc_i) {{",
            "      int64_t effc_j = effc_i;",
            "      if (effc_m[effc_i >> 3] & (1u << (effc_i & 7))) continue;",
            f"      memcpy(effc_a + {ws}, effc_p + effc_i * {p.block}, {p.block}u);",
            "      for (;;) {  /* output block j takes input block src */",
            "        int64_t effc_src = 0, effc_r = effc_j;",
            f"        for (int effc_k = {r - 1}; effc_k >= 0; --effc_k) {{",
            "          effc_src += effc_r % effc_dims[effc_k] * effc_from[effc_k];",
            "          effc_r /= effc_dims[effc_k];",
            "        }",
            "        effc_m[effc_j >> 3] |= (uint8_t)(1u << (effc_j & 7));",
            f"        if (effc_src == effc_i) {{ memcpy(effc_p + effc_j * {p.block}, effc_a + {ws}, {p.block}u); break; }}",
            f"        memcpy(effc_p + effc_j * {p.block}, effc_p + effc_src * {p.block}, {p.block}u);",
            "        effc_j = effc_src;",
            "      }",
            "    }",
            "  }"]

    def lrn(self, t: int, step: Step, r: LrnRing) -> list[str]:
        """An LRN in place, channel by channel, the channels below in a ring (``aot_inplace.LrnRing``):
        y = x / (bias + alpha / size * sum of x^2 over the window) ^ beta, in float."""
        (ptr, what), ws, ring = self.where(step.args[0]), self.workspace(t)[0], r.below + 1
        return [
            f"  {{ /* {t + 1}: {step.kernel} -> %{_comment(step.writes)}, in place over {_comment(what)}, "
            f"{r.channels} channels one by one through a ring of {ring} */",
            f"    float* effc_r = (float*)(effc_a + {ws});",
            f"    for (int64_t effc_n = 0; effc_n < {r.batch}; ++effc_n) {{",
            f"      float* effc_x = (float*){ptr} + effc_n * {r.channels * r.spatial};",
            f"      for (int64_t effc_c = 0; effc_c < {r.channels}; ++effc_c) {{",
            f"        float* effc_own = effc_r + effc_c % {ring} * {r.spatial};",
            f"        memcpy(effc_own, effc_x + effc_c * {r.spatial}, {r.spatial * 4}u);",
            f"        for (int64_t effc_i = 0; effc_i < {r.spatial}; ++effc_i) {{",
            "          float effc_sum = 0.0f;",
            f"          for (int64_t effc_k = effc_c - {r.below}; effc_k <= effc_c + {r.above}; ++effc_k) {{",
            f"            if (effc_k < 0 || effc_k >= {r.channels}) continue;",
            f"            float effc_v = effc_k <= effc_c ? effc_r[effc_k % {ring} * {r.spatial} + effc_i]"
            f" : effc_x[effc_k * {r.spatial} + effc_i];",
            "            effc_sum += effc_v * effc_v;",
            "          }",
            f"          effc_x[effc_c * {r.spatial} + effc_i] = effc_own[effc_i] / powf({_float(r.bias)} + "
            f"{_float(r.alpha)} / {_float(r.size)} * effc_sum, {_float(r.beta)});",
            "        }",
            "      }",
            "    }",
            "  }"]

    def copies(self) -> list[str]:
        lines = []
        for c in self.schedule.copies:
            ptr, what = self.where(c.source)
            out = self.where(TensorArg(("output", c.output), c.source.shape, c.source.dtype))[0]
            lines.append(f"  memcpy({out}, {ptr}, {c.source.nbytes}u);  /* from {_comment(what)} */")
        return lines

    def text(self) -> str:
        name = self.name
        body: list[str] = []
        for t, step in enumerate(self.schedule.steps):
            body += self.step(t, step)
        body += self.copies()
        body += self.index_checks()
        decls = [f"int32_t {self.kernels.symbols[k]}(void* self, void* args, int32_t num_args, void* result);"
                 for k in sorted({self.schedule.kernel_at(t) for t in self.schedule.calls} - {""})]
        shapes = [f"static const int64_t {v}[{len(k)}] = {{{', '.join(map(str, k))}}};"
                  for k, v in self.shapes.items()]
        pointers = self._pointer_setup()
        params = [f"const {c_type(_relax_dtype(t))}* {c}" for c, (_, t) in zip(self.ins, self.iface.inputs)]
        params += [f"{c_type(_relax_dtype(t))}* {c}" for c, (_, t) in zip(self.outs, self.iface.outputs)]
        kernel_file = KERNELS_O if self.kernels.flavor == "llvm" else KERNELS_C
        entry = f"effc_{name}_invoke(void* arena)" if self.schedule.io_in_arena else \
            f"effc_{name}_run({', '.join(params + ['void* arena'])})"
        return "\n".join([
            f"/* @{name}: the AOT driver, generated by effc {__version__}. Do not edit.",
            f" * {len(self.schedule.calls)} kernel calls over an arena of {self.plan.arena_bytes:,} bytes "
            f"(live peak {self.plan.live_peak:,}; offsets: {self.plan.offset_algorithm}).",
            f" * Kernels in {kernel_file}; weights in {WEIGHTS}. */",
            "#include <math.h>", "#include <stddef.h>", "#include <stdint.h>", "#include <string.h>", "",
            f'#include "{RUNTIME_H}"', f'#include "{HEADER}"',
            *(f'#include "{f}"' for f in own_kernel_files(self.schedule) if f.endswith(".h")), "",
            *decls, "", *pointers[0],
            f"extern const uint8_t effc_{name}_weights[];", "",
            *shapes, "",
            *self.error_api(),
            f"int {entry} {{",
            "  uint8_t* effc_a = (uint8_t*)arena;",
            "  effc_error_text[0] = '\\0';",
            f"  const uint8_t* effc_w = effc_{name}_weights;",
            *self._unused(body),
            *pointers[1],
            *body,
            "  effc_workspace_set(NULL, 0u);",
            "  return 0;", "}", "",
            *(self.io_api(params) if self.schedule.io_in_arena else []),
        ])

    def io_offsets(self, kind: str) -> list[int]:
        n = len(self.iface.inputs if kind == "input" else self.iface.outputs)
        return [self.plan.tensor(storage_name((kind, i))).offset for i in range(n)]

    def io_api(self, params: list[str]) -> list[str]:
        """Inputs and outputs in the arena: where each one is, and ``run`` over the caller's
        own buffers (copied in and out)."""
        name, lines = self.name, []
        for kind in ("input", "output"):
            at = self.io_offsets(kind)
            table = f"  static const uint32_t at[{len(at)}] = {{{', '.join(f'{o}u' for o in at)}}};" if at else ""
            lines += [f"void* effc_{name}_{kind}(void* arena, int index) {{", *([table] if at else []),
                      f"  return index >= 0 && index < {len(at)} ? (void*)((uint8_t*)arena + at[index]) : NULL;"
                      if at else "  (void)arena, (void)index;\n  return NULL;", "}", ""]
        body = [f"  memcpy(effc_a + {o}, {c}, {_nbytes_of(t)}u);"
                for o, c, (_, t) in zip(self.io_offsets("input"), self.ins, self.iface.inputs)]
        body.append(f"  status = effc_{name}_invoke(arena);")
        body += [f"  memcpy({c}, effc_a + {o}, {_nbytes_of(t)}u);"
                 for o, c, (_, t) in zip(self.io_offsets("output"), self.outs, self.iface.outputs)]
        return lines + [f"int effc_{name}_run({', '.join(params + ['void* arena'])}) {{",
                        "  uint8_t* effc_a = (uint8_t*)arena;", "  int status;", *body, "  return status;", "}", ""]

    def index_checks(self) -> list[str]:
        """After the last kernel: fail the run on the first index check that found a bad
        index (the kernels clamped it, so they stayed inside every tensor)."""
        lines = []
        for k, (_, label) in enumerate(self.schedule.checks):
            lines += [f"  if (effc_status[{k}][0] != 0) {{  /* {_comment(label)} */",
                      f"    effc_index_error({_c_string(label)}, effc_status[{k}][1], effc_status[{k}][2]);",
                      f"    return EFFC_{self.name.upper()}_INDEX_OUT_OF_RANGE;", "  }"]
        return lines

    def error_api(self) -> list[str]:
        """``effc_<name>_error``/``_error_index`` and, with index checks, their static
        status buffers and the message formatter (no stdio: it runs on microcontrollers)."""
        name, checks = self.name, self.schedule.checks
        size = max([len(label.encode()) for _, label in checks], default=0) + 96
        lines = [f"static char effc_error_text[{size}];", "static int64_t effc_error_value;",
                 f"const char* effc_{name}_error(void) {{ return effc_error_text; }}",
                 f"int64_t effc_{name}_error_index(void) {{ return effc_error_value; }}", ""]
        if not checks:
            return lines
        return lines + [
            f"EFFC_ALIGNED({ALIGN}) static int64_t effc_status[{len(checks)}][{ALIGN // 8}];",
            "",
            "static size_t effc_put(size_t at, const char* s) {",
            "  while (*s != '\\0' && at + 1 < sizeof effc_error_text) effc_error_text[at++] = *s++;",
            "  effc_error_text[at] = '\\0';",
            "  return at;",
            "}",
            "",
            "static size_t effc_put_i64(size_t at, int64_t v) {",
            "  char digits[24];",
            "  char* d = digits + sizeof digits - 1;",
            "  uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;",
            "  *d = '\\0';",
            "  do {",
            "    *--d = (char)('0' + (int)(u % 10u));",
            "    u /= 10u;",
            "  } while (u != 0u);",
            "  if (v < 0) *--d = '-';",
            "  return effc_put(at, d);",
            "}",
            "",
            "static void effc_index_error(const char* node, int64_t index, int64_t length) {",
            "  size_t at = effc_put(0, node);",
            "  effc_error_value = index;",
            "  at = effc_put(at, \": index \");",
            "  at = effc_put_i64(at, index);",
            "  at = effc_put(at, \" is out of range for an axis of length \");",
            "  effc_put_i64(at, length);",
            "}",
            "",
        ]

    @staticmethod
    def _unused(body: list[str]) -> list[str]:
        text = "\n".join(body)
        return [f"  (void){v};" for v in ("effc_a", "effc_w") if f"{v} + " not in text]

    def _pointer_setup(self) -> tuple[list[str], list[str]]:
        """LLVM kernels reach the runtime through function pointers the loader would set."""
        decl = {
            "__TVMBackendAllocWorkspace": "extern void* (*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int);",
            "__TVMBackendFreeWorkspace": "extern int (*__TVMBackendFreeWorkspace)(int, int, void*);",
            "__TVMBackendParallelLaunch": "extern int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void*, int);",
            "__TVMBackendParallelBarrier": "extern int (*__TVMBackendParallelBarrier)(int, TVMParallelGroupEnv*);",
        }
        syms = self.kernels.pointer_symbols
        return ([decl[s] for s in syms] + ([""] if syms else []),
                [f"  {s} = {s[2:]};" for s in syms])


def _float(v: float) -> str:
    """A float constant in C (``repr`` round-trips and always has a ``.`` or an exponent)."""
    return f"{float(v)!r}f"


def _one_channel_weight(arg: TensorArg, stride: int) -> tuple[int, ...]:
    """A per-channel weight's shape for one channel (its first non-1 axis becomes 1)."""
    if not stride:
        return arg.shape
    axis = next(i for i, d in enumerate(arg.shape) if d != 1)
    return (*arg.shape[:axis], 1, *arg.shape[axis + 1:])


def driver_c(name: str, iface: Interface, schedule: Schedule, plan: MemoryPlan, kernels: Kernels) -> str:
    return _Driver(name, iface, schedule, plan, kernels).text()


# ----------------------------------------------------------------------------- harness


_FILE_IO = r"""
static int read_file(const char* path, void* data, size_t bytes) {
  FILE* f = fopen(path, "rb");
  size_t got;
  int extra;
  if (f == NULL) {
    fprintf(stderr, "effc: cannot open %s\n", path);
    return 1;
  }
  got = fread(data, 1, bytes, f);
  extra = fgetc(f);
  fclose(f);
  if (got != bytes || extra != EOF) {
    fprintf(stderr, "effc: %s: expected exactly %lu bytes\n", path, (unsigned long)bytes);
    return 1;
  }
  return 0;
}

static int write_file(const char* path, const void* data, size_t bytes) {
  FILE* f = fopen(path, "wb");
  size_t put;
  if (f == NULL) {
    fprintf(stderr, "effc: cannot create %s\n", path);
    return 1;
  }
  put = fwrite(data, 1, bytes, f);
  if (fclose(f) != 0 || put != bytes) {
    fprintf(stderr, "effc: %s: write failed\n", path);
    return 1;
  }
  return 0;
}

"""
"""The host harness's I/O: each input from a file, each output to one."""

_BOARD_IO = r"""
/* Board I/O: the inputs are in place before reset; no file is opened. */
extern void effc_board_write(const void* data, size_t bytes);
extern uint64_t effc_board_ticks(void);
"""

_BOARD_READ = r"""
static int read_file(const char* label, void* data, size_t bytes) {
  (void)label, (void)data, (void)bytes;
  return 0;
}
"""

_BOARD_WRITE = r"""
static int write_file(const char* label, const void* data, size_t bytes) {
  fprintf(stderr, "\neffc-out %s %lu\n", label, (unsigned long)bytes);
  effc_board_write(data, bytes);
  return 0;
}

"""
"""The board harness's I/O (see ``harness_c``)."""


def harness_c(name: str, iface: Interface, board: bool = False, input_offsets: list[int] | None = None) -> str:
    """The test harness ``main.c``. On a host (``board=False``) it reads and writes files.
    On a board (Cortex-M, ``board=True``) it opens nothing: the runner places each input in
    its buffer (section ``.effc_inputs``, which reset leaves alone) before the core starts,
    and each output goes out through ``effc_board_write`` (the board port's UART) after the
    line ``effc-out LABEL BYTES``; the host reaches no file of the board's choosing. With
    the inputs and outputs in the arena (``input_offsets``: where each input sits in it), a
    board harness has no buffers of its own: the arena is in ``.effc_inputs`` and symbol
    ``input<i>`` marks input i in it."""
    up = name.upper()
    ins, outs = param_names(iface)
    n_in, n_out = len(ins), len(outs)
    in_arena = board and input_offsets is not None
    place = ' __attribute__((section(".effc_inputs")))'
    bufs, reads, writes, args = [], [], [], []
    for i, (c, (_, t)) in enumerate(zip(ins, iface.inputs)):
        ct = c_type(_relax_dtype(t))
        if in_arena:
            bufs.append(f'__asm__(".globl input{i}\\n.set input{i}, arena + {input_offsets[i]}\\n'
                        f'.size input{i}, {_nbytes_of(t)}");')
            continue
        bufs.append(f"EFFC_ALIGNED({ALIGN}) static {ct} input{i}[EFFC_{up}_INPUT{i}_BYTES / sizeof({ct}) + 1]"
                    f"{place if board else ''};")
        reads.append(f"  if (read_file(argv[{1 + i}], input{i}, EFFC_{up}_INPUT{i}_BYTES) != 0) return 2;")
        args.append(f"input{i}")
    for i, (c, (_, t)) in enumerate(zip(outs, iface.outputs)):
        ct = c_type(_relax_dtype(t))
        data = f"effc_{name}_output(arena, {i})" if in_arena else f"output{i}"
        writes.append(f"  if (write_file(argv[{1 + n_in + i}], {data}, EFFC_{up}_OUTPUT{i}_BYTES) != 0) return 2;")
        if not in_arena:
            bufs.append(f"EFFC_ALIGNED({ALIGN}) static {ct} output{i}[EFFC_{up}_OUTPUT{i}_BYTES / sizeof({ct}) + 1];")
            args.append(f"output{i}")
    call = f"effc_{name}_invoke(arena)" if in_arena else f"effc_{name}_run({', '.join(args + ['arena'])})"
    arena = (f"EFFC_ALIGNED({ALIGN}) {'' if in_arena else 'static '}uint8_t arena[EFFC_{up}_ARENA_BYTES > 0 ? "
             f"EFFC_{up}_ARENA_BYTES : 1]{place if in_arena else ''};")
    usage = " ".join([f"IN{i}" for i in range(n_in)] + [f"OUT{i}" for i in range(n_out)])
    ticks = ("  uint64_t effc_ticks = effc_board_ticks();\n",
             "  effc_ticks = effc_board_ticks() - effc_ticks;\n"
             '  fprintf(stderr, "\\neffc-ticks %lu %lu %ld\\n", (unsigned long)(effc_ticks >> 32), '
             "(unsigned long)(effc_ticks & 0xFFFFFFFFu), runs);\n") if board else ("", "")
    return f"""/* Test harness for @{name}, generated by effc {__version__}.
 *   usage: model {usage} [RUNS]
 * Reads each input as raw bytes (row-major, native byte order) from a file, runs the model
 * and writes each output the same way. With RUNS > 1 it runs that many times and prints the
 * processor time per run to stderr. Exit status: 0, 1 (a kernel failed), 2 (bad files/usage),
 * 3 (an index input out of range: "effc: index out of range: <what>" on stderr).
 * No heap: the arena and every buffer are static. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "{RUNTIME_H}"
#include "{HEADER}"

{arena}
{chr(10).join(bufs)}
{(_BOARD_IO + ("" if in_arena else _BOARD_READ) + _BOARD_WRITE) if board else _FILE_IO}
int main(int argc, char** argv) {{
  long runs = 1;
  long r;
  int status = 0;
  clock_t start;
  if (argc != {1 + n_in + n_out} && argc != {2 + n_in + n_out}) {{
    fprintf(stderr, "usage: %s {usage} [RUNS]\\n", argv[0]);
    return 2;
  }}
  if (argc == {2 + n_in + n_out}) {{
    runs = strtol(argv[{1 + n_in + n_out}], NULL, 10);
    if (runs < 1) {{
      fprintf(stderr, "effc: RUNS must be a positive number\\n");
      return 2;
    }}
  }}
{chr(10).join(reads)}
  start = clock();
{ticks[0]}  for (r = 0; r < runs && status == 0; ++r) {{
    status = {call};
  }}
{ticks[1]}  if (status == EFFC_{up}_INDEX_OUT_OF_RANGE) {{
    fprintf(stderr, "effc: index out of range: %s\\n", effc_{name}_error());
    return 3;
  }}
  if (status != 0) {{
    fprintf(stderr, "effc: kernel call %d failed\\n", status);
    return 1;
  }}
  if (runs > 1) {{
    double ms = 1000.0 * (double)(clock() - start) / (double)CLOCKS_PER_SEC / (double)runs;
    fprintf(stderr, "effc: %ld runs, %.3f ms per run\\n", runs, ms);
  }}
{chr(10).join(writes)}
  return 0;
}}
"""


# ----------------------------------------------------------------------------- runtime


RUNTIME_H_TEXT = f"""/* effc's AOT runtime, generated by effc {__version__}: the same for every model.
 * When several models share one binary, link one copy of effc_runtime.c. */
#ifndef EFFC_RUNTIME_H
#define EFFC_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "{ABI_H}"

#ifdef __cplusplus
extern "C" {{
#endif

#if defined(__GNUC__) || defined(__clang__)
#define EFFC_ALIGNED(n) __attribute__((aligned(n)))
#else
#define EFFC_ALIGNED(n) _Alignas(n)
#endif

/* A kernel's packed entry point, as TVM compiles it. */
typedef int32_t (*effc_kernel)(void* self, void* args, int32_t num_args, void* result);

/* The slice of the arena the next kernel may take its workspace from (NULL, 0: none). */
void effc_workspace_set(void* base, size_t bytes);

/* Calls kernel with n tensors (args: room for n packed arguments). Returns its status. */
int effc_call(effc_kernel kernel, DLTensor* tensors, TVMFFIAny* args, int n);

#ifdef __cplusplus
}}
#endif

#endif /* EFFC_RUNTIME_H */
"""

RUNTIME_C_TEXT = f"""/* effc's AOT runtime, generated by effc {__version__}: the functions TVM's kernels
 * call, without the TVM runtime and without a heap.
 *
 * Workspace: before each kernel the driver hands over a slice of the arena that effc planned
 * for that kernel's step (its allocations, each {ALIGN}-byte aligned, summed). The kernel's
 * TVMBackendAllocWorkspace calls take memory from it in order; frees release it again (TVM
 * frees in reverse order; any order is accepted). Running out returns NULL, and the kernel
 * then fails with -1.
 * Parallel loops run serially on the calling thread. */
#include "{RUNTIME_H}"

#define EFFC_MAX_ALLOCS 32

static uint8_t* ws_base;
static size_t ws_bytes;
static size_t ws_top;
static int ws_depth;
static size_t ws_offset[EFFC_MAX_ALLOCS];
static uint8_t ws_freed[EFFC_MAX_ALLOCS];

void effc_workspace_set(void* base, size_t bytes) {{
  ws_base = (uint8_t*)base;
  ws_bytes = bytes;
  ws_top = 0;
  ws_depth = 0;
}}

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint) {{
  uint64_t size = (nbytes + {ALIGN - 1}u) & ~(uint64_t){ALIGN - 1}u;
  void* p;
  (void)device_type;
  (void)device_id;
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
  if (ws_base == NULL || ws_depth == EFFC_MAX_ALLOCS || size > (uint64_t)(ws_bytes - ws_top)) {{
    return NULL;
  }}
  p = ws_base + ws_top;
  ws_offset[ws_depth] = ws_top;
  ws_freed[ws_depth] = 0;
  ws_depth += 1;
  ws_top += (size_t)size;
  return p;
}}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {{
  int i;
  (void)device_type;
  (void)device_id;
  for (i = ws_depth - 1; i >= 0; --i) {{
    if (ws_base + ws_offset[i] == (uint8_t*)ptr && !ws_freed[i]) {{
      ws_freed[i] = 1;
      while (ws_depth > 0 && ws_freed[ws_depth - 1]) {{
        ws_depth -= 1;
        ws_top = ws_offset[ws_depth];
      }}
      return 0;
    }}
  }}
  return -1;
}}

int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task) {{
  TVMParallelGroupEnv env;
  (void)num_task;
  env.sync_handle = NULL;
  env.num_task = 1;
  return flambda(0, &env, cdata);
}}

int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv) {{
  (void)task_id;
  (void)penv;
  return 0;
}}

int effc_call(effc_kernel kernel, DLTensor* tensors, TVMFFIAny* args, int n) {{
  TVMFFIAny result;
  int i;
  for (i = 0; i < n; ++i) {{
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].zero_padding = 0;
    args[i].v_int64 = 0;
    args[i].v_ptr = &tensors[i];
  }}
  result.type_index = kTVMFFINone;
  result.zero_padding = 0;
  result.v_int64 = 0;
  return kernel(NULL, args, n, &result);
}}
"""

ABI_H_TEXT = f"""/* The part of the DLPack and TVM FFI ABIs that TVM's compiled kernels use, written by
 * effc {__version__} after dlpack.h (v1) and tvm/ffi/c_api.h, so that the kernels build
 * and link without TVM's headers and runtime. */
#ifndef EFFC_TVM_ABI_H
#define EFFC_TVM_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#ifndef TVM_DLL
#define TVM_DLL
#endif

typedef enum {{ kDLCPU = 1 }} DLDeviceType;
typedef enum {{ kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLOpaqueHandle = 3, kDLBfloat = 4, kDLComplex = 5,
               kDLBool = 6 }} DLDataTypeCode;

typedef struct {{
  DLDeviceType device_type;
  int32_t device_id;
}} DLDevice;

typedef struct {{
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
}} DLDataType;

typedef struct {{
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
}} DLTensor;

enum {{ kTVMFFINone = 0, kTVMFFIInt = 1, kTVMFFIOpaquePtr = 4, kTVMFFIDLTensorPtr = 7, kTVMFFITensor = 70 }};

typedef struct {{
  int32_t type_index;
  union {{
    uint32_t zero_padding;
    uint32_t small_str_len;
  }};
  union {{
    int64_t v_int64;
    double v_float64;
    void* v_ptr;
    const char* v_c_str;
    DLDataType v_dtype;
    DLDevice v_device;
    char v_bytes[8];
    uint64_t v_uint64;
  }};
}} TVMFFIAny;

#ifndef __cplusplus
_Static_assert(sizeof(TVMFFIAny) == 16, "TVMFFIAny is 16 bytes");
#endif

typedef struct {{
  void* sync_handle;
  int32_t num_task;
}} TVMParallelGroupEnv;

typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr);
int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task);
int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv* penv);

/* A DLTensor initializer: dense, on the CPU, no byte offset. */
#define EFFC_TENSOR(data, shape, ndim, code, bits) \\
  {{ (data), {{ kDLCPU, 0 }}, (ndim), {{ (code), (bits), 1 }}, (int64_t*)(shape), NULL, 0 }}

#ifdef __cplusplus
}}
#endif

#endif /* EFFC_TVM_ABI_H */
"""


# ----------------------------------------------------------------------------- program


def program_objects(flavor: str, own: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(source, object) pairs of a program; the LLVM kernels come as an object already.
    ``own``: the files of effc's own kernels it carries (``codegen/kernels``)."""
    pairs = [(DRIVER, "model.o"), (WEIGHTS, "model_weights.o"), (RUNTIME_C, "effc_runtime.o"), (HARNESS, "main.o")]
    pairs += [(f, f[:-2] + ".o") for f in own if f.endswith(".c")]
    pairs.append(("", KERNELS_O) if flavor == "llvm" else (KERNELS_C, "model_kernels.c.o"))
    return pairs


def library_objects(toolchain: CToolchain, flavor: str, own: tuple[str, ...] = ()) -> list[str]:
    """The objects of ``libmodel.a``: the program without its test harness."""
    return [o for src, o in program_objects(flavor, own) if src != HARNESS]


def makefile(name: str, flavor: str, toolchain: CToolchain, own: tuple[str, ...] = ()) -> str:
    tc = toolchain
    kernel_rule = "" if flavor == "llvm" else (
        f"\nmodel_kernels.c.o: {KERNELS_C} {ABI_H}\n\t$(CC) $(KERNEL_CFLAGS) -c {KERNELS_C} -o $@\n")
    return f"""# Builds @{name} (generated by effc {__version__}): libmodel.a, the model without
# any runtime (link it with model.h's effc_{name}_run and -lm), and model.elf, the test
# harness. effc's files build with -Werror; TVM's kernel source, if any, with its own flags.
CC = {tc.cc}
AR = {tc.ar}
CFLAGS = {" ".join(tc.cflags + tc.warnings)}
KERNEL_CFLAGS = {" ".join(tc.kernel_cflags)}
LDFLAGS = {" ".join(tc.ldflags)}
LDLIBS = {" ".join(tc.ldlibs)}
OBJS = {" ".join(o for _, o in program_objects(flavor, own))}
LIB_OBJS = {" ".join(library_objects(tc, flavor, own))}

all: model.elf libmodel.a

model.elf: $(OBJS)
\t$(CC) $(LDFLAGS) -o $@ $(OBJS) $(LDLIBS)

libmodel.a: $(LIB_OBJS)
\t$(AR) rcsD $@ $(LIB_OBJS)

%.o: %.c {HEADER} {RUNTIME_H} {ABI_H}{"".join(" " + f for f in own if f.endswith(".h"))}
\t$(CC) $(CFLAGS) -c $< -o $@
{kernel_rule}
clean:
\trm -f $(filter-out {KERNELS_O},$(OBJS)) model.elf libmodel.a

.PHONY: all clean
"""


def write_program(name: str, iface: Interface, schedule: Schedule, plan: MemoryPlan, kernels: Kernels,
                  target: dict[str, Any], toolchain: CToolchain) -> AotProgram:
    _, weight_bytes = weight_layout(schedule.weights)
    own = own_kernel_files(schedule)
    files: dict[str, bytes] = {
        HEADER: header(name, iface, plan, weight_bytes, target, len(schedule.calls), schedule.io_in_arena).encode(),
        DRIVER: driver_c(name, iface, schedule, plan, kernels).encode(),
        WEIGHTS: weights_c(name, schedule.weights).encode(),
        RUNTIME_H: RUNTIME_H_TEXT.encode(),
        RUNTIME_C: RUNTIME_C_TEXT.encode(),
        ABI_H: ABI_H_TEXT.encode(),
        HARNESS: harness_c(name, iface).encode(),
        MAKEFILE: makefile(name, kernels.flavor, toolchain, own).encode(),
        **{f: own_kernels.source(f) for f in own},
    }
    if kernels.flavor == "llvm":
        files[KERNELS_O] = kernels.object_bytes
    else:
        files[KERNELS_C] = kernels.c_source.encode()
    return AotProgram(
        name=name, interface=iface, flavor=kernels.flavor, files=dict(sorted(files.items())),
        arena_bytes=plan.arena_bytes, steps=len(schedule.calls),
        kernel_source=KERNELS_C if kernels.flavor == "c" else "",
        effc_sources=[DRIVER, WEIGHTS, RUNTIME_C, HARNESS, *(f for f in own if f.endswith(".c"))],
        own_kernels=own,
        notes={"arena_bytes": plan.arena_bytes, "live_peak": plan.live_peak, "offsets": plan.offset_algorithm,
               "weight_bytes": weight_bytes, "kernel_calls": len(schedule.calls), "io_in_arena": schedule.io_in_arena,
               "input_offsets": [plan.tensor(f"input{i}").offset for i in range(len(iface.inputs))]
               if schedule.io_in_arena else None,
               "in_place": sorted(split.source for split in schedule.splits.values()),
               "driver_in_place": sum(o.requires_in_place for o in schedule.own.values()),
               "effc_kernels": sum(isinstance(o, OWN_C) for o in schedule.own.values()),
               "slices_in_place": len(schedule.slices),
               "tuned_kernels": len(kernels.tuned), "kernel_names": sorted(kernels.symbols),
               "output_copies": len(schedule.copies)})


def own_kernel_files(schedule: Schedule) -> tuple[str, ...]:
    """The files of effc's own kernels (``codegen/kernels``) the program calls."""
    return own_kernels.SOURCES if any(isinstance(o, OWN_C) for o in schedule.own.values()) else ()


# ----------------------------------------------------------------------------- emit and compile


def emit(module: Module, target: Mapping[str, Any], toolchain: CToolchain, name: str | None = None,
         database: Any = None, io_in_arena: bool = True, cpu: Any = None,
         int8_kernels: str = "tvm", sparse_density: float = 0.0) -> tuple[AotProgram, Schedule, MemoryPlan]:
    """``module`` (optimized, static shapes) as an AOT C program for ``target`` (a TVM target
    dict of kind ``llvm`` or ``c``; ``toolchain`` goes into its Makefile), with its schedule
    and arena plan (for reports).
    ``database``: a MetaSchedule database whose schedules the kernels it holds get.
    ``cpu`` (a ``schedules.Cpu``; Linux CPUs): blocked layouts and effc's default
    schedules for it, as the Relax VM builds have (None: NCHW kernels made lean in
    memory, ``aot_kernels.fold_scratch``, as microcontrollers need).
    ``int8_kernels``: ``effc`` runs the integer convolutions and float-result integer matrix
    products it can on effc's own C kernels
    (``codegen/kernels``, for microcontrollers; ``effc-mve``: on Helium where it can), ``tvm``
    all on TVM's. ``sparse_density``: effc's kernels store a one-group convolution's weights
    compressed when at most this share of them is nonzero (``kernels.conv_plan``)."""
    kernel_flavor(target)
    name = c_identifier(name or module.name)
    iface = Interface.of(module)
    schedule = program_schedule(module, target, io_in_arena, pools=database is None and cpu is None,
                                lanes=cpu.lanes if cpu is not None else None,
                                int8_dot=cpu.int8_dot if cpu is not None else None)
    if int8_kernels in ("effc", "effc-mve"):
        own_kernels.int8_convolutions(schedule, module, mve=int8_kernels == "effc-mve", sparse_density=sparse_density)
        own_kernels.int8_gemms(schedule, module)
        schedule.prune_kernels()
        schedule.prune_weights()
    kernels = build_kernels(schedule.prim_funcs, target, f"effc_{name}", database=database, cpu=cpu)
    plan = plan_program(schedule, kernels)
    return write_program(name, iface, schedule, plan, kernels, dict(target), toolchain), schedule, plan


def compile_program(program: AotProgram, toolchain: CToolchain, folder: str | Path, output: str = "model",
                    extra_files: Mapping[str, bytes] | None = None, library: str = "") -> Path:
    """Write the program's sources to ``folder`` and build ``folder/output`` with ``toolchain``
    (one compiler process per file, in parallel). ``extra_files`` (a board's startup code,
    its linker script) are written beside them; the ``.c`` ones are compiled like effc's
    own files and linked first. ``library``: also archive every object but the test
    harness into ``folder/library``. Returns the executable's path."""
    cc = toolchain.require()
    folder = Path(folder)
    program.write_sources(folder)
    extra = dict(sorted((extra_files or {}).items()))
    for name, data in extra.items():
        (folder / name).write_bytes(data)
    extra_objs = [(name, name[:-2] + ".o") for name in extra if name.endswith(".c")]
    pairs = extra_objs + program_objects(program.flavor, program.own_kernels)
    jobs = []
    for src, obj in pairs:
        if not src:
            continue
        flags = toolchain.kernel_cflags if src == program.kernel_source else toolchain.cflags + toolchain.warnings
        jobs.append([cc, *flags, "-c", src, "-o", obj])
    with ThreadPoolExecutor(max_workers=4) as pool:
        for cmd, proc in zip(jobs, pool.map(lambda c: _run_tool(c, folder), jobs)):
            _check_tool(cmd, proc)
    link = [cc, *toolchain.ldflags, "-o", output, *[o for _, o in pairs], *toolchain.ldlibs]
    _check_tool(link, _run_tool(link, folder))
    if library:
        archive = [toolchain.ar, "rcsD", library, *library_objects(toolchain, program.flavor, program.own_kernels)]
        _check_tool(archive, _run_tool(archive, folder))
    return folder / output


def _run_tool(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _check_tool(cmd: list[str], proc: subprocess.CompletedProcess) -> None:
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-30:]
        raise ToolchainError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n" + "\n".join(tail))
