"""SpikeMatMul on the CPU: Y = (counts * scale) @ W (+ bias), rows [..., K] flattened to M.

int8 weights (W [N/16, K/2, 16, 2], W_scale [G, N]): a register tile of R = 6 rows x 16
columns of int32 sums. Per pair of input channels (k, k+1) the pair of 16-bit counts of a row
is broadcast and multiplied with the 16 columns' weight pairs (sign-extended to 16 bits) by
`vpmaddwd` (AVX2: 8 x (a0 b0 + a1 b1) per instruction, twice the multiplies of an fp32 FMA),
or by `vpdpwssd` (AVX-512 VNNI / AVX-VNNI: the same with the accumulate fused). After each
group of `group` channels the int32 tile is converted and added, times the group's weight
scales, to an f32 tile; the row scale and bias are applied once when the tile is stored.
Column panels run in parallel (each panel's weights, K x 16 bytes, stay in L1). Without AVX2
the same loops multiply in plain int32 (LLVM vectorises them as it can): slower, same result.
i8 counts are widened to 16-bit pairs per row tile first.

Zero-tile skipping (node attribute kernel = "skip_zero_tiles"): a tile is the R rows x `group`
input channels that one int32 accumulation covers. A first parallel loop marks, per (row tile,
group), whether any count in it is nonzero; the main loops then skip the multiply-adds and the
scaled add of every all-zero tile. Bit-identical to the dense kernel: a zero tile's int32 sum
is 0 and adding +-0.0 to the f32 tile changes nothing (it starts at +0.0 and a sum of finite
floats never becomes -0.0). It pays only when many tiles are all zero (spike-sparsity measures
where).

f32 weights (W [N/16, K, 16]): counts as floats times W, the TE matmul that sbc's CPU schedule
tiles (schedule_cpu's matmul rule), then * scale + bias: exact integers times f32 weights.
"""

from __future__ import annotations

from functools import reduce

from tvm import te, tirx
from tvm.script import tirx as T

from sbc.codegen.schedule_cpu import schedule_func
from sbc.codegen.target import host_cpu_features

ROWS = 6  # rows of the int32 register tile: 6 x 2 accumulators + 2 weight vectors + 1 count
PANEL = 16


def integer_dot_instruction(features: list[str] | None = None) -> str:
    """'vnni' (vpdpwssd), 'avx2' (vpmaddwd) or 'portable' for this CPU."""
    features = host_cpu_features()["features"] if features is None else features
    if "avx512vnni" in features or "avxvnni" in features:
        return "vnni"
    return "avx2" if "avx2" in features else "portable"


def _lead_vars(rank: int) -> list:
    return [tirx.Var(f"m{d}", "int64") for d in range(rank - 1)]


def spike_matmul_kernel(node, instruction: str | None = None):
    """PrimFunc(counts, scale, W, W_scale, bias, Y) for a SpikeMatMul node; absent W_scale and
    bias are 1-element placeholders."""
    counts, _, w = node.inputs[:3]
    has_bias = len(node.inputs) > 4 and node.inputs[4] is not None
    k = int(counts.shape[-1])
    n = int(w.shape[0]) * PANEL
    if w.dtype == "f32":
        return float_kernel(counts.type.rank, counts.dtype, k, n, has_bias)
    return int8_kernel(counts.type.rank, counts.dtype, k, n, node.attrs["group"], has_bias,
                       instruction or integer_dot_instruction(),
                       skip_zero_tiles=node.attrs["kernel"] == "skip_zero_tiles")


def float_kernel(rank: int, counts_dtype: str, k: int, n: int, has_bias: bool):
    lead = _lead_vars(rank)
    dtype = {"i8": "int8", "i16": "int16"}[counts_dtype]
    a = te.placeholder(lead + [k], dtype, name="counts")
    scale = te.placeholder(lead + [1], "float32", name="scale")
    w = te.placeholder([n // PANEL, k, PANEL], "float32", name="W")
    w_scale = te.placeholder([1], "float32", name="W_scale")
    bias = te.placeholder([n] if has_bias else [1], "float32", name="bias")
    r = te.reduce_axis((0, k), name="k")
    mm = te.compute(lead + [n], lambda *i: te.sum(
        a[i[:-1] + (r,)].astype("float32") * w[i[-1] // PANEL, r, i[-1] % PANEL], axis=r),
        name="spike_matmul")

    def epilogue(*i):
        y = mm[i] * scale[i[:-1] + (0,)]
        return y + bias[i[-1]] if has_bias else y
    y = te.compute(lead + [n], epilogue, name="spike_matmul_out")
    # private, like the TVMScript kernels: the build names it (a "main" symbol would clash)
    func = te.create_prim_func([a, scale, w, w_scale, bias, y]).without_attr("global_symbol")
    return schedule_func(func) or func


def _pmadd(instruction: str, acc, a, b):
    """acc (int32x8) + pairwise a * b (int16x16)."""
    if instruction == "vnni":
        return T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx512.vpdpwssd.256", acc, a, b)
    return acc + T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", a, b)


def int8_kernel(rank: int, counts_dtype: str, k: int, n: int, group: int, has_bias: bool,
                instruction: str, skip_zero_tiles: bool = False):
    lead = _lead_vars(rank)
    m = reduce(lambda x, y: x * y, lead, tirx.IntImm("int64", 1))
    pairs, panels, groups = k // 2, n // PANEL, -(-k // group)
    tiles = (m + ROWS - 1) // ROWS
    pairs_per_group = group // 2
    dtype = {"i8": "int8", "i16": "int16"}[counts_dtype]
    wide = counts_dtype == "i16"  # 16-bit counts are read as int32 pairs in place
    bias_shape = (n,) if has_bias else (1,)
    vector = instruction != "portable"

    @T.prim_func(private=True)
    def kernel(a_h: T.handle, s_h: T.handle, w_h: T.handle, ws_h: T.handle, b_h: T.handle,
               y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        A = T.match_buffer(a_h, (*lead, k), dtype)
        S = T.match_buffer(s_h, (*lead, 1), "float32")
        W = T.match_buffer(w_h, (panels, pairs, PANEL, 2), "int8")
        WS = T.match_buffer(ws_h, (groups, n), "float32")
        B = T.match_buffer(b_h, bias_shape, "float32")
        Y = T.match_buffer(y_h, (*lead, n), "float32")
        A2 = T.decl_buffer((m, k), dtype, data=A.data)
        A32 = T.decl_buffer((m, pairs), "int32", data=A.data)  # (n_2p, n_2p+1) as one int32
        S1 = T.decl_buffer((m,), "float32", data=S.data)
        W1 = T.decl_buffer((panels, pairs, 2 * PANEL), "int8", data=W.data)
        Y2 = T.decl_buffer((m, n), "float32", data=Y.data)
        if skip_zero_tiles:  # once for all panels: is any count of the tile nonzero?
            live = T.alloc_buffer((tiles * groups,), "int32")
            for it in T.parallel(tiles):
                for g in range(groups):
                    live[it * groups + g] = 0
                    for r, kk in T.grid(ROWS, T.min(group, k - g * group)):
                        row = T.min(it * ROWS + r, m - 1)
                        live[it * groups + g] = T.bitwise_or(
                            live[it * groups + g], T.Cast("int32", A2[row, g * group + kk] != 0))
        for jp in T.parallel(panels):
            acc = T.alloc_buffer((ROWS * PANEL,), "int32", scope="local")
            ftile = T.alloc_buffer((ROWS * PANEL,), "float32", scope="local")
            pair = T.alloc_buffer((ROWS * pairs,), "int32", scope="local")
            for it in range((m + ROWS - 1) // ROWS):
                i0 = it * ROWS
                for r, c in T.grid(ROWS, PANEL):
                    ftile[r * PANEL + c] = T.float32(0)
                if not wide:  # widen this row tile's i8 counts to 16-bit pairs once
                    for r, p in T.grid(ROWS, pairs):
                        row = T.min(i0 + r, m - 1)
                        pair[r * pairs + p] = T.bitwise_or(
                            T.bitwise_and(T.Cast("int32", A2[row, 2 * p]), 0xFFFF),
                            T.shift_left(T.Cast("int32", A2[row, 2 * p + 1]), 16))
                for g in range(groups):
                    if not skip_zero_tiles or live[it * groups + g] != 0:
                        for r in T.unroll(ROWS):
                            for c in T.vectorized(PANEL):
                                acc[r * PANEL + c] = 0
                        for p in range(g * pairs_per_group,
                                       T.min((g + 1) * pairs_per_group, pairs)):
                            if vector:
                                lo = T.Cast("int16x16", W1[jp, p, T.ramp(0, 1, 16)])
                                hi = T.Cast("int16x16", W1[jp, p, T.ramp(16, 1, 16)])
                                for r in T.unroll(ROWS):
                                    row = T.min(i0 + r, m - 1)  # a short last tile repeats a row
                                    both = A32[row, p] if wide else pair[r * pairs + p]
                                    ab = T.reinterpret("int16x16", T.Broadcast(both, 8))
                                    acc[T.ramp(r * PANEL, 1, 8)] = _pmadd(
                                        instruction, acc[T.ramp(r * PANEL, 1, 8)], ab, lo)
                                    acc[T.ramp(r * PANEL + 8, 1, 8)] = _pmadd(
                                        instruction, acc[T.ramp(r * PANEL + 8, 1, 8)], ab, hi)
                            else:
                                for r in T.unroll(ROWS):
                                    row = T.min(i0 + r, m - 1)
                                    for c in T.vectorized(PANEL):
                                        acc[r * PANEL + c] = acc[r * PANEL + c] + (
                                            T.Cast("int32", A2[row, 2 * p]) * T.Cast("int32", W[jp, p, c, 0])
                                            + T.Cast("int32", A2[row, 2 * p + 1]) * T.Cast("int32", W[jp, p, c, 1]))
                        for r in T.unroll(ROWS):
                            for c in T.vectorized(PANEL):
                                ftile[r * PANEL + c] = ftile[r * PANEL + c] + T.Cast(
                                    "float32", acc[r * PANEL + c]) * WS[g, jp * PANEL + c]
                for r in range(ROWS):
                    if i0 + r < m:
                        for c in T.vectorized(PANEL):
                            if has_bias:
                                Y2[i0 + r, jp * PANEL + c] = ftile[r * PANEL + c] * S1[i0 + r] + B[jp * PANEL + c]
                            else:
                                Y2[i0 + r, jp * PANEL + c] = ftile[r * PANEL + c] * S1[i0 + r]

    return kernel
