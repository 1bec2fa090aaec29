"""Verification of substitution rules when they are loaded; a rule that fails is refused.

1. **Interpreter.** For every combination of the rule's ``vary`` values, the source and the
   target are built on several random shapes (each named dim of the source's inputs drawn
   from 1..6, the batch-like ``N`` from 1..2) and run through the reference interpreter on
   the same random inputs. Any difference beyond float32 rounding refuses the rule, naming
   the shapes and the size of the difference. Shapes the source cannot take are skipped;
   shapes only the target cannot take are where the rule does not apply.
2. **z3.** On the smallest shapes that worked, every input element becomes a z3 real, both
   sides are executed symbolically (linear ops, products, ``relu`` as ``If``, and the data
   movement ops on arrays of expressions) and each output element pair is proved equal:
   by normalizing the difference to a sum of monomials, else by asking z3 for a
   counterexample. A counterexample refuses the rule. This proves the identity over the
   reals for every input and weight value at those shapes, as TASO's verifier does with its
   operator axioms. Rules with an op z3 has no model of (softmax, erf, ...) are verified by
   the interpreter alone, and ``proof`` says so."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from effc.ir.core import Graph, Module
from effc.ir.errors import EffcError
from effc.ir.interpreter import run_module, run_node
from effc.ir.opdef import REGISTRY
from effc.ir.types import TensorType

from .rules import Rule, RuleError, Template, instantiate, template

SHAPE_TRIALS = 48
"""Random shapes tried per combination of ``vary`` values."""
MIN_INSTANCES = 2
"""Shapes on which both sides must have run, per combination."""
Z3_MAX_ELEMENTS = 600
"""Largest input (elements) executed symbolically."""
Z3_TIMEOUT_MS = 5000


def _draw_dims(rule: Rule, rng: np.random.Generator, smallest: bool) -> dict[str, int]:
    names = sorted({d for v in rule.source.graph.inputs for d in v.type.shape if isinstance(d, str)})
    hi = 3 if smallest else 7
    dims = {n: int(rng.integers(1, 3 if n == "N" else hi)) for n in names}
    for total, parts in rule.dim_sums.items():
        dims[total] = sum(dims[p] for p in parts)
    return dims


def _concrete(t: TensorType, dims: Mapping[str, int]) -> TensorType:
    if "?" in t.shape:
        raise RuleError(f"a source input of type {t} has a '?' dim: name it, or give it with a vary variable")
    return TensorType(t.dtype, tuple(dims[d] if isinstance(d, str) else d for d in t.shape))


def build_side(template: Template, types: list[TensorType], attrs: Mapping[str, Any]) -> Module:
    """A module whose graph is ``template`` instantiated on inputs of ``types``."""
    module = Module(Graph(template.graph.name))
    inputs = [module.graph.add_input(v.name, t) for v, t in zip(template.graph.inputs, types)]
    outs = instantiate(template, module, inputs, attrs)
    module.graph.set_outputs(outs)
    return module


def _random_input(t: TensorType, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(int(d) for d in t.shape)
    if t.dtype.np.kind == "f":
        return rng.standard_normal(shape).astype(t.dtype.np)
    # integer inputs are sizes, indices or counts in the rules: small positive numbers
    return rng.integers(1, 4, shape).astype(t.dtype.np)


def _split_hints(source: Template) -> dict[str, list[str]]:
    """Split sizes the source names: ``%a, %b = split(%x, %s) {axis=1} : f32[N,C1,..], f32[N,C2,..]``
    gives ``s`` the sizes ``[C1, C2]``."""
    hints = {}
    for n in source.graph.nodes:
        sizes = n.inputs[1] if n.op == "split" and len(n.inputs) > 1 else None
        if sizes is None or sizes.producer is not None:
            continue
        axis = int(n.attrs.get("axis", 0))
        names = [o.type.shape[axis] for o in n.outputs]
        if all(isinstance(d, str) and d != "?" for d in names):
            hints[sizes.name] = names
    return hints


def _draw_inputs(g: Graph, rng: np.random.Generator, dims: Mapping[str, int] | None = None,
                 hints: Mapping[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for ``g``. An integer input that gives a split its sizes or a reshape its
    shape is drawn to fit the tensor it applies to (known once the values before it are
    computed): the sizes the source names (``hints``), else a random split of the axis; a
    random factoring of the element count."""
    feeds: dict[str, np.ndarray] = {}
    env: dict[int, np.ndarray] = {}
    for v in g.inputs:
        if v.type.dtype.np.kind == "f" or not any(u.node.op in _SIZED and u.index == 1 for u in v.uses()):
            feeds[v.name] = env[id(v)] = _random_input(v.type, rng)
    for node in g.nodes:
        sizes = node.inputs[1] if node.op in _SIZED and len(node.inputs) > 1 else None
        if sizes is not None and sizes.producer is None and id(sizes) not in env:
            data = env[id(node.inputs[0])]
            if node.op == "split" and hints and sizes.name in hints and dims is not None:
                drawn = [dims[d] for d in hints[sizes.name]]
            elif node.op == "split":
                drawn = _split_sizes(data.shape[int(node.attrs.get("axis", 0))], len(node.outputs), rng)
            else:
                drawn = _factors(data.size, int(sizes.type.shape[0]), rng)
            feeds[sizes.name] = env[id(sizes)] = np.array(drawn, dtype=sizes.type.dtype.np)
        ins = [None if v is None else env[id(v)] for v in node.inputs]
        for v, r in zip(node.outputs, run_node(node, ins)):
            env[id(v)] = r
    return feeds


_SIZED = ("split", "reshape")


def _split_sizes(length: int, parts: int, rng: np.random.Generator) -> list[int]:
    if length < parts:
        raise RuleError("too short to split")
    cuts = np.sort(rng.choice(np.arange(1, length), parts - 1, replace=False))
    return list(np.diff(np.concatenate([[0], cuts, [length]])))


def _factors(count: int, rank: int, rng: np.random.Generator) -> list[int]:
    out = []
    for _ in range(rank - 1):
        divisors = [d for d in range(1, count + 1) if count % d == 0]
        d = int(rng.choice(divisors))
        out.append(d)
        count //= d
    return out + [count]


def _instances(rule: Rule, sample: Mapping[str, Any], rng: np.random.Generator):
    """(dims, source module, target module, inputs, source outputs) on random shapes and
    inputs that the source takes and the target builds on."""
    source = template(rule.source_text, sample, rule.where, concrete_types=True)
    target = template(rule.target_text, sample, rule.where, concrete_types=True)
    hints = _split_hints(source)
    found = 0
    for trial in range(SHAPE_TRIALS):
        dims = _draw_dims(rule, rng, smallest=trial < SHAPE_TRIALS // 2)
        types = [_concrete(v.type, dims) for v in source.graph.inputs]
        try:
            src = build_side(source, types, sample)
            feeds = _draw_inputs(src.graph, rng, dims, hints)
            want = list(run_module(src, feeds).values())
        except EffcError:
            continue
        try:
            tgt = build_side(target, types, sample)
        except EffcError:
            continue
        found += 1
        yield dims, src, tgt, feeds, want
    if found < MIN_INSTANCES:
        raise RuleError(f"{rule.where}: rule {rule.name} refused: with {_fmt_sample(sample)} its source and target "
                        f"built together on {found} of {SHAPE_TRIALS} random shapes (need {MIN_INSTANCES}); "
                        "check that the two sides take the same shapes")


def _fmt_sample(sample: Mapping[str, Any]) -> str:
    return ", ".join(f"${k}={v}" for k, v in sample.items()) or "its attributes"


def verify_rule(rule: Rule, *, seed: int = 0) -> None:
    """Raise ``RuleError`` naming the reason when ``rule`` is wrong; set ``rule.proof``."""
    rng = np.random.default_rng(seed)
    proofs: list[str] = []
    for sample in rule.samples:
        smallest: tuple[int, Module, Module, dict] | None = None
        for dims, src, tgt, feeds, want in _instances(rule, sample, rng):
            _compare_numbers(rule, sample, dims, tgt, feeds, want)
            size = sum(int(np.prod(v.type.shape)) for v in src.graph.inputs)
            if smallest is None or size < smallest[0]:
                smallest = (size, src, tgt, feeds)
        assert smallest is not None
        proofs.append(_prove(rule, sample, *smallest[1:]))
    proved = [p for p in proofs if p == "z3"]
    if len(proved) == len(proofs):
        rule.proof = "z3 + interpreter"
    else:
        rule.proof = "interpreter (" + next(p for p in proofs if p != "z3") + ")"


def _compare_numbers(rule: Rule, sample: Mapping[str, Any], dims: Mapping[str, int], tgt: Module,
                     feeds: Mapping[str, np.ndarray], want: list[np.ndarray]) -> None:
    try:
        got = list(run_module(tgt, feeds).values())
    except EffcError as e:
        raise RuleError(f"{rule.where}: rule {rule.name} refused: it does not run on {_fmt_dims(dims)}: {e}") from None
    for i, (w, g) in enumerate(zip(want, got)):
        if w.shape != g.shape:
            raise RuleError(f"{rule.where}: rule {rule.name} refused: output {i} has shape {list(g.shape)} in the "
                            f"target and {list(w.shape)} in the source ({_fmt_dims(dims)}, {_fmt_sample(sample)})")
        scale = max(1.0, float(np.max(np.abs(w.astype(np.float64)), initial=0.0)))
        err = float(np.max(np.abs(w.astype(np.float64) - g.astype(np.float64)), initial=0.0))
        if not err <= 1e-4 * scale:
            raise RuleError(f"{rule.where}: rule {rule.name} refused: the interpreter finds output {i} differs by "
                            f"{err:.3g} (largest value {scale:.3g}) on {_fmt_dims(dims)}, {_fmt_sample(sample)}")


def _fmt_dims(dims: Mapping[str, int]) -> str:
    return "shapes " + (", ".join(f"{k}={v}" for k, v in sorted(dims.items())) or "as written")


# ----------------------------------------------------------------------------- z3


class _NoModel(Exception):
    pass


def _prove(rule: Rule, sample: Mapping[str, Any], src: Module, tgt: Module, feeds: Mapping[str, np.ndarray]) -> str:
    """'z3' when z3 proves the two sides equal at these shapes, else why it could not.
    Float inputs are symbolic; integer ones (sizes, indices) keep their values in ``feeds``."""
    import z3

    if sum(int(np.prod(v.type.shape)) for v in src.graph.inputs) > Z3_MAX_ELEMENTS:
        return "inputs too large for z3"
    args = []
    for v in src.graph.inputs:
        if v.type.dtype.np.kind != "f":
            args.append(feeds[v.name])
            continue
        shape = tuple(int(d) for d in v.type.shape)
        flat = [z3.Real(f"{v.name}_{i}") for i in range(int(np.prod(shape)))]
        args.append(np.array(flat + [None], dtype=object)[:-1].reshape(shape))
    try:
        want = _symbolic(src.graph, args)
        got = _symbolic(tgt.graph, args)
    except _NoModel as e:
        return f"z3 has no model of {e}"
    differ = []
    for w, g in zip(want, got):
        for a, b in zip(np.ravel(w), np.ravel(g)):
            d = z3.simplify(_z3(a) - _z3(b), som=True)
            if not (z3.is_rational_value(d) and d.as_fraction() == 0):
                differ.append(_z3(a) != _z3(b))
    if not differ:
        return "z3"
    solver = z3.Solver()
    solver.set(timeout=Z3_TIMEOUT_MS)
    solver.add(z3.Or(differ))
    verdict = solver.check()
    if verdict == z3.unsat:
        return "z3"
    if verdict == z3.sat:
        model = solver.model()
        example = ", ".join(f"{d.name()}={model[d]}" for d in list(model.decls())[:4])
        raise RuleError(f"{rule.where}: rule {rule.name} refused: z3 finds inputs where the source and the target "
                        f"differ ({example}; {_fmt_sample(sample)})")
    return "z3 timed out"


def _z3(e: Any):
    import z3

    if isinstance(e, z3.ExprRef):
        return e
    return z3.RealVal(float(e)) if isinstance(e, (float, np.floating)) else z3.RealVal(int(e))


def _relu(x: np.ndarray) -> np.ndarray:
    import z3

    return _map(x, lambda e: z3.If(_z3(e) > 0, _z3(e), z3.RealVal(0)))


def _clip(ins: list, attrs: Mapping[str, Any]) -> np.ndarray:
    import z3

    x = ins[0]
    lo = ins[1] if len(ins) > 1 and ins[1] is not None else None
    hi = ins[2] if len(ins) > 2 and ins[2] is not None else None
    if lo is not None:
        x = np.broadcast_to(x, np.broadcast_shapes(x.shape, np.shape(lo)))
        lo_b = np.broadcast_to(lo, x.shape)
        x = _map2(x, lo_b, lambda e, m: z3.If(_z3(e) < _z3(m), _z3(m), _z3(e)))
    if hi is not None:
        hi_b = np.broadcast_to(hi, np.broadcast_shapes(x.shape, np.shape(hi)))
        x = _map2(np.broadcast_to(x, hi_b.shape), hi_b, lambda e, m: z3.If(_z3(e) > _z3(m), _z3(m), _z3(e)))
    return x


def _map2(x: np.ndarray, y: np.ndarray, f: Callable[[Any, Any], Any]) -> np.ndarray:
    out = np.empty(x.shape, dtype=object)
    for idx in np.ndindex(x.shape):
        out[idx] = f(x[idx], y[idx])
    return out


def _map(x: np.ndarray, f: Callable[[Any], Any]) -> np.ndarray:
    out = np.empty(x.shape, dtype=object)
    for idx in np.ndindex(x.shape):
        out[idx] = f(x[idx])
    return out


def _conv(ins: list, attrs: Mapping[str, Any]) -> np.ndarray:
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    n, c, h, wd = x.shape
    k, cg, kh, kw = w.shape
    group = int(attrs["group"])
    sh, sw = attrs["strides"] or (1, 1)
    dh, dw = attrs["dilations"] or (1, 1)
    pads = attrs["pads"] or (0, 0, 0, 0)
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise _NoModel("conv with auto_pad")
    xp = np.full((n, c, h + pads[0] + pads[2], wd + pads[1] + pads[3]), 0, dtype=object)
    xp[:, :, pads[0]:pads[0] + h, pads[1]:pads[1] + wd] = x
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out = np.full((n, k, oh, ow), 0, dtype=object)
    per = k // group
    for o in range(k):
        gi = o // per
        for i, j in itertools.product(range(kh), range(kw)):
            rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
            patch = xp[:, gi * cg:(gi + 1) * cg, rows, cols]
            out[:, o] = out[:, o] + np.tensordot(w[o, :, i, j], patch, axes=([0], [1]))
        if b is not None:
            out[:, o] = out[:, o] + b[o]
    return out


def _gemm(ins: list, attrs: Mapping[str, Any]) -> np.ndarray:
    a, b = ins[0], ins[1]
    a = a.T if attrs["transA"] else a
    b = b.T if attrs["transB"] else b
    y = np.matmul(a, b) * attrs["alpha"] if attrs["alpha"] != 1 else np.matmul(a, b)
    if len(ins) > 2 and ins[2] is not None:
        y = y + (ins[2] * attrs["beta"] if attrs["beta"] != 1 else ins[2])
    return y


_MODELS: dict[str, Callable[[list, Mapping[str, Any]], np.ndarray]] = {
    "add": lambda ins, a: ins[0] + ins[1],
    "sub": lambda ins, a: ins[0] - ins[1],
    "mul": lambda ins, a: ins[0] * ins[1],
    "neg": lambda ins, a: -ins[0],
    "relu": lambda ins, a: _relu(ins[0]),
    "clip": _clip,
    "conv": _conv,
    "mat_mul": lambda ins, a: np.matmul(ins[0], ins[1]),
    "gemm": _gemm,
}
"""Ops whose numpy reference cannot run on arrays of z3 expressions. The data movement ops
(concat, split, transpose, reshape, slice, ...) run their own reference on object arrays."""


def _symbolic(g: Graph, args: list[np.ndarray]) -> list[np.ndarray]:
    env: dict[int, np.ndarray] = {id(v): a for v, a in zip(g.inputs, args)}
    for node in g.nodes:
        ins = [None if v is None else env[id(v)] for v in node.inputs]
        op = REGISTRY[node.op]
        attrs = op.with_defaults(node.attrs)
        symbolic = any(x is not None and x.dtype == object for x in ins)
        if not symbolic:
            outs = op.ref(ins, attrs, len(node.outputs))
        elif node.op == "shape":
            dims = np.array(ins[0].shape, dtype=np.int64)
            outs = [dims[attrs["start"]:attrs["end"]]]
            symbolic = False
        elif node.op in _MODELS:
            outs = [_MODELS[node.op](ins, attrs)]
        elif {"view", "shape"} & op.traits or node.op in _MOVEMENT:
            try:
                outs = op.ref(ins, attrs, len(node.outputs))
            except Exception as e:  # noqa: BLE001 - a reference that needs numbers
                raise _NoModel(f"{node.op} ({type(e).__name__})") from None
        else:
            raise _NoModel(node.op)
        for v, r in zip(node.outputs, outs):
            env[id(v)] = np.asarray(r, dtype=object) if symbolic else np.asarray(r)
    return [env[id(v)] for v in g.outputs]


_MOVEMENT = frozenset({"concat", "split", "transpose", "reshape", "slice", "squeeze", "unsqueeze", "flatten",
                       "identity", "pad"})


__all__ = ["verify_rule", "build_side"]
