"""Building for CUDA on any machine; running only where a GPU is.

Every fixture model compiles at -O2 for ``cuda`` (sm_80): each kernel TVM made (every
device PrimFunc) is a ``__global__`` function in the CUDA source, and where nvcc exists
the PTX targets sm_80 and has an ``.entry`` per kernel. Without a GPU, ``run`` says what
to do instead of failing inside TVM. With one, outputs match onnxruntime.

Build times (TVM, nvcc) are recorded per model as test properties
(``pytest --junitxml``) and printed with ``-s``; tests never assert timings.
"""
from __future__ import annotations

import functools
import re

import numpy as np
import onnx
import pytest
import tvm
import tvm_ffi
from tvm import tirx

from effc.codegen import cuda
from effc.ir.refine import bind_input_shapes
from effc.codegen.cuda import (PTX, SOURCE, CudaBuilt, CudaCompileError, LoweringError, NoCudaDeviceError, _offer_ptx,
                               build_cuda, compile_ptx, kernel_names, load_cuda, nvcc_path)
from effc.ir.errors import InputError
from effc.models import load_model
from effc.optimize import optimize
from effc.targets import get_target
from tests.fixtures import FIXTURES, assert_close, ort_run

HAVE_GPU = cuda.gpu_present()
needs_gpu = pytest.mark.skipif(not HAVE_GPU, reason="runs kernels on an NVIDIA GPU; this machine has none "
                               "(CI never does): run the suite on a GPU machine to check GPU outputs")

# Shapes computed from the data (Shape -> ... -> Reshape): compiled for the fixture's
# input shapes, as `--input-shape` does (see test_codegen_x86.py).
BIND_SHAPES = {"minilm_l3"}

PARAMS = [pytest.param(f, id=f.name, marks=[pytest.mark.slow] if f.slow else []) for f in FIXTURES]
BY_NAME = {f.name: f for f in FIXTURES}


def _optimized(fx):
    module = load_model(fx.path())
    if fx.name in BIND_SHAPES:
        feeds = fx.inputs(onnx.load(str(fx.path())))
        bind_input_shapes(module, {name: a.shape for name, a in feeds.items()})
    optimize(module, "O2")
    return module


def _build(name: str, target: str = "cuda"):
    module = _optimized(BY_NAME[name])
    return module, build_cuda(module, get_target(target))


@functools.lru_cache(maxsize=None)
def _digits() -> tuple:
    return _build("digits_cnn")


def _device_functions(built: CudaBuilt) -> list[str]:
    return sorted(gv.name_hint for gv, f in built.relax_module.functions_items()
                  if isinstance(f, tirx.PrimFunc) and "tirx.is_host_func" not in (f.attrs or {}))


@pytest.mark.parametrize("fx", PARAMS)
def test_compiles_for_cuda(fx, record_property):
    module = _optimized(fx)
    built = build_cuda(module, get_target("cuda"))
    for stage, s in built.seconds.items():
        record_property(f"{stage}_s", round(s, 2))
    print(f"\n{fx.name}: " + ", ".join(f"{k} {v:.1f}s" for k, v in built.seconds.items()))

    functions = _device_functions(built)
    assert functions, fx.name
    kernels = kernel_names(built.source)
    # one __global__ per kernel; a kernel with several thread-bound stages is split by
    # TVM into <name>_kernel, <name>_kernel_1, ...
    assert sorted({re.sub(r"_kernel(_\d+)?$", "", k) for k in kernels}) == functions
    assert built.source.count("__global__") >= len(kernels)

    assert nvcc_path() is not None, "nvcc (CUDA) is expected on every machine of this project"
    assert built.ptx is not None
    assert re.search(r"^\.version \d+\.\d+$", built.ptx, re.M)
    assert re.search(r"^\.target sm_80$", built.ptx, re.M)
    entries = re.findall(r"\.entry (\w+)\(", built.ptx)
    assert sorted(entries) == sorted(kernels)

    feeds = fx.inputs(onnx.load(str(fx.path())))
    if not HAVE_GPU:
        with pytest.raises(NoCudaDeviceError, match="no CUDA GPU on this machine: the artifact was built for sm_80"):
            built.run(feeds)
        return
    _assert_matches_onnxruntime(fx, built, feeds)


def _assert_matches_onnxruntime(fx, built: CudaBuilt, feeds) -> None:
    want = ort_run(fx.path(), feeds)
    got = built.run(feeds)
    assert list(got) == list(want)
    for out in want:
        assert_close(got[out], want[out], f"{fx.name} cuda output {out}")


def test_ptx_follows_the_target_arch():
    _, built = _build("mnist_conv", "cuda-sm75")
    assert re.search(r"^\.target sm_75$", built.ptx, re.M)
    assert built.arch == "sm_75"


def test_export_is_deterministic(tmp_path, monkeypatch):
    _, first = _digits()
    monkeypatch.setattr(cuda, "_COMPILED", {})  # nvcc runs again rather than reusing the first PTX
    _, second = _build("digits_cnn")
    names = []
    for i, built in enumerate((first, second)):
        files = built.export_files(tmp_path / str(i))
        names.append(sorted(f.name for f in files))
    assert names[0] == names[1] == sorted(["model.so", SOURCE, PTX])
    for name in names[0]:
        assert (tmp_path / "0" / name).read_bytes() == (tmp_path / "1" / name).read_bytes(), name


def test_exported_library_holds_the_kernels(tmp_path):
    """Without a GPU, TVM packs the CUDA module into model.so as source; its runtime compiles
    it on load (through tvm_callback_cuda_compile, which effc answers with the PTX). On a GPU
    machine tvm.compile calls that hook at once and model.so holds the PTX (seen on an H200)."""
    _, built = _digits()
    lib = built.export_files(tmp_path)[0].read_bytes()
    for k in built.kernels:
        assert k.encode() in lib
    if HAVE_GPU:
        assert b".target sm_80" in lib and all(f".entry {k}(".encode() in lib for k in built.kernels)
    else:
        assert b'extern "C" __global__' in lib


def test_loaded_folder_keeps_source_and_ptx(tmp_path):
    module, built = _digits()
    built.export_files(tmp_path / "a")
    again = load_cuda(tmp_path / "a", get_target("cuda"), module)
    assert again.source == built.source
    assert again.ptx == built.ptx
    assert again.signature == built.signature
    # a loaded build exports the same bytes (model.so is copied: reading it needs a GPU driver)
    again.export_files(tmp_path / "b")
    for name in ("model.so", SOURCE, PTX):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_run_without_gpu_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda, "gpu_present", lambda: False)  # the message, on any machine
    module, built = _digits()
    built.export_files(tmp_path)
    loaded = load_cuda(tmp_path, get_target("cuda"), module)
    with pytest.raises(NoCudaDeviceError) as err:
        loaded.run({"x": np.zeros((1, 1, 8, 8), np.float32)})
    msg = str(err.value)
    assert "no CUDA GPU on this machine: the artifact was built for sm_80" in msg
    assert f"copy {tmp_path} to a machine with an NVIDIA GPU and run `effc run {tmp_path}`" in msg
    _, fresh = _build("mnist_conv")  # never exported: the message says how to get a folder
    how = r"built for sm_80; export it \(`effc compile MODEL --target=cuda -o DIR`\)"
    with pytest.raises(NoCudaDeviceError, match=how):
        fresh.run({})


def test_load_rejects_a_folder_without_kernels(tmp_path):
    module, _ = _digits()
    with pytest.raises(InputError, match="no model.so; this is not a CUDA artifact folder"):
        load_cuda(tmp_path, get_target("cuda"), module)


def test_build_cuda_refuses_cpu_targets():
    module = _optimized(BY_NAME["mnist_conv"])
    with pytest.raises(LoweringError, match="compiles for CUDA targets"):
        build_cuda(module, get_target("x86"))


def test_runtime_hook_serves_the_ptx():
    """TVM's CUDA runtime asks tvm_callback_cuda_compile to compile the source it holds;
    for a source effc compiled, the answer is that PTX (NUL-terminated for cuModuleLoadData)."""
    _offer_ptx("// kernels A", ".version 9.0\n.target sm_80\n")
    hook = tvm_ffi.get_global_func("tvm_callback_cuda_compile")
    assert bytes(hook("// kernels A")) == b".version 9.0\n.target sm_80\n\0"


def test_runtime_hook_compiles_unknown_sources_with_nvcc():
    """On a GPU machine tvm.compile hands the hook the kernels at once, in the target's
    scope: nvcc compiles them for that arch (TVM reads a result starting with '/' as PTX)."""
    source = 'extern "C" __global__ void twice(float* x) { x[threadIdx.x] *= 2.0f; }\n'
    cuda._install_ptx_hook()  # as build_cuda does; a test run alone (or first on a worker) has no hook yet
    hook = tvm_ffi.get_global_func("tvm_callback_cuda_compile")
    with tvm.target.Target({"kind": "cuda", "arch": "sm_86"}):
        ptx = bytes(hook(source))
    assert ptx.startswith(b"/") and ptx.endswith(b"\0")
    assert b".target sm_86" in ptx and b".entry twice(" in ptx


def test_nvcc_errors_are_short():
    what = r"nvcc could not compile the generated kernels for sm_80:\n.*error"
    with pytest.raises(CudaCompileError, match=what) as err:
        compile_ptx("not cuda at all", tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))
    assert len(str(err.value)) < 5000


# ----------------------------------------------------------------------------- with a GPU


@needs_gpu
def test_gpu_runs_an_exported_folder(tmp_path):
    """The folder path: model.so loaded by TVM's CUDA runtime, kernels from kernels.ptx."""
    fx = BY_NAME["digits_cnn"]
    module, built = _digits()
    built.export_files(tmp_path)
    loaded = load_cuda(tmp_path, built.effc_target, module)
    _assert_matches_onnxruntime(fx, loaded, fx.inputs(onnx.load(str(fx.path()))))
