"""Symbolic dims: canonical form, arithmetic, parsing, evaluation."""

import numpy as np
import pytest

from sbc.ir.dims import (Sym, SymbolicError, concretize, difference, dim_max, dim_min, evaluate,
                         nonnegative, parse_dim, trunc_div)

B, T = Sym.var("batch"), Sym.var("seq")


def test_canonical_form_makes_equal_expressions_equal():
    assert B * T == T * B
    assert hash(B * T) == hash(T * B)
    assert (T + 1) - 1 == T
    assert T - T == 0 and isinstance(T - T, int)


def test_exact_division():
    assert (B * T * 64) // 64 == B * T
    assert (B * T) // T == B
    assert (4 * T + 8) // 4 == T + 2
    with pytest.raises(SymbolicError, match="exactly"):
        (B * T + 1) // T
    with pytest.raises(SymbolicError):
        T < 5


def test_floor_division_by_a_constant_is_a_dim():
    chunks = (T + 63) // 64 + 1  # gla_chunked's chunk count
    assert isinstance(chunks, Sym) and str(chunks) == "(seq + 63) // 64 + 1"
    assert str(64 * chunks) == "64*((seq + 63) // 64) + 64"
    assert [evaluate(chunks, {"seq": n}) for n in (1, 63, 64, 65, 128)] == [2, 2, 2, 3, 3]
    assert evaluate(64 * chunks - T, {"seq": 70}) == 122
    assert chunks.symbols == {"seq"}


def test_floor_division_canonical_form():
    """Whole multiples of the divisor leave the floor; common factors cancel; so quotients
    that are equal for every seq compare equal, and nothing else does."""
    assert (2 * T + 1) // 2 == T
    assert (64 * T + 70) // 64 == T + 1  # the remainder 6 is below 64
    assert (65 * T) // 64 == T + T // 64
    assert (2 * T + 2) // 4 == (T + 1) // 2
    assert hash((T + 63) // 64) == hash((63 + T) // 64)
    assert (T + 63) // 64 != (T + 62) // 64
    assert T // -2 == (-T) // 2
    with pytest.raises(SymbolicError):
        T // 64 < 2


def test_mod_is_python_remainder():
    r = T % 64
    assert r == T - 64 * (T // 64)
    assert [evaluate(r, {"seq": n}) for n in (5, 64, 70)] == [5, 0, 6]
    assert (4 * T) % 2 == 0 and (2 * T + 1) % 2 == 1


@pytest.mark.parametrize("text", ["(seq + 63) // 64", "seq // 64 + 1", "64*((seq + 63) // 64)",
                                  "-((seq + 63) // 64)", "seq*(batch // 3)",
                                  "((seq + 63) // 64 + 1) // 2", "seq % 16"])
def test_floor_division_print_parse_evaluate(text):
    d = parse_dim(text)
    assert parse_dim(str(d)) == d
    for n in (1, 5, 64, 70, 129):
        env = {"seq": n, "batch": 4}
        assert evaluate(d, env) == eval(text, {}, env) == eval(str(d), {}, env)


def test_truncating_division_needs_a_known_sign():
    """ONNX's integer Div truncates: equal to floor division for sizes, unknown otherwise."""
    assert trunc_div(T + 63, 64) == (T + 63) // 64
    assert trunc_div(-7, 2) == -3 and trunc_div(2 * T - 4, 2) == T - 2
    with pytest.raises(SymbolicError, match="sign"):
        trunc_div(T - 100, 64)


@pytest.mark.parametrize("text", ["batch", "2*seq + 1", "batch*seq", "past + seq", "-seq + 4"])
def test_print_parse_round_trip(text):
    d = parse_dim(text)
    assert parse_dim(str(d)) == d


def test_parse_rejects_garbage():
    for text in ("seq ** 2", "min(seq)", "min(seq, 2, 3)", "abs(seq)", "min(seq, key=2)"):
        with pytest.raises(SymbolicError):
            parse_dim(text)


def test_min_max_simplify_where_provable():
    """Symbols are sizes (>= 0): max(0, seq) is seq; min(seq, 8) depends on seq and stays."""
    assert dim_max(0, T) == T and dim_min(T, 0) == 0 and dim_min(3, 5) == 3
    assert dim_min(T, T + 1) == T and dim_max(T - 1, T) == T
    assert str(dim_min(8, T)) == "min(seq, 8)" and dim_min(8, T) == dim_min(T, 8)
    assert hash(dim_min(8, T)) == hash(dim_min(T, 8)) and dim_min(T, 8) != dim_max(T, 8)
    assert str(dim_max(T - 2, 0)) == "max(seq - 2, 0)"
    assert dim_min(dim_max(T - 6, 0), T) == dim_max(T - 6, 0)  # max(seq - 6, 0) <= seq
    assert dim_min(T, 64 * ((T + 63) // 64)) == T  # a whole number of chunks covers seq
    assert dim_max(0, dim_min(T, 8)) == dim_min(T, 8)
    assert dim_min(T - 1, dim_max(T - 1, 0)) == T - 1
    with pytest.raises(SymbolicError):
        dim_min(T, 8) < 8


def test_nonnegative_is_a_proof_not_a_guess():
    assert nonnegative(T) and nonnegative(dim_min(T, 8)) and nonnegative(dim_max(T - 2, 0))
    assert nonnegative(T - dim_min(T, 8)) and nonnegative(8 - dim_min(T, 8))
    assert nonnegative(dim_max(T - 3, 5) - 5) and nonnegative(dim_max(T - 3, 5) + 3 - T)
    assert not nonnegative(T - 1) and not nonnegative(dim_min(T, 8) - 1)
    assert not nonnegative(dim_max(T - 3, 0) - 1) and not nonnegative(dim_min(T - 1, 8))
    assert not nonnegative(T - dim_max(T, B))  # true only where seq >= batch
    assert nonnegative(64 * ((T + 63) // 64) - T) and not nonnegative(64 * ((T + 62) // 64) - T)
    assert not nonnegative(T - 64 * ((T + 63) // 64))


def test_difference_takes_a_lone_min_or_max_apart():
    assert difference(T, dim_max(T - 3, 0)) == dim_min(T, 3)
    assert difference(dim_min(T, 8), 2) == dim_min(T - 2, 6)
    assert difference(dim_min(T, 4), dim_max(T - 6, 0)) == dim_min(T, 4) - dim_max(T - 6, 0)


@pytest.mark.parametrize("text", ["min(seq, 8)", "max(seq - 2, 0)", "2*min(seq, 8) + 1",
                                  "-max(seq - 6, 0) + min(seq, 4)", "max(min(seq - 1, 99), 0)",
                                  "(max(seq - 1, 0) + min(seq, 1) + 1) // 2", "min(seq, batch)*seq"])
def test_min_max_print_parse_evaluate(text):
    d = parse_dim(text)
    assert isinstance(d, Sym) and parse_dim(str(d)) == d and d.symbols <= {"seq", "batch"}
    for n in (0, 1, 5, 8, 70):
        env = {"seq": n, "batch": 4}
        assert evaluate(d, env) == eval(text, {}, env) == eval(str(d), {}, env)


def test_object_arrays_do_shape_arithmetic():
    shape = np.array([B, T, 64], dtype=object)
    assert list(shape[:2] * 2) == [2 * B, 2 * T]
    assert evaluate(B * T + 3, {"batch": 2, "seq": 5}) == 13
    assert concretize(shape, {"batch": 2, "seq": 5}).tolist() == [2, 5, 64]
    chunks = np.array([B, (T + 63) // 64], dtype=object)
    assert concretize(chunks * 64, {"batch": 2, "seq": 70}).tolist() == [128, 128]
