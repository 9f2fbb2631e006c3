"""A SpikingBrain release checkpoint folder (Hugging Face layout: config.json + safetensors)
-> sbc IR, built directly from the config and the weights (no ONNX in between).

    ids i64[batch, seq] -> logits f32[batch, seq, vocab_size]       (as `sbc export --config`)

The graph uses the ops sbc's own passes produce, so the rest of the pipeline (to-recurrent,
sessions, codegen) applies unchanged: RMSNormalization, LinearAttention (update_rule gated,
decay per key channel), SlidingWindowAttention, and for the W8ASpike variant SpikeEncode +
MatMul(spikes, DequantizeGroups(int8, scales)), which the spike-matmul pass turns into
integer SpikeMatMuls.

Two variants of the release (model_type gla_swa, CONTEXT.md section 1):
  plain (hf_7B_model)   float projections, low-rank GLA gate gk_proj.0 / gk_proj.1
  W8ASpike              every q/k/v/o/gk/MLP-gate/MLP-up projection has a
                        `<name>.weight_quantizer.scales` [out, in/128, 1] buffer: its input is
                        spiked (V_th = clamp(mean|x| / 3, 1e-5, 1e4), n = round(x / V_th)) and
                        its weight is the int8 grid q = round(w / scale) of the checkpoint's own
                        scales (never re-quantised); the MLP down projection keeps its raw
                        weight and unspiked input; SWA spikes the post-RoPE query per head and
                        rounds K and V to int8 per (token, head), scale = absmax / 127.
Window: the release's flash-attention prefill (and its training) lets a query see itself and
the previous `sliding_window` keys; its SDPA fallback and decode cache see `sliding_window`
keys in all. window="flash" (default) takes the first, "cache" the second.
The rotary inv_freq is not in the checkpoint: it is computed from rope_theta as the release
does (theta ** -(2i / head_dim), in float32).
Weights are read one tensor at a time (frontend/safetensors_reader.py) and kept as the graph's
params: weight matrices in their stored dtype (a bf16 checkpoint's stay bf16, read through a
Cast that the matmul kernels absorb), int8 for the W8ASpike projections, f32 for vectors. No
second copy of the model, and no f32 copy of a bf16 one, is held.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from sbc.errors import InvalidModelError, UnsupportedError
from sbc.frontend.safetensors_reader import Tensors
from sbc.ir import Graph, Value
from sbc.ir.dims import Sym
from sbc.ir.graph import aligned_empty
from sbc.ir.types import TensorType

MODEL_TYPES = {"gla_swa": "SpikingBrain-7B (GLAswaForCausalLM)"}
WINDOWS = {"flash": 1, "cache": 0}  # keys seen beyond `sliding_window` under each convention
ACTIVATIONS = ("swish", "silu")
ATTN_MODES = ("chunk", "fused_chunk", "fused_recurrent")  # kernels of one recurrence
GATE_NORMALIZER = 16.0  # g = logsigmoid(gk) / 16
SPIKE_K, V_TH_MIN, V_TH_MAX = 3.0, 1e-5, 1e4
KV_QMAX = 127.0  # SWA's K/V: symmetric int8, scale = absmax / 127, counts clipped to [-128, 127]
SCALES = ".weight_quantizer.scales"
SPIKED = ("q_proj", "k_proj", "v_proj", "o_proj", "gk_proj")  # attention QuantLinears
MLP_SPIKED = ("gate_proj", "up_proj")  # down_proj runs on its raw weight, unspiked


@dataclass(frozen=True)
class Config:
    """What the graph needs from config.json (checked by read_config)."""
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    sliding_window: int
    rope_theta: float
    eps: float
    attn_layers: tuple[int, ...]  # the SWA layers; the others are GLA
    tie: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def is_checkpoint(path) -> bool:
    """Whether `path` is a folder (what import_checkpoint reads), not a file."""
    return isinstance(path, (str, os.PathLike)) and os.path.isdir(path)


def import_checkpoint(folder: str | os.PathLike, *, window: str = "flash") -> Graph:
    """The model in the checkpoint folder as an sbc Graph (see the module docstring).
    window: "flash" (a query sees itself and the previous sliding_window keys) or "cache"
    (sliding_window keys in all)."""
    folder = os.fspath(folder)
    if window not in WINDOWS:
        raise UnsupportedError(f"unknown window convention '{window}'; supported: "
                               f"{', '.join(WINDOWS)}")
    config = read_config(folder)
    tensors = Tensors(folder)
    try:
        weights = Weights(tensors, config, folder)
        return Builder(config, weights, window, os.path.basename(folder.rstrip(os.sep))).build()
    finally:
        tensors.close()


def describe_checkpoint(folder: str | os.PathLike) -> dict:
    """What `sbc inspect DIR` shows: the config as sbc reads it, the variant, and the weights
    by stored dtype. Names and shapes are checked as import checks them, from the safetensors
    headers alone: no weight is read, so a 7B folder is described in a moment."""
    folder = os.fspath(folder)
    c = read_config(folder)
    tensors = Tensors(folder)
    weights = Weights(tensors, c, folder)
    stored: dict[str, list[int]] = {}
    for e in tensors.entries.values():
        count, nbytes = stored.setdefault(e.dtype, [0, 0])
        stored[e.dtype] = [count + 1, nbytes + e.nbytes]
    gla = [i for i in range(c.layers) if i not in c.attn_layers]
    return {
        "checkpoint": folder,
        "model": MODEL_TYPES["gla_swa"],
        "variant": ("W8ASpike (int8 group scales: spiking projections on the checkpoint's "
                    "int8 grid)") if weights.spiking else "plain (float projections)",
        "layers": f"{c.layers}: {len(gla)} GLA, {len(c.attn_layers)} SWA (layers "
                  f"{', '.join(map(str, c.attn_layers))})",
        "hidden": c.hidden,
        "heads": f"{c.heads} query, {c.kv_heads} key/value, head dim {c.head_dim}",
        "mlp": c.mlp,
        "vocab": c.vocab,
        "sliding_window": c.sliding_window,
        "rope_theta": c.rope_theta,
        "tied_embeddings": c.tie,
        "parameters": int(sum(np.prod(e.shape, dtype=np.int64) for e in tensors.entries.values())),
        "stored": {dtype: f"{n} tensors, {nbytes:,} bytes" for dtype, (n, nbytes) in stored.items()},
    }


# -- config.json -------------------------------------------------------------------------------

def read_config(folder: str) -> Config:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise InvalidModelError(f"{folder}: no config.json (not a Hugging Face checkpoint folder)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise InvalidModelError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(raw, dict):
        raise InvalidModelError(f"{path}: not a JSON object")
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnsupportedError(f"{path}: model_type {model_type!r} is not supported; supported: "
                               + ", ".join(f"{k} ({v})" for k, v in MODEL_TYPES.items()))
    _refuse_switches(raw, path)
    n = lambda key, default=None: _positive_int(raw, key, path, default)  # noqa: E731
    layers = n("num_hidden_layers")
    heads = n("num_attention_heads")
    c = Config(hidden=n("hidden_size"), layers=layers, heads=heads,
               kv_heads=n("num_key_value_heads", heads), mlp=n("intermediate_size"),
               vocab=n("vocab_size"), sliding_window=n("sliding_window"),
               rope_theta=_positive_float(raw, "rope_theta", path, 1e6),
               eps=_positive_float(raw, "norm_eps", path, 1e-6),
               attn_layers=_attn_layers(raw, layers, path),
               tie=bool(raw.get("tie_word_embeddings", False)))
    if c.hidden % c.heads or c.heads % c.kv_heads or c.head_dim % 2:
        raise UnsupportedError(f"{path}: hidden_size {c.hidden}, num_attention_heads {c.heads}, "
                               f"num_key_value_heads {c.kv_heads}: the heads must divide the "
                               f"hidden size, the KV heads the heads, and head_dim must be even")
    return c


def _refuse_switches(raw: dict, path: str) -> None:
    """Config switches the release has but sbc does not build, each refused by name."""
    if raw.get("use_short_conv"):
        raise UnsupportedError(f"{path}: use_short_conv: true (short convolutions on q/k/v) is "
                               f"not supported; supported: false, as in the SpikingBrain-7B release")
    act = raw.get("hidden_act", "swish")
    if act not in ACTIVATIONS:
        raise UnsupportedError(f"{path}: hidden_act '{act}' is not supported; supported: "
                               f"{', '.join(ACTIVATIONS)}")
    mode = raw.get("attn_mode", "chunk")
    if mode not in ATTN_MODES:
        raise UnsupportedError(f"{path}: attn_mode '{mode}' is not supported; supported: "
                               f"{', '.join(ATTN_MODES)}")
    if raw.get("elementwise_affine", True) is not True:
        raise UnsupportedError(f"{path}: elementwise_affine: false (norms without weights) is "
                               f"not supported; supported: true")
    if raw.get("rope_scaling") is not None:
        raise UnsupportedError(f"{path}: rope_scaling is not supported; supported: null "
                               f"(plain RoPE with rope_theta)")
    if raw.get("sliding_window", 0) is None:
        raise UnsupportedError(f"{path}: sliding_window: null (full attention in the SWA "
                               f"layers) is not supported; supported: a window size")


def _positive_int(raw: dict, key: str, path: str, default=None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        got = "missing" if key not in raw else repr(value)
        raise InvalidModelError(f"{path}: {key} must be a positive integer, got {got}")
    return value


def _positive_float(raw: dict, key: str, path: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidModelError(f"{path}: {key} must be a positive number, got {value!r}")
    return float(value)


def _attn_layers(raw: dict, layers: int, path: str) -> tuple[int, ...]:
    value = raw.get("attn_layers", list(range(1, layers, 2)))  # the config class's default
    if not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < layers for i in value):
        raise InvalidModelError(f"{path}: attn_layers must list layer numbers below "
                                f"num_hidden_layers ({layers}), got {value!r}")
    return tuple(sorted(set(value)))


# -- weights -----------------------------------------------------------------------------------

class Weights:
    """The checkpoint's tensors by role: every expected name and shape is checked before the
    graph is built (all missing names in one error), then each is read when the builder asks."""

    def __init__(self, tensors: Tensors, c: Config, folder: str):
        self.t, self.c, self.folder = tensors, c, folder
        self.spiking = any(name.endswith(SCALES) for name in tensors.entries)
        self.expected: dict[str, tuple[int, ...]] = {}
        self._expect_all()
        self._check()

    # names and shapes
    def _expect_all(self) -> None:
        c = self.c
        self._expect("model.embeddings.weight", (c.vocab, c.hidden))
        self._expect("model.norm.weight", (c.hidden,))
        if not c.tie or "lm_head.weight" in self.t:
            self._expect("lm_head.weight", (c.vocab, c.hidden))
        for i in range(c.layers):
            p = f"model.layers.{i}."
            self._expect(p + "attn_norm.weight", (c.hidden,))
            self._expect(p + "mlp_norm.weight", (c.hidden,))
            for name, out, inp in (("gate_proj", c.mlp, c.hidden), ("up_proj", c.mlp, c.hidden),
                                   ("down_proj", c.hidden, c.mlp)):
                self._expect_linear(p + "mlp." + name, out, inp, bias=False,
                                    spiked=name != "down_proj")
            a = p + "attn."
            for name, out in (("q_proj", c.heads * c.head_dim), ("k_proj", c.kv_dim),
                              ("v_proj", c.kv_dim)):
                self._expect_linear(a + name, out, c.hidden, bias=True)
            self._expect_linear(a + "o_proj", c.hidden, c.heads * c.head_dim, bias=False)
            if i not in c.attn_layers:
                self._expect(a + "g_norm.weight", (c.head_dim,))
                self._expect_gate(a + "gk_proj")

    def _expect(self, name: str, shape: tuple[int, ...]) -> None:
        self.expected[name] = shape

    def _expect_linear(self, name: str, out: int, inp: int, bias: bool, spiked: bool = True) -> None:
        self._expect(name + ".weight", (out, inp))
        if bias:
            self._expect(name + ".bias", (out,))
        if self.spiking and spiked:
            scales = name + SCALES
            stored = self.t.shape(scales) if scales in self.t else ()
            # the group size follows from the stored scales ([out, in / group, 1]; 128 in the
            # release); a missing tensor is reported with the release's shape
            groups = stored[1] if len(stored) == 3 else max(inp // 128, 1)
            self._expect(scales, (out, groups, 1))

    def _expect_gate(self, name: str) -> None:
        """The low-rank pair gk_proj.0 / gk_proj.1 (plain release) or one full-rank gk_proj."""
        c = self.c
        if f"{name}.0.weight" in self.t or (f"{name}.weight" not in self.t and not self.spiking):
            self._expect(f"{name}.0.weight", (self.low_rank(name), c.hidden))
            self._expect(f"{name}.1.weight", (c.kv_dim, self.low_rank(name)))
            self._expect(f"{name}.1.bias", (c.kv_dim,))
        else:
            self._expect_linear(name, c.kv_dim, c.hidden, bias=True)

    def low_rank(self, gate: str) -> int:
        shape = self.t.shape(f"{gate}.0.weight") if f"{gate}.0.weight" in self.t else (16,)
        return shape[0]

    def _check(self) -> None:
        missing = [n for n in self.expected if n not in self.t]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise InvalidModelError(f"{self.folder}: missing tensors: {', '.join(missing[:3])}{more}")
        for name, shape in self.expected.items():
            got = self.t.shape(name)
            if got != shape:
                raise InvalidModelError(f"{self.folder}: tensor '{name}' is {list(got)}, expected "
                                        f"{list(shape)} from config.json")
        for name, shape in self.expected.items():
            inputs = self.expected[_weight_of(name)][1] if name.endswith(SCALES) else 0
            if inputs and (not shape[1] or inputs % shape[1] or (inputs // shape[1]) % 4):
                raise UnsupportedError(f"{self.folder}: tensor '{name}' has {shape[1]} groups for "
                                       f"{inputs} input channels; supported: groups of a "
                                       f"multiple of 4 channels (128 in the release)")

    # reading
    def has(self, name: str) -> bool:
        return name in self.expected

    def quantised(self, linear: str) -> bool:
        return linear + SCALES in self.expected

    def group(self, scales: str) -> int:
        return self.expected[_weight_of(scales)][1] // self.expected[scales][1]

    def read(self, name: str, keep_storage: bool = False) -> np.ndarray:
        data = self.t.read(name, keep_storage)
        if not np.isfinite(data).all():
            raise InvalidModelError(f"{self.folder}: tensor '{name}' holds NaN or infinite values")
        return data

    def int8_grid(self, linear: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(q [in, out] int8, scales [in / group, out] f32, group) with q = round(w / scale)
        per group of input channels: the checkpoint's own grid."""
        scales_name = linear + SCALES
        w, scales = self.read(linear + ".weight"), self.read(scales_name)[..., 0]
        if not (scales > 0).all():
            raise InvalidModelError(f"{self.folder}: tensor '{scales_name}' holds scales that are "
                                    f"not positive")
        out, inp = w.shape
        group = self.group(scales_name)
        q = np.round(w.reshape(out, -1, group) / scales[..., None]).reshape(out, inp)
        del w
        low, high = q.min(initial=0), q.max(initial=0)
        if low < -128 or high > 127:
            raise InvalidModelError(f"{self.folder}: round(weight / scale) of '{linear}' reaches "
                                    f"{int(low if low < -128 else high)}, outside int8: the "
                                    f"scales do not belong to this weight")
        return (np.ascontiguousarray(q.astype(np.int8).T), np.ascontiguousarray(scales.T), group)


def _weight_of(scales: str) -> str:
    return scales[:-len(SCALES)] + ".weight"


# -- the graph ---------------------------------------------------------------------------------

class Builder:
    """Adds the model's nodes to a Graph, layer by layer, reading each weight as it goes."""

    def __init__(self, c: Config, w: Weights, window: str, name: str):
        self.c, self.w = c, w
        self.window = c.sliding_window + WINDOWS[window]
        self.g = Graph(name or "checkpoint")
        self._spikes: dict[int, Value] = {}  # id(x) -> dequantised spikes of x (one neuron per input)
        self._consts: dict[tuple, Value] = {}

    def build(self) -> Graph:
        c, g = self.c, self.g
        ids = g.add_input("ids", TensorType("i64", (Sym.var("batch"), Sym.var("seq"))))
        x = self.widened(g.add1("Gather", self.matrix("model.embeddings.weight"), ids, axis=0,
                                name="embeddings"))
        cos, sin = self.rope_tables(ids)
        for i in range(c.layers):
            p = f"model.layers.{i}."
            h = self.rms_norm(x, p + "attn_norm.weight", p + "attn_norm")
            mixer = self.swa(h, p + "attn", cos, sin) if i in c.attn_layers else self.gla(h, p + "attn")
            x = g.add1("Add", x, mixer, name=p + "attn_residual")
            h = self.rms_norm(x, p + "mlp_norm.weight", p + "mlp_norm")
            x = g.add1("Add", x, self.mlp(h, p + "mlp"), name=p + "mlp_residual")
        x = self.rms_norm(x, "model.norm.weight", "model.norm")
        head = "lm_head.weight" if self.w.has("lm_head.weight") else "model.embeddings.weight"
        logits = g.add1("MatMul", x, self.widened(self.matrix(head, transpose=True,
                                                              as_name="lm_head")), name="lm_head")
        g.set_outputs([logits], ["logits"])
        g.prune_params()
        return g

    # -- blocks
    def gla(self, h: Value, p: str) -> Value:
        """GLA: q = relu(.), k = relu(.), v; g = logsigmoid(gk) / 16 per key channel; gated
        linear attention with scale 1/sqrt(dk); shared per-head RMSNorm; o_proj."""
        c, g = self.c, self.g
        q = g.add1("Relu", self.linear(h, p + ".q_proj"), name=p + ".q_relu")
        k = g.add1("Relu", self.linear(h, p + ".k_proj"), name=p + ".k_relu")
        v = self.linear(h, p + ".v_proj")
        if self.w.has(p + ".gk_proj.0.weight"):  # low rank: hidden -> 16 -> kv_dim, float
            low = g.add1("MatMul", h, self.weight(p + ".gk_proj.0.weight"),
                         name=p + ".gk_proj.0")
            gk = self.linear(low, p + ".gk_proj.1")
        else:
            gk = self.linear(h, p + ".gk_proj")
        decay = g.add1("Div", self.log_sigmoid(gk, p + ".gk"), self.const(GATE_NORMALIZER),
                       name=p + ".decay")
        o = g.add("LinearAttention", [q, k, v, None, decay], dict(
            q_num_heads=c.heads, kv_num_heads=c.kv_heads, update_rule="gated",
            scale=float(c.head_dim ** -0.5)), name=p).outputs[0]
        heads = self.reshape(o, (0, 0, c.heads, c.head_dim), p + ".heads")
        normed = self.rms_norm(heads, p + ".g_norm.weight", p + ".g_norm")
        return self.linear(self.reshape(normed, (0, 0, c.heads * c.head_dim), p + ".merge"),
                           p + ".o_proj")

    def swa(self, h: Value, p: str, cos: Value, sin: Value) -> Value:
        """Qwen2-style GQA softmax attention over the window, RoPE on q and k; in W8ASpike the
        post-RoPE query is spiked per head and K, V are rounded to int8 per (token, head)."""
        c = self.c
        q = self.rope(self.reshape(self.linear(h, p + ".q_proj"), (0, 0, c.heads, c.head_dim),
                                   p + ".q_heads"), cos, sin, p + ".q_rope")
        k = self.rope(self.reshape(self.linear(h, p + ".k_proj"), (0, 0, c.kv_heads, c.head_dim),
                                   p + ".k_heads"), cos, sin, p + ".k_rope")
        v = self.reshape(self.linear(h, p + ".v_proj"), (0, 0, c.kv_heads, c.head_dim), p + ".v_heads")
        if self.w.spiking:
            q = self.spike(q, p + ".q_spike")
            k, v = self.int8_round(k, p + ".k_int8"), self.int8_round(v, p + ".v_int8")
        q, k, v = (self.reshape(t, (0, 0, -1), f"{p}.{n}_packed") for t, n in ((q, "q"), (k, "k"), (v, "v")))
        o = self.g.add("SlidingWindowAttention", [q, k, v], dict(
            q_num_heads=c.heads, kv_num_heads=c.kv_heads, window=self.window,
            scale=float(c.head_dim ** -0.5)), name=p).outputs[0]
        return self.linear(o, p + ".o_proj")

    def mlp(self, h: Value, p: str) -> Value:
        """SwiGLU: down(silu(gate(h)) * up(h)); down on its raw weight, unspiked (release)."""
        g = self.g
        gate, up = self.linear(h, p + ".gate_proj"), self.linear(h, p + ".up_proj")
        silu = g.add1("Mul", gate, g.add1("Sigmoid", gate, name=p + ".sigmoid"), name=p + ".silu")
        hidden = g.add1("Mul", silu, up, name=p + ".swiglu")
        return g.add1("MatMul", hidden, self.weight(p + ".down_proj.weight"),
                      name=p + ".down_proj")

    # -- pieces
    def linear(self, x: Value, name: str) -> Value:
        """x W^T (+ b); a W8ASpike projection takes spikes of x and the int8 grid of W."""
        g = self.g
        if self.w.quantised(name):
            q, scales, group = self.w.int8_grid(name)
            weight = g.add1("DequantizeGroups", g.add_param(name + ".weight", q),
                            g.add_param(name + SCALES, scales), axis=0, group=group,
                            name=name + ".dequantize")
            y = g.add1("MatMul", self.spike(x), weight, name=name)
        else:
            y = g.add1("MatMul", x, self.weight(name + ".weight"), name=name)
        if self.w.has(name + ".bias"):
            y = g.add1("Add", y, self.param(name + ".bias"), name=name + ".bias")
        return y

    def spike(self, x: Value, name: str | None = None) -> Value:
        """n * V_th with V_th = clamp(mean|x| / 3, 1e-5, 1e4) per row of the last axis and
        n = round(x / V_th): one neuron per input, shared by the projections that read it."""
        if id(x) not in self._spikes:
            g = self.g
            node_name = name or f"{x.name}.spike"
            counts, v_th = g.add("SpikeEncode", [x], dict(k=SPIKE_K, lo=V_TH_MIN, hi=V_TH_MAX),
                                 name=node_name).outputs
            values = g.add1("Cast", counts, to="f32", name=node_name + ".counts")
            self._spikes[id(x)] = g.add1("Mul", values, v_th, name=node_name + ".values")
        return self._spikes[id(x)]

    def int8_round(self, x: Value, name: str) -> Value:
        """Per row of the last axis: scale = clamp(max|x| / 127, 1e-5, 1e4),
        x = clip(round(x / scale), -128, 127) * scale (the release's quantize_sym)."""
        g, k = self.g, self.const
        absmax = g.add1("ReduceMax", g.add1("Abs", x, name=name + ".abs"), k([-1], "i64"),
                        keepdims=1, name=name + ".absmax")
        scale = g.add1("Clip", g.add1("Div", absmax, k(KV_QMAX), name=name + ".scale"),
                       k(V_TH_MIN), k(V_TH_MAX), name=name + ".scale_clamped")
        steps = g.add1("Round", g.add1("Div", x, scale, name=name + ".ratio"), name=name + ".round")
        steps = g.add1("Clip", steps, k(-KV_QMAX - 1), k(KV_QMAX), name=name + ".clip")
        return g.add1("Mul", steps, scale, name=name)

    def rms_norm(self, x: Value, weight: str, name: str) -> Value:
        return self.g.add1("RMSNormalization", x, self.param(weight), axis=-1,
                           epsilon=self.c.eps, name=name)

    def log_sigmoid(self, x: Value, name: str) -> Value:
        """logsigmoid(x) = min(x, 0) - log(1 + exp(-|x|)): no overflow, no log(0)."""
        g, k = self.g, self.const
        tail = g.add1("Exp", g.add1("Neg", g.add1("Abs", x, name=name + ".abs"), name=name + ".neg"),
                      name=name + ".exp")
        soft = g.add1("Log", g.add1("Add", tail, k(1.0), name=name + ".one_plus"), name=name + ".log")
        return g.add1("Sub", g.add1("Min", x, k(0.0), name=name + ".min"), soft,
                      name=name + ".logsigmoid")

    def rope_tables(self, ids: Value) -> tuple[Value, Value]:
        """cos, sin [seq, 1, head_dim] of p * inv_freq at positions p = 0..seq-1 (a Range
        over the sequence, which to-recurrent offsets by the decode position)."""
        g, k, d = self.g, self.const, self.c.head_dim
        inv_freq = (1.0 / (np.float32(self.c.rope_theta)
                           ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d))))
        seq = g.add1("Gather", g.add1("Shape", ids, name="rope.shape"), k(1, "i64"), axis=0,
                     name="rope.seq")
        limit = g.add1("Cast", seq, to="f32", name="rope.limit")
        positions = g.add1("Range", k(0.0), limit, k(1.0), name="rope.positions")
        column = g.add1("Unsqueeze", positions, k([1], "i64"), name="rope.column")
        freqs = g.add1("Mul", column, g.add_param("rope.inv_freq", inv_freq.astype(np.float32)),
                       name="rope.freqs")
        angles = g.add1("Unsqueeze", g.add1("Concat", freqs, freqs, axis=-1, name="rope.angles"),
                        k([1], "i64"), name="rope.per_head")
        return (g.add1("Cos", angles, name="rope.cos"), g.add1("Sin", angles, name="rope.sin"))

    def rope(self, x: Value, cos: Value, sin: Value, name: str) -> Value:
        """Rotate-half RoPE of x [B, T, H, D]: x cos + [-x2, x1] sin."""
        g, k, half = self.g, self.const, self.c.head_dim // 2
        first = g.add1("Slice", x, k([0], "i64"), k([half], "i64"), k([-1], "i64"), name=name + ".x1")
        second = g.add1("Slice", x, k([half], "i64"), k([2 * half], "i64"), k([-1], "i64"),
                        name=name + ".x2")
        rotated = g.add1("Concat", g.add1("Neg", second, name=name + ".neg"), first, axis=-1,
                         name=name + ".rotated")
        return g.add1("Add", g.add1("Mul", x, cos, name=name + ".cos"),
                      g.add1("Mul", rotated, sin, name=name + ".sin"), name=name)

    def reshape(self, x: Value, shape: tuple[int, ...], name: str) -> Value:
        return self.g.add1("Reshape", x, self.const(list(shape), "i64"), name=name)

    def param(self, name: str) -> Value:
        """A checkpoint tensor (a norm weight, a bias) as an f32 param."""
        return self.g.add_param(name, self.w.read(name))

    def matrix(self, name: str, transpose: bool = False, as_name: str | None = None) -> Value:
        """A weight matrix as a param in its stored dtype (bf16, f16 or f32: a bf16 model is
        never held as f32), transposed to [in, out] for a projection."""
        data = self.w.read(name, keep_storage=True)
        if transpose:  # straight into a param's aligned layout: one copy, not two
            data, stored = aligned_empty(data.shape[::-1], data.dtype), data
            data[...] = stored.T
        return self.g.add_param(as_name or name, data)

    def weight(self, name: str) -> Value:
        """A projection's weight [in, out] as f32 for its MatMul: Cast(stored weight), which
        pack-matmul-weights folds into the packed kernel's loads."""
        return self.widened(self.matrix(name, transpose=True))

    def widened(self, x: Value) -> Value:
        if x.dtype == "f32":
            return x
        return self.g.add1("Cast", x, to="f32", name=f"{x.name}.f32")

    def const(self, value, dtype: str = "f32") -> Value:
        key = (dtype, repr(value))
        if key not in self._consts:
            array = np.asarray(value, dtype=np.float32 if dtype == "f32" else np.int64)
            self._consts[key] = self.g.add_param(f"const_{len(self._consts)}", array)
        return self._consts[key]
