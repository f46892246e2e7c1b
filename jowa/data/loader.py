"""Training segments of several stores, pooled, drawn uniformly and gathered into `Batch`es on any device.

A phase builds a `SegmentPool` from its stores and their observation tokens (one row of K tokens per
step) with its own segment length and stride, so a stride is a training setting, never a data one.
Segments are drawn uniformly from all games' segments pooled. Gathering a batch is a handful of indexed
reads, so the pool can sit on the GPU when it fits (the paper's ~150M steps x 36 tokens are ~11 GB as
int16) and no batch crosses the bus; otherwise it stays in host memory and each batch is moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from jowa.data.store import StoreError, TrainingStore
from jowa.models.batch import Batch

FILL_ROWS = 1 << 20
"""Rows copied at once while a pool is built: 72 MB of tokens at 36 per row, the building's only extra
host memory beside the pool itself (and none beside a GPU-resident pool)."""


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
        self.length = length
        self.device = torch.device(device)
        self.tokens = self._filled(tokens, torch.int16, check=[store.path for store in stores])
        self.actions = self._filled([store.actions for store in stores], torch.uint8)
        self.rewards = self._filled([store.rewards for store in stores], torch.float32)
        self.terminals = self._filled([store.terminals for store in stores], torch.bool)
        # The segment index, one store at a time, so that no store's index outlives its copy.
        counts = [_segment_count(store.episode_starts, stride) for store in stores]
        total = sum(counts)
        self.starts = torch.empty(total, dtype=torch.int64, device=self.device)
        self.valid = torch.empty(total, dtype=torch.int64, device=self.device)
        self.tasks = torch.empty(total, dtype=torch.int64, device=self.device)
        at, first_row = 0, 0
        for store, count in zip(stores, counts, strict=True):
            segments = store.segments(length, stride)
            assert len(segments) == count, (store.path, len(segments), count)
            here = slice(at, at + count)
            self.starts[here] = torch.from_numpy(segments[:, 0] + first_row)
            self.valid[here] = torch.from_numpy(np.ascontiguousarray(segments[:, 1]))
            self.tasks[here] = int(store.meta["task_id"])
            at, first_row = at + count, first_row + len(store)

    def _filled(
        self, parts: Sequence[np.ndarray], dtype: torch.dtype, check: Sequence[Path] = ()
    ) -> torch.Tensor:
        """`parts` concatenated into one tensor of `dtype` on the pool's device, allocated once and
        filled in chunks of at most `FILL_ROWS` rows, so that building the pool holds no second full
        copy in host memory (memory-mapped parts are read chunk by chunk). With `check` (each part's
        file), each chunk of token ids is checked to fit int16."""
        rows = sum(len(part) for part in parts)
        out = torch.empty((rows, *parts[0].shape[1:]), dtype=dtype, device=self.device)
        numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        limit = np.iinfo(np.int16).max
        at = 0
        for i, part in enumerate(parts):
            for start in range(0, len(part), FILL_ROWS):
                chunk = np.asarray(part[start : start + FILL_ROWS])
                if check and chunk.size and int(chunk.max()) > limit:
                    raise StoreError(f"{check[i]}: token ids above {limit} cannot be stored")
                chunk = chunk.astype(numpy_dtype, copy=not chunk.flags.writeable)  # torch wants writable
                out[at : at + len(chunk)] = torch.from_numpy(chunk)
                at += len(chunk)
        return out

    def __len__(self) -> int:
        return len(self.starts)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(store rows (B, length), real-step mask (B, length)) of the segments `index`; padded steps
        point at the segment's first row, so gathering from any per-step array stays in range. `index`
        crosses to the pool's device once (see `to_device`)."""
        index = to_device(index, self.device)
        steps = torch.arange(self.length, device=self.device)
        mask = steps < self.valid[index].unsqueeze(1)
        return self.starts[index].unsqueeze(1) + steps * mask, mask

    def batch(self, index: torch.Tensor, obs_tokens: torch.Tensor | None = None) -> Batch:
        """The segments `index` (B,), right-padded to the pool's length with zeros. `obs_tokens`
        (B, length, K) replaces the pool's tokens (a tokenizer being tuned encodes frames itself). An
        index drawn on the CPU for a GPU pool crosses once, pinned and without blocking."""
        index = to_device(index, self.device)
        rows, mask = self.rows(index)
        tokens = self.tokens[rows].long() if obs_tokens is None else obs_tokens.long()
        return Batch(
            obs_tokens=tokens * mask.unsqueeze(-1),
            actions=self.actions[rows].long() * mask,
            rewards=self.rewards[rows] * mask,
            ends=(self.terminals[rows] & mask).long(),
            mask=mask,
            tasks=self.tasks[index],
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """`batch_size` segments drawn uniformly, with replacement, from all stores' segments."""
        index = torch.randint(len(self), (batch_size,), generator=generator, device=generator.device)
        return self.batch(index)


def _segment_count(episode_starts: np.ndarray, stride: int) -> int:
    """How many segments `jowa.data.store.segment_index` cuts: ceil(length / stride) per episode."""
    lengths = np.diff(np.asarray(episode_starts, dtype=np.int64))
    return int((-(-lengths // stride)).sum())


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; a host tensor bound for a GPU goes through pinned memory without blocking, so
    the host does not wait for the queued GPU work as a pageable copy would."""
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


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
