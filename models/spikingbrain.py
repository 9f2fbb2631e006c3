"""A PyTorch SpikingBrain-7B-style causal LM (CONTEXT.md section 1), with seeded random weights.

Layer l is gated linear attention (GLA) when l is even, sliding-window softmax attention (SWA)
when l is odd; pre-norm residual blocks with a SwiGLU MLP; untied LM head. W8ASpike spiking
(adaptive threshold, k = 3) on the inputs of the q/k/v/gate/o projections and the MLP gate/up
projections (not the MLP down projection, as in the released code).

Sequence mixing is written as tensor ops (no Python loop over T) so that the ONNX export keeps
the sequence dim dynamic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SpikingBrainConfig:
    vocab_size: int
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    window: int  # SWA: a query sees itself and the previous window-1 keys
    gate_rank: int = 16
    gate_normalizer: float = 16.0
    spike_k: float = 3.0
    rms_eps: float = 1e-6
    rope_theta: float = 1e6
    seed: int = 0


CONFIGS = {
    "tiny": SpikingBrainConfig(vocab_size=256, hidden=64, layers=4, q_heads=4, kv_heads=2,
                               head_dim=16, mlp=128, window=16),
    "small": SpikingBrainConfig(vocab_size=8192, hidden=512, layers=8, q_heads=8, kv_heads=2,
                                head_dim=64, mlp=1536, window=256),
}


def get_config(name: str, **overrides) -> SpikingBrainConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)


def spike(x: torch.Tensor, k: float) -> torch.Tensor:
    """W8ASpike activation: per row V_th = clamp(mean|x| / k, 1e-5, 1e4), n = round(x / V_th);
    returns n * V_th (the layer then multiplies by W^T). Round is half-to-even."""
    v_th = torch.clamp(x.abs().mean(dim=-1, keepdim=True) / k, 1e-5, 1e4)
    return torch.round(x / v_th) * v_th


class SpikeLinear(nn.Linear):
    """(spike(x)) @ W^T + b."""

    def __init__(self, d_in: int, d_out: int, bias: bool, k: float):
        super().__init__(d_in, d_out, bias=bias)
        self.k = k

    def forward(self, x):
        return super().forward(spike(x, self.k))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def gla_parallel(q, k, v, g):
    """Gated linear attention, parallel form. q [B,H,T,dk], k/g [B,H,T,dk], v [B,H,T,dv].

    S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = q_t^T S_t, which unrolls to
    o_t = sum_{j<=t} <q_t * e^{b_t}, k_j * e^{-b_j}> v_j with b = cumsum(g). The factorisation
    is exact in real arithmetic; in fp32 it needs |b_t| < ~80, which the gate initialisation
    keeps for sequences up to several thousand tokens.
    """
    b = torch.cumsum(g, dim=2)
    scores = (q * torch.exp(b)) @ (k * torch.exp(-b)).transpose(-1, -2)
    t = q.shape[2]
    idx = torch.arange(t, device=q.device)
    causal = idx[None, :] <= idx[:, None]
    return torch.where(causal, scores, torch.zeros_like(scores)) @ v


def gla_recurrent(q, k, v, g):
    """The same as gla_parallel, step by step (slow; the test oracle)."""
    bsz, h, t, dk = q.shape
    state = q.new_zeros(bsz, h, dk, v.shape[-1])
    outs = []
    for i in range(t):
        state = torch.exp(g[:, :, i, :, None]) * state + k[:, :, i, :, None] * v[:, :, i, None, :]
        outs.append((q[:, :, i, None, :] @ state)[:, :, 0])
    return torch.stack(outs, dim=2)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, H_kv, T, D] -> [B, H_kv*groups, T, D]: query head h uses kv head h // groups."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    bsz, t, _ = x.shape
    return x.reshape(bsz, t, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    bsz, h, t, d = x.shape
    return x.transpose(1, 2).reshape(bsz, t, h * d)


class GLA(nn.Module):
    def __init__(self, c: SpikingBrainConfig):
        super().__init__()
        self.c = c
        k = c.spike_k
        self.q_proj = SpikeLinear(c.hidden, c.q_heads * c.head_dim, True, k)
        self.k_proj = SpikeLinear(c.hidden, c.kv_heads * c.head_dim, True, k)
        self.v_proj = SpikeLinear(c.hidden, c.kv_heads * c.head_dim, True, k)
        self.gate_down = SpikeLinear(c.hidden, c.gate_rank, False, k)
        self.gate_up = nn.Linear(c.gate_rank, c.kv_heads * c.head_dim, bias=True)
        self.o_norm = RMSNorm(c.head_dim, c.rms_eps)  # one weight shared by all heads
        self.o_proj = SpikeLinear(c.q_heads * c.head_dim, c.hidden, False, k)

    def forward(self, x):
        c = self.c
        groups = c.q_heads // c.kv_heads
        q = split_heads(F.relu(self.q_proj(x)), c.q_heads) / math.sqrt(c.head_dim)
        k = repeat_kv(split_heads(F.relu(self.k_proj(x)), c.kv_heads), groups)
        v = repeat_kv(split_heads(self.v_proj(x), c.kv_heads), groups)
        g = F.logsigmoid(self.gate_up(self.gate_down(x))) / c.gate_normalizer
        g = repeat_kv(split_heads(g, c.kv_heads), groups)
        o = self.o_norm(gla_parallel(q, k, v, g))
        return self.o_proj(merge_heads(o))


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half rotary embedding over the last dim of x [B, H, T, D], positions 0..T-1."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    pos = torch.arange(x.shape[2], dtype=torch.float32)
    angles = pos[:, None] * inv_freq[None, :]
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class SWA(nn.Module):
    """Qwen2-style GQA softmax attention with RoPE, causal, window w: query t sees keys
    t-w+1 .. t (w keys, itself included)."""

    def __init__(self, c: SpikingBrainConfig):
        super().__init__()
        self.c = c
        k = c.spike_k
        self.q_proj = SpikeLinear(c.hidden, c.q_heads * c.head_dim, True, k)
        self.k_proj = SpikeLinear(c.hidden, c.kv_heads * c.head_dim, True, k)
        self.v_proj = SpikeLinear(c.hidden, c.kv_heads * c.head_dim, True, k)
        self.o_proj = SpikeLinear(c.q_heads * c.head_dim, c.hidden, False, k)

    def forward(self, x):
        c = self.c
        groups = c.q_heads // c.kv_heads
        q = rope(split_heads(self.q_proj(x), c.q_heads), c.rope_theta)
        k = repeat_kv(rope(split_heads(self.k_proj(x), c.kv_heads), c.rope_theta), groups)
        v = repeat_kv(split_heads(self.v_proj(x), c.kv_heads), groups)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim)
        idx = torch.arange(x.shape[1])
        offset = idx[:, None] - idx[None, :]  # query - key
        allowed = (offset >= 0) & (offset < c.window)
        scores = scores.masked_fill(~allowed, float("-inf"))
        return self.o_proj(merge_heads(torch.softmax(scores, dim=-1) @ v))


class MLP(nn.Module):
    def __init__(self, c: SpikingBrainConfig):
        super().__init__()
        self.gate = SpikeLinear(c.hidden, c.mlp, False, c.spike_k)
        self.up = SpikeLinear(c.hidden, c.mlp, False, c.spike_k)
        self.down = nn.Linear(c.mlp, c.hidden, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, c: SpikingBrainConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(c.hidden, c.rms_eps)
        self.mixer = GLA(c) if layer % 2 == 0 else SWA(c)
        self.mlp_norm = RMSNorm(c.hidden, c.rms_eps)
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.mixer(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class SpikingBrainLM(nn.Module):
    """ids int64 [batch, seq] -> logits float32 [batch, seq, vocab]."""

    def __init__(self, c: SpikingBrainConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.hidden)
        self.blocks = nn.ModuleList(Block(c, i) for i in range(c.layers))
        self.norm = RMSNorm(c.hidden, c.rms_eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab_size, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


def init_weights(model: SpikingBrainLM) -> None:
    """Seeded random weights that keep activations O(1) through every layer."""
    c = model.config
    gen = torch.Generator().manual_seed(c.seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("gate_up.bias"):
                # per-step log decay logsigmoid(bias)/16 spread over [-0.02, -0.001]
                target = torch.empty(p.shape).uniform_(-0.02, -0.001, generator=gen)
                p.copy_(torch.log(torch.expm1(-target * c.gate_normalizer).reciprocal()))
            elif name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
            elif name == "embed.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
        for block in model.blocks:  # small residual branches keep the stream well scaled
            block.mlp.down.weight.mul_(0.5)
            block.mixer.o_proj.weight.mul_(0.5)
            if isinstance(block.mixer, GLA):  # keep the decay near its initialised range
                block.mixer.gate_up.weight.mul_(0.1)


def build_model(config: str | SpikingBrainConfig = "tiny") -> SpikingBrainLM:
    c = get_config(config) if isinstance(config, str) else config
    model = SpikingBrainLM(c)
    init_weights(model)
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
