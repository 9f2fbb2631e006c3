"""pack-matmul-weights: MatMul by a [K, N] weight -> MatMulPacked with [N/16, K, 16] panels."""

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.passes.base import explain
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
