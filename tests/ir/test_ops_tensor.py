"""Shape, layout, indexing and creation ops against onnx's reference; shape folding on
symbolic values; errors for bad uses. (Harness: test_ops.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from sbc.ir import Graph, OpError, Sym, TensorType
from sbc.ir.interpreter import run
from tests.ir.test_ops import K, T, bools, check, f32, i64, infer, ints

INT_MAX = np.iinfo(np.int64).max

CASES = [
    ("Shape", [f32(2, 3, 4)], {}), ("Shape", [f32(2, 3, 4)], {"start": 1}),
    ("Shape", [f32(2, 3, 4)], {"start": -2, "end": -1}), ("Shape", [f32(2, 3)], {"end": 10}),
    ("Size", [f32(2, 3, 4)], {}), ("Size", [f32(0, 3)], {}),
    ("Reshape", [f32(2, 3, 4), K(i64(0, -1))], {}), ("Reshape", [f32(2, 3, 4), K(i64(4, 0, 2))], {}),
    ("Reshape", [f32(2, 3, 4), K(i64(-1))], {}), ("Reshape", [f32(0, 3), K(i64(3, 0))], {"allowzero": 1}),
    ("Transpose", [f32(2, 3, 4)], {}), ("Transpose", [f32(2, 3, 4)], {"perm": [1, 0, 2]}),
    ("Squeeze", [f32(1, 3, 1, 2)], {}), ("Squeeze", [f32(1, 3, 1, 2), K(i64(-2))], {}),
    ("Unsqueeze", [f32(3, 4), K(i64(0, -1))], {}), ("Unsqueeze", [f32(3), K(i64(1, 0))], {}),
    ("Unsqueeze", [np.float32(2.0), K(i64(0))], {}),
    ("Flatten", [f32(2, 3, 4)], {}), ("Flatten", [f32(2, 3, 4)], {"axis": 0}),
    ("Flatten", [f32(2, 3, 4)], {"axis": -1}), ("Flatten", [f32(2, 3, 4)], {"axis": 3}),
    ("Concat", [f32(2, 3), f32(2, 1), f32(2, 2)], {"axis": 1}), ("Concat", [ints(2), ints(3)], {"axis": -1}),
    ("Concat", [f32(1, 3)], {"axis": 0}),
    ("Gather", [f32(5, 3), i64(0, -1, 2)], {}), ("Gather", [f32(2, 5, 3), i64(4, -5)], {"axis": 1}),
    ("Gather", [f32(4, 3), np.int64(-2)], {}), ("Gather", [f32(4, 3), ints(2, 2, lo=0, hi=3).astype(np.int32)], {"axis": -1}),
    ("GatherElements", [f32(3, 4), ints(3, 2, lo=-4, hi=4)], {"axis": 1}),
    ("GatherElements", [f32(3, 4), ints(2, 4, lo=-3, hi=3)], {}),
    ("GatherND", [f32(2, 3, 4), ints(5, 2, lo=0, hi=2)], {}),
    ("GatherND", [f32(2, 3, 4), i64(1, -1, 0).reshape(1, 3)], {}),
    ("GatherND", [f32(2, 3, 4), ints(2, 4, 1, lo=0, hi=3)], {"batch_dims": 1}),
    ("GatherND", [f32(2, 3, 4), ints(2, 3, 1, lo=0, hi=4)], {"batch_dims": 2}),
    ("Slice", [f32(5, 6), K(i64(1)), K(i64(3))], {}),
    ("Slice", [f32(5, 6), K(i64(1, -4)), K(i64(INT_MAX, -1)), K(i64(0, 1))], {}),
    ("Slice", [f32(5, 6), K(i64(-1)), K(i64(-INT_MAX)), K(i64(1)), K(i64(-2))], {}),
    ("Slice", [f32(5, 6), K(i64(10)), K(i64(-10)), K(i64(0)), K(i64(-1))], {}),
    ("Slice", [f32(5, 6), K(i64(0)), K(i64(100)), K(i64(-1)), K(i64(4))], {}),
    ("Slice", [f32(5, 6), K(i64(3)), K(i64(1))], {}),
    ("Slice", [f32(5, 6), K(i64(-100)), K(i64(100))], {}),
    ("Split", [f32(6, 2)], {"num_outputs": 3}), ("Split", [f32(2, 7)], {"axis": 1, "num_outputs": 3}),
    ("Split", [f32(5, 2), K(i64(2, 3))], {}), ("Split", [f32(2, 5), K(i64(1, 0, 4))], {"axis": -1}),
    ("Expand", [f32(3, 1), K(i64(2, 3, 4))], {}), ("Expand", [f32(2, 3), K(i64(1, 1))], {}),
    ("Expand", [f32(1, 3), K(i64(4, 1))], {}),
    ("Tile", [f32(2, 3), K(i64(2, 1))], {}), ("Tile", [ints(3), K(i64(3))], {}),
    ("Pad", [f32(2, 3), K(i64(1, 0, 0, 2))], {}),
    ("Pad", [f32(2, 3), K(i64(1, 2, 1, 0)), np.float32(1.5)], {}),
    ("Pad", [f32(3, 4), K(i64(2, 1, 1, 2))], {"mode": "reflect"}),
    ("Pad", [f32(3, 4), K(i64(2, 1, 1, 3))], {"mode": "edge"}),
    ("Pad", [f32(2, 3, 4), K(i64(1, 2)), None, K(i64(-1))], {}),
    ("Pad", [ints(3, 4), K(i64(1, 1, 1, 1)), i64(7)], {}),
    ("Range", [K(np.int64(2)), K(np.int64(11)), K(np.int64(3))], {}),
    ("Range", [K(np.float32(1)), K(np.float32(2)), K(np.float32(0.25))], {}),
    ("Range", [K(np.int32(5)), K(np.int32(0)), K(np.int32(-2))], {}),
    ("Range", [K(np.int64(5)), K(np.int64(0)), K(np.int64(1))], {}),
    ("ConstantOfShape", [K(i64(2, 3))], {}), ("ConstantOfShape", [K(i64(2))], {"value": i64(7)}),
    ("ConstantOfShape", [K(np.zeros(0, np.int64))], {"value": np.float32([1.5])}),
    ("Identity", [bools(3)], {}),
    ("Trilu", [f32(4, 5)], {}), ("Trilu", [f32(2, 4, 5)], {"upper": 0}),
    ("Trilu", [f32(4, 5), K(np.int64(-1))], {}), ("Trilu", [f32(4, 5), K(np.int64(2))], {"upper": 0}),
    ("TopK", [f32(3, 5), K(i64(2))], {}), ("TopK", [f32(3, 5), K(i64(3))], {"axis": 0, "largest": 0}),
    ("TopK", [ints(2, 6, lo=0, hi=3).astype(np.float32), K(i64(4))], {}),  # ties: lower index first
    ("TopK", [ints(2, 6, lo=0, hi=3), K(i64(6))], {"largest": 0}),
]


@pytest.mark.parametrize("op, inputs, attrs", CASES, ids=[c[0] for c in CASES])
def test_tensor_ops(op, inputs, attrs):
    check(op, inputs, attrs)


def test_negative_pads_crop():
    """ONNX Pad with negative pads removes entries (onnx's reference cannot run this case)."""
    x = f32(3, 4)
    g = Graph()
    y = g.add1("Pad", g.add_input("x", TensorType("f32", (3, 4))), g.add_param("p", i64(-1, 1, 0, -2)))
    assert y.type == T("f32[2, 3]")
    g.set_outputs([y])
    np.testing.assert_array_equal(run(g, {"x": x})["pad"], np.pad(x, [(0, 0), (1, 0)])[1:, :-2])


# -- symbolic inference ------------------------------------------------------------------------

INFERENCE = [
    ("Shape", ["f32[batch, seq, 8]"], {"start": 1}, ["i64[2]"]),
    ("Size", ["f32[batch, 8]"], {}, ["i64[]"]),
    ("Transpose", ["f32[batch, seq, 8]"], {"perm": [0, 2, 1]}, ["f32[batch, 8, seq]"]),
    ("Squeeze", ["f32[batch, 1, seq]", K(i64(1))], {}, ["f32[batch, seq]"]),
    ("Unsqueeze", ["f32[batch, seq]", K(i64(1, -1))], {}, ["f32[batch, 1, seq, 1]"]),
    ("Flatten", ["f32[batch, seq, 8]"], {"axis": 2}, ["f32[batch*seq, 8]"]),
    ("Concat", ["f32[batch, past]", "f32[batch, seq]"], {"axis": 1}, ["f32[batch, past + seq]"]),
    ("Gather", ["f32[vocab, 64]", "i64[batch, seq]"], {}, ["f32[batch, seq, 64]"]),
    ("GatherElements", ["f32[batch, 8]", "i64[batch, 2]"], {"axis": 1}, ["f32[batch, 2]"]),
    ("GatherND", ["f32[batch, seq, 8]", "i64[batch, 3, 1]"], {"batch_dims": 1}, ["f32[batch, 3, 8]"]),
    ("Slice", ["f32[batch, seq, 8]", K(i64(1)), K(i64(INT_MAX)), K(i64(1))], {}, ["f32[batch, max(seq - 1, 0), 8]"]),
    ("Slice", ["f32[batch, seq]", K(i64(-3)), K(i64(INT_MAX)), K(i64(1))], {}, ["f32[batch, min(seq, 3)]"]),
    ("Slice", ["f32[batch, 8]", K(i64(0)), K(i64(-2)), K(i64(-1))], {}, ["f32[batch, 6]"]),
    ("Slice", ["f32[batch, seq]", K(i64(2)), K(i64(2 ** 31 - 1)), K(i64(1))], {}, ["f32[batch, max(seq - 2, 0)]"]),
    ("Slice", ["f32[batch, seq]", K(i64(0)), K(i64(8)), K(i64(1))], {}, ["f32[batch, min(seq, 8)]"]),
    ("Slice", ["f32[seq]", K(i64(-1)), K(i64(-2 ** 31)), K(i64(0)), K(i64(-1))], {}, ["f32[seq]"]),
    ("Slice", ["f32[2*seq]", K(i64(0)), K(i64(2 ** 63 - 1)), K(i64(0)), K(i64(2))], {}, ["f32[seq]"]),
    ("Slice", ["f32[2*seq + 1]", K(i64(-1)), K(i64(-2 ** 63)), K(i64(0)), K(i64(-2))], {}, ["f32[seq + 1]"]),
    ("Slice", ["f32[seq]", K(i64(0)), K(i64(2 ** 63 - 1)), K(i64(0)), K(i64(2))], {}, ["f32[(seq + 1) // 2]"]),
    ("Split", ["f32[batch, 12]"], {"axis": 1, "num_outputs": 2}, ["f32[batch, 6]"] * 2),
    ("Split", ["f32[batch, 2*seq]"], {"axis": 1, "num_outputs": 2}, ["f32[batch, seq]"] * 2),
    ("Expand", ["f32[1, 8]", K(i64(3, 1))], {}, ["f32[3, 8]"]),
    ("Tile", ["f32[batch, 8]", K(i64(1, 2))], {}, ["f32[batch, 16]"]),
    ("Pad", ["f32[batch, seq]", K(i64(0, 1, 0, 2))], {}, ["f32[batch, seq + 3]"]),
    ("Trilu", ["f32[seq, seq]"], {}, ["f32[seq, seq]"]),
    ("TopK", ["f32[batch, 10]", K(i64(3))], {}, ["f32[batch, 3]", "i64[batch, 3]"]),
    ("Where", ["bool[batch, 1]", "i64[]", "i64[seq]"], {}, ["i64[batch, seq]"]),
]


@pytest.mark.parametrize("op, inputs, attrs, expected", INFERENCE, ids=[c[0] for c in INFERENCE])
def test_symbolic_inference(op, inputs, attrs, expected):
    assert infer(op, inputs, attrs) == [T(e) for e in expected]


# -- shape folding: shapes computed from shapes stay known and symbolic ------------------------

B, S = Sym.var("batch"), Sym.var("seq")


def _x(g, dims=(B, S, 8)):
    return g.add_input("x", TensorType("f32", dims))


def test_gather_of_shape_is_the_symbolic_dim():
    g = Graph()
    dim = g.add1("Gather", g.add1("Shape", _x(g)), g.add_param("one", np.int64(1)))
    assert dim.type == TensorType("i64", ()) and dim.data.item() == S


def test_concat_of_shape_pieces_feeds_reshape_with_symbolic_dims():
    """[batch, seq, 8] -> Reshape to [batch, seq, 2, 4] with the shape computed in the graph."""
    g = Graph()
    x = _x(g)
    shape = g.add1("Shape", x)
    head = g.add1("Slice", shape, g.add_param("s", i64(0)), g.add_param("e", i64(2)))
    tail = g.add_param("t", i64(2, 4))
    target = g.add1("Concat", head, tail, axis=0)
    assert list(target.data) == [B, S, 2, 4]
    y = g.add1("Reshape", x, target)
    assert y.type == T("f32[batch, seq, 2, 4]")
    g.set_outputs([y])
    data = np.arange(3 * 5 * 8, dtype=np.float32).reshape(3, 5, 8)
    np.testing.assert_array_equal(run(g, {"x": data})["reshape"], data.reshape(3, 5, 2, 4))


def test_slice_from_shapes_keeps_its_length():
    """x[:, seq - 1:seq] has 1 row, x[:, -1:] min(seq, 1): a start computed from shapes is
    required to be >= 0 (a negative one would count from the end), -1 counts from the end."""
    g = Graph()
    x = _x(g)
    seq = g.add1("Gather", g.add1("Shape", x), g.add_param("i", i64(1)))
    start = g.add1("Sub", seq, g.add_param("one", i64(1)))
    axis = g.add_param("axis", i64(1))
    assert g.add1("Slice", x, start, seq, axis).type == T("f32[batch, 1, 8]")
    last = g.add1("Slice", x, g.add_param("s", i64(-1)), g.add_param("e", i64(2**63 - 1)), axis)
    assert last.type == T("f32[batch, min(seq, 1), 8]")


def test_shape_arithmetic_folds():
    """seq - 1, batch * seq, Range(seq), Cast/Unsqueeze/Squeeze/Equal/Where of shape values."""
    g = Graph()
    shape = g.add1("Shape", _x(g))
    seq = g.add1("Gather", shape, g.add_param("i", np.int64(1)))
    batch = g.add1("Gather", shape, g.add_param("j", np.int64(0)))
    one = g.add_param("one", np.int64(1))
    assert g.add1("Sub", seq, one).data.item() == S - 1
    assert g.add1("Mul", batch, seq).data.item() == B * S
    assert g.add1("Cast", seq, to="i32").data.item() == S
    assert g.add1("Cast", seq, to="i64").data.item() == S
    seq1 = g.add1("Unsqueeze", seq, g.add_param("ax", i64(0)))
    assert list(seq1.data) == [S] and seq1.type == T("i64[1]")
    assert g.add1("Squeeze", seq1, g.add_param("ax0", i64(0))).data.item() == S
    assert g.add1("Equal", seq, seq).data.item() is True
    assert g.add1("Identity", seq).data.item() == S
    assert g.add1("Div", g.add1("Mul", seq, g.add_param("two", np.int64(2))),
                  g.add_param("two2", np.int64(2))).data.item() == S
    where = g.add1("Where", g.add_param("c", np.array([True, False])), g.add1("Concat", seq1, seq1, axis=0),
                   g.add_param("m", i64(-1, -1)))
    assert list(where.data) == [S, -1]
    expanded = g.add1("Expand", seq1, g.add_param("e", i64(3)))
    assert list(expanded.data) == [S] * 3
    r = g.add1("Range", g.add_param("z", np.int64(0)), seq, one)
    assert r.type == T("i64[seq]")
    zeros = g.add1("ConstantOfShape", g.add1("Concat", g.add1("Unsqueeze", batch, g.add_param("a0", i64(0))),
                                             seq1, axis=0))
    assert zeros.type == T("f32[batch, seq]")


def test_range_with_symbolic_limit_runs():
    g = Graph()
    seq = g.add1("Gather", g.add1("Shape", _x(g, (S,))), g.add_param("i", np.int64(0)))
    r = g.add1("Range", g.add_param("z", np.int64(0)), seq, g.add_param("d", np.int64(1)))
    g.set_outputs([r])
    np.testing.assert_array_equal(run(g, {"x": np.zeros(4, np.float32)})["range"], np.arange(4))


# -- errors ------------------------------------------------------------------------------------

ERRORS = [
    ("Reshape", ["f32[2, 3]", "i64[2]"], {}, "shape must be known at compile time"),
    ("Reshape", ["f32[2, 3]", K(i64(4, -1))], {}, "cannot reshape"),
    ("Reshape", ["f32[2, 3]", K(i64(-1, -1))], {}, "more than one -1"),
    ("Transpose", ["f32[2, 3]"], {"perm": [0, 0]}, "not a permutation"),
    ("Squeeze", ["f32[2, 3]", K(i64(0))], {}, "not all 1"),
    ("Unsqueeze", ["f32[2, 3]", K(i64(3))], {}, "out of range"),
    ("Unsqueeze", ["f32[2, 3]", K(i64(1, 1))], {}, "repeat"),
    ("Concat", ["f32[2, 3]", "f32[3, 3]"], {"axis": 1}, "differ"),
    ("Concat", ["f32[2, 3]", "i64[2, 3]"], {"axis": 0}, "dtype"),
    ("Concat", ["f32[2, 3]"], {"axis": 2}, "out of range"),
    ("Gather", ["f32[2, 3]", "i64[4]"], {"axis": 2}, "out of range"),
    ("Gather", ["f32[2, 3]", "f32[4]"], {}, "indices must be"),
    ("Split", ["f32[4]", K(i64(1, 2))], {}, "do not add up"),
    ("Split", ["f32[4]"], {}, "num_outputs"),
    ("Slice", ["f32[4]", K(i64(0)), K(i64(2)), K(i64(0)), K(i64(0))], {}, "step of 0"),
    ("Slice", ["f32[4]", "i64[1]", K(i64(2))], {}, "starts must be known"),
    ("Expand", ["f32[3]", K(i64(2, 4))], {}, "do not broadcast"),
    ("Tile", ["f32[3]", K(i64(1, 2))], {}, "repeats"),
    ("Pad", ["f32[3]", K(i64(1))], {}, "pads"),
    ("Pad", ["f32[3]", K(i64(1, 1))], {"mode": "wrap"}, "not supported"),
    ("Range", ["i64[]", K(np.int64(3)), K(np.int64(1))], {}, "must be known"),
    ("Range", [K(np.int64(0)), K(np.int64(3)), K(np.int64(0))], {}, "delta"),
    ("ConstantOfShape", ["i64[2]"], {}, "must be known"),
    ("Flatten", ["f32[2, 3]"], {"axis": 3}, "out of range"),
    ("Trilu", ["f32[3]"], {}, "rank >= 2"),
    ("GatherND", ["f32[2, 3]", "i64[2, 3]"], {}, "indices"),
    ("TopK", ["f32[2, 3]", K(i64(4))], {}, "k"),
]


@pytest.mark.parametrize("op, inputs, attrs, message", ERRORS, ids=[f"{c[0]}-{c[3]}" for c in ERRORS])
def test_errors(op, inputs, attrs, message):
    with pytest.raises(OpError, match=message):
        infer(op, inputs, attrs)
