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

``substitute_costs(target)`` gives the ``substitute`` pass what it measures with: each
kernel built alone and measured (``kernel_measure``), the prices cached per target and
host CPU under ``~/.cache/effc/kernel-costs/``, and the whole-graph check that keeps the
input graph unless the searched one measures faster.
"""
from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effc.ir.core import Module
from effc.ir.errors import InputError
from effc.ir.parser import copy_module
from effc.targets import get_target


class LatencyMeter:
    """``meter(modules)`` -> the cost of each (``unit``: ``ms`` or ``instructions``) on
    ``target``, run on ``feeds`` (one sample: batch 1)."""

    def __init__(self, target: str, feeds: Mapping[str, np.ndarray] | None = None, *, threads: int = 1,
                 reps: int = 200, max_seconds: float = 3.0, tuning_db: str | None = None, pipeline: str = "O2",
                 rounds: int = 5, device: Any = None):
        self.target = get_target(target)
        if self.target.runner == "inprocess":
            self.unit = "ms"
        elif self.target.runner == "qemu-system-arm" and self.target.qemu_machine:
            self.unit = "instructions"
        else:
            why = "qemu-user counts no instructions" if self.target.runner.startswith("qemu") else self.target.runner
            raise InputError(f"--target {self.target.name}: effc cannot measure its builds here ({why}); it times "
                             "x86 builds and counts the instructions of Cortex-M boards with a qemu machine: e.g. "
                             "--target x86 or --target cortex-m4")
        self.block = 1
        """Channels per vector of the build's blocked layouts (x86: f32 lanes): channel counts
        that are not a multiple of it fall out of them and can run slower with fewer channels."""
        if self.unit == "ms":
            from effc.codegen.schedules import cpu_for

            self.block = cpu_for(self.target.tvm, self.target.hardware).lanes
        self.feeds = {k: np.ascontiguousarray(v) for k, v in (feeds or {}).items()}
        self.threads, self.reps, self.max_seconds, self.tuning_db = threads, reps, max_seconds, tuning_db
        self.pipeline = pipeline
        self.rounds = rounds
        """Blocks the builds' timed runs take turns in (``interleaved_ms``); as many as
        ``reps`` alternates single runs, which machine-speed drift cannot favour."""
        self.builds = 0
        self.device = device
        """An ``effc.codegen.rpc.RpcDevice``: the builds are made here and timed there
        (``run_remote``), on as many of its servers at once as are free, instead of here
        taking turns."""

    def _compile(self, module: Module, feeds: Mapping[str, np.ndarray]):
        import effc

        self.builds += 1
        shapes = {k: v.shape for k, v in feeds.items()}
        return effc.compile(copy_module(module), target=self.target.name, pipeline=self.pipeline, input_shapes=shapes,
                            tuning_db=self.tuning_db)._built

    def __call__(self, modules: Sequence[Module], feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
                 built: Callable[[], None] | None = None) -> list[float]:
        """The cost of each module, run on ``feeds[i]`` (default: the meter's feeds);
        ``built()`` is called as each build is ready (progress)."""
        feeds = list(feeds) if feeds is not None else [self.feeds] * len(modules)
        tick = built or (lambda: None)
        if self.unit == "instructions":
            costs = []
            for m, f in zip(modules, feeds):
                art = self._compile(m, f)
                art.run(f, count_instructions=True)
                costs.append(float(art.last_run_instructions))
                tick()
            return costs
        if self.device is not None:
            return self._remote(modules, feeds, tick)
        from effc.bench import interleaved_ms, set_threads
        from effc.codegen.baseline import vm_runner

        set_threads(self.threads)
        runs = {}
        for i, (m, f) in enumerate(zip(modules, feeds)):
            art = self._compile(m, f)
            runs[str(i)], _ = vm_runner(art.executable, f, [n for n, _ in art.signature.inputs])
            tick()
        ms = interleaved_ms(runs, warmup=10, reps=self.reps, max_seconds=self.max_seconds, rounds=self.rounds)
        return [ms[str(i)][0] for i in range(len(modules))]


    def _remote(self, modules: Sequence[Module], feeds: Sequence[Mapping[str, np.ndarray]],
                tick: Callable[[], None]) -> list[float]:
        """Built here one after another, then timed on the device's servers, as many at once
        as are free (each run on a server of its own: they do not disturb each other)."""
        from concurrent.futures import ThreadPoolExecutor

        from effc.codegen.rpc import run_remote

        def timed(art: Any, f: Mapping[str, np.ndarray]) -> float:
            order = [n for n, _ in art.signature.inputs]
            ms = run_remote(art.executable, f, order, self.device, reps=self.reps, max_seconds=self.max_seconds).ms
            tick()
            return ms

        arts = [self._compile(m, f) for m, f in zip(modules, feeds)]
        workers = max(1, min(len(arts), self.device.free or self.device.servers))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(timed, arts, feeds))


def random_feeds(module: Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for ``module``'s inputs (symbolic dims as 1; integer inputs 0)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in module.graph.inputs:
        shape = tuple(d if isinstance(d, int) else 1 for d in v.type.shape)
        dtype = v.type.dtype.np
        feeds[v.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
    return feeds


def _cost_cache(target: str) -> Path:
    """Per target and host CPU: timings measured on one CPU say nothing about another."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    tag = hashlib.sha1(cpu.encode()).hexdigest()[:10]
    return Path.home() / ".cache" / "effc" / "kernel-costs" / f"{target}-{tag}.json"


def substitute_costs(target: str) -> dict[str, Any]:
    """``ctx.options`` entries for the ``substitute`` pass on ``target`` (empty where effc
    cannot measure the target's builds: the pass then estimates)."""
    from effc.passes.substitute.cost import KernelCost

    tgt = get_target(target)
    if not (tgt.runner == "inprocess" or (tgt.runner == "qemu-system-arm" and tgt.qemu_machine)):
        return {}

    def kernel_cost() -> KernelCost:
        meter = LatencyMeter(target, reps=60, max_seconds=1.0, pipeline="O0")

        def measure(modules: Sequence[Module]) -> list[float]:
            meter.max_seconds = max(1.0, 0.05 * len(modules))
            return meter(modules, [random_feeds(m) for m in modules])

        return KernelCost(measure, meter.unit, _cost_cache(target))

    def check(modules: Sequence[Module]) -> list[float]:
        meter = LatencyMeter(target, random_feeds(modules[0]), reps=60, max_seconds=8.0, rounds=60)
        return meter(modules)

    return {"substitute_cost": kernel_cost, "substitute_check": check}


__all__ = ["LatencyMeter", "random_feeds", "substitute_costs"]
