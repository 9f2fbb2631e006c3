"""Input values that would read outside a buffer get one clear error, never a crash or wrong
numbers: gathers are bounds-checked, sizes are checked against every relation between dims
the compiled code relies on (sbc.ir.assumptions), positions are validated, and a module can be
shared by threads."""

import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sbc
from sbc.errors import InputError
from sbc.frontend import import_onnx
from sbc.ir import assumptions
from sbc.ir.registry import collect_assumptions
from sbc.ir.interpreter import run as interpret

F, I64 = TensorProto.FLOAT, TensorProto.INT64


def model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    return m


def ints(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def ort_run(m, feeds):
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


# -- gathers ---------------------------------------------------------------------------------

def gather_model(op, data_shape, idx_shape, **attrs):
    rank = {"Gather": len(data_shape) - 1 + len(idx_shape), "GatherElements": len(idx_shape),
            "GatherND": len(idx_shape) - 1 + len(data_shape) - 2}[op]  # (the cases' GatherND index 2 dims)
    return model([helper.make_node(op, ["x", "i"], ["y"], **attrs)],
                 [helper.make_tensor_value_info("x", F, data_shape),
                  helper.make_tensor_value_info("i", I64, idx_shape)],
                 [helper.make_tensor_value_info("y", F, [f"d{k}" for k in range(rank)])])


GATHERS = [
    ("Gather", [5, 3], ["n"], {"axis": 0}, [0, -5, 4], [1, 5, 0]),
    ("Gather", [2, 4], [2, "m"], {"axis": 1}, [[3, -1], [0, 2]], [[3, -5], [0, 2]]),
    ("GatherElements", [3, 2], [2, 2], {"axis": 0}, [[2, -3], [0, 1]], [[2, 3], [0, 1]]),
    ("GatherND", [3, 4], ["n", 2], {}, [[2, 3], [-1, -4]], [[2, 3], [1, 4]]),
]


@pytest.fixture(scope="module")
def gather_modules():
    return {i: sbc.compile(gather_model(op, ds, ish, **attrs))
            for i, (op, ds, ish, attrs, _, _) in enumerate(GATHERS)}


@pytest.mark.parametrize("case", range(len(GATHERS)), ids=[g[0] for g in GATHERS])
def test_gather_in_range_matches_onnxruntime(case, gather_modules):
    op, data_shape, _, attrs, good, _ = GATHERS[case]
    x = np.arange(np.prod(data_shape), dtype=np.float32).reshape(data_shape)
    feeds = {"x": x, "i": np.asarray(good, np.int64)}
    m = gather_model(op, data_shape, GATHERS[case][2], **attrs)
    np.testing.assert_array_equal(gather_modules[case].run(feeds)["y"], ort_run(m, feeds))


@pytest.mark.parametrize("case", range(len(GATHERS)), ids=[g[0] for g in GATHERS])
def test_gather_out_of_range_is_an_error_like_onnxruntime(case, gather_modules):
    op, data_shape, idx_shape, attrs, _, bad = GATHERS[case]
    x = np.zeros(data_shape, np.float32)
    feeds = {"x": x, "i": np.asarray(bad, np.int64)}
    with pytest.raises(Exception):  # onnxruntime refuses it too
        ort_run(gather_model(op, data_shape, idx_shape, **attrs), feeds)
    with pytest.raises(InputError, match=r"\(" + op + r"\): index -?\d+ at flat position \d+ of %i "
                       r"is out of range for an axis of size \d+") as e:
        gather_modules[case].run(feeds)
    assert "\n" not in str(e.value)
    graph = import_onnx(gather_model(op, data_shape, idx_shape, **attrs))
    with pytest.raises(InputError, match="out of range"):  # the reference says the same
        interpret(graph, feeds)


@pytest.mark.parametrize("bad", [256, 1000, 10**5, 10**9, 2**31, 2**62, 2**63 - 1, -257, -2**63])
def test_token_ids_out_of_range(tiny_module, bad):
    ids = np.array([[1, 2, bad]], np.int64)
    message = f"index {bad} at flat position 2 of %ids is out of range for an axis of size 256"
    with pytest.raises(InputError, match=message):
        tiny_module.run({"ids": ids})
    with pytest.raises(InputError, match=message):
        tiny_module.session().prefill(ids)


def test_token_ids_at_the_edges_run(tiny_module):
    ids = np.array([[0, 255, -1, -256]], np.int64)
    same = np.array([[0, 255, 255, 0]], np.int64)
    np.testing.assert_array_equal(tiny_module.run({"ids": ids})["logits"],
                                  tiny_module.run({"ids": same})["logits"])


def test_cli_run_and_generate_refuse_bad_ids(tiny_module, tmp_path):
    from sbc.cli import main
    artifact = tmp_path / "tiny.sbc"
    tiny_module.save(artifact)
    np.savez(tmp_path / "in.npz", ids=np.array([[1, 100000]], np.int64))
    assert main(["run", artifact, "--inputs", tmp_path / "in.npz"]) == 2
    assert main(["generate", artifact, "--prompt-ids", "1,2,1000000000", "-n", "2"]) == 2


def test_cli_error_is_one_line(tiny_module, tmp_path, capsys):
    from sbc.cli import main
    artifact = tmp_path / "tiny.sbc"
    tiny_module.save(artifact)
    main(["generate", artifact, "--prompt-ids", "1,-300", "-n", "1"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "index -300" in err


# -- sizes the compiled code relies on ---------------------------------------------------------

def matmul_model():
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    return model([helper.make_node("MatMul", ["x", "W"], ["y"])],
                 [helper.make_tensor_value_info("x", F, [2, "K"])],
                 [helper.make_tensor_value_info("y", F, [2, 3])], [w])


def test_symbolic_dim_equal_to_a_constant_is_checked():
    module = sbc.compile(matmul_model())
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(module.run({"x": x})["y"], x @ np.arange(12).reshape(4, 3))
    for k in (5, 3, 10**7):
        with pytest.raises(InputError, match=rf"input 'x' axis 1: K = {k}, but node '\S+' "
                                             r"\(MatMul\) was compiled for K == 4"):
            module.run({"x": np.zeros((2, k), np.float32)})
    assert module.manifest["assumptions"] == [
        {"lhs": "K", "rel": "==", "rhs": "4", "where": "node 'MatMul_0' (MatMul)",
         "why": "MatMul inner dims"}]


def test_broadcast_of_a_symbolic_dim_against_a_constant_is_checked():
    m = model([helper.make_node("Add", ["a", "b"], ["y"])],
              [helper.make_tensor_value_info("a", F, ["n"]), helper.make_tensor_value_info("b", F, [4])],
              [helper.make_tensor_value_info("y", F, [4])])
    module = sbc.compile(m)
    b = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(module.run({"a": b, "b": b})["y"], 2 * b)
    with pytest.raises(InputError, match="n = 1, but .* was compiled for n == 4"):
        module.run({"a": np.ones(1, np.float32), "b": b})


def slice_model(shape, starts, ends, axes, steps=None):
    names, inits = ["x", "s", "e", "a"], [ints("s", starts), ints("e", ends), ints("a", axes)]
    if steps is not None:
        names, inits = names + ["st"], inits + [ints("st", steps)]
    return model([helper.make_node("Slice", names, ["y"])],
                 [helper.make_tensor_value_info("x", F, shape)],
                 [helper.make_tensor_value_info("y", F, [f"o{k}" for k in range(len(shape))])],
                 inits)


# (input shape, starts, ends, axes, steps, the output's symbolic dim): each clamps at some of
# the sizes below, where ONNX's result is shorter than the unclamped slice
SYMBOLIC_SLICES = [
    (["batch", "seq", 4], [0], [8], [1], None, "min(seq, 8)"),
    (["seq"], [2], [2**63 - 1], [0], None, "max(seq - 2, 0)"),
    (["seq"], [-3], [2**63 - 1], [0], None, "min(seq, 3)"),
    (["seq"], [-6], [4], [0], None, None),  # the start clamps below seq = 6, the end above 4
    (["seq"], [-100], [-1], [0], None, "max(min(seq - 1, 99), 0)"),  # a start beyond the axis
    (["seq"], [5], [-2**63], [0], [-1], "min(seq, 6)"),  # a negative step
    (["seq"], [5], [-100], [0], [-1], None),
    (["seq", 2], [-2, 1], [-9, 2], [0, 1], [-2, 1], None),
    (["seq"], [1], [7], [0], [3], None),
]


@pytest.mark.parametrize("case", SYMBOLIC_SLICES, ids=lambda c: f"{c[1]}:{c[2]}:{c[4]}")
def test_slice_on_a_symbolic_axis_clamps_as_onnxruntime(case):
    shape, starts, ends, axes, steps, out_dim = case
    m = slice_model(shape, starts, ends, axes, steps)
    module, graph = sbc.compile(m), import_onnx(m)
    assert module.manifest["assumptions"] == []  # nothing to refuse: exact at every size
    if out_dim is not None:
        assert str(graph.outputs[0].shape[axes[0] if shape[0] == "batch" else 0]) == out_dim
    for seq in (0, 1, 2, 3, 5, 7, 8, 10, 12):
        sizes = {"batch": 2, "seq": seq}
        x = np.random.default_rng(seq).normal(size=[sizes.get(d, d) for d in shape]).astype(np.float32)
        want = ort_run(m, {"x": x})
        np.testing.assert_array_equal(module.run({"x": x})["y"], want, err_msg=f"seq = {seq}")
        np.testing.assert_array_equal(interpret(graph, {"x": x})["y"], want)


def test_slice_bounds_from_shapes_must_not_be_negative():
    """x[:, n - 4:] with n from another input's shape: whether ONNX adds seq to the start
    depends on its sign at run time, so a negative one is refused (with one line)."""
    m = model([helper.make_node("Shape", ["z"], ["n"]), helper.make_node("Sub", ["n", "four"], ["s"]),
               helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])],
              [helper.make_tensor_value_info("x", F, ["seq"]), helper.make_tensor_value_info("z", F, ["n"])],
              [helper.make_tensor_value_info("y", F, ["m"])],
              [ints("four", [4]), ints("e", [2**63 - 1]), ints("a", [0])])
    module = sbc.compile(m)
    feeds = {"x": np.arange(6, dtype=np.float32), "z": np.zeros(5, np.float32)}
    np.testing.assert_array_equal(module.run(feeds)["y"], ort_run(m, feeds))
    with pytest.raises(InputError, match="n = 3, but node .* was compiled for n >= 4 "
                                         r"\(Slice indices computed from shapes are not negative\)"):
        module.run({**feeds, "z": np.zeros(3, np.float32)})


def test_collect_lists_each_open_relation_once():
    graph = import_onnx(model(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["x", "W"], ["h2"]),
         helper.make_node("Add", ["h", "h2"], ["y"])],
        [helper.make_tensor_value_info("x", F, [2, "K"])], [helper.make_tensor_value_info("y", F, [2, 3])],
        [numpy_helper.from_array(np.ones((4, 3), np.float32), "W")]))
    found = collect_assumptions(graph)
    assert [str(a) for a in found] == ["K == 4"] and found[0].where.endswith("(MatMul)")


def test_provable_relations_are_not_recorded():
    from sbc.ir.dims import parse_dim
    assert assumptions.provable(parse_dim("seq + 1"), ">=", parse_dim("seq")) is True
    assert assumptions.provable(parse_dim("seq"), "==", parse_dim("seq")) is True
    assert assumptions.provable(3, "==", 4) is False
    assert assumptions.provable(parse_dim("seq"), ">=", 8) is None


# -- positions and threads ---------------------------------------------------------------------

@pytest.mark.parametrize("position", [-1, -2**63, 2**40, 2**63 - 1])
def test_positions_out_of_range_are_refused(tiny_module, position):
    state = tiny_module.initial_state({"batch": 1})
    state[tiny_module.recurrent["position"]] = np.asarray(position, np.int64)
    with pytest.raises(InputError, match=f"position {position} is out of range"):
        tiny_module.step({"ids": np.array([[1, 2]], np.int64)}, state)


def test_a_saved_state_with_a_bad_position_is_refused(tiny_module, tmp_path):
    session = tiny_module.session()
    session.prefill(np.array([[1, 2, 3]]))
    session.state[tiny_module.recurrent["position"]] = np.asarray(-1, np.int64)
    session.save_state(tmp_path / "state.npz")
    session.reset()
    session.load_state(tmp_path / "state.npz")
    with pytest.raises(InputError, match="position -1 is out of range"):
        session.decode(np.array([4]))


def test_threads_share_one_module(tiny_module):
    rng = np.random.default_rng(0)
    feeds = [{"ids": rng.integers(0, 256, size=(1, 9)).astype(np.int64)} for _ in range(4)]
    expected = [tiny_module.run(f)["logits"] for f in feeds]
    results, errors = {}, []

    def work(k):
        try:
            for _ in range(5):
                results[k] = tiny_module.run(feeds[k % 4])["logits"]
                assert np.array_equal(results[k], expected[k % 4])
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8
