"""The verifier accepts well-formed graphs and names each kind of breakage."""

import numpy as np
import pytest

from sbc.ir import Graph, TensorType
from sbc.ir.verifier import VerificationError, verify


def small_graph():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4,)))
    y = g.add1("Relu", g.add1("Add", x, g.add_param("b", np.ones(4, np.float32))))
    g.set_outputs([y])
    return g


def test_well_formed_graph_verifies():
    verify(small_graph())


def test_use_before_definition():
    g = small_graph()
    g.nodes.reverse()
    with pytest.raises(VerificationError, match="not defined before use"):
        verify(g)


def test_stale_output_type():
    g = small_graph()
    g.nodes[0].outputs[0].type = TensorType("f32", (5,))
    with pytest.raises(VerificationError, match="differ from inferred"):
        verify(g)


def test_param_data_mismatch():
    g = small_graph()
    g.params[0].data = np.ones(3, np.float32)
    with pytest.raises(VerificationError, match="param %b"):
        verify(g)


def test_undeclared_op_and_duplicate_output_names():
    g = small_graph()
    g.nodes[1].op = "NoSuchOp"
    g.set_outputs(g.outputs * 2, ["y", "y"])
    with pytest.raises(VerificationError) as info:
        verify(g)
    assert "not declared" in str(info.value) and "not unique" in str(info.value)
