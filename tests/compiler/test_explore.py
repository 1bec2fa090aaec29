"""effc.explore (issue 16): the pareto front's definition; sweeps of the digits CNN on x86
and on the Cortex-M4 (every configuration built and measured, quality equal to the
interpreter's, the front non-dominated, identical graphs timed once, worker processes giving
the same figures as one process, a rerun reusing finished configurations, the pictures);
choosing under constraints (the chosen configuration re-measured within every one, its
artifact exported; when nothing fits, which constraint failed by how much); the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from effc.explore import (Config, Constraints, NothingFits, Point, apply_config, choose, default_configs, dominates,
                          explore, explore_and_choose, mark_front)
from effc.ir.interpreter import run_module
from effc.models import load_model
from tests import labelled

MODEL = "examples/digits_cnn.onnx"
PNG = b"\x89PNG"


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


def _assert_front(pts, axes):
    for p in pts:
        beaten = any(dominates(q, p, axes) for q in pts if q is not p)
        assert p.on_front == (not beaten), p.config.name


def test_default_grid_has_every_kind_of_configuration():
    x86, m4 = default_configs("x86"), default_configs("cortex-m4")
    kinds = {"float": lambda c: c == Config("float"), "mixed": lambda c: c.max_drop is not None,
             "no-dfq": lambda c: c.quantize and not c.dfq, "per-tensor": lambda c: c.quantize == "per-tensor",
             "prune": lambda c: c.prune and not c.quantize, "prune+int8": lambda c: c.prune and c.quantize,
             "substitute": lambda c: c.substitute == "latency"}
    assert all(any(k(c) for c in x86) for k in kinds.values())
    assert {c.substitute for c in m4} - {c.substitute for c in x86} == {"memory"}
    assert sorted({c.max_drop for c in x86 if c.max_drop is not None}) == [0.0, 0.5, 1.0]


def test_explore_digits_on_x86_measures_every_configuration_and_resumes(tmp_path):
    from effc.passes.pipeline import run_pipeline

    d = labelled.digits(32)
    x, y = d.x[:120], d.y[:120]
    configs = [Config("float"), Config("int8-per-channel", "per-channel"),
               Config("mixed-1", "per-tensor", max_drop=1.0),
               Config("prune-50+int8", "per-channel", prune=0.5), Config("substitute-latency", substitute="latency"),
               Config("no-dfq", "per-channel", dfq=False), Config("bad-ratio", prune=1.5)]
    lines: list[str] = []
    pts = explore(load_model(MODEL), "x86", {"x": d.calib}, {"x": x}, tmp_path, labels=y, configs=configs,
                  log=lines.append, name="digits_cnn")
    names = ["float", "int8-per-channel", "mixed-1", "prune-50+int8", "substitute-latency", "no-dfq"]
    assert [p.config.name for p in pts] == names  # the one that cannot apply is reported, not measured
    axes = ["quality", "latency", "size"]
    assert all(p.latency > 0 and p.latency_unit == "ms" for p in pts)
    _assert_front(pts, axes)
    base = load_model(MODEL)
    run_pipeline(base, "fold")
    assert pts[0].quality == _top1(base, x, y)
    assert pts[1].quality == _top1(apply_config(base, configs[1], {"x": d.calib}, "x86")[0], x, y)
    assert pts[1].size < 0.3 * pts[0].size and pts[3].size < 0.5 * pts[1].size
    assert pts[2].detail == "0 layers float" and pts[2].quality >= pts[0].quality - 1.0
    # the search keeps nothing on this model: the same graph as float, built and timed once;
    # without DFQ, other weights in the same kernels
    sub, no_dfq = pts[4], pts[5]
    assert "timed as float (the same kernels)" in sub.detail and sub.latency == pts[0].latency
    assert sub.size == pts[0].size
    assert no_dfq.detail == "timed as int8-per-channel (the same kernels)" and no_dfq.latency == pts[1].latency
    assert pts[3].on_front  # the smallest
    saved = json.loads((tmp_path / "pareto.json").read_text())
    assert [p["on_front"] for p in saved["points"]] == [p.on_front for p in pts]
    assert saved["model"] == "digits_cnn" and saved["float_quality"] == pts[0].quality
    assert "bad-ratio" in saved["not_measured"] and "--ratio" in saved["not_measured"]["bad-ratio"]
    text = (tmp_path / "report.md").read_text()
    assert "| prune-50+int8 |" in text and "- bad-ratio: " in text and "![quality-latency.png]" in text
    for picture in ("quality-latency.png", "quality-size.png"):
        assert (tmp_path / picture).read_bytes()[:4] == PNG
    assert not (tmp_path / "quality-sram.png").exists()
    lines.clear()
    again = explore(load_model(MODEL), "x86", {"x": d.calib}, {"x": x}, tmp_path, labels=y, configs=configs[:6],
                    log=lines.append, name="digits_cnn")
    assert all("reused" in line for line in lines) and [p.to_json() for p in again] == [p.to_json() for p in pts]
    lines.clear()  # other evaluation samples: nothing saved applies
    explore(load_model(MODEL), "x86", {"x": d.calib}, {"x": x[:100]}, tmp_path, labels=y[:100], configs=configs[:1],
            log=lines.append)
    assert lines and not any("reused" in line for line in lines)


@pytest.fixture(scope="module")
def m4_sweep(tmp_path_factory):
    """The digits CNN on the M4, three configurations prepared in two worker processes."""
    d = labelled.digits(32)
    out = tmp_path_factory.mktemp("m4")
    configs = [Config("float"), Config("int8-per-channel", "per-channel"), Config("prune-50+int8", "per-channel",
                                                                                   prune=0.5)]
    pts = explore(load_model(MODEL), "cortex-m4", {"x": d.calib}, {"x": d.x[:60]}, out, labels=d.y[:60],
                  configs=configs, jobs=2)
    return d, out, configs, pts


def test_explore_digits_on_the_m4_reports_flash_sram_and_arena(m4_sweep, tmp_path):
    d, out, configs, pts = m4_sweep
    f, q, pq = pts
    assert f.latency_unit == q.latency_unit == "instructions"
    assert q.flash < 0.6 * f.flash and q.arena <= f.arena and q.latency < f.latency and pq.latency < q.latency
    assert json.loads((out / "pareto.json").read_text())["axes"] == ["quality", "latency", "size", "sram"]
    _assert_front(pts, ["quality", "latency", "size", "sram"])
    assert q.on_front and (out / "quality-sram.png").read_bytes()[:4] == PNG
    # instruction counts are deterministic: one process gives what the two workers gave
    serial = explore(load_model(MODEL), "cortex-m4", {"x": d.calib}, {"x": d.x[:60]}, tmp_path, labels=d.y[:60],
                     configs=configs[1:2], jobs=1)
    assert serial[0].to_json() == {**q.to_json(), "on_front": True}


def test_choose_meets_every_constraint_when_remeasured_and_exports_the_artifact(m4_sweep):
    d, out, configs, pts = m4_sweep
    from effc.passes.quantize_search import top1_metric

    f, q, pq = pts
    base = load_model(MODEL)
    score = top1_metric(base, {"x": d.x[:60]}, None, d.y[:60])
    one = {"x": d.x[:1]}
    # under int8's latency and a drop of 10 points: the best quality there is int8 per channel or
    # pruned+int8, whichever scores higher; both are under the latency bound
    limits = Constraints(max_latency=q.latency, max_flash=q.flash, max_drop=10.0)
    choice = choose(pts, limits, out, "cortex-m4", score, one, f.quality)
    best = max([q, pq], key=lambda p: (p.quality, -p.latency))
    assert choice.point is best
    r = choice.remeasured
    assert r["latency"] <= limits.max_latency and r["flash"] <= limits.max_flash
    assert f.quality - r["quality"] <= 10.0 and r["latency"] == best.latency and r["quality"] == best.quality
    assert choice.artifact == "chosen" and (out / "chosen" / "manifest.json").exists()
    assert not limits.failures(r, f.quality)
    # nothing fits: each constraint no configuration meets, with the closest and by how much
    tight = Constraints(max_latency=pq.latency - 1000, max_drop=0.0)
    with pytest.raises(NothingFits) as e:
        choose(pts, tight, out, "cortex-m4", score, one, f.quality)
    msg = str(e.value)
    assert f"--max-latency {pq.latency - 1000:,}" in msg
    assert f"{pq.latency:,} instructions, 1,000 instructions over" in msg
    assert "(the closest, prune-50+int8)" in msg and "closest: " in msg


def test_explore_and_choose_writes_the_choice_into_the_report(tmp_path):
    d = labelled.digits(16)
    configs = [Config("float"), Config("prune-50", prune=0.5)]
    # without labels, quality is top-1 agreement with the float model
    pts, choice = explore_and_choose(load_model(MODEL), "x86", {"x": d.calib}, {"x": d.x[:40]}, tmp_path,
                                     Constraints(max_size=30_000), configs=configs)
    assert pts[0].quality == 100.0 and pts[1].quality < 100.0
    assert choice.point.config.name == "prune-50" and choice.remeasured["size"] <= 30_000
    assert choice.remeasured["latency"] > 0
    assert json.loads((tmp_path / "pareto.json").read_text())["chosen"]["config"] == "prune-50"
    assert "Chosen: **prune-50**" in (tmp_path / "report.md").read_text()


def test_cli_explore_writes_the_report_and_refuses_bad_input(tmp_path, capsys):
    from effc.cli import main

    d = labelled.digits(16)
    np.savez(tmp_path / "calib.npz", x=d.calib)
    np.savez(tmp_path / "eval.npz", x=d.x[:40])
    np.save(tmp_path / "labels.npy", d.y[:40])
    args = ["explore", MODEL, "--calib", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"),
            "--labels", str(tmp_path / "labels.npy"), "-o", str(tmp_path / "out")]
    assert main(args + ["--target", "riscv"]) == 2
    assert "riscv" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(args + ["-j", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err
    assert main(args + ["--configs", "float,int9"]) == 2
    err = capsys.readouterr().err
    assert "--configs: int9 is not in the grid for x86; it has float, int8-per-tensor" in err
    assert main(args + ["--configs", "prune-50,float", "-o", str(tmp_path / "two")]) == 0
    assert [p["config"]["name"] for p in json.loads((tmp_path / "two" / "pareto.json").read_text())["points"]] == \
        ["prune-50", "float"]
    capsys.readouterr()
    assert main(args + ["-j", "2", "--max-latency", "1e-6"]) == 1  # runs the whole grid; nothing is that fast
    out, err = capsys.readouterr()
    assert "| prune-50+int8 |" in out and "| float |" in out and "| mixed-0.5 |" in out
    assert "no configuration meets the constraints" in err and "--max-latency 1e-06 ms" in err
    assert "Traceback" not in err
    points = json.loads((tmp_path / "out" / "pareto.json").read_text())["points"]
    assert len(points) == len(default_configs("x86")) and any(p["on_front"] for p in points)
    assert main(args + ["--max-flash", "64K", "-o", str(tmp_path / "none")]) == 2  # refused before any work
    assert not (tmp_path / "none").exists()
    assert "--max-flash and --max-sram apply to microcontroller targets" in capsys.readouterr().err
    assert main(args + ["--max-drop", "100"]) == 0
    out, err = capsys.readouterr()
    assert "## Chosen" in out and "the chosen artifact" in err and (tmp_path / "out" / "chosen").is_dir()
