"""The IR's text form, reading side: text (``ir/grammar.lark``) to ``Module``.

The parser trusts the printed types (it runs no shape inference; the verifier checks
them) and builds the IR through ``ir.core``'s API. Every failure, syntactic or semantic,
raises ``ParseError`` with the line and column of the offending token.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
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
    return Lark(grammar, parser="lalr", propagate_positions=True)


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


def _syntax_error(e: UnexpectedInput, text: str, source: str) -> ParseError:
    """Translate a lark error into a ParseError that says what was expected."""
    line, column = e.line, e.column
    if isinstance(e, UnexpectedToken):
        at_end = e.token.type == "$END"
        found = "end of input" if at_end else repr(str(e.token))
        message = f"unexpected {found}{_expected(e.expected)}"
        if at_end:
            line, column = _end_of(text)
    elif isinstance(e, UnexpectedCharacters):
        message = f"unexpected character {e.char!r}{_expected(e.allowed)}"
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


def _is_int_literal(tok: Token) -> bool:
    return tok.type == "NUMBER" and not any(c in tok for c in ".eE")


def _where(item: Item | None) -> tuple[int | None, int | None]:
    if isinstance(item, Token):
        return item.line, item.column
    if isinstance(item, Tree) and not item.meta.empty:
        return item.meta.line, item.meta.column
    return None, None


_SPECIAL_FLOATS = {"INF": math.inf, "NEG_INF": -math.inf, "NAN": math.nan}


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

    def key(self, tree: Tree) -> tuple[str, bool, Token]:
        """An attribute or header key: (name, was it quoted, token)."""
        tok = tree.children[0]
        quoted = tok.type == "STRING"
        return (self.string(tok) if quoted else str(tok)), quoted, tok

    def int(self, tok: Item, what: str) -> int:
        if not isinstance(tok, Token) or not _is_int_literal(tok):
            raise self.fail(f"{what} must be an integer", tok)
        try:
            return int(tok)
        except ValueError:
            raise self.fail(f"integer literal too long in {what}", tok) from None

    def number_token(self, item: Item, what: str) -> Token:
        if not isinstance(item, Tree) or item.data != "number":
            raise self.fail(f"{what} must be a number", item)
        return item.children[0]

    def float(self, item: Item, what: str) -> float:
        tok = self.number_token(item, what)
        if tok.type in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[tok.type]
        return float(tok)

    def dtype(self, tok: Token) -> DType:
        try:
            return DType.parse(str(tok))
        except ValueError as e:
            raise self.fail(str(e), tok) from None
