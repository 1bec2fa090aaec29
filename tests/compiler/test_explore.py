"""effc.explore (the first part of issue 16): the pareto front's definition, and sweeps of the
digits CNN on x86 and on the Cortex-M4: every configuration built and measured, the front
non-dominated, quality equal to the interpreter's, a rerun reusing the finished
configurations."""
from __future__ import annotations

import json

import numpy as np

from effc.explore import Config, Point, apply_config, dominates, explore, mark_front
from effc.ir.interpreter import run_module
from effc.models import load_model
from tests import labelled

MODEL = "examples/digits_cnn.onnx"


def _point(name: str, quality: float, latency: float, size: int) -> Point:
    return Point(Config(name), quality, latency, "ms", size)


def test_the_front_is_what_nothing_dominates():
    pts = [_point("a", 99.0, 1.0, 100), _point("b", 98.0, 0.5, 100), _point("c", 97.0, 0.6, 120),
           _point("d", 99.0, 1.0, 100), _point("e", 90.0, 0.4, 50)]
    mark_front(pts, ["quality", "latency", "size"])
    assert [p.config.name for p in pts if p.on_front] == ["a", "b", "d", "e"]  # equal points do not dominate
    assert dominates(pts[1], pts[2], ["quality", "latency", "size"])
    assert not dominates(pts[0], pts[3], ["quality", "latency", "size"])


def _top1(module, x, y) -> float:
    logits = run_module(module, {"x": x})["logits"]
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == y))


def test_explore_digits_on_x86_measures_every_configuration_and_resumes(tmp_path):
    from effc.passes.pipeline import run_pipeline

    d = labelled.digits(32)
    x, y = d.x[:120], d.y[:120]
    configs = [Config("float"), Config("int8-per-channel", "per-channel"), Config("prune-50+int8", "per-channel", prune=0.5)]
    lines: list[str] = []
    pts = explore(load_model(MODEL), "x86", {"x": d.calib}, {"x": x}, tmp_path, labels=y, configs=configs,
                  log=lines.append)
    assert [p.config.name for p in pts] == ["float", "int8-per-channel", "prune-50+int8"]
    for p in pts:
        assert p.latency > 0 and p.latency_unit == "ms" and not any(dominates(q, p, ["quality", "latency", "size"])
                                                                     for q in pts if p.on_front and q is not p)
    base = load_model(MODEL)
    run_pipeline(base, "fold")
    assert pts[0].quality == _top1(base, x, y)
    assert pts[1].quality == _top1(apply_config(base, configs[1], {"x": d.calib}, "x86"), x, y)
    assert pts[1].size < 0.3 * pts[0].size and pts[2].size < 0.5 * pts[1].size
    assert pts[2].on_front  # the smallest
    saved = json.loads((tmp_path / "pareto.json").read_text())
    assert [p["on_front"] for p in saved["points"]] == [p.on_front for p in pts]
    assert "| prune-50+int8 |" in (tmp_path / "report.md").read_text()
    lines.clear()
    again = explore(load_model(MODEL), "x86", {"x": d.calib}, {"x": x}, tmp_path, labels=y, configs=configs,
                    log=lines.append)
    assert all("reused" in line for line in lines) and [p.to_json() for p in again] == [p.to_json() for p in pts]


def test_explore_digits_on_the_m4_reports_flash_sram_and_arena(tmp_path):
    d = labelled.digits(32)
    configs = [Config("float"), Config("int8-per-channel", "per-channel")]
    pts = explore(load_model(MODEL), "cortex-m4", {"x": d.calib}, {"x": d.x[:60]}, tmp_path, labels=d.y[:60],
                  configs=configs)
    f, q = pts
    assert f.latency_unit == q.latency_unit == "instructions"
    assert q.flash < 0.6 * f.flash and q.arena <= f.arena and q.latency < f.latency
    assert "sram" in json.loads((tmp_path / "pareto.json").read_text())["axes"]
    assert q.on_front


def test_cli_explore_writes_the_report_and_refuses_an_unknown_target(tmp_path, capsys):
    from effc.cli import main

    d = labelled.digits(16)
    np.savez(tmp_path / "calib.npz", x=d.calib)
    np.savez(tmp_path / "eval.npz", x=d.x[:40])
    np.save(tmp_path / "labels.npy", d.y[:40])
    args = ["explore", MODEL, "--calib", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"),
            "--labels", str(tmp_path / "labels.npy"), "-o", str(tmp_path / "out")]
    assert main(args + ["--target", "riscv"]) == 2
    assert "riscv" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| prune-50+int8 |" in out and "| float |" in out
    points = json.loads((tmp_path / "out" / "pareto.json").read_text())["points"]
    assert len(points) == 9 and any(p["on_front"] for p in points)
    assert len(list((tmp_path / "out" / "configs").glob("*.json"))) == 9
