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


# exp_nonpositive's arguments are clamped here: round(-88 / ln 2) = -127, the n whose 2^n
# has exponent bits 0, the float 0.0, so exp is 0 from about -87.68 (where n becomes -127) down
EXP_CLAMP = -88.0
ROUNDING_BIAS = 12582912.0  # 1.5 * 2^23: v + this is round(v) in the low mantissa bits
_BIAS_BITS = 0x4B400000  # ROUNDING_BIAS's bits: the float bits of bias + n are these plus n
# exp(r) ~ 1 + r + r^2 (POLY6 in r) on |r| <= ln 2 / 2, one degree below Cephes' (one FMA
# less): fitted here for the least maximum relative error (3.1e-9, under a float's half ulp
# of 3e-8) by Lawson's reweighted least squares on 4001 Chebyshev nodes, then rounded to float
POLY6 = (1.381459879e-3, 8.368716575e-3, 4.166838899e-2, 1.666652113e-1, 4.999999404e-1)


def exp_nonpositive(x):
    """exp(x) for x <= 0 (and NaN, -inf) as an expression of vector arithmetic: softmax's
    exp(x - max), whose argument is never positive. Without the overflow side, and 0 below
    about -87.68 (where exp is a subnormal under 0.7 FLT_MIN, and 2^n would need two halves),
    it is about half of `lowered_exp`'s instructions. -inf gives exactly 0 (masked scores),
    NaN stays NaN (the clamp is a select that keeps it). Only float32; other dtypes get
    tirx.exp.

    0 comes out of the arithmetic itself, with no select on the result (which kept x alive
    across the polynomial, one register spill per vector): x is clamped to EXP_CLAMP, whose
    n = -127 makes 2^n's bits those of 0.0.

    n = round(x / ln 2) the way MLAS computes it: x / ln 2 + 1.5 * 2^23 is rounded (to nearest
    even) by the addition itself, and the float's low mantissa bits then hold n + 2^22, so one
    FMA gives n both as a float (minus the bias) and, by the float's bits, as the exponent of
    2^n. The float is taken back through its bits: TVM's simplifier would fold (v + c) - c to v.
    The polynomial is POLY6, one degree below Cephes', and ends as r (p r + 1) + 1 (two FMAs;
    p r^2 + r + 1 took three operations)."""
    if str(x.dtype if hasattr(x, "dtype") else x.ty) != "float32":  # a te slice, an expression
        return tirx.exp(x)
    x = x.asobject() if hasattr(x, "asobject") else x
    f = lambda v: tirx.const(v, "float32")  # noqa: E731
    i = lambda v: tirx.const(v, "int32")  # noqa: E731
    clamped = tirx.Select(x < f(EXP_CLAMP), f(EXP_CLAMP), x)  # NaN < c is false: NaN stays
    bits = tirx.reinterpret("int32", clamped * f(LOG2E) + f(ROUNDING_BIAS))
    n = tirx.reinterpret("float32", bits) - f(ROUNDING_BIAS)
    r = clamped - n * f(LN2_HI) - n * f(LN2_LO)
    p = f(POLY6[0])
    for c in POLY6[1:]:
        p = p * r + f(c)
    y = (p * r + f(1.0)) * r + f(1.0)
    # the bits less the bias's are n, in [-127, 0]: n + 127 is the exponent field of 2^n
    # (0 at n = -127: the float 0.0)
    exponent = bits + i(127 - _BIAS_BITS)
    return y * tirx.reinterpret("float32", tirx.shift_left(exponent, i(23)))
