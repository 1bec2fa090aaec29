"""effc IR → ONNX (opset ``EXPORT_OPSET``).

The IR holds each op in its opset-21 form, so export is a direct mapping: ``const`` nodes
become initializers, every other node its OpDef's ONNX op with the attributes it carries.
Fused nodes (with a ``body``) are written out as their bodies."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from effc.ir.core import Graph, Module, Node, Resource, Value
from effc.ir.errors import EffcError
from effc.ir.opdef import REGISTRY
from effc.ir.types import UNKNOWN_DIM, DType

EXPORT_OPSET = 21
BF16_EXPORT_OPSET = 22
"""Several ops (Elu, HardSigmoid, Sin, ...) accept bfloat16 only from opset 22; a module that
uses bf16 is written at 22, whose forms of effc's ops are the same as 21's."""
EXPORT_IR_VERSION = 10


class ExportError(EffcError):
    """A module cannot be written as ONNX."""


def dtype_to_onnx(d: DType) -> int:
    return int(helper.np_dtype_to_tensor_dtype(d.np))


def _value_info(v: Value) -> onnx.ValueInfoProto:
    dims: list[Any] = [None if d == UNKNOWN_DIM else d for d in v.type.shape]
    return helper.make_tensor_value_info(v.name, dtype_to_onnx(v.type.dtype), dims)


def _tensor(name: str, arr: np.ndarray) -> TensorProto:
    arr = np.asarray(arr)
    # np.ascontiguousarray would turn a 0-d array into a 1-d one
    return numpy_helper.from_array(np.array(arr, order="C", copy=not arr.flags.c_contiguous), name)


def _attr(name: str, kind: str, value: Any) -> onnx.AttributeProto:
    if kind == "dtype" or isinstance(value, DType):
        return helper.make_attribute(name, dtype_to_onnx(value))
    if kind == "tensor" or isinstance(value, (np.ndarray, Resource)):
        arr = value.get() if isinstance(value, Resource) else value
        return helper.make_attribute(name, _tensor("", arr))
    if kind in ("ints", "floats", "strs"):
        attr_type = {"ints": onnx.AttributeProto.INTS, "floats": onnx.AttributeProto.FLOATS,
                     "strs": onnx.AttributeProto.STRINGS}[kind]
        return helper.make_attribute(name, list(value), attr_type=attr_type)
    if kind == "float":
        return helper.make_attribute(name, float(value), attr_type=onnx.AttributeProto.FLOAT)
    return helper.make_attribute(name, value)


class _Exporter:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.node_names: set[str] = set()

    def node_name(self, loc: str | None) -> str:
        """ONNX node names must be unique; a rewrite may give several nodes one source name."""
        if not loc:
            return ""
        name, i = loc, 0
        while name in self.node_names:
            i += 1
            name = f"{loc}_{i}"
        self.node_names.add(name)
        return name

    def graph(self, g: Graph) -> None:
        for n in g.nodes:
            self.node(n, {})

    def node(self, n: Node, rename: dict[int, str]) -> None:
        def name_of(v: Value | None) -> str:
            return "" if v is None else rename.get(id(v), v.name)

        if n.op == "const":
            arr = n.attrs["value"]
            arr = arr.get() if isinstance(arr, Resource) else arr
            self.inits.append(_tensor(name_of(n.output), arr))
            return
        if n.body is not None:
            self.inline_body(n, name_of)
            return
        op = REGISTRY[n.op]
        if op.onnx_name is None:
            raise ExportError(f"{n.describe()}: op '{n.op}' has no ONNX form")
        if n.attrs.get("rounding", "onnx") != "onnx":
            raise ExportError(f"{n.describe()}: requantizes with rounding={n.attrs['rounding']}, which ONNX's "
                              f"{op.onnx_name} cannot say (its rounding is the float multiplier's, half to even); export "
                              "the model before qdq-to-integer, or run qdq-to-integer with rounding=onnx")
        attrs = [_attr(k, op.attrs[k].kind if k in op.attrs else "", v) for k, v in sorted(n.attrs.items())
                 if k != "rounding"]
        proto = helper.make_node(op.onnx_name, [name_of(v) for v in n.inputs], [name_of(v) for v in n.outputs],
                                 name=self.node_name(n.loc), domain=op.domain or None)
        proto.attribute.extend(attrs)
        self.nodes.append(proto)

    def inline_body(self, n: Node, outer_name: Any) -> None:
        body = n.body
        assert body is not None
        rename: dict[int, str] = {}
        for inner, outer in zip(body.inputs, [v for v in n.inputs if v is not None]):
            rename[id(inner)] = outer_name(outer)
        for inner, outer in zip(body.outputs, n.outputs):
            rename[id(inner)] = outer_name(outer)
        prefix = f"{n.outputs[0].name}__"
        for inner_node in body.nodes:
            for v in inner_node.outputs:
                rename.setdefault(id(v), prefix + v.name)
            self.node(inner_node, rename)


def _uses_bf16(g: Graph) -> bool:
    for v in g.values():
        if v.type.dtype is DType.bf16:
            return True
    return any(n.body is not None and _uses_bf16(n.body) for n in g.nodes)


def export_onnx(module: Module) -> onnx.ModelProto:
    """The module as an ONNX ModelProto (opset 21; 22 when it uses bf16)."""
    g = module.graph
    ex = _Exporter()
    ex.graph(g)
    outputs = []
    for v in g.outputs:
        outputs.append(_value_info(v))
    graph = helper.make_graph(ex.nodes, g.name, [_value_info(v) for v in g.inputs], outputs, ex.inits)
    opset = BF16_EXPORT_OPSET if _uses_bf16(g) else EXPORT_OPSET
    domains = sorted({p.domain for p in ex.nodes if p.domain})
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]
                              + [helper.make_opsetid(d, 1) for d in domains],  # (com.microsoft: version 1)
                              producer_name="effc", ir_version=EXPORT_IR_VERSION)
    for k, val in sorted(module.metadata.items()):
        model.metadata_props.add(key=k, value=val)
    return model


def save_onnx(module: Module, path: str | os.PathLike) -> None:
    """Write the module as ONNX; weights over 2 GB in total go to a sidecar data file."""
    model = export_onnx(module)
    path = Path(path)
    if model.ByteSize() > 1_800_000_000:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
