"""Hypothesis strategies for small random ONNX opset-18 graphs and inputs to run them on.

`cases()` draws a `Case`: a model of a few ops (a chain, or a small DAG when an op takes an
earlier value as its second operand) over graph inputs whose dims are static or named
("batch", "seq", "n"), and the arrays to feed it. Each named dim has a nominal size, which the
graph's constants are built for (a Slice end, a Reshape target, a constant operand), and a
run-time size, which is usually the same but sometimes not: that is how the fuzzer feeds a
symbolic dim a size the constants do not expect. Values include 0, -0.0, negatives, large
values, NaN and inf; Gather indices include negative and out-of-range ones.

Every value the builder makes is a graph output unless a later op consumes it, so no op is
dead code that the compiler could drop unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
F32, I32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64, TensorProto.BOOL
NP = {F32: np.float32, I32: np.int32, I64: np.int64, BOOL: np.bool_}
SYMBOLS = ("batch", "seq", "n")
MAX_DIM = 5
BIG = 2**62  # "past the end" for Slice, as exporters write it (INT64_MAX is also common)

# values worth hitting on purpose; NaN and inf only when the example allows them
SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e3, -1e3, 1e4, -1e4, 1e-30]
NONFINITE = [float("nan"), float("inf"), float("-inf")]
BIG_INTS = [2**31, -2**31 - 1, 2**33 + 1, 2**40]  # int64 values past int32


@dataclass
class Tensor:
    name: str
    dtype: int
    dims: tuple  # per axis: an int, or a symbol name (its size is the symbol's nominal size)


@dataclass
class Case:
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]

    def describe(self) -> str:
        """The graph as ONNX text and the inputs, for a failure message."""
        with np.printoptions(threshold=60, precision=5):
            feeds = "\n".join(f"  {k}: {v.dtype}{list(v.shape)} = {v!r}" for k, v in self.feeds.items())
        return f"{onnx.printer.to_text(self.model.graph)}\ninputs:\n{feeds}"


@dataclass
class Builder:
    """Collects nodes, initializers and graph inputs while a strategy draws a graph."""
    draw: object
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    inputs: list = field(default_factory=list)   # Tensors that are graph inputs
    values: list = field(default_factory=list)   # every Tensor an op may read
    consumed: set = field(default_factory=set)
    nominal: dict = field(default_factory=dict)  # symbol -> size the constants assume
    runtime: dict = field(default_factory=dict)  # symbol -> size fed at run time
    feeds: dict = field(default_factory=dict)
    allow_nonfinite: bool = False
    counter: int = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def size(self, d) -> int:
        """The nominal size of a dim: what the graph's constants are built for."""
        return self.nominal[d] if isinstance(d, str) else d

    def shape(self, t: Tensor) -> tuple[int, ...]:
        return tuple(self.size(d) for d in t.dims)

    def const(self, array, dtype: int | None = None) -> str:
        array = np.asarray(array, dtype=NP[dtype] if dtype is not None else None)
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list, dtype: int, dims, **attrs) -> Tensor:
        """Add `op`; Tensor operands count as consumed (string operands are constants)."""
        names = []
        for x in inputs:
            if isinstance(x, Tensor):
                self.consumed.add(x.name)
                names.append(x.name)
            else:
                names.append(x)
        out = Tensor(self.fresh(op.lower() + "_"), dtype, tuple(dims))
        self.nodes.append(helper.make_node(op, names, [out.name], name=out.name, **attrs))
        self.values.append(out)
        return out

    def symbol_for(self, size: int) -> str:
        """A dim name: an existing symbol (any nominal size) or a new one of this size."""
        name = self.draw(st.sampled_from(SYMBOLS))
        if name not in self.nominal:
            self.nominal[name] = size
            # usually fed the size the graph assumes; sometimes another (0 included), which the
            # graph's constants may then disagree with
            self.runtime[name] = size if self.draw(st.integers(0, 3)) else self.draw(st.integers(0, MAX_DIM + 2))
        return name

    def input(self, dtype: int, dims, values=None) -> Tensor:
        """A new graph input with these dims (symbol names stay symbolic) and its feed."""
        t = Tensor(self.fresh("in"), dtype, tuple(dims))
        self.inputs.append(t)
        self.values.append(t)
        shape = tuple(self.runtime[d] if isinstance(d, str) else d for d in dims)
        self.feeds[t.name] = self.draw(values if values is not None else array_of(dtype, shape, self.allow_nonfinite))
        return t

    def model(self) -> onnx.ModelProto:
        outputs = [t for t in self.values if t.name not in self.consumed and t not in self.inputs]
        # outputs declare their rank only: with a named dim fed a size the constants do not
        # expect, the nominal sizes would be wrong
        graph = helper.make_graph(
            self.nodes, "fuzz",
            [helper.make_tensor_value_info(t.name, t.dtype, list(t.dims)) for t in self.inputs],
            [helper.make_tensor_value_info(t.name, t.dtype, [None] * len(t.dims)) for t in outputs],
            initializer=self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 10  # onnxruntime 1.31 reads IR versions up to 10
        return model


# -- values ------------------------------------------------------------------------------------

def float_elements(allow_nonfinite: bool):
    specials = SPECIAL_FLOATS + (NONFINITE if allow_nonfinite else [])
    # no subnormals: whether they are flushed to zero is the implementation's choice (ORT
    # flushes -1e-45 to -0.0, NumPy keeps it, and Sqrt then gives -0.0 or NaN)
    return st.one_of(st.floats(-4, 4, width=32, allow_subnormal=False), st.sampled_from(specials))


def array_of(dtype: int, shape, allow_nonfinite=False, elements=None):
    """A strategy for an array of `dtype` and `shape`."""
    if elements is None:
        elements = {F32: float_elements(allow_nonfinite),
                    I64: st.integers(-6, 6) | st.sampled_from(BIG_INTS),
                    I32: st.integers(-6, 6),
                    BOOL: st.booleans()}[dtype]
    # every element drawn (no fill value): uniform arrays would hide wrong indexing
    return hnp.arrays(NP[dtype], tuple(shape), elements=elements, fill=st.nothing())


def index_elements(size: int):
    """Gather indices: mostly valid (negative ones too), sometimes out of range either way."""
    return st.one_of(st.integers(-size, size - 1) if size else st.just(0),
                     st.sampled_from([size, size + 1, -size - 1, -size - 3, 2**31]))


# -- graph inputs ------------------------------------------------------------------------------

def draw_dims(b: Builder, rank: int) -> tuple:
    """Dims for a new input: sizes 1..MAX_DIM (length-1 axes often), some of them named."""
    dims = []
    for _ in range(rank):
        size = b.draw(st.sampled_from([1, 2, 3, 4, 5]))
        dims.append(b.symbol_for(size) if b.draw(st.integers(0, 2)) == 0 else size)
    return tuple(dims)


def like(b: Builder, t: Tensor) -> tuple:
    """Dims broadcastable against t's: a suffix of t's dims, some set to 1, a named dim
    sometimes replaced by its nominal size (a constant the symbol must then equal)."""
    keep = b.draw(st.integers(0, len(t.dims)))
    dims = []
    for d in t.dims[len(t.dims) - keep:]:
        choice = b.draw(st.integers(0, 5))
        if choice == 0:
            d = 1
        elif choice == 1 and isinstance(d, str):
            d = b.nominal[d]
        dims.append(d)
    return tuple(dims)


# -- ops ---------------------------------------------------------------------------------------
# Each op builder takes the builder and the value it applies to and returns the new value, or
# None when the op does not apply to that value (wrong dtype or rank).

UNARY_FLOAT = ["Relu", "Exp", "Log", "Sigmoid", "Tanh", "Sqrt", "Abs", "Neg"]
BINARY = ["Add", "Mul", "Sub", "Div", "Max", "Min"]


def op_unary(b: Builder, x: Tensor, op: str):
    if x.dtype != F32 and not (x.dtype in (I32, I64) and op in ("Abs", "Neg")):
        return None
    return b.node(op, [x], x.dtype, x.dims)


def operand(b: Builder, x: Tensor):
    """A second operand broadcastable against x: an earlier value of the same dtype and
    shape (a DAG), a new graph input, or a constant (scalars 0 and -0.0 included)."""
    same = [t for t in b.values if t.dtype == x.dtype and t.dims == x.dims and t is not x]
    kind = b.draw(st.integers(0, 3))
    if kind == 0 and same:
        return b.draw(st.sampled_from(same)), x.dims
    dims = like(b, x)
    if kind == 1:
        return b.input(x.dtype, dims), dims
    shape = tuple(b.size(d) for d in dims)
    return b.const(b.draw(array_of(x.dtype, shape, b.allow_nonfinite)), x.dtype), dims


def broadcast(a: tuple, c: tuple) -> tuple:
    """Result dims of broadcasting (named dims win over 1; equal sizes keep a's dim)."""
    a, c = (1,) * (len(c) - len(a)) + tuple(a), (1,) * (len(a) - len(c)) + tuple(c)
    return tuple(q if p == 1 else p for p, q in zip(a, c))


def op_binary(b: Builder, x: Tensor, op: str):
    # integer Div by zero traps (SIGFPE) in onnxruntime itself: Div is fuzzed on floats only
    if x.dtype not in (F32, I32, I64) or (op == "Div" and x.dtype != F32):
        return None
    y, ydims = operand(b, x)
    args = [y, x] if b.draw(st.booleans()) else [x, y]  # the constant or input on either side
    return b.node(op, args, x.dtype, broadcast(x.dims, ydims))


def op_where(b: Builder, x: Tensor, op: str):
    if x.dtype not in (F32, I64):
        return None
    y, ydims = operand(b, x)
    if x.dtype == F32 and b.draw(st.booleans()):
        cond = b.node("Greater", [x, b.const(np.float32(b.draw(st.sampled_from([0.0, 1.0, -0.5]))))],
                      BOOL, x.dims)
        cdims = x.dims
    else:
        cdims = like(b, x)
        cond = b.input(BOOL, cdims)
    out_dims = broadcast(broadcast(cdims, x.dims), ydims)
    return b.node("Where", [cond, x, y], x.dtype, out_dims)


def op_clip(b: Builder, x: Tensor, op: str):
    if x.dtype not in (F32, I64):
        return None
    lo, hi = b.draw(st.sampled_from([(-1.0, 1.0), (0.0, 6.0), (-0.0, 0.0), (None, 0.5),
                                     (-2.0, None), (None, None), (1e-3, 1e4)]))
    np_t = NP[x.dtype]
    args = [x, "" if lo is None else b.const(np_t(lo)), "" if hi is None else b.const(np_t(hi))]
    while args[-1] == "":  # trailing optional inputs are left out, not named ""
        args.pop()
    return b.node("Clip", args, x.dtype, x.dims)


def op_cast(b: Builder, x: Tensor, op: str):
    if x.dtype == F32:
        to = b.draw(st.sampled_from([BOOL, I64, I32, F32]))
        if to in (I64, I32):
            # float -> int is undefined for NaN, inf and values out of range: clean those first
            nan = b.node("IsNaN", [x], BOOL, x.dims)
            x = b.node("Where", [nan, b.const(np.float32(0)), x], F32, x.dims)
            x = b.node("Clip", [x, b.const(np.float32(-1e4)), b.const(np.float32(1e4))], F32, x.dims)
    else:
        to = b.draw(st.sampled_from([F32, I64, BOOL]))
    return b.node("Cast", [x], to, x.dims, to=to)


def op_matmul(b: Builder, x: Tensor, op: str):
    """x @ w: w a constant [K, N], or a new input whose batch dims are x's (batched matmul)."""
    if x.dtype != F32 or not x.dims:
        return None
    batch, rows, k = x.dims[:-2], x.dims[-2:-1], x.dims[-1]  # rows: () for a vector x
    n = b.draw(st.sampled_from([1, 2, 3, 4]))
    if len(x.dims) >= 2 and b.draw(st.booleans()):
        w = b.input(F32, batch + (k, n))
    else:
        w = b.const(b.draw(array_of(F32, (b.shape(x)[-1], n))), F32)
    return b.node("MatMul", [x, w], F32, batch + rows + (n,))


def op_gemm(b: Builder, x: Tensor, op: str):
    if x.dtype != F32 or len(x.dims) != 2:
        return None
    trans_a = b.draw(st.integers(0, 1))
    m, k = (x.dims[1], x.dims[0]) if trans_a else x.dims
    n = b.draw(st.sampled_from([1, 2, 3]))
    trans_b = b.draw(st.integers(0, 1))
    w_shape = (n, b.size(k)) if trans_b else (b.size(k), n)
    w = b.const(b.draw(array_of(F32, w_shape)), F32)
    args = [x, w]
    if b.draw(st.booleans()):
        bias_shape = b.draw(st.sampled_from([(n,), (1, n), ()]))
        args.append(b.const(b.draw(array_of(F32, bias_shape)), F32))
    alpha, beta = b.draw(st.sampled_from([(1.0, 1.0), (0.5, -2.0), (-1.0, 0.0)]))
    return b.node("Gemm", args, F32, (m, n), transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)


def factorizations(total: int) -> list[tuple[int, ...]]:
    """Shapes of up to 3 dims with this many elements."""
    out = [(total,)]
    for a in range(1, total + 1):
        if total % a == 0:
            out.append((a, total // a))
            for c in range(1, total // a + 1):
                if (total // a) % c == 0:
                    out.append((a, c, total // a // c))
    return out


def op_reshape(b: Builder, x: Tensor, op: str):
    shape = b.shape(x)
    total = int(np.prod(shape))
    if total == 0:
        return None
    target = list(b.draw(st.sampled_from(factorizations(total))))
    if b.draw(st.booleans()):
        target[b.draw(st.integers(0, len(target) - 1))] = -1  # inferred from the run-time size
    if len(target) <= len(shape) and b.draw(st.integers(0, 3)) == 0:
        target[0] = 0  # 0 copies the input's dim (at run time)
    dims = [x.dims[i] if d == 0 else d for i, d in enumerate(target)]  # the result's dims
    if -1 in dims:
        known = int(np.prod([b.size(d) for d in dims if d != -1]))
        dims[dims.index(-1)] = total // known if known else 0
    return b.node("Reshape", [x, b.const(np.array(target, np.int64))], x.dtype, dims)


def op_transpose(b: Builder, x: Tensor, op: str):
    if len(x.dims) < 2:
        return None
    perm = b.draw(st.permutations(range(len(x.dims))))
    return b.node("Transpose", [x], x.dtype, [x.dims[p] for p in perm], perm=list(perm))


def op_slice(b: Builder, x: Tensor, op: str):
    if not x.dims:
        return None
    shape = b.shape(x)
    rank = len(shape)
    axes = b.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    starts, ends, steps, dims = [], [], [], list(x.dims)
    for a in axes:
        n = shape[a]
        step = b.draw(st.sampled_from([1, 1, 2, -1, -2, 3]))
        bounds = st.one_of(st.integers(-n - 2, n + 3), st.sampled_from([BIG, -BIG, 8]))
        start, end = b.draw(bounds), b.draw(bounds)
        starts.append(start), ends.append(end), steps.append(step)
        dims[a] = len(range(n)[slice(start, end, step)])  # Python clamps like ONNX Slice
    # axes sometimes negative, sometimes left out (then they are 0..len-1)
    if axes == list(range(len(axes))) and b.draw(st.booleans()):
        args_axes = []
    else:
        args_axes = [a - rank if b.draw(st.booleans()) else a for a in axes]
    args = [x, b.const(np.array(starts, np.int64)), b.const(np.array(ends, np.int64))]
    if args_axes or steps != [1] * len(steps):
        args.append(b.const(np.array(args_axes or list(range(len(axes))), np.int64)))
    if steps != [1] * len(steps):
        args.append(b.const(np.array(steps, np.int64)))
    return b.node("Slice", args, x.dtype, dims)


REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2",
          "ReduceLogSumExp"]


def op_reduce(b: Builder, x: Tensor, op: str):
    if not x.dims or not (x.dtype == F32 or x.dtype == I64 and op in ("ReduceSum", "ReduceMax", "ReduceMin")):
        return None
    rank = len(x.dims)
    keepdims = b.draw(st.integers(0, 1))
    args = [x]
    if b.draw(st.integers(0, 4)) == 0:
        axes = list(range(rank))  # no axes input: reduce over everything
    else:
        axes = b.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
        args.append(b.const(np.array([a - rank if b.draw(st.booleans()) else a for a in axes], np.int64)))
    dims = [1 if i in axes else d for i, d in enumerate(x.dims) if keepdims or i not in axes]
    return b.node(op, args, x.dtype, dims, keepdims=keepdims)


def op_softmax(b: Builder, x: Tensor, op: str):
    if x.dtype != F32 or not x.dims:
        return None
    rank = len(x.dims)
    return b.node("Softmax", [x], F32, x.dims, axis=b.draw(st.integers(-rank, rank - 1)))


def op_concat(b: Builder, x: Tensor, op: str):
    if not x.dims:
        return None
    rank = len(x.dims)
    axis = b.draw(st.integers(-rank, rank - 1))
    others, dims = [], list(x.dims)
    sizes = [b.shape(x)[axis]]
    for _ in range(b.draw(st.integers(1, 2))):
        if b.draw(st.booleans()):
            others.append(x)
            sizes.append(sizes[0])
        else:
            odims = list(x.dims)
            odims[axis] = b.draw(st.sampled_from([1, 2, 3]))
            sizes.append(odims[axis])
            shape = tuple(b.size(d) for d in odims)
            if b.draw(st.booleans()):
                others.append(b.input(x.dtype, odims))
            else:
                others.append(b.const(b.draw(array_of(x.dtype, shape, b.allow_nonfinite)), x.dtype))
    dims[axis] = sum(sizes)
    return b.node("Concat", [x] + others, x.dtype, dims, axis=axis)


def op_gather(b: Builder, x: Tensor, op: str):
    if not x.dims:
        return None
    rank = len(x.dims)
    axis = b.draw(st.integers(-rank, rank - 1))
    size = b.shape(x)[axis]
    if b.draw(st.booleans()):
        # indices fed at run time, valid or not for the axis's run-time size
        idims = draw_dims(b, b.draw(st.integers(0, 2)))
        d = x.dims[axis]
        run_size = b.runtime[d] if isinstance(d, str) else d
        idx = b.input(I64, idims, array_of(I64, tuple(b.runtime.get(e, e) for e in idims),
                                           elements=index_elements(run_size)))
    else:
        idims = tuple(b.draw(st.lists(st.integers(1, 3), max_size=2)))
        idx = b.const(b.draw(array_of(I64, idims, elements=index_elements(size))), I64)
    dims = x.dims[:axis % rank] + idims + x.dims[axis % rank + 1:]
    return b.node("Gather", [x, idx], x.dtype, dims, axis=axis)


def op_unsqueeze(b: Builder, x: Tensor, op: str):
    rank = len(x.dims) + b.draw(st.integers(1, 2))
    if rank > 5:
        return None
    axes = b.draw(st.lists(st.integers(0, rank - 1), min_size=rank - len(x.dims),
                           max_size=rank - len(x.dims), unique=True))
    rest = iter(x.dims)
    dims = [1 if i in axes else next(rest) for i in range(rank)]
    signed = [a - rank if b.draw(st.booleans()) else a for a in axes]
    return b.node("Unsqueeze", [x, b.const(np.array(signed, np.int64))], x.dtype, dims)


def op_squeeze(b: Builder, x: Tensor, op: str):
    ones = [i for i, s in enumerate(b.shape(x)) if s == 1]
    if not ones:
        return None
    rank = len(x.dims)
    if b.draw(st.integers(0, 3)) == 0:
        axes, args = ones, [x]  # no axes: every length-1 axis (nominal sizes; run time may differ)
    else:
        axes = b.draw(st.lists(st.sampled_from(ones), min_size=1, unique=True))
        args = [x, b.const(np.array([a - rank if b.draw(st.booleans()) else a for a in axes], np.int64))]
    return b.node("Squeeze", args, x.dtype, [d for i, d in enumerate(x.dims) if i not in axes])


def op_expand(b: Builder, x: Tensor, op: str):
    shape = b.shape(x)
    extra = b.draw(st.integers(0, 2 if len(shape) < 4 else 0))
    target = [b.draw(st.sampled_from([1, 2, 3])) for _ in range(extra)]
    for s in shape:  # a length-1 axis may grow; any axis may be given as 1 (kept)
        target.append(b.draw(st.sampled_from([s, 1, 2, 4] if s == 1 else [s, 1])))
    dims = list(target[:extra]) + [t if s == 1 and t != 1 else d
                                   for d, s, t in zip(x.dims, shape, target[extra:])]
    return b.node("Expand", [x, b.const(np.array(target, np.int64))], x.dtype, dims)


# one flat list of (builder, op), drawn uniformly, so that every op is about as likely
OPS = ([(op_unary, o) for o in UNARY_FLOAT] + [(op_binary, o) for o in BINARY]
       + [(op_reduce, o) for o in REDUCE]
       + [(op_reshape, "Reshape"), (op_transpose, "Transpose"), (op_slice, "Slice"),
          (op_slice, "Slice"), (op_matmul, "MatMul"), (op_gemm, "Gemm"), (op_softmax, "Softmax"),
          (op_concat, "Concat"), (op_gather, "Gather"), (op_gather, "Gather"), (op_where, "Where"),
          (op_cast, "Cast"), (op_clip, "Clip"), (op_unsqueeze, "Unsqueeze"),
          (op_squeeze, "Squeeze"), (op_expand, "Expand")])


@st.composite
def cases(draw, max_ops: int = 4) -> Case:
    """A random graph of 1..max_ops ops (plus helper ops) and feeds for it."""
    b = Builder(draw)
    b.allow_nonfinite = draw(st.integers(0, 4)) == 0
    dtype = draw(st.sampled_from([F32, F32, F32, I64]))
    b.input(dtype, draw_dims(b, draw(st.sampled_from([1, 2, 3, 4, 0]))))
    for _ in range(draw(st.integers(1, max_ops))):
        # usually the latest value (a chain), sometimes an earlier one (a DAG)
        x = b.values[-1] if draw(st.integers(0, 3)) else draw(st.sampled_from(b.values))
        for _attempt in range(4):  # the op drawn may not apply to x (dtype, rank)
            build, op = draw(st.sampled_from(OPS))
            if build(b, x, op) is not None:
                break
    if len(b.values) == len(b.inputs):  # no op applied: at least one node
        b.node("Identity", [b.values[-1]], b.values[-1].dtype, b.values[-1].dims)
    return Case(b.model(), b.feeds)
