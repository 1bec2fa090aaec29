"""Size limits checked before a module goes to TVM.

A model (or a shape given with ``--input-shape``) can ask for a tensor of 10^12 elements:
a ``ConstantOfShape`` of a constant shape, an ``Expand`` to a huge size. TVM would lower it
and fail while building or running with ``std::bad_alloc``, a C compiler with "array too
large". ``check_tensor_sizes`` refuses such a module first, naming the tensor, its size
and the limit, which the user can raise:

- ``EFFC_MAX_TENSOR_BYTES`` (environment variable, bytes; ``K``/``M``/``G``/``T`` suffixes
  are powers of 1024, e.g. ``EFFC_MAX_TENSOR_BYTES=16G``), or
- ``effc.ir.limits.set_max_tensor_bytes(n)`` (library; overrides the variable;
  ``None`` goes back to it).

The default, 4 GiB per tensor, is more than any tensor of a real model that effc targets
(a 32-bit microcontroller cannot address more) and far less than what breaks the build.
Tensors with symbolic dims are not checked here: their size is known only at run time.
"""
from __future__ import annotations

import os

from .core import Graph, Module, Value
from .errors import InputError

ENV_VAR = "EFFC_MAX_TENSOR_BYTES"
DEFAULT_MAX_TENSOR_BYTES = 4 << 30
_SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

_override: int | None = None


class TensorTooLargeError(InputError):
    """A tensor of the module needs more bytes than the per-tensor limit. Exit code 2."""


def set_max_tensor_bytes(limit: int | None) -> None:
    """Set the per-tensor limit (bytes) for this process; ``None``: back to the environment
    variable or the default."""
    global _override
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise InputError(f"the tensor size limit must be a positive number of bytes, got {limit!r}")
    _override = limit


def max_tensor_bytes() -> int:
    """The per-tensor limit in force: ``set_max_tensor_bytes``'s, else ``EFFC_MAX_TENSOR_BYTES``,
    else the default."""
    if _override is not None:
        return _override
    text = os.environ.get(ENV_VAR, "").strip()
    return parse_bytes(text) if text else DEFAULT_MAX_TENSOR_BYTES


def parse_bytes(text: str) -> int:
    """``"1073741824"``, ``"1G"``, ``"512M"``: bytes. InputError naming the variable otherwise."""
    scale = _SUFFIXES.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale != 1 else text
    if not digits.strip().isdigit() or int(digits) * scale <= 0:
        raise InputError(f"{ENV_VAR}={text!r}: expected a positive number of bytes, optionally with a K, M, G or T "
                         f"suffix (e.g. {ENV_VAR}=16G)")
    return int(digits) * scale


def check_tensor_sizes(module: Module, limit: int | None = None) -> None:
    """TensorTooLargeError when a statically shaped tensor of ``module`` (an input, a
    constant, any node's output, also inside fused bodies) needs more than ``limit`` bytes
    (default: ``max_tensor_bytes()``). Names the largest such tensor and how to go on."""
    limit = max_tensor_bytes() if limit is None else limit
    worst: tuple[int, Value] | None = None
    for v in _values(module.graph):
        nbytes = v.type.nbytes()
        if nbytes is not None and nbytes > limit and (worst is None or nbytes > worst[0]):
            worst = (nbytes, v)
    if worst is None:
        return
    nbytes, v = worst
    where = f"output of {v.producer.describe()}" if v.producer is not None else "graph input"
    raise TensorTooLargeError(
        f"@{module.graph.name}: tensor %{v.name} ({v.type}, {where}) needs {nbytes:,} bytes, more than the limit of "
        f"{limit:,} bytes per tensor. Bind smaller input shapes (--input-shape), or raise the limit if the machine "
        f"can hold it: {ENV_VAR}=<bytes> (library: effc.ir.limits.set_max_tensor_bytes)")


def _values(g: Graph):
    """Every value of ``g`` and of the bodies of its nodes."""
    yield from g.values()
    for n in g.nodes:
        if n.body is not None:
            yield from _values(n.body)
