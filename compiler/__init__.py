"""effc: a graph compiler for trained neural networks.

``effc.compile(model, target=..., pipeline=...)`` returns a ``CompiledModel`` (``run``,
``export``, ``report``, ``ir``); ``effc.load(dir)`` reads an exported artifact. TVM is
imported only when something is compiled or loaded."""
from effc.api import CompiledModel, CompileReport, compile, load
from effc.version import __version__

__all__ = ["__version__", "compile", "load", "CompiledModel", "CompileReport"]
