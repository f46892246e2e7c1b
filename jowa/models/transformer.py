"""Pre-LN causal GPT backbone of JOWA with a KV cache for incremental decoding.

Spec 3.2: blocks x += Attn(LN1(x)); x += MLP(LN2(x)), a final LayerNorm, query/key/value/output
projections with biases, a GELU MLP of width 4E and dropout 0.1 on embeddings, attention weights and
residual branches. Parameter names (`mlp.0`, `ln_f`, ...) follow the reference layout, except that the
reference's separate `attn.query`, `attn.key` and `attn.value` are one `attn.qkv` Linear, their weights
stacked in that order: one GEMM of width 3E instead of three (issue 19). `fuse_qkv_keys` turns the
separate layout (the reference's, and our checkpoints' before the change) into ours.

Attention runs through PyTorch's `scaled_dot_product_attention` by default. The `[flash]` extra installs
flash-attn; it is used for CUDA fp16/bf16 tensors when the backend is "auto" or "flash". The backend is
chosen when a model is built or loaded, not stored with its architecture: it changes the kernels, not the
function the weights compute, so a checkpoint trained with one backend runs with any other.

Incremental decoding goes through a static cache (`KVCache`): every layer's keys and values live in
full-capacity tensors, new ones are written at device-side slot indices and each query attends every
slot through a mask `slot <= its position` (bottom-right causal alignment, spec gotcha 16), so a pass
of T tokens has the same shapes at any length and can be captured as a CUDA graph. Cached passes
therefore always use SDPA with that mask; flash-attn serves the uncached (training) passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

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


QKV_PARTS = ("query", "key", "value")


def fuse_qkv_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with every attention's separate `query`/`key`/`value` weights and biases stacked into the
    one `qkv` Linear's (the separate layout: the reference's, and our checkpoints' before issue 19);
    entries of the fused layout pass through unchanged."""
    fused = dict(state)
    for name in state:
        if not name.endswith(".query.weight"):
            continue
        prefix = name.removesuffix("query.weight")
        for kind in ("weight", "bias"):
            parts = [f"{prefix}{part}.{kind}" for part in QKV_PARTS]
            if all(part in fused for part in parts):
                fused[f"{prefix}qkv.{kind}"] = torch.cat([fused.pop(part) for part in parts])
    return fused


def cache_capacity(window: int) -> int:
    """Slots of a static cache: the window rounded up to 16, the key length CUDA's masked kernels want."""
    return -(-window // 16) * 16


class LayerKVCache:
    """Keys and values of one layer at full capacity, (B, heads, capacity, head_dim).

    Every pass attends all `capacity` slots through a length mask, so its shapes do not change from token
    to token and a decode pass can be captured once as a CUDA graph. The tensors are allocated at the
    first write (batch size, dtype and device from the keys, so the cache works under bf16 autocast) and
    zero-filled: a masked slot then weighs exactly 0, never NaN from uninitialised memory.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def allocate(self, like: torch.Tensor) -> None:
        """Zeroed full-capacity tensors shaped as the (B, heads, T, head_dim) tensor `like`."""
        batch, heads, _, head_dim = like.shape
        shape = (batch, heads, self.capacity, head_dim)
        self.keys, self.values = like.new_zeros(shape), like.new_zeros(shape)

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: Slots, dropout: float
    ) -> torch.Tensor:
        """Write k, v (B, heads, T, head_dim) at `slots.positions`; attend q to every slot up to its own
        position (`slots.mask`, bottom-right causal); return (B, heads, T, head_dim)."""
        if self.keys is None:
            self.allocate(k)
        self.keys.index_copy_(2, slots.positions, k)
        self.values.index_copy_(2, slots.positions, v)
        return F.scaled_dot_product_attention(
            q, self.keys, self.values, attn_mask=slots.mask, dropout_p=dropout
        )


class Slots(NamedTuple):
    """Where a pass of T tokens goes in a static cache: device tensors, computed once per pass."""

    positions: torch.Tensor  # (T,) slot of each new token
    mask: torch.Tensor  # (T, capacity) bool: slot j visible to new token i


class KVCache:
    """Per-layer static caches of a batch of sequences holding `length` tokens each.

    The length is kept twice: `length` on the host, for bookkeeping (window checks, which rows to copy)
    that must not wait for the device, and `position` on the device, the next free slot, which the
    passes read and advance, so that a captured pass needs no host value.
    """

    def __init__(self, num_layers: int, window: int, device: torch.device | str) -> None:
        self.window = window
        self.layers = [LayerKVCache(cache_capacity(window)) for _ in range(num_layers)]
        self.length = 0
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.slot_ids = torch.arange(cache_capacity(window), device=device)

    def positions(self, steps: int) -> torch.Tensor:
        """Device slots of the next `steps` tokens."""
        return self.position + torch.arange(steps, device=self.position.device)

    def slots(self, positions: torch.Tensor) -> Slots:
        return Slots(positions, self.slot_ids <= positions.unsqueeze(1))

    def advance(self, steps: int) -> None:
        self.length += steps
        self.position.add_(steps)

    def load(self, source: KVCache, rows: torch.Tensor) -> None:
        """Hold copies of `source`'s rows `rows` (repeats allowed; `source` may be this cache), e.g. a beam's
        kept nodes for each of their candidates. Only the used slots are copied, into this cache's own
        tensors, whose addresses stay fixed."""
        used = source.length
        for mine, theirs in zip(self.layers, source.layers, strict=True):
            if theirs.keys is None:
                continue
            if mine.keys is None:
                mine.allocate(theirs.keys[:1, :, :0].expand(len(rows), -1, -1, -1))
            mine.keys[:, :, :used] = theirs.keys[:, :, :used].index_select(0, rows)
            mine.values[:, :, :used] = theirs.values[:, :, :used].index_select(0, rows)
        self.length = used
        self.position.copy_(source.position)

    @classmethod
    def cat(cls, caches: list[KVCache]) -> KVCache:
        """One cache holding the rows of `caches` in order; they must hold equally many tokens."""
        lengths = {cache.length for cache in caches}
        if len(lengths) != 1:
            raise ValueError(f"caches of different lengths {sorted(lengths)} cannot be batched")
        first = caches[0]
        joined = KVCache(len(first.layers), first.window, first.position.device)
        for index, layer in enumerate(joined.layers):
            sources = [cache.layers[index] for cache in caches]
            if sources[0].keys is not None:
                layer.keys = torch.cat([source.keys for source in sources])
                layer.values = torch.cat([source.values for source in sources])
        joined.length = first.length
        joined.position.copy_(first.position)
        return joined

    def select(self, batch_index: torch.Tensor) -> KVCache:
        """A new cache holding copies of the rows `batch_index` (repeats allowed), e.g. to expand a beam."""
        selected = KVCache(len(self.layers), self.window, self.position.device)
        selected.load(self, batch_index)
        return selected


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; `fused_qkv` False runs the three projections as three GEMMs on
    slices of the one weight (the layout before issue 19, kept to measure the fused one against)."""

    def __init__(
        self, config: TransformerConfig, attention: AttentionBackend, fused_qkv: bool = True
    ) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.backend = attention
        self.fused_qkv = fused_qkv
        self.attn_dropout = config.dropout
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _use_flash(self, x: torch.Tensor) -> bool:
        usable = flash_attn_func is not None and x.is_cuda and x.dtype in FLASH_DTYPES
        if self.backend == "flash" and not usable:
            raise ValueError(f"flash attention needs CUDA fp16/bf16 inputs, got {x.dtype} on {x.device}")
        return usable and self.backend != "sdpa"

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of x (B, T, E), each (B, heads, T, head_dim): the layout SDPA and the
        cache use."""
        batch, steps, width = x.shape
        head_dim = width // self.num_heads
        if self.fused_qkv:
            qkv = self.qkv(x).view(batch, steps, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
            return qkv[0], qkv[1], qkv[2]
        weights, biases = self.qkv.weight.chunk(3), self.qkv.bias.chunk(3)
        q, k, v = (
            F.linear(x, weight, bias).view(batch, steps, self.num_heads, head_dim).transpose(1, 2)
            for weight, bias in zip(weights, biases, strict=True)
        )
        return q, k, v

    def forward(
        self, x: torch.Tensor, cache: LayerKVCache | None = None, slots: Slots | None = None
    ) -> torch.Tensor:
        """Causal attention of x (B, T, E); with `cache`, x goes to `slots` after the cached tokens."""
        batch, steps, width = x.shape
        q, k, v = self.project_qkv(x)
        dropout = self.attn_dropout if self.training else 0.0
        if cache is not None:
            y = cache.attend(q, k, v, slots, dropout).transpose(1, 2)
        elif self._use_flash(q):
            # flash-attn wants (B, T, heads, head_dim).
            y = flash_attn_func(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout, causal=True
            )
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True).transpose(1, 2)
        return self.resid_dropout(self.proj(y.reshape(batch, steps, width)))


class Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(
        self, config: TransformerConfig, attention: AttentionBackend, fused_qkv: bool = True
    ) -> None:
        super().__init__()
        width = config.embed_dim
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(config, attention, fused_qkv)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(config.dropout)
        )

    def forward(
        self, x: torch.Tensor, cache: LayerKVCache | None = None, slots: Slots | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, slots)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Embedding dropout, the blocks and the final LayerNorm; embeddings are the caller's business.

    `attention` picks the attention kernels ("auto": flash-attn for CUDA fp16/bf16 when installed, else SDPA);
    `fused_qkv` whether the q/k/v projections run as one GEMM (see CausalSelfAttention).
    """

    def __init__(
        self, config: TransformerConfig, *, attention: AttentionBackend = "auto", fused_qkv: bool = True
    ) -> None:
        super().__init__()
        self.config = config
        _check_attention_backend(attention)
        self.attention = attention
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config, self.attention, fused_qkv) for _ in range(config.num_layers)
        )
        self.ln_f = nn.LayerNorm(config.embed_dim)

    def new_kv_cache(self) -> KVCache:
        """An empty static cache on the model's device."""
        return KVCache(self.config.num_layers, self.config.max_tokens, self.ln_f.weight.device)

    def forward(self, embeddings: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """(B, T, E) input embeddings -> (B, T, E) final-LN hidden states; appends to `kv_cache` if given."""
        x = self.drop(embeddings)
        if kv_cache is None:
            for block in self.blocks:
                x = block(x)
            return self.ln_f(x)
        slots = kv_cache.slots(kv_cache.positions(x.shape[1]))
        for block, layer in zip(self.blocks, kv_cache.layers, strict=True):
            x = block(x, layer, slots)
        kv_cache.advance(x.shape[1])
        return self.ln_f(x)
