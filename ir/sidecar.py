"""The weights sidecar of a saved module: one ``.npz`` beside the IR text.

Each array is stored under its resource key when that key is a safe zip member name,
else under ``__effc_<i>``. The member ``__effc_index__`` (a JSON string) maps every
resource key to its member and its effc dtype; dtypes numpy cannot store natively
(bfloat16) are stored as a same-width unsigned view and restored on load. A plain
``.npz`` without the index also loads: its member names are the keys.
"""
from __future__ import annotations

import json
import lzma
import math
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import InputError
from .types import DType, TensorType

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


_ZIP_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
               lzma.LZMAError, NotImplementedError, RuntimeError)
"""What zipfile and numpy raise on a corrupt archive (NotImplementedError: an unknown
compression method or zip version; RuntimeError: a member marked encrypted)."""

_MAX_INDEX_BYTES = 64 << 20
"""The index member's largest accepted size (about 150,000 weights): it is read whole."""


def _read_header(f, member: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and header length of the ``.npy`` stream ``f``; reads
    only the header, so nothing large is decompressed to learn an array's size."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"member {member}: unsupported .npy version {version[0]}.{version[1]}")
    if dtype.hasobject:  # loading it would unpickle: never
        raise ValueError(f"member {member} holds Python objects (pickled data); effc reads only plain arrays")
    return shape, fortran, dtype, f.tell()


class _Entry:
    """One array in the archive, known by its header until it is loaded."""

    def __init__(self, zf: zipfile.ZipFile, member: str, dtype: DType | None):
        self.member = member
        try:
            self.info = zf.getinfo(member + ".npy")
        except KeyError:
            raise ValueError(f"the index names member {member!r}, which the archive lacks") from None
        with zf.open(self.info) as f:
            self.shape, self.fortran, self.stored, offset = _read_header(f, member)
        self.offset = offset
        self.nbytes = self.stored.itemsize * math.prod(self.shape)
        if self.info.file_size != offset + self.nbytes:
            raise ValueError(f"member {member}: its header describes {self.stored}{list(self.shape)} "
                             f"({offset + self.nbytes} bytes) but the archive says {self.info.file_size} bytes")
        try:
            self.dtype = dtype if dtype is not None else DType.from_numpy(self.stored.newbyteorder("="))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"member {member}: effc has no dtype for {self.stored} ({e})") from None
        want = (_STORAGE_VIEW.get(self.dtype), self.dtype.np)
        if self.stored.newbyteorder("=") not in want or self.stored.itemsize != self.dtype.itemsize:
            raise ValueError(f"member {member}: stored as {self.stored}, which cannot hold {self.dtype.value}")

    def mismatch(self, declared: TensorType) -> str | None:
        """Why the header contradicts the type the IR declares (None when it agrees)."""
        shape = tuple(self.shape)
        same_dims = len(shape) == len(declared.shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(declared.shape, shape))
        if declared.dtype is self.dtype and same_dims:
            return None
        held = f"{self.dtype.value}[{','.join(map(str, shape))}]"
        return (f"the archive holds {held} ({self.nbytes} bytes) but the IR declares "
                f"{declared.dtype.value}[{','.join(map(str, declared.shape))}]; the .effc and its .npz do "
                "not belong together (write both again with `effc dump -o`)")

    def load(self, zf: zipfile.ZipFile) -> np.ndarray:
        """Decompress exactly the bytes the header announced (the CRC is checked at the end)."""
        array = np.empty(self.shape, dtype=self.stored, order="F" if self.fortran else "C")
        buffer = memoryview(array.reshape(-1, order="A").view(np.uint8)) if array.size else memoryview(b"")
        with zf.open(self.info) as f:
            f.read(self.offset)
            got = 0
            while got < self.nbytes:
                n = f.readinto(buffer[got:])
                if not n:
                    raise ValueError(f"member {self.member}: data ends after {got} of {self.nbytes} bytes")
                got += n
            if f.read(1):  # also reaches the end of the stream, where zipfile checks the CRC
                raise ValueError(f"member {self.member}: data runs past {self.nbytes} bytes")
        if not self.stored.isnative:
            array = array.astype(self.stored.newbyteorder("="))
        return array.view(self.dtype.np) if array.dtype != self.dtype.np else array


class Sidecar:
    """An opened weights archive: every array's header is read and checked up front; data
    is decompressed only by ``load``, one array at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.zf = zipfile.ZipFile(self.path)
        self.entries: dict[str, _Entry] = {}
        names = [i.filename for i in self.zf.infolist()]
        if INDEX + ".npy" not in names:
            for name in names:
                if name.endswith(".npy"):
                    self.entries[name[:-4]] = _Entry(self.zf, name[:-4], None)
            return
        for e in self._index():
            self.entries[e["key"]] = _Entry(self.zf, e["member"], DType.parse(e["dtype"]))

    def _index(self) -> list[dict]:
        info = self.zf.getinfo(INDEX + ".npy")
        if info.file_size > _MAX_INDEX_BYTES:
            raise ValueError(f"the index member is {info.file_size} bytes (at most {_MAX_INDEX_BYTES})")
        with self.zf.open(info) as f:
            shape, _, dtype, _ = _read_header(f, INDEX)
            if shape != () or dtype.kind != "U":
                raise ValueError("the index member is not a JSON string")
            text = str(np.frombuffer(f.read(dtype.itemsize), dtype=dtype)[0])
        index = json.loads(text)
        fields = ("key", "member", "dtype")
        if not isinstance(index, list) or not all(
                isinstance(e, dict) and all(isinstance(e.get(k), str) for k in fields) for e in index):
            raise ValueError("the index is not a list of {key, member, dtype} strings")
        return index

    def keys(self) -> list[str]:
        return list(self.entries)

    def mismatch(self, key: str, declared: TensorType) -> str | None:
        return self.entries[key].mismatch(declared)

    def load(self, key: str) -> np.ndarray:
        """The array under ``key``; InputError (naming the file) when its data is corrupt."""
        try:
            return self.entries[key].load(self.zf)
        except _ZIP_ERRORS as e:
            raise InputError(f"{self.path}: weight \"{key}\" cannot be read: {e}") from None


def open_sidecar(path: Path) -> Sidecar:
    """The weights archive at ``path``, every header checked (no data read yet).

    Raises ``ValueError`` when the file is not a readable weights file."""
    try:
        return Sidecar(path)
    except (*_ZIP_ERRORS, KeyError, TypeError, SyntaxError, MemoryError, OverflowError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable weights file: {e}") from None
