"""The op registry: one table of ``OpDef`` entries, not one class per op.

An ``OpDef`` gives an op its attribute schema (with defaults), its inputs and outputs,
shape/dtype inference (``infer``), numpy reference semantics (``ref``), traits, an
optional MAC count, and an optional ``upgrade`` hook that rewrites older ONNX opset forms
(attributes that later became inputs, renamed attributes) into the form the IR holds.
The IR always holds the newest ONNX semantics of an op; export writes that form.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .core import Node, Resource, Value
from .errors import ShapeError, UnsupportedOpError
from .types import DType, TensorType

ATTR_KINDS = ("int", "float", "str", "ints", "floats", "strs", "tensor", "dtype")

_REQUIRED = object()


@dataclass(frozen=True)
class AttrSpec:
    kind: str
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def attr(kind: str, default: Any = _REQUIRED) -> AttrSpec:
    assert kind in ATTR_KINDS, kind
    if isinstance(default, list):
        default = tuple(default)
    return AttrSpec(kind, default)


@dataclass
class InferCtx:
    """What ``infer`` sees: input types, attrs (defaults filled), constant inputs, output count."""

    node: Node
    types: list[TensorType | None]
    attrs: dict[str, Any]
    n_outputs: int

    def const(self, i: int) -> np.ndarray | None:
        v = self.node.input(i)
        return None if v is None else v.const_value

    def type(self, i: int) -> TensorType:
        t = self.types[i] if i < len(self.types) else None
        if t is None:
            raise ShapeError(f"{self.node.describe()}: input {i} is required")
        return t

    def has(self, i: int) -> bool:
        return i < len(self.types) and self.types[i] is not None

    def fail(self, msg: str) -> ShapeError:
        return ShapeError(f"{self.node.describe()}: {msg}")

    def unsupported(self, what: str) -> UnsupportedOpError:
        """For a form of the op effc does not implement (an attribute value, a dtype)."""
        op = REGISTRY[self.node.op]
        return UnsupportedOpError([(op.onnx_name or op.name, self.node.loc or self.node.op, what)])


@dataclass
class UpgradeCtx:
    """What an ``upgrade`` hook sees while importing one ONNX node.

    ``attrs`` holds raw Python values (ints, floats, str, lists, numpy arrays) and may be
    edited; ``inputs`` likewise. ``add_const`` makes a constant value for an attribute that
    later opsets take as an input."""

    opset: int
    node_name: str
    attrs: dict[str, Any]
    inputs: list[Value | None]
    add_const: Callable[[np.ndarray], Value]
    fail: Callable[[str], Exception]
    op_type: str = ""
    n_outputs: int = 0
    """How many outputs the ONNX node names (trailing unnamed ones excluded)."""

    def unsupported(self, what: str) -> UnsupportedOpError:
        return UnsupportedOpError([(self.op_type, self.node_name, what)])


RefFn = Callable[[list, dict, int], list]
"""ref(inputs: list[np.ndarray | None], attrs: dict, n_outputs: int) -> list[np.ndarray]"""


@dataclass
class OpDef:
    name: str
    """IR name (snake case), e.g. ``conv``, ``batch_normalization``."""
    onnx_name: str | None
    """ONNX op_type it imports from and exports to (None for effc-only ops)."""
    inputs: tuple[str, ...]
    """Input names; a trailing ``?`` marks optional, ``*`` variadic (last only)."""
    outputs: tuple[str, ...]
    infer: Callable[[InferCtx], list[TensorType]]
    ref: RefFn
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    traits: frozenset[str] = frozenset()
    """e.g. ``elementwise``, ``commutative``, ``activation``, ``view``, ``shape``."""
    upgrade: Callable[[UpgradeCtx], None] | None = None
    macs: Callable[[Node], int] | None = None
    op_class: str = "other"
    """Class for MAC/op reports: conv, matmul, norm, pool, activation, elementwise, shape, quant."""
    min_opset: int = 1
    """First ONNX opset that defines this op."""
    domain: str = ""
    """ONNX domain of ``onnx_name``: "" (the ONNX standard) or ``com.microsoft``
    (onnxruntime's contrib ops, which its quantizer writes)."""

    def min_inputs(self) -> int:
        return sum(1 for s in self.inputs if not s.endswith("?") and not s.endswith("*"))

    def max_inputs(self) -> int | None:
        return None if self.inputs and self.inputs[-1].endswith("*") else len(self.inputs)

    def max_outputs(self) -> int | None:
        return None if self.outputs and self.outputs[-1].endswith("*") else len(self.outputs)

    def min_outputs(self) -> int:
        return sum(1 for s in self.outputs if not s.endswith("?") and not s.endswith("*")) or (
            1 if self.outputs and self.outputs[-1].endswith("*") else 0)

    def with_defaults(self, attrs: dict[str, Any]) -> dict[str, Any]:
        out = {k: s.default for k, s in self.attrs.items() if not s.required}
        out.update(attrs)
        return out


REGISTRY: dict[str, OpDef] = {}
BY_ONNX: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name} registered twice")
    REGISTRY[op.name] = op
    if op.onnx_name:
        BY_ONNX[onnx_key(op.domain, op.onnx_name)] = op
    return op


def onnx_key(domain: str, op_type: str) -> str:
    """``BY_ONNX``'s key of an ONNX op: its op_type for the standard domain ("" or
    ``ai.onnx``), ``domain::op_type`` for another."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}::{op_type}"


def get_op(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ShapeError(f"unknown op '{name}'") from None


def node_attrs(node: Node) -> dict[str, Any]:
    """The node's attributes with schema defaults filled in."""
    return REGISTRY[node.op].with_defaults(node.attrs)


def infer_types(node: Node) -> list[TensorType]:
    """Run the op's shape/dtype rule on the node's current inputs."""
    op = get_op(node.op)
    types = [None if v is None else v.type for v in node.inputs]
    ctx = InferCtx(node, types, op.with_defaults(node.attrs), len(node.outputs))
    try:
        out = op.infer(ctx)
    except ShapeError:
        raise
    except (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError, OverflowError) as e:
        raise ShapeError(f"{node.describe()}: cannot infer output type: {e}") from e
    return list(out)


def run_ref(node: Node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    op = get_op(node.op)
    return op.ref(inputs, op.with_defaults(node.attrs), len(node.outputs))


def const_array(attr_value: Any) -> np.ndarray:
    return attr_value.get() if isinstance(attr_value, Resource) else attr_value


__all__ = [
    "AttrSpec", "attr", "InferCtx", "UpgradeCtx", "OpDef", "REGISTRY", "BY_ONNX", "register",
    "get_op", "infer_types", "run_ref", "node_attrs", "DType", "TensorType", "const_array",
]
