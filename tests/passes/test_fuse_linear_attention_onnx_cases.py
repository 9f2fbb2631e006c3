"""fuse-linear-attention on ONNX's own function-expanded LinearAttention: every
`test_linear_attention_*_expanded` conformance case imports as a Scan; after the pass no Scan
is left and one LinearAttention has the attributes and inputs of the case's unexpanded
LinearAttention node. One case is compiled end to end and run on cpu."""

import functools
import warnings

import numpy as np
import onnx
import pytest

import sbc
from sbc.frontend import import_onnx
from sbc.ir.interpreter import run
from sbc.passes import run_passes
from sbc.passes.base import explain
from sbc.passes.fuse_linear_attention import RULES, FuseLinearAttention
from tests.passes.helpers import check_pass

LA_INPUTS = ("query", "key", "value", "past_state", "decay", "beta")


@functools.lru_cache(maxsize=1)
def conformance_cases() -> dict:
    from onnx.backend.test.loader import load_node_model_tests
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (other cases' generators warn about overflows)
        return {c.name: c for c in load_node_model_tests()
                if c.name.startswith("test_linear_attention")}


EXPANDED = sorted(n for n in conformance_cases() if n.endswith("_expanded"))


def test_all_expanded_cases_are_here():
    assert len(EXPANDED) == 14


def feeds_of(case) -> dict:
    inputs, _ = case.data_sets[0]
    return {i.name: np.asarray(a) for i, a in zip(case.model.graph.input, inputs)}


def original_node(name: str) -> onnx.NodeProto:
    """The LinearAttention node of the unexpanded case: what the fusion must give back."""
    (node,) = conformance_cases()[name[:-len("_expanded")]].model.graph.node
    return node


def attrs_of(node: onnx.NodeProto) -> dict:
    found = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    rule = found.get("update_rule", b"gated_delta")
    return {"update_rule": rule.decode() if isinstance(rule, bytes) else rule,
            "q_num_heads": found["q_num_heads"], "kv_num_heads": found["kv_num_heads"],
            "scale": found.get("scale", 0.0)}


def graph_input_behind(v):
    """The graph input a LinearAttention input is, through no-op Casts (None if none)."""
    while v is not None and v.producer is not None and v.producer.op == "Cast" \
            and v.producer.inputs[0].dtype == v.dtype:
        v = v.producer.inputs[0]
    return None if v is None or v.producer is not None else v.name


@pytest.mark.parametrize("name", EXPANDED)
def test_expanded_case_becomes_its_linear_attention(name):
    case = conformance_cases()[name]
    graph = import_onnx(case.model)
    tolerance = 2e-3 if "fp16" in name else 1e-5
    before, after, modified = check_pass(FuseLinearAttention(), graph, feeds_of(case),
                                         tolerance=tolerance)
    assert modified and "Scan" in before and explain(after, RULES) == []
    after = run_passes(after, ["fold-reshape-transpose", "dce"])
    assert "Scan" not in after.op_counts()
    (la,) = [n for n in after.nodes if n.op == "LinearAttention"]
    node = original_node(name)
    want = attrs_of(node)
    assert la.attrs["scale"] == pytest.approx(want.pop("scale"), rel=1e-6)  # 0.0: 1/sqrt(dk)
    assert {k: la.attrs[k] for k in want} == want
    given = dict(zip(LA_INPUTS, node.input))
    for i, role in enumerate(LA_INPUTS):
        v = la.inputs[i] if i < len(la.inputs) else None
        if given.get(role):  # the case's own input, straight (the layout ops folded away)
            assert graph_input_behind(v) == given[role], role
        elif role == "past_state" and v is not None:
            # a zero initial state is kept only when its dtype is not the query's (fp16)
            assert v.dtype != la.inputs[0].dtype and graph_input_behind(v) is None
        else:
            assert v is None, role
    _, expected = case.data_sets[0]
    got = run(after, feeds_of(case))
    for o, want_array in zip(case.model.graph.output, expected):
        np.testing.assert_allclose(got[o.name], want_array, rtol=case.rtol, atol=case.atol)


def test_expanded_case_compiles_and_runs_on_cpu():
    """import -> default pipeline (the fusion included) -> TVM build -> run."""
    case = conformance_cases()["test_linear_attention_gated_delta_gqa_expanded"]
    module = sbc.compile(case.model, target="cpu")
    assert "Scan" not in module.manifest["ops"] and module.manifest["ops"]["LinearAttention"] == 1
    got = module.run(feeds_of(case))
    _, expected = case.data_sets[0]
    for o, want in zip(case.model.graph.output, expected):
        np.testing.assert_allclose(got[o.name], want, rtol=case.rtol, atol=case.atol,
                                   err_msg=o.name)
