"""Pass infrastructure: pipeline specs, bisection, instruments (print, dump, time, verify,
numerics, reproducer) and ``effc opt`` with all of them."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest

from effc.cli import main
from effc.ir.core import Module
from effc.ir.interpreter import run_module
from effc.ir.parser import load_module, parse_module
from effc.ir.printer import print_module
from effc.ir.types import TensorType
from effc.optimize import OptimizeOptions, optimize
from effc.passes import NAMED_PIPELINES, Pass, PassContext, PassError, PipelineSpecError, parse_pipeline, run_pipeline
from effc.passes.base import PASSES, PostconditionError, register_pass
from effc.passes.instruments import CheckNumerics, DumpIR, NumericsError, PrintIR, Reproducer, TimePasses, VerifyEach
from tests.fixtures import REPO, ort_run
from tests.golden import random_inputs

DIGITS = REPO / "examples" / "digits_cnn.onnx"

# A conv-bn-relu block with a dead node: fold-bn, fuse and dce all change it.
SMALL = """module {opset=17}

graph @g(%x: f32[N,1,3,3]) -> (f32[N,2,2,2]) {
  %w = const() {value=dense<f32[2,1,2,2] [0.5, -1.0, 2.0, 0.25, 1.5, 0.75, -0.5, 1.0]>} : f32[2,1,2,2]
  %c = conv(%x, %w) {kernel_shape=[2, 2]} : f32[N,2,2,2]
  %scale = const() {value=dense<f32[2] [1.5, 0.5]>} : f32[2]
  %beta = const() {value=dense<f32[2] [0.25, -0.5]>} : f32[2]
  %mean = const() {value=dense<f32[2] [0.1, 0.2]>} : f32[2]
  %var = const() {value=dense<f32[2] [4.0, 0.25]>} : f32[2]
  %bn = batch_normalization(%c, %scale, %beta, %mean, %var) : f32[N,2,2,2]
  %dead = exp(%bn) : f32[N,2,2,2]
  %y = relu(%bn) : f32[N,2,2,2]
  return %y
}
"""


def small() -> Module:
    return parse_module(SMALL)


# ----------------------------------------------------------------------------- specs


@pytest.mark.parametrize("spec, canonical", [
    ("dce", "dce"),
    (" fold-bn , dce ", "fold-bn,dce"),
    ("fuse{max-ops=8}", "fuse"),  # the default is not printed
    ("fuse{recognize=false max-ops=16}", "fuse{max-ops=16 recognize=false}"),
    ("fold-constants{max-elements=64}", "fold-constants{max-elements=64}"),
    ("fixpoint(fold-constants,dce)", "fixpoint(fold-constants,dce)"),
    ("fixpoint{max-iter=10}(cse)", "fixpoint(cse)"),
    ("fixpoint{max-iter=3}(cse,fixpoint(dce))", "fixpoint{max-iter=3}(cse,fixpoint(dce))"),
    ("O0", ""),
    ("O2", NAMED_PIPELINES["O2"]),
    ("O1,fuse{max-ops=4}", NAMED_PIPELINES["O1"] + ",fuse{max-ops=4}"),
])
def test_spec_prints_canonically_and_round_trips(spec, canonical):
    p = parse_pipeline(spec)
    assert str(p) == canonical
    assert parse_pipeline(str(p)) == p


def test_named_pipelines_are_canonical():
    for name, spec in NAMED_PIPELINES.items():
        assert str(parse_pipeline(name)) == spec, name


@pytest.mark.parametrize("spec, message", [
    ("fold-bnn", "unknown pass 'fold-bnn' (known: cse, dce,"),
    ("fuse{max-opz=3}", "pass 'fuse' has no option 'max-opz' (options: max-ops, recognize, pools)"),
    ("fuse{max-ops=lots}", "pass 'fuse': option 'max-ops' wants an int, got 'lots'"),
    ("fuse{recognize=yes}", "option 'recognize' wants true or false, got 'yes'"),
    ("fixpoint{max-iter=x}(dce)", "option 'max-iter' wants an int, got 'x'"),
    ("fixpoint{max-iter=0}(dce)", "'max-iter' must be at least 1"),
    ("fixpoint{bogus=1}(dce)", "fixpoint has no option bogus"),
    ("fixpoint(dce", "expected ')' at the end"),
    ("dce,,cse", "expected a pass name at column 5, got ','"),
    ("dce cse", "unexpected 'cse' at column 5"),
])
def test_spec_errors_are_clear(spec, message):
    with pytest.raises(PipelineSpecError) as e:
        parse_pipeline(spec)
    assert message in str(e.value)
    assert e.value.exit_code == 2


def test_stop_after_pass_runs_exactly_n_passes():
    m = small()
    runner = optimize(m, "O2", OptimizeOptions(stop_after_pass=2, reproducer_dir=None))
    assert [r.pass_.name for r in runner.history] == ["fold-constants", "eliminate-identity"]
    reference = small()
    run_pipeline(reference, "fold-constants,eliminate-identity")
    assert print_module(m) == print_module(reference)


# ----------------------------------------------------------------------------- instruments


def test_print_ir_headers_and_dumps_parse_back():
    out = io.StringIO()
    ctx = PassContext(instruments=[PrintIR(before={"fold-bn"}, after={"fold-bn"}, stream=out)])
    run_pipeline(small(), "fold-bn,dce", ctx)
    header_before = "// -----// IR Dump Before fold-bn //----- //\n"
    header_after = "// -----// IR Dump After fold-bn //----- //\n"
    text = out.getvalue()
    assert text.startswith(header_before)
    before, after = text[len(header_before):].split(header_after)
    assert before == SMALL
    assert "batch_normalization" not in after and "%dead = exp" in after  # dce has not run yet
    # each dump, header comment included, parses back to the module it shows
    assert print_module(parse_module(header_before + before)) == before
    assert print_module(parse_module(header_after + after)) == after


def test_print_ir_after_change_skips_unchanged_passes():
    out = io.StringIO()
    run_pipeline(small(), "cse,fold-bn,dce", PassContext(instruments=[PrintIR(after_change=True, stream=out)]))
    headers = [line for line in out.getvalue().splitlines() if line.startswith("// -----//")]
    assert headers == ["// -----// IR Dump After fold-bn //----- //", "// -----// IR Dump After dce //----- //"]


def test_dump_ir_writes_numbered_files_that_parse_and_run(tmp_path):
    from effc.models import load_model

    m = load_model(DIGITS)
    inputs = random_inputs(m.graph.inputs)
    want = run_module(m, inputs)["logits"]
    runner = run_pipeline(m, "O2", PassContext(instruments=[DumpIR(tmp_path / "steps")]))
    files = sorted(p.name for p in (tmp_path / "steps").glob("*.effc"))
    assert files == ["000_input.effc"] + [f"{r.index:03d}_{r.pass_.name}.effc" for r in runner.history]
    for name in files:
        step = load_module(tmp_path / "steps" / name)  # with its .npz weights
        np.testing.assert_allclose(run_module(step, inputs)["logits"], want, rtol=1e-4, atol=1e-5, err_msg=name)
    assert print_module(load_module(tmp_path / "steps" / files[-1])) == print_module(m)


def test_time_passes_table():
    out = io.StringIO()
    runner = run_pipeline(small(), "O2", PassContext(instruments=[TimePasses(out)]))
    table = out.getvalue()
    assert "Pass execution timing report" in table
    for name in ("fold-constants", "fold-bn", "fuse", "dce"):
        assert f"  {name}\n" in table
    total = table.strip().splitlines()[-1].split()
    assert total[-1] == "total" and int(total[-2]) == len(runner.history)


# ----------------------------------------------------------------------------- broken passes


@dataclass(frozen=True)
class CorruptType(Pass):
    """Test only: records a wrong shape on the first conv's output."""

    name = "test-corrupt-type"

    def run(self, module, ctx):
        conv = next(n for n in module.graph.nodes if n.op == "conv")
        conv.outputs[0].type = TensorType(conv.outputs[0].type.dtype, ("N", 3, 2, 2))
        return True


@dataclass(frozen=True)
class FlipConvWeight(Pass):
    """Test only: a wrong rewrite, negating every conv weight."""

    name = "test-flip-conv-weight"

    def run(self, module, ctx):
        for n in list(module.graph.nodes):
            if n.op == "conv":
                w = n.inputs[1]
                neg = module.const(-w.const_value, name=module.graph.names.suggest(w.name + "_neg"))
                module.graph.insert_before(n, neg)
                n.set_input(1, neg.output)
        return True


@dataclass(frozen=True)
class Crash(Pass):
    name = "test-crash"

    def run(self, module, ctx):
        raise RuntimeError("boom")


@pytest.fixture
def broken_passes():
    classes = [CorruptType, FlipConvWeight, Crash]
    for cls in classes:
        register_pass(cls)
    yield
    for cls in classes:
        PASSES.pop(cls.name, None)


def test_verify_each_catches_a_pass_that_corrupts_a_type(broken_passes):
    run_pipeline(small(), "test-corrupt-type")  # unnoticed without the instrument
    with pytest.raises(PostconditionError) as e:
        run_pipeline(small(), "dce,test-corrupt-type,dce", PassContext(instruments=[VerifyEach()]))
    assert "after pass #2 'test-corrupt-type'" in str(e.value)
    assert "%c" in str(e.value)


def test_check_numerics_names_the_pass_that_moved_outputs(broken_passes):
    ctx = PassContext(instruments=[CheckNumerics()])
    with pytest.raises(NumericsError) as e:
        run_pipeline(small(), "fold-constants,test-flip-conv-weight,dce", ctx)
    msg = str(e.value)
    assert "pass #2 'test-flip-conv-weight' changed output 'y'" in msg
    assert "elements moved; first at index" in msg and ", was " in msg and "np.float32" not in msg


def test_numerics_failure_writes_a_reproducer_of_the_blamed_pass(broken_passes, tmp_path):
    folder = tmp_path / "repro"
    m = small()
    ctx = PassContext(instruments=[Reproducer(folder), CheckNumerics()])
    with pytest.raises(NumericsError) as e:
        run_pipeline(m, "fold-constants,test-flip-conv-weight,dce", ctx)
    assert str(folder) in str(e.value)
    note = (folder / "pipeline.txt").read_text()
    assert "failed pass #2: test-flip-conv-weight" in note and "NumericsError" in note
    before = load_module(folder / "before.effc")
    inputs = random_inputs(before.graph.inputs)
    want = run_module(small(), inputs)["y"]
    np.testing.assert_allclose(run_module(before, inputs)["y"], want, rtol=1e-5, atol=1e-6)


def test_crashing_pass_writes_a_reproducer(broken_passes, tmp_path):
    from effc.models import load_model

    m = load_model(DIGITS)
    folder = tmp_path / "repro"
    with pytest.raises(PassError) as e:
        run_pipeline(m, "fold-bn,test-crash,dce", PassContext(instruments=[Reproducer(folder)]))
    assert "pass 'test-crash' crashed: RuntimeError: boom" in str(e.value)
    assert str(folder) in str(e.value)
    before = load_module(folder / "before.effc")
    assert print_module(before) == print_module(m)  # the IR the crashing pass got (after fold-bn)
    note = (folder / "pipeline.txt").read_text()
    assert "pipeline: fold-bn,test-crash,dce" in note and "failed pass #2: test-crash" in note
    inputs = random_inputs(m.graph.inputs)
    np.testing.assert_allclose(run_module(before, inputs)["logits"], run_module(m, inputs)["logits"])


def test_broken_passes_are_unregistered_afterwards():
    assert not {"test-corrupt-type", "test-flip-conv-weight", "test-crash"} & set(PASSES)


# ----------------------------------------------------------------------------- CLI


def test_cli_opt_with_all_checks_writes_an_equivalent_onnx(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code = main(["opt", str(DIGITS), "-O2", "--check-numerics", "--verify-each", "--time-passes", "-o", str(out),
                 "--reproducer-dir", str(tmp_path / "repro")])
    assert code == 0
    err = capsys.readouterr().err
    assert "Pass execution timing report" in err and "fold-bn" in err
    x = np.load(REPO / "examples" / "digits_test.npz")["x"]
    np.testing.assert_allclose(ort_run(out, {"x": x})["logits"], ort_run(DIGITS, {"x": x})["logits"],
                               rtol=1e-4, atol=1e-4)
    assert not (tmp_path / "repro").exists()
