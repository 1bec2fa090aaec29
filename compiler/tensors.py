"""Input/output tensors: .npz files keyed by value name, and seeded random inputs."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from effc.ir.core import Value
from effc.ir.errors import InputError
from effc.ir.types import DType

DEFAULT_SYMBOL_SIZE = 1
"""Symbolic dims (e.g. a batch ``N``) take this size in generated inputs."""


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such inputs file")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InputError(f"{p}: not a readable .npz file ({e})") from None


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    np.savez(Path(path), **arrays)


def random_inputs(inputs: list[Value], seed: int = 0, symbol_size: int = DEFAULT_SYMBOL_SIZE) -> dict[str, np.ndarray]:
    """Seeded inputs for a graph: floats ~ N(0,1), ints in [0, 10), bools random; symbolic
    dims take ``symbol_size``."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for v in inputs:
        shape = tuple(d if isinstance(d, int) else symbol_size for d in v.type.shape)
        dt = v.type.dtype
        if dt.is_float:
            arr = rng.standard_normal(shape).astype(dt.np)
        elif dt is DType.bool:
            arr = rng.integers(0, 2, shape).astype(bool)
        else:
            arr = rng.integers(0, 10, shape).astype(dt.np)
        out[v.name] = arr
    return out
