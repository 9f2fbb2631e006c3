"""The CPU runtime's call path (issue 18: per-call overhead): inputs go in without a copy where
they can (DLPack), outputs come back over the VM's buffers; neither may alias what the caller
or the runtime still holds, and every input check stays."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import sbc
from sbc.errors import InputError


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


@pytest.fixture(scope="module")
def add():
    return sbc.compile(_model([helper.make_node("Add", ["a", "b"], ["y"])],
                              [_vi("a", ["n", 4]), _vi("b", ["n", 4])], [_vi("y", ["n", 4])]),
                       cache=False)


def test_inputs_of_every_layout_give_the_same_result(add):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 4)).astype(np.float32)
    b = rng.normal(size=(6, 4)).astype(np.float32)
    want = a + b
    big = np.zeros((7, 9), np.float32)
    big[1:, 2:6] = a  # not contiguous
    ro = b.copy()
    ro.setflags(write=False)  # read-only: DLPack cannot take it
    unaligned = np.empty(6 * 4 + 1, np.float32)[1:].reshape(6, 4)
    unaligned[...] = a
    for x, y in [(a, b), (big[1:, 2:6], b), (a, ro), (unaligned, b), (a.tolist(), b)]:
        if isinstance(x, list):
            with pytest.raises(InputError):  # no silent conversion of a list
                add.run({"a": x, "b": y})
            continue
        np.testing.assert_array_equal(add.run({"a": x, "b": y})["y"], want)
    assert add.run({"a": a[:0], "b": b[:0]})["y"].shape == (0, 4)


def test_outputs_are_independent_of_later_calls_and_of_the_inputs(add):
    a = np.ones((3, 4), np.float32)
    first = add.run({"a": a, "b": a})["y"]
    second = add.run({"a": a * 2, "b": a})["y"]
    assert (first == 2).all() and (second == 3).all()
    first[...] = 0  # writing an output touches nothing else
    assert (a == 1).all() and (add.run({"a": a, "b": a})["y"] == 2).all()


def test_an_output_that_is_an_input_or_a_weight_is_a_copy():
    w = np.arange(4, dtype=np.float32)
    m = sbc.compile(_model([helper.make_node("Identity", ["x"], ["y"]),
                            helper.make_node("Identity", ["w"], ["z"])],
                           [_vi("x", [4])], [_vi("y", [4]), _vi("z", [4])],
                           [numpy_helper.from_array(w, "w")]), cache=False)
    x = np.zeros(64, np.float32)[:4]  # 64-byte aligned or not: either way
    out = m.run({"x": x})
    out["y"][...] = 7
    out["z"][...] = 7
    assert (x == 0).all()
    again = m.run({"x": x})
    assert (again["y"] == 0).all() and (again["z"] == w).all()


def test_checks_stay_after_a_signature_was_seen(add):
    a = np.ones((2, 4), np.float32)
    add.run({"a": a, "b": a})  # this signature is now remembered
    with pytest.raises(InputError):
        add.run({"a": a, "b": np.ones((3, 4), np.float32)})  # n disagrees
    with pytest.raises(InputError):
        add.run({"a": a, "b": a.astype(np.float64)})
    with pytest.raises(InputError):
        add.run({"a": a})
    with pytest.raises(InputError):
        add.run({"a": a, "b": a, "c": a})


def test_outputs_stay_safe_after_the_first_calls():
    """From the third call on, fresh outputs come back without a copy; a weight or folded
    constant output still comes back as a copy, and no output aliases another call's."""
    w = np.arange(4, dtype=np.float32)
    m = sbc.compile(_model([helper.make_node("Identity", ["w"], ["z"]),
                            helper.make_node("Add", ["x", "w"], ["y"])],
                           [_vi("x", [4])], [_vi("z", [4]), _vi("y", [4])],
                           [numpy_helper.from_array(w, "w")]), cache=False)
    x = np.ones(4, np.float32)
    outs = [m.run({"x": x * i}) for i in range(5)]
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out["y"], w + i)
        out["z"][...] = -1
    np.testing.assert_array_equal(m.run({"x": x})["z"], w)


def test_planned_signatures_keep_every_output_its_own():
    """A signature seen before runs by its plan: small inputs are copied into buffers the plan
    owns and reuses, large ones go in as they are. An output that is one of those inputs (an
    identity) is still a copy, so a later call (the same signature, or one first seen after
    the program learnt its outputs) never changes what an earlier call returned."""
    m = sbc.compile(_model([helper.make_node("Identity", ["x"], ["y"]),
                            helper.make_node("Add", ["x", "big"], ["z"])],
                           [_vi("x", ["n"]), _vi("big", ["m", "n"])],
                           [_vi("y", ["n"]), _vi("z", ["m", "n"])]), cache=False)
    outs = []
    for i in range(6):
        n = 4 if i < 4 else 8  # a new signature once the outputs were learnt
        x = np.full(n, i, np.float32)
        big = np.full((5000, n), 10 * i, np.float32)  # 80 KB and more: not copied
        outs.append((i, m.run({"x": x, "big": big})))
        x[...] = -1  # the caller's arrays are the caller's
        big[...] = -1
    for i, out in outs:
        assert (out["y"] == i).all() and (out["z"] == 11 * i).all()


def test_threads_sharing_a_planned_signature_get_their_own_results(add):
    import threading
    errors = []

    def work(k):
        a = np.full((2, 4), k, np.float32)
        for _ in range(200):
            if not (add.run({"a": a, "b": a})["y"] == 2 * k).all():
                errors.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
