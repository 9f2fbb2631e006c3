"""Graphs for the spike weight passes: spike(x) @ W (+ b) in the form fuse-spike-neurons leaves."""

from __future__ import annotations

import numpy as np

from sbc.ir import Graph, TensorType
from sbc.ir.ops.nn import pack_weight
from tests.passes.helpers import sym


def spiking_matmul_graph(k=256, n=32, packed=False, bias=False, counts_dtype="i16",
                         spiked=True) -> Graph:
    """x -> SpikeEncode -> Mul(Cast(counts), scale) -> MatMul / MatMulPacked (+ bias)."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.add_input("x", TensorType("f32", (sym("batch"), sym("seq"), k)))
    if spiked:
        counts, scale = g.add("SpikeEncode", [x], {"dtype": counts_dtype}).outputs
        a = g.add1("Mul", g.add1("Cast", counts, to="f32"), scale)
    else:
        a = g.add1("Relu", x)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    y = g.add1("MatMulPacked", a, g.add_param("w_packed", pack_weight(w, 16))) if packed \
        else g.add1("MatMul", a, g.add_param("w", w))
    if bias:
        y = g.add1("Add", y, g.add_param("b", rng.standard_normal(n).astype(np.float32)))
    g.set_outputs([y], ["y"])
    return g
