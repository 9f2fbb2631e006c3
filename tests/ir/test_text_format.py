"""IR text: print -> parse -> print is the identity, and the parser checks types."""

import numpy as np
import pytest

from sbc.ir import Graph, Sym, TensorType
from sbc.ir.dims import dim_min
from sbc.ir.parser import ParseError, parse_graph
from sbc.ir.printer import print_graph
from sbc.ir.verifier import verify


def sample_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType("f32", (Sym.var("batch"), Sym.var("seq"), 8)))
    w = g.add_param("onnx::weight", np.arange(8, dtype=np.float32))
    flat = g.add1("Reshape", x, g.add1("Constant", value=np.array([0, -1], np.int64)),
                  name="/model/Reshape")
    back = g.add1("Reshape", flat, g.add1("Shape", x))
    y = g.add1("Relu", g.add1("Mul", back, w))
    g.set_outputs([y, flat], ["y", "flat out"])
    return g


def test_round_trip_is_identity():
    g = sample_graph()
    text = print_graph(g)
    g2 = parse_graph(text, {p.name: p.data for p in g.params})
    verify(g2)
    assert print_graph(g2) == text
    assert g2.output_names == ["y", "flat out"]
    assert str(g2.outputs[1].type) == "f32[batch, 8*seq]"


def test_round_trip_of_clamped_slice_dims():
    """Slices on a symbolic axis have min / max dims, also in shapes folded into constants
    (attribute values). Both print and parse back; the parser re-infers the same types."""
    g = Graph()
    seq = Sym.var("seq")
    x = g.add_input("x", TensorType("f32", (seq, 4)))
    const = lambda v, dtype=np.int64: g.add1("Constant", value=np.array(v, dtype))  # noqa: E731
    head = g.add1("Slice", x, const([0]), const([8]), const([0]))
    tail = g.add1("Slice", x, const([-6]), const([4]), const([0]), const([1]))
    flat = g.add1("Reshape", head, const([4 * dim_min(seq, 8)], object))
    g.set_outputs([tail, flat], ["tail", "flat"])
    text = print_graph(g)
    assert "f32[min(seq, 8), 4] = Slice" in text and "tensor<i64[1]>[4*min(seq, 8)]" in text
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    assert str(g2.outputs[0].shape[0]) == "max(-max(seq - 6, 0) + min(seq, 4), 0)"


def test_text_shows_symbolic_types_and_locations():
    text = print_graph(sample_graph())
    assert "%x: f32[batch, seq, 8]" in text
    assert 'loc("/model/Reshape")' in text
    assert '%"onnx::weight"' in text  # names with ':' are quoted


def test_parser_reports_type_mismatch():
    text = print_graph(sample_graph()).replace("f32[batch, 8*seq] = Reshape", "f32[batch, 9] = Reshape")
    with pytest.raises(ParseError, match="infers"):
        parse_graph(text, {"onnx::weight": np.arange(8, dtype=np.float32)})


def test_parser_requires_param_data():
    with pytest.raises(ParseError, match="no data"):
        parse_graph(print_graph(sample_graph()))
