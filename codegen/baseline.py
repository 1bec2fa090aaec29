"""What benchmarks need from TVM itself: plain TVM as a baseline system (its own ONNX
frontend and default pipeline), a timing loop over a compiled executable on device tensors
made once, and the exported library's size. ``effc.bench`` and ``bench/*.py`` call these, so
that only codegen/ imports tvm."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tvm
from tvm import relax

from .build import safe_target


def plain_tvm_build(model_path: str | Path, shapes: Mapping[str, Sequence[int]], target: Mapping[str, Any]) -> Any:
    """``tvm.relax.frontend.onnx.from_onnx`` + ``tvm.compile`` with TVM's default pipeline for
    ``target`` (AVX-512 made safe, as effc builds; see ``build.safe_target``). Raises
    whatever the frontend or TVM raises for a model it does not handle."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(str(model_path)), shape_dict={k: list(v) for k, v in shapes.items()})
    tgt = dict(target) if target.get("kind") != "llvm" else safe_target(target)
    return tvm.compile(mod, target=tvm.target.Target(tgt))


def vm_runner(executable: Any, feeds: Mapping[str, np.ndarray], order: Sequence[str],
              device: str = "cpu") -> tuple[Callable[[], Any], Callable[[], list[np.ndarray]]]:
    """A function running ``main`` on ``device`` tensors made once (synchronised, so a GPU
    run is timed to its end), and one returning every value ``main`` returns as numpy."""
    dev = tvm.cuda(0) if device == "cuda" else tvm.cpu(0)
    vm = relax.VirtualMachine(executable, dev)
    args = [tvm.runtime.tensor(np.ascontiguousarray(feeds[n]), dev) for n in order]

    def run() -> Any:
        r = vm["main"](*args)
        dev.sync()
        return r

    def outputs() -> list[np.ndarray]:
        r = run()
        return [r.numpy()] if isinstance(r, tvm.runtime.Tensor) else [x.numpy() for x in r]

    return run, outputs


def library_size(executable: Any) -> int:
    """Bytes of ``executable`` exported as a shared library (weights included)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.so"
        executable.export_library(str(path))
        return path.stat().st_size


def runtime_threads() -> int:
    """The threads TVM's CPU thread pool uses (set by ``TVM_NUM_THREADS`` before it starts)."""
    return int(tvm.runtime.num_threads())
