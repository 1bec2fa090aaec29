"""Input/output tensors: .npz files keyed by value name, and seeded random inputs."""
from __future__ import annotations

import lzma
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from effc.ir.core import Value
from effc.ir.errors import InputError
from effc.ir.limits import ENV_VAR, TensorTooLargeError, max_tensor_bytes
from effc.ir.types import DType

DEFAULT_SYMBOL_SIZE = 1
"""Symbolic dims (e.g. a batch ``N``) take this size in generated inputs."""


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` archive by name (the name ``np.savez(f, name=array)`` used).

    Never unpickles; an ``.npy`` file, a non-array member or a corrupt archive is an
    InputError that says what was expected."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such inputs file")
    try:
        with p.open("rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise InputError(f"{p}: this is a single .npy array; effc wants an .npz archive keyed by the "
                             "model's input names, e.g. np.savez('inputs.npz', x=array)")
        z = np.load(p, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise InputError(f"{p}: not an .npz archive (np.savez writes one)")
        with z:
            names = [i.filename for i in z.zip.infolist()]
            stray = [n for n in names if not n.endswith(".npy")]
            if stray:
                raise InputError(f"{p}: member {stray[0]!r} is not an .npy array; write the file with np.savez")
            return {n[:-4]: z[n] for n in names}
    except (OSError, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            lzma.LZMAError, NotImplementedError, RuntimeError, SyntaxError) as e:
        # NotImplementedError: an unknown compression method; RuntimeError: a member marked encrypted
        raise InputError(f"{p}: not a readable .npz file ({type(e).__name__}: {e})") from None


def load_labels(path: str | os.PathLike) -> np.ndarray:
    """Class labels from an ``.npy`` file (one integer per sample; never unpickled)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such labels file")
    try:
        a = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"{p}: not a readable .npy file ({type(e).__name__}: {e})") from None
    if not isinstance(a, np.ndarray):
        raise InputError(f"{p}: an .npz archive; --labels wants one .npy array of class indices (np.save)")
    if a.dtype.kind not in "iu" or a.ndim != 1:
        raise InputError(f"{p}: labels must be a 1-D array of integer class indices, not {a.dtype} {list(a.shape)}")
    return a


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to an ``.npz`` at exactly ``path``, each under its own name, whatever
    it is (``np.savez`` would drop names like ``file`` or ``allow_pickle`` and append
    ``.npz`` to the path). Returns the path written."""
    out = Path(path)
    for name in arrays:
        if "\0" in name:  # zip member names end at a NUL: the name could not be read back
            raise InputError(f"output {name!r} has a NUL character in its name, which an .npz cannot hold")
    try:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, array in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    except UnicodeEncodeError:
        raise InputError(f"{out}: an output name is not valid Unicode; cannot store it in an .npz") from None
    except OSError as e:
        raise InputError(f"{out}: cannot write: {e.strerror or e}") from None
    return out


def random_inputs(inputs: list[Value], seed: int = 0, symbol_size: int = DEFAULT_SYMBOL_SIZE) -> dict[str, np.ndarray]:
    """Seeded inputs for a graph: floats ~ N(0,1), ints in [0, 10), bools random; symbolic
    dims take ``symbol_size``."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for v in inputs:
        shape = tuple(d if isinstance(d, int) else symbol_size for d in v.type.shape)
        dt = v.type.dtype
        _check_input_size(v.name, shape, dt.np.itemsize)
        if dt.is_float:
            arr = rng.standard_normal(shape).astype(dt.np)
        elif dt is DType.bool:
            arr = rng.integers(0, 2, shape).astype(bool)
        else:
            arr = rng.integers(0, 10, shape).astype(dt.np)
        out[v.name] = arr
    return out


def _check_input_size(name: str, shape: tuple[int, ...], itemsize: int) -> None:
    """A declared input like [1, 1, 2**32, 8] would need hundreds of GB of random data:
    refuse it under the same per-tensor limit as compiling (``effc.ir.limits``)."""
    nbytes = math.prod(shape) * itemsize
    if nbytes > max_tensor_bytes():
        raise TensorTooLargeError(f"input '{name}' {list(shape)} needs {nbytes:,} bytes of random data, more than "
                                  f"the limit of {max_tensor_bytes():,} bytes per tensor; pass real inputs with "
                                  f"--inputs IN.npz, or raise the limit with {ENV_VAR}=<bytes>")
