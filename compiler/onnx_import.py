"""ONNX → effc IR.

The model is read with ``onnx`` (external data stays on disk and is read lazily, only from
inside the model's folder), its opset and every attribute are checked by the ONNX checker's
rules, the graph is checked for structural faults (undefined or duplicate names, cycles),
and each node is mapped through the op registry:
the op's ``upgrade`` hook turns older opset forms into the IR's form, attributes are
checked against the op's schema, and output types come from the op's ``infer`` rule,
cross-checked against any shapes the model declares.

Every unsupported op in a model is listed in one ``UnsupportedOpError``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from effc.ir import ops as _ops  # noqa: F401  (fills the registry)
from effc.ir.core import Graph, Module, Node, Resource, Value
from effc.ir.errors import EffcError, ModelError, ShapeError, UnsupportedOpError
from effc.ir.opdef import BY_ONNX, OpDef, UpgradeCtx, infer_types, onnx_key
from effc.ir.types import UNKNOWN_DIM, DType, TensorType, tensor_nbytes

INLINE_LIMIT = 16
"""Constants with at most this many elements print inline; larger ones go to the weight store."""

ONNX_DOMAINS = ("", "ai.onnx")

NEWEST_OPSET = 28
"""The newest ONNX opset effc reads: the one its op forms and upgrade rules are checked
against (ONNX 1.23's node test suite). A newer opset may have changed an op's meaning."""


# ----------------------------------------------------------------------------- loading


def load_onnx(model: str | os.PathLike | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """Read a model without pulling external data into memory. Returns the proto and the
    model file's folder (None for a model given in memory)."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _parse_bytes(bytes(model)), None
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


def _parse_bytes(data: bytes) -> onnx.ModelProto:
    """A ModelProto from serialized bytes, with effc's error for anything unreadable."""
    try:
        proto = onnx.ModelProto.FromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise ModelError(f"the model bytes are not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not proto.HasField("graph"):
        raise ModelError("the model bytes are not an ONNX model (no graph)")
    return proto


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


# ----------------------------------------------------------------------------- tensors and external data


@dataclass(frozen=True)
class _Source:
    """Where a model came from. External data is read only from files inside ``folder``
    (the model file's folder, symlinks resolved); a model given as a ModelProto or bytes
    has no folder, so it cannot have external data."""

    label: str
    folder: Path | None


def _tensor_shape(t: onnx.TensorProto, itemsize: int, what: str) -> tuple[int, ...]:
    """The tensor's dims, refused when negative or when their byte size overflows int64."""
    shape = tuple(int(d) for d in t.dims)
    try:
        tensor_nbytes(shape, itemsize)
    except ValueError as e:
        raise ModelError(f"{what}: {e}; the model is corrupted") from None
    return shape


def _external_file(t: onnx.TensorProto, src: _Source, what: str) -> tuple[Path, int, int]:
    """The checked ``(file, offset, byte count)`` of a tensor stored outside the model.

    The location must be a relative path without ``..`` that resolves (symlinks followed)
    to a regular file inside the model's folder; offset and length must be whole numbers
    that fit the file and the tensor's shape. Nothing is resolved against the current
    directory, and onnx's own ``basepath`` key is ignored."""
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    where = f"{what} (tensor '{t.name}') of {src.label}"
    if not loc:
        raise ModelError(f"{where}: stored in an external file but has no 'location' entry")
    if src.folder is None:
        raise ModelError(f"{where}: its data is in the external file '{loc}', but the model was given in "
                         "memory (a ModelProto or bytes), so there is no folder to read it from; pass the "
                         "model's path instead, or load the data first with "
                         "onnx.load_external_data_for_model(model, folder)")
    _check_location(loc, src.folder, where)
    try:
        real = (src.folder / loc).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
        raise ModelError(f"{where}: external data file '{loc}' not found in the model's folder {src.folder}") from None
    if not real.is_relative_to(src.folder):
        raise ModelError(f"{where}: external data file '{loc}' is a link that escapes the model's folder "
                         f"{src.folder} (to {real}); refused: put the data itself next to the model")
    try:
        regular, size = real.is_file(), real.stat().st_size
    except OSError as e:
        raise ModelError(f"{where}: cannot read external data file '{loc}' ({e.strerror})") from None
    if not regular:
        raise ModelError(f"{where}: external data '{loc}' is not a regular file")
    dtype = _tensor_dtype(t.data_type, what)
    nbytes = math.prod(_tensor_shape(t, dtype.itemsize, where)) * dtype.itemsize
    offset = _byte_count(info, "offset", 0, where)
    length = _byte_count(info, "length", nbytes, where)
    if length != nbytes:
        raise ModelError(f"{where}: external data length {length} does not match its shape "
                         f"{list(t.dims)} of {dtype} ({nbytes} bytes)")
    if offset + nbytes > size:
        raise ModelError(f"{where}: external data needs bytes {offset} to {offset + nbytes} of '{loc}', "
                         f"but the file has {size}")
    return real, offset, nbytes


def _check_location(loc: str, folder: Path, where: str) -> None:
    """Refuse locations that name a place outside the folder before touching the disk."""
    posix, win = PurePosixPath(loc), PureWindowsPath(loc)
    if posix.is_absolute() or win.anchor:
        raise ModelError(f"{where}: external data location '{loc}' is an absolute path and escapes "
                         f"the model's folder {folder}; refused: locations are relative to the model's folder")
    if ".." in posix.parts or ".." in win.parts:
        raise ModelError(f"{where}: external data location '{loc}' uses '..' and escapes the model's folder "
                         f"{folder}; refused: keep the data file in the model's folder")


def _byte_count(info: dict[str, str], key: str, default: int, where: str) -> int:
    """An ``offset`` or ``length`` entry: decimal digits only (``int()`` would take '-64',
    '+5', ' 7' or '1_0')."""
    if key not in info:
        return default
    v = info[key]
    if not (v.isascii() and v.isdigit()):
        raise ModelError(f"{where}: external data {key} {v!r} is not a non-negative whole number of bytes")
    return int(v)


def _external_loader(t: onnx.TensorProto, src: _Source, what: str) -> Any:
    """A lazy loader (memory-mapped) for a tensor stored outside the model file. The file
    is checked now, and checked again when the data is read."""
    _external_file(t, src, what)
    if _tensor_dtype(t.data_type, what).bits < 8:
        raise ModelError(f"{what} (tensor '{t.name}'): 4-bit tensors in external data are not supported; "
                         "save the model with its weights inside (onnx.save(model, path))")
    dtype = _tensor_dtype(t.data_type, what).np
    shape = tuple(int(d) for d in t.dims)

    def load() -> np.ndarray:
        path, offset, nbytes = _external_file(t, src, what)
        if nbytes == 0:
            return np.zeros(shape, dtype)
        try:
            data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(nbytes // dtype.itemsize,))
        except OSError as e:
            raise ModelError(f"{what} (tensor '{t.name}'): cannot read external data file '{path}' ({e})") from None
        return data.reshape(shape)

    return load


def _inline_loader(t: onnx.TensorProto, src: _Source, what: str) -> Any:
    """A loader for a tensor held in the model file; the amount of data is checked now,
    against the shape, so a corrupted shape is refused before anything is decoded."""
    dtype = _tensor_dtype(t.data_type, what)
    shape = _tensor_shape(t, dtype.itemsize, what)
    numel = math.prod(shape)
    stored = -(-numel * dtype.bits // 8)  # int4: two to a byte (and to an int32_data value)
    if t.HasField("raw_data"):
        held, need, unit = len(t.raw_data), stored, "bytes of raw_data"
    else:
        field = onnx.helper.tensor_dtype_to_field(t.data_type)
        held, need, unit = len(getattr(t, field)), numel if dtype.bits >= 8 else stored, f"values in {field}"
    if held != need:
        raise ModelError(f"{what} (tensor '{t.name}'): its shape {list(shape)} of {dtype} needs {need} {unit}, "
                         f"it holds {held}; the model is corrupted")

    def load() -> np.ndarray:
        try:
            return np.asarray(numpy_helper.to_array(t)).astype(dtype.np, copy=False)
        except Exception as e:  # a form numpy_helper cannot read
            raise ModelError(f"{what} (tensor '{t.name}'): cannot decode its data ({type(e).__name__}: {e})") from None

    return load


def _tensor_loader(t: onnx.TensorProto, src: _Source, what: str) -> Any:
    """A zero-argument loader for any tensor of the model, wherever its data lives."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        if any(len(getattr(t, f)) for f in _DATA_FIELDS):
            raise ModelError(f"{what} (tensor '{t.name}') is stored externally but also holds data in the "
                             "model file; the model is corrupted")
        return _external_loader(t, src, what)
    return _inline_loader(t, src, what)


_DATA_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "raw_data", "double_data", "uint64_data")


def _check_external_data(proto: onnx.ModelProto, src: _Source) -> None:
    """Check every external-data reference in the model (initializers, sparse tensors,
    tensors in attributes, subgraphs, functions) before anything is imported, so a
    reference out of the model's folder is refused even where effc would not read it."""
    for t, path in _tensors_in(proto, "model"):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            _external_file(t, src, path)


def _tensors_in(msg: Any, path: str) -> Iterable[tuple[onnx.TensorProto, str]]:
    """Every TensorProto under ``msg``, with the field path that leads to it."""
    from google.protobuf.descriptor import FieldDescriptor

    for field, value in msg.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        items = value if field.is_repeated else [value]
        for i, v in enumerate(items):
            name = getattr(v, "name", "")
            label = f"[{name!r}]" if isinstance(name, str) and name else (f"[{i}]" if field.is_repeated else "")
            sub = f"{path}.{field.name}{label}"
            if isinstance(v, onnx.TensorProto):
                yield v, sub
            else:
                yield from _tensors_in(v, sub)


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
    def __init__(self, proto: onnx.ModelProto, src: _Source):
        self.proto = proto
        self.src = src
        self.opset = _onnx_opset(proto, src.label)
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
        for i, n in enumerate(order):
            self._import_node(n, i)
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
            if n.domain not in ONNX_DOMAINS and onnx_key(n.domain, n.op_type) not in BY_ONNX:
                bad.append((f"{n.domain}::{n.op_type}", label, "operator from a custom domain"))
            elif n.domain in ONNX_DOMAINS and n.op_type != "Constant" and n.op_type not in BY_ONNX:
                bad.append((n.op_type, label, ""))
        if bad:
            raise UnsupportedOpError(bad)
        # Opsets before 7 import when every op's legacy form has an upgrade rule; an op
        # without one reports the form it cannot read.

    # -- inputs and initializers
    def _import_inputs(self, g: onnx.GraphProto) -> None:
        inits = {t.name for t in g.initializer}
        for t in g.initializer:
            node = self._tensor_const(t, t.name, f"initializer '{t.name}'")
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
        try:  # the known dims alone must fit in memory
            tensor_nbytes([d for d in dims if isinstance(d, int)], dtype.itemsize)
        except ValueError as e:
            raise ModelError(f"{what}: {e}; the model is corrupted") from None
        return TensorType(dtype, tuple(dims))

    def _tensor_const(self, t: onnx.TensorProto, name: str, what: str) -> Node:
        """A ``const`` node for a TensorProto: small inline data is decoded now, the rest
        (and all external data) is read lazily through the weight store."""
        dtype = _tensor_dtype(t.data_type, what)
        loader = _tensor_loader(t, self.src, what)
        shape = tuple(int(d) for d in t.dims)
        if math.prod(shape) <= INLINE_LIMIT and t.data_location != onnx.TensorProto.EXTERNAL:
            value: Any = loader()
        else:
            key = self.module.weights.unique_key(name)
            value = Resource(self.module.weights.add(key, loader), self.module.weights)
        return Node("const", [], [TensorType(dtype, shape)], {"value": value}, output_names=[name])

    # -- nodes
    def _const_value(self, array: np.ndarray, hint: str) -> Value:
        node = self.module.const(array, name=self.graph.names.suggest(hint), inline_limit=INLINE_LIMIT)
        self.graph.append(node)
        return node.output

    def _import_node(self, n: onnx.NodeProto, index: int) -> None:
        label = _node_label(n, index)
        where = f"node '{label}' ({n.op_type})"
        attrs = _attributes(n, where)
        if n.op_type == "Constant":
            self._import_constant(n, attrs, label)
            return
        raw = {k: self._attr_value(a, kind, f"{where} attribute '{k}'") for k, (a, kind) in attrs.items()}
        op = BY_ONNX[onnx_key(n.domain, n.op_type)]
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

    def _attr_value(self, a: onnx.AttributeProto, kind: int, what: str) -> Any:
        """An attribute's value as plain Python/numpy; tensors are decoded (read from inside
        the model's folder when external)."""
        A = onnx.AttributeProto
        if kind == A.TENSOR:
            return np.array(_tensor_loader(a.t, self.src, what)())
        if kind == A.TENSORS:
            return [np.array(_tensor_loader(t, self.src, f"{what}[{i}]")()) for i, t in enumerate(a.tensors)]
        return _plain_attr_value(a, kind, what)

    def _import_constant(self, n: onnx.NodeProto, attrs: dict[str, tuple[onnx.AttributeProto, int]],
                         label: str) -> None:
        if len(attrs) != 1:
            raise ModelError(f"node '{label}' (Constant) must have exactly one value attribute, has {sorted(attrs)}")
        if not n.output or not n.output[0]:
            raise ModelError(f"node '{label}' (Constant) has no output")
        key, (a, kind) = next(iter(attrs.items()))
        what = f"node '{label}' (Constant) attribute '{key}'"
        kinds = {"value": onnx.AttributeProto.TENSOR, "value_float": onnx.AttributeProto.FLOAT,
                 "value_floats": onnx.AttributeProto.FLOATS, "value_int": onnx.AttributeProto.INT,
                 "value_ints": onnx.AttributeProto.INTS}
        if key not in kinds:
            raise UnsupportedOpError([("Constant", label, f"attribute '{key}' (only numeric tensors are supported)")])
        if kind != kinds[key]:
            raise ModelError(f"{what} must be {onnx.AttributeProto.AttributeType.Name(kinds[key])}, "
                             f"is {onnx.AttributeProto.AttributeType.Name(kind)}")
        if key == "value":
            node = self._tensor_const(a.t, n.output[0], what)
        else:
            arr = np.array(_plain_attr_value(a, kind, what), np.float32 if "float" in key else np.int64)
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
                if d.dim_value < 0:
                    raise ModelError(f"{what}: the model declares a negative dimension {d.dim_value}")
                if isinstance(have, int) and have != d.dim_value:
                    raise ModelError(f"{what}: the model declares shape "
                                     f"{[x.dim_value if x.HasField('dim_value') else x.dim_param for x in dims]} "
                                     f"but the op gives {list(v.type.shape)} (dim {i})")
                if not isinstance(have, int):
                    new[i] = int(d.dim_value)
            elif d.dim_param and have == UNKNOWN_DIM:
                new[i] = d.dim_param
        v.type = TensorType(v.type.dtype, tuple(new), v.type.quant)


def _strip_node(msg: str) -> str:
    return msg.split(": ", 1)[1] if msg.count(": ") and " node " in msg.split(": ", 1)[0] else msg


def _onnx_opset(proto: onnx.ModelProto, model: str) -> int:
    """The model's ONNX opset, by the ONNX checker's rules: IR version 3 on must import the
    ONNX domain, IR versions 1 and 2 have no imports and mean opset 1. Unlike the checker,
    an opset newer than NEWEST_OPSET is refused: effc cannot know what its ops mean."""
    found = sorted({int(o.version) for o in proto.opset_import if o.domain in ONNX_DOMAINS})
    if len(found) > 1:
        raise ModelError(f"{model} imports the ONNX operator set twice, as opsets {found}; keep one "
                         "opset_import entry for the domain ''")
    if not found:
        if not proto.opset_import and 1 <= proto.ir_version < 3:
            return 1
        if proto.opset_import and not any(n.domain in ONNX_DOMAINS for n in proto.graph.node):
            return 0  # only custom-domain ops: they are reported as unsupported
        raise ModelError(f"{model} has no opset_import for the ONNX domain '' (required from IR version 3), so "
                         "effc cannot tell which version of each operator it uses; add the opset it was exported "
                         f"at, e.g. model.opset_import.append(onnx.helper.make_opsetid('', 17)) "
                         f"(effc reads opsets 1 to {NEWEST_OPSET})")
    version = found[0]
    if version < 1:
        raise ModelError(f"{model} imports ONNX opset {version}, which does not exist (ONNX opsets start at 1); "
                         f"set its opset_import to the opset it was exported at (effc reads opsets 1 to {NEWEST_OPSET})")
    if version > NEWEST_OPSET:
        raise ModelError(f"{model} imports ONNX opset {version}, newer than effc knows (effc reads opsets 1 to "
                         f"{NEWEST_OPSET}; an op may mean something else in a newer one): re-export the model at "
                         f"opset {NEWEST_OPSET} or lower, e.g. torch.onnx.export(..., opset_version=21)")
    return version


def _graph_name(name: str) -> str:
    return name or "main"


_A = onnx.AttributeProto
_ATTR_FIELDS = (("f", _A.FLOAT), ("i", _A.INT), ("s", _A.STRING), ("t", _A.TENSOR), ("g", _A.GRAPH),
                ("sparse_tensor", _A.SPARSE_TENSOR), ("tp", _A.TYPE_PROTO))
_ATTR_LISTS = (("floats", _A.FLOATS), ("ints", _A.INTS), ("strings", _A.STRINGS), ("tensors", _A.TENSORS),
               ("graphs", _A.GRAPHS), ("sparse_tensors", _A.SPARSE_TENSORS), ("type_protos", _A.TYPE_PROTOS))


def _attributes(n: onnx.NodeProto, where: str) -> dict[str, tuple[onnx.AttributeProto, int]]:
    """The node's attributes by name with their types, checked as the ONNX checker does: a
    name, given once, a type, and at most one value field, the one the type names. An
    attribute the checker refuses would otherwise be skipped or misread."""
    out: dict[str, tuple[onnx.AttributeProto, int]] = {}
    for a in n.attribute:
        if not a.name:
            raise ModelError(f"{where} has an attribute without a name; the model is corrupted")
        what = f"{where} attribute '{a.name}'"
        if a.name in out:
            raise ModelError(f"{what} is given twice; keep one")
        if a.ref_attr_name:
            raise ModelError(f"{what} refers to the function attribute '{a.ref_attr_name}', which only a node "
                             "inside a function body may do")
        used = [k for f, k in _ATTR_FIELDS if a.HasField(f)] + [k for f, k in _ATTR_LISTS if len(getattr(a, f))]
        if len(used) > 1:
            raise ModelError(f"{what} holds more than one value ({', '.join(_A.AttributeType.Name(k) for k in used)}); "
                             "the model is corrupted")
        kind = a.type
        if kind == _A.UNDEFINED:
            raise ModelError(f"{what} has no type (AttributeProto.type is unset; the ONNX checker refuses "
                             "this); re-export the model, or rebuild the attribute with onnx.helper.make_attribute")
        if used and used[0] != kind:
            raise ModelError(f"{what} is declared {_A.AttributeType.Name(kind)} but holds a "
                             f"{_A.AttributeType.Name(used[0])}; the model is corrupted")
        out[a.name] = (a, kind)
    return out


def _plain_attr_value(a: onnx.AttributeProto, kind: int, what: str) -> Any:
    """A non-tensor attribute value as plain Python: numbers, str, lists of them. Graphs,
    sparse tensors and type protos come back as their protos (no effc op takes them)."""

    def text(b: bytes) -> str:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"{what} is not valid UTF-8 text ({b[:40]!r}); the model is corrupted") from None

    plain = {_A.FLOAT: lambda: float(a.f), _A.INT: lambda: int(a.i), _A.STRING: lambda: text(a.s),
             _A.FLOATS: lambda: [float(x) for x in a.floats], _A.INTS: lambda: [int(x) for x in a.ints],
             _A.STRINGS: lambda: [text(x) for x in a.strings]}
    if kind in plain:
        return plain[kind]()
    field = {k: f for f, k in _ATTR_FIELDS + _ATTR_LISTS}[kind]
    return getattr(a, field)


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


def import_onnx(model: str | os.PathLike | bytes | onnx.ModelProto) -> Module:
    """Read an ONNX model (path, serialized bytes or ModelProto) into an effc Module."""
    proto, folder = load_onnx(model)
    check_text_fields(proto)
    src = _Source(f"model {os.fspath(model)}" if folder is not None else "the in-memory model",
                  folder.resolve() if folder is not None else None)
    _check_external_data(proto, src)
    return _Importer(proto, src).run()
