"""Artifact folders are trusted only as far as they are checked (issue 9): ``effc.load`` and
``effc run DIR`` open or execute only files the manifest lists with a matching sha256, every
listed name stays inside the folder, and a malformed manifest or report is effc's own error
(exit 2 from the CLI) naming the folder, the entry and what to do."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import effc
import effc.api
from effc.cli import main
from effc.ir.errors import InputError
from tests.fixtures import REPO, assert_close, ort_run

DIGITS = REPO / "examples" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    return np.load(REPO / "examples" / "digits_test.npz")["x"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The digits CNN exported once for x86 with the VM (model.so) and with --runtime=aot
    (model.elf + src/); tests work on copies."""
    root = tmp_path_factory.mktemp("artifacts")
    return {"vm": effc.compile(DIGITS, target="x86").export(root / "vm"),
            "aot": effc.compile(DIGITS, target="x86", runtime="aot").export(root / "aot")}


@pytest.fixture(scope="module")
def cortex_m4(tmp_path_factory) -> Path:
    return effc.compile(DIGITS, target="cortex-m4").export(tmp_path_factory.mktemp("cm4") / "art")


def _copy(built: dict[str, Path], kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built[kind], tmp_path / "art"))


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)  # in place
    path.write_text(json.dumps(manifest))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["vm", "aot"])
def test_intact_artifact_loads_and_runs(built, kind, tmp_path, digits_x):
    """The checks pass on what effc itself writes (the x86 VM and AOT layouts)."""
    got = effc.load(_copy(built, kind, tmp_path)).run({"x": digits_x[:1]})["logits"]
    assert_close(got, ort_run(DIGITS, {"x": digits_x[:1]})["logits"], f"loaded {kind} artifact")


@pytest.mark.parametrize("kind, name", [("vm", "model.so"), ("aot", "model.elf"), ("vm", "model.npz"),
                                        ("vm", "report.json")])
def test_file_the_manifest_does_not_list_is_not_opened(built, kind, name, tmp_path):
    """Before: a model.so/model.elf (or weights, report) missing from ``files`` was loaded
    and run unchecked."""
    art = _copy(built, kind, tmp_path)
    _edit_manifest(art, lambda m: m["files"].pop(name))
    with pytest.raises(InputError) as e:
        effc.load(art)
    assert str(e.value) == (f"{art}: {name} is not listed with its sha256 in manifest.json, so effc will not open "
                            f"or run it; recompile the artifact with `effc compile` (or remove {name} if it is not "
                            "part of the artifact)")


def test_extra_source_file_is_not_read(built, tmp_path):
    """The AOT loader reads every file of src/; one the manifest does not list is refused."""
    art = _copy(built, "aot", tmp_path)
    (art / "src" / "extra.c").write_text("int x;\n")
    with pytest.raises(InputError, match=r"src/extra\.c is not listed with its sha256 in manifest\.json"):
        effc.load(art)


def _outside_file(tmp_path: Path) -> Path:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of the artifact\n")
    return outside


@pytest.mark.parametrize("entry, why", [
    ("/etc/passwd", "an absolute path"),
    ("OUTSIDE", "an absolute path"),  # the absolute path of a file next to the folder
    ("../outside.bin", "a path with '..' that leads out of the folder"),
    ("src/../../outside.bin", "a path with '..' that leads out of the folder"),
    ("./model.so", "not a plain relative name"),
])
def test_listed_name_must_stay_inside_the_folder(built, entry, why, tmp_path, monkeypatch):
    """Before: ``/etc/passwd`` or ``../x`` with their true hashes were opened, hashed and
    accepted. Now the name is refused before anything is read."""
    art = _copy(built, "vm", tmp_path)
    outside = _outside_file(tmp_path)
    entry = str(outside) if entry == "OUTSIDE" else entry
    target = Path(entry) if entry.startswith("/") else art / entry
    digest = _sha256(target) if target.is_file() else "0" * 64
    _edit_manifest(art, lambda m: m["files"].__setitem__(entry, digest))
    hashed: list[Path] = []
    real_hash = effc.api._file_hash
    monkeypatch.setattr(effc.api, "_file_hash", lambda p: hashed.append(Path(p).resolve()) or real_hash(p))
    with pytest.raises(InputError) as e:
        effc.load(art)
    assert f"{art}: manifest.json lists {entry!r}, {why}" in str(e.value)
    assert "recompile the artifact with `effc compile`" in str(e.value)
    assert all(p.is_relative_to(art.resolve()) for p in hashed), hashed


def test_symlink_leading_out_is_refused(built, tmp_path):
    """Before: model.so as a link to a library elsewhere (same bytes) was loaded."""
    art = _copy(built, "vm", tmp_path)
    moved = tmp_path / "elsewhere.so"
    shutil.move(art / "model.so", moved)
    (art / "model.so").symlink_to(moved)
    with pytest.raises(InputError, match=rf"{art}: file model\.so is a symlink leading out of the artifact "
                                         rf"folder \(to {moved}\)"):
        effc.load(art)


def test_symlink_inside_the_folder_is_fine(built, tmp_path, digits_x):
    art = _copy(built, "vm", tmp_path)
    (art / "lib").mkdir()
    shutil.move(art / "model.so", art / "lib" / "real.so")
    (art / "model.so").symlink_to(Path("lib") / "real.so")
    got = effc.load(art).run({"x": digits_x[:1]})["logits"]
    assert_close(got, ort_run(DIGITS, {"x": digits_x[:1]})["logits"], "artifact with an inner link")


def _set(path: list, value):
    def edit(m):
        d = m
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value
    return edit


def _garbage_report(text: str):
    """report.json replaced by ``text``, its hash updated: only the content is wrong."""
    def edit(folder: Path) -> None:
        (folder / "report.json").write_text(text)
        _edit_manifest(folder, _set(["files", "report.json"], _sha256(folder / "report.json")))
    return edit


BROKEN = {
    "manifest is a list": (lambda a: (a / "manifest.json").write_text("[1, 2]"),
                           "manifest.json: expected a JSON object with 'target', 'runtime' and 'files', got a JSON array"),
    "manifest is not UTF-8": (lambda a: (a / "manifest.json").write_bytes(b"\xff\xfe{}"),
                              "manifest.json: not valid JSON ('utf-8' codec can't decode"),
    "no target": (lambda a: _edit_manifest(a, lambda m: m.pop("target")),
                  "manifest.json: field 'target' must be an object with a string 'name'"),
    "target name a number": (lambda a: _edit_manifest(a, _set(["target", "name"], 3)),
                             "manifest.json: field 'target' must be an object with a string 'name'"),
    "unknown target": (lambda a: _edit_manifest(a, _set(["target", "name"], "z80")),
                       "manifest.json: unknown target 'z80'"),
    "runtime a target lacks": (lambda a: _edit_manifest(a, _set(["target", "name"], "arm")),
                               "manifest.json: target 'arm' builds with --runtime=aot, not 'vm'"),
    "files a list": (lambda a: _edit_manifest(a, _set(["files"], ["model.so"])),
                     "manifest.json: field 'files' must map every file of the artifact to its sha256"),
    "hash not hex": (lambda a: _edit_manifest(a, _set(["files", "model.so"], 12)),
                     "manifest.json gives file model.so the hash 12, not a sha256"),
    "runtime a number": (lambda a: _edit_manifest(a, _set(["runtime"], 1)),
                         "manifest.json: field 'runtime' must be a string, got 1"),
    "report garbage": (_garbage_report("garbage{"), "report.json: not valid JSON"),
    "report a list": (_garbage_report("[]"), "report.json: expected a JSON object, got a JSON array"),
    "report counts": (_garbage_report('{"nodes_before": "many"}'),
                      "report.json: field 'nodes_before' must be a count >= 0, got \"many\""),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_manifest_or_report_is_an_input_error(built, case, tmp_path, capsys):
    """Before: each of these ended in ``effc: internal error`` (exit 70): AttributeError,
    KeyError, UnicodeDecodeError, JSONDecodeError, TypeError."""
    art = _copy(built, "vm", tmp_path)
    breaks, message = BROKEN[case]
    breaks(art)
    assert main(["run", str(art)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"effc: error: {art}") and message in err, err
    assert "recompile the artifact with `effc compile`" in err and "Traceback" not in err


@pytest.mark.parametrize("text, message", [
    ('{"flash": 1}', "memory.json: not a memory report as effc writes it (TypeError: "),
    ("[1]", "memory.json: not a memory report as effc writes it (TypeError: a JSON list, not an object)"),
    ("{", "memory.json: not a memory report as effc writes it (JSONDecodeError: "),
])
def test_broken_memory_report_is_an_input_error(cortex_m4, text, message, tmp_path, capsys):
    """A Cortex-M artifact's memory.json that parses but is not effc's report (its hash
    updated). Before: ``internal error: TypeError: MemoryReport.__init__() missing ...``."""
    art = Path(shutil.copytree(cortex_m4, tmp_path / "art"))
    (art / "memory.json").write_text(text)
    _edit_manifest(art, _set(["files", "memory.json"], _sha256(art / "memory.json")))
    assert main(["run", str(art)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"effc: error: {art}/{message}") and "recompile the artifact" in err, err


def test_timings_are_informational(built, tmp_path, digits_x):
    """timings.json is not hashed (compile times differ run to run); a malformed one is
    ignored. Before: ``{"build": "x"}`` was taken as the times and printing the report
    failed with a ValueError."""
    art = _copy(built, "vm", tmp_path)
    (art / "timings.json").write_text('{"build": "x", "import": 0.5, "optimize": [1]}')
    loaded = effc.load(art)
    assert loaded.report().seconds == {"import": 0.5}
    assert "compile time: import 0.50s" in str(loaded.report())


# A JSON value anywhere in the manifest, or a key removed: effc.load either loads an artifact
# that runs like the original, or raises InputError; nothing else.
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
                    | st.sampled_from(["x86", "arm", "cuda", "cortex-m4", "aot", "vm", "model.so", "../model.so",
                                       "/etc/passwd", "0" * 64]),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6)
DELETE = object()


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _mutate(manifest, path, value):
    if not path:
        return manifest if value is DELETE else value
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return manifest


@pytest.fixture(scope="module")
def mutable(built, tmp_path_factory, digits_x):
    art = Path(shutil.copytree(built["vm"], tmp_path_factory.mktemp("mutable") / "art"))
    manifest = json.loads((art / "manifest.json").read_text())
    return art, manifest, effc.load(art).run({"x": digits_x[:1]})["logits"]


@settings(derandomize=True, deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_manifest_is_loaded_or_refused(mutable, digits_x, data):
    art, original, want = mutable
    manifest = json.loads(json.dumps(original))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(manifest))))
        manifest = _mutate(manifest, path, data.draw(st.just(DELETE) | JSON))
    (art / "manifest.json").write_text(json.dumps(manifest))
    try:
        loaded = effc.load(art)
    except InputError as e:
        assert str(art) in str(e)
        return
    np.testing.assert_array_equal(loaded.run({"x": digits_x[:1]})["logits"], want)
