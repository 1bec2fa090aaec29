"""Bias correction (DFQ, Nagel et al. 2019): remove the shift in each quantized layer's mean
output that rounding its weights causes.

With weights ``W`` rounded to ``W_q = W + E``, a layer computes ``W_q x = W x + E x``; the
error ``E x`` is not zero-mean in general (rounding a channel's few large weights moves
its mean), and the shift adds up through the layers. Its expectation is
``E[E x] = E · E[x]`` for a linear op, so one pass of the quantized model over the
calibration samples, keeping the mean of each quantized layer's input, gives every
layer's shift: the op applied to that mean input with the weight error as its weight,
averaged over everything but the output channel. It is subtracted from the layer's bias
(added where a conv has none; for a ``mat_mul``, from the constant of the ``add`` that is
its only user, as exported transformers write a linear layer).

The means are those of the quantized model's inputs (activations quantized, upstream
layers' weights rounded), so each correction is for the error the layer sees in place.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Module, Node, Value
from effc.ir.interpreter import run_node
from effc.ir.opdef import node_attrs

from .quantize_calibrate import iterate, run_watching


def _bias_site(n: Node) -> tuple[Node, int] | None:
    """Where the layer's bias is: (node, input index), or None where it has none to move."""
    if n.op in ("conv", "gemm"):
        return n, 2
    users = n.outputs[0].users()
    if n.op == "mat_mul" and len(users) == 1 and users[0].op == "add":
        add = users[0]
        other = 1 if add.input(0) is n.outputs[0] else 0
        c = add.input(other)
        if c.is_const and c.type.rank == 1:
            return add, other
    return None


def correct_biases(module: Module, layers: list[tuple[Node, np.ndarray, np.ndarray]], samples: Mapping[str, np.ndarray],
                   n: int, progress: Callable[[str, int], Callable[[], None]] | None = None) -> int:
    """Correct the bias of each ``(node, float weight, rounded weight)`` in ``layers`` (the
    node reading the rounded one already); returns how many were corrected."""
    sites = {id(node): _bias_site(node) for node, _, _ in layers}
    todo = [(node, wf, wq) for node, wf, wq in layers if sites[id(node)] is not None]
    if not todo:
        return 0
    sums: dict[int, np.ndarray] = {}

    def see(v: Value, a: np.ndarray) -> None:
        m = np.asarray(a, np.float64).mean(axis=0, keepdims=True)
        sums[id(v)] = m if id(v) not in sums else sums[id(v)] + m

    tick = progress("bias correction", n) if progress else None
    watched = {id(node.input(0)) for node, _, _ in todo}
    for feeds in iterate(samples, n):
        run_watching(module, feeds, watched, see)
        if tick:
            tick()
    done = 0
    for node, wf, wq in todo:
        x_mean = (sums[id(node.input(0))] / n).astype(np.float32)
        ins = [x_mean, (wq - wf).astype(np.float32)] + [None] * (len(node.inputs) - 2)
        shift = np.asarray(run_node(node, ins)[0], np.float64)
        channels = shift.shape[1] if node.op == "conv" else shift.shape[-1]
        shift = np.moveaxis(shift, 1, -1).reshape(-1, channels).mean(axis=0) if node.op == "conv" \
            else shift.reshape(-1, channels).mean(axis=0)
        site, index = sites[id(node)]
        if node.op == "gemm":
            shift = shift / node_attrs(node)["beta"]
        bias = site.input(index)
        if bias is not None and (not bias.is_const or tuple(bias.type.shape) != (channels,)):
            continue
        old = np.zeros(channels, np.float32) if bias is None else np.asarray(bias.const_value, np.float32)
        corrected = Builder(module, insert_before=site).const((old - shift).astype(np.float32),
                                                               name_hint=f"{node.outputs[0].name}_bias")
        if index < len(site.inputs):
            site.set_input(index, corrected)
        else:
            site.inputs = [*site.inputs, *[None] * (index - len(site.inputs)), corrected]
        done += 1
    return done
