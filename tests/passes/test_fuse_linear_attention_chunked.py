"""fuse-linear-attention, chunked GLA form (linear_attention_chunked_form.py): the chunked
computation that gla_chunked (`sbc export --form chunked`) writes -> LinearAttention; near misses
(wrong decay sign, mask off by one, not causal, another input read) do not fire and say why.
The exported tiny model itself: tests/models/test_export_forms.py."""

import numpy as np
import pytest

from sbc.ir import Graph, TensorType
from sbc.passes.base import explain
from sbc.passes.dce import DeadCodeElimination
from sbc.passes.fuse_linear_attention import RULES, FuseLinearAttention
from tests.passes.attention_graphs import B, T, const, repeat_kv, symbolic
from tests.passes.helpers import assert_stable, check_pass, random_feeds

CHUNK, SUB, D = 8, 4, 8  # small chunks: the seq of 11 below spans two of them, the trials many
SIZES = {"batch": 2, "seq": 11}


def positions(g: Graph, n):
    return g.add1("Range", const(g, np.int64(0)), n, const(g, np.int64(1)))


def to_chunks(g: Graph, x, n, pos, valid):
    """_to_chunks: [B, H, T, D] -> [B, H, N, C, D], Where(pos < T, Gather(x, clamp(pos)), 0)."""
    clamped = g.add1("Clip", pos, None, const(g, np.array(T - 1, dtype=object)))
    picked = g.add1("Gather", x, clamped, axis=2)
    return g.add1("Where", valid, picked, const(g, np.float32(0)))


def sub_chunks(g: Graph, x, heads: int, n_sym):
    """[B, H, N, C, D] -> [B, H, S, N, L, D]."""
    r = g.add1("Reshape", x, symbolic(g, [B, heads, n_sym, CHUNK // SUB, SUB, x.shape[-1]]))
    return g.add1("Transpose", r, perm=[0, 1, 3, 2, 4, 5])


def first_of(g: Graph, x, axis: int):
    return g.add1("Slice", x, const(g, [0]), const(g, [1]), const(g, [axis]))


def intra_chunk(g: Graph, q, k, v, gc, b, heads: int, n_sym, mask: str):
    """_gla_intra_chunk: masked scores within each chunk, sub-chunk reference points."""
    bs = sub_chunks(g, b, heads, n_sym)
    ref = g.add1("Sub", first_of(g, bs, 4), first_of(g, sub_chunks(g, gc, heads, n_sym), 4))
    qs = g.add1("Mul", sub_chunks(g, q, heads, n_sym), g.add1("Exp", g.add1("Sub", bs, ref)))
    kexp = g.add1("Exp", g.add1("Sub", ref, g.add1("Unsqueeze", b, const(g, [2]))))
    ks = g.add1("Mul", g.add1("Unsqueeze", k, const(g, [2])), kexp)
    scores = g.add1("MatMul", qs, g.add1("Transpose", ks, perm=[0, 1, 2, 3, 5, 4]))
    i, j = np.arange(CHUNK)[:, None], np.arange(CHUNK)[None, :]
    allowed = (i > j) if mask == "strict" else (i >= j)  # strict: the own key left out
    allowed = const(g, allowed.reshape(CHUNK // SUB, 1, SUB, CHUNK))
    masked = g.add1("Where", allowed, scores, const(g, np.float32(0)))
    back = g.add1("Transpose", masked, perm=[0, 1, 3, 2, 4, 5])
    flat = g.add1("Reshape", back, symbolic(g, [B, heads, n_sym, CHUNK, CHUNK]))
    return g.add1("MatMul", flat, v)


def inter_chunk(g: Graph, q, k, v, b, n, earlier_op: str):
    """_gla_inter_chunk: the states of earlier chunks, with [N, N] pairwise decays."""
    total = g.add1("Slice", b, const(g, [-1]), const(g, [2 ** 62]), const(g, [3]))
    decayed_k = g.add1("Mul", k, g.add1("Exp", g.add1("Sub", total, b)))
    own = g.add1("MatMul", g.add1("Transpose", decayed_k, perm=[0, 1, 2, 4, 3]), v)
    chunk_decay = g.add1("Squeeze", total, const(g, [3]))
    ends = g.add1("CumSum", chunk_decay, const(g, np.int64(2)))
    starts = g.add1("Sub", ends, chunk_decay)
    idx = positions(g, n)
    earlier = g.add1(earlier_op, g.add1("Unsqueeze", idx, const(g, [1])),
                     g.add1("Unsqueeze", idx, const(g, [0])))
    log_w = g.add1("Sub", g.add1("Unsqueeze", starts, const(g, [3])),
                   g.add1("Unsqueeze", ends, const(g, [2])))
    w = g.add1("Exp", g.add1("Where", g.add1("Unsqueeze", earlier, const(g, [2])), log_w,
                             const(g, np.float32(-np.inf))))
    state = g.add1("MatMul", g.add1("Transpose", w, perm=[0, 1, 4, 2, 3]),
                   g.add1("Transpose", own, perm=[0, 1, 3, 2, 4]))
    state = g.add1("Transpose", state, perm=[0, 1, 3, 2, 4])
    return g.add1("MatMul", g.add1("Mul", q, g.add1("Exp", b)), state)


def chunked_graph(q_heads=4, kv_heads=2, sign=1, mask="causal", earlier_op="Greater",
                  extra=None):
    """gla_chunked as torch exports it (GQA through repeat_kv), with switches for near misses:
    sign -1 (decay negated), mask "strict" (off by one), earlier_op "GreaterOrEqual" (a chunk
    sees its own end state: not causal), extra "scale" | "tensor" (another input read) |
    "relu" (a piecewise op on q's chunks)."""
    g = Graph("gla_chunked")
    q = g.add_input("q", TensorType("f32", (B, q_heads, T, D)))
    kv = [g.add_input(n, TensorType("f32", (B, kv_heads, T, D))) for n in "kvg"]
    k, v, logd = (repeat_kv(g, x, q_heads // kv_heads) for x in kv)
    n_sym = (T + CHUNK - 1) // CHUNK + 1
    n = g.add1("Constant", value=np.array(n_sym, dtype=object))
    rows = g.add1("Unsqueeze", positions(g, n), const(g, [1]))
    pos = g.add1("Add", g.add1("Mul", rows, const(g, np.int64(CHUNK))),
                 const(g, np.arange(CHUNK, dtype=np.int64)))
    valid = g.add1("Unsqueeze", g.add1("Less", pos, const(g, np.array(T, dtype=object))),
                   const(g, [2]))
    qc, kc, vc, gc = (to_chunks(g, x, n, pos, valid) for x in (q, k, v, logd))
    if extra == "scale":  # v scaled by a run-time input
        vc = g.add1("Mul", vc, g.add_input("s", TensorType("f32", (B, 1, 1, 1, 1))))
    if extra == "tensor":  # a fifth sequence tensor, chunked and added to v's chunks
        u = g.add_input("u", TensorType("f32", (B, q_heads, T, D)))
        vc = g.add1("Add", vc, to_chunks(g, u, n, pos, valid))
    if extra == "relu":  # a piecewise op on data: sample agreement would prove nothing
        qc = g.add1("Relu", qc)
    if sign < 0:
        gc = g.add1("Neg", gc)
    b = g.add1("CumSum", gc, const(g, np.int64(3)))
    o = g.add1("Add", intra_chunk(g, qc, kc, vc, gc, b, q_heads, n_sym, mask),
               inter_chunk(g, qc, kc, vc, b, n, earlier_op))
    flat = g.add1("Reshape", o, symbolic(g, [B, q_heads, n_sym * CHUNK, D]))
    t = g.add1("Constant", value=np.array(T, dtype=object))
    g.set_outputs([g.add1("Gather", flat, positions(g, t), axis=2)], ["o"])
    return g


def feeds_for(graph):
    feeds = random_feeds(graph, SIZES)
    feeds["g"] = -np.abs(feeds["g"]) * 0.3  # log decays are negative
    return feeds


def fused(graph):
    before, after, modified = check_pass(FuseLinearAttention(), graph, feeds_for(graph),
                                         tolerance=1e-5)
    return before, DeadCodeElimination().run(after).graph, modified


def test_chunked_form_becomes_linear_attention():
    before, after, modified = fused(chunked_graph())
    assert modified and "GatherND" not in before and "CumSum" in before
    ops = after.op_counts()
    assert ops["LinearAttention"] == 1
    assert not {"Range", "Gather", "CumSum", "Where", "Exp", "MatMul", "Expand"} & set(ops), ops
    (la,) = [n for n in after.nodes if n.op == "LinearAttention"]
    assert la.attrs["update_rule"] == "gated" and la.attrs["scale"] == 1.0
    assert la.attrs["q_num_heads"] == 4 and la.attrs["kv_num_heads"] == 2  # repeat_kv undone
    assert [x.name for x in after.inputs] == ["q", "k", "v", "g"]
    assert str(la.inputs[4].type) == "f32[batch, seq, 16]"
    assert_stable(FuseLinearAttention(), after)


@pytest.mark.parametrize("options, reason", [
    ({"sign": -1}, "sign wrong"),
    ({"mask": "strict"}, "off by one"),
    ({"earlier_op": "GreaterOrEqual"}, "not causal"),
    ({"extra": "scale"}, "reads the run-time input %s"),
    ({"extra": "tensor"}, "reads 5 [B, H, T, D] tensors"),
    ({"extra": "relu"}, "applies Relu"),
])
def test_near_misses_do_not_fire_and_say_why(options, reason):
    _, after, modified = fused(chunked_graph(**options))
    assert not modified and "LinearAttention" not in after.op_counts()
    notes = [n for n in explain(after, RULES) if n.startswith("ChunkedLinearAttention")]
    assert len(notes) == 1 and reason in notes[0], notes
