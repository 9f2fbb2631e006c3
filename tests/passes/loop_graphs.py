"""Gated linear attention written as an ONNX `Loop`, the way a recurrence is commonly written
with one: trip count T = Shape(q)[2], the body gathers q_t, k_t, v_t, g_t from the
captured [B, H, T, D] tensors at the iteration number, updates the state S [B, H_kv, dk, dv]
and emits o_t, which the Loop stacks along a new axis 0 ([T, B, Hq, dv], transposed back):

    S_t = exp(g_t)[..., None] * S_{t-1} + k_t v_t^T;   o_t = scale * q_t^T S_t   (GQA: Hq = 2 Hkv)

Switches make the near misses loop-to-scan must refuse. `gla_layer_model` wraps the Loop in
projections (a GLA layer with x [B, T, C] in and out) for compiling end to end."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from tests.frontend.test_onnx_import import floats, ints, model, vi

Q_HEADS, KV_HEADS, DK, DV = 4, 2, 4, 3
GROUPS = Q_HEADS // KV_HEADS
SCALE = 0.3
HIDDEN = 8  # of the layer model


def step_body(offset=False, cond="pass", scan_output=True) -> onnx.GraphProto:
    """One step; reads q, k, v, g (and the constants) from the enclosing graph.
    offset: gathers at iter_num + 1 (not the step's own slice); cond: "pass" returns cond_in,
    "computed" a condition of the state (it may end the loop early); scan_output: whether
    o_t is emitted (else the Loop returns only the final state)."""
    index = "i"
    nodes = []
    if offset:
        nodes.append(helper.make_node("Add", ["i", "one"], ["i_next"]))
        index = "i_next"
    for x in ("q", "k", "v", "g"):
        nodes.append(helper.make_node("Gather", [x, index], [f"{x}_t"], axis=2))
    nodes += [
        helper.make_node("Exp", ["g_t"], ["decay"]),
        helper.make_node("Unsqueeze", ["decay", "last"], ["decay_col"]),
        helper.make_node("Mul", ["S", "decay_col"], ["decayed"]),
        helper.make_node("Unsqueeze", ["k_t", "last"], ["k_col"]),
        helper.make_node("Unsqueeze", ["v_t", "second_last"], ["v_row"]),
        helper.make_node("MatMul", ["k_col", "v_row"], ["kv"]),
        helper.make_node("Add", ["decayed", "kv"], ["S_next"]),
        # GQA: the query heads of one KV head read its state together
        helper.make_node("Reshape", ["q_t", "grouped"], ["q_groups"]),
        helper.make_node("MatMul", ["q_groups", "S_next"], ["read"]),
        helper.make_node("Reshape", ["read", "per_query_head"], ["read_heads"]),
        helper.make_node("Mul", ["read_heads", "scale"], ["o_t"]),
    ]
    if cond == "pass":
        nodes.append(helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    else:  # keep going while the state stays bounded
        nodes += [helper.make_node("ReduceMax", ["S_next"], ["s_max"], keepdims=0),
                  helper.make_node("Less", ["s_max", "bound"], ["cond_out"])]
    outputs = [vi("cond_out", [], TensorProto.BOOL), vi("S_next", None)]
    outputs += [vi("o_t", None)] if scan_output else []
    inputs = [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("S", None)]
    return helper.make_graph(nodes, "gla_step", inputs, outputs)


def gla_loop_nodes(trip_axis=2, past=True, **body_options) -> tuple[list, list]:
    """The nodes from q, k, v, g (and S0 when past) to S_final and o [B, Hq, T, dv], and the
    initializers they use. trip_axis: the axis of q whose length is the trip count (less one
    when the body gathers at i + 1)."""
    scan_output = body_options.get("scan_output", True)
    offset = body_options.get("offset", False)
    nodes = [helper.make_node("Shape", ["q"], ["q_shape"]),
             helper.make_node("Gather", ["q_shape", "trip_axis"], ["T_axis"], axis=0),
             # (gathering at i + 1 stays in range for T - 1 steps)
             helper.make_node("Sub" if offset else "Identity",
                              ["T_axis", "one"] if offset else ["T_axis"], ["T"])]
    if not past:  # S0 = zeros [B, Hkv, dk, dv]
        nodes += [helper.make_node("Gather", ["q_shape", "zero_1d"], ["batch_1d"], axis=0),
                  helper.make_node("Concat", ["batch_1d", "state_dims"], ["state_shape"], axis=0),
                  helper.make_node("ConstantOfShape", ["state_shape"], ["S0"])]
    outputs = ["S_final"] + (["o_steps"] if scan_output else [])
    nodes.append(helper.make_node("Loop", ["T", "keep_going", "S0"], outputs, name="recurrence",
                                  body=step_body(**body_options)))
    if scan_output:
        nodes.append(helper.make_node("Transpose", ["o_steps"], ["o"], perm=[1, 2, 0, 3]))
    initializers = [
        helper.make_tensor("trip_axis", TensorProto.INT64, [], [trip_axis]),
        helper.make_tensor("keep_going", TensorProto.BOOL, [], [True]),
        helper.make_tensor("one", TensorProto.INT64, [], [1]),
        ints("zero_1d", [0]), ints("state_dims", [KV_HEADS, DK, DV]),
        ints("last", [-1]), ints("second_last", [-2]),
        ints("grouped", [0, KV_HEADS, GROUPS, DK]), ints("per_query_head", [0, Q_HEADS, DV]),
        floats("scale", SCALE), floats("bound", 1e30)]
    return nodes, [t for t in initializers if t.name in _names_read(nodes)]


def _names_read(nodes) -> set[str]:
    """The value names nodes (and their bodies) read: to leave out unused initializers, which
    onnxruntime warns about."""
    names = set()
    for node in nodes:
        names |= set(node.input)
        for a in node.attribute:
            if a.type == a.GRAPH:
                names |= _names_read(a.g.node)
    return names


def attention_inputs(past=True) -> list:
    q = vi("q", ["batch", Q_HEADS, "seq", DK])
    kv = [vi("k", ["batch", KV_HEADS, "seq", DK]), vi("v", ["batch", KV_HEADS, "seq", DV]),
          vi("g", ["batch", KV_HEADS, "seq", DK])]
    return [q] + kv + ([vi("S0", ["batch", KV_HEADS, DK, DV])] if past else [])


def gla_loop_model(trip_axis=2, past=True, scale_input=False, **body_options):
    """q [B, Hq, T, dk], k, g [B, Hkv, T, dk], v [B, Hkv, T, dv] (and S0) -> S_final, o.
    scale_input: the body's scale is a graph input (a run-time value), not an initializer."""
    nodes, initializers = gla_loop_nodes(trip_axis, past, **body_options)
    inputs = attention_inputs(past)
    if scale_input:
        initializers = [t for t in initializers if t.name != "scale"]
        inputs.append(vi("scale", []))
    outputs = [vi("S_final", ["batch", KV_HEADS, DK, DV])]
    if body_options.get("scan_output", True):
        outputs.append(vi("o", ["batch", Q_HEADS, "steps", DV]))  # steps: the trip count
    return model(nodes, inputs, outputs, initializers, opset=21)


def gla_feeds(batch=2, seq=5, past=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)

    def rand(*shape):
        return rng.normal(size=shape).astype(np.float32)
    feeds = {"q": rand(batch, Q_HEADS, seq, DK), "k": rand(batch, KV_HEADS, seq, DK),
             "v": rand(batch, KV_HEADS, seq, DV),
             "g": -np.abs(rand(batch, KV_HEADS, seq, DK))}  # log decay <= 0
    if past:
        feeds["S0"] = rand(batch, KV_HEADS, DK, DV)
    return feeds


def gla_numpy(q, k, v, g, S0=None):
    """The recurrence itself, in float64: (S_final, o [B, Hq, T, dv])."""
    batch, seq = q.shape[0], q.shape[2]
    S = np.zeros((batch, KV_HEADS, DK, DV)) if S0 is None else S0.astype(np.float64)
    outs = []
    for t in range(seq):
        S = np.exp(g[:, :, t])[..., None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        q_t = q[:, :, t].reshape(batch, KV_HEADS, GROUPS, DK)
        outs.append(SCALE * np.einsum("bhgk,bhkv->bhgv", q_t, S).reshape(batch, Q_HEADS, DV))
    return S, np.stack(outs, axis=2)


def gla_layer_model():
    """x [B, T, C] -> relu projections q, k (GQA), v, a per-key-dim log-sigmoid decay g, the
    Loop with a zero initial state, o back to [B, T, Hq*dv] and an output projection."""
    rng = np.random.default_rng(7)
    weights = {"w_q": (HIDDEN, Q_HEADS * DK), "w_k": (HIDDEN, KV_HEADS * DK),
               "w_v": (HIDDEN, KV_HEADS * DV), "w_g": (HIDDEN, KV_HEADS * DK),
               "w_o": (Q_HEADS * DV, HIDDEN)}
    initializers = [floats(n, 0.5 * rng.normal(size=s)) for n, s in weights.items()]
    nodes = []
    for name, heads, width, act in (("q", Q_HEADS, DK, "Relu"), ("k", KV_HEADS, DK, "Relu"),
                                    ("v", KV_HEADS, DV, None), ("g", KV_HEADS, DK, "LogSigmoid")):
        nodes.append(helper.make_node("MatMul", ["x", f"w_{name}"], [f"{name}_flat"]))
        flat = f"{name}_flat"
        if act == "Relu":
            nodes.append(helper.make_node("Relu", [flat], [f"{name}_act"]))
            flat = f"{name}_act"
        elif act == "LogSigmoid":  # log(sigmoid(x)) = -softplus(-x)
            nodes += [helper.make_node("Neg", [flat], [f"{name}_neg"]),
                      helper.make_node("Softplus", [f"{name}_neg"], [f"{name}_sp"]),
                      helper.make_node("Neg", [f"{name}_sp"], [f"{name}_act"])]
            flat = f"{name}_act"
        initializers.append(ints(f"{name}_heads", [0, 0, heads, width]))
        nodes += [helper.make_node("Reshape", [flat, f"{name}_heads"], [f"{name}_bthd"]),
                  helper.make_node("Transpose", [f"{name}_bthd"], [name], perm=[0, 2, 1, 3])]
    loop_nodes, loop_initializers = gla_loop_nodes(past=False)
    nodes += loop_nodes
    initializers += loop_initializers + [ints("packed", [0, 0, Q_HEADS * DV])]
    nodes += [helper.make_node("Transpose", ["o"], ["o_bthd"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["o_bthd", "packed"], ["o_packed"]),
              helper.make_node("MatMul", ["o_packed", "w_o"], ["y"])]
    return model(nodes, [vi("x", ["batch", "seq", HIDDEN])], [vi("y", ["batch", "seq", HIDDEN])],
                 initializers, opset=21)
