"""Every op against onnx's reference evaluator, one single-node graph per case.

Each case builds the op once in sbc (data inputs as graph inputs, inputs wrapped in `K` as
params, i.e. known at compile time) and once as a one-node ONNX model, runs both (sbc's
interpreter, onnx.reference.ReferenceEvaluator) and checks that dtypes, shapes and values
agree and that sbc's inferred output types are the shapes actually produced.

This module holds the harness and the elementwise / reduction tables; test_ops_nn.py and
test_ops_tensor.py hold the other tables.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from sbc.ir import Graph, OpError, Sym, TensorType, parse_dim
from sbc.ir.interpreter import run
from sbc.ir.types import dtype_of

OPSET = 25  # newest opset every case's op has a reference implementation for
ONNX_OF = {"f32": onnx.TensorProto.FLOAT, "f16": onnx.TensorProto.FLOAT16,
           "f64": onnx.TensorProto.DOUBLE, "i8": onnx.TensorProto.INT8,
           "i16": onnx.TensorProto.INT16, "i32": onnx.TensorProto.INT32,
           "i64": onnx.TensorProto.INT64, "u8": onnx.TensorProto.UINT8,
           "bool": onnx.TensorProto.BOOL}
SBC_ONLY_ATTRS = {"num_outputs"}  # LayerNormalization/Attention: how many outputs (sbc only)


class K:
    """An input known at compile time (a param): shapes, axes, sizes, ..."""

    def __init__(self, array):
        self.array = np.asarray(array)


rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def pos(*shape):
    return (np.abs(f32(*shape)) + 0.1).astype(np.float32)


def ints(*shape, lo=-5, hi=6, dtype=np.int64):
    return rng.integers(lo, hi, shape).astype(dtype)


def bools(*shape):
    return rng.random(shape) < 0.5


def i64(*values):
    return np.array(values, np.int64)


def _onnx_attr(op, key, value):
    if key == "to":
        return ONNX_OF[value]
    if isinstance(value, np.ndarray):
        return numpy_helper.from_array(value, key)
    return value


def onnx_outputs(op, inputs, attrs, n_outputs, opset=OPSET):
    names, feeds, inits, vinfo = [], {}, [], []
    for i, x in enumerate(inputs):
        if x is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        array = x.array if isinstance(x, K) else x
        if isinstance(x, K):
            inits.append(numpy_helper.from_array(array, name))
        else:
            feeds[name] = array
            vinfo.append(helper.make_tensor_value_info(name, ONNX_OF[dtype_of(array)], array.shape))
    outs = [f"out{i}" for i in range(n_outputs)]
    node = helper.make_node(op, names, outs, **{k: _onnx_attr(op, k, v) for k, v in attrs.items()
                                               if k not in SBC_ONLY_ATTRS})
    graph = helper.make_graph([node], "g", vinfo, [helper.make_value_info(o, onnx.TypeProto())
                                                    for o in outs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ReferenceEvaluator(model).run(None, feeds)


def sbc_graph(op, inputs, attrs):
    g = Graph()
    args = []
    for i, x in enumerate(inputs):
        if x is None:
            args.append(None)
        elif isinstance(x, K):
            args.append(g.add_param(f"in{i}", x.array))
        else:
            args.append(g.add_input(f"in{i}", TensorType(dtype_of(x), x.shape)))
    node = g.add(op, args, dict(attrs))
    g.set_outputs(node.outputs)
    return g


def check(op, inputs, attrs=None, opset=OPSET, rtol=1e-5, atol=1e-6):
    """Run `op` in sbc and in onnx's reference; assert identical dtypes/shapes, close values."""
    attrs = attrs or {}
    g = sbc_graph(op, inputs, attrs)
    feeds = {f"in{i}": x for i, x in enumerate(inputs) if x is not None and not isinstance(x, K)}
    got = list(run(g, feeds).values())
    want = onnx_outputs(op, inputs, attrs, len(got), opset)
    assert len(got) == len(want)
    for value, g_out, w_out in zip(g.outputs, got, want):
        w_out = np.asarray(w_out)
        assert g_out.dtype == w_out.dtype, (op, g_out.dtype, w_out.dtype)
        assert g_out.shape == w_out.shape, (op, g_out.shape, w_out.shape)
        assert value.shape == w_out.shape, f"{op}: inferred {value.type}, produced {w_out.shape}"
        if g_out.dtype.kind == "f":
            np.testing.assert_allclose(g_out, w_out, rtol=rtol, atol=atol, equal_nan=True)
        else:
            np.testing.assert_array_equal(g_out, w_out)
    return g


def T(text: str) -> TensorType:
    """'f32[batch, min(seq, 8), 8]' -> TensorType with symbolic dims."""
    dtype, _, dims = text.partition("[")
    dims = dims.rstrip("]").strip()
    top_level_commas = r",(?![^()]*\))"
    return TensorType(dtype, tuple(parse_dim(d) for d in re.split(top_level_commas, dims)) if dims else ())


def infer(op, inputs, attrs=None) -> list[TensorType]:
    """Inferred output types of `op` on inputs given as type strings or K arrays."""
    g = Graph()
    args = [None if x is None else g.add_param(f"k{i}", x.array) if isinstance(x, K)
            else g.add_input(f"x{i}", T(x)) for i, x in enumerate(inputs)]
    return [v.type for v in g.add(op, args, attrs or {}).outputs]


# -- elementwise -------------------------------------------------------------------------------

HALVES = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1.2, -0.7, 0.0], np.float32)
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0, -2.0], np.float32)

UNARY_CASES = [
    ("Abs", f32(2, 3)), ("Abs", ints(5, dtype=np.int32)), ("Neg", f32(2, 3)),
    ("Neg", ints(4)), ("Sqrt", pos(2, 3)), ("Reciprocal", pos(4)), ("Exp", f32(2, 3)),
    ("Log", pos(2, 3)), ("Sin", f32(5)), ("Cos", f32(5)), ("Tanh", f32(5)),
    ("Sigmoid", f32(2, 5) * 5), ("Softplus", f32(7) * 10), ("Softsign", f32(5)),
    ("Erf", f32(3, 4)), ("Floor", HALVES), ("Ceil", HALVES), ("Round", HALVES),
    ("Sign", HALVES), ("Sign", ints(6)), ("Relu", f32(2, 3)), ("Relu", ints(6, dtype=np.int32)),
    ("LeakyRelu", f32(6)), ("Elu", f32(6)), ("Selu", f32(6)), ("HardSigmoid", f32(6) * 4),
    ("HardSwish", f32(6) * 4), ("Gelu", f32(6) * 3), ("Mish", f32(6) * 3),
    ("IsNaN", SPECIAL), ("IsInf", SPECIAL), ("Not", bools(2, 3)), ("Identity", f32(2, 3)),
    ("Identity", ints(3)), ("Identity", f32(0, 3)), ("Exp", np.float64([0.5, 1.0])),
    ("Sqrt", np.float16([1.0, 4.0, 2.0])),
]


@pytest.mark.parametrize("op, x", UNARY_CASES, ids=[c[0] for c in UNARY_CASES])
def test_unary(op, x):
    check(op, [x])


@pytest.mark.parametrize("op, attrs", [
    ("LeakyRelu", {"alpha": 0.3}), ("Elu", {"alpha": 0.5}), ("Selu", {"alpha": 2.0, "gamma": 3.0}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Gelu", {"approximate": "tanh"}),
    ("Gelu", {"approximate": "none"}), ("IsInf", {"detect_negative": 0}),
    ("IsInf", {"detect_positive": 0}),
])
def test_unary_attrs(op, attrs):
    check(op, [SPECIAL if op == "IsInf" else f32(3, 4) * 3], attrs)


BINARY_CASES = [
    ("Add", [f32(2, 3, 4), f32(3, 1)]), ("Sub", [f32(4), f32(2, 1)]),
    ("Mul", [f32(2, 3), np.float32(2.5)]), ("Div", [f32(2, 3), pos(3)]),
    ("Add", [ints(2, 3), ints(3)]), ("Mul", [ints(2, 3, dtype=np.int32), ints(1, dtype=np.int32)]),
    ("Div", [i64(7, -7, 7, -7, 6, 0), i64(2, 2, -2, -2, 3, 5)]),
    ("Div", [np.int32([9, -9]), np.int32([4, 4])]),
    ("Pow", [pos(2, 3), f32(3)]), ("Pow", [f32(4), np.float32(2)]),
    ("Pow", [ints(4, lo=0), i64(2)]), ("Pow", [f32(3), i64(3)]),
    ("Mod", [i64(7, -7, 7, -7), i64(3, 3, -3, -3)]),
    ("Max", [f32(2, 3), f32(3), f32(1, 1)]), ("Min", [f32(2, 3), f32(2, 1)]), ("Max", [f32(3)]),
    ("Sum", [f32(2, 3), f32(3), f32(2, 1)]), ("Mean", [f32(2, 3), f32(3)]),
    ("Max", [ints(3), ints(2, 3)]), ("Sum", [ints(3)]),
    ("Equal", [ints(2, 3, lo=0, hi=2), ints(3, lo=0, hi=2)]), ("Equal", [f32(3), f32(3)]),
    ("Less", [f32(2, 3), f32(3)]), ("LessOrEqual", [ints(4, lo=0, hi=3), ints(4, lo=0, hi=3)]),
    ("Greater", [f32(2, 3), f32(2, 1)]), ("GreaterOrEqual", [ints(5), i64(0)]),
    ("And", [bools(2, 3), bools(3)]), ("Or", [bools(2, 3), bools(2, 1)]),
    ("Xor", [bools(4), bools(4)]), ("Equal", [bools(4), bools(4)]),
    ("Where", [bools(2, 3), f32(3), f32(2, 1)]), ("Where", [bools(3), ints(3), i64(-1)]),
    ("Clip", [f32(2, 5), np.float32(-0.5), np.float32(0.5)]),
    ("Clip", [f32(2, 5), None, np.float32(0.1)]), ("Clip", [f32(2, 5), np.float32(0.0)]),
    ("Clip", [f32(7)]), ("Clip", [ints(6), i64(-2), i64(3)]),
    ("CastLike", [f32(3) * 4, ints(1)]), ("CastLike", [ints(3), np.float32([0])]),
]


@pytest.mark.parametrize("op, inputs", BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_multi_input_elementwise(op, inputs):
    check(op, inputs)


@pytest.mark.parametrize("a, b, fmod", [
    (ints(8, lo=-9, hi=10), ints(8, lo=1, hi=4), 0), (ints(8, lo=-9, hi=10), -ints(8, lo=1, hi=4), 0),
    (ints(6, lo=-9, hi=10), ints(6, lo=1, hi=4), 1), (f32(6) * 5, pos(6), 1),
    (np.float32([5.5, -5.5, 5.5, -5.5]), np.float32([2, 2, -2, -2]), 1),
])
def test_mod(a, b, fmod):
    check("Mod", [a, b], {"fmod": fmod})


@pytest.mark.parametrize("x, to", [
    (f32(2, 3) * 10, "i64"), (f32(2, 3) * 10, "i32"), (f32(5) * 3, "bool"), (ints(5), "f32"),
    (ints(5), "bool"), (bools(4), "f32"), (bools(4), "i64"), (f32(4), "f16"), (f32(4), "f64"),
    (ints(4, lo=0, hi=200), "u8"), (f32(3), "f32"), (np.float64([1.5, -2.5]), "i8"),
])
def test_cast(x, to):
    check("Cast", [x], {"to": to})


# -- reductions --------------------------------------------------------------------------------

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]
REDUCE_FORMS = [  # (axes input, attrs)
    (K(i64(1)), {}), (K(i64(-1, 0)), {"keepdims": 0}), (None, {}), (None, {"keepdims": 0}),
    (K(np.zeros(0, np.int64)), {"noop_with_empty_axes": 1}), (K(np.zeros(0, np.int64)), {}),
    (K(i64(2)), {"keepdims": 0}),
]


@pytest.mark.parametrize("form", range(len(REDUCE_FORMS)))
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce(op, form):
    axes, attrs = REDUCE_FORMS[form]
    check(op, [f32(2, 3, 4), axes] if axes is not None else [f32(2, 3, 4)], attrs, rtol=1e-5)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1"])
def test_reduce_int(op):
    check(op, [ints(3, 4, lo=-3, hi=4), K(i64(1))])


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("attrs", [{}, {"axis": 1}, {"axis": -1, "keepdims": 0},
                                   {"axis": 1, "select_last_index": 1},
                                   {"axis": 0, "keepdims": 0, "select_last_index": 1}])
def test_arg_reduce(op, attrs):
    check(op, [ints(3, 4, lo=0, hi=3).astype(np.float32)], attrs)  # ties exercise last-index


@pytest.mark.parametrize("x, axis, attrs", [
    (f32(3, 4), 1, {}), (f32(3, 4), 0, {"exclusive": 1}), (f32(3, 4), -1, {"reverse": 1}),
    (f32(2, 3, 4), 1, {"exclusive": 1, "reverse": 1}), (ints(5), 0, {"exclusive": 1}),
    (np.int32([[1, 2], [3, 4]]), 0, {"reverse": 1}),
])
def test_cumsum(x, axis, attrs):
    check("CumSum", [x, K(np.int64(axis))], attrs)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(op, axis):
    check(op, [f32(2, 3, 4) * 4], {"axis": axis})


# -- inference with symbolic dims, and errors --------------------------------------------------

INFERENCE = [
    ("Add", ["f32[batch, seq, 8]", "f32[8]"], {}, ["f32[batch, seq, 8]"]),
    ("Mul", ["f32[batch, 1]", "f32[1, seq]"], {}, ["f32[batch, seq]"]),
    ("Where", ["bool[seq, seq]", "f32[batch, 1, seq, seq]", "f32[]"], {}, ["f32[batch, 1, seq, seq]"]),
    ("Less", ["i64[seq]", "i64[seq, 1]"], {}, ["bool[seq, seq]"]),
    ("Max", ["f32[batch, 4]", "f32[4]", "f32[1, 1]"], {}, ["f32[batch, 4]"]),
    ("Cast", ["f32[batch, seq]"], {"to": "i64"}, ["i64[batch, seq]"]),
    ("CastLike", ["i64[batch]", "f16[]"], {}, ["f16[batch]"]),
    ("IsNaN", ["f32[batch]"], {}, ["bool[batch]"]),
    ("ReduceMean", ["f32[batch, seq, 8]", K(i64(-1))], {}, ["f32[batch, seq, 1]"]),
    ("ReduceSum", ["f32[batch, seq, 8]", K(i64(1))], {"keepdims": 0}, ["f32[batch, 8]"]),
    ("ReduceMax", ["f32[batch, seq]"], {"keepdims": 0}, ["f32[]"]),
    ("ReduceSum", ["f32[batch, seq]"], {"noop_with_empty_axes": 1}, ["f32[batch, seq]"]),
    ("ArgMax", ["f32[batch, seq, 8]"], {"axis": -1, "keepdims": 0}, ["i64[batch, seq]"]),
    ("CumSum", ["f32[batch, seq]", K(np.int64(1))], {}, ["f32[batch, seq]"]),
    ("Softmax", ["f32[batch, heads, seq, seq]"], {}, ["f32[batch, heads, seq, seq]"]),
]


@pytest.mark.parametrize("op, inputs, attrs, expected", INFERENCE,
                         ids=[c[0] for c in INFERENCE])
def test_symbolic_inference(op, inputs, attrs, expected):
    assert infer(op, inputs, attrs) == [T(e) for e in expected]


ERRORS = [
    ("Add", ["f32[2, 3]", "f32[4]"], {}, "do not broadcast"),
    ("ReduceSum", ["f32[2, 3]", K(i64(2))], {}, "axis 2 is out of range for rank 2"),
    ("ReduceSum", ["f32[2, 3]", "i64[1]"], {}, "axes must be known at compile time"),
    ("ArgMax", ["f32[2, 3]"], {"axis": -3}, "axis -3 is out of range"),
    ("Softmax", ["f32[2, 3]"], {"axis": 2}, "out of range"),
    ("CumSum", ["f32[2, 3]", "i64[]"], {}, "axis must be known"),
    ("Gelu", ["f32[2]"], {"approximate": "fast"}, "approximate"),
    ("Where", ["f32[2]", "f32[2]", "f32[2]"], {}, "condition must be bool"),
    ("Add", ["f32[2]", "i64[2]"], {}, "same dtype"),
    ("Relu", ["f32[2]"], {"alpha": 1.0}, "unknown attribute"),
    ("Cast", ["f32[2]"], {}, "missing required attribute 'to'"),
    ("Not", ["f32[2]"], {}, "bool"),
]


@pytest.mark.parametrize("op, inputs, attrs, message", ERRORS, ids=[c[3] for c in ERRORS])
def test_errors(op, inputs, attrs, message):
    with pytest.raises(OpError, match=message):
        infer(op, inputs, attrs)
