"""codegen (see ARCHITECTURE.md): lowering to TVM Relax and building with TVM.

- ``lower_to_relax(module)``: the effc module as a Relax IRModule (``relax.py``; the
  per-op emitters are one table in ``relax_ops.py``);
- ``build(module, target)``: compiled for an LLVM CPU target (default: this x86 host) into
  a ``Built`` that runs in process and exports a shared library (``build.py``);
"""
from .build import Built, Signature, build, host_x86_target, relax_pipeline
from .relax import LoweringError, check_lowerable, lower_to_relax, unsupported_nodes

__all__ = ["Built", "Signature", "build", "host_x86_target", "relax_pipeline", "LoweringError",
           "check_lowerable", "lower_to_relax", "unsupported_nodes"]
