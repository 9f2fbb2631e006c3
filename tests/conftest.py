"""Shared fixtures: the tiny reference model is exported and compiled once per test session."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

# The tests compile to test the compiler: no compile cache (sbc.cache) unless a test asks for
# one (tests/test_compile_cache.py), or an earlier test's artifact would answer for a later one.
os.environ.setdefault("SBC_NO_CACHE", "1")


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    from sbc.models.export import export_onnx
    return export_onnx("tiny", tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_module(tiny_onnx):
    import sbc
    return sbc.compile(tiny_onnx, target="cpu")


@pytest.fixture(scope="session")
def tiny_module_w8(tiny_onnx):
    """The cpu reference for GPU artifacts compiled with --quantize w8."""
    import sbc
    return sbc.compile(tiny_onnx, target="cpu", quantize="w8")


def make_mlp_model(path=None, opset=18) -> onnx.ModelProto:
    """A small hand-built ONNX model: y = relu(x @ W + b) with a symbolic batch dim."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [8, 4], rng.normal(size=32).astype(np.float32))
    b = helper.make_tensor("b", TensorProto.FLOAT, [4], rng.normal(size=4).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
         helper.make_node("Add", ["h", "b"], ["z"], name="add"),
         helper.make_node("Relu", ["z"], ["y"], name="relu")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    if path is not None:
        onnx.save(model, str(path))
    return model


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    make_mlp_model(path)
    return str(path)


@pytest.fixture(scope="session")
def mlp_module(mlp_onnx):
    import sbc
    return sbc.compile(mlp_onnx)


def pytest_addoption(parser):
    """Options of the graph fuzzer (tests/fuzz); without them it runs its fixed CI examples."""
    group = parser.getgroup("fuzz", "graph fuzzer (tests/fuzz)")
    group.addoption("--fuzz-examples", type=int, default=None, metavar="N",
                    help="long mode: N random examples, outcomes counted; failures saved, not stopping the run")
    group.addoption("--fuzz-seed", type=int, default=None, help="long mode: the seed (random if not given)")
    group.addoption("--fuzz-record", default=None, metavar="PATH",
                    help="write outcome counts and failures as JSON here (default: under pytest's tmp dir)")
    group.addoption("--fuzz-shrink", action="store_true",
                    help="long mode: stop at the first failure and let hypothesis shrink it")
