"""exp on the CPU as vector arithmetic: every float32 `tirx.exp` -> a polynomial LLVM vectorises.

TVM lowers `exp` for llvm targets to the `llvm.exp` intrinsic, which LLVM turns into one scalar
`expf` library call per lane: a vectorised softmax or SiLU loop stalls on them (about 4 ns per
value here, 8 times the arithmetic around it). This lowering, registered for the llvm target
above TVM's own, computes exp the way vector math libraries do (Cephes' expf):

    n = round(x / ln 2),  r = x - n ln 2 (ln 2 split in two for precision),  |r| <= ln 2 / 2
    exp(x) = p(r) * 2^n,  p a degree-7 polynomial,  2^n built from its exponent bits

in two halves of n so that subnormal results and results up to FLT_MAX stay exact. Measured
over [-110, 90] and random values: at most 1 ulp from the correctly rounded value in the
normal range; NaN stays NaN, +inf and anything past 88.72 give inf, -inf and anything below
-103.97 give 0. Other dtypes keep `llvm.exp`.
"""

from __future__ import annotations

from tvm import tirx

LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = LN2_HI + LN2_LO; LN2_HI * n is exact
LOG2E = 1.4426950408889634
POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
        1.6666665459e-1, 5.0000001201e-1)  # Cephes expf: p(r) = 1 + r + r^2 (POLY in r)
OVERFLOW, UNDERFLOW = 88.72283, -103.97208  # exp is inf above, 0 below (in float32)


def lowered_exp(call):
    """The lowering of one `tirx.exp` call (scalar or vector)."""
    dtype = call.ty.dtype
    x = call.args[0]
    if not str(dtype).startswith("float32"):
        return tirx.call_llvm_pure_intrin(dtype, "llvm.exp", x)
    lanes = int(dtype.lanes)
    f = lambda v: _splat(tirx.const(v, "float32"), lanes)
    i = lambda v: _splat(tirx.const(v, "int32"), lanes)
    clamped = tirx.max(tirx.min(x, f(OVERFLOW)), f(UNDERFLOW))
    n = tirx.floor(clamped * f(LOG2E) + f(0.5))
    r = clamped - n * f(LN2_HI) - n * f(LN2_LO)
    p = f(POLY[0])
    for c in POLY[1:]:
        p = p * r + f(c)
    y = p * r * r + r + f(1.0)
    whole = tirx.Cast("int32" if lanes == 1 else f"int32x{lanes}", n)
    half = tirx.shift_right(whole, i(1))  # 2^n = 2^half * 2^(n - half): both in range
    two_to = lambda k: tirx.reinterpret(dtype, tirx.shift_left(k + i(127), i(23)))
    value = y * two_to(half) * two_to(whole - half)
    value = tirx.Select(x < f(UNDERFLOW), f(0.0), value)
    value = tirx.Select(x > f(OVERFLOW), f(float("inf")), value)
    return tirx.Select(tirx.isnan(x), x, value)


def _splat(c, lanes: int):
    return c if lanes == 1 else tirx.Broadcast(c, lanes)


_registered = False


def register() -> None:
    """Make llvm builds of this process lower exp as above (TVM's own rule has level 10)."""
    global _registered
    if not _registered:
        tirx.register_intrin_lowering("tirx.exp", "llvm", f=lowered_exp, level=99)
        _registered = True


EXP_NORMAL_MIN = -87.33654  # ln(FLT_MIN): below, exp(x) is subnormal or 0


def exp_nonpositive(x):
    """exp(x) for x <= 0 (and NaN, -inf) as an expression of vector arithmetic: softmax's
    exp(x - max), whose argument is never positive. Without the overflow side and with results
    below FLT_MIN (1.2e-38) flushed to 0 (the subnormal range needs 2^n in two halves), it is
    about 2/3 of `lowered_exp`'s instructions, the same polynomial. -inf gives exactly 0
    (masked scores), NaN stays NaN (the clamp is a select that keeps it). Only float32; other
    dtypes get tirx.exp."""
    if str(x.dtype if hasattr(x, "dtype") else x.ty) != "float32":  # a te slice, an expression
        return tirx.exp(x)
    x = x.asobject() if hasattr(x, "asobject") else x
    f = lambda v: tirx.const(v, "float32")  # noqa: E731
    i = lambda v: tirx.const(v, "int32")  # noqa: E731
    low = x < f(EXP_NORMAL_MIN)
    clamped = tirx.Select(low, f(EXP_NORMAL_MIN), x)  # NaN < c is false: NaN stays
    # n = round(x / ln 2) as a truncating conversion of x / ln 2 - 0.5 (x <= 0). Not floor:
    # a rounding call would make the schedules treat the kernel as one that must keep the
    # reference's summation order; not (v + 1.5 * 2^23) - 1.5 * 2^23: TVM folds it to v
    whole = tirx.Cast("int32", clamped * f(LOG2E) - f(0.5))
    n = tirx.Cast("float32", whole)
    r = clamped - n * f(LN2_HI) - n * f(LN2_LO)
    p = f(POLY[0])
    for c in POLY[1:]:
        p = p * r + f(c)
    y = p * r * r + r + f(1.0)
    scale = tirx.reinterpret("float32", tirx.shift_left(whole + i(127), i(23)))
    return tirx.Select(low, f(0.0), y * scale)
