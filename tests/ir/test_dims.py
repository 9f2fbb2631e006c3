"""Symbolic dims: canonical form, arithmetic, parsing, evaluation."""

import numpy as np
import pytest

from sbc.ir.dims import Sym, SymbolicError, concretize, evaluate, parse_dim

B, T = Sym.var("batch"), Sym.var("seq")


def test_canonical_form_makes_equal_expressions_equal():
    assert B * T == T * B
    assert hash(B * T) == hash(T * B)
    assert (T + 1) - 1 == T
    assert T - T == 0 and isinstance(T - T, int)


def test_exact_division_only():
    assert (B * T * 64) // 64 == B * T
    assert (B * T) // T == B
    assert (4 * T + 8) // 4 == T + 2
    with pytest.raises(SymbolicError, match="exactly"):
        (2 * T + 1) // 2
    with pytest.raises(SymbolicError):
        T < 5


@pytest.mark.parametrize("text", ["batch", "2*seq + 1", "batch*seq", "past + seq", "-seq + 4"])
def test_print_parse_round_trip(text):
    d = parse_dim(text)
    assert parse_dim(str(d)) == d


def test_parse_rejects_garbage():
    with pytest.raises(SymbolicError):
        parse_dim("seq ** 2")


def test_object_arrays_do_shape_arithmetic():
    shape = np.array([B, T, 64], dtype=object)
    assert list(shape[:2] * 2) == [2 * B, 2 * T]
    assert evaluate(B * T + 3, {"batch": 2, "seq": 5}) == 13
    assert concretize(shape, {"batch": 2, "seq": 5}).tolist() == [2, 5, 64]
