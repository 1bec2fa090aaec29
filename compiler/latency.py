"""Measured cost of a model's builds on one target, for choices that must rest on
measurements rather than on counted operations (``effc prune --target T --speedup S``).

- Targets whose builds run in this process (x86): milliseconds. Every module given is
  compiled as ``effc compile`` would (``-O2``, the target's schedules, a tuning database's
  records when one is given) and the builds are timed taking turns (``interleaved_ms``), so
  load from elsewhere on the machine falls on all of them alike; the median of each.
- Cortex-M boards with a qemu machine: instructions per inference, counted by qemu
  (``-icount``; ``CortexMBuilt.run(count_instructions=True)``): deterministic, so the same
  build always costs the same.

Other targets are refused: qemu-user (AArch64) has no instruction count and emulated time
says nothing about the chip's.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.ir.parser import copy_module
from effc.targets import get_target


class LatencyMeter:
    """``meter(modules)`` -> the cost of each (``unit``: ``ms`` or ``instructions``) on
    ``target``, run on ``feeds`` (one sample: batch 1)."""

    def __init__(self, target: str, feeds: Mapping[str, np.ndarray], *, threads: int = 1, reps: int = 200,
                 max_seconds: float = 3.0, tuning_db: str | None = None):
        self.target = get_target(target)
        if self.target.runner == "inprocess":
            self.unit = "ms"
        elif self.target.runner == "qemu-system-arm" and self.target.qemu_machine:
            self.unit = "instructions"
        else:
            raise InputError(f"--target {self.target.name}: effc cannot measure its builds here ({self.target.runner}"
                             "); measured pruning runs on x86 targets (timed) and Cortex-M boards with a qemu machine "
                             "(instruction counts), e.g. --target x86 or --target cortex-m4")
        self.block = 1
        """Channels per vector of the build's blocked layouts (x86: f32 lanes): channel counts
        that are not a multiple of it fall out of them and can run slower with fewer channels."""
        if self.unit == "ms":
            from effc.codegen.schedules import cpu_for

            self.block = cpu_for(self.target.tvm, self.target.hardware).lanes
        self.feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        self.threads, self.reps, self.max_seconds, self.tuning_db = threads, reps, max_seconds, tuning_db
        self.builds = 0

    def _compile(self, module: Module):
        import effc

        self.builds += 1
        shapes = {k: v.shape for k, v in self.feeds.items()}
        return effc.compile(copy_module(module), target=self.target.name, input_shapes=shapes,
                            tuning_db=self.tuning_db)._built

    def __call__(self, modules: Sequence[Module]) -> list[float]:
        if self.unit == "instructions":
            costs = []
            for m in modules:
                built = self._compile(m)
                built.run(self.feeds, count_instructions=True)
                costs.append(float(built.last_run_instructions))
            return costs
        from effc.bench import interleaved_ms, set_threads
        from effc.codegen.baseline import vm_runner

        set_threads(self.threads)
        runs = {}
        for i, m in enumerate(modules):
            built = self._compile(m)
            runs[str(i)], _ = vm_runner(built.executable, self.feeds, [n for n, _ in built.signature.inputs])
        ms = interleaved_ms(runs, warmup=10, reps=self.reps, max_seconds=self.max_seconds)
        return [ms[str(i)][0] for i in range(len(modules))]


__all__ = ["LatencyMeter"]
