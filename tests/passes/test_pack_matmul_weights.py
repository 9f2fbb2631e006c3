"""pack-matmul-weights: MatMul by a [K, N] weight -> MatMulPacked with [N/16, K, 16] panels."""

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.ir.types import numpy_dtype
from sbc.passes.base import apply_rules, explain
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.pack_matmul_weights import PackMatmulWeights, PackWeight
from tests.passes.helpers import run_pass, sym


def matmul_graph(n=32, weight=True):
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), 3, 8)))
    rng = np.random.default_rng(0)
    w = (g.add_param("w", rng.normal(size=(8, n)).astype(np.float32)) if weight
         else g.add_input("w", TensorType("f32", (8, n))))
    g.set_outputs([g.add1("MatMul", x, w)], ["y"])
    return g


def test_weight_is_packed_into_panels():
    before, after, modified = run_pass(PackMatmulWeights(), matmul_graph())
    after = DeadCodeElimination().run(after).graph
    assert modified and "MatMul(%x, %w)" in before
    assert after.op_counts() == {"MatMulPacked": 1}
    (packed,) = after.params
    assert str(packed.type) == "f32[2, 8, 16]"
    original = matmul_graph().params[0].data
    np.testing.assert_array_equal(packed.data[1, :, 3], original[:, 16 + 3])
    assert str(after.outputs[0].type) == "f32[batch, 3, 32]"


def test_does_not_fire_without_a_weight_or_on_odd_widths():
    for graph, reason in ((matmul_graph(weight=False), "not a weight"), (matmul_graph(n=24), "not a multiple")):
        _, after, modified = run_pass(PackMatmulWeights(), graph)
        assert not modified and "MatMul" in after.op_counts()
        assert any(reason in note for note in explain(after, [PackWeight()]))


def test_each_replaced_weight_is_freed_as_soon_as_it_is_packed():
    """A model's weights are never held twice: when a weight is packed, the old param (and the
    Cast that widened it) leave the graph at once and its data is dropped, unless another node
    still reads it (here a shared weight, kept until its last reader is packed)."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), 8)))
    rng = np.random.default_rng(0)
    stored = g.add_param("w", rng.normal(size=(8, 32)).astype(numpy_dtype("bf16")))
    shared = g.add_param("s", rng.normal(size=(8, 16)).astype(np.float32))
    y = g.add1("MatMul", x, g.add1("Cast", stored, to="f32"))
    z = g.add1("Add", g.add1("MatMul", x, shared), g.add1("MatMul", x, shared))
    g.set_outputs([y, z], ["y", "z"])
    seen = []
    rule = PackWeight()
    original = rule.rewrite

    def spy(graph, node, match):
        original(graph, node, match)
        seen.append((match.w.name, stored.data is None, [p.name for p in graph.params]))
    rule.rewrite = spy
    apply_rules(g, [rule])
    first = seen[0]
    assert first[0] == "w" and first[1] and "w" not in first[2]  # freed right after packing
    assert [s[0] for s in seen[1:]] == ["s", "s"] and "s" in seen[1][2] and "s" not in seen[2][2]
    assert g.op_counts() == {"Add": 1, "MatMulPacked": 3}
    assert str(g.params[0].type) == "bf16[2, 8, 16]"  # packed in its stored dtype
