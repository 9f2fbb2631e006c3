"""The pass manager: pipelines by name with typed options, the default pipeline's fixed point,
and the debugging switches (print-after, time-passes, verify-each, dump-dir)."""

import io
from dataclasses import dataclass

import numpy as np
import pytest

from sbc.errors import UnsupportedError
from sbc.ir import Graph, TensorType
from sbc.ir.interpreter import run
from sbc.ir.parser import parse_graph
from sbc.ir.verifier import VerificationError, verify
from sbc.passes import (DEFAULT_PIPELINE, Pass, PassResult, available_passes, get_pass,
                        parse_pipeline, register_pass, run_passes)
from tests.passes.helpers import random_feeds, sym


def graph():
    """Dead code, a foldable constant, a shape chain and a no-op reshape: every pass has work."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("n"), 3)))
    g.add1("Exp", x)
    one = g.add1("Add", g.add1("Constant", value=np.float32(0.5)), g.add1("Constant", value=np.float32(0.5)))
    same = g.add1("Reshape", x, g.add1("Shape", x))
    g.set_outputs([g.add1("Relu", g.add1("Add", same, one))], ["y"])
    return g


@register_pass
class OptionsForTests(Pass):
    """Test-only: every option type, does nothing."""
    name = "test-options"

    @dataclass
    class Options:
        count: int = 1
        scale: float = 1.0
        enabled: bool = False
        label: str = ""

    def run(self, g):
        return PassResult(g, False)


@register_pass
class BreaksTheIR(Pass):
    """Test-only: leaves a stale output type behind."""
    name = "test-breaks-ir"

    def run(self, g):
        g.nodes[-1].outputs[0].type = TensorType("f32", (4,))
        return PassResult(g, True)


def test_registry():
    assert {"cse", "dce", "fold-constants", "fold-reshape-transpose"} <= set(available_passes())
    assert set(DEFAULT_PIPELINE) <= set(available_passes())
    assert get_pass("dce")().run(graph()).modified


def test_pipeline_options_are_parsed_into_typed_fields():
    passes = parse_pipeline("fold-constants{max-elements=0x10000},dce")
    assert [p.name for p in passes] == ["fold-constants", "dce"]
    assert passes[0].options.max_elements == 65536 and str(passes[0]) == "fold-constants{max-elements=65536}"
    (p,) = parse_pipeline(["test-options{count=3 scale=0.5, enabled=yes,label=a-b}"])
    assert (p.options.count, p.options.scale, p.options.enabled, p.options.label) == (3, 0.5, True, "a-b")
    assert [p.name for p in parse_pipeline(["cse,dce", "dce"])] == ["cse", "dce", "dce"]


@pytest.mark.parametrize("spec, message", [
    ("nope", r"unknown pass 'nope'; available: .*cse, dce, fold-constants"),
    ("dce{x=1}", r"pass 'dce' has no option 'x'; options: none"),
    ("fold-constants{size=1}", r"options: max-elements: int = 1048576"),
    ("fold-constants{max-elements=lots}", r"fold-constants\{max-elements\}: cannot read 'lots' as int"),
    ("test-options{enabled=maybe}", r"cannot read 'maybe' as bool"),
    ("fold-constants{max-elements}", r"expected option=value"),
    ("dce{", "unbalanced braces"),
    ("fold constants", "cannot read pass"),
])
def test_bad_pipelines_say_what_exists(spec, message):
    with pytest.raises(UnsupportedError, match=message):
        parse_pipeline(spec)


def test_default_pipeline_reaches_a_fixed_point_and_keeps_numerics():
    g = graph()
    feeds = random_feeds(g)
    expected = run(graph(), feeds)
    out = io.StringIO()
    result = run_passes(g, print_after="all", out=out)
    verify(result)
    assert result.op_counts() == {"Add": 1, "Constant": 1, "Relu": 1}
    np.testing.assert_allclose(run(result, feeds)["y"], expected["y"], rtol=1e-6)
    headers = [line for line in out.getvalue().splitlines() if line.startswith("// -----")]
    per_round = len(DEFAULT_PIPELINE)
    assert len(headers) == 2 * per_round  # round 1 changes things, round 2 confirms the fixed point
    assert all("(unchanged)" in h for h in headers[per_round:])


def test_explicit_pipeline_runs_once_in_order():
    out = io.StringIO()
    run_passes(graph(), "dce,cse,dce", print_after=["dce"], out=out)
    text = out.getvalue()
    assert text.count("IR after dce") == 2 and "IR after cse" not in text
    assert "Exp" not in text.split("IR after dce (step 1)")[1]


def test_print_after_an_unknown_pass_is_an_error():
    with pytest.raises(UnsupportedError, match="'cse' not in the pipeline|cse not in the pipeline"):
        run_passes(graph(), "dce", print_after="cse")


def test_time_passes_prints_a_table():
    out = io.StringIO()
    run_passes(graph(), time_passes=True, out=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["pass", "runs", "time", "(ms)", "share"]
    assert {line.split()[0] for line in lines[1:]} == set(DEFAULT_PIPELINE) | {"total"}
    assert lines[-1].split()[1] == str(2 * len(DEFAULT_PIPELINE))


def test_dump_dir_writes_parseable_ir_after_each_pass(tmp_path):
    result = run_passes(graph(), "fold-constants,dce", dump_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "01-fold-constants.sbcir", "02-dce.sbcir"]
    assert "Exp(" in (tmp_path / "01-fold-constants.sbcir").read_text()
    final = (tmp_path / "02-dce.sbcir").read_text()
    assert "Exp(" not in final and final == str(result)
    assert str(parse_graph(final)) == final


def test_verify_each_names_the_breaking_pass():
    with pytest.raises(VerificationError, match=r"after pass 'test-breaks-ir' \(step 2\)"):
        run_passes(graph(), "dce,test-breaks-ir", verify_each=True)
    run_passes(graph(), "dce,test-breaks-ir")  # without verification it goes unnoticed


def test_verify_each_blames_no_pass_for_a_broken_input():
    g = graph()
    g.nodes[0].outputs[0].type = TensorType("f32", (7,))
    with pytest.raises(VerificationError, match="before the first pass"):
        run_passes(g, "dce", verify_each=True)


def test_pass_order_constraints_are_checked_for_explicit_pipelines():
    """`runs_after` is data: a pipeline that puts a pass before one it works on is refused,
    naming both; the default pipeline (with --quantize's insertion) satisfies every one."""
    with pytest.raises(UnsupportedError, match="'spike-matmul' must run after 'quantize-weights-int8'"):
        run_passes(graph(), "spike-matmul,quantize-weights-int8")
    with pytest.raises(UnsupportedError, match="'to-recurrent' must run after 'fuse-linear-attention'"):
        run_passes(graph(), ["to-recurrent", "fuse-linear-attention"])
    from sbc.passes.manager import check_order
    pipeline = list(DEFAULT_PIPELINE)
    pipeline.insert(pipeline.index("spike-matmul"), "quantize-weights-int8")
    check_order(parse_pipeline(pipeline))
    assert all(after in available_passes() for name in available_passes()
               for after in get_pass(name).runs_after)


def test_a_rule_hands_its_match_to_the_rewrite_and_its_miss_to_explain():
    """The rule kit: match -> Match | Miss; check and explain come from the Miss (with the
    value at fault), rewrite gets the Match, RulePass applies the rules."""
    from sbc.passes import Match, Miss, RewriteRule, RulePass, explain

    class ExpOfLog(RewriteRule):
        ops = ("Exp",)

        def match(self, node):
            log = node.inputs[0].producer
            if log is None or log.op != "Log":
                return Miss("the input is not a Log", node.inputs[0])
            return Match(x=log.inputs[0])

        def rewrite(self, graph, node, match):
            graph.replace_uses(node.outputs[0], match.x)

    class Fold(RulePass):
        name = "exp-of-log-test"
        RULES = [ExpOfLog()]

    g = Graph()
    x = g.add_input("x", TensorType("f32", (3,)))
    g.set_outputs([g.add1("Exp", g.add1("Log", x)), g.add1("Exp", x, name="plain")], ["y", "z"])
    (note,) = explain(g, Fold.RULES)
    assert note == "ExpOfLog at node 'plain' (Exp): the input is not a Log (%x)"
    assert Fold().run(g).modified and g.outputs[0] is x
    assert [n.name for n in g.nodes if n.op == "Exp"] == ["plain"]  # (the Log is dce's)
