"""The fuzz judge's float tolerance: it allows the rounding a computation's intermediate values
imply (a sum of large terms that cancels), and nothing more (tests/fuzz/rounding.py)."""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest

from sbc.frontend import import_onnx
from sbc.ir.interpreter import run
from tests.fuzz.check import Result, judge
from tests.fuzz.rounding import error_scales

HEADER = '<ir_version: 10, opset_import: ["" : 18]>\n'
CANCELLING_SUM = """
    g (float[2,3] x) => (float[2] y) <int64[1] axes = {1}> {
        y = ReduceSum <keepdims = 0> (x, axes)
    }"""
ROWS = np.array([[1e8, 1, -1e8], [3, -2, 0.5]], np.float32)


def verdict(text: str, feeds: dict, sbc_gives: dict) -> str:
    """The judge's outcome when ORT (and the references) compute what the interpreter does and
    sbc gives `sbc_gives`."""
    graph = import_onnx(onnx.parser.parse_model(HEADER + text))
    want = run(graph, feeds)
    scales = error_scales(graph, feeds)
    results = {"ort": Result(arrays=want), "sbc": Result(arrays=sbc_gives),
               "interpreter": Result(arrays=want, scales=scales),
               "onnx_reference": Result(arrays=want)}
    return judge(results).kind


def test_scales_are_the_magnitudes_that_feed_each_value():
    graph = import_onnx(onnx.parser.parse_model(HEADER + CANCELLING_SUM))
    np.testing.assert_allclose(error_scales(graph, {"x": ROWS})["y"], [2e8 + 1, 5.5])
    matmul = import_onnx(onnx.parser.parse_model(HEADER + """
        g (float[1,2] a, float[2,1] b) => (float[1,1] y) {
            y = MatMul (a, b)
        }"""))
    a, b = np.array([[3, -4]], np.float32), np.array([[2], [1.5]], np.float32)
    # the errors of a and b carried through, the sum's own rounding, the result's
    np.testing.assert_allclose(error_scales(matmul, {"a": a, "b": b})["y"], [[3 * 12 + 0]])


def test_rounding_of_a_cancelling_sum_is_a_match():
    """In float32, (1e8 + 1) - 1e8 is 0 and (1e8 - 1e8) + 1 is 1: a summation order."""
    assert run(import_onnx(onnx.parser.parse_model(HEADER + CANCELLING_SUM)), {"x": ROWS})["y"][0] == 0
    assert verdict(CANCELLING_SUM, {"x": ROWS}, {"y": np.array([1.0, 1.5], np.float32)}) == "match"


@pytest.mark.parametrize("wrong", [[1e5, 1.5], [0.0, 1.5 + 1e-3]])
def test_errors_past_the_rounding_are_failures(wrong):
    """1e5 is past what the cancelling row's terms allow (RTOL * 2e8, for a rounding of about
    eps * 2e8 = 24); 1e-3 past the other row's (its terms are small), however large the first
    row's terms are."""
    assert verdict(CANCELLING_SUM, {"x": ROWS}, {"y": np.array(wrong, np.float32)}) == "failure"


def test_a_small_value_beside_a_large_one_is_held_to_its_own_size():
    """Nothing cancels in 2 x: each element may be off by its own rounding only, not by the
    output's largest value's (which would hide a wrong small element)."""
    text = """
        g (float[2] x) => (float[2] y) <float two = {2}> {
            y = Mul (x, two)
        }"""
    x = np.array([1e4, 1e-3], np.float32)
    assert verdict(text, {"x": x}, {"y": np.array([2e4, 2e-3], np.float32)}) == "match"
    assert verdict(text, {"x": x}, {"y": np.array([2e4, 2.5e-3], np.float32)}) == "failure"


def test_amplified_errors_are_allowed_where_the_math_amplifies_them():
    """1 / tanh(x) near 0 magnifies tanh's rounding (1 / x^2); a 10% error is still a bug."""
    text = """
        g (float[1] x) => (float[1] y) <float one = {1}> {
            t = Tanh (x)
            y = Div (one, t)
        }"""
    x = np.array([-1e-7], np.float32)
    assert verdict(text, {"x": x}, {"y": np.array([-1e7 * (1 + 1e-6)], np.float32)}) == "match"
    assert verdict(text, {"x": x}, {"y": np.array([-1.1e7], np.float32)}) == "failure"
