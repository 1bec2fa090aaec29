"""effc's error types. Every error a user can meet is an EffcError; the CLI prints its
message and exits with its ``exit_code`` (no traceback unless --debug)."""
from __future__ import annotations


class EffcError(Exception):
    """Base of every error effc reports to a user."""

    exit_code = 1


class InputError(EffcError):
    """The user's input (model file, IR text, inputs file) is malformed. Exit code 2."""

    exit_code = 2


class ModelError(InputError):
    """An ONNX model is malformed or contradicts itself."""


class UnsupportedOpError(InputError):
    """A model uses operators (or forms of them) that effc does not implement.

    ``ops`` lists ``(op_type, node_name, reason)`` for every offending node."""

    def __init__(self, ops: list[tuple[str, str, str]]):
        self.ops = list(ops)
        lines = [f"  {op} ({_where(name)})" + (f": {why}" if why else "") for op, name, why in self.ops]
        kinds = sorted({op for op, _, _ in self.ops})
        super().__init__(
            f"unsupported op{'s' if len(kinds) > 1 else ''} {', '.join(kinds)} in {len(self.ops)} node(s):\n"
            + "\n".join(lines)
            + "\nrun `effc info --ops` to list the operators effc supports"
        )


def _where(name: str) -> str:
    """A node name, or a ready description such as "graph input 'x'"."""
    return name if "'" in name else f"node '{name}'"


class ParseError(InputError):
    """IR text does not parse. Carries line and column."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None, source: str = "<text>"):
        self.line, self.column, self.source = line, column, source
        where = f"{source}:{line}:{column}: " if line is not None else f"{source}: "
        super().__init__(where + message)


class VerificationError(EffcError):
    """The IR breaks an invariant (use lists, order, names, types)."""


class ShapeError(EffcError):
    """Shape or dtype inference failed: the op's inputs contradict its rules."""


class InterpreterError(EffcError):
    """The reference interpreter could not run a module on the given inputs."""
