"""codegen.element_aligned_arguments: CPU kernels assume only their element's alignment of an
argument, so the runtime hands a caller's array to them as it is, at any element-aligned
address, instead of copying it to a 64-byte boundary before each call."""

import numpy as np
import pytest
import tvm_ffi
from onnx import TensorProto, helper
from tvm import te, tirx

import sbc
from sbc.codegen.element_aligned_arguments import STORAGE_ALIGNMENT
from sbc.codegen.targets.cpu import CpuTarget
from sbc.runtimes import cpu as cpu_runtime
from tests.codegen.test_serial_when_small import build_lowered


def _lowered_alignments(pipeline: str | None) -> dict[str, set[int]]:
    """The storage_alignment of each argument of a kernel over float32, float16 and int8
    tensors, after the TIR pipeline `pipeline` (None: the cpu target's)."""
    a = te.placeholder((64,), "float32", name="a")
    h = te.placeholder((64,), "float16", name="h")
    b = te.placeholder((64,), "int8", name="b")
    y = te.compute((64,), lambda i: a[i] + h[i].astype("float32") + b[i].astype("float32"),
                   name="y")
    _, bodies = build_lowered(te.create_prim_func([a, h, b, y]), pipeline)
    found = {}
    for body in bodies:
        tvm_ffi.structural_walk(body, (tirx.AttrStmt, lambda s: found.setdefault(
            str(s.node.dtype), set()).add(int(s.value)) if s.attr_key == STORAGE_ALIGNMENT else None))
    return found


def test_arguments_are_declared_aligned_to_their_element():
    tvm_own = {"float32": {64}, "float16": {64}, "int8": {64}}  # what the pass rewrites
    assert _lowered_alignments("default") == tvm_own
    assert _lowered_alignments(None) == {"float32": {4}, "float16": {2}, "int8": {1}}


def _model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])
    q = helper.make_tensor_value_info("q", TensorProto.INT8, ["n", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])
    nodes = [helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "qf"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, q], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


@pytest.fixture(scope="module")
def module():
    return sbc.compile(_model(), cache=False)


def _misaligned(shape, dtype, offset_bytes: int) -> np.ndarray:
    """An array `offset_bytes` past a 64-byte boundary (NumPy's large arrays sit at 16)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    raw = np.empty(count * dtype.itemsize + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset_bytes
    out = raw[start:start + count * dtype.itemsize].view(dtype).reshape(shape)
    assert out.ctypes.data % 64 == offset_bytes
    return out


def test_misaligned_inputs_run_in_place_with_the_same_result(module, monkeypatch):
    rng = np.random.default_rng(0)
    x, q = _misaligned((512, 64), np.float32, 4), _misaligned((512, 64), np.int8, 1)
    x[...] = rng.normal(size=x.shape)
    q[...] = rng.integers(-128, 128, size=q.shape)
    want = x * q.astype(np.float32)
    np.testing.assert_array_equal(module.run({"x": x, "q": q})["y"], want)  # plans the signature
    staged = []
    monkeypatch.setattr(cpu_runtime, "aligned_empty",
                        lambda *a: staged.append(a) or np.empty(*a))  # would be the copy's buffer
    for _ in range(2):
        np.testing.assert_array_equal(module.run({"x": x, "q": q})["y"], want)
    assert staged == []  # 128 KB and 32 KB inputs, neither copied


def test_artifacts_record_it_and_older_ones_still_get_aligned_copies(module, tmp_path):
    assert module.manifest["target"]["argument_alignment"] == "element"
    signature = module._signature
    manifest = {**module.manifest, "target": {**module.manifest["target"]}}
    assert CpuTarget.load(module.library, {}, manifest, **signature).alignment == 0
    del manifest["target"]["argument_alignment"]  # an artifact built before this pass
    old = CpuTarget.load(module.library, {}, manifest, **signature)
    assert old.alignment == 64
    x = _misaligned((512, 64), np.float32, 16)
    x[...] = 2
    q = np.ones((512, 64), np.int8)
    np.testing.assert_array_equal(old.run({"x": x, "q": q})["y"], x)
