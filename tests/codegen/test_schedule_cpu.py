"""sbc's CPU schedules: results stay exact, and the kernels really are parallel and vectorised
(so the test fails if scheduling silently stops applying)."""

import numpy as np
import pytest
from tvm import tirx

import sbc
from sbc.codegen.build import fuse, to_relax
from sbc.codegen.schedule_cpu import schedule_func
from sbc.ir import Graph, Sym, TensorType
from sbc.ir.interpreter import run


def graph_of(kind):
    g = Graph()
    m = Sym.var("m")
    if kind == "matmul":
        x = g.add_input("x", TensorType("f32", (m, 64)))
        w = g.add_param("w", np.random.default_rng(0).normal(size=(64, 96)).astype(np.float32))
        b = g.add_param("b", np.random.default_rng(1).normal(size=(96,)).astype(np.float32))
        y = g.add1("Relu", g.add1("Add", g.add1("MatMul", x, w), b))
    elif kind == "batched-matmul":
        x = g.add_input("x", TensorType("f32", (2, m, 32)))
        y = g.add1("MatMul", x, g.add1("Transpose", x, perm=[0, 2, 1]))
    elif kind == "elementwise":
        x = g.add_input("x", TensorType("f32", (m, 37)))
        y = g.add1("Mul", g.add1("Sigmoid", x), g.add1("Tanh", x))
    else:  # row reductions
        x = g.add_input("x", TensorType("f32", (m, 40)))
        y = g.add1("Softmax", g.add1("Mul", x, g.add1("ReduceMean", x, g.add1("Constant", value=np.array([1])))))
    g.set_outputs([y], ["y"])
    return g


def scheduled_scripts(g):
    mod = fuse(to_relax(g))
    return [schedule_func(f).script() for _, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]


@pytest.mark.parametrize("kind", ["matmul", "batched-matmul", "elementwise", "reduction"])
def test_schedules_apply_and_results_are_exact(kind):
    g = graph_of(kind)
    scripts = scheduled_scripts(g)
    assert all("T.parallel" in s for s in scripts)
    if kind != "reduction":
        assert any("T.vectorized" in s for s in scripts)
    module = sbc.compile(g, passes=[])
    for rows in (1, 13):
        shape = [rows if isinstance(d, Sym) else d for d in g.inputs[0].shape]
        x = np.random.default_rng(rows).normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(module.run({"x": x})["y"], run(g, {"x": x})["y"], rtol=1e-5, atol=1e-5)
