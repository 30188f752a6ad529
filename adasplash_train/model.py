"""A GPT-style decoder: RoPE, RMSNorm, SwiGLU, grouped-query attention.

The whole model in one file and no training framework in it. Attention goes through the registry in
`adasplash_train.attention`: this module owns the projections and RoPE, the registry's inner function
owns the kernel (softmax through SDPA, entmax through our Triton kernels or the exact reference).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from adasplash_train.attention import build_attention


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    max_seq_len: int = 1024  # the training context; RoPE itself extends past it (extrapolation)
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int | None = None  # None: as many as n_head (plain multi-head attention)
    d_model: int = 384
    ffn_hidden: int | None = None  # None: about 8/3 * d_model, rounded up to a multiple of 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    attention: dict[str, Any] = field(default_factory=lambda: {"name": "softmax", "backend": "auto"})

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_model % self.n_head:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by model.n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"model.n_head={self.n_head} must be a multiple of model.n_kv_head={self.n_kv_head} "
                "(grouped-query attention shares each key/value head among n_head // n_kv_head query heads)"
            )
        if self.head_dim % 2:
            raise ValueError(f"head dim d_model / n_head = {self.head_dim} must be even for RoPE")
        if self.ffn_hidden is None:
            self.ffn_hidden = 64 * math.ceil(8 * self.d_model / 3 / 64)
        self.attention = dict(self.attention)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in float32: bf16 sums of squares lose too much precision at d_model >= 512
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.type_as(x) * self.weight


class Rotary(nn.Module):
    """cos/sin tables for rotary position embeddings, grown on demand past the training length.

    Frequencies and tables live outside the module's buffers and are always float32: a model cast
    to bf16 would otherwise round the inverse frequencies to 8 bits, which shifts the angles by
    radians at long context (positions in the thousands)."""

    def __init__(self, head_dim: int, theta: float, initial_len: int):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self._cos = self._sin = None
        self._build(initial_len, torch.device("cpu"))

    def _build(self, length: int, device):
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponents)
        t = torch.arange(length, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        self._cos, self._sin = freqs.cos(), freqs.sin()

    def forward(self, start: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos.device != device or self._cos.shape[0] < start + length:
            self._build(max(start + length, self._cos.shape[0]), device)
        return self._cos[start:start + length], self._sin[start:start + length]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of x: (B, H, T, D) by position-dependent angles."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.type_as(x)


class KVCache:
    """Keys and values of every layer for incremental greedy decoding (all rows share one length)."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def length(self, layer: int = -1) -> int:
        """Tokens cached so far for `layer` (default: the last layer, i.e. after a full forward)."""
        keys = self.keys[layer]
        return 0 if keys is None else keys.shape[2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class Attention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.qkv = nn.Linear(config.d_model, (config.n_head + 2 * config.n_kv_head) * config.head_dim, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.inner = build_attention(**config.attention)
        self.collect_stats = False
        self.last_stats: dict[str, float] | None = None

    def forward(self, x, rotary: Rotary, doc_ids=None, cache: KVCache | None = None):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        start = cache.length(self.layer) if cache is not None else 0
        cos, sin = rotary(start, T, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        causal = True
        if cache is not None:
            if start > 0 and T != 1:
                raise ValueError("KV-cache decoding feeds one token at a time after the prefill; got "
                                 f"{T} tokens with {start} cached")
            k, v = cache.append(self.layer, k, v)
            # a single new query may see every cached key: nothing after it exists yet
            causal = start == 0

        if self.collect_stats and getattr(self.inner, "supports_stats", False):
            y, self.last_stats = self.inner(q, k, v, causal=causal, doc_ids=doc_ids, return_stats=True)
        else:
            y = self.inner(q, k, v, causal=causal, doc_ids=doc_ids)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.proj(y)


class SwiGLU(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.ffn_hidden, bias=False)
        self.down = nn.Linear(config.ffn_hidden, config.d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = SwiGLU(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, rotary, doc_ids=None, cache=None):
        x = x + self.dropout(self.attn(self.attn_norm(x), rotary, doc_ids, cache))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.max_seq_len)
        self.apply(self._init_weights)
        # scale the residual-branch outputs by depth (GPT-2) so the residual stream does not grow with n_layer
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward = 3x forward): 6 N for the weights plus the
        dense attention matmuls 6 * n_layer * d_model * T (QK^T and PV, both causal-halved and then
        doubled for forward+backward as in the PaLM appendix). Sparse attention does less; this is
        the dense count every method is compared against."""
        c = self.config
        t = seq_len or c.max_seq_len
        return 6.0 * self.num_params(non_embedding=True) + 6.0 * c.n_layer * c.d_model * t

    def new_kv_cache(self, batch_size: int | None = None) -> KVCache:
        # batch size is implied by the first call; the argument documents intent for callers
        return KVCache(self.config.n_layer)

    def hidden_states(self, idx, doc_ids=None, cache: KVCache | None = None):
        """The last block's output (B, T, d_model), before the final norm: callers that need the
        logits of a few positions only (evals) apply `logits` to those."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, seq_len) token ids, got shape {tuple(idx.shape)}")
        if doc_ids is not None and cache is not None:
            raise ValueError("doc_ids are for packed training batches; decode with a KV cache has one document per row")
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, self.rotary, doc_ids, cache)
        return x

    def logits(self, hidden):
        return self.lm_head(self.norm(hidden))

    def forward(self, idx, targets=None, doc_ids=None, cache: KVCache | None = None, last_only: bool = False):
        """Logits (B, T, vocab) and the mean next-token loss when `targets` is given. `last_only=True`
        returns only the last position's logits (B, 1, vocab): a long decode prefill then never holds
        the full (T, vocab) tensor."""
        if last_only and targets is not None:
            raise ValueError("last_only=True returns one position; it cannot compute a loss over targets")
        x = self.hidden_states(idx, doc_ids, cache)
        logits = self.logits(x[:, -1:] if last_only else x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def set_collect_attention_stats(self, on: bool) -> None:
        for block in self.blocks:
            block.attn.collect_stats = on
            block.attn.last_stats = None

    def attention_stats(self) -> list[dict[str, float] | None]:
        """Per-layer stats of the last forward run with collection on (None for layers without any)."""
        return [block.attn.last_stats for block in self.blocks]
