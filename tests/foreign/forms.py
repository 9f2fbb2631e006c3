"""A corpus of "foreign" token mixers: attention written the way people outside sbc write it in
PyTorch, exported the usual way (torch.onnx.export, dynamo or legacy), for sbc's fusion passes
to be tested on.

Each `Form` is a tiny float32 model (hidden 32, 4 query heads, 2 KV heads, head dim 8, vocab 64,
random weights from a seeded generator) plus what sbc's fusion should make of it:
  kind      linear (linear / gated linear attention, causal), swa (sliding-window softmax),
            causal (full causal softmax), hybrid (a decoder mixing kinds)
  expected  fused op counts, e.g. {"LinearAttention": 1}; {} for a near miss
  window    w: a query sees itself and the previous w-1 keys (w keys in all)
  near_miss looks like `kind` but computes something else, so it must NOT be fused as it;
            `description` says why
Mixers map x [batch, seq, 32] -> [batch, seq, 32]; full decoders map ids int64 [batch, seq]
-> logits [batch, seq, 64]. `export(form, exporter, seq_name)` returns the ONNX bytes (opset 18,
dynamic batch and seq, ir_version <= 10 for onnxruntime 1.31), cached in memory and on disk
under $SBC_FOREIGN_CACHE or a given cache_dir (dynamo exports take seconds each).

Idioms covered: causal masks by masked_fill(~mask, 0), a multiplied float tril, torch.tril
(Trilu) and torch.where; GLA decay (per key channel, g = logsigmoid(.)/16) and simple-GLA decay
(per head) as q*exp(b), k*exp(-b), as a pairwise decay tensor contracted by a 3-operand einsum,
and as a per-head decay matrix; RetNet's constant decay per head (gamma^(i-j) multiplied in);
time-major [T, B, H, D] layouts; matmul or einsum products; GQA by repeat_interleave,
expand+reshape (transformers' repeat_kv) and a 5-D einsum; 1/sqrt(d) on q, k or the output;
sliding windows by -inf, finfo.min, -1e9 and -1e4 masks, SDPA with a bool or float band, NaN
guards after softmax; full causal softmax; near misses; Python loops that the exporters unroll
(`static_seq`); tiny Hugging Face decoders (Mistral, Qwen2, Llama) and a GLA/SWA hybrid.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Callable

import onnx
import torch
import torch.nn.functional as F
from torch import nn

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, VOCAB = 32, 4, 2, 8, 64
GROUPS = HEADS // KV_HEADS
SCALE = HEAD_DIM ** -0.5
EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 8  # torch.export specialises sizes 0 and 1: never use them
OPSET = 18
ORT_MAX_IR_VERSION = 10  # onnxruntime 1.31 rejects newer IR versions
EXPORTERS = ("dynamo", "legacy")
# The tests run every form by the (fast) legacy exporter and these by dynamo (seconds each);
# SBC_FOREIGN_SWEEP=1 runs every form with every exporter.
SWEEP = os.environ.get("SBC_FOREIGN_SWEEP") == "1"
QUICK_DYNAMO = frozenset({"gla_qk_exp_masked_fill", "swa_neg_inf", "hf_mistral", "hybrid_decoder"})
HF_LEGACY = ("transformers' mask code calls torch.diff (packed-sequence detection), which the "
             "legacy exporter cannot export (aten::diff unsupported)")


@dataclass(frozen=True)
class Form:
    name: str
    factory: Callable[[], nn.Module]
    kind: str  # linear | swa | causal | hybrid
    expected: dict[str, int]
    description: str  # the idiom; for a near miss, why it must not be fused
    window: int | None = None
    near_miss: bool = False
    span: int | None = None  # keys an output depends on (stacked windows); None: all earlier ones
    ids: bool = False  # input is token ids (full decoders)
    static_seq: int | None = None  # a Python loop unrolled at this length: seq cannot be dynamic
    skip: dict[str, str] = field(default_factory=dict)  # exporter -> why it cannot export this

    def __post_init__(self):
        if self.span is None and self.window and not self.ids:  # one mixer: span = its window
            object.__setattr__(self, "span", self.window)

    @property
    def exporters(self) -> tuple[str, ...]:
        return tuple(e for e in EXPORTERS if e not in self.skip)

    @property
    def input_name(self) -> str:
        return "ids" if self.ids else "x"

    @property
    def output_name(self) -> str:
        return "logits" if self.ids else "y"

    def inputs(self, batch=EXAMPLE_BATCH, seq=EXAMPLE_SEQ, seed=0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        if self.ids:
            return torch.randint(0, VOCAB, (batch, seq), generator=gen)
        return torch.randn(batch, seq, HIDDEN, generator=gen)


# -- idioms: GQA, causal masks, bands --------------------------------------------------------------

def repeat_interleave(x):
    return x.repeat_interleave(GROUPS, dim=1)


def repeat_kv(x):
    """transformers' repeat_kv: [B, Hkv, T, D] -> [B, Hkv * groups, T, D] by expand + reshape."""
    b, h, t, d = x.shape
    return x[:, :, None, :, :].expand(b, h, GROUPS, t, d).reshape(b, h * GROUPS, t, d)


def causal_bool(t):
    return torch.ones(t, t).tril().bool()


def zero_future_masked_fill(s):
    return s.masked_fill(~causal_bool(s.shape[-1]), 0)


def zero_future_mul(s):
    causal = torch.tril(torch.ones(s.shape[-1], s.shape[-1]))
    return s * causal


def zero_future_trilu(s):
    return torch.tril(s)


def zero_future_where(s):
    return torch.where(causal_bool(s.shape[-1]), s, torch.zeros_like(s))


def band_arange(t, w):
    """True where key j is visible to query i: i - w < j <= i."""
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    return (j <= i) & (j > i - w)


def band_tril(t, w):
    return torch.ones(t, t).tril().triu(1 - w).bool()


def neg_inf_fill(band):
    return lambda s: s.masked_fill(~band(s.shape[-1]), float("-inf"))


def finfo_min_fill(band):
    return lambda s: s.masked_fill(~band(s.shape[-1]), torch.finfo(torch.float32).min)


def bias_1e9(band):
    return lambda s: s + torch.zeros(s.shape[-1], s.shape[-1]).masked_fill(~band(s.shape[-1]), -1e9)


def bias_1e4(band):
    """The old BERT/GPT-2 spelling: (1 - mask) * -10000."""
    return lambda s: s + (1.0 - band(s.shape[-1]).float()) * -10000.0


def window(band, w):
    return lambda t: band(t, w)


def decay_qk(q, k, g, sign=1.0):
    """q * exp(b), k * exp(-b) with b = cumsum(g) over seq; a per-head g [B, H, T] broadcasts
    over the key channels. sign=-1 is the wrong-sign near miss."""
    b = g.cumsum(dim=2)
    if b.dim() == 3:
        b = b[..., None]
    return q * torch.exp(sign * b), k * torch.exp(-sign * b)


# -- cores: q [B, H, T, D], k, v [B, Hkv, T, D], g None | [B, Hkv, T, D] | [B, Hkv, T] -> o like q

def linear_core(mask=zero_future_masked_fill, gqa=repeat_interleave, einsum=False, scale="q",
                decay_sign=None):
    """Quadratic (parallel) linear attention; gated by q*exp(b), k*exp(-b) if decay_sign is set."""
    def core(q, k, v, g):
        k, v = gqa(k), gqa(v)
        if scale == "q":
            q = q * SCALE
        elif scale == "k":
            k = k * SCALE
        if decay_sign is not None:
            q, k = decay_qk(q, k, gqa(g), decay_sign)
        s = torch.einsum("bhtd,bhsd->bhts", q, k) if einsum else q @ k.transpose(-1, -2)
        if mask is not None:
            s = mask(s)
        o = torch.einsum("bhts,bhsd->bhtd", s, v) if einsum else s @ v
        return o * SCALE if scale == "out" else o
    return core


def gla_pairwise_core(q, k, v, g):
    """GLA, the decay as a pairwise tensor exp(b_t - b_s) [B, H, T, S, D] in a 3-operand einsum."""
    k, v, g = repeat_interleave(k), repeat_interleave(v), repeat_interleave(g)
    b = torch.cumsum(g, dim=2)
    decay = torch.exp(b[..., :, None, :] - b[..., None, :, :])
    s = torch.einsum("bhtc,bhsc,bhtsc->bhts", q * SCALE, k, decay)
    return zero_future_where(s) @ v


def simple_gla_matrix_core(q, k, v, g):
    """Simple GLA (per-head decay): (q @ k^T) * exp(tril(b_i - b_j)), then masked."""
    k, v, g = repeat_kv(k), repeat_kv(v), repeat_interleave(g)
    b = g.cumsum(-1)
    s = (q @ k.transpose(-1, -2)) * torch.exp(torch.tril(b[..., :, None] - b[..., None, :]))
    return zero_future_masked_fill(s * SCALE) @ v


def gqa5d_core(decay):
    """GQA without repeating k/v: q as [B, T, Hkv, groups, D], einsum('bqhgd,bkhd->bhgqk')."""
    def core(q, k, v, g):
        bsz, _, t, d = q.shape
        if decay:
            b = repeat_interleave(g).cumsum(2)
            q, k = q * b.exp(), k * torch.exp(-g.cumsum(2))
        q5 = q.transpose(1, 2).reshape(bsz, t, KV_HEADS, GROUPS, d)
        s = torch.einsum("bqhgd,bkhd->bhgqk", q5, k.transpose(1, 2)) * SCALE
        s = zero_future_mul(s) if decay else zero_future_where(s)
        o = torch.einsum("bhgqk,bkhd->bqhgd", s, v.transpose(1, 2))
        return o.reshape(bsz, t, HEADS, d).transpose(1, 2)
    return core


def mixed_heads_core(seed=1):
    """Near miss: causal linear attention whose score tensor is mixed across heads before @ v."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.eye(HEADS) + 0.5 * torch.randn(HEADS, HEADS, generator=gen)

    def core(q, k, v, g):
        s = zero_future_masked_fill((q * SCALE) @ repeat_kv(k).transpose(-1, -2))
        return torch.einsum("gh,bhts->bgts", mixing, s) @ repeat_kv(v)
    return core


def softmax_core(mask, gqa=repeat_kv, scale="scores", guard=None):
    """softmax(q k^T / sqrt(d) + mask) @ v; `guard` is applied to the probabilities."""
    def core(q, k, v, g):
        k, v = gqa(k), gqa(v)
        if scale == "q":
            s = (q * SCALE) @ k.transpose(-1, -2)
        else:
            s = q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM)
        p = torch.softmax(mask(s), dim=-1)
        return (guard(p) if guard else p) @ v
    return core


def nan_to_num(p):
    return torch.nan_to_num(p)


def where_isnan(p):
    return torch.where(torch.isnan(p), torch.zeros_like(p), p)


def sdpa_core(band=None, float_mask=False):
    """F.scaled_dot_product_attention with a bool band, a float (0 / -inf) band, or is_causal."""
    def core(q, k, v, g):
        k, v = repeat_kv(k), repeat_kv(v)
        if band is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = band(q.shape[-2])
        if float_mask:
            mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return core


def distance_decay_core(decay_of, gqa=repeat_kv):
    """A constant decay over distance, multiplied into the causal scores (RetNet's retention:
    D[h, i, j] = gamma_h^(i - j) for j <= i, else 0): ((q k^T / sqrt(d)) * D) @ v."""
    def core(q, k, v, g):
        k, v = gqa(k), gqa(v)
        idx = torch.arange(q.shape[-2])
        distance = (idx[:, None] - idx[None, :]).float()
        decay = decay_of(distance.clamp(min=0)) * (distance >= 0).float()
        return ((q * SCALE) @ k.transpose(-1, -2) * decay) @ v
    return core


def retention(gamma):
    """RetNet's per-head decay matrix from gamma [H]: gamma_h ** distance."""
    return lambda distance: gamma[:, None, None] ** distance


# gamma per KV head (repeated over its query heads), and one per query head (RetNet's 1 - 2^-(5+h))
KV_GAMMA = (1 - 2.0 ** (-5 - torch.arange(KV_HEADS, dtype=torch.float32))).repeat_interleave(GROUPS)
Q_GAMMA = 1 - 2.0 ** (-5 - torch.arange(HEADS, dtype=torch.float32))


def windowed_linear_core(q, k, v, g):
    """Near miss: linear attention over a window of 4 keys (masked_fill(~band, 0))."""
    k, v = repeat_kv(k), repeat_kv(v)
    band = window(band_arange, 4)(q.shape[-2])
    return ((q * SCALE) @ k.transpose(-1, -2)).masked_fill(~band, 0) @ v


def gla_loop_core(q, k, v, g):
    """Recurrent GLA as a Python loop over t: S = diag(exp(g_t)) S + k_t v_t^T; o_t = q_t S."""
    k, v, g = repeat_kv(k), repeat_kv(v), repeat_kv(g)
    bsz, h, t, d = q.shape
    state = q.new_zeros(bsz, h, d, d)
    outs = []
    for i in range(t):
        state = state * g[:, :, i].exp()[..., None] + k[:, :, i, :, None] * v[:, :, i, None, :]
        outs.append((q[:, :, i : i + 1] * SCALE) @ state)
    return torch.cat(outs, dim=2)


def gla_chunk_loop_core(chunk=4):
    """Chunked GLA as a Python loop over chunks writing o[:, :, c:c+chunk] by index assignment."""
    def core(q, k, v, g):
        k, v, g = repeat_interleave(k), repeat_interleave(v), repeat_interleave(g)
        bsz, h, t, d = q.shape
        o = torch.zeros_like(q)
        state = q.new_zeros(bsz, h, d, d)
        for c in range(0, t, chunk):
            part = slice(c, c + chunk)
            qc, kc, vc = q[:, :, part] * SCALE, k[:, :, part], v[:, :, part]
            b = g[:, :, part].cumsum(2)
            qd, kd = qc * b.exp(), kc * (-b).exp()
            o[:, :, c : c + chunk] = qd @ state + torch.tril(qd @ kd.transpose(-1, -2)) @ vc
            end = b[:, :, -1:]
            state = state * end.exp().transpose(-1, -2)
            state = state + (kc * (end - b).exp()).transpose(-1, -2) @ vc
        return o
    return core


# -- modules ---------------------------------------------------------------------------------------

def _init(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter drawn from one seeded generator, scaled by 1/sqrt(fan-in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return module.eval()


def rope(x, theta=10000.0):
    """Rotate-half RoPE over positions 0..T-1 of x [B, H, T, D]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
    freqs = torch.arange(x.shape[-2]).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    x1, x2 = x[..., : HEAD_DIM // 2], x[..., HEAD_DIM // 2 :]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


class Mixer(nn.Module):
    """x -> q [B, H, T, D], k, v [B, Hkv, T, D] (feature map, RoPE, log decay g) -> core -> o_proj.
    gate: "key" (low-rank hidden -> 16 -> Hkv*D, SpikingBrain's GLA) or "head" (hidden -> Hkv)."""

    def __init__(self, core, feature=None, gate=None, use_rope=False):
        super().__init__()
        self.core, self.feature, self.gate, self.use_rope = core, feature, gate, use_rope
        self.q_proj = nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=False)
        self.k_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)
        if gate == "key":
            self.gk_proj = nn.Sequential(nn.Linear(HIDDEN, 16, bias=False),
                                         nn.Linear(16, KV_HEADS * HEAD_DIM))
        elif gate == "head":
            self.gk_proj = nn.Linear(HIDDEN, KV_HEADS)

    def forward(self, x):
        bsz, t, _ = x.shape
        q = self.q_proj(x).view(bsz, t, -1, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(bsz, t, -1, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(bsz, t, -1, HEAD_DIM).transpose(1, 2)
        if self.feature == "relu":
            q, k = F.relu(q), F.relu(k)
        elif self.feature == "elu1":
            q, k = F.elu(q) + 1, F.elu(k) + 1
        if self.use_rope:
            q, k = rope(q), rope(k)
        g = None
        if self.gate:
            g = F.logsigmoid(self.gk_proj(x)) / 16
            g = (g.view(bsz, t, -1, HEAD_DIM) if self.gate == "key" else g).transpose(1, 2)
        o = self.core(q, k, v, g)
        return self.o_proj(o.transpose(1, 2).reshape(bsz, t, HEADS * HEAD_DIM))


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, inner=64):
        super().__init__()
        self.gate = nn.Linear(HIDDEN, inner, bias=False)
        self.up = nn.Linear(HIDDEN, inner, bias=False)
        self.down = nn.Linear(inner, HIDDEN, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class TimeMajorMixer(nn.Module):
    """Time-major code (fairseq style): x [B, T, C] -> [T, B, C]; heads as [T, B, H, D];
    causal linear attention by einsum('tbhd,sbhd->bhts') and back to [T, B, H, D]."""

    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=False) for _ in range(4))

    def forward(self, x):
        x = x.transpose(0, 1)
        t, bsz, _ = x.shape
        q, k, v = (F.relu(p(x)).view(t, bsz, HEADS, HEAD_DIM) if p is not self.v_proj
                   else p(x).view(t, bsz, HEADS, HEAD_DIM) for p in (self.q_proj, self.k_proj, self.v_proj))
        s = zero_future_masked_fill(torch.einsum("tbhd,sbhd->bhts", q * SCALE, k))
        o = torch.einsum("bhts,sbhd->tbhd", s, v).reshape(t, bsz, HEADS * HEAD_DIM)
        return self.o_proj(o).transpose(0, 1)


class HybridDecoder(nn.Module):
    """Pre-norm decoder: a GLA layer then an SWA layer (window 4), SwiGLU MLPs, untied LM head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.mixers = nn.ModuleList([
            Mixer(linear_core(gqa=repeat_kv, decay_sign=1.0), feature="relu", gate="key"),
            Mixer(softmax_core(neg_inf_fill(window(band_arange, 4))), use_rope=True)])
        self.norms = nn.ModuleList(RMSNorm(HIDDEN) for _ in range(5))
        self.mlps = nn.ModuleList(SwiGLU() for _ in range(2))
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, ids):
        h = self.embed(ids)
        for i, (mixer, mlp) in enumerate(zip(self.mixers, self.mlps)):
            h = h + mixer(self.norms[2 * i](h))
            h = h + mlp(self.norms[2 * i + 1](h))
        return self.lm_head(self.norms[4](h))


class HFLogits(nn.Module):
    """A transformers causal LM as ids -> logits, without cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits


def hf_decoder(arch: str, seed: int = 0, **config) -> nn.Module:
    """A tiny random transformers model (no network): arch in mistral | qwen2 | llama."""
    import transformers
    cfg_cls, model_cls = {"mistral": ("MistralConfig", "MistralForCausalLM"),
                          "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                          "llama": ("LlamaConfig", "LlamaForCausalLM")}[arch]
    cfg = getattr(transformers, cfg_cls)(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=64, use_cache=False, **config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return HFLogits(getattr(transformers, model_cls)(cfg)).eval()


# -- the corpus ------------------------------------------------------------------------------------

LA = {"LinearAttention": 1}
SWA = {"SlidingWindowAttention": 1}
# full causal attention: a SlidingWindowAttention whose window is the KV cache (full = 1)
CAUSAL = {"SlidingWindowAttention": 1}
GLA = dict(feature="relu", gate="key")  # SpikingBrain's GLA: relu(q), relu(k), low-rank gate


def mixer(core, seed=0, **kw):
    return lambda: _init(Mixer(core, **kw), seed)


def la(name, core, description, **kw):
    return Form(name, mixer(core, **kw), "linear", LA, description)


def swa(name, core, w, description, rope=True):
    return Form(name, mixer(core, use_rope=rope), "swa", SWA, description, window=w)


def near_miss(name, kind, core, description, window=None, **kw):
    return Form(name, mixer(core, **kw), kind, {}, description, window=window, near_miss=True)


def hole_band(t):
    """Window 5 minus the key at i - 1."""
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    return band_arange(t, 5) & (j != i - 1)


def two_sided_band(t):
    """|i - j| < 4."""
    return (torch.arange(t)[:, None] - torch.arange(t)[None, :]).abs() < 4


def hf(arch, kind, expected, description, window=None, span=None, **config):
    return Form(f"hf_{arch}", lambda: hf_decoder(arch, **config), kind, expected, description,
                window=window, span=span, ids=True, skip={"legacy": HF_LEGACY})


_FORMS = [
    # linear attention, no decay
    la("la_masked_fill", linear_core(zero_future_masked_fill),
       "scores.masked_fill(~ones(T,T).tril().bool(), 0); repeat_interleave GQA; scale on q"),
    la("la_causal_mul", linear_core(zero_future_mul, repeat_kv, scale="k"),
       "scores * tril(ones) (float); repeat_kv GQA; elu+1 features; scale on k", feature="elu1"),
    la("la_trilu_einsum", linear_core(zero_future_trilu, einsum=True, scale="out"),
       "torch.tril(scores) (Trilu); einsum products; scale on the output"),
    la("la_where", linear_core(zero_future_where, repeat_kv, scale="k"),
       "torch.where(mask, scores, zeros_like(scores)); repeat_kv GQA", feature="relu"),
    la("la_gqa5d_einsum", gqa5d_core(decay=False),
       "GQA as einsum('bqhgd,bkhd->bhgqk') without repeating k/v; where-masked"),
    # gated linear attention, per key channel decay b = cumsum(logsigmoid(.) / 16)
    la("gla_qk_exp_masked_fill", linear_core(gqa=repeat_kv, decay_sign=1.0),
       "GLA: (q*exp(b)) @ (k*exp(-b))^T; masked_fill; repeat_kv; scale on q", **GLA),
    la("gla_qk_exp_trilu_einsum",
       linear_core(zero_future_trilu, einsum=True, scale="out", decay_sign=1.0),
       "GLA q*exp(b), k*exp(-b); torch.tril; einsum; scale on the output", **GLA),
    la("gla_qk_exp_causal_mul_k", linear_core(zero_future_mul, scale="k", decay_sign=1.0),
       "GLA q*exp(b), k*exp(-b); float tril multiplied in; scale on k; no feature map",
       gate="key"),
    la("gla_pairwise_einsum", gla_pairwise_core,
       "GLA decay exp(b[..., :, None, :] - b[..., None, :, :]) in einsum('bhtc,bhsc,bhtsc->bhts')",
       **GLA),
    la("gla_gqa5d_einsum", gqa5d_core(decay=True),
       "GLA with 5-D einsum GQA; decay folded into q and k; float tril", **GLA),
    # simple GLA, per head decay
    la("sgla_decay_matrix", simple_gla_matrix_core,
       "simple GLA: (q @ k^T) * exp(tril(b_i - b_j)), then masked_fill; repeat_kv", gate="head"),
    la("sgla_qk_exp_where", linear_core(zero_future_where, decay_sign=1.0),
       "simple GLA: q*exp(b)[..., None], k*exp(-b)[..., None]; torch.where mask",
       feature="relu", gate="head"),
    # constant decay per head (RetNet retention), multiplied in as a [H, T, T] matrix
    la("retnet_decay_per_kv_head", distance_decay_core(retention(KV_GAMMA)),
       "(q k^T * D) @ v, D = gamma_h^(i-j) masked causal, gamma per KV head; repeat_kv"),
    la("retnet_decay_per_query_head", distance_decay_core(retention(Q_GAMMA)),
       "RetNet's gamma_h = 1 - 2^-(5+h) per query head: each query head keeps its own state"),
    # other layouts
    Form("la_time_major", lambda: _init(TimeMajorMixer(), 0), "linear", LA,
         "time-major [T, B, H, D] heads, einsum('tbhd,sbhd->bhts'), relu features"),
    # sliding-window softmax attention, RoPE outside
    swa("swa_neg_inf", softmax_core(neg_inf_fill(window(band_arange, 4))), 4,
        "masked_fill(~band, -inf), band from arange compares; repeat_kv"),
    swa("swa_finfo_min", softmax_core(finfo_min_fill(window(band_tril, 4)), scale="q"), 4,
        "masked_fill(~band, finfo(float32).min), band = ones.tril().triu(1-w); scale on q"),
    swa("swa_bias_1e9", softmax_core(bias_1e9(window(band_arange, 4)), repeat_interleave), 4,
        "additive bias zeros.masked_fill(~band, -1e9); repeat_interleave GQA"),
    swa("swa_bias_1e4_w3", softmax_core(bias_1e4(window(band_tril, 3))), 3,
        "additive (1 - band) * -10000, window 3"),
    swa("swa_sdpa_bool", sdpa_core(window(band_arange, 4)), 4,
        "F.scaled_dot_product_attention(attn_mask=band (bool)); repeat_kv"),
    swa("swa_sdpa_float_w3", sdpa_core(window(band_tril, 3), float_mask=True), 3,
        "SDPA with a float additive band mask (0 / -inf), window 3"),
    swa("swa_nan_to_num", softmax_core(neg_inf_fill(window(band_arange, 4)), guard=nan_to_num), 4,
        "-inf band, then torch.nan_to_num on the probabilities"),
    swa("swa_where_isnan", softmax_core(neg_inf_fill(window(band_tril, 4)), guard=where_isnan), 4,
        "-inf band, then where(isnan(p), 0, p)"),
    # full causal softmax attention
    Form("causal_sdpa", mixer(sdpa_core(), use_rope=True), "causal", CAUSAL,
         "F.scaled_dot_product_attention(is_causal=True); repeat_kv"),
    Form("causal_neg_inf", mixer(softmax_core(neg_inf_fill(causal_bool))), "causal",
         CAUSAL, "masked_fill(~ones.tril().bool(), -inf), no RoPE"),
    # near misses: must not be fused
    near_miss("nm_window_hole", "swa", softmax_core(neg_inf_fill(hole_band)),
              "window 5 minus key i-1: 4 keys like w=4 but not a band, so no window fits",
              window=4, use_rope=True),
    near_miss("nm_noncausal_la", "linear", linear_core(None, repeat_kv),
              "linear attention without a causal mask: every query sees future keys",
              feature="relu"),
    near_miss("nm_wrong_decay_sign", "linear", linear_core(gqa=repeat_kv, decay_sign=-1.0),
              "q*exp(-b), k*exp(b): the decay exp(b_s - b_t) grows with distance", **GLA),
    near_miss("nm_mixed_heads", "linear", mixed_heads_core(),
              "a head-mixing matrix over the causal scores before @ v: heads not independent",
              feature="relu"),
    near_miss("nm_bidirectional_swa", "swa", softmax_core(neg_inf_fill(two_sided_band)),
              "|i - j| < w: a bidirectional window sees future keys", window=4, use_rope=True),
    near_miss("nm_windowed_linear", "linear", windowed_linear_core,
              "linear attention over a band of 4 keys: LinearAttention has no window"),
    near_miss("nm_power_law_decay", "linear", distance_decay_core(lambda d: 1.0 / (1.0 + d)),
              "a decay of 1 / (1 + i - j): not geometric, so no recurrent state carries it"),
    # Python loops, unrolled by the exporters at EXAMPLE_SEQ
    Form("gla_recurrent_loop", mixer(gla_loop_core, **GLA), "linear", LA,
         "for t in range(T): S = exp(g_t) S + k_t v_t^T; o_t = q_t S (unrolled, seq fixed)",
         static_seq=EXAMPLE_SEQ),
    Form("gla_chunk_loop_scatter", mixer(gla_chunk_loop_core(4), **GLA), "linear", LA,
         "chunks of 4 in a loop, o[:, :, c:c+4] = ... (ScatterND); state carried (unrolled)",
         static_seq=EXAMPLE_SEQ),
    # full decoders
    Form("hybrid_decoder", lambda: _init(HybridDecoder(), 0), "hybrid",
         {"LinearAttention": 1, "SlidingWindowAttention": 1},
         "embedding, GLA layer + SWA layer (w=4, RoPE), RMSNorm, SwiGLU, LM head",
         window=4, ids=True),
    hf("mistral", "swa", {"SlidingWindowAttention": 2},
       "transformers MistralForCausalLM, sliding_window=4, SDPA, 2 layers",
       window=4, span=7, sliding_window=4),
    hf("qwen2", "swa", {"SlidingWindowAttention": 2},
       "transformers Qwen2ForCausalLM, use_sliding_window: layer 0 full, layer 1 window 4",
       window=4, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    hf("llama", "causal", {"SlidingWindowAttention": 2},
       "transformers LlamaForCausalLM, full causal attention in both layers (control)"),
]

FORMS: dict[str, Form] = {f.name: f for f in _FORMS}


# -- export ----------------------------------------------------------------------------------------

_SOURCE_KEY = hashlib.sha1(pathlib.Path(__file__).read_bytes()).hexdigest()[:10]
_memo: dict[tuple, bytes] = {}


def export(form: Form | str, exporter: str = "dynamo", seq_name: str = "seq",
           cache_dir: str | os.PathLike | None = None) -> bytes:
    """The ONNX bytes of `form` by torch.onnx.export: dynamo (opset 18) or legacy (TorchScript,
    opset 18); input x / ids with dims ("batch", seq_name), output y / logits alike (a loop form
    keeps seq fixed at `static_seq`). Cached in memory and, when `cache_dir` or $SBC_FOREIGN_CACHE
    names a directory, on disk, keyed by form, exporter, seq name, torch version and this file."""
    form = FORMS[form] if isinstance(form, str) else form
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    if seq_name == "batch":
        raise ValueError("seq_name 'batch' is the batch dim's name")
    if exporter in form.skip:
        raise ValueError(f"{form.name} cannot be exported by {exporter}: {form.skip[exporter]}")
    key = (form.name, exporter, seq_name, torch.__version__, _SOURCE_KEY)
    if key in _memo:
        return _memo[key]
    cache_dir = cache_dir or os.environ.get("SBC_FOREIGN_CACHE")
    path = None
    if cache_dir:
        path = pathlib.Path(cache_dir) / ("-".join(key).replace("+", "_") + ".onnx")
        if path.exists():
            _memo[key] = path.read_bytes()
            return _memo[key]
    data = _export(form, exporter, seq_name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # never a half-written file under the real name
    _memo[key] = data
    return data


def _export(form: Form, exporter: str, seq_name: str) -> bytes:
    model = form.factory()
    example = form.inputs(seq=form.static_seq or EXAMPLE_SEQ)
    names = dict(input_names=[form.input_name], output_names=[form.output_name],
                 opset_version=OPSET)
    axes = {0: "batch"} if form.static_seq else {0: "batch", 1: seq_name}
    with _quiet():
        if exporter == "dynamo":
            dims = {form.input_name: {i: torch.export.Dim(n) for i, n in axes.items()}}
            program = torch.onnx.export(model, (example,), dynamic_shapes=dims, dynamo=True,
                                        optimize=True, verbose=False, **names)
            proto = program.model_proto
        else:
            f = io.BytesIO()
            torch.onnx.export(model, (example,), f, dynamo=False, **names,
                              dynamic_axes={form.input_name: axes, form.output_name: axes})
            proto = onnx.load_from_string(f.getvalue())
    proto.ir_version = min(proto.ir_version, ORT_MAX_IR_VERSION)
    return proto.SerializeToString()


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' warnings and log lines (torchvision missing, tracer warnings)."""
    level = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)
