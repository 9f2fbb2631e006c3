"""ScatterElements and ScatterND: declarations (sbc.ir.ops.shape), cpu lowering
(sbc.codegen.lower.shape) and their run-time index checks (sbc.codegen.index_checks), compared
with onnxruntime. Cases share a few compiled models (one node and one output per case):
compiling, not running, is what costs time."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

import sbc
from sbc.errors import InputError, SbcError
from sbc.frontend import import_onnx
from sbc.ir.interpreter import run as interpret

RNG = np.random.default_rng(7)
ONNX_DTYPES = {np.float32: TP.FLOAT, np.int32: TP.INT32, np.int64: TP.INT64}


def _targets(rng, size, count, unique):
    """`count` indices into an axis of `size`, half of them negative; distinct if `unique`."""
    picked = rng.permutation(size)[:count] if unique else rng.integers(0, size, count)
    return np.where(rng.random(count) < 0.5, picked - size, picked)


def elements_case(data_shape, idx_shape, axis, reduction, dtype=np.float32, unique=None):
    """Feeds of one ScatterElements case; unique: no duplicate target (default: for 'none',
    whose order ONNX leaves open)."""
    unique = reduction == "none" if unique is None else unique
    axis_size = data_shape[axis]
    idx = np.empty(idx_shape, np.int64)
    for pos in np.ndindex(*(d for k, d in enumerate(idx_shape) if k != axis)):
        at = list(pos)
        at.insert(axis, slice(None))
        idx[tuple(at)] = _targets(RNG, axis_size, idx_shape[axis], unique)
    return {"x": _values(data_shape, dtype), "i": idx, "u": _values(idx_shape, dtype)}


def nd_case(data_shape, n, k, reduction, dtype=np.float32, idx_dtype=np.int64, lead=()):
    """Feeds of one ScatterND case: `lead + (n,)` index tuples of k entries."""
    count = int(np.prod(lead, dtype=np.int64)) * n
    unique = reduction == "none"
    space = int(np.prod(data_shape[:k], dtype=np.int64))
    flat = RNG.permutation(space)[:count] if unique else RNG.integers(0, space, count)
    idx = np.stack(np.unravel_index(flat, data_shape[:k]), axis=-1) if k else np.zeros((count, 0), np.int64)
    idx = np.where(RNG.random(idx.shape) < 0.5, idx - np.array(data_shape[:k]), idx)
    idx = idx.reshape(tuple(lead) + (n, k)).astype(idx_dtype)
    upd_shape = tuple(lead) + (n,) + tuple(data_shape[k:])
    return {"x": _values(data_shape, dtype), "i": idx, "u": _values(upd_shape, dtype)}


def _values(shape, dtype):
    if dtype == np.float32:
        return RNG.uniform(0.5, 1.5, shape).astype(dtype) * RNG.choice([-1, 1], shape).astype(dtype)
    return RNG.integers(-5, 6, shape).astype(dtype)


# (op, attrs, feeds, symbolic shapes of x / i / u or None for the feeds' static ones)
CASES = [
    ("ScatterElements", {"axis": 0}, elements_case((4, 3), (2, 3), 0, "none"), None),
    ("ScatterElements", {"axis": 1}, elements_case((3, 5), (3, 2), 1, "none"), None),
    ("ScatterElements", {"axis": -1, "reduction": "add"},
     elements_case((2, 3, 4), (2, 3, 6), 2, "add"), None),
    ("ScatterElements", {"axis": 1, "reduction": "mul"},
     elements_case((2, 4, 3), (2, 5, 2), 1, "mul"), None),
    ("ScatterElements", {"axis": 0, "reduction": "max"}, elements_case((5,), (7,), 0, "max"), None),
    ("ScatterElements", {"axis": 0, "reduction": "min"},
     elements_case((3, 2), (4, 2), 0, "min", dtype=np.int64), None),
    ("ScatterElements", {"axis": 1, "reduction": "add"},  # symbolic batch, smaller indices
     elements_case((3, 6), (3, 4), 1, "add"), (["B", 6], ["B", 4], ["B", 4])),
    ("ScatterND", {}, nd_case((4, 3), 2, 1, "none"), None),
    ("ScatterND", {}, nd_case((4, 3, 2), 5, 2, "none"), None),
    ("ScatterND", {}, nd_case((3, 4), 4, 2, "none", dtype=np.int32), None),
    ("ScatterND", {"reduction": "add"}, nd_case((4, 3, 2), 6, 1, "add", lead=(2,)), None),
    ("ScatterND", {"reduction": "mul"}, nd_case((2, 3, 4), 5, 3, "mul"), None),
    ("ScatterND", {"reduction": "max"}, nd_case((6, 2), 8, 1, "max"), None),
    ("ScatterND", {"reduction": "min"}, nd_case((3, 3, 2), 4, 2, "min", dtype=np.int64), None),
    ("ScatterND", {}, nd_case((2, 3), 1, 0, "none"), None),  # k = 0: the whole tensor
    ("ScatterND", {}, nd_case((2, 5, 3), 2, 2, "none"),  # out[:, t] = h style, symbolic T
     (["B", "T", 3], [2, 2], [2, 3])),
]


def scatter_model(cases, symbolic=True) -> onnx.ModelProto:
    nodes, inputs, outputs = [], [], []
    for c, (op, attrs, feeds, shapes) in enumerate(cases):
        names = [f"{n}{c}" for n in ("x", "i", "u")]
        typed = []
        for k, name in enumerate(names):
            shape = shapes[k] if shapes and symbolic else list(feeds[name[0]].shape)
            shape = [f"{d}{c}" if isinstance(d, str) else d for d in shape]  # per-case dims
            typed.append(h.make_tensor_value_info(name, ONNX_DTYPES[feeds[name[0]].dtype.type], shape))
        inputs += typed
        nodes.append(h.make_node(op, names, [f"y{c}"], name=f"{op.lower()}{c}", **attrs))
        outputs.append(h.make_tensor_value_info(f"y{c}", typed[0].type.tensor_type.elem_type,
                                                [d.dim_value or d.dim_param for d in
                                                 typed[0].type.tensor_type.shape.dim]))
    graph = h.make_graph(nodes, "scatter", inputs, outputs)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=10)


def all_feeds(cases):
    return {f"{n}{c}": v for c, (_, _, feeds, _) in enumerate(cases) for n, v in feeds.items()}


def ort_run(m, feeds):
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("scatter") / "scatter.onnx"
    onnx.save(scatter_model(CASES), path)
    return sbc.compile(str(path), target="cpu")


def assert_same(got, want, name):
    assert got.dtype == want.dtype and got.shape == want.shape, name
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_matches_onnxruntime(compiled):
    feeds = all_feeds(CASES)
    want = ort_run(scatter_model(CASES), feeds)
    got = compiled.run(feeds)
    for name in want:
        assert_same(got[name], want[name], name)
    ref = interpret(import_onnx(scatter_model(CASES)), feeds)  # the NumPy reference agrees
    for name in want:
        assert_same(np.asarray(ref[name]), want[name], f"reference {name}")


def test_symbolic_dims_at_other_sizes(compiled):
    """The symbolic cases at other sizes (the others keep theirs)."""
    cases = list(CASES)
    cases[6] = (*CASES[6][:2], elements_case((5, 6), (5, 4), 1, "add"), CASES[6][3])
    cases[15] = (*CASES[15][:2], nd_case((3, 9, 3), 2, 2, "none"), CASES[15][3])
    cases[15][2]["i"][:] = [[-3, 8], [1, 0]]
    feeds = all_feeds(cases)
    want = ort_run(scatter_model(cases, symbolic=False), feeds)
    got = compiled.run(feeds)
    for name in want:
        assert_same(got[name], want[name], name)


def test_duplicates_without_reduction_last_write_wins(compiled):
    """ONNX leaves the order open; sbc (kernel and reference) applies updates in order."""
    feeds = all_feeds(CASES)
    feeds["i0"] = np.array([[1, 2, 3], [1, -2, -1]])  # column 0: row 1 twice, and so on
    feeds["i7"] = np.array([[2], [-2]])  # ScatterND: row 2 twice
    got = compiled.run(feeds)
    want0 = feeds["x0"].copy()
    for r in range(2):
        for col in range(3):
            want0[feeds["i0"][r, col], col] = feeds["u0"][r, col]
    want7 = feeds["x7"].copy()
    want7[2] = feeds["u7"][1]
    np.testing.assert_array_equal(got["y0"], want0)
    np.testing.assert_array_equal(got["y7"], want7)
    ref = interpret(import_onnx(scatter_model(CASES)), feeds)
    np.testing.assert_array_equal(ref["y0"], want0)
    np.testing.assert_array_equal(ref["y7"], want7)


@pytest.mark.parametrize("case, bad, at, size", [
    (0, [[4, 0, 0], [1, 2, 3]], 0, 4),  # ScatterElements axis 0, past the end
    (1, [[0, 1], [-6, 2], [3, 4]], 2, 5),  # axis 1, before the start
    (8, [[0, 0], [1, 2], [3, 2], [2, 1], [0, 3]], 9, 3),  # ScatterND, second component
    (11, [[0, 0, 0], [1, 2, 3], [1, 0, 0], [1, 1, 1], [0, 0, -5]], 14, 4),
])
def test_out_of_range_is_an_input_error(compiled, case, bad, at, size):
    cases = list(CASES)
    feeds = all_feeds(cases)
    feeds[f"i{case}"] = np.asarray(bad, feeds[f"i{case}"].dtype)
    value = np.asarray(bad).reshape(-1)[at]
    op = CASES[case][0]
    with pytest.raises(Exception):  # onnxruntime refuses it too
        ort_run(scatter_model(CASES, symbolic=False), feeds)
    with pytest.raises(InputError, match=rf"\({op}\): index {value} at flat position {at} of "
                       rf"%i{case} is out of range for an axis of size {size}") as e:
        compiled.run(feeds)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="out of range"):  # the reference says the same
        interpret(import_onnx(scatter_model(CASES)), feeds)
    feeds[f"i{case}"] = np.asarray(CASES[case][2]["i"])
    compiled.run(feeds)  # still works after the error


@pytest.mark.parametrize("op, shapes, attrs, message", [
    ("ScatterElements", ([4, 3], [2], [2]), {}, "rank of data"),
    ("ScatterElements", ([4, 3], [2, 3], [2, 2]), {}, "updates"),
    ("ScatterElements", ([4, 3], [2, 4], [2, 4]), {}, "larger than data"),
    ("ScatterElements", ([4, 3], [2, 3], [2, 3]), {"reduction": "sum"}, "reduction"),
    ("ScatterND", ([4, 3], [2, 3], [2]), {}, "index 3 dims"),
    ("ScatterND", ([4, 3], [2, 1], [2, 4]), {}, "updates"),
])
def test_invalid_shapes_are_refused(op, shapes, attrs, message):
    inputs = [h.make_tensor_value_info(n, TP.INT64 if n == "i" else TP.FLOAT, s)
              for n, s in zip("xiu", shapes)]
    graph = h.make_graph([h.make_node(op, ["x", "i", "u"], ["y"], **attrs)], "bad", inputs,
                         [h.make_tensor_value_info("y", TP.FLOAT, shapes[0])])
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 18)], ir_version=10)
    with pytest.raises(SbcError, match=message):
        import_onnx(m)


@pytest.mark.parametrize("form", ["time", "chunks"])
def test_torch_loops_writing_slices(tmp_path, form):
    """`out[:, t] = h` for t in range(T) (T = 6), and `o[..., i*C:(i+1)*C] = ...` over chunks,
    in Python loops that the exporter unrolls into ScatterND writes."""
    torch = pytest.importorskip("torch")

    class Loop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):  # x: [B, T, 4]
            out = torch.zeros_like(x)
            state = torch.zeros_like(x[:, 0])
            for t in range(x.shape[1]):
                state = torch.tanh(self.proj(x[:, t]) + 0.5 * state)
                out[:, t] = state
            return out

    class Chunks(torch.nn.Module):
        def forward(self, x):  # x: [B, H, T, 8], chunks of C = 4 channels
            o = torch.zeros_like(x)
            for i in range(2):
                o[..., i * 4:(i + 1) * 4] = torch.relu(x[..., i * 4:(i + 1) * 4]) * (i + 1)
            return o

    torch.manual_seed(0)
    module, shape = (Loop(), (2, 6, 4)) if form == "time" else (Chunks(), (2, 3, 6, 8))
    path = tmp_path / "loop.onnx"
    torch.onnx.export(module.eval(), (torch.randn(*shape),), str(path), dynamo=False,
                      opset_version=18, input_names=["x"], output_names=["y"])
    m = onnx.load(str(path))
    assert "ScatterND" in {n.op_type for n in m.graph.node}
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}
    got = sbc.compile(str(path), target="cpu").run(feeds)["y"]
    np.testing.assert_allclose(got, ort_run(m, feeds)["y"], rtol=1e-5, atol=1e-5)
