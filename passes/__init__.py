"""Passes (see ARCHITECTURE.md and the README, "Passes and pipelines"). Importing this package registers every pass."""
from . import cse, dce, eliminate_identity, fold_bn, fold_constants, fuse, memory_plan, quantize_integer, substitute  # noqa: F401
from .base import PASSES, Pass, PassContext, PassError, PipelineSpecError, register_pass
from .pipeline import NAMED_PIPELINES, Pipeline, parse_pipeline, run_pipeline

__all__ = ["PASSES", "Pass", "PassContext", "PassError", "PipelineSpecError", "register_pass", "NAMED_PIPELINES",
           "Pipeline", "parse_pipeline", "run_pipeline"]
