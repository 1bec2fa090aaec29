"""Tuning with MetaSchedule into a persistent database (effc.codegen.tune).

The tuning tests use two tiny models that share a kernel (the same conv+relu on the same
shapes, different weights): tuned builds match the untuned build and the interpreter, a
second tune of the same model runs no trials and adds no records, and the second model
reuses the shared kernel. The rest check the pieces without tuning."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from effc.codegen import build, host_x86_target
from effc.ir.refine import bind_input_shapes
from effc.codegen.tune import (Kernel, build_tuned, kernel_module, kernels_of, open_database, plan_budget,
                               target_key, tune)
from effc.ir.interpreter import run_module
from effc.models import load_model
from effc.optimize import optimize
from tests.fixtures import REPO, assert_close

TRIALS = 8


def _conv_model(second_conv: bool, seed: int) -> onnx.ModelProto:
    """x[1,3,8,8] → conv 8x3x3x3 (pad 1) → relu [→ conv 4x8x1x1]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1" if second_conv else "y"])]
    inits = [w1]
    out_channels = 8
    if second_conv:
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"))
        nodes.append(helper.make_node("Conv", ["r1", "w2"], ["y"]))
        out_channels = 4
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _optimized(proto: onnx.ModelProto):
    module = load_model(proto)
    optimize(module, "O2")
    return module


@pytest.fixture(scope="module")
def tuned_db(tmp_path_factory):
    """Model A tuned once into a fresh database: (db folder, module, report)."""
    db = tmp_path_factory.mktemp("tuning-db")
    module = _optimized(_conv_model(False, seed=0))
    report = tune(module, None, TRIALS, db, progress=False)
    return db, module, report


def test_tuned_build_matches_untuned_and_interpreter(tuned_db):
    db, module, report = tuned_db
    assert report.trials > 0, report
    assert report.count("tuned") >= 1, [(k.name, k.status) for k in report.kernels]
    assert not report.failures
    # the database keeps each kernel's best record; trials.json counts what each kernel had
    assert report.records_after == report.count("tuned")
    assert all(k.trials_total == k.trials for k in report.kernels)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    tuned = build_tuned(module, None, db).run({"x": x})
    untuned = build(module).run({"x": x})
    reference = run_module(module, {"x": x})
    assert_close(tuned["y"], untuned["y"], "tuned vs untuned")
    assert_close(tuned["y"], reference["y"], "tuned vs interpreter")
    # the schedule was applied: the tuned kernel is marked scheduled
    fused = [f for gv, f in build_tuned(module, None, db).relax_module.functions.items()
             if gv.name_hint.startswith("fused_")]
    assert fused and all(f.attrs and f.attrs.get("tirx.is_scheduled") for f in fused)


def test_second_tune_runs_no_trials(tuned_db):
    db, module, first = tuned_db
    target = host_x86_target()
    before = len(open_database(db, target))
    again = tune(module, None, TRIALS, db, progress=False)
    assert again.trials == 0
    assert {k.status for k in again.kernels} == {"reused"}
    assert len(open_database(db, target)) == before == again.records_after == first.records_after


def test_other_model_reuses_shared_kernel(tuned_db):
    db, module_a, _ = tuned_db
    module_b = _optimized(_conv_model(True, seed=5))  # same conv+relu shapes, other weights
    shared = {k.name for k in kernels_of(kernel_module(module_a))}
    report = tune(module_b, None, TRIALS, db, progress=False)
    statuses = {k.name: k.status for k in report.kernels}
    reused = [n for n, st in statuses.items() if st == "reused"]
    assert len(reused) == 1 and reused[0] in shared, statuses
    assert report.count("tuned") >= 1 and report.trials > 0, statuses
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert_close(build_tuned(module_b, None, db).run({"x": x})["y"], run_module(module_b, {"x": x})["y"], "model B")


def test_identical_kernels_are_one_workload():
    """Two PrimFuncs with the same body (different weights) are one kernel with two calls."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), f"w{i}") for i in (1, 2)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("x", "y")]
    proto = helper.make_model(helper.make_graph(nodes, "twice", io[:1], io[1:], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    kernels = kernels_of(kernel_module(_optimized(proto)))
    assert [k.calls for k in kernels] == [2]


def test_symbolic_kernels_are_not_tuned():
    """digits_cnn has a symbolic batch: its kernels keep the default schedule until bound."""
    module = load_model(REPO / "examples" / "digits_cnn.onnx")
    optimize(module, "O2")
    assert any(k.status.startswith("skipped: symbolic") for k in kernels_of(kernel_module(module)))
    module = load_model(REPO / "examples" / "digits_cnn.onnx")
    bind_input_shapes(module, {"x": (1, 1, 8, 8)})
    optimize(module, "O2")
    assert all(k.status == "pending" for k in kernels_of(kernel_module(module)))


def test_budget_goes_to_heaviest_kernels_first():
    ks = [Kernel(n, None, calls, flops) for n, calls, flops in
          [("conv", 1, 1e9), ("conv_twice", 2, 1e8), ("add", 1, 1e3), ("reshape", 1, 0.0)]]
    assert plan_budget(ks, 0) == {}
    assert plan_budget(ks, 8) == {"conv": 4, "conv_twice": 4}
    plan = plan_budget(ks, 40)
    assert sum(plan.values()) == 40 and set(plan) == {"conv", "conv_twice", "add", "reshape"}
    assert plan["conv"] > plan["conv_twice"] > plan["add"] >= 4
    assert plan_budget(ks, 3) == {"conv": 3}


def test_database_is_per_target():
    base = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell", "num-cores": 2}
    assert target_key(base) == target_key(dict(base))
    assert target_key(base) != target_key({**base, "num-cores": 4})
    assert target_key(base) != target_key({**base, "mcpu": "znver3"})
    assert target_key(base).startswith("llvm-haswell-2c-")


def test_a_model_tuned_slower_keeps_effcs_schedules(tuned_db, tmp_path):
    """``check_in_model`` records the kernels of a model whose tuned build ran slower than
    its untuned one (``PREFER_DEFAULT`` beside the database); the database's schedule of
    such a kernel is dropped for effc's default one (``_mark_scheduled``), and a tuned build
    with all its kernels listed has the untuned build's kernels."""
    import shutil

    import tvm_ffi

    from effc.codegen.schedules import SCHEDULED, Cpu, default_schedule
    from effc.codegen.tune import PREFER_DEFAULT, _kernel_hash, _mark_scheduled, database_path

    db, module, _ = tuned_db
    before = kernel_module(module)
    name, func = next((gv.name_hint, f) for gv, f in before.functions.items() if gv.name_hint.startswith("fused_"))
    after = tvm.IRModule(dict(before.functions))
    after[name] = default_schedule(func.with_attr("global_symbol", "main"), Cpu(8, 16, 32 * 1024, 1)).mod["main"]  # "the database's"
    kept = _mark_scheduled(before, tvm.IRModule(dict(after.functions)), {_kernel_hash(func)})
    assert tvm_ffi.structural_equal(kept[name], func)
    used = _mark_scheduled(before, tvm.IRModule(dict(after.functions)), set())
    assert not tvm_ffi.structural_equal(used[name], func) and used[name].attrs.get(SCHEDULED)

    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    kernels = [f for f in before.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    (database_path(copy, None) / PREFER_DEFAULT).write_text(json.dumps([_kernel_hash(f) for f in kernels]))

    def fused(built):
        return {gv.name_hint: f for gv, f in built.relax_module.functions.items() if gv.name_hint.startswith("fused_")}

    kept_all, untuned = fused(build_tuned(module, None, copy)), fused(build(module))
    assert kept_all and set(kept_all) == set(untuned)
    assert all(tvm_ffi.structural_equal(kept_all[n], untuned[n]) for n in kept_all)
