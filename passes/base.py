"""Pass base, registry and context.

A pass is a small frozen dataclass: its class attribute ``name`` is how pipelines spell it
and its fields are its options (``fuse{max-ops=8}`` sets ``max_ops``). ``run(module, ctx)``
edits the module in place and returns whether it changed anything."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from effc.ir.core import Module
from effc.ir.errors import EffcError


class PassError(EffcError):
    """A pass failed, or a pipeline spec is wrong."""


class PipelineSpecError(PassError):
    exit_code = 2


class PreconditionError(PassError):
    """A pass was given IR it cannot work on."""


class PostconditionError(PassError):
    """A pass left IR that breaks what it promises."""


@dataclass
class PassContext:
    """What passes see besides the module: the target and the instruments watching."""

    target: str | None = None
    instruments: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pass:
    name: ClassVar[str] = ""

    def run(self, module: Module, ctx: PassContext) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def spec(self) -> str:
        """The canonical spec: options that differ from their defaults, sorted."""
        opts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING and value == f.default:
                continue
            opts.append(f"{f.name.replace('_', '-')}={format_option(value)}")
        return self.name + ("{" + " ".join(opts) + "}" if opts else "")

    def __str__(self) -> str:
        return self.spec()


def format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in PASSES:
        raise ValueError(f"pass {cls.name} registered twice")
    PASSES[cls.name] = cls
    return cls
