"""The weights sidecar of a saved module: one ``.npz`` beside the IR text.

Each array is stored under its resource key when that key is a safe zip member name,
else under ``__effc_<i>``. The member ``__effc_index__`` (a JSON string) maps every
resource key to its member and its effc dtype; dtypes numpy cannot store natively
(bfloat16) are stored as a same-width unsigned view and restored on load. A plain
``.npz`` without the index also loads: its member names are the keys.
"""
from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .types import DType

INDEX = "__effc_index__"
_SAFE_MEMBER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.:\-]*)*")
_RESERVED = {"file", "allow_pickle", "args", "kwds"}  # np.savez's own parameter names
_STORAGE_VIEW = {DType.bf16: np.dtype(np.uint16)}


def _member_name(key: str, i: int) -> str:
    safe = _SAFE_MEMBER.fullmatch(key) and key not in _RESERVED and not key.startswith("__effc_")
    return key if safe else f"__effc_{i}"


def write_sidecar(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` (resource key -> array) to the ``.npz`` at ``path``."""
    members: dict[str, np.ndarray] = {}
    index = []
    for i, (key, array) in enumerate(arrays.items()):
        dtype = DType.from_numpy(array.dtype)
        member = _member_name(key, i)
        view = _STORAGE_VIEW.get(dtype)
        members[member] = array.view(view) if view is not None else array
        index.append({"key": key, "member": member, "dtype": dtype.value})
    members[INDEX] = np.array(json.dumps(index))
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **members)


def _loader(npz: np.lib.npyio.NpzFile, member: str, dtype: DType | None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        array = npz[member]
        if dtype is not None and array.dtype != dtype.np:
            array = array.view(dtype.np)
        return array

    return load


def open_sidecar(path: Path) -> dict[str, Callable[[], np.ndarray]]:
    """Lazy loaders for every array in the sidecar at ``path``, by resource key.

    Raises ``ValueError`` when the file is not a readable weights file."""
    try:
        npz = np.load(path, mmap_mode=None, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        if INDEX not in npz.files:
            return {name: _loader(npz, name, None) for name in npz.files}
        index = json.loads(str(npz[INDEX]))
        return {e["key"]: _loader(npz, e["member"], DType.parse(e["dtype"])) for e in index}
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable weights file: {e}") from None
