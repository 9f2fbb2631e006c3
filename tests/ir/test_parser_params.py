"""IR text that carries its own param data: `= tensor<...>[...]` literals and `= random(seed)`,
`params=` winning over both, and `//` comment lines."""

import numpy as np
import pytest

from sbc.ir.interpreter import run
from sbc.ir.parser import ParseError, parse_graph
from sbc.ir.printer import print_graph
from sbc.ir.verifier import verify

GRAPH = """
graph main(%x: f32[batch, 4]) -> (%y: f32[batch, 4]) {
  param %w: f32[4, 4] = {w}
  %y: f32[batch, 4] = MatMul(%x, %w)
  return %y as y
}
"""


def with_w(initialiser: str) -> str:
    return GRAPH.replace("{w}", initialiser)


def test_inline_literal():
    literal = "tensor<f32[4, 4]>[" + ", ".join(str(float(i)) for i in range(16)) + "]"
    g = parse_graph(with_w(literal))
    verify(g)
    np.testing.assert_array_equal(g.params[0].data, np.arange(16, dtype=np.float32).reshape(4, 4))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(run(g, {"x": x})["y"], x @ g.params[0].data)


def test_inline_scalar_and_integer_literals():
    text = """graph main(%x: f32[3]) -> (%y: f32[3]) {
      param %k: f32[] = tensor<f32[]>[3.0]
      param %ids: i64[2] = tensor<i64[2]>[0, 2]
      param %on: bool[2] = tensor<bool[2]>[1, 0]
      %y: f32[3] = Div(%x, %k)
      return %y as y
    }"""
    k, ids, on = parse_graph(text).params
    assert k.data.shape == () and k.data == np.float32(3.0)
    assert ids.data.dtype == np.int64 and ids.data.tolist() == [0, 2]
    assert on.data.dtype == np.bool_ and on.data.tolist() == [True, False]


def test_a_literal_of_another_type_is_refused():
    with pytest.raises(ParseError, match=r"param %w: text says f32\[4, 4\], data is f32\[2, 2\]"):
        parse_graph(with_w("tensor<f32[2, 2]>[1.0, 2.0, 3.0, 4.0]"))


def test_random_is_reproducible_from_the_seed_alone():
    a = parse_graph(with_w("random(7)")).params[0].data
    b = parse_graph(with_w("random(7)")).params[0].data
    other = parse_graph(with_w("random(8)")).params[0].data
    assert a.dtype == np.float32 and a.shape == (4, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other)
    # the seed alone: not the name of the param or where it stands
    renamed = parse_graph(with_w("random(7)").replace("%w", "%weight")).params[0].data
    np.testing.assert_array_equal(a, renamed)


def test_random_scale_and_dtypes():
    unit = parse_graph(with_w("random(3)")).params[0].data
    scaled = parse_graph(with_w("random(3, 0.5)")).params[0].data
    np.testing.assert_allclose(scaled, unit * 0.5, rtol=1e-6)
    text = """graph main(%x: f32[3]) -> (%x: f32[3]) {
      param %ids: i64[64] = random(1)
      param %mask: bool[64] = random(2)
      param %q: i8[64] = random(3)
      return %x as x
    }"""
    ids, mask, q = parse_graph(text).params
    assert ids.data.dtype == np.int64 and 0 <= ids.data.min() and ids.data.max() < 5
    assert mask.data.dtype == np.bool_ and 0 < mask.data.sum() < 64
    assert q.data.dtype == np.int8


@pytest.mark.parametrize("initialiser, message", [
    ("random()", "write random(SEED) or random(SEED, SCALE)"),
    ("random(-1)", "non-negative integer"),
    ("random(1.5)", "non-negative integer"),
    ("random(1, 2, 3)", "write random(SEED) or random(SEED, SCALE)"),
    ("zeros(4)", "expected random(SEED) or tensor<TYPE>[...] after '=', got 'zeros'"),
])
def test_bad_initialisers_are_one_line_errors(initialiser, message):
    with pytest.raises(ParseError, match="param %w: ") as info:
        parse_graph(with_w(initialiser))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_random_needs_a_static_shape_and_scales_only_floats():
    symbolic = with_w("random(0)").replace("param %w: f32[4, 4]", "param %w: f32[batch, 4]")
    with pytest.raises(ParseError, match=r"random\(\) needs a static shape, got f32\[batch, 4\]"):
        parse_graph(symbolic)
    ints = "graph main(%x: f32[3]) -> (%x: f32[3]) {\n  param %i: i64[2] = random(0, 2.0)\n" \
           "  return %x as x\n}"
    with pytest.raises(ParseError, match="a scale applies to float params only, not i64"):
        parse_graph(ints)


def test_params_given_win_over_the_initialiser():
    given = np.full((4, 4), 2.0, np.float32)
    g = parse_graph(with_w("random(0)"), params={"w": given})
    np.testing.assert_array_equal(g.params[0].data, given)


def test_a_param_without_data_is_an_error_naming_it():
    text = GRAPH.replace(" = {w}", "")
    with pytest.raises(ParseError, match=r"no data given for param %w: pass it in params= or "
                                         r"write `= random\(SEED\)`") as info:
        parse_graph(text)
    assert "\n" not in str(info.value)
    assert parse_graph(text, params={"w": np.eye(4, dtype=np.float32)}).params[0].data[0, 0] == 1


def test_comment_lines_are_skipped():
    text = """// RUN: sbc opt %s | filecheck %s
    // CHECK: MatMul
    graph main(%x: f32[batch, 4]) -> (%y: f32[batch, 4]) {
      // the weight: any comment line, indented or not
      param %w: f32[4, 4] = random(0)
    // another
      %y: f32[batch, 4] = MatMul(%x, %w)
      return %y as y
    }
    // trailing comment"""
    g = parse_graph(text)
    verify(g)
    assert g.op_counts() == {"MatMul": 1}


def test_floor_division_in_dims_is_not_a_comment():
    """Only lines that start with // are comments: `(seq + 3) // 4` in a type is a dim."""
    text = """graph main(%x: f32[(seq + 3) // 4, 4]) -> (%y: f32[(seq + 3) // 4, 4]) {
      %y: f32[(seq + 3) // 4, 4] = Relu(%x)
      return %y as y
    }"""
    assert str(parse_graph(text).outputs[0].type) == "f32[(seq + 3) // 4, 4]"


def test_printed_text_round_trips_with_initialisers_given_as_params():
    g = parse_graph(with_w("random(5)"))
    text = print_graph(g)
    assert "param %w: f32[4, 4]\n" in text  # the printer writes types only
    again = parse_graph(text, params={"w": g.params[0].data})
    assert print_graph(again) == text
