"""The hand-written LinearAttention and SlidingWindowAttention kernels, compiled for cpu and
compared with the IR references: every update rule, decay kind, with and without state."""

import numpy as np
import pytest

import sbc
from sbc.ir import Graph, TensorType
from sbc.ir.dims import Sym
from sbc.ir.interpreter import run as interpret

B, T = Sym.var("batch"), Sym.var("seq")
HQ, HKV, DK, DV, WINDOW = 4, 2, 8, 16, 5


def feeds_for(graph, batch, seq, position=0, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in graph.inputs:
        if v.name == "pos":
            feeds[v.name] = np.array(position, np.int64)
            continue
        x = rng.normal(size=[batch if d == B else seq if d == T else d for d in v.shape])
        feeds[v.name] = {"g": -np.abs(x) * 0.1, "b": np.abs(x) * 0.3}.get(v.name, x).astype(np.float32)
    return feeds


def linear_attention_graph(rule, decay_width, past, beta_width=1):
    g = Graph("la")
    ins = [g.add_input(n, TensorType("f32", (B, T, w))) for n, w in
           (("q", HQ * DK), ("k", HKV * DK), ("v", HKV * DV))]
    ins.append(g.add_input("p", TensorType("f32", (B, HKV, DK, DV))) if past else None)
    ins.append(g.add_input("g", TensorType("f32", (B, T, decay_width))) if "gated" in rule else None)
    ins.append(g.add_input("b", TensorType("f32", (B, T, beta_width))) if "delta" in rule else None)
    while ins[-1] is None:
        ins.pop()
    node = g.add("LinearAttention", ins, {"q_num_heads": HQ, "kv_num_heads": HKV, "update_rule": rule})
    g.set_outputs(node.outputs, ["o", "s"])
    return g


def check(graph, cases, tolerance):
    module = sbc.compile(graph)
    for args in cases:
        feeds = feeds_for(graph, *args)
        got, want = module.run(feeds), interpret(graph, feeds)
        for name in want:
            scale = max(1.0, float(np.abs(want[name]).max()))
            np.testing.assert_allclose(got[name], want[name], atol=tolerance * scale, err_msg=f"{name} {args}")


@pytest.mark.parametrize("rule, decay_width, past, beta_width", [
    ("gated", HKV * DK, True, 1), ("gated", HKV, False, 1), ("linear", 0, False, 1),
    ("delta", 0, True, HKV), ("gated_delta", HKV * DK, True, 1)])
def test_linear_attention_kernel(rule, decay_width, past, beta_width):
    check(linear_attention_graph(rule, decay_width, past, beta_width), [(1, 1), (2, 37)], 1e-5)


def sliding_window_graph(past):
    g = Graph("swa")
    ins = [g.add_input(n, TensorType("f32", (B, T, w))) for n, w in
           (("q", HQ * DK), ("k", HKV * DK), ("v", HKV * DV))]
    if past:
        ins += [g.add_input("pk", TensorType("f32", (B, HKV, WINDOW, DK))),
                g.add_input("pv", TensorType("f32", (B, HKV, WINDOW, DV))),
                g.add_input("pos", TensorType("i64", ()))]
    node = g.add("SlidingWindowAttention", ins, {"q_num_heads": HQ, "kv_num_heads": HKV, "window": WINDOW})
    g.set_outputs(node.outputs, ["o", "k_ring", "v_ring"])
    return g


def test_sliding_window_kernel_prefill():
    check(sliding_window_graph(past=False), [(1, 1), (2, 13)], 1e-6)


def test_sliding_window_kernel_with_ring_buffer():
    # decode steps and chunks at positions before, at and after the window fills
    check(sliding_window_graph(past=True), [(1, 1, 0), (2, 13, 0), (1, 1, 9), (2, 3, 7), (1, 8, 2)], 1e-6)
