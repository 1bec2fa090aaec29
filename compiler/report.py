"""Model reports: inputs, outputs, op histogram, parameters, MACs by op class, weight bytes."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from effc.ir.core import Graph, Module, Node
from effc.ir.opdef import REGISTRY
from effc.ir.types import TensorType


@dataclass
class ModelInfo:
    name: str
    inputs: list[tuple[str, TensorType]]
    outputs: list[tuple[str, TensorType]]
    op_histogram: Counter
    parameters: int
    weight_bytes: int
    macs_by_class: dict[str, int] = field(default_factory=dict)
    opset: int = 0
    producer: str = ""

    @property
    def macs(self) -> int:
        return sum(self.macs_by_class.values())


def _iter_nodes(g: Graph):
    for n in g.nodes:
        if n.body is not None:
            yield from _iter_nodes(n.body)
        else:
            yield n


def node_macs(n: Node) -> int:
    op = REGISTRY.get(n.op)
    return int(op.macs(n)) if op is not None and op.macs is not None else 0


def model_info(module: Module) -> ModelInfo:
    g = module.graph
    hist: Counter = Counter()
    macs: Counter = Counter()
    for n in _iter_nodes(g):
        hist[n.op] += 1
        m = node_macs(n)
        if m:
            macs[REGISTRY[n.op].op_class] += m
    return ModelInfo(
        name=g.name,
        inputs=[(v.name, v.type) for v in g.inputs],
        outputs=[(v.name, v.type) for v in g.outputs],
        op_histogram=hist,
        parameters=module.parameter_count(),
        weight_bytes=module.weight_bytes(),
        macs_by_class=dict(macs),
        opset=module.opset,
        producer=module.producer,
    )


def human(n: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or suffix == "T":
            return f"{n:.0f}{suffix}{unit}" if suffix == "" else f"{n:.2f} {suffix}{unit}"
        n /= 1000.0
    return str(n)


def format_info(info: ModelInfo) -> str:
    from effc.ir.printer import format_type

    lines = [f"model @{info.name}" + (f"  (opset {info.opset}" + (f", {info.producer})" if info.producer else ")") if info.opset else "")]
    lines.append("inputs:")
    lines += [f"  {name}: {format_type(t)}" for name, t in info.inputs]
    lines.append("outputs:")
    lines += [f"  {name}: {format_type(t)}" for name, t in info.outputs]
    lines.append(f"parameters: {info.parameters:,}  ({human(info.parameters)})")
    lines.append(f"weight bytes: {info.weight_bytes:,}  ({human(info.weight_bytes, 'B')})")
    lines.append(f"MACs: {info.macs:,}  ({human(info.macs)}; symbolic batch counted as 1)")
    for cls, m in sorted(info.macs_by_class.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {cls:<12}{m:>16,}")
    lines.append("ops:")
    for op, c in sorted(info.op_histogram.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {op:<24}{c:>6}")
    return "\n".join(lines)
