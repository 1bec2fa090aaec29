"""Unstructured and 2:4 weight sparsity: magnitude masks, and a masked least-squares refit
of the weights that stay, without training.

``sparsify`` zeroes weights of every convolution, gemm and matmul with a constant weight
(``exclude`` by output name): ``unstructured``, the ``sparsity`` share of each layer's
smallest magnitudes; ``2:4``, the two smaller of every four consecutive weights along the
reduction axis (each output channel's ``C*kh*kw`` inputs, a gemm's or matmul's K), the
pattern NVIDIA's sparse tensor cores run. Tensors keep their shapes: the zeros are in the
weights. Whether they cost less is up to the kernels: effc's Cortex-M int8 convolution
stores such weights compressed in flash (``codegen/kernels``), and no other target has a
kernel that skips zeros (``SparsityReport`` says which layers a target can use).

With calibration samples, each layer, in graph order, gets the weights that best map its
inputs *in the sparsified model* to its outputs *in the dense one* with its mask kept:
ridge least squares per output channel over that channel's remaining inputs (the
one-shot reconstruction of SparseGPT, Frantar & Alistarh 2023, solved exactly per row
instead of by its OBS updates; ridge and acceptance on held-out samples as in
``prune.reconstruct``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from effc.ir.core import Module, Node
from effc.ir.errors import InputError
from effc.ir.opdef import node_attrs
from effc.ir.parser import copy_module

from .dce import DeadCodeElimination
from .prune import (RIDGES, LayerFit, _bias, _bias_value, _const, _set_const, _solve, fit_data, from_weight_rows,
                    set_bias, weight_rows)

PATTERNS = ("unstructured", "2:4")
RIDGE_PROBE = 16
"""Output channels the refit's ridge is chosen on (then used for all)."""


@dataclass
class SparsityReport:
    """Per layer (by output name): weights and zeros after; refit errors."""

    layers: dict[str, tuple[int, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Layers left dense, and why (a 2:4 reduction axis not a multiple of 4)."""
    fits: list[LayerFit] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        total = sum(n for n, _ in self.layers.values())
        return sum(z for _, z in self.layers.values()) / max(1, total)

    def table(self) -> str:
        lines = ["layer | weights | zeros | sparsity", "---|---:|---:|---:"]
        lines += [f"%{k} | {n:,} | {z:,} | {z / max(1, n):.2f}" for k, (n, z) in self.layers.items()]
        lines += [f"%{k}: left dense ({why})" for k, why in self.skipped.items()]
        if self.fits:
            lines += ["", "refitted | output error, masked | after least squares", "---|---:|---:"]
            lines += [f"%{f.name} | {f.error_before:.4f} | {f.error_after:.4f}" for f in self.fits]
        lines.append(f"weights zeroed: {self.sparsity:.2%} of the layers' weights (the tensors keep their shapes)")
        return "\n".join(lines)


def _layers(module: Module, exclude: tuple[str, ...]) -> list[Node]:
    out = []
    for n in module.graph.nodes:
        if n.op in ("conv", "gemm", "mat_mul") and len(n.outputs) == 1 and _const(n.input(1)) is not None \
                and _const(n.input(1)).ndim >= 2 and n.outputs[0].name not in exclude \
                and not (n.op == "gemm" and node_attrs(n)["transA"]):
            out.append(n)
    return out


def mask(rows: np.ndarray, sparsity: float, pattern: str) -> np.ndarray:
    """True where a weight of ``rows`` (``[outputs, reduction]``) stays."""
    a = np.abs(rows)
    if pattern == "2:4":
        groups = a.reshape(a.shape[0], -1, 4)
        order = np.argsort(groups, axis=-1, kind="stable")
        keep = np.ones_like(groups, bool)
        np.put_along_axis(keep, order[..., :2], False, axis=-1)
        return keep.reshape(a.shape)
    k = int(round(sparsity * a.size))
    if k == 0:
        return np.ones_like(a, bool)
    cut = np.partition(a.reshape(-1), k - 1)[k - 1]
    keep = a > cut
    ties = np.flatnonzero((a == cut).reshape(-1))  # (exactly k go: the first ties by position)
    extra = k - int((a < cut).sum())
    flat = keep.reshape(-1)
    flat[ties[extra:]] = True
    return flat.reshape(a.shape)


def sparsify(module: Module, sparsity: float = 0.5, pattern: str = "unstructured", exclude: tuple[str, ...] = (),
             samples: dict[str, np.ndarray] | None = None) -> SparsityReport:
    """Zero weights of ``module`` in place (see the module docstring)."""
    if pattern not in PATTERNS:
        raise InputError(f"--pattern must be one of {', '.join(PATTERNS)}, got '{pattern}'")
    if pattern == "unstructured" and not 0.0 < sparsity < 1.0:
        raise InputError(f"--sparsity must be above 0 and below 1, got {sparsity}")
    if any(n.body is not None for n in module.graph.nodes):
        raise InputError("sparsify works on an unfused model: run it before `fuse` (or -O2), e.g. after fold-bn")
    names = {n.outputs[0].name for n in module.graph.nodes if n.outputs}
    unknown = sorted(set(exclude) - names)
    if unknown:
        raise InputError(f"--exclude names no value of the model: {unknown}")
    original = copy_module(module) if samples is not None else None
    report = SparsityReport()
    masks: dict[str, np.ndarray] = {}
    for n in _layers(module, exclude):
        name, w = n.outputs[0].name, _const(n.input(1))
        rows = weight_rows(n, w)
        if pattern == "2:4" and rows.shape[1] % 4:
            report.skipped[name] = f"its {rows.shape[1]} inputs per output are not a multiple of 4"
            continue
        keep = mask(rows, sparsity, pattern)
        masks[name] = keep
        _set_const(module, n, 1, from_weight_rows(n, np.where(keep, rows, 0).astype(w.dtype), w.shape))
        report.layers[name] = (int(keep.size), int((~keep).sum()))
    if original is not None:
        report.fits = _refit(original, module, samples, masks)
    DeadCodeElimination().run(module, None)
    return report


def _refit(original: Module, sparse: Module, samples: dict[str, np.ndarray],
           masks: dict[str, np.ndarray]) -> list[LayerFit]:
    """Each masked layer's remaining weights (and bias) by ridge least squares, row by row."""
    layers = [n for n in sparse.graph.nodes if n.outputs and n.outputs[0].name in masks]
    rng, fits = np.random.default_rng(0), []
    for n, x, y, held in fit_data(original, sparse, samples, layers):
        name = n.outputs[0].name
        w = _const(n.input(1))
        rows = weight_rows(n, w).astype(np.float64)
        keep = masks[name]
        bias = _bias(n, rows.shape[0])
        norm = max(float(np.linalg.norm(y[held])), 1e-30)
        before = float(np.linalg.norm(x[held] @ rows.T + _bias_value(n, bias, rows.shape[0]) - y[held])) / norm
        design = np.concatenate([x, np.ones((len(x), 1))], 1) if bias is not None else x
        probe = rng.permutation(rows.shape[0])[:RIDGE_PROBE]  # (the rows the ridge is chosen on)

        def fit(on: tuple[np.ndarray, np.ndarray], ridge: float, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            gram, rhs = on
            k = x.shape[1]
            scale = float(np.mean(np.diag(gram)[:k]))
            new, intercept = np.zeros_like(rows), np.zeros(rows.shape[0])
            for o in outputs:  # (each row over its kept inputs, and the intercept)
                cols = np.flatnonzero(keep[o])
                idx = np.append(cols, k) if bias is not None else cols
                theta = _solve(gram[np.ix_(idx, idx)], rhs[idx, o], ridge, len(cols), scale)
                new[o, cols] = theta[:len(cols)]
                intercept[o] = theta[-1] if bias is not None else 0.0
            return new, intercept

        def error(new: np.ndarray, intercept: np.ndarray, outputs: np.ndarray) -> float:
            got = x[held] @ new[outputs].T + intercept[outputs]
            return float(np.linalg.norm(got - y[held][:, outputs]) / max(np.linalg.norm(y[held][:, outputs]), 1e-30))

        fitting = (design[~held].T @ design[~held], design[~held].T @ y[~held])
        _, ridge = min((error(*fit(fitting, r, probe), probe), r) for r in RIDGES)
        every = np.arange(rows.shape[0])
        new, intercept = fit(fitting, ridge, every)
        after = float(np.linalg.norm(x[held] @ new.T + intercept - y[held])) / norm
        if not after < before:
            fits.append(LayerFit(name, (rows.shape[1], int(keep.sum(axis=1).max())), before, before))
            continue
        new, intercept = fit((design.T @ design, design.T @ y), ridge, every)
        _set_const(sparse, n, 1, from_weight_rows(n, new.astype(w.dtype), w.shape))
        if bias is not None:
            set_bias(sparse, n, bias, intercept)
        fits.append(LayerFit(name, (rows.shape[1], int(keep.sum(axis=1).max())), before, after))
    return fits


__all__ = ["PATTERNS", "SparsityReport", "mask", "sparsify"]
