"""Silent miscompiles and crashes found in sbc (issue 14), each as the small ONNX graph that
shows it. Every graph runs three ways: compiled by sbc (`sbc.compile(...).run`), in sbc's
reference interpreter, and in onnxruntime, the oracle; floats agree to 1e-5 (NaN with NaN),
integers exactly, and where a test says so the sign of every zero too.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP, helper

import sbc
from sbc.errors import InputError, SbcError
from sbc.frontend import import_onnx
from sbc.ir.interpreter import run as interpret
from tests.frontend.test_onnx_import import ints, model, raises_one_line, vi

F32, F16, F64, I32, I64 = TP.FLOAT, TP.FLOAT16, TP.DOUBLE, TP.INT32, TP.INT64
NP = {F32: np.float32, F16: np.float16, F64: np.float64, I32: np.int32, I64: np.int64}
NAN, INF = np.nan, np.inf
RNG = np.random.default_rng(0)


def graph(nodes, inputs, outputs, initializers=(), opset=18):
    """A model whose outputs (names) get their types from ONNX shape inference."""
    m = model(nodes, inputs, [helper.ValueInfoProto(name=o) for o in outputs], initializers, opset)
    return onnx.shape_inference.infer_shapes(m, strict_mode=True)


def scalar(name, value, dtype=F32, dims=()):
    values = np.reshape(np.asarray(value, NP[dtype]), -1).tolist()
    return helper.make_tensor(name, dtype, list(dims), values)


def onnxruntime(m, feeds) -> dict:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in m.graph.output], session.run(None, feeds)))


def assert_same(got, want, name, zero_signs=False, tol=1e-5):
    got = np.asarray(got)
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{name}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}"
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=name)
        return
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True, err_msg=name)
    if zero_signs:
        zeros = want == 0
        np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(want[zeros]),
                                      err_msg=f"{name}: sign of zero")


def three_way(m, feeds, zero_signs=False, tol=1e-5):
    """Compiled and interpreted sbc both agree with onnxruntime on every output."""
    want = onnxruntime(m, feeds)
    interpreted = interpret(import_onnx(m), feeds)
    compiled = sbc.compile(m, target="cpu").run(feeds)
    for name in want:
        assert_same(interpreted[name], want[name], f"interpreter {name}", zero_signs, tol)
        assert_same(compiled[name], want[name], f"compiled {name}", zero_signs, tol)


def chains(ops_inputs, epilogue):
    """Nodes op_k(inputs) -> epilogue for each (name, op node); returns nodes and outputs."""
    nodes, outs = [], []
    for name, node in ops_inputs:
        nodes += [node, helper.make_node(epilogue, [node.output[0]], [name])]
        outs.append(name)
    return nodes, outs


# -- 1. reductions over a length-1 axis with a fused epilogue ----------------------------------
# NormalizePrimFunc drops unit loops, so such a reduction was scheduled as an elementwise block
# and TVM inlined the epilogue into both its init and its update: Exp(ReduceMean) gave e * exp.

@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"])
def test_reduce_over_unit_axis_then_elementwise(op):
    """x [1, 3] over axis 0 (static) and s [batch, 1] over axis 1 (symbolic), keepdims 0 and 1."""
    cases = []
    for keep in (0, 1):
        for src, axis in (("x", "a0"), ("s", "a1")):
            cases.append((f"{src}_keep{keep}", helper.make_node(op, [src, axis], [f"r_{src}{keep}"],
                                                                keepdims=keep)))
    nodes, outs = chains(cases, "Exp")
    m = graph(nodes, [vi("x", [1, 3]), vi("s", ["batch", 1])], outs, [ints("a0", [0]), ints("a1", [1])])
    three_way(m, {"x": RNG.normal(size=(1, 3)).astype(np.float32),
                  "s": RNG.normal(size=(4, 1)).astype(np.float32)})


@pytest.mark.parametrize("epilogue", ["Exp", "Sigmoid", "Log"])
def test_matmul_and_gemm_with_k_1_then_elementwise(epilogue):
    """K = 1: the matmul is a reduction over one element (static and symbolic rows, a weight
    that is pre-packed, Gemm with bias and with transposes)."""
    w = helper.make_tensor("w", F32, [1, 32], RNG.random(32).astype(np.float32) + 0.5)
    cases = [("mm", helper.make_node("MatMul", ["a", "b"], ["p_mm"])),
             ("mm_sym", helper.make_node("MatMul", ["an", "b"], ["p_mm_sym"])),
             ("mm_weight", helper.make_node("MatMul", ["a", "w"], ["p_mm_weight"])),
             ("mm_batched", helper.make_node("MatMul", ["a3", "b"], ["p_mm_batched"])),
             ("gemm", helper.make_node("Gemm", ["a", "b", "c"], ["p_gemm"], alpha=0.5, beta=2.0)),
             ("gemm_t", helper.make_node("Gemm", ["at", "bt"], ["p_gemm_t"], transA=1, transB=1))]
    nodes, outs = chains(cases, epilogue)
    m = graph(nodes, [vi("a", [4, 1]), vi("an", ["n", 1]), vi("a3", [2, 4, 1]), vi("b", [1, 32]),
                      vi("c", [32]), vi("at", [1, 5]), vi("bt", [7, 1])], outs, [w])
    positive = lambda *shape: RNG.random(shape).astype(np.float32) + 0.5  # noqa: E731  (Log)
    three_way(m, {"a": positive(4, 1), "an": positive(5, 1), "a3": positive(2, 4, 1),
                  "b": positive(1, 32), "c": positive(32), "at": positive(1, 5), "bt": positive(7, 1)})


def test_softmax_and_norms_over_unit_axis_then_elementwise():
    nodes, outs = chains([
        ("softmax", helper.make_node("Softmax", ["x"], ["p_softmax"], axis=-1)),
        ("log_softmax", helper.make_node("LogSoftmax", ["x"], ["p_log_softmax"], axis=-1)),
        ("layer_norm", helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["p_ln"], axis=-1)),
        ("rms_norm", helper.make_node("RMSNormalization", ["x", "scale"], ["p_rms"], axis=-1)),
        ("argmax", helper.make_node("ArgMax", ["x"], ["p_argmax"], axis=-1))], "Neg")
    m = graph(nodes, [vi("x", ["batch", 1])], outs,
              [scalar("scale", [1.5], dims=[1]), scalar("bias", [0.25], dims=[1])], opset=23)
    three_way(m, {"x": RNG.normal(size=(4, 1)).astype(np.float32)})


# -- 2. Min / Max: NaN on either side wins, ties as onnxruntime -----------------------------------

SPECIALS_A = [NAN, 1, NAN, -INF, 0.0, -0.0, 2, NAN]
SPECIALS_B = [1, NAN, NAN, NAN, -0.0, 0.0, 3, -INF]


@pytest.mark.parametrize("dtype", [F32, F64, F16])
def test_min_max_nan_and_signed_zero_float(dtype):
    """NaN first, second, both and in the third input; a NaN scalar broadcast either way; a
    long vector (the vectorised kernel); 0.0 against -0.0 (onnxruntime's float16 kernel keeps
    the first of equal values, its float and double ones the second)."""
    nodes, outs = [], []
    for op in ("Max", "Min"):
        for args in (["a", "b"], ["b", "a"], ["a", "b", "c"], ["c", "a", "b"], ["nan", "a"],
                     ["a", "nan"], ["long", "ten"], ["ten", "long"], ["a"]):
            name = f"{op}_{'_'.join(args)}"
            nodes.append(helper.make_node(op, args, [name]))
            outs.append(name)
    m = graph(nodes, [vi(n, s, dtype) for n, s in (("a", [8]), ("b", [8]), ("c", [2, 1]),
                                                   ("nan", [1]), ("long", [40]), ("ten", []))], outs)
    long = np.arange(40.0)
    long[[3, 17, 33]] = NAN
    t = NP[dtype]
    three_way(m, {"a": np.array(SPECIALS_A, t), "b": np.array(SPECIALS_B, t),
                  "c": np.array([[5], [-5]], t), "nan": np.array([NAN], t),
                  "long": long.astype(t), "ten": np.array(10, t)}, zero_signs=True)


@pytest.mark.parametrize("dtype", [I32, I64])
def test_min_max_int(dtype):
    t = NP[dtype]
    info = np.iinfo(t)
    nodes = [helper.make_node(op, args, [f"{op}{k}"]) for op in ("Max", "Min")
             for k, args in enumerate((["a", "b"], ["b", "a", "c"]))]
    m = graph(nodes, [vi("a", [5], dtype), vi("b", [5], dtype), vi("c", [1], dtype)],
              [n.output[0] for n in nodes])
    three_way(m, {"a": np.array([info.min, info.max, 0, 3, 7], t),
                  "b": np.array([info.max, info.min, 1, 3, 2], t), "c": np.array([4], t)})


def test_argmax_argmin_rows_of_extremes():
    """A row of -inf (or of the lowest integer) is no better than the reduction's identity:
    the compiled ArgMax answered -1 for it."""
    nodes = [helper.make_node(op, [x], [f"{op}_{x}"], axis=1)
             for op in ("ArgMax", "ArgMin") for x in ("f", "i")]
    nodes += [helper.make_node("ArgMax", ["f"], ["ArgMax_f_last"], axis=1, select_last_index=1)]
    m = graph(nodes, [vi("f", [4, 3]), vi("i", [2, 3], I64)], [n.output[0] for n in nodes])
    lowest, highest = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    three_way(m, {"f": np.array([[-INF] * 3, [INF] * 3, [-INF, 1, -INF], [0.0, -0.0, 0.0]], np.float32),
                  "i": np.array([[lowest] * 3, [highest] * 3])})


def test_argmax_argmin_nan_compiled_as_interpreted():
    """onnxruntime's ArgMax over NaN depends on the NaN's position and the row length; sbc
    takes the first NaN as the extreme (NumPy), compiled and interpreted alike."""
    nodes = [helper.make_node(op, ["x"], [f"{op}{last}"], axis=1, select_last_index=last)
             for op in ("ArgMax", "ArgMin") for last in (0, 1)]
    m = graph(nodes, [vi("x", [3, 4])], [n.output[0] for n in nodes])
    x = np.array([[1, NAN, 3, NAN], [NAN, 1, 2, 3], [-INF, -INF, 0, NAN]], np.float32)
    compiled = sbc.compile(m, target="cpu").run({"x": x})
    interpreted = interpret(import_onnx(m), {"x": x})
    for name in interpreted:
        assert_same(compiled[name], interpreted[name], name)


# -- 3. Clip and Relu: ties keep x, NaN bounds clamp nothing --------------------------------------

def test_clip_signed_zero_bounds_then_div():
    """Clip(min=-0.0, max=0.0) keeps a value equal to a bound: 0.0 stays 0.0, so 1 / it is
    +inf (the interpreter gave -0.0 and -inf)."""
    nodes, outs, bounds = [], [], [scalar("one", 1.0)]
    for k, (lo, hi) in enumerate(((-0.0, 0.0), (0.0, -0.0), (0.0, 0.0), (-0.0, -0.0), (2.0, 1.0))):
        nodes += [helper.make_node("Clip", ["x", f"lo{k}", f"hi{k}"], [f"clip{k}"]),
                  helper.make_node("Div", ["one", f"clip{k}"], [f"div{k}"])]
        outs += [f"clip{k}", f"div{k}"]
        bounds += [scalar(f"lo{k}", lo), scalar(f"hi{k}", hi)]
    m = graph(nodes, [vi("x", [40])], outs, bounds)
    x = np.resize(np.array([-2, -0.0, 0.0, 2, NAN], np.float32), 40)
    three_way(m, {"x": x}, zero_signs=True)


def test_clip_nan_bounds_and_relu_negative_zero():
    """A NaN bound clamps nothing (given at run time, so no pass folds it); Relu keeps -0.0."""
    nodes = [helper.make_node("Clip", ["x", "nan", "one"], ["clip_lo_nan"]),
             helper.make_node("Clip", ["x", "minus_one", "nan"], ["clip_hi_nan"]),
             helper.make_node("Clip", ["x", "nan", "nan"], ["clip_both_nan"]),
             helper.make_node("Relu", ["x"], ["relu"])]
    m = graph(nodes, [vi("x", [5, 3]), vi("nan", [])], [n.output[0] for n in nodes],
              [scalar("one", 1.0), scalar("minus_one", -1.0)])
    x = np.array([[NAN, 1, 2], [1, NAN, -INF], [-INF, -INF, -INF], [0.0, -0.0, 0.0], [3, 2, NAN]],
                 np.float32)
    three_way(m, {"x": x, "nan": np.array(NAN, np.float32)}, zero_signs=True)


# -- 4. Pad: edge and reflect crop first; an axis too short is refused ---------------------------

PAD_CASES = [  # (input shape, pads, axes)
    ([3, 4], [1, 2, 2, 1], None),
    (["n", 5], [0, 3, 0, 2], None),
    ([2, 3, 4], [2, 1], [-1]),
    ([4, 5], [-1, 2, 1, -2], None),  # crop one side, pad the other
    ([2, 3], [0, -1, 0, 2], None),  # edge reads the cropped axis: [1, 2] -> [1, 2, 2, 2]
]


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad_modes(mode):
    nodes, inputs, inits, feeds = [], [], [], {}
    for k, (shape, pads, axes) in enumerate(PAD_CASES):
        if mode == "reflect" and k == 4:
            continue  # reflect pads 2 into a kept length of 2: refused, see below
        args = [f"x{k}", f"p{k}"] + (["", f"ax{k}"] if axes is not None else [])
        nodes += [helper.make_node("Pad", args, [f"pad{k}"], mode=mode),
                  helper.make_node("Exp", [f"pad{k}"], [f"y{k}"])]
        inputs.append(vi(f"x{k}", shape))
        inits += [ints(f"p{k}", pads)] + ([ints(f"ax{k}", axes)] if axes is not None else [])
        feeds[f"x{k}"] = RNG.normal(size=[5 if d == "n" else d for d in shape]).astype(np.float32)
    m = graph(nodes, inputs, [n.output[0] for n in nodes if n.op_type == "Exp"], inits)
    three_way(m, feeds)


def pad_model(shape, pads, mode):
    return graph([helper.make_node("Pad", ["x", "p"], ["y"], mode=mode, name="pad")],
                 [vi("x", shape)], ["y"], [ints("p", pads)])


@pytest.mark.parametrize("mode, shape, pads, needed", [
    ("reflect", [1, 4], [1, 0, 1, 0], "at least 2"),  # TVM divided by 0 (period 2 * 1 - 2)
    ("reflect", [3, 4], [3, 0, 0, 0], "at least 4"),  # onnxruntime: pre-pad exceeds 2
    ("reflect", [2, 3], [0, -2, 0, 1], "at least 2"),  # length 1 after cropping
    ("edge", [0, 4], [1, 0, 0, 0], "at least 1"),
])
def test_pad_axis_too_short_refused_at_compile_time(mode, shape, pads, needed):
    """What onnxruntime refuses at run time, sbc refuses when the sizes are known."""
    m = pad_model(shape, pads, mode)
    with pytest.raises(Exception, match="Pad"):
        onnxruntime(m, {"x": np.zeros(shape, np.float32)})
    raises_one_line(SbcError, m, "node 'pad'", f"'{mode}'", needed)


def test_pad_reflect_axis_too_short_refused_at_run_time():
    """A symbolic axis of 1 made the kernel divide by zero (SIGFPE, the process died)."""
    module = sbc.compile(pad_model(["n", 2], [2, 0, 2, 0], "reflect"), target="cpu")
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert_same(module.run({"x": x})["y"], np.pad(x, [(2, 2), (0, 0)], mode="reflect"), "y")
    for rows in (1, 2):
        with pytest.raises(InputError, match="node 'pad'.*reflect") as info:
            module.run({"x": np.zeros((rows, 2), np.float32)})
        assert "\n" not in str(info.value)


def test_pad_wrap_refused_one_line():
    """wrap (opset 19) has no lowering: refused at import, naming the node and the modes."""
    raises_one_line(SbcError, pad_model([2, 3], [1, 1, 1, 1], "wrap"), "node 'pad'", "'wrap'",
                    "constant, edge, reflect")


# -- 5. Pow ---------------------------------------------------------------------------------------

def test_pow_chains_and_exponent_forms():
    """A [1]-shaped constant exponent (float() of it raises in NumPy 2.4: the lowering died),
    int exponent tensors, Pow of a Pow, broadcasting, a symbolic exponent (Shape-derived)."""
    nodes = [
        helper.make_node("Pow", ["x", "two_1"], ["sq_1"]),          # [1]-shaped 2.0
        helper.make_node("Pow", ["sq_1", "half_1"], ["pow_of_pow"]),
        helper.make_node("Pow", ["pow_of_pow", "e"], ["chain3"]),
        helper.make_node("Pow", ["x", "ei64"], ["int_exp"]),
        helper.make_node("Pow", ["x", "ei32"], ["int32_exp"]),
        helper.make_node("Pow", ["x", "three"], ["const_f32"]),
        helper.make_node("Pow", ["col", "row"], ["broadcast"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["rows"]),
        helper.make_node("Cast", ["rows"], ["rows_f"], to=F32),
        helper.make_node("Pow", ["x", "rows_f"], ["sym_exp"]),
        helper.make_node("Pow", ["shape", "two_i64"], ["sym_base"]),
    ]
    m = graph(nodes, [vi("x", ["n", 4]), vi("e", [4]), vi("ei64", [4], I64), vi("ei32", [4], I32),
                      vi("col", ["n", 1]), vi("row", [1, 4])],
              ["sq_1", "pow_of_pow", "chain3", "int_exp", "int32_exp", "const_f32", "broadcast",
               "sym_exp", "sym_base"],
              [scalar("two_1", 2.0, dims=[1]), scalar("half_1", 0.5, dims=[1]),
               scalar("three", 3.0), scalar("two_i64", 2, I64, [1]), scalar("zero", 0, I64)])
    x = RNG.random((3, 4)).astype(np.float32) * 2 + 0.1
    three_way(m, {"x": x, "e": np.array([0.5, 1, 2, -1], np.float32),
                  "ei64": np.array([0, 1, 2, 3]), "ei32": np.array([-1, 0, 2, 5], np.int32),
                  "col": x[:, :1], "row": x[:1]}, tol=1e-4)


@pytest.mark.parametrize("dtype", [I32, I64])
def test_pow_integer(dtype):
    """onnxruntime's integer Pow is pow in double, truncated: 2 ** -1 is 0 (NumPy raised),
    3 ** 39 is rounded (NumPy's exact value differs); Pow(x, 2) included (no x * x for ints)."""
    t = NP[dtype]
    nodes = [helper.make_node("Pow", ["x", "e"], ["y"]), helper.make_node("Pow", ["x", "two"], ["sq"]),
             helper.make_node("Pow", ["x", "e64"], ["mixed"])]
    m = graph(nodes, [vi("x", [6], dtype), vi("e", [6], dtype), vi("e64", [6], I64)], ["y", "sq", "mixed"],
              [scalar("two", 2, dtype, [1])])
    big = 39 if dtype == I64 else 19
    three_way(m, {"x": np.array([1, -1, 2, 3, 5, -3], t), "e": np.array([-1, -3, -1, big, -2, 3], t),
                  "e64": np.array([0, 2, 3, 4, 1, 5])})


# -- 6. ConstantOfShape too large -----------------------------------------------------------------

def fill_model(x_shape):
    """ConstantOfShape(Concat(Shape(x), [2**40])): 4 TiB per row of x in f32."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Concat", ["s", "big"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["shape"], ["y"], name="fill",
                              value=helper.make_tensor("v", F32, [1], [1.0]))]
    return model(nodes, [vi("x", x_shape)], [vi("y", ["p", "q"])], [ints("big", [2 ** 40])])


def test_constant_of_shape_too_large_known_size_refused_at_compile_time():
    raises_one_line(SbcError, fill_model([4]), "node 'fill'", "17592186044416 bytes", "1 TiB")


def test_constant_of_shape_too_large_symbolic_refused_before_allocating():
    """The size depends on x's length: checked when the inputs bind, before any allocation
    (TVM died with std::bad_alloc)."""
    module = sbc.compile(fill_model(["n"]), target="cpu")
    with pytest.raises(InputError, match="node 'fill'.*1 TiB") as info:
        module.run({"x": np.zeros(1, np.float32)})
    assert "\n" not in str(info.value)
    assert module.run({"x": np.zeros(0, np.float32)})["y"].shape == (0, 2 ** 40)


# -- 7. zero-size tensors -------------------------------------------------------------------------
# TVM's RewriteDataflowReshape took a kernel whose loops never run for a reshape and made it a
# relax reshape, which reads a 0 in the new shape as "keep the input's dim": an undefined Var
# (Slice to [0, 0]) or an IndexError (Expand of [0] to [3, 0]). Empty results are now allocated
# without a kernel.

def test_empty_results_of_static_shapes():
    """Ops whose result has a static 0 dim, and an op that reads such a result."""
    nodes = [helper.make_node("Slice", ["x", "two", "two", "zero"], ["slice"]),
             helper.make_node("Expand", ["x00", "s100"], ["expand3"]),
             helper.make_node("Expand", ["x0", "s30"], ["expand2"]),
             helper.make_node("Exp", ["expand2"], ["exp_of_empty"]),
             helper.make_node("Transpose", ["x"], ["transpose"]),
             helper.make_node("Tile", ["x", "reps"], ["tile"]),
             helper.make_node("CumSum", ["x", "one"], ["cumsum"], exclusive=1),
             helper.make_node("ReduceSum", ["expand2", "one_1"], ["sum_of_empty"], keepdims=0),
             helper.make_node("Concat", ["slice", "x00"], ["concat"], axis=0)]
    m = graph(nodes, [vi("x", [2, 0]), vi("x00", [0, 0]), vi("x0", [0])], [n.output[0] for n in nodes],
              [ints("two", [2]), ints("zero", [0]), ints("s100", [1, 0, 0]), ints("s30", [3, 0]),
               ints("reps", [2, 3]), scalar("one", 1, I64), ints("one_1", [1])])
    three_way(m, {"x": np.zeros((2, 0), np.float32), "x00": np.zeros((0, 0), np.float32),
                  "x0": np.zeros(0, np.float32)})


@pytest.mark.parametrize("shape, feed", [(["batch"], (0,)), ([2, "n"], (2, 0)), ([2, 0], (2, 0))])
def test_softmax_over_empty_axis(shape, feed):
    """The interpreter's (Log)Softmax raised NumPy's ValueError (max of an empty axis)."""
    nodes = [helper.make_node(op, ["x"], [op.lower()], axis=-1) for op in ("Softmax", "LogSoftmax")]
    m = graph(nodes, [vi("x", shape)], ["softmax", "logsoftmax"])
    three_way(m, {"x": np.zeros(feed, np.float32)})


@pytest.mark.parametrize("dtype", [F32, I64])
def test_reduce_mean_over_empty_axis(dtype):
    """0, as onnxruntime 1.31 (ONNX's reference gives NaN, the lowest int for ints). A static
    empty axis failed to compile ("Divide by zero" in TVM); a symbolic one gave NaN."""
    nodes = [helper.make_node("ReduceMean", ["x", "a1"], ["static"], keepdims=0),
             helper.make_node("ReduceMean", ["x"], ["static_all"], keepdims=1),
             helper.make_node("ReduceMean", ["s", "a1"], ["symbolic"], keepdims=1),
             helper.make_node("ReduceMean", ["s", "a0"], ["symbolic_nonempty"], keepdims=0)]
    m = graph(nodes, [vi("x", [2, 0], dtype), vi("s", [2, "n"], dtype)], [n.output[0] for n in nodes],
              [ints("a1", [1]), ints("a0", [0])])
    three_way(m, {"x": np.zeros((2, 0), NP[dtype]), "s": np.zeros((2, 0), NP[dtype])})
    s = np.arange(6).reshape(2, 3).astype(NP[dtype])  # and the same program on a non-empty axis
    three_way(m, {"x": np.zeros((2, 0), NP[dtype]), "s": s})


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_argmax_over_empty_axis_fails_as_onnxruntime(op):
    """No index to return: onnxruntime fails, unless the result is empty too; sbc returned -1."""
    static = graph([helper.make_node(op, ["x"], ["y"], axis=1, name="arg")], [vi("x", [2, 0])], ["y"])
    with pytest.raises(Exception, match=op):
        onnxruntime(static, {"x": np.zeros((2, 0), np.float32)})
    raises_one_line(SbcError, static, "node 'arg'", "empty")
    symbolic = graph([helper.make_node(op, ["x"], ["y"], axis=1, name="arg")], [vi("x", ["m", "n"])], ["y"])
    module = sbc.compile(symbolic, target="cpu")
    x = np.zeros((2, 0), np.float32)
    with pytest.raises(Exception, match=op):
        onnxruntime(symbolic, {"x": x})
    for run in (module.run, lambda feeds: interpret(import_onnx(symbolic), feeds)):
        with pytest.raises(InputError, match="arg") as info:
            run({"x": x})
        assert "\n" not in str(info.value)
    for feed in ((0, 0), (0, 3)):  # the result is empty [0, 1]: onnxruntime returns it
        three_way(symbolic, {"x": np.zeros(feed, np.float32)})


@pytest.mark.parametrize("feed", [(2, 0), (0, 3), (3, 4)])
def test_cumsum_over_symbolic_axis_fed_0(feed):
    """TOPI's scan wrote each row's first entry even when the axis was empty (out of bounds),
    and with reverse the buffer between its two flips was sized dividing by the axis length:
    SIGFPE, the process died."""
    nodes = [helper.make_node("CumSum", ["x", "one"], [f"ex{ex}_rev{rev}"], exclusive=ex, reverse=rev)
             for ex in (0, 1) for rev in (0, 1)]
    m = graph(nodes, [vi("x", ["m", "n"])], [n.output[0] for n in nodes], [scalar("one", 1, I64)])
    three_way(m, {"x": RNG.normal(size=feed).astype(np.float32)})


def test_gather_of_no_indices_symbolic():
    """Indices of symbolic shape fed empty: the bounds check's min over no index is te.min's
    identity, which was read as "out of range at flat position 2**63 - 1"."""
    nodes = [helper.make_node("Gather", ["x", "i"], ["gather"], axis=1),
             helper.make_node("GatherElements", ["x", "j"], ["gather_elements"], axis=1)]
    m = graph(nodes, [vi("x", [2, 3]), vi("i", ["n"], I64), vi("j", [2, "k"], I64)],
              ["gather", "gather_elements"])
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    three_way(m, {"x": x, "i": np.zeros(0, np.int64), "j": np.zeros((2, 0), np.int64)})
    three_way(m, {"x": x, "i": np.array([2, -1]), "j": np.array([[0], [2]])})


# -- casts to bool fused into Where ---------------------------------------------------------------
# Exported attention masks: Where(Cast(mask, to=BOOL), x, y). A cast to bool is `x != 0` for
# numbers (NaN is true) and the value itself for bools: `!= 0` on a bool became an LLVM fcmp of
# i1 operands ("Invalid operand types for FCmp") once fused into the Where.

@pytest.mark.parametrize("mask_dtype, mask", [
    (TP.BOOL, [[True, False, True, False]]),
    (F32, [[0.0, 1.0, NAN, -0.0]]),
    (F16, [[0.0, -2.0, NAN, INF]]),
    (I64, [[0, 3, -1, 0]]),
])
def test_cast_to_bool_fused_into_where(mask_dtype, mask):
    """A causal-mask shape ([1, 1, T, T] against [B, H, T, T]) and a plain one; the mask
    broadcast over the symbolic dims and cast once more (bool -> bool, as exporters do)."""
    nodes = [helper.make_node("Cast", ["mask"], ["m"], to=TP.BOOL),
             helper.make_node("Where", ["m", "x", "y"], ["out"]),
             helper.make_node("Cast", ["m"], ["m2"], to=TP.BOOL),
             helper.make_node("Where", ["m2", "y", "x"], ["out2"])]
    m = graph(nodes, [vi("mask", [1, 1, "T", 4], mask_dtype), vi("x", ["B", 2, "T", 4]),
                      vi("y", ["B", 2, "T", 4])], ["out", "out2"])
    t = bool if mask_dtype == TP.BOOL else NP[mask_dtype]
    feeds = {"mask": np.tile(np.asarray(mask, t), (3, 1))[None, None],
             "x": RNG.normal(size=(2, 2, 3, 4)).astype(np.float32),
             "y": RNG.normal(size=(2, 2, 3, 4)).astype(np.float32)}
    three_way(m, feeds)


# -- GatherND with nothing to gather ---------------------------------------------------------------

@pytest.mark.parametrize("data, indices, batch_dims", [
    ((0, 3, 4), (0, 2, 1), 1),  # an empty batch
    ((2, 0, 4, 5), (2, 0, 2, 1), 2),  # an empty batch dim after a full one
    ((2, 3, 4), (2, 0, 1), 1),  # no index tuples
    ((2, 3, 4), (3, 0), 0),  # index tuples of length 0: whole slices
])
def test_gather_nd_of_empty_batches(data, indices, batch_dims):
    """The reference stacked one result per batch item, which failed when there were none."""
    out_rank = len(indices) - 1 + len(data) - batch_dims - indices[-1]
    m = graph([helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=batch_dims)],
              [vi("x", [f"d{k}" for k in range(len(data))]), vi("i", list(indices), I64)], ["y"])
    assert len(m.graph.output[0].type.tensor_type.shape.dim) == out_rank
    x = RNG.normal(size=data).astype(np.float32)
    three_way(m, {"x": x, "i": np.zeros(indices, np.int64)})
