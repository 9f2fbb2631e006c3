"""Linear-attention recurrences written as a Scan, the way a user writes one step by step:
scan inputs [T, B, H, D] (scan axis 0), state S [B, H, dk, dv], per step
    S = exp(g)[..., None] * S + k[..., None] * v[..., None, :];  o = scale * q @ S
with switches that make the near misses the fusion must refuse."""

from __future__ import annotations

import numpy as np

from sbc.ir import Graph, TensorType
from tests.passes.attention_graphs import const, symbolic
from tests.passes.helpers import sym

B, T = sym("batch"), sym("seq")
HEADS, DK, DV = 2, 4, 3


def step_body(rule="gated", decay="key", sign=1, scale=0.3, cumsum=False, counter=False,
              k_heads=HEADS, clip=False) -> Graph:
    """One step. rule linear|gated; decay key ([B, H, dk]) or head ([B, H, 1]); sign -1
    decays by exp(-g); cumsum: S + v (no attention at all); counter: a second, unrelated
    state (a step count); k_heads: key heads, left to broadcasting (a head mismatch);
    clip: the log decay is clipped to [-8, 8] (a no-op on small test inputs only)."""
    body = Graph("step")
    s = body.add_input("S", TensorType("f32", (B, HEADS, DK, DV)))
    c = body.add_input("count", TensorType("f32", (B, HEADS))) if counter else None
    q = body.add_input("q_t", TensorType("f32", (B, HEADS, DK)))
    k = body.add_input("k_t", TensorType("f32", (B, k_heads, DK)))
    v = body.add_input("v_t", TensorType("f32", (B, HEADS, DV)))
    last, second_last = const(body, [-1], "last"), const(body, [-2], "second_last")
    if rule == "gated":
        g = body.add_input("g_t", TensorType("f32", (B, HEADS, DK if decay == "key" else 1)))
        log_decay = g if sign > 0 else body.add1("Neg", g)
        if clip:
            log_decay = body.add1("Clip", log_decay, const(body, np.float32(-8)),
                                  const(body, np.float32(8)))
        s = body.add1("Mul", body.add1("Unsqueeze", body.add1("Exp", log_decay), last), s)
    v_row = body.add1("Unsqueeze", v, second_last)
    if cumsum:
        s_next = body.add1("Add", s, v_row)
    else:
        s_next = body.add1("Add", s, body.add1("Mul", body.add1("Unsqueeze", k, last), v_row))
    read = body.add1("MatMul", body.add1("Unsqueeze", q, second_last), s_next)
    o = body.add1("Squeeze", read, second_last)
    if scale is not None:
        o = body.add1("Mul", o, const(body, np.float32(scale), "scale"))
    states = [s_next] if c is None else [s_next, body.add1("Add", c, const(body, np.float32(1)))]
    body.set_outputs(states + [o], ["S_next", "count_next", "o_t"][:len(states)] + ["o_t"])
    return body


def scan_graph(rule="gated", decay="key", past=True, final_state=True, **body_options) -> Graph:
    """The Scan over [T, B, H, D] inputs; past: S0 is a graph input (else zeros);
    final_state: the last state is a graph output too."""
    body = step_body(rule, decay, **body_options)
    counter, k_heads = body_options.get("counter", False), body_options.get("k_heads", HEADS)
    g = Graph("scan_attention")
    state_type = TensorType("f32", (B, HEADS, DK, DV))
    s0 = g.add_input("S0", state_type) if past else \
        g.add1("ConstantOfShape", symbolic(g, [B, HEADS, DK, DV]))
    states = [s0] + ([g.add_input("count0", TensorType("f32", (B, HEADS)))] if counter else [])
    scans = [g.add_input("q", TensorType("f32", (T, B, HEADS, DK))),
             g.add_input("k", TensorType("f32", (T, B, k_heads, DK))),
             g.add_input("v", TensorType("f32", (T, B, HEADS, DV)))]
    if rule == "gated":
        width = DK if decay == "key" else 1
        scans.append(g.add_input("g", TensorType("f32", (T, B, HEADS, width))))
    node = g.add("Scan", states + scans, {"body": body, "num_scan_inputs": len(scans)},
                 name="recurrence")
    outputs = node.outputs if final_state else node.outputs[-1:]
    names = ["S_final", "count_final"][:len(states)] + ["o"] if final_state else ["o"]
    g.set_outputs(outputs, names)
    return g
