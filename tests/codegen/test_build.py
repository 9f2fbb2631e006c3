"""The build driver: calling convention, symbolic dims, library export, and its errors."""

import numpy as np
import pytest
import tvm
from tvm import relax, te

import sbc
from sbc.codegen import lower
from sbc.codegen.build import BuiltModule, build
from sbc.errors import CompileError, UnsupportedError
from sbc.ir import Graph, Sym, TensorType
from sbc.ir.interpreter import run
from tests.codegen.test_lower import assert_matches, const, outputs, run_built

RNG = np.random.default_rng(1)
BIG = 2 ** 63 - 1


def symbolic_graph():
    """x [batch, seq, 8]: shape arithmetic, symbolic Range/ConstantOfShape/Slice/Split/Concat,
    reductions over seq, a causal score matrix and shape values needed at run time."""
    g = Graph()
    b, s = Sym.var("batch"), Sym.var("seq")
    x = g.add_input("x", TensorType("f32", (b, s, 8)))
    w = g.add_param("w", RNG.normal(size=(8, 4)).astype(np.float32))
    shape = g.add1("Shape", x)
    seq = g.add1("Gather", shape, const(g, 1))
    flat = g.add1("Reshape", x, const(g, [-1, 8]))
    scores = g.add1("MatMul", x, g.add1("Transpose", x, perm=[0, 2, 1]))
    both = g.add1("Concat", x, x, axis=1)
    halves = g.add("Split", [both], {"axis": 1, "num_outputs": 2}).outputs
    named = {
        "proj": g.add1("Softmax", g.add1("MatMul", flat, w)),
        "causal": g.add1("Softmax", g.add1("Trilu", scores, upper=0)),
        "positions": g.add1("Range", const(g, 0), seq, const(g, 1)),
        "mask": g.add1("ConstantOfShape", g.add1("Slice", shape, const(g, [0]), const(g, [2])),
                       value=np.array([1.0], np.float32)),
        "tail": g.add1("Slice", x, const(g, [1]), const(g, [BIG]), const(g, [1])),
        "split": g.add1("Sub", halves[1], halves[0]),
        "mean": g.add1("ReduceMean", x, const(g, [1])),
        "cumsum": g.add1("CumSum", x, const(g, 1)),
        "padded": g.add1("Pad", x, const(g, [0, 2, 0, 0, 1, 0])),
        "shape": shape,  # symbolic: computed from the shape vars at run time
        "size": g.add1("Size", x),
    }
    outputs(g, named)
    return g


def test_symbolic_dims_one_build_two_sizes():
    g = symbolic_graph()
    built = build(g)
    assert [str(d) for d in built.inputs[0][1].shape] == ["batch", "seq", "8"]
    for batch, seq in [(1, 3), (2, 6)]:
        feeds = {"x": RNG.normal(size=(batch, seq, 8)).astype(np.float32)}
        got, want = run_built(built, feeds), run(g, feeds)
        for name in want:
            assert_matches(got[name], want[name], name)
        assert got["shape"].tolist() == [batch, seq, 8] and got["size"] == batch * seq * 8


def test_calling_convention_and_export(tmp_path):
    """main(inputs..., params...) returns a tuple even for one output; weights are not in the
    library, which loads back from disk and runs."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (Sym.var("n"), 256)))
    w = g.add_param("w", RNG.normal(size=(256, 256)).astype(np.float32))  # 256 KiB
    bias = g.add_param("bias", RNG.normal(size=(256,)).astype(np.float32))
    outputs(g, {"y": g.add1("Relu", g.add1("Add", g.add1("MatMul", x, w), bias))})
    built = build(g)
    assert isinstance(built, BuiltModule)
    assert built.param_names == ["w", "bias"] and set(built.params) == {"w", "bias"}
    assert [n for n, _ in built.outputs] == ["y"]
    assert built.target["kind"] == "cpu" and "cpu" in built.target
    path = tmp_path / "lib.so"
    built.executable.export_library(str(path))
    assert path.stat().st_size < 256 * 1024  # the weight would not fit: it is a parameter
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    xv = RNG.normal(size=(5, 256)).astype(np.float32)
    result = vm["main"](*[tvm.runtime.tensor(a) for a in (xv, built.params["w"], built.params["bias"])])
    assert len(result) == 1
    np.testing.assert_allclose(result[0].numpy(), run(g, {"x": xv})["y"], rtol=1e-5, atol=1e-4)


def test_all_compile_time_outputs():
    """A graph whose outputs are all known at compile time still builds (constants)."""
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2, 3)))
    outputs(g, {"shape": g.add1("Shape", x), "x": x})
    xv = np.ones((2, 3), np.float32)
    got = run_built(build(g), {"x": xv})
    assert got["shape"].tolist() == [2, 3] and np.array_equal(got["x"], xv)


def test_missing_lowering_names_op_and_node(monkeypatch):
    monkeypatch.delitem(lower.RULES, "Tanh")
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2,)))
    outputs(g, {"y": g.add1("Tanh", g.add1("Relu", x), name="act7")})
    with pytest.raises(UnsupportedError, match=r"no cpu lowering for op 'Tanh' at node 'act7'.*supported: .*Relu"):
        build(g)


def test_unknown_target():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (2,)))
    outputs(g, {"y": g.add1("Relu", x)})
    with pytest.raises(UnsupportedError, match="target 'tpu'"):
        build(g, target="tpu")


def test_tvm_failure_is_one_line_naming_the_node(monkeypatch):
    """A kernel TVM's LLVM backend rejects (a float compare on bools, as TVM emits for `==` on
    bool) becomes a one-line CompileError naming the kernel, the node and the gist of TVM's
    error; TVM's whole text stays in the chained cause (the CLI's --tvm-log writes it)."""
    def bad(ctx, node, a, b):
        return te.compute(a.shape, lambda *i: a[i] == b[i], name="bad")
    monkeypatch.setitem(lower.RULES, "And", lower.Rule(bad, ()))
    g = Graph()
    p = g.add_input("p", TensorType("bool", (4,)))
    q = g.add_input("q", TensorType("bool", (4,)))
    outputs(g, {"y": g.add1("Not", g.add1("And", p, q, name="both"))})
    with pytest.raises(CompileError) as info:
        build(g)
    message = str(info.value)
    assert "\n" not in message and "node 'both' (And)" in message
    assert "Invalid operand types for FCmp" in message and "--tvm-log" in message
    assert info.value.__cause__ is not None


def test_rule_error_names_the_node(monkeypatch):
    def broken(ctx, node, x):
        raise ValueError("rule bug")
    monkeypatch.setitem(lower.RULES, "Exp", lower.Rule(broken, ()))
    g = Graph()
    x = g.add_input("x", TensorType("f32", (4,)))
    outputs(g, {"y": g.add1("Exp", x, name="e1")})
    with pytest.raises(CompileError, match=r"cannot lower node 'e1' \(Exp\)") as info:
        build(g)
    assert isinstance(info.value.__cause__, ValueError)


def test_symbolic_negative_step_slice():
    g = Graph()
    x = g.add_input("x", TensorType("f32", (Sym.var("seq"), 2)))
    outputs(g, {"y": g.add1("Slice", x, const(g, [BIG]), const(g, [-BIG]), const(g, [0]), const(g, [-1]))})
    assert str(g.outputs[0].shape[0]) == "seq"
    module = sbc.compile(g)
    for seq in (1, 5):
        data = np.arange(seq * 2, dtype=np.float32).reshape(seq, 2)
        np.testing.assert_array_equal(module.run({"x": data})["y"], data[::-1])
