"""The IR text's lexical pieces: quoted strings, ``%``/``@`` names, keys, ints, floats and
lists, exactly as ``ir/printer.py`` writes them and ``ir/parser.py`` reads them back.

It imports nothing of effc, so ``types.py`` formats a type (``TensorType.__str__``) with
the same pieces the printer uses, without importing the printer."""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

_BARE_VALUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quote(text: str) -> str:
    """A JSON string literal (ASCII only, so any name survives any file encoding)."""
    return json.dumps(text)


def format_name(sigil: str, name: str) -> str:
    """``%x``, ``%input.1``, ``%"onnx::Conv_12"``; the same for ``@graph`` names."""
    return sigil + (name if _BARE_VALUE_NAME.fullmatch(name) else quote(name))


def format_key(key: str) -> str:
    """Attribute, metadata and symbol names: bare when an identifier, else quoted."""
    return key if _IDENTIFIER.fullmatch(key) else quote(key)


def format_float(x: Any) -> str:
    """Python's shortest round-trip repr: ``1.0``, ``1e-05``, ``inf``, ``-inf``, ``nan``."""
    if not isinstance(x, (int, float, np.integer, np.floating)) or isinstance(x, bool):
        raise TypeError(f"expected a float, got {x!r}")
    return repr(float(x))


def format_int(x: Any) -> str:
    if not isinstance(x, (int, np.integer)):  # bools are ints: they print as 0/1
        raise TypeError(f"expected an int, got {x!r}")
    return str(int(x))


def format_list(xs: Any, fmt: Any) -> str:
    """``[a, b, c]``, each element through ``fmt``."""
    if not isinstance(xs, (tuple, list, np.ndarray)):
        raise TypeError(f"expected a sequence, got {xs!r}")
    return "[" + ", ".join(fmt(x) for x in xs) + "]"
