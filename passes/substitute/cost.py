"""What a candidate graph costs, for the substitution search.

- **Latency** (``KernelCost``): the graph is grouped into the kernels a build runs (``fuse``,
  as ``-O2``/``-O3`` group them; constant subgraphs fold first) and each kernel is priced on
  its own, TASO's cost model. A kernel's price comes from a measuring callable given by the
  caller (``compiler/latency.py``: each kernel built alone for the target and timed, or its
  instructions counted under qemu) and is cached by the kernel's text (op, attributes,
  shapes; weight values do not enter it), so a kernel is measured once per target however
  many candidates contain it. Without a measuring callable the price is an estimate:
  multiply-accumulates and bytes moved against a nominal CPU (``estimate``).
- **Memory** (``ArenaCost``): the peak arena bytes of the microcontroller flow, planned as
  an AOT build plans it (pools fused into their convolutions, the node order and offsets
  of ``plan-memory``).

A cost is a float; lower is better."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from effc.ir.core import Graph, Module, Node, clone_module
from effc.ir.opdef import REGISTRY
from effc.ir.printer import print_module

KernelMeasure = Callable[[Sequence[Module]], list[float]]
"""Builds each single-kernel module for a target and returns its cost (ms, instructions)."""

ESTIMATE_MACS_PER_NS = 8.0
"""Multiply-accumulates per nanosecond of the nominal CPU behind ``estimate`` (one core, AVX2)."""
ESTIMATE_BYTES_PER_NS = 10.0
ESTIMATE_KERNEL_NS = 2000.0
"""Fixed cost of one kernel call of the nominal CPU (launch, layout, cache warm-up)."""


def cleanup(module: Module) -> None:
    """Fold what a substitution left computable (its weight concats and split sizes)."""
    from effc.passes.pipeline import run_pipeline

    run_pipeline(module, "fixpoint(fold-constants,eliminate-identity,cse,dce)")


def kernels(module: Module) -> list[Node]:
    """The nodes of ``module`` as a build groups them: a copy, fused as ``-O2`` does."""
    from effc.passes.pipeline import run_pipeline

    fused = clone_module(module)
    run_pipeline(fused, "fuse,dce")
    return [n for n in fused.graph.nodes if n.op != "const"]


def kernel_module(node: Node) -> Module:
    """``node`` alone: its computed inputs become graph inputs, its constants stay constants
    (float ones as zeros: a kernel's speed does not depend on them, and the text, which keys
    the cache, does not carry them; integer ones, shapes and axes, as they are)."""
    module = Module(Graph("kernel"))
    g = module.graph
    ins = []
    for i, v in enumerate(node.inputs):
        if v is None:
            ins.append(None)
            continue
        arr = v.const_value
        if arr is None:
            ins.append(g.add_input(f"x{i}", v.type))
            continue
        if arr.dtype.kind == "f":
            arr = np.zeros(arr.shape, arr.dtype)
        ins.append(g.append(module.const(arr, name=f"c{i}")).output)
    copy = Node(node.op, ins, [o.type for o in node.outputs], dict(node.attrs),
                output_names=[f"y{i}" for i in range(len(node.outputs))], body=node.body)
    g.append(copy)
    g.set_outputs(list(copy.outputs))
    return module


_NAME = re.compile(r'%("(?:[^"\\]|\\.)*"|[A-Za-z0-9_.\-]+)')


def kernel_key(module: Module) -> str:
    """The kernel module's text with its values renamed in order of appearance (a fused
    node's body keeps the model's names otherwise)."""
    names: dict[str, str] = {}
    return _NAME.sub(lambda m: "%" + names.setdefault(m.group(1), f"v{len(names)}"), print_module(module))


class KernelCost:
    """Latency as the sum of the graph's kernels' prices (see the module docstring)."""

    def __init__(self, measure: KernelMeasure | None = None, unit: str = "ms", cache: Path | None = None,
                 progress: Callable[[int], None] | None = None):
        self.measure = measure
        self.unit = unit if measure is not None else "estimated ms"
        self.cache_path = cache
        self.prices: dict[str, float] = {}
        if cache is not None and cache.exists():
            try:
                self.prices = {k: float(v) for k, v in json.loads(cache.read_text()).items()}
            except (ValueError, OSError, AttributeError):
                self.prices = {}
        self.keys: dict[tuple, str] = {}
        self.measured = 0
        self.measure_seconds = 0.0
        self.progress = progress

    def _key(self, node: Node) -> tuple[str, Module | None]:
        """The kernel's key, through a memo on its structure (printing is the slow part of
        costing a candidate graph, and most of its kernels were costed before)."""
        sig = _signature(node)
        key = self.keys.get(sig)
        if key is not None:
            return key, None
        module = kernel_module(node)
        key = self.keys[sig] = kernel_key(module)
        return key, module

    def price(self, nodes: Sequence[Node]) -> list[float]:
        pairs = [self._key(n) for n in nodes]
        keys = [k for k, _ in pairs]
        missing: dict[str, Module] = {}
        for (k, mod), n in zip(pairs, nodes):
            if k not in self.prices and k not in missing:
                missing[k] = mod if mod is not None else kernel_module(n)
        if missing:
            if self.progress is not None:
                self.progress(len(missing))
            if self.measure is None:
                costs = [estimate(m) for m in missing.values()]
            else:
                t = time.perf_counter()
                costs = self.measure(list(missing.values()))
                self.measure_seconds += time.perf_counter() - t
            self.measured += len(missing)
            self.prices.update(zip(missing, costs))
            self._save()
        return [self.prices[k] for k in keys]

    def __call__(self, module: Module) -> float:
        return float(sum(self.price(kernels(module))))

    def _save(self) -> None:
        if self.cache_path is None or self.measure is None:
            return
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.prices, indent=0, sort_keys=True))
            tmp.replace(self.cache_path)
        except OSError:
            pass  # a cache that cannot be written only costs the measurements again


def _signature(node: Node) -> tuple:
    """What ``kernel_key`` prints, as a tuple: ops, attributes, types, which inputs are
    constants (integer constants with their values) and, in a fused body, the wiring."""
    def ins(n: Node, index: dict[int, int]) -> tuple:
        out = []
        for v in n.inputs:
            if v is None:
                out.append(None)
                continue
            arr = v.const_value if v.producer is not None and v.producer.op == "const" else None
            const = None if arr is None else (arr.tobytes() if arr.dtype.kind != "f" else "f")
            out.append((index.get(id(v)), str(v.type), const))
        return tuple(out)

    body: tuple = ()
    if node.body is not None:
        index = {id(v): i for i, v in enumerate(node.body.inputs)}
        rows = []
        for b in node.body.nodes:
            rows.append((b.op, repr(sorted(b.attrs.items())), ins(b, index), tuple(str(o.type) for o in b.outputs)))
            for o in b.outputs:
                index[id(o)] = len(index)
        body = (tuple(rows), tuple(index.get(id(v)) for v in node.body.outputs))
    return (node.op, repr(sorted(node.attrs.items())), ins(node, {}), tuple(str(o.type) for o in node.outputs), body)


def _macs(n: Node) -> int:
    if n.body is not None:
        return sum(_macs(b) for b in n.body.nodes)
    op = REGISTRY.get(n.op)
    return int(op.macs(n)) if op is not None and op.macs is not None else 0


def estimate(module: Module) -> float:
    """Nominal milliseconds of a single-kernel module: its MACs or its bytes, whichever takes
    longer, plus the fixed cost of a call."""
    node = next(n for n in module.graph.nodes if n.op != "const")
    if REGISTRY[node.op].traits & {"view", "shape"}:
        return 0.0
    moved = sum(v.type.nbytes() for v in list(node.inputs) + list(node.outputs)
                if v is not None and v.type.is_static)
    ns = max(_macs(node) / ESTIMATE_MACS_PER_NS, moved / ESTIMATE_BYTES_PER_NS) + ESTIMATE_KERNEL_NS
    return ns / 1e6


class ArenaCost:
    """Peak arena bytes of the microcontroller flow; symbolic input dims (a dynamic batch)
    count as 1, the batch of an embedded deployment, as ``effc compile`` builds them."""

    unit = "planned arena bytes"

    def __call__(self, module: Module) -> float:
        from effc.ir.refine import bind_symbols
        from effc.passes.fuse import fuse_pools
        from effc.passes.memory_plan import plan_memory

        planned = clone_module(module)
        symbols = {d for v in planned.graph.inputs for d in v.type.shape if not isinstance(d, int)}
        if symbols:
            bind_symbols(planned, {str(d): 1 for d in symbols})
        fuse_pools(planned)
        return float(plan_memory(planned).arena_bytes)


__all__ = ["KernelCost", "ArenaCost", "KernelMeasure", "kernels", "kernel_module", "kernel_key", "cleanup",
           "estimate"]
