"""Pipelines: parsing and printing specs, named pipelines, and running them with instruments.

Spec grammar (whitespace around items is ignored)::

    pipeline := item ("," item)*
    item     := NAME options? | "fixpoint" options? "(" pipeline ")" | "O0" | "O1" | "O2" | "O3"
    options  := "{" (KEY "=" VALUE)* "}"

``str(pipeline)`` prints the canonical spec, which parses back to an equal pipeline."""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

from effc.ir.core import Module
from effc.ir.errors import EffcError

from .base import PASSES, Pass, PassContext, PassError, PipelineSpecError

NAMED_PIPELINES: dict[str, str] = {
    "O0": "",
    "O1": "fold-constants,eliminate-identity,dce",
    "O2": "fixpoint(fold-constants,eliminate-identity,cse,dce),fold-bn,fuse,dce",
    "O3": "fixpoint(fold-constants,eliminate-identity,cse,dce),fold-bn,substitute,"
          "fixpoint(fold-constants,eliminate-identity,cse,dce),fuse{max-ops=16},dce",
    "fold": "fixpoint(fold-constants,eliminate-identity,cse,dce),fold-bn,dce",
}
"""``fold``: -O2 without ``fuse``, the unfused graph ``quantize``, ``prune`` and ``sparsify``
start from."""


@dataclass(frozen=True)
class Fixpoint:
    """Runs its items until none changes the module (at most ``max_iter`` rounds)."""

    items: tuple["Item", ...]
    max_iter: int = 10

    def spec(self) -> str:
        opts = "" if self.max_iter == 10 else "{max-iter=%d}" % self.max_iter
        return f"fixpoint{opts}(" + ",".join(i.spec() for i in self.items) + ")"


Item = Union[Pass, Fixpoint]


@dataclass(frozen=True)
class Pipeline:
    items: tuple[Item, ...] = ()

    def __str__(self) -> str:
        return ",".join(i.spec() for i in self.items)

    def flat(self) -> Iterator[Pass]:
        for i in self.items:
            yield from ([i] if isinstance(i, Pass) else Pipeline(i.items).flat())


# ----------------------------------------------------------------------------- parsing

_BLANK_TAIL = re.compile(r"\s*\Z")
_TOKEN = re.compile(r"\s*(?:(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)|(?P<punct>[,(){}=])|(?P<value>[^\s,(){}=]+))")


MAX_FIXPOINT_NESTING = 16
"""Deepest ``fixpoint(...)`` nesting a spec may have. Parsing, printing and running all
recurse per level; deeper specs are refused instead of overflowing Python's stack."""


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.depth = 0
        self.toks: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            if _BLANK_TAIL.match(text, pos):  # (no text[pos:] copy: specs can be long)
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise PipelineSpecError(f"pipeline '{_shorten(text)}': cannot read at column {pos + 1}")
            kind = m.lastgroup or "value"
            self.toks.append((kind, m.group(kind), m.start(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None or (want is not None and tok[1] != want):
            where = f"column {tok[2] + 1}" if tok else "the end"
            raise PipelineSpecError(f"pipeline '{_shorten(self.text)}': expected '{want or 'a pass name'}' at {where}")
        self.i += 1
        return tok

    def pipeline(self, closing: str | None = None) -> list[Item]:
        items: list[Item] = []
        if self.peek() is None or (closing and self.peek()[1] == closing):
            return items
        while True:
            items.extend(self.item())
            tok = self.peek()
            if tok is None or tok[1] != ",":
                return items
            self.take(",")

    def options(self) -> dict[str, str]:
        opts: dict[str, str] = {}
        if self.peek() is None or self.peek()[1] != "{":
            return opts
        self.take("{")
        while self.peek() is not None and self.peek()[1] != "}":
            key = self.take()[1]
            self.take("=")
            opts[key] = self.take()[1]
        self.take("}")
        return opts

    def item(self) -> list[Item]:
        kind, name, col = self.take()
        if kind != "name":
            raise PipelineSpecError(f"pipeline '{_shorten(self.text)}': expected a pass name at column {col + 1}, got '{name}'")
        if name in NAMED_PIPELINES:
            return list(parse_pipeline(NAMED_PIPELINES[name]).items)
        if name == "fixpoint":
            if self.depth >= MAX_FIXPOINT_NESTING:
                raise PipelineSpecError(f"pipeline '{_shorten(self.text)}': fixpoint nested deeper than "
                                        f"{MAX_FIXPOINT_NESTING} levels at column {col + 1}")
            opts = self.options()
            self.take("(")
            self.depth += 1
            inner = self.pipeline(")")
            self.depth -= 1
            self.take(")")
            max_iter = _convert("fixpoint", "max-iter", opts.pop("max-iter", "10"), "int")
            if max_iter < 1:
                raise PipelineSpecError(f"fixpoint: option 'max-iter' must be at least 1, got {max_iter}")
            if opts:
                raise PipelineSpecError(f"fixpoint has no option {sorted(opts)[0]} (it takes max-iter)")
            return [Fixpoint(tuple(inner), max_iter)]
        return [make_pass(name, self.options())]


def _shorten(text: str, limit: int = 80) -> str:
    """A spec as error messages quote it: a hostile one can be megabytes long."""
    return text if len(text) <= limit else text[:limit] + "..."


def make_pass(name: str, opts: dict[str, str]) -> Pass:
    cls = PASSES.get(name)
    if cls is None:
        raise PipelineSpecError(f"unknown pass '{name}' (known: {', '.join(sorted(PASSES))}; "
                                f"named pipelines: {', '.join(NAMED_PIPELINES)})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in opts.items():
        fname = key.replace("-", "_")
        if fname not in fields:
            known = ", ".join(f.replace("_", "-") for f in fields) or "none"
            raise PipelineSpecError(f"pass '{name}' has no option '{key}' (options: {known})")
        kwargs[fname] = _convert(name, key, raw, fields[fname].type)
    try:
        return cls(**kwargs)
    except ValueError as e:  # a pass's own range checks (__post_init__)
        raise PipelineSpecError(f"pass '{name}': {e}") from None


def _convert(pass_name: str, key: str, raw: str, typ: Any) -> Any:
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ == "bool":
            if raw not in ("true", "false", "1", "0"):
                raise ValueError
            return raw in ("true", "1")
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
        return raw
    except ValueError:
        kind = {"int": "an int", "float": "a float", "bool": "true or false"}.get(typ, f"a {typ}")
        raise PipelineSpecError(f"pass '{pass_name}': option '{key}' wants {kind}, got '{raw}'") from None


def parse_pipeline(spec: str) -> Pipeline:
    p = _Parser(spec)
    items = p.pipeline()
    if p.peek() is not None:
        tok = p.peek()
        raise PipelineSpecError(f"pipeline '{_shorten(spec)}': unexpected '{tok[1]}' at column {tok[2] + 1}")
    return Pipeline(tuple(items))


# ----------------------------------------------------------------------------- running


class StopPipeline(Exception):
    """Raised internally when a bisection limit is reached."""


@dataclass
class PassRun:
    """One executed pass, as instruments and reports see it."""

    index: int
    pass_: Pass
    changed: bool = False
    seconds: float = 0.0


@dataclass
class PipelineRunner:
    pipeline: Pipeline
    ctx: PassContext = field(default_factory=PassContext)
    stop_after: int | None = None
    """Bisection: run only the first N passes (counting every pass execution)."""
    history: list[PassRun] = field(default_factory=list)

    def run(self, module: Module) -> bool:
        for inst in self.ctx.instruments:
            inst.on_pipeline_start(module, self)
        changed = False
        try:
            changed = self._run_items(self.pipeline.items, module)
        except StopPipeline:
            pass
        for inst in self.ctx.instruments:
            inst.on_pipeline_end(module, self)
        return changed

    def _run_items(self, items: tuple[Item, ...], module: Module) -> bool:
        changed = False
        for item in items:
            if isinstance(item, Fixpoint):
                for _ in range(item.max_iter):
                    if not self._run_items(item.items, module):
                        break
                    changed = True
            else:
                changed |= self._run_pass(item, module)
        return changed

    def _run_pass(self, p: Pass, module: Module) -> bool:
        if self.stop_after is not None and len(self.history) >= self.stop_after:
            raise StopPipeline
        record = PassRun(len(self.history) + 1, p)
        for inst in self.ctx.instruments:
            inst.before_pass(module, record, self)
        start = time.perf_counter()
        try:
            record.changed = bool(p.run(module, self.ctx))
        except Exception as e:
            record.seconds = time.perf_counter() - start
            for inst in self.ctx.instruments:
                inst.on_pass_error(module, record, self, e)
            if isinstance(e, EffcError):
                raise
            raise PassError(f"pass '{p.spec()}' crashed: {type(e).__name__}: {e}") from e
        record.seconds = time.perf_counter() - start
        if record.changed and module.memory_plan is not None and p.name != "plan-memory":
            module.memory_plan = None  # the plan described the module before this pass
        self.history.append(record)
        try:
            for inst in self.ctx.instruments:
                inst.after_pass(module, record, self)
        except Exception as e:  # a check after the pass failed: the pass is to blame
            for inst in self.ctx.instruments:
                inst.on_pass_error(module, record, self, e)
            raise
        return record.changed


def run_pipeline(module: Module, pipeline: str | Pipeline, ctx: PassContext | None = None,
                 stop_after: int | None = None) -> PipelineRunner:
    if isinstance(pipeline, str):
        pipeline = parse_pipeline(pipeline)
    runner = PipelineRunner(pipeline, ctx or PassContext(), stop_after)
    runner.run(module)
    return runner
