"""The IR's text form, reading side: text (the syntax ``ir/grammar.lark`` specifies) to ``Module``.

A hand-written tokenizer and recursive-descent parser, because the text can be large (a
dump of a big model is tens of MB) and hostile: it reads several MB/s, keeps at most one
chunk of tokens (``_CHUNK`` characters' worth) in memory besides the module it builds, and
never recurses deeper than ``MAX_NESTING`` bodies. The parser trusts the printed types (it
runs no shape inference; the verifier checks them) and builds the IR through ``ir.core``'s
API. Every failure, syntactic or semantic, raises ``ParseError`` with the line and column
of the offending token (found again only when an error is reported).
"""
from __future__ import annotations

import gc
import json
import math
import re
from bisect import bisect_right
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from . import ops as _ops  # noqa: F401  (importing it fills the op registry)
from .core import AttrValue, Graph, Module, Node, Resource, Value, WeightStore
from .errors import ParseError, VerificationError
from .lexical import format_name
from .opdef import REGISTRY
from .printer import MODULE_KEYS, attr_kind
from .sidecar import open_sidecar
from .types import DType, QuantParams, TensorType

MAX_NESTING = 64
"""Deepest ``body(...) { ... }`` nesting read; deeper text is refused rather than recursed."""

_I64_MAX = 2**63 - 1

# ----------------------------------------------------------------------------- tokens

_WS = r"[ \t\f\r\n]"
_SKIP = rf"(?:{_WS}++|//[^\n]*+)"
# Possessive quantifiers throughout: a failed match never backtracks, so hostile text
# (a 20 MB string, a huge run of spaces) costs linear time and no matcher state.
_STRING = r'"[^"\\\n]*+(?:\\.[^"\\\n]*+)*+"'
_NUM = r"-?+(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)(?:[eE][-+]?+[0-9]++)?+"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*+"
_DIM = rf"(?:[0-9]++|{_IDENT}|\?)"
# One token per match (group 1); whitespace and // comments are skipped in front of it
# (trailing ones match the second branch, an empty token). Two coarse tokens keep big
# dumps quick: a type without spaces (``f32[N,3]``) and a list of plain numbers
# (``[1, 2.5]``). Anything else is read one symbol at a time; ``\S`` catches stray characters.
_VALUE = rf"%(?:[A-Za-z0-9_][A-Za-z0-9_.]*+|{_STRING})"
_TYPE = rf"{_IDENT}\[(?:{_DIM}(?:,{_DIM})*+)?+\]"
_NUMS = rf"\[ *+(?:{_NUM}(?: *+, *+{_NUM})*+)?+ *+\]"
_ARG = rf"(?:{_VALUE}|_)"
_TOKEN = re.compile(
    rf"{_SKIP}*+("
    rf"{_STRING}"
    rf"|{_VALUE}|@(?:[A-Za-z0-9_][A-Za-z0-9_.]*+|{_STRING})"
    rf"|dense<{_TYPE} {_NUMS}>|resource<{_STRING}>|loc\({_STRING}\)"
    rf"|{_TYPE}"
    rf"|{_IDENT}"
    rf"|{_NUMS}"
    rf"|(?<=[A-Za-z0-9_])\((?:{_ARG}(?:, {_ARG})*+)?+\)"
    rf"|->|-inf(?![A-Za-z0-9_])"
    rf"|{_NUM}"
    rf"|\S)|{_SKIP}++")
"""Coarse tokens, each read whole: ``dense<f32[2] [1.0, 2.0]>``, ``resource<"key">``,
``loc("name")``, an argument list right after an op name ``(%a, _, %b)`` and the two above."""
_NUMBERS_IN = re.compile(_NUM)
_ARGS_IN = re.compile(_ARG)
_PUNCT = frozenset("{}()[]<>,=:?")
_CHUNK = 1 << 20
"""Characters tokenized at a time: bounds the token list whatever the text holds."""

_SPECIAL_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _describe(tok: str | None) -> str:
    """How an error message shows a token."""
    return "end of input" if tok is None else repr(tok)


def _expected(wanted: tuple[str, ...]) -> str:
    shown = sorted(set(wanted))
    return "; expected " + (shown[0] if len(shown) == 1 else "one of: " + ", ".join(shown))


VALUE = "a value (%name)"
NAME = "a name"
STRING = "a string"
NUMBER = "a number"


class _Tokens:
    """The token stream, tokenized ``_CHUNK`` characters at a time.

    Tokens are bare strings (their kind is their first character). A token is referred to
    by its global index, or by (index, k) for the k-th element inside a coarse token; its
    line and column are found again only for an error message."""

    def __init__(self, text: str, source: str):
        self.text, self.source = text, source
        self.pos = 0  # where the next chunk starts
        self.chunks: list[tuple[int, int]] = []  # (index of its first token, its start offset)
        self.toks: list[str] = []
        self.base = 0  # global index of toks[0]
        self.i = 0  # the next token is toks[i]

    def _more(self) -> str | None:
        """The next token once ``toks`` is used up: tokenize the next chunk, which ends at
        a newline (no token spans one). None at the end of input."""
        text = self.text
        while self.i >= len(self.toks) and self.pos < len(text):
            start = self.pos
            end = text.find("\n", start + _CHUNK)
            end = len(text) if end < 0 else end + 1
            self.base += len(self.toks)
            self.i = 0
            self.toks = _TOKEN.findall(text, start, end)
            self.pos = end
            if self.toks and not self.toks[-1]:  # trailing whitespace
                self.toks.pop()
            if self.toks:
                self.chunks.append((self.base, start))
        return self.toks[self.i] if self.i < len(self.toks) else None

    def peek(self) -> str | None:
        try:
            return self.toks[self.i]
        except IndexError:
            return self._more()

    def position(self, at: int | tuple[int, int | None] | None) -> tuple[int | None, int | None]:
        """Line and column of the token at ``at`` (the end of input past the last)."""
        if at is None:
            return None, None
        index, k = at if isinstance(at, tuple) else (at, None)
        c = bisect_right([c[0] for c in self.chunks], index) - 1
        if c >= 0:
            first, start = self.chunks[c]
            end = self.chunks[c + 1][1] if c + 1 < len(self.chunks) else len(self.text)
            for n, m in enumerate(_TOKEN.finditer(self.text, start, end)):
                if first + n == index:
                    return self._line_col(m.start(1) + _inner_offset(m.group(1), k))
        return self._line_col(len(self.text))

    def _line_col(self, offset: int) -> tuple[int, int]:
        line = self.text.count("\n", 0, offset) + 1
        return line, offset - (self.text.rfind("\n", 0, offset) + 1) + 1

    def fail(self, message: str, at: int | tuple[int, int | None] | None) -> ParseError:
        line, column = self.position(at)
        return ParseError(message, line, column, self.source)


def _inner_offset(tok: str, k: int | None) -> int:
    """Where the k-th element of a coarse token starts in it (0 for the token itself)."""
    if k is None:
        return 0
    if tok.startswith("resource<"):
        return len("resource<")
    if tok.startswith("dense<"):
        start = tok.index(" [")
        return start + _inner_offset(tok[start:], k)
    pattern = _ARGS_IN if tok.startswith("(") else _NUMBERS_IN
    starts = [m.start() for m in pattern.finditer(tok)]
    return starts[k] if k < len(starts) else 0


# ----------------------------------------------------------------------------- literals
# A parsed attribute literal is a tuple (kind, payload, where): ("num", "1.5", i),
# ("str", '"a"', i), ("name", "f32", i), ("list", [literals], i), ("nums", ["1", "2"], i)
# (a list read as one coarse token), ("resource", '"key"', i), ("dense", (...), i),
# ("bool", "true", i).

Lit = tuple


def _is_int_text(text: str) -> bool:
    return "." not in text and "e" not in text and "E" not in text and text not in _SPECIAL_FLOATS


def _check_unicode(text: str) -> bool:
    """True when ``text`` encodes as UTF-8 (a JSON escape can spell a lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Parser(_Tokens):
    """Reads the grammar top-down and builds graphs scope by scope as it goes.

    The token helpers are written out (try/except IndexError instead of a length check,
    few calls per token) because they run once per token of dumps of millions of tokens."""

    def __init__(self, text: str, source: str, weights: WeightStore):
        super().__init__(text, source)
        self.weights = weights
        self.resources: list[tuple[str, Any]] = []
        self.at: int | None = None  # the statement being read, for unforeseen errors
        self.depth = 0
        self.types: dict[str, TensorType] = {}  # coarse type token -> type (types repeat a lot)

    # -- token helpers
    def unexpected(self, *wanted: str) -> ParseError:
        """The next token is not one of ``wanted`` (descriptions as in messages)."""
        tok = self.peek()
        at = self.base + self.i
        if tok is not None and len(tok) == 1 and tok not in _PUNCT and not (
                tok.isascii() and (tok.isalnum() or tok == "_")):
            return self.fail(f"unexpected character {tok!r}{_expected(wanted)}", at)
        return self.fail(f"unexpected {_describe(tok)}{_expected(wanted)}", at)

    def expect(self, symbol: str, *also: str) -> int:
        """Consume the punctuation or keyword ``symbol``; ``also`` adds to what an error
        says was acceptable here. Returns the token's index."""
        try:
            tok = self.toks[self.i]
        except IndexError:
            tok = self._more()
        if tok != symbol:
            raise self.unexpected(repr(symbol), *also)
        self.i += 1
        return self.base + self.i - 1

    def accept(self, symbol: str) -> bool:
        try:
            tok = self.toks[self.i]
        except IndexError:
            tok = self._more()
        if tok == symbol:
            self.i += 1
            return True
        return False

    def token_of(self, first: str, what: str, *also: str) -> tuple[str, int]:
        """The next token when it starts with ``first`` (``%``, ``@``, ``"``)."""
        try:
            tok = self.toks[self.i]
        except IndexError:
            tok = self._more()
        if tok is None or tok[0] != first or len(tok) < 2:
            raise self.unexpected(what, *also)
        self.i += 1
        return tok, self.base + self.i - 1

    def ident(self, *also: str) -> tuple[str, int]:
        try:
            tok = self.toks[self.i]
        except IndexError:
            tok = self._more()
        if tok is None or not (tok.isidentifier() and tok.isascii()):
            raise self.unexpected(NAME, *also)
        self.i += 1
        return tok, self.base + self.i - 1

    def paren_list(self, *also: str) -> list[str] | None:
        """After an op, ``body`` or a graph name: the coarse ``(...)`` token's elements, or
        None when a plain ``(`` was read (the caller reads the rest)."""
        tok = self.peek()
        if tok is not None and len(tok) > 1 and tok[0] == "(":
            self.i += 1
            return _ARGS_IN.findall(tok)
        self.expect("(", *also)
        return None

    # -- literals
    def string(self, tok: str, at: Any) -> str:
        if "\\" not in tok and tok.isascii() and tok.isprintable():  # nothing to unescape
            return tok[1:-1]
        try:
            value = json.loads(tok)
        except ValueError as e:
            raise self.fail(f"bad string literal {tok[:80]}: {e}", at) from None
        if not isinstance(value, str):
            raise self.fail(f"expected a string, got {tok[:80]}", at)
        if not _check_unicode(value):
            raise self.fail(f"string {tok[:40]}{'...' if len(tok) > 40 else ''} holds a lone surrogate "
                            "(\\ud800-\\udfff without its pair): names and strings must be valid Unicode", at)
        return value

    def name(self, tok: str, at: Any) -> str:
        """The name in a ``%value`` or ``@graph`` token."""
        if tok[1] != '"':
            return tok[1:]
        name = self.string(tok[1:], at)
        if not name:
            raise self.fail(f"empty name {tok}", at)
        return name

    def key(self, *also: str) -> tuple[str, bool, int]:
        """An attribute or header key: (name, was it quoted, token index)."""
        tok = self.peek()
        if tok is not None and tok[0] == '"' and len(tok) > 1:
            self.i += 1
            at = self.base + self.i - 1
            return self.string(tok, at), True, at
        tok, at = self.ident(STRING, *also)
        return tok, False, at

    def to_int(self, lit: Lit, what: str) -> int:
        if lit[0] != "num" or not _is_int_text(lit[1]):
            raise self.fail(f"{what} must be an integer", lit[2])
        try:
            return int(lit[1])
        except ValueError:
            raise self.fail(f"integer literal too long in {what}", lit[2]) from None

    def to_float(self, lit: Lit, what: str) -> float:
        if lit[0] != "num":
            raise self.fail(f"{what} must be a number", lit[2])
        special = _SPECIAL_FLOATS.get(lit[1])
        return special if special is not None else float(lit[1])

    def dtype(self, tok: str, at: Any) -> DType:
        try:
            return DType.parse(tok)
        except ValueError as e:
            raise self.fail(str(e), at) from None

    def number(self, *also: str) -> Lit:
        tok = self.peek()
        if tok is not None and (tok in _SPECIAL_FLOATS or _is_number_token(tok)):
            self.i += 1
            return ("num", tok, self.base + self.i - 1)
        raise self.unexpected(NUMBER, *also)

    # -- types
    def dim(self) -> int | str:
        tok = self.peek()
        at = self.base + self.i
        if tok is not None and _is_number_token(tok):
            self.i += 1
            return self.check_dim(self.to_int(("num", tok, at), "a dimension"), at)
        if tok == "?":
            self.i += 1
            return "?"
        if tok is not None and tok[0] == '"' and len(tok) > 1:
            self.i += 1
            return self.string(tok, at)
        return self.ident("'?'", NUMBER, STRING)[0]

    def check_dim(self, value: int, at: Any) -> int:
        if value < 0:
            raise self.fail("a dimension must not be negative", at)
        if value > _I64_MAX:
            raise self.fail(f"dimension {value} does not fit i64", at)
        return value

    def shape(self) -> tuple[int | str, ...]:
        """``[d0,d1,...]``, as one coarse number-list token or symbol by symbol."""
        tok = self.peek()
        at = self.base + self.i
        if tok is not None and tok[0] == "[" and len(tok) > 1:
            self.i += 1
            return tuple(self.check_dim(self.to_int(("num", s, (at, k)), "a dimension"), (at, k))
                         for k, s in enumerate(_NUMBERS_IN.findall(tok)))
        self.expect("[")
        dims: list[int | str] = []
        if not self.accept("]"):
            dims.append(self.dim())
            while not self.accept("]"):
                self.expect(",", "']'")
                dims.append(self.dim())
        return tuple(dims)

    def type_head(self, tok: str | None = None) -> tuple[TensorType, int]:
        """``f32[N,3]`` (no quant) and its token index; ``tok``: the head of a coarse
        ``dense<...>``, already consumed."""
        if tok is None:
            tok = self.peek()
            if tok is None or "[" not in tok or not tok[0].isalpha():
                head, at = self.ident()
                return TensorType(self.dtype(head, at), self.shape()), at
            self.i += 1
        at = self.base + self.i - 1
        cached = self.types.get(tok)
        if cached is None:
            head, _, dims = tok[:-1].partition("[")
            shape = tuple(self.check_dim(int(d), at) if d.isdigit() else d
                          for d in dims.split(",")) if dims else ()
            cached = self.types[tok] = TensorType(self.dtype(head, at), shape)
        return cached, at

    def type(self) -> TensorType:
        t, _ = self.type_head()
        return TensorType(t.dtype, t.shape, self.quant()) if self.peek() == "quant" else t

    def quant(self) -> QuantParams:
        at = self.expect("quant")
        self.expect("<")
        self.expect("scale")
        self.expect("=")
        scale = tuple(self.to_float(x, "a quantization scale") for x in _items(self.list_literal(False)))
        self.expect(",")
        self.expect("zero_point")
        self.expect("=")
        zero_point = tuple(self.to_int(x, "a zero point") for x in _items(self.list_literal(False)))
        self.expect(",")
        axis = None
        if self.accept("axis"):
            self.expect("=")
            axis = self.to_int(self.number(), "the quantization axis")
            self.expect(",")
        self.expect("bits", "'axis'")
        self.expect("=")
        bits = self.to_int(self.number(), "the quantization bits")
        self.expect(">")
        try:
            return QuantParams(scale, zero_point, axis, bits)
        except ValueError as e:
            raise self.fail(str(e), at) from None

    # -- attribute literals
    def list_literal(self, scalars: bool | str) -> Lit:
        """``[a, b]`` of numbers (and strings when ``scalars`` is True; true/false when
        it is ``"bools"``)."""
        tok = self.peek()
        at = self.base + self.i
        if tok is not None and tok[0] == "[" and len(tok) > 1:
            self.i += 1
            return ("nums", _NUMBERS_IN.findall(tok), at)
        self.expect("[")
        items: list[Lit] = []
        if not self.accept("]"):
            items.append(self.scalar(scalars))
            while not self.accept("]"):
                self.expect(",", "']'")
                items.append(self.scalar(scalars))
        return ("list", items, at)

    def scalar(self, strings: bool | str) -> Lit:
        tok = self.peek()
        at = self.base + self.i
        if strings is True and tok is not None and tok[0] == '"' and len(tok) > 1:
            self.i += 1
            return ("str", tok, at)
        if strings == "bools" and tok in ("true", "false"):
            self.i += 1
            return ("bool", tok, at)
        also = (STRING,) if strings is True else ("'true'", "'false'") if strings == "bools" else ()
        return self.number(*also)

    def avalue(self) -> Lit:
        """One attribute value: number, string, dtype name, list, resource<...> or dense<...>."""
        tok = self.peek()
        at = self.base + self.i
        if tok is None:
            raise self.unexpected(NUMBER, STRING, NAME, "'['")
        c = tok[0]
        if c == "[":
            return self.list_literal(True)
        if c == '"' and len(tok) > 1:
            self.i += 1
            return ("str", tok, at)
        if tok in _SPECIAL_FLOATS or _is_number_token(tok):
            self.i += 1
            return ("num", tok, at)
        if tok.startswith("dense<") and len(tok) > 6:  # coarse: dense<f32[2] [1.0, 2.0]>
            self.i += 1
            head, _, elements = tok[6:-1].partition(" ")
            t, _ = self.type_head(head)
            return ("dense", (t.dtype, t.shape, at, ("nums", _NUMBERS_IN.findall(elements), at)), at)
        if tok.startswith("resource<") and len(tok) > 9:
            self.i += 1
            return ("resource", tok[9:-1], (at, 0))
        if tok == "resource":
            self.i += 1
            self.expect("<")
            key, key_at = self.token_of('"', STRING)
            self.expect(">")
            return ("resource", key, key_at)
        if tok == "dense":
            self.i += 1
            self.expect("<")
            head, type_at = self.type_head()
            elements = self.list_literal("bools")
            self.expect(">")
            return ("dense", (head.dtype, head.shape, type_at, elements), at)
        name, _ = self.ident(NUMBER, STRING, "'['")
        return ("name", name, at)

    # -- attribute conversion (by the schema's kind)
    def literal_kind(self, lit: Lit) -> str:
        """The kind an attribute literal has on its own (attrs outside an op's schema)."""
        kind = lit[0]
        if kind == "num":
            return "int" if _is_int_text(lit[1]) else "float"
        if kind in ("str", "name"):
            return kind if kind == "str" else "dtype"
        if kind in ("resource", "dense"):
            return "tensor"
        if kind == "nums":
            return "ints" if all(_is_int_text(s) for s in lit[1]) else "floats"
        kinds = {self.literal_kind(x) for x in lit[1]}
        if kinds <= {"int"}:
            return "ints"
        if kinds == {"str"}:
            return "strs"
        if "str" in kinds:
            raise self.fail("a list attribute mixes strings and numbers", lit[2])
        return "floats"

    def scalar_value(self, lit: Lit, kind: str, what: str) -> AttrValue:
        if kind == "int":
            return self.to_int(lit, what)
        if kind == "float":
            return self.to_float(lit, what)
        if lit[0] != "str":
            raise self.fail(f"{what} must be a string", lit[2])
        return self.string(lit[1], lit[2])

    def attr_value(self, lit: Lit, kind: str, what: str) -> AttrValue:
        """An attribute literal as ``kind``."""
        if kind in ("int", "float", "str"):
            return self.scalar_value(lit, kind, what)
        if kind in ("ints", "floats", "strs"):
            if lit[0] not in ("list", "nums"):
                raise self.fail(f"{what} must be a list ([...])", lit[2])
            return tuple(self.scalar_value(x, kind[:-1], f"an element of {what}") for x in _items(lit))
        if kind == "dtype":
            if lit[0] != "name":
                raise self.fail(f"{what} must be a dtype such as f32", lit[2])
            return self.dtype(lit[1], lit[2])
        if lit[0] == "resource":
            key = self.string(lit[1], lit[2])
            self.resources.append((key, lit[2]))
            return Resource(key, self.weights)
        if lit[0] == "dense":
            return self.dense(lit)
        raise self.fail(f"{what} must be a tensor: resource<\"key\"> or dense<...>", lit[2])

    def dense(self, lit: Lit) -> np.ndarray:
        dtype, dims, type_at, elements = lit[1]
        if not all(isinstance(d, int) for d in dims):
            raise self.fail("a dense tensor needs a static shape", type_at)
        count = math.prod(dims)
        if len(elements[1]) != count:
            raise self.fail(f"dense tensor of shape {list(dims)} needs {count} elements, "
                            f"got {len(elements[1])}", lit[2])
        if elements[0] == "nums" and dtype is not DType.bool:
            values = self.fast_elements(elements, dtype)
        else:
            values = [self.element(e, dtype) for e in _items(elements)]
        if dtype.is_float:  # via float64: the printed digits round correctly into any narrower float
            with np.errstate(over="ignore"):
                return np.array(values, dtype=np.float64).astype(dtype.np).reshape(dims)
        return np.array(values, dtype=dtype.np).reshape(dims)

    def fast_elements(self, elements: Lit, dtype: DType) -> list:
        """Elements of a coarse number list, converted in bulk (errors fall back to ``element``)."""
        strs = elements[1]
        try:
            if dtype.is_float:
                return [float(s) for s in strs]
            if all(_is_int_text(s) for s in strs):
                values = [int(s) for s in strs]
                info = _int_range(dtype)
                if not values or (info.min <= min(values) and max(values) <= info.max):
                    return values
        except ValueError:
            pass
        return [self.element(e, dtype) for e in _items(elements)]

    def element(self, lit: Lit, dtype: DType) -> bool | int | float:
        if dtype is DType.bool:
            if lit[0] != "bool":
                raise self.fail("a bool element must be true or false", lit[2])
            return lit[1] == "true"
        if dtype.is_float:
            return self.to_float(lit, f"a {dtype.value} element")
        value = self.to_int(lit, f"an {dtype.value} element")
        info = _int_range(dtype)
        if not info.min <= value <= info.max:
            raise self.fail(f"{value} does not fit {dtype.value}", lit[2])
        return value

    def attrs(self, op: str) -> dict[str, AttrValue]:
        """``{key=value, ...}`` (the ``{`` already read)."""
        out: dict[str, AttrValue] = {}
        if self.accept("}"):
            return out
        while True:
            name, _, at = self.key("'}'") if not out else self.key()
            if name in out:
                raise self.fail(f"attribute '{name}' given twice", at)
            self.expect("=")
            lit = self.avalue()
            kind = attr_kind(op, name) or self.literal_kind(lit)
            out[name] = self.attr_value(lit, kind, f"attribute '{name}' of {op}")
            if self.accept("}"):
                return out
            self.expect(",", "'}'")

    # -- graphs
    def define(self, scope: dict[str, Value], tok: str, at: Any) -> str:
        name = self.name(tok, at)
        if name in scope:
            raise self.fail(f"value {format_name('%', name)} is defined twice", at)
        return name

    def use(self, scope: dict[str, Value], tok: str, at: Any) -> Value:
        value = scope.get(tok[1:]) if tok[1] != '"' else None
        if value is not None:
            return value
        name = self.name(tok, at)
        value = scope.get(name)
        if value is None:
            raise self.fail(f"undefined value {format_name('%', name)}", at)
        return value

    def params(self, g: Graph, scope: dict[str, Value]) -> None:
        """``(%x: type, ...)``."""
        coarse = self.paren_list()
        if coarse is not None:
            if coarse:
                self.i -= 1
                raise self.fail("a parameter needs a type: %name: type", self.base + self.i)
            return
        if self.accept(")"):
            return
        while True:
            tok, at = self.token_of("%", VALUE, "')'") if not g.inputs else self.token_of("%", VALUE)
            name = self.define(scope, tok, at)
            self.expect(":")
            scope[name] = g.add_input(name, self.type())
            if self.accept(")"):
                return
            self.expect(",", "')'", "'quant'")

    def args(self, scope: dict[str, Value]) -> list[Value | None]:
        """An op's arguments ``(%a, _, %b)``."""
        at = self.base + self.i
        coarse = self.paren_list()
        if coarse is not None:
            return [None if a == "_" else self.use(scope, a, (at, k)) for k, a in enumerate(coarse)]
        inputs: list[Value | None] = []
        if self.accept(")"):
            return inputs
        while True:
            if self.accept("_"):
                inputs.append(None)
            else:
                tok, at = self.token_of("%", VALUE, "'_'", "')'" if not inputs else "'_'")
                inputs.append(self.use(scope, tok, at))
            if self.accept(")"):
                return inputs
            self.expect(",", "')'")

    def node(self, scope: dict[str, Value]) -> Node:
        names: list[str] = []
        tok = self.peek()
        if tok == "()" or tok == "(":
            self.i += 1
            if tok == "(":
                self.expect(")")
        else:
            while True:
                tok, at = self.token_of("%", VALUE)
                names.append(self.define(scope, tok, at))
                if len(names) > 1 and names.count(names[-1]) > 1:
                    raise self.fail(f"value {tok} is defined twice", at)
                if not self.accept(","):
                    break
        self.expect("=", "','")
        op, op_at = self.ident()
        if op not in REGISTRY:
            raise self.fail(f"unknown op '{op}'", op_at)
        inputs = self.args(scope)
        attrs = self.attrs(op) if self.accept("{") else {}
        types: list[TensorType] = []
        types_at = op_at
        if self.peek() == ":":
            types_at = self.base + self.i
            self.i += 1
            types.append(self.type())
            while self.accept(","):
                types.append(self.type())
        if len(types) != len(names):
            raise self.fail(f"{op} names {len(names)} result(s) but gives {len(types)} type(s)", types_at)
        loc = None
        tok = self.peek()
        if tok is not None and tok.startswith("loc"):
            loc = self.loc(tok)
            tok = self.peek()
        body = self.body() if tok == "body" else None
        return Node(op, inputs, types, attrs, output_names=names, body=body, loc=loc)

    def loc(self, tok: str) -> str | None:
        """``loc("name")``, one coarse token or four."""
        if tok == "loc":
            self.i += 1
            self.expect("(")
            tok, at = self.token_of('"', STRING)
            self.expect(")")
            return self.string(tok, at)
        if tok.startswith('loc("'):
            self.i += 1
            return self.string(tok[4:-1], self.base + self.i - 1)
        return None

    def statements(self, g: Graph, scope: dict[str, Value]) -> list[tuple[str, int]]:
        """Statements up to and including ``return ... }``; sets the graph's outputs and
        returns the returned value tokens."""
        while True:
            tok = self.peek()
            if tok == "return":
                break
            if tok is None or (tok[0] != "%" and tok != "(" and tok != "()"):
                raise self.unexpected(VALUE, "'('", "'return'")
            self.at = self.base + self.i
            node = g.append(self.node(scope))
            for v in node.outputs:
                scope[v.name] = v
        self.at = self.base + self.i
        self.i += 1
        returned: list[tuple[str, int]] = []
        tok = self.peek()
        if tok is not None and tok[0] == "%":
            returned.append(self.token_of("%", VALUE))
            while self.accept(","):
                returned.append(self.token_of("%", VALUE))
        self.expect("}", "','" if returned else VALUE)
        g.set_outputs([self.use(scope, tok, at) for tok, at in returned])
        return returned

    def body(self) -> Graph:
        at = self.expect("body")
        if self.depth >= MAX_NESTING:
            raise self.fail(f"bodies nested deeper than {MAX_NESTING}", at)
        self.depth += 1
        g = Graph("body")
        scope: dict[str, Value] = {}
        self.params(g, scope)
        self.expect("{")
        self.statements(g, scope)
        self.depth -= 1
        return g

    def graph(self) -> Graph:
        self.expect("graph", "'module'")
        tok, at = self.token_of("@", "a graph name (@name)")
        g = Graph(self.name(tok, at))
        scope: dict[str, Value] = {}
        self.params(g, scope)
        self.expect("->")
        self.expect("(")
        declared: list[TensorType] = []
        if not self.accept(")"):
            declared.append(self.type())
            while not self.accept(")"):
                self.expect(",", "')'", "'quant'")
                declared.append(self.type())
        self.expect("{")
        returned = self.statements(g, scope)
        if len(declared) != len(g.outputs):
            raise self.fail(f"graph returns {len(g.outputs)} value(s) but its signature declares "
                            f"{len(declared)}", self.at)
        for v, t, (_, at) in zip(g.outputs, declared, returned):
            if v.type != t:
                raise self.fail(f"returned value {format_name('%', v.name)} has type {v.type} but the "
                                f"signature declares {t}", at)
        return g

    # -- module
    def header(self) -> dict:
        """``module {key=value, ...}`` (``module`` already read)."""
        self.expect("{")
        fields: dict = {"metadata": {}}
        seen: set[tuple[str, bool]] = set()
        first = True
        while not self.accept("}"):
            if not first:
                self.expect(",", "'}'")
            key, quoted, at = self.key("'}'") if first else self.key()
            first = False
            shown = json.dumps(key) if quoted else key
            if (key, quoted) in seen:
                raise self.fail(f"module key {shown} given twice", at)
            seen.add((key, quoted))
            self.expect("=")
            value = self.header_value()
            if key == "opset" and not quoted:
                fields["opset"] = self.to_int(value, "opset")
                continue
            if value[0] != "str":
                raise self.fail(f"module key {shown} takes a string", value[2])
            text = self.string(value[1], value[2])
            if key in MODULE_KEYS and not quoted:
                fields[key] = text
            else:
                fields["metadata"][key] = text
        return fields

    def header_value(self) -> Lit:
        tok = self.peek()
        at = self.base + self.i
        if tok is not None and tok[0] == '"' and len(tok) > 1:
            self.i += 1
            return ("str", tok, at)
        if tok is not None and _is_number_token(tok):
            self.i += 1
            return ("num", tok, at)
        raise self.unexpected(NUMBER, STRING)

    def module(self) -> Module:
        fields = self.header() if self.accept("module") else {}
        g = self.graph()
        if self.peek() is not None:
            raise self.unexpected("end of input")
        return Module(g, self.weights, **fields)

    def check_resources(self, where: str) -> None:
        for key, at in self.resources:
            if key not in self.weights:
                raise self.fail(f"resource \"{key}\" is not in {where}", at)


def _is_number_token(tok: str) -> bool:
    """Whether a token is a NUMBER (the tokenizer made it one: only its start tells)."""
    c = tok[0]
    return c in _DIGITS or (c in ".-" and len(tok) > 1 and tok[1] in _DIGITS_DOT)


_DIGITS = frozenset("0123456789")
_DIGITS_DOT = frozenset("0123456789.")


@cache
def _int_range(dtype: DType) -> np.iinfo:
    """``np.iinfo`` of an integer dtype, made once (dense literals ask for it thousands of times)."""
    if dtype.bits < 8:  # int4/uint4: numpy has no iinfo for ml_dtypes' types
        import ml_dtypes

        return ml_dtypes.iinfo(dtype.np)
    return np.iinfo(dtype.np)  # (DType.int_range is the plain form; this object is cached)


def _items(lit: Lit) -> list[Lit]:
    """The elements of a list literal as literals (a coarse list's strings become numbers)."""
    if lit[0] == "nums":  # each element keeps its own place inside the coarse token
        return [("num", s, (lit[2], k)) for k, s in enumerate(lit[1])]
    return lit[1]


# ----------------------------------------------------------------------------- entry points

_UNFORESEEN = (ValueError, KeyError, TypeError, IndexError, OverflowError, AttributeError,
               VerificationError, RecursionError, MemoryError)


def _build(text: str, weights: WeightStore, source: str, check: str | None) -> tuple[Module, _Parser]:
    """Parse ``text``; ``check`` names where resources must be found (None: don't check)."""
    parser = _Parser(text, source, weights)
    collecting = gc.isenabled()
    gc.disable()  # the parse makes millions of objects and keeps them all: collections only cost time
    try:
        module = parser.module()
        if check is not None:
            parser.check_resources(check)
    except ParseError:
        raise
    except _UNFORESEEN as e:  # a gap in the checks above must still read as a parse error
        raise parser.fail(f"invalid IR: {type(e).__name__}: {e}", parser.at) from e
    finally:
        if collecting:
            gc.enable()
    return module, parser


def parse_module(text: str, weights: WeightStore | Mapping[str, np.ndarray] | None = None,
                 source: str = "<text>") -> Module:
    """Parse the text form into a Module.

    ``weights`` becomes the module's weight store (a mapping is copied into a new one);
    when given, every ``resource<"key">`` must name one of its entries. Without it the
    module gets an empty store and resources are not checked."""
    if weights is None:
        return _build(text, WeightStore(), source, None)[0]
    store = weights if isinstance(weights, WeightStore) else WeightStore()
    if not isinstance(weights, WeightStore):
        for key, array in weights.items():
            store.add(key, array)
    return _build(text, store, source, "the weights")[0]


def _declared_types(module: Module) -> dict[str, TensorType]:
    """The type each resource must have: the result type of a ``const`` that holds it."""
    found: dict[str, TensorType] = {}
    graphs = [module.graph]
    while graphs:
        g = graphs.pop()
        for node in g.nodes:
            if node.body is not None:
                graphs.append(node.body)
            value = node.attrs.get("value")
            if node.op == "const" and isinstance(value, Resource) and node.outputs:
                found.setdefault(value.key, node.outputs[0].type)
    return found


def load_module(path: str | Path) -> Module:
    """Read a module saved by ``save_module``: ``path`` and its ``.npz`` sidecar.

    Each weight's header in the sidecar is checked against the type its ``const``
    declares before any data is decompressed; the data itself is read lazily."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"not UTF-8 text: {e}", None, None, str(path)) from None
    except OSError as e:
        raise ParseError(f"cannot read: {e.strerror or e}", None, None, str(path)) from None
    sidecar = path.with_suffix(".npz")
    if not (sidecar.exists() and sidecar != path):
        return _build(text, WeightStore(), str(path), f"the weights: {sidecar} does not exist")[0]
    try:
        weights = open_sidecar(sidecar)
    except ValueError as e:
        raise ParseError(str(e), None, None, str(path)) from None
    store = WeightStore()
    for key in weights.keys():
        store.add(key, lambda key=key: weights.load(key))
    module, parser = _build(text, store, str(path), f"the weights file {sidecar}")
    for key, declared in _declared_types(module).items():
        problem = weights.mismatch(key, declared)
        if problem is not None:
            at = next(at for k, at in parser.resources if k == key)
            raise parser.fail(f"resource \"{key}\" in {sidecar}: {problem}", at)
    return module


__all__ = ["parse_module", "load_module", "MAX_NESTING"]


def copy_module(module: Module) -> Module:
    """An independent copy of ``module`` (through its text: what the text holds is what the
    module is); the weight arrays are shared, the stores are not, so constants added to
    one copy do not appear in the other."""
    from .printer import print_module, referenced_resources

    return parse_module(print_module(module), {k: r.get() for k, r in referenced_resources(module).items()})
