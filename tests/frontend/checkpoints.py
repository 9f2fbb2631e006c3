"""Tiny SpikingBrain release checkpoints for tests: config.json with the release's keys,
safetensors with its parameter names (written by the `safetensors` package from torch
tensors, so bf16 is real bf16), random weights, both variants:

    plain      hf_7B_model: float projections, low-rank GLA gate gk_proj.0 / gk_proj.1
    w8aspike   W8ASpike: full-rank gk_proj, `<name>.weight_quantizer.scales` [out, in/128, 1]
               on every QuantLinear (down_proj's too, which the release does not use)

and a reference forward (`reference_logits`) written from CONTEXT.md's math that reads the
same files through safetensors' own loader, never through sbc.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors.torch import load_file, save_file

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


@dataclass
class Tiny:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    mlp: int = 256
    vocab: int = 96
    window: int = 4
    rope_theta: float = 1e6
    eps: float = 1e-6
    tie: bool = False
    overrides: dict = field(default_factory=dict)  # extra / replaced config.json keys

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def config_json(t: Tiny) -> dict:
    """The release's config.json keys (W8ASpike/config.json), at tiny sizes."""
    c = {"architectures": ["GLAswaForCausalLM"],
         "auto_map": {"AutoConfig": "configuration_gla_swa.GLAswaConfig",
                      "AutoModelForCausalLM": "modeling_gla_swa.GLAswaForCausalLM"},
         "attention_dropout": 0.0, "attn_layers": list(range(1, t.layers, 2)),
         "attn_mode": "chunk", "bos_token_id": 1, "conv_size": 4, "elementwise_affine": True,
         "eos_token_id": 1, "fuse_cross_entropy": True, "hidden_act": "swish",
         "hidden_size": t.hidden, "initializer_range": 0.02, "intermediate_size": t.mlp,
         "max_position_embeddings": 131072, "model_type": "gla_swa", "norm_eps": t.eps,
         "num_attention_heads": t.heads, "num_hidden_layers": t.layers,
         "num_key_value_heads": t.kv_heads, "rope_theta": t.rope_theta,
         "sliding_window": t.window, "tie_word_embeddings": t.tie, "torch_dtype": "bfloat16",
         "transformers_version": "4.45.0", "use_cache": True, "use_short_conv": False,
         "vocab_size": t.vocab}
    c.update(t.overrides)
    return c


def random_weights(t: Tiny, variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """float32 tensors by release name. W8ASpike weights lie near (not on) an int8 grid whose
    scales are absmax / 100, so re-quantising (absmax / 127) would give other numbers."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    w: dict[str, torch.Tensor] = {}
    kv = t.kv_heads * t.head_dim

    def linear(name, out, inp, bias, quant=variant == "w8aspike"):
        weight = randn(out, inp) / math.sqrt(inp)
        if quant:
            groups = weight.reshape(out, inp // 128, 128)
            scales = groups.abs().amax(-1, keepdim=True) / 100
            q = torch.round(groups / scales)
            # off the grid by up to 0.3 steps: the loader must round to the checkpoint's grid
            weight = ((q + 0.3 * (torch.rand(q.shape, generator=gen) - 0.5) * 2) * scales)
            w[name + ".weight_quantizer.scales"] = scales
            weight = weight.reshape(out, inp)
        w[name + ".weight"] = weight
        if bias:
            w[name + ".bias"] = 0.05 * randn(out)

    w["model.embeddings.weight"] = randn(t.vocab, t.hidden)
    w["model.norm.weight"] = 1 + 0.1 * randn(t.hidden)
    if not t.tie:
        w["lm_head.weight"] = randn(t.vocab, t.hidden) / math.sqrt(t.hidden)
    for i in range(t.layers):
        p = f"model.layers.{i}."
        w[p + "attn_norm.weight"] = 1 + 0.1 * randn(t.hidden)
        w[p + "mlp_norm.weight"] = 1 + 0.1 * randn(t.hidden)
        linear(p + "mlp.gate_proj", t.mlp, t.hidden, False)
        linear(p + "mlp.up_proj", t.mlp, t.hidden, False)
        linear(p + "mlp.down_proj", t.hidden, t.mlp, False)
        w[p + "mlp.down_proj.weight"] *= 0.5
        a = p + "attn."
        linear(a + "q_proj", t.hidden, t.hidden, True)
        linear(a + "k_proj", kv, t.hidden, True)
        linear(a + "v_proj", kv, t.hidden, True)
        linear(a + "o_proj", t.hidden, t.hidden, False)
        if i % 2 == 0:  # GLA
            w[a + "g_norm.weight"] = 1 + 0.1 * randn(t.head_dim)
            if variant == "w8aspike":
                linear(a + "gk_proj", kv, t.hidden, True)
                w[a + "gk_proj.bias"] += 4.0  # decays of a few percent per step
            else:
                w[a + "gk_proj.0.weight"] = randn(16, t.hidden) / math.sqrt(t.hidden)
                w[a + "gk_proj.1.weight"] = randn(kv, 16) / 4
                w[a + "gk_proj.1.bias"] = 4.0 + 0.5 * randn(kv)
    return w


def write_checkpoint(folder, t: Tiny | None = None, variant: str = "plain", dtype: str = "bf16",
                     shards: int = 1, seed: int = 0, drop: tuple[str, ...] = ()) -> str:
    """Write config.json and the weights (stored as `dtype`; `shards` > 1: an index and that
    many files) into `folder`; `drop` leaves tensors out. Returns the folder."""
    t = t or Tiny()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_json(t), f, indent=2)
    weights = {k: v.to(DTYPES[dtype]).contiguous() for k, v in random_weights(t, variant, seed).items()
               if k not in drop}
    names = sorted(weights)
    if shards == 1:
        save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return os.fspath(folder)
    weight_map = {}
    for s, part in enumerate(np.array_split(np.array(names, dtype=object), shards)):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: weights[k] for k in part}, os.path.join(folder, file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    return os.fspath(folder)


# -- the reference forward ----------------------------------------------------------------------

def load_reference(folder) -> tuple[dict, dict[str, torch.Tensor]]:
    """config.json and every tensor as float64, through safetensors' own loader."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    index = os.path.join(folder, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
             else ["model.safetensors"])
    tensors = {}
    for file in files:
        tensors.update({k: v.to(torch.float64) for k, v in load_file(os.path.join(folder, file)).items()})
    return config, tensors


class Margins:
    """The smallest distance of x / V_th (and of SWA's x / scale) from a rounding boundary
    (k + 0.5) seen at each (batch, position): where it is tiny, float32 and float64 may round
    differently, so outputs from there on may differ by a spike count."""

    def __init__(self, shape):
        self.at = np.full(shape, np.inf)

    def see(self, ratio: torch.Tensor) -> None:
        # ratio [B, T, ...]: distance from the nearest .5
        d = (ratio - torch.floor(ratio) - 0.5).abs().reshape(*ratio.shape[:2], -1).amin(-1)
        self.at = np.minimum(self.at, d.numpy())


def reference_logits(folder, ids: np.ndarray, window_keys: int | None = None,
                     margins: Margins | None = None) -> np.ndarray:
    """Logits [B, T, vocab] (float64) of the checkpoint in `folder`, from CONTEXT.md section 1:
    pre-norm blocks, GLA as its recurrence, SWA as masked softmax over `window_keys` keys
    (default sliding_window + 1: the release's flash-attention prefill), W8ASpike fake-quant
    where `.weight_quantizer.scales` exist (the down projection raw)."""
    c, w = load_reference(folder)
    spiking = any(k.endswith(".weight_quantizer.scales") for k in w)
    hd = c["hidden_size"] // c["num_attention_heads"]
    hq, hkv, eps = c["num_attention_heads"], c["num_key_value_heads"], c["norm_eps"]
    keys = window_keys or c["sliding_window"] + 1
    ids_t = torch.from_numpy(ids)
    b, t = ids.shape

    def rms(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight

    def spikes(x):
        v_th = (x.abs().mean(-1, keepdim=True) / 3.0).clamp(1e-5, 1e4)
        if margins is not None:
            margins.see(x / v_th)
        return torch.round(x / v_th) * v_th

    def proj(x, name, quant=True):
        weight, bias = w[name + ".weight"], w.get(name + ".bias")
        scales = w.get(name + ".weight_quantizer.scales")
        if spiking and quant and scales is not None:
            out, inp = weight.shape
            grid = torch.round(weight.to(torch.float32).reshape(out, -1, inp // scales.shape[1])
                               / scales.to(torch.float32)).to(torch.float64)
            weight = (grid * scales).reshape(out, inp)
            x = spikes(x)
        y = x @ weight.T
        return y if bias is None else y + bias

    inv_freq = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    angles = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq
    angles = torch.cat([angles, angles], -1)
    cos, sin = angles.cos(), angles.sin()

    def rope(x):  # [B, H, T, D]
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def int8(x):  # per row of the last axis
        scale = (x.abs().amax(-1, keepdim=True) / 127).clamp(1e-5, 1e4)
        if margins is not None:
            margins.see((x / scale).transpose(1, 2))
        return torch.round(x / scale).clamp(-128, 127) * scale

    def heads(x, h):
        return x.reshape(b, t, h, hd).transpose(1, 2)

    def gla(x, p):
        q = heads(torch.relu(proj(x, p + "q_proj")), hq)
        k = heads(torch.relu(proj(x, p + "k_proj")), hkv)
        v = heads(proj(x, p + "v_proj"), hkv)
        if p + "gk_proj.0.weight" in w:
            gk = (x @ w[p + "gk_proj.0.weight"].T) @ w[p + "gk_proj.1.weight"].T + w[p + "gk_proj.1.bias"]
        else:
            gk = proj(x, p + "gk_proj")
        g = heads(torch.nn.functional.logsigmoid(gk) / 16, hkv)
        state = torch.zeros(b, hkv, hd, hd, dtype=torch.float64)
        out = torch.zeros(b, hq, t, hd, dtype=torch.float64)
        for i in range(t):
            state = torch.exp(g[:, :, i, :, None]) * state + k[:, :, i, :, None] * v[:, :, i, None, :]
            for h in range(hq):
                out[:, h, i] = (q[:, h, i] / math.sqrt(hd))[:, None, :].matmul(state[:, h // (hq // hkv)])[:, 0]
        o = rms(out, w[p + "g_norm.weight"]).transpose(1, 2).reshape(b, t, hq * hd)
        return proj(o, p + "o_proj")

    def swa(x, p):
        q = rope(heads(proj(x, p + "q_proj"), hq))
        k = rope(heads(proj(x, p + "k_proj"), hkv))
        v = heads(proj(x, p + "v_proj"), hkv)
        if spiking:
            q = spikes(q.transpose(1, 2)).transpose(1, 2)  # per (token, head)
            k, v = int8(k), int8(v)
        k, v = (z.repeat_interleave(hq // hkv, dim=1) for z in (k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        pos = torch.arange(t)
        offset = pos[:, None] - pos[None, :]
        scores = scores.masked_fill(~((offset >= 0) & (offset < keys)), float("-inf"))
        o = torch.softmax(scores, -1) @ v
        return proj(o.transpose(1, 2).reshape(b, t, hq * hd), p + "o_proj")

    x = w["model.embeddings.weight"][ids_t]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        mixer = swa if i in c["attn_layers"] else gla
        x = x + mixer(rms(x, w[p + "attn_norm.weight"]), p + "attn.")
        h = rms(x, w[p + "mlp_norm.weight"])
        act = torch.nn.functional.silu(proj(h, p + "mlp.gate_proj")) * proj(h, p + "mlp.up_proj")
        x = x + act @ w[p + "mlp.down_proj.weight"].T  # raw weight, unspiked (release)
    head = w.get("lm_head.weight", w["model.embeddings.weight"])
    return (rms(x, w["model.norm.weight"]) @ head.T).numpy()


def reference_greedy(folder, prompt: np.ndarray, steps: int) -> list[int]:
    """Greedy continuation of prompt [1, T] by the reference (full recompute each step)."""
    ids = prompt.copy()
    out = []
    for _ in range(steps):
        nxt = int(reference_logits(folder, ids)[0, -1].argmax())
        out.append(nxt)
        ids = np.concatenate([ids, [[nxt]]], axis=1)
    return out
