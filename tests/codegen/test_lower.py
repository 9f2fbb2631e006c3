"""Every lowering rule against the NumPy oracle (sbc.ir.interpreter).

Each test builds a tiny graph, compiles it for the CPU with `sbc.codegen.build.build`, runs it
in the Relax VM and compares every output with the interpreter: floats to rtol = atol = 1e-5,
ints and bools exactly. Many ops share one graph (one output per op) because compiling, not
running, is what costs time here.
"""

import numpy as np
import pytest
import tvm
from tvm import relax

from sbc.codegen.build import build
from sbc.ir import Graph, Sym, TensorType
from sbc.ir.interpreter import run

RNG = np.random.default_rng(0)
F32 = np.float32


def run_built(built, feeds):
    """Call VM "main"(inputs..., params...) and name the outputs of the returned tuple."""
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    args = [tvm.runtime.tensor(np.asarray(feeds[n], order="C")) for n, _ in built.inputs]
    args += [tvm.runtime.tensor(np.asarray(built.params[n], order="C")) for n in built.param_names]
    result = vm["main"](*args)
    return {name: r.numpy() for (name, _), r in zip(built.outputs, result)}


def assert_matches(got, want, name, tol=1e-5):
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{name}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}"
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True, err_msg=name)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


def check(g, feeds, tols=None, built=None):
    """Compile g (unless given), run it and compare every output with the interpreter."""
    built = built or build(g)
    got, want = run_built(built, feeds), run(g, feeds)
    assert list(got) == list(want)
    for name in want:
        assert_matches(got[name], want[name], name, (tols or {}).get(name, 1e-5))
    return built


def const(g, value, dtype=np.int64):
    return g.add1("Constant", value=np.asarray(value, dtype=dtype))


def outputs(g, named):
    g.set_outputs(list(named.values()), list(named))


# -- elementwise ----------------------------------------------------------------------------------

FLOAT_UNARY = ["Abs", "Neg", "Sqrt", "Exp", "Log", "Sin", "Cos", "Tanh", "Sigmoid", "Reciprocal",
               "Floor", "Ceil", "Round", "Sign", "Relu", "Softplus", "Softsign", "Erf", "Mish",
               "Identity", "HardSwish"]
PARAMETRIC = [("LeakyRelu", {"alpha": 0.1}), ("Elu", {"alpha": 0.7}), ("Selu", {}),
              ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Gelu", {}),
              ("Gelu", {"approximate": "tanh"})]


def special_floats(shape):
    """Normal values plus the edge cases: .5 ties for Round (half to even), 0, +-large, inf, nan."""
    x = (RNG.normal(size=shape) * 3).astype(F32).reshape(-1)
    x[:14] = [0.5, 1.5, 2.5, -0.5, -2.5, 0.0, -0.0, 40.0, -40.0, 100.0, -100.0, np.inf, -np.inf, np.nan]
    return x.reshape(shape)


def test_float_unary():
    """All unary float ops in one build. Erf and Gelu keep 1e-5: TVM's erf (a polynomial) agrees
    with math.erf to ~1e-7 on these inputs, so no looser tolerance is needed."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3, 37)))
    named = {op: g.add1(op, x) for op in FLOAT_UNARY}
    named.update({f"{op}{i}": g.add1(op, x, **attrs) for i, (op, attrs) in enumerate(PARAMETRIC)})
    for neg, pos in [(0, 1), (1, 0), (1, 1)]:
        named[f"IsInf{neg}{pos}"] = g.add1("IsInf", x, detect_negative=neg, detect_positive=pos)
    named["IsNaN"] = g.add1("IsNaN", x)
    outputs(g, named)
    with np.errstate(all="ignore"):
        check(g, {"x": special_floats((3, 37))})


def test_round_is_half_to_even():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (8,)))
    outputs(g, {"y": g.add1("Round", x)})
    xs = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, 2.4999998], F32)
    got = run_built(build(g), {"x": xs})["y"]
    np.testing.assert_array_equal(got, np.array([0, 2, 2, 4, -0, -2, -2, 2], F32))


BINARY_FLOAT = ["Add", "Sub", "Mul", "Div", "Pow", "Equal", "Less", "LessOrEqual", "Greater",
                "GreaterOrEqual"]


def test_float_binary_broadcast():
    """[3, 1, 5] op [4, 1] -> [3, 4, 5]; fmod; variadic Max/Min/Sum/Mean; Where."""
    g = Graph()
    a = g.add_input("a", TensorType("f32", (3, 1, 5)))
    b = g.add_input("b", TensorType("f32", (4, 1)))
    c = g.add_input("c", TensorType("f32", (5,)))
    cond = g.add_input("cond", TensorType("bool", (4, 5)))
    named = {op: g.add1(op, a, b) for op in BINARY_FLOAT}
    named["Fmod"] = g.add1("Mod", a, b, fmod=1)  # float Mod requires fmod=1 (ONNX)
    named.update({op: g.add(op, [a, b, c]).outputs[0] for op in ["Max", "Min", "Sum", "Mean"]})
    named["Where"] = g.add1("Where", cond, a, b)
    named["ScalarAdd"] = g.add1("Add", a, const(g, 2.0, F32))
    outputs(g, named)
    av = (RNG.normal(size=(3, 1, 5)) * 4).astype(F32)
    av[0, 0, :3] = [2.0, -3.0, np.nan]  # ties for the comparisons; NaN wins Max/Min
    bv = RNG.uniform(0.5, 2, size=(4, 1)).astype(F32) * np.array([[1], [-1], [1], [-1]], F32)
    bv[:2, 0] = [2.0, -3.0]
    feeds = {"a": av, "b": bv, "c": RNG.normal(size=5).astype(F32),
             "cond": RNG.random((4, 5)) > 0.5}
    with np.errstate(all="ignore"):  # Pow of a negative base by a non-integer: nan in both
        check(g, feeds)


@pytest.mark.parametrize("dtype", ["i32", "i64"])
def test_integer_binary(dtype):
    """Div truncates toward zero, Mod follows the divisor's sign, fmod the dividend's."""
    g = Graph()
    a = g.add_input("a", TensorType(dtype, (2, 6)))
    b = g.add_input("b", TensorType(dtype, (6,)))
    named = {op: g.add1(op, a, b) for op in ["Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater"]}
    named["Mod"] = g.add1("Mod", a, b)
    named["Fmod"] = g.add1("Mod", a, b, fmod=1)
    named["Pow"] = g.add1("Pow", a, g.add1("Abs", b))
    named.update({op: g.add(op, [a, b]).outputs[0] for op in ["Max", "Min", "Sum"]})  # Mean: floats only
    npd = np.int32 if dtype == "i32" else np.int64
    named["Clip"] = g.add1("Clip", a, const(g, -3, npd), const(g, 4, npd))
    outputs(g, named)
    feeds = {"a": np.array([[7, -7, 7, -7, 0, 5], [9, -9, 1, 2, -3, 6]], npd),
             "b": np.array([2, 2, -2, -2, 3, -4], npd)}
    check(g, feeds)


def test_logic_where_clip_cast():
    g = Graph()
    p = g.add_input("p", TensorType("bool", (4, 3)))
    q = g.add_input("q", TensorType("bool", (3,)))
    x = g.add_input("x", TensorType("f32", (4, 3)))
    i = g.add_input("i", TensorType("i64", (4, 3)))
    named = {op: g.add1(op, p, q) for op in ["And", "Or", "Xor", "Equal"]}
    named["Not"] = g.add1("Not", p)
    named["WhereInt"] = g.add1("Where", p, i, const(g, -1))
    named["ClipBoth"] = g.add1("Clip", x, const(g, -0.5, F32), const(g, 0.5, F32))
    named["ClipLow"] = g.add1("Clip", x, const(g, 0.0, F32))
    named["ClipHigh"] = g.add("Clip", [x, None, const(g, 0.1, F32)]).outputs[0]
    named["ClipNone"] = g.add1("Clip", x)
    c = g.add_input("c", TensorType("f32", (4, 3)))  # no NaN: float -> int of NaN is undefined
    for to in ["i32", "i64", "i8"]:
        named[f"Cast_f32_{to}"] = g.add1("Cast", c, to=to)
    named["Cast_f32_u8"] = g.add1("Cast", g.add1("Abs", c), to="u8")
    named["Cast_f32_bool"] = g.add1("Cast", x, to="bool")
    named["Cast_f32_f32"] = g.add1("Cast", x, to="f32")
    named["Cast_bool_f32"] = g.add1("Cast", p, to="f32")
    named["Cast_i64_f32"] = g.add1("Cast", i, to="f32")
    named["CastLike"] = g.add1("CastLike", i, x)
    outputs(g, named)
    feeds = {"p": RNG.random((4, 3)) > 0.5, "q": np.array([True, False, True]),
             "x": (RNG.normal(size=(4, 3)) * 3).astype(F32), "i": RNG.integers(-5, 5, (4, 3)),
             "c": RNG.uniform(-100, 100, (4, 3)).astype(F32)}
    feeds["x"][0] = [0.0, -0.0, np.nan]  # NaN passes Clip unchanged, as in np.maximum
    check(g, feeds)


# -- reductions -----------------------------------------------------------------------------------

REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]
REDUCE_CASES = [([1], 1), ([-1], 0), ([0, 2], 1), ([0, 2], 0), (None, 1), (None, 0)]


def test_reductions():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3, 4, 5)))
    named = {}
    for op in REDUCTIONS:
        for k, (axes, keep) in enumerate(REDUCE_CASES):
            args = [x] if axes is None else [x, const(g, axes)]
            named[f"{op}{k}"] = g.add(op, args, {"keepdims": keep}).outputs[0]
    named["noop"] = g.add("ReduceSum", [x], {"noop_with_empty_axes": 1}).outputs[0]
    outputs(g, named)
    xv = RNG.uniform(-1.5, 1.5, (3, 4, 5)).astype(F32)
    xv[2, 3, 4] = np.nan  # propagates through every reduction that reads it, Max/Min included
    check(g, {"x": xv})


def test_integer_reductions_and_argminmax():
    g = Graph()
    x = g.add_input("x", TensorType("i32", (3, 6)))
    f = g.add_input("f", TensorType("f32", (3, 6)))
    named = {op: g.add1(op, x, const(g, [1])) for op in ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                                                          "ReduceMean", "ReduceL1", "ReduceL2", "ReduceSumSquare"]}
    for op in ["ArgMax", "ArgMin"]:
        for axis, keep, last in [(1, 1, 0), (-1, 0, 1), (0, 0, 0), (0, 1, 1)]:
            named[f"{op}{axis}{keep}{last}"] = g.add1(op, x, axis=axis, keepdims=keep, select_last_index=last)
            named[f"{op}f{axis}{keep}{last}"] = g.add1(op, f, axis=axis, keepdims=keep, select_last_index=last)
    outputs(g, named)
    xv = RNG.integers(-3, 4, (3, 6)).astype(np.int32)  # few values: many ties
    check(g, {"x": xv, "f": xv.astype(F32) * 0.5})


def test_cumsum_and_softmax():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3, 7)))
    i = g.add_input("i", TensorType("i64", (3, 7)))
    s = g.add_input("s", TensorType("f32", (3, 7)))
    named = {}
    for axis in (1, -2):
        for excl in (0, 1):
            for rev in (0, 1):
                named[f"cumsum{axis}{excl}{rev}"] = g.add1("CumSum", x, const(g, axis), exclusive=excl, reverse=rev)
    named["cumsum_int"] = g.add1("CumSum", i, const(g, [1], np.int32), reverse=1)
    for op in ["Softmax", "LogSoftmax"]:
        for axis in (-1, 0):
            named[f"{op}{axis}"] = g.add1(op, s, axis=axis)
    outputs(g, named)
    sv = RNG.normal(size=(3, 7)).astype(F32)
    sv[1] += 1000.0  # a naive exp would overflow: the max is subtracted first
    sv[2, 0] = -np.inf
    feeds = {"x": RNG.normal(size=(3, 7)).astype(F32), "s": sv, "i": RNG.integers(-9, 9, (3, 7))}
    check(g, feeds)


# -- matmul and normalisation --------------------------------------------------------------------

MATMUL_SHAPES = [
    ((5, 7), (7, 3), "param"),           # 2-D x 2-D weight
    ((2, 5, 7), (7, 3), "param"),        # batched activations x 2-D weight (stays 2-D)
    ((2, 1, 5, 7), (3, 7, 4), "input"),  # batch broadcast both ways
    ((7,), (7, 3), "input"),             # vector x matrix
    ((2, 5, 7), (7,), "input"),          # matrix x vector
    ((7,), (7,), "input"),               # dot product
]


@pytest.mark.parametrize("sa,sb,kind", MATMUL_SHAPES)
def test_matmul(sa, sb, kind):
    g = Graph()
    a = g.add_input("a", TensorType("f32", sa))
    bv = RNG.normal(size=sb).astype(F32)
    b = g.add_param("w", bv) if kind == "param" else g.add_input("b", TensorType("f32", sb))
    outputs(g, {"y": g.add1("MatMul", a, b)})
    feeds = {"a": RNG.normal(size=sa).astype(F32)}
    if kind == "input":
        feeds["b"] = bv
    built = check(g, feeds)
    assert built.param_names == (["w"] if kind == "param" else [])


def test_gemm_and_norms():
    g = Graph()
    a = g.add_input("a", TensorType("f32", (4, 6)))
    x = g.add_input("x", TensorType("f32", (2, 3, 8)))
    w = g.add_param("w", RNG.normal(size=(5, 6)).astype(F32))
    c = g.add_param("c", RNG.normal(size=(5,)).astype(F32))
    scale = g.add_param("scale", RNG.normal(size=(8,)).astype(F32))
    bias = g.add_param("bias", RNG.normal(size=(8,)).astype(F32))
    scale2 = g.add_param("scale2", RNG.normal(size=(3, 8)).astype(F32))
    named = {
        "gemm": g.add1("Gemm", a, w, c, transB=1, alpha=0.5, beta=2.0),
        "gemm_ta": g.add1("Gemm", g.add1("Transpose", a), w, transA=1, transB=1),
        "gemm_plain": g.add1("Gemm", a, g.add1("Transpose", w), c),
        "rms": g.add1("RMSNormalization", x, scale, epsilon=1e-6),
        "rms2": g.add1("RMSNormalization", x, scale2, axis=1),
        "ln_nobias": g.add1("LayerNormalization", x, scale),
    }
    ln = g.add("LayerNormalization", [x, scale, bias], {"num_outputs": 3, "epsilon": 1e-3}).outputs
    named.update({"ln": ln[0], "ln_mean": ln[1], "ln_inv": ln[2]})
    named["ln_axis1"] = g.add1("LayerNormalization", x, scale2, axis=1)
    outputs(g, named)
    built = check(g, {"a": RNG.normal(size=(4, 6)).astype(F32),
                      "x": (RNG.normal(size=(2, 3, 8)) * 2 + 1).astype(F32)})
    assert built.param_names == ["w", "c", "scale", "bias", "scale2"]


# -- layout and indexing --------------------------------------------------------------------------

def test_layout_ops():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3, 4)))
    y = g.add_input("y", TensorType("f32", (2, 5, 4)))
    one = g.add_input("one", TensorType("f32", (3, 1)))
    named = {
        "reshape": g.add1("Reshape", x, const(g, [0, -1])),
        "flatten": g.add1("Flatten", x, axis=2),
        "flatten0": g.add1("Flatten", x, axis=0),
        "squeeze": g.add1("Squeeze", one, const(g, [-1])),
        "unsqueeze": g.add1("Unsqueeze", x, const(g, [0, -1])),
        "transpose": g.add1("Transpose", x, perm=[2, 0, 1]),
        "transpose_rev": g.add1("Transpose", x),
        "expand": g.add1("Expand", one, const(g, [2, 3, 5])),
        "tile": g.add1("Tile", x, const(g, [2, 1, 3])),
        "concat": g.add1("Concat", x, y, x, axis=1),
        "concat_neg": g.add1("Concat", x, x, axis=-1),
        "identity": g.add1("Identity", x),
        "shape": g.add1("Shape", x, start=1),  # known at compile time: a constant output
    }
    parts = g.add("Split", [y, const(g, [1, 3, 1])], {"axis": 1}).outputs
    named.update({f"split{k}": p for k, p in enumerate(parts)})
    even = g.add("Split", [x], {"axis": -1, "num_outputs": 3}).outputs  # 4 -> 2, 2, 0
    named.update({f"even{k}": p for k, p in enumerate(even)})
    outputs(g, named)
    check(g, {"x": RNG.normal(size=(2, 3, 4)).astype(F32), "y": RNG.normal(size=(2, 5, 4)).astype(F32),
              "one": RNG.normal(size=(3, 1)).astype(F32)})


SLICES = [  # starts, ends, axes, steps
    ([1], [3], None, None),
    ([-2], [100], [1], None),                    # negative start, end clamped
    ([0, 5], [-1, -100], [0, 1], [2, -2]),       # negative step from past the end
    ([-1], [-(2 ** 63)], [2], [-1]),             # reverse an axis (INT64_MIN end)
    ([2 ** 63 - 1], [0], [1], [-3]),             # INT64_MAX start, negative step
    ([3], [1], [0], None),                       # empty result
]


def test_slice():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4, 6, 3)))
    named = {}
    for k, (s, e, a, st) in enumerate(SLICES):
        args = [x, const(g, s), const(g, e)]
        if a is not None or st is not None:
            args.append(const(g, a if a is not None else list(range(len(s)))))
        if st is not None:
            args.append(const(g, st))
        named[f"slice{k}"] = g.add1("Slice", *args)
    outputs(g, named)
    check(g, {"x": RNG.normal(size=(4, 6, 3)).astype(F32)})


def test_gather_family():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4, 5, 3)))
    idx = g.add_input("idx", TensorType("i64", (2, 3)))
    ge = g.add_input("ge", TensorType("i32", (4, 2, 3)))
    nd = g.add_param("nd", np.array([[0, -1], [3, 2], [-4, 0]], np.int64))
    ndb = g.add_param("ndb", np.array([[1], [-1], [0], [2]], np.int64))
    named = {
        "gather0": g.add1("Gather", x, idx),
        "gather1": g.add1("Gather", x, idx, axis=1),
        "gather_last": g.add1("Gather", x, idx, axis=-1),
        "gather_scalar": g.add1("Gather", x, g.add_param("s", np.array(-1, np.int64)), axis=1),
        "gather_elements": g.add1("GatherElements", x, ge, axis=1),
        "gather_nd": g.add1("GatherND", x, nd),
        "gather_nd_batch": g.add1("GatherND", x, ndb, batch_dims=1),
    }
    outputs(g, named)
    feeds = {"x": RNG.normal(size=(4, 5, 3)).astype(F32),
             "idx": np.array([[0, -1, 2], [-3, 1, 0]], np.int64),
             "ge": RNG.integers(-3, 3, (4, 2, 3)).astype(np.int32)}
    check(g, feeds)


def test_creation_pad_trilu():
    """Range/ConstantOfShape are big enough (> 1024 elements) not to be folded at compile time."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (3, 4)))
    m = g.add_input("m", TensorType("i32", (2, 4, 5)))
    named = {
        "range_f": g.add1("Range", const(g, 1.5, F32), const(g, 1500.0, F32), const(g, 0.75, F32)),
        "range_i": g.add1("Range", const(g, 3000), const(g, 10), const(g, -2)),
        "fill": g.add1("ConstantOfShape", const(g, [40, 40]), value=np.array([2.5], F32)),
        "fill_i": g.add1("ConstantOfShape", const(g, [2, 600]), value=np.array([7], np.int32)),
        "pad": g.add1("Pad", x, const(g, [1, 0, 2, 3]), const(g, 9.0, F32)),
        "pad0": g.add1("Pad", x, const(g, [0, 2, 0, 1])),
        "pad_edge": g.add1("Pad", x, const(g, [2, 3, 1, 2]), mode="edge"),
        "pad_reflect": g.add1("Pad", x, const(g, [2, 3, 2, 3]), mode="reflect"),
        "pad_axes": g.add1("Pad", x, const(g, [1, 2]), None, const(g, [-1])),
        "triu": g.add1("Trilu", m),
        "tril_k": g.add1("Trilu", m, const(g, -1), upper=0),
        "triu_k": g.add1("Trilu", m, const(g, 2)),
    }
    outputs(g, named)
    check(g, {"x": RNG.normal(size=(3, 4)).astype(F32), "m": RNG.integers(1, 9, (2, 4, 5)).astype(np.int32)})


EINSUMS = [  # equation, operand shapes
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("ij->ji", [(3, 4)]),
    ("ii->i", [(4, 4)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("i,j->ij", [(3,), (5,)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (5, 4, 2)]),
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
    ("ij,jk", [(3, 4), (4, 5)]),  # implicit output
]


def test_einsum():
    g = Graph()
    named, feeds = {}, {}
    for k, (eq, shapes) in enumerate(EINSUMS):
        xs = []
        for n, shape in enumerate(shapes):
            name = f"e{k}_{n}"
            xs.append(g.add_input(name, TensorType("f32", shape)))
            feeds[name] = RNG.normal(size=shape).astype(F32)
        named[f"einsum{k}"] = g.add("Einsum", xs, {"equation": eq}).outputs[0]
    outputs(g, named)
    check(g, feeds)
