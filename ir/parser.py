"""The IR's text form, reading side: text (``ir/grammar.lark``) to ``Module``.

The parser trusts the printed types (it runs no shape inference; the verifier checks
them) and builds the IR through ``ir.core``'s API. Every failure, syntactic or semantic,
raises ``ParseError`` with the line and column of the offending token.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Union

import numpy as np
from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from . import ops as _ops  # noqa: F401  (importing it fills the op registry)
from .core import AttrValue, Graph, Module, Node, Resource, Value, WeightStore
from .errors import ParseError, VerificationError
from .opdef import REGISTRY
from .printer import MODULE_KEYS, attr_kind, format_name
from .sidecar import open_sidecar
from .types import DType, QuantParams, TensorType

Item = Union[Token, Tree]

# ----------------------------------------------------------------------------- syntax


@cache
def _lark() -> Lark:
    grammar = resources.files(__package__).joinpath("grammar.lark").read_text(encoding="utf-8")
    # No propagate_positions: it doubles parse time; errors take the position of a tree's
    # first token instead (see _where).
    return Lark(grammar, parser="lalr", propagate_positions=False)


_TERMINAL_NAMES = {
    "VALUE": "a value (%name)",
    "GRAPH_NAME": "a graph name (@name)",
    "NAME": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "$END": "end of input",
}


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    for term in _lark().terminals:
        if term.name == name and term.pattern.type == "str":
            return repr(term.pattern.value)
    return name.lower()


def _expected(names: set[str] | frozenset[str] | None) -> str:
    shown = sorted({_describe_terminal(n) for n in names or ()})
    if not shown:
        return ""
    return "; expected " + (shown[0] if len(shown) == 1 else "one of: " + ", ".join(shown))


def _end_of(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1


def _acceptable(e: UnexpectedInput, fallback: set[str] | None) -> set[str] | None:
    """The tokens that really continue the parse. The LALR tables merge the followers of
    a rule across contexts, so ``e.expected`` can list tokens that would fail later."""
    parser = getattr(e, "interactive_parser", None)
    if parser is None:
        return fallback
    try:
        return parser.accepts() or fallback
    except LarkError:
        return fallback


def _syntax_error(e: UnexpectedInput, text: str, source: str) -> ParseError:
    """Translate a lark error into a ParseError that says what was expected."""
    line, column = e.line, e.column
    if isinstance(e, UnexpectedToken):
        at_end = e.token.type == "$END"
        found = "end of input" if at_end else repr(str(e.token))
        message = f"unexpected {found}{_expected(_acceptable(e, e.expected))}"
        if at_end:
            line, column = _end_of(text)
    elif isinstance(e, UnexpectedCharacters):
        message = f"unexpected character {e.char!r}{_expected(_acceptable(e, e.allowed))}"
    else:  # UnexpectedEOF
        message = f"unexpected end of input{_expected(getattr(e, 'expected', None))}"
        line, column = _end_of(text)
    if not isinstance(line, int) or line < 1:
        line, column = _end_of(text)
    return ParseError(message, line, column, source)


def _parse_tree(text: str, source: str) -> Tree:
    try:
        return _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(e, text, source) from None
    except LarkError as e:
        raise ParseError(f"cannot parse: {e}", None, None, source) from None


# ----------------------------------------------------------------------------- literals


_SPECIAL_FLOATS = {"INF": math.inf, "NEG_INF": -math.inf, "NAN": math.nan}
_NUMBERS = {"NUMBER", *_SPECIAL_FLOATS}


def _is_int_literal(item: Item) -> bool:
    return isinstance(item, Token) and item.type == "NUMBER" and not any(c in item for c in ".eE")


def _is_number(item: Item) -> bool:
    return isinstance(item, Token) and item.type in _NUMBERS


def _where(item: Item | None) -> tuple[int | None, int | None]:
    if isinstance(item, Tree):
        item = next(item.scan_values(lambda v: isinstance(v, Token)), None)
    if isinstance(item, Token):
        return item.line, item.column
    return None, None


class _Literals:
    """Token-level conversions shared by the builder; ``fail`` makes a positioned error."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, message: str, at: Item | None) -> ParseError:
        line, column = _where(at)
        return ParseError(message, line, column, self.source)

    def string(self, tok: Token) -> str:
        try:
            value = json.loads(str(tok))
        except ValueError as e:
            raise self.fail(f"bad string literal {tok}: {e}", tok) from None
        if not isinstance(value, str):
            raise self.fail(f"expected a string, got {tok}", tok)
        return value

    def name(self, tok: Token) -> str:
        """The name in a ``%value`` or ``@graph`` token."""
        text = str(tok)[1:]
        name = self.string(tok.update(value=text)) if text.startswith('"') else text
        if not name:
            raise self.fail(f"empty name {tok}", tok)
        return name

    def key(self, tok: Token) -> tuple[str, bool]:
        """An attribute or header key: (name, was it quoted)."""
        quoted = tok.type == "STRING"
        return (self.string(tok) if quoted else str(tok)), quoted

    def to_int(self, item: Item, what: str) -> int:
        if not _is_int_literal(item):
            raise self.fail(f"{what} must be an integer", item)
        try:
            return int(item)
        except ValueError:
            raise self.fail(f"integer literal too long in {what}", item) from None

    def to_float(self, item: Item, what: str) -> float:
        if not _is_number(item):
            raise self.fail(f"{what} must be a number", item)
        return _SPECIAL_FLOATS[item.type] if item.type in _SPECIAL_FLOATS else float(item)

    def dtype(self, tok: Token) -> DType:
        try:
            return DType.parse(str(tok))
        except ValueError as e:
            raise self.fail(str(e), tok) from None


class _Builder(_Literals):
    """Walks the parse tree top-down, building graphs scope by scope."""

    def __init__(self, source: str, weights: WeightStore):
        super().__init__(source)
        self.weights = weights
        self.resources: list[tuple[str, Token]] = []
        self.at: Item | None = None  # the statement being built, for unforeseen errors

    # -- types
    def dim(self, tok: Token) -> int | str:
        if tok.type == "NUMBER":
            value = self.to_int(tok, "a dimension")
            if value < 0:
                raise self.fail("a dimension must not be negative", tok)
            return value
        return self.string(tok) if tok.type == "STRING" else str(tok)

    def quant(self, tree: Tree) -> QuantParams:
        scale_list, zp_list, *rest = tree.children
        scale = tuple(self.to_float(x, "a quantization scale") for x in scale_list.children)
        zero_point = tuple(self.to_int(x, "a zero point") for x in zp_list.children)
        axis = self.to_int(rest[0].children[0], "the quantization axis") if len(rest) == 2 else None
        bits = self.to_int(rest[-1], "the quantization bits")
        try:
            return QuantParams(scale, zero_point, axis, bits)
        except ValueError as e:
            raise self.fail(str(e), tree) from None

    def type(self, tree: Tree) -> TensorType:
        dtype_tok, shape, *quant = tree.children
        dtype = self.dtype(dtype_tok)
        dims = tuple(self.dim(d) for d in shape.children)
        return TensorType(dtype, dims, self.quant(quant[0]) if quant else None)

    # -- attributes
    def element(self, item: Item, dtype: DType) -> bool | int | float:
        if dtype is DType.bool:
            if not isinstance(item, Token) or item.type not in ("TRUE", "FALSE"):
                raise self.fail("a bool element must be true or false", item)
            return item.type == "TRUE"
        if dtype.is_float:
            return self.to_float(item, f"a {dtype.value} element")
        value = self.to_int(item, f"an {dtype.value} element")
        info = np.iinfo(dtype.np)
        if not info.min <= value <= info.max:
            raise self.fail(f"{value} does not fit {dtype.value}", item)
        return value

    def dense(self, tree: Tree) -> np.ndarray:
        dtype_tok, shape, *elements = tree.children
        dtype = self.dtype(dtype_tok)
        dims = tuple(self.dim(d) for d in shape.children)
        if not all(isinstance(d, int) for d in dims):
            raise self.fail("a dense tensor needs a static shape", shape)
        count = math.prod(dims)
        if len(elements) != count:
            raise self.fail(f"dense tensor of shape {list(dims)} needs {count} elements, got {len(elements)}", tree)
        values = [self.element(e, dtype) for e in elements]
        if dtype.is_float:  # via float64: the printed digits round correctly into any narrower float
            with np.errstate(over="ignore"):
                return np.array(values, dtype=np.float64).astype(dtype.np).reshape(dims)
        return np.array(values, dtype=dtype.np).reshape(dims)

    def resource(self, tree: Tree) -> Resource:
        tok = tree.children[0]
        key = self.string(tok)
        self.resources.append((key, tok))
        return Resource(key, self.weights)

    def literal_kind(self, item: Item) -> str:
        """The kind an attribute literal has on its own (attrs outside an op's schema)."""
        if isinstance(item, Token):
            if _is_number(item):
                return "int" if _is_int_literal(item) else "float"
            return "str" if item.type == "STRING" else "dtype"
        if item.data != "list":
            return "tensor"
        kinds = {self.literal_kind(x) for x in item.children}
        if kinds <= {"int"}:
            return "ints"
        if kinds == {"str"}:
            return "strs"
        if "str" in kinds:
            raise self.fail("a list attribute mixes strings and numbers", item)
        return "floats"

    def scalar(self, item: Item, kind: str, what: str) -> AttrValue:
        if kind == "int":
            return self.to_int(item, what)
        if kind == "float":
            return self.to_float(item, what)
        if not isinstance(item, Token) or item.type != "STRING":
            raise self.fail(f"{what} must be a string", item)
        return self.string(item)

    def attr_value(self, item: Item, kind: str, what: str) -> AttrValue:
        """An attribute literal (a token, or a list/resource/dense tree) as ``kind``."""
        if kind in ("int", "float", "str"):
            return self.scalar(item, kind, what)
        if kind in ("ints", "floats", "strs"):
            if not isinstance(item, Tree) or item.data != "list":
                raise self.fail(f"{what} must be a list ([...])", item)
            return tuple(self.scalar(x, kind[:-1], f"an element of {what}") for x in item.children)
        if kind == "dtype":
            if not isinstance(item, Token) or item.type != "NAME":
                raise self.fail(f"{what} must be a dtype such as f32", item)
            return self.dtype(item)
        if isinstance(item, Tree) and item.data == "resource":
            return self.resource(item)
        if isinstance(item, Tree) and item.data == "dense":
            return self.dense(item)
        raise self.fail(f"{what} must be a tensor: resource<\"key\"> or dense<...>", item)

    def attrs(self, op: str, tree: Tree | None) -> dict[str, AttrValue]:
        out: dict[str, AttrValue] = {}
        for attr in tree.children if tree is not None else ():
            key_tok, value = attr.children
            name, _ = self.key(key_tok)
            if name in out:
                raise self.fail(f"attribute '{name}' given twice", key_tok)
            kind = attr_kind(op, name) or self.literal_kind(value)
            out[name] = self.attr_value(value, kind, f"attribute '{name}' of {op}")
        return out

    # -- graphs
    def define(self, scope: dict[str, Value], tok: Token) -> str:
        name = self.name(tok)
        if name in scope:
            raise self.fail(f"value {format_name('%', name)} is defined twice", tok)
        return name

    def use(self, scope: dict[str, Value], tok: Token) -> Value:
        name = self.name(tok)
        if name not in scope:
            raise self.fail(f"undefined value {format_name('%', name)}", tok)
        return scope[name]

    def node(self, scope: dict[str, Value], tree: Tree) -> Node:
        results, op_tok, args, *rest = tree.children
        parts = {t.data: t for t in rest}
        op = str(op_tok)
        if op not in REGISTRY:
            raise self.fail(f"unknown op '{op}'", op_tok)
        names: list[str] = []
        for tok in results.children:
            names.append(self.define(scope, tok))
            if names.count(names[-1]) > 1:
                raise self.fail(f"value {tok} is defined twice", tok)
        inputs = [None if a.type == "HOLE" else self.use(scope, a) for a in args.children]
        attrs = self.attrs(op, parts.get("attrs"))
        types = [self.type(t) for t in parts["restypes"].children] if "restypes" in parts else []
        if len(types) != len(names):
            raise self.fail(f"{op} names {len(names)} result(s) but gives {len(types)} type(s)",
                            parts.get("restypes", op_tok))
        loc = self.string(parts["loc"].children[0]) if "loc" in parts else None
        body = self.body(parts["body"]) if "body" in parts else None
        return Node(op, inputs, types, attrs, output_names=names, body=body, loc=loc)

    def region(self, g: Graph, params: Tree, stmts: list[Tree], ret: Tree) -> None:
        """Fill ``g`` from a parameter list, statements and a ``return``; one scope."""
        scope: dict[str, Value] = {}
        for param in params.children:
            tok, type_tree = param.children
            name = self.define(scope, tok)
            scope[name] = g.add_input(name, self.type(type_tree))
        for stmt in stmts:
            self.at = stmt
            node = g.append(self.node(scope, stmt))
            scope.update((v.name, v) for v in node.outputs)
        self.at = ret
        g.set_outputs([self.use(scope, tok) for tok in ret.children[1:]])

    def body(self, tree: Tree) -> Graph:
        params, *stmts, ret = tree.children
        g = Graph("body")
        self.region(g, params, stmts, ret)
        return g

    def graph(self, tree: Tree) -> Graph:
        name_tok, params, types, *stmts, ret = tree.children
        g = Graph(self.name(name_tok))
        self.region(g, params, stmts, ret)
        declared = [self.type(t) for t in types.children]
        if len(declared) != len(g.outputs):
            raise self.fail(f"graph returns {len(g.outputs)} value(s) but its signature declares "
                            f"{len(declared)}", ret)
        for v, t, tok in zip(g.outputs, declared, ret.children[1:]):
            if v.type != t:
                raise self.fail(f"returned value {format_name('%', v.name)} has type {v.type} but the "
                                f"signature declares {t}", tok)
        return g

    # -- module
    def header(self, tree: Tree) -> dict:
        fields: dict = {"metadata": {}}
        seen: set[tuple[str, bool]] = set()
        for entry in tree.children:
            tok, value_tok = entry.children
            key, quoted = self.key(tok)
            if (key, quoted) in seen:
                raise self.fail(f"module key {tok} given twice", tok)
            seen.add((key, quoted))
            if key == "opset" and not quoted:
                fields["opset"] = self.to_int(value_tok, "opset")
                continue
            if value_tok.type != "STRING":
                raise self.fail(f"module key {tok} takes a string", value_tok)
            if key in MODULE_KEYS and not quoted:
                fields[key] = self.string(value_tok)
            else:
                fields["metadata"][key] = self.string(value_tok)
        return fields

    def module(self, tree: Tree) -> Module:
        *header, graph = tree.children
        fields = self.header(header[0]) if header else {}
        return Module(self.graph(graph), self.weights, **fields)

    def check_resources(self, where: str) -> None:
        for key, tok in self.resources:
            if key not in self.weights:
                raise self.fail(f"resource \"{key}\" is not in {where}", tok)


# ----------------------------------------------------------------------------- entry points

_UNFORESEEN = (ValueError, KeyError, TypeError, IndexError, OverflowError, AttributeError,
               VerificationError, RecursionError)


def _build(text: str, weights: WeightStore, source: str, check: str | None) -> Module:
    """Parse ``text``; ``check`` names where resources must be found (None: don't check)."""
    tree = _parse_tree(text, source)
    builder = _Builder(source, weights)
    try:
        module = builder.module(tree)
        if check is not None:
            builder.check_resources(check)
    except ParseError:
        raise
    except _UNFORESEEN as e:  # a gap in the checks above must still read as a parse error
        raise builder.fail(f"invalid IR: {type(e).__name__}: {e}", builder.at) from e
    return module


def parse_module(text: str, weights: WeightStore | Mapping[str, np.ndarray] | None = None,
                 source: str = "<text>") -> Module:
    """Parse the text form into a Module.

    ``weights`` becomes the module's weight store (a mapping is copied into a new one);
    when given, every ``resource<"key">`` must name one of its entries. Without it the
    module gets an empty store and resources are not checked."""
    if weights is None:
        return _build(text, WeightStore(), source, None)
    store = weights if isinstance(weights, WeightStore) else WeightStore()
    if not isinstance(weights, WeightStore):
        for key, array in weights.items():
            store.add(key, array)
    return _build(text, store, source, "the weights")


def load_module(path: str | Path) -> Module:
    """Read a module saved by ``save_module``: ``path`` and its ``.npz`` sidecar (lazily)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"not UTF-8 text: {e}", None, None, str(path)) from None
    sidecar = path.with_suffix(".npz")
    store = WeightStore()
    if sidecar.exists() and sidecar != path:
        try:
            loaders = open_sidecar(sidecar)
        except ValueError as e:
            raise ParseError(str(e), None, None, str(path)) from None
        for key, load in loaders.items():
            store.add(key, load)
        where = f"the weights file {sidecar}"
    else:
        where = f"the weights: {sidecar} does not exist"
    return _build(text, store, str(path), where)


__all__ = ["parse_module", "load_module"]
