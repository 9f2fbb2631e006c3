"""A PyTorch SpikingBrain-7B-style causal LM (CONTEXT.md section 1) with seeded random weights.

    ids int64 [batch, seq] -> embedding -> layers -> RMSNorm -> LM head -> logits f32 [batch, seq, vocab]

Layer l is gated linear attention (GLA) when l is even and sliding-window softmax attention
(SWA) when l is odd. Each layer is two pre-norm residual blocks:
    x = x + mixer(RMSNorm(x));  x = x + MLP(RMSNorm(x)).
W8ASpike spiking (adaptive threshold, k = 3) is applied to the inputs of the q/k/v/gate/o
projections and of the MLP gate/up projections; the MLP down projection sees real values, as in
the released code.

Sequence mixing is written with tensor ops only (no Python loop over T): torch.export unrolls
such loops and bakes the example length into the graph, so the exported sequence dim would not
really be dynamic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

# V_th clamp bounds of the released code; floats, so the export emits a float Clip.
V_TH_MIN = 1e-5
V_TH_MAX = 1e4


@dataclass(frozen=True)
class SpikingBrainConfig:
    """Model sizes. Layers alternate GLA (even l) and SWA (odd l)."""
    vocab_size: int
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    window: int  # SWA: a query sees itself and the previous window-1 keys (window keys in all)
    gate_rank: int = 16  # GLA gate: hidden -> gate_rank -> kv_heads * head_dim
    gate_normalizer: float = 16.0  # g = logsigmoid(.) / gate_normalizer
    spike_k: float = 3.0  # V_th = mean|x| / spike_k
    rms_eps: float = 1e-6
    rope_theta: float = 1e6
    seed: int = 0

    def __post_init__(self):
        if self.q_heads % self.kv_heads:
            raise ValueError(f"q_heads {self.q_heads} is not a multiple of kv_heads {self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotate-half RoPE")

    @property
    def groups(self) -> int:
        """Query heads per KV head (GQA): query head h uses KV head h // groups."""
        return self.q_heads // self.kv_heads


CONFIGS = {
    # tests: 184,480 parameters
    "tiny": SpikingBrainConfig(vocab_size=256, hidden=64, layers=4, q_heads=4, kv_heads=2,
                               head_dim=16, mlp=128, window=16),
    # benchmarks: 32,562,432 parameters
    "small": SpikingBrainConfig(vocab_size=8192, hidden=512, layers=8, q_heads=8, kv_heads=2,
                                head_dim=64, mlp=1536, window=256),
}


def get_config(name: str, **overrides) -> SpikingBrainConfig:
    """The named config (see CONFIGS), with any fields replaced by `overrides`."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {', '.join(sorted(CONFIGS))}")
    return replace(CONFIGS[name], **overrides)


# -- spiking ---------------------------------------------------------------------------------------

def spike_counts(x: torch.Tensor, k: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """W8ASpike neuron, one step, per row of the last dim:
    V_th = clamp(mean(|x|) / k, 1e-5, 1e4),  n = round(x / V_th) (half to even).
    Returns the integer-valued counts n and V_th (shape [..., 1])."""
    v_th = torch.clamp(x.abs().mean(dim=-1, keepdim=True) / k, V_TH_MIN, V_TH_MAX)
    return torch.round(x / v_th), v_th


def spike(x: torch.Tensor, k: float = 3.0) -> torch.Tensor:
    """n * V_th: the value a spiking projection multiplies by W^T.
    Exports as Abs -> ReduceMean -> Div -> Clip -> Div -> Round -> Mul."""
    n, v_th = spike_counts(x, k)
    return n * v_th


class Spike(nn.Module):
    """The spike function as a module, so that spiking points are visible in the module tree."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, x):
        return spike(x, self.k)


# -- building blocks -------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2, last dim) + eps) * weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Written out, so that opset 18 exports it as plain ops (ReduceMean, Sqrt, ...). Note: at
        # opset >= 23 the exporter's optimizer fuses even this form into RMSNormalization.
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, heads*D] -> [B, heads, T, D]."""
    bsz, t, _ = x.shape
    return x.reshape(bsz, t, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, D] -> [B, T, heads*D]."""
    bsz, h, t, d = x.shape
    return x.transpose(1, 2).reshape(bsz, t, h * d)


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, H_kv, T, D] -> [B, H_kv*groups, T, D], head h of the result = head h // groups."""
    if groups == 1:
        return x
    bsz, h, t, d = x.shape
    return x.unsqueeze(2).expand(bsz, h, groups, t, d).reshape(bsz, h * groups, t, d)


def band_mask(t: int, window: int | None, device=None) -> torch.Tensor:
    """Bool [T, T]: True where query i may see key j, i.e. 0 <= i - j < window (causal;
    window None = unbounded). Built from arange so it follows a dynamic T."""
    idx = torch.arange(t, device=device)
    offset = idx[:, None] - idx[None, :]
    allowed = offset >= 0
    return allowed if window is None else allowed & (offset < window)


# -- gated linear attention ------------------------------------------------------------------------

def gla_parallel(q, k, v, g):
    """Gated linear attention, parallel (quadratic) form. q, k, g: [B, H, T, dk], v: [B, H, T, dv].

    The recurrence S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = q_t^T S_t (S_0 = 0) unrolls to
        o_t = sum_{j<=t} <q_t * e^{b_t}, k_j * e^{-b_j}> v_j,   b = cumsum_t(g),
    i.e. o = mask(A) @ v with A = (q * e^b) @ (k * e^{-b})^T. Any query scale (1/sqrt(dk)) is
    the caller's. Exact in real arithmetic, but in float32 e^{-b} overflows (and e^{b} goes
    subnormal) once |b_t| > ~87, so the form is valid while |b_T| = T * |mean log decay| < ~80 in
    every channel. The seeded models' decays lie in about [-0.03, -0.001] per step, which makes
    this form valid up to ~2,500 tokens; longer inputs need the chunked form (CONTEXT.md).
    """
    b = torch.cumsum(g, dim=2)
    scores = (q * torch.exp(b)) @ (k * torch.exp(-b)).transpose(-1, -2)
    causal = band_mask(q.shape[2], None, q.device)
    return torch.where(causal, scores, 0.0) @ v


def gla_recurrent(q, k, v, g):
    """The recurrence itself, one step at a time (slow; the oracle for tests only)."""
    bsz, h, t, dk = q.shape
    state = q.new_zeros(bsz, h, dk, v.shape[-1])
    outs = []
    for i in range(t):
        state = torch.exp(g[:, :, i, :, None]) * state + k[:, :, i, :, None] * v[:, :, i, None, :]
        outs.append((q[:, :, i, None, :] @ state)[:, :, 0])
    return torch.stack(outs, dim=2)


class GLA(nn.Module):
    """SpikingBrain GLA mixer (no RoPE, no output gate, no short convolution):
        q = relu(x Wq + bq), k = relu(x Wk + bk), v = x Wv + bv   (x spiked)
        g = logsigmoid(W2 (W1 x) + b2) / 16                        (per key channel)
        o = gla_parallel(q / sqrt(dk), k, v, g) -> RMSNorm over head_dim (one shared weight) -> Wo
    q has q_heads heads; k, v, g have kv_heads heads, shared by `groups` query heads each."""

    def __init__(self, c: SpikingBrainConfig):
        super().__init__()
        self.c = c
        kv_dim = c.kv_heads * c.head_dim
        # q/k/v/gate read the same input, so one spike serves all four (same per-row V_th).
        self.spike_in = Spike(c.spike_k)
        self.q_proj = nn.Linear(c.hidden, c.q_heads * c.head_dim, bias=True)
        self.k_proj = nn.Linear(c.hidden, kv_dim, bias=True)
        self.v_proj = nn.Linear(c.hidden, kv_dim, bias=True)
        self.gate_down = nn.Linear(c.hidden, c.gate_rank, bias=False)  # W1
        self.gate_up = nn.Linear(c.gate_rank, kv_dim, bias=True)  # W2, b2
        self.o_norm = RMSNorm(c.head_dim, c.rms_eps)
        self.spike_out = Spike(c.spike_k)
        self.o_proj = nn.Linear(c.q_heads * c.head_dim, c.hidden, bias=False)

    def forward(self, x):
        c = self.c
        xs = self.spike_in(x)
        q = split_heads(F.relu(self.q_proj(xs)), c.q_heads) / math.sqrt(c.head_dim)
        k = repeat_kv(split_heads(F.relu(self.k_proj(xs)), c.kv_heads), c.groups)
        v = repeat_kv(split_heads(self.v_proj(xs), c.kv_heads), c.groups)
        g = F.logsigmoid(self.gate_up(self.gate_down(xs))) / c.gate_normalizer
        g = repeat_kv(split_heads(g, c.kv_heads), c.groups)
        o = self.o_norm(gla_parallel(q, k, v, g))
        return self.o_proj(self.spike_out(merge_heads(o)))


# -- sliding-window attention ----------------------------------------------------------------------

def rope_tables(t: int, dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, dim] of the angles p * f_i at positions p = 0..T-1, f_i = theta^(-2i/dim),
    each frequency written twice ([f, f]) to match rotate-half."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    angles = torch.arange(t, dtype=torch.float32, device=device)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x [B, H, T, D]: x * cos + rotate_half(x) * sin, rotate_half([a, b]) = [-b, a]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class SWA(nn.Module):
    """Qwen2-style GQA softmax attention with RoPE on q and k, causal with a sliding window:
    query t attends to keys t-w+1 .. t (itself and the previous w-1: w keys in all).
        softmax(mask(q k^T / sqrt(dk))) v -> Wo; q/k/v projections with bias, Wo without.
    The mask is a banded causal mask over the full T x T scores (quadratic, but dynamic in T)."""

    def __init__(self, c: SpikingBrainConfig):
        super().__init__()
        self.c = c
        self.spike_in = Spike(c.spike_k)  # shared by q/k/v, as in GLA
        self.q_proj = nn.Linear(c.hidden, c.q_heads * c.head_dim, bias=True)
        self.k_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=True)
        self.v_proj = nn.Linear(c.hidden, c.kv_heads * c.head_dim, bias=True)
        self.spike_out = Spike(c.spike_k)
        self.o_proj = nn.Linear(c.q_heads * c.head_dim, c.hidden, bias=False)

    def forward(self, x):
        c = self.c
        xs = self.spike_in(x)
        cos, sin = rope_tables(x.shape[1], c.head_dim, c.rope_theta, x.device)
        q = apply_rope(split_heads(self.q_proj(xs), c.q_heads), cos, sin)
        k = repeat_kv(apply_rope(split_heads(self.k_proj(xs), c.kv_heads), cos, sin), c.groups)
        v = repeat_kv(split_heads(self.v_proj(xs), c.kv_heads), c.groups)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim)
        # -inf is safe: every query sees at least itself, so no row is fully masked.
        scores = torch.where(band_mask(x.shape[1], c.window, x.device), scores, float("-inf"))
        o = torch.softmax(scores, dim=-1) @ v
        return self.o_proj(self.spike_out(merge_heads(o)))


# -- MLP, blocks, model ----------------------------------------------------------------------------

class MLP(nn.Module):
    """SwiGLU: down(silu(gate(s)) * up(s)), s = spike(x); no biases; down's input is not spiked."""

    def __init__(self, c: SpikingBrainConfig):
        super().__init__()
        self.spike_in = Spike(c.spike_k)  # shared by gate and up
        self.gate = nn.Linear(c.hidden, c.mlp, bias=False)
        self.up = nn.Linear(c.hidden, c.mlp, bias=False)
        self.down = nn.Linear(c.mlp, c.hidden, bias=False)

    def forward(self, x):
        xs = self.spike_in(x)
        return self.down(F.silu(self.gate(xs)) * self.up(xs))


class Block(nn.Module):
    """x = x + mixer(RMSNorm(x)); x = x + MLP(RMSNorm(x)). Mixer: GLA for even layers, SWA for odd."""

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
    """ids int64 [batch, seq] -> logits float32 [batch, seq, vocab]; untied LM head."""

    def __init__(self, c: SpikingBrainConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.hidden)
        self.blocks = nn.ModuleList(Block(c, layer) for layer in range(c.layers))
        self.norm = RMSNorm(c.hidden, c.rms_eps)
        self.lm_head = nn.Linear(c.hidden, c.vocab_size, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm(x))


# -- weights ---------------------------------------------------------------------------------------

def gate_bias_for_decay(decay: torch.Tensor, normalizer: float) -> torch.Tensor:
    """The bias b with logsigmoid(b) / normalizer = decay (decay < 0): b = -log(expm1(-decay*normalizer))."""
    return -torch.log(torch.expm1(-decay * normalizer))


def init_weights(model: SpikingBrainLM) -> None:
    """Seeded random weights (from config.seed) that keep activations O(1) through every layer:
    unit-variance embeddings, projections ~ N(0, 1/fan_in), residual branch outputs halved, norm
    weights near 1, small biases. The GLA gate bias sets each channel's per-step log decay
    uniformly in [-0.02, -0.001]; W2 is scaled down so the input moves it only a little."""
    c = model.config
    gen = torch.Generator().manual_seed(c.seed)

    def randn(shape):
        return torch.randn(shape, generator=gen)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * randn(p.shape))
            elif name.endswith("gate_up.bias"):
                decay = torch.empty(p.shape).uniform_(-0.02, -0.001, generator=gen)
                p.copy_(gate_bias_for_decay(decay, c.gate_normalizer))
            elif name.endswith("bias"):
                p.copy_(0.02 * randn(p.shape))
            elif name == "embed.weight":
                p.copy_(randn(p.shape))
            else:
                p.copy_(randn(p.shape) / math.sqrt(p.shape[-1]))
        for block in model.blocks:
            # Halved residual branches keep the residual stream from growing layer by layer.
            block.mlp.down.weight.mul_(0.5)
            block.mixer.o_proj.weight.mul_(0.5)
            if isinstance(block.mixer, GLA):
                block.mixer.gate_up.weight.mul_(0.1)  # keep decays near their initial range


def build_model(config: str | SpikingBrainConfig = "tiny") -> SpikingBrainLM:
    """A seeded model in eval mode, from a config name or a SpikingBrainConfig."""
    c = get_config(config) if isinstance(config, str) else config
    model = SpikingBrainLM(c)
    init_weights(model)
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
