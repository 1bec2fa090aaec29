"""The library API: ``effc.compile(model, target=..., pipeline=...)`` returns a
``CompiledModel`` that runs, reports and exports; ``effc.load(dir)`` reads an exported one.

    import effc
    cm = effc.compile("examples/digits_cnn.onnx", target="x86", pipeline="O2",
                      input_shapes={"x": (1, 1, 8, 8)})
    outputs = cm.run({"x": x})            # {"logits": array}
    cm.export("build/digits")             # model.so, manifest.json, model.effc/.npz, report.json
    print(cm.report())
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import onnx

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.ir.printer import print_module, save_module
from effc.ir.refine import bind_input_shapes, symbol_sizes
from effc.models import load_model
from effc.optimize import OptimizeOptions, optimize
from effc.report import ModelInfo, model_info
from effc.targets import Target, get_target
from effc.version import __version__

if TYPE_CHECKING:  # effc.codegen imports TVM: at run time only where a build or load needs it
    from effc.codegen.dispatch import Artifact, Backend
    from effc.codegen.rpc import RpcDevice

MANIFEST = "manifest.json"
LIBRARY = "model.so"
IR_FILE = "model.effc"
REPORT = "report.json"
TIMINGS = "timings.json"
"""Compile times vary run to run, so they live in their own file; every other file of an
artifact is byte-identical when the same model is compiled twice."""


@dataclass
class CompileReport:
    model: ModelInfo
    target: str
    pipeline: str
    nodes_before: int
    nodes_after: int
    seconds: dict[str, float] = field(default_factory=dict)
    artifact_bytes: int | None = None
    memory: Any = None
    """Microcontroller builds: flash and SRAM of the linked ELF and arena use per kernel call."""
    tuning: str | None = None
    """What tuning did (kernels reused, tuned, trials), when it ran."""
    runtime: str = ""
    arena_bytes: int | None = None
    """AOT builds: the static arena the C API asks the caller for."""
    substitution: str | None = None
    """What the ``substitute`` pass did (its report), when the pipeline ran it."""

    def to_json(self) -> dict[str, Any]:
        m = self.model
        return {"target": self.target, "pipeline": self.pipeline, "runtime": self.runtime,
                **({"arena_bytes": self.arena_bytes} if self.arena_bytes is not None else {}),
                "parameters": m.parameters,
                "weight_bytes": m.weight_bytes, "macs": m.macs, "macs_by_class": dict(sorted(m.macs_by_class.items())),
                "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                "ops_after": dict(sorted(m.op_histogram.items())),
                **({"memory": self.memory.to_json()} if self.memory is not None else {})}

    def __str__(self) -> str:
        m = self.model
        runtime = f" (runtime {self.runtime})" if self.runtime else ""
        lines = [f"target {self.target}{runtime}, pipeline {self.pipeline or '(none)'}",
                 f"  nodes: {self.nodes_before} -> {self.nodes_after}",
                 f"  parameters: {m.parameters:,}; weight bytes: {m.weight_bytes:,}; MACs: {m.macs:,}"]
        if self.artifact_bytes is not None:
            lines.append(f"  artifact: {self.artifact_bytes:,} bytes")
        if self.arena_bytes is not None and self.memory is None:
            lines.append(f"  arena: {self.arena_bytes:,} bytes (static; the caller passes it to the C API)")
        if self.memory is not None:
            lines.append(str(self.memory))
        if self.tuning:
            lines.append(f"  tuning: {self.tuning}")
        if self.substitution:
            lines.extend("  " + line for line in self.substitution.splitlines())
        if self.seconds:
            stages = {k: v for k, v in self.seconds.items() if "." not in k}  # build.* are parts of build
            parts = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
            lines.append(f"  compile time: {parts} (total {sum(stages.values()):.2f}s)")
        return "\n".join(lines)


def _source_hash(model: Any) -> str:
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    if isinstance(model, Module):
        return hashlib.sha256(print_module(model).encode()).hexdigest()
    return hashlib.sha256(Path(model).read_bytes()).hexdigest()


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CompiledModel:
    """A model compiled for one target: ``run``, ``export``, ``report``, and ``ir`` (the final module)."""

    def __init__(self, ir: Module, target: Target, pipeline: str, built: Artifact, report: CompileReport,
                 source_sha256: str = "", runtime: str = ""):
        self.ir = ir
        self.target = target
        self.pipeline = pipeline
        self.runtime = runtime
        """``vm`` (TVM runtime) or ``aot`` (effc's runtime-free C driver)."""
        self._built = built
        self._report = report
        self.source_sha256 = source_sha256

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on numpy inputs keyed by the model's input names; outputs keyed by output names."""
        return self._built.run(inputs)

    def report(self) -> CompileReport:
        return self._report

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.ir.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.ir.graph.outputs]

    def export(self, folder: str | os.PathLike) -> Path:
        """Write the artifact folder; returns its path."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        files = self._built.export_files(out)
        save_module(self.ir, out / IR_FILE)
        report = self._report.to_json()
        (out / REPORT).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        (out / TIMINGS).write_text(json.dumps({k: round(v, 4) for k, v in self._report.seconds.items()}, indent=2) + "\n")
        artifact_files = sorted({Path(f).resolve().relative_to(out.resolve()).as_posix() for f in files} | {IR_FILE, REPORT}
                                | ({Path(IR_FILE).with_suffix(".npz").name} if (out / "model.npz").exists() else set()))
        manifest = {
            "effc_version": __version__,
            "target": {"name": self.target.name, "tvm": self.target.tvm},
            "pipeline": self.pipeline,
            "runtime": self.runtime,
            "inputs": [{"name": v.name, "dtype": str(v.type.dtype), "shape": list(v.type.shape)} for v in self.ir.graph.inputs],
            "outputs": [{"name": v.name, "dtype": str(v.type.dtype), "shape": list(v.type.shape)} for v in self.ir.graph.outputs],
            "source_sha256": self.source_sha256,
            "files": {name: _file_hash(out / name) for name in artifact_files},
        }
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        self._report.artifact_bytes = sum((out / n).stat().st_size for n in artifact_files)
        return out


def _static_shapes(module: Module, given: dict[str, Sequence[int]]) -> dict[str, Sequence[int]]:
    """Shapes for every input with a symbolic dim: the given ones; for the others, each
    symbol takes the size a given input bound it to, else 1 (the batch of an embedded
    deployment); say so on stderr."""
    import sys

    out = dict(given)
    sizes = symbol_sizes(module.graph.inputs, given)
    for v in module.graph.inputs:
        if v.name not in out and not v.type.is_static:
            out[v.name] = tuple(d if isinstance(d, int) else sizes.get(d, 1) for d in v.type.shape)
            print(f"effc: input '{v.name}' {v.type} bound to {list(out[v.name])} for this target "
                  f"(choose with --input-shape {v.name}=...)", file=sys.stderr)
    return out


DEFAULT_TUNING_DB = ".effc-tuning"


class _TuningLedger:
    """Trials each model has had in a tuning database, so ``--tune=N`` means N trials in all:
    compiling the same model again with the same N runs none, a larger N runs the difference.
    (The MetaSchedule database itself is keyed by kernel and shared by every model.)"""

    def __init__(self, db_dir: Path):
        self.path = db_dir / "effc-trials.json"
        self.data: dict[str, int] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    @staticmethod
    def key(module: Module, target: Target, aot: bool = False) -> str:
        """Per model, target and kind of program (an AOT program has kernels of its own:
        one-channel ones for in-place layers)."""
        text = print_module(module) + json.dumps(target.tvm, sort_keys=True) + ("aot" if aot else "")
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str) -> int:
        return int(self.data.get(key, 0))

    def add(self, key: str, trials: int) -> None:
        self.data[key] = self.get(key) + trials
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")


def _build_tuned(module: Module, tgt: Target, backend: Backend, trials: int, db: str | os.PathLike | None,
                 seconds: dict[str, float], name: str, io: dict[str, bool],
                 device: RpcDevice | None = None) -> tuple[Artifact, str]:
    """Tune (when ``trials`` > 0; on ``device`` when given) and build with the database's
    schedules (backends with a ``tune`` entry)."""
    from effc.codegen.dispatch import TUNABLE
    from effc.codegen.tune import tune as run_tuning

    if backend.tune is None:
        raise InputError(f"--tune/--tuning-db work for {TUNABLE} targets so far, not '{tgt.name}'")
    if trials < 0:
        raise InputError(f"--tune takes a number of trials >= 0, got {trials}")
    db_dir = Path(db) if db is not None else Path(DEFAULT_TUNING_DB)
    note = f"database {db_dir} applied"
    spent = _TuningLedger(db_dir)
    key = spent.key(module, tgt, backend.aot)
    remaining = trials - spent.get(key)
    if trials and remaining <= 0:
        note = f"this model already had {spent.get(key)} trials in {db_dir}; no new trials (raise --tune to continue)"
    elif trials:
        t = time.perf_counter()
        report = run_tuning(module, tgt.tvm, remaining, db_dir, aot=backend.aot, rpc=device, hardware=tgt.hardware)
        seconds["tune"] = time.perf_counter() - t
        spent.add(key, remaining)
        note = str(report) + (f"; measured on {device.servers} device(s) under key '{device.key}' at "
                              f"{device.address} (TVM RPC)" if device is not None else "")
    t = time.perf_counter()
    built, built_note = backend.tune(module, tgt, db_dir, name, **io)
    seconds["build"] = time.perf_counter() - t
    return built, f"{note}; {built_note}" if built_note else note


def _c_name(model: Any, module: Module) -> str:
    """The name in the model's C API (``effc_<name>_run``): the file's stem, else the graph's
    name, made a C identifier by ``codegen.aot.c_identifier`` (the one rule for it)."""
    from effc.codegen.aot import c_identifier

    return c_identifier(Path(model).stem if isinstance(model, (str, os.PathLike)) else module.graph.name)


def compile(model: str | os.PathLike | onnx.ModelProto | Module, target: str = "x86", pipeline: str = "O2", *,
            input_shapes: Mapping[str, Sequence[int]] | None = None,
            options: OptimizeOptions | None = None, sram: int | None = None,
            flash: int | None = None, tune: int = 0, tuning_db: str | os.PathLike | None = None,
            runtime: str | None = None, io_buffers: str = "arena", rpc: str | None = None,
            device_key: str | None = None) -> CompiledModel:
    """Import (when given a path or ModelProto), optimize with ``pipeline`` and build for ``target``.

    ``input_shapes`` binds symbolic input dims (e.g. a batch ``N``) to sizes before lowering.
    ``sram``/``flash`` (bytes) override a microcontroller board's budgets; a model that does
    not fit fails with how much it is over and which tensors peak.
    ``tune`` > 0 runs that many MetaSchedule trials over the kernels ``tuning_db`` lacks
    (x86 targets), and the build uses every schedule the database holds; a database given
    with ``tune=0`` is applied without new trials.
    ``runtime``: ``vm`` (TVM's Relax VM in a shared library; x86 and cuda) or ``aot``
    (effc's C driver over a static arena, no runtime, no heap: ``libmodel.a`` + ``model.h``;
    the only runtime of arm and Cortex-M targets, on request for x86). Default: the
    target's first.
    ``io_buffers`` (AOT builds): ``arena`` puts the inputs and outputs in the arena, as
    TFLite Micro does (the C API hands out pointers into it and reuses an input's bytes once
    it is consumed); ``caller`` keeps them in the caller's own buffers, outside it.
    ``rpc`` (``HOST:PORT`` of a TVM RPC tracker) and ``device_key``: tuning measures its
    candidates on the devices registered there under the key (``effc.codegen.rpc``); the
    builds stay here. InputError when the tracker cannot be reached or has no such device."""
    from effc.codegen.dispatch import backend_for, runtime_for

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    tgt = get_target(target)
    runtime = runtime_for(tgt, runtime)
    backend = backend_for(tgt, runtime)
    if io_buffers not in ("arena", "caller"):
        raise InputError(f"--io-buffers is 'arena' or 'caller', not '{io_buffers}'")
    if io_buffers != "arena" and not backend.aot:
        raise InputError(f"--io-buffers applies to AOT programs (--runtime=aot), not to target '{tgt.name}' "
                         f"with runtime {runtime}")
    io = {"io_in_arena": io_buffers == "arena"} if backend.aot else {}
    device = _rpc_device(rpc, device_key, tune)
    module = load_model(model)  # validates the path first, with a clear error
    source_hash = _source_hash(model)
    seconds["import"] = time.perf_counter() - t
    nodes_before = len(module.graph)
    t = time.perf_counter()
    shapes = dict(input_shapes or {})
    if backend.aot:  # AOT programs need every shape known
        shapes = _static_shapes(module, shapes)
    if shapes:
        bind_input_shapes(module, shapes)
    opts = options or OptimizeOptions(reproducer_dir=None)
    opts.target = tgt.name
    runner = optimize(module, pipeline, opts)
    substitution = runner.ctx.options.get("substitute_report")
    seconds["optimize"] = time.perf_counter() - t
    t = time.perf_counter()
    tuning_note = None
    if tune or tuning_db is not None:
        built, tuning_note = _build_tuned(module, tgt, backend, tune, tuning_db, seconds,
                                          _c_name(model, module), io, device)  # times tune and build
    else:
        if (sram is not None or flash is not None) and not backend.budgets:
            raise InputError(f"--sram/--flash apply to microcontroller targets, not '{tgt.name}'")
        built = backend.build(module, tgt, name=_c_name(model, module), sram=sram, flash=flash, **io)
        seconds["build"] = time.perf_counter() - t
    seconds.update({f"build.{k}": v for k, v in built.seconds.items()})
    report = CompileReport(model_info(module), tgt.name, pipeline, nodes_before, len(module.graph), seconds,
                           memory=built.memory, tuning=tuning_note, runtime=runtime, arena_bytes=built.arena_bytes,
                           substitution=substitution.format() if substitution is not None else None)
    return CompiledModel(module, tgt, pipeline, built, report, source_hash, runtime)


def _rpc_device(rpc: str | None, device_key: str | None, trials: int) -> RpcDevice | None:
    """The tracker's devices under ``device_key`` for tuning (``effc.codegen.rpc.connect``), or None."""
    if rpc is None and device_key is None:
        return None
    if rpc is not None and not trials:
        raise InputError("--rpc measures tuning trials on a device; give --tune N as well")
    from effc.codegen.rpc import connect

    return connect(rpc, device_key)


RECOMPILE = "recompile the artifact with `effc compile`"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _read_manifest(folder: Path) -> dict[str, Any]:
    """``manifest.json`` as a dict whose fields ``load`` relies on have the right types:
    ``target.name`` a string, ``files`` a non-empty object, ``runtime``/``pipeline``/
    ``source_sha256`` strings (or absent). Anything else is an InputError naming the field."""
    path = folder / MANIFEST
    if not path.is_file():
        raise InputError(f"{folder}: not an effc artifact folder (no {MANIFEST}); make one with `effc compile`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise InputError(f"{path}: not valid JSON ({e}); {RECOMPILE}") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: expected a JSON object with 'target', 'runtime' and 'files', "
                         f"got a JSON {_json_kind(manifest)}; {RECOMPILE}")
    target = manifest.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("name"), str):
        raise InputError(f"{path}: field 'target' must be an object with a string 'name' "
                         f"(e.g. {{\"name\": \"x86\"}}), got {_short(target)}; {RECOMPILE}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise InputError(f"{path}: field 'files' must map every file of the artifact to its sha256, "
                         f"got {_short(files)}; {RECOMPILE}")
    for key in ("runtime", "pipeline", "source_sha256"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            raise InputError(f"{path}: field '{key}' must be a string, got {_short(manifest[key])}; {RECOMPILE}")
    return manifest


def _json_kind(value: Any) -> str:
    """What JSON calls the type of ``value``."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return kinds.get(type(value), "null")


def _short(value: Any) -> str:
    """A JSON value for an error message, cut to a readable length."""
    text = "nothing" if value is None else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unsafe_name(name: Any) -> str | None:
    """Why ``name`` (a key of the manifest's ``files``) may not be opened, or None. Only
    plain relative names inside the folder pass (as ``export`` writes them: ``src/model.c``)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return "which is not a file name"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "a path with '..' that leads out of the folder"
    if PurePosixPath(name).as_posix() != name or "\\" in name:  # ./a, a//b, a/, a\\b
        return "not a plain relative name (effc writes names such as 'src/model.c')"
    return None


def _check_listed_files(folder: Path, files: dict[str, Any]) -> None:
    """Every file the manifest lists is a plain name inside ``folder`` (a symlink may not
    lead out of it) and has the listed sha256. Nothing outside the folder is opened: names
    and links are checked before any file is read."""
    root = folder.resolve()
    for name, digest in files.items():
        problem = _unsafe_name(name)
        if problem:
            raise InputError(f"{folder}: {MANIFEST} lists {name!r}, {problem}; effc opens only files inside "
                             f"the artifact folder; {RECOMPILE}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise InputError(f"{folder}: {MANIFEST} gives file {name} the hash {_short(digest)}, not a sha256 "
                             f"(64 lowercase hex digits); {RECOMPILE}")
        try:
            real = (folder / name).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            real = None
        if real is not None and not real.is_relative_to(root):
            raise InputError(f"{folder}: file {name} is a symlink leading out of the artifact folder (to {real}); "
                             f"effc opens only files inside it; {RECOMPILE}")
        if real is None or not real.is_file() or _file_hash(real) != digest:
            raise InputError(f"{folder}: file {name} is missing or does not match its hash in {MANIFEST}; "
                             f"{RECOMPILE}")


def _require_listed(folder: Path, needed: Sequence[str], files: dict[str, Any]) -> None:
    """Every file about to be read or executed is one the manifest lists (and so was checked)."""
    for name in needed:
        if name not in files:
            raise InputError(f"{folder}: {name} is not listed with its sha256 in {MANIFEST}, so effc will not "
                             f"open or run it; {RECOMPILE} (or remove {name} if it is not part of the artifact)")


def _read_report(folder: Path, default_nodes: int) -> tuple[int, int | None]:
    """``nodes_before`` and ``arena_bytes`` of the checked ``report.json`` (absent: defaults)."""
    path = folder / REPORT
    if not path.is_file():
        return default_nodes, None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); {RECOMPILE}") from None
    if not isinstance(report, dict):
        raise InputError(f"{path}: expected a JSON object, got a JSON {_json_kind(report)}; {RECOMPILE}")
    nodes, arena = report.get("nodes_before", default_nodes), report.get("arena_bytes")
    for key, value, optional in (("nodes_before", nodes, False), ("arena_bytes", arena, True)):
        if not (optional and value is None) and (type(value) is not int or value < 0):
            raise InputError(f"{path}: field '{key}' must be a count >= 0, got {_short(value)}; {RECOMPILE}")
    return nodes, arena


def _read_timings(folder: Path) -> dict[str, float]:
    """The compile times of ``timings.json``. It is not in the manifest (times differ run to
    run) and is never executed, so it is only trusted as far as this: numbers by stage name,
    anything else ignored."""
    try:
        data = json.loads((folder / TIMINGS).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if type(v) is float or (type(v) is int and abs(v) < 2**53)}


def load(folder: str | os.PathLike) -> CompiledModel:
    """An artifact folder written by ``CompiledModel.export`` (or ``effc compile``).

    Before anything is opened, every file it lists must be a name inside the folder with the
    listed sha256, and every file this target's loader reads or executes must be listed. The
    hashes catch corruption and stale files, not a malicious folder: one from an untrusted
    party is code, so do not load it."""
    from effc.codegen.dispatch import backend_for, runtime_for

    folder = Path(folder)
    manifest = _read_manifest(folder)
    try:
        tgt = get_target(manifest["target"]["name"])
        runtime = runtime_for(tgt, manifest.get("runtime") or None)
    except InputError as e:
        raise InputError(f"{folder / MANIFEST}: {e}; {RECOMPILE}") from None
    files = manifest["files"]
    _check_listed_files(folder, files)
    sidecar = Path(IR_FILE).with_suffix(".npz").name
    needed = [IR_FILE] + [n for n in (sidecar, REPORT) if (folder / n).exists()]
    backend = backend_for(tgt, runtime)
    _require_listed(folder, needed + backend.reads(folder), files)
    ir = load_model(folder / IR_FILE)  # parses and verifies the IR
    nodes_before, arena_bytes = _read_report(folder, len(ir.graph))
    built = backend.load(folder, tgt, ir)  # last: it may open a library
    pipeline = manifest.get("pipeline") or ""
    rep = CompileReport(model_info(ir), tgt.name, pipeline, nodes_before, len(ir.graph), _read_timings(folder),
                        runtime=runtime, arena_bytes=arena_bytes)
    return CompiledModel(ir, tgt, pipeline, built, rep, manifest.get("source_sha256") or "", runtime)
