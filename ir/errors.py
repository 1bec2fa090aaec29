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


class IndexOutOfRangeError(InputError):
    """A run-time index (Gather, GatherElements, ScatterElements) is outside its axis.

    Compiled code never reads or writes outside a tensor: it clamps every index, checks it,
    and reports the first bad one here. ``node`` names the node as ``Node.describe`` does,
    ``index`` is the offending value (None when the runtime could not say)."""

    def __init__(self, node: str, index: int | None, axis_len: int | None = None, where: str = "",
                 fix: str = "check the model's inputs (e.g. token ids against the vocabulary size)"):
        self.node, self.index, self.axis_len = node, index, axis_len
        valid = f" (valid: {-axis_len}..{axis_len - 1})" if axis_len is not None else ""
        value = f"index {index}" if index is not None else "an index"
        super().__init__(f"{where}{node}: {value} is out of range for an axis of length "
                         f"{axis_len if axis_len is not None else '?'}{valid}; {fix}")
