"""Pre-LN causal GPT backbone of JOWA with a KV cache for incremental decoding.

Spec 3.2: blocks x += Attn(LN1(x)); x += MLP(LN2(x)), a final LayerNorm, separate query/key/value/output
projections with biases, a GELU MLP of width 4E and dropout 0.1 on embeddings, attention weights and
residual branches. Parameter names (`blocks.N.attn.query`, `mlp.0`, `ln_f`, ...) follow the reference
layout so that importing released checkpoints is a rename of the heads only.

Attention runs through PyTorch's `scaled_dot_product_attention` by default. The `[flash]` extra installs
flash-attn; it is used for CUDA fp16/bf16 tensors when the backend is "auto" or "flash". The backend is
chosen when a model is built or loaded, not stored with its architecture: it changes the kernels, not the
function the weights compute, so a checkpoint trained with one backend runs with any other. With a KV cache
the new queries sit at the end of the key sequence, so the causal mask must be aligned bottom-right
(spec gotcha 16): query i of T new tokens after L cached ones sees keys 0..L+i. flash-attn >= 2.1 aligns
its causal mask that way; the SDPA path builds that mask explicitly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

AttentionBackend = Literal["auto", "sdpa", "flash"]


def _load_flash_attn_func() -> Callable[..., torch.Tensor] | None:
    """flash-attn's kernel if installed in a version with bottom-right causal alignment (>= 2.1)."""
    try:
        import flash_attn
    except ImportError:
        return None
    major, minor = (int(part) for part in flash_attn.__version__.split(".")[:2])
    return flash_attn.flash_attn_func if (major, minor) >= (2, 1) else None


flash_attn_func = _load_flash_attn_func()
FLASH_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of the backbone; `max_tokens` is the context window (8 steps x 37 tokens in JOWA)."""

    num_layers: int
    num_heads: int
    embed_dim: int
    max_tokens: int
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


def _check_attention_backend(attention: str) -> None:
    """Reject a backend that is unknown or not installed when the model is built, not at its first step."""
    if attention not in ("auto", "sdpa", "flash"):
        raise ValueError(f"attention backend must be 'auto', 'sdpa' or 'flash', not {attention!r}")
    if attention == "flash" and flash_attn_func is None:
        raise ValueError(
            "attention backend 'flash' needs flash-attn >= 2.1 (pip install 'jowa-repro[flash]')"
        )


class LayerKVCache:
    """Keys and values of one layer, (B, heads, capacity, head_dim), allocated at the first append.

    Lazy allocation takes batch size, dtype and device from the first keys, so a cache works unchanged
    under bf16 autocast.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, heads, T, head_dim) keys and values; return all keys and values so far."""
        batch, heads, steps, head_dim = keys.shape
        end = self.length + steps
        if end > self.capacity:
            raise ValueError(
                f"KV cache overflow: {self.length} cached + {steps} new > capacity {self.capacity}"
            )
        if self.keys is None:
            shape = (batch, heads, self.capacity, head_dim)
            self.keys = keys.new_empty(shape)
            self.values = values.new_empty(shape)
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


class KVCache:
    """Per-layer key/value caches of a batch of sequences; `length` tokens are cached so far."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        self.layers = [LayerKVCache(capacity) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length

    @classmethod
    def cat(cls, caches: list[KVCache]) -> KVCache:
        """One cache holding the rows of `caches` in order; they must hold equally many tokens."""
        lengths = {cache.length for cache in caches}
        if len(lengths) != 1:
            raise ValueError(f"caches of different lengths {sorted(lengths)} cannot be batched")
        joined = cls(len(caches[0].layers), caches[0].layers[0].capacity)
        for index, layer in enumerate(joined.layers):
            sources = [cache.layers[index] for cache in caches]
            layer.length = sources[0].length
            if sources[0].keys is not None:
                layer.keys = torch.cat([source.keys for source in sources])
                layer.values = torch.cat([source.values for source in sources])
        return joined

    def select(self, batch_index: torch.Tensor) -> KVCache:
        """A new cache holding copies of the rows `batch_index` (repeats allowed), e.g. to expand a beam."""
        selected = KVCache(len(self.layers), self.layers[0].capacity)
        for source, target in zip(self.layers, selected.layers, strict=True):
            target.length = source.length
            if source.keys is not None:
                target.keys = source.keys.index_select(0, batch_index)
                target.values = source.values.index_select(0, batch_index)
        return selected


def _causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """Boolean (queries, keys) mask aligned bottom-right: the last query sees every key."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=keys - queries)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig, attention: AttentionBackend) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.backend = attention
        self.attn_dropout = config.dropout
        self.query = nn.Linear(config.embed_dim, config.embed_dim)
        self.key = nn.Linear(config.embed_dim, config.embed_dim)
        self.value = nn.Linear(config.embed_dim, config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _use_flash(self, x: torch.Tensor) -> bool:
        usable = flash_attn_func is not None and x.is_cuda and x.dtype in FLASH_DTYPES
        if self.backend == "flash" and not usable:
            raise ValueError(f"flash attention needs CUDA fp16/bf16 inputs, got {x.dtype} on {x.device}")
        return usable and self.backend != "sdpa"

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None) -> torch.Tensor:
        batch, steps, width = x.shape
        head_shape = (batch, steps, self.num_heads, width // self.num_heads)
        # (B, heads, T, head_dim): the layout SDPA and the cache use.
        q, k, v = (layer(x).view(head_shape).transpose(1, 2) for layer in (self.query, self.key, self.value))
        if cache is not None:
            k, v = cache.append(k, v)
        dropout = self.attn_dropout if self.training else 0.0
        if self._use_flash(q):
            # flash-attn wants (B, T, heads, head_dim); its causal mask is bottom-right aligned.
            y = flash_attn_func(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout, causal=True
            )
        else:
            queries, keys = q.shape[2], k.shape[2]
            if queries == keys:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
            else:
                mask = None if queries == 1 else _causal_mask(queries, keys, x.device)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            y = y.transpose(1, 2)
        return self.resid_dropout(self.proj(y.reshape(batch, steps, width)))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: TransformerConfig, attention: AttentionBackend) -> None:
        super().__init__()
        width = config.embed_dim
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(config, attention)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(config.dropout)
        )

    def forward(self, x: torch.Tensor, cache: LayerKVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Embedding dropout, the blocks and the final LayerNorm; embeddings are the caller's business.

    `attention` picks the attention kernels ("auto": flash-attn for CUDA fp16/bf16 when installed, else SDPA).
    """

    def __init__(self, config: TransformerConfig, *, attention: AttentionBackend = "auto") -> None:
        super().__init__()
        self.config = config
        _check_attention_backend(attention)
        self.attention = attention
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, self.attention) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.embed_dim)

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config.num_layers, self.config.max_tokens)

    def forward(self, embeddings: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """(B, T, E) input embeddings -> (B, T, E) final-LN hidden states; appends to `kv_cache` if given."""
        x = self.drop(embeddings)
        for index, block in enumerate(self.blocks):
            x = block(x, None if kv_cache is None else kv_cache.layers[index])
        return self.ln_f(x)
