"""Write TFLite flatbuffers for ``tflm_arena.py``, without TensorFlow.

Two tools, both on the flatbuffers object API (``ModelT``, ``InitFromObj``/``Pack``) of the
schema module the ``tflite-micro`` package ships:

- ``fp16_to_fp32(tflite_bytes)``: MediaPipe models store weights as fp16 constants read by
  DEQUANTIZE ops, which TFLite Micro cannot run on floats; this stores those weights as fp32
  constants and drops the DEQUANTIZE ops (their consumers read the fp32 tensor).
- ``onnx_to_tflite(model)``: a small fp32 ONNX -> TFLite exporter for the fixture CNNs, in
  TFLite's NHWC layout. It does what TFLite's converter does to such a graph: BatchNormalization
  and bias Adds fold into the convolution or fully connected layer before them, and Relu and
  Clip(0, 6) fuse into the op before them as its fused activation (when it is that op's only
  consumer). Ops: Conv (dense and depthwise), Gemm/MatMul with constant weights, Add, Relu,
  Clip(0, 6), MaxPool, AveragePool, GlobalAveragePool, BatchNormalization, Reshape/Flatten
  (to 2-D), Softmax, Identity/Dropout, and any node whose inputs are all constant (folded
  with ``onnx.reference``). ONNX padding that TFLite's SAME does not express (PyTorch's
  symmetric pads under stride 2) becomes an explicit PAD op and VALID, as in converted
  PyTorch models. A 4-D tensor flattened for a fully connected layer keeps TFLite's
  (H, W, C) order and the layer's weight columns are permuted to match.

Constant buffers are 16-byte aligned, as TFLite's converter writes them.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import flatbuffers
import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

OP = schema.BuiltinOperator
OPTIONS = schema.BuiltinOptions
ACT = schema.ActivationFunctionType
_FUSABLE = {OP.CONV_2D, OP.DEPTHWISE_CONV_2D, OP.FULLY_CONNECTED, OP.ADD}


class ExportError(ValueError):
    """The ONNX model uses an op or an attribute this exporter does not handle."""


class _AlignedBufferT(schema.BufferT):
    """A buffer whose bytes start on a 16-byte boundary (``BufferT.Pack`` aligns to 1)."""

    def Pack(self, builder: flatbuffers.Builder) -> int:
        data = None
        if self.data is not None:
            payload = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(payload), 16)
            builder.head -= len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            data = builder.EndVector(len(payload))
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        return schema.BufferEnd(builder)


def load_model(tflite_bytes: bytes) -> schema.ModelT:
    """The object-API form of a .tflite flatbuffer."""
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(tflite_bytes), 0))


def pack_model(model: schema.ModelT) -> bytes:
    """Serialize ``model`` with the ``TFL3`` identifier and 16-byte aligned buffers."""
    model.buffers = [_AlignedBufferT(data=b.data) if b.data is not None else schema.BufferT()
                     for b in model.buffers]
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def builtin_code(opcode: schema.OperatorCodeT) -> int:
    """An operator code's builtin op (``deprecatedBuiltinCode`` holds it in old files)."""
    return max(opcode.builtinCode, opcode.deprecatedBuiltinCode)


def fp16_to_fp32(tflite_bytes: bytes) -> bytes:
    """Rewrite fp16 constant weights as fp32 and remove the DEQUANTIZE ops that read them.

    Each DEQUANTIZE whose input is a constant FLOAT16 tensor is dropped; its output tensor gets
    the fp32 values as its own constant buffer, so the consumers are unchanged. Tensors,
    buffers and operator codes no longer used are removed. A model without such ops comes
    back unchanged in content.
    """
    model = load_model(tflite_bytes)
    for graph in model.subgraphs:
        kept = []
        for op in graph.operators or []:
            if builtin_code(model.operatorCodes[op.opcodeIndex]) == OP.DEQUANTIZE:
                src = graph.tensors[op.inputs[0]]
                data = model.buffers[src.buffer].data
                if src.type == schema.TensorType.FLOAT16 and data is not None:
                    values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), "<f2").astype("<f4")
                    model.buffers.append(schema.BufferT(data=np.frombuffer(values.tobytes(), np.uint8)))
                    graph.tensors[op.outputs[0]].buffer = len(model.buffers) - 1
                    continue
            kept.append(op)
        graph.operators = kept
    _drop_unused(model)
    return pack_model(model)


def _drop_unused(model: schema.ModelT) -> None:
    """Remove tensors no operator, graph boundary or signature uses, then buffers no tensor or
    metadata uses, then unused opcodes; every index into them is renumbered."""
    renumbered = []
    for index, graph in enumerate(model.subgraphs):
        signed = {t.tensorIndex for sig in model.signatureDefs or [] if sig.subgraphIndex == index
                  for t in [*(sig.inputs or []), *(sig.outputs or [])]}
        used = sorted({i for op in graph.operators for i in [*op.inputs, *op.outputs] if i >= 0}
                      | set(graph.inputs) | set(graph.outputs) | signed)
        new = {old: n for n, old in enumerate(used)}
        graph.tensors = [graph.tensors[i] for i in used]
        for op in graph.operators:
            op.inputs = [new[i] if i >= 0 else i for i in op.inputs]
            op.outputs = [new[i] for i in op.outputs]
        graph.inputs = [new[i] for i in graph.inputs]
        graph.outputs = [new[i] for i in graph.outputs]
        renumbered.append(new)
    for sig in model.signatureDefs or []:
        for t in [*(sig.inputs or []), *(sig.outputs or [])]:
            t.tensorIndex = renumbered[sig.subgraphIndex][t.tensorIndex]
    # buffer 0 is the empty sentinel every non-constant tensor points at
    metadata = [*(model.metadataBuffer if model.metadataBuffer is not None else []),
                *(m.buffer for m in model.metadata or [])]
    used = sorted({0, *metadata} | {t.buffer for g in model.subgraphs for t in g.tensors})
    new = {old: n for n, old in enumerate(used)}
    model.buffers = [model.buffers[i] for i in used]
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            tensor.buffer = new[tensor.buffer]
    if model.metadataBuffer is not None:
        model.metadataBuffer = [new[i] for i in model.metadataBuffer]
    for entry in model.metadata or []:
        entry.buffer = new[entry.buffer]
    used = sorted({op.opcodeIndex for g in model.subgraphs for op in g.operators})
    new = {old: n for n, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for graph in model.subgraphs:
        for op in graph.operators:
            op.opcodeIndex = new[op.opcodeIndex]


def onnx_to_tflite(model: onnx.ModelProto | str | Path) -> bytes:
    """Export an fp32 ONNX CNN (batch 1; symbolic dims are set to 1) as a .tflite flatbuffer.

    Graph inputs and 4-D outputs are NHWC in the result. Raises ``ExportError`` for anything
    outside the ops listed in the module docstring.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    return _Exporter(model).run()


class _Exporter:
    """One ONNX graph's export; ``run`` walks the nodes in order and packs the result."""

    def __init__(self, model: onnx.ModelProto) -> None:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for value in [*model.graph.input, *model.graph.output]:
            for dim in value.type.tensor_type.shape.dim:
                if not dim.HasField("dim_value"):
                    dim.dim_value = 1
        self.model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        graph = self.model.graph
        self.opset = next(o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx"))
        self.shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                       for v in [*graph.input, *graph.value_info, *graph.output]}
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.uses = Counter(name for node in graph.node for name in node.input)
        self.uses.update(o.name for o in graph.output)
        self.tensors: list[schema.TensorT] = []
        self.data: dict[int, np.ndarray] = {}
        self.ops: list[schema.OperatorT] = []
        self.opcodes: dict[int, int] = {}
        self.names: dict[str, int] = {}
        self.producer: dict[int, tuple[schema.OperatorT, int]] = {}
        self.flat_hwc: dict[str, tuple[int, int, int]] = {}

    # -- tensors ---------------------------------------------------------------------------

    def _tensor(self, name: str, shape: list[int], dtype: int = schema.TensorType.FLOAT32) -> int:
        self.tensors.append(schema.TensorT(shape=list(shape), type=dtype, name=name))
        return len(self.tensors) - 1

    def const(self, name: str, value: np.ndarray) -> int:
        """A new constant tensor holding ``value``: int32 for integers, else float32 (cast when packed)."""
        dtype = schema.TensorType.INT32 if value.dtype.kind in "iu" else schema.TensorType.FLOAT32
        index = self._tensor(name, value.shape, dtype)
        self.data[index] = value
        return index

    def activation(self, name: str) -> int:
        """The tensor for ONNX value ``name``, made on first use (4-D shapes become NHWC)."""
        if name not in self.names:
            shape = self.shapes[name]
            self.names[name] = self._tensor(name, _nhwc(shape) if len(shape) == 4 else shape)
        return self.names[name]

    def alias(self, name: str, index: int) -> None:
        """Let ONNX value ``name`` be tensor ``index`` (a fused or no-op node's output)."""
        self.names[name] = index
        self.tensors[index].name = name

    def _operand(self, name: str, like: str) -> int:
        """An Add operand: an activation, or a constant laid out like activation ``like``."""
        if name not in self.consts:
            return self.activation(name)
        value = self.consts[name]
        if len(self.shapes[like]) == 4:
            value = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(0, 2, 3, 1)
        return self.const(name, value)

    # -- operators -------------------------------------------------------------------------

    def emit(self, code: int, inputs: list[int], outputs: list[int], options_type: int = 0,
             options: object = None) -> schema.OperatorT:
        op = schema.OperatorT(opcodeIndex=self.opcodes.setdefault(code, len(self.opcodes)),
                              inputs=inputs, outputs=outputs, builtinOptionsType=options_type,
                              builtinOptions=options)
        self.ops.append(op)
        if code in _FUSABLE:
            self.producer[outputs[0]] = (op, code)
        return op

    def _fusable(self, name: str) -> tuple[schema.OperatorT | None, int | None]:
        """The op producing ``name`` and its code, if ``name`` has no other consumer and the op
        no fused activation yet; else (None, None)."""
        op, code = self.producer.get(self.names.get(name, -1), (None, None))
        if op is None or self.uses[name] != 1 or op.builtinOptions.fusedActivationFunction != ACT.NONE:
            return None, None
        return op, code

    def run(self) -> bytes:
        graph = self.model.graph
        for node in graph.node:
            if any(i in self.flat_hwc for i in node.input) and node.op_type not in ("Gemm", "MatMul"):
                raise ExportError(f"node {_where(node)}: {node.op_type} of a flattened 4-D tensor")
            if node.op_type == "Constant" or (node.input and all(i in self.consts for i in node.input if i)):
                self._fold(node)
                continue
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is None:
                raise ExportError(f"node {_where(node)}: ONNX op {node.op_type} is not supported")
            handler(node, _attributes(node))
        inputs = [self.activation(v.name) for v in graph.input if v.name not in self.consts]
        if any(v.name in self.flat_hwc for v in graph.output):
            raise ExportError("a graph output is a flattened 4-D tensor (its order would differ)")
        outputs = [self.names[v.name] for v in graph.output]
        return self._pack(inputs, outputs)

    def _fold(self, node: onnx.NodeProto) -> None:
        """Evaluate a node whose inputs are all constant (Constant, a weight Reshape, ...)."""
        feeds = {i: self.consts[i] for i in node.input if i}
        sub = onnx.helper.make_graph(
            [node], "fold", [], [onnx.helper.make_value_info(o, onnx.TypeProto()) for o in node.output],
            initializer=[numpy_helper.from_array(v, k) for k, v in feeds.items()])
        model = onnx.helper.make_model(sub, opset_imports=[onnx.helper.make_opsetid("", self.opset)])
        self.consts.update(zip(node.output, ReferenceEvaluator(model).run(None, {})))

    def _pack(self, inputs: list[int], outputs: list[int]) -> bytes:
        buffers = [schema.BufferT()]
        for index, tensor in enumerate(self.tensors):
            if index in self.data:
                tensor.buffer = len(buffers)
                dtype = np.int32 if tensor.type == schema.TensorType.INT32 else np.float32
                buffers.append(schema.BufferT(data=np.frombuffer(self.data[index].astype(dtype).tobytes(), np.uint8)))
        codes = sorted(self.opcodes, key=self.opcodes.get)
        model = schema.ModelT(
            version=3,
            operatorCodes=[schema.OperatorCodeT(builtinCode=c, deprecatedBuiltinCode=min(c, 127), version=1)
                           for c in codes],
            subgraphs=[schema.SubGraphT(tensors=self.tensors, inputs=inputs, outputs=outputs,
                                        operators=self.ops, name="main")],
            description="bench/tflite_export.py", buffers=buffers)
        _drop_unused(model)
        return pack_model(model)

    # -- padding ---------------------------------------------------------------------------

    def _padding(self, node: onnx.NodeProto, attrs: dict, x: int, kernel: list[int], strides: list[int],
                 dilations: list[int]) -> tuple[int, int]:
        """TFLite padding for a conv or pool: (SAME or VALID, input tensor), with a PAD op
        in front when the ONNX pads are neither."""
        same = []  # TFLite SAME: (before, after) per spatial axis, the odd pixel after
        for size, k, s, d in zip(self.shapes[node.input[0]][2:], kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            same.append((total // 2, total - total // 2))
        auto = attrs.get("auto_pad", b"NOTSET").decode()
        if auto == "SAME_UPPER":
            pairs = same
        elif auto == "SAME_LOWER":
            pairs = [pair[::-1] for pair in same]
        elif auto == "VALID":
            pairs = [(0, 0), (0, 0)]
        else:
            pads = attrs.get("pads", [0, 0, 0, 0])
            pairs = list(zip(pads[:2], pads[2:]))
        if pairs == [(0, 0), (0, 0)]:
            return schema.Padding.VALID, x
        if pairs == same:
            return schema.Padding.SAME, x
        if node.op_type != "Conv":
            raise ExportError(f"node {_where(node)}: {node.op_type} pads {pairs} are not TFLite SAME or VALID")
        n, h, w, c = self.tensors[x].shape
        padded = self._tensor(f"{node.output[0]}/pad", [n, h + sum(pairs[0]), w + sum(pairs[1]), c])
        paddings = self.const(f"{node.output[0]}/paddings", np.array([[0, 0], *pairs, [0, 0]]))
        self.emit(OP.PAD, [x, paddings], [padded], OPTIONS.PadOptions, schema.PadOptionsT())
        return schema.Padding.VALID, padded

    # -- ops -------------------------------------------------------------------------------

    def _op_Conv(self, node: onnx.NodeProto, attrs: dict) -> None:
        x = self.activation(node.input[0])
        weight = self.consts[node.input[1]].astype(np.float32)
        out_c, in_per_group = weight.shape[:2]
        bias = (self.consts[node.input[2]] if len(node.input) > 2 and node.input[2]
                else np.zeros(out_c, np.float32))
        group = attrs.get("group", 1)
        strides = attrs.get("strides", [1, 1])
        dilations = attrs.get("dilations", [1, 1])
        padding, x = self._padding(node, attrs, x, list(weight.shape[2:]), strides, dilations)
        common = {"padding": padding, "strideH": strides[0], "strideW": strides[1],
                  "dilationHFactor": dilations[0], "dilationWFactor": dilations[1]}
        y = self.activation(node.output[0])
        if group == 1:
            w = self.const(node.input[1], weight.transpose(0, 2, 3, 1))
            self.emit(OP.CONV_2D, [x, w, self.const(f"{node.output[0]}/bias", bias)], [y],
                      OPTIONS.Conv2DOptions, schema.Conv2DOptionsT(**common))
        elif in_per_group == 1 and group == self.tensors[x].shape[3]:
            w = self.const(node.input[1], weight.transpose(1, 2, 3, 0))
            self.emit(OP.DEPTHWISE_CONV_2D, [x, w, self.const(f"{node.output[0]}/bias", bias)], [y],
                      OPTIONS.DepthwiseConv2DOptions,
                      schema.DepthwiseConv2DOptionsT(depthMultiplier=out_c // group, **common))
        else:
            raise ExportError(f"node {_where(node)}: grouped Conv (group={group}) that is not depthwise")

    def _op_BatchNormalization(self, node: onnx.NodeProto, attrs: dict) -> None:
        op, code = self._fusable(node.input[0])
        if code not in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D):
            raise ExportError(f"node {_where(node)}: BatchNormalization not after a Conv it can fold into")
        gamma, beta, mean, var = (self.consts[i] for i in node.input[1:5])
        scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
        w, b = op.inputs[1], op.inputs[2]
        # output channels: axis 0 of CONV_2D weights [O, kh, kw, I], 3 of DEPTHWISE [1, kh, kw, O]
        shape = [-1, 1, 1, 1] if code == OP.CONV_2D else [1, 1, 1, -1]
        self.data[w] = self.data[w] * scale.reshape(shape)
        self.data[b] = (self.data[b] - mean) * scale + beta
        self.alias(node.output[0], op.outputs[0])

    def _op_Gemm(self, node: onnx.NodeProto, attrs: dict) -> None:
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise ExportError(f"node {_where(node)}: Gemm with transA, alpha or beta")
        weight = self.consts[node.input[1]]
        weight = weight if attrs.get("transB", 0) else weight.T
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        self._fully_connected(node, weight, self.consts[bias] if bias else None)

    def _op_MatMul(self, node: onnx.NodeProto, attrs: dict) -> None:
        if node.input[1] not in self.consts or len(self.shapes[node.input[0]]) != 2:
            raise ExportError(f"node {_where(node)}: MatMul other than 2-D activations by constant weights")
        self._fully_connected(node, self.consts[node.input[1]].T, None)

    def _fully_connected(self, node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None) -> None:
        """FULLY_CONNECTED with ``weight`` as [out, in]; columns follow a flattened NHWC input."""
        if node.input[0] in self.flat_hwc:
            c, h, w = self.flat_hwc[node.input[0]]
            weight = weight[:, np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()]
        n = weight.shape[0]
        bias = np.zeros(n, np.float32) if bias is None else np.broadcast_to(bias, (1, n)).reshape(n)
        inputs = [self.activation(node.input[0]), self.const(node.input[1], weight),
                  self.const(f"{node.output[0]}/bias", bias)]
        self.emit(OP.FULLY_CONNECTED, inputs, [self.activation(node.output[0])],
                  OPTIONS.FullyConnectedOptions, schema.FullyConnectedOptionsT())

    def _op_Add(self, node: onnx.NodeProto, attrs: dict) -> None:
        a, b = node.input
        if a in self.consts:
            a, b = b, a
        op, code = self._fusable(a) if b in self.consts else (None, None)
        if code in (OP.CONV_2D, OP.DEPTHWISE_CONV_2D, OP.FULLY_CONNECTED):
            bias = self.data[op.inputs[2]]
            rank = len(self.shapes[a])
            added = self.consts[b]
            added = added.reshape((1,) * (rank - added.ndim) + added.shape)
            if added.size == 1 or added.shape == (1, bias.size) + (1,) * (rank - 2):
                self.data[op.inputs[2]] = bias + added.reshape(-1)
                self.alias(node.output[0], op.outputs[0])
                return
        self.emit(OP.ADD, [self.activation(a), self._operand(b, a)], [self.activation(node.output[0])],
                  OPTIONS.AddOptions, schema.AddOptionsT())

    def _activation_op(self, node: onnx.NodeProto, fused: int, code: int) -> None:
        """Relu or Relu6: fused into the op before it when that is allowed, else its own op."""
        op, _ = self._fusable(node.input[0])
        if op is not None:
            op.builtinOptions.fusedActivationFunction = fused
            self.alias(node.output[0], op.outputs[0])
        else:
            self.emit(code, [self.activation(node.input[0])], [self.activation(node.output[0])])

    def _op_Relu(self, node: onnx.NodeProto, attrs: dict) -> None:
        self._activation_op(node, ACT.RELU, OP.RELU)

    def _op_Clip(self, node: onnx.NodeProto, attrs: dict) -> None:
        if self.opset >= 11:
            names = [*node.input[1:3], "", ""][:2]
            bounds = [float(self.consts[n]) if n else None for n in names]
        else:
            bounds = [attrs.get("min"), attrs.get("max")]
        if bounds == [0.0, 6.0]:
            self._activation_op(node, ACT.RELU6, OP.RELU6)
        elif bounds == [0.0, None]:
            self._activation_op(node, ACT.RELU, OP.RELU)
        else:
            raise ExportError(f"node {_where(node)}: Clip{bounds} is neither Relu nor Relu6")

    def _pool(self, node: onnx.NodeProto, attrs: dict, code: int) -> None:
        if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise ExportError(f"node {_where(node)}: {node.op_type} with ceil_mode or dilations")
        kernel = attrs["kernel_shape"]
        strides = attrs.get("strides", [1, 1])
        padding, x = self._padding(node, attrs, self.activation(node.input[0]), kernel, strides, [1, 1])
        if code == OP.AVERAGE_POOL_2D and padding == schema.Padding.SAME and attrs.get("count_include_pad", 0):
            raise ExportError(f"node {_where(node)}: AveragePool counting its padding")
        self.emit(code, [x], [self.activation(node.output[0])], OPTIONS.Pool2DOptions,
                  schema.Pool2DOptionsT(padding=padding, strideH=strides[0], strideW=strides[1],
                                        filterHeight=kernel[0], filterWidth=kernel[1]))

    def _op_MaxPool(self, node: onnx.NodeProto, attrs: dict) -> None:
        self._pool(node, attrs, OP.MAX_POOL_2D)

    def _op_AveragePool(self, node: onnx.NodeProto, attrs: dict) -> None:
        self._pool(node, attrs, OP.AVERAGE_POOL_2D)

    def _op_GlobalAveragePool(self, node: onnx.NodeProto, attrs: dict) -> None:
        self._pool(node, {"kernel_shape": self.shapes[node.input[0]][2:]}, OP.AVERAGE_POOL_2D)

    def _op_Reshape(self, node: onnx.NodeProto, attrs: dict) -> None:
        src, shape = self.shapes[node.input[0]], self.shapes[node.output[0]]
        if len(src) == 4 and len(shape) == 2:
            if src[2] * src[3] > 1:
                self.flat_hwc[node.output[0]] = tuple(src[1:])
        elif len(src) > 2 or len(shape) > 2:
            raise ExportError(f"node {_where(node)}: Reshape {src} -> {shape} (only to 2-D is supported)")
        new_shape = self.const(f"{node.output[0]}/shape", np.array(shape, np.int32))
        self.emit(OP.RESHAPE, [self.activation(node.input[0]), new_shape], [self.activation(node.output[0])],
                  OPTIONS.ReshapeOptions, schema.ReshapeOptionsT(newShape=list(shape)))

    _op_Flatten = _op_Reshape

    def _op_Softmax(self, node: onnx.NodeProto, attrs: dict) -> None:
        rank = len(self.shapes[node.input[0]])
        if rank != 2 or attrs.get("axis", -1 if self.opset >= 13 else 1) not in (-1, 1):
            raise ExportError(f"node {_where(node)}: Softmax other than over the last axis of a 2-D tensor")
        self.emit(OP.SOFTMAX, [self.activation(node.input[0])], [self.activation(node.output[0])],
                  OPTIONS.SoftmaxOptions, schema.SoftmaxOptionsT(beta=1.0))

    def _op_Identity(self, node: onnx.NodeProto, attrs: dict) -> None:
        self.alias(node.output[0], self.activation(node.input[0]))

    _op_Dropout = _op_Identity


def _where(node: onnx.NodeProto) -> str:
    return repr(node.name or node.output[0])


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _nhwc(shape: list[int]) -> list[int]:
    n, c, h, w = shape
    return [n, h, w, c]
