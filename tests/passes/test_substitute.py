"""substitute (passes/substitute/): rules as IR text, their verification when loaded (a wrong
rule refused by the interpreter and by z3), the matcher and the target builder on exact IR
text, the cost-guided search with estimated, arena and stubbed measured costs (the input
graph kept when nothing is cheaper, or when the whole-graph check finds it no faster), the
memory objective on the MobileNetV2 fixture down to the Cortex-M4 build, and real models
checked by the interpreter before and after."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from effc.cli import main
from effc.ir.interpreter import run_module
from effc.ir.parser import copy_module, parse_module
from effc.ir.printer import print_module
from effc.ir.refine import bind_input_shapes
from effc.ir.verifier import verify_module
from effc.models import load_model
from effc.passes import PassContext, run_pipeline
from effc.passes.substitute import Substitute, parse_budget
from effc.passes.substitute.cost import ArenaCost, KernelCost, cleanup, kernel_key, kernel_module, kernels
from effc.passes.substitute.rules import RuleError, apply_match, bundled_rules, find_matches, parse_rules
from effc.passes.substitute.search import graph_hash, search
from effc.passes.substitute.verify import verify_rule
from tests.fixtures import light_dir, mobilenet_v2_mcu

RULES = {r.name: r for r in bundled_rules()}

FIRE = """module {opset=17}

graph @fire(%x: f32[1,4,5,5]) -> (f32[1,6,5,5]) {
  %w1 = const() {value=dense<f32[2,4,1,1] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]>} : f32[2,4,1,1]
  %b1 = const() {value=dense<f32[2] [0.5, -0.5]>} : f32[2]
  %w2 = const() {value=dense<f32[4,4,1,1] [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]>} : f32[4,4,1,1]
  %b2 = const() {value=dense<f32[4] [1.0, 2.0, 3.0, 4.0]>} : f32[4]
  %a = conv(%x, %w1, %b1) {kernel_shape=[1, 1], pads=[0, 0, 0, 0]} : f32[1,2,5,5]
  %ra = relu(%a) : f32[1,2,5,5]
  %b = conv(%x, %w2, %b2) {kernel_shape=[1, 1]} : f32[1,4,5,5]
  %rb = relu(%b) : f32[1,4,5,5]
  %y = concat(%ra, %rb) {axis=1} : f32[1,6,5,5]
  return %y
}
"""

FIRE_MERGED = """module {opset=17}

graph @fire(%x: f32[1,4,5,5]) -> (f32[1,6,5,5]) {
  %w = const() {value=resource<"w_1">} : f32[6,4,1,1]
  %bias = const() {value=dense<f32[6] [0.5, -0.5, 1.0, 2.0, 3.0, 4.0]>} : f32[6]
  %y_1 = conv(%x, %w, %bias) {kernel_shape=[1, 1]} : f32[1,6,5,5]
  %y = relu(%y_1) : f32[1,6,5,5]
  return %y
}
"""

WRONG_RELU = """// ReLU does not distribute over addition
rule relu-distributes
source
graph @source(%a: f32[N,C], %b: f32[N,C]) -> (f32[N,C]) {
  %s = add(%a, %b) : f32[N,C]
  %y = relu(%s) : f32[N,C]
  return %y
}
target
graph @target(%a: f32[N,C], %b: f32[N,C]) -> (f32[N,C]) {
  %ra = relu(%a) : f32[N,C]
  %rb = relu(%b) : f32[N,C]
  %y = add(%ra, %rb) : f32[N,C]
  return %y
}
"""

# x + 1e-6 * x is not x, but it is within float32 rounding of x: the interpreter's check
# passes it, z3 (exact arithmetic) does not
WRONG_TINY = """rule drop-a-tiny-term
source
graph @source(%x: f32[N,C]) -> (f32[N,C]) {
  %k = const() {value=dense<f32[] [1e-06]>} : f32[]
  %t = mul(%x, %k) : f32[N,C]
  %y = add(%x, %t) : f32[N,C]
  return %y
}
target
graph @target(%x: f32[N,C]) -> (f32[N,C]) {
  return %x
}
"""


def _feeds(module, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in v.type.shape]).astype(np.float32)
            for v in module.graph.inputs}


def _assert_same_numbers(a, b, feeds, rtol: float = 1e-4) -> None:
    want, got = run_module(a, feeds), run_module(b, feeds)
    assert list(want) == list(got)
    for k in want:
        scale = max(1.0, float(np.abs(want[k]).max()))
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=rtol * scale, err_msg=k)


# ----------------------------------------------------------------------------- rules and their verification


def test_every_bundled_rule_is_proved_by_z3_and_checked_by_the_interpreter():
    assert len(RULES) >= 15
    assert {r.proof for r in RULES.values()} == {"z3 + interpreter"}
    families = {Path(r.where.split(":")[0]).name for r in RULES.values()}
    assert families == {"merge.rules", "movement.rules", "distribute.rules", "memory.rules"}
    assert {n for n, r in RULES.items() if r.objectives == ("memory",)} >= {"split-conv-channels",
                                                                            "split-inverted-bottleneck"}


def test_a_wrong_rule_is_refused_at_load_with_the_difference():
    rule = parse_rules(WRONG_RELU, "wrong.rules")[0]
    assert rule.doc == "ReLU does not distribute over addition"
    with pytest.raises(RuleError, match=r"wrong.rules:2: rule relu-distributes refused: the interpreter finds "
                                        r"output 0 differs by"):
        verify_rule(rule)


def test_a_rule_wrong_below_float_rounding_is_refused_by_z3():
    rule = parse_rules(WRONG_TINY, "tiny.rules")[0]
    with pytest.raises(RuleError, match=r"rule drop-a-tiny-term refused: z3 finds inputs where the source and the "
                                        r"target differ \(x_0="):
        verify_rule(rule)


def test_a_rule_whose_sides_never_fit_together_is_refused():
    text = WRONG_RELU.replace("%y = add(%ra, %rb) : f32[N,C]", "%y = concat(%ra, %rb) {axis=0} : f32[?,C]").replace(
        "rule relu-distributes", "rule grows").replace("@target(%a: f32[N,C], %b: f32[N,C]) -> (f32[N,C])",
                                                        "@target(%a: f32[N,C], %b: f32[N,C]) -> (f32[?,C])")
    with pytest.raises(RuleError, match="rule grows refused: output 0 has shape"):
        verify_rule(parse_rules(text, "x.rules")[0])


@pytest.mark.parametrize("text, message", [
    ("rule r\nsource\ngraph @s(%x: f32[N]) -> (f32[N]) {\n  %y = relu(%x) : f32[N]\n  return %y\n}\n",
     "f.rules:1: rule r needs a source and a target graph"),
    ("rule r speed\n", "f.rules:1: rule r: unknown objective 'speed'"),
    ("relu everything\n", "f.rules:1: expected 'rule NAME'"),
    ("rule r\nvary $k = [1, 1]\nsource\ngraph @s(%x: f32[N]) -> (f32[N]) {\n  %y = relu(%x) : f32[N]\n  return %y\n}\n"
     "target\ngraph @t(%z: f32[N]) -> (f32[N]) {\n  return %z\n}\n",
     "the target takes \\(z\\) but the source takes \\(x\\)"),
    ("rule r\nsource\ngraph @s(%x: f32[N]) -> (f32[N]) {\n  %y = relu(%x) {alpha=$a} : f32[N]\n  return %y\n}\n"
     "target\ngraph @t(%x: f32[N]) -> (f32[N]) {\n  return %x\n}\n", r"\$a is used but no 'vary \$a"),
    ("rule r\nsource\ngraph @s(%x: f32[N], %z: f32[N]) -> (f32[N], f32[N]) {\n  %a = relu(%x) : f32[N]\n"
     "  %b = relu(%z) : f32[N]\n  return %a, %b\n}\ntarget\ngraph @t(%x: f32[N], %z: f32[N]) -> (f32[N], f32[N]) {\n"
     "  return %x, %z\n}\n", "rule r: the source graph is not connected"),
])
def test_rules_file_errors_name_the_file_line_and_fix(text, message):
    with pytest.raises(RuleError, match=message):
        parse_rules(text, "f.rules")


# ----------------------------------------------------------------------------- matching and building


def test_merge_then_relu_then_split_against_concat_gives_one_conv():
    m = parse_module(FIRE)
    before = copy_module(m)
    for name in ("merge-conv-conv", "relu-before-split", "concat-of-split"):
        matches = find_matches(RULES[name], m.graph)
        assert matches, name
        apply_match(m, matches[0])
        cleanup(m)
        verify_module(m)
    assert print_module(m) == FIRE_MERGED
    _assert_same_numbers(before, m, _feeds(before))


def test_merge_matches_both_orders_and_keeps_the_graphs_order_first():
    m = parse_module(FIRE)
    matches = find_matches(RULES["merge-conv-conv"], m.graph)
    assert [[n.outputs[0].name for n in mt.ordered_nodes()] for mt in matches] == [["a", "b"], ["b", "a"]]


def test_a_value_used_outside_the_match_is_not_swallowed():
    m = parse_module(FIRE.replace("return %y", "return %y, %a").replace("-> (f32[1,6,5,5])",
                                                                         "-> (f32[1,6,5,5], f32[1,2,5,5])"))
    # %a is returned, but it is a source output of merge-conv-conv: the merge still applies
    assert find_matches(RULES["merge-conv-conv"], m.graph)
    apply_match(m, find_matches(RULES["merge-conv-conv"], m.graph)[0])
    cleanup(m)
    verify_module(m)
    # the split's first part is a graph output: moving the ReLUs before the split would lose it
    assert find_matches(RULES["relu-before-split"], m.graph) == []
    assert [v.name for v in m.graph.outputs] == ["y", "a"]
    assert m.graph.outputs[1].producer.op == "split"


def test_a_merge_that_would_make_a_cycle_is_not_a_match():
    # the second conv reads the first's output (through relu): merging them is impossible
    text = FIRE.replace("%b = conv(%x, %w2, %b2)", "%b = conv(%ra2, %w2, %b2)").replace(
        "%ra = relu(%a) : f32[1,2,5,5]", "%ra = relu(%a) : f32[1,2,5,5]\n  %ra2 = pad(%ra, %p) : f32[1,4,5,5]").replace(
        "%b1 = const()", "%p = const() {value=dense<i64[8] [0, 0, 0, 0, 0, 2, 0, 0]>} : i64[8]\n  %b1 = const()")
    m = parse_module(text)
    assert find_matches(RULES["merge-conv-conv"], m.graph) == []


def test_attributes_left_out_match_their_defaults_and_others_must_be_equal():
    m = parse_module(FIRE.replace("%b = conv(%x, %w2, %b2) {kernel_shape=[1, 1]}",
                                  "%b = conv(%x, %w2, %b2) {kernel_shape=[1, 1], strides=[1, 1], dilations=[1, 1]}"))
    assert len(find_matches(RULES["merge-conv-conv"], m.graph)) == 2
    m = parse_module(FIRE.replace("%b = conv(%x, %w2, %b2) {kernel_shape=[1, 1]} : f32[1,4,5,5]",
                                  "%b = conv(%x, %w2, %b2) {kernel_shape=[1, 1], strides=[2, 2]} : f32[1,4,3,3]")
                     .replace("%rb = relu(%b) : f32[1,4,5,5]", "%rb = relu(%b) : f32[1,4,3,3]")
                     .replace("%y = concat(%ra, %rb) {axis=1} : f32[1,6,5,5]", "%y = add(%ra, %ra) : f32[1,2,5,5]")
                     .replace("-> (f32[1,6,5,5])", "-> (f32[1,2,5,5], f32[1,4,3,3])").replace("return %y",
                                                                                            "return %y, %rb"))
    assert find_matches(RULES["merge-conv-conv"], m.graph) == []


# ----------------------------------------------------------------------------- costs and search


def test_kernel_key_ignores_weight_values_and_names():
    m1 = parse_module(FIRE)
    m2 = parse_module(FIRE.replace("5.0, 6.0, 7.0, 8.0", "9.0, 9.0, 9.0, 9.0").replace("%a =", "%other =").replace(
        "relu(%a)", "relu(%other)"))
    k1 = [kernel_key(kernel_module(n)) for n in kernels(m1)]
    k2 = [kernel_key(kernel_module(n)) for n in kernels(m2)]
    assert k1 == k2 and len(k1) == 3  # two conv+relu kernels and the concat


def test_graph_hash_is_blind_to_names_but_not_to_weights():
    a = parse_module(FIRE)
    assert graph_hash(a.graph) == graph_hash(parse_module(FIRE.replace("%ra", "%q")).graph)
    assert graph_hash(a.graph) != graph_hash(parse_module(FIRE.replace("[0.5, -0.5]", "[0.5, -0.25]")).graph)


def test_weight_blind_graph_hash_sees_kernels_and_int64_constants_only():
    """``weights=False`` (explore times such graphs once): other float weights hash alike;
    another op, attribute or int64 constant (a reshape's target) does not."""
    other = parse_module(FIRE.replace("[0.5, -0.5]", "[0.5, -0.25]"))
    blind = graph_hash(parse_module(FIRE).graph, weights=False)
    assert blind == graph_hash(other.graph, weights=False)
    assert blind != graph_hash(parse_module(FIRE.replace("%ra = relu", "%ra = sigmoid")).graph, weights=False)
    assert blind != graph_hash(parse_module(FIRE.replace("{axis=1}", "{axis=1, extra=1}")).graph, weights=False)
    flat = """module {opset=17}

graph @g(%x: f32[2,6]) -> (f32[3,4]) {
  %s = const() {value=dense<i64[2] [3, 4]>} : i64[2]
  %y = reshape(%x, %s) : f32[3,4]
  return %y
}
"""
    swapped = flat.replace("[3, 4]>", "[4, 3]>").replace("f32[3,4]", "f32[4,3]")
    assert graph_hash(parse_module(flat).graph, weights=False) != graph_hash(parse_module(swapped).graph, weights=False)


def test_search_finds_the_merged_fire_module_by_measured_costs_and_counts_each_kernel_once():
    measured = []

    def measure(modules):  # a target where every kernel costs 1 ms plus its output elements in 10 ns
        measured.extend(modules)
        return [1.0 + sum(int(np.prod(v.type.shape)) for v in m.graph.outputs) / 100_000 for m in modules]

    m = parse_module(FIRE)
    cost = KernelCost(measure)
    result = search(m, list(RULES.values()), cost, budget_s=30, cleanup=cleanup)
    assert result.applied == ["merge-conv-relu-conv-relu", "concat-of-split"]
    assert result.cost == pytest.approx(1.0015) and result.cost_before == pytest.approx(3.003)
    assert print_module(result.module) == FIRE_MERGED
    keys = [kernel_key(k) for k in measured]
    assert len(keys) == len(set(keys)) == cost.measured


@pytest.mark.parametrize("after, shown", [(1.5, "1.000 ms -> 1.500 ms (0.67x)"),
                                          (0.995, "1.000 ms -> 0.995 ms (1.01x)")])
def test_pass_keeps_the_input_graph_when_the_whole_graph_check_finds_it_slower_or_within_noise(after, shown):
    m = parse_module(FIRE)
    ctx = PassContext(options={"substitute_cost": lambda: KernelCost(lambda ms: [1.0] * len(ms)),
                               "substitute_check": lambda ms: [1.0, after]})
    assert Substitute().run(m, ctx) is False
    report = ctx.options["substitute_report"]
    assert print_module(m) == print_module(parse_module(FIRE))
    assert report.measured == (1.0, after) and not report.kept
    assert "kept the input graph: measured whole, the searched graph is not 1% faster" in report.format()
    assert f"measured: {shown}" in report.format()


def test_pass_replaces_the_graph_when_measured_faster_and_reports_the_rules():
    m = parse_module(FIRE)
    ctx = PassContext(options={"substitute_cost": lambda: KernelCost(lambda ms: [1.0] * len(ms)),
                               "substitute_check": lambda ms: [2.0, 1.0]})
    assert Substitute().run(m, ctx) is True
    assert print_module(m) == FIRE_MERGED
    text = ctx.options["substitute_report"].format()
    assert "rules applied: merge-conv-relu-conv-relu x1, concat-of-split x1" in text
    assert "predicted: 3.000 ms -> 1.000 ms (3.00x)" in text and "kept the searched graph: measured faster" in text


def test_nothing_cheaper_leaves_the_graph_unchanged():
    text = FIRE.replace("%y = concat(%ra, %rb) {axis=1} : f32[1,6,5,5]\n  return %y",
                        "return %ra, %rb").replace("-> (f32[1,6,5,5])", "-> (f32[1,2,5,5], f32[1,4,5,5])")
    m = parse_module(text)
    ctx = PassContext(options={"substitute_cost": lambda: KernelCost(lambda ms: [
        sum(int(np.prod(v.type.shape)) for v in k.graph.outputs) for k in ms])})  # pure work: merging saves nothing
    assert Substitute().run(m, ctx) is False
    assert print_module(m) == print_module(parse_module(text))
    assert "no substitution lowers the cost" in ctx.options["substitute_report"].format()


@pytest.mark.parametrize("spec, message", [
    ("substitute{objective=speed}", "objective' must be one of latency, memory"),
    ("substitute{budget=soon}", "budget' is a time such as 10s"),
    ("substitute{alpha=0.5}", "alpha' must be at least 1"),
])
def test_bad_options_are_refused(spec, message):
    from effc.passes import PipelineSpecError, parse_pipeline

    with pytest.raises(PipelineSpecError, match=message):
        parse_pipeline(spec)


def test_budget_reads_seconds_and_minutes():
    assert (parse_budget("10s"), parse_budget("2.5"), parse_budget("1m")) == (10.0, 2.5, 60.0)


def test_o3_runs_substitute_and_o2_does_not():
    from effc.passes.pipeline import NAMED_PIPELINES

    assert "substitute" in NAMED_PIPELINES["O3"] and "substitute" not in NAMED_PIPELINES["O2"]


# ----------------------------------------------------------------------------- real models


def _mbv2(tmp_path: Path):
    m = load_model(str(mobilenet_v2_mcu(tmp_path)))
    run_pipeline(m, "fold")
    return m


def test_memory_objective_lowers_the_mobilenet_v2_arena(tmp_path):
    m = _mbv2(tmp_path)
    before = copy_module(m)
    arena_before = ArenaCost()(m)
    ctx = PassContext()
    assert Substitute(objective="memory", budget="600s", max_graphs=40).run(m, ctx)
    report = ctx.options["substitute_report"]
    verify_module(m)
    assert report.result.applied and set(report.result.applied) <= {"split-inverted-bottleneck", "split-conv-channels",
                                                                    "conv-of-concat", "concat-of-split"}
    assert arena_before == 516096
    assert ArenaCost()(m) == report.result.cost < 0.7 * arena_before
    _assert_same_numbers(before, m, _feeds(before), rtol=1e-4)


@pytest.mark.slow
def test_memory_objective_on_the_cortex_m4_build_runs_as_the_interpreter(tmp_path):
    import effc
    from effc.passes.pipeline import NAMED_PIPELINES

    path = mobilenet_v2_mcu(tmp_path)
    pipeline = NAMED_PIPELINES["fold"] + ",substitute{objective=memory max-graphs=40 budget=600s},fuse,dce"
    plain = effc.compile(str(path), target="cortex-m4", flash=8_000_000, sram=4_000_000)
    searched = effc.compile(str(path), target="cortex-m4", pipeline=pipeline, flash=8_000_000, sram=4_000_000)
    assert searched._built.arena_bytes < 0.65 * plain._built.arena_bytes
    x = _feeds(searched.ir)
    want = run_module(load_model(str(path)), x)
    for got in (plain.run(x), searched.run(x)):
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)
    assert "split-inverted-bottleneck" in searched.report().substitution


@pytest.mark.parametrize("name", ["inception_v1", "squeezenet"])
def test_light_models_keep_their_numbers_through_a_search(name):
    m = load_model(str(light_dir() / f"light_{name}.onnx"))
    run_pipeline(m, "fold")
    before = copy_module(m)
    # a cost that rewards every merge (a kernel costs 1, data movement 0.1), so the search rewrites what it can
    def measure(modules):
        return [0.1 if {n.op for n in k.graph.nodes} <= {"const", "split", "concat"} else 1.0 for k in modules]

    ctx = PassContext(options={"substitute_cost": lambda: KernelCost(measure)})
    assert Substitute(budget="600s", max_graphs=40).run(m, ctx)
    assert ctx.options["substitute_report"].result.applied
    verify_module(m)
    _assert_same_numbers(before, m, _feeds(before), rtol=1e-3)


def test_minilm_merges_its_attention_projections_with_the_same_numbers():
    from tests.fixtures import _minilm_inputs, _minilm_path

    path = _minilm_path()
    feeds = _minilm_inputs(onnx.load(path))
    m = load_model(str(path))
    bind_input_shapes(m, {k: v.shape for k, v in feeds.items()})
    run_pipeline(m, "fold")
    before = copy_module(m)
    merged = 0
    for _ in range(12):
        matches = find_matches(RULES["merge-linear-linear"], m.graph)
        if not matches:
            break
        apply_match(m, matches[0])
        cleanup(m)
        merged += 1
    assert merged == 6  # Q+K, then (QK)+V, in each of the 3 layers
    def weighted(mod):
        return sum(1 for n in mod.graph.nodes if n.op == "mat_mul" and n.inputs[1].const_value is not None)

    assert (weighted(before), weighted(m)) == (3 * 6, 3 * 4)  # Q, K, V, output, FFN in, FFN out -> QKV, ...
    verify_module(m)
    _assert_same_numbers(before, m, feeds, rtol=1e-4)


def test_cli_info_rules_lists_them_and_refuses_a_wrong_rules_file(tmp_path, capsys):
    assert main(["info", "--rules"]) == 0
    out = capsys.readouterr().out
    assert "merge-conv-conv" in out and "z3 + interpreter" in out and f"{len(RULES)} rules" in out
    bad = tmp_path / "bad.rules"
    bad.write_text(WRONG_RELU)
    assert main(["info", "--rules", "--rules-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: rule relu-distributes refused" in err and "Traceback" not in err


def test_compile_o3_reports_the_search(tmp_path, monkeypatch):
    import effc

    monkeypatch.setenv("HOME", str(tmp_path))  # the kernel-cost cache goes to ~/.cache
    compiled = effc.compile("examples/digits_cnn.onnx", target="x86", pipeline="O3")
    text = str(compiled.report())
    assert "substitute (latency):" in text and "predicted:" in text
    assert list((tmp_path / ".cache" / "effc" / "kernel-costs").glob("x86-*.json"))
    x = {"x": np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    want = run_module(load_model("examples/digits_cnn.onnx"), x)
    got = compiled.run(x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)


def test_compile_o3_for_the_m4_prices_kernels_by_their_instructions(tmp_path, monkeypatch):
    import effc

    monkeypatch.setenv("HOME", str(tmp_path))
    compiled = effc.compile("examples/digits_cnn.onnx", target="cortex-m4", pipeline="O3")
    text = compiled.report().substitution
    assert "new kernels priced (measured on the target" in text and " instructions -> " in text
    cache = next((tmp_path / ".cache" / "effc" / "kernel-costs").glob("cortex-m4-*.json"))
    prices = [float(v) for v in json.loads(cache.read_text()).values()]
    # instructions per kernel call, counted by qemu; the prediction is their sum
    assert len(prices) >= 5 and all(p > 0 for p in prices) and max(prices) > 1e6
    assert f"predicted: {int(sum(prices)):,} instructions -> " in text
    x = {"x": np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    want = run_module(load_model("examples/digits_cnn.onnx"), x)
    got = compiled.run(x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)
