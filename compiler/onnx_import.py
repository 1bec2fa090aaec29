"""ONNX → effc IR.

The model is read with ``onnx`` (external data stays on disk and is read lazily, only from
inside the model's folder), checked for structural faults (undefined or duplicate names,
cycles), walked with onnx-graphsurgeon, and each node is mapped through the op registry:
the op's ``upgrade`` hook turns older opset forms into the IR's form, attributes are
checked against the op's schema, and output types come from the op's ``infer`` rule,
cross-checked against any shapes the model declares.

Every unsupported op in a model is listed in one ``UnsupportedOpError``.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from effc.ir import ops as _ops  # noqa: F401  (fills the registry)
from effc.ir.core import Graph, Module, Node, Resource, Value
from effc.ir.errors import EffcError, ModelError, ShapeError, UnsupportedOpError
from effc.ir.opdef import BY_ONNX, OpDef, UpgradeCtx, infer_types
from effc.ir.types import UNKNOWN_DIM, DType, TensorType

gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # effc reports problems itself

INLINE_LIMIT = 16
"""Constants with at most this many elements print inline; larger ones go to the weight store."""

ONNX_DOMAINS = ("", "ai.onnx")


# ----------------------------------------------------------------------------- loading


def load_onnx(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """Read a model without pulling external data into memory."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    path = Path(model)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, expected an .onnx file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); "
                         "is the file truncated or not an ONNX protobuf?") from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise ModelError(f"{path}: not an ONNX model (no graph); is the file truncated or another format?")
    return proto, path.parent


def check_text_fields(msg: Any, path: str = "model") -> None:
    """Every string field of ``msg`` (recursively) is text. protobuf hands a string that is
    not valid UTF-8 back as bytes (a corrupted file does that); ModelError names the field."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in msg.ListFields():
        items = value if field.is_repeated else [value]
        if field.type == FieldDescriptor.TYPE_STRING:
            for v in items:
                if isinstance(v, bytes):
                    raise ModelError(f"{path}.{field.name} is not valid UTF-8 text ({v[:40]!r}); "
                                     "the file is corrupted or was not written by an ONNX exporter")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:  # onnx.proto has no map fields
            for i, v in enumerate(items):
                name = getattr(v, "name", "")
                label = name if isinstance(name, str) and name else (str(i) if field.is_repeated else "")
                check_text_fields(v, f"{path}.{field.name}" + (f"[{label!r}]" if label else ""))


def _tensor_dtype(elem_type: int, what: str) -> DType:
    try:
        npdt = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        return DType.from_numpy(npdt)
    except Exception:
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() else str(elem_type)
        raise UnsupportedOpError([("dtype " + name, what, "effc has no such element type")]) from None


def _external_loader(t: onnx.TensorProto, base: Path | None) -> Any:
    """A lazy loader for a tensor stored outside the model file, confined to ``base``."""
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location")
    if not loc:
        raise ModelError(f"initializer '{t.name}': external data without a location")
    if base is None:
        raise ModelError(f"initializer '{t.name}': external data '{loc}' but the model was not loaded from a file")
    root = base.resolve()
    target = (root / loc).resolve()
    if os.path.isabs(loc) or not target.is_relative_to(root):
        raise ModelError(f"initializer '{t.name}': external data location '{loc}' escapes the model's folder {root}; refused")
    if not target.is_file():
        raise ModelError(f"initializer '{t.name}': external data file '{loc}' not found next to the model")
    dtype = _tensor_dtype(t.data_type, f"initializer '{t.name}'").np
    shape = tuple(int(d) for d in t.dims)
    offset = int(info.get("offset", 0))
    count = int(np.prod(shape, dtype=np.int64))
    length = int(info.get("length", count * dtype.itemsize))
    if length < count * dtype.itemsize or offset + count * dtype.itemsize > target.stat().st_size:
        raise ModelError(f"initializer '{t.name}': external data in '{loc}' is shorter than its shape {list(shape)} needs")

    def load() -> np.ndarray:
        return np.memmap(target, dtype=dtype, mode="r", offset=offset, shape=shape)

    return load


def _tensor_loader(t: onnx.TensorProto, base: Path | None) -> Any:
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return _external_loader(t, base)
    _tensor_dtype(t.data_type, f"initializer '{t.name}'")

    def load() -> np.ndarray:
        try:
            return numpy_helper.to_array(t)
        except Exception as e:
            raise ModelError(f"initializer '{t.name}': cannot decode its data ({e})") from None

    return load


# ----------------------------------------------------------------------------- structure checks


def _check_structure(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Names defined once, every input defined, no cycles. Returns nodes in topological order."""
    defined: dict[str, str] = {}

    def define(name: str, who: str) -> None:
        if not name:
            return
        if name in defined:
            raise ModelError(f"value '{name}' is defined twice: by {defined[name]} and by {who}")
        defined[name] = who

    init_names = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    for t in list(g.initializer):
        define(t.name, f"initializer '{t.name}'")
    for t in g.sparse_initializer:
        define(t.values.name, f"initializer '{t.values.name}'")
    for vi in g.input:
        if vi.name in init_names:
            continue  # IR < 4 lists initializers among the inputs
        define(vi.name, f"graph input '{vi.name}'")
    producer: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            define(o, f"node '{_node_label(n, i)}' ({n.op_type})")
            if o:
                producer[o] = i
    for i, n in enumerate(g.node):
        for x in n.input:
            if x and x not in defined:
                raise ModelError(f"node '{_node_label(n, i)}' ({n.op_type}) uses undefined value '{x}'")
    for o in g.output:
        if o.name not in defined:
            raise ModelError(f"graph output '{o.name}' is not produced by any node, input or initializer")
    return _toposort(g, producer)


def _node_label(n: onnx.NodeProto, i: int) -> str:
    return n.name or f"#{i} {n.op_type}"


def _toposort(g: onnx.GraphProto, producer: dict[str, int]) -> list[onnx.NodeProto]:
    nodes = list(g.node)
    deps = [{producer[x] for x in n.input if x in producer} for n in nodes]
    state = [0] * len(nodes)  # 0 new, 1 on stack, 2 done
    order: list[int] = []
    for root in range(len(nodes)):
        if state[root]:
            continue
        stack: list[tuple[int, Iterable[int]]] = [(root, iter(sorted(deps[root])))]
        state[root] = 1
        while stack:
            i, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                state[i] = 2
                order.append(i)
            elif state[nxt] == 1:
                raise ModelError(f"the graph has a cycle through node '{_node_label(nodes[nxt], nxt)}' ({nodes[nxt].op_type})")
            elif state[nxt] == 0:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(deps[nxt]))))
    return [nodes[i] for i in order]


# ----------------------------------------------------------------------------- the importer


class _Importer:
    def __init__(self, proto: onnx.ModelProto, base: Path | None):
        self.proto = proto
        self.base = base
        self.opset = _default_opset(proto)
        self.graph = Graph(_graph_name(proto.graph.name))
        self.module = Module(self.graph, opset=self.opset,
                             producer=" ".join(x for x in (proto.producer_name, proto.producer_version) if x),
                             metadata={p.key: p.value for p in proto.metadata_props})
        self.values: dict[str, Value] = {}
        self.unsupported: list[tuple[str, str, str]] = []
        self.declared: dict[str, onnx.ValueInfoProto] = {}

    def run(self) -> Module:
        g = self.proto.graph
        order = _check_structure(g)
        self._check_ops(order)
        for vi in list(g.value_info) + list(g.output):
            self.declared[vi.name] = vi
        self._import_inputs(g)
        try:
            gs_graph = gs.import_onnx(self.proto)
        except EffcError:
            raise
        except Exception as e:
            raise ModelError(f"cannot read the model's graph: {type(e).__name__}: {e}") from None
        gs_nodes = {id_key(n): n for n in gs_graph.nodes}
        for i, n in enumerate(order):
            self._import_node(n, gs_nodes.get(_proto_key(n)), i)
        outs = []
        for o in g.output:
            v = self.values[o.name]
            self._refine(v, o, f"graph output '{o.name}'")
            outs.append(v)
        self.graph.set_outputs(outs)
        return self.module

    # -- checks
    def _check_ops(self, order: list[onnx.NodeProto]) -> None:
        bad = []
        for i, n in enumerate(order):
            label = _node_label(n, i)
            if n.domain not in ONNX_DOMAINS:
                bad.append((f"{n.domain}::{n.op_type}", label, "operator from a custom domain"))
            elif n.op_type != "Constant" and n.op_type not in BY_ONNX:
                bad.append((n.op_type, label, ""))
        if bad:
            raise UnsupportedOpError(bad)
        # Opsets before 7 import when every op's legacy form has an upgrade rule; an op
        # without one reports the form it cannot read.

    # -- inputs and initializers
    def _import_inputs(self, g: onnx.GraphProto) -> None:
        inits = {t.name for t in g.initializer}
        for t in g.initializer:
            dtype = _tensor_dtype(t.data_type, f"initializer '{t.name}'")
            shape = tuple(int(d) for d in t.dims)
            count = int(np.prod(shape, dtype=np.int64))
            loader = _tensor_loader(t, self.base)
            if count <= INLINE_LIMIT and t.data_location != onnx.TensorProto.EXTERNAL:
                value: Any = np.asarray(loader()).astype(dtype.np, copy=False)
            else:
                value = Resource(self.module.weights.add(t.name, loader), self.module.weights)
            node = Node("const", [], [TensorType(dtype, shape)], {"value": value}, output_names=[t.name])
            self.graph.append(node)
            self.values[t.name] = node.output
        if g.sparse_initializer:
            raise UnsupportedOpError([("sparse initializer", g.sparse_initializer[0].values.name, "densify the model first")])
        for vi in g.input:
            if vi.name in inits:
                continue
            ttype = self._value_info_type(vi, f"graph input '{vi.name}'")
            self.values[vi.name] = self.graph.add_input(vi.name, ttype)

    def _value_info_type(self, vi: onnx.ValueInfoProto, what: str) -> TensorType:
        if not vi.type.HasField("tensor_type"):
            kind = vi.type.WhichOneof("value") or "no type"
            raise UnsupportedOpError([(f"{kind} value", vi.name, f"{what} must be a tensor")])
        tt = vi.type.tensor_type
        dtype = _tensor_dtype(tt.elem_type, what)
        if not tt.HasField("shape"):
            raise ModelError(f"{what} has no shape (unknown rank); give it a shape, e.g. with onnx.tools.update_model_dims")
        dims: list[Any] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                if d.dim_value < 0:
                    raise ModelError(f"{what} has a negative dimension {d.dim_value}")
                dims.append(int(d.dim_value))
            elif d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(UNKNOWN_DIM)
        return TensorType(dtype, tuple(dims))

    # -- nodes
    def _const_value(self, array: np.ndarray, hint: str) -> Value:
        node = self.module.const(array, name=self.graph.names.suggest(hint), inline_limit=INLINE_LIMIT)
        self.graph.append(node)
        return node.output

    def _import_node(self, n: onnx.NodeProto, gn: gs.Node | None, index: int) -> None:
        label = _node_label(n, index)
        if gn is None:
            raise ModelError(f"node '{label}' ({n.op_type}) was lost while reading the graph")
        raw = {k: _raw_attr(v) for k, v in gn.attrs.items()}
        if n.op_type == "Constant":
            self._import_constant(n, raw, label)
            return
        op = BY_ONNX[n.op_type]
        inputs = [self.values[x] if x else None for x in n.input]

        def fail(msg: str) -> Exception:
            return ModelError(f"node '{label}' ({n.op_type}): {msg}")

        n_outputs = len(n.output)
        while n_outputs and not n.output[n_outputs - 1]:
            n_outputs -= 1
        ctx = UpgradeCtx(self.opset, label, raw, inputs, lambda a: self._const_value(np.asarray(a), f"{label}_const"),
                         fail, n.op_type, n_outputs)
        if op.upgrade is not None:
            try:
                op.upgrade(ctx)
            except EffcError:
                raise
            except Exception as e:
                raise fail(f"cannot read this form of the op: {e}") from None
        attrs = _convert_attrs(op, ctx.attrs, fail)
        inputs = ctx.inputs
        while inputs and inputs[-1] is None:
            inputs.pop()
        self._check_arity(op, len(inputs), len(n.output), fail)
        out_names = list(n.output)
        while out_names and not out_names[-1]:
            out_names.pop()
        out_names = [x or self._unused_name(label, i) for i, x in enumerate(out_names)]
        node = Node(op.name, inputs, [TensorType(DType.f32, ())] * len(out_names), attrs,
                    output_names=out_names, loc=n.name or None)
        try:
            types = infer_types(node)
        except ShapeError as e:
            raise ModelError(f"node '{label}' ({n.op_type}): {_strip_node(str(e))}") from None
        for v, t in zip(node.outputs, types):
            v.type = t
        self.graph.append(node)
        for name, v in zip(out_names, node.outputs):
            self.values[name] = v
            if name in self.declared:
                self._refine(v, self.declared[name], f"value '{name}' of node '{label}' ({n.op_type})")

    def _import_constant(self, n: onnx.NodeProto, raw: dict[str, Any], label: str) -> None:
        if len(raw) != 1:
            raise ModelError(f"node '{label}' (Constant) must have exactly one value attribute, has {sorted(raw)}")
        key, val = next(iter(raw.items()))
        conv = {"value": lambda v: v, "value_float": lambda v: np.array(v, np.float32),
                "value_floats": lambda v: np.array(v, np.float32), "value_int": lambda v: np.array(v, np.int64),
                "value_ints": lambda v: np.array(v, np.int64)}
        if key not in conv:
            raise UnsupportedOpError([("Constant", label, f"attribute '{key}' (only numeric tensors are supported)")])
        arr = conv[key](val)
        if not isinstance(arr, np.ndarray) or arr.dtype == object:
            raise ModelError(f"node '{label}' (Constant): attribute '{key}' has the wrong type")
        DType.from_numpy(arr.dtype) if arr.dtype in [d.np for d in DType] else _tensor_dtype(-1, f"node '{label}'")
        if not n.output or not n.output[0]:
            raise ModelError(f"node '{label}' (Constant) has no output")
        node = self.module.const(arr, name=n.output[0], inline_limit=INLINE_LIMIT)
        node.loc = n.name or None
        self.graph.append(node)
        self.values[n.output[0]] = node.output

    def _unused_name(self, label: str, index: int) -> str:
        """A name for an output the model leaves unnamed (an unused optional output)."""
        return self.graph.names.suggest(f"{label}_unused{index}")

    @staticmethod
    def _check_arity(op: OpDef, n_in: int, n_out: int, fail: Any) -> None:
        lo, hi = op.min_inputs(), op.max_inputs()
        if n_in < lo or (hi is not None and n_in > hi):
            want = f"{lo}" if lo == hi else f"{lo} to {hi if hi is not None else 'any number of'}"
            raise fail(f"takes {want} inputs, got {n_in}")
        hi_o = op.max_outputs()
        if hi_o is not None and n_out > hi_o:
            raise fail(f"has at most {hi_o} outputs, got {n_out}")

    def _refine(self, v: Value, vi: onnx.ValueInfoProto, what: str) -> None:
        """Check a declared type against the inferred one; take declared names for unknown dims."""
        if not vi.type.HasField("tensor_type"):
            return
        tt = vi.type.tensor_type
        if tt.elem_type:
            declared = _tensor_dtype(tt.elem_type, what)
            if declared != v.type.dtype:
                raise ModelError(f"{what}: the model declares dtype {declared} but the op gives {v.type.dtype}")
        if not tt.HasField("shape"):
            return
        dims = tt.shape.dim
        if len(dims) != v.type.rank:
            raise ModelError(f"{what}: the model declares rank {len(dims)} but the op gives shape {list(v.type.shape)}")
        new = list(v.type.shape)
        for i, d in enumerate(dims):
            have = new[i]
            if d.HasField("dim_value"):
                if isinstance(have, int) and have != d.dim_value:
                    raise ModelError(f"{what}: the model declares shape "
                                     f"{[x.dim_value if x.HasField('dim_value') else x.dim_param for x in dims]} "
                                     f"but the op gives {list(v.type.shape)} (dim {i})")
                if not isinstance(have, int):
                    new[i] = int(d.dim_value)
            elif d.dim_param and have == UNKNOWN_DIM:
                new[i] = d.dim_param
        v.type = TensorType(v.type.dtype, tuple(new), v.type.quant)


def id_key(n: gs.Node) -> tuple:
    return (n.op, n.name, tuple(t.name for t in n.outputs))


def _proto_key(n: onnx.NodeProto) -> tuple:
    return (n.op_type, n.name, tuple(x for x in n.output))


def _strip_node(msg: str) -> str:
    return msg.split(": ", 1)[1] if msg.count(": ") and " node " in msg.split(": ", 1)[0] else msg


def _default_opset(proto: onnx.ModelProto) -> int:
    for o in proto.opset_import:
        if o.domain in ONNX_DOMAINS:
            return int(o.version)
    return 0


def _graph_name(name: str) -> str:
    return name or "main"


def _raw_attr(v: Any) -> Any:
    """gs attribute values → plain Python/numpy."""
    if isinstance(v, gs.Constant):
        return np.asarray(v.values)
    if isinstance(v, gs.Tensor):
        raise ValueError("tensor attribute without a value")
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, (list, tuple)):
        return [x.decode("utf-8", errors="replace") if isinstance(x, bytes) else x for x in v]
    return v


def _convert_attrs(op: OpDef, raw: dict[str, Any], fail: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        spec = op.attrs.get(k)
        if spec is None:
            raise fail(f"unknown attribute '{k}' (this op takes: {', '.join(sorted(op.attrs)) or 'none'})")
        out[k] = coerce_attr(spec.kind, v, lambda why, k=k: fail(f"attribute '{k}' {why}"))
    for k, spec in op.attrs.items():
        if spec.required and k not in out:
            raise fail(f"required attribute '{k}' is missing")
    return out


def coerce_attr(kind: str, v: Any, fail: Any) -> Any:
    """Check and convert one attribute value to the IR's representation of ``kind``."""

    def is_int(x: Any) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if kind == "int":
        if not is_int(v):
            raise fail(f"must be an int, got {type(v).__name__}")
        return int(v)
    if kind == "float":
        if not (is_int(v) or isinstance(v, (float, np.floating))):
            raise fail(f"must be a float, got {type(v).__name__}")
        return float(v)
    if kind == "str":
        if not isinstance(v, str):
            raise fail(f"must be a string, got {type(v).__name__}")
        return v
    if kind in ("ints", "floats", "strs"):
        if not isinstance(v, (list, tuple)):
            raise fail(f"must be a list, got {type(v).__name__}")
        item = kind[:-1]
        return tuple(coerce_attr(item, x, fail) for x in v)
    if kind == "tensor":
        if not isinstance(v, np.ndarray) or v.dtype == object:
            raise fail(f"must be a numeric tensor, got {type(v).__name__}")
        DType.from_numpy(v.dtype)
        return v
    if kind == "dtype":
        if isinstance(v, DType):
            return v
        if not is_int(v):
            raise fail(f"must be an ONNX dtype number, got {type(v).__name__}")
        return _tensor_dtype(int(v), "attribute")
    raise fail(f"has unknown kind {kind}")


def import_onnx(model: str | os.PathLike | onnx.ModelProto) -> Module:
    """Read an ONNX model (path or ModelProto) into an effc Module."""
    proto, base = load_onnx(model)
    check_text_fields(proto)
    return _Importer(proto, base).run()
