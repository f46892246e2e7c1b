"""Training segments of several stores, pooled, drawn uniformly and gathered into `Batch`es on any device.

A phase builds a `SegmentPool` from its stores and their observation tokens (one row of K tokens per
step) with its own segment length and stride, so a stride is a training setting, never a data one.
Segments are drawn uniformly from all games' segments pooled. Gathering a batch is a handful of indexed
reads, so the pool can sit on the GPU when it fits (the paper's ~150M steps x 36 tokens are ~11 GB as
int16) and no batch crosses the bus; otherwise it stays in host memory and each batch is moved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from jowa.data.store import StoreError, TrainingStore
from jowa.models.batch import Batch


class SegmentPool:
    """Every segment of the given stores, with the per-step arrays they are gathered from."""

    def __init__(
        self,
        stores: Sequence[TrainingStore],
        tokens: Sequence[np.ndarray],
        *,
        length: int,
        stride: int,
        device: torch.device | str,
    ) -> None:
        if len(stores) != len(tokens) or not stores:
            raise ValueError(f"need one token array per store, got {len(tokens)} for {len(stores)} stores")
        for store, store_tokens in zip(stores, tokens, strict=True):
            if store_tokens.ndim != 2 or len(store_tokens) != len(store):
                raise StoreError(
                    f"{store.path}: tokens of shape {store_tokens.shape} do not match its {len(store)} steps"
                )
            if store_tokens.size and int(store_tokens.max()) > np.iinfo(np.int16).max:
                raise StoreError(f"{store.path}: token ids above {np.iinfo(np.int16).max} cannot be stored")
        offsets = np.cumsum([0] + [len(store) for store in stores])
        segments = [store.segments(length, stride) for store in stores]
        self.length = length
        self.device = torch.device(device)
        self.tokens = self._tensor(np.concatenate(tokens).astype(np.int16))
        self.actions = self._tensor(np.concatenate([store.actions for store in stores]))
        self.rewards = self._tensor(np.concatenate([store.rewards for store in stores]))
        self.terminals = self._tensor(np.concatenate([store.terminals for store in stores]).astype(bool))
        self.starts = self._tensor(
            np.concatenate([s[:, 0] + offset for s, offset in zip(segments, offsets[:-1], strict=True)])
        )
        self.valid = self._tensor(np.concatenate([s[:, 1] for s in segments]))
        tasks = [np.full(len(s), store.meta["task_id"]) for s, store in zip(segments, stores, strict=True)]
        self.tasks = self._tensor(np.concatenate(tasks).astype(np.int64))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def __len__(self) -> int:
        return len(self.starts)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(store rows (B, length), real-step mask (B, length)) of the segments `index`; padded steps
        point at the segment's first row, so gathering from any per-step array stays in range."""
        index = index.to(self.device)
        steps = torch.arange(self.length, device=self.device)
        mask = steps < self.valid[index].unsqueeze(1)
        return self.starts[index].unsqueeze(1) + steps * mask, mask

    def batch(self, index: torch.Tensor, obs_tokens: torch.Tensor | None = None) -> Batch:
        """The segments `index` (B,), right-padded to the pool's length with zeros. `obs_tokens`
        (B, length, K) replaces the pool's tokens (a tokenizer being tuned encodes frames itself)."""
        rows, mask = self.rows(index)
        tokens = self.tokens[rows].long() if obs_tokens is None else obs_tokens.long()
        return Batch(
            obs_tokens=tokens * mask.unsqueeze(-1),
            actions=self.actions[rows].long() * mask,
            rewards=self.rewards[rows] * mask,
            ends=(self.terminals[rows] & mask).long(),
            mask=mask,
            tasks=self.tasks[index.to(self.device)],
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """`batch_size` segments drawn uniformly, with replacement, from all stores' segments."""
        index = torch.randint(len(self), (batch_size,), generator=generator, device=generator.device)
        return self.batch(index)


def pool_device(token_bytes: int, device: torch.device) -> torch.device:
    """Where a pool of `token_bytes` should live: on the GPU when it takes at most half its free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if token_bytes <= free // 2:
            return device
    return torch.device("cpu")


def fetch(pool: SegmentPool, index: torch.Tensor, device: torch.device) -> Batch:
    """The segments `index` on `device`: gathered in place on a GPU-resident pool, else gathered in host
    memory, pinned, and copied without blocking."""
    batch = pool.batch(index)
    if pool.device == device:
        return batch
    if device.type == "cuda":
        batch = Batch(**{name: getattr(batch, name).pin_memory() for name in batch.__dataclass_fields__})
    return batch.to(device, non_blocking=True)
