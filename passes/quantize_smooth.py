"""SmoothQuant (Xiao et al. 2023) before quantization: move the range of a transformer's
outlier activation channels into the weights that read them.

A layer normalization's output in a transformer has a few channels far larger than the
rest, so one per-tensor activation scale spends its 256 levels on them. For
``Y = X W`` (``W`` is ``[K, N]``, channel ``j`` of ``X`` meets row ``j`` of ``W``),
``X diag(1/s) · diag(s) W`` is the same product; SmoothQuant picks
``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` (``alpha`` 0.5: half the difficulty each
way), where ``max|X_j|`` is calibrated and ``max|W_j|`` is the largest weight reading
channel ``j`` over every quantized matmul reading ``X``.

Where it applies: every activation that a layer normalization writes and a quantized
``mat_mul`` or ``gemm`` (constant 2-D weight) reads. The ``1/s`` goes into the layer
normalization's scale and bias when the matmuls are all its output's readers (pre-norm
transformers: the Q/K/V and first FFN projections); otherwise (post-norm BERT, whose
normalized output is also the residual) a ``mul`` by ``1/s`` on the matmuls' side only.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Module, Node, Value
from effc.ir.opdef import node_attrs

from .quantize_calibrate import iterate, run_watching


def _row_axis(n: Node) -> int:
    """The weight axis that meets the activation's channels: 0 for ``[K, N]``, 1 for a
    gemm's transposed ``[N, K]``."""
    return 1 if n.op == "gemm" and node_attrs(n)["transB"] else 0


OUTLIER_RATIO = 8.0
"""An activation not written by a layer normalization is smoothed (through an explicit
``mul``) only when its largest channel peak is this many times its median one."""


def _groups(targets: list[Node]) -> list[tuple[Value, list[Node]]]:
    groups: dict[int, tuple[Value, list[Node]]] = {}
    for n in targets:
        x = n.input(0)
        if n.op in ("mat_mul", "gemm") and x.type.rank >= 2:
            groups.setdefault(id(x), (x, []))[1].append(n)
    return list(groups.values())


def _foldable(x: Value, readers: list[Node]) -> bool:
    """``1/s`` can go into the layer normalization that writes ``x``."""
    norm = x.producer
    return (norm is not None and norm.op == "layer_normalization" and x is norm.outputs[0]
            and node_attrs(norm)["axis"] in (-1, x.type.rank - 1) and len(x.uses()) == len(readers)
            and norm.input(1).is_const and (norm.input(2) is None or norm.input(2).is_const))


def smooth(module: Module, targets: list[Node], samples: Mapping[str, np.ndarray], n: int, alpha: float = 0.5,
           progress: Callable[[str, int], Callable[[], None]] | None = None) -> int:
    """Smooth every layer-norm-fed group of ``targets``; returns how many groups."""
    groups = _groups(targets)
    if not groups:
        return 0
    peaks: dict[int, np.ndarray] = {}

    def see(v: Value, a: np.ndarray) -> None:
        m = np.abs(np.asarray(a, np.float64)).reshape(-1, a.shape[-1]).max(axis=0)
        peaks[id(v)] = m if id(v) not in peaks else np.maximum(peaks[id(v)], m)

    tick = progress("smoothing: channel ranges", n) if progress else None
    for feeds in iterate(samples, n):
        run_watching(module, feeds, {id(x) for x, _ in groups}, see)
        if tick:
            tick()
    done = 0
    for x, readers in groups:
        x_peak = peaks[id(x)]
        from_norm = x.producer is not None and x.producer.op == "layer_normalization"
        if not from_norm and x_peak.max() < OUTLIER_RATIO * max(float(np.median(x_peak)), 1e-12):
            continue
        ws = [np.asarray(r.input(1).const_value, np.float64) for r in readers]
        w_peak = np.max([np.abs(np.moveaxis(w, _row_axis(r), 0)).max(axis=1) for w, r in zip(ws, readers)], axis=0)
        ok = (x_peak > 0) & (w_peak > 0)
        s = np.ones_like(x_peak)
        s[ok] = x_peak[ok] ** alpha / w_peak[ok] ** (1 - alpha)
        for w, r in zip(ws, readers):
            shape = (-1, 1) if _row_axis(r) == 0 else (1, -1)
            r.set_input(1, Builder(module, insert_before=r).const((w * s.reshape(shape)).astype(np.float32),
                                                                  name_hint=f"{r.input(1).name}_smooth"))
        norm = x.producer
        if _foldable(x, readers):
            b = Builder(module, insert_before=norm)
            norm.set_input(1, b.const((np.asarray(norm.input(1).const_value, np.float64) / s).astype(np.float32),
                                      name_hint=f"{norm.input(1).name}_smooth"))
            if norm.input(2) is not None:
                norm.set_input(2, b.const((np.asarray(norm.input(2).const_value, np.float64) / s).astype(np.float32),
                                          name_hint=f"{norm.input(2).name}_smooth"))
        else:
            b = Builder(module, insert_before=norm.next if norm is not None else module.graph.first)
            scaled = b.mul(x, b.const((1.0 / s).astype(np.float32), name_hint=f"{x.name}_smooth"))
            for r in readers:
                r.set_input(0, scaled)
        done += 1
    module.graph.eliminate_dead_code()
    return done
