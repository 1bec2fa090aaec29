"""Loading and saving models by file name: ``.onnx`` through the importer, ``.effc``
(IR text with its ``.npz`` weights) through the parser."""
from __future__ import annotations

import os
from pathlib import Path

import onnx

from effc.ir import ops as _ops  # noqa: F401
from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.ir.parser import load_module
from effc.ir.printer import print_module, save_module
from effc.ir.verifier import verify_module
from effc.onnx_export import save_onnx
from effc.onnx_import import import_onnx

ModelLike = "str | os.PathLike | onnx.ModelProto | Module"


def load_model(model: str | os.PathLike | bytes | onnx.ModelProto | Module) -> Module:
    """A Module from a path (.onnx or .effc), an ONNX ModelProto or its serialized bytes, or
    a Module (returned as is). A model given in memory has no folder, so it cannot use
    external data: effc reads external data only from inside the model file's folder."""
    if isinstance(model, Module):
        return model
    if isinstance(model, (onnx.ModelProto, bytes, bytearray)):
        return import_onnx(model)
    path = Path(model)
    suffix = path.suffix.lower()
    if suffix == ".effc":
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        module = load_module(path)
        try:
            verify_module(module)
        except Exception as e:
            raise InputError(f"{path}: the IR is inconsistent: {e}") from None
        return module
    if suffix == ".onnx" or path.is_file():
        return import_onnx(path)
    raise InputError(f"{path}: no such file (expected a .onnx model or a .effc IR dump)")


def save_model(module: Module, path: str | os.PathLike) -> list[Path]:
    """Write ``.effc`` (+ ``.npz`` weights) or ``.onnx`` by suffix; returns the files written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".effc":
        save_module(module, path)
        side = path.with_suffix(".npz")
        return [path] + ([side] if side.exists() else [])
    if suffix == ".onnx":
        save_onnx(module, path)
        return [path]
    raise InputError(f"{path}: unknown output format '{suffix}' (use .effc or .onnx)")


def module_text(module: Module) -> str:
    return print_module(module)
