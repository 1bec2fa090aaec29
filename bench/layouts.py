"""Blocked layouts per fixture model: how many convolutions and values effc holds in
NCHW[b]c, and how many layout transforms remain in the lowered program.

The plan is ``codegen/layout.py``'s (greedy and forward, like TVM's ConvertLayout): a conv
whose output channels per group a block divides runs blocked, the layout flows through
ops that do not care, and a value is converted at most once per layout, where a consumer
needs another. "into blocked" counts the transforms of NCHW values into a block (inside
the kernel that reads them, when it is a fused one), "back to NCHW" those out of one.
Lowering only (no build): seconds.

    python bench/layouts.py            # prints the table and updates bench/RESULTS.md
    python bench/layouts.py --lanes 8  # as for an AVX2 CPU
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx
import tvm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.node_counts import write_section  # noqa: E402
from effc.codegen.layout import plan_layouts  # noqa: E402
from effc.codegen.relax import lower_to_relax  # noqa: E402
from effc.ir.refine import bind_input_shapes  # noqa: E402
from effc.models import load_model  # noqa: E402
from effc.optimize import optimize  # noqa: E402
from tests.fixtures import FIXTURES  # noqa: E402

SECTION = "## Blocked layouts: convolutions blocked, transforms left"


def _calls(mod: tvm.IRModule) -> list[str]:
    """The PrimFuncs every Relax function of ``mod`` calls (a fused function's included)."""
    names: list[str] = []

    def visit(expr):
        if isinstance(expr, tvm.relax.Call) and expr.op == tvm.ir.Op.get("relax.call_tir"):
            names.append(expr.args[0].name_hint)

    for func in mod.functions.values():
        if isinstance(func, tvm.relax.Function):
            tvm.relax.analysis.post_order_visit(func.body, visit)
    return names


def measure(lanes: int) -> list[dict]:
    rows = []
    for fx in FIXTURES:
        proto = onnx.load(str(fx.path()))
        feeds = fx.inputs(proto)
        module = load_model(fx.path())
        bind_input_shapes(module, {k: (1, *a.shape[1:]) for k, a in feeds.items()})
        optimize(module, "O2")
        convs = sum(1 for n in _nodes(module.graph) if n.op == "conv")
        plan = plan_layouts(module.graph, lanes)
        calls = _calls(lower_to_relax(module, lanes=lanes))
        rows.append({"model": fx.name, "convs": convs, "blocked": len(plan.convs), "values": len(plan.block),
                     "into": sum(1 for c in calls if c.startswith("to_nchw") and c.rstrip("0123456789").endswith("c")),
                     "back": sum(1 for c in calls if c.rstrip("0123456789") == "to_nchw")})
    return rows


def _nodes(g):
    for n in g.nodes:
        yield n
        if n.body is not None:
            yield from _nodes(n.body)


def table(rows: list[dict], lanes: int) -> str:
    lines = [SECTION, "",
             f"`-O2`, batch 1, {lanes} f32 lanes (blocks of {lanes} channels, or 8/4 where {lanes} does not divide "
             "them). Values: tensors held blocked (inside fused kernels too). `python bench/layouts.py` regenerates "
             "this section.", "",
             "| model | convs | convs blocked | values blocked | transforms into blocked | transforms back to NCHW |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['convs']} | {r['blocked']} | {r['values']} | {r['into']} | {r['back']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lanes", type=int, default=16, help="f32 vector lanes (default 16: AVX-512)")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args()
    text = table(measure(args.lanes), args.lanes)
    print(text)
    if not args.no_write:
        write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
