"""Cross-layer equalization (DFQ, Nagel et al. 2019) before quantization.

For two convolutions in a chain, ``conv A -> [relu] -> conv B``, scaling A's output channel
``i`` by ``1 / s_i`` and B's input channel ``i`` by ``s_i`` computes the same function
(relu is positively homogeneous: ``relu(x / s) = relu(x) / s`` for ``s > 0``). DFQ picks
``s_i = sqrt(r1_i / r2_i)``, where ``r1_i`` is the largest magnitude of A's output channel
``i`` weights and ``r2_i`` that of B's weights reading channel ``i``, so both become
``sqrt(r1_i * r2_i)``: the channels of each weight tensor get similar ranges, which is what
a per-tensor weight scale needs (MobileNet's depthwise convs are the known failure case).

A pair qualifies when A's output (or its relu's) has B as its only user, A and B have
constant float weights (A's bias constant too), and B reads channels as a dense, grouped
or depthwise conv. ``equalize`` applies it along every chain, ``rounds`` times (each pair's
scaling changes the next pair's ranges), and returns how many pairs it scaled.
"""
from __future__ import annotations

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Module, Node
from effc.ir.opdef import node_attrs
from effc.ir.types import DType


def _pairs(module: Module) -> list[tuple[Node, Node]]:
    out = []
    for a in module.graph.nodes:
        if a.op != "conv" or not _const_f32(a, 1) or (a.input(2) is not None and not _const_f32(a, 2)):
            continue
        v = a.outputs[0]
        users = v.users()
        if len(users) == 1 and users[0].op == "relu":
            v = users[0].outputs[0]
            users = v.users()
        if len(users) != 1 or v.is_graph_output or a.outputs[0].is_graph_output:
            continue
        b = users[0]
        if b.op == "conv" and b.input(0) is v and _const_f32(b, 1):
            out.append((a, b))
    return out


def _const_f32(n: Node, i: int) -> bool:
    v = n.input(i)
    return v is not None and v.is_const and v.type.dtype == DType.f32


def _input_channel_view(w: np.ndarray, group: int) -> np.ndarray:
    """B's weight ``[M, C/g, k...]`` as ``[C, M/g * k...]``: every weight reading input channel ``c``."""
    m, cg = w.shape[0], w.shape[1]
    mg = m // group
    per = w.reshape(group, mg, cg, -1).transpose(0, 2, 1, 3)  # [g, C/g, M/g, k]
    return per.reshape(group * cg, -1)


def _scale_inputs(w: np.ndarray, group: int, s: np.ndarray) -> np.ndarray:
    m, cg = w.shape[0], w.shape[1]
    mg = m // group
    per = w.reshape(group, mg, cg, -1) * s.reshape(group, 1, cg, 1)
    return per.reshape(w.shape)


def equalize(module: Module, rounds: int = 2) -> int:
    scaled = 0
    for _ in range(rounds):
        for a, b in _pairs(module):
            w1 = np.asarray(a.input(1).const_value, dtype=np.float64)
            w2 = np.asarray(b.input(1).const_value, dtype=np.float64)
            group = int(node_attrs(b)["group"])
            if w1.shape[0] != w2.shape[1] * group:
                continue
            r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
            r2 = np.abs(_input_channel_view(w2, group)).max(axis=1)
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            if np.allclose(s, 1.0):
                continue
            build = Builder(module, insert_before=a)
            a.set_input(1, build.const((w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))).astype(np.float32),
                                       name_hint=f"{a.input(1).name}_eq"))
            if a.input(2) is not None:
                bias = np.asarray(a.input(2).const_value, dtype=np.float64)
                a.set_input(2, build.const((bias / s).astype(np.float32), name_hint=f"{a.input(2).name}_eq"))
            b.set_input(1, Builder(module, insert_before=b).const(_scale_inputs(w2, group, s).astype(np.float32),
                                                                   name_hint=f"{b.input(1).name}_eq"))
            scaled += 1
    module.graph.eliminate_dead_code()
    return scaled
