"""Substitution rules as data: each rule is a source graph and a target graph in effc's IR
text, kept in ``rules/*.rules`` files beside this module.

A rules file holds any number of rules::

    // Two convolutions of one input with the same attributes become one convolution over
    // their concatenated weights; a split gives each its channels back.
    rule merge-conv-conv
    vary $k = [1, 1] | [3, 3]
    where const %w1 %w2
    source
    graph @source(%x: f32[N,C,H,W], %w1: f32[K1,C,?,?], %w2: f32[K2,C,?,?]) -> (f32[N,K1,?,?], f32[N,K2,?,?]) {
      %a = conv(%x, %w1) {kernel_shape=$k} : f32[N,K1,?,?]
      ...
    }
    target
    graph @target(...) -> (...) {
      ...
    }

- ``//`` lines right above a rule are its description (``effc info --rules`` prints them).
- ``rule NAME [latency|memory]``: the objectives it serves (both when none is named).
- ``vary $v = A | B | ...``: an attribute variable. In the source, ``key=$v`` matches any
  value and binds it (every ``$v`` binds the same value); the target's ``$v`` gets the bound
  value. Verification runs the rule once for every listed value (their product, capped).
- ``where const %a %b``: those source inputs must be constants (so the target's work on
  them folds away). ``where C = C1 + C2``: a named dim is the sum of others.
- The source's inputs are the rule's variables; its nodes must match nodes of the graph with
  the same op, the same number of inputs and the same attributes (an attribute the source
  leaves out must have its default). Types match by dtype and rank; a named dim (``N``)
  binds to the graph's dim, the same name to the same dim; ``?`` matches any dim. Values
  computed inside the match and not returned must have no other users.
- The target reads the source's inputs by name and returns as many values, which replace
  the source's outputs in order. Its nodes are built through the op registry, so a target
  whose shapes do not work out for a match (e.g. a split into halves of an odd dim) does
  not apply there.

Loading a file verifies every rule (``verify.py``) and refuses a wrong one with the reason."""
from __future__ import annotations

import heapq
import itertools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from effc.ir.builder import Builder
from effc.ir.core import Graph, Module, Node, Value
from effc.ir.errors import EffcError, InputError, ShapeError
from effc.ir.opdef import REGISTRY, node_attrs
from effc.ir.parser import parse_module
from effc.ir.types import UNKNOWN_DIM

RULES_DIR = Path(__file__).parent / "rules"
OBJECTIVES = ("latency", "memory")
MAX_SAMPLES = 8
"""At most this many combinations of ``vary`` values are verified per rule."""

_VAR = re.compile(r"\$([A-Za-z_]\w*)(?:/([1-9][0-9]*))?")
_ATTR_VAR = re.compile(r"([A-Za-z_][\w-]*)=\$([A-Za-z_]\w*(?:/[1-9][0-9]*)?)")
_NODE_LINE = re.compile(r"^\s*%([^\s=,]+)")


class RuleError(InputError):
    """A rules file that cannot be read, or a rule that verification refuses."""


@dataclass
class Template:
    """One side of a rule: a parsed graph and which node attributes are variables."""

    module: Module
    attr_vars: dict[tuple[str, str], str]
    """(first output name of the node, attribute) -> variable."""

    @property
    def graph(self) -> Graph:
        return self.module.graph

    def var_of(self, node: Node, key: str) -> str | None:
        return self.attr_vars.get((node.outputs[0].name, key))


@dataclass
class Rule:
    name: str
    doc: str
    objectives: tuple[str, ...]
    source: Template
    target: Template
    samples: list[dict[str, Any]]
    """Values of the ``vary`` variables to verify with (one dict per combination)."""
    const_inputs: frozenset[str]
    where: str
    """File and line, for messages."""
    source_text: str = field(repr=False, default="")
    target_text: str = field(repr=False, default="")
    dim_sums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """``where C = C1 + C2``: a named dim that is the sum of others."""
    proof: str = ""
    """How verification established the rule (filled by ``verify``)."""

    def serves(self, objective: str) -> bool:
        return objective in self.objectives


# ----------------------------------------------------------------------------- reading


def _attr_value_text(text: str) -> Any:
    """A ``vary`` value: an int list, an int, a float or a quoted string."""
    text = text.strip()
    if text.startswith("["):
        return tuple(int(x) for x in text.strip("[]").split(",") if x.strip())
    if text.startswith('"'):
        return text.strip('"')
    return float(text) if any(c in text for c in ".eE") else int(text)


def _format_attr(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(x) for x in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


_TYPE = re.compile(r"\b([a-z]+[0-9]*)\[([^\]]*)\]")


def _in_types(text: str, sample: Mapping[str, Any], concrete: bool) -> str:
    """``$v`` inside a type's shape: the value's entries (``f32[K,C,$k]`` -> ``f32[K,C,3,3]``),
    or as many ``?`` when ``concrete`` is false (the pattern then matches any value)."""
    def entries(m: re.Match) -> str:
        value = sample[m.group(1)]
        items = list(value) if isinstance(value, tuple) else [value]
        return ", ".join(str(x) if concrete else "?" for x in items)

    return _TYPE.sub(lambda m: f"{m.group(1)}[{_VAR.sub(entries, m.group(2))}]", text)


def template(text: str, sample: Mapping[str, Any], where: str, *, concrete_types: bool = False) -> Template:
    """Parse one side of a rule with its variables set from ``sample``. A variable in a type
    becomes ``?`` (matching) unless ``concrete_types`` (verification)."""
    attr_vars: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        head = _NODE_LINE.match(line)
        if head and "=" in line:
            for key, var in _ATTR_VAR.findall(line):
                attr_vars[(head.group(1), key)] = var
    missing = sorted({name for name, _ in _VAR.findall(text)} - set(sample))
    if missing:
        raise RuleError(f"{where}: ${missing[0]} is used but no 'vary ${missing[0]} = ...' line gives its values")
    concrete = _VAR.sub(lambda m: _format_attr(var_value(sample, m.group(0)[1:])),
                        _in_types(text, sample, concrete_types))
    try:
        module = parse_module("module {opset=18}\n\n" + concrete, source=where)
    except EffcError as e:
        raise RuleError(str(e)) from None
    return Template(module, attr_vars)


def var_value(attrs: Mapping[str, Any], var: str) -> Any:
    """A variable's bound value; ``g/2`` is the bound ``g`` divided by 2 (exactly, else the
    target does not build: a group of 6 channels splits in two, one of 5 does not)."""
    name, _, div = var.partition("/")
    value = attrs[name]
    if not div:
        return value
    if not isinstance(value, int) or value % int(div):
        raise ShapeError(f"${name}={value} does not divide by {div}")
    return value // int(div)


def _samples(vary: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = sorted(vary)
    combos = itertools.product(*(vary[n] for n in names))
    return [dict(zip(names, c)) for c in itertools.islice(combos, MAX_SAMPLES)] or [{}]


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    """The rules of a rules file's text (not verified: ``load_rules`` verifies)."""
    rules: list[Rule] = []
    doc: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:  # a blank line ends a comment block: only the one right above a rule is its description
            doc = []
            i += 1
            continue
        if line.startswith("//"):
            doc.append(line[2:].strip())
            i += 1
            continue
        if not line.startswith("rule "):
            raise RuleError(f"{source}:{i + 1}: expected 'rule NAME', '//' or a blank line, found {line[:40]!r}")
        rule, i = _parse_rule(lines, i, source, " ".join(doc))
        rules.append(rule)
        doc = []
    names = [r.name for r in rules]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RuleError(f"{source}: rule '{dup[0]}' is defined twice")
    return rules


def _graph_block(lines: list[str], i: int, source: str, what: str) -> tuple[str, int]:
    start = i
    while i < len(lines) and lines[i].rstrip() != "}":
        i += 1
    if i == len(lines):
        raise RuleError(f"{source}:{start + 1}: the {what} graph has no closing '}}' line")
    return "\n".join(lines[start:i + 1]), i + 1


def _parse_rule(lines: list[str], i: int, source: str, doc: str) -> tuple[Rule, int]:
    words = lines[i].split()
    where = f"{source}:{i + 1}"
    if len(words) < 2:
        raise RuleError(f"{where}: 'rule' needs a name")
    name, objectives = words[1], tuple(words[2:]) or OBJECTIVES
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad:
        raise RuleError(f"{where}: rule {name}: unknown objective '{bad[0]}' (objectives: {', '.join(OBJECTIVES)})")
    vary: dict[str, list[Any]] = {}
    const_inputs: set[str] = set()
    dim_sums: dict[str, tuple[str, ...]] = {}
    texts: dict[str, str] = {}
    i += 1
    while i < len(lines) and len(texts) < 2:
        line = lines[i].strip()
        if not line or line.startswith("//"):
            i += 1
        elif line.startswith("vary "):
            m = re.fullmatch(r"vary\s+\$([A-Za-z_]\w*)\s*=\s*(.+)", line)
            if not m:
                raise RuleError(f"{source}:{i + 1}: expected 'vary $name = VALUE | VALUE ...'")
            try:
                vary[m.group(1)] = [_attr_value_text(v) for v in m.group(2).split("|")]
            except ValueError:
                raise RuleError(f"{source}:{i + 1}: cannot read the values of ${m.group(1)}") from None
            i += 1
        elif line.startswith("where "):
            parts = line.split()
            sums = re.fullmatch(r"where\s+([A-Za-z_]\w*)\s*=\s*([A-Za-z_]\w*(?:\s*\+\s*[A-Za-z_]\w*)+)", line)
            if sums:
                dim_sums[sums.group(1)] = tuple(t.strip() for t in sums.group(2).split("+"))
            elif parts[1] == "const" and all(p.startswith("%") for p in parts[2:]):
                const_inputs.update(p[1:] for p in parts[2:])
            else:
                raise RuleError(f"{source}:{i + 1}: expected 'where const %a %b ...' or 'where D = D1 + D2'")
            i += 1
        elif line in ("source", "target"):
            texts[line], i = _graph_block(lines, i + 1, source, line)
        else:
            raise RuleError(f"{source}:{i + 1}: rule {name}: expected vary, where, source or target, "
                            f"found {line[:40]!r}")
    if set(texts) != {"source", "target"}:
        raise RuleError(f"{where}: rule {name} needs a source and a target graph")
    samples = _samples(vary)
    src = template(texts["source"], samples[0], f"{where} ({name}, source)")
    tgt = template(texts["target"], samples[0], f"{where} ({name}, target)")
    _check_sides(name, where, src, tgt, const_inputs)
    return Rule(name, doc, objectives, src, tgt, samples, frozenset(const_inputs), where,
                texts["source"], texts["target"], dim_sums=dim_sums), i


def _check_sides(name: str, where: str, src: Template, tgt: Template, const_inputs: set[str]) -> None:
    s_in = [v.name for v in src.graph.inputs]
    t_in = [v.name for v in tgt.graph.inputs]
    if s_in != t_in:
        raise RuleError(f"{where}: rule {name}: the target takes ({', '.join(t_in)}) but the source takes "
                        f"({', '.join(s_in)}); they must take the same inputs")
    if len(src.graph.outputs) != len(tgt.graph.outputs):
        raise RuleError(f"{where}: rule {name}: the source returns {len(src.graph.outputs)} values and the target "
                        f"{len(tgt.graph.outputs)}")
    unknown = sorted(const_inputs - set(s_in))
    if unknown:
        raise RuleError(f"{where}: rule {name}: 'where const %{unknown[0]}' names no input of the source")
    if not any(n.op != "const" for n in src.graph.nodes):
        raise RuleError(f"{where}: rule {name}: the source has no operation to match")
    for v in src.graph.inputs:
        if not v.uses():
            raise RuleError(f"{where}: rule {name}: source input %{v.name} is not used")
    try:
        _match_order(src.graph)
    except RuleError as e:
        raise RuleError(f"{where}: rule {name}: {e}") from None


def load_rules(paths: list[Path] | None = None, *, verify: bool = True) -> list[Rule]:
    """Every rule of ``paths`` (default: the bundled ``rules/*.rules``), each verified."""
    from .verify import verify_rule

    rules: list[Rule] = []
    for path in paths if paths is not None else sorted(RULES_DIR.glob("*.rules")):
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise RuleError(f"cannot read rules file {path}: {e.strerror}") from None
        for rule in parse_rules(text, str(path)):
            if verify:
                verify_rule(rule)
            rules.append(rule)
    return rules


_BUNDLED: list[Rule] | None = None


def bundled_rules() -> list[Rule]:
    """The bundled rules, loaded and verified once per process."""
    global _BUNDLED
    if _BUNDLED is None:
        _BUNDLED = load_rules()
    return _BUNDLED


# ----------------------------------------------------------------------------- matching


@dataclass
class Match:
    rule: Rule
    nodes: dict[int, Node]
    """id(source node) -> graph node."""
    values: dict[int, Value]
    """id(source value) -> graph value."""
    attrs: dict[str, Any]
    dims: dict[str, Any]

    def inputs(self) -> list[Value]:
        return [self.values[id(v)] for v in self.rule.source.graph.inputs]

    def outputs(self) -> list[Value]:
        return [self.values[id(v)] for v in self.rule.source.graph.outputs]

    def ordered_nodes(self) -> list[Node]:
        return [self.nodes[id(p)] for p in self.rule.source.graph.nodes if id(p) in self.nodes]

    def key(self) -> tuple:
        """The rule and the graph nodes in the source's order: the same nodes matched in
        another order (which of two merged convolutions comes first) is another match."""
        return (self.rule.name, tuple(id(n) for n in self.ordered_nodes()))


def _match_order(g: Graph) -> list[Node]:
    """The source's nodes in an order where each is reachable from the ones before it (through
    a value one produces and the other reads, or an input both read), starting from the last."""
    nodes = [n for n in g.nodes if n.op != "const"]
    order = [nodes[-1]]
    placed = {id(nodes[-1])}
    while len(order) < len(nodes):
        for n in reversed(nodes):
            if id(n) in placed:
                continue
            near = any(id(u) in placed for v in n.outputs for u in v.users()) or any(
                v is not None and ((v.producer is not None and id(v.producer) in placed)
                                   or any(id(u) in placed for u in v.users())) for v in n.inputs)
            if near:
                order.append(n)
                placed.add(id(n))
                break
        else:
            raise RuleError("the source graph is not connected: every node must share a value with another")
    return order


class _Matcher:
    def __init__(self, rule: Rule):
        self.rule = rule
        self.order = _match_order(rule.source.graph)
        self.src_consts = {id(n.output): n for n in rule.source.graph.nodes if n.op == "const"}

    def matches(self, graph: Graph) -> Iterator[Match]:
        first = self.order[0]
        for node in graph.nodes:
            if node.op == first.op:
                m = Match(self.rule, {}, {}, {}, {})
                yield from self._extend(m, 0, node)

    def _candidates(self, m: Match, p: Node) -> list[Node]:
        for i, pv in enumerate(p.outputs):
            gv = m.values.get(id(pv))
            if gv is not None:  # a matched node reads it: its producer is the only candidate
                return [gv.producer] if gv.producer is not None and gv.index == i else []
        for pv in p.inputs:
            gv = m.values.get(id(pv)) if pv is not None else None
            if gv is not None:
                return list({id(u): u for u in gv.users()}.values())
        return []

    def _extend(self, m: Match, k: int, node: Node) -> Iterator[Match]:
        p = self.order[k]
        if node.op != p.op or any(n is node for n in m.nodes.values()):
            return
        for perm in self._input_orders(p, node):
            saved = (dict(m.nodes), dict(m.values), dict(m.attrs), dict(m.dims))
            if self._bind_node(m, p, node, perm):
                if k + 1 == len(self.order):
                    if self._sums_hold(m) and self._closed(m):
                        yield Match(m.rule, dict(m.nodes), dict(m.values), dict(m.attrs), dict(m.dims))
                else:
                    for cand in self._candidates(m, self.order[k + 1]):
                        yield from self._extend(m, k + 1, cand)
            m.nodes, m.values, m.attrs, m.dims = saved

    @staticmethod
    def _input_orders(p: Node, node: Node) -> list[list[Value | None]]:
        ins = list(node.inputs)
        if len(ins) != len(p.inputs):
            return []
        orders = [ins]
        if "commutative" in REGISTRY[p.op].traits and len(ins) == 2 and ins[0] is not ins[1]:
            orders.append([ins[1], ins[0]])
        return orders

    def _bind_node(self, m: Match, p: Node, node: Node, ins: list[Value | None]) -> bool:
        if len(p.outputs) != len(node.outputs):
            return False
        want = REGISTRY[p.op].with_defaults(p.attrs)
        have = node_attrs(node)
        for key, value in want.items():
            var = self.rule.source.var_of(p, key)
            if var is not None:
                if not _same_attr(key, m.attrs.setdefault(var, have.get(key)), have.get(key)):
                    return False
            elif not _same_attr(key, have.get(key), value):
                return False
        m.nodes[id(p)] = node
        for pv, gv in zip(p.outputs, node.outputs):
            if not self._bind_value(m, pv, gv):
                return False
        for pv, gv in zip(p.inputs, ins):
            if (pv is None) != (gv is None):
                return False
            if pv is not None and not self._bind_value(m, pv, gv):
                return False
        return True

    def _bind_value(self, m: Match, pv: Value, gv: Value) -> bool:
        bound = m.values.get(id(pv))
        if bound is not None:
            return bound is gv
        if any(v is gv for v in m.values.values()):
            return False
        const = self.src_consts.get(id(pv))
        if const is not None:
            arr = gv.const_value
            if arr is None or not _same_array(arr, const.output.const_value):
                return False
        elif pv.producer is None and pv.name in self.rule.const_inputs and gv.const_value is None:
            return False
        if pv.type.dtype != gv.type.dtype or len(pv.type.shape) != len(gv.type.shape):
            return False
        for pd, gd in zip(pv.type.shape, gv.type.shape):
            if isinstance(pd, int):
                if pd != gd:
                    return False
            elif pd != UNKNOWN_DIM and m.dims.setdefault(pd, gd) != gd:
                return False
        m.values[id(pv)] = gv
        return True

    def _sums_hold(self, m: Match) -> bool:
        for total, parts in self.rule.dim_sums.items():
            dims = [m.dims.get(d) for d in (total, *parts)]
            if all(isinstance(d, int) for d in dims) and dims[0] != sum(dims[1:]):
                return False
        return True

    def _closed(self, m: Match) -> bool:
        """Values computed inside the match and not returned have no users outside it, and
        no input of the match depends on a node of the match (the target would make a cycle)."""
        matched = {id(n) for n in m.nodes.values()}
        outs = {id(v) for v in self.rule.source.graph.outputs}
        for p in self.rule.source.graph.nodes:
            if p.op == "const":
                continue
            for pv in p.outputs:
                gv = m.values[id(pv)]
                if id(pv) in outs:
                    continue
                if gv.is_graph_output or any(id(u) not in matched for u in gv.users()):
                    return False
        return not _reaches(m.inputs(), matched)


_NEUTRAL = {"pads": 0, "strides": 1, "dilations": 1}
"""Attributes whose empty default means all zeros or all ones (``pads=[0, 0, 0, 0]`` is the
default ``pads``)."""


def _same_attr(key: str, a: Any, b: Any) -> bool:
    if a == b or _same_array(a, b):
        return True
    neutral = _NEUTRAL.get(key)
    if neutral is None or not isinstance(a, tuple) or not isinstance(b, tuple):
        return False
    return all(x == neutral for x in a) and all(x == neutral for x in b)


def _same_array(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is not None and b is not None and np.shape(a) == np.shape(b) and bool(np.all(np.equal(a, b)))
    return False


def _reaches(values: list[Value], nodes: set[int]) -> bool:
    """Whether any of ``values`` is computed from a node in ``nodes``."""
    seen: set[int] = set()
    stack = [v.producer for v in values if v.producer is not None]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if id(n) in nodes:
            return True
        stack.extend(v.producer for v in n.inputs if v is not None and v.producer is not None)
    return False


_MATCHERS: dict[int, _Matcher] = {}


def find_matches(rule: Rule, graph: Graph) -> list[Match]:
    """Every match of ``rule``'s source in ``graph``, ordered by where the matched nodes
    stand in the graph, taken in the source's order (so two merged convolutions keep the
    graph's order first)."""
    matcher = _MATCHERS.get(id(rule))
    if matcher is None or matcher.rule is not rule:
        matcher = _MATCHERS[id(rule)] = _Matcher(rule)
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    found = {m.key(): m for m in matcher.matches(graph)}
    return sorted(found.values(), key=lambda m: [position[id(n)] for n in m.ordered_nodes()])


# ----------------------------------------------------------------------------- building


def instantiate(template: Template, module: Module, inputs: list[Value], attrs: Mapping[str, Any],
                builder: Builder | None = None, loc: str | None = None) -> list[Value]:
    """Build ``template``'s nodes into ``module`` reading ``inputs`` (its inputs in order),
    with its attribute variables set from ``attrs``; returns the values it returns.
    Raises ``EffcError`` (a ShapeError) where the shapes do not work out."""
    b = builder or Builder(module, loc=loc)
    env: dict[int, Value] = {id(tv): v for tv, v in zip(template.graph.inputs, inputs)}
    for n in template.graph.nodes:
        if n.op == "const":
            env[id(n.output)] = b.const(np.array(n.output.const_value), name_hint=n.output.name)
            continue
        kw = dict(n.attrs)
        for key, spec in REGISTRY[n.op].attrs.items():
            var = template.var_of(n, key)
            if var is not None:
                kw[key] = var_value(attrs, var)
                if not spec.required and _same_attr(key, kw[key], spec.default):
                    del kw[key]  # as an importer writes it: defaults left out
        ins = [None if v is None else env[id(v)] for v in n.inputs]
        node = b.op(n.op, *ins, n_outputs=len(n.outputs), name_hint=n.outputs[0].name, **kw)
        for tv, v in zip(n.outputs, node.outputs):
            env[id(tv)] = v
    return [env[id(v)] for v in template.graph.outputs]


def apply_match(module: Module, m: Match) -> list[Node]:
    """Replace ``m``'s source nodes with the rule's target; returns the new nodes. Raises
    ``EffcError`` when the target cannot be built for this match (nothing is changed)."""
    g = module.graph
    last = max(m.nodes.values(), key=_position(g))
    before = set(map(id, g.nodes))
    b = Builder(module, insert_before=last, loc=last.loc)
    try:
        new_outs = instantiate(m.rule.target, module, m.inputs(), m.attrs, b)
        for old, new in zip(m.outputs(), new_outs):
            if old.type.dtype != new.type.dtype or len(old.type.shape) != len(new.type.shape) or any(
                    isinstance(a, int) and isinstance(c, int) and a != c for a, c in zip(old.type.shape,
                                                                                          new.type.shape)):
                raise RuleError(f"rule {m.rule.name}: the target's {new.type} does not replace {old.type}")
    except EffcError:
        for n in [n for n in g.nodes if id(n) not in before]:
            g.remove(n, force=True)
        raise
    added = [n for n in g.nodes if id(n) not in before]
    renames = []
    for old, new in zip(m.outputs(), new_outs):
        if old.is_graph_output:
            renames.append((new, old.name))
            old.replace_all_uses_with(new, replace_graph_outputs=True)
        else:
            old.replace_all_uses_with(new)
    g.eliminate_dead_code()
    for new, name in renames:  # a graph output keeps its name once the node that had it is gone
        if name not in g.names and new.producer is not None:
            g.rename(new, name)
    _topological(g)
    return added


def _position(g: Graph):
    index = {id(n): i for i, n in enumerate(g.nodes)}
    return lambda n: index[id(n)]


def _topological(g: Graph) -> None:
    """Reorder ``g`` so every value is defined before it is read, keeping the current order
    where it already holds (the target was inserted before the match's last node, which
    users of its first outputs may precede)."""
    nodes = list(g.nodes)
    pos = {id(n): i for i, n in enumerate(nodes)}
    waiting = {id(n): sum(1 for v in n.inputs if v is not None and v.producer is not None) for n in nodes}
    ready = [(pos[id(n)], n) for n in nodes if waiting[id(n)] == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        _, n = heapq.heappop(ready)
        order.append(n)
        for v in n.outputs:
            for use in v.uses():
                waiting[id(use.node)] -= 1
                if waiting[id(use.node)] == 0:
                    heapq.heappush(ready, (pos[id(use.node)], use.node))
    g.reorder(order)


__all__ = ["Rule", "RuleError", "Template", "Match", "RULES_DIR", "OBJECTIVES", "parse_rules", "load_rules",
           "bundled_rules", "find_matches", "instantiate", "apply_match"]
